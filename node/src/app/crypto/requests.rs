//! What arrives as to-device messages: Olm-encrypted room keys (`m.room_key`), forwarded keys
//! (`m.forwarded_room_key`, accepted only from this user's own known devices and only when
//! asked for), and key requests (`m.room_key_request`), which are answered for this user's own
//! other devices only. Also this device's own key requests.

use std::collections::{HashMap, HashSet};

use hyphae_store::{CryptoWrite, KeyRequestRow, Store};
use ruma::events::forwarded_room_key::{
    ToDeviceForwardedRoomKeyEventContent, ToDeviceForwardedRoomKeyEventContentInit,
};
use ruma::events::room::encrypted::{EncryptedEventScheme, ToDeviceRoomEncryptedEventContent};
use ruma::events::room_key::ToDeviceRoomKeyEventContent;
use ruma::events::room_key_request::{
    Action, RequestedKeyInfo, ToDeviceRoomKeyRequestEventContent,
};
use ruma::{EventEncryptionAlgorithm, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use vodozemac::Curve25519PublicKey;
use vodozemac::megolm::{ExportedSessionKey, InboundGroupSession, SessionConfig, SessionKey};
use vodozemac::olm::OlmMessage;

use super::devices::Device;
use super::megolm::{InboundSession, room_of};
use super::olm::OlmFailure;
use super::util::{now_ms, random_id, send_to_device};
use super::{Crypto, CryptoError};
use crate::app::cs::CsApi;

/// A room key this device asked its other devices for.
#[derive(Debug, Clone)]
pub(super) struct KeyRequest {
    pub(super) request_id: String,
}

/// The open requests as stored.
pub(super) async fn load(
    store: &Store,
    account_id: i64,
) -> Result<HashMap<(OwnedRoomId, String), KeyRequest>, CryptoError> {
    Ok(store
        .crypto_key_requests(account_id)
        .await?
        .into_iter()
        .filter_map(|r| {
            Some((
                (room_of(&r.room_id)?, r.session_id),
                KeyRequest {
                    request_id: r.request_id,
                },
            ))
        })
        .collect())
}

/// A to-device message this module handles.
enum Incoming {
    Olm {
        sender: OwnedUserId,
        sender_key: Curve25519PublicKey,
        message: OlmMessage,
    },
    Request {
        sender: OwnedUserId,
        request: ToDeviceRoomKeyRequestEventContent,
    },
}

impl Crypto {
    /// A sync's to-device events: decrypts Olm messages, keeps the room keys and the forwarded
    /// keys it asked for, answers key requests from this user's own other devices, and returns
    /// the (room id, session id) of the room keys received so the caller can retry the events it
    /// could not decrypt. What it received is committed before it returns, so the caller may
    /// then move its sync token on. Bad messages are logged and skipped.
    pub(crate) async fn receive_to_device(
        &self,
        cs: &CsApi,
        events: &[Value],
    ) -> Vec<(OwnedRoomId, String)> {
        let incoming: Vec<Incoming> = events.iter().filter_map(|e| self.parse(e)).collect();
        if incoming.is_empty() {
            return Vec::new();
        }
        // Who sent what: their devices are queried first when unknown or outdated, so keys
        // can be checked against them.
        let mut maybe = Vec::new();
        let mut force = Vec::new();
        for item in &incoming {
            match item {
                Incoming::Olm {
                    sender, sender_key, ..
                } if self.should_query(sender, sender_key) => maybe.push(sender.clone()),
                Incoming::Request { sender, request } if *sender == self.inner.user_id => {
                    let known = self
                        .state()
                        .users
                        .get(sender)
                        .is_some_and(|u| u.devices.contains_key(&request.requesting_device_id));
                    if !known {
                        force.push(sender.clone());
                    }
                }
                _ => {}
            }
        }
        if !maybe.is_empty() || !force.is_empty() {
            maybe.sort();
            maybe.dedup();
            force.sort();
            force.dedup();
            if let Err(e) = self.refresh_devices(cs, &maybe, &force).await {
                tracing::warn!(error = %e, "could not query the senders' devices");
            }
        }
        let mut received = Vec::new();
        let mut fulfilled = Vec::new();
        let mut wedged = Vec::new();
        let mut requests = Vec::new();
        {
            let _olm = self.inner.olm.lock().await;
            let keys: Vec<String> = incoming
                .iter()
                .filter_map(|i| match i {
                    Incoming::Olm { sender_key, .. } => Some(sender_key.to_base64()),
                    Incoming::Request { .. } => None,
                })
                .collect();
            if let Err(e) = self.load_olm_sessions(&keys).await {
                tracing::error!(error = %e, "could not load Olm sessions; to-device messages dropped");
                return Vec::new();
            }
            let mut write = CryptoWrite::default();
            for item in incoming {
                match item {
                    Incoming::Olm {
                        sender,
                        sender_key,
                        message,
                    } => {
                        let decrypted = {
                            let mut state = self.state();
                            self.olm_decrypt(&mut state, sender_key, &message, &mut write)
                        };
                        let plaintext = match decrypted {
                            Ok(plaintext) => plaintext,
                            Err(e) => {
                                tracing::warn!(%sender, sender_key = %sender_key.to_base64(),
                                    error = %e, "could not decrypt an Olm message");
                                if matches!(e, OlmFailure::NoSession | OlmFailure::Decrypt(_))
                                    && let Some(device) = self.device_by_key(&sender, &sender_key)
                                {
                                    wedged.push(device);
                                }
                                continue;
                            }
                        };
                        match self
                            .handle_olm_payload(&sender, sender_key, &plaintext, &mut write)
                            .await
                        {
                            Ok(Some(Kept {
                                room_id,
                                session_id,
                                request,
                            })) => {
                                if let Some(request) = request {
                                    fulfilled.push(request);
                                }
                                received.push((room_id, session_id));
                            }
                            Ok(None) => {}
                            Err(reason) => {
                                tracing::warn!(%sender, reason, "ignored an Olm message")
                            }
                        }
                    }
                    Incoming::Request { sender, request } => requests.push((sender, request)),
                }
            }
            // Committed before returning: the caller moves its sync token on after this.
            if let Err(e) = self.write(write).await {
                tracing::error!(error = %e, "could not keep received keys");
                return Vec::new();
            }
        }
        self.answer_key_requests(cs, requests).await;
        if !fulfilled.is_empty() {
            self.cancel_key_requests(cs, fulfilled).await;
        }
        if !wedged.is_empty() {
            self.unwedge(cs, wedged).await;
        }
        received.sort();
        received.dedup();
        received
    }

    fn parse(&self, event: &Value) -> Option<Incoming> {
        let sender = event["sender"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok())?;
        match event["type"].as_str()? {
            "m.room.encrypted" => {
                let content: ToDeviceRoomEncryptedEventContent =
                    serde_json::from_value(event["content"].clone()).ok()?;
                let EncryptedEventScheme::OlmV1Curve25519AesSha2(olm) = content.scheme else {
                    return None;
                };
                let Some(ciphertext) = olm.ciphertext.get(&self.curve25519_key()) else {
                    tracing::debug!(%sender, "an Olm message not for this device");
                    return None;
                };
                let sender_key = Curve25519PublicKey::from_base64(&olm.sender_key).ok()?;
                let bytes = vodozemac::base64_decode(&ciphertext.body).ok()?;
                let message_type = usize::try_from(u64::from(ciphertext.message_type)).ok()?;
                let message = OlmMessage::from_parts(message_type, &bytes).ok()?;
                Some(Incoming::Olm {
                    sender,
                    sender_key,
                    message,
                })
            }
            "m.room_key_request" => Some(Incoming::Request {
                sender,
                request: serde_json::from_value(event["content"].clone()).ok()?,
            }),
            _ => None,
        }
    }

    /// Checks a decrypted Olm payload (the spec: it names its sender, this user and device as
    /// recipient, and the sender's ed25519 key, which must be the sending device's) and keeps
    /// the room key it carries.
    async fn handle_olm_payload(
        &self,
        sender: &OwnedUserId,
        sender_key: Curve25519PublicKey,
        plaintext: &[u8],
        write: &mut CryptoWrite,
    ) -> Result<Option<Kept>, String> {
        let payload: Value =
            serde_json::from_slice(plaintext).map_err(|e| format!("not JSON: {e}"))?;
        if payload["sender"].as_str() != Some(sender.as_str()) {
            return Err("the payload names another sender".into());
        }
        if payload["recipient"].as_str() != Some(self.inner.user_id.as_str())
            || payload["recipient_keys"]["ed25519"].as_str() != Some(&self.ed25519_key())
        {
            return Err("the payload is for another recipient".into());
        }
        let claimed = payload["keys"]["ed25519"]
            .as_str()
            .ok_or("the payload has no sender ed25519 key")?
            .to_owned();
        let device = self.device_by_key(sender, &sender_key);
        if let Some(device) = &device
            && device.ed25519.to_base64() != claimed
        {
            return Err("the sender's ed25519 key is not the one of its device".into());
        }
        match payload["type"].as_str().unwrap_or_default() {
            "m.room_key" => {
                let content: ToDeviceRoomKeyEventContent =
                    serde_json::from_value(payload["content"].clone())
                        .map_err(|e| format!("bad m.room_key: {e}"))?;
                if content.algorithm != EventEncryptionAlgorithm::MegolmV1AesSha2 {
                    return Err(format!("room key for {}", content.algorithm));
                }
                let key = SessionKey::from_base64(&content.session_key)
                    .map_err(|e| format!("bad session key: {e}"))?;
                let session = InboundGroupSession::new(&key, SessionConfig::version_1());
                if session.session_id() != content.session_id {
                    return Err("the session key does not match its session id".into());
                }
                let inbound = InboundSession::new(
                    session,
                    sender_key.to_base64(),
                    claimed,
                    Some(sender.clone()),
                    Vec::new(),
                );
                Ok(self
                    .keep_room_key(&content.room_id, inbound, write)
                    .await?
                    .then_some(Kept {
                        room_id: content.room_id,
                        session_id: content.session_id,
                        request: None,
                    }))
            }
            "m.forwarded_room_key" => {
                if *sender != self.inner.user_id || device.is_none() {
                    return Err("a forwarded key from another user or an unknown device".into());
                }
                let content: ToDeviceForwardedRoomKeyEventContent =
                    serde_json::from_value(payload["content"].clone())
                        .map_err(|e| format!("bad m.forwarded_room_key: {e}"))?;
                if content.algorithm != EventEncryptionAlgorithm::MegolmV1AesSha2 {
                    return Err(format!("forwarded key for {}", content.algorithm));
                }
                let asked = (content.room_id.clone(), content.session_id.clone());
                let Some(request) = self.state().key_requests.get(&asked).cloned() else {
                    return Err("a forwarded key this device did not ask for".into());
                };
                let key = ExportedSessionKey::from_base64(&content.session_key)
                    .map_err(|e| format!("bad exported key: {e}"))?;
                let session = InboundGroupSession::import(&key, SessionConfig::version_1());
                if session.session_id() != content.session_id {
                    return Err("the forwarded key does not match its session id".into());
                }
                let owner = Curve25519PublicKey::from_base64(&content.sender_key)
                    .ok()
                    .and_then(|key| {
                        let state = self.state();
                        state
                            .users
                            .iter()
                            .find(|(_, u)| u.devices.values().any(|d| d.curve25519 == key))
                            .map(|(user_id, _)| user_id.clone())
                    });
                let mut chain = content.forwarding_curve25519_key_chain.clone();
                chain.push(sender_key.to_base64());
                let inbound = InboundSession::new(
                    session,
                    content.sender_key.clone(),
                    content.sender_claimed_ed25519_key.clone(),
                    owner,
                    chain,
                );
                let kept = self.keep_room_key(&content.room_id, inbound, write).await?;
                // Answered either way: a copy at least as good is here now.
                self.state().key_requests.remove(&asked);
                write
                    .key_requests_done
                    .push((asked.0.to_string(), asked.1.clone()));
                Ok(kept.then_some(Kept {
                    room_id: content.room_id,
                    session_id: content.session_id,
                    request: Some(request.request_id),
                }))
            }
            "m.dummy" => Ok(None),
            other => {
                tracing::debug!(
                    event_type = other,
                    "ignoring an Olm-encrypted to-device event"
                );
                Ok(None)
            }
        }
    }

    async fn keep_room_key(
        &self,
        room_id: &RoomId,
        inbound: InboundSession,
        write: &mut CryptoWrite,
    ) -> Result<bool, String> {
        let session_id = inbound.session.session_id();
        self.load_inbound(room_id, &session_id)
            .await
            .map_err(|e| e.to_string())?;
        let mut state = self.state();
        Ok(self.add_inbound(&mut state, room_id, inbound, write))
    }

    /// Answers key requests from this user's own other devices (known to its server) with the
    /// keys this device has; everyone else's are ignored.
    async fn answer_key_requests(
        &self,
        cs: &CsApi,
        requests: Vec<(OwnedUserId, ToDeviceRoomKeyRequestEventContent)>,
    ) {
        let mut answered = HashSet::new();
        for (sender, request) in requests {
            if sender != self.inner.user_id {
                tracing::debug!(%sender, "ignoring another user's key request");
                continue;
            }
            if request.requesting_device_id == self.inner.device_id
                || request.action != Action::Request
            {
                continue;
            }
            let Some(body) = request.body else {
                continue;
            };
            if body.algorithm != EventEncryptionAlgorithm::MegolmV1AesSha2 {
                continue;
            }
            let device = self
                .state()
                .users
                .get(&sender)
                .and_then(|u| u.devices.get(&request.requesting_device_id).cloned());
            let Some(device) = device else {
                tracing::info!(device_id = %request.requesting_device_id,
                    "ignoring a key request from an unknown device");
                continue;
            };
            if !answered.insert((
                device.device_id.clone(),
                body.room_id.clone(),
                body.session_id.clone(),
            )) {
                continue;
            }
            #[allow(deprecated)]
            let wanted_sender_key = body.sender_key.clone();
            match self
                .forward_room_key(
                    &body.room_id,
                    &body.session_id,
                    wanted_sender_key.as_deref(),
                )
                .await
            {
                Ok(Some(content)) => {
                    if let Err(e) = self.send_forwarded_key(cs, device, content).await {
                        tracing::warn!(error = %e, "could not answer a key request");
                    }
                }
                Ok(None) => tracing::debug!(room_id = %body.room_id, session_id = body.session_id,
                    "a key request for a session this device does not have"),
                Err(e) => tracing::warn!(error = %e, "could not read a requested key"),
            }
        }
    }

    /// The `m.forwarded_room_key` content for a session this device has.
    pub(super) async fn forward_room_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender_key: Option<&str>,
    ) -> Result<Option<Value>, CryptoError> {
        if !self.load_inbound(room_id, session_id).await? {
            return Ok(None);
        }
        let state = self.state();
        let Some(inbound) = state
            .inbound
            .get(&(room_id.to_owned(), session_id.to_owned()))
        else {
            return Ok(None);
        };
        if sender_key.is_some_and(|k| k != inbound.sender_key) {
            return Ok(None);
        }
        let content: ToDeviceForwardedRoomKeyEventContent =
            ToDeviceForwardedRoomKeyEventContentInit {
                algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
                room_id: room_id.to_owned(),
                sender_key: inbound.sender_key.clone(),
                session_id: session_id.to_owned(),
                session_key: inbound.session.export_at_first_known_index().to_base64(),
                sender_claimed_ed25519_key: inbound.signing_key.clone(),
                forwarding_curve25519_key_chain: inbound.forwarding_chain.clone(),
            }
            .into();
        Ok(Some(serde_json::to_value(content)?))
    }

    pub(super) async fn send_forwarded_key(
        &self,
        cs: &CsApi,
        device: Device,
        content: Value,
    ) -> Result<(), CryptoError> {
        let encrypted = self
            .olm_encrypt(
                cs,
                vec![device],
                "m.forwarded_room_key",
                &content,
                false,
                CryptoWrite::default(),
            )
            .await?;
        let messages = encrypted
            .into_iter()
            .map(|(d, c)| (d.user_id.to_string(), d.device_id.to_string(), c))
            .collect();
        send_to_device(cs, "m.room.encrypted", messages).await
    }

    /// Asks this user's other devices for a room key it is missing (`m.room_key_request`); an
    /// answer (`m.forwarded_room_key`) comes through `receive_to_device`. Asking again for the
    /// same session repeats the same request.
    // For the app's timeline, which does not ask yet.
    pub(crate) async fn request_room_key(
        &self,
        cs: &CsApi,
        room_id: &RoomId,
        session_id: &str,
        sender_key: &str,
    ) -> Result<(), CryptoError> {
        let key = (room_id.to_owned(), session_id.to_owned());
        let existing = self.state().key_requests.get(&key).cloned();
        let request_id = match existing {
            Some(request) => request.request_id,
            None => {
                let request_id = random_id()?;
                self.write(CryptoWrite {
                    key_requests: vec![KeyRequestRow {
                        room_id: room_id.to_string(),
                        session_id: session_id.to_owned(),
                        request_id: request_id.clone(),
                        sender_key: sender_key.to_owned(),
                        created_ms: now_ms(),
                    }],
                    ..Default::default()
                })
                .await?;
                self.state().key_requests.insert(
                    key,
                    KeyRequest {
                        request_id: request_id.clone(),
                    },
                );
                request_id
            }
        };
        let content = ToDeviceRoomKeyRequestEventContent::new(
            Action::Request,
            Some(RequestedKeyInfo::new(
                EventEncryptionAlgorithm::MegolmV1AesSha2,
                room_id.to_owned(),
                sender_key.to_owned(),
                session_id.to_owned(),
            )),
            self.inner.device_id.clone(),
            request_id.into(),
        );
        send_to_device(
            cs,
            "m.room_key_request",
            vec![(
                self.inner.user_id.to_string(),
                "*".to_owned(),
                serde_json::to_value(content).map_err(CryptoError::from)?,
            )],
        )
        .await
    }

    /// Tells this user's other devices that requests were answered.
    async fn cancel_key_requests(&self, cs: &CsApi, request_ids: Vec<String>) {
        let mut messages = Vec::new();
        for request_id in request_ids {
            let content = ToDeviceRoomKeyRequestEventContent::new(
                Action::CancelRequest,
                None,
                self.inner.device_id.clone(),
                request_id.into(),
            );
            if let Ok(content) = serde_json::to_value(content) {
                messages.push((self.inner.user_id.to_string(), "*".to_owned(), content));
            }
        }
        // One request per cancellation: a body maps each device to one message.
        for message in messages {
            if let Err(e) = send_to_device(cs, "m.room_key_request", vec![message]).await {
                tracing::debug!(error = %e, "could not cancel a key request");
            }
        }
    }
}

/// A room key that was kept, and the request it answered.
struct Kept {
    room_id: OwnedRoomId,
    session_id: String,
    request: Option<String>,
}
