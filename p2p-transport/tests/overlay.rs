//! In-process overlay tests on loopback only (127.0.0.1, mDNS off): nodes exchange HTTP over
//! libp2p streams, find each other through the DHT and a relay, and survive bad peers.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::http::HeaderMap;
use axum::routing::{get, put};
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt};
use http::{Request, StatusCode};
use hyphae_p2p::{
    HttpError, Identity, Multiaddr, PeerId, RequestOptions, Transport, TransportConfig,
    TransportEvent, server_name_of_peer,
};
use libp2p::multiaddr::Protocol;
use tempfile::TempDir;

struct Node {
    transport: Transport,
    _dir: TempDir,
}

impl std::ops::Deref for Node {
    type Target = Transport;
    fn deref(&self) -> &Transport {
        &self.transport
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start(config: TransportConfig) -> Node {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(dir.path()).unwrap();
    let transport = Transport::start(config, &identity).await.unwrap();
    transport.serve(echo_router());
    Node {
        transport,
        _dir: dir,
    }
}

async fn node() -> Node {
    start(TransportConfig::loopback()).await
}

/// Echoes bodies and tells who called (the authenticated peer) and which Host was asked for.
fn echo_router() -> Router {
    Router::new()
        .route(
            "/echo",
            put(
                |ConnectInfo(peer): ConnectInfo<PeerId>, headers: HeaderMap, body: Bytes| async move {
                    let caller = server_name_of_peer(&peer).unwrap();
                    let host = headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    ([("x-caller", caller), ("x-host", host)], body)
                },
            ),
        )
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<PeerId>| async move {
                server_name_of_peer(&peer).unwrap()
            }),
        )
        .route(
            "/big/{n}",
            get(|Path(n): Path<usize>| async move { vec![b'x'; n] }),
        )
        .route(
            "/stream/{n}",
            get(|Path(n): Path<usize>| async move {
                // No content-length: the client must cut it off while reading.
                let chunks = (0..n.div_ceil(1024)).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 1024]));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }),
        )
}

async fn addrs_of(node: &Transport) -> Vec<Multiaddr> {
    node.listen_addrs().await.unwrap()
}

/// Tells `from` where `to` listens, as the node would from its peer book or mDNS.
async fn introduce(from: &Transport, to: &Transport) {
    for addr in addrs_of(to).await {
        from.add_address(to.local_peer_id(), addr).await.unwrap();
    }
}

fn echo(body: &'static [u8]) -> Request<Bytes> {
    Request::put("/echo")
        .body(Bytes::from_static(body))
        .unwrap()
}

async fn expect_echo(from: &Transport, to: &Transport) {
    let response = from
        .request(to.server_name(), echo(b"hello"))
        .await
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.local_peer_id(), to.local_peer_id()));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().as_ref(), b"hello");
    assert_eq!(response.headers()["x-caller"], from.server_name());
    assert_eq!(response.headers()["x-host"], to.server_name());
}

fn only(listen: &str) -> TransportConfig {
    TransportConfig {
        listen: vec![listen.parse().unwrap()],
        ..TransportConfig::loopback()
    }
}

#[tokio::test]
async fn two_nodes_exchange_requests_both_ways_and_see_the_authenticated_caller() {
    let a = node().await;
    let b = node().await;
    let addrs = addrs_of(&b).await;
    assert!(
        addrs
            .iter()
            .any(|a| a.iter().any(|p| p == Protocol::QuicV1))
    );
    assert!(addrs.iter().any(|a| {
        a.iter()
            .any(|p| matches!(p, Protocol::Tcp(port) if port != 0))
    }));
    let mut events = a.events();
    introduce(&a, &b).await;
    introduce(&b, &a).await;

    expect_echo(&a, &b).await;
    expect_echo(&b, &a).await;
    // By peer id as well as by server name; the server sees the caller's key-derived name.
    let whoami = a
        .request(
            b.local_peer_id(),
            Request::get("/whoami").body(Bytes::new()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(whoami.body().as_ref(), a.server_name().as_bytes());

    assert!(
        a.connected_peers()
            .await
            .unwrap()
            .contains(&b.local_peer_id())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(TransportEvent::Connected { peer, .. })) if peer == b.local_peer_id() => break,
            Ok(Ok(_)) => continue,
            other => panic!("no Connected event: {other:?}"),
        }
    }
}

