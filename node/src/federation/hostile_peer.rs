//! A hostile server for tests: a bare libp2p transport with a key of its own (not a node), that
//! sends whatever federation requests a test makes up, as itself, over a real connection.

use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::signing::SigningKey;

pub(crate) struct HostilePeer {
    pub(crate) transport: hyphae_p2p::Transport,
    /// Signs events in the peer's own name.
    pub(crate) key: SigningKey,
    pub(crate) dir: tempfile::TempDir,
}

impl HostilePeer {
    /// A peer on the loopback overlay, serving nothing (see `hostile_tests::silent_server`
    /// for one that takes requests and never answers).
    pub(crate) async fn start() -> HostilePeer {
        let dir = tempfile::tempdir().unwrap();
        let identity = hyphae_p2p::Identity::load_or_create(dir.path()).unwrap();
        let transport =
            hyphae_p2p::Transport::start(hyphae_p2p::TransportConfig::loopback(), &identity)
                .await
                .unwrap();
        let key = SigningKey::new(
            identity.server_name().try_into().unwrap(),
            &identity.secret_bytes(),
        );
        HostilePeer {
            transport,
            key,
            dir,
        }
    }

    pub(crate) fn server_name(&self) -> &str {
        self.transport.server_name()
    }

    /// A user id of this server.
    pub(crate) fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    pub(crate) async fn connect(&self, to: &Api) {
        let theirs = to.node.transport().expect("a federated test node");
        self.transport
            .dial(theirs.local_peer_id(), theirs.listen_addrs().await.unwrap())
            .await
            .unwrap();
    }

    /// A federation request to `to`, authenticated as this peer; its status and JSON body.
    pub(crate) async fn request(
        &self,
        to: &Api,
        method: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Bytes::from(body.to_string()))
            .unwrap();
        let response = self
            .transport
            .request(to.node.server_name(), request)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body();
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into())),
        )
    }

    /// A `/send` transaction of `pdus` and `edus` to `to`.
    pub(crate) async fn send(&self, to: &Api, pdus: Vec<Value>, edus: Vec<Value>) -> (u16, Value) {
        let body = json!({
            "origin": self.server_name(),
            "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
            "edus": edus,
        });
        let path = super::hostile_tests::txn_path();
        self.request(to, "PUT", &path, &body).await
    }
}

/// The key of a server nobody runs: it signs as a made-up (Sybil) server, valid signatures and
/// all.
pub(crate) fn stranger_key() -> SigningKey {
    let dir = tempfile::tempdir().unwrap();
    let identity = hyphae_p2p::Identity::load_or_create(dir.path()).unwrap();
    SigningKey::new(
        identity.server_name().try_into().unwrap(),
        &identity.secret_bytes(),
    )
}
