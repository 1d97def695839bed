//! Restores that must not let anyone in, over real loopback libp2p: a hostile server's join and
//! power levels, which the device rejected, and events its backup server forged into the
//! replica never come back as room state, and the restored app shares no room key with them.
//! The figure: `a_hundred_events_planted_in_the_replica_are_all_refused` prints what a
//! restore with 100 planted events took back (none).

use std::time::Duration;

use hyphae_store::ReplicaPdu;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, RoomVersionId};
use serde_json::{Value, json};

use super::create_invite;
use super::restore_tests::config;
use super::tag::Status;
use super::tests::{backup_server, texts};
use crate::client_api::test_support::{Api, app, owned};
use crate::federation::hostile_tests::{draft, event_id, key_of, room_version, send_pdus, sign};
use crate::federation::room_tests::eventually;
use crate::restore_from_backup;
use crate::signing::SigningKey;

const WAIT: Duration = Duration::from_secs(30);

/// Alice's device, subscribed to a backup server with key backup on, in an encrypted DM with
/// Bob (a message each way); Mallory's server, connected to Alice's, not in the room.
struct BackedUp {
    server: Api,
    a: Api,
    b: Api,
    m: Api,
    room: OwnedRoomId,
    version: RoomVersionId,
    recovery_key: String,
}

async fn backed_up_dm() -> BackedUp {
    let server = backup_server().await;
    let server_addrs = server.p2p_addrs().await;
    let (a, b, m) = (
        owned("alice").await,
        owned("bob").await,
        owned("mallory").await,
    );
    a.connect(&b).await;
    m.connect(&a).await;
    let token = create_invite(server.data_dir(), super::DEFAULT_QUOTA).unwrap();
    a.node
        .subscribe_backup(server.node.server_name(), server_addrs, &token)
        .await
        .unwrap();
    let (alice, bob) = (app(&a), app(&b));
    let recovery_key = alice.enable_key_backup().await.unwrap().to_string();
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
    let version = room_version(&a, room.as_str()).await;
    BackedUp {
        server,
        a,
        b,
        m,
        room,
        version,
        recovery_key,
    }
}

/// A join of `user` (whose server `key` signs) and power levels giving them 100, built on the
/// room as `on` sees it, with a depth that would sort them after everything else.
async fn join_and_power(
    on: &Api,
    room: &str,
    version: &RoomVersionId,
    key: &SigningKey,
    user: &str,
) -> Vec<CanonicalJsonObject> {
    let depth = CanonicalJsonValue::Integer((1u64 << 40).try_into().unwrap());
    let join_content = json!({"membership": "join"});
    let mut join = draft(on, room, user, "m.room.member", Some(user), join_content).await;
    join.insert("depth".into(), depth.clone());
    sign(key, version, &mut join);
    let join_id = event_id(version, &join);
    let power = json!({"users": {user: 100}, "users_default": 0, "events_default": 0,
                       "state_default": 0, "ban": 0, "kick": 0, "redact": 0, "invite": 0});
    let mut levels = draft(on, room, user, "m.room.power_levels", Some(""), power).await;
    let Some(CanonicalJsonValue::Array(auth)) = levels.get_mut("auth_events") else {
        panic!("auth events");
    };
    auth.push(CanonicalJsonValue::String(join_id));
    levels.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(((1u64 << 40) + 1).try_into().unwrap()),
    );
    sign(key, version, &mut levels);
    vec![join, levels]
}

fn to_value(pdu: &CanonicalJsonObject) -> Value {
    serde_json::to_value(pdu).unwrap()
}

/// Puts PDUs straight into Alice's replica on the backup server, as its operator could, each
/// with the tag `tag_of` gives it (JSON), or none.
async fn plant(
    server: &Api,
    alice: &str,
    room: &str,
    version: &RoomVersionId,
    pdus: &[CanonicalJsonObject],
    tag_of: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let ids: Vec<String> = pdus.iter().map(|p| event_id(version, p)).collect();
    let planted: Vec<ReplicaPdu> = pdus
        .iter()
        .zip(&ids)
        .map(|(pdu, id)| ReplicaPdu {
            event_id: id.clone(),
            room_id: room.to_owned(),
            json: serde_json::to_string(pdu).unwrap(),
            tag: tag_of(id),
        })
        .collect();
    server
        .node
        .store()
        .backup_store_replica(alice.to_owned(), planted)
        .await
        .unwrap()
        .unwrap();
    ids
}

/// Waits for the replica and the key backup to be complete, seals the identity, and stops
/// Alice's device (it is lost).
async fn lose_the_device(setup: BackedUp) -> (Api, Api, Api, OwnedRoomId, String) {
    let BackedUp {
        server,
        a,
        b,
        m,
        room,
        recovery_key,
        ..
    } = setup;
    eventually(WAIT, "the replica and the key backup complete", || async {
        let replica = a.node.backup_status().await.unwrap().unwrap();
        let keys = app(&a).key_backup_status().await.unwrap();
        replica.pending == 0 && keys.pending == 0
    })
    .await;
    assert!(app(&a).back_up_identity().await.unwrap());
    drop(a.stop().await);
    (server, b, m, room, recovery_key)
}

