//! A stranger on the network trying to exhaust a node: transactions of EDUs just under the old
//! 8 MiB body cap (each parsed whole, they took gigabytes), EDUs and invite room state over
//! their caps, and slow requests held open by one peer or by several peer ids of one host. Each
//! stranger is a real libp2p peer with its own key speaking the federation API; each attack is
//! refused, and an honest peer is served meanwhile.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt};
use hyphae_p2p::{Identity, Stream, Transport, TransportConfig};
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::signing::SigningKey;

/// A stranger's bare libp2p peer, connected to its victim: it has its own key, and sends
/// whatever it likes.
struct Stranger {
    transport: Transport,
    key: SigningKey,
    victim: String,
    _dir: tempfile::TempDir,
}

impl Stranger {
    /// A stranger listening (and so dialling from) `ip` over QUIC, connected to `victim`.
    async fn connect_from(victim: &Api, ip: &str) -> Stranger {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let config = TransportConfig {
            listen: vec![format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap()],
            ..TransportConfig::loopback()
        };
        let transport = Transport::start(config, &identity).await.unwrap();
        let theirs = victim.node.transport().unwrap();
        let quic = theirs
            .listen_addrs()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.to_string().contains("quic"))
            .collect();
        transport.dial(theirs.local_peer_id(), quic).await.unwrap();
        let key = SigningKey::new(
            identity.server_name().try_into().unwrap(),
            &identity.secret_bytes(),
        );
        Stranger {
            transport,
            key,
            victim: victim.node.server_name().to_owned(),
            _dir: dir,
        }
    }

    async fn connect(victim: &Api) -> Stranger {
        Stranger::connect_from(victim, "127.0.0.1").await
    }

    fn name(&self) -> &str {
        self.key.server_name().as_str()
    }

    /// Sends `body` with `method` to `path`; the status, or `None` when the exchange broke
    /// (a node may cut a body it refused).
    async fn call(&self, method: &str, path: &str, body: Bytes) -> Option<(u16, Value)> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let response = self.transport.request(&self.victim, request).await.ok()?;
        let status = response.status().as_u16();
        let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        Some((status, body))
    }

    async fn send_transaction(&self, body: Bytes) -> Option<(u16, Value)> {
        let mut txn = [0u8; 8];
        getrandom::fill(&mut txn).unwrap();
        let path = format!("/_matrix/federation/v1/send/{}", hex::encode(txn));
        self.call("PUT", &path, body).await
    }
}

