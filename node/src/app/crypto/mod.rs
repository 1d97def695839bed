//! The in-process client's end-to-end encryption, with vodozemac, following the spec's algorithms
//! so standard clients interoperate: Olm (`m.olm.v1.curve25519-aes-sha2`) between devices,
//! Megolm (`m.megolm.v1.aes-sha2`) in rooms, room keys shared over Olm, key requests between a
//! user's own devices. It owns the device's Olm account, its Olm and Megolm sessions, the device
//! keys of the users it shares rooms with, and its open key requests; everything is pickled,
//! encrypted with the pickle key and kept in the store (`hyphae_store`'s `crypto` queries).
//!
//! Crash safety: a ratchet's new state is committed to the store before any ciphertext it
//! produced is handed out (sent as to-device messages, or returned for a room event), so a crash
//! can never make a ratchet step be used twice. Received keys are committed before
//! `receive_to_device` returns, so the caller may then advance its sync token.
//!
//! Locking: `State` (a std mutex) is only held for short, synchronous steps. Whatever uses the
//! account or Olm sessions across an await (uploading keys, decrypting to-device messages,
//! encrypting for devices) holds the `olm` async lock, and each room's outbound session has its
//! own async lock, so two messages for one room never share a room key twice.

mod account;
mod backup;
mod devices;
mod megolm;
mod olm;
mod requests;
mod util;

#[doc(hidden)]
pub mod bench;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hyphae_store::{Store, StoreError};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId};
use vodozemac::olm::{Account, AccountPickle, IdentityKeys};
use zeroize::Zeroizing;

use super::cs::ApiError;
use devices::TrackedUser;
use megolm::{InboundSession, OutboundSession};
use olm::OlmSession;
use requests::KeyRequest;

pub(crate) use backup::KeyBackupError;
pub use backup::{KeyBackupStatus, RecoveryKey};
pub(crate) use util::parallel_map;

/// Why a crypto operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CryptoError {
    #[error("the crypto store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the stored crypto state cannot be read (wrong pickle key, or damaged): {0}")]
    Pickle(#[from] vodozemac::PickleError),
    #[error("the Client-Server API refused: {0}")]
    Api(#[from] ApiError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("a crypto worker failed: {0}")]
    Worker(String),
    #[error("no randomness available: {0}")]
    Random(String),
}

/// Why a room event could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecryptError {
    /// The room key has not arrived (yet): retry when `receive_to_device` reports it, or ask for
    /// it with `request_room_key`.
    #[error("the room key for session {session_id} is not known (yet)")]
    UnknownSession { session_id: String },
    /// The key is known only from a later message on (it was shared or forwarded after this
    /// message was sent).
    #[error(
        "the room key for session {session_id} is known from message {first_known_index}, not \
         {message_index}"
    )]
    UnknownIndex {
        session_id: String,
        first_known_index: u32,
        message_index: u32,
    },
    /// A message index already decrypted for another event: a replay.
    #[error("message {message_index} of session {session_id} was already used by another event")]
    Replay {
        session_id: String,
        message_index: u32,
    },
    /// The encrypted payload names another room than the one the event is in.
    #[error("the event was encrypted for another room")]
    WrongRoom,
    /// The room key came from another user than the event's sender.
    #[error("the room key belongs to another user than the event's sender")]
    WrongSender,
    #[error("the event is not a Megolm event this client can read: {0}")]
    Malformed(String),
    #[error("decryption failed: {0}")]
    Megolm(#[from] vodozemac::megolm::DecryptionError),
    #[error("the crypto store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the stored room key cannot be read: {0}")]
    Unreadable(String),
}

/// A decrypted room event and what is known of where its key came from.
// Not all of it is shown by the app yet.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub(crate) struct Decrypted {
    pub(crate) event_type: String,
    pub(crate) content: serde_json::Value,
    pub(crate) session_id: String,
    pub(crate) message_index: u32,
    /// The curve25519 key of the device that created the room key.
    pub(crate) sender_key: String,
    /// The sender's device that owns the room key's keys, when its device keys are known and
    /// match both keys.
    pub(crate) sender_device: Option<OwnedDeviceId>,
    /// The key came from a key forward (another device's word), not from its creator.
    pub(crate) forwarded: bool,
    /// The key came over Olm straight from a known device of the event's sender (no
    /// cross-signing verification is done: the device keys are as the sender's server lists
    /// them).
    pub(crate) authenticated: bool,
}

/// When a room's outbound Megolm session is replaced (the room's `m.room.encryption` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub(crate) period_ms: u64,
    pub(crate) period_msgs: u64,
}

