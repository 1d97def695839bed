//! `/sync` as clients with filters see it: lazy-loaded members, the room summary, event and
//! room filters, rooms left, and every section written out.

use serde_json::{Value, json};

use crate::client_api::test_support::{Api, Person, person};
use crate::rooms::urlencode;

async fn sync(api: &Api, who: &Person, filter: Value, since: Option<&str>) -> Value {
    let mut path = format!("/v3/sync?filter={}", urlencode(&filter.to_string()));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, body) = api.get(&path, Some(&who.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn send(api: &Api, who: &Person, room: &str, text: &str) {
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/send/m.room.message/{text}"),
            Some(&who.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn join(api: &Api, who: &Person, room: &str) {
    let (status, body) = api
        .post(&format!("/v3/join/{room}"), Some(&who.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The members whose member events a sync's `state` section holds for `room`.
fn members_in_state(body: &Value, room: &str) -> Vec<String> {
    let mut members: Vec<String> = body["rooms"]["join"][room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    members
}

/// A room of five, four joined and one invited, where only Bob speaks after Alice made it.
async fn a_room_of_five(api: &Api, name: Option<&str>) -> (Vec<Person>, String) {
    let mut people = Vec::new();
    for name in ["alice", "bob", "carol", "dan", "erin"] {
        people.push(person(api, name).await);
    }
    let mut create = json!({"preset": "public_chat"});
    if let Some(name) = name {
        create["name"] = name.into();
    }
    let room = api.create_room(&people[0].token, create).await;
    for member in &people[1..4] {
        join(api, member, &room).await;
    }
    let (status, body) = api
        .post(
            &format!("/v3/rooms/{room}/invite"),
            Some(&people[0].token),
            json!({"user_id": people[4].user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (people, room)
}

#[tokio::test]
async fn lazy_loading_sends_only_the_members_of_the_timelines_senders() {
    let api = Api::start().await;
    let (people, room) = a_room_of_five(&api, None).await;
    for n in 0..3 {
        send(&api, &people[1], &room, &format!("bob says {n}")).await;
    }
    let carol = &people[2];
    let lazy = json!({"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": true}}});
    let body = sync(&api, carol, lazy.clone(), None).await;
    let mut expected = vec![people[1].user_id.clone(), carol.user_id.clone()];
    expected.sort();
    assert_eq!(members_in_state(&body, &room), expected);
    // The summary tells what the members left out would have: counts, and heroes for a room
    // without a name.
    let summary = &body["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 4, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 1, "{summary}");
    let heroes = summary["m.heroes"].as_array().unwrap();
    assert_eq!(heroes.len(), 4, "everyone but Carol: {summary}");
    assert!(!heroes.contains(&json!(carol.user_id)));

    // Later, a member who had not spoken yet does: their member event comes with it.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    send(&api, &people[3], &room, "dan speaks").await;
    let later = sync(&api, carol, lazy.clone(), Some(&since)).await;
    assert!(
        members_in_state(&later, &room).contains(&people[3].user_id),
        "{}",
        later["rooms"]["join"][&room]
    );

    // Without lazy loading, every member comes with the state.
    let whole = sync(
        &api,
        carol,
        json!({"room": {"timeline": {"limit": 3}}}),
        None,
    )
    .await;
    assert_eq!(members_in_state(&whole, &room).len(), 5);

    // A named room has no heroes, but its counts.
    let api = Api::start().await;
    let (people, room) = a_room_of_five(&api, Some("Named")).await;
    let body = sync(&api, &people[0], lazy, None).await;
    let summary = &body["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 4, "{summary}");
    assert!(summary.get("m.heroes").is_none(), "{summary}");
}

#[tokio::test]
async fn filters_keep_only_the_rooms_and_events_they_name() {
    let api = Api::start().await;
    let (people, room) = a_room_of_five(&api, Some("Kept")).await;
    let other = api
        .create_room(&people[0].token, json!({"name": "Other"}))
        .await;
    send(&api, &people[1], &room, "from bob").await;
    send(&api, &people[0], &room, "from alice").await;
    let (status, body) = api
        .put(
            &format!("/v3/user/{}/account_data/m.hidden", people[0].user_id),
            Some(&people[0].token),
            json!({"a": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let filter = json!({
        "room": {
            "not_rooms": [other],
            "timeline": {
                "limit": 2,
                "types": ["m.room.message"],
                "not_senders": [people[0].user_id],
            },
            "state": {"types": ["m.room.name", "m.room.create"]},
        },
        "account_data": {"not_types": ["m.hidden"]},
    });
    // Stored and named by id, as Element and nio do.
    let (status, stored) = api
        .post(
            &format!("/v3/user/{}/filter", people[0].user_id),
            Some(&people[0].token),
            filter,
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["filter_id"].as_str().unwrap();
    let (status, body) = api
        .get(&format!("/v3/sync?filter={id}"), Some(&people[0].token))
        .await;
    assert_eq!(status, 200, "{body}");

    let rooms = &body["rooms"]["join"];
    assert!(rooms.get(&other).is_none(), "a room the filter leaves out");
    let timeline: Vec<&Value> = rooms[&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        timeline
            .iter()
            .all(|e| e["type"] == "m.room.message" && e["sender"] == people[1].user_id.as_str()),
        "only Bob's messages: {timeline:?}"
    );
    assert!(timeline.iter().any(|e| e["content"]["body"] == "from bob"));
    let state_types: Vec<&str> = rooms[&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        state_types
            .iter()
            .all(|t| *t == "m.room.name" || *t == "m.room.create")
            && state_types.contains(&"m.room.name"),
        "{state_types:?}"
    );
    let account_data = body["account_data"]["events"].as_array().unwrap();
    assert!(account_data.iter().all(|e| e["type"] != "m.hidden"));

    // An unknown stored filter is an error the client can read.
    let (status, body) = api
        .get("/v3/sync?filter=424242", Some(&people[0].token))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
}

#[tokio::test]
async fn a_room_left_comes_with_every_section_and_with_include_leave_on_a_first_sync() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api
        .create_room(&alice.token, json!({"preset": "public_chat"}))
        .await;
    join(&api, &bob, &room).await;
    send(&api, &alice, &room, "before").await;
    let first = sync(&api, &bob, json!({}), None).await;
    let since = first["next_batch"].as_str().unwrap();
    let (status, body) = api
        .post(
            &format!("/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    send(&api, &alice, &room, "after").await;

    let body = sync(&api, &bob, json!({}), Some(since)).await;
    let left = &body["rooms"]["leave"][&room];
    for section in ["timeline", "state", "account_data"] {
        assert!(left[section]["events"].is_array(), "{section}: {left}");
    }
    let texts: Vec<&Value> = left["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["content"]["body"])
        .collect();
    assert!(!texts.contains(&&json!("after")), "{texts:?}");

    // A first sync leaves the room out, unless the filter asks for rooms left.
    let fresh = sync(&api, &bob, json!({}), None).await;
    assert!(
        fresh["rooms"]["leave"].get(&room).is_none(),
        "{}",
        fresh["rooms"]
    );
    let with_leave = sync(&api, &bob, json!({"room": {"include_leave": true}}), None).await;
    let timeline = &with_leave["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "before"),
        "{timeline}"
    );
}

#[tokio::test]
async fn a_messages_page_keeps_what_its_filter_names_and_brings_its_senders_members() {
    let api = Api::start().await;
    let (people, room) = a_room_of_five(&api, Some("Paged")).await;
    send(&api, &people[1], &room, "bob one").await;
    send(&api, &people[2], &room, "carol one").await;
    let first = sync(&api, &people[0], json!({}), None).await;
    let since = first["next_batch"].as_str().unwrap();
    let filter = json!({"types": ["m.room.message"], "lazy_load_members": true}).to_string();
    let (status, page) = api
        .get(
            &format!(
                "/v3/rooms/{room}/messages?dir=b&from={since}&limit=50&filter={}",
                urlencode(&filter)
            ),
            Some(&people[0].token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    assert!(
        chunk.iter().all(|e| e["type"] == "m.room.message"),
        "{chunk:?}"
    );
    assert_eq!(chunk.len(), 2, "{chunk:?}");
    let mut members: Vec<&str> = page["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    members.sort();
    let mut senders = vec![people[1].user_id.as_str(), people[2].user_id.as_str()];
    senders.sort();
    assert_eq!(members, senders);
}