/// A raw stream from `transport` to `victim` on which a request head announcing a body of
/// `length` bytes is written, and the first byte of it; `None` when no stream opens at once
/// (the victim allows only so many).
async fn half_sent(transport: &Transport, victim: &str, length: usize) -> Option<Stream> {
    let open = transport.open_http_stream(victim);
    let mut stream = tokio::time::timeout(Duration::from_secs(1), open)
        .await
        .ok()?
        .ok()?;
    let head = format!(
        "PUT /_matrix/federation/v1/send/slow HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.flush().await.ok()?;
    Some(stream)
}

/// A to-device message from `from`'s user to Bob's device: taken, it shows in his inbox.
fn to_device(from: &Stranger, bob: &str, device: &str, message_id: &str, text: &str) -> Value {
    json!({"edu_type": "m.direct_to_device", "content": {
        "sender": format!("@mallory:{}", from.name()), "type": "m.room_key_request",
        "message_id": message_id, "messages": {bob: {device: {"text": text}}},
    }})
}

/// An EDU of `bytes` bytes whose content is an array of zeros: two bytes a value, so parsed
/// whole it takes about sixteen times its size.
fn zeros_edu(bytes: usize) -> String {
    let zeros = vec!["0"; bytes / 2].join(",");
    format!("{{\"edu_type\":\"m.typing\",\"content\":[{zeros}]}}")
}

fn transaction(from: &Stranger, edus: &[String]) -> Bytes {
    let edus = edus.join(",");
    Bytes::from(format!(
        "{{\"origin\":\"{}\",\"origin_server_ts\":0,\"pdus\":[],\"edus\":[{edus}]}}",
        from.name()
    ))
}

#[tokio::test]
async fn transactions_and_edus_over_their_caps_are_refused_before_they_are_parsed() {
    super::room_tests::log_to_test_output();
    let victim = Api::start_federated().await;
    let (bob, _, device) = victim.register("bob", "password").await;
    let mallory = Stranger::connect(&victim).await;
    let message = |id: &str, text: &str| to_device(&mallory, &bob, &device, id, text).to_string();

    // The attack that took a node to 4 GB: concurrent transactions of about 7.5 MB of EDUs,
    // under the 8 MiB every request could have. Each leads with a message for Bob that would
    // show if the transaction were taken.
    let mut edus = vec![message("huge", "taken")];
    edus.extend((0..99).map(|_| zeros_edu(75_000)));
    let huge = transaction(&mallory, &edus);
    assert!(huge.len() > 7_000_000 && huge.len() < 8 * 1024 * 1024);
    let answers =
        futures::future::join_all((0..8).map(|_| mallory.send_transaction(huge.clone()))).await;
    // Refused by its declared length before it is read (or the stream cut meanwhile).
    for (status, body) in answers.into_iter().flatten() {
        assert_eq!(status, 413, "{body}");
    }

    // Just under the cap, the same kind of EDUs are taken raw (no item over 64 KiB), each
    // parsed alone and dropped as malformed, and the message with them arrives.
    let mut edus = vec![message("near", "near the cap")];
    edus.extend((0..99).map(|_| zeros_edu(40_000)));
    let near = transaction(&mallory, &edus);
    assert!(near.len() > 3_900_000 && near.len() < 4 * 1024 * 1024);
    let (status, body) = mallory.send_transaction(near).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // An EDU over 64 KiB is dropped unread; the others in its transaction are taken.
    let oversized = message("big", &"x".repeat(70 * 1024));
    let (status, body) = mallory
        .send_transaction(transaction(
            &mallory,
            &[oversized, message("small", "small")],
        ))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    // 101 EDUs: the whole transaction is refused, none of them taken.
    let many: Vec<String> = (0..101)
        .map(|n| message(&format!("m{n}"), "one of many"))
        .collect();
    let (status, body) = mallory
        .send_transaction(transaction(&mallory, &many))
        .await
        .unwrap();
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_TOO_LARGE")),
        "{body}"
    );

    let texts: Vec<String> = super::edus::tests::inbox(&victim, &device)
        .await
        .iter()
        .map(|(_, content)| serde_json::from_str::<Value>(content).unwrap()["text"].to_string())
        .collect();
    assert_eq!(texts, ["\"near the cap\"", "\"small\""]);
    // The node goes on answering.
    let (status, _) = mallory
        .call("GET", "/_matrix/federation/v1/version", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// An invite of Bob from Mallory's server into a room of hers, signed by her server, showing
/// `state` of the room.
fn invite(mallory: &Stranger, bob: &str, state: Vec<Value>) -> (String, Bytes) {
    let version = RoomVersionId::V11;
    let mut event: CanonicalJsonObject = serde_json::from_value(json!({
        "room_id": format!("!hall:{}", mallory.name()),
        "sender": format!("@mallory:{}", mallory.name()),
        "type": "m.room.member",
        "state_key": bob,
        "content": {"membership": "invite"},
        "origin_server_ts": 1,
        "depth": 3,
        "prev_events": [],
        "auth_events": [],
    }))
    .unwrap();
    let rules = crate::rooms::rules(&version).unwrap();
    mallory
        .key
        .hash_and_sign_event(&mut event, &rules.redaction)
        .unwrap();
    let event_id = super::hostile_tests::event_id(&version, &event);
    let body = json!({"room_version": version, "event": event, "invite_room_state": state});
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        crate::rooms::urlencode(&format!("!hall:{}", mallory.name())),
        crate::rooms::urlencode(&event_id)
    );
    (path, Bytes::from(body.to_string()))
}

#[tokio::test]
async fn an_invite_with_more_room_state_than_an_invite_shows_is_refused_and_not_kept() {
    let victim = Api::start_federated().await;
    let (bob, token, _) = victim.register("bob", "password").await;
    let mallory = Stranger::connect(&victim).await;
    let stripped = |n: usize, topic: &str| {
        json!({"type": "m.room.topic", "state_key": format!("{n}"), "sender": "@mallory:x",
               "content": {"topic": topic}})
    };
    let invited = || async {
        let (_, body) = victim.get("/v3/sync", Some(&token)).await;
        body["rooms"]["invite"]
            .as_object()
            .map_or(0, |rooms| rooms.len())
    };

    // 40 KB of state in one event, or 17 events: refused before the event is even parsed.
    for state in [
        vec![stripped(0, &"x".repeat(40_000))],
        (0..17).map(|n| stripped(n, "t")).collect(),
    ] {
        let (path, body) = invite(&mallory, &bob, state);
        let (status, answer) = mallory.call("PUT", &path, body).await.unwrap();
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (400, Some("M_TOO_LARGE")),
            "{answer}"
        );
        assert_eq!(invited().await, 0, "the invite was kept");
    }

    // The same invite with the state an invite shows is taken.
    let (path, body) = invite(&mallory, &bob, vec![stripped(0, "a topic")]);
    let (status, answer) = mallory.call("PUT", &path, body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(invited().await, 1);
}

/// The victim's `/version`, asked by `honest` `times` times in a row: how long each took, or
/// `None` if it got no answer within `within`.
async fn probe(honest: &Stranger, times: usize, within: Duration) -> Vec<Option<Duration>> {
    let mut took = Vec::new();
    for _ in 0..times {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            within,
            honest.call("GET", "/_matrix/federation/v1/version", Bytes::new()),
        )
        .await;
        took.push(match answer {
            Ok(Some((200, _))) => Some(started.elapsed()),
            _ => None,
        });
    }
    took
}

