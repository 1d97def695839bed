//! Two nodes talking HTTP over libp2p streams, on loopback and between two network namespaces
//! on one bridge, side by side in one run: start to first mDNS discovery (two nodes starting
//! together, and a third joining them once they are up), connection set-up QUIC vs TCP, sequential PUT echo of 1 KiB and 64 KiB (p50/p99), and requests/s of 1 KiB
//! from 32 concurrent callers over one connection. Every figure is the median over
//! `ITERATIONS` runs with fresh nodes (min–max after it); the two places alternate within each
//! iteration, so load from elsewhere on the machine hits both alike.
//!
//! cargo run --release -p hyphae-p2p --example rtt
//!
//! As root it makes its own namespaces (addresses only inside them) and deletes them at the
//! end, on panic, and on Ctrl-C. The loopback column then runs inside a namespace of its own
//! too, so its mDNS packets stay on that namespace's loopback. Not root: loopback only, in
//! this process's namespace and without mDNS (it would go out on the machine's own network).

#[path = "../tests/support/namespaces.rs"]
mod namespaces;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::put;
use bytes::Bytes;
use http::Request;
use hyphae_p2p::{Discovery, Identity, MdnsConfig, Transport, TransportConfig, TransportEvent};
use tokio::runtime::Runtime;

use namespaces::{Netns, ip, run, runtime_in, skip_reason};

const ITERATIONS: usize = 7;
const WARM_UP: usize = 30;
const SAMPLES: usize = 300;
const CONCURRENT: usize = 32;
const PER_CALLER: usize = 50;
const MDNS_WAIT: Duration = Duration::from_secs(10);
const ANNOUNCEMENTS_OVER: Duration = Duration::from_millis(2500);

/// Where the nodes run: a runtime each (its threads in the node's namespace, if any), the
/// address each listens on, and the interface mDNS uses (`None`: not measured). The third node
/// only joins the other two to time discovery of peers that are already up.
struct Place {
    label: &'static str,
    runtimes: [Runtime; 3],
    ips: [&'static str; 3],
    mdns_interface: Option<&'static str>,
}

/// Each figure's values over the iterations, in the order first seen.
#[derive(Default)]
struct Figures(Vec<(String, Vec<f64>)>);

impl Figures {
    fn add(&mut self, name: impl Into<String>, value: f64) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.0.push((name, vec![value])),
        }
    }

    /// "median (min–max)", or "n/a".
    fn summary(&self, name: &str) -> String {
        let Some((_, values)) = self.0.iter().find(|(n, _)| n == name) else {
            return "n/a".to_owned();
        };
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let digits = if median >= 100.0 { 0 } else { 2 };
        format!(
            "{median:.digits$} ({:.digits$}–{:.digits$})",
            sorted[0],
            sorted[sorted.len() - 1]
        )
    }
}

fn echo_service() -> Router {
    Router::new().route("/echo", put(|body: Bytes| async move { body }))
}

type Started = (Transport, tempfile::TempDir, Option<Duration>);

