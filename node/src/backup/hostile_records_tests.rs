//! What strangers can make a node believe through mailbox records and the DHT: a record that
//! names another peer as its mailbox with junk addresses, DHT puts over a node's own record,
//! and records or events signed in the name of a weak key (which anyone can sign for).

use std::time::Duration;

use hyphae_p2p::{Identity, Multiaddr, Transport, TransportConfig};
use serde_json::json;

use super::mailbox::{MailboxSent, dht_key, learn_record, send_to_mailbox, signed_record};
use crate::client_api::test_support::Api;
use crate::federation::hostile_tests::key_of;
use crate::signing::SigningKey;

/// A server nobody runs: its key, for records signed in its name.
fn absent_server() -> (SigningKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(dir.path()).unwrap();
    let key = SigningKey::new(
        identity.server_name().try_into().unwrap(),
        &identity.secret_bytes(),
    );
    (key, dir)
}

#[tokio::test]
async fn a_mailbox_record_naming_another_peer_does_not_change_how_that_peer_is_dialled() {
    let sender = Api::start_federated().await;
    let victim = Api::start_federated().await;
    let transport = sender.node.transport().unwrap();
    let victim_peer = victim.node.transport().unwrap().local_peer_id();
    // The sender has heard where the victim is (as from mDNS or its peer book).
    for addr in victim.p2p_addrs().await {
        transport.add_address(victim_peer, addr).await.unwrap();
    }
    let before = transport.known_addresses(victim_peer).await.unwrap();
    assert!(!before.is_empty());

    // A hostile server's signed record names the victim as its mailbox, with 16 addresses
    // that lead nowhere, and the hostile server is away: the sender leaves mail there.
    let (hostile, _dir) = absent_server();
    let junk: Vec<String> = (1..=16)
        .map(|port| format!("/ip4/127.0.0.1/tcp/{port}"))
        .collect();
    let record = signed_record(&hostile, Some(victim.node.server_name()), &junk).unwrap();
    learn_record(
        sender.node.store(),
        &record.record,
        hyphae_store::RecordSource::Peer("a room co-member".into()),
    )
    .await;
    let body = json!({"origin": sender.node.server_name(), "pdus": [], "edus": []});
    let sent = send_to_mailbox(
        sender.node.store(),
        transport,
        &key_of(&sender),
        hostile.server_name(),
        "t1",
        body,
    )
    .await;
    // The victim is no backup server: it does not take the mail.
    assert!(matches!(sent, MailboxSent::NotTaken(_)));

    let after = transport.known_addresses(victim_peer).await.unwrap();
    let junk: Vec<Multiaddr> = junk.iter().map(|a| a.parse().unwrap()).collect();
    assert!(
        !after.iter().any(|a| junk.contains(a)),
        "the record's addresses were kept: {after:?}"
    );
    for addr in &before {
        assert!(after.contains(addr), "{addr} was evicted: {after:?}");
    }
    let (status, _) = sender
        .federation(
            &victim,
            reqwest::Method::GET,
            "/_matrix/federation/v1/version",
            None,
        )
        .await;
    assert_eq!(status, 200);
}

/// A bare libp2p peer that knows `seed` as its DHT seed, and its server's signing key.
async fn dht_peer(seed: &Api) -> (Transport, SigningKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(dir.path()).unwrap();
    let key = SigningKey::new(
        identity.server_name().try_into().unwrap(),
        &identity.secret_bytes(),
    );
    let seed_transport = seed.node.transport().unwrap();
    let addr = seed.p2p_addrs().await.remove(0);
    let config = TransportConfig {
        bootstrap: vec![(seed_transport.local_peer_id(), addr)],
        ..TransportConfig::loopback()
    };
    (Transport::start(config, &identity).await.unwrap(), key, dir)
}

