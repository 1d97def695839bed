//! Secrets of local accounts: argon2id password hashes, access tokens (only their SHA-256 is
//! stored) and device ids. Hashing is slow on purpose, so it runs on the blocking pool.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// An argon2id PHC string (`$argon2id$v=19$...`) with a fresh random salt.
pub(crate) async fn hash_password(password: String) -> Result<String, CredentialError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| CredentialError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| CredentialError::Hash(e.to_string()))?
}

/// Whether `password` matches the stored PHC string; a malformed hash never matches.
pub(crate) async fn verify_password(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// A valid argon2id hash of no one's password, checked against when an account does not exist
/// so that a refused login takes as long either way.
pub(crate) fn decoy_hash() -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| {
            let secret = hex::encode(random_bytes::<16>().unwrap_or([7; 16]));
            Argon2::default()
                .hash_password(secret.as_bytes())
                .map(|hash| hash.to_string())
                .unwrap_or_default()
        })
        .clone()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CredentialError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(bytes)
}

/// A new access token: 256 random bits.
pub(crate) fn new_access_token() -> Result<String, CredentialError> {
    Ok(format!("hyphae_{}", hex::encode(random_bytes::<32>()?)))
}

/// What the store keeps of an access token.
pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A device id like other homeservers hand out: ten upper-case letters.
pub(crate) fn new_device_id() -> Result<String, CredentialError> {
    Ok(random_bytes::<10>()?
        .iter()
        .map(|b| char::from(b'A' + b % 26))
        .collect())
}

/// An opaque id for a user-interactive auth session.
pub(crate) fn new_session_id() -> Result<String, CredentialError> {
    Ok(hex::encode(random_bytes::<16>()?))
}

/// Single-use login tokens (`m.login.token`) that the embedding app mints for its own account, so
/// its in-process client logs in without a password. Memory only: they live two minutes.
#[derive(Default)]
pub(crate) struct LoginTokens {
    tokens: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (String, std::time::Instant)>>,
}

const LOGIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

impl LoginTokens {
    pub(crate) fn mint(&self, localpart: &str) -> Result<String, CredentialError> {
        let token = new_access_token()?;
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(
            token_hash(&token),
            (localpart.to_owned(), now + LOGIN_TOKEN_LIFETIME),
        );
        Ok(token)
    }

    /// The localpart the token was minted for, if it is valid; it cannot be used again.
    pub(crate) fn redeem(&self, token: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (localpart, expires) = tokens.remove(&token_hash(token))?;
        (expires > std::time::Instant::now()).then_some(localpart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_hashes_verify_only_the_right_password() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(verify_password("correct horse".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse".into(), hash.clone()).await);
        assert!(!verify_password("correct horse".into(), "not a hash".into()).await);
        // Salted: the same password hashes differently each time.
        assert_ne!(hash, hash_password("correct horse".into()).await.unwrap());
    }

    #[test]
    fn tokens_and_device_ids_are_random() {
        let (a, b) = (new_access_token().unwrap(), new_access_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 32);
        let device = new_device_id().unwrap();
        assert_eq!(device.len(), 10);
        assert!(device.bytes().all(|c| c.is_ascii_uppercase()));
    }
}
