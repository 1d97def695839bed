//! Megolm (`m.megolm.v1.aes-sha2`) in rooms: the outbound session per room (rotated by message
//! count, by age, and when a member or device it was shared with is gone), sharing it over Olm
//! with every device that lacks it, encrypting room events, and decrypting them with the inbound
//! sessions received, with replay protection by message index.

use std::collections::{HashMap, HashSet};

use hyphae_store::{
    CryptoWrite, InboundGroupSessionRow, MegolmSeen, OutboundGroupSessionRow, OutboundShare,
    OutboundWrite,
};
use ruma::events::room::encrypted::{
    EncryptedEventScheme, MegolmV1AesSha2ContentInit, RoomEncryptedEventContent,
};
use ruma::events::room_key::ToDeviceRoomKeyEventContent;
use ruma::{EventEncryptionAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionOrdering,
};

use super::account::MEGOLM;
use super::devices::{Device, device_by_key};
use super::util::{now_ms, send_to_device};
use super::{Crypto, CryptoError, DecryptError, Decrypted, Rotation, State};
use crate::app::cs::CsApi;

/// A room key this device can decrypt with.
pub(super) struct InboundSession {
    pub(super) session: InboundGroupSession,
    /// The curve25519 key of the device that created it.
    pub(super) sender_key: String,
    /// The ed25519 key that device claimed.
    pub(super) signing_key: String,
    /// Who sent it over Olm (for a forwarded key: its owner, when known).
    pub(super) sender_user: Option<OwnedUserId>,
    /// The devices (curve25519) that forwarded it; empty when it came from its creator.
    pub(super) forwarding_chain: Vec<String>,
    pub(super) received_ms: i64,
    /// Message index -> (event id, origin_server_ts) it was first decrypted for.
    seen: HashMap<u32, (String, i64)>,
}

impl InboundSession {
    pub(super) fn new(
        session: InboundGroupSession,
        sender_key: String,
        signing_key: String,
        sender_user: Option<OwnedUserId>,
        forwarding_chain: Vec<String>,
    ) -> InboundSession {
        InboundSession {
            session,
            sender_key,
            signing_key,
            sender_user,
            forwarding_chain,
            received_ms: now_ms(),
            seen: HashMap::new(),
        }
    }

    pub(super) fn forwarded(&self) -> bool {
        !self.forwarding_chain.is_empty()
    }

    fn row(&self, room_id: &RoomId, pickle_key: &[u8; 32]) -> InboundGroupSessionRow {
        InboundGroupSessionRow {
            room_id: room_id.to_string(),
            session_id: self.session.session_id(),
            sender_key: self.sender_key.clone(),
            signing_key: self.signing_key.clone(),
            sender_user: self.sender_user.as_ref().map(ToString::to_string),
            first_known_index: i64::from(self.session.first_known_index()),
            forwarding_chain: json!(self.forwarding_chain).to_string(),
            pickle: self.session.pickle().encrypt(pickle_key),
            received_ms: self.received_ms,
        }
    }
}

/// The session this device encrypts a room's events with.
pub(super) struct OutboundSession {
    session: GroupSession,
    id: String,
    created_ms: i64,
    message_count: u64,
    /// The devices it was shared with, and their curve25519 keys then.
    shares: HashMap<(OwnedUserId, OwnedDeviceId), String>,
}

impl OutboundSession {
    fn row(&self, room_id: &RoomId, pickle_key: &[u8; 32]) -> OutboundGroupSessionRow {
        OutboundGroupSessionRow {
            room_id: room_id.to_string(),
            session_id: self.id.clone(),
            pickle: self.session.pickle().encrypt(pickle_key),
            created_ms: self.created_ms,
            message_count: self.message_count as i64,
        }
    }

    /// Why the session must be replaced before the next message, if it must.
    fn rotation_reason(
        &self,
        rotation: Rotation,
        now_ms: i64,
        members: &HashSet<&UserId>,
        devices: &HashMap<(OwnedUserId, OwnedDeviceId), String>,
    ) -> Option<&'static str> {
        // A room asking for 0 means every message (never more than the count allows).
        if self.message_count >= rotation.period_msgs.max(1) {
            return Some("message count");
        }
        let age = now_ms.saturating_sub(self.created_ms).max(0) as u64;
        if age >= rotation.period_ms {
            return Some("age");
        }
        for ((user_id, device_id), curve25519) in &self.shares {
            if !members.contains(&**user_id) {
                return Some("a member left");
            }
            if devices.get(&(user_id.clone(), device_id.clone())) != Some(curve25519) {
                return Some("a device it was shared with is gone");
            }
        }
        None
    }
}