/// The users the restored device shared its room key for `room` with.
async fn shared_with(node: &crate::Node, room: &OwnedRoomId) -> Vec<String> {
    let room = room.to_string();
    node.store()
        .read(move |conn| {
            let mut statement = conn.prepare(
                "SELECT DISTINCT user_id FROM app_outbound_shares WHERE room_id = ?1
                 ORDER BY user_id",
            )?;
            let users = statement
                .query_map([room], |row| row.get(0))?
                .collect::<hyphae_store::rusqlite::Result<Vec<String>>>()?;
            Ok(users)
        })
        .await
        .unwrap()
}

/// Restores Alice's device into a new folder.
async fn restore(server: &Api, recovery_key: &str) -> (tempfile::TempDir, crate::Restored) {
    let fresh = tempfile::tempdir().unwrap();
    let restored = restore_from_backup(
        config(fresh.path()),
        server.node.server_name(),
        server.p2p_addrs().await,
        recovery_key,
    )
    .await
    .unwrap();
    (fresh, restored)
}

/// The restored device's joined members of `room`.
async fn joined(node: &crate::Node, room: &OwnedRoomId) -> Vec<String> {
    let members = node.store().room_members(room.to_string(), "join".into());
    members.await.unwrap()
}

/// Connects the restored device to Bob and Mallory, and has Alice send a message Bob reads: by
/// then the room key went to whoever the restored device counts as a member.
async fn send_after_restore(node: &crate::Node, b: &Api, m: &Api, room: &OwnedRoomId) {
    for peer in [b, m] {
        let theirs = peer.node.transport().unwrap();
        node.transport()
            .unwrap()
            .dial(theirs.local_peer_id(), theirs.listen_addrs().await.unwrap())
            .await
            .unwrap();
    }
    let alice = node.app().unwrap();
    alice.send_text(room, "after the restore").await.unwrap();
    eventually(
        WAIT,
        "Bob reads the message sent after the restore",
        || async {
            texts(&app(b).timeline(room, 50).await.unwrap()).contains(&"after the restore".into())
        },
    )
    .await;
}