#[tokio::test]
async fn quic_alone_and_tcp_alone_both_carry_requests() {
    for listen in ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"] {
        let a = start(only(listen)).await;
        let b = start(only(listen)).await;
        introduce(&a, &b).await;
        expect_echo(&a, &b).await;
        expect_echo(&b, &a).await; // over the connection a opened
    }
}

#[tokio::test]
async fn ten_nodes_all_exchange_requests() {
    let mut nodes = Vec::new();
    for _ in 0..10 {
        nodes.push(node().await);
    }
    for from in &nodes {
        for to in &nodes {
            if from.local_peer_id() != to.local_peer_id() {
                introduce(from, to).await;
            }
        }
    }
    let mut calls = Vec::new();
    for from in &nodes {
        for to in &nodes {
            if from.local_peer_id() != to.local_peer_id() {
                let (from, to) = (from.transport.clone(), to.transport.clone());
                calls.push(tokio::spawn(async move { expect_echo(&from, &to).await }));
            }
        }
    }
    assert_eq!(calls.len(), 90);
    for call in calls {
        call.await.unwrap();
    }
}

#[tokio::test]
async fn a_burst_of_concurrent_requests_loses_none() {
    let a = node().await;
    let b = node().await;
    introduce(&a, &b).await;
    expect_echo(&a, &b).await;
    let mut calls = Vec::new();
    for _ in 0..300 {
        let (a, b) = (a.transport.clone(), b.transport.clone());
        calls.push(tokio::spawn(async move { expect_echo(&a, &b).await }));
    }
    for call in calls {
        call.await.unwrap();
    }
}

#[tokio::test]
async fn unknown_peers_and_bad_names_fail_at_once_with_a_clear_error() {
    let a = node().await;
    let stranger = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
    let started = Instant::now();
    let error = a
        .request(stranger.server_name(), echo(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, HttpError::PeerNotFound(p) if p == stranger.peer_id()),
        "{error}"
    );
    assert!(error.to_string().contains("was not found"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let error = a.request("example.org", echo(b"x")).await.unwrap_err();
    assert!(matches!(error, HttpError::Destination(_)), "{error}");
    let error = a.request(a.server_name(), echo(b"x")).await.unwrap_err();
    assert!(matches!(error, HttpError::ToSelf), "{error}");
}

#[tokio::test]
async fn a_dead_peer_fails_within_the_connect_timeout_and_its_ports_close() {
    let a = node().await;
    let b = node().await;
    introduce(&a, &b).await;
    expect_echo(&a, &b).await;
    let b_peer = b.local_peer_id();
    let b_addrs = addrs_of(&b).await;
    let mut events = a.events();
    drop(b); // the last handle: b's swarm task ends and its listeners close

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(TransportEvent::Disconnected { peer })) if peer == b_peer => break,
            Ok(Ok(_)) => continue,
            other => panic!("no Disconnected event: {other:?}"),
        }
    }
    let tcp = b_addrs
        .iter()
        .find_map(|a| {
            let mut ip = None;
            let mut port = None;
            for p in a.iter() {
                match p {
                    Protocol::Ip4(i) => ip = Some(i),
                    Protocol::Tcp(p) => port = Some(p),
                    _ => {}
                }
            }
            Some(std::net::SocketAddr::from((ip?, port?)))
        })
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(tcp).await.is_err(),
        "b's TCP listener is still open"
    );

    let options = RequestOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        max_response_body: 1024,
    };
    let started = Instant::now();
    let error = a
        .request_with(b_peer, echo(b"x"), options)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        matches!(
            error,
            HttpError::Unreachable { .. } | HttpError::ConnectTimeout { .. }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_slow_handler_times_out_on_the_client() {
    let a = node().await;
    let b = node().await;
    introduce(&a, &b).await;
    let options = RequestOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(500),
        max_response_body: 1024,
    };
    let started = Instant::now();
    let error = a
        .request_with(
            b.server_name(),
            Request::get("/slow/5000").body(Bytes::new()).unwrap(),
            options,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, HttpError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    expect_echo(&a, &b).await;
}

#[tokio::test]
async fn oversized_requests_get_413_and_oversized_responses_are_refused() {
    let mut config = TransportConfig::loopback();
    config.http.max_request_body = 64 * 1024;
    let a = node().await;
    let b = start(config).await;
    introduce(&a, &b).await;

    let big = Request::put("/echo")
        .body(Bytes::from(vec![b'z'; 200 * 1024]))
        .unwrap();
    let response = a.request(b.server_name(), big).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let fits = Request::put("/echo")
        .body(Bytes::from(vec![b'z'; 60 * 1024]))
        .unwrap();
    assert_eq!(
        a.request(b.server_name(), fits).await.unwrap().status(),
        StatusCode::OK
    );

    let options = RequestOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_response_body: 16 * 1024,
    };
    for path in ["/big/65536", "/stream/65536"] {
        let error = a
            .request_with(
                b.server_name(),
                Request::get(path).body(Bytes::new()).unwrap(),
                options,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, HttpError::ResponseTooLarge { limit: 16384, .. }),
            "{path}: {error}"
        );
    }
    let small = a
        .request_with(
            b.server_name(),
            Request::get("/stream/4096").body(Bytes::new()).unwrap(),
            options,
        )
        .await
        .unwrap();
    assert_eq!(small.body().len(), 4096);
    expect_echo(&a, &b).await;
}

