//! Server-side search on real nodes: what a user finds, in which order, with what around it,
//! page by page; what they must not find (other rooms, rooms they left, history from before
//! they joined, redacted and encrypted messages); odd queries; a restart.

use std::time::Duration;

use serde_json::{Value, json};

use super::test_support::{Api, Person, app, message_bodies, owned, owned_by, person, signed_in};
use crate::federation::room_tests::{eventually, send_text, two_nodes_in_a_room};

/// `POST /search` for `term` with the rest of `room_events` from `criteria`.
async fn search_with(api: &Api, who: &Person, term: &str, criteria: Value) -> (u16, Value) {
    search_page(api, who, term, criteria, None).await
}

async fn search_page(
    api: &Api,
    who: &Person,
    term: &str,
    mut criteria: Value,
    next_batch: Option<&str>,
) -> (u16, Value) {
    criteria["search_term"] = term.into();
    let path = match next_batch {
        Some(token) => format!("/v3/search?next_batch={token}"),
        None => "/v3/search".to_owned(),
    };
    let (status, body) = api
        .post(
            &path,
            Some(&who.token),
            json!({"search_categories": {"room_events": criteria}}),
        )
        .await;
    (status, body["search_categories"]["room_events"].clone())
}

/// The bodies found, best or newest first.
async fn found(api: &Api, who: &Person, term: &str) -> Vec<String> {
    let (status, found) = search_with(api, who, term, json!({"order_by": "recent"})).await;
    assert_eq!(status, 200, "{found}");
    bodies(&found)
}

