//! Backup servers (ARCHITECTURE.md "Backup server and mailbox"): subscriptions with one-time
//! tokens and quotas, and the replica of a device's PDUs. `server` answers the unstable
//! `io.hyphae.backup` federation endpoints; `device` is the subscribing node's side, which tags
//! each replica entry (`tag`) so the server cannot add any; `invite` makes tokens for a server's
//! operator; `identity` keeps the device's sealed identity there and `restore` makes a new
//! device the same server from it; `mailbox` holds mail for a device that is away;
//! `dht_records` says which mailbox records peers may store on this node.

mod device;
mod dht_records;
#[cfg(test)]
mod hostile_records_tests;
pub(crate) mod identity;
mod invite;
pub(crate) mod mailbox;
#[cfg(test)]
mod mailbox_hostile_tests;
#[cfg(test)]
mod mailbox_tests;
mod restore;
#[cfg(test)]
mod restore_hostile_tests;
#[cfg(test)]
mod restore_tests;
pub(crate) mod room_keys;
pub(crate) mod server;
mod tag;
#[cfg(test)]
mod tests;

pub use device::BackupStatus;
pub(crate) use device::{ReplicaSent, resume, send_replica, spawn_waker};
pub(crate) use dht_records::record_policy;
pub(crate) use invite::INVITES_DIR;
pub use invite::{DEFAULT_QUOTA, create_invite, parse_size};
pub use restore::{Restored, restore_from_backup};
pub(crate) use room_keys::push as push_room_keys;
pub(crate) use tag::ReplicaKey;

use hyphae_store::StoreError;

/// The endpoint family, all authenticated by the libp2p peer (`Origin`): the subscriber is the
/// peer asking.
pub(crate) const SUBSCRIBE_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/subscribe";
pub(crate) const UNSUBSCRIBE_PATH: &str =
    "/_matrix/federation/unstable/io.hyphae.backup/unsubscribe";
pub(crate) const REPLICA_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/replica";
pub(crate) const STATUS_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/status";
/// `PUT` by the subscriber; `GET …/identity/{lookup_id}` by anyone (a device being restored).
pub(crate) const IDENTITY_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/identity";

/// The DHT key backup servers announce themselves under (as providers).
pub(crate) const ANNOUNCE_KEY: &[u8] = b"/hyphae/backup-server/1";

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("this node runs without a peer-to-peer transport")]
    Offline,
    #[error("this device is not subscribed to a backup server")]
    NotSubscribed,
    #[error("{0:?} is not a Hyphae server name: {1}")]
    BadServerName(String, String),
    #[error("the backup server cannot be reached: {0}")]
    Unreachable(String),
    #[error("the backup server refused: {errcode} {error}")]
    Refused { errcode: String, error: String },
    #[error("the backup server answered badly: {0}")]
    BadResponse(String),
    #[error("cannot write the invitation in {path}: {source}")]
    Invite {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Mistyped (its parity or length is off) or not a recovery key; says which.
    #[error("{0}")]
    MalformedRecoveryKey(String),
    #[error("the recovery key does not open the backed-up identity (a wrong key?)")]
    WrongRecoveryKey,
    #[error(
        "the backup server keeps no identity for this recovery key (a wrong key, or key backup \
         was never on while subscribed there)"
    )]
    NoIdentity,
    #[error("cannot restore into {0}: the folder is not empty")]
    NotEmpty(std::path::PathBuf),
    #[error("restore: {0}")]
    Restore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::federation::FederationError> for BackupError {
    fn from(error: crate::federation::FederationError) -> Self {
        use crate::federation::FederationError as F;
        match error {
            F::Offline => BackupError::Offline,
            F::Http(e) => BackupError::Unreachable(e.to_string()),
            F::Refused { errcode, error, .. } => BackupError::Refused { errcode, error },
            F::BadResponse { reason, .. } => BackupError::BadResponse(reason),
            F::Store(e) => BackupError::Store(e),
        }
    }
}