#[tokio::test]
async fn a_join_the_device_rejected_stays_out_after_a_restore() {
    let setup = backed_up_dm().await;
    let (a, m, room, version) = (&setup.a, &setup.m, setup.room.as_str(), &setup.version);
    let mallory = app(m).user_id().to_string();
    let planted = join_and_power(a, room, version, &key_of(m), &mallory).await;
    let ids: Vec<String> = planted.iter().map(|p| event_id(version, p)).collect();
    let (status, answer) = send_pdus(m, a, planted.iter().map(to_value).collect()).await;
    assert_eq!(status, 200, "{answer}");
    for id in &ids {
        assert!(answer["pdus"][id]["error"].is_string(), "{id}: {answer}");
    }
    let members = a.node.store().room_members(room.into(), "join".into());
    assert!(!members.await.unwrap().contains(&mallory));
    // The device keeps them as rejected, and they do not go to its replica.
    eventually(WAIT, "the replica complete", || async {
        a.node.backup_status().await.unwrap().unwrap().pending == 0
    })
    .await;
    let (replica, _) = a.node.backup_replica(None, 0, 500).await.unwrap();
    assert!(
        !replica.iter().any(|p| p["sender"] == mallory.as_str()),
        "a rejected event is in the replica"
    );
    // Worse: the same events in the replica with this device's own valid tags (as a replica
    // made before rejected events were kept out of it could hold). The restore judges every
    // event again.
    let key = key_of(a).replica_key().clone();
    let tagged = plant(
        &setup.server,
        a.node.server_name(),
        room,
        version,
        &planted,
        |id| Some(serde_json::to_string(&key.tag(id, Status::Timeline, None)).unwrap()),
    )
    .await;
    assert_eq!(tagged, ids);

    let (server, b, m, room, recovery_key) = lose_the_device(setup).await;
    let (_dir, restored) = restore(&server, &recovery_key).await;
    assert_eq!(restored.refused, 0);
    assert_eq!(
        restored.rejected, 2,
        "the join and the power levels, judged again"
    );
    let node = &restored.node;
    let members = joined(node, &room).await;
    assert!(
        !members.contains(&mallory),
        "Mallory is a member: {members:?}"
    );
    assert!(
        members.contains(&app(&b).user_id().to_string()),
        "{members:?}"
    );
    let state = node.store().current_state(room.to_string()).await.unwrap();
    assert!(
        !state.iter().any(|(_, _, id)| ids.contains(id)),
        "a planted event is in the room's state: {state:?}"
    );
    send_after_restore(node, &b, &m, &room).await;
    let shared = shared_with(node, &room).await;
    assert!(
        !shared.contains(&mallory),
        "the room key went to Mallory: {shared:?}"
    );
    assert!(
        shared.contains(&app(&b).user_id().to_string()),
        "{shared:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn events_the_backup_server_adds_to_the_replica_are_refused_at_restore() {
    let setup = backed_up_dm().await;
    let (a, server, room, version) = (&setup.a, &setup.server, setup.room.as_str(), &setup.version);
    let alice_name = a.node.server_name().to_owned();
    // The backup server makes its own user a joined admin of Alice's room, signed with its own
    // key (so the signatures check), straight into her replica.
    let evil = format!("@evil:{}", server.node.server_name());
    let planted = join_and_power(a, room, version, &key_of(server), &evil).await;
    // The join untagged; the power levels with a tag the device made for another entry (the
    // server holds many).
    eventually(WAIT, "the replica complete", || async {
        a.node.backup_status().await.unwrap().unwrap().pending == 0
    })
    .await;
    let store = server.node.store();
    let first = store.backup_replica_page(alice_name.clone(), None, 0, 1);
    let stolen = first.await.unwrap()[0].tag.clone().expect("a tagged entry");
    let join = plant(server, &alice_name, room, version, &planted[..1], |_| None).await;
    let levels = plant(server, &alice_name, room, version, &planted[1..], |_| {
        Some(stolen.clone())
    })
    .await;
    let ids = [join, levels].concat();

    let (server, b, m, room, recovery_key) = lose_the_device(setup).await;
    // Bob's device is off too while Alice restores hers.
    let b = b.stop().await;
    let (_dir, restored) = restore(&server, &recovery_key).await;
    assert_eq!((restored.refused, restored.rejected), (2, 0));
    let node = &restored.node;
    let members = joined(node, &room).await;
    assert!(
        !members.contains(&evil),
        "the server's user is a member: {members:?}"
    );
    for id in &ids {
        assert!(
            node.store().pdu(id.clone()).await.unwrap().is_none(),
            "the forged {id} was restored"
        );
    }
    // No member's server can be reached to bring the room up to date: the app sends nothing
    // encrypted there (it would share the room key with the members the backup last saw).
    let refused = node.app().unwrap().send_text(&room, "too early").await;
    assert!(
        matches!(refused, Err(crate::app::AppError::Unconfirmed(_))),
        "{refused:?}"
    );
    assert_eq!(
        node.store().rooms_to_confirm().await.unwrap(),
        [room.to_string()]
    );
    let timeline = texts(&node.app().unwrap().timeline(&room, 50).await.unwrap());
    assert!(!timeline.contains(&"too early".to_owned()), "{timeline:?}");
    // Bob is back: the room is brought up to date from his server, then the message goes.
    let b = b
        .start_with(crate::client_api::test_support::owned_by("bob"))
        .await;
    send_after_restore(node, &b, &m, &room).await;
    assert!(node.store().rooms_to_confirm().await.unwrap().is_empty());
    let shared = shared_with(node, &room).await;
    assert!(!shared.contains(&evil), "{shared:?}");
    node.shutdown().await;
}

/// The figure the issue asks for: a restore with 100 events planted in the replica by the
/// backup server (a join of its own user, power levels for them, 98 messages; untagged or
/// with tags stolen from the device's other entries) takes none of them back.
#[tokio::test]
async fn a_hundred_events_planted_in_the_replica_are_all_refused() {
    let setup = backed_up_dm().await;
    let (a, server, room, version) = (&setup.a, &setup.server, setup.room.as_str(), &setup.version);
    let alice_name = a.node.server_name().to_owned();
    let evil = format!("@evil:{}", server.node.server_name());
    let mut planted = join_and_power(a, room, version, &key_of(server), &evil).await;
    for n in 0..98 {
        let content = json!({"msgtype": "m.text", "body": format!("planted {n}")});
        let mut message = draft(a, room, &evil, "m.room.message", None, content).await;
        sign(&key_of(server), version, &mut message);
        planted.push(message);
    }
    eventually(WAIT, "the replica complete", || async {
        a.node.backup_status().await.unwrap().unwrap().pending == 0
    })
    .await;
    let store = server.node.store();
    let tags: Vec<String> = store
        .backup_replica_page(alice_name.clone(), None, 0, 50)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|entry| entry.tag)
        .collect();
    assert!(!tags.is_empty(), "the device tags its entries");
    // Every other one with a tag of the device's, stolen from another entry.
    let n = std::cell::Cell::new(0usize);
    let ids = plant(server, &alice_name, room, version, &planted, |_| {
        n.set(n.get() + 1);
        n.get()
            .is_multiple_of(2)
            .then(|| tags[n.get() % tags.len()].clone())
    })
    .await;
    assert_eq!(ids.len(), 100);

    let (server, _b, _m, room, recovery_key) = lose_the_device(setup).await;
    let (_dir, restored) = restore(&server, &recovery_key).await;
    let node = &restored.node;
    let mut taken = 0;
    for id in &ids {
        if node.store().pdu(id.clone()).await.unwrap().is_some() {
            taken += 1;
        }
    }
    eprintln!(
        "restore with 100 planted events: {taken} taken back; {} refused, {} rejected, {} PDUs restored",
        restored.refused, restored.rejected, restored.pdus
    );
    assert_eq!(taken, 0, "planted events restored");
    assert!(restored.refused >= 100, "{}", restored.refused);
    let members = joined(node, &room).await;
    assert!(!members.contains(&evil), "{members:?}");
    node.shutdown().await;
}
