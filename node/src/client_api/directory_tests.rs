//! The room directory on real nodes over loopback libp2p: publishing, who may, listing this
//! server's rooms, another server's and those of the peers around, joining a listed room, and
//! a peer that never answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::test_support::{Api, Person, person};
use crate::federation::hostile_tests::{silent_server, still_delivers};
use crate::federation::room_tests::log_to_test_output;

/// The entries of a `/publicRooms` answer, by room id.
fn entry<'a>(listing: &'a Value, room: &str) -> Option<&'a Value> {
    listing["chunk"]
        .as_array()
        .expect("a chunk")
        .iter()
        .find(|e| e["room_id"] == room)
}

fn room_ids(listing: &Value) -> Vec<String> {
    listing["chunk"]
        .as_array()
        .expect("a chunk")
        .iter()
        .filter_map(|e| e["room_id"].as_str().map(str::to_owned))
        .collect()
}

async fn visibility(api: &Api, room: &str) -> (u16, Value) {
    api.get(&format!("/v3/directory/list/room/{room}"), None)
        .await
}

/// Lists (`public`) or unlists (`private`) a room as `who`; the errcode when refused.
async fn set_visibility(api: &Api, who: &Person, room: &str, visibility: &str) -> Option<String> {
    let (status, body) = api
        .put(
            &format!("/v3/directory/list/room/{room}"),
            Some(&who.token),
            json!({ "visibility": visibility }),
        )
        .await;
    (status != 200).then(|| format!("{status} {}", body["errcode"].as_str().unwrap_or_default()))
}

