//! A member's deep auth chain and a fork over it, as a hostile server would make them: the
//! node stays up and answers, and the forking event is resolved or refused with the reason,
//! within a bound.
//!
//! The chain is power-level edits by the room's creator, each authorised by the one before,
//! put in the victim's store directly as the outliers it would have fetched: over the wire each
//! of the thousands of events would be a commit of its own, minutes of a test. The event that
//! forks over it comes over the wire from the creator's server, as an attacker would send it.

use std::time::{Duration, Instant};

use hyphae_store::NewPdu;
use ruma::RoomVersionId;
use ruma::events::StateEventType;
use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::federation::hostile_tests::{
    Tip, draft_on, event_id, key_of, send_pdus, sign, still_delivers, tip, to_value,
};
use crate::federation::room_tests::{
    Person, send_text, two_nodes_in_a_room, two_nodes_in_a_room_with,
};

/// Events in the deep chain: past what the recursive walk state resolution used survives on a
/// 2 MiB stack (it crashed the node in each run before the fix).
const DEEP: usize = 20_000;
/// A chain the node resolves within its limits, even in a debug build.
const SHALLOW: usize = 1_000;
/// How long the forking event may take to be answered: the default resolution time, and more
/// than enough to read the graph.
const ANSWERED_WITHIN: Duration = Duration::from_secs(30);

/// A power-levels content as `tip`'s, with one custom event level changed to `n`.
async fn power_levels(on: &Api, tip: &Tip, n: usize) -> Value {
    let id = &tip.state[&(StateEventType::RoomPowerLevels, String::new())];
    let stored = on.node.store().pdu(id.clone()).await.unwrap().unwrap();
    let pdu: Value = serde_json::from_str(&stored.json).unwrap();
    let mut content = pdu["content"].clone();
    content["events"]["org.example.counter"] = n.into();
    content
}

/// `length` power-level edits by `sender` (the room's creator), each authorised by the one
/// before, built on `base` and stored on `on` as the outliers it would have fetched. Their
/// signatures are left out: a stored event is not verified again, and signing thousands in a
/// debug build would take most of the test's time. Returns the last one's id.
async fn deep_power_chain(on: &Api, base: &Tip, sender: &str, length: usize) -> String {
    let key = (StateEventType::RoomPowerLevels, String::new());
    let mut content = power_levels(on, base, 0).await;
    let template = draft_on(
        base,
        sender,
        "m.room.power_levels",
        Some(""),
        content.clone(),
    );
    let member = base.state[&(StateEventType::RoomMember, sender.to_owned())].clone();
    let mut previous = base.state[&key].clone();
    let mut chain = Vec::with_capacity(length);
    for n in 1..=length {
        content["events"]["org.example.counter"] = n.into();
        let mut auth_events = vec![member.clone(), previous.clone()];
        auth_events.sort();
        let depth = base.depth + i64::try_from(n).unwrap();
        let mut pdu = template.clone();
        for (field, value) in [
            ("content", content.clone()),
            ("auth_events", json!(auth_events)),
            ("prev_events", json!([previous])),
            ("depth", json!(depth)),
        ] {
            pdu.insert(field.into(), serde_json::from_value(value).unwrap());
        }
        let id = event_id(&base.version, &pdu);
        chain.push(NewPdu {
            event_id: id.clone(),
            room_id: base.room.clone(),
            depth,
            sender: sender.to_owned(),
            event_type: "m.room.power_levels".into(),
            state_key: Some(String::new()),
            origin_server_ts: 0,
            json: serde_json::to_string(&pdu).unwrap(),
            prev_events: vec![previous.clone()],
            auth_events,
            rejection_reason: None,
            outlier: true,
        });
        previous = id;
    }
    on.node.store().append_pdus(chain).await.unwrap();
    previous
}

