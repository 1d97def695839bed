//! Benchmark entry points for `tests/src/bin/bench-megolm-share.rs` (the crypto module is
//! crate-private): sharing a new Megolm session with many devices, and Megolm encryption and
//! decryption per message, through the node's real Client-Server API in memory.

use std::time::{Duration, Instant};

use hyphae_store::{KeyUpload, NewDevice, OneTimeKey};
use ruma::{CanonicalJsonObject, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value, json};
use vodozemac::olm::Account;

use super::util::{blocking, parallel_map, random_id, signing_bytes};
use super::{Crypto, Rotation};
use crate::Node;
use crate::app::cs::CsApi;

/// Devices per user in the share benchmark.
const DEVICES_PER_USER: usize = 100;

/// Timings of [`share`].
#[derive(Debug, Clone)]
pub struct ShareReport {
    pub devices: usize,
    /// keys/query of every device (done before the share).
    pub query: Vec<Duration>,
    /// `encrypt_room_event` of the first message of a new room: claim one-time keys, set up
    /// and encrypt one Olm session per device, commit, send the to-device messages, and
    /// Megolm-encrypt the message.
    pub share: Vec<Duration>,
}

/// Timings of [`messages`], per message.
#[derive(Debug, Clone)]
pub struct MessageReport {
    /// `encrypt_room_event` with the session already shared (includes the commit).
    pub encrypt: Vec<Duration>,
    /// `decrypt_room_event` (includes the replay check).
    pub decrypt: Vec<Duration>,
    /// vodozemac alone, in memory, for comparison.
    pub raw_encrypt: Vec<Duration>,
    pub raw_decrypt: Vec<Duration>,
}

