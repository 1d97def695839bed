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
        let data = tempfile::tempdir().expect("temporary data folder");
        let node = Node::start(Config {
            client_listen: loopback_any_port(),
            ..Config::new(data.path())
        })
        .await
        .expect("node starts");
        TestNode { node, data }
    }

    pub fn client_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.client_addr())
    }
}

pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
