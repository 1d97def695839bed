//! Benchmark: Hyphae beside Synapse, in one run, on loopback, with the same plain HTTP client.
//! Both servers get the same data: a user in ROOMS rooms (default 200) with EVENTS messages each
//! (default 50), from a friend who is in every room too. Then, for each server:
//! (1) the user's initial `/sync` (a timeline of 20 per room, as clients ask), and the same
//!     with lazy-loaded members (as Element asks): median time and bytes over RUNS (default 5),
//!     each from a new device;
//! (2) incremental sync with 8 clients: 8 users long-polling `/sync` in one room while a ninth
//!     sends MESSAGES (default 200) one at a time; the time from each send until all 8 clients
//!     have it (p50 and p99 over every client and message), and the bytes of the incremental
//!     responses.
//!
//! Synapse comes from PyPI, in a virtualenv outside the clone:
//!   python3 -m venv ~/.cache/hyphae-synapse && ~/.cache/hyphae-synapse/bin/pip install matrix-synapse
//! Run: `HYPHAE_SYNAPSE=~/.cache/hyphae-synapse cargo run --release -p hyphae-tests \
//!       --bin bench-vs-synapse [-- ROOMS EVENTS MESSAGES RUNS]`
//! Synapse runs as its own process with SQLite (its default, and Hyphae's store); the Hyphae node
//! runs in this process, on the same two cores as the client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hyphae_tests::TestNode;
use hyphae_tests::client::{User, login, ms, percentile, post, register, send};
use serde_json::{Value, json};

const CLIENTS: usize = 8;
/// Concurrent senders while the rooms are filled.
const FILLERS: usize = 8;

struct Sizes {
    rooms: usize,
    events: usize,
    messages: usize,
    runs: usize,
}

