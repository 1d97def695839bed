//! `hyphae up` as a person runs it: a real process, a real port, Ctrl-C to stop.

use std::process::Command;

mod common;
use common::{Running, field, hyphae, start};

/// Starts `hyphae up` and returns the process, the client API URL and the server name it printed.
fn up(data: &std::path::Path) -> (Running, String, String) {
    let mut command = hyphae();
    // Peers on loopback only and no mDNS: tests send nothing beyond this machine.
    command
        .args(["up", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data"])
        .arg(data);
    let (child, lines) = start(command);
    let registration = field(&lines, "registration").expect("no registration line");
    assert!(
        registration.starts_with("open"),
        "loopback means open registration: {registration}"
    );
    (
        child,
        field(&lines, "client API").expect("no client API line"),
        field(&lines, "server name").expect("no server name line"),
    )
}

/// Ctrl-C, then the exit status (waiting at most 20 s).
fn interrupt(child: &mut Running) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("hyphae up did not stop within 20 s of Ctrl-C");
}

#[tokio::test]
async fn up_serves_clients_and_stops_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, url, name) = up(data.path());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(name.len(), 64);
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );

    let versions: serde_json::Value = reqwest::get(format!("{url}/_matrix/client/versions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        versions["versions"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );

    let status = interrupt(&mut child);
    assert!(status.success(), "exit after Ctrl-C: {status}");

    // The next start in the same folder is the same server.
    let (mut child, _, again) = up(data.path());
    assert_eq!(again, name);
    assert!(interrupt(&mut child).success());
}

#[test]
fn help_explains_the_commands() {
    let output = hyphae().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("up"), "{help}");
    assert!(help.contains("Matrix homeserver"), "{help}");
    assert!(help.contains("RUST_LOG"), "{help}");

    let output = hyphae().args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("--data <DIR>") && help.contains("--listen <ADDR>"),
        "{help}"
    );
    assert!(
        help.contains("127.0.0.1:8008"),
        "the default address is shown: {help}"
    );
    assert!(
        help.contains("--no-relay-server"),
        "relaying for others is on by default, and can be turned off: {help}"
    );
}

#[test]
fn bad_input_is_a_message_not_a_panic() {
    let output = hyphae()
        .args(["up", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("invalid value 'not-an-address'"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let output = hyphae()
        .args(["up", "--listen", "127.0.0.1:0", "--no-p2p", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("hyphae: cannot use data folder"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_node_uses_no_cpu() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, _, _) = up(data.path());
    std::thread::sleep(std::time::Duration::from_millis(500)); // start-up settles
    let before = cpu_ticks(child.0.id());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_ticks(child.0.id()) - before;
    // A tick is 10 ms: a polling loop would show; a quiet node stays at 0 or 1.
    assert!(used <= 1, "an idle node used {used} ticks of CPU in 3 s");
    assert!(interrupt(&mut child).success());
}

/// Sends one Client-Server request and returns the JSON answer, failing on an error status.
async fn call(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

#[tokio::test]
async fn what_the_node_accepted_survives_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, url, _) = up(data.path());
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{url}/_matrix/client/v3{path}");
    let registered = call(
        http.post(api("/register")),
        None,
        serde_json::json!({"username": "alice", "password": "pw",
                           "auth": {"type": "m.login.dummy"}}),
    )
    .await;
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let room = call(
        http.post(api("/createRoom")),
        Some(&token),
        serde_json::json!({}),
    )
    .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    for n in 0..20 {
        call(
            http.put(api(&format!("/rooms/{room}/send/m.room.message/t{n}"))),
            Some(&token),
            serde_json::json!({"msgtype": "m.text", "body": format!("message {n}")}),
        )
        .await;
    }
    // SIGKILL right after the last acknowledgement: no clean shutdown.
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let (mut child, url, _) = up(data.path());
    let api = |path: &str| format!("{url}/_matrix/client/v3{path}");
    let page: serde_json::Value = http
        .get(api(&format!("/rooms/{room}/messages?dir=b&limit=50")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .expect("the token and room survived")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let expected: Vec<String> = (0..20).rev().map(|n| format!("message {n}")).collect();
    assert_eq!(bodies, expected);
    assert!(interrupt(&mut child).success());
}
