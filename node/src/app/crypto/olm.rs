//! Olm (`m.olm.v1.curve25519-aes-sha2`) between this device and others: sessions per peer
//! identity key, set up from claimed one-time keys, encryption for many devices at once (spread
//! over the cores), and decryption of to-device messages as the spec describes (known sessions
//! first, a new inbound session only for a pre-key message that matches none).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use hyphae_store::{CryptoWrite, OlmSessionRow};
use ruma::events::room::encrypted::{
    CiphertextInfo, EncryptedEventScheme, OlmV1Curve25519AesSha2Content,
    ToDeviceRoomEncryptedEventContent,
};
use ruma::{OwnedDeviceId, OwnedUserId, UInt};
use serde_json::{Value, json};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, base64_encode};

use super::account::SIGNED_CURVE25519;
use super::devices::{Device, FEDERATION_TIMEOUT_MS};
use super::util::{blocking, now_ms, parallel_map, verify_signed};
use super::{Crypto, CryptoError, State};
use crate::app::cs::CsApi;

/// How long a device whose server could not be reached is not asked for a key again.
const CLAIM_BACKOFF: Duration = Duration::from_secs(60);
/// At most one new session per peer and hour to repair a broken one (the spec's advice).
const UNWEDGE_INTERVAL: Duration = Duration::from_secs(3600);

/// An Olm session with a peer.
pub(super) struct OlmSession {
    pub(super) session: Session,
    pub(super) id: String,
    pub(super) created_ms: i64,
    /// Creation or last successful decryption; the newest is the one to encrypt with.
    pub(super) last_used_ms: i64,
}

impl OlmSession {
    fn row(&self, sender_key: String, pickle_key: &[u8; 32]) -> OlmSessionRow {
        OlmSessionRow {
            sender_key,
            session_id: self.id.clone(),
            pickle: self.session.pickle().encrypt(pickle_key),
            created_ms: self.created_ms,
            last_used_ms: self.last_used_ms,
        }
    }
}

/// What to do for one target device.
enum Job {
    /// Encrypt with this existing session.
    Existing(Device, Box<OlmSession>),
    /// Start a session from this claimed one-time key (its signed JSON).
    New(Device, Value),
}

/// One device's result: the session (to keep) and the message.
struct Done {
    device: Device,
    session: Box<OlmSession>,
    row: OlmSessionRow,
    message: OlmMessage,
}