#[tokio::main]
async fn main() {
    let arg = |n: usize, default: usize| {
        std::env::args()
            .nth(n)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let sizes = Sizes {
        rooms: arg(1, 200),
        events: arg(2, 50),
        messages: arg(3, 200),
        runs: arg(4, 5),
    };
    let Some(venv) = std::env::var_os("HYPHAE_SYNAPSE").map(PathBuf::from) else {
        eprintln!(
            "HYPHAE_SYNAPSE must name a virtualenv with matrix-synapse installed:\n  \
             python3 -m venv ~/.cache/hyphae-synapse && \
             ~/.cache/hyphae-synapse/bin/pip install matrix-synapse"
        );
        std::process::exit(2);
    };
    let synapse = Synapse::start(&venv).await;
    let node = TestNode::start_with(|config| {
        config.auth_rate_limit.burst = 10_000;
    })
    .await;
    let hyphae_base = node.client_url("/_matrix/client/v3");

    println!(
        "{} rooms x {} messages, {} runs; incremental: {CLIENTS} clients, {} messages",
        sizes.rooms, sizes.events, sizes.runs, sizes.messages
    );
    let mut results = Vec::new();
    for (name, base) in [("hyphae", hyphae_base.as_str()), ("synapse", &synapse.base)] {
        let filled = Instant::now();
        let user = fill(base, &sizes).await;
        eprintln!("{name}: filled in {:.1} s", filled.elapsed().as_secs_f64());
        let initial = initial_syncs(base, &user, &sizes, false).await;
        let lazy = initial_syncs(base, &user, &sizes, true).await;
        let incremental = incremental(base, &sizes).await;
        results.push((name, initial, lazy, incremental));
    }

    println!(
        "{:<8} {:>14} {:>12} {:>14} {:>12} {:>10} {:>10} {:>12}",
        "server",
        "initial ms",
        "initial KiB",
        "lazy ms",
        "lazy KiB",
        "incr p50",
        "incr p99",
        "incr B/resp"
    );
    for (name, initial, lazy, incremental) in &results {
        println!(
            "{name:<8} {:>14.1} {:>12.1} {:>14.1} {:>12.1} {:>8.2}ms {:>8.2}ms {:>12.0}",
            ms(initial.0),
            initial.1 as f64 / 1024.0,
            ms(lazy.0),
            lazy.1 as f64 / 1024.0,
            ms(incremental.0),
            ms(incremental.1),
            incremental.2
        );
    }
    if let [(_, hi, hl, hx), (_, si, sl, sx)] = &results[..] {
        println!(
            "synapse / hyphae: initial time {:.2}x, bytes {:.2}x; lazy time {:.2}x, bytes {:.2}x; \
             incremental p50 {:.2}x, p99 {:.2}x",
            si.0.as_secs_f64() / hi.0.as_secs_f64(),
            si.1 as f64 / hi.1 as f64,
            sl.0.as_secs_f64() / hl.0.as_secs_f64(),
            sl.1 as f64 / hl.1 as f64,
            sx.0.as_secs_f64() / hx.0.as_secs_f64(),
            sx.1.as_secs_f64() / hx.1.as_secs_f64(),
        );
    }
    drop(synapse);
}

/// A user in `rooms` rooms of `events` messages each, sent by a friend in every room.
async fn fill(base: &str, sizes: &Sizes) -> User {
    let http = reqwest::Client::new();
    let user = register(&http, base, "reader").await;
    let friend = register(&http, base, "writer").await;
    let rooms: Vec<String> = join_all((0..sizes.rooms).map(|n| {
        let (http, base, friend, user) = (&http, base, &friend, &user);
        async move {
            let room = post(
                http,
                &format!("{base}/createRoom"),
                &friend.token,
                json!({"preset": "public_chat", "name": format!("room {n}")}),
            )
            .await["room_id"]
                .as_str()
                .unwrap()
                .to_owned();
            post(http, &format!("{base}/join/{room}"), &user.token, json!({})).await;
            room
        }
    }))
    .await;
    let work: Vec<(usize, usize)> = (0..sizes.rooms)
        .flat_map(|r| (0..sizes.events).map(move |e| (r, e)))
        .collect();
    let chunks: Vec<Vec<(usize, usize)>> = work
        .chunks(work.len().div_ceil(FILLERS).max(1))
        .map(<[_]>::to_vec)
        .collect();
    join_all(chunks.into_iter().map(|chunk| {
        let (http, friend, rooms) = (&http, &friend, &rooms);
        async move {
            for (r, e) in chunk {
                let text = format!("message {e} of room {r}: a line of chat of ordinary length");
                send(
                    http,
                    base,
                    &friend.token,
                    &rooms[r],
                    &format!("f{r}-{e}"),
                    &text,
                )
                .await;
            }
        }
    }))
    .await;
    user
}

/// The median time and the bytes of the user's initial sync.
async fn initial_syncs(base: &str, user: &User, sizes: &Sizes, lazy: bool) -> (Duration, usize) {
    let http = reqwest::Client::new();
    let mut filter = json!({"room": {"timeline": {"limit": 20}}});
    if lazy {
        filter["room"]["state"] = json!({"lazy_load_members": true});
    }
    let url = format!(
        "{base}/sync?filter={}",
        hyphae_node::urlencode(&filter.to_string())
    );
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..sizes.runs {
        // A new device each run: Synapse answers a repeated identical sync from a cache for a
        // while, which no client starting afresh meets.
        let device = login(&http, base, user).await;
        let started = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(&device.token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(started.elapsed());
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let rooms = parsed["rooms"]["join"].as_object().map_or(0, |r| r.len());
        assert_eq!(rooms, sizes.rooms, "every room in the initial sync");
        bytes = body.len();
    }
    times.sort();
    (percentile(&times, 0.5), bytes)
}

/// 8 clients long-polling in one room while a ninth user sends: p50 and p99 from a send until
/// a client has it, and the mean bytes of an incremental response.
async fn incremental(base: &str, sizes: &Sizes) -> (Duration, Duration, f64) {
    let http = reqwest::Client::new();
    let sender = register(&http, base, "speaker").await;
    let room = post(
        &http,
        &format!("{base}/createRoom"),
        &sender.token,
        json!({"preset": "public_chat"}),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let user = register(&http, base, &format!("listener{n}")).await;
        post(
            &http,
            &format!("{base}/join/{room}"),
            &user.token,
            json!({}),
        )
        .await;
        clients.push(user);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, usize)>();
    let mut listeners = Vec::new();
    for user in clients {
        let (http, base, room, tx) = (http.clone(), base.to_owned(), room.clone(), tx.clone());
        listeners.push(tokio::spawn(async move {
            let mut since = get_sync(&http, &base, &user.token, None).await.0["next_batch"]
                .as_str()
                .unwrap()
                .to_owned();
            loop {
                let (body, len) = get_sync(&http, &base, &user.token, Some(&since)).await;
                let arrived = Instant::now();
                since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
                for event in body["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = event["content"]["n"].as_u64()
                        && tx.send((n as usize, arrived, len)).is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    // Let every long-poll reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    let mut sizes_seen = Vec::new();
    for n in 0..sizes.messages {
        let started = Instant::now();
        let response = http
            .put(format!("{base}/rooms/{room}/send/m.room.message/i{n}"))
            .bearer_auth(&sender.token)
            .json(&json!({"msgtype": "m.text", "body": format!("incremental {n}"), "n": n}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let mut got = 0;
        while got < CLIENTS {
            let (seen, arrived, len) = rx.recv().await.expect("the listeners run");
            if seen == n {
                latencies.push(arrived.saturating_duration_since(started));
                sizes_seen.push(len);
                got += 1;
            }
        }
    }
    for listener in listeners {
        listener.abort();
    }
    latencies.sort();
    let mean_bytes = sizes_seen.iter().sum::<usize>() as f64 / sizes_seen.len().max(1) as f64;
    (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        mean_bytes,
    )
}

async fn get_sync(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    since: Option<&str>,
) -> (Value, usize) {
    let mut url = format!("{base}/sync?timeout=30000");
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    let body = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        body.len(),
    )
}

/// A Synapse process on a free loopback port, with its data in a temporary folder.
struct Synapse {
    process: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Synapse {
    async fn start(venv: &Path) -> Synapse {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let python = venv.join("bin/python");
        let config = dir.path().join("homeserver.yaml");
        let generated = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-config"])
            .args(["--server-name", "bench.localhost", "--report-stats", "no"])
            .arg("--config-path")
            .arg(&config)
            .arg("--data-directory")
            .arg(dir.path())
            .output()
            .expect("synapse's python runs");
        assert!(
            generated.status.success(),
            "synapse --generate-config: {}",
            String::from_utf8_lossy(&generated.stderr)
        );
        // Its own generated settings, with a client listener on loopback only, open
        // registration, no rate limits (the benchmark registers and sends a lot), no
        // federation or key servers (nothing leaves the machine), quiet logs.
        let generated = std::fs::read_to_string(&config).unwrap();
        let kept: Vec<&str> = generated
            .lines()
            .take_while(|line| !line.starts_with("listeners:"))
            .collect();
        let tail: String = generated
            .lines()
            .skip_while(|line| !line.starts_with("database:"))
            .collect::<Vec<_>>()
            .join("\n");
        let log_config = dir.path().join("log.yaml");
        std::fs::write(
            &log_config,
            "version: 1\nroot:\n  level: WARNING\n  handlers: []\ndisable_existing_loggers: false\n",
        )
        .unwrap();
        let settings = format!(
            "{}\nlisteners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    \
             tls: false\n    x_forwarded: false\n    resources:\n      - names: [client]\n        \
             compress: false\n{tail}\nlog_config: {:?}\nenable_registration: true\n\
             enable_registration_without_verification: true\ntrusted_key_servers: []\n\
             suppress_key_server_warning: true\nfederation_domain_whitelist: []\n\
             presence:\n  enabled: false\n\
             rc_message: {{per_second: 100000, burst_count: 100000}}\n\
             rc_room_creation: {{per_second: 100000, burst_count: 100000}}\n\
             rc_registration: {{per_second: 100000, burst_count: 100000}}\n\
             rc_login:\n  address: {{per_second: 100000, burst_count: 100000}}\n  \
             account: {{per_second: 100000, burst_count: 100000}}\n  \
             failed_attempts: {{per_second: 100000, burst_count: 100000}}\n\
             rc_joins:\n  local: {{per_second: 100000, burst_count: 100000}}\n  \
             remote: {{per_second: 100000, burst_count: 100000}}\n\
             rc_invites:\n  per_room: {{per_second: 100000, burst_count: 100000}}\n  \
             per_user: {{per_second: 100000, burst_count: 100000}}\n",
            kept.join("\n"),
            log_config
        );
        std::fs::write(&config, settings).unwrap();
        let process = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("synapse starts");
        let synapse = Synapse {
            process,
            base: format!("http://127.0.0.1:{port}/_matrix/client/v3"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = http
                .get(format!("http://127.0.0.1:{port}/_matrix/client/versions"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not start; see {}",
                synapse._dir.path().join("stderr.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        synapse
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
