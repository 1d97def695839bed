//! The crypto module on real nodes, through the Client-Server API in memory: Olm between two
//! devices on one node and across two federated nodes, Megolm rotation, replay protection, late
//! keys, key requests between a user's own devices, and what is kept at rest.

use std::sync::Mutex;
use std::time::Duration;

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value, json};

use super::{Crypto, CryptoError, DecryptError, Decrypted, Rotation};
use crate::app::cs::CsApi;
use crate::client_api::test_support::Api;
use crate::federation::room_tests::eventually;

mod key_backup;

const KEY: [u8; 32] = [42; 32];

/// A device with its crypto, as the app's client would have it.
struct Dev {
    crypto: Crypto,
    cs: CsApi,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    since: Mutex<Option<String>>,
}

impl Dev {
    /// A new account `name` on `api` and its first device.
    async fn register(api: &Api, name: &str) -> Dev {
        let (user_id, token, device_id) = api.register(name, "password").await;
        Dev::open(api, &user_id, token, &device_id, KEY).await
    }

    /// Another device of the account `name`.
    async fn login(api: &Api, name: &str) -> Dev {
        let (status, body) = api.login(name, "password").await;
        assert_eq!(status, 200, "{body}");
        let user_id = body["user_id"].as_str().unwrap();
        let token = body["access_token"].as_str().unwrap().to_owned();
        let device_id = body["device_id"].as_str().unwrap();
        Dev::open(api, user_id, token, device_id, KEY).await
    }

    async fn open(api: &Api, user_id: &str, token: String, device_id: &str, key: [u8; 32]) -> Dev {
        let cs = CsApi::new(api.node.client_router()).with_token(token);
        let user_id = UserId::parse(user_id).unwrap();
        let device_id = OwnedDeviceId::from(device_id);
        let crypto = Crypto::load_or_create(
            api.node.store().clone(),
            user_id.clone(),
            device_id.clone(),
            key,
        )
        .await
        .unwrap();
        let dev = Dev {
            crypto,
            cs,
            user_id,
            device_id,
            since: Mutex::new(None),
        };
        dev.sync_keys().await;
        dev
    }

    /// A reload of this device's crypto from the store, with `key`.
    async fn reload(&self, api: &Api, key: [u8; 32]) -> Result<Crypto, CryptoError> {
        Crypto::load_or_create(
            api.node.store().clone(),
            self.user_id.clone(),
            self.device_id.clone(),
            key,
        )
        .await
    }

