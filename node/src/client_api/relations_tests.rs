//! Relations, threads and the aggregations bundled into events, over real HTTP: edits,
//! references, thread lists and pages, what history visibility hides, bad input, a restart.

use serde_json::{Value, json};

use super::test_support::{Api, Person, person};

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn edit(of: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": of},
    })
}

fn reply_in_thread(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                         "m.in_reply_to": {"event_id": root}},
    })
}

async fn send(api: &Api, who: &Person, room: &str, content: Value) -> String {
    api.send_event(&who.token, room, "m.room.message", content)
        .await
}

/// GET as `who`, asserting success.
async fn get_ok(api: &Api, who: &Person, path: &str) -> Value {
    let (status, body) = api.get(path, Some(&who.token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `event`'s bundled aggregations.
fn relations(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

/// The bundled relations of a message as ruma (matrix-rust-sdk's parser) reads them.
fn parsed_relations(
    event: &Value,
) -> ruma::events::relation::BundledMessageLikeRelations<
    ruma::events::room::message::OriginalSyncRoomMessageEvent,
> {
    use ruma::events::{AnySyncMessageLikeEvent, SyncMessageLikeEvent};
    match serde_json::from_value::<AnySyncMessageLikeEvent>(event.clone()) {
        Ok(AnySyncMessageLikeEvent::RoomMessage(SyncMessageLikeEvent::Original(message))) => {
            message.unsigned.relations
        }
        other => panic!("not a message to ruma: {other:?}: {event}"),
    }
}

/// A node with Alice and Bob in Alice's public room.
async fn alice_and_bob_in_a_room() -> (Api, Person, Person, String) {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api.create_public_room(&alice.token).await;
    api.join(&bob.token, &room).await;
    (api, alice, bob, room)
}

#[tokio::test]
async fn the_senders_latest_edit_and_references_are_bundled_with_the_original() {
    let (api, alice, bob, room) = alice_and_bob_in_a_room().await;
    let original = send(&api, &alice, &room, text("helo")).await;
    send(&api, &alice, &room, edit(&original, "hello")).await;
    // Edits are ordered by origin_server_ts: apart by a few milliseconds, the last one wins.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let latest_edit = send(&api, &alice, &room, edit(&original, "hello!")).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // Someone else's edit is no edit.
    send(&api, &bob, &room, edit(&original, "hijacked")).await;
    let reference = send(
        &api,
        &bob,
        &room,
        json!({"msgtype": "m.text", "body": "see above",
               "m.relates_to": {"rel_type": "m.reference", "event_id": original}}),
    )
    .await;

    let check = |event: &Value, where_: &str| {
        let bundled = relations(event);
        assert_eq!(
            bundled["m.replace"]["event_id"], latest_edit,
            "{where_}: {event}"
        );
        assert_eq!(
            bundled["m.replace"]["content"]["m.new_content"]["body"], "hello!",
            "{where_}: the whole edit event"
        );
        assert_eq!(
            bundled["m.reference"]["chunk"],
            json!([{"event_id": reference}]),
            "{where_}"
        );
        let parsed = parsed_relations(event);
        assert!(parsed.has_replacement(), "{where_}");
        assert_eq!(
            parsed.replace.map(|edit| edit.event_id.to_string()),
            Some(latest_edit.clone()),
            "{where_}"
        );
        let references = parsed.reference.expect("references");
        assert_eq!(references.chunk.len(), 1, "{where_}");
        assert_eq!(references.chunk[0].event_id, reference.as_str());
    };
    let event = get_ok(&api, &bob, &format!("/v3/rooms/{room}/event/{original}")).await;
    check(&event, "/event");
    let page = get_ok(
        &api,
        &bob,
        &format!("/v3/rooms/{room}/messages?dir=b&limit=50"),
    )
    .await;
    let in_page = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == original)
        .unwrap();
    check(in_page, "/messages");
    let synced = get_ok(&api, &alice, "/v3/sync").await;
    let in_sync = synced["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == original)
        .unwrap();
    check(in_sync, "/sync");
    // The edit Alice's device sent comes back with its transaction id, bundled or not.
    assert!(
        relations(in_sync)["m.replace"]["unsigned"]["transaction_id"].is_string(),
        "{in_sync}"
    );
    let context = get_ok(&api, &bob, &format!("/v3/rooms/{room}/context/{original}")).await;
    check(&context["event"], "/context");

    // The relations of the original, newest first; by type.
    let all = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/relations/{original}"),
    )
    .await;
    assert_eq!(ids(&all["chunk"]).len(), 4, "{all}");
    assert_eq!(ids(&all["chunk"])[0], reference);
    assert!(all["recursion_depth"].is_null(), "only asked with recurse");
    let edits = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/relations/{original}/m.replace"),
    )
    .await;
    assert_eq!(ids(&edits["chunk"]).len(), 3, "{edits}");
    let none = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/relations/{original}/m.replace/m.reaction"),
    )
    .await;
    assert_eq!(none["chunk"], json!([]));

    // A redacted edit is no longer one: the one before it counts.
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/redact/{latest_edit}/r1"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event = get_ok(&api, &bob, &format!("/v3/rooms/{room}/event/{original}")).await;
    assert_eq!(
        relations(&event)["m.replace"]["content"]["m.new_content"]["body"],
        "hello"
    );
    let edits = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/relations/{original}/m.replace"),
    )
    .await;
    assert_eq!(ids(&edits["chunk"]).len(), 2, "{edits}");
}