impl Crypto {
    /// Encrypts an event for a room with Megolm, first sharing the room's outbound session with
    /// every device of `members` (and of this user) that does not have it yet. Rotates the
    /// session by message count and age (`rotation`) and when a member or device it was shared
    /// with is gone. Returns the `m.room.encrypted` content; the session's new state is
    /// committed before it returns.
    pub(crate) async fn encrypt_room_event(
        &self,
        cs: &CsApi,
        room_id: &RoomId,
        members: &[OwnedUserId],
        rotation: Rotation,
        event_type: &str,
        content: Value,
    ) -> Result<Value, CryptoError> {
        let lock = self.room_lock(room_id);
        let _room = lock.lock().await;
        self.load_outbound(room_id).await?;
        let own_user = &self.inner.user_id;
        let mut users: Vec<OwnedUserId> = members.to_vec();
        users.push(own_user.clone());
        users.sort();
        users.dedup();
        self.refresh_devices(cs, &users, &[]).await?;
        let devices: Vec<Device> = self
            .devices_of(&users)
            .into_iter()
            .filter(|d| !(d.user_id == *own_user && d.device_id == self.inner.device_id))
            .collect();
        let (targets, room_key, created) = {
            let mut state = self.state();
            let current: HashMap<(OwnedUserId, OwnedDeviceId), String> = devices
                .iter()
                .map(|d| {
                    (
                        (d.user_id.clone(), d.device_id.clone()),
                        d.curve25519.to_base64(),
                    )
                })
                .collect();
            let member_set: HashSet<&UserId> = users.iter().map(|u| &**u).collect();
            let now = now_ms();
            let reason = match state.outbound.get(room_id) {
                Some(Some(out)) => out.rotation_reason(rotation, now, &member_set, &current),
                _ => Some("none yet"),
            };
            let mut created = CryptoWrite::default();
            if let Some(reason) = reason {
                self.new_outbound(&mut state, room_id, now, &mut created);
                tracing::debug!(%room_id, reason, "new outbound Megolm session");
            }
            let Some(Some(out)) = state.outbound.get(room_id) else {
                return Err(CryptoError::Worker(
                    "the outbound session went missing".into(),
                ));
            };
            let targets: Vec<Device> = devices
                .into_iter()
                .filter(|d| {
                    !out.shares
                        .contains_key(&(d.user_id.clone(), d.device_id.clone()))
                })
                .collect();
            let room_key = ToDeviceRoomKeyEventContent::new(
                EventEncryptionAlgorithm::MegolmV1AesSha2,
                room_id.to_owned(),
                out.id.clone(),
                out.session.session_key().to_base64(),
            );
            (targets, (room_key, out.session.message_index()), created)
        };
        // A new session is on disk (with this device's own inbound copy) before it is shared.
        self.write(created).await?;
        if !targets.is_empty() {
            self.share_room_key(cs, room_id, targets, room_key).await?;
        }
        let relates_to = match content {
            Value::Object(ref object) => object.get("m.relates_to").cloned(),
            _ => None,
        };
        let mut inner_content = content;
        // The relation travels in the clear (the spec), so servers can aggregate it.
        if let Value::Object(object) = &mut inner_content {
            object.remove("m.relates_to");
        }
        let plaintext = json!({
            "type": event_type,
            "content": inner_content,
            "room_id": room_id,
        })
        .to_string();
        let (message, session_id, row) = {
            let mut state = self.state();
            let Some(Some(out)) = state.outbound.get_mut(room_id) else {
                return Err(CryptoError::Worker(
                    "the outbound session went missing".into(),
                ));
            };
            let message = out.session.encrypt(plaintext);
            out.message_count += 1;
            (message, out.id.clone(), out.row(room_id, self.pickle_key()))
        };
        // The ratchet's step is on disk before the ciphertext leaves.
        self.write(CryptoWrite {
            outbound: vec![OutboundWrite {
                session: row,
                new: false,
            }],
            ..Default::default()
        })
        .await?;
        let encrypted = RoomEncryptedEventContent::new(
            EncryptedEventScheme::MegolmV1AesSha2(
                MegolmV1AesSha2ContentInit {
                    ciphertext: message.to_base64(),
                    sender_key: self.curve25519_key(),
                    device_id: self.inner.device_id.clone(),
                    session_id,
                }
                .into(),
            ),
            None,
        );
        let mut encrypted = serde_json::to_value(encrypted)?;
        if let (Some(relates_to), Value::Object(object)) = (relates_to, &mut encrypted) {
            object.insert("m.relates_to".into(), relates_to);
        }
        Ok(encrypted)
    }

