//! The mailbox among strangers, over real loopback libp2p: a mailbox that hands the same mail
//! over again or holds it too long, a stranger with fresh keys filling a subscriber's mailbox
//! or the records every node keeps of where others take mail.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::create_invite;
use super::mailbox::{MAIL_PATH, MAILBOX_PATH, RECORD_EDU, signed_record};
use super::mailbox_tests::{Setup, all_in_the_mailbox, dm_with_a_mailbox};
use super::tests::backup_server;
use crate::client_api::test_support::{Api, app, owned_by};
use crate::federation::hostile_tests::key_of;
use crate::federation::room_tests::eventually;
use crate::signing::SigningKey;

const WAIT: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0)
}

/// A transaction of `from`'s server for the server `to`, as it leaves it in a mailbox: signed,
/// naming the destination, the transaction and when it was signed.
fn mail(from: &Api, to: &str, txn_id: &str, ts: i64, edus: Value) -> Value {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "origin": from.node.server_name(),
        "destination": to,
        "txn_id": txn_id,
        "origin_server_ts": ts,
        "pdus": [],
        "edus": edus,
    }))
    .unwrap();
    key_of(from).sign_json(&mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

/// Hands `mail` to `device` as its mailbox `server` would; how many it took.
async fn deliver(server: &Api, device: &Api, mail: Vec<Value>) -> i64 {
    let (status, body) = server
        .federation(device, Method::POST, MAIL_PATH, Some(json!({"mail": mail})))
        .await;
    assert_eq!(status, 200, "{body}");
    body["delivered"].as_i64().unwrap()
}

#[tokio::test]
async fn mail_the_mailbox_hands_over_again_is_taken_once() {
    let Setup {
        server,
        a,
        b,
        alice_name,
        ..
    } = dm_with_a_mailbox().await;
    let alice_user = app(&a).user_id().to_owned();
    // Bob invites Alice to a group while her device is off: the invite waits in her mailbox,
    // which keeps a copy of the mail as it held it.
    let a = a.stop().await;
    let picnic = app(&b)
        .create_group("Picnic", std::slice::from_ref(&alice_user))
        .await
        .unwrap();
    eventually(WAIT, "the invite in Alice's mailbox", || {
        all_in_the_mailbox(&server, &b, &alice_name)
    })
    .await;
    let held = server
        .node
        .store()
        .backup_mail_batch(alice_name.clone(), 100, usize::MAX)
        .await
        .unwrap();
    let kept: Vec<Value> = held
        .iter()
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect();
    assert!(!kept.is_empty());
    // Alice's device takes it, and she declines.
    let a = a.start_with(owned_by("alice")).await;
    let alice = app(&a);
    eventually(WAIT, "the invite in Alice's view", || async {
        alice
            .invites()
            .await
            .unwrap()
            .iter()
            .any(|i| i.room_id == picnic)
    })
    .await;
    alice.leave(&picnic).await.unwrap();
    assert!(alice.invites().await.unwrap().is_empty());
    // The mailbox hands the same mail over again: nothing is taken, the invite stays declined.
    assert_eq!(deliver(&server, &a, kept.clone()).await, 0);
    let invites = alice.invites().await.unwrap();
    assert!(
        invites.is_empty(),
        "a declined invite came back: {invites:?}"
    );
    // And again after a restart: what was taken is remembered.
    let a = a.stop().await.start_with(owned_by("alice")).await;
    assert_eq!(deliver(&server, &a, kept).await, 0);
    assert!(app(&a).invites().await.unwrap().is_empty());
}

#[tokio::test]
async fn stale_mail_and_mail_from_a_clock_far_ahead_are_dropped() {
    let server = backup_server().await;
    let (a, b) = (Api::start_federated().await, Api::start_federated().await);
    let token = create_invite(server.data_dir(), super::DEFAULT_QUOTA).unwrap();
    a.node
        .subscribe_backup(server.node.server_name(), server.p2p_addrs().await, &token)
        .await
        .unwrap();
    let typing = json!([{"edu_type": "m.typing", "content": {}}]);
    let now = now_ms();
    let month = 31 * 24 * 3600 * 1000;
    let to = a.node.server_name();
    let old = mail(&b, to, "old", now - month, typing.clone());
    let ahead = mail(&b, to, "ahead", now + 3_600_000, typing.clone());
    let fresh = mail(&b, to, "fresh", now, typing.clone());
    assert_eq!(deliver(&server, &a, vec![old, ahead]).await, 0);
    assert_eq!(deliver(&server, &a, vec![fresh.clone()]).await, 1);
    assert_eq!(deliver(&server, &a, vec![fresh]).await, 0, "a replay");
    // Mail that names no transaction in what it signs (as before this was asked) is dropped.
    let mut unnamed: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "origin": b.node.server_name(), "destination": a.node.server_name(),
        "origin_server_ts": now, "pdus": [], "edus": typing,
    }))
    .unwrap();
    key_of(&b).sign_json(&mut unnamed).unwrap();
    let unnamed = serde_json::to_value(unnamed).unwrap();
    assert_eq!(deliver(&server, &a, vec![unnamed]).await, 0);
}

