//! Round trips of HTTP over libp2p streams between two in-process nodes on 127.0.0.1, QUIC and
//! TCP side by side: connection set-up, sequential PUT echo of 1 KiB and 64 KiB (p50/p99), and
//! requests/s of 1 KiB from 32 concurrent callers over one connection.
//!
//! cargo run --release -p hyphae-p2p --example rtt

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::put;
use bytes::Bytes;
use http::Request;
use hyphae_p2p::{Identity, Transport, TransportConfig};

const WARM_UP: usize = 50;
const SAMPLES: usize = 500;
const CONCURRENT: usize = 32;
const PER_CALLER: usize = 100;

async fn start(listen: &str) -> (Transport, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let identity = Identity::load_or_create(dir.path()).expect("an identity");
    let config = TransportConfig {
        listen: vec![listen.parse().expect("a multiaddr")],
        ..TransportConfig::loopback()
    };
    let transport = Transport::start(config, &identity)
        .await
        .expect("a transport");
    transport.serve(Router::new().route("/echo", put(|body: Bytes| async move { body })));
    (transport, dir)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn echo(from: &Transport, to: &str, body: &Bytes) {
    let req = Request::put("/echo").body(body.clone()).expect("a request");
    let response = from.request(to, req).await.expect("a response");
    assert_eq!(response.body().len(), body.len());
}

#[tokio::main]
async fn main() {
    for (name, listen) in [
        ("QUIC", "/ip4/127.0.0.1/udp/0/quic-v1"),
        ("TCP+noise+yamux", "/ip4/127.0.0.1/tcp/0"),
    ] {
        let (a, _a_dir) = start(listen).await;
        let (b, _b_dir) = start(listen).await;
        let addrs = b.listen_addrs().await.expect("addresses");
        let started = Instant::now();
        a.dial(b.local_peer_id(), addrs)
            .await
            .expect("a connection");
        let setup = started.elapsed();
        println!(
            "{name}: connection set-up {:.2} ms",
            setup.as_secs_f64() * 1000.0
        );
        let to = b.server_name().to_owned();
        for size in [1024, 64 * 1024] {
            let body = Bytes::from(vec![b'x'; size]);
            for _ in 0..WARM_UP {
                echo(&a, &to, &body).await;
            }
            let mut times = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES {
                let started = Instant::now();
                echo(&a, &to, &body).await;
                times.push(started.elapsed());
            }
            times.sort();
            println!(
                "{name}: PUT echo {} KiB: p50 {:.3} ms, p99 {:.3} ms ({SAMPLES} sequential)",
                size / 1024,
                percentile(&times, 0.5),
                percentile(&times, 0.99)
            );
        }
        let body = Bytes::from(vec![b'x'; 1024]);
        let started = Instant::now();
        let callers: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let (a, to, body) = (a.clone(), to.clone(), body.clone());
                tokio::spawn(async move {
                    for _ in 0..PER_CALLER {
                        echo(&a, &to, &body).await;
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("a caller");
        }
        let rate = (CONCURRENT * PER_CALLER) as f64 / started.elapsed().as_secs_f64();
        println!("{name}: {rate:.0} requests/s of 1 KiB from {CONCURRENT} concurrent callers");
    }
}
