//! Network-namespace scenarios: hosts on a private bridge, in namespaces this test creates and
//! removes itself (addresses exist only inside them, so no packet reaches any real network).
//! Needs root and `ip` (iproute2); without them it prints SKIPPED and passes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::put;
use bytes::Bytes;
use http::{Request, StatusCode};
use hyphae_p2p::{
    Discovery, Identity, MdnsConfig, PeerId, Transport, TransportConfig, TransportEvent,
    server_name_of_peer,
};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why the namespace tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` is missing (install iproute2)".into());
    }
    None
}

/// The namespaces of one scenario; dropping it deletes them (and with them every veth and
/// bridge inside), even when the test panics.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    /// `n` hosts, each in its own namespace with `eth0` = 10.199.`subnet`.i/24, all on one
    /// bridge that lives in a namespace of its own.
    fn new(tag: &str, subnet: u8, n: usize) -> Result<Lan, String> {
        let prefix = format!("hy{}{tag}", std::process::id());
        let mut lan = Lan {
            bridge: format!("{prefix}br"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lan.bridge])?;
        ip(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let host = format!("{prefix}h{i}");
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n",
                &host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.bridge,
            ])?;
            ip(&["-n", &lan.bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lan.bridge, "link", "set", &port, "up"])?;
            let addr = format!("10.199.{subnet}.{i}/24");
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    fn link(&self, host: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hosts[host], "link", "set", "eth0", state]).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`; threads it starts (the tokio runtime,
/// mdns-sd's daemon) inherit the namespace.
fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; setns only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn router() -> Router {
    Router::new().route(
        "/echo",
        put(
            |ConnectInfo(peer): ConnectInfo<PeerId>, body: Bytes| async move {
                ([("x-caller", server_name_of_peer(&peer).unwrap())], body)
            },
        ),
    )
}

fn lan_config() -> TransportConfig {
    TransportConfig {
        mdns: MdnsConfig {
            enabled: true,
            interfaces: vec!["eth0".into()],
            ipv6: false,
            verify_interval: Duration::from_secs(5),
        },
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
        eprintln!(
            "SKIPPED the DNS-SD interoperability check: no python3 with zeroconf (python3-zeroconf)"
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
        eprintln!(
            "SKIPPED three_hosts_find_each_other_by_mdns_alone_lose_and_regain_one: {reason}"
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
                transport.serve(router());
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
