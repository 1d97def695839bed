//! A plain HTTP Matrix client for the benchmarks: just the calls they make, failing loudly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct User {
    pub token: String,
    pub user_id: String,
}

/// The password `register` gives every account.
pub const PASSWORD: &str = "benchmark";

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn register(http: &reqwest::Client, base: &str, name: &str) -> User {
    let body: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"username": name, "password": PASSWORD,
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

/// A new device of `user` (registered with `register`): a fresh access token.
pub async fn login(http: &reqwest::Client, base: &str, user: &User) -> User {
    let body: Value = http
        .post(format!("{base}/login"))
        .json(&json!({"type": "m.login.password",
                      "identifier": {"type": "m.id.user", "user": user.user_id},
                      "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    User {
        token: body["access_token"].as_str().expect("logged in").to_owned(),
        user_id: user.user_id.clone(),
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

/// Sends a text message; its event id.
pub async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    room: &str,
    txn: &str,
    body: &str,
) -> String {
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
    let sent: Value = response.json().await.unwrap();
    sent["event_id"].as_str().expect("sent").to_owned()
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

/// The `p` quantile (0 to 1) of durations sorted in ascending order.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// How long each of `messages` messages takes from `sender`'s send (on `sender_base`) until it
/// shows in `receiver`'s long-polling `/sync` (on `receiver_base`, from its next batch now), in
/// `room`; sorted.
pub async fn sync_latencies(
    http: &reqwest::Client,
    (sender_base, sender): (&str, &User),
    (receiver_base, receiver): (&str, &User),
    room: &str,
    messages: usize,
) -> Vec<Duration> {
    let mut since = sync(http, receiver_base, &receiver.token, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut latencies = Vec::with_capacity(messages);
    // Transaction ids unique in the process: a repeated one is the same send retried, which the
    // server answers with the event it made the first time, and the receiver never sees more.
    static SENT: AtomicU64 = AtomicU64::new(0);
    for _ in 0..messages {
        let n = SENT.fetch_add(1, Ordering::Relaxed);
        let body = format!("latency {n}");
        let waiting = {
            let (http, base, token, since) = (
                http.clone(),
                receiver_base.to_owned(),
                receiver.token.clone(),
                since.clone(),
            );
            tokio::spawn(async move { sync(&http, &base, &token, Some(&since), 30_000).await })
        };
        // Let the long-poll reach the server before sending.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let started = Instant::now();
        send(
            http,
            sender_base,
            &sender.token,
            room,
            &format!("l{n}"),
            &body,
        )
        .await;
        let mut response = waiting.await.unwrap();
        loop {
            let arrived = response["rooms"]["join"][room]["timeline"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == body));
            since = response["next_batch"].as_str().unwrap().to_owned();
            if arrived {
                break;
            }
            response = sync(http, receiver_base, &receiver.token, Some(&since), 30_000).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}
