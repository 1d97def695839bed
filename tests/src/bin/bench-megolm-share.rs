//! Benchmark: the app client's end-to-end encryption on one node, through the real
//! Client-Server API in memory. Reports the median over several runs of (1) sharing a new
//! Megolm session with 1,000 and 3,000 devices (keys/claim, one Olm session set up and
//! encrypted per device on every core, committed, sendToDevice), with the keys/query before it
//! on its own, and (2) Megolm encryption and decryption per message, with vodozemac alone for
//! comparison.
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-megolm-share [-- RUNS]`

use std::time::Duration;

use hyphae_node::crypto_bench;
use hyphae_tests::TestNode;
use hyphae_tests::client::ms;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn range(samples: &[Duration]) -> String {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    format!("{:.1}–{:.1} ms", ms(min), ms(max))
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bench-megolm-share: {runs} runs per size, {cores} cores");
    let node = TestNode::start_with(|config| config.p2p = None).await;
    for devices in [1000, 3000] {
        let report = crypto_bench::share(&node.node, devices, runs)
            .await
            .expect("share benchmark");
        println!(
            "share a new Megolm session with {devices} devices ({} users × 100): median {:.1} ms \
             ({}); keys/query before it: median {:.1} ms",
            devices.div_ceil(100),
            ms(median(report.share.clone())),
            range(&report.share),
            ms(median(report.query.clone())),
        );
    }
    let messages = 200;
    let report = crypto_bench::messages(&node.node, messages)
        .await
        .expect("message benchmark");
    println!(
        "Megolm per message ({messages} messages, ~250-byte body): encrypt_room_event median \
         {:.3} ms (commit included), decrypt_room_event median {:.3} ms; vodozemac alone: \
         encrypt {:.3} ms, decrypt {:.3} ms",
        ms(median(report.encrypt)),
        ms(median(report.decrypt)),
        ms(median(report.raw_encrypt)),
        ms(median(report.raw_decrypt)),
    );
    node.node.shutdown().await;
}
