//! Federation between real `hyphae up` processes, each in a network namespace of its own: two
//! devices on one LAN that find each other by mDNS alone, and a chain A–B–C where only B is on
//! both networks and does not forward IP. Users talk to their own device's Client-Server API from
//! inside its namespace (its addresses exist only there): with raw HTTP for plain rooms, and with
//! matrix-sdk (a standard client, end-to-end encryption on) for encrypted ones.
//! Needs root and `ip` (iproute2); without them each test prints SKIPPED and passes.

#[path = "../../p2p-transport/tests/support/namespaces.rs"]
mod namespaces;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use matrix_sdk::{Client, RoomState};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::runtime::{Handle, Runtime};

use namespaces::{Netns, ip, runtime_in, skip_reason, spawn_in};

/// Port of every device's Client-Server API, on the device's own namespace address.
const CLIENT_PORT: u16 = 8008;
/// How long one step a user waits for (a message, an invite, a peer) may take.
const STEP: Duration = Duration::from_secs(20);

/// One `hyphae up` process in namespace `ns`, and an HTTP client that lives there too.
struct Device {
    name: &'static str,
    url: String,
    server_name: String,
    /// What `hyphae up` printed as its peer-to-peer listen addresses.
    p2p_listen: Vec<String>,
    http: reqwest::Client,
    /// Every thread of it is in the device's namespace: requests made on it reach the device.
    runtime: Runtime,
    process: Child,
    log: PathBuf,
    /// Holds the data folder and the log; removed last.
    _dir: tempfile::TempDir,
}

