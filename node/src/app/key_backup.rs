//! Server-side key backup for the app's client: turning it on (a recovery key shown once),
//! keeping it current as room keys arrive, its status, and restoring it on a new device, whose
//! undecryptable timeline items then resolve. The format and the crypto are `crypto/backup.rs`.

use super::crypto::{KeyBackupError, KeyBackupStatus, RecoveryKey};
use super::{AppClient, AppError};
use crate::backup::identity::{IdentityBlob, KeyBackupSnapshot};

impl From<KeyBackupError> for AppError {
    fn from(e: KeyBackupError) -> AppError {
        match e {
            KeyBackupError::MalformedKey(_) | KeyBackupError::WrongKey { .. } => {
                AppError::RecoveryKey(e.to_string())
            }
            KeyBackupError::NoBackup | KeyBackupError::UnsupportedAlgorithm(_) => {
                AppError::BadInput(e.to_string())
            }
            KeyBackupError::Crypto(e) => AppError::Crypto(e.to_string()),
        }
    }
}

impl AppClient {
    /// Starts backing up this device's room keys to its server, under a new recovery key the
    /// user must be shown once (and write down): with it, a new device restores every key.
    /// Every key held now is uploaded before this returns; new ones follow as they arrive. An
    /// earlier backup (and its recovery key) is replaced.
    pub async fn enable_key_backup(&self) -> Result<RecoveryKey, AppError> {
        let key = self.inner.crypto.enable_key_backup(&self.inner.cs).await?;
        // With a backup server, the identity goes there too, sealed under the new key.
        self.back_up_identity_or_warn().await;
        Ok(key)
    }

    /// Restores the server's key backup with the user's recovery key; how many room keys were
    /// new to this device (or better than its copy). A wrong or mistyped key is an
    /// [`AppError::RecoveryKey`] and changes nothing; entries that cannot be decrypted are
    /// skipped (logged). Messages waiting for these keys are shown again, decrypted, and this
    /// device keeps backing up to the same backup.
    pub async fn restore_key_backup(&self, recovery_key: &str) -> Result<usize, AppError> {
        let restored = self
            .inner
            .crypto
            .restore_key_backup(&self.inner.cs, recovery_key)
            .await?;
        if restored.skipped > 0 {
            tracing::warn!(
                skipped = restored.skipped,
                found = restored.found,
                "some backed-up room keys could not be read"
            );
        }
        self.keys_arrived(&restored.imported).await;
        Ok(restored.imported.len())
    }

    /// The backup version uploaded to, and how many room keys are in it or still pending.
    pub async fn key_backup_status(&self) -> Result<KeyBackupStatus, AppError> {
        Ok(self.inner.crypto.key_backup_status().await?)
    }

    /// Uploads the room keys that arrived since the last upload (after each sync).
    pub(super) async fn back_up_new_keys(&self) {
        match self.inner.crypto.upload_pending_keys(&self.inner.cs).await {
            // The key backup lives in this data folder: its copy on the backup server (in the
            // sealed identity) follows.
            Ok(uploaded) if uploaded > 0 => self.back_up_identity_or_warn().await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not back up new room keys"),
        }
    }

    pub(crate) async fn back_up_identity_or_warn(&self) {
        if let Err(e) = self.back_up_identity().await {
            tracing::warn!(error = %e, "could not back up the identity to the backup server");
        }
    }

    /// Sends this device's identity (node secret, owner, device id, Olm account, and which
    /// room-key backup version to restore), sealed with the recovery key, to the backup server,
    /// after the room-key entries it lacks;
    /// `false` when there is nothing to do (not subscribed, or key backup off: no recovery key).
    pub(crate) async fn back_up_identity(&self) -> Result<bool, AppError> {
        let store = &self.inner.state.store;
        if store.backup_subscription().await?.is_none() {
            return Ok(false);
        }
        let Some(recovery) = self.inner.crypto.backup_secret().await? else {
            return Ok(false);
        };
        let localpart = self.inner.user_id.localpart().to_owned();
        let account_pickle = store
            .crypto_account(
                self.inner.user_id.to_string(),
                self.inner.device_id.to_string(),
            )
            .await?
            .map(|row| row.pickle);
        // The entries themselves go to the server one by one; the blob names their version.
        crate::backup::push_room_keys(&self.inner.state)
            .await
            .map_err(|e| AppError::Crypto(format!("room keys to the backup server: {e}")))?;
        let key_backup = store
            .backup_version(localpart.clone(), None)
            .await?
            .map(|version| KeyBackupSnapshot {
                algorithm: version.algorithm,
                version: Some(version.version),
                keys: Vec::new(),
            });
        let sealed_version = store.next_identity_seal().await?;
        let blob = IdentityBlob {
            server_name: self.inner.state.server_name.to_string(),
            identity_secret: hex::encode(*self.inner.identity_secret),
            localpart,
            device_id: self.inner.device_id.to_string(),
            account_pickle,
            key_backup,
            sealed_version: u64::try_from(sealed_version).unwrap_or_default(),
            sealed_ms: u64::from(ruma::MilliSecondsSinceUnixEpoch::now().0),
        };
        crate::backup::identity::upload(&self.inner.state, &blob, &recovery)
            .await
            .map_err(|e| AppError::Crypto(format!("identity backup: {e}")))
    }
}