#[tokio::test]
async fn dht_puts_from_another_peer_replace_no_record_a_node_cannot_vouch_for() {
    let node = Api::start_federated().await;
    let own_key = key_of(&node);
    let own = dht_key(node.node.server_name());
    let older = signed_record(&own_key, None, &[]).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let current = signed_record(&own_key, None, &[]).unwrap();
    let transport = node.node.transport().unwrap();
    transport
        .put_record(own.clone(), current.record.clone().into_bytes())
        .await
        .unwrap();

    let (mallory, mallory_key, _dir) = dht_peer(&node).await;
    let forged = {
        // Signed by Mallory, claiming to speak for the node.
        let mut record: serde_json::Value =
            serde_json::from_str(&signed_record(&mallory_key, None, &[]).unwrap().record).unwrap();
        record["server"] = json!(node.node.server_name());
        record.to_string()
    };
    for value in [
        b"junk".to_vec(),
        forged.into_bytes(),
        older.record.into_bytes(),
    ] {
        mallory.put_record(own.clone(), value).await.unwrap();
    }
    // A record Mallory's server may put (its own, signed) is kept; junk elsewhere is not.
    let mallory_name = mallory.server_name().to_owned();
    let mallorys = signed_record(&mallory_key, None, &[]).unwrap();
    let stored = mallory
        .put_record(dht_key(&mallory_name), mallorys.record.clone().into_bytes())
        .await
        .unwrap();
    assert!(stored >= 1, "the node took no record at all");
    mallory
        .put_record(b"/hyphae/elsewhere/x".to_vec(), b"junk".to_vec())
        .await
        .unwrap();
    mallory.shutdown().await;

    // What the node holds itself (Mallory is gone, so nobody else answers).
    assert_eq!(
        transport.get_records(own).await.unwrap(),
        vec![current.record.into_bytes()]
    );
    assert_eq!(
        transport.get_records(dht_key(&mallory_name)).await.unwrap(),
        vec![mallorys.record.into_bytes()]
    );
    assert!(
        transport
            .get_records(b"/hyphae/elsewhere/x".to_vec())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A small-order ed25519 point (the identity): as a key, `(R, s) = (identity, 0)` verifies for
/// every message under a plain check.
const WEAK: &str = "0100000000000000000000000000000000000000000000000000000000000000";

/// That signature, as Matrix writes signatures.
fn forged_signature() -> String {
    let mut signature = [0u8; 64];
    signature[0] = 1;
    ruma::serde::Base64::<ruma::serde::base64::Standard>::new(signature.to_vec()).encode()
}

#[tokio::test]
async fn a_weak_key_speaks_for_no_server() {
    assert!(crate::rooms::verify_key_of(WEAK).is_none());

    // A mailbox record in its name, "signed".
    let mut record = json!({"server": WEAK, "mailbox": null, "addresses": [], "ts": 1});
    record["signatures"] = json!({WEAK: {crate::signing::KEY_ID: forged_signature()}});
    let refused = super::mailbox::verify_record(&record.to_string());
    assert!(refused.is_err(), "{refused:?}");

    // An event of a user of that server, "signed" by it.
    let api = Api::start().await;
    let (_, token, _) = api.register("bob", "password").await;
    let room = api.create_public_room(&token).await;
    let mut pdu = crate::federation::hostile_tests::draft(
        &api,
        &room,
        &format!("@eve:{WEAK}"),
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "anyone could have signed this"}),
    )
    .await;
    pdu.insert(
        "signatures".into(),
        serde_json::from_value(json!({WEAK: {crate::signing::KEY_ID: forged_signature()}}))
            .unwrap(),
    );
    pdu.insert(
        "hashes".into(),
        serde_json::from_value(json!({"sha256": "aGFzaA"})).unwrap(),
    );
    let version = crate::federation::hostile_tests::room_version(&api, &room).await;
    let verified = crate::rooms::verify_pdu(&version, pdu);
    assert!(verified.is_err(), "a forged event was taken (redacted)");
}