    /// One /sync (no waiting): uploads keys as the counts ask, hands over device-list changes
    /// and to-device messages; the room keys that arrived.
    async fn sync(&self) -> Vec<(OwnedRoomId, String)> {
        let since = self.since.lock().unwrap().clone();
        let path = match &since {
            Some(since) => format!("/v3/sync?timeout=0&since={since}"),
            None => "/v3/sync?timeout=0".to_owned(),
        };
        let response: Value = self.cs.get(&path).await.unwrap();
        let changed: Vec<OwnedUserId> = response["device_lists"]["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().and_then(|u| UserId::parse(u).ok()))
            .collect();
        self.crypto.device_lists_changed(&changed).await;
        let counts = serde_json::from_value(response["device_one_time_keys_count"].clone())
            .unwrap_or_default();
        let fallback: Option<Vec<String>> =
            serde_json::from_value(response["device_unused_fallback_key_types"].clone()).ok();
        self.crypto
            .upload_keys(&self.cs, &counts, fallback.as_deref())
            .await
            .unwrap();
        let events = response["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let keys = self.crypto.receive_to_device(&self.cs, &events).await;
        *self.since.lock().unwrap() = response["next_batch"].as_str().map(str::to_owned);
        keys
    }

    async fn sync_keys(&self) {
        self.sync().await;
    }

    /// Syncs until the room key of `session_id` arrives.
    async fn receive_key(&self, session_id: &str) {
        let started = std::time::Instant::now();
        while !self.sync().await.iter().any(|(_, s)| s == session_id) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "timed out waiting for room key {session_id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn encrypt(
        &self,
        room: &OwnedRoomId,
        members: &[&Dev],
        rotation: Rotation,
        body: &str,
    ) -> Value {
        let members: Vec<OwnedUserId> = members.iter().map(|d| d.user_id.clone()).collect();
        self.crypto
            .encrypt_room_event(
                &self.cs,
                room,
                &members,
                rotation,
                "m.room.message",
                json!({"msgtype": "m.text", "body": body}),
            )
            .await
            .unwrap()
    }

    async fn decrypt(&self, room: &OwnedRoomId, event: &Value) -> Result<Decrypted, DecryptError> {
        self.crypto.decrypt_room_event(room, event).await
    }
}

/// `content` as the event /sync would show, from `sender`.
fn event(id: &str, sender: &Dev, ts: i64, content: &Value) -> Value {
    json!({
        "type": "m.room.encrypted",
        "event_id": id,
        "sender": sender.user_id,
        "origin_server_ts": ts,
        "content": content,
    })
}

fn room(api: &Api, name: &str) -> OwnedRoomId {
    format!("!{name}:{}", api.node.server_name())
        .try_into()
        .unwrap()
}

fn session_of(content: &Value) -> String {
    content["session_id"].as_str().unwrap().to_owned()
}

fn body_of(decrypted: &Decrypted) -> &str {
    decrypted.content["body"].as_str().unwrap()
}

#[tokio::test]
async fn uploads_signed_keys_and_tops_up_one_time_keys() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let store = api.node.store();
    let counts = store
        .one_time_key_counts(alice.user_id.to_string(), alice.device_id.to_string())
        .await
        .unwrap();
    assert_eq!(counts.get("signed_curve25519"), Some(&50), "{counts:?}");
    let fallback = store
        .unused_fallback_key_types(alice.user_id.to_string(), alice.device_id.to_string())
        .await
        .unwrap();
    assert_eq!(fallback, vec!["signed_curve25519".to_owned()]);
    let keys: Value = alice
        .cs
        .post(
            "/v3/keys/query",
            &json!({"device_keys": {alice.user_id.as_str(): []}}),
        )
        .await
        .unwrap();
    let device = &keys["device_keys"][alice.user_id.as_str()][alice.device_id.as_str()];
    assert_eq!(
        device["keys"][format!("curve25519:{}", alice.device_id)],
        alice.crypto.curve25519_key()
    );
    // The next sync reports 50: nothing to do. After a claim, one new key tops it up.
    alice.sync().await;
    store
        .claim_keys(vec![(
            alice.user_id.to_string(),
            alice.device_id.to_string(),
            "signed_curve25519".into(),
        )])
        .await
        .unwrap();
    alice.sync().await;
    let counts = store
        .one_time_key_counts(alice.user_id.to_string(), alice.device_id.to_string())
        .await
        .unwrap();
    assert_eq!(counts.get("signed_curve25519"), Some(&50), "{counts:?}");
}

#[tokio::test]
async fn two_users_on_one_node_exchange_encrypted_messages_both_ways() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "chat");

    let content = alice
        .encrypt(&room, &[&bob], Rotation::default(), "hello bob")
        .await;
    assert_eq!(content["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(content["sender_key"], alice.crypto.curve25519_key());
    assert_eq!(content["device_id"], alice.device_id.as_str());
    bob.receive_key(&session_of(&content)).await;
    let decrypted = bob
        .decrypt(&room, &event("$1", &alice, 1, &content))
        .await
        .unwrap();
    assert_eq!(decrypted.event_type, "m.room.message");
    assert_eq!(body_of(&decrypted), "hello bob");
    assert_eq!(decrypted.sender_device.as_ref(), Some(&alice.device_id));
    assert!(decrypted.authenticated && !decrypted.forwarded);
    assert_eq!(decrypted.sender_key, alice.crypto.curve25519_key());
    // Alice reads her own message.
    let own = alice
        .decrypt(&room, &event("$1", &alice, 1, &content))
        .await
        .unwrap();
    assert_eq!(body_of(&own), "hello bob");

    let reply = bob
        .encrypt(&room, &[&alice], Rotation::default(), "hi alice")
        .await;
    alice.receive_key(&session_of(&reply)).await;
    let decrypted = alice
        .decrypt(&room, &event("$2", &bob, 2, &reply))
        .await
        .unwrap();
    assert_eq!(body_of(&decrypted), "hi alice");
    assert!(decrypted.authenticated);

    // A second message reuses the shared session: no new key is sent.
    let again = alice
        .encrypt(&room, &[&bob], Rotation::default(), "again")
        .await;
    assert_eq!(session_of(&again), session_of(&content));
    assert!(bob.sync().await.is_empty());
    let decrypted = bob
        .decrypt(&room, &event("$3", &alice, 3, &again))
        .await
        .unwrap();
    assert_eq!(body_of(&decrypted), "again");
    assert_eq!(decrypted.message_index, 1);
    assert_eq!(decrypted.session_id, session_of(&content));

    // An event claimed by someone else than the key's owner is refused.
    let forged = bob.decrypt(&room, &event("$4", &bob, 4, &again)).await;
    assert!(
        matches!(forged, Err(DecryptError::WrongSender)),
        "{forged:?}"
    );
    // And one moved to another room.
    let other = self::room(&api, "other");
    let moved = bob.decrypt(&other, &event("$3", &alice, 3, &again)).await;
    assert!(
        matches!(moved, Err(DecryptError::UnknownSession { .. })),
        "{moved:?}"
    );
}

#[tokio::test]
async fn users_on_two_federated_nodes_exchange_encrypted_messages_both_ways() {
    // In a room together: a server hands its users' one-time keys only to servers sharing one.
    let (a, b, _, _, room) = crate::federation::room_tests::two_nodes_in_a_room().await;
    let room = OwnedRoomId::try_from(room).unwrap();
    let alice = Dev::login(&a, "alice").await;
    let bob = Dev::login(&b, "bob").await;

    let content = alice
        .encrypt(&room, &[&bob], Rotation::default(), "over libp2p")
        .await;
    bob.receive_key(&session_of(&content)).await;
    let decrypted = bob
        .decrypt(&room, &event("$1", &alice, 1, &content))
        .await
        .unwrap();
    assert_eq!(body_of(&decrypted), "over libp2p");
    assert!(decrypted.authenticated);

    let reply = bob
        .encrypt(&room, &[&alice], Rotation::default(), "and back")
        .await;
    alice.receive_key(&session_of(&reply)).await;
    let decrypted = alice
        .decrypt(&room, &event("$2", &bob, 2, &reply))
        .await
        .unwrap();
    assert_eq!(body_of(&decrypted), "and back");
    assert_eq!(decrypted.sender_device.as_ref(), Some(&bob.device_id));
}

#[tokio::test]
async fn the_room_key_rotates_by_message_count() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "count");
    let rotation = Rotation {
        period_ms: 3_600_000,
        period_msgs: 3,
    };
    let mut sessions = Vec::new();
    for n in 0..4 {
        let content = alice
            .encrypt(&room, &[&bob], rotation, &format!("m{n}"))
            .await;
        sessions.push(session_of(&content));
    }
    assert_eq!(sessions[0], sessions[1]);
    assert_eq!(sessions[1], sessions[2]);
    assert_ne!(
        sessions[2], sessions[3],
        "the fourth message starts a new session"
    );
    // Bob got both keys.
    let keys = bob.sync().await;
    for session in [&sessions[0], &sessions[3]] {
        assert!(keys.iter().any(|(_, s)| s == session), "{keys:?}");
    }
}

