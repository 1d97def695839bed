//! Network-namespace scenarios: hosts on private bridges, in namespaces these tests create and
//! remove themselves (addresses exist only inside them, so no packet reaches any real network).
//! Needs root and `ip` (iproute2); without them each test prints SKIPPED and passes (fails under
//! `CI=true`).

#[path = "support/namespaces.rs"]
mod namespaces;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::put;
use bytes::Bytes;
use http::{Request, StatusCode};
use hyphae_p2p::{
    Discovery, Identity, MdnsConfig, Multiaddr, PeerId, Transport, TransportConfig, TransportEvent,
    server_name_of_peer,
};
use libp2p::multiaddr::Protocol;

use namespaces::{Lan, Netns, ip, run, runtime_in, skip, skip_reason, spawn_in};

fn echo_service() -> Router {
    Router::new().route(
        "/echo",
        put(
            |ConnectInfo(peer): ConnectInfo<PeerId>, body: Bytes| async move {
                ([("x-caller", server_name_of_peer(&peer).unwrap())], body)
            },
        ),
    )
}

fn mdns_on(interfaces: &[&str]) -> MdnsConfig {
    MdnsConfig {
        enabled: true,
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
        ipv6: false,
        verify_interval: Duration::from_secs(5),
    }
}

fn lan_config() -> TransportConfig {
    TransportConfig {
        mdns: mdns_on(&["eth0"]),
        // Short, so a vanished peer's connection closes soon and it is checked on mDNS.
        idle_timeout: Duration::from_secs(5),
        ..TransportConfig::default()
    }
}

#[derive(Debug)]
enum Report {
    /// Host i found every other host by mDNS: first and last discovery after start.
    Found(usize, Duration, Duration),
    RequestsDone,
    Lost(usize, Duration),
    Reconnected(usize, Duration),
}

async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<TransportEvent>,
    within: Duration,
    mut want: impl FnMut(&TransportEvent) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if want(&event) => return true,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => return false,
        }
    }
}

async fn request(from: &Transport, to: &str) {
    let req = Request::put("/echo")
        .body(Bytes::from_static(b"hi"))
        .unwrap();
    let response = from.request(to, req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-caller"], from.server_name());
}

const ZEROCONF_BROWSE: &str = r#"
import time
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf
found = {}
class Listener(ServiceListener):
    def add_service(self, zc, type_, name):
        info = zc.get_service_info(type_, name, 3000)
        if info:
            found[name] = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    def update_service(self, zc, type_, name):
        pass
    def remove_service(self, zc, type_, name):
        pass
zc = Zeroconf()
ServiceBrowser(zc, "_hyphae._udp.local.", Listener())
time.sleep(3)
zc.close()
for name, props in sorted(found.items()):
    print(name, props.get("key", ""), props.get("addr0", ""))
"#;

/// A standard DNS-SD implementation (Python's zeroconf) sees every node with its key; skipped
/// loudly when no python3 with zeroconf is installed (Debian: python3-zeroconf).
fn check_visible_to_python_zeroconf(ns: &str, ids: &[Identity]) {
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import zeroconf"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        skip(
            "the DNS-SD interoperability check",
            "no python3 with zeroconf (python3-zeroconf)",
        );
        return;
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, python, "-c", ZEROCONF_BROWSE])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "python zeroconf sees:\n{listing}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ids {
        let line = format!(
            "{}._hyphae._udp.local. {}",
            &id.server_name()[..16],
            id.server_name()
        );
        assert!(listing.contains(&line), "zeroconf did not list {line}");
    }
}

