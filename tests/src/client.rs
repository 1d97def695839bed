//! A plain HTTP Matrix client for the benchmarks: just the calls they make, failing loudly.

use std::time::Duration;

use serde_json::{Value, json};

pub struct User {
    pub token: String,
    pub user_id: String,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn register(http: &reqwest::Client, base: &str, name: &str) -> User {
    let body: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"username": name, "password": "benchmark",
                      "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    User {
        token: body["access_token"]
            .as_str()
            .expect("registered")
            .to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
    }
}

pub async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

pub async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    room: &str,
    txn: &str,
    body: &str,
) {
    let response = http
        .put(format!("{base}/rooms/{room}/send/m.room.message/{txn}"))
        .bearer_auth(token)
        .json(&json!({"msgtype": "m.text", "body": body}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "send: {}",
        response.status()
    );
}

pub async fn sync(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    since: Option<&str>,
    timeout_ms: u64,
) -> Value {
    let mut url = format!("{base}/sync?timeout={timeout_ms}");
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