#[tokio::test]
async fn garbage_and_half_open_streams_are_refused_and_serving_goes_on() {
    let mut config = TransportConfig::loopback();
    config.http.header_read_timeout = Duration::from_millis(500);
    config.http.serve_timeout = Duration::from_millis(1500);
    let a = node().await;
    let b = start(config).await;
    introduce(&a, &b).await;

    // Garbage instead of HTTP: 400 and close.
    let mut stream = a.open_http_stream(b.server_name()).await.unwrap();
    stream
        .write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after refusing garbage")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // Nothing at all: closed after the header timeout, with no response.
    let started = Instant::now();
    let mut silent = a.open_http_stream(b.server_name()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut answer))
        .await
        .expect("the server closes a silent stream");
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A head, then a stalled body: the whole-stream timeout ends it.
    let started = Instant::now();
    let mut stalled = a.open_http_stream(b.server_name()).await.unwrap();
    stalled
        .write_all(b"PUT /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabcde")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), stalled.read_to_end(&mut answer))
        .await
        .expect("the server closes a stalled body");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // Many half-open streams of one peer at once do not stop others from being served (its
    // own requests past its slots and its queue are refused until it lets go of them).
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(a.open_http_stream(b.server_name()).await.unwrap());
    }
    let c = node().await;
    introduce(&c, &b).await;
    expect_echo(&c, &b).await;
    expect_echo(&b, &a).await;
    drop(idle);
    expect_echo(&a, &b).await;
}

