//! Benchmark: a node among hostile strangers, over real libp2p on loopback.
//! (1) Memory: 32 peers (each its own key and address) send the node oversized transactions
//! (7.5 MB of EDUs, over the `/send` cap) and EDU-heavy ones just under the cap (100 EDUs of
//! about 39 KB of `[0,0,…]`), 4 at a time each, for SECONDS (60 by default) over QUIC, then as
//! long over TCP, while an honest node's user sends a message every half second to the node's
//! user: the node's resident memory (before, the kernel's high-water mark during, after), what
//! the strangers were answered, and the honest messages' delivery latency (send until the
//! receiver's `/sync`), as medians and as ratios to the same measured without an attack in the
//! same run (for up to 20 s before the first attack). Over TCP libp2p dials from 127.0.0.1
//! whatever address it listens on, so the strangers and the honest node are one host to the
//! caps per address, and only as many strangers connect as those let through.
//! (2) Slots: an honest peer's `GET /version` latency, p50/p99 over 200 requests, without an
//! attack, while one peer holds 300 slow requests open (heads sent, bodies trickled), and while
//! 6 peer ids of one host do the same with 60 each; the medians' ratios to the first.
//! The node runs in a child process (this program with `--victim DIR`), so its memory is its
//! own, with the transport's defaults for a real network (caps per address on); the strangers
//! of (1) run in another (`--attack`), so they do not take the honest node's CPU.
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-exhaustion [-- SECONDS]`

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncWriteExt, StreamExt};
use hyphae_node::{Config, Node, TransportConfig};
use hyphae_p2p::{HttpConfig, Identity, Multiaddr, PeerId, Stream, Transport};
use hyphae_tests::TestNode;
use hyphae_tests::client::{User, ms, percentile, post, register, sync_latencies};
use serde_json::{Value, json};

const ATTACKERS: usize = 32;
const IN_FLIGHT: usize = 4;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--victim") => victim(args.next().expect("a data folder")).await,
        Some("--attack") => attackers(args.next().expect("the attack, as JSON")).await,
        seconds => {
            let seconds = seconds.and_then(|s| s.parse().ok()).unwrap_or(60);
            bench(Duration::from_secs(seconds)).await;
        }
    }
}

/// The node under attack: prints where it is, then runs until its stdin closes.
async fn victim(dir: String) {
    let p2p = TransportConfig {
        // A real network's caps per address, on loopback.
        max_incoming_per_ip: TransportConfig::default().max_incoming_per_ip,
        http: HttpConfig::default(),
        ..TransportConfig::loopback()
    };
    let node = Node::start(Config {
        client_listen: "127.0.0.1:0".parse().expect("address"),
        p2p: Some(p2p),
        ..Config::new(std::path::Path::new(&dir))
    })
    .await
    .expect("the node starts");
    let transport = node.transport().expect("the overlay");
    let addrs: Vec<String> = (transport.listen_addrs().await.expect("addresses").iter())
        .map(ToString::to_string)
        .collect();
    println!(
        "{}",
        json!({"peer": transport.local_peer_id().to_string(), "server": node.server_name(),
               "p2p": addrs, "client": node.client_addr().to_string()})
    );
    std::io::stdout().flush().expect("stdout");
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    })
    .await
    .expect("stdin");
    node.shutdown().await;
}

struct Victim {
    child: Child,
    peer: PeerId,
    server: String,
    addrs: Vec<Multiaddr>,
    client: String,
    _dir: tempfile::TempDir,
}

impl Victim {
    fn start() -> Victim {
        let dir = tempfile::tempdir().expect("folder");
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .arg("--victim")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the victim starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the victim says where it is");
        let info: Value = serde_json::from_str(&line).expect("JSON");
        Victim {
            child,
            peer: info["peer"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .expect("peer"),
            server: info["server"].as_str().expect("server").to_owned(),
            addrs: (info["p2p"].as_array().expect("addresses").iter())
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect(),
            client: format!(
                "http://{}/_matrix/client/v3",
                info["client"].as_str().expect("client")
            ),
            _dir: dir,
        }
    }

    /// Starts the kernel's high-water mark of resident memory over from now, so that each attack
    /// has its own.
    fn reset_high_water(&self) {
        // "5" resets the peak RSS (Linux 4.0 on); where refused, the mark is since the start.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// Resident memory now and at its highest, in MiB (from /proc).
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the victim runs");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A stranger: its own key, dialling `peer` at `addrs` over `over` ("quic" or "tcp") from its
/// own loopback address `ip`; `None` when the victim refuses it. Over TCP it dials from
/// 127.0.0.1 whatever `ip` (libp2p binds its port, not its address), so the victim's caps per
/// address take the TCP strangers as one host.
async fn stranger(
    peer: PeerId,
    addrs: &[Multiaddr],
    ip: &str,
    over: &str,
) -> Option<(Transport, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("folder");
    let identity = Identity::load_or_create(dir.path()).expect("identity");
    let (listen, protocol) = match over {
        "tcp" => (format!("/ip4/{ip}/tcp/0"), "/tcp/"),
        _ => (format!("/ip4/{ip}/udp/0/quic-v1"), "/quic"),
    };
    let config = TransportConfig {
        listen: vec![listen.parse().expect("multiaddr")],
        ..TransportConfig::loopback()
    };
    let transport = Transport::start(config, &identity)
        .await
        .expect("transport");
    let addrs: Vec<Multiaddr> = (addrs.iter())
        .filter(|a| a.to_string().contains(protocol))
        .cloned()
        .collect();
    if let Err(e) = transport.dial(peer, addrs).await {
        eprintln!("stranger on {ip} over {over} refused: {e}");
        transport.shutdown().await;
        return None;
    }
    Some((transport, dir))
}

/// A transaction from `origin` of `count` EDUs of about `size` bytes of zeros each.
fn transaction(origin: &str, count: usize, size: usize) -> Bytes {
    let zeros = vec!["0"; size / 2].join(",");
    let edu = format!("{{\"edu_type\":\"m.typing\",\"content\":[{zeros}]}}");
    let edus = vec![edu; count].join(",");
    Bytes::from(format!(
        "{{\"origin\":\"{origin}\",\"origin_server_ts\":0,\"pdus\":[],\"edus\":[{edus}]}}"
    ))
}

/// What the strangers' transactions were answered.
#[derive(Default)]
struct Answers {
    ok: AtomicU64,
    too_large: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
}

/// One stranger's attack: `IN_FLIGHT` transactions at a time, oversized and near the cap in
/// turn, until told to stop.
async fn attack(
    transport: Transport,
    victim: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
) {
    let origin = transport.server_name().to_owned();
    let oversized = transaction(&origin, 100, 75_000);
    let near_cap = transaction(&origin, 100, 39_000);
    let mut n = 0u64;
    let sends = futures::stream::iter(std::iter::from_fn(|| {
        n += 1;
        (!stop.load(Ordering::Relaxed)).then_some(n)
    }))
    .map(|n| {
        let body = if n % 2 == 0 {
            oversized.clone()
        } else {
            near_cap.clone()
        };
        let request = http::Request::put(format!("/_matrix/federation/v1/send/a{n}"))
            .header("content-type", "application/json")
            .body(body)
            .expect("request");
        let (transport, victim, answers) = (transport.clone(), victim.clone(), answers.clone());
        async move {
            let counter = match transport.request(victim.as_str(), request).await {
                Ok(r) if r.status() == 200 => &answers.ok,
                Ok(r) if r.status() == 413 || r.status() == 400 => &answers.too_large,
                Ok(r) if r.status() == 503 || r.status() == 429 => &answers.busy,
                Ok(_) => &answers.other,
                Err(_) => &answers.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })
    .buffer_unordered(IN_FLIGHT);
    sends.for_each(|()| async {}).await;
}

/// The strangers of (1), in their own process: `ATTACKERS` of them for the seconds and over
/// the transport `attack` says; prints how many the victim let connect once they are, and what
/// they were answered.
async fn attackers(attack: String) {
    let attack: Value = serde_json::from_str(&attack).expect("JSON");
    let peer: PeerId = (attack["peer"].as_str())
        .and_then(|p| p.parse().ok())
        .expect("peer");
    let server = attack["server"].as_str().expect("server").to_owned();
    let addrs: Vec<Multiaddr> = (attack["addrs"].as_array().expect("addresses").iter())
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let over = attack["over"].as_str().expect("quic or tcp");
    let seconds = attack["seconds"].as_u64().expect("seconds");
    let mut strangers = Vec::new();
    for n in 0..ATTACKERS {
        let ip = format!("127.0.1.{}", n + 1);
        strangers.extend(stranger(peer, &addrs, &ip, over).await);
    }
    println!("{}", strangers.len());
    std::io::stdout().flush().expect("stdout");
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Answers::default());
    let attacks: Vec<_> = (strangers.iter())
        .map(|(t, _)| {
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(self::attack(t.clone(), server.clone(), stop, answers))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for attack in attacks {
        let _ = attack.await;
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let answers = [
        count(&answers.ok),
        count(&answers.too_large),
        count(&answers.busy),
        count(&answers.other),
        count(&answers.failed),
    ];
    println!("{}", json!(answers));
    std::io::stdout().flush().expect("stdout");
    for (transport, _) in &strangers {
        transport.shutdown().await;
    }
}

async fn bench(duration: Duration) {
    let victim = Victim::start();
    let http = reqwest::Client::new();
    // An honest node and its user, in a room with the victim's user.
    let honest = TestNode::start().await;
    honest
        .transport()
        .dial(victim.peer, victim.addrs.clone())
        .await
        .expect("the victim answers");
    let honest_base = honest.client_url("/_matrix/client/v3");
    let alice = register(&http, &honest_base, "alice").await;
    let bob = register(&http, &victim.client, "bob").await;
    let room = post(
        &http,
        &format!("{honest_base}/createRoom"),
        &alice.token,
        json!({"preset": "public_chat"}),
    )
    .await["room_id"]
        .as_str()
        .expect("a room")
        .to_owned();
    post(
        &http,
        &format!(
            "{}/join/{room}?via={}",
            victim.client,
            honest.node.server_name()
        ),
        &bob.token,
        json!({}),
    )
    .await;
    let warm = sync_latencies(
        &http,
        (&honest_base, &alice),
        (&victim.client, &bob),
        &room,
        5,
    )
    .await;
    assert_eq!(warm.len(), 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = victim.rss();
    println!("node RSS idle, in a room with an honest node: {idle:.0} MiB");
    let sender = (honest_base.as_str(), &alice);
    let calm_for = duration.min(Duration::from_secs(20));
    let (calm, sent) = honest_messages(&http, sender, (&victim, &bob), &room, calm_for).await;
    print!("honest messages without an attack, {calm_for:?}: ");
    let calm_p50 = delivery(&calm, sent, None);
    for over in ["quic", "tcp"] {
        let receiver = (&victim, &bob);
        memory(&http, sender, receiver, &room, duration, over, calm_p50).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    slots(&victim).await;
    honest.node.shutdown().await;
}

async fn memory(
    http: &reqwest::Client,
    sender: (&str, &User),
    (victim, bob): (&Victim, &User),
    room: &str,
    duration: Duration,
    over: &str,
    calm_p50: Option<Duration>,
) {
    victim.reset_high_water();
    let (before, _) = victim.rss();
    let attack = json!({
        "peer": victim.peer.to_string(), "server": victim.server, "over": over,
        "addrs": victim.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "seconds": duration.as_secs(),
    });
    let mut attackers = Command::new(std::env::current_exe().expect("this program"))
        .arg("--attack")
        .arg(attack.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the attackers start");
    let mut said = BufReader::new(attackers.stdout.take().expect("stdout"));
    let mut line = String::new();
    said.read_line(&mut line).expect("the attackers are ready");
    let connected: usize = line.trim().parse().expect("how many connected");
    let (delivered, messages) = honest_messages(http, sender, (victim, bob), room, duration).await;
    let answers = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        said.read_line(&mut line).expect("the attackers' answers");
        let _ = attackers.wait();
        serde_json::from_str::<[u64; 5]>(&line).expect("JSON")
    })
    .await
    .expect("the attackers end");
    let (_, high_water) = victim.rss();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (after, _) = victim.rss();
    println!(
        "memory, over {over}: {connected} peers (of {ATTACKERS} dialling) x {IN_FLIGHT} transactions in flight for \
         {duration:?} (7.5 MB over the cap and 3.9 MB of 100 EDUs under it, in turn): node RSS \
         {before:.0} MiB before, high-water {high_water:.0} MiB (x{:.2} of before), \
         {after:.0} MiB 5 s after",
        high_water / before
    );
    println!(
        "  strangers answered: 200 {}, 413/400 {}, 503 {}, other {}, no answer {}",
        answers[0], answers[1], answers[2], answers[3], answers[4]
    );
    print!("  honest messages: ");
    delivery(&delivered, messages, calm_p50);
}

/// `honest`'s user sends `receiver`'s user a message every half second for `duration`: how long
/// each took to show in the receiver's `/sync` (sorted; those over 30 s left out), and how many
/// were sent.
async fn honest_messages(
    http: &reqwest::Client,
    honest: (&str, &User),
    (victim, receiver): (&Victim, &User),
    room: &str,
    duration: Duration,
) -> (Vec<Duration>, usize) {
    let started = Instant::now();
    let mut delivered = Vec::new();
    let mut messages = 0;
    while started.elapsed() < duration {
        messages += 1;
        let sent = sync_latencies(http, honest, (&victim.client, receiver), room, 1);
        match tokio::time::timeout(Duration::from_secs(30), sent).await {
            Ok(took) => delivered.extend(took),
            Err(_) => println!("  an honest message took over 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    delivered.sort();
    (delivered, messages)
}

/// Prints the delivery of `sent` messages (`delivered` sorted), with its median's ratio to
/// `calm_p50`'s; the median.
fn delivery(delivered: &[Duration], sent: usize, calm_p50: Option<Duration>) -> Option<Duration> {
    if delivered.is_empty() {
        println!("none of {sent} delivered");
        return None;
    }
    let p50 = percentile(delivered, 0.5);
    println!(
        "{} of {sent} delivered, send -> receiver's /sync p50 {:.0} ms{}, p99 {:.0} ms",
        delivered.len(),
        ms(p50),
        ratio(p50, calm_p50),
        ms(percentile(delivered, 0.99))
    );
    Some(p50)
}

/// " (xR of without an attack)" for a median beside the one measured without an attack.
fn ratio(p50: Duration, calm_p50: Option<Duration>) -> String {
    calm_p50.map_or_else(String::new, |calm| {
        format!(
            " (x{:.2} of without an attack)",
            p50.as_secs_f64() / calm.as_secs_f64()
        )
    })
}

/// `GET /version` from `honest`, `count` times in a row: the latencies of those answered
/// within 5 s, sorted, and how many were not.
async fn probe(honest: &Transport, victim: &str, count: usize) -> (Vec<Duration>, usize) {
    let mut took = Vec::new();
    let mut missed = 0;
    for _ in 0..count {
        let request = http::Request::get("/_matrix/federation/v1/version")
            .body(Bytes::new())
            .expect("request");
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), honest.request(victim, request)).await {
            Ok(Ok(r)) if r.status() == 200 => took.push(started.elapsed()),
            _ => missed += 1,
        }
    }
    took.sort();
    (took, missed)
}

/// Prints the latencies of `probe`, with their median's ratio to `calm_p50`'s; the median.
fn report(
    what: &str,
    (took, missed): (Vec<Duration>, usize),
    calm_p50: Option<Duration>,
) -> Option<Duration> {
    if took.is_empty() {
        println!("  {what}: none answered ({missed} without an answer within 5 s)");
        return None;
    }
    let p50 = percentile(&took, 0.5);
    println!(
        "  {what}: p50 {:.2} ms{}, p99 {:.2} ms, {missed} of {} without an answer within 5 s",
        ms(p50),
        ratio(p50, calm_p50),
        ms(percentile(&took, 0.99)),
        took.len() + missed
    );
    Some(p50)
}

/// Opens up to `count` requests from `from` whose heads announce a 1 MB body, writes a byte
/// of each, and trickles a byte into each every half second until aborted.
async fn slow_requests(
    from: &Transport,
    victim: &str,
    count: usize,
) -> (tokio::task::JoinHandle<()>, usize) {
    let mut streams: Vec<Stream> = Vec::new();
    for _ in 0..count {
        let open =
            tokio::time::timeout(Duration::from_secs(1), from.open_http_stream(victim)).await;
        let Ok(Ok(mut stream)) = open else { break };
        let head = "PUT /_matrix/federation/v1/send/slow HTTP/1.1\r\nhost: x\r\n\
                    content-type: application/json\r\ncontent-length: 1000000\r\n\r\n{";
        if stream.write_all(head.as_bytes()).await.is_err() || stream.flush().await.is_err() {
            break;
        }
        streams.push(stream);
    }
    let opened = streams.len();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for stream in &mut streams {
                let _ = stream.write_all(b"0").await;
            }
        }
    });
    (task, opened)
}

async fn slots(victim: &Victim) {
    const PROBES: usize = 200;
    let (honest, _dir) = stranger(victim.peer, &victim.addrs, "127.0.0.1", "quic")
        .await
        .expect("the victim answers");
    println!("slots: an honest peer's GET /version, {PROBES} in a row:");
    let calm = report(
        "without an attack",
        probe(&honest, &victim.server, PROBES).await,
        None,
    );

    let (mallory, _mallory_dir) = stranger(victim.peer, &victim.addrs, "127.0.2.1", "quic")
        .await
        .expect("the victim answers");
    let (held, opened) = slow_requests(&mallory, &victim.server, 300).await;
    report(
        &format!("one peer holding {opened} slow requests"),
        probe(&honest, &victim.server, PROBES).await,
        calm,
    );
    held.abort();
    mallory.shutdown().await;

    let mut sybils = Vec::new();
    let mut opened = 0;
    for _ in 0..6 {
        let (sybil, dir) = stranger(victim.peer, &victim.addrs, "127.0.3.1", "quic")
            .await
            .expect("the victim answers");
        let (held, n) = slow_requests(&sybil, &victim.server, 60).await;
        opened += n;
        sybils.push((sybil, dir, held));
    }
    report(
        &format!("6 peer ids of one host holding {opened} slow requests"),
        probe(&honest, &victim.server, PROBES).await,
        calm,
    );
    for (sybil, _, held) in sybils {
        held.abort();
        sybil.shutdown().await;
    }
}