/// Shares a new Megolm session with `devices` devices (of users with 100 devices each, made
/// in `node`'s store with real keys), `runs` times, each time from a new sender device (so
/// every device needs a new Olm session). Checks every device got its message.
pub async fn share(node: &Node, devices: usize, runs: usize) -> Result<ShareReport, String> {
    let store = node.store().clone();
    let server = node.server_name().to_owned();
    let tag = &random_id().map_err(|e| e.to_string())?[..8];
    let users = devices.div_ceil(DEVICES_PER_USER);
    let mut members = Vec::new();
    for u in 0..users {
        let localpart = format!("b{tag}u{u}");
        store
            .create_account(localpart.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        members.push(UserId::parse(format!("@{localpart}:{server}")).map_err(|e| e.to_string())?);
    }
    // Every device's keys: signed device keys and a one-time key per run.
    let specs: Vec<(OwnedUserId, String)> = (0..devices)
        .map(|d| (members[d % users].clone(), format!("D{d}")))
        .collect();
    let uploads =
        blocking(move || parallel_map(specs, |(user, device)| device_upload(&user, &device, runs)))
            .await
            .map_err(|e| e.to_string())?;
    let logins = uploads.iter().map(|upload| {
        let user = UserId::parse(&upload.user_id).map(|u| u.localpart().to_owned());
        let device = upload.device_id.clone();
        let store = store.clone();
        async move {
            store
                .login_device(NewDevice {
                    localpart: user.map_err(|e| e.to_string())?,
                    device_id: device,
                    display_name: None,
                    token_hash: random_id().map_err(|e| e.to_string())?.into_bytes(),
                })
                .await
                .map_err(|e| e.to_string())
        }
    });
    for result in futures::future::join_all(logins).await {
        result?;
    }
    let keys = uploads.into_iter().map(|upload| store.upload_keys(upload));
    for result in futures::future::join_all(keys).await {
        result.map_err(|e| e.to_string())?;
    }

    let sender_localpart = format!("b{tag}s");
    store
        .create_account(sender_localpart.clone(), None)
        .await
        .map_err(|e| e.to_string())?;
    let sender =
        UserId::parse(format!("@{sender_localpart}:{server}")).map_err(|e| e.to_string())?;
    let mut report = ShareReport {
        devices,
        query: Vec::new(),
        share: Vec::new(),
    };
    for run in 0..runs {
        let (crypto, cs) = device(node, &sender, &format!("SENDER{run}")).await?;
        let mut wanted = members.clone();
        wanted.push(sender.clone());
        let started = Instant::now();
        crypto
            .refresh_devices(&cs, &wanted, &[])
            .await
            .map_err(|e| e.to_string())?;
        report.query.push(started.elapsed());
        let room: OwnedRoomId = format!("!bench{tag}{run}:{server}")
            .try_into()
            .map_err(|e: ruma::IdParseError| e.to_string())?;
        let started = Instant::now();
        crypto
            .encrypt_room_event(
                &cs,
                &room,
                &members,
                Rotation::default(),
                "m.room.message",
                json!({"msgtype": "m.text", "body": "hello"}),
            )
            .await
            .map_err(|e| e.to_string())?;
        report.share.push(started.elapsed());
        // The sender's own earlier devices get the key too; they are not counted.
        let (sender_id, own) = (sender.to_string(), sender_localpart.clone());
        let delivered: i64 = store
            .read(move |conn| {
                Ok(conn.query_row(
                    "SELECT count(*) FROM to_device_inbox WHERE sender = ?1 AND localpart != ?2",
                    [sender_id, own],
                    |row| row.get(0),
                )?)
            })
            .await
            .map_err(|e| e.to_string())?;
        if delivered != ((run + 1) * devices) as i64 {
            return Err(format!(
                "run {run}: {delivered} room keys delivered, {} expected",
                (run + 1) * devices
            ));
        }
    }
    Ok(report)
}

/// Encrypts `messages` events in a room shared with one other device and decrypts them there.
pub async fn messages(node: &Node, messages: usize) -> Result<MessageReport, String> {
    let store = node.store().clone();
    let server = node.server_name().to_owned();
    let tag = &random_id().map_err(|e| e.to_string())?[..8];
    let mut people = Vec::new();
    for name in ["a", "b"] {
        let localpart = format!("m{tag}{name}");
        store
            .create_account(localpart.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        let user = UserId::parse(format!("@{localpart}:{server}")).map_err(|e| e.to_string())?;
        people.push((device(node, &user, "PHONE").await?, user));
    }
    let ((alice, alice_cs), alice_id) = &people[0];
    let ((bob, bob_cs), bob_id) = &people[1];
    let room: OwnedRoomId = format!("!msgs{tag}:{server}")
        .try_into()
        .map_err(|e: ruma::IdParseError| e.to_string())?;
    let never = Rotation {
        period_ms: u64::MAX,
        period_msgs: u64::MAX,
    };
    let members = vec![bob_id.clone()];
    let mut report = MessageReport {
        encrypt: Vec::new(),
        decrypt: Vec::new(),
        raw_encrypt: Vec::new(),
        raw_decrypt: Vec::new(),
    };
    let mut events = Vec::new();
    for i in 0..=messages {
        let content =
            json!({"msgtype": "m.text", "body": format!("message {i} {}", "x".repeat(200))});
        let started = Instant::now();
        let encrypted = alice
            .encrypt_room_event(alice_cs, &room, &members, never, "m.room.message", content)
            .await
            .map_err(|e| e.to_string())?;
        // The first one shares the session.
        if i > 0 {
            report.encrypt.push(started.elapsed());
        }
        events.push(json!({
            "type": "m.room.encrypted",
            "event_id": format!("$e{i}"),
            "sender": alice_id,
            "origin_server_ts": 1_700_000_000_000i64 + i as i64,
            "room_id": room,
            "content": encrypted,
        }));
    }
    let sync: Value = bob_cs
        .get("/v3/sync?timeout=0")
        .await
        .map_err(|e| e.to_string())?;
    let to_device = sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let keys = bob.receive_to_device(bob_cs, &to_device).await;
    if keys.is_empty() {
        return Err("the room key did not arrive".into());
    }
    for event in &events[1..] {
        let started = Instant::now();
        let decrypted = bob
            .decrypt_room_event(&room, event)
            .await
            .map_err(|e| e.to_string())?;
        report.decrypt.push(started.elapsed());
        if !decrypted.authenticated {
            return Err("a message from a known device was not authenticated".into());
        }
    }
    // vodozemac alone, the same payload size.
    let mut outbound = vodozemac::megolm::GroupSession::new(Default::default());
    let mut inbound =
        vodozemac::megolm::InboundGroupSession::new(&outbound.session_key(), Default::default());
    let payload = json!({"type": "m.room.message", "room_id": room,
        "content": {"msgtype": "m.text", "body": "x".repeat(210)}})
    .to_string();
    for _ in 0..messages {
        let started = Instant::now();
        let message = outbound.encrypt(&payload);
        report.raw_encrypt.push(started.elapsed());
        let started = Instant::now();
        inbound.decrypt(&message).map_err(|e| e.to_string())?;
        report.raw_decrypt.push(started.elapsed());
    }
    Ok(report)
}

/// A logged-in device of `user` with its crypto, keys uploaded.
async fn device(node: &Node, user: &UserId, device_id: &str) -> Result<(Crypto, CsApi), String> {
    let token = random_id().map_err(|e| e.to_string())?;
    node.store()
        .login_device(NewDevice {
            localpart: user.localpart().to_owned(),
            device_id: device_id.to_owned(),
            display_name: None,
            token_hash: crate::credentials::token_hash(&token),
        })
        .await
        .map_err(|e| e.to_string())?;
    let cs = CsApi::new(node.client_router()).with_token(token);
    let crypto = Crypto::load_or_create(
        node.store().clone(),
        user.to_owned(),
        OwnedDeviceId::from(device_id),
        [7; 32],
    )
    .await
    .map_err(|e| e.to_string())?;
    crypto
        .upload_keys(&cs, &Default::default(), Some(&[]))
        .await
        .map_err(|e| e.to_string())?;
    Ok((crypto, cs))
}

/// What a device with a fresh Olm account uploads: signed device keys and `one_time_keys`
/// signed one-time keys.
fn device_upload(user_id: &UserId, device_id: &str, one_time_keys: usize) -> KeyUpload {
    let mut account = Account::new();
    account.generate_one_time_keys(one_time_keys);
    let sign = |value: &mut Value| {
        let signature = signing_bytes(value)
            .map(|bytes| account.sign(bytes.as_bytes()).to_base64())
            .unwrap_or_default();
        value["signatures"] =
            json!({ user_id.as_str(): { format!("ed25519:{device_id}"): signature } });
    };
    let mut device_keys = json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): account.curve25519_key().to_base64(),
            format!("ed25519:{device_id}"): account.ed25519_key().to_base64(),
        },
    });
    sign(&mut device_keys);
    let one_time_keys = account
        .one_time_keys()
        .into_iter()
        .map(|(id, key)| {
            let mut signed = json!({"key": key.to_base64()});
            sign(&mut signed);
            OneTimeKey {
                algorithm: "signed_curve25519".into(),
                key_id: id.to_base64(),
                key: canonical(&signed),
            }
        })
        .collect();
    KeyUpload {
        user_id: user_id.to_string(),
        device_id: device_id.to_owned(),
        device_keys: Some(canonical(&device_keys)),
        one_time_keys,
        fallback_keys: Vec::new(),
    }
}

/// `value` as canonical JSON, as the server keeps keys.
fn canonical(value: &Value) -> String {
    serde_json::from_value::<CanonicalJsonObject>(value.clone())
        .map(|object| ruma::CanonicalJsonValue::Object(object).to_string())
        .unwrap_or_default()
}