    /// Starts a new outbound session for the room, with this device's own inbound copy (to read
    /// its own messages, and to answer its other devices' key requests).
    fn new_outbound(&self, state: &mut State, room_id: &RoomId, now: i64, write: &mut CryptoWrite) {
        let session = GroupSession::new(SessionConfig::version_1());
        let id = session.session_id();
        let inbound = InboundSession::new(
            InboundGroupSession::new(&session.session_key(), SessionConfig::version_1()),
            self.curve25519_key(),
            self.ed25519_key(),
            Some(self.inner.user_id.clone()),
            Vec::new(),
        );
        write
            .inbound_group_sessions
            .push(inbound.row(room_id, self.pickle_key()));
        state
            .inbound
            .insert((room_id.to_owned(), id.clone()), inbound);
        let out = OutboundSession {
            session,
            id,
            created_ms: now,
            message_count: 0,
            shares: HashMap::new(),
        };
        write.outbound.push(OutboundWrite {
            session: out.row(room_id, self.pickle_key()),
            new: true,
        });
        state.outbound.insert(room_id.to_owned(), Some(out));
    }

    /// Sends the room key to `targets` over Olm (one sendToDevice call, split only if the body
    /// would be too large), then records who has it.
    async fn share_room_key(
        &self,
        cs: &CsApi,
        room_id: &RoomId,
        targets: Vec<Device>,
        (room_key, message_index): (ToDeviceRoomKeyEventContent, u32),
    ) -> Result<(), CryptoError> {
        let session_id = room_key.session_id.clone();
        let content = serde_json::to_value(room_key)?;
        let count = targets.len();
        let encrypted = self
            .olm_encrypt(
                cs,
                targets,
                "m.room_key",
                &content,
                false,
                CryptoWrite::default(),
            )
            .await?;
        let mut shared = Vec::with_capacity(encrypted.len());
        let mut messages = Vec::with_capacity(encrypted.len());
        for (device, content) in encrypted {
            messages.push((
                device.user_id.to_string(),
                device.device_id.to_string(),
                content,
            ));
            shared.push(device);
        }
        send_to_device(cs, "m.room.encrypted", messages).await?;
        tracing::debug!(%room_id, session_id, shared = shared.len(), of = count, "room key shared");
        let rows = {
            let mut state = self.state();
            let Some(Some(out)) = state.outbound.get_mut(room_id) else {
                return Ok(());
            };
            if out.id != session_id {
                return Ok(());
            }
            shared
                .into_iter()
                .map(|d| {
                    let curve25519 = d.curve25519.to_base64();
                    out.shares
                        .insert((d.user_id.clone(), d.device_id.clone()), curve25519.clone());
                    (
                        room_id.to_string(),
                        OutboundShare {
                            user_id: d.user_id.to_string(),
                            device_id: d.device_id.to_string(),
                            curve25519,
                            message_index: i64::from(message_index),
                        },
                    )
                })
                .collect()
        };
        self.write(CryptoWrite {
            shares: rows,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Loads the room's outbound session from the store, unless it is in memory.
    async fn load_outbound(&self, room_id: &RoomId) -> Result<(), CryptoError> {
        if self.state().outbound.contains_key(room_id) {
            return Ok(());
        }
        let stored = self
            .inner
            .store
            .crypto_outbound_group_session(self.inner.account_id, room_id.to_string())
            .await?;
        let session = match stored {
            None => None,
            Some((row, shares)) => {
                let pickle = GroupSessionPickle::from_encrypted(&row.pickle, self.pickle_key())?;
                let shares = shares
                    .into_iter()
                    .filter_map(|s| {
                        Some((
                            (
                                UserId::parse(&s.user_id).ok()?,
                                OwnedDeviceId::from(s.device_id),
                            ),
                            s.curve25519,
                        ))
                    })
                    .collect();
                Some(OutboundSession {
                    session: GroupSession::from_pickle(pickle),
                    id: row.session_id,
                    created_ms: row.created_ms,
                    message_count: row.message_count.max(0) as u64,
                    shares,
                })
            }
        };
        self.state()
            .outbound
            .entry(room_id.to_owned())
            .or_insert(session);
        Ok(())
    }

    /// Loads an inbound session from the store unless it is in memory; whether there is one.
    pub(super) async fn load_inbound(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<bool, CryptoError> {
        let key = (room_id.to_owned(), session_id.to_owned());
        if self.state().inbound.contains_key(&key) {
            return Ok(true);
        }
        let Some((row, seen)) = self
            .inner
            .store
            .crypto_inbound_group_session(
                self.inner.account_id,
                room_id.to_string(),
                session_id.to_owned(),
            )
            .await?
        else {
            return Ok(false);
        };
        let pickle = InboundGroupSessionPickle::from_encrypted(&row.pickle, self.pickle_key())?;
        let session = InboundSession {
            session: InboundGroupSession::from_pickle(pickle),
            sender_key: row.sender_key,
            signing_key: row.signing_key,
            sender_user: row.sender_user.and_then(|u| UserId::parse(u).ok()),
            forwarding_chain: serde_json::from_str(&row.forwarding_chain).unwrap_or_default(),
            received_ms: row.received_ms,
            seen: seen
                .into_iter()
                .filter_map(|s| {
                    Some((
                        u32::try_from(s.message_index).ok()?,
                        (s.event_id, s.origin_server_ts),
                    ))
                })
                .collect(),
        };
        self.state().inbound.entry(key).or_insert(session);
        Ok(true)
    }

    /// Keeps a received room key unless a better copy of the same session is known (one that
    /// decrypts from an earlier index); `write` gets what changed. Whether it was kept.
    /// Load the stored session first (`load_inbound`).
    pub(super) fn add_inbound(
        &self,
        state: &mut State,
        room_id: &RoomId,
        mut new: InboundSession,
        write: &mut CryptoWrite,
    ) -> bool {
        let session_id = new.session.session_id();
        let key = (room_id.to_owned(), session_id.clone());
        if let Some(old) = state.inbound.get_mut(&key) {
            if old.sender_key != new.sender_key {
                tracing::warn!(%room_id, session_id, "a room key for a known session came from another sender; ignored");
                return false;
            }
            match new.session.compare(&mut old.session) {
                SessionOrdering::Better => {}
                SessionOrdering::Equal | SessionOrdering::Worse => return false,
                SessionOrdering::Unconnected => {
                    tracing::warn!(%room_id, session_id, "a room key does not match the known session with its id; ignored");
                    return false;
                }
            }
            // The same session from an earlier index: its ratchet replaces the old one, but
            // what was learnt of it stays (a key from its creator beats a forwarded one).
            new.seen = std::mem::take(&mut old.seen);
            if !old.forwarded() {
                new.forwarding_chain = std::mem::take(&mut old.forwarding_chain);
                new.signing_key = old.signing_key.clone();
                new.sender_user = old.sender_user.clone();
            }
        }
        write
            .inbound_group_sessions
            .push(new.row(room_id, self.pickle_key()));
        state.inbound.insert(key, new);
        true
    }

    /// Decrypts an `m.room.encrypted` event in client format (as /sync and /messages give it).
    /// A message index already decrypted for another event (another event id or timestamp) is
    /// refused as a replay.
    pub(crate) async fn decrypt_room_event(
        &self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<Decrypted, DecryptError> {
        let content = &event["content"];
        if content["algorithm"].as_str() != Some(MEGOLM) {
            return Err(DecryptError::Malformed(format!(
                "algorithm {}",
                content["algorithm"]
            )));
        }
        let (Some(session_id), Some(ciphertext), Some(sender)) = (
            content["session_id"].as_str(),
            content["ciphertext"].as_str(),
            event["sender"].as_str().and_then(|s| UserId::parse(s).ok()),
        ) else {
            return Err(DecryptError::Malformed(
                "no session_id, ciphertext or sender".into(),
            ));
        };
        let event_id = event["event_id"].as_str();
        let timestamp = event["origin_server_ts"].as_i64().unwrap_or(0);
        let message = MegolmMessage::from_base64(ciphertext)
            .map_err(|e| DecryptError::Malformed(e.to_string()))?;
        let known = self
            .load_inbound(room_id, session_id)
            .await
            .map_err(|e| match e {
                CryptoError::Store(e) => DecryptError::Store(e),
                e => DecryptError::Unreadable(e.to_string()),
            })?;
        let unknown = || DecryptError::UnknownSession {
            session_id: session_id.to_owned(),
        };
        if !known {
            return Err(unknown());
        }
        let (decrypted, seen) = {
            let mut state = self.state();
            let State { inbound, users, .. } = &mut *state;
            let inbound = inbound
                .get_mut(&(room_id.to_owned(), session_id.to_owned()))
                .ok_or_else(unknown)?;
            let plain = inbound.session.decrypt(&message).map_err(|e| match e {
                vodozemac::megolm::DecryptionError::UnknownMessageIndex(first, index) => {
                    DecryptError::UnknownIndex {
                        session_id: session_id.to_owned(),
                        first_known_index: first,
                        message_index: index,
                    }
                }
                e => DecryptError::Megolm(e),
            })?;
            let index = plain.message_index;
            let payload: Value = serde_json::from_slice(&plain.plaintext)
                .map_err(|e| DecryptError::Malformed(e.to_string()))?;
            if payload["room_id"].as_str() != Some(room_id.as_str()) {
                return Err(DecryptError::WrongRoom);
            }
            if let Some(owner) = &inbound.sender_user
                && *owner != sender
            {
                return Err(DecryptError::WrongSender);
            }
            let Some(event_type) = payload["type"].as_str().map(str::to_owned) else {
                return Err(DecryptError::Malformed("no type in the payload".into()));
            };
            // Replay protection, for events with an id (a local echo has none yet).
            let mut seen = None;
            if let Some(event_id) = event_id {
                match inbound.seen.get(&index) {
                    Some((first_id, first_ts))
                        if first_id != event_id || *first_ts != timestamp =>
                    {
                        return Err(DecryptError::Replay {
                            session_id: session_id.to_owned(),
                            message_index: index,
                        });
                    }
                    Some(_) => {}
                    None => {
                        inbound.seen.insert(index, (event_id.to_owned(), timestamp));
                        seen = Some(MegolmSeen {
                            room_id: room_id.to_string(),
                            session_id: session_id.to_owned(),
                            message_index: i64::from(index),
                            event_id: event_id.to_owned(),
                            origin_server_ts: timestamp,
                        });
                    }
                }
            }
            let sender_device = vodozemac::Curve25519PublicKey::from_base64(&inbound.sender_key)
                .ok()
                .and_then(|key| device_by_key(users, &sender, &key))
                .filter(|d| d.ed25519.to_base64() == inbound.signing_key)
                .map(|d| d.device_id);
            let forwarded = inbound.forwarded();
            let mut content = payload["content"].clone();
            if let (Some(relates_to), Value::Object(object)) =
                (content_relation(event), &mut content)
            {
                object.entry("m.relates_to").or_insert(relates_to);
            }
            (
                Decrypted {
                    event_type,
                    content,
                    session_id: session_id.to_owned(),
                    message_index: index,
                    sender_key: inbound.sender_key.clone(),
                    authenticated: sender_device.is_some() && !forwarded,
                    sender_device,
                    forwarded,
                },
                seen,
            )
        };
        if let Some(seen) = seen {
            // The index is taken in memory at once; the store catches up without making every
            // decryption wait for a commit (a crash loses at most the newest records).
            let write = self.write(CryptoWrite {
                seen: vec![seen],
                ..Default::default()
            });
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    tracing::warn!(error = %e, "could not keep a decrypted message index");
                }
            });
        }
        Ok(decrypted)
    }
}

/// The cleartext relation of an encrypted event.
fn content_relation(event: &Value) -> Option<Value> {
    event["content"].get("m.relates_to").cloned()
}

/// `OwnedRoomId` of a room-key content, checked.
pub(super) fn room_of(room_id: &str) -> Option<OwnedRoomId> {
    RoomId::parse(room_id).ok()
}
