//! What the demo-app's process tests share: the `hyphae` binary, a child process that is killed
//! when the test ends, reading what a starting process prints, and the owner's web UI API.
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub fn hyphae() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyphae"))
}

/// A child process, killed when the test ends however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, reads its stdout up to "Press Ctrl-C", returns the process and the lines.
/// The rest of its output is read on, so the child never blocks on a full pipe.
pub fn start(command: Command) -> (Running, Vec<String>) {
    start_with(command, None)
}

/// What a child process has written to stderr (its log) so far.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// As [`start`], keeping what the process logs.
pub fn start_logged(command: Command) -> (Running, Vec<String>, Log) {
    let log = Log::default();
    let (child, lines) = start_with(command, Some(log.clone()));
    (child, lines, log)
}

fn start_with(mut command: Command, log: Option<Log>) -> (Running, Vec<String>) {
    let stderr = if log.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    if let (Some(log), Some(stderr)) = (log, child.stderr.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = log.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let child = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, seen)
}

/// What a printed line starting (after indentation) with `name` says.
pub fn field(lines: &[String], name: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(name).map(|r| r.trim().to_owned()))
}

/// GETs a Client-Server API `url` as the holder of `token`; the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("the node answers")
        .json()
        .await
        .expect("a JSON answer")
}

/// The owner's web UI API on one `hyphae up`, signed in with the key its link holds.
pub struct UiApi {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl UiApi {
    pub fn new(ui_url: &str) -> UiApi {
        let (origin, key) = ui_url.split_once("/app/?key=").expect("a web UI link");
        let port = origin.rsplit(':').next().expect("a port");
        UiApi {
            http: reqwest::Client::new(),
            base: format!("{origin}/app/api"),
            cookie: format!("hyphae_ui_{port}={key}"),
        }
    }

    /// The answer's status and JSON body (errors are `{errcode, error}`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the UI API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}
