//! Push rules, unread counts, `/notifications` and pushers over real HTTP: what Element shows
//! as a muted room, a count badge, a highlighted mention.

use serde_json::{Value, json};

use super::room_tests::{send_text, sync};
use super::test_support::{Api, Person, errcode, person};

/// A room Bob made and Alice joined; returns its id.
async fn shared_room(api: &Api, bob: &Person, alice: &Person) -> String {
    let room = api
        .create_room(&bob.token, json!({"invite": [alice.user_id]}))
        .await;
    let (status, body) = api
        .post(
            &format!("/v3/rooms/{room}/join"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    room
}

/// (notification_count, highlight_count) of a joined room in a sync response.
fn unread(sync: &Value, room: &str) -> (u64, u64) {
    let counts = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        counts["notification_count"].as_u64().expect("a count"),
        counts["highlight_count"]
            .as_u64()
            .expect("a highlight count"),
    )
}

/// Marks `event` read for `who` with a receipt of `kind`.
async fn receipt(api: &Api, who: &Person, room: &str, kind: &str, event: &str) {
    let path = format!("/v3/rooms/{room}/receipt/{kind}/{event}");
    let (status, body) = api.post(&path, Some(&who.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

/// The event ids a `/notifications` page lists, in its order.
fn listed_events(page: &Value) -> Vec<&str> {
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect()
}

fn rule_ids(rules: &Value, kind: &str) -> Vec<String> {
    rules["global"][kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} rules in {rules}"))
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_muted_room_stays_at_zero_and_keywords_highlight_across_a_restart() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let muted = shared_room(&api, &bob, &alice).await;
    let other = shared_room(&api, &bob, &alice).await;
    let rules = "/v3/pushrules/global";

    // Element's "mute": an override rule named after the room, matching it, with no actions.
    let mute = json!({"actions": [], "conditions": [
        {"kind": "event_match", "key": "room_id", "pattern": muted}]});
    let response = api
        .put(
            &format!("{rules}/override/{muted}"),
            Some(&alice.token),
            mute,
        )
        .await;
    assert_eq!(response.0, 200, "{}", response.1);
    // A keyword: a content rule that highlights.
    let keyword = json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]});
    let response = api
        .put(
            &format!("{rules}/content/cake"),
            Some(&alice.token),
            keyword,
        )
        .await;
    assert_eq!(response.0, 200, "{}", response.1);

    for (n, text) in ["hello", "is there cake?"].iter().enumerate() {
        send_text(&api, &bob, &muted, &format!("m{n}"), text).await;
        send_text(&api, &bob, &other, &format!("o{n}"), text).await;
    }
    let first = sync(&api, &alice, None, 0).await;
    assert_eq!(
        unread(&first, &muted),
        (0, 0),
        "the muted room shows nothing"
    );
    assert_eq!(unread(&first, &other), (2, 1), "the keyword highlights");
    // Clients that read push rules from account data get them on a first sync.
    let account_data = first["account_data"]["events"].as_array().unwrap();
    let pushed = account_data
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("push rules in account data");
    assert!(rule_ids(&pushed["content"], "override").contains(&muted));

    // Ordering: a new override rule comes right after the master rule, or where it is put.
    let (status, all) = api.get("/v3/pushrules/", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        rule_ids(&all, "override")[..2],
        [".m.rule.master", muted.as_str()]
    );
    assert_eq!(rule_ids(&all, "content")[0], "cake");
    let conditions = json!({"actions": ["notify"], "conditions": []});
    let (client, token) = (&api, alice.token.as_str());
    let put_at = |id: &'static str, query: String| {
        let (path, body) = (format!("{rules}/override/{id}{query}"), conditions.clone());
        async move { client.put(&path, Some(token), body).await }
    };
    assert_eq!(put_at("before", format!("?before={muted}")).await.0, 200);
    assert_eq!(put_at("after", format!("?after={muted}")).await.0, 200);
    // The global scope alone is the ruleset itself.
    let (_, global) = api.get("/v3/pushrules/global/", Some(&alice.token)).await;
    let all = json!({ "global": global });
    assert_eq!(
        rule_ids(&all, "override")[..4],
        [".m.rule.master", "before", muted.as_str(), "after"]
    );
    assert_eq!(
        errcode(&put_at("lost", "?after=nothing-like-it".into()).await),
        (400, Some("M_INVALID_PARAM"))
    );
    assert_eq!(
        errcode(&put_at("lost", "?before=.m.rule.master".into()).await),
        (400, Some("M_INVALID_PARAM")),
        "nothing goes before a server-default rule"
    );
    for id in ["before", "after"] {
        let path = format!("{rules}/override/{id}");
        assert_eq!(api.delete(&path, Some(&alice.token)).await.0, 200);
    }

    // One rule, its enabled flag and its actions.
    let (status, rule) = api
        .get(&format!("{rules}/content/cake"), Some(&alice.token))
        .await;
    assert_eq!((status, &rule["pattern"]), (200, &json!("cake")));
    let enabled = format!("{rules}/content/cake/enabled");
    assert_eq!(
        api.get(&enabled, Some(&alice.token)).await.1,
        json!({"enabled": true})
    );
    let response = api
        .put(&enabled, Some(&alice.token), json!({"enabled": false}))
        .await;
    assert_eq!(response.0, 200);
    assert_eq!(
        api.get(&enabled, Some(&alice.token)).await.1["enabled"],
        false
    );
    api.put(&enabled, Some(&alice.token), json!({"enabled": true}))
        .await;
    let actions = format!("{rules}/override/.m.rule.suppress_notices/actions");
    let response = api
        .put(&actions, Some(&alice.token), json!({"actions": ["notify"]}))
        .await;
    assert_eq!(response.0, 200, "server-default rules take new actions");
    assert_eq!(
        api.get(&actions, Some(&alice.token)).await.1,
        json!({"actions": ["notify"]})
    );

    // What is refused changes nothing.
    let delete = |path: String| async move { client.delete(&path, Some(token)).await };
    assert_eq!(
        errcode(&delete(format!("{rules}/override/.m.rule.master")).await),
        (400, Some("M_INVALID_PARAM")),
        "server-default rules cannot be deleted"
    );
    assert_eq!(
        errcode(&delete(format!("{rules}/override/no-such-rule")).await),
        (404, Some("M_NOT_FOUND"))
    );
    assert_eq!(
        errcode(
            &api.get(&format!("{rules}/room/!nope:x"), Some(&alice.token))
                .await
        ),
        (404, Some("M_NOT_FOUND"))
    );
    assert_eq!(
        errcode(
            &api.put(
                &format!("{rules}/content/.mine"),
                Some(&alice.token),
                json!({"pattern": "x", "actions": []})
            )
            .await
        ),
        (400, Some("M_INVALID_PARAM")),
        "a dot starts only server-default rule ids"
    );
    let response = api
        .put(
            &format!("{rules}/content/nopattern"),
            Some(&alice.token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(
        response.0, 400,
        "a content rule without a pattern: {}",
        response.1
    );
    let response = api
        .put(
            &format!("{rules}/content/x/enabled"),
            Some(&alice.token),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(errcode(&response), (404, Some("M_NOT_FOUND")));
    let (_, after) = api.get("/v3/pushrules/", Some(&alice.token)).await;
    assert!(
        !rule_ids(&after, "content")
            .iter()
            .any(|id| id == ".mine" || id == "nopattern")
    );
    assert!(rule_ids(&after, "override").contains(&".m.rule.master".to_owned()));

    // After a restart the rules still hold, for rules and for counts.
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let api = api.restart_with(|_| {}).await;
    let (_, again) = api.get("/v3/pushrules/", Some(&alice.token)).await;
    assert_eq!(rule_ids(&again, "override")[1], muted);
    assert_eq!(rule_ids(&again, "content")[0], "cake");
    send_text(&api, &bob, &muted, "m9", "more cake").await;
    send_text(&api, &bob, &other, "o9", "more cake").await;
    let later = sync(&api, &alice, Some(&since), 0).await;
    assert_eq!(unread(&later, &muted), (0, 0));
    assert_eq!(unread(&later, &other), (3, 2));

    // Rules a client writes as account data count as well: here it mutes the other room.
    let mut written = again.clone();
    written["global"]["override"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"rule_id": "quiet", "default": false, "enabled": true, "actions": [],
                          "conditions": [{"kind": "event_match", "key": "room_id", "pattern": other}]}));
    let path = format!("/v3/user/{}/account_data/m.push_rules", alice.user_id);
    assert_eq!(api.put(&path, Some(&alice.token), written).await.0, 200);
    send_text(&api, &bob, &other, "o10", "cake again").await;
    let last = sync(&api, &alice, later["next_batch"].as_str(), 0).await;
    assert_eq!(
        unread(&last, &other),
        (3, 2),
        "no new notification in the room now muted"
    );
    let (_, listed) = api
        .get(&format!("{rules}/override/quiet"), Some(&alice.token))
        .await;
    assert_eq!(listed["rule_id"], "quiet");
}

#[tokio::test]
async fn unread_counts_follow_receipts_mentions_and_own_messages() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let name = format!("/v3/profile/{}/displayname", alice.user_id);
    api.put(
        &name,
        Some(&alice.token),
        json!({"displayname": "Alice A."}),
    )
    .await;
    // Three in the room: the one-to-one rules do not apply.
    let carol = person(&api, "carol").await;
    let room = shared_room(&api, &bob, &alice).await;
    api.post(
        &format!("/v3/rooms/{room}/invite"),
        Some(&bob.token),
        json!({"user_id": carol.user_id}),
    )
    .await;
    api.post(
        &format!("/v3/rooms/{room}/join"),
        Some(&carol.token),
        json!({}),
    )
    .await;

    let mut ids = Vec::new();
    for n in 1..=3 {
        let (_, sent) =
            send_text(&api, &bob, &room, &format!("t{n}"), &format!("message {n}")).await;
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    let first = sync(&api, &alice, None, 0).await;
    assert_eq!(unread(&first, &room), (3, 0));
    assert_eq!(
        unread(&sync(&api, &bob, None, 0).await, &room),
        (0, 0),
        "not for the sender"
    );

    // Alice reads up to the second: one is left.
    receipt(&api, &alice, &room, "m.read", &ids[1]).await;
    let read = sync(&api, &alice, first["next_batch"].as_str(), 5000).await;
    assert_eq!(unread(&read, &room), (1, 0));

    // A mention as Element sends it highlights.
    let mention = json!({"msgtype": "m.text", "body": "Alice A.: look",
                         "m.mentions": {"user_ids": [alice.user_id]}});
    let path = format!("/v3/rooms/{room}/send/m.room.message/mention");
    let (_, sent) = api.put(&path, Some(&bob.token), mention).await;
    ids.push(sent["event_id"].as_str().unwrap().to_owned());
    let mentioned = sync(&api, &alice, read["next_batch"].as_str(), 5000).await;
    assert_eq!(unread(&mentioned, &room), (2, 1));
    // A rule on the display name sees Alice's name in this room.
    let by_name = json!({"actions": ["notify", {"set_tweak": "highlight"}],
                         "conditions": [{"kind": "contains_display_name"}]});
    api.put(
        "/v3/pushrules/global/override/by-name",
        Some(&alice.token),
        by_name,
    )
    .await;
    let (_, sent) = send_text(&api, &bob, &room, "named", "ask Alice A. about it").await;
    ids.push(sent["event_id"].as_str().unwrap().to_owned());
    // Encrypted messages notify as the default rules say.
    let path = format!("/v3/rooms/{room}/send/m.room.encrypted/enc");
    let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
                           "sender_key": "k", "device_id": "D", "session_id": "s"});
    let (_, sent) = api.put(&path, Some(&bob.token), encrypted).await;
    ids.push(sent["event_id"].as_str().unwrap().to_owned());
    let named = sync(&api, &alice, mentioned["next_batch"].as_str(), 5000).await;
    assert_eq!(unread(&named, &room), (4, 2));

    // /notifications: newest first, read or not, highlights alone, in pages.
    let (status, page) = api.get("/v3/notifications", Some(&alice.token)).await;
    assert_eq!(status, 200, "{page}");
    let notifications = page["notifications"].as_array().unwrap();
    let listed_ids = listed_events(&page);
    let mut newest_first: Vec<&str> = ids.iter().map(String::as_str).collect();
    newest_first.reverse();
    assert_eq!(listed_ids[..6], newest_first);
    // The oldest: Bob's invite, which notified Alice; her join read it.
    assert_eq!(notifications[6]["event"]["content"]["membership"], "invite");
    let read_flags: Vec<bool> = notifications.iter().map(|n| n["read"] == true).collect();
    assert_eq!(read_flags, [false, false, false, false, true, true, true]);
    assert!(
        notifications
            .iter()
            .all(|n| n["room_id"] == room.as_str() && n["ts"].is_u64())
    );
    assert!(
        notifications[1]["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("notify"))
    );
    let (_, highlights) = api
        .get("/v3/notifications?only=highlight", Some(&alice.token))
        .await;
    assert_eq!(
        listed_events(&highlights),
        [ids[4].as_str(), ids[3].as_str()]
    );
    let (_, page) = api
        .get("/v3/notifications?limit=4", Some(&alice.token))
        .await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 4);
    let next = page["next_token"].as_str().expect("a next page");
    let (_, rest) = api
        .get(
            &format!("/v3/notifications?limit=4&from={next}"),
            Some(&alice.token),
        )
        .await;
    let rest = listed_events(&rest);
    assert_eq!(rest[..2], [ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(rest.len(), 3);
    assert_eq!(
        errcode(
            &api.get("/v3/notifications?only=everything", Some(&alice.token))
                .await
        ),
        (400, Some("M_INVALID_PARAM"))
    );
    assert_eq!(
        errcode(
            &api.get("/v3/notifications?from=yesterday", Some(&alice.token))
                .await
        ),
        (400, Some("M_INVALID_PARAM"))
    );
    let (_, carols) = api.get("/v3/notifications", Some(&carol.token)).await;
    let carols: Vec<bool> = carols["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["read"] == true)
        .collect();
    assert_eq!(
        carols,
        [false, false, false, false, false, false, true],
        "Carol's own: the same six messages unread, her invite read"
    );

    // A private receipt further on clears the rest; so does sending a message.
    receipt(&api, &alice, &room, "m.read.private", &ids[4]).await;
    let private = sync(&api, &alice, named["next_batch"].as_str(), 5000).await;
    assert_eq!(unread(&private, &room), (1, 0));
    send_text(&api, &bob, &room, "t9", "one more").await;
    send_text(&api, &alice, &room, "a1", "I'm here").await;
    let spoke = sync(&api, &alice, private["next_batch"].as_str(), 5000).await;
    assert_eq!(unread(&spoke, &room), (0, 0));
    let (_, listed) = api.get("/v3/notifications", Some(&alice.token)).await;
    assert!(
        listed["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["read"] == true)
    );
}

#[tokio::test]
async fn pushers_are_kept_per_device_and_listed() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let pusher = json!({"kind": "http", "app_id": "io.element.elementx", "pushkey": "token-1",
                        "app_display_name": "Element X", "device_display_name": "Phone",
                        "lang": "en", "data": {"url": "https://push.example/_matrix/push/v1/notify"}});
    let (status, body) = api
        .post("/v3/pushers/set", Some(&alice.token), pusher.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, listed) = api.get("/v3/pushers", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["pushers"].as_array().unwrap().len(), 1);
    assert_eq!(listed["pushers"][0]["pushkey"], "token-1");
    assert_eq!(listed["pushers"][0]["data"]["url"], pusher["data"]["url"]);
    let bob = person(&api, "bob").await;
    let (_, bobs) = api.get("/v3/pushers", Some(&bob.token)).await;
    assert_eq!(bobs["pushers"], json!([]));

    // Bad input changes nothing.
    let mut no_url = pusher.clone();
    no_url["pushkey"] = "token-2".into();
    no_url["data"] = json!({});
    assert_eq!(
        api.post("/v3/pushers/set", Some(&alice.token), no_url)
            .await
            .0,
        400
    );
    let mut long_key = pusher.clone();
    long_key["pushkey"] = "k".repeat(513).into();
    assert_eq!(
        errcode(
            &api.post("/v3/pushers/set", Some(&alice.token), long_key)
                .await
        ),
        (400, Some("M_INVALID_PARAM"))
    );
    assert_eq!(
        api.get("/v3/pushers", Some(&alice.token)).await.1["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // `kind: null` deletes it.
    let delete = json!({"kind": null, "app_id": "io.element.elementx", "pushkey": "token-1"});
    assert_eq!(
        api.post("/v3/pushers/set", Some(&alice.token), delete)
            .await
            .0,
        200
    );
    assert_eq!(
        api.get("/v3/pushers", Some(&alice.token)).await.1["pushers"],
        json!([])
    );

    // A pusher goes with the device that set it.
    api.post("/v3/pushers/set", Some(&alice.token), pusher)
        .await;
    let (_, other) = api.login("alice", "password").await;
    let other_token = other["access_token"].as_str().unwrap();
    assert_eq!(
        api.get("/v3/pushers", Some(other_token)).await.1["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.post("/v3/logout", Some(&alice.token), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        api.get("/v3/pushers", Some(other_token)).await.1["pushers"],
        json!([])
    );
}