#[tokio::test]
async fn the_room_key_rotates_by_age() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "age");
    let rotation = Rotation {
        period_ms: 300,
        period_msgs: 100,
    };
    let first = alice.encrypt(&room, &[&bob], rotation, "early").await;
    let second = alice.encrypt(&room, &[&bob], rotation, "soon after").await;
    assert_eq!(session_of(&first), session_of(&second));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let late = alice.encrypt(&room, &[&bob], rotation, "late").await;
    assert_ne!(session_of(&first), session_of(&late));
}

#[tokio::test]
async fn the_room_key_rotates_when_a_member_leaves_and_they_do_not_get_the_new_one() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let carol = Dev::register(&api, "carol").await;
    let room = room(&api, "members");
    let before = alice
        .encrypt(&room, &[&bob, &carol], Rotation::default(), "all")
        .await;
    carol.receive_key(&session_of(&before)).await;
    // Carol left: the next message uses a new session, shared with Bob only.
    let after = alice
        .encrypt(&room, &[&bob], Rotation::default(), "without carol")
        .await;
    assert_ne!(session_of(&before), session_of(&after));
    bob.receive_key(&session_of(&after)).await;
    assert!(carol.sync().await.is_empty());
    let locked_out = carol.decrypt(&room, &event("$2", &alice, 2, &after)).await;
    assert!(
        matches!(locked_out, Err(DecryptError::UnknownSession { .. })),
        "{locked_out:?}"
    );
    // A new member joining does not rotate: they get the session from its current index.
    let dave = Dev::register(&api, "dave").await;
    let with_dave = alice
        .encrypt(&room, &[&bob, &dave], Rotation::default(), "hi dave")
        .await;
    assert_eq!(session_of(&after), session_of(&with_dave));
    dave.receive_key(&session_of(&with_dave)).await;
    let earlier = dave.decrypt(&room, &event("$2", &alice, 2, &after)).await;
    assert!(
        matches!(earlier, Err(DecryptError::UnknownIndex { .. })),
        "{earlier:?}"
    );
    let now = dave
        .decrypt(&room, &event("$3", &alice, 3, &with_dave))
        .await
        .unwrap();
    assert_eq!(body_of(&now), "hi dave");
}

