//! The device's identity on its backup server, for restoring onto a new device (ARCHITECTURE.md
//! "Backup server and mailbox"): what the new device needs to become the same server and the same
//! app device, sealed with a key derived from the recovery key, and kept under a lookup id derived
//! from the recovery key too.
//!
//! The new device has no identity yet, so it cannot authenticate as the subscriber: it asks for
//! the blob by lookup id. Whoever has the lookup id gets only ciphertext, and without the
//! recovery key the 256-bit id cannot be guessed. The server never sees the recovery key (only
//! a one-way hash of it) nor the plaintext.
//!
//! Blob: JSON `{"algorithm": "io.hyphae.identity.v1.aes-256-gcm", "nonce", "ciphertext"}`
//! (unpadded base64),
//! AES-256-GCM with key SHA-256("hyphae identity blob key v1" || recovery key bytes) and the
//! lookup id as associated data (so a server cannot pass one blob off under another id). The
//! plaintext is [`IdentityBlob`] as JSON.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use ruma::OwnedServerName;
use ruma::api::error::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vodozemac::{base64_decode, base64_encode};
use zeroize::Zeroizing;

use super::{BackupError, IDENTITY_PATH};
use crate::client_api::MatrixError;
use crate::federation::Origin;
use crate::node::AppState;

const ALGORITHM: &str = "io.hyphae.identity.v1.aes-256-gcm";
/// The largest sealed blob a backup server keeps (it holds the key backup's entries too); below
/// the transport's 8 MiB request cap, so the answer is this clear refusal rather than a 413.
pub(crate) const MAX_BLOB: usize = 6 << 20;

/// What a new device needs to be this device again.
#[derive(Serialize, Deserialize)]
pub(crate) struct IdentityBlob {
    /// The server name the secret gives, checked after decrypting.
    pub(crate) server_name: String,
    /// The node's 32-byte ed25519 identity secret, hex.
    pub(crate) identity_secret: String,
    /// The owner's localpart.
    pub(crate) localpart: String,
    /// The app client's device id: kept, so other servers' device lists stay valid.
    pub(crate) device_id: String,
    /// The app client's Olm account as stored (encrypted with the pickle key, which derives from
    /// the identity secret): the same device keys, which others have pinned under this device id.
    pub(crate) account_pickle: Option<String>,
    /// The room-key backup as the device's own server kept it (entries encrypted to the backup
    /// key by the spec's algorithm): it lived in the lost data folder too.
    pub(crate) key_backup: Option<KeyBackupSnapshot>,
    /// Which sealing of this device's identity this is (the device counts them), and when it
    /// was sealed (ms since the epoch): a server can keep serving an older blob, so a restore
    /// reports them. 0 in blobs sealed before they were counted.
    #[serde(default)]
    pub(crate) sealed_version: u64,
    #[serde(default)]
    pub(crate) sealed_ms: u64,
}

impl Drop for IdentityBlob {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.identity_secret);
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyBackupSnapshot {
    /// `{"algorithm", "auth_data"}` as JSON, as the version was created.
    pub(crate) algorithm: String,
    /// The version the backup server keeps the entries under (`backup::room_keys`).
    #[serde(default)]
    pub(crate) version: Option<String>,
    /// Entries sealed in the blob itself: only in blobs sealed before the server kept them
    /// one by one; read for their sake.
    #[serde(default)]
    pub(crate) keys: Vec<SnapshotKey>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotKey {
    pub(crate) room_id: String,
    pub(crate) session_id: String,
    pub(crate) first_message_index: u64,
    pub(crate) forwarded_count: u64,
    pub(crate) is_verified: bool,
    /// The KeyBackupData object as JSON.
    pub(crate) data: String,
}

/// Where the blob is kept: hex SHA-256("hyphae identity lookup v1" || recovery key bytes).
pub(crate) fn lookup_id(recovery: &[u8; 32]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"hyphae identity lookup v1");
    hash.update(recovery);
    hex::encode(hash.finalize())
}

fn blob_key(recovery: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update(b"hyphae identity blob key v1");
    hash.update(recovery);
    Zeroizing::new(hash.finalize().into())
}

fn cipher(recovery: &[u8; 32]) -> Result<Aes256Gcm, BackupError> {
    Aes256Gcm::new_from_slice(&*blob_key(recovery))
        .map_err(|e| BackupError::Restore(format!("blob key: {e}")))
}

/// Seals `blob` for the recovery key.
pub(crate) fn seal(blob: &IdentityBlob, recovery: &[u8; 32]) -> Result<String, BackupError> {
    let plaintext = Zeroizing::new(
        serde_json::to_vec(blob).map_err(|e| BackupError::Restore(format!("blob: {e}")))?,
    );
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| BackupError::Restore(format!("random: {e}")))?;
    let lookup = lookup_id(recovery);
    let ciphertext = cipher(recovery)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: lookup.as_bytes(),
            },
        )
        .map_err(|_| BackupError::Restore("sealing the identity failed".into()))?;
    Ok(json!({
        "algorithm": ALGORITHM,
        "nonce": base64_encode(nonce),
        "ciphertext": base64_encode(ciphertext),
    })
    .to_string())
}