/// Builds the attack on a room where Alice (on `a`, the creator) and Bob (on `b`) are: a
/// chain of `length` power-level edits `b` holds, Bob's message making `b`'s latest event, and
/// then Alice's server sending a power-level change on top of the chain but on the branch
/// before Bob's message, so `b` must resolve the two branches' power levels over the chain.
/// Returns the forking event's id, `b`'s answer and how long it took.
async fn fork_over_a_deep_chain(
    (a, b): (&Api, &Api),
    (alice, bob): (&Person, &Person),
    room: &str,
    length: usize,
) -> (String, Value, Duration) {
    let key = key_of(a);
    let base = tip(b, room).await;
    assert_eq!(base.version, RoomVersionId::V12, "the default room version");
    let started = Instant::now();
    let top = deep_power_chain(b, &base, &alice.user_id, length).await;
    eprintln!(
        "{length} chain events built and stored in {:?}",
        started.elapsed()
    );
    send_text(b, bob, room, "on the other branch").await;

    let mut fork = base.clone();
    fork.state
        .insert((StateEventType::RoomPowerLevels, String::new()), top);
    let content = power_levels(b, &base, length + 1).await;
    let mut pdu = draft_on(
        &fork,
        &alice.user_id,
        "m.room.power_levels",
        Some(""),
        content,
    );
    sign(&key, &fork.version, &mut pdu);
    let id = event_id(&fork.version, &pdu);
    let started = Instant::now();
    let (status, answer) =
        tokio::time::timeout(ANSWERED_WITHIN, send_pdus(a, b, vec![to_value(&pdu)]))
            .await
            .expect("the fork over a deep auth chain is answered within the bound");
    let took = started.elapsed();
    eprintln!("the fork over {length} events answered in {took:?}: {answer}");
    assert_eq!(status, 200, "{answer}");
    (id, answer, took)
}

/// The node still serves its users and takes federation.
async fn still_up(a: &Api, alice: &Person, b: &Api, bob: &Person, room: &str) {
    let (status, body) = b.get("/versions", None).await;
    assert_eq!(status, 200, "{body}");
    still_delivers((a, alice), (b, bob), room, "still here").await;
}

/// The room's power-levels event as Bob's client reads it.
async fn power_levels_event(b: &Api, bob: &Person, room: &str) -> String {
    let (status, state) = b
        .get(&format!("/v3/rooms/{room}/state"), Some(&bob.token))
        .await;
    assert_eq!(status, 200, "{state}");
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test]
async fn a_fork_over_a_deep_auth_chain_is_answered_and_the_node_stays_up() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let before = power_levels_event(&b, &bob, &room).await;
    let (fork, answer, _) = fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, DEEP).await;
    // Resolved within the node's limits (the fork wins: all of the creator's edits are
    // allowed), or refused with the reason when resolving takes longer (a debug build).
    let now = power_levels_event(&b, &bob, &room).await;
    match answer["pdus"][&fork]["error"].as_str() {
        None => assert_eq!(now, fork, "accepted: {answer}"),
        Some(error) => {
            assert!(error.contains("refused"), "{answer}");
            assert_eq!(now, before, "refused: {answer}");
        }
    }
    still_up(&a, &alice, &b, &bob, &room).await;
}

#[tokio::test]
async fn a_fork_over_a_chain_within_the_limits_is_resolved() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let (fork, answer, _) = fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, SHALLOW).await;
    assert_eq!(answer["pdus"][&fork], json!({}), "{answer}");
    assert_eq!(power_levels_event(&b, &bob, &room).await, fork);
    still_up(&a, &alice, &b, &bob, &room).await;
}

#[tokio::test]
async fn a_resolution_over_more_than_the_limit_is_refused_with_the_reason() {
    let limit = SHALLOW / 2;
    let (a, b, alice, bob, room) = two_nodes_in_a_room_with(|config| {
        config.peer_limits.resolution_events = limit;
    })
    .await;
    let before = power_levels_event(&b, &bob, &room).await;
    let (fork, answer, took) =
        fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, SHALLOW).await;
    let error = answer["pdus"][&fork]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("more than {limit} events")) && error.contains("refused"),
        "refused with the reason: {answer}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
    assert_eq!(power_levels_event(&b, &bob, &room).await, before);
    still_up(&a, &alice, &b, &bob, &room).await;
}