impl Default for Rotation {
    /// The spec's defaults: a week, 100 messages.
    fn default() -> Rotation {
        Rotation {
            period_ms: 7 * 24 * 3600 * 1000,
            period_msgs: 100,
        }
    }
}

/// A device's end-to-end encryption; cheap to clone.
#[derive(Clone)]
pub(crate) struct Crypto {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    account_id: i64,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    keys: IdentityKeys,
    pickle_key: Zeroizing<[u8; 32]>,
    state: Mutex<State>,
    /// Held by whatever uses or changes the account or the Olm sessions across an await.
    olm: tokio::sync::Mutex<()>,
    /// One lock per room for its outbound session.
    rooms: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// The key backup version uploaded to; its lock is held by whatever uploads or changes it.
    backup: tokio::sync::Mutex<Option<backup::ActiveBackup>>,
}

/// What is in memory; the store holds the same (the caches below are filled on demand).
struct State {
    account: Account,
    device_keys_published: bool,
    /// Olm sessions by the peer's curve25519 key (base64). A key present here has all its
    /// stored sessions loaded.
    olm_sessions: HashMap<String, Vec<OlmSession>>,
    inbound: HashMap<(OwnedRoomId, String), InboundSession>,
    /// `None`: the store has no outbound session for the room.
    outbound: HashMap<OwnedRoomId, Option<OutboundSession>>,
    users: HashMap<OwnedUserId, TrackedUser>,
    key_requests: HashMap<(OwnedRoomId, String), KeyRequest>,
    /// Devices whose server could not be reached for a one-time key, and when.
    claim_failures: HashMap<(OwnedUserId, OwnedDeviceId), Instant>,
    /// Peers (curve25519) a new Olm session was made with after one of theirs failed, and when.
    unwedged: HashMap<String, Instant>,
}

impl Crypto {
    /// The device's crypto state from the store (pickles encrypted with `pickle_key`), or a new
    /// Olm account. A stored account that `pickle_key` cannot decrypt is an error, never
    /// replaced.
    pub(crate) async fn load_or_create(
        store: Store,
        user_id: OwnedUserId,
        device_id: OwnedDeviceId,
        pickle_key: [u8; 32],
    ) -> Result<Crypto, CryptoError> {
        let pickle_key = Zeroizing::new(pickle_key);
        let row = match store
            .crypto_account(user_id.to_string(), device_id.to_string())
            .await?
        {
            Some(row) => row,
            None => {
                let pickle = Account::new().pickle().encrypt(&pickle_key);
                store
                    .create_crypto_account(user_id.to_string(), device_id.to_string(), pickle)
                    .await?
            }
        };
        let account =
            Account::from_pickle(AccountPickle::from_encrypted(&row.pickle, &pickle_key)?);
        let users = devices::load(&store, row.account_id).await?;
        let key_requests = requests::load(&store, row.account_id).await?;
        let backup = backup::load(&store, row.account_id).await?;
        let keys = account.identity_keys();
        tracing::debug!(%user_id, %device_id, curve25519 = %keys.curve25519.to_base64(), "crypto loaded");
        Ok(Crypto {
            inner: Arc::new(Inner {
                store,
                account_id: row.account_id,
                user_id,
                device_id,
                keys,
                pickle_key,
                state: Mutex::new(State {
                    account,
                    device_keys_published: row.device_keys_published,
                    olm_sessions: HashMap::new(),
                    inbound: HashMap::new(),
                    outbound: HashMap::new(),
                    users,
                    key_requests,
                    claim_failures: HashMap::new(),
                    unwedged: HashMap::new(),
                }),
                olm: tokio::sync::Mutex::new(()),
                rooms: Mutex::new(HashMap::new()),
                backup: tokio::sync::Mutex::new(backup),
            }),
        })
    }

    /// This device's curve25519 identity key (unpadded base64).
    pub(crate) fn curve25519_key(&self) -> String {
        self.inner.keys.curve25519.to_base64()
    }

    /// This device's ed25519 fingerprint key (unpadded base64).
    pub(crate) fn ed25519_key(&self) -> String {
        self.inner.keys.ed25519.to_base64()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pickle_key(&self) -> &[u8; 32] {
        &self.inner.pickle_key
    }

    /// The lock for `room_id`'s outbound session.
    fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    /// Commits `changes` (queued now, in call order).
    fn write(
        &self,
        changes: hyphae_store::CryptoWrite,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let queued = (!changes.is_empty()).then(|| {
            self.inner
                .store
                .crypto_write(self.inner.account_id, changes)
        });
        async move {
            match queued {
                Some(write) => write.await,
                None => Ok(()),
            }
        }
    }
}

/// The one-time key counts a /sync reports, by algorithm.
pub(crate) type KeyCounts = BTreeMap<String, u64>;