#[tokio::test]
async fn a_stranger_cannot_fill_a_subscribers_mailbox() {
    let Setup {
        server,
        a,
        b,
        alice_name,
        room,
        ..
    } = dm_with_a_mailbox().await;
    // Alice shares a room with Bob (her replica holds his events); Mallory is a stranger.
    eventually(WAIT, "Alice's replica complete", || async {
        a.node.backup_status().await.unwrap().unwrap().pending == 0
    })
    .await;
    let m = Api::start_federated().await;
    m.connect(&server).await;
    let quota = server
        .node
        .store()
        .backup_subscriber(alice_name.clone())
        .await
        .unwrap()
        .unwrap()
        .quota_bytes;
    let a = a.stop().await;
    // Mallory leaves mail (each ~60 KiB, under the caps on an EDU and on a transaction) until it
    // is refused: she gets a 512th of the quota, no more.
    let padding = "x".repeat(60 << 10);
    let edus = json!([{"edu_type": "m.typing", "content": {"padding": padding}}]);
    let mut taken = 0i64;
    let refused = loop {
        let txn = format!("m{taken}");
        let body = json!({"destination": alice_name, "transaction":
            mail(&m, &alice_name, &txn, now_ms(), edus.clone())});
        let (status, answer) = m
            .federation(
                &server,
                Method::PUT,
                &format!("{MAILBOX_PATH}/{txn}"),
                Some(body),
            )
            .await;
        if status != 200 {
            break (status, answer);
        }
        taken += 1;
        assert!(taken < 1000, "a stranger filled the mailbox");
    };
    assert_eq!(
        (refused.0, refused.1["errcode"].as_str()),
        (403, Some("M_RESOURCE_LIMIT_EXCEEDED")),
        "{}",
        refused.1
    );
    let each = i64::try_from(padding.len()).unwrap();
    assert!(taken * each <= quota / 512, "{taken} taken");
    // Bob's mail still goes in.
    app(&b).send_text(&room, "still here").await.unwrap();
    let bob = format!("\"origin\":\"{}\"", b.node.server_name());
    eventually(WAIT, "Bob's message in Alice's mailbox", || async {
        let held = server
            .node
            .store()
            .backup_mail_batch(alice_name.clone(), 100, usize::MAX);
        let from_bob = held.await.unwrap().iter().any(|m| m.payload.contains(&bob));
        from_bob && all_in_the_mailbox(&server, &b, &alice_name).await
    })
    .await;
    drop(a);
}

#[tokio::test]
async fn records_from_one_peer_beyond_its_cap_go_oldest_first() {
    let (a, m) = (Api::start_federated().await, Api::start_federated().await);
    m.connect(&a).await;
    // Mallory tells Alice's node where twenty servers (fresh keys of hers) take mail.
    let mut servers = Vec::new();
    let mut edus = Vec::new();
    for n in 0..20u8 {
        let seed = [n + 1; 32];
        let unnamed = SigningKey::new("unnamed".try_into().unwrap(), &seed);
        let name = hex::encode(unnamed.public_key());
        let key = SigningKey::new(name.clone().try_into().unwrap(), &seed);
        let record = signed_record(&key, Some(m.node.server_name()), &[]).unwrap();
        edus.push(json!({"edu_type": RECORD_EDU, "content": {"record": record.record}}));
        servers.push(name);
    }
    let body = json!({
        "origin": m.node.server_name(),
        "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
        "edus": edus,
    });
    let (status, answer) = m
        .federation(
            &a,
            Method::PUT,
            "/_matrix/federation/v1/send/records",
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let kept = a
        .node
        .store()
        .mailbox_records_naming(m.node.server_name().to_owned())
        .await
        .unwrap();
    let mut kept: Vec<String> = kept.into_iter().map(|r| r.server).collect();
    kept.sort();
    let mut newest = servers[4..].to_vec();
    newest.sort();
    assert_eq!(kept, newest, "the sixteen heard last");
}
