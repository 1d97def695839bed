//! A server the test itself runs: a bare libp2p transport with its own key (so it is who its
//! noise key says, like any peer, but not a node), answering the federation requests it gets with
//! whatever router the test gives it, and sending whatever the test builds and signs.

use reqwest::Method;
use serde_json::{Value, json};

use super::hostile_tests::{Tip, draft_on, event_id, sign, tip, to_value, txn_path};
use crate::client_api::test_support::Api;
use crate::signing::SigningKey;

pub(crate) struct Peer {
    pub(crate) transport: hyphae_p2p::Transport,
    /// Signs events in the peer's own name.
    pub(crate) key: SigningKey,
    pub(crate) dir: tempfile::TempDir,
}

impl Peer {
    /// Starts a peer on loopback that answers with `router`.
    pub(crate) async fn start(router: axum::Router) -> Peer {
        let peer = Peer::bare().await;
        peer.transport.serve(router);
        peer
    }

    /// A peer on loopback serving nothing (see `hostile_tests::silent_server` for one that
    /// takes requests and never answers).
    pub(crate) async fn bare() -> Peer {
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
        Peer {
            transport,
            key,
            dir,
        }
    }

    pub(crate) fn server_name(&self) -> &str {
        self.transport.server_name()
    }

    /// A user id of this peer's server.
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

    /// One federation request to `to`'s node, authenticated as this peer: its status and JSON
    /// answer (a body that is not JSON comes back as a string).
    pub(crate) async fn request(
        &self,
        to: &Api,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = axum::http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
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

    /// Sends `pdus` to `to` in one transaction of this peer's; returns the answer.
    pub(crate) async fn send(&self, to: &Api, pdus: Vec<Value>) -> (u16, Value) {
        self.send_txn(to, pdus, Vec::new()).await
    }

    /// A `/send` transaction of `pdus` and `edus` to `to`.
    pub(crate) async fn send_txn(
        &self,
        to: &Api,
        pdus: Vec<Value>,
        edus: Vec<Value>,
    ) -> (u16, Value) {
        let body = json!({
            "origin": self.server_name(),
            "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
            "edus": edus,
        });
        self.request(to, Method::PUT, &txn_path(), Some(body)).await
    }

    /// An event from `sender` built on `tip` and signed by this peer's server: its id and PDU.
    pub(crate) fn event(
        &self,
        tip: &Tip,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> (String, Value) {
        let mut pdu = draft_on(tip, sender, kind, state_key, content);
        sign(&self.key, &tip.version, &mut pdu);
        (event_id(&tip.version, &pdu), to_value(&pdu))
    }

    /// Joins `localpart` of this peer's server to a public room of `on`'s, with a join it signs
    /// and sends itself; returns the join's event id once `on` took it.
    pub(crate) async fn join(&self, on: &Api, room: &str, localpart: &str) -> String {
        let user = self.user(localpart);
        let tip = tip(on, room).await;
        let (id, join) = self.event(
            &tip,
            &user,
            "m.room.member",
            Some(&user),
            json!({"membership": "join"}),
        );
        let (status, answer) = self.send(on, vec![join]).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["pdus"][&id].get("error").is_none(), "{answer}");
        id
    }
}

/// A router that answers every request `200 {}`: a server that takes what it is sent.
pub(crate) fn accepting() -> axum::Router {
    axum::Router::new().fallback(|| async { axum::Json(json!({})) })
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
