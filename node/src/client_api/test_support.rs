//! A real node on a loopback port and a plain HTTP client for it, for the API's tests.

use serde_json::{Value, json};

use crate::{Config, Node};

/// A registered user of a test node.
pub(crate) struct Person {
    pub(crate) user_id: String,
    pub(crate) token: String,
}

/// A response's status and Matrix error code.
pub(crate) fn errcode(response: &(u16, Value)) -> (u16, Option<&str>) {
    (response.0, response.1["errcode"].as_str())
}

/// Registers `name` on `api`.
pub(crate) async fn person(api: &Api, name: &str) -> Person {
    let (user_id, token, _) = api.register(name, "password").await;
    Person { user_id, token }
}

/// The bodies of the `m.room.message` events in a list of client events.
pub(crate) fn message_bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Signs a local user in with a single-use login token (how the embedding app does it; an owner
/// has no password), as a new device.
pub(crate) async fn signed_in(api: &Api, localpart: &str) -> Person {
    let token = api.node.login_token(localpart).await.unwrap();
    let (status, body) = api
        .post(
            "/v3/login",
            None,
            json!({"type": "m.login.token", "token": token}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Person {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
    }
}

pub(crate) struct Api {
    pub(crate) node: Node,
    pub(crate) http: reqwest::Client,
    _data: tempfile::TempDir,
}

/// Sets a node up as `name`'s own device, on the loopback overlay.
pub(crate) fn owned_by(name: &str) -> impl FnOnce(&mut Config) {
    let name = name.to_owned();
    move |config| {
        config.owner = Some(name);
        config.p2p = Some(crate::TransportConfig::loopback());
    }
}

/// A node that is `name`'s own device (its owner signed in to the in-process client), on the
/// loopback overlay.
pub(crate) async fn owned(name: &str) -> Api {
    Api::start_with(owned_by(name)).await
}

/// The owner's in-process client of a test node.
pub(crate) fn app(api: &Api) -> &crate::app::AppClient {
    api.node.app().expect("the node has an owner")
}

impl Api {
    pub(crate) async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(configure: impl FnOnce(&mut Config)) -> Api {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config {
            client_listen: "127.0.0.1:0".parse().unwrap(),
            // The Client-Server API alone: these tests need no overlay.
            p2p: None,
            ..Config::new(data.path())
        };
        configure(&mut config);
        Api {
            node: Node::start(config).await.unwrap(),
            http: reqwest::Client::new(),
            _data: data,
        }
    }

    /// A node with the libp2p overlay on loopback (no mDNS), for federation tests.
    pub(crate) async fn start_federated() -> Api {
        Api::start_with(|config| config.p2p = Some(crate::TransportConfig::loopback())).await
    }

    /// The node's data folder (its store and its identity key).
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    /// Stops the node and starts it again on the same data folder, as a new process would:
    /// everything it knows comes from the folder. `configure` sets up the new start (the
    /// overlay listens on new ports either way).
    pub(crate) async fn restart_with(self, configure: impl FnOnce(&mut Config)) -> Api {
        self.stop().await.start_with(configure).await
    }

    /// Stops the node (what it stored stays in its data folder, for `Stopped::start_*`).
    pub(crate) async fn stop(self) -> Stopped {
        let Api { node, http, _data } = self;
        node.shutdown().await;
        drop(node);
        Stopped { http, data: _data }
    }

    /// Restarts the node with the overlay on loopback.
    pub(crate) async fn restart_federated(self) -> Api {
        self.restart_with(|config| config.p2p = Some(crate::TransportConfig::loopback()))
            .await
    }

    /// Restarts the node without the overlay: its users keep using it, but it reaches no other
    /// server and none reaches it (a node cut off from the others).
    pub(crate) async fn restart_offline(self) -> Api {
        self.restart_with(|_| {}).await
    }

    /// Where this node's overlay listens.
    pub(crate) async fn p2p_addrs(&self) -> Vec<hyphae_p2p::Multiaddr> {
        let transport = self.node.transport().expect("a federated test node");
        transport.listen_addrs().await.unwrap()
    }

    /// Connects this node's overlay to `other`'s, so they can federate.
    pub(crate) async fn connect(&self, other: &Api) {
        let theirs = other.node.transport().expect("a federated test node");
        let addrs = theirs.listen_addrs().await.unwrap();
        self.node
            .transport()
            .expect("a federated test node")
            .dial(theirs.local_peer_id(), addrs)
            .await
            .unwrap();
    }

    /// Sends a federation request to `other` as this node, over the overlay.
    pub(crate) async fn federation(
        &self,
        other: &Api,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.federation_bytes(other, method, path, body.into())
            .await
            .unwrap()
    }

    /// Sends a federation request with any body (not necessarily JSON) to `other`; the
    /// transport's error when the request does not get an answer.
    pub(crate) async fn federation_bytes(
        &self,
        other: &Api,
        method: reqwest::Method,
        path: &str,
        body: axum::body::Bytes,
    ) -> Result<(u16, Value), hyphae_p2p::HttpError> {
        let transport = self.node.transport().expect("a federated test node");
        let request = axum::http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let response = transport.request(other.node.server_name(), request).await?;
        let status = response.status().as_u16();
        let body = response.into_body();
        Ok((
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into())),
        ))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}/_matrix/client{path}", self.node.client_addr())
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub(crate) async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    pub(crate) async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Starts a `/sync` from `since` that waits up to `timeout_ms` for news, as the user of
    /// `token`: how long it took, and its answer.
    pub(crate) fn sync_in_background(
        &self,
        token: &str,
        since: &str,
        timeout_ms: u64,
    ) -> tokio::task::JoinHandle<(std::time::Duration, Value)> {
        let http = self.http.clone();
        let url = self.url(&format!("/v3/sync?timeout={timeout_ms}&since={since}"));
        let token = token.to_owned();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), body)
        })
    }

    /// Registers through the dummy stage; returns (user id, access token, device id).
    pub(crate) async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> (String, String, String) {
        let (status, body) = self
            .post(
                "/v3/register",
                None,
                json!({"username": username, "password": password,
                       "auth": {"type": "m.login.dummy"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["user_id"].as_str().unwrap().to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a room (`body` as createRoom takes it) as the user of `token`; returns its id.
    pub(crate) async fn create_room(&self, token: &str, body: Value) -> String {
        let (status, body) = self.post("/v3/createRoom", Some(token), body).await;
        assert_eq!(status, 200, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    /// Creates a public room as the user of `token`; returns its id.
    pub(crate) async fn create_public_room(&self, token: &str) -> String {
        self.create_room(token, json!({"preset": "public_chat"}))
            .await
    }

    /// Joins the user of `token` to `room_id` (a room id or alias).
    pub(crate) async fn join(&self, token: &str, room_id: &str) {
        let (status, body) = self
            .post(&format!("/v3/join/{room_id}"), Some(token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Sends an event of `kind` into `room_id` as the user of `token` (a fresh transaction id
    /// each time); returns its id.
    pub(crate) async fn send_event(
        &self,
        token: &str,
        room_id: &str,
        kind: &str,
        content: Value,
    ) -> String {
        let mut txn = [0u8; 8];
        getrandom::fill(&mut txn).unwrap();
        let txn = u64::from_le_bytes(txn);
        let (status, body) = self
            .put(
                &format!("/v3/rooms/{room_id}/send/{kind}/t{txn}"),
                Some(token),
                content,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// Makes `user_id` a joined member of `room_id` in this node's store, as if their join had
    /// come over federation: for tests of what other servers' members see.
    pub(crate) async fn add_joined_member(&self, room_id: &str, user_id: &str) {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        self.node
            .store()
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
                     VALUES (?1, ?2, 'join', '$test', 0)",
                    [room_id, user_id],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    pub(crate) async fn login(&self, user: &str, password: &str) -> (u16, Value) {
        self.post(
            "/v3/login",
            None,
            json!({"type": "m.login.password",
                   "identifier": {"type": "m.id.user", "user": user},
                   "password": password}),
        )
        .await
    }
}

/// A stopped test node: its data folder, waiting to be started again.
pub(crate) struct Stopped {
    http: reqwest::Client,
    data: tempfile::TempDir,
}

impl Stopped {
    pub(crate) async fn start_with(self, configure: impl FnOnce(&mut Config)) -> Api {
        let mut config = Config {
            client_listen: "127.0.0.1:0".parse().unwrap(),
            p2p: None,
            ..Config::new(self.data.path())
        };
        configure(&mut config);
        Api {
            node: Node::start(config).await.unwrap(),
            http: self.http,
            _data: self.data,
        }
    }

    /// Starts the node again with the overlay on loopback (on new ports).
    pub(crate) async fn start_federated(self) -> Api {
        self.start_with(|config| config.p2p = Some(crate::TransportConfig::loopback()))
            .await
    }
}