/// Why one decryption failed (logged; the event is dropped).
#[derive(Debug, thiserror::Error)]
pub(super) enum OlmFailure {
    #[error("no session with the sender decrypts it, and it is not a pre-key message")]
    NoSession,
    #[error("the matching session failed to decrypt it: {0}")]
    Decrypt(#[from] vodozemac::olm::DecryptionError),
    #[error("a new session could not be made from it: {0}")]
    Create(#[from] vodozemac::olm::SessionCreationError),
}

impl Crypto {
    /// Loads the stored Olm sessions of the peers `keys` (curve25519, base64) not loaded yet.
    /// Hold the olm lock.
    pub(super) async fn load_olm_sessions(&self, keys: &[String]) -> Result<(), CryptoError> {
        let missing: Vec<String> = {
            let state = self.state();
            let unique: HashSet<&String> = keys.iter().collect();
            unique
                .into_iter()
                .filter(|k| !state.olm_sessions.contains_key(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let rows = self
            .inner
            .store
            .crypto_olm_sessions(self.inner.account_id, missing.clone())
            .await?;
        let pickle_key = *self.pickle_key();
        let sessions = blocking(move || {
            parallel_map(rows, |row| {
                let pickle = SessionPickle::from_encrypted(&row.pickle, &pickle_key)?;
                Ok::<_, vodozemac::PickleError>((
                    row.sender_key,
                    OlmSession {
                        session: Session::from_pickle(pickle),
                        id: row.session_id,
                        created_ms: row.created_ms,
                        last_used_ms: row.last_used_ms,
                    },
                ))
            })
        })
        .await?;
        let mut state = self.state();
        for key in missing {
            state.olm_sessions.entry(key).or_default();
        }
        for session in sessions {
            let (key, session) = session?;
            let list = state.olm_sessions.entry(key).or_default();
            if !list.iter().any(|s| s.id == session.id) {
                list.push(session);
            }
        }
        Ok(())
    }

    /// Olm-encrypts the event `event_type`/`content` for each of `targets`, with its newest
    /// session, or a new one from a claimed one-time key (always a new one with `fresh`). The
    /// sessions' new states are committed, together with `extra`, before this returns the
    /// to-device contents. Devices no session could be made with are left out (logged).
    pub(super) async fn olm_encrypt(
        &self,
        cs: &CsApi,
        targets: Vec<Device>,
        event_type: &str,
        content: &Value,
        fresh: bool,
        extra: CryptoWrite,
    ) -> Result<Vec<(Device, Value)>, CryptoError> {
        let keys: Vec<String> = targets.iter().map(|d| d.curve25519.to_base64()).collect();
        let olm = self.inner.olm.lock().await;
        self.load_olm_sessions(&keys).await?;
        let now = Instant::now();
        let to_claim: Vec<Device> = {
            let mut state = self.state();
            state
                .claim_failures
                .retain(|_, at| now.duration_since(*at) < CLAIM_BACKOFF);
            targets
                .iter()
                .filter(|d| {
                    fresh
                        || state
                            .olm_sessions
                            .get(&d.curve25519.to_base64())
                            .is_none_or(Vec::is_empty)
                })
                .filter(|d| {
                    !state
                        .claim_failures
                        .contains_key(&(d.user_id.clone(), d.device_id.clone()))
                })
                .cloned()
                .collect()
        };
        // Not holding the lock while other servers are asked (up to the federation timeout):
        // incoming to-device messages go on being decrypted meanwhile. A device that got a
        // session from elsewhere in the meantime gets a new one from its claimed key.
        drop(olm);
        let mut claimed = if to_claim.is_empty() {
            HashMap::new()
        } else {
            self.claim_one_time_keys(cs, &to_claim).await?
        };
        let _olm = self.inner.olm.lock().await;
        // Loaded sessions stay loaded, but a failed run may have dropped some.
        self.load_olm_sessions(&keys).await?;
        let claiming: HashSet<(OwnedUserId, OwnedDeviceId)> = to_claim
            .into_iter()
            .map(|d| (d.user_id, d.device_id))
            .collect();
        // The jobs, with the sessions to use taken out of the state until they are done.
        let (jobs, account) = {
            let mut state = self.state();
            let mut jobs = Vec::with_capacity(targets.len());
            for device in targets {
                let id = (device.user_id.clone(), device.device_id.clone());
                if claiming.contains(&id) {
                    if let Some(key) = claimed.remove(&id) {
                        jobs.push(Job::New(device, key));
                    } else {
                        tracing::debug!(user_id = %device.user_id, device_id = %device.device_id,
                            "no one-time key for the device; it gets nothing this time");
                    }
                    continue;
                }
                let list = state
                    .olm_sessions
                    .entry(device.curve25519.to_base64())
                    .or_default();
                let newest =
                    (0..list.len()).max_by_key(|&i| (list[i].last_used_ms, list[i].created_ms));
                match newest {
                    Some(i) => jobs.push(Job::Existing(device, Box::new(list.swap_remove(i)))),
                    None => tracing::debug!(device_id = %device.device_id, "no Olm session"),
                }
            }
            // A copy of the account for the workers (creating outbound sessions only reads it),
            // so the state is not locked while they run.
            (jobs, Account::from_pickle(state.account.pickle()))
        };
        let payload = PayloadTemplate::new(self, event_type, content)?;
        let pickle_key = *self.pickle_key();
        let taken: Vec<String> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Existing(device, _) => Some(device.curve25519.to_base64()),
                Job::New(..) => None,
            })
            .collect();
        let results = blocking(move || {
            parallel_map(jobs, |job| run_job(&account, &payload, &pickle_key, job))
        })
        .await;
        let results = match results {
            Ok(results) => results,
            Err(e) => {
                // The sessions taken out went with the failed workers: reload them from the
                // store next time.
                let mut state = self.state();
                for key in taken {
                    state.olm_sessions.remove(&key);
                }
                return Err(e);
            }
        };
        let mut write = extra;
        let mut out = Vec::with_capacity(results.len());
        let own_key = self.curve25519_key();
        {
            let mut state = self.state();
            for result in results {
                match result {
                    Ok(Done {
                        device,
                        session,
                        row,
                        message,
                    }) => {
                        let (message_type, body) = message.to_parts();
                        let peer_key = device.curve25519.to_base64();
                        state
                            .olm_sessions
                            .entry(peer_key.clone())
                            .or_default()
                            .push(*session);
                        write.olm_sessions.push(row);
                        let ciphertext = [(
                            peer_key,
                            CiphertextInfo::new(
                                base64_encode(body),
                                UInt::from(message_type as u32),
                            ),
                        )]
                        .into();
                        let content = ToDeviceRoomEncryptedEventContent::new(
                            EncryptedEventScheme::OlmV1Curve25519AesSha2(
                                OlmV1Curve25519AesSha2Content::new(ciphertext, own_key.clone()),
                            ),
                        );
                        out.push((device, serde_json::to_value(content)?));
                    }
                    Err(failed) => {
                        let Failed {
                            device,
                            session,
                            reason,
                        } = *failed;
                        if let Some(session) = session {
                            state
                                .olm_sessions
                                .entry(device.curve25519.to_base64())
                                .or_default()
                                .push(*session);
                        }
                        tracing::warn!(user_id = %device.user_id, device_id = %device.device_id,
                            reason, "could not encrypt for a device");
                    }
                }
            }
        }
        // Committed before any of these ciphertexts can leave.
        self.write(write).await?;
        Ok(out)
    }

    /// Claims a one-time key for each device (one keys/claim call); devices of servers that
    /// could not be reached are not asked again for a while.
    async fn claim_one_time_keys(
        &self,
        cs: &CsApi,
        devices: &[Device],
    ) -> Result<HashMap<(OwnedUserId, OwnedDeviceId), Value>, CryptoError> {
        let mut wanted: serde_json::Map<String, Value> = serde_json::Map::new();
        for d in devices {
            if let Value::Object(by_device) = wanted
                .entry(d.user_id.to_string())
                .or_insert_with(|| json!({}))
            {
                by_device.insert(d.device_id.to_string(), SIGNED_CURVE25519.into());
            }
        }
        let mut response: Value = cs
            .post(
                "/v3/keys/claim",
                &json!({ "one_time_keys": wanted, "timeout": FEDERATION_TIMEOUT_MS }),
            )
            .await?;
        let failed_servers: HashSet<String> = response["failures"]
            .as_object()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        let mut claimed = HashMap::new();
        let mut state = self.state();
        for d in devices {
            let keys = response["one_time_keys"][d.user_id.as_str()][d.device_id.as_str()].take();
            let key = keys.as_object().and_then(|keys| {
                keys.iter()
                    .find(|(id, _)| id.starts_with(&format!("{SIGNED_CURVE25519}:")))
                    .map(|(_, key)| key.clone())
            });
            match key {
                Some(key) => {
                    claimed.insert((d.user_id.clone(), d.device_id.clone()), key);
                }
                None if failed_servers.contains(d.user_id.server_name().as_str()) => {
                    state
                        .claim_failures
                        .insert((d.user_id.clone(), d.device_id.clone()), Instant::now());
                }
                None => {}
            }
        }
        Ok(claimed)
    }

    /// Decrypts an Olm message from the peer `sender_key` as the spec says: a session that
    /// decrypts it, else (a pre-key message only) a new inbound session, which uses up the
    /// one-time key. The changed session (and account) go into `write`.
    pub(super) fn olm_decrypt(
        &self,
        state: &mut State,
        sender_key: Curve25519PublicKey,
        message: &OlmMessage,
        write: &mut CryptoWrite,
    ) -> Result<Vec<u8>, OlmFailure> {
        let key = sender_key.to_base64();
        let now = now_ms();
        let sessions = state.olm_sessions.entry(key.clone()).or_default();
        // The most recently used first: the likeliest to match.
        sessions.sort_by_key(|s| std::cmp::Reverse((s.last_used_ms, s.created_ms)));
        for session in sessions.iter_mut() {
            if let OlmMessage::PreKey(m) = message
                && m.session_id() != session.id
            {
                continue;
            }
            match session.session.decrypt(message) {
                Ok(plaintext) => {
                    session.last_used_ms = now;
                    write.olm_sessions.push(session.row(key, self.pickle_key()));
                    return Ok(plaintext);
                }
                // A pre-key message for a session that exists but fails: not a new session.
                Err(e) if matches!(message, OlmMessage::PreKey(_)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        let OlmMessage::PreKey(m) = message else {
            return Err(OlmFailure::NoSession);
        };
        let created =
            state
                .account
                .create_inbound_session(SessionConfig::version_1(), sender_key, m)?;
        let session = OlmSession {
            id: created.session.session_id(),
            session: created.session,
            created_ms: now,
            last_used_ms: now,
        };
        write
            .olm_sessions
            .push(session.row(key.clone(), self.pickle_key()));
        write.account = Some(state.account.pickle().encrypt(self.pickle_key()));
        state.olm_sessions.entry(key).or_default().push(session);
        Ok(created.plaintext)
    }

    /// After a message from a known device that no session could decrypt: a new session to it
    /// with an `m.dummy` message, so its next messages use a working one (at most hourly).
    pub(super) async fn unwedge(&self, cs: &CsApi, devices: Vec<Device>) {
        let devices: Vec<Device> = {
            let mut state = self.state();
            let now = Instant::now();
            state
                .unwedged
                .retain(|_, at| now.duration_since(*at) < UNWEDGE_INTERVAL);
            devices
                .into_iter()
                .filter(|d| {
                    state
                        .unwedged
                        .insert(d.curve25519.to_base64(), now)
                        .is_none()
                })
                .collect()
        };
        if devices.is_empty() {
            return;
        }
        let sent = async {
            let contents = self
                .olm_encrypt(
                    cs,
                    devices,
                    "m.dummy",
                    &json!({}),
                    true,
                    CryptoWrite::default(),
                )
                .await?;
            let messages = contents
                .into_iter()
                .map(|(d, content)| (d.user_id.to_string(), d.device_id.to_string(), content))
                .collect();
            super::util::send_to_device(cs, "m.room.encrypted", messages).await
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "could not send new Olm sessions to repair broken ones");
        }
    }
}

/// The Olm payload for every recipient: the same but for the recipient's ids and key.
pub(super) struct PayloadTemplate {
    /// `{"content":…,"keys":{"ed25519":…},"recipient":` (keys in canonical order)
    head: String,
    /// `,"sender":…,"sender_device":…,"type":…}`
    tail: String,
}

impl PayloadTemplate {
    fn new(
        crypto: &Crypto,
        event_type: &str,
        content: &Value,
    ) -> Result<PayloadTemplate, CryptoError> {
        let head = format!(
            r#"{{"content":{},"keys":{{"ed25519":{}}},"recipient":"#,
            serde_json::to_string(content)?,
            serde_json::to_string(&crypto.ed25519_key())?,
        );
        let tail = format!(
            r#","sender":{},"sender_device":{},"type":{}}}"#,
            serde_json::to_string(crypto.inner.user_id.as_str())?,
            serde_json::to_string(crypto.inner.device_id.as_str())?,
            serde_json::to_string(event_type)?,
        );
        Ok(PayloadTemplate { head, tail })
    }

    fn for_device(&self, device: &Device) -> String {
        format!(
            r#"{}{},"recipient_keys":{{"ed25519":"{}"}}{}"#,
            self.head,
            Value::from(device.user_id.as_str()),
            device.ed25519.to_base64(),
            self.tail,
        )
    }
}

/// Why one device got nothing, with its session if it had one (kept for next time).
struct Failed {
    device: Device,
    session: Option<Box<OlmSession>>,
    reason: String,
}

impl Failed {
    fn new(device: Device, reason: impl Into<String>) -> Box<Failed> {
        Box::new(Failed {
            device,
            session: None,
            reason: reason.into(),
        })
    }
}

/// One device's Olm work, on a worker: set up the session if needed (checking the one-time
/// key's signature), encrypt, pickle.
fn run_job(
    account: &Account,
    payload: &PayloadTemplate,
    pickle_key: &[u8; 32],
    job: Job,
) -> Result<Done, Box<Failed>> {
    let (device, mut session) = match job {
        Job::Existing(device, session) => (device, session),
        Job::New(device, key) => {
            if !verify_signed(
                &key,
                device.user_id.as_str(),
                device.device_id.as_str(),
                &device.ed25519,
            ) {
                return Err(Failed::new(device, "the one-time key's signature is wrong"));
            }
            let Some(one_time_key) = key["key"]
                .as_str()
                .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
            else {
                return Err(Failed::new(
                    device,
                    "the one-time key is not a curve25519 key",
                ));
            };
            let session = match account.create_outbound_session(
                SessionConfig::version_1(),
                device.curve25519,
                one_time_key,
            ) {
                Ok(session) => session,
                Err(e) => return Err(Failed::new(device, e.to_string())),
            };
            let now = now_ms();
            let session = Box::new(OlmSession {
                id: session.session_id(),
                session,
                created_ms: now,
                last_used_ms: now,
            });
            (device, session)
        }
    };
    let message = match session.session.encrypt(payload.for_device(&device)) {
        Ok(message) => message,
        Err(e) => {
            return Err(Box::new(Failed {
                device,
                session: Some(session),
                reason: e.to_string(),
            }));
        }
    };
    let row = session.row(device.curve25519.to_base64(), pickle_key);
    Ok(Done {
        device,
        session,
        row,
        message,
    })
}
