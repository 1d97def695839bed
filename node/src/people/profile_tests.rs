//! Other servers' users' profiles across real nodes: asked over federation, cached, refreshed
//! once stale, served while their server is away and after a restart; a member event when
//! nothing is cached; a bounded wait for a server nobody can reach.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::client_api::test_support::{Api, Person, person};
use crate::federation::room_tests::{eventually, log_to_test_output, two_nodes_in_a_room};

pub(super) async fn set_name(api: &Api, who: &Person, name: &str) {
    let (status, body) = api
        .put(
            &format!("/v3/profile/{}/displayname", who.user_id),
            Some(&who.token),
            json!({"displayname": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// `GET /profile/{user_id}{field}` on `api`, as a client that is not signed in.
async fn profile(api: &Api, user_id: &str, field: &str) -> (u16, Value) {
    api.get(&format!("/v3/profile/{user_id}{field}"), None)
        .await
}

async fn displayname(api: &Api, user_id: &str) -> Value {
    let (status, body) = profile(api, user_id, "").await;
    assert_eq!(status, 200, "{body}");
    body["displayname"].clone()
}

#[tokio::test]
async fn a_remote_profile_is_asked_for_cached_refreshed_and_kept_while_its_server_is_away() {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let bob = person(&b, "bob").await;
    set_name(&b, &bob, "Bob").await;

    // Bob shares no room with anyone on A: only his server can say who he is.
    assert_eq!(displayname(&a, &bob.user_id).await, "Bob");
    let (status, body) = profile(&a, &bob.user_id, "/displayname").await;
    assert_eq!((status, body), (200, json!({"displayname": "Bob"})));
    let (status, body) = profile(&a, &bob.user_id, "/avatar_url").await;
    assert_eq!((status, body), (200, json!({})));

    // What A keeps is A's own: asked over federation, it speaks only for its own users.
    let (status, body) = b
        .federation(
            &a,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                bob.user_id
            ),
            None,
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );

    // Bob renames himself: A serves its copy while fresh, then refreshes it once stale.
    set_name(&b, &bob, "Robert").await;
    assert_eq!(
        displayname(&a, &bob.user_id).await,
        "Bob",
        "fresh: not asked again"
    );
    a.node
        .app_state()
        .people
        .profiles
        .set_fresh_for(Duration::ZERO);
    eventually(Duration::from_secs(15), "the new name", || async {
        displayname(&a, &bob.user_id).await == "Robert"
    })
    .await;

    // B stops: A keeps answering with what it has, also after trying to refresh it.
    b.stop().await;
    assert_eq!(displayname(&a, &bob.user_id).await, "Robert");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(displayname(&a, &bob.user_id).await, "Robert");

    // The cache survives a restart (here without any overlay: nobody else can answer).
    let a = a.restart_offline().await;
    assert_eq!(displayname(&a, &bob.user_id).await, "Robert");
}

#[tokio::test]
async fn with_nothing_kept_a_member_event_answers_and_a_stranger_is_not_found_soon() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    set_name(&b, &bob, "Bob in the room").await;
    // Bob's new membership reaches A; A never asked B for the profile.
    let path = format!("/v3/rooms/{room}/state/m.room.member/{}", bob.user_id);
    eventually(
        Duration::from_secs(15),
        "Bob's renamed membership",
        || async { a.get(&path, Some(&alice.token)).await.1["displayname"] == "Bob in the room" },
    )
    .await;
    b.stop().await;
    assert_eq!(displayname(&a, &bob.user_id).await, "Bob in the room");

    // A user of a server nobody reaches (a real key, never started): not found, and soon,
    // for the profile and for each of its fields.
    let nowhere = tempfile::tempdir().unwrap();
    let server = hyphae_p2p::Identity::load_or_create(nowhere.path()).unwrap();
    let stranger = format!("@nobody:{}", server.server_name());
    let started = Instant::now();
    for field in ["", "/displayname", "/avatar_url"] {
        let (status, body) = profile(&a, &stranger, field).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{field}: {body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "one bounded wait, then the server is known to be away: {:?}",
        started.elapsed()
    );
}
