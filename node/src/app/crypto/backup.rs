//! Server-side key backup of the device's Megolm sessions, as the spec defines it
//! (`m.megolm_backup.v1.curve25519-aes-sha2` over the room_keys API), so standard clients can
//! read what this device backs up and the other way round. It owns the recovery key format
//! (32 bytes, base58 with the `0x8B 0x01` prefix and a parity byte), the backup version this
//! device uploads to, uploading sessions not backed up yet, and restoring a backup with the
//! recovery key.
//!
//! The recovery key is the backup's curve25519 private key itself. It is shown to the user once;
//! the device keeps it only encrypted (with a key derived from its pickle key), and needs only
//! the public key to upload.

use std::collections::BTreeMap;
use std::fmt;

use hyphae_store::{CryptoWrite, InboundGroupSessionRow, KeyBackupRow};
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vodozemac::megolm::{
    ExportedSessionKey, InboundGroupSession, InboundGroupSessionPickle, SessionConfig,
};
use vodozemac::pk_encryption::{Message, PkDecryption, PkEncryption};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey, base64_encode};
use zeroize::Zeroizing;

use super::account::{MEGOLM, sign};
use super::megolm::InboundSession;
use super::util::{blocking, parallel_map};
use super::{Crypto, CryptoError};
use crate::app::cs::{ApiError, CsApi};

/// The backup algorithm of the spec this module implements.
pub(crate) const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
/// The recovery key's prefix (the spec's).
const PREFIX: [u8; 2] = [0x8B, 0x01];
/// Sessions per upload request: keeps a body far below the API's size limit.
const UPLOAD_BATCH: usize = 200;