#[tokio::test]
async fn a_removed_device_rotates_the_room_key() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let bob_laptop = Dev::login(&api, "bob").await;
    // A real room: the server tells about device-list changes of people one shares a room with.
    let created: Value = alice
        .cs
        .post("/v3/createRoom", &json!({"preset": "public_chat"}))
        .await
        .unwrap();
    let room = OwnedRoomId::try_from(created["room_id"].as_str().unwrap()).unwrap();
    let _: Value = bob
        .cs
        .post(&format!("/v3/join/{room}"), &json!({}))
        .await
        .unwrap();
    alice.sync().await;
    let first = alice
        .encrypt(&room, &[&bob], Rotation::default(), "two devices")
        .await;
    bob_laptop.receive_key(&session_of(&first)).await;
    // Bob logs the laptop out; Alice's sync says his device list changed.
    let _: Value = bob_laptop.cs.post("/v3/logout", &json!({})).await.unwrap();
    alice.sync().await;
    let second = alice
        .encrypt(&room, &[&bob], Rotation::default(), "one device")
        .await;
    assert_ne!(session_of(&first), session_of(&second));
}

#[tokio::test]
async fn a_replayed_message_index_is_refused() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "replay");
    let content = alice
        .encrypt(&room, &[&bob], Rotation::default(), "once")
        .await;
    bob.receive_key(&session_of(&content)).await;
    let original = event("$original", &alice, 1000, &content);
    assert_eq!(
        body_of(&bob.decrypt(&room, &original).await.unwrap()),
        "once"
    );
    // The same event again is fine (a timeline read twice).
    assert!(bob.decrypt(&room, &original).await.is_ok());
    for replay in [
        event("$replay", &alice, 1000, &content),
        event("$original", &alice, 2000, &content),
    ] {
        let refused = bob.decrypt(&room, &replay).await;
        assert!(
            matches!(
                refused,
                Err(DecryptError::Replay {
                    message_index: 0,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    // The record survives a reload.
    eventually(
        Duration::from_secs(5),
        "the replay record to be kept",
        || async {
            let reloaded = bob.reload(&api, KEY).await.unwrap();
            matches!(
                reloaded
                    .decrypt_room_event(&room, &event("$replay", &alice, 1000, &content))
                    .await,
                Err(DecryptError::Replay { .. })
            )
        },
    )
    .await;
}

#[tokio::test]
async fn an_event_decrypts_once_its_late_key_arrives() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "late");
    let content = alice
        .encrypt(&room, &[&bob], Rotation::default(), "early bird")
        .await;
    let early = event("$1", &alice, 1, &content);
    let session_id = session_of(&content);
    match bob.decrypt(&room, &early).await {
        Err(DecryptError::UnknownSession { session_id: s }) => assert_eq!(s, session_id),
        other => panic!("decrypted without the key: {other:?}"),
    }
    let keys = bob.sync().await;
    assert_eq!(keys, vec![(room.clone(), session_id)]);
    assert_eq!(
        body_of(&bob.decrypt(&room, &early).await.unwrap()),
        "early bird"
    );
}

#[tokio::test]
async fn a_key_request_is_answered_by_ones_own_device_and_not_for_a_stranger() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let carol = Dev::register(&api, "carol").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "request");
    // Carol writes before Alice's second device exists: only the first one has the key.
    let content = carol
        .encrypt(&room, &[&alice], Rotation::default(), "before")
        .await;
    let session_id = session_of(&content);
    alice.receive_key(&session_id).await;
    let alice_tablet = Dev::login(&api, "alice").await;
    let missed = event("$1", &carol, 1, &content);
    assert!(matches!(
        alice_tablet.decrypt(&room, &missed).await,
        Err(DecryptError::UnknownSession { .. })
    ));
    alice_tablet
        .crypto
        .request_room_key(
            &alice_tablet.cs,
            &room,
            &session_id,
            content["sender_key"].as_str().unwrap(),
        )
        .await
        .unwrap();
    // The first device reads the request and forwards the key.
    alice.sync().await;
    alice_tablet.receive_key(&session_id).await;
    let decrypted = alice_tablet.decrypt(&room, &missed).await.unwrap();
    assert_eq!(body_of(&decrypted), "before");
    assert!(decrypted.forwarded && !decrypted.authenticated);
    assert_eq!(decrypted.sender_key, carol.crypto.curve25519_key());
    assert!(
        alice_tablet.crypto.state().key_requests.is_empty(),
        "the request is closed"
    );

    // Bob (a stranger) asks Alice's device for the same key: no answer.
    let request = json!({
        "action": "request",
        "body": {
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": room,
            "sender_key": content["sender_key"],
            "session_id": session_id,
        },
        "request_id": "stranger1",
        "requesting_device_id": bob.device_id,
    });
    let _: Value = bob
        .cs
        .put(
            "/v3/sendToDevice/m.room_key_request/s1",
            &json!({"messages": {alice.user_id.as_str(): {alice.device_id.as_str(): request}}}),
        )
        .await
        .unwrap();
    alice.sync().await;
    assert!(bob.sync().await.is_empty());
    assert!(matches!(
        bob.decrypt(&room, &missed).await,
        Err(DecryptError::UnknownSession { .. })
    ));
}

