//! The mailbox over real loopback libp2p: a peer that cannot reach a subscribed device leaves
//! its transactions with the device's backup server, which hands them over when the device is
//! back, with the peer gone by then; and what the mailbox and the device refuse.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::create_invite;
use super::mailbox::{MAIL_PATH, MAILBOX_PATH, find_mailbox};
use super::tests::{backup_server, texts};
use crate::client_api::test_support::{Api, app, owned, owned_by};
use crate::federation::room_tests::eventually;

const WAIT: Duration = Duration::from_secs(60);

async fn mail_waiting(server: &Api, device: &str) -> i64 {
    let store = server.node.store();
    store.backup_mail_waiting(device.to_owned()).await.unwrap()
}

/// A backup server; Alice and Bob, each with their own node, in an encrypted DM with a message
/// each way (so Bob's room key is with Alice already); Alice subscribed to the server, and Bob
/// knowing it is her mailbox from her signed record.
pub(super) struct Setup {
    pub(super) server: Api,
    pub(super) server_name: String,
    pub(super) a: Api,
    pub(super) b: Api,
    pub(super) alice_name: String,
    pub(super) room: ruma::OwnedRoomId,
}

pub(super) async fn dm_with_a_mailbox() -> Setup {
    let server = backup_server().await;
    let server_addrs = server.p2p_addrs().await;
    let server_name = server.node.server_name().to_owned();
    let a = owned("alice").await;
    let b = owned("bob").await;
    a.connect(&b).await;
    let alice_name = a.node.server_name().to_owned();
    let room = {
        let (alice, bob) = (app(&a), app(&b));
        let room = alice.create_dm(bob.user_id()).await.unwrap();
        eventually(WAIT, "Bob invited", || async {
            !bob.invites().await.unwrap().is_empty()
        })
        .await;
        bob.join(&room).await.unwrap();
        for (from, to, text) in [(alice, bob, "hello bob"), (bob, alice, "hello alice")] {
            from.send_text(&room, text).await.unwrap();
            eventually(WAIT, "the message arrived", || async {
                texts(&to.timeline(&room, 50).await.unwrap()).contains(&text.to_owned())
            })
            .await;
        }
        room
    };
    // The servers Alice shares rooms with learn her mailbox from her signed record (and so
    // does the DHT).
    let token = create_invite(server.data_dir(), super::DEFAULT_QUOTA).unwrap();
    a.node
        .subscribe_backup(&server_name, server_addrs, &token)
        .await
        .unwrap();
    eventually(WAIT, "Bob knows Alice's mailbox", || async {
        let record = b.node.store().mailbox_record(alice_name.clone());
        let record = record.await.unwrap();
        record.and_then(|r| r.mailbox).as_deref() == Some(server_name.as_str())
    })
    .await;
    Setup {
        server,
        server_name,
        a,
        b,
        alice_name,
        room,
    }
}

/// Whether Bob's messages are all with Alice's mailbox: some held, none left in his outbox.
pub(super) async fn all_in_the_mailbox(server: &Api, b: &Api, alice_name: &String) -> bool {
    let held = mail_waiting(server, alice_name).await;
    let destinations = b.node.store().outbox_destinations().await.unwrap();
    held > 0 && !destinations.contains(alice_name)
}

