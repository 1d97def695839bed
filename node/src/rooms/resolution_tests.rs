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
use ruma::events::StateEventType;
use ruma::{CanonicalJsonObject, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::federation::hostile_tests::{
    Tip, draft_on, event_id, key_of, send_pdus, sign, state_ids, still_delivers, tip, to_value,
};
use crate::federation::room_tests::{
    Person, another_room, send_text, two_nodes_in_a_room, two_nodes_in_a_room_with,
};

/// Events in the deep chain: past what the recursive walk state resolution used survives on a
/// 2 MiB stack (it crashed the node in each run before the fix).
const DEEP: usize = 20_000;
/// A chain the node resolves within its limits, even in a debug build.
const SHALLOW: usize = 1_000;
/// How long the forking event may take to be answered: the default resolution time, and more
/// than enough to read the graph, in a debug build on a shared 2-core machine (it took over 30 s
/// there with two other builds running).
const ANSWERED_WITHIN: Duration = Duration::from_secs(60);

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

/// Prepares the attack on a room where Alice (on `a`, the creator) and Bob (on `b`) are: a
/// chain of `length` power-level edits `b` holds, Bob's message making `b`'s latest event, and
/// Alice's power-level change on top of the chain but on the branch before Bob's message, so
/// `b` must resolve the two branches' power levels over the chain. Returns the forking event,
/// signed by Alice's server, not sent yet.
async fn deep_chain_and_fork(
    (a, b): (&Api, &Api),
    (alice, bob): (&Person, &Person),
    room: &str,
    length: usize,
) -> CanonicalJsonObject {
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
    sign(&key_of(a), &fork.version, &mut pdu);
    pdu
}

/// The attack of `deep_chain_and_fork`, the fork sent by Alice's server. Returns the forking
/// event's id, `b`'s answer and how long it took.
async fn fork_over_a_deep_chain(
    (a, b): (&Api, &Api),
    (alice, bob): (&Person, &Person),
    room: &str,
    length: usize,
) -> (String, Value, Duration) {
    let pdu = deep_chain_and_fork((a, b), (alice, bob), room, length).await;
    let id = event_id(&RoomVersionId::V12, &pdu);
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

/// Whether `event` is in the room's state as Bob's client reads it.
async fn in_state(b: &Api, bob: &Person, room: &str, event: &str) -> bool {
    state_ids(b, bob, room).await.iter().any(|id| id == event)
}

#[tokio::test]
async fn a_fork_over_a_deep_auth_chain_is_answered_and_the_node_stays_up() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let (fork, answer, _) = fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, DEEP).await;
    // Resolved within the node's limits (the fork wins: all of the creator's edits are
    // allowed), or refused with the reason when resolving takes longer (a debug build).
    let taken = in_state(&b, &bob, &room, &fork).await;
    match answer["pdus"][&fork]["error"].as_str() {
        None => assert!(taken, "accepted but not in the state: {answer}"),
        Some(error) => {
            assert!(error.contains("refused"), "{answer}");
            assert!(!taken, "refused but in the state: {answer}");
        }
    }
    // In the forked room every later event of Alice's is resolved against the fork again (her
    // server never saw it), which may take as long and be refused in a debug build: the node
    // staying up is shown in another room.
    let other = another_room((&a, &alice), (&b, &bob), json!({"preset": "private_chat"})).await;
    still_up(&a, &alice, &b, &bob, &other).await;
}

#[tokio::test]
async fn a_fork_over_a_chain_within_the_limits_is_resolved() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let (fork, answer, _) = fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, SHALLOW).await;
    assert_eq!(answer["pdus"][&fork], json!({}), "{answer}");
    assert!(in_state(&b, &bob, &room, &fork).await);
    still_up(&a, &alice, &b, &bob, &room).await;
}

#[tokio::test]
async fn a_resolution_over_more_than_the_limit_is_refused_with_the_reason() {
    let limit = SHALLOW / 2;
    let (a, b, alice, bob, room) = two_nodes_in_a_room_with(|config| {
        config.peer_limits.resolution_events = limit;
    })
    .await;
    let before = state_ids(&b, &bob, &room).await;
    let (fork, answer, took) =
        fork_over_a_deep_chain((&a, &b), (&alice, &bob), &room, SHALLOW).await;
    let error = answer["pdus"][&fork]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("more than {limit} events")) && error.contains("refused"),
        "refused with the reason: {answer}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
    assert_eq!(state_ids(&b, &bob, &room).await, before);
    still_up(&a, &alice, &b, &bob, &room).await;
}

/// The resident memory of this process now, in KiB (Linux).
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `work`, sampling the process's resident memory meanwhile; returns its output, how long
/// it took and the most memory it added over what was resident before, in KiB.
async fn measured<T>(work: impl Future<Output = T>) -> (T, Duration, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let before = resident_kib();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let peak = std::sync::Arc::new(AtomicU64::new(before));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(resident_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let started = Instant::now();
    let output = work.await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let added = peak.load(Ordering::Relaxed).saturating_sub(before);
    (output, took, added)
}

/// Figures: state resolution over a deep auth chain with a fork (20,000 events unless
/// `HYPHAE_BENCH_CHAIN` says otherwise), with the node's default limits: the resolution alone,
/// run several times (median and slowest, and the most resident memory one run added), then
/// the forking event over the wire once (time to the answer, and the answer).
///
/// Run: `cargo test --release -p hyphae-node --lib bench_resolution_over_a_deep_chain --
/// --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn bench_resolution_over_a_deep_chain() {
    const RUNS: usize = 7;
    let length: usize = std::env::var("HYPHAE_BENCH_CHAIN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let pdu = deep_chain_and_fork((&a, &b), (&alice, &bob), &room, length).await;

    // The resolution the fork needs, alone: the current state against the state after it.
    let rooms = b.node.app_state().rooms.clone();
    let room_id = RoomId::parse(&room).unwrap();
    let version = RoomVersionId::V12;
    let fork = crate::rooms::verify_pdu(&version, pdu.clone()).unwrap();
    let current = rooms.state(&room_id).await.unwrap();
    let mut after = current.clone();
    after.insert((StateEventType::RoomPowerLevels, String::new()), fork);
    let mut times = Vec::with_capacity(RUNS);
    let mut most_added = 0;
    let mut outcome = String::new();
    for _ in 0..RUNS {
        let states = vec![current.clone(), after.clone()];
        let (resolved, took, added) = measured(rooms.resolve(&room_id, &version, states)).await;
        outcome = match resolved {
            Ok(state) => format!("resolved ({} state events)", state.len()),
            Err(e) => format!("refused: {e}"),
        };
        times.push(took);
        most_added = most_added.max(added);
    }
    times.sort();
    println!(
        "resolution over a {length}-event auth chain with a fork, {RUNS} runs: median {:?}, \
         fastest {:?}, slowest {:?}; most resident memory added {:.1} MiB; {outcome}",
        times[RUNS / 2],
        times[0],
        times[RUNS - 1],
        most_added as f64 / 1024.0
    );

    let id = event_id(&version, &pdu);
    let ((status, answer), took, added) = measured(send_pdus(&a, &b, vec![to_value(&pdu)])).await;
    assert_eq!(status, 200, "{answer}");
    println!(
        "the fork over the wire: answered in {took:?} (resident memory added {:.1} MiB): {}",
        added as f64 / 1024.0,
        answer["pdus"][&id]
    );
    let (status, _) = b.get("/versions", None).await;
    assert_eq!(status, 200, "the node still answers");
}