#[tokio::test]
async fn a_forwarded_key_nobody_asked_for_is_ignored() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let carol = Dev::register(&api, "carol").await;
    let room = room(&api, "unasked");
    let content = carol
        .encrypt(&room, &[&alice], Rotation::default(), "secret")
        .await;
    let session_id = session_of(&content);
    alice.receive_key(&session_id).await;
    // The phone pushes the key to the new tablet, which did not ask for it: refused.
    let alice_tablet = Dev::login(&api, "alice").await;
    alice
        .crypto
        .refresh_devices(&alice.cs, &[], std::slice::from_ref(&alice.user_id))
        .await
        .unwrap();
    let tablet = alice
        .crypto
        .devices_of([&alice.user_id])
        .into_iter()
        .find(|d| d.device_id == alice_tablet.device_id)
        .unwrap();
    let forward = alice
        .crypto
        .forward_room_key(&room, &session_id, None)
        .await
        .unwrap()
        .unwrap();
    alice
        .crypto
        .send_forwarded_key(&alice.cs, tablet, forward)
        .await
        .unwrap();
    assert!(alice_tablet.sync().await.is_empty());
    assert!(matches!(
        alice_tablet
            .decrypt(&room, &event("$1", &carol, 1, &content))
            .await,
        Err(DecryptError::UnknownSession { .. })
    ));
}