#[tokio::test]
async fn a_room_published_on_one_device_is_found_and_joined_from_another() {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    let hall = a
        .create_room(
            &alice.token,
            json!({"preset": "public_chat", "visibility": "public", "name": "Hall",
                   "topic": "Where the talks are", "room_alias_name": "hall"}),
        )
        .await;
    let backroom = a
        .create_room(
            &alice.token,
            json!({"preset": "public_chat", "name": "Backroom"}),
        )
        .await;
    assert_eq!(visibility(&a, &hall).await.1["visibility"], "public");
    assert_eq!(visibility(&a, &backroom).await.1["visibility"], "private");
    let (status, body) = visibility(&a, "!nowhere:example").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Bob's node shares no room with Alice's, but is connected to it: Hall is around.
    let (status, listing) = b.get("/v3/publicRooms", Some(&bob.token)).await;
    assert_eq!(status, 200, "{listing}");
    let found = entry(&listing, &hall).unwrap_or_else(|| panic!("Hall listed: {listing}"));
    assert_eq!(found["name"], "Hall");
    assert_eq!(found["topic"], "Where the talks are");
    assert_eq!(found["num_joined_members"], 1);
    // Left out when public (the spec's default).
    assert_eq!(found["join_rule"].as_str().unwrap_or("public"), "public");
    assert_eq!(
        found["canonical_alias"],
        format!("#hall:{}", a.node.server_name())
    );
    assert_eq!(found["world_readable"], false);
    assert_eq!(found["guest_can_join"], false);
    assert!(
        entry(&listing, &backroom).is_none(),
        "never published: {listing}"
    );
    assert_eq!(listing["total_room_count_estimate"], 1);
    // Nobody signed in has Bob's node ask others: it lists its own rooms (none).
    let (status, listing) = b.get("/v3/publicRooms", None).await;
    assert_eq!(status, 200, "{listing}");
    assert!(room_ids(&listing).is_empty(), "{listing}");
    let (status, _) = b
        .get(
            &format!("/v3/publicRooms?server={}", a.node.server_name()),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // A click on the entry: a join by the room id alone (no server in a v12 room id).
    let (status, body) = b
        .post(&format!("/v3/join/{hall}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    still_delivers((&b, &bob), (&a, &alice), &hall, "hello hall").await;
    still_delivers((&a, &alice), (&b, &bob), &hall, "welcome Bob").await;

    // Any peer may read the directory over federation, GET or POST.
    let (status, listing) = b
        .federation(
            &a,
            reqwest::Method::GET,
            "/_matrix/federation/v1/publicRooms?limit=5",
            None,
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(room_ids(&listing), [hall.as_str()]);

    // Asking Alice's server by name: its listing, filtered, with Bob counted.
    let server = a.node.server_name();
    let (status, listing) = b
        .post(
            &format!("/v3/publicRooms?server={server}"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "TALKS"}}),
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(room_ids(&listing), [hall.as_str()]);
    assert_eq!(entry(&listing, &hall).unwrap()["num_joined_members"], 2);
    let (_, listing) = b
        .post(
            &format!("/v3/publicRooms?server={server}"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "garden"}}),
        )
        .await;
    assert!(room_ids(&listing).is_empty(), "{listing}");

    // Bob is in the room but holds no power there: he may not change its listing, nor may
    // Carol, who is not in it; Alice may, and unpublishing takes it out.
    let forbidden = Some("403 M_FORBIDDEN".to_owned());
    assert_eq!(set_visibility(&b, &bob, &hall, "public").await, forbidden);
    let carol = person(&a, "carol").await;
    assert_eq!(
        set_visibility(&a, &carol, &hall, "private").await,
        forbidden
    );
    let (status, _) = a
        .post(&format!("/v3/join/{hall}"), Some(&carol.token), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        set_visibility(&a, &carol, &hall, "private").await,
        forbidden
    );
    assert_eq!(set_visibility(&a, &alice, &hall, "private").await, None);
    assert_eq!(visibility(&a, &hall).await.1["visibility"], "private");
    let (_, listing) = b
        .get(
            &format!("/v3/publicRooms?server={server}"),
            Some(&bob.token),
        )
        .await;
    assert!(room_ids(&listing).is_empty(), "unpublished: {listing}");
    let (_, listing) = a.get("/v3/publicRooms", None).await;
    assert!(entry(&listing, &hall).is_none(), "unpublished: {listing}");

    // The creator publishes it again, this time with the endpoint.
    assert_eq!(set_visibility(&a, &alice, &hall, "public").await, None);
    assert!(entry(&a.get("/v3/publicRooms", None).await.1, &hall).is_some());
}

#[tokio::test]
async fn listings_come_in_pages_with_tokens_both_ways() {
    let a = Api::start().await;
    let alice = person(&a, "alice").await;
    let mut rooms = Vec::new();
    for name in ["Hall", "Garden", "Kitchen"] {
        rooms.push(
            a.create_room(
                &alice.token,
                json!({"preset": "public_chat", "visibility": "public", "name": name}),
            )
            .await,
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v3/publicRooms?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, listing) = a.get(&path, None).await;
        assert_eq!(status, 200, "{listing}");
        assert_eq!(listing["total_room_count_estimate"], 3);
        assert!(room_ids(&listing).len() <= 2);
        if pages > 0 {
            assert!(listing["prev_batch"].is_string(), "{listing}");
        }
        seen.extend(room_ids(&listing));
        pages += 1;
        match listing["next_batch"].as_str() {
            Some(next) => path = format!("/v3/publicRooms?limit=2&since={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    seen.sort();
    rooms.sort();
    assert_eq!(seen, rooms);
    let (status, body) = a.get("/v3/publicRooms?since=nonsense", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    let (status, listing) = a
        .post(
            "/v3/publicRooms",
            Some(&alice.token),
            json!({"third_party_instance_id": "irc"}),
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    assert!(
        room_ids(&listing).is_empty(),
        "no bridged networks here: {listing}"
    );
    let (_, listing) = a
        .post(
            "/v3/publicRooms",
            Some(&alice.token),
            json!({"include_all_networks": true}),
        )
        .await;
    assert_eq!(room_ids(&listing).len(), 3);
    // The POST form needs a user.
    let (status, _) = a.post("/v3/publicRooms", None, json!({})).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_peer_that_never_answers_or_is_gone_does_not_hold_up_the_listing() {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    let gone = Api::start_federated().await;
    b.connect(&a).await;
    b.connect(&gone).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    let hall = a
        .create_room(
            &alice.token,
            json!({"preset": "public_chat", "visibility": "public", "name": "Hall"}),
        )
        .await;
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let (silent, _key, _dir) = silent_server(asked_tx).await;
    let theirs = b.node.transport().unwrap();
    silent
        .dial(theirs.local_peer_id(), theirs.listen_addrs().await.unwrap())
        .await
        .unwrap();
    gone.node.shutdown().await;

    let started = Instant::now();
    let (status, listing) = b.get("/v3/publicRooms", Some(&bob.token)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{listing}");
    assert!(entry(&listing, &hall).is_some(), "{listing}");
    assert!(took < Duration::from_secs(5), "the listing took {took:?}");
    let directory = "/_matrix/federation/v1/publicRooms".to_owned();
    let asked_for = |asked: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        std::iter::from_fn(|| asked.try_recv().ok()).collect::<Vec<_>>()
    };
    assert!(
        asked_for(&mut asked).contains(&directory),
        "the silent peer was asked"
    );

    // Asked again as a user types: the answers are kept a while, nobody is asked again.
    let started = Instant::now();
    let (status, listing) = b
        .post(
            "/v3/publicRooms",
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "hal"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(room_ids(&listing), [hall]);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        !asked_for(&mut asked).contains(&directory),
        "the silent peer was not asked again"
    );
}
