//! A real node on a loopback port and a plain HTTP client for it, for the API's tests.

use serde_json::{Value, json};

use crate::{Config, Node};

pub(crate) struct Api {
    pub(crate) node: Node,
    pub(crate) http: reqwest::Client,
    _data: tempfile::TempDir,
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

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
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