#[tokio::test]
async fn pickles_are_unreadable_without_the_key_and_the_state_survives_a_reload() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "reload");
    let first = alice
        .encrypt(&room, &[&bob], Rotation::default(), "before the reload")
        .await;
    bob.receive_key(&session_of(&first)).await;

    // Another key, another crypto state: nothing is readable.
    match bob.reload(&api, [1; 32]).await {
        Err(CryptoError::Pickle(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a wrong pickle key opened the account"),
    }
    // Nothing in the tables is a plain vodozemac pickle (JSON).
    let pickles: Vec<String> = api
        .node
        .store()
        .read(|conn| {
            let mut all = Vec::new();
            for table in [
                "app_crypto_accounts",
                "app_olm_sessions",
                "app_inbound_group_sessions",
                "app_outbound_group_sessions",
            ] {
                let mut statement = conn.prepare(&format!("SELECT pickle FROM {table}"))?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                for row in rows {
                    all.push(row?);
                }
            }
            Ok(all)
        })
        .await
        .unwrap();
    assert!(pickles.len() >= 6, "{}", pickles.len());
    for pickle in &pickles {
        assert!(serde_json::from_str::<Value>(pickle).is_err());
        assert!(!pickle.contains("ratchet"));
    }

    // Both reloaded with the right key carry on: Bob reads the old message, Alice continues
    // her session (next index), and their Olm sessions still work.
    let alice2 = Dev {
        crypto: alice.reload(&api, KEY).await.unwrap(),
        cs: alice.cs.clone(),
        user_id: alice.user_id.clone(),
        device_id: alice.device_id.clone(),
        since: Mutex::new(alice.since.lock().unwrap().clone()),
    };
    let bob2 = Dev {
        crypto: bob.reload(&api, KEY).await.unwrap(),
        cs: bob.cs.clone(),
        user_id: bob.user_id.clone(),
        device_id: bob.device_id.clone(),
        since: Mutex::new(bob.since.lock().unwrap().clone()),
    };
    drop((alice, bob));
    assert_eq!(
        alice2.crypto.curve25519_key(),
        bob2.crypto.state().users[&alice2.user_id].devices[&alice2.device_id]
            .curve25519
            .to_base64()
    );
    let old = bob2
        .decrypt(&room, &event("$1", &alice2, 1, &first))
        .await
        .unwrap();
    assert_eq!(body_of(&old), "before the reload");
    let second = alice2
        .encrypt(&room, &[&bob2], Rotation::default(), "after")
        .await;
    assert_eq!(session_of(&second), session_of(&first));
    let next = bob2
        .decrypt(&room, &event("$2", &alice2, 2, &second))
        .await
        .unwrap();
    assert_eq!(next.message_index, 1);
    // A new room's key travels over the Olm session made before the reload (no new one).
    let sessions_before = olm_session_count(&api).await;
    let other = self::room(&api, "after-reload");
    let third = alice2
        .encrypt(&other, &[&bob2], Rotation::default(), "new room")
        .await;
    bob2.receive_key(&session_of(&third)).await;
    assert_eq!(olm_session_count(&api).await, sessions_before);
    let decrypted = bob2
        .decrypt(&other, &event("$3", &alice2, 3, &third))
        .await
        .unwrap();
    assert_eq!(body_of(&decrypted), "new room");
}

async fn olm_session_count(api: &Api) -> i64 {
    api.node
        .store()
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM app_olm_sessions", [], |r| r.get(0))?))
        .await
        .unwrap()
}