#[tokio::test]
async fn mail_sent_while_the_device_is_away_reaches_it_from_its_mailbox_with_the_sender_gone() {
    crate::federation::room_tests::log_to_test_output();
    let Setup {
        server,
        server_name,
        a,
        b,
        alice_name,
        room,
    } = dm_with_a_mailbox().await;
    // Her mailbox keeps her record too, to put it in the DHT again while she is away.
    eventually(WAIT, "the backup server holds Alice's record", || async {
        let naming = server
            .node
            .store()
            .mailbox_records_naming(server_name.clone());
        naming.await.unwrap().iter().any(|r| r.server == alice_name)
    })
    .await;
    let transport = server.node.transport().unwrap();
    assert_eq!(
        super::mailbox::republish(server.node.store(), transport, &server_name).await,
        1
    );
    // A third server that shares no room with Alice finds the mailbox through the DHT.
    let c = Api::start_federated().await;
    c.connect(&server).await;
    let alice_server = ruma::ServerName::parse(&alice_name).unwrap();
    eventually(WAIT, "Carol finds Alice's mailbox in the DHT", || async {
        let found = find_mailbox(c.node.store(), c.node.transport().unwrap(), &alice_server).await;
        found.is_some_and(|(mailbox, _)| mailbox.as_str() == server_name)
    })
    .await;
    // And the backup server announces itself there.
    let announced = c.node.find_backup_servers().await.unwrap();
    assert_eq!(announced, std::slice::from_ref(&server_name));
    drop(c);

    // Alice's device goes away. Bob keeps writing; his sends to her fail, then go to her
    // mailbox.
    let a = a.stop().await;
    let sent: Vec<String> = (1..=5)
        .map(|i| format!("while you were away {i}"))
        .collect();
    for text in &sent {
        app(&b).send_text(&room, text).await.unwrap();
    }
    eventually(WAIT, "Bob's messages are in Alice's mailbox", || {
        all_in_the_mailbox(&server, &b, &alice_name)
    })
    .await;
    // The mailbox holds them as Bob signed them; it cannot read the encrypted text.
    let held = server
        .node
        .store()
        .backup_mail_batch(alice_name.clone(), 100, usize::MAX)
        .await
        .unwrap();
    for mail in &held {
        assert!(
            !mail.payload.contains("while you were away"),
            "{}",
            mail.payload
        );
        assert!(
            mail.payload.contains("m.room.encrypted"),
            "{}",
            mail.payload
        );
    }

    // Bob is gone for good before Alice comes back.
    drop(b.stop().await);
    let a = a.start_with(owned_by("alice")).await;
    let alice = app(&a);
    eventually(WAIT, "every message reached Alice, decrypted", || async {
        let got = texts(&alice.timeline(&room, 50).await.unwrap());
        sent.iter().all(|text| got.contains(text))
    })
    .await;
    let got = texts(&alice.timeline(&room, 50).await.unwrap());
    let mut expected = vec!["hello bob".to_owned(), "hello alice".to_owned()];
    expected.extend(sent.iter().cloned());
    assert_eq!(got, expected, "in order, each once");
    eventually(WAIT, "the mailbox is emptied once delivered", || async {
        mail_waiting(&server, &alice_name).await == 0
    })
    .await;
}

#[tokio::test]
async fn an_invite_to_a_device_that_is_away_waits_in_its_mailbox() {
    let Setup {
        server,
        a,
        b,
        alice_name,
        ..
    } = dm_with_a_mailbox().await;
    let alice_user = app(&a).user_id().to_owned();
    let a = a.stop().await;
    // Bob makes a group with Alice while her device is off: the invite cannot be countersigned
    // by her server, so it goes as it is, by EDU, into her mailbox.
    let bob = app(&b);
    let picnic = bob
        .create_group("Picnic", std::slice::from_ref(&alice_user))
        .await
        .unwrap();
    eventually(WAIT, "the invite in Alice's mailbox", || {
        all_in_the_mailbox(&server, &b, &alice_name)
    })
    .await;
    let a = a.start_with(owned_by("alice")).await;
    let alice = app(&a);
    eventually(WAIT, "the invite in Alice's view", || async {
        let invites = alice.invites().await.unwrap();
        invites
            .iter()
            .any(|i| i.room_id == picnic && i.name.as_deref() == Some("Picnic"))
    })
    .await;
    alice.join(&picnic).await.unwrap();
    eventually(WAIT, "Alice joined, seen by Bob", || async {
        let members = bob.members(&picnic).await.unwrap();
        members
            .iter()
            .any(|m| m.user_id == alice_user.as_str() && m.membership == "join")
    })
    .await;
    bob.send_text(&picnic, "bring cake").await.unwrap();
    eventually(WAIT, "Bob's message, decrypted", || async {
        let timeline = alice.timeline(&picnic, 20).await.unwrap();
        texts(&timeline).contains(&"bring cake".to_owned())
    })
    .await;
}

