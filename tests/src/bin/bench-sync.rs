//! Benchmark: one node on loopback, real HTTP. Reports (1) the latency from sending a message to
//! its arrival in another user's long-polling `/sync`, as p50/p95/p99 over N messages, and
//! (2) messages per second accepted with 8 concurrent senders.
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-sync [-- MESSAGES]`

use std::time::Instant;

use hyphae_tests::TestNode;
use hyphae_tests::client::{ms, percentile, post, register, send, sync_latencies};
use serde_json::json;

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let node = TestNode::start_with(|config| {
        // The benchmark registers many users from one address.
        config.auth_rate_limit.burst = 1000;
    })
    .await;
    let http = reqwest::Client::new();
    let base = node.client_url("/_matrix/client/v3");

    let alice = register(&http, &base, "alice").await;
    let bob = register(&http, &base, "bob").await;
    let room = post(
        &http,
        &format!("{base}/createRoom"),
        &alice.token,
        json!({"preset": "public_chat"}),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    post(&http, &format!("{base}/join/{room}"), &bob.token, json!({})).await;

    // (1) send -> arrival in Bob's long-poll.
    let latencies = sync_latencies(&http, (&base, &alice), (&base, &bob), &room, messages).await;
    let percentile = |p: f64| percentile(&latencies, p);
    println!(
        "send -> long-poll /sync arrival, {messages} messages: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        ms(percentile(0.50)),
        ms(percentile(0.95)),
        ms(percentile(0.99)),
    );

    // (2) 8 concurrent senders, each its own user.
    let mut senders = Vec::new();
    for n in 0..8 {
        let user = register(&http, &base, &format!("sender{n}")).await;
        post(
            &http,
            &format!("{base}/join/{room}"),
            &user.token,
            json!({}),
        )
        .await;
        senders.push(user);
    }
    let per_sender = messages;
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|user| {
            let (http, base, room) = (http.clone(), base.clone(), room.clone());
            tokio::spawn(async move {
                for n in 0..per_sender {
                    send(
                        &http,
                        &base,
                        &user.token,
                        &room,
                        &format!("c{n}"),
                        "concurrent",
                    )
                    .await;
                }
                user.user_id
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = 8 * per_sender;
    println!(
        "8 concurrent senders, {total} messages: {:.0} messages/s ({:.2} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
