//! Rooms and sync over real HTTP: what two or three users of one node see.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::test_support::{Api, Person, message_bodies, person};

pub(super) async fn send_text(
    api: &Api,
    who: &Person,
    room: &str,
    txn: &str,
    text: &str,
) -> (u16, Value) {
    api.put(
        &format!("/v3/rooms/{room}/send/m.room.message/{txn}"),
        Some(&who.token),
        json!({"msgtype": "m.text", "body": text}),
    )
    .await
}

pub(super) async fn sync(api: &Api, who: &Person, since: Option<&str>, timeout_ms: u64) -> Value {
    let mut path = format!("/v3/sync?timeout={timeout_ms}");
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, body) = api.get(&path, Some(&who.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    message_bodies(&sync["rooms"]["join"][room]["timeline"]["events"])
}

#[tokio::test]
async fn invite_join_chat_and_sync() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api
        .create_room(
            &alice.token,
            json!({"name": "Plans", "topic": "the weekend", "invite": [bob.user_id],
               "initial_state": [{"type": "m.room.encryption", "state_key": "",
                                   "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;

    // Bob sees the invite with the room's name and that it is encrypted.
    let first = sync(&api, &bob, None, 0).await;
    let invite_state = first["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .expect("an invite");
    let kinds: Vec<&str> = invite_state
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"m.room.name") && kinds.contains(&"m.room.encryption"),
        "{kinds:?}"
    );

    // No body at all, as matrix-nio sends it: read as the empty object.
    let response = api
        .http
        .post(api.url(&format!("/v3/join/{room}")))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["room_id"].as_str(), Some(room.as_str()));

    let (status, sent) = send_text(&api, &alice, &room, "t1", "hello bob").await;
    assert_eq!(status, 200, "{sent}");
    // A retried transaction is the same event, not a second one.
    let (_, again) = send_text(&api, &alice, &room, "t1", "hello bob").await;
    assert_eq!(sent["event_id"], again["event_id"]);

    let next = first["next_batch"].as_str().unwrap();
    let update = sync(&api, &bob, Some(next), 0).await;
    assert_eq!(timeline_bodies(&update, &room), ["hello bob"]);
    let events = |section: &str| {
        update["rooms"]["join"][&room][section]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let state_kinds: Vec<String> = events("state")
        .iter()
        .chain(&events("timeline"))
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        state_kinds.contains(&"m.room.create".to_owned()),
        "a new join gets the state"
    );

    // Long-poll: Bob waits; Alice's message wakes him long before the timeout.
    let since = update["next_batch"].as_str().unwrap().to_owned();
    let waiting = api.sync_in_background(&bob.token, &since, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "sync returned with nothing new");
    send_text(&api, &alice, &room, "t2", "are you there?").await;
    let (waited, woken) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    assert_eq!(timeline_bodies(&woken, &room), ["are you there?"]);

    // Nothing new: a sync with a short timeout comes back empty after it.
    let since = woken["next_batch"].as_str().unwrap();
    let started = Instant::now();
    let idle = sync(&api, &bob, Some(since), 300).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        idle["rooms"]["join"]
            .as_object()
            .is_none_or(|j| j.is_empty()),
        "{idle}"
    );

    let (_, joined) = api.get("/v3/joined_rooms", Some(&bob.token)).await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    let (_, members) = api
        .get(
            &format!("/v3/rooms/{room}/joined_members"),
            Some(&bob.token),
        )
        .await;
    let mut names: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, [&alice.user_id, &bob.user_id]);
}

#[tokio::test]
async fn the_auth_rules_say_no() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let carol = person(&api, "carol").await;
    let room = api
        .create_room(&alice.token, json!({"invite": [bob.user_id]}))
        .await;
    api.post(
        &format!("/v3/rooms/{room}/join"),
        Some(&bob.token),
        json!({}),
    )
    .await;

    let forbidden = |(status, body): (u16, Value)| {
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );
    };
    // Carol was not invited to this private room.
    forbidden(
        api.post(
            &format!("/v3/rooms/{room}/join"),
            Some(&carol.token),
            json!({}),
        )
        .await,
    );
    forbidden(send_text(&api, &carol, &room, "c1", "let me in").await);
    forbidden(
        api.get(&format!("/v3/rooms/{room}/state"), Some(&carol.token))
            .await,
    );
    forbidden(
        api.get(
            &format!("/v3/rooms/{room}/messages?dir=b"),
            Some(&carol.token),
        )
        .await,
    );
    // Bob (power 0) may not change power levels or kick Alice.
    forbidden(
        api.put(
            &format!("/v3/rooms/{room}/state/m.room.power_levels"),
            Some(&bob.token),
            json!({"users": {bob.user_id.clone(): 100}}),
        )
        .await,
    );
    forbidden(
        api.post(
            &format!("/v3/rooms/{room}/kick"),
            Some(&bob.token),
            json!({"user_id": alice.user_id}),
        )
        .await,
    );
    // Alice may kick and ban Bob; a banned Bob cannot come back.
    let (status, _) = api
        .post(
            &format!("/v3/rooms/{room}/ban"),
            Some(&alice.token),
            json!({"user_id": bob.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, 200);
    forbidden(
        api.post(
            &format!("/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await,
    );
    let (status, _) = api
        .post(
            &format!("/v3/rooms/{room}/unban"),
            Some(&alice.token),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = api
        .post(
            "/v3/createRoom",
            Some(&alice.token),
            json!({"room_version": "1"}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNSUPPORTED_ROOM_VERSION"))
    );
    let (status, body) = api
        .post(
            "/v3/rooms/!nowhere:example.org/join",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );
    let (status, body) = send_text(&api, &alice, &room, "bad", "x").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/send/m.room.message/t9"),
            Some(&alice.token),
            json!(["not", "an", "object"]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn history_pages_backwards_from_a_limited_sync() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let room = api
        .create_room(&alice.token, json!({"preset": "public_chat"}))
        .await;
    for n in 0..30 {
        send_text(
            &api,
            &alice,
            &room,
            &format!("t{n}"),
            &format!("message {n}"),
        )
        .await;
    }
    let filter = r#"{"room":{"timeline":{"limit":5}}}"#;
    let (_, synced) = api
        .get(
            &format!("/v3/sync?filter={}", urlencode(filter)),
            Some(&alice.token),
        )
        .await;
    let timeline = &synced["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(
        timeline_bodies(&synced, &room),
        [
            "message 25",
            "message 26",
            "message 27",
            "message 28",
            "message 29"
        ]
    );

    let mut from = timeline["prev_batch"].as_str().unwrap().to_owned();
    let mut older = Vec::new();
    for _ in 0..3 {
        let (status, page) = api
            .get(
                &format!("/v3/rooms/{room}/messages?dir=b&limit=10&from={from}"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        older.extend(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap().to_owned()),
        );
        from = page["end"].as_str().unwrap().to_owned();
    }
    let expected: Vec<String> = (0..25).rev().map(|n| format!("message {n}")).collect();
    assert_eq!(older[..25], expected[..]);

    // An uploaded filter works the same.
    let (_, uploaded) = api
        .post(
            &format!("/v3/user/{}/filter", alice.user_id),
            Some(&alice.token),
            serde_json::from_str(filter).unwrap(),
        )
        .await;
    let id = uploaded["filter_id"].as_str().unwrap();
    let (_, synced) = api
        .get(&format!("/v3/sync?filter={id}"), Some(&alice.token))
        .await;
    assert_eq!(timeline_bodies(&synced, &room).len(), 5);
}

#[tokio::test]
async fn state_aliases_leaving_and_every_room_version() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    for version in ["10", "11", "12"] {
        let room = api
            .create_room(
                &alice.token,
                json!({"room_version": version, "preset": "public_chat",
                   "room_alias_name": format!("lobby{version}"), "name": "Lobby"}),
            )
            .await;
        let (status, name) = api
            .get(
                &format!("/v3/rooms/{room}/state/m.room.name"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(
            (status, &name["name"]),
            (200, &json!("Lobby")),
            "v{version}"
        );
        let (status, _) = api
            .put(
                &format!("/v3/rooms/{room}/state/m.room.topic"),
                Some(&alice.token),
                json!({"topic": "all welcome"}),
            )
            .await;
        assert_eq!(status, 200, "v{version}");

        // Bob finds the room by its alias and joins through it.
        let alias = format!("#lobby{version}:{}", api.node.server_name());
        let (status, found) = api
            .get(&format!("/v3/directory/room/{}", urlencode(&alias)), None)
            .await;
        assert_eq!(
            (status, found["room_id"].as_str()),
            (200, Some(room.as_str())),
            "v{version}"
        );
        let (status, _) = api
            .post(
                &format!("/v3/join/{}", urlencode(&alias)),
                Some(&bob.token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}");
        let (status, sent) = send_text(&api, &bob, &room, &format!("b{version}"), "hi").await;
        assert_eq!(status, 200, "v{version}: {sent}");

        let before = sync(&api, &bob, None, 0).await;
        let (status, _) = api
            .post(
                &format!("/v3/rooms/{room}/leave"),
                Some(&bob.token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        let after = sync(&api, &bob, before["next_batch"].as_str(), 0).await;
        assert!(
            after["rooms"]["leave"][&room].is_object(),
            "v{version}: {after}"
        );
        let (status, _) = api
            .post(
                &format!("/v3/rooms/{room}/forget"),
                Some(&bob.token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, event) = api
            .get(
                &format!(
                    "/v3/rooms/{room}/event/{}",
                    sent["event_id"].as_str().unwrap()
                ),
                Some(&alice.token),
            )
            .await;
        assert_eq!(event["content"]["body"], "hi", "v{version}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn account_data_push_rules_and_capabilities() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let first = sync(&api, &alice, None, 0).await;
    let path = format!("/v3/user/{}/account_data/m.direct", alice.user_id);
    let (status, body) = api.get(&path, Some(&alice.token)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
    let direct = json!({"@bob:example.org": ["!room:example.org"]});
    assert_eq!(
        api.put(&path, Some(&alice.token), direct.clone()).await.0,
        200
    );
    assert_eq!(api.get(&path, Some(&alice.token)).await.1, direct);
    let (status, _) = api.get(&path, Some(&bob.token)).await;
    assert_eq!(status, 403, "Bob cannot read Alice's account data");

    let update = sync(&api, &alice, first["next_batch"].as_str(), 5000).await;
    let events = update["account_data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "m.direct");
    assert_eq!(events[0]["content"], direct);

    let (status, rules) = api.get("/v3/pushrules/", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert!(
        rules["global"]["override"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    let (status, caps) = api.get("/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
}

fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

#[tokio::test]
async fn receipts_read_markers_typing_and_context() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api
        .create_room(&alice.token, json!({"invite": [bob.user_id]}))
        .await;
    api.post(
        &format!("/v3/rooms/{room}/join"),
        Some(&bob.token),
        json!({}),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, sent) = send_text(&api, &alice, &room, &format!("m{n}"), &format!("m{n}")).await;
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    let since = sync(&api, &bob, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob reads up to m3: Alice sees his public receipt, not his private one.
    let (status, _) = api
        .post(
            &format!("/v3/rooms/{room}/receipt/m.read/{}", ids[3]),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = api
        .post(
            &format!("/v3/rooms/{room}/read_markers"),
            Some(&bob.token),
            json!({"m.fully_read": ids[4], "m.read.private": ids[4]}),
        )
        .await;
    assert_eq!(status, 200);
    let alice_view = sync(&api, &alice, None, 0).await;
    let receipt = ephemeral(&alice_view, &room, "m.receipt").expect("a receipt");
    assert!(
        receipt["content"][&ids[3]]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{receipt}"
    );
    assert!(
        receipt["content"][&ids[4]].is_null(),
        "private receipts stay private: {receipt}"
    );
    let bob_view = sync(&api, &bob, Some(&since), 0).await;
    let own = ephemeral(&bob_view, &room, "m.receipt").expect("own receipts");
    assert!(
        own["content"][&ids[4]]["m.read.private"][&bob.user_id].is_object(),
        "{own}"
    );
    let markers = bob_view["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap();
    assert_eq!(markers[0]["type"], "m.fully_read");
    assert_eq!(markers[0]["content"]["event_id"], ids[4].as_str());
    let (status, body) = api
        .post(
            &format!("/v3/rooms/{room}/receipt/m.read/$nope"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Alice types: Bob's waiting sync wakes with it, and again when it expires.
    let since = bob_view["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, _) = api
        .put(
            &path,
            Some(&alice.token),
            json!({"typing": true, "timeout": 400}),
        )
        .await;
    assert_eq!(status, 200);
    let typing = sync(&api, &bob, Some(&since), 5000).await;
    let event = ephemeral(&typing, &room, "m.typing").expect("typing");
    assert_eq!(event["content"]["user_ids"], json!([alice.user_id]));
    let started = Instant::now();
    let stopped = sync(&api, &bob, typing["next_batch"].as_str(), 5000).await;
    let event = ephemeral(&stopped, &room, "m.typing").expect("typing stopped");
    assert_eq!(event["content"]["user_ids"], json!([]));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "expiry took {:?}",
        started.elapsed()
    );
    let (status, _) = api
        .put(
            &format!("/v3/rooms/{room}/typing/{}", bob.user_id),
            Some(&alice.token),
            json!({"typing": true, "timeout": 400}),
        )
        .await;
    assert_eq!(status, 403, "nobody types for someone else");

    // Context around m2.
    let (status, context) = api
        .get(
            &format!("/v3/rooms/{room}/context/{}?limit=2", ids[2]),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["event"]["content"]["body"], "m2");
    assert_eq!(context["events_before"][0]["content"]["body"], "m1");
    assert_eq!(context["events_after"][0]["content"]["body"], "m3");
}

#[tokio::test]
async fn what_the_server_checks_beyond_the_auth_rules() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let carol = person(&api, "carol").await;
    let room = api
        .create_room(
            &alice.token,
            json!({"invite": [bob.user_id],
               "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                   "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    let (_, before) = send_text(&api, &alice, &room, "a0", "before bob joined").await;

    // Memberships go through their endpoints, not the state API.
    let member = format!("/v3/rooms/{room}/state/m.room.member/{}", carol.user_id);
    let (status, _) = api
        .put(
            &member,
            Some(&carol.token),
            json!({"membership": "join", "join_authorised_via_users_server": alice.user_id}),
        )
        .await;
    assert_eq!(status, 403, "carol cannot let herself in");
    api.post(
        &format!("/v3/rooms/{room}/join"),
        Some(&bob.token),
        json!({}),
    )
    .await;

    // History visibility "joined": Bob does not read what was said before he joined.
    let (_, page) = api
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&bob.token),
        )
        .await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(!bodies.contains(&"before bob joined"), "{bodies:?}");
    let (status, _) = api
        .get(
            &format!(
                "/v3/rooms/{room}/event/{}",
                before["event_id"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 404);
    let first = sync(&api, &bob, None, 0).await;
    assert!(timeline_bodies(&first, &room).is_empty(), "{first}");

    // Transaction ids: the sending device gets its id back; retries in flight are one event;
    // the same id in another room is another event.
    let (a, b) = tokio::join!(
        send_text(&api, &bob, &room, "same", "once"),
        send_text(&api, &bob, &room, "same", "once"),
    );
    assert_eq!(a.1["event_id"], b.1["event_id"]);
    let other_room = api.create_room(&bob.token, json!({})).await;
    let (_, elsewhere) = send_text(&api, &bob, &other_room, "same", "once").await;
    assert_ne!(elsewhere["event_id"], a.1["event_id"]);
    let update = sync(&api, &bob, first["next_batch"].as_str(), 0).await;
    let echo = update["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == a.1["event_id"])
        .unwrap()
        .clone();
    assert_eq!(echo["unsigned"]["transaction_id"], "same");
    let alice_view = sync(&api, &alice, None, 0).await;
    let seen = alice_view["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == a.1["event_id"])
        .unwrap()
        .clone();
    assert!(
        seen["unsigned"]["transaction_id"].is_null(),
        "only the sender's device sees it"
    );

    // Redactions: only one's own events without the power to redact others'.
    let target = a.1["event_id"].as_str().unwrap();
    let (status, _) = api
        .put(
            &format!(
                "/v3/rooms/{room}/redact/{}/r1",
                before["event_id"].as_str().unwrap()
            ),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "bob cannot redact alice's message");
    let (status, _) = api
        .put(
            &format!("/v3/rooms/{room}/redact/{target}/r2"),
            Some(&bob.token),
            json!({"reason": "typo"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, redacted) = api
        .get(
            &format!("/v3/rooms/{room}/event/{target}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        redacted["content"],
        json!({}),
        "the text is gone from the server"
    );
    assert!(
        redacted["unsigned"]["redacted_because"].is_object(),
        "{redacted}"
    );

    // A name change is not a new join: the room is not sent again whole.
    let since = sync(&api, &bob, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    api.put(
        &format!("/v3/profile/{}/displayname", bob.user_id),
        Some(&bob.token),
        json!({"displayname": "Bobby"}),
    )
    .await;
    let renamed = sync(&api, &bob, Some(&since), 0).await;
    let timeline = &renamed["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        timeline["events"].as_array().unwrap().len(),
        1,
        "{timeline}"
    );
    assert_ne!(timeline["limited"], true);

    // A refused invite shows as left, with no messages.
    api.post(
        &format!("/v3/rooms/{room}/invite"),
        Some(&alice.token),
        json!({"user_id": carol.user_id}),
    )
    .await;
    let since = sync(&api, &carol, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post(
        &format!("/v3/rooms/{room}/leave"),
        Some(&carol.token),
        json!({}),
    )
    .await;
    let left = sync(&api, &carol, Some(&since), 0).await;
    let room_left = &left["rooms"]["leave"][&room];
    assert!(room_left.is_object(), "{left}");
    assert!(
        room_left["timeline"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{room_left}"
    );
}

#[tokio::test]
async fn device_lists_follow_who_shares_a_room() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api
        .create_room(&alice.token, json!({"invite": [bob.user_id]}))
        .await;
    let since = sync(&api, &alice, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post(
        &format!("/v3/rooms/{room}/join"),
        Some(&bob.token),
        json!({}),
    )
    .await;
    let joined = sync(&api, &alice, Some(&since), 0).await;
    assert_eq!(
        joined["device_lists"]["changed"],
        json!([bob.user_id]),
        "{joined}"
    );

    let since = joined["next_batch"].as_str().unwrap().to_owned();
    api.post(
        &format!("/v3/rooms/{room}/leave"),
        Some(&bob.token),
        json!({}),
    )
    .await;
    let left = sync(&api, &alice, Some(&since), 0).await;
    assert_eq!(left["device_lists"]["left"], json!([bob.user_id]), "{left}");
}

#[tokio::test]
async fn a_refused_create_room_leaves_nothing_behind() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    // Alice may not make Bob a member by herself: the whole creation is refused.
    let (status, body) = api
        .post(
            "/v3/createRoom",
            Some(&alice.token),
            json!({"room_alias_name": "wanted",
                     "initial_state": [{"type": "m.room.member", "state_key": bob.user_id,
                                         "content": {"membership": "join"}}]}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (_, joined) = api.get("/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    // The alias is still free.
    api.create_room(&alice.token, json!({"room_alias_name": "wanted"}))
        .await;
}

#[tokio::test]
async fn rooms_created_alike_at_once_are_distinct_rooms() {
    // Room v12 ids are hashes of the create event: alike requests in one millisecond must not
    // make the same room.
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let created = futures::future::join_all((0..20).map(|_| {
        api.post(
            "/v3/createRoom",
            Some(&alice.token),
            json!({"preset": "public_chat", "name": "Same"}),
        )
    }))
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, body) in created {
        assert_eq!(status, 200, "{body}");
        ids.insert(body["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 20);
}