#[tokio::test]
async fn a_node_without_a_service_answers_503() {
    init_tracing();
    let a = node().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(dir.path()).unwrap();
    let b = Transport::start(TransportConfig::loopback(), &identity)
        .await
        .unwrap();
    introduce(&a, &b).await;
    let response = a.request(b.server_name(), echo(b"x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    b.serve(echo_router());
    expect_echo(&a, &b).await;
}

fn bootstrap_from(seed: &Transport, seed_addrs: &[Multiaddr]) -> TransportConfig {
    let tcp = seed_addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .unwrap()
        .clone();
    TransportConfig {
        bootstrap: vec![(seed.local_peer_id(), tcp)],
        ..TransportConfig::loopback()
    }
}

#[tokio::test]
async fn a_peer_is_found_through_the_dht_and_reached_by_name() {
    let b = node().await;
    let b_addrs = addrs_of(&b).await;
    let c = start(bootstrap_from(&b, &b_addrs)).await;
    let a = start(bootstrap_from(&b, &b_addrs)).await;
    let c_addrs = addrs_of(&c).await;

    // B learns C's addresses from identify once C has connected; ask until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match a.find_peer(c.local_peer_id()).await {
            Ok(found) => break found,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("C not found through the DHT: {e}"),
        }
    };
    assert!(
        found.iter().any(|f| c_addrs.contains(f)),
        "{found:?} vs {c_addrs:?}"
    );
    expect_echo(&a, &c).await;

    // A fourth node that never heard of C reaches it by server name alone: the request
    // looks C up in the DHT by itself.
    let d = start(bootstrap_from(&b, &b_addrs)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.request(c.server_name(), echo(b"hello")).await {
            Ok(response) => {
                assert_eq!(response.headers()["x-caller"], d.server_name());
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("D could not reach C by name: {e}"),
        }
    }
}

#[tokio::test]
async fn a_peer_is_reached_through_a_relay() {
    let relay = start(TransportConfig {
        relay_server: true,
        ..only("/ip4/127.0.0.1/tcp/0")
    })
    .await;
    let relay_addr = addrs_of(&relay).await.remove(0);
    let circuit = relay_addr
        .clone()
        .with(Protocol::P2p(relay.local_peer_id()))
        .with(Protocol::P2pCircuit);
    // C listens only through the relay: no address of its own is known to anyone. It reserves
    // only when told to (the automatic reservation has its own test).
    let c = start(TransportConfig {
        listen: vec![],
        relay_reservations: 0,
        ..TransportConfig::loopback()
    })
    .await;
    let mut events = c.events();
    c.add_address(relay.local_peer_id(), relay_addr.clone())
        .await
        .unwrap();
    c.listen_on(circuit.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(TransportEvent::RelayReservation { relay: r })) => {
                assert_eq!(r, relay.local_peer_id());
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no reservation: {other:?}"),
        }
    }
    let a = start(only("/ip4/127.0.0.1/tcp/0")).await;
    let mut a_events = a.events();
    a.dial(c.local_peer_id(), vec![circuit]).await.unwrap();
    loop {
        match a_events.try_recv() {
            Ok(TransportEvent::Connected { peer, addr }) if peer == c.local_peer_id() => {
                assert!(addr.iter().any(|p| p == Protocol::P2pCircuit), "{addr}");
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no Connected event for C: {e}"),
        }
    }
    expect_echo(&a, &c).await;
    // More than libp2p's default circuit cap (128 KiB) gets through: the relay is configured
    // for federation traffic.
    let big = vec![b'x'; 1024 * 1024];
    for _ in 0..2 {
        let request = Request::put("/echo")
            .body(Bytes::from(big.clone()))
            .unwrap();
        let response = a.request(c.server_name(), request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body().len(), big.len());
    }
}

#[tokio::test]
async fn a_peer_reserves_on_a_relay_it_meets_and_is_reached_through_it_by_name() {
    let relay = start(TransportConfig {
        relay_server: true,
        ..only("/ip4/127.0.0.1/tcp/0")
    })
    .await;
    let relay_addrs = addrs_of(&relay).await;
    // C has no address of its own and is told only of the relay, as a DHT seed: it reserves a
    // slot there by itself, since identify shows the relay offers one.
    let c = start(TransportConfig {
        listen: vec![],
        ..bootstrap_from(&relay, &relay_addrs)
    })
    .await;
    let mut events = c.events();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(TransportEvent::RelayReservation { relay: r })) => {
                assert_eq!(r, relay.local_peer_id());
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("C reserved on no relay: {other:?}"),
        }
    }

    // A knows nothing of C but its name: the DHT (the relay) gives C's circuit address. A has
    // no address either, so C (which learns of A through the DHT) cannot dial it directly.
    let a = start(TransportConfig {
        listen: vec![],
        ..bootstrap_from(&relay, &relay_addrs)
    })
    .await;
    let mut a_events = a.events();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.request(c.server_name(), echo(b"hello")).await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["x-caller"], a.server_name());
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("A could not reach C through the relay: {e}"),
        }
    }
    loop {
        match a_events.try_recv() {
            Ok(TransportEvent::Connected { peer, addr }) if peer == c.local_peer_id() => {
                assert!(addr.iter().any(|p| p == Protocol::P2pCircuit), "{addr}");
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no Connected event for C: {e}"),
        }
    }
}
