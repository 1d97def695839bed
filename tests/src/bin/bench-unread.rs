//! Benchmark: unread counts for a user in many rooms (default 200 rooms with 50 unread messages
//! each), one node on loopback, real HTTP. The node evaluates push rules once per event and
//! keeps the result; a sync then only counts. Reports what that costs, and from the measured
//! cost of evaluating one event, what evaluating at every sync instead would cost.
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-unread [-- ROOMS UNREAD]`

use std::time::{Duration, Instant};

use hyphae_tests::TestNode;
use hyphae_tests::client::{User, ms, post, register, send};
use serde_json::{Value, json};

/// Sends at once: as several clients would.
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let rooms: usize = args.next().flatten().unwrap_or(200);
    let unread: usize = args.next().flatten().unwrap_or(50);
    let node = TestNode::start().await;
    let http = reqwest::Client::new();
    let base = node.client_url("/_matrix/client/v3");
    let alice = register(&http, &base, "alice").await;
    let bob = register(&http, &base, "bob").await;

    let mut room_ids = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        let created = post(
            &http,
            &format!("{base}/createRoom"),
            &bob.token,
            json!({"invite": [alice.user_id]}),
        )
        .await;
        let room = created["room_id"].as_str().expect("a room").to_owned();
        post(
            &http,
            &format!("{base}/join/{room}"),
            &alice.token,
            json!({}),
        )
        .await;
        room_ids.push(room);
    }
    // Everything so far (room creation, Alice's joins) is evaluated and read.
    timed_sync(&http, &base, &alice, None).await;

    let started = Instant::now();
    let mut jobs: Vec<(String, String)> = Vec::new();
    for n in 0..unread {
        for room in &room_ids {
            jobs.push((room.clone(), format!("u{n}")));
        }
    }
    let chunks: Vec<Vec<(String, String)>> = jobs
        .chunks(jobs.len().div_ceil(CONCURRENCY).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (http, base, token) = (http.clone(), base.clone(), bob.token.clone());
            tokio::spawn(async move {
                for (room, txn) in chunk {
                    send(&http, &base, &token, &room, &txn, "hello there").await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    let events = rooms * unread;
    println!(
        "{events} messages sent into {rooms} rooms in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The first sync after them evaluates them all (once); the next only counts.
    let (evaluating, first) = timed_sync(&http, &base, &alice, None).await;
    check_counts(&first, &room_ids, unread);
    let (counting, counted) = timed_sync(&http, &base, &alice, None).await;
    let per_event = evaluating.saturating_sub(counting) / events.max(1) as u32;

    // An incremental sync with nothing new (what any sync costs here), then one new message
    // and the incremental sync that shows it.
    let next = counted["next_batch"].as_str();
    let (quiet, _) = timed_sync(&http, &base, &alice, next).await;
    send(
        &http,
        &base,
        &bob.token,
        &room_ids[0],
        "one-more",
        "one more",
    )
    .await;
    let (incremental, update) = timed_sync(&http, &base, &alice, next).await;
    let count = &update["rooms"]["join"][&room_ids[0]]["unread_notifications"];
    assert_eq!(count["notification_count"], json!(unread + 1), "{update}");

    println!(
        "evaluating {events} events once: {:.1} ms in all, {:.1} µs per event",
        ms(evaluating.saturating_sub(counting)),
        per_event.as_secs_f64() * 1e6,
    );
    println!(
        "kept: first sync of {rooms} rooms (counting only) {:.1} ms; incremental sync of one \
         room with a new message {:.2} ms (with nothing new: {:.2} ms)",
        ms(counting),
        ms(incremental),
        ms(quiet)
    );
    println!(
        "evaluated at every sync instead (estimated from the per-event cost): first sync \
         {:.1} ms; that incremental sync {:.2} ms ({} unread events evaluated again)",
        ms(counting + per_event * events as u32),
        ms(incremental + per_event * (unread + 1) as u32),
        unread + 1
    );
}

/// A sync with a one-event timeline per room; how long it took and the response.
async fn timed_sync(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    since: Option<&str>,
) -> (Duration, Value) {
    let mut url = format!(
        "{base}/sync?timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D"
    );
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    let started = Instant::now();
    let response: Value = http
        .get(url)
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("sync")
        .json()
        .await
        .expect("a sync response");
    (started.elapsed(), response)
}

fn check_counts(sync: &Value, rooms: &[String], unread: usize) {
    for room in rooms {
        let count = &sync["rooms"]["join"][room]["unread_notifications"]["notification_count"];
        assert_eq!(count, &json!(unread), "room {room}");
    }
}
