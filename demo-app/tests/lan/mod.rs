//! Devices on private networks for the namespace tests: `hyphae up` processes, each in a network
//! namespace of its own, users talking to their own device's Client-Server API from inside its
//! namespace (its addresses exist only there), with raw HTTP (`User`) or with matrix-sdk, a
//! standard client with end-to-end encryption on (`Phone`).
// Each test binary uses its own subset.
#![allow(dead_code)]

#[path = "../../../p2p-transport/tests/support/namespaces.rs"]
pub mod namespaces;

use std::io::{BufRead, BufReader};
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

use namespaces::runtime_in;

/// Port of every device's Client-Server API, on the device's own namespace address.
pub const CLIENT_PORT: u16 = 8008;
/// How long one step a user waits for (a message, an invite, a peer) may take.
pub const STEP: Duration = Duration::from_secs(20);

/// One `hyphae up` process in namespace `ns`, and an HTTP client that lives there too.
pub struct Device {
    pub name: &'static str,
    pub url: String,
    pub server_name: String,
    /// What `hyphae up` printed as its peer-to-peer listen addresses.
    pub p2p_listen: Vec<String>,
    pub http: reqwest::Client,
    /// Every thread of it is in the device's namespace: requests made on it reach the device.
    pub runtime: Runtime,
    pub process: Child,
    pub log: PathBuf,
    /// Holds the data folder and the log; removed last.
    pub _dir: tempfile::TempDir,
}

impl Device {
    /// Starts `hyphae up` in `ns`, with its client API on `addr`, and waits until it says it is
    /// up.
    pub fn start(name: &'static str, ns: &str, addr: &str, extra: &[&str]) -> Device {
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
    pub fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
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
    pub fn register(&self, localpart: &str) -> User {
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

pub fn password(localpart: &str) -> String {
    format!("{localpart}'s password")
}

/// Runs `f` on `runtime` (in its namespace) and waits for it; its panic is the caller's.
pub fn block<T: Send + 'static>(
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
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
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
pub struct User {
    pub id: String,
    pub token: String,
}

impl User {
    /// Whether this user's server can ask `other`'s server for their devices (what a client
    /// does before inviting or encrypting for them): no failure, and `other` is known.
    pub fn can_look_up(&self, device: &Device, other: &str) -> bool {
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

    pub fn create_room(&self, device: &Device, invite: &[&str]) -> String {
        let (status, body) = device.call(
            Method::POST,
            "/createRoom",
            Some(&self.token),
            json!({"preset": "private_chat", "name": "Across", "invite": invite}),
        );
        assert_eq!(status, 200, "createRoom: {body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    pub fn invite(&self, device: &Device, room: &str, who: &str) {
        let (status, body) = device.call(
            Method::POST,
            &format!("/rooms/{room}/invite"),
            Some(&self.token),
            json!({"user_id": who}),
        );
        assert_eq!(status, 200, "invite {who}: {body}");
    }

    /// Whether /sync shows this user invited to `room`, with the room's name.
    pub fn is_invited(&self, device: &Device, room: &str) -> bool {
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

    pub fn join(&self, device: &Device, room: &str) {
        let (status, body) = device.call(
            Method::POST,
            &format!("/join/{room}"),
            Some(&self.token),
            json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }

    pub fn send(&self, device: &Device, room: &str, text: &str) {
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
    pub fn history(&self, device: &Device, room: &str) -> Vec<(String, Option<String>)> {
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
    pub fn texts(&self, device: &Device, room: &str) -> Vec<String> {
        (self.history(device, room).into_iter())
            .filter_map(|(kind, text)| (kind == "m.room.message").then_some(text?))
            .collect()
    }

    pub fn members(&self, device: &Device, room: &str) -> Vec<String> {
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
pub struct Phone {
    client: Client,
    runtime: Handle,
    texts: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Phone {
    pub fn log_in(device: &Device, localpart: &str) -> Phone {
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

    pub fn user_id(&self) -> OwnedUserId {
        self.client.user_id().unwrap().to_owned()
    }

    pub fn sync(&self) {
        let client = self.client.clone();
        block(&self.runtime, async move {
            client
                .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
                .await
                .expect("sync");
        });
    }

    pub fn create_encrypted_room(&self, invite: Vec<OwnedUserId>) -> OwnedRoomId {
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
    pub fn accept_invite(&self, room: &OwnedRoomId) {
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

    pub fn invite(&self, room: &OwnedRoomId, who: OwnedUserId) {
        let (client, room) = (self.client.clone(), room.clone());
        block(&self.runtime, async move {
            let room = client.get_room(&room).expect("the room is known");
            room.invite_user_by_id(&who).await.expect("invite");
        });
    }

    pub fn send(&self, room: &OwnedRoomId, text: &str) {
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
    pub fn receive(&mut self, text: &str) {
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
pub fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}
