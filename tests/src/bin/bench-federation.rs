//! Benchmark: federation over real libp2p connections on loopback, nodes in one process.
//! (1) A message sent by a client on node A until it arrives in the long-polling `/sync` of a
//! client on node B, over QUIC: p50/p99 over N messages. (2) Fan-out: one room spanning 10 and
//! 50 nodes; the time from sending a message until every node holds it, p50/p99 over M messages.
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-federation [-- MESSAGES FANOUT_MESSAGES]`

use std::time::{Duration, Instant};

use hyphae_node::TransportConfig;
use hyphae_tests::TestNode;
use hyphae_tests::client::{User, ms, percentile, post, register, send, sync_latencies};
use serde_json::json;

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let fanout_messages: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    latency(messages).await;
    for nodes in [10, 50] {
        fanout(nodes, fanout_messages).await;
    }
}

/// A node whose overlay speaks QUIC only, on loopback.
async fn quic_node() -> TestNode {
    TestNode::start_with(|config| {
        let mut p2p = TransportConfig::loopback();
        p2p.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")];
        config.p2p = Some(p2p);
    })
    .await
}

fn base(node: &TestNode) -> String {
    node.client_url("/_matrix/client/v3")
}

async fn latency(messages: usize) {
    let (a, b) = (quic_node().await, quic_node().await);
    a.connect(&b).await;
    let http = reqwest::Client::new();
    let (base_a, base_b) = (base(&a), base(&b));
    let alice = register(&http, &base_a, "alice").await;
    let bob = register(&http, &base_b, "bob").await;
    let room = create_public_room(&http, &base_a, &alice).await;
    join_through(&http, &base_b, &bob, &room, a.node.server_name()).await;
    let mut latencies =
        sync_latencies(&http, (&base_a, &alice), (&base_b, &bob), &room, messages).await;
    let (p50, p99) = percentiles(&mut latencies);
    println!(
        "A send -> B long-poll /sync, QUIC on loopback, {messages} messages: p50 {:.2} ms, p99 {:.2} ms",
        ms(p50),
        ms(p99)
    );
    a.node.shutdown().await;
    b.node.shutdown().await;
}

async fn fanout(count: usize, messages: usize) {
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        nodes.push(quic_node().await);
    }
    // Everyone knows the first node; the rest they find through its DHT when they need to.
    for node in &nodes[1..] {
        node.connect(&nodes[0]).await;
    }
    let http = reqwest::Client::new();
    let mut users = Vec::with_capacity(count);
    for (n, node) in nodes.iter().enumerate() {
        users.push(register(&http, &base(node), &format!("user{n}")).await);
    }
    let room = create_public_room(&http, &base(&nodes[0]), &users[0]).await;
    for (node, user) in nodes.iter().zip(&users).skip(1) {
        join_through(&http, &base(node), user, &room, nodes[0].node.server_name()).await;
    }
    // Every node must know every member before the timing starts.
    let settle = Instant::now();
    for (node, user) in nodes.iter().zip(&users) {
        loop {
            let joined = http
                .get(format!("{}/rooms/{room}/joined_members", base(node)))
                .bearer_auth(&user.token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["joined"]
                .as_object()
                .map_or(0, |m| m.len());
            if joined == count {
                break;
            }
            assert!(
                settle.elapsed() < Duration::from_secs(120),
                "the room did not settle"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut latencies = Vec::with_capacity(messages);
    for n in 0..messages {
        // Senders take turns, so the room's DAG grows from different servers.
        let from = n % count;
        let started = Instant::now();
        let txn = format!("f{n}");
        let event_id = send(
            &http,
            &base(&nodes[from]),
            &users[from].token,
            &room,
            &txn,
            &txn,
        )
        .await;
        for node in &nodes {
            let store = node.node.store();
            let mut position = store.stream_position();
            while store.pdu(event_id.clone()).await.unwrap().is_none() {
                tokio::time::timeout(Duration::from_secs(30), position.changed())
                    .await
                    .expect("the message reached every node within 30 s")
                    .unwrap();
            }
        }
        latencies.push(started.elapsed());
    }
    let (p50, p99) = percentiles(&mut latencies);
    println!(
        "fan-out to {count} nodes (one room, QUIC on loopback, one process), {messages} messages: until every node has it p50 {:.1} ms, p99 {:.1} ms",
        ms(p50),
        ms(p99)
    );
    for node in &nodes {
        node.node.shutdown().await;
    }
}

fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration) {
    latencies.sort();
    (percentile(latencies, 0.50), percentile(latencies, 0.99))
}

async fn create_public_room(http: &reqwest::Client, base: &str, user: &User) -> String {
    post(
        http,
        &format!("{base}/createRoom"),
        &user.token,
        json!({"preset": "public_chat"}),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn join_through(http: &reqwest::Client, base: &str, user: &User, room: &str, server: &str) {
    post(
        http,
        &format!("{base}/join/{room}?via={server}"),
        &user.token,
        json!({}),
    )
    .await;
}
