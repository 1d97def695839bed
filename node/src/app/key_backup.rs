//! Server-side key backup for the app's client: turning it on (a recovery key shown once),
//! keeping it current as room keys arrive, its status, and restoring it on a new device, whose
//! undecryptable timeline items then resolve. The format and the crypto are `crypto/backup.rs`.

use super::crypto::{KeyBackupError, KeyBackupStatus, RecoveryKey};
use super::{AppClient, AppError};

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
        Ok(self.inner.crypto.enable_key_backup(&self.inner.cs).await?)
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
        if let Err(e) = self.inner.crypto.upload_pending_keys(&self.inner.cs).await {
            tracing::warn!(error = %e, "could not back up new room keys");
        }
    }
}
