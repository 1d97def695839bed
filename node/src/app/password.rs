//! The owner's password. The owner's account is made without one (the in-process app signs in
//! with login tokens), so nobody can log in as the owner from outside until the owner sets one,
//! here, to use Element or another client on the device. It is kept as every password is: an
//! argon2id hash.

use super::{AppClient, AppError};
use crate::client_api::MAX_PASSWORD_BYTES;

/// The shortest password the owner may set: it opens their account to any client that can
/// reach the node.
pub const MIN_PASSWORD_CHARS: usize = 8;

impl AppClient {
    /// Sets (or replaces) the owner's password; from now on `POST /login` takes it. Sessions
    /// already logged in, the app's own among them, stay.
    pub async fn set_password(&self, password: &str) -> Result<(), AppError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AppError::BadInput(format!(
                "a password has at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AppError::BadInput(format!(
                "a password has at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let hash = crate::credentials::hash_password(password.to_owned())
            .await
            .map_err(|e| AppError::Internal(format!("cannot hash the password: {e}")))?;
        self.inner
            .state
            .store
            .set_password_hash(self.inner.user_id.localpart().to_owned(), hash)
            .await?;
        tracing::info!(user_id = %self.inner.user_id, "the owner set a password");
        Ok(())
    }

    /// Whether the owner has set a password (and so can log in from other clients).
    pub async fn has_password(&self) -> Result<bool, AppError> {
        let account = self
            .inner
            .state
            .store
            .account(self.inner.user_id.localpart().to_owned())
            .await?;
        Ok(account.is_some_and(|a| a.password_hash.is_some()))
    }
}
