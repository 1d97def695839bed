//! Policy lists as people use them (issue 8), with real processes on loopback: Bob makes a list
//! with `hyphae policy …` against his running `hyphae up` and bans Mallory (a glob), the rules
//! read back, and a glob that bans everything is refused. Alice, on another `hyphae up`,
//! subscribes to Bob's list by its alias through her web UI's API (the cookie her page gets),
//! changes the level and unsubscribes; a backup server subscribes the node itself at start.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{Running, UiApi, field, hyphae, start};

/// One `hyphae up` on loopback (no mDNS), as it introduced itself.
struct Device {
    _process: Running,
    /// host:port of its API (what `--api` takes).
    api: String,
    ui_url: String,
    server_name: String,
    /// Its TCP address, ending in /p2p/<peer id>: what another device bootstraps from.
    addr: String,
}

fn start_device(data: &Path, name: &str, bootstrap: Option<&str>) -> Device {
    let mut command = hyphae();
    command
        .args(["up", "--name", name, "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data"])
        .arg(data);
    if let Some(bootstrap) = bootstrap {
        command.args(["--bootstrap", bootstrap]);
    }
    let (process, lines) = start(command);
    let api = field(&lines, "client API").expect("the client API line");
    let peer = field(&lines, "peer id").expect("the peer id line");
    let listen = field(&lines, "p2p listen").expect("a p2p listen line");
    Device {
        _process: process,
        api: api.trim_start_matches("http://").to_owned(),
        ui_url: field(&lines, "web UI").expect("the web UI line"),
        server_name: field(&lines, "server name").expect("the server name line"),
        addr: format!("{listen}/p2p/{peer}"),
    }
}

