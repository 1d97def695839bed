//! The shape of served state events over real HTTP: `unsigned.prev_content`, `prev_sender`,
//! `replaces_state` and `age` wherever a client reads events, on one node and as another
//! server serves the same event.

use std::time::Duration;

use serde_json::{Value, json};

use super::test_support::{Api, Person, person};
use crate::federation::room_tests::{eventually, two_nodes_in_a_room};

/// The member event of `member` in the room's current state, read with `/state`.
async fn member_event(api: &Api, who: &Person, room: &str, member: &str) -> Value {
    let (status, state) = api
        .get(&format!("/v3/rooms/{room}/state"), Some(&who.token))
        .await;
    assert_eq!(status, 200, "{state}");
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == member)
        .cloned()
        .unwrap_or_else(|| panic!("no member event of {member}: {state}"))
}

/// The event `id` among `events`.
fn find<'a>(events: &'a Value, id: &str) -> &'a Value {
    events
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == id))
        .unwrap_or_else(|| panic!("{id} is not in {events}"))
}

/// What a display name change carries of the event it replaced.
fn assert_replaces(event: &Value, old: &Value, sender: &str, where_: &str) {
    let unsigned = &event["unsigned"];
    assert_eq!(
        unsigned["prev_content"], old["content"],
        "{where_}: {event}"
    );
    assert_eq!(
        unsigned["replaces_state"], old["event_id"],
        "{where_}: {event}"
    );
    assert_eq!(unsigned["prev_sender"], sender, "{where_}: {event}");
    assert!(
        unsigned["age"].as_u64().is_some_and(|age| age < 60_000),
        "{where_}: age is the time since the event was sent: {event}"
    );
    // As ruma (matrix-rust-sdk's parser) reads it.
    let parsed: ruma::events::AnySyncStateEvent = serde_json::from_value(event.clone())
        .unwrap_or_else(|e| panic!("{where_}: ruma cannot read {event}: {e}"));
    assert_eq!(
        parsed.event_id(),
        event["event_id"].as_str().unwrap(),
        "{where_}"
    );
    if let ruma::events::AnySyncStateEvent::RoomMember(ruma::events::SyncStateEvent::Original(
        member,
    )) = parsed
    {
        let previous = member.unsigned.prev_content.expect("prev_content to ruma");
        assert_eq!(
            previous.displayname.as_deref(),
            old["content"]["displayname"].as_str(),
            "{where_}"
        );
        assert_eq!(
            member
                .unsigned
                .replaces_state
                .as_deref()
                .map(|id| id.as_str()),
            old["event_id"].as_str()
        );
    }
}

