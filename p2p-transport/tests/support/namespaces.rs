//! Private networks in Linux network namespaces, for the namespace tests (`tests/netns.rs`) and
//! the benchmark (`examples/rtt.rs`), which include this file with `#[path]`. A bridge is a
//! namespace holding one `br0`; a host is a namespace plugged into bridges by veth pairs. Every
//! address lives only inside these namespaces, so nothing reaches a real network, and dropping
//! the [`Netns`] guard deletes them all (with every veth and bridge inside), even on panic.

// Each includer uses a different part of this file.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn ip(args: &[&str]) -> Result<(), String> {
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

/// Says loudly that `test` did not run and why. Under `CI=true` a test that cannot run fails
/// instead: CI must run everything.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test} cannot run, and CI=true: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Why namespaces cannot be made here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` is missing (install iproute2)".into());
    }
    None
}

/// The namespaces of one scenario, deleted on drop. Names carry the process id and a tag, so
/// parallel tests and a crashed earlier run never collide.
pub struct Netns {
    prefix: String,
    namespaces: Vec<String>,
    /// veth ports made so far; numbers each bridge port uniquely.
    ports: usize,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        Netns {
            prefix: format!("hy{}{tag}", std::process::id()),
            namespaces: Vec::new(),
            ports: 0,
        }
    }

    /// A new namespace with its loopback up; returns its full name.
    pub fn host(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A new namespace holding only the bridge `br0`: an Ethernet switch.
    pub fn bridge(&mut self, name: &str) -> Result<String, String> {
        let ns = self.host(name)?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(ns)
    }

    /// Plugs `host` into `bridge`: interface `ifname` in `host`, up, with address `cidr`.
    pub fn plug(
        &mut self,
        host: &str,
        ifname: &str,
        bridge: &str,
        cidr: &str,
    ) -> Result<(), String> {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        let veth = [
            "-n", host, "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns",
            bridge,
        ];
        ip(&veth)?;
        ip(&["-n", bridge, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", bridge, "link", "set", &port, "up"])?;
        ip(&["-n", host, "addr", "add", cidr, "dev", ifname])?;
        ip(&["-n", host, "link", "set", ifname, "up"])?;
        wait_oper_up(host, ifname)
    }

    /// On Ctrl-C or SIGTERM, deletes the namespaces made so far and exits: for a long run
    /// (the benchmark) that a user may interrupt, where `Drop` would not run.
    pub fn delete_on_signal(&self) {
        let namespaces = self.namespaces.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).unwrap();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            for ns in namespaces.iter().rev() {
                let _ = ip(&["netns", "del", ns]);
            }
            eprintln!("interrupted: namespaces deleted");
            std::process::exit(130);
        });
    }

    pub fn link(&self, host: &str, ifname: &str, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", host, "link", "set", ifname, state])
    }
}

/// Waits until `ifname` in `host` is operationally up. The kernel reports a new veth's carrier
/// up to a second after `link set up`, and mdns-sd only uses interfaces up when it starts (it
/// looks again every few seconds), so a node started at once would stay silent that long.
fn wait_oper_up(host: &str, ifname: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", host, "-o", "link", "show", "dev", ifname])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if String::from_utf8_lossy(&out.stdout).contains("state UP") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{ifname} in {host} is not up after 5 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// `n` hosts on one bridge, each with `eth0` = 10.199.`subnet`.i/24 (i from 1).
pub struct Lan {
    pub hosts: Vec<String>,
    pub net: Netns,
}

impl Lan {
    pub fn new(tag: &str, subnet: u8, n: usize) -> Result<Lan, String> {
        let mut net = Netns::new(tag);
        let bridge = net.bridge("br")?;
        let mut hosts = Vec::new();
        for i in 1..=n {
            let host = net.host(&format!("h{i}"))?;
            net.plug(&host, "eth0", &bridge, &format!("10.199.{subnet}.{i}/24"))?;
            hosts.push(host);
        }
        Ok(Lan { hosts, net })
    }

    /// Cuts host `i` off its bridge (link down) or plugs it back.
    pub fn link(&self, i: usize, up: bool) {
        self.net.link(&self.hosts[i], "eth0", up).unwrap();
    }
}

/// Moves the calling thread into namespace `ns`; threads it starts later inherit it.
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; setns only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside namespace `ns` (with it, the tokio runtime and mdns-sd
/// daemon it starts).
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// A tokio runtime whose every thread (workers and blocking pool) lives in namespace `ns`, so
/// sockets opened by tasks spawned on it, and threads those tasks start, are inside it.
/// `block_on` runs its future on the caller's thread: use [`run`] for work that opens sockets.
pub fn runtime_in(ns: &str, workers: usize) -> tokio::runtime::Runtime {
    let ns = ns.to_owned();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(move || enter(&ns))
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` as a task on `runtime` (so inside its namespace) and waits for it; its panic is
/// the caller's.
pub fn run<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    match runtime.block_on(runtime.spawn(f)) {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task cancelled: {e}"),
    }
}
