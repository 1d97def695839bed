//! Backfill from a hostile member: Mallory's server (a peer the test runs, joined to the room)
//! answers a late joiner's `/backfill` with the room's real history plus a message it made up
//! on an old event, validly signed and allowed by its own auth events. Only the history asked
//! for is taken.

use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::federation::history_tests::join_via;
use crate::federation::hostile_peer::{Peer, accepting};
use crate::federation::hostile_tests::{Tip, tip};
use crate::federation::room_tests::{Person, eventually, person, send_text, texts};
use crate::rooms::urlencode;

/// Answers `/backfill` with whatever `answer` holds.
fn backfilling(answer: Arc<Mutex<Vec<Value>>>) -> axum::Router {
    accepting().route(
        "/_matrix/federation/v1/backfill/{room_id}",
        axum::routing::get(move || {
            let pdus = answer.lock().unwrap().clone();
            async move { axum::Json(json!({"origin": "", "origin_server_ts": 0, "pdus": pdus})) }
        }),
    )
}

#[tokio::test]
async fn a_member_cannot_slip_a_made_up_fork_into_backfilled_history() {
    crate::federation::room_tests::log_to_test_output();
    let a = Api::start_federated().await;
    let alice = person(&a, "alice").await;
    let room = a.create_public_room(&alice.token).await;
    let answer = Arc::new(Mutex::new(Vec::new()));
    let mallorys = Peer::start(backfilling(answer.clone())).await;
    mallorys.connect(&a).await;
    mallorys.join(&a, &room, "mallory").await;
    let old = [
        send_text(&a, &alice, &room, "one").await,
        send_text(&a, &alice, &room, "two").await,
        send_text(&a, &alice, &room, "three").await,
    ];

    // Bob's node joins late through Alice's: it has the state, not the messages.
    let b = Api::start_federated().await;
    let bob = person(&b, "bob").await;
    b.connect(&a).await;
    mallorys.connect(&b).await;
    join_via(&b, &bob, &room, &a).await;
    let bobs_join = b
        .node
        .store()
        .membership(room.clone(), bob.user_id.clone())
        .await
        .unwrap()
        .unwrap()
        .event_id;

    // Mallory's server holds the real history (it asks Alice's, as a member may), and adds a
    // message of Mallory's built on the first one: no server has it, nothing descends from it.
    let (status, history) = mallorys
        .request(
            &a,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=100",
                urlencode(&room),
                urlencode(&bobs_join)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let mut fork_tip = tip(&a, &room).await;
    fork_tip.prev_events = vec![old[0].clone()];
    let mallory = mallorys.user("mallory");
    let (fork_id, fork) = mallorys.event(
        &fork_tip,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "made up"}),
    );
    let mut pdus = history["pdus"].as_array().unwrap().clone();
    pdus.insert(1, fork);
    *answer.lock().unwrap() = pdus;

    // Alice's node goes away: Bob's asks Mallory's for the history.
    let _gone = a.stop().await;
    eventually(
        std::time::Duration::from_secs(15),
        "the history on Bob's node",
        || async { texts(&b, &bob, &room).await.len() >= 3 },
    )
    .await;
    assert_eq!(texts(&b, &bob, &room).await, ["one", "two", "three"]);
    assert!(
        b.node.store().pdu(fork_id.clone()).await.unwrap().is_none(),
        "the made-up event was kept"
    );
}

/// Sets `user`'s power level in `room` as `who` on `api`; returns the event's id.
async fn set_power(api: &Api, who: &Person, room: &str, user: &str, level: i64) -> String {
    let path = format!("/v3/rooms/{room}/state/m.room.power_levels/");
    let (status, mut levels) = api.get(&path, Some(&who.token)).await;
    assert_eq!(status, 200, "{levels}");
    levels["users"][user] = level.into();
    let (status, body) = api.put(&path, Some(&who.token), levels).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn backfilled_history_is_checked_against_the_state_before_it_when_known() {
    crate::federation::room_tests::log_to_test_output();
    let b = Api::start_federated().await;
    let bob = person(&b, "bob").await;
    let room = b.create_public_room(&bob.token).await;
    // Mallory's server: no gap filled (it says it has nothing), the state it is asked for is
    // whatever `state_ids` holds, and its backfill answer whatever `history` holds.
    let state_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let history = Arc::new(Mutex::new(Vec::new()));
    let router = backfilling(history.clone())
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "no"})),
                )
            }),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            axum::routing::get({
                let state_ids = state_ids.clone();
                move || {
                    let ids = state_ids.lock().unwrap().clone();
                    async move { axum::Json(json!({"pdu_ids": ids, "auth_chain_ids": []})) }
                }
            }),
        );
    let mallorys = Peer::start(router).await;
    mallorys.connect(&b).await;
    mallorys.join(&b, &room, "mallory").await;
    let mallory = mallorys.user("mallory");
    let when_powerful = set_power(&b, &bob, &room, &mallory, 100).await;
    set_power(&b, &bob, &room, &mallory, 0).await;

    // Mallory's topic change, citing the power levels of when she had power but built on the
    // room as it is now (where she has none): allowed by its own auth events only. Then a
    // message of hers on top of it, sent to Bob's node, whose gap she will not fill.
    let now = tip(&b, &room).await;
    let mut then = now.clone();
    then.state.insert(
        (ruma::events::StateEventType::RoomPowerLevels, String::new()),
        when_powerful,
    );
    let (topic_id, topic) = mallorys.event(
        &then,
        &mallory,
        "m.room.topic",
        Some(""),
        json!({"topic": "Mallory rules here"}),
    );
    let on_topic = Tip {
        prev_events: vec![topic_id.clone()],
        depth: now.depth + 1,
        ..now.clone()
    };
    let (message_id, message) = mallorys.event(
        &on_topic,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "on my topic"}),
    );
    *state_ids.lock().unwrap() = now.state.values().cloned().collect();
    *history.lock().unwrap() = vec![topic];
    let (status, answer) = mallorys.send(&b, vec![message]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["pdus"][&message_id].get("error").is_none(),
        "{answer}"
    );

    // Paging back asks Mallory's server for the topic change: the state before it is known
    // here, and it does not allow it.
    assert_eq!(texts(&b, &bob, &room).await, ["on my topic"]);
    let stored = b.node.store().pdu(topic_id.clone()).await.unwrap();
    assert!(
        stored
            .as_ref()
            .is_some_and(|pdu| pdu.rejection_reason.is_some()),
        "the topic change was taken: {stored:?}"
    );
    let (status, messages) = b
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=100"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200, "{messages}");
    assert!(
        !messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["event_id"] == topic_id),
        "{messages}"
    );
}