#[tokio::test]
async fn threads_are_listed_by_latest_activity_and_paged() {
    let (api, alice, bob, room) = alice_and_bob_in_a_room().await;
    let first_root = send(&api, &alice, &room, text("first topic")).await;
    let second_root = send(&api, &alice, &room, text("second topic")).await;
    send(
        &api,
        &bob,
        &room,
        reply_in_thread(&first_root, "bob on one"),
    )
    .await;
    let second_replies = [
        send(&api, &alice, &room, reply_in_thread(&second_root, "a")).await,
        send(&api, &alice, &room, reply_in_thread(&second_root, "b")).await,
        send(&api, &alice, &room, reply_in_thread(&second_root, "c")).await,
    ];
    let latest_of_first = send(&api, &alice, &room, reply_in_thread(&first_root, "last")).await;

    // The most recently active thread first.
    let threads = get_ok(&api, &alice, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(
        ids(&threads["chunk"]),
        [first_root.as_str(), second_root.as_str()]
    );
    assert!(threads["next_batch"].is_null(), "{threads}");
    let summary = &relations(&threads["chunk"][0])["m.thread"];
    assert_eq!(summary["count"], 2, "{summary}");
    assert_eq!(summary["latest_event"]["event_id"], latest_of_first);
    assert_eq!(summary["latest_event"]["content"]["body"], "last");
    assert_eq!(
        summary["current_user_participated"], true,
        "Alice sent the root"
    );
    let parsed = parsed_relations(&threads["chunk"][0])
        .thread
        .expect("a thread to ruma");
    assert_eq!(parsed.count, ruma::uint!(2));
    assert!(parsed.current_user_participated);
    let latest = parsed.latest_event.deserialize().expect("the latest reply");
    assert_eq!(latest.event_id(), latest_of_first.as_str());

    // Bob took part in the first thread only.
    let participated = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/threads?include=participated"),
    )
    .await;
    assert_eq!(ids(&participated["chunk"]), [first_root.as_str()]);
    let as_bob = |id: &str| {
        let path = format!("/v3/rooms/{room}/event/{id}");
        let (api, bob) = (&api, &bob);
        async move { get_ok(api, bob, &path).await }
    };
    let first = as_bob(&first_root).await;
    assert_eq!(
        relations(&first)["m.thread"]["current_user_participated"],
        true
    );
    let second = as_bob(&second_root).await;
    assert_eq!(relations(&second)["m.thread"]["count"], 3);
    assert_eq!(
        relations(&second)["m.thread"]["current_user_participated"],
        false
    );

    // One thread per page.
    let page = get_ok(&api, &alice, &format!("/v1/rooms/{room}/threads?limit=1")).await;
    assert_eq!(ids(&page["chunk"]), [first_root.as_str()]);
    let next = page["next_batch"].as_str().expect("a next page");
    let page = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/threads?limit=1&from={next}"),
    )
    .await;
    assert_eq!(ids(&page["chunk"]), [second_root.as_str()]);
    assert!(page["next_batch"].is_null(), "{page}");

    // The replies of a thread, newest first, two at a time; and oldest first.
    let path = format!("/v1/rooms/{room}/relations/{second_root}/m.thread");
    let page = get_ok(&api, &bob, &format!("{path}?limit=2")).await;
    assert_eq!(
        ids(&page["chunk"]),
        [second_replies[2].as_str(), second_replies[1].as_str()]
    );
    let next = page["next_batch"].as_str().expect("a next page");
    let page = get_ok(&api, &bob, &format!("{path}?limit=2&from={next}")).await;
    assert_eq!(ids(&page["chunk"]), [second_replies[0].as_str()]);
    assert!(page["next_batch"].is_null(), "{page}");
    assert_eq!(page["prev_batch"], next);
    let page = get_ok(&api, &bob, &format!("{path}?limit=2&dir=f")).await;
    assert_eq!(
        ids(&page["chunk"]),
        [second_replies[0].as_str(), second_replies[1].as_str()]
    );
    let next = page["next_batch"].as_str().expect("a next page");
    let page = get_ok(&api, &bob, &format!("{path}?limit=2&dir=f&from={next}")).await;
    assert_eq!(ids(&page["chunk"]), [second_replies[2].as_str()]);

    // An edit of a reply relates to the thread only indirectly: it shows with `recurse`, and
    // the thread's summary shows the latest reply as edited.
    let edited = send(&api, &alice, &room, edit(&second_replies[2], "C")).await;
    let direct = get_ok(&api, &bob, &path).await;
    assert_eq!(ids(&direct["chunk"]).len(), 3);
    let recursed = get_ok(
        &api,
        &bob,
        &format!("/v1/rooms/{room}/relations/{second_root}?recurse=true"),
    )
    .await;
    assert_eq!(ids(&recursed["chunk"])[0], edited, "{recursed}");
    assert_eq!(recursed["recursion_depth"], 3);
    let second = as_bob(&second_root).await;
    let latest = &relations(&second)["m.thread"]["latest_event"];
    assert_eq!(latest["event_id"], second_replies[2]);
    assert_eq!(
        relations(latest)["m.replace"]["event_id"],
        edited,
        "{latest}"
    );

    // The thread's new reply shows in /sync with the root's summary.
    let synced = get_ok(&api, &bob, "/v3/sync").await;
    let root_in_sync = synced["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == first_root)
        .cloned()
        .unwrap();
    assert_eq!(relations(&root_in_sync)["m.thread"]["count"], 2);

    // A redacted reply leaves the thread.
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/redact/{latest_of_first}/r1"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let first = as_bob(&first_root).await;
    assert_eq!(relations(&first)["m.thread"]["count"], 1, "{first}");
    let threads = get_ok(&api, &alice, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(
        ids(&threads["chunk"]),
        [second_root.as_str(), first_root.as_str()]
    );
}

#[tokio::test]
async fn relations_refuse_bad_input_and_hide_history_the_user_may_not_read() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api
        .create_room(
            &alice.token,
            json!({"preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    let root = send(&api, &alice, &room, text("before bob")).await;
    send(
        &api,
        &alice,
        &room,
        reply_in_thread(&root, "still before bob"),
    )
    .await;

    let error = |body: &Value| body["errcode"].as_str().unwrap_or_default().to_owned();
    // Not in the room (yet), or no such room: refused.
    for path in [
        format!("/v1/rooms/{room}/relations/{root}"),
        format!("/v1/rooms/{room}/threads"),
        format!("/v1/rooms/!nowhere:{}/threads", api.node.server_name()),
        format!(
            "/v1/rooms/!nowhere:{}/relations/{root}",
            api.node.server_name()
        ),
    ] {
        let (status, body) = api.get(&path, Some(&bob.token)).await;
        assert_eq!(
            (status, error(&body)),
            (403, "M_FORBIDDEN".into()),
            "{path}"
        );
    }

    api.join(&bob.token, &room).await;
    // Bob joined after the thread: its root is not his to read, nor is the thread listed.
    let (status, body) = api
        .get(
            &format!("/v1/rooms/{room}/relations/{root}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!((status, error(&body)), (404, "M_NOT_FOUND".into()));
    let threads = get_ok(&api, &bob, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(threads["chunk"], json!([]));
    // A reply to the old thread after he joined: he reads the reply, not what it replies to.
    send(&api, &alice, &room, reply_in_thread(&root, "after bob")).await;
    let threads = get_ok(&api, &bob, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(threads["chunk"], json!([]));
    let seen = get_ok(&api, &alice, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(relations(&seen["chunk"][0])["m.thread"]["count"], 2);
    let new_root = send(&api, &alice, &room, text("after bob")).await;
    send(&api, &bob, &room, reply_in_thread(&new_root, "bob's reply")).await;
    let threads = get_ok(&api, &bob, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(ids(&threads["chunk"]), [new_root.as_str()]);

    // An event of another room is not found through this one.
    let other = api.create_public_room(&alice.token).await;
    let elsewhere = send(&api, &alice, &other, text("elsewhere")).await;
    let (status, body) = api
        .get(
            &format!("/v1/rooms/{room}/relations/{elsewhere}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!((status, error(&body)), (404, "M_NOT_FOUND".into()));

    // Malformed tokens and options.
    for path in [
        format!("/v1/rooms/{room}/relations/{new_root}?from=yesterday"),
        format!("/v1/rooms/{room}/relations/{new_root}?to=s1_tx"),
        format!("/v1/rooms/{room}/threads?from=nonsense"),
        format!("/v1/rooms/{room}/threads?include=everything"),
    ] {
        let (status, body) = api.get(&path, Some(&alice.token)).await;
        assert_eq!(
            (status, error(&body)),
            (400, "M_INVALID_PARAM".into()),
            "{path}"
        );
    }
    // A /sync token is a valid place to page from.
    let synced = get_ok(&api, &alice, "/v3/sync").await;
    let since = synced["next_batch"].as_str().unwrap();
    let page = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/relations/{new_root}?from={since}"),
    )
    .await;
    assert_eq!(ids(&page["chunk"]).len(), 1, "{page}");

    // A huge limit is clamped: 101 reactions come 100 to a page.
    for i in 0..101 {
        api.send_event(
            &alice.token,
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": new_root,
                                    "key": format!("r{i}")}}),
        )
        .await;
    }
    let page = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/relations/{new_root}/m.annotation?limit=1000000"),
    )
    .await;
    assert_eq!(ids(&page["chunk"]).len(), 100);
    let next = page["next_batch"]
        .as_str()
        .expect("the rest on a next page");
    let rest = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/relations/{new_root}/m.annotation?limit=1000000&from={next}"),
    )
    .await;
    assert_eq!(ids(&rest["chunk"]).len(), 1);
    let threads = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/threads?limit=1000000"),
    )
    .await;
    assert_eq!(ids(&threads["chunk"]).len(), 2);
}

#[tokio::test]
async fn relations_survive_a_restart() {
    let (api, alice, bob, room) = alice_and_bob_in_a_room().await;
    let root = send(&api, &alice, &room, text("root")).await;
    let reply = send(&api, &bob, &room, reply_in_thread(&root, "reply")).await;
    let api = api.restart_offline().await;

    let page = get_ok(
        &api,
        &alice,
        &format!("/v1/rooms/{room}/relations/{root}/m.thread"),
    )
    .await;
    assert_eq!(ids(&page["chunk"]), [reply.as_str()]);
    let threads = get_ok(&api, &alice, &format!("/v1/rooms/{room}/threads")).await;
    assert_eq!(ids(&threads["chunk"]), [root.as_str()]);
    assert_eq!(
        relations(&threads["chunk"][0])["m.thread"]["latest_event"]["event_id"],
        reply
    );
}