/// Starts a node; with mDNS on, also waits for its first mDNS discovery and returns the time
/// from the start call to it.
async fn start(config: TransportConfig) -> Started {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let identity = Identity::load_or_create(dir.path()).expect("an identity");
    let mdns = config.mdns.enabled;
    let started = Instant::now();
    let transport = Transport::start(config, &identity)
        .await
        .expect("a transport");
    transport.serve(echo_service());
    if !mdns {
        return (transport, dir, None);
    }
    // Subscribing after `start` misses nothing: the swarm task it spawned cannot run on this
    // runtime's single worker before this task yields.
    let mut events = transport.events();
    let found = tokio::time::timeout(MDNS_WAIT, async {
        loop {
            match events.recv().await {
                Ok(TransportEvent::PeerDiscovered {
                    how: Discovery::Mdns,
                    ..
                }) => return started.elapsed(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("transport events ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no mDNS discovery within {MDNS_WAIT:?}"));
    (transport, dir, Some(found))
}

/// Starts one node on each runtime at the same moment.
fn start_pair(place: &Place, config: impl Fn(&str) -> TransportConfig) -> [Started; 2] {
    let [ra, rb, _] = &place.runtimes;
    let a = ra.spawn(start(config(place.ips[0])));
    let b = rb.spawn(start(config(place.ips[1])));
    let (a, b) = futures::executor::block_on(futures::future::join(a, b));
    [a.expect("node a"), b.expect("node b")]
}

fn listen_on(ip: &str, quic: bool) -> Vec<hyphae_p2p::Multiaddr> {
    let addr = if quic {
        format!("/ip4/{ip}/udp/0/quic-v1")
    } else {
        format!("/ip4/{ip}/tcp/0")
    };
    vec![addr.parse().expect("a multiaddr")]
}

fn mdns_off() -> MdnsConfig {
    MdnsConfig {
        enabled: false,
        ..MdnsConfig::default()
    }
}

async fn echo(from: &Transport, to: &str, body: &Bytes) {
    let req = Request::put("/echo").body(body.clone()).expect("a request");
    let response = from.request(to, req).await.expect("a response");
    assert_eq!(response.body().len(), body.len());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    ms(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

/// One iteration of every figure at `place`.
fn measure(place: &Place, figures: &mut Figures) {
    if let Some(interface) = place.mdns_interface {
        let config = |ip: &str| TransportConfig {
            listen: [listen_on(ip, true), listen_on(ip, false)].concat(),
            mdns: MdnsConfig {
                enabled: true,
                interfaces: vec![interface.to_owned()],
                ..MdnsConfig::default()
            },
            ..TransportConfig::default()
        };
        // Both new: each waits for the other's announcement, sent once its name is probed
        // unique (RFC 6762 §8.1: three probes 250 ms apart).
        let pair = start_pair(place, config);
        for (_, _, found) in &pair {
            let found = found.expect("timed");
            figures.add("mDNS, 2 start together: start → found, ms", ms(found));
        }
        // Joining peers that are up: they answer its first query, unless they multicast
        // their records less than a second before (RFC 6762 §6), as they just did announcing
        // themselves (twice, a second apart); a real newcomer rarely arrives then.
        std::thread::sleep(ANNOUNCEMENTS_OVER);
        let (_joiner, _dir, found) = run(&place.runtimes[2], start(config(place.ips[2])));
        let found = found.expect("timed");
        figures.add("mDNS, joining running peers: start → found, ms", ms(found));
        drop(pair);
    }
    for (name, quic) in [("QUIC", true), ("TCP", false)] {
        let [(a, _a_dir, _), (b, _b_dir, _)] = start_pair(place, |ip| TransportConfig {
            listen: listen_on(ip, quic),
            mdns: mdns_off(),
            ..TransportConfig::default()
        });
        let results = run(&place.runtimes[0], async move {
            let mut results = Vec::new();
            let b_addrs = b.listen_addrs().await.expect("addresses");
            let started = Instant::now();
            a.dial(b.local_peer_id(), b_addrs)
                .await
                .expect("a connection");
            results.push((
                format!("{name} connection set-up, ms"),
                ms(started.elapsed()),
            ));
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
                let kib = size / 1024;
                results.push((
                    format!("{name} {kib} KiB round trip p50, ms"),
                    percentile(&times, 0.5),
                ));
                results.push((
                    format!("{name} {kib} KiB round trip p99, ms"),
                    percentile(&times, 0.99),
                ));
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
            results.push((
                format!("{name} requests/s, 1 KiB, {CONCURRENT} callers"),
                rate,
            ));
            results
        });
        for (figure, value) in results {
            figures.add(figure, value);
        }
    }
}

fn plain_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // Declared first so the places' runtimes stop before their namespaces go.
    let mut net = None;
    let mut places = Vec::new();
    match skip_reason() {
        Some(reason) => {
            eprintln!("namespaces SKIPPED ({reason}): loopback only, without mDNS");
            places.push(Place {
                label: "loopback",
                runtimes: [plain_runtime(), plain_runtime(), plain_runtime()],
                ips: ["127.0.0.1"; 3],
                mdns_interface: None,
            });
        }
        None => {
            let mut netns = Netns::new("bench");
            let lo = netns.host("lo").expect("a namespace");
            // mDNS needs multicast, which a namespace's loopback lacks by default.
            ip(&["-n", &lo, "link", "set", "lo", "multicast", "on"]).expect("multicast on lo");
            let bridge = netns.bridge("br").expect("a bridge");
            let h1 = netns.host("h1").expect("a namespace");
            let h2 = netns.host("h2").expect("a namespace");
            let h3 = netns.host("h3").expect("a namespace");
            netns
                .plug(&h1, "eth0", &bridge, "10.199.9.1/24")
                .expect("a link");
            netns
                .plug(&h2, "eth0", &bridge, "10.199.9.2/24")
                .expect("a link");
            netns
                .plug(&h3, "eth0", &bridge, "10.199.9.3/24")
                .expect("a link");
            netns.delete_on_signal();
            places.push(Place {
                label: "loopback",
                runtimes: [runtime_in(&lo, 1), runtime_in(&lo, 1), runtime_in(&lo, 1)],
                ips: ["127.0.0.1"; 3],
                mdns_interface: Some("lo"),
            });
            places.push(Place {
                label: "namespaces (bridge)",
                runtimes: [runtime_in(&h1, 1), runtime_in(&h2, 1), runtime_in(&h3, 1)],
                ips: ["10.199.9.1", "10.199.9.2", "10.199.9.3"],
                mdns_interface: Some("eth0"),
            });
            net = Some(netns);
        }
    }
    let mut figures: Vec<Figures> = places.iter().map(|_| Figures::default()).collect();
    for i in 1..=ITERATIONS {
        for (place, figures) in places.iter().zip(&mut figures) {
            eprintln!("iteration {i}/{ITERATIONS}: {}", place.label);
            measure(place, figures);
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for f in &figures {
        for (name, _) in &f.0 {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    println!("median of {ITERATIONS} iterations (min–max)");
    print!("{:<48}", "");
    for place in &places {
        print!("{:>26}", place.label);
    }
    println!();
    for name in names {
        print!("{name:<48}");
        for f in &figures {
            print!("{:>26}", f.summary(name));
        }
        println!();
    }
    drop(places);
    drop(net);
}
