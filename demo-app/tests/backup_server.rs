//! `hyphae backup-server` as an operator runs it: a real process, an invitation made while it
//! runs, and `hyphae up --backup …` subscribing with it (the token read from a file, then from
//! stdin: never on the command line; loopback only); then
//! the same from the web UI's API: a wrong token, the right one, the replica growing, key
//! backup's recovery key shown once, and unsubscribing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{Running, UiApi, field, hyphae, start, start_logged};

/// A running backup server: its process, name, address (ending in /p2p/<peer id>).
struct BackupServer {
    _process: Running,
    name: String,
    addr: String,
}

/// Starts `hyphae backup-server` on loopback, with its data in `data`.
fn start_backup_server(data: &Path) -> BackupServer {
    let mut server = hyphae();
    server
        .args([
            "backup-server",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data",
        ])
        .arg(data);
    let (process, lines) = start(server);
    let name = field(&lines, "server name").expect("server name printed");
    let addr = field(&lines, "p2p listen").expect("listen address printed");
    assert!(addr.contains("/p2p/"), "{addr}");
    BackupServer {
        _process: process,
        name,
        addr,
    }
}

/// A one-time token from `hyphae backup-server invite`, as the operator hands it out.
fn invite(data: &Path, quota: &str) -> String {
    let invite = hyphae()
        .args(["backup-server", "invite", "--quota", quota, "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(invite.status.success(), "{invite:?}");
    String::from_utf8(invite.stdout).unwrap().trim().to_owned()
}

#[test]
fn invite_while_running_then_a_device_subscribes_from_the_command_line() {
    let server_data = tempfile::tempdir().unwrap();
    let device_data = tempfile::tempdir().unwrap();
    let BackupServer {
        _process: _server,
        name,
        addr,
    } = start_backup_server(server_data.path());

    // The server holds the data folder's lock; the invitation is made anyway.
    let token = invite(server_data.path(), "10M");
    assert_eq!(token.len(), 64, "{token}");
    let bad = hyphae()
        .args(["backup-server", "invite", "--quota", "lots", "--data"])
        .arg(server_data.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());

    // The token from a file, as the operator handed it over: not in the process's arguments.
    let token_file = device_data.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut device = hyphae();
    device
        .args(["up", "--no-app", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--backup", &addr])
        .arg("--backup-token-file")
        .arg(&token_file)
        .arg("--data")
        .arg(device_data.path());
    let (device, lines) = start(device);
    let backup = field(&lines, "backup").expect("the backup line");
    assert_eq!(backup, format!("{name} (subscribed now)"));
    drop(device);

    // The same device again, unsubscribing: the server is told to delete its copy.
    let mut device = hyphae();
    device
        .args(["up", "--no-app", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args([
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--unsubscribe-backup",
        ])
        .arg("--data")
        .arg(device_data.path());
    let (device, lines) = start(device);
    let backup = field(&lines, "backup").expect("the backup line");
    assert_eq!(
        backup,
        format!("none (unsubscribed from {name}; it deletes its copy)")
    );
    drop(device);

    // Subscribing again with a new token typed in: stdin, when it is no terminal.
    let token = invite(server_data.path(), "10M");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut device = hyphae();
    device
        .args(["up", "--no-app", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--backup", &addr])
        .arg("--data")
        .arg(device_data.path())
        .stdin(std::fs::File::open(&token_file).unwrap());
    let (device, lines) = start(device);
    let backup = field(&lines, "backup").expect("the backup line");
    assert_eq!(backup, format!("{name} (subscribed now)"));
    drop(device);

    // The old flag still works (subscribed already, so the token is not used), with a warning.
    let mut device = hyphae();
    device
        .args(["up", "--no-app", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--backup", &addr])
        .args(["--backup-token", &token, "--data"])
        .arg(device_data.path());
    let (_device, lines, log) = start_logged(device);
    let backup = field(&lines, "backup").expect("the backup line");
    assert!(backup.starts_with(&format!("{name} (")), "{backup}");
    // The log is read on another thread: give it a moment to catch up with stdout.
    let warning = "the backup token given on the command line can be read by other users";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.text().contains(warning) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.text().contains(warning), "{}", log.text());
}

#[tokio::test]
async fn the_web_ui_subscribes_backs_up_keys_once_and_unsubscribes() {
    let server_data = tempfile::tempdir().unwrap();
    let device_data = tempfile::tempdir().unwrap();
    let server = start_backup_server(server_data.path());
    let token = invite(server_data.path(), "10M");

    let mut device = hyphae();
    device
        .args([
            "up",
            "--name",
            "owner",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data"])
        .arg(device_data.path());
    let (_device, lines) = start(device);
    let ui = UiApi::new(&field(&lines, "web UI").expect("the web UI line"));

    let (status, backup) = ui.get("/backup").await;
    assert_eq!(status, 200, "{backup}");
    assert_eq!(backup["subscribed"], false, "{backup}");
    assert_eq!(backup["p2p"], true, "{backup}");
    assert_eq!(backup["key_backup"]["enabled"], false, "{backup}");

    // An address that is none: refused here, before anything is sent.
    let (status, error) = ui
        .post(
            "/backup/subscribe",
            json!({"address": "backup.example.org", "token": token}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["errcode"], "M_INVALID_PARAM");
    assert!(
        error["error"].as_str().unwrap().contains("/p2p/<peer id>"),
        "{error}"
    );

    // A wrong token: the server's own refusal, and the device stays unsubscribed.
    let (status, error) = ui
        .post(
            "/backup/subscribe",
            json!({"address": server.addr, "token": "0".repeat(64)}),
        )
        .await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["errcode"], "M_FORBIDDEN");
    assert_eq!(
        error["error"],
        "the backup server refused: Unknown or already used subscription token"
    );
    let (_, backup) = ui.get("/backup").await;
    assert_eq!(backup["subscribed"], false, "{backup}");
    assert_eq!(backup["server"], Value::Null, "{backup}");

    // No such server there (a peer id nobody here has, at a closed port): a clear gateway
    // error, still unsubscribed.
    let nobody = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let (status, error) = ui
        .post(
            "/backup/subscribe",
            json!({"address": nobody, "token": token}),
        )
        .await;
    assert_eq!(status, 504, "{error}");
    assert_eq!(error["errcode"], "IO.HYPHAE.UNREACHABLE");
    assert_eq!(ui.get("/backup").await.1["subscribed"], false);

    // The right token.
    let (status, backup) = ui
        .post(
            "/backup/subscribe",
            json!({"address": server.addr, "token": format!(" {token}\n")}),
        )
        .await;
    assert_eq!(status, 200, "{backup}");
    assert_eq!(backup["subscribed"], true, "{backup}");
    assert_eq!(backup["server"], server.name, "{backup}");
    assert_eq!(backup["addresses"], json!([server.addr]), "{backup}");
    let (status, error) = ui
        .post(
            "/backup/subscribe",
            json!({"address": server.addr, "token": token}),
        )
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["errcode"], "IO.HYPHAE.ALREADY_SUBSCRIBED");

    // A message: the server keeps it (with the room it is in).
    let (status, room) = ui.post("/groups", json!({"name": "Kept safe"})).await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap();
    let (status, sent) = ui
        .post(
            &format!("/rooms/{room_id}/messages"),
            json!({"text": "remember this"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let backup = loop {
        let (_, backup) = ui.get("/backup").await;
        if backup["bytes_kept"].as_i64() > Some(0) && backup["pending"] == 0 {
            break backup;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not reach the server: {backup}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(backup["events_kept"].as_i64() > Some(0), "{backup}");
    assert_eq!(backup["events_refused"], 0, "{backup}");
    assert_eq!(backup["last_error"], Value::Null, "{backup}");

    // Key backup: the recovery key comes once; asking again does not mint or show another.
    let (status, shown) = ui.post("/backup/keys", json!({})).await;
    assert_eq!(status, 200, "{shown}");
    let key = shown["recovery_key"].as_str().expect("a recovery key");
    assert!(
        key.split(' ').count() >= 10 && key.split(' ').all(|group| group.len() <= 4),
        "{key}"
    );
    assert_eq!(shown["key_backup"]["enabled"], true, "{shown}");
    let version = shown["key_backup"]["version"].clone();
    let (status, again) = ui.post("/backup/keys", json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["errcode"], "IO.HYPHAE.KEY_BACKUP_ON");
    assert!(again.get("recovery_key").is_none(), "{again}");
    assert!(!again.to_string().contains(key), "{again}");
    let (_, backup) = ui.get("/backup").await;
    assert_eq!(backup["key_backup"]["enabled"], true, "{backup}");
    assert_eq!(backup["key_backup"]["version"], version, "{backup}");
    assert!(!backup.to_string().contains(key), "{backup}");

    // Unsubscribing: the server deletes its copy, the device says it is not backed up.
    let (status, backup) = ui.post("/backup/unsubscribe", json!({})).await;
    assert_eq!(status, 200, "{backup}");
    assert_eq!(backup["subscribed"], false, "{backup}");
    assert_eq!(backup["server"], Value::Null, "{backup}");
    assert_eq!(ui.get("/backup").await.1["subscribed"], false);
    let (status, error) = ui.post("/backup/unsubscribe", json!({})).await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["errcode"], "IO.HYPHAE.NOT_SUBSCRIBED");
}