/// Opens up to `count` half-sent requests from `from` and trickles a byte into each every
/// half second, until aborted. Answers how many opened.
async fn trickle(from: &Stranger, count: usize) -> (tokio::task::JoinHandle<()>, usize) {
    let mut streams = Vec::new();
    for _ in 0..count {
        match half_sent(&from.transport, &from.victim, 1_000_000).await {
            Some(stream) => streams.push(stream),
            None => break,
        }
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

#[tokio::test]
async fn slow_requests_of_one_peer_or_of_one_hosts_peers_do_not_starve_another_peer() {
    super::room_tests::log_to_test_output();
    // Mallory's peers are on 127.0.0.2, the honest one on 127.0.0.1; the victim caps streams
    // per address as it does on a network (loopback tests turn that off by default).
    let victim = Api::start_with(|config| {
        let mut p2p = TransportConfig::loopback();
        p2p.http.max_streams_per_ip = hyphae_p2p::HttpConfig::default().max_streams_per_ip;
        p2p.http.body_grace = Duration::from_secs(2);
        config.p2p = Some(p2p);
    })
    .await;
    let honest = Stranger::connect(&victim).await;
    assert!(
        probe(&honest, 3, Duration::from_secs(5))
            .await
            .iter()
            .all(Option::is_some)
    );
    let mallory = Stranger::connect_from(&victim, "127.0.0.2").await;

    // A request whose body trickles (2 bytes a second) loses its slot after the grace, not
    // at the end of the whole exchange's minute.
    let started = Instant::now();
    let slow = half_sent(&mallory.transport, &mallory.victim, 1_000_000)
        .await
        .unwrap();
    let (mut reader, mut writer) = slow.split();
    let trickling = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(b"0").await.is_err() {
                return;
            }
        }
    };
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            _ = reader.read_to_end(&mut answer) => {}
            _ = trickling => {}
        }
    })
    .await;
    let took = started.elapsed();
    assert!(
        ended.is_ok(),
        "a trickling request kept its slot for {took:?}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    // What the peer is told, if the trickle stopped first.
    let _ = tokio::time::timeout(Duration::from_secs(2), reader.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // One peer opens 300 requests, sends their heads and a byte of each body, and trickles.
    let (attack, opened) = trickle(&mallory, 300).await;
    assert!(opened > 0);
    let answered = probe(&honest, 3, Duration::from_secs(3)).await;
    assert!(
        answered.iter().all(Option::is_some),
        "{opened} slow requests of one peer: {answered:?}"
    );
    attack.abort();

    // Six peer ids of the same host, 60 slow requests each.
    let mut sybils = Vec::new();
    for _ in 0..6 {
        let sybil = Stranger::connect_from(&victim, "127.0.0.2").await;
        let (task, _) = trickle(&sybil, 60).await;
        sybils.push((sybil, task));
    }
    let answered = probe(&honest, 3, Duration::from_secs(3)).await;
    assert!(
        answered.iter().all(Option::is_some),
        "one host's peers: {answered:?}"
    );
    for (_, task) in sybils {
        task.abort();
    }
}