#[tokio::test]
async fn a_display_name_change_carries_the_name_it_replaced_wherever_it_is_read() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api.create_public_room(&alice.token).await;
    let old = member_event(&api, &alice, &room, &alice.user_id).await;
    let (status, body) = api
        .put(
            &format!("/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alicia"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let renamed = member_event(&api, &alice, &room, &alice.user_id).await;
    assert_eq!(renamed["content"]["displayname"], "Alicia");
    assert_eq!(renamed["content"]["membership"], "join");
    assert_eq!(old["content"]["membership"], "join");
    assert_ne!(old["event_id"], renamed["event_id"]);
    let id = renamed["event_id"].as_str().unwrap();
    assert_replaces(&renamed, &old, &alice.user_id, "/state");

    let (status, synced) = api.get("/v3/sync", Some(&alice.token)).await;
    assert_eq!(status, 200, "{synced}");
    let timeline = &synced["rooms"]["join"][&room]["timeline"]["events"];
    assert_replaces(find(timeline, id), &old, &alice.user_id, "/sync timeline");

    let (status, page) = api
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_replaces(find(&page["chunk"], id), &old, &alice.user_id, "/messages");
    // The room's first member event replaced nothing.
    let created = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == old["event_id"])
        .unwrap();
    assert!(created["unsigned"]["prev_content"].is_null(), "{created}");

    let (_, event) = api
        .get(&format!("/v3/rooms/{room}/event/{id}"), Some(&alice.token))
        .await;
    assert_replaces(&event, &old, &alice.user_id, "/event");
    let (_, context) = api
        .get(
            &format!("/v3/rooms/{room}/context/{id}?limit=2"),
            Some(&alice.token),
        )
        .await;
    assert_replaces(&context["event"], &old, &alice.user_id, "/context");
    assert_replaces(
        find(&context["state"], id),
        &old,
        &alice.user_id,
        "/context state",
    );

    // Bob joins and syncs one timeline event: Alice's member event comes in the state section.
    api.join(&bob.token, &room).await;
    api.send_event(
        &bob.token,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .await;
    let filter = crate::rooms::urlencode(r#"{"room":{"timeline":{"limit":1}}}"#);
    let (status, synced) = api
        .get(&format!("/v3/sync?filter={filter}"), Some(&bob.token))
        .await;
    assert_eq!(status, 200, "{synced}");
    let state = &synced["rooms"]["join"][&room]["state"]["events"];
    assert_replaces(find(state, id), &old, &alice.user_id, "/sync state");

    // The replaced event redacted: what it replaced shows redacted too.
    let (status, body) = api
        .put(
            &format!(
                "/v3/rooms/{room}/redact/{}/r1",
                old["event_id"].as_str().unwrap()
            ),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, event) = api
        .get(&format!("/v3/rooms/{room}/event/{id}"), Some(&bob.token))
        .await;
    assert_eq!(
        event["unsigned"]["prev_content"],
        json!({"membership": "join"}),
        "{event}"
    );
    assert_eq!(event["unsigned"]["replaces_state"], old["event_id"]);
}

#[tokio::test]
async fn another_server_serves_what_a_member_event_replaced() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let (status, body) = b
        .put(
            &format!("/v3/profile/{}/displayname", bob.user_id),
            Some(&bob.token),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let renamed = member_event(&b, &bob, &room, &bob.user_id).await;
    let id = renamed["event_id"].as_str().unwrap().to_owned();

    // Alice's server got the name change from Bob's, and serves it with what it replaced.
    let read_messages = || async {
        let (status, page) = a
            .get(
                &format!("/v3/rooms/{room}/messages?dir=b&limit=50"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["chunk"].clone()
    };
    eventually(Duration::from_secs(20), "the name change on A", || async {
        read_messages()
            .await
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["event_id"] == id))
    })
    .await;
    let chunk = read_messages().await;
    let chunk = chunk.as_array().unwrap();
    let members_of_bob: Vec<&Value> = chunk
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .collect();
    let join = members_of_bob
        .iter()
        .find(|e| e["content"]["membership"] == "join" && e["event_id"] != id.as_str())
        .expect("Bob's join");
    let invite = members_of_bob
        .iter()
        .find(|e| e["content"]["membership"] == "invite")
        .expect("Bob's invite");
    let on_a = chunk.iter().find(|e| e["event_id"] == id).unwrap();
    assert_eq!(on_a["content"]["displayname"], "Bobby");
    assert_replaces(on_a, join, &bob.user_id, "A's /messages");
    // The join replaced the invite Alice sent.
    assert_replaces(join, invite, &alice.user_id, "A's /messages, the join");

    let (_, synced) = a.get("/v3/sync", Some(&alice.token)).await;
    let timeline = &synced["rooms"]["join"][&room]["timeline"]["events"];
    assert_replaces(find(timeline, &id), join, &bob.user_id, "A's /sync");
}

#[tokio::test]
async fn history_fetched_from_another_server_carries_what_it_replaced_too() {
    crate::federation::room_tests::log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    let room = a
        .create_room(
            &alice.token,
            json!({"preset": "private_chat", "invite": [bob.user_id]}),
        )
        .await;
    // Topics set before Bob's server is in the room: it has them only by backfill.
    let mut topics = Vec::new();
    for topic in ["one", "two"] {
        let (status, body) = a
            .put(
                &format!("/v3/rooms/{room}/state/m.room.topic/"),
                Some(&alice.token),
                json!({"topic": topic}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        topics.push(body["event_id"].as_str().unwrap().to_owned());
    }
    eventually(Duration::from_secs(20), "the invite at B", || async {
        let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
        synced["rooms"]["invite"][&room].is_object()
    })
    .await;
    b.join(&bob.token, &room).await;

    let (status, page) = b
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    for topic in &topics {
        let stored = b.node.store().pdu(topic.clone()).await.unwrap().unwrap();
        assert!(
            stored.stream_pos.is_some_and(|pos| pos < 0),
            "B holds {topic} as backfilled history: {stored:?}"
        );
    }
    let first = find(&page["chunk"], &topics[0]);
    let second = find(&page["chunk"], &topics[1]);
    assert_eq!(first["content"]["topic"], "one");
    assert_replaces(second, first, &alice.user_id, "B's /messages, backfilled");
}