/// Opens a sealed blob; a blob not sealed for this recovery key is
/// [`BackupError::WrongRecoveryKey`].
pub(crate) fn open(sealed: &str, recovery: &[u8; 32]) -> Result<IdentityBlob, BackupError> {
    let bad = |reason: &str| BackupError::BadResponse(format!("identity blob: {reason}"));
    let envelope: Value = serde_json::from_str(sealed).map_err(|_| bad("not JSON"))?;
    if envelope["algorithm"] != ALGORITHM {
        return Err(bad("unknown algorithm"));
    }
    let nonce = envelope["nonce"]
        .as_str()
        .and_then(|n| base64_decode(n).ok())
        .filter(|n| n.len() == 12)
        .ok_or_else(|| bad("bad nonce"))?;
    let ciphertext = envelope["ciphertext"]
        .as_str()
        .and_then(|c| base64_decode(c).ok())
        .ok_or_else(|| bad("bad ciphertext"))?;
    let lookup = lookup_id(recovery);
    let plaintext = Zeroizing::new(
        cipher(recovery)?
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: lookup.as_bytes(),
                },
            )
            .map_err(|_| BackupError::WrongRecoveryKey)?,
    );
    serde_json::from_slice(&plaintext).map_err(|_| bad("unreadable contents"))
}

/// Sends the sealed blob to the backup server this device is subscribed to; `false` when it is
/// not subscribed.
pub(crate) async fn upload(
    state: &AppState,
    blob: &IdentityBlob,
    recovery: &[u8; 32],
) -> Result<bool, BackupError> {
    let Some(subscription) = state.store.backup_subscription().await? else {
        return Ok(false);
    };
    let name = OwnedServerName::try_from(subscription.server.as_str())
        .map_err(|e| BackupError::BadServerName(subscription.server.clone(), e.to_string()))?;
    let sealed = seal(blob, recovery)?;
    let body = json!({"lookup_id": lookup_id(recovery), "blob": sealed});
    let _: Value = state
        .federation
        .request(&name, Method::PUT, IDENTITY_PATH, Some(&body))
        .await?;
    tracing::info!(server = %name, bytes = sealed.len(), "identity backed up");
    Ok(true)
}

fn valid_lookup_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Deserialize)]
pub(crate) struct PutIdentity {
    lookup_id: String,
    blob: String,
}

/// `PUT …/identity {"lookup_id", "blob"}`: the subscriber's sealed identity, replacing its
/// previous one.
pub(crate) async fn put_identity(
    State(state): State<AppState>,
    origin: Origin,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    super::server::subscriber_of(&state, &origin).await?;
    let body: PutIdentity = serde_json::from_slice(&body)
        .map_err(|e| MatrixError::bad_json(format!("Malformed identity: {e}")))?;
    if !valid_lookup_id(&body.lookup_id) {
        return Err(MatrixError::bad_json("lookup_id must be 64 hex characters"));
    }
    if body.blob.len() > MAX_BLOB {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge,
            format!("An identity blob is at most {MAX_BLOB} bytes"),
        ));
    }
    match state
        .store
        .backup_put_identity(
            origin.0.to_string(),
            body.lookup_id.to_ascii_lowercase(),
            body.blob,
        )
        .await?
    {
        Some(true) => Ok(Json(json!({}))),
        Some(false) => Err(MatrixError::forbidden("That lookup id is taken")),
        None => Err(MatrixError::forbidden(
            "Not subscribed to this backup server",
        )),
    }
}

/// `GET …/identity/{lookup_id}`: the sealed blob, to anyone who knows its lookup id (a device
/// being restored has no identity to authenticate with yet).
pub(crate) async fn get_identity(
    State(state): State<AppState>,
    origin: Origin,
    Path(lookup_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    super::server::invites(&state)?;
    if !valid_lookup_id(&lookup_id) {
        return Err(MatrixError::not_found("No such identity"));
    }
    match state
        .store
        .backup_identity(lookup_id.to_ascii_lowercase())
        .await?
    {
        Some((subscriber, blob)) => {
            tracing::info!(%subscriber, peer = %origin.0, "identity blob fetched for a restore");
            Ok(Json(json!({"server_name": subscriber, "blob": blob})))
        }
        None => Err(MatrixError::not_found("No such identity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> IdentityBlob {
        IdentityBlob {
            server_name: "ab".into(),
            identity_secret: "00".repeat(32),
            localpart: "alice".into(),
            device_id: "DEV".into(),
            account_pickle: None,
            key_backup: None,
            sealed_version: 3,
            sealed_ms: 1,
        }
    }

    #[test]
    fn only_the_recovery_key_opens_the_blob() {
        let (key, other) = ([7u8; 32], [8u8; 32]);
        let sealed = seal(&blob(), &key).unwrap();
        assert!(!sealed.contains("alice"), "plaintext in the blob");
        let opened = open(&sealed, &key).unwrap();
        assert_eq!(opened.device_id, "DEV");
        assert_eq!((opened.sealed_version, opened.sealed_ms), (3, 1));
        assert!(matches!(
            open(&sealed, &other),
            Err(BackupError::WrongRecoveryKey)
        ));
        assert_ne!(lookup_id(&key), lookup_id(&other));
        // Truncated or tampered: refused, never half-read.
        let mut envelope: Value = serde_json::from_str(&sealed).unwrap();
        let ciphertext = envelope["ciphertext"].as_str().unwrap().to_owned();
        envelope["ciphertext"] = json!(&ciphertext[..ciphertext.len() - 2]);
        assert!(open(&envelope.to_string(), &key).is_err());
    }
}
