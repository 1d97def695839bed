//! hyphae-tests: scenarios across Hyphae's crates (several nodes, real clients, network
//! namespaces, benchmarks). The scenarios are in `tests/tests/`; shared helpers live here.

pub mod browser;
pub mod client;
pub mod program;

use std::net::SocketAddr;

use hyphae_node::{Config, Node};

/// A node on a free loopback port with its own temporary data folder, removed with it.
pub struct TestNode {
    pub node: Node,
    pub data: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// Starts a node after `configure` has adjusted its configuration.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestNode {
        let data = tempfile::tempdir().expect("temporary data folder");
        let mut config = Config {
            client_listen: loopback_any_port(),
            // The real overlay, on loopback only, found by explicit dialling (no mDNS).
            p2p: Some(hyphae_node::TransportConfig::loopback()),
            ..Config::new(data.path())
        };
        configure(&mut config);
        let node = Node::start(config).await.expect("node starts");
        TestNode { node, data }
    }

    /// Stops the node and starts it again on the same data folder (a new process would do the
    /// same: everything it knows comes from the folder).
    pub async fn restart(self) -> TestNode {
        let TestNode { node, data } = self;
        node.shutdown().await;
        drop(node);
        let node = Node::start(Config {
            client_listen: loopback_any_port(),
            p2p: Some(hyphae_node::TransportConfig::loopback()),
            ..Config::new(data.path())
        })
        .await
        .expect("node restarts");
        TestNode { node, data }
    }

    pub fn transport(&self) -> &hyphae_node::Transport {
        self.node.transport().expect("test nodes run the overlay")
    }

    /// Connects this node's overlay to `other`'s (loopback, so without mDNS), so they federate.
    pub async fn connect(&self, other: &TestNode) {
        let addrs = other
            .transport()
            .listen_addrs()
            .await
            .expect("listen addresses");
        self.transport()
            .dial(other.transport().local_peer_id(), addrs)
            .await
            .expect("dial");
    }

    pub fn client_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.client_addr())
    }
}

/// The Python that has matrix-nio (with its end-to-end encryption), as `scripts/test.sh` names
/// it in HYPHAE_NIO_PYTHON; `None` (after [`skip_or_fail`]) when it is not set.
pub fn nio_python(test: &str) -> Option<String> {
    let python = std::env::var("HYPHAE_NIO_PYTHON").ok();
    if python.is_none() {
        skip_or_fail(
            test,
            "HYPHAE_NIO_PYTHON is not set (scripts/test.sh sets it after installing matrix-nio)",
        );
    }
    python
}

/// Runs a client script from `tests/clients/` with `program` and `args`, and checks that it
/// succeeded and printed OK last.
pub async fn run_client_script(program: String, script: &str, args: Vec<String>) {
    let script = format!("{}/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let what = format!("{program} {script} {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .expect("the client runs to its end")
    .expect("the client starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("OK"),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Says loudly that `test` did not run, and why. Under `CI=true` everything a test needs is
/// installed (scripts/test.sh), so there a test that cannot run fails instead.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot run under CI: {why}"
    );
    eprintln!(
        "\n======================================================================\n\
         SKIPPED {test}:\n{why}\n\
         ======================================================================\n"
    );
}