impl Device {
    /// Starts `hyphae up` in `ns`, with its client API on `addr`, and waits until it says it is
    /// up.
    fn start(name: &'static str, ns: &str, addr: &str, extra: &[&str]) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hyphae.log");
        let listen = format!("{addr}:{CLIENT_PORT}");
        let mut process = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_hyphae"), "up"])
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", &listen, "--open-registration"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,ruma_state_res=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end so the process never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let runtime = runtime_in(ns, 1);
        let mut device = Device {
            name,
            url: format!("http://{listen}"),
            server_name: String::new(),
            p2p_listen: Vec::new(),
            http: reqwest::Client::new(),
            runtime,
            process,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                panic!("{name}: `hyphae up` did not say it was up");
            };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("server name") {
                device.server_name = rest.trim().to_owned();
            }
            if let Some(rest) = line.strip_prefix("p2p listen") {
                device.p2p_listen.push(rest.trim().to_owned());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        eprintln!(
            "{name}: up as {}, peers at {:?}",
            device.server_name, device.p2p_listen
        );
        device
    }

    /// One Client-Server request from inside the device's namespace: (status, JSON body).
    fn call(&self, method: Method, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.request(
            method.clone(),
            format!("{}/_matrix/client/v3{path}", self.url),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if method != Method::GET {
            request = request.json(&body);
        }
        block(self.runtime.handle(), async move {
            let response = request.send().await.expect("the device answers");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    /// Registers `localpart` (password: "<localpart>'s password") as a client would.
    fn register(&self, localpart: &str) -> User {
        let (status, body) = self.call(
            Method::POST,
            "/register",
            None,
            json!({"username": localpart, "password": password(localpart),
                   "auth": {"type": "m.login.dummy"}}),
        );
        assert_eq!(status, 200, "{}: register {localpart}: {body}", self.name);
        User {
            id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        // A failing test shows the end of each device's log; HYPHAE_TEST_LOGS=all shows it all.
        let all = std::env::var("HYPHAE_TEST_LOGS").is_ok_and(|v| v == "all");
        if std::thread::panicking() || all {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let keep = if all { usize::MAX } else { 60 };
            let tail: Vec<&str> = log.lines().rev().take(keep).collect();
            eprintln!("---- {} log (last lines) ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn password(localpart: &str) -> String {
    format!("{localpart}'s password")
}

/// Runs `f` on `runtime` (in its namespace) and waits for it; its panic is the caller's.
fn block<T: Send + 'static>(
    runtime: &Handle,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match runtime.block_on(runtime.spawn(f)) {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task cancelled: {e}"),
    }
}

/// Polls `check` until it holds, failing after `within`; returns how long it took.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{what}: {:?}", start.elapsed());
    start.elapsed()
}

/// A user logged in over the raw Client-Server API.
struct User {
    id: String,
    token: String,
}

impl User {
    /// Whether this user's server can ask `other`'s server for their devices (what a client
    /// does before inviting or encrypting for them): no failure, and `other` is known.
    fn can_look_up(&self, device: &Device, other: &str) -> bool {
        let (status, body) = device.call(
            Method::POST,
            "/keys/query",
            Some(&self.token),
            json!({"device_keys": {other: []}, "timeout": 3000}),
        );
        status == 200
            && body["failures"].as_object().is_none_or(|f| f.is_empty())
            && body["device_keys"].get(other).is_some()
    }

    fn create_room(&self, device: &Device, invite: &[&str]) -> String {
        let (status, body) = device.call(
            Method::POST,
            "/createRoom",
            Some(&self.token),
            json!({"preset": "private_chat", "name": "Across", "invite": invite}),
        );
        assert_eq!(status, 200, "createRoom: {body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    fn invite(&self, device: &Device, room: &str, who: &str) {
        let (status, body) = device.call(
            Method::POST,
            &format!("/rooms/{room}/invite"),
            Some(&self.token),
            json!({"user_id": who}),
        );
        assert_eq!(status, 200, "invite {who}: {body}");
    }

    /// Whether /sync shows this user invited to `room`, with the room's name.
    fn is_invited(&self, device: &Device, room: &str) -> bool {
        let (status, body) = device.call(Method::GET, "/sync", Some(&self.token), Value::Null);
        assert_eq!(status, 200, "sync: {body}");
        body["rooms"]["invite"][room]["invite_state"]["events"]
            .as_array()
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Across")
            })
    }

    fn join(&self, device: &Device, room: &str) {
        let (status, body) = device.call(
            Method::POST,
            &format!("/join/{room}"),
            Some(&self.token),
            json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }

    fn send(&self, device: &Device, room: &str, text: &str) {
        static TXN: AtomicU64 = AtomicU64::new(0);
        let txn = TXN.fetch_add(1, Ordering::Relaxed);
        let (status, body) = device.call(
            Method::PUT,
            &format!("/rooms/{room}/send/m.room.message/t{txn}"),
            Some(&self.token),
            json!({"msgtype": "m.text", "body": text}),
        );
        assert_eq!(status, 200, "send: {body}");
    }

    /// The room's history as this user reads it with /messages, oldest first: (type, text).
    fn history(&self, device: &Device, room: &str) -> Vec<(String, Option<String>)> {
        let (status, body) = device.call(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=1000"),
            Some(&self.token),
            Value::Null,
        );
        assert_eq!(status, 200, "messages: {body}");
        let mut events: Vec<_> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message" || e["type"] == "m.room.encrypted")
            .map(|e| {
                let text = e["content"]["body"].as_str().map(str::to_owned);
                (e["type"].as_str().unwrap_or_default().to_owned(), text)
            })
            .collect();
        events.reverse();
        events
    }

    /// The texts of the room's plain messages, oldest first.
    fn texts(&self, device: &Device, room: &str) -> Vec<String> {
        (self.history(device, room).into_iter())
            .filter_map(|(kind, text)| (kind == "m.room.message").then_some(text?))
            .collect()
    }

    fn members(&self, device: &Device, room: &str) -> Vec<String> {
        let (status, body) = device.call(
            Method::GET,
            &format!("/rooms/{room}/joined_members"),
            Some(&self.token),
            Value::Null,
        );
        assert_eq!(status, 200, "joined_members: {body}");
        let mut members: Vec<String> = (body["joined"].as_object().unwrap().keys())
            .cloned()
            .collect();
        members.sort();
        members
    }
}

/// A standard client (matrix-sdk, end-to-end encryption on) on a new device of a user, talking
/// to their node from inside its namespace; remembers the texts it decrypted.
struct Phone {
    client: Client,
    runtime: Handle,
    texts: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Phone {
    fn log_in(device: &Device, localpart: &str) -> Phone {
        let url = device.url.clone();
        let localpart = localpart.to_owned();
        let (text_tx, texts) = tokio::sync::mpsc::unbounded_channel();
        let client = block(device.runtime.handle(), async move {
            let client = Client::builder()
                .homeserver_url(url)
                .respect_login_well_known(false)
                .request_config(
                    RequestConfig::new()
                        .retry_limit(2)
                        .timeout(Duration::from_secs(20)),
                )
                .with_enable_share_history_on_invite(false)
                .build()
                .await
                .expect("client");
            client
                .matrix_auth()
                .login_username(&localpart, &password(&localpart))
                .initial_device_display_name("phone")
                .await
                .expect("login");
            client.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
                let text_tx = text_tx.clone();
                async move {
                    if let MessageType::Text(text) = event.content.msgtype {
                        let _ = text_tx.send(text.body);
                    }
                }
            });
            client
        });
        let phone = Phone {
            client,
            runtime: device.runtime.handle().clone(),
            texts,
            seen: Vec::new(),
        };
        // The first sync uploads the device's keys.
        phone.sync();
        phone
    }

    fn user_id(&self) -> OwnedUserId {
        self.client.user_id().unwrap().to_owned()
    }

    fn sync(&self) {
        let client = self.client.clone();
        block(&self.runtime, async move {
            client
                .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
                .await
                .expect("sync");
        });
    }

    fn create_encrypted_room(&self, invite: Vec<OwnedUserId>) -> OwnedRoomId {
        let client = self.client.clone();
        block(&self.runtime, async move {
            let mut request = CreateRoomRequest::new();
            request.preset = Some(RoomPreset::PrivateChat);
            request.invite = invite;
            request.initial_state = vec![
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
            ];
            let room = client.create_room(request).await.expect("create room");
            room.room_id().to_owned()
        })
    }

    /// Syncs until the invite to `room` shows, then joins it.
    fn accept_invite(&self, room: &OwnedRoomId) {
        eventually(STEP, "the invite on the phone", || {
            self.sync();
            self.client
                .get_room(room)
                .is_some_and(|r| r.state() == RoomState::Invited)
        });
        let (client, room) = (self.client.clone(), room.clone());
        block(&self.runtime, async move {
            client.join_room_by_id(&room).await.expect("join");
        });
    }

    fn invite(&self, room: &OwnedRoomId, who: OwnedUserId) {
        let (client, room) = (self.client.clone(), room.clone());
        block(&self.runtime, async move {
            let room = client.get_room(&room).expect("the room is known");
            room.invite_user_by_id(&who).await.expect("invite");
        });
    }

    fn send(&self, room: &OwnedRoomId, text: &str) {
        self.sync();
        let (client, room, text) = (self.client.clone(), room.clone(), text.to_owned());
        block(&self.runtime, async move {
            let room = client.get_room(&room).expect("the room is known");
            let encrypted = room
                .latest_encryption_state()
                .await
                .expect("encryption state")
                .is_encrypted();
            assert!(encrypted, "the room is encrypted");
            room.send(RoomMessageEventContent::text_plain(text))
                .await
                .expect("send");
        });
    }

    /// Syncs until `text` has been decrypted.
    fn receive(&mut self, text: &str) {
        let what = format!("{} to decrypt {text:?}", self.user_id());
        eventually(STEP, &what, || {
            self.sync();
            while let Ok(text) = self.texts.try_recv() {
                self.seen.push(text);
            }
            self.seen.iter().any(|t| t == text)
        });
    }
}

/// Whether a TCP connection from namespace `ns` to `addr` is accepted within 3 s.
fn tcp_reaches(ns: &str, addr: SocketAddr) -> bool {
    spawn_in(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
    })
    .join()
    .unwrap()
}

/// Turns IP forwarding off in `ns` (whatever a new namespace inherits) and reads it back.
fn forwarding_off(ns: &str) -> String {
    spawn_in(ns, || {
        // /proc/sys/net shows the namespace of the thread that opens it.
        let path = "/proc/sys/net/ipv4/ip_forward";
        std::fs::write(path, "0").unwrap();
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    })
    .join()
    .unwrap()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn two_devices_on_a_lan_find_each_other_by_mdns_alone_and_chat() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED two_devices_on_a_lan_find_each_other_by_mdns_alone_and_chat: {reason}");
        return;
    }
    let started = Instant::now();
    let mut net = Netns::new("fl");
    let bridge = net.bridge("br").unwrap();
    let (ns_a, ns_b) = (net.host("a").unwrap(), net.host("b").unwrap());
    net.plug(&ns_a, "eth0", &bridge, "10.199.21.1/24").unwrap();
    net.plug(&ns_b, "eth0", &bridge, "10.199.21.2/24").unwrap();

    // Nothing but the defaults: no bootstrap peer, no address of the other device.
    let a = Device::start("A", &ns_a, "10.199.21.1", &[]);
    let b = Device::start("B", &ns_b, "10.199.21.2", &[]);
    for device in [&a, &b] {
        let addr = format!(
            "/ip4/{}/",
            &device.url["http://".len()..device.url.rfind(':').unwrap()]
        );
        assert!(
            device.p2p_listen.iter().any(|l| l.starts_with(&addr)),
            "{} listens for peers on its LAN address: {:?}",
            device.name,
            device.p2p_listen
        );
    }

    let alice = a.register("alice");
    let bob = b.register("bob");
    eventually(STEP, "Alice's server to find Bob's by mDNS", || {
        alice.can_look_up(&a, &bob.id)
    });

    // Plain: invite, join, both ways.
    let room = alice.create_room(&a, &[&bob.id]);
    eventually(STEP, "Bob to see Alice's invite", || {
        bob.is_invited(&b, &room)
    });
    bob.join(&b, &room);
    let both = sorted(vec![alice.id.clone(), bob.id.clone()]);
    eventually(STEP, "Alice to see Bob join", || {
        alice.members(&a, &room) == both
    });
    alice.send(&a, &room, "hello Bob");
    eventually(STEP, "Alice's message on Bob's device", || {
        bob.texts(&b, &room) == ["hello Bob"]
    });
    bob.send(&b, &room, "hi Alice");
    eventually(STEP, "Bob's reply on Alice's device", || {
        alice.texts(&a, &room) == ["hello Bob", "hi Alice"]
    });
    eprintln!("plain chat done after {:?}", started.elapsed());

    // Encrypted, with a standard client on each side: room keys travel to the other device.
    let mut alice_phone = Phone::log_in(&a, "alice");
    let mut bob_phone = Phone::log_in(&b, "bob");
    let secret = alice_phone.create_encrypted_room(vec![bob_phone.user_id()]);
    bob_phone.accept_invite(&secret);
    alice_phone.send(&secret, "a secret for Bob");
    bob_phone.receive("a secret for Bob");
    bob_phone.send(&secret, "a secret for Alice");
    alice_phone.receive("a secret for Alice");
    // The servers only ever had ciphertext: a session without the keys sees no text.
    for (user, device) in [(&alice, &a), (&bob, &b)] {
        let history = user.history(device, secret.as_str());
        assert!(
            history.len() >= 2
                && history
                    .iter()
                    .all(|(kind, text)| kind == "m.room.encrypted" && text.is_none()),
            "{} holds only encrypted messages: {history:?}",
            device.name
        );
    }
    eprintln!("encrypted chat done after {:?}", started.elapsed());
    drop((alice_phone, bob_phone));
    drop((a, b));
    drop(net);
}

/// Two networks, 10.199.`n`.0/24 and 10.199.`n+1`.0/24; B is on both (.254) and A and C route
/// through it, as through a home router, but B does not forward IP: A and C can only meet
/// through what B's node does for them. Alice is on A, Bob on B, Carol on C.
struct Chain {
    a: Device,
    b: Device,
    c: Device,
    alice: User,
    bob: User,
    carol: User,
    /// Declared last: the processes stop before their namespaces go.
    _net: Netns,
}

impl Chain {
    fn new(tag: &str, n: u8, b_args: &[&str]) -> Chain {
        let (net_1, net_2) = (format!("10.199.{n}"), format!("10.199.{}", n + 1));
        let mut net = Netns::new(tag);
        let (bridge_1, bridge_2) = (net.bridge("b1").unwrap(), net.bridge("b2").unwrap());
        let (ns_a, ns_b, ns_c) = (
            net.host("a").unwrap(),
            net.host("b").unwrap(),
            net.host("c").unwrap(),
        );
        net.plug(&ns_a, "eth0", &bridge_1, &format!("{net_1}.1/24"))
            .unwrap();
        net.plug(&ns_b, "eth0", &bridge_1, &format!("{net_1}.254/24"))
            .unwrap();
        net.plug(&ns_b, "eth1", &bridge_2, &format!("{net_2}.254/24"))
            .unwrap();
        net.plug(&ns_c, "eth0", &bridge_2, &format!("{net_2}.1/24"))
            .unwrap();
        let via_b = |ns: &str, net: &str| {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.254"),
            ])
            .unwrap()
        };
        via_b(&ns_a, &net_1);
        via_b(&ns_c, &net_2);
        assert_eq!(forwarding_off(&ns_b), "0");

        let a = Device::start("A", &ns_a, &format!("{net_1}.1"), &[]);
        let b = Device::start("B", &ns_b, &format!("{net_1}.254"), b_args);
        let c = Device::start("C", &ns_c, &format!("{net_2}.1"), &[]);
        let c_api: SocketAddr = format!("{net_2}.1:{CLIENT_PORT}").parse().unwrap();
        assert!(
            tcp_reaches(&ns_b, c_api),
            "B cannot reach C: the test network is broken"
        );
        assert!(!tcp_reaches(&ns_a, c_api), "A reached C directly");

        let alice = a.register("alice");
        let bob = b.register("bob");
        let carol = c.register("carol");
        eventually(STEP, "Alice's server to find Bob's by mDNS", || {
            alice.can_look_up(&a, &bob.id)
        });
        eventually(STEP, "Bob's server to find Carol's by mDNS", || {
            bob.can_look_up(&b, &carol.id)
        });
        Chain {
            a,
            b,
            c,
            alice,
            bob,
            carol,
            _net: net,
        }
    }
}

#[test]
fn a_chain_of_three_devices_carries_messages_through_the_middle_one() {
    if let Some(reason) = skip_reason() {
        eprintln!(
            "SKIPPED a_chain_of_three_devices_carries_messages_through_the_middle_one: {reason}"
        );
        return;
    }
    let started = Instant::now();
    // B relays no connections: only B's node passing on the room's events links A and C.
    let chain = Chain::new("fc", 22, &["--no-relay-server"]);
    let Chain {
        a,
        b,
        c,
        alice,
        bob,
        carol,
        ..
    } = &chain;
    assert!(
        !alice.can_look_up(a, &carol.id),
        "Alice's server reached Carol's with no relay on the way"
    );

    // Alice invites Bob, Bob invites Carol, and Carol joins through Bob's server.
    let room = alice.create_room(a, &[&bob.id]);
    eventually(STEP, "Bob to see Alice's invite", || {
        bob.is_invited(b, &room)
    });
    bob.join(b, &room);
    bob.invite(b, &room, &carol.id);
    eventually(STEP, "Carol to see Bob's invite", || {
        carol.is_invited(c, &room)
    });
    carol.join(c, &room);
    let everyone = sorted(vec![alice.id.clone(), bob.id.clone(), carol.id.clone()]);
    eventually(STEP, "Alice to see Carol join (passed on by B)", || {
        alice.members(a, &room) == everyone
    });
    alice.send(a, &room, "hello Carol");
    eventually(
        STEP,
        "Alice's message on Carol's device (passed on by B)",
        || carol.texts(c, &room) == ["hello Carol"],
    );
    carol.send(c, &room, "hi Alice");
    eventually(
        STEP,
        "Carol's reply on Alice's device (passed on by B)",
        || alice.texts(a, &room) == ["hello Carol", "hi Alice"],
    );
    assert_eq!(bob.texts(b, &room), ["hello Carol", "hi Alice"]);
    eprintln!(
        "plain chat across the chain done after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_chain_of_three_devices_chats_encrypted_through_the_middle_ones_relay() {
    if let Some(reason) = skip_reason() {
        eprintln!(
            "SKIPPED a_chain_of_three_devices_chats_encrypted_through_the_middle_ones_relay: {reason}"
        );
        return;
    }
    let started = Instant::now();
    // Every node relays by default, and C reserves a slot on B's relay by itself; A finds C's
    // circuit address in the DHT (on B).
    let chain = Chain::new("fe", 24, &[]);
    let Chain {
        a,
        b,
        c,
        alice,
        bob,
        carol,
        ..
    } = &chain;
    // Encryption needs Alice's server to ask Carol's for her devices and one-time keys, and to
    // send her the room key (and the other way round): not something B passes on.
    eventually(
        STEP,
        "Alice's server to reach Carol's (through B's relay)",
        || alice.can_look_up(a, &carol.id),
    );

    let mut alice_phone = Phone::log_in(a, "alice");
    let mut bob_phone = Phone::log_in(b, "bob");
    let mut carol_phone = Phone::log_in(c, "carol");
    let room = alice_phone.create_encrypted_room(vec![bob_phone.user_id()]);
    bob_phone.accept_invite(&room);
    bob_phone.invite(&room, carol_phone.user_id());
    carol_phone.accept_invite(&room);
    let everyone = sorted(vec![alice.id.clone(), bob.id.clone(), carol.id.clone()]);
    eventually(STEP, "Alice to see Carol join", || {
        alice.members(a, room.as_str()) == everyone
    });

    alice_phone.send(&room, "a secret for Carol");
    carol_phone.receive("a secret for Carol");
    bob_phone.receive("a secret for Carol");
    carol_phone.send(&room, "a secret for Alice");
    alice_phone.receive("a secret for Alice");
    bob_phone.receive("a secret for Alice");
    // The servers only ever had ciphertext: a session without the keys sees no text.
    for (user, device) in [(alice, a), (bob, b), (carol, c)] {
        let history = user.history(device, room.as_str());
        assert!(
            history.len() >= 2
                && (history.iter())
                    .all(|(kind, text)| kind == "m.room.encrypted" && text.is_none()),
            "{} holds only encrypted messages: {history:?}",
            device.name
        );
    }
    eprintln!(
        "encrypted chat across the chain done after {:?}",
        started.elapsed()
    );
    drop((alice_phone, bob_phone, carol_phone));
}
