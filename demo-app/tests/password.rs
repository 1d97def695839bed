//! The device owner's password, as a person sets it (a real `hyphae up`, loopback only): until
//! set, nobody logs in as the owner; set in the web UI's API, a plain HTTP client logs in with it
//! and sees the owner's rooms while the app keeps working; `hyphae password` (stdin, not argv)
//! replaces it. Neither password shows in the node's log, read at debug level.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};

mod common;
use common::{UiApi, field, get_json, hyphae, start_logged};

/// `POST /login` as `user`: the status and the body.
async fn login(http: &reqwest::Client, api: &str, user: &str, password: &str) -> (u16, Value) {
    let response = http
        .post(format!("{api}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password",
                      "identifier": {"type": "m.id.user", "user": user},
                      "password": password}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_owner_sets_a_password_and_logs_in_from_another_client() {
    let data = tempfile::tempdir().unwrap();
    let mut command = hyphae();
    command
        .env("RUST_LOG", "debug")
        .args([
            "up",
            "--name",
            "olive",
            "--listen",
            "127.0.0.1:0",
            "--no-p2p",
        ])
        .arg("--data")
        .arg(data.path());
    let (_process, lines, log) = start_logged(command);
    let api = field(&lines, "client API").expect("the client API line");
    let owner = field(&lines, "user").expect("the user line");
    let ui = UiApi::new(&field(&lines, "web UI").expect("the web UI line"));
    let http = reqwest::Client::new();
    let (status, group) = ui.post("/groups", json!({"name": "Plans"})).await;
    assert_eq!(status, 200, "{group}");
    let room = group["room_id"].as_str().unwrap().to_owned();

    // No password yet: no way in, whatever is tried.
    let first = "first: correct horse battery staple";
    for tried in [first, ""] {
        let (status, body) = login(&http, &api, &owner, tried).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN"))
        );
    }
    assert_eq!(ui.get("/me").await.1["has_password"], false);
    let (status, body) = ui.post("/me/password", json!({"password": "short"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );

    // Set in the web UI: another client logs in with it and sees the owner's room.
    let (status, body) = ui.post("/me/password", json!({"password": first})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ui.get("/me").await.1["has_password"], true);
    let (status, session) = login(&http, &api, "olive", first).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user_id"], owner.as_str());
    let token = session["access_token"].as_str().unwrap().to_owned();
    let joined = get_json(
        &http,
        &format!("{api}/_matrix/client/v3/joined_rooms"),
        &token,
    )
    .await;
    assert_eq!(joined["joined_rooms"], json!([room]));

    // The app goes on, and the other client sees what it sends.
    let (status, sent) = ui
        .post(
            &format!("/rooms/{room}/messages"),
            json!({"text": "sent from the app"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let messages = format!("{api}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20");
    let messages = get_json(&http, &messages, &token).await;
    let ids: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(
        ids.contains(&sent["event_id"].as_str().unwrap()),
        "{messages}"
    );

    // `hyphae password` with the password on stdin replaces it.
    let second = "second: tr0ub4dor & 3";
    let mut cli = hyphae()
        .args([
            "password",
            "--api",
            api.trim_start_matches("http://"),
            "--data",
        ])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(cli.stdin.take().unwrap(), "{second}").unwrap();
    let output = cli.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("can now log in"), "{said}");
    assert!(
        !said.contains(second),
        "the command does not echo it: {said}"
    );
    assert_eq!(login(&http, &api, "olive", first).await.0, 403);
    assert_eq!(login(&http, &api, "olive", second).await.0, 200);

    // The node logged what happened, but never a password.
    let logged = log.text();
    assert!(logged.contains("the owner set a password"), "{logged}");
    assert!(logged.contains("logged in"), "{logged}");
    for password in [first, second] {
        assert!(
            !logged.contains(password),
            "a password in the log:\n{logged}"
        );
    }
}