#[test]
fn three_hosts_find_each_other_by_mdns_alone_lose_and_regain_one() {
    if let Some(reason) = skip_reason() {
        skip(
            "three_hosts_find_each_other_by_mdns_alone_lose_and_regain_one",
            &reason,
        );
        return;
    }
    let lan = Lan::new("m", 1, 3).unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<Identity> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path()).unwrap())
        .collect();
    let (report, reports) = mpsc::channel();
    let (stop_tx, stop_rx): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::channel::<()>()).unzip();
    let mut stop_rx: Vec<_> = stop_rx.into_iter().map(Some).collect();
    let lost_host = 2;
    let mut threads = Vec::new();
    for (i, host) in lan.hosts.iter().enumerate() {
        let identity = ids[i].clone();
        let others: Vec<Identity> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| id.clone())
            .collect();
        let lost = ids[lost_host].peer_id();
        let report = report.clone();
        let stop = stop_rx[i].take().unwrap();
        threads.push(spawn_in(host, move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let started = Instant::now();
                let transport = Transport::start(lan_config(), &identity).await.unwrap();
                let mut events = transport.events();
                transport.serve(echo_service());
                let mut missing: Vec<PeerId> = others.iter().map(|o| o.peer_id()).collect();
                let mut first = None;
                let found = wait_for(&mut events, Duration::from_secs(20), |e| {
                    if let TransportEvent::PeerDiscovered {
                        peer,
                        how: Discovery::Mdns,
                        ..
                    } = e
                    {
                        first.get_or_insert(started.elapsed());
                        missing.retain(|m| m != peer);
                    }
                    missing.is_empty()
                })
                .await;
                assert!(found, "host {i} did not find {missing:?} by mDNS");
                report
                    .send(Report::Found(i, first.unwrap(), started.elapsed()))
                    .unwrap();
                for other in &others {
                    request(&transport, other.server_name()).await;
                }
                report.send(Report::RequestsDone).unwrap();
                if i != lost_host {
                    let cut = Instant::now();
                    let gone = wait_for(
                        &mut events,
                        Duration::from_secs(60),
                        |e| matches!(e, TransportEvent::PeerLost { peer, .. } if *peer == lost),
                    )
                    .await;
                    assert!(gone, "host {i} never reported the cut-off host lost");
                    report.send(Report::Lost(i, cut.elapsed())).unwrap();
                    let back = Instant::now();
                    let again = wait_for(
                        &mut events,
                        Duration::from_secs(60),
                        |e| matches!(e, TransportEvent::Connected { peer, .. } if *peer == lost),
                    )
                    .await;
                    assert!(
                        again,
                        "host {i} did not reconnect to the host whose link came back"
                    );
                    request(&transport, &server_name_of_peer(&lost).unwrap()).await;
                    report.send(Report::Reconnected(i, back.elapsed())).unwrap();
                }
                // Stay up (serving) until the scenario is over.
                let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
            });
        }));
    }
    drop(report);
    let next = || {
        reports
            .recv_timeout(Duration::from_secs(90))
            .expect("a host thread failed (see its panic above)")
    };
    let mut requests_done = 0;
    while requests_done < 3 {
        match next() {
            Report::Found(i, first, all) => {
                eprintln!("host {i}: first mDNS discovery {first:?} after start, all peers {all:?}")
            }
            Report::RequestsDone => requests_done += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    check_visible_to_python_zeroconf(&lan.hosts[0], &ids);
    lan.link(lost_host, false);
    for _ in 0..2 {
        match next() {
            Report::Lost(i, after) => eprintln!("host {i}: peer lost {after:?} after link down"),
            other => panic!("unexpected {other:?}"),
        }
    }
    lan.link(lost_host, true);
    for _ in 0..2 {
        match next() {
            Report::Reconnected(i, after) => {
                eprintln!("host {i}: reconnected {after:?} after link up")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _stop: Vec<()> = stop_tx.iter().map(|s| s.send(()).unwrap_or(())).collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop(lan);
}

/// The router's fixed port (TCP and QUIC): the other hosts are configured with its address
/// before it runs, as they would be with a real bootstrap server.
const ROUTER_PORT: u16 = 4001;

/// Two bridges, A = 10.199.2.0/24 and B = 10.199.3.0/24: `near` on A, `far` on B, and `router`
/// on both (.254). Each host's default route points at the router, as on a home network, so
/// only the router's refusal to forward (IP forwarding off) keeps A and B apart.
struct Routed {
    near: String,
    router: String,
    far: String,
    /// Held for its drop, which deletes the namespaces.
    _net: Netns,
}

fn routed_networks() -> Result<Routed, String> {
    let mut net = Netns::new("r");
    let a = net.bridge("ba")?;
    let b = net.bridge("bb")?;
    let router = net.host("router")?;
    net.plug(&router, "eth0", &a, "10.199.2.254/24")?;
    net.plug(&router, "eth1", &b, "10.199.3.254/24")?;
    let near = net.host("near")?;
    net.plug(&near, "eth0", &a, "10.199.2.1/24")?;
    ip(&[
        "-n",
        &near,
        "route",
        "add",
        "default",
        "via",
        "10.199.2.254",
    ])?;
    let far = net.host("far")?;
    net.plug(&far, "eth0", &b, "10.199.3.1/24")?;
    ip(&["-n", &far, "route", "add", "default", "via", "10.199.3.254"])?;
    Ok(Routed {
        near,
        router,
        far,
        _net: net,
    })
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

/// Whether a TCP connection from namespace `ns` to `addr` is accepted within 3 s.
fn tcp_reaches(ns: &str, addr: SocketAddr) -> bool {
    spawn_in(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
    })
    .join()
    .unwrap()
}

/// A started transport and every event it has emitted since it started.
struct Host {
    transport: Transport,
    seen: Arc<Mutex<Vec<TransportEvent>>>,
}

impl Host {
    fn start(runtime: &tokio::runtime::Runtime, config: TransportConfig, id: &Identity) -> Host {
        let id = id.clone();
        run(runtime, async move {
            let transport = Transport::start(config, &id).await.unwrap();
            transport.serve(echo_service());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut events = transport.events();
            let record = seen.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match events.recv().await {
                        Ok(event) => record.lock().unwrap().push(event),
                        Err(RecvError::Lagged(n)) => panic!("missed {n} events"),
                        Err(RecvError::Closed) => break,
                    }
                }
            });
            Host { transport, seen }
        })
    }

    fn mdns_found(&self) -> Vec<PeerId> {
        let mut found: Vec<PeerId> = (self.seen.lock().unwrap().iter())
            .filter_map(|e| match e {
                TransportEvent::PeerDiscovered {
                    peer,
                    how: Discovery::Mdns,
                    ..
                } => Some(*peer),
                _ => None,
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The relays that accepted a reservation of this host.
    fn relay_reservations(&self) -> Vec<PeerId> {
        (self.seen.lock().unwrap().iter())
            .filter_map(|e| match e {
                TransportEvent::RelayReservation { relay } => Some(*relay),
                _ => None,
            })
            .collect()
    }

    /// The remote address of each connection to `peer` that came up.
    fn connections_to(&self, peer: PeerId) -> Vec<Multiaddr> {
        (self.seen.lock().unwrap().iter())
            .filter_map(|e| match e {
                TransportEvent::Connected { peer: p, addr } if *p == peer => Some(addr.clone()),
                _ => None,
            })
            .collect()
    }
}

fn is_circuit_via(addr: &Multiaddr, relay: PeerId) -> bool {
    addr.iter().any(|p| p == Protocol::P2p(relay)) && addr.iter().any(|p| p == Protocol::P2pCircuit)
}

fn tcp_addr_on(addrs: &[Multiaddr], ip: &str) -> SocketAddr {
    addrs
        .iter()
        .find_map(|addr| match addr.iter().collect::<Vec<_>>()[..] {
            [Protocol::Ip4(a), Protocol::Tcp(port)] if a.to_string() == ip => {
                Some(SocketAddr::from((a, port)))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TCP listener on {ip} in {addrs:?}"))
}

/// Reserving on the router's relay is automatic (the router offers it), as is finding the far
/// host's circuit address in the DHT and dialling through it.
#[test]
fn a_host_behind_a_router_is_found_through_the_dht_and_reached_through_its_relay() {
    if let Some(reason) = skip_reason() {
        skip(
            "a_host_behind_a_router_is_found_through_the_dht_and_reached_through_its_relay",
            &reason,
        );
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let net = routed_networks().unwrap();
    assert_eq!(forwarding_off(&net.router), "0");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<Identity> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path()).unwrap())
        .collect();
    let [router_id, near_id, far_id] = &ids[..] else {
        unreachable!()
    };
    let (router_peer, far_peer) = (router_id.peer_id(), far_id.peer_id());
    // Declared after `net`, so they stop before their namespaces are deleted.
    let router_rt = runtime_in(&net.router, 1);
    let near_rt = runtime_in(&net.near, 1);
    let far_rt = runtime_in(&net.far, 1);

    // The router: DHT bootstrap and relay for both networks, mDNS on both legs.
    let router = Host::start(
        &router_rt,
        TransportConfig {
            listen: vec![
                format!("/ip4/0.0.0.0/udp/{ROUTER_PORT}/quic-v1")
                    .parse()
                    .unwrap(),
                format!("/ip4/0.0.0.0/tcp/{ROUTER_PORT}").parse().unwrap(),
            ],
            relay_server: true,
            mdns: mdns_on(&["eth0", "eth1"]),
            ..TransportConfig::default()
        },
        router_id,
    );
    // Each host knows the router by the address it has on the host's own network.
    let via_router = |router_ip: &str| TransportConfig {
        bootstrap: vec![(
            router_peer,
            format!("/ip4/{router_ip}/tcp/{ROUTER_PORT}")
                .parse()
                .unwrap(),
        )],
        mdns: mdns_on(&["eth0"]),
        ..TransportConfig::default()
    };

    // The far host reserves a slot on the router's relay by itself, as a host behind NAT
    // would: identify shows the router (its DHT seed) offers one.
    let far = Host::start(&far_rt, via_router("10.199.3.254"), far_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !far.relay_reservations().contains(&router_peer) {
        assert!(
            Instant::now() < deadline,
            "the far host got no reservation on the router's relay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let near = Host::start(&near_rt, via_router("10.199.2.254"), near_id);

    // The far host's own address is reachable from its network but not from the near host's:
    // the only way across is the router's relay.
    let far_listen = run(&far_rt, {
        let far = far.transport.clone();
        async move { far.listen_addrs().await.unwrap() }
    });
    let far_tcp = tcp_addr_on(&far_listen, "10.199.3.1");
    assert!(
        tcp_reaches(&net.router, far_tcp),
        "the router cannot reach the far host at {far_tcp}: the test network is broken"
    );
    assert!(
        tcp_reaches(
            &net.near,
            SocketAddr::from(([10, 199, 2, 254], ROUTER_PORT))
        ),
        "the near host cannot reach the router: the test network is broken"
    );
    assert!(
        !tcp_reaches(&net.near, far_tcp),
        "the near host reached the far host's own address {far_tcp} directly"
    );

    // Found by peer id through the DHT, then an HTTP request by server name, through the relay.
    let (near_t, far_name) = (near.transport.clone(), far_id.server_name().to_owned());
    run(&near_rt, async move {
        let started = Instant::now();
        let found = loop {
            match near_t.find_peer(far_peer).await {
                Ok(addrs) if addrs.iter().any(|a| is_circuit_via(a, router_peer)) => break addrs,
                result if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("not yet found with a circuit address: {result:?}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                result => panic!("the DHT gave no circuit address of the far host: {result:?}"),
            }
        };
        eprintln!(
            "far host found through the DHT after {:?}: {found:?}",
            started.elapsed()
        );
        let asked = Instant::now();
        let req = Request::put("/echo")
            .body(Bytes::from_static(b"through the router"))
            .unwrap();
        let response = near_t.request(far_name.as_str(), req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-caller"], near_t.server_name());
        assert_eq!(response.body().as_ref(), b"through the router");
        eprintln!(
            "request through the relay answered after {:?}",
            asked.elapsed()
        );
    });
    // Every connection the near host ever had to the far host went through the relay.
    let connections = near.connections_to(far_peer);
    assert!(
        !connections.is_empty(),
        "no Connected event for the far host"
    );
    for via in &connections {
        assert!(
            is_circuit_via(via, router_peer),
            "connected to the far host via {via}, not the relay"
        );
    }

    // mDNS works on each network (the router, on both, finds both hosts, and each host finds
    // the router) but stays on it: neither host ever finds the other by mDNS.
    let near_peer = near_id.peer_id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (router.mdns_found().len() < 2
        || near.mdns_found().is_empty()
        || far.mdns_found().is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "found by mDNS: router {:?}, near {:?}, far {:?} (router {router_peer}, near {near_peer}, far {far_peer})",
        router.mdns_found(),
        near.mdns_found(),
        far.mdns_found(),
    );
    let mut both = vec![near_peer, far_peer];
    both.sort();
    assert_eq!(
        router.mdns_found(),
        both,
        "the router did not find both hosts by mDNS"
    );
    assert_eq!(
        near.mdns_found(),
        vec![router_peer],
        "mDNS crossed the router"
    );
    assert_eq!(
        far.mdns_found(),
        vec![router_peer],
        "mDNS crossed the router"
    );

    drop((router, near, far));
    drop((router_rt, near_rt, far_rt));
    drop(net);
}