fn bodies(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results: {found}"))
        .iter()
        .map(|r| {
            let content = &r["result"]["content"];
            content["body"]
                .as_str()
                .or(content["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn context_bodies(found: &Value, side: &str) -> Vec<String> {
    message_bodies(&found["results"][0]["context"][side])
}

#[tokio::test]
async fn messages_are_found_by_a_word_newest_or_best_first_with_context_and_pages() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let (status, _) = api
        .put(
            &format!("/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(status, 200);
    let room = api
        .create_room(
            &alice.token,
            json!({"preset": "private_chat", "name": "Plans"}),
        )
        .await;
    for text in [
        "good morning",
        "fountain fountain fountain!",
        "by the fountain we wait for a long time, talking about many other things",
        "see you there",
    ] {
        send_text(&api, &alice, &room, text).await;
    }

    let (status, recent) = search_with(
        &api,
        &alice,
        "Fountain",
        json!({"order_by": "recent",
               "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true}}),
    )
    .await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(recent["count"], 2);
    assert_eq!(recent["highlights"], json!(["fountain"]));
    assert_eq!(
        bodies(&recent),
        [
            "by the fountain we wait for a long time, talking about many other things",
            "fountain fountain fountain!"
        ]
    );
    let first = &recent["results"][0];
    assert_eq!(first["result"]["room_id"], room.as_str());
    assert!(first["rank"].is_number(), "{first}");
    assert_eq!(
        context_bodies(&recent, "events_before"),
        ["fountain fountain fountain!"]
    );
    assert_eq!(context_bodies(&recent, "events_after"), ["see you there"]);
    assert!(first["context"]["start"].is_string() && first["context"]["end"].is_string());
    assert_eq!(
        first["context"]["profile_info"][&alice.user_id]["displayname"],
        "Alice"
    );

    // By rank, the message that is all fountain comes first; by default too.
    let (_, ranked) = search_with(&api, &alice, "fountain", json!({"order_by": "rank"})).await;
    assert_eq!(bodies(&ranked)[0], "fountain fountain fountain!");
    let (_, default) = search_with(&api, &alice, "fountain", json!({})).await;
    assert_eq!(bodies(&default), bodies(&ranked));

    // One at a time, newest first, until there is no next batch.
    for order in ["recent", "rank"] {
        let criteria = json!({"order_by": order, "filter": {"limit": 1}});
        let (_, page) = search_with(&api, &alice, "fountain", criteria.clone()).await;
        let mut seen = bodies(&page);
        let next = page["next_batch"]
            .as_str()
            .expect("a second page")
            .to_owned();
        let (status, page) = search_page(&api, &alice, "fountain", criteria, Some(&next)).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.get("next_batch").is_none(), "{page}");
        seen.extend(bodies(&page));
        assert_eq!(seen.len(), 2, "{order}");
        assert_ne!(seen[0], seen[1], "{order}");
    }
    let (status, body) = search_page(&api, &alice, "fountain", json!({}), Some("p12")).await;
    assert_eq!(status, 400, "a token of the other order: {body}");

    // The room's name is found with its key.
    let (_, names) = search_with(&api, &alice, "plans", json!({"keys": ["content.name"]})).await;
    assert_eq!(bodies(&names), ["Plans"]);
    let (status, _) = search_with(&api, &alice, "plans", json!({"keys": ["content.url"]})).await;
    assert_eq!(status, 400);

    // What a user types is words, never query syntax: no SQL error, just nothing found.
    for odd in ["\"foo", "AND OR", "NEAR(", "*", "fountain\"", "-", ""] {
        let (status, found) = search_with(&api, &alice, odd, json!({})).await;
        assert_eq!(status, 200, "{odd:?}: {found}");
        assert!(found["results"].is_array(), "{odd:?}: {found}");
    }
    assert_eq!(found(&api, &alice, "fountain\"").await.len(), 2);

    // A redacted message is no longer found.
    let (_, ranked) = search_with(&api, &alice, "fountain", json!({"order_by": "rank"})).await;
    let redacted = ranked["results"][0]["result"]["event_id"].as_str().unwrap();
    let (status, _) = api
        .put(
            &format!("/v3/rooms/{room}/redact/{redacted}/r1"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        found(&api, &alice, "fountain").await,
        ["by the fountain we wait for a long time, talking about many other things"]
    );
}

#[tokio::test]
async fn only_what_the_user_may_read_is_found() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;

    // Bob's own room: not Alice's to search.
    let bobs = api
        .create_room(&bob.token, json!({"preset": "private_chat"}))
        .await;
    send_text(&api, &bob, &bobs, "lantern in Bob's room").await;

    // A room where members read history only from when they joined.
    let room = api
        .create_room(
            &alice.token,
            json!({"preset": "public_chat",
                   "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                      "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    send_text(&api, &alice, &room, "lantern before Bob").await;
    let (status, _) = api
        .post(&format!("/v3/join/{room}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 200);
    send_text(&api, &alice, &room, "lantern after Bob").await;

    assert_eq!(
        found(&api, &alice, "lantern").await,
        ["lantern after Bob", "lantern before Bob"]
    );
    assert_eq!(
        found(&api, &bob, "lantern").await,
        ["lantern after Bob", "lantern in Bob's room"]
    );
    let (_, only_bobs) =
        search_with(&api, &bob, "lantern", json!({"filter": {"rooms": [bobs]}})).await;
    assert_eq!(bodies(&only_bobs), ["lantern in Bob's room"]);

    // A room Alice left gives nothing.
    let (status, _) = api
        .post(
            &format!("/v3/rooms/{room}/leave"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(found(&api, &alice, "lantern").await.is_empty());
}

#[tokio::test]
async fn encrypted_messages_are_not_searched_and_the_index_survives_a_restart() {
    let api = owned("alice").await;
    let alice = signed_in(&api, "alice").await;
    let secret = app(&api).create_group("Secret", &[]).await.unwrap();
    app(&api)
        .send_text(&secret, "the password is swordfish")
        .await
        .unwrap();
    let open = api
        .create_room(&alice.token, json!({"preset": "private_chat"}))
        .await;
    send_text(&api, &alice, &open, "swordfish for dinner").await;
    eventually(
        Duration::from_secs(10),
        "the encrypted message stored",
        || async {
            let (_, page) = api
                .get(
                    &format!("/v3/rooms/{secret}/messages?dir=b&limit=50"),
                    Some(&alice.token),
                )
                .await;
            page["chunk"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e["type"] == "m.room.encrypted"))
        },
    )
    .await;
    assert_eq!(
        found(&api, &alice, "swordfish").await,
        ["swordfish for dinner"]
    );

    let api = api.restart_with(owned_by("alice")).await;
    let alice = signed_in(&api, "alice").await;
    assert_eq!(
        found(&api, &alice, "swordfish").await,
        ["swordfish for dinner"]
    );
    assert_eq!(
        found(&api, &alice, "dinner").await,
        ["swordfish for dinner"]
    );
}

#[tokio::test]
async fn messages_from_another_server_are_found() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    send_text(&b, &bob, &room, "the ferry leaves at six").await;
    eventually(
        Duration::from_secs(10),
        "Bob's message found at Alice's",
        || async { found(&a, &alice, "ferry").await == ["the ferry leaves at six"] },
    )
    .await;
}