/// `hyphae policy ARGS --data DATA --api API`, run to its end.
fn policy(data: &Path, api: &str, args: &[&str]) -> Output {
    hyphae()
        .arg("policy")
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--api", api])
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A list in a path: URL-encoded (aliases start with `#`).
fn encoded(list: &str) -> String {
    hyphae_node::urlencode(list)
}

#[tokio::test]
async fn a_list_made_from_the_command_line_is_subscribed_to_from_another_device() {
    let data = tempfile::tempdir().unwrap();
    let bob_data = data.path().join("bob");
    let bob = start_device(&bob_data, "bob", None);

    // No node there: said plainly, and a failure.
    let nobody = policy(&bob_data, "127.0.0.1:9", &["list"]);
    assert!(!nobody.status.success());
    assert!(
        stderr(&nobody).contains("no hyphae node runs at 127.0.0.1:9"),
        "{}",
        stderr(&nobody)
    );

    // Bob makes a list with an alias, and bans Mallory by a glob.
    let made = policy(
        &bob_data,
        &bob.api,
        &["create", "Spammers", "--alias", "spam"],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let room_id = stdout(&made).trim().to_owned();
    assert!(room_id.starts_with('!'), "{room_id}");
    let alias = format!("#spam:{}", bob.server_name);
    assert!(stderr(&made).contains(&alias), "{}", stderr(&made));
    let banned = policy(
        &bob_data,
        &bob.api,
        &[
            "ban",
            &alias,
            "user",
            "@mallory*:*",
            "--reason",
            "sends spam",
        ],
    );
    assert!(banned.status.success(), "{}", stderr(&banned));
    let rules = policy(&bob_data, &bob.api, &["rules", &room_id]);
    assert!(rules.status.success(), "{}", stderr(&rules));
    assert_eq!(stdout(&rules), "user\t@mallory*:*\tsends spam\n");

    // A rule that would ban everyone is refused, with why.
    let everyone = policy(&bob_data, &bob.api, &["ban", &alias, "user", "*"]);
    assert!(!everyone.status.success());
    assert!(
        stderr(&everyone).contains("The rule is refused"),
        "{}",
        stderr(&everyone)
    );
    // So is an unknown kind (by the command line itself) and an unknown list.
    let kind = policy(&bob_data, &bob.api, &["ban", &alias, "person", "@x:y"]);
    assert_eq!(kind.status.code(), Some(2), "{}", stderr(&kind));
    let unknown = policy(&bob_data, &bob.api, &["rules", "#nope:example.org"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("M_NOT_FOUND"),
        "{}",
        stderr(&unknown)
    );
    let listed = policy(&bob_data, &bob.api, &["list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stdout(&listed).contains(&format!("{alias} ({room_id}) \"Spammers\" (1 rule)")),
        "{}",
        stdout(&listed)
    );
    // Bob's page shows the list among his lists, and not among his chats.
    let bob_ui = UiApi::new(&bob.ui_url);
    let (status, rooms) = bob_ui.call(reqwest::Method::GET, "/rooms", None).await;
    assert_eq!(status, 200, "{rooms}");
    let room = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room_id.as_str())
        .cloned()
        .expect("the list's room");
    assert_eq!(room["policy_list"], true, "{room}");

    // Alice, on another device, subscribes by the alias from her page, at level blur.
    let alice = start_device(&data.path().join("alice"), "alice", Some(&bob.addr));
    let ui = UiApi::new(&alice.ui_url);
    let (status, error) = ui
        .call(
            reqwest::Method::POST,
            "/policy/subscriptions",
            Some(json!({"list": alias, "level": "mute"})),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["errcode"], "M_INVALID_PARAM", "{error}");
    // The overlay may take a moment to find Bob's node: try until it does.
    let deadline = Instant::now() + Duration::from_secs(60);
    let policy_status = loop {
        let (status, answer) = ui
            .call(
                reqwest::Method::POST,
                "/policy/subscriptions",
                Some(json!({"list": alias, "level": "blur"})),
            )
            .await;
        if status == 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "Alice could not subscribe: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let subscriptions = policy_status["subscriptions"].as_array().unwrap();
    assert_eq!(subscriptions.len(), 1, "{policy_status}");
    let subscription = &subscriptions[0];
    assert_eq!(subscription["room_id"], room_id.as_str(), "{policy_status}");
    assert_eq!(subscription["level"], "blur", "{policy_status}");
    assert_eq!(subscription["alias"], alias.as_str(), "{policy_status}");
    assert_eq!(subscription["mine"], false, "{policy_status}");
    assert_eq!(subscription["rules"], 1, "{policy_status}");
    // Not her own list: she cannot write to it.
    assert_eq!(policy_status["lists"], json!([]), "{policy_status}");
    let (status, list) = ui
        .call(
            reqwest::Method::GET,
            &format!("/policy/lists/{}", encoded(&room_id)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["subscribed"], "blur", "{list}");
    assert_eq!(list["rules"][0]["entity"], "@mallory*:*", "{list}");
    assert_eq!(list["rules"][0]["reason"], "sends spam", "{list}");

    // A rule Bob adds later reaches her list.
    let more = policy(
        &bob_data,
        &bob.api,
        &[
            "ban",
            &room_id,
            "server",
            "spam.example",
            "--reason",
            "a spam host",
        ],
    );
    assert!(more.status.success(), "{}", stderr(&more));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = ui.call(reqwest::Method::GET, "/policy", None).await;
        if now["subscriptions"][0]["rules"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Bob's new rule did not reach Alice: {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The level changes; a bad level is refused.
    let path = format!("/policy/subscriptions/{}", encoded(&alias));
    let (status, changed) = ui
        .call(reqwest::Method::PUT, &path, Some(json!({"level": "warn"})))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["subscriptions"][0]["level"], "warn", "{changed}");
    let (status, error) = ui
        .call(reqwest::Method::PUT, &path, Some(json!({"level": "loud"})))
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["errcode"], "M_INVALID_PARAM", "{error}");

    // Unsubscribing; a second time there is nothing to end.
    let (status, after) = ui.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["subscriptions"], json!([]), "{after}");
    let (status, error) = ui.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["errcode"], "M_NOT_FOUND", "{error}");

    // Bob takes a rule back.
    let unbanned = policy(
        &bob_data,
        &bob.api,
        &["unban", &alias, "server", "spam.example"],
    );
    assert!(unbanned.status.success(), "{}", stderr(&unbanned));
    let rules = policy(&bob_data, &bob.api, &["rules", &alias]);
    assert_eq!(stdout(&rules), "user\t@mallory*:*\tsends spam\n");

    // A backup server's operator subscribes the node itself at start.
    let mut server = hyphae();
    server
        .args([
            "backup-server",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--bootstrap", &bob.addr, "--policy-list", &alias, "--data"])
        .arg(data.path().join("server"));
    let (_server, lines) = start(server);
    assert_eq!(
        field(&lines, "policy list"),
        Some(format!("{room_id} (1 rule)")),
        "{lines:#?}"
    );
}