#[tokio::test]
async fn the_mailbox_takes_only_signed_mail_from_its_origin_for_a_subscriber() {
    let server = backup_server().await;
    let server_addrs = server.p2p_addrs().await;
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    b.connect(&server).await;
    let token = create_invite(server.data_dir(), super::DEFAULT_QUOTA).unwrap();
    a.node
        .subscribe_backup(server.node.server_name(), server_addrs, &token)
        .await
        .unwrap();
    let alice = a.node.server_name().to_owned();
    let bob = b.node.server_name().to_owned();
    let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0);
    let transaction_at = |origin: &str, destination: &str, txn: &str, ts: i64| {
        json!({
            "origin": origin,
            "origin_server_ts": ts,
            "destination": destination,
            "txn_id": txn,
            "pdus": [],
            "edus": [{"edu_type": "m.typing", "content": {}}],
        })
    };
    let transaction =
        |origin: &str, destination: &str, txn: &str| transaction_at(origin, destination, txn, now);
    let sign = |mut txn: serde_json::Value| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(txn.take()).unwrap();
        b.node
            .app_state()
            .signing_key
            .sign_json(&mut object)
            .unwrap();
        serde_json::to_value(object).unwrap()
    };
    let path = |txn: &str| format!("{MAILBOX_PATH}/{txn}");

    // Unsigned: refused.
    let (status, body) = b
        .federation(
            &server,
            Method::PUT,
            &path("1"),
            Some(json!({"destination": alice, "transaction": transaction(&bob, &alice, "1")})),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    // Signed, but claiming another origin than the peer: refused.
    let (status, _) = b
        .federation(
            &server,
            Method::PUT,
            &path("2"),
            Some(json!({"destination": alice, "transaction": sign(transaction(&alice, &alice, "2"))})),
        )
        .await;
    assert_eq!(status, 403);
    // Signed and altered afterwards: refused.
    let mut altered = sign(transaction(&bob, &alice, "3"));
    altered["edus"][0]["edu_type"] = json!("m.receipt");
    let (status, _) = b
        .federation(
            &server,
            Method::PUT,
            &path("3"),
            Some(json!({"destination": alice, "transaction": altered})),
        )
        .await;
    assert_eq!(status, 403);
    // For a server that is not subscribed here: not found.
    let (status, body) = b
        .federation(
            &server,
            Method::PUT,
            &path("4"),
            Some(json!({"destination": bob, "transaction": sign(transaction(&bob, &bob, "4"))})),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
    // Signed, but naming another transaction than the one it is left as, or stale, or from a
    // clock far ahead: refused (the sender keeps it).
    let (stale, ahead) = (now - hyphae_store::MAIL_MAX_AGE_MS - 1000, now + 3_600_000);
    for (txn, transaction) in [
        ("6", transaction(&bob, &alice, "other")),
        ("7", transaction_at(&bob, &alice, "7", stale)),
        ("8", transaction_at(&bob, &alice, "8", ahead)),
    ] {
        let (status, body) = b
            .federation(
                &server,
                Method::PUT,
                &path(txn),
                Some(json!({"destination": alice, "transaction": sign(transaction)})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{txn}: {body}"
        );
    }
    assert_eq!(
        mail_waiting(&server, &alice).await,
        0,
        "nothing refused was kept"
    );
    // Signed by its origin, for a subscriber: held, once however often it is sent.
    for _ in 0..2 {
        let (status, _) = b
            .federation(
                &server,
                Method::PUT,
                &path("5"),
                Some(json!({"destination": alice, "transaction": sign(transaction(&bob, &alice, "5"))})),
            )
            .await;
        assert_eq!(status, 200);
    }
    // Delivered to Alice (connected), and dropped from the mailbox.
    eventually(WAIT, "the mail is delivered", || async {
        mail_waiting(&server, &alice).await == 0
    })
    .await;

    // Only the device's own mailbox may deliver to it.
    b.connect(&a).await;
    let (status, body) = b
        .federation(
            &a,
            Method::POST,
            MAIL_PATH,
            Some(json!({"mail": [sign(transaction(&bob, &alice, "9"))]})),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
}

#[test]
fn a_device_opens_only_fresh_mail_signed_by_its_origin_and_addressed_to_it() {
    // The key's name is its public key, as for any Hyphae server.
    let seed = [7; 32];
    let unnamed = crate::signing::SigningKey::new("unnamed".try_into().unwrap(), &seed);
    let origin = hex::encode(unnamed.public_key());
    let key = crate::signing::SigningKey::new(origin.clone().try_into().unwrap(), &seed);
    let me = ruma::ServerName::parse(hex::encode([9u8; 32])).unwrap();
    let now = 1_800_000_000_000i64;
    let signed = |destination: &str, pdus: serde_json::Value, txn: serde_json::Value| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(json!({
            "origin": origin, "destination": destination, "pdus": pdus, "edus": [],
        }))
        .unwrap();
        for (field, value) in txn.as_object().unwrap() {
            object.insert(
                field.clone(),
                serde_json::from_value(value.clone()).unwrap(),
            );
        }
        key.sign_json(&mut object).unwrap();
        object
    };
    let fresh = json!({"txn_id": "t1", "origin_server_ts": now - 1000});
    let open = |object| super::mailbox::open_mail(&me, object, now);
    let opened = open(signed(me.as_str(), json!([{"a": 1}]), fresh.clone())).unwrap();
    assert_eq!(
        (
            opened.origin.as_str(),
            opened.txn_id.as_str(),
            opened.pdus.len()
        ),
        (origin.as_str(), "t1", 1)
    );
    assert_eq!(opened.ts, now - 1000);
    assert!(open(signed("elsewhere", json!([]), fresh.clone())).is_err());
    let mut forged = signed(me.as_str(), json!([{"a": 1}]), fresh.clone());
    forged.insert("pdus".into(), ruma::CanonicalJsonValue::Array(vec![]));
    assert!(open(forged).is_err());
    // What it signs must name the transaction and the time, neither stale nor far ahead.
    let no_id = json!({"origin_server_ts": now});
    assert!(open(signed(me.as_str(), json!([]), no_id)).is_err());
    let no_time = json!({"txn_id": "t2"});
    assert!(open(signed(me.as_str(), json!([]), no_time)).is_err());
    let stale =
        json!({"txn_id": "t3", "origin_server_ts": now - hyphae_store::MAIL_MAX_AGE_MS - 1});
    assert!(open(signed(me.as_str(), json!([]), stale)).is_err());
    let ahead = json!({"txn_id": "t4", "origin_server_ts": now + 3_600_000});
    assert!(open(signed(me.as_str(), json!([]), ahead)).is_err());
}

/// How long a device that comes back takes to take what its mailbox held: Bob sends N
/// encrypted messages (`HYPHAE_MAILBOX_MESSAGES`, 300 by default) while Alice's device is
/// off, then her device starts again. Prints the time from the start until every message is
/// stored on her node, and until her app shows them all decrypted.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn mailbox_delivery_time() {
    crate::federation::room_tests::log_to_test_output();
    let n: usize = std::env::var("HYPHAE_MAILBOX_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let Setup {
        server,
        a,
        b,
        alice_name,
        room,
        ..
    } = dm_with_a_mailbox().await;
    let a = a.stop().await;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            app(&b)
                .send_text(&room, &format!("m{i}"))
                .await
                .unwrap()
                .to_string(),
        );
    }
    eventually(Duration::from_secs(600), "all in the mailbox", || {
        all_in_the_mailbox(&server, &b, &alice_name)
    })
    .await;
    let transactions = mail_waiting(&server, &alice_name).await;
    let started = std::time::Instant::now();
    let a = a.start_with(owned_by("alice")).await;
    let node_up = started.elapsed();
    eventually(Duration::from_secs(600), "every message stored", || async {
        a.node.store().pdus(ids.clone()).await.unwrap().len() == n
    })
    .await;
    let stored = started.elapsed();
    eventually(
        Duration::from_secs(600),
        "every message decrypted",
        || async {
            let timeline = app(&a).timeline(&room, n as u32 + 10).await.unwrap();
            texts(&timeline).len() >= n
        },
    )
    .await;
    let decrypted = started.elapsed();
    println!(
        "mailbox: {n} messages in {transactions} transactions; node up {node_up:.2?}, all stored \
         {stored:.2?}, all decrypted in the app {decrypted:.2?} after the start"
    );
}
