//! hyphae-tests: scenarios across Hyphae's crates (several nodes, real clients, network
//! namespaces, benchmarks). The scenarios are in `tests/tests/`; shared helpers live here.

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
            ..Config::new(data.path())
        };
        configure(&mut config);
        let node = Node::start(config).await.expect("node starts");
        TestNode { node, data }
    }

    pub fn client_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.client_addr())
    }
}

pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
