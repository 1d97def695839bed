//! Key backup between two devices of one user, through the room_keys API: what the backup
//! holds, restoring it on another device (history decrypts, marked as forwarded), new keys
//! following, and the negative cases (a wrong recovery key, a corrupted entry).

use serde_json::{Value, json};

use super::{Dev, event, room, session_of};
use crate::app::crypto::{KeyBackupError, Rotation};
use crate::client_api::test_support::Api;

/// The server's count of keys in the current backup version.
async fn server_count(dev: &Dev) -> u64 {
    let info: Value = dev.cs.get("/v3/room_keys/version").await.unwrap();
    info["count"].as_u64().unwrap()
}

#[tokio::test]
async fn another_device_restores_the_backup_and_reads_the_history() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let bob = Dev::register(&api, "bob").await;
    let room = room(&api, "backup");
    // Two messages per session: three messages make two of Alice's sessions.
    let rotation = Rotation {
        period_ms: 3_600_000,
        period_msgs: 2,
    };
    let mut events = Vec::new();
    for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
        let content = alice.encrypt(&room, &[&bob], rotation, body).await;
        events.push(event(&format!("$a{i}"), &alice, i as i64, &content));
    }
    // Bob's session reaches Alice over Olm.
    let content = bob.encrypt(&room, &[&alice], rotation, "bob's").await;
    alice.receive_key(&session_of(&content)).await;
    events.push(event("$b", &bob, 10, &content));

    let recovery_key = alice.crypto.enable_key_backup(&alice.cs).await.unwrap();
    let status = alice.crypto.key_backup_status().await.unwrap();
    assert_eq!((status.backed_up, status.pending), (3, 0), "{status:?}");
    assert_eq!(server_count(&alice).await, 3);
    // The device keeps the private key only encrypted.
    let secret = crate::app::crypto::RecoveryKey::decode(recovery_key.as_str()).unwrap();
    let stored: Vec<String> = api
        .node
        .store()
        .read(|c| {
            Ok(c.prepare("SELECT private_key FROM app_key_backup")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(&vodozemac::base64_encode(secret.as_slice())));
    assert!(!stored[0].contains(&hex::encode(secret.as_slice())));
    let info: Value = alice.cs.get("/v3/room_keys/version").await.unwrap();
    assert_eq!(info["algorithm"], "m.megolm_backup.v1.curve25519-aes-sha2");
    // The auth_data is signed by the device that made the backup.
    let signature = &info["auth_data"]["signatures"][alice.user_id.as_str()]
        [format!("ed25519:{}", alice.device_id)];
    assert!(signature.is_string(), "{info}");
    // What the server keeps is encrypted: no session key in the clear.
    let keys: Value = alice
        .cs
        .get(&format!(
            "/v3/room_keys/keys?version={}",
            info["version"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let entry = keys["rooms"][room.as_str()]["sessions"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    for field in ["ephemeral", "ciphertext", "mac"] {
        assert!(entry["session_data"][field].is_string(), "{entry}");
    }
    assert!(!entry.to_string().contains("session_key"));

    // Alice's new device has none of the keys.
    let phone = Dev::login(&api, "alice").await;
    for event in &events {
        assert!(phone.decrypt(&room, event).await.is_err());
    }
    // A valid key of another backup: refused, nothing imported, backup stays off there.
    let other = crate::app::RecoveryKey::for_tests(&[5; 32]);
    let wrong = phone
        .crypto
        .restore_key_backup(&phone.cs, other.as_str())
        .await;
    assert!(
        matches!(wrong, Err(KeyBackupError::WrongKey { .. })),
        "{:?}",
        wrong.err()
    );
    assert_eq!(
        phone.crypto.key_backup_status().await.unwrap().version,
        None
    );
    assert!(phone.decrypt(&room, &events[0]).await.is_err());

    let restored = phone
        .crypto
        .restore_key_backup(&phone.cs, recovery_key.as_str())
        .await
        .unwrap();
    assert_eq!(
        (restored.found, restored.imported.len(), restored.skipped),
        (3, 3, 0)
    );
    let mut bodies = Vec::new();
    for event in &events {
        let decrypted = phone.decrypt(&room, event).await.unwrap();
        // A key from a backup is someone's word, not its creator's.
        assert!(decrypted.forwarded && !decrypted.authenticated);
        bodies.push(decrypted.content["body"].as_str().unwrap().to_owned());
    }
    assert_eq!(bodies, ["one", "two", "three", "bob's"]);
    let status = phone.crypto.key_backup_status().await.unwrap();
    assert_eq!(status.version, info["version"].as_str().map(str::to_owned));
    assert_eq!((status.backed_up, status.pending), (3, 0));

    // New keys follow: a new session of Alice's is uploaded on the next round.
    alice.encrypt(&room, &[&bob], rotation, "four").await;
    assert_eq!(
        alice.crypto.key_backup_status().await.unwrap().pending,
        0,
        "Alice's own session for message three is still current"
    );
    alice.encrypt(&room, &[&bob], rotation, "five").await;
    assert_eq!(alice.crypto.key_backup_status().await.unwrap().pending, 1);
    assert_eq!(
        alice.crypto.upload_pending_keys(&alice.cs).await.unwrap(),
        1
    );
    assert_eq!(server_count(&alice).await, 4);
}

#[tokio::test]
async fn a_corrupted_backup_entry_is_skipped_and_the_rest_imported() {
    let api = Api::start().await;
    let alice = Dev::register(&api, "alice").await;
    let room = room(&api, "corrupt");
    let rotation = Rotation {
        period_ms: 3_600_000,
        period_msgs: 1,
    };
    let mut events = Vec::new();
    for (i, body) in ["kept", "lost"].into_iter().enumerate() {
        let content = alice.encrypt(&room, &[], rotation, body).await;
        events.push(event(&format!("$c{i}"), &alice, i as i64, &content));
    }
    let recovery_key = alice.crypto.enable_key_backup(&alice.cs).await.unwrap();
    let version = alice
        .crypto
        .key_backup_status()
        .await
        .unwrap()
        .version
        .unwrap();
    // The second session's entry damaged on the server (a corrupted upload), and a garbage
    // entry besides.
    let lost = session_of(&events[1]["content"]);
    api.node
        .store()
        .write(move |c| {
            Ok(c.execute(
                "UPDATE backup_keys SET data = json_set(data,
                     '$.session_data.ciphertext', 'AAAAAAAAAAAAAAAAAAAAAA')
                 WHERE session_id = ?1",
                [lost],
            )?)
        })
        .await
        .unwrap();
    let garbage = json!({
        "first_message_index": 0,
        "forwarded_count": 0,
        "is_verified": false,
        // Well-formed base64 (the server checks that much), nothing that decrypts.
        "session_data": {
            "ephemeral": "A".repeat(43),
            "ciphertext": "A".repeat(22),
            "mac": "A".repeat(11),
        },
    });
    let _: Value = alice
        .cs
        .put(
            &format!(
                "/v3/room_keys/keys/{}/bogus?version={version}",
                crate::rooms::urlencode(room.as_str())
            ),
            &garbage,
        )
        .await
        .unwrap();

    let phone = Dev::login(&api, "alice").await;
    let restored = phone
        .crypto
        .restore_key_backup(&phone.cs, recovery_key.as_str())
        .await
        .unwrap();
    assert_eq!(
        (restored.found, restored.imported.len(), restored.skipped),
        (1, 1, 2)
    );
    let kept = phone.decrypt(&room, &events[0]).await.unwrap();
    assert_eq!(kept.content["body"], "kept");
    assert!(phone.decrypt(&room, &events[1]).await.is_err());
}