/// Why a key backup operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyBackupError {
    #[error("the recovery key is malformed: {0}")]
    MalformedKey(&'static str),
    #[error("the recovery key does not match the current key backup (version {version})")]
    WrongKey { version: String },
    #[error("there is no key backup on the server")]
    NoBackup,
    #[error("the key backup uses an algorithm this client does not support: {0}")]
    UnsupportedAlgorithm(String),
    #[error("key backup: {0}")]
    Crypto(#[from] CryptoError),
}

impl From<ApiError> for KeyBackupError {
    fn from(e: ApiError) -> KeyBackupError {
        KeyBackupError::Crypto(CryptoError::Api(e))
    }
}

impl From<hyphae_store::StoreError> for KeyBackupError {
    fn from(e: hyphae_store::StoreError) -> KeyBackupError {
        KeyBackupError::Crypto(CryptoError::Store(e))
    }
}

/// A recovery key as shown to the user: base58 in groups of four. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKey(Zeroizing<String>);

impl RecoveryKey {
    /// The key in the spec's format, e.g. `EsTc 5rr1 4Jhp ...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A recovery key for `key`, for tests that need a valid key of another backup.
    #[cfg(test)]
    pub(crate) fn for_tests(key: &[u8; 32]) -> RecoveryKey {
        RecoveryKey::from_bytes(key)
    }

    fn from_bytes(key: &[u8; 32]) -> RecoveryKey {
        let mut bytes = Zeroizing::new(Vec::with_capacity(35));
        bytes.extend_from_slice(&PREFIX);
        bytes.extend_from_slice(key);
        let parity = bytes.iter().fold(0u8, |parity, b| parity ^ b);
        bytes.push(parity);
        let encoded = Zeroizing::new(bs58::encode(&*bytes).into_string());
        let mut grouped = String::with_capacity(encoded.len() + encoded.len() / 4);
        for (i, c) in encoded.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                grouped.push(' ');
            }
            grouped.push(c);
        }
        RecoveryKey(Zeroizing::new(grouped))
    }

    /// The 32 bytes of a recovery key as a user typed it (spaces anywhere).
    pub(crate) fn decode(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyBackupError> {
        let compact: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
        let bytes = Zeroizing::new(
            bs58::decode(compact.as_bytes())
                .into_vec()
                .map_err(|_| KeyBackupError::MalformedKey("not base58"))?,
        );
        if bytes.len() != PREFIX.len() + 32 + 1 {
            return Err(KeyBackupError::MalformedKey("wrong length"));
        }
        if bytes[..2] != PREFIX {
            return Err(KeyBackupError::MalformedKey("wrong prefix"));
        }
        if bytes.iter().fold(0u8, |parity, b| parity ^ b) != 0 {
            return Err(KeyBackupError::MalformedKey("wrong parity (a typo?)"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[2..34]);
        Ok(key)
    }
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

impl fmt::Display for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the device's key backup stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyBackupStatus {
    /// The backup version uploaded to; `None` when backup is off.
    pub version: Option<String>,
    /// Sessions in that version.
    pub backed_up: u64,
    /// Sessions not uploaded yet.
    pub pending: u64,
}

/// The backup version this device uploads to.
pub(super) struct ActiveBackup {
    version: String,
    public_key: Curve25519PublicKey,
}

/// What a restore imported.
pub(crate) struct Restored {
    /// The sessions decrypted from the backup.
    pub(crate) found: usize,
    /// (room, session id) of those that were new to this device, or better than its copy.
    pub(crate) imported: Vec<(OwnedRoomId, String)>,
    /// Entries that could not be decrypted or read.
    pub(crate) skipped: usize,
}

/// The device's backup version from the store, if it uploads to one.
pub(super) async fn load(
    store: &hyphae_store::Store,
    account_id: i64,
) -> Result<Option<ActiveBackup>, CryptoError> {
    let Some(row) = store.crypto_key_backup(account_id).await? else {
        return Ok(None);
    };
    match Curve25519PublicKey::from_base64(&row.public_key) {
        Ok(public_key) => Ok(Some(ActiveBackup {
            version: row.version,
            public_key,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "the stored key backup has an unreadable public key; backup is off");
            Ok(None)
        }
    }
}

/// The key the backup's private key is encrypted with at rest: one per backup key, so the
/// pickle's key-derived IV is never used twice for different plaintexts.
fn private_key_key(pickle_key: &[u8; 32], public_key: &str) -> Zeroizing<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update(b"hyphae app client: key backup private key");
    hash.update(pickle_key);
    hash.update(public_key.as_bytes());
    Zeroizing::new(hash.finalize().into())
}

impl Crypto {
    /// Starts a new backup version with a new recovery key, and uploads every session this
    /// device holds to it. A backup version kept before is replaced (the server keeps one
    /// current version; standard clients do the same when backup is reset).
    pub(crate) async fn enable_key_backup(
        &self,
        cs: &CsApi,
    ) -> Result<RecoveryKey, KeyBackupError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *secret).map_err(|e| CryptoError::Random(e.to_string()))?;
        let decryption = PkDecryption::from_key(Curve25519SecretKey::from_slice(&secret));
        let public_key = decryption.public_key();
        let auth_data = {
            let state = self.state();
            let mut auth_data = json!({ "public_key": public_key.to_base64() });
            sign(
                &state.account,
                self.inner.user_id.as_str(),
                self.inner.device_id.as_str(),
                &mut auth_data,
            )?;
            auth_data
        };
        let mut active = self.inner.backup.lock().await;
        let created: Value = cs
            .post(
                "/v3/room_keys/version",
                &json!({ "algorithm": BACKUP_ALGORITHM, "auth_data": auth_data }),
            )
            .await?;
        let Some(version) = created["version"].as_str().map(str::to_owned) else {
            return Err(CryptoError::Api(ApiError::Unreadable(
                "a new backup version without a version".into(),
            ))
            .into());
        };
        self.keep_backup(&decryption, &version).await?;
        *active = Some(ActiveBackup {
            version: version.clone(),
            public_key,
        });
        drop(active);
        tracing::info!(version, "key backup enabled");
        self.upload_pending_keys(cs).await?;
        Ok(RecoveryKey::from_bytes(&secret))
    }

    /// The current backup's private key, i.e. the recovery key's 32 bytes: what the identity
    /// kept on a backup server is sealed with. `None` when backup is off.
    pub(crate) async fn backup_secret(
        &self,
    ) -> Result<Option<Zeroizing<[u8; 32]>>, KeyBackupError> {
        let Some(row) = self
            .inner
            .store
            .crypto_key_backup(self.inner.account_id)
            .await?
        else {
            return Ok(None);
        };
        let key = private_key_key(self.pickle_key(), &row.public_key);
        let decryption = PkDecryption::from_libolm_pickle(&row.private_key, &*key)
            .map_err(|e| CryptoError::Worker(format!("unpickling the backup key: {e}")))?;
        let mut bytes = decryption.secret_key().to_bytes();
        let secret = Zeroizing::new(*bytes);
        zeroize::Zeroize::zeroize(&mut *bytes);
        Ok(Some(secret))
    }

    /// Stores the backup version and its keys (the private key encrypted).
    async fn keep_backup(
        &self,
        decryption: &PkDecryption,
        version: &str,
    ) -> Result<(), KeyBackupError> {
        let public_key = decryption.public_key().to_base64();
        let key = private_key_key(self.pickle_key(), &public_key);
        let private_key = decryption
            .to_libolm_pickle(&*key)
            .map_err(|e| CryptoError::Worker(format!("pickling the backup key: {e}")))?;
        self.inner
            .store
            .crypto_set_key_backup(
                self.inner.account_id,
                KeyBackupRow {
                    version: version.to_owned(),
                    public_key,
                    private_key,
                },
            )
            .await?;
        Ok(())
    }

    /// Uploads every session not in the backup yet; how many. Nothing to do when backup is off.
    /// When the server no longer has the version (deleted, or replaced by another device),
    /// backup is turned off here: the user must enable it again (a new recovery key).
    pub(crate) async fn upload_pending_keys(&self, cs: &CsApi) -> Result<usize, KeyBackupError> {
        // Held throughout, so two uploads never race over the same sessions.
        let active = self.inner.backup.lock().await;
        let Some(backup) = &*active else {
            return Ok(0);
        };
        let rows = self
            .inner
            .store
            .crypto_backup_pending(self.inner.account_id)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let pickle_key = Zeroizing::new(*self.pickle_key());
        let public_key = backup.public_key;
        let encrypted = blocking(move || {
            parallel_map(rows, |row| {
                let sealed = seal(&row, &pickle_key, public_key);
                (row, sealed)
            })
        })
        .await?;
        let mut uploaded = 0;
        let mut batch: Vec<(InboundGroupSessionRow, Value)> = Vec::new();
        let mut batches = Vec::new();
        for (row, sealed) in encrypted {
            match sealed {
                Ok(data) => batch.push((row, data)),
                Err(e) => {
                    tracing::warn!(room_id = row.room_id, session_id = row.session_id, error = %e, "a room key cannot be backed up; skipped");
                }
            }
            if batch.len() == UPLOAD_BATCH {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let path = format!(
            "/v3/room_keys/keys?version={}",
            crate::rooms::urlencode(&backup.version)
        );
        for batch in batches {
            let mut rooms: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
            for (row, data) in &batch {
                rooms
                    .entry(row.room_id.as_str())
                    .or_default()
                    .insert(row.session_id.clone(), data.clone());
            }
            let body = json!({
                "rooms": rooms
                    .into_iter()
                    .map(|(room, sessions)| (room.to_owned(), json!({ "sessions": sessions })))
                    .collect::<serde_json::Map<_, _>>(),
            });
            let answer: Result<Value, ApiError> = cs.put(&path, &body).await;
            if let Err(e) = answer {
                if matches!(
                    e.errcode(),
                    Some("M_WRONG_ROOM_KEYS_VERSION") | Some("M_NOT_FOUND")
                ) {
                    tracing::warn!(version = backup.version, error = %e, "the key backup version is gone from the server; key backup is off");
                    drop(active);
                    self.disable_key_backup().await?;
                }
                return Err(e.into());
            }
            uploaded += batch.len();
            self.inner
                .store
                .crypto_mark_backed_up(
                    self.inner.account_id,
                    batch
                        .into_iter()
                        .map(|(row, _)| (row.room_id, row.session_id, row.first_known_index))
                        .collect(),
                )
                .await?;
        }
        tracing::debug!(uploaded, version = backup.version, "room keys backed up");
        Ok(uploaded)
    }

    /// Stops uploading (the server's version is gone).
    async fn disable_key_backup(&self) -> Result<(), KeyBackupError> {
        let mut active = self.inner.backup.lock().await;
        self.inner
            .store
            .crypto_clear_key_backup(self.inner.account_id)
            .await?;
        *active = None;
        Ok(())
    }

    /// The backup version uploaded to, and how many sessions are in it or still pending.
    pub(crate) async fn key_backup_status(&self) -> Result<KeyBackupStatus, KeyBackupError> {
        let version = self
            .inner
            .backup
            .lock()
            .await
            .as_ref()
            .map(|b| b.version.clone());
        let (backed_up, pending) = self
            .inner
            .store
            .crypto_backup_counts(self.inner.account_id)
            .await?;
        Ok(match version {
            Some(version) => KeyBackupStatus {
                version: Some(version),
                backed_up,
                pending,
            },
            None => KeyBackupStatus {
                version: None,
                backed_up: 0,
                pending: backed_up + pending,
            },
        })
    }

    /// Restores the server's current backup with `recovery_key`: checks the key against the
    /// version's public key first (a wrong key changes nothing), then downloads, decrypts and
    /// imports every session (an entry that does not decrypt is skipped with a warning). This
    /// device then uploads its own sessions to the same version.
    pub(crate) async fn restore_key_backup(
        &self,
        cs: &CsApi,
        recovery_key: &str,
    ) -> Result<Restored, KeyBackupError> {
        let secret = RecoveryKey::decode(recovery_key)?;
        let decryption = PkDecryption::from_key(Curve25519SecretKey::from_slice(&secret));
        let info: Value = match cs.get("/v3/room_keys/version").await {
            Ok(info) => info,
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => return Err(KeyBackupError::NoBackup),
            Err(e) => return Err(e.into()),
        };
        let version = info["version"].as_str().unwrap_or_default().to_owned();
        let algorithm = info["algorithm"].as_str().unwrap_or_default();
        if algorithm != BACKUP_ALGORITHM {
            return Err(KeyBackupError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let public_key = info["auth_data"]["public_key"]
            .as_str()
            .and_then(|k| Curve25519PublicKey::from_base64(k).ok());
        if public_key != Some(decryption.public_key()) {
            return Err(KeyBackupError::WrongKey { version });
        }
        let backup_key = decryption.public_key().to_base64();
        let keys: Value = cs
            .get(&format!(
                "/v3/room_keys/keys?version={}",
                crate::rooms::urlencode(&version)
            ))
            .await?;
        let mut entries = Vec::new();
        for (room_id, room) in keys["rooms"].as_object().into_iter().flatten() {
            for (session_id, data) in room["sessions"].as_object().into_iter().flatten() {
                entries.push((room_id.clone(), session_id.clone(), data.clone()));
            }
        }
        let total = entries.len();
        let workers = PkDecryption::from_key(Curve25519SecretKey::from_slice(&secret));
        let opened = blocking(move || {
            parallel_map(entries, |(room_id, session_id, data)| {
                let opened = open(&workers, &room_id, &session_id, &data);
                (room_id, session_id, opened)
            })
        })
        .await?;
        let mut sessions = Vec::with_capacity(opened.len());
        for (room_id, session_id, opened) in opened {
            match opened {
                Ok(session) => sessions.push(session),
                Err(e) => {
                    tracing::warn!(room_id, session_id, error = %e, "a backed-up room key cannot be read; skipped");
                }
            }
        }
        let found = sessions.len();
        for session in &sessions {
            self.load_inbound(&session.room_id, &session.session.session_id())
                .await?;
        }
        let mut write = CryptoWrite::default();
        let mut imported = Vec::new();
        {
            let mut state = self.state();
            for opened in sessions {
                let mut chain = opened.forwarding_chain;
                // The backup handed the key over: it counts as forwarded (by the backup's key),
                // never as received from its creator.
                chain.push(backup_key.clone());
                let session_id = opened.session.session_id();
                let session = InboundSession::new(
                    opened.session,
                    opened.sender_key,
                    opened.signing_key,
                    None,
                    chain,
                );
                if self.add_inbound(&mut state, &opened.room_id, session, &mut write) {
                    imported.push((opened.room_id, session_id));
                }
            }
        }
        let marks: Vec<(String, String, i64)> = write
            .inbound_group_sessions
            .iter()
            .map(|r| (r.room_id.clone(), r.session_id.clone(), r.first_known_index))
            .collect();
        self.write(write).await?;
        // From now on this device backs up to the version it restored, and what it just
        // imported is in there already.
        {
            let mut active = self.inner.backup.lock().await;
            self.keep_backup(&decryption, &version).await?;
            self.inner
                .store
                .crypto_mark_backed_up(self.inner.account_id, marks)
                .await?;
            *active = Some(ActiveBackup {
                version: version.clone(),
                public_key: decryption.public_key(),
            });
        }
        tracing::info!(
            version,
            found,
            imported = imported.len(),
            skipped = total - found,
            "key backup restored"
        );
        Ok(Restored {
            found,
            imported,
            skipped: total - found,
        })
    }
}

/// A session read from a backup.
struct Opened {
    room_id: OwnedRoomId,
    session: InboundGroupSession,
    sender_key: String,
    signing_key: String,
    forwarding_chain: Vec<String>,
}

/// Why one backed-up session could not be read or written.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("{0}")]
    Malformed(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(#[from] vodozemac::pk_encryption::Error),
    #[error("the stored session cannot be read: {0}")]
    Pickle(#[from] vodozemac::PickleError),
}

/// One session as a backup entry (`KeyBackupData`), its key encrypted to the backup's key.
fn seal(
    row: &InboundGroupSessionRow,
    pickle_key: &[u8; 32],
    backup_key: Curve25519PublicKey,
) -> Result<Value, EntryError> {
    let pickle = InboundGroupSessionPickle::from_encrypted(&row.pickle, pickle_key)?;
    let session = InboundGroupSession::from_pickle(pickle);
    let chain: Vec<String> = serde_json::from_str(&row.forwarding_chain).unwrap_or_default();
    let plaintext = Zeroizing::new(
        json!({
            "algorithm": MEGOLM,
            "forwarding_curve25519_key_chain": chain,
            "sender_key": row.sender_key,
            "sender_claimed_keys": { "ed25519": row.signing_key },
            "session_key": session.export_at_first_known_index().to_base64(),
        })
        .to_string(),
    );
    let message = PkEncryption::from_key(backup_key)
        .encrypt(plaintext.as_bytes())
        .map_err(|e| EntryError::Malformed(format!("encrypting: {e}")))?;
    Ok(json!({
        "first_message_index": session.first_known_index(),
        "forwarded_count": chain.len(),
        // No device verification here (no cross-signing): nothing is claimed verified.
        "is_verified": false,
        "session_data": {
            "ephemeral": message.ephemeral_key.to_base64(),
            "ciphertext": base64_encode(&message.ciphertext),
            "mac": base64_encode(&message.mac),
        },
    }))
}

/// Decrypts one backup entry into a session, checked against the room and session id the
/// server filed it under.
fn open(
    decryption: &PkDecryption,
    room_id: &str,
    session_id: &str,
    data: &Value,
) -> Result<Opened, EntryError> {
    let room_id = RoomId::parse(room_id).map_err(|e| EntryError::Malformed(e.to_string()))?;
    let session_data = &data["session_data"];
    let (Some(ciphertext), Some(mac), Some(ephemeral)) = (
        session_data["ciphertext"].as_str(),
        session_data["mac"].as_str(),
        session_data["ephemeral"].as_str(),
    ) else {
        return Err(EntryError::Malformed("incomplete session_data".into()));
    };
    let message = Message::from_base64(ciphertext, mac, ephemeral)
        .map_err(|e| EntryError::Malformed(e.to_string()))?;
    let plaintext = Zeroizing::new(decryption.decrypt(&message)?);
    let payload: Value =
        serde_json::from_slice(&plaintext).map_err(|e| EntryError::Malformed(e.to_string()))?;
    if payload["algorithm"].as_str() != Some(MEGOLM) {
        return Err(EntryError::Malformed(format!(
            "algorithm {}",
            payload["algorithm"]
        )));
    }
    let (Some(session_key), Some(sender_key), Some(signing_key)) = (
        payload["session_key"].as_str(),
        payload["sender_key"].as_str(),
        payload["sender_claimed_keys"]["ed25519"].as_str(),
    ) else {
        return Err(EntryError::Malformed(
            "no session_key, sender_key or claimed ed25519 key".into(),
        ));
    };
    let key = ExportedSessionKey::from_base64(session_key)
        .map_err(|e| EntryError::Malformed(e.to_string()))?;
    let session = InboundGroupSession::import(&key, SessionConfig::version_1());
    // The server chose where to file it: a key under another session's id would be wrong.
    if session.session_id() != session_id {
        return Err(EntryError::Malformed(
            "the key is not the session it is filed under".into(),
        ));
    }
    let forwarding_chain = payload["forwarding_curve25519_key_chain"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    Ok(Opened {
        room_id,
        session,
        sender_key: sender_key.to_owned(),
        signing_key: signing_key.to_owned(),
        forwarding_chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_key_round_trips_and_typos_are_caught() {
        let secret = [7u8; 32];
        let key = RecoveryKey::from_bytes(&secret);
        // The spec's format: 35 bytes in base58 start with "Es", grouped by four.
        assert!(key.as_str().starts_with("Es"), "{key}");
        assert!(key.as_str().split(' ').all(|g| g.len() <= 4));
        assert_eq!(*RecoveryKey::decode(key.as_str()).unwrap(), secret);
        assert_eq!(
            *RecoveryKey::decode(&key.as_str().replace(' ', "")).unwrap(),
            secret
        );
        assert_eq!(format!("{key:?}"), "RecoveryKey(..)");

        // One character changed: the parity (or base58) catches it.
        let mut typo: Vec<char> = key.as_str().chars().collect();
        typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(
            RecoveryKey::decode(&typo),
            Err(KeyBackupError::MalformedKey(_))
        ));
        assert!(matches!(
            RecoveryKey::decode("not a key"),
            Err(KeyBackupError::MalformedKey(_))
        ));
        assert!(matches!(
            RecoveryKey::decode("EsTc"),
            Err(KeyBackupError::MalformedKey(_))
        ));
    }

    /// The recovery key test vector of matrix-rust-sdk (`backups/keys/decryption.rs`): the same
    /// 32 bytes give the same text, so keys are interchangeable with standard clients.
    #[test]
    fn the_recovery_key_format_matches_matrix_rust_sdk() {
        const TEST_KEY: [u8; 32] = [
            0x77, 0x07, 0x6D, 0x0A, 0x73, 0x18, 0xA5, 0x7D, 0x3C, 0x16, 0xC1, 0x72, 0x51, 0xB2,
            0x66, 0x45, 0xDF, 0x4C, 0x2F, 0x87, 0xEB, 0xC0, 0x99, 0x2A, 0xB1, 0x77, 0xFB, 0xA5,
            0x1D, 0xB9, 0x2C, 0x2A,
        ];
        let text = "EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d";
        assert_eq!(RecoveryKey::from_bytes(&TEST_KEY).as_str(), text);
        assert_eq!(*RecoveryKey::decode(text).unwrap(), TEST_KEY);
        assert!(RecoveryKey::decode(&text.replace("UE4d", "UE4e")).is_err());
    }

    /// A backup entry a standard client (Element, via matrix-rust-sdk's test vector) uploaded
    /// opens here.
    #[test]
    fn a_standard_clients_backup_entry_opens() {
        let secret: [u8; 32] =
            vodozemac::base64_decode("Ha9cklU/9NqFo9WKdVfGzmqUL/9wlkdxfEitbSIPVXw")
                .unwrap()
                .try_into()
                .unwrap();
        let decryption = PkDecryption::from_key(Curve25519SecretKey::from_slice(&secret));
        let data = json!({
            "first_message_index": 0,
            "forwarded_count": 0,
            "is_verified": false,
            "session_data": {
                "ephemeral": "HlLi76oV6wxHz3PCqE/bxJi6yF1HnYz5Dq3T+d/KpRw",
                "ciphertext": concat!(
                    "MuM8E3Yc6TSAvhVGb77rQ++jE6p9dRepx63/3YPD2wACKAppkZHeFrnTH6wJ/HSyrmzo",
                    "7HfwqVl6tKNpfooSTHqUf6x1LHz+h4B/Id5ITO1WYt16AaI40LOnZqTkJZCfSPuE2oxa",
                    "lwEHnCS3biWybutcnrBFPR3LMtaeHvvkb+k3ny9l5ZpsU9G7vCm3XoeYkWfLekWXvDhb",
                    "qWrylXD0+CNUuaQJ/S527TzLd4XKctqVjjO/cCH7q+9utt9WJAfK8LGaWT/mZ3AeWjf5",
                    "kiqOpKKf5Cn4n5SSil5p/pvGYmjnURvZSEeQIzHgvunIBEPtzK/MYEPOXe/P5achNGlC",
                    "x+5N19Ftyp9TFaTFlTWCTi0mpD7ePfCNISrwpozAz9HZc0OhA8+1aSc7rhYFIeAYXFU3",
                    "26NuFIFHI5pvpSxjzPQlOA+mavIKmiRAtjlLw11IVKTxgrdT4N8lXeMr4ndCSmvIkAzF",
                    "Mo1uZA4fzjiAdQJE4/2WeXFNNpvdfoYmX8Zl9CAYjpSO5HvpwkAbk4/iLEH3hDfCVUwD",
                    "fMh05PdGLnxeRpiEFWSMSsJNp+OWAA+5JsF41BoRGrxoXXT+VKqlUDONd+O296Psu8Q+",
                    "d8/S618",
                ),
                "mac": "GtMrurhDTwo",
            },
        });
        // The session id it must be filed under: the one its key makes.
        let session_data = &data["session_data"];
        let message = Message::from_base64(
            session_data["ciphertext"].as_str().unwrap(),
            session_data["mac"].as_str().unwrap(),
            session_data["ephemeral"].as_str().unwrap(),
        )
        .unwrap();
        let payload: Value =
            serde_json::from_slice(&decryption.decrypt(&message).unwrap()).unwrap();
        let key =
            ExportedSessionKey::from_base64(payload["session_key"].as_str().unwrap()).unwrap();
        let session_id = InboundGroupSession::import(&key, SessionConfig::version_1()).session_id();

        let opened = open(&decryption, "!room:example.org", &session_id, &data).unwrap();
        assert_eq!(opened.session.session_id(), session_id);
        assert_eq!(opened.sender_key, payload["sender_key"].as_str().unwrap());
    }

    #[test]
    fn a_sealed_session_opens_with_the_backup_key_only() {
        let outbound = vodozemac::megolm::GroupSession::new(SessionConfig::version_1());
        let inbound = InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
        let pickle_key = [1u8; 32];
        let row = InboundGroupSessionRow {
            room_id: "!r:x".into(),
            session_id: inbound.session_id(),
            sender_key: "curve".into(),
            signing_key: "ed".into(),
            sender_user: None,
            first_known_index: 0,
            forwarding_chain: "[]".into(),
            pickle: inbound.pickle().encrypt(&pickle_key),
            received_ms: 0,
        };
        let backup = PkDecryption::new();
        let sealed = seal(&row, &pickle_key, backup.public_key()).unwrap();
        assert_eq!(sealed["first_message_index"], 0);
        let opened = open(&backup, "!r:x", &row.session_id, &sealed).unwrap();
        assert_eq!(opened.session.session_id(), row.session_id);
        assert_eq!(
            (opened.sender_key.as_str(), opened.signing_key.as_str()),
            ("curve", "ed")
        );
        assert!(open(&PkDecryption::new(), "!r:x", &row.session_id, &sealed).is_err());
        assert!(open(&backup, "!r:x", "another", &sealed).is_err());
    }
}
