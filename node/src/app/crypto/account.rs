//! The device's Olm account on the server: its signed device keys (uploaded once), and enough
//! one-time keys and a fallback key for others to start Olm sessions with it.

use serde_json::{Value, json};
use vodozemac::olm::Account;

use super::util::signing_bytes;
use super::{Crypto, CryptoError, KeyCounts};
use crate::app::cs::CsApi;

/// The Olm and Megolm algorithms this device speaks.
pub(super) const OLM: &str = "m.olm.v1.curve25519-aes-sha2";
pub(super) const MEGOLM: &str = "m.megolm.v1.aes-sha2";
pub(super) const SIGNED_CURVE25519: &str = "signed_curve25519";

impl Crypto {
    /// Uploads the device keys (once, signed) and one-time + fallback keys as the counts from
    /// /sync call for (the server keeps ~50 one-time keys; a fallback key always).
    pub(crate) async fn upload_keys(
        &self,
        cs: &CsApi,
        one_time_key_counts: &KeyCounts,
        unused_fallback_key_types: Option<&[String]>,
    ) -> Result<(), CryptoError> {
        let _olm = self.inner.olm.lock().await;
        let (body, pickle) = {
            let mut state = self.state();
            let published = state.device_keys_published;
            let account = &mut state.account;
            let target = account.max_number_of_one_time_keys() as u64;
            let on_server = one_time_key_counts
                .get(SIGNED_CURVE25519)
                .copied()
                .unwrap_or(0);
            // Keys made for an upload that failed are sent again before new ones are made.
            let unpublished = account.one_time_keys().len() as u64;
            let wanted = target.saturating_sub(on_server + unpublished);
            if wanted > 0 {
                account.generate_one_time_keys(wanted as usize);
            }
            let fallback_needed = match unused_fallback_key_types {
                Some(types) => !types.iter().any(|t| t == SIGNED_CURVE25519),
                // A server that does not say: one fallback key, with the first upload.
                None => !published,
            };
            if fallback_needed && account.fallback_key().is_empty() {
                account.generate_fallback_key();
            }
            let mut body = serde_json::Map::new();
            if !published {
                body.insert("device_keys".into(), self.device_keys(account)?);
            }
            let user = self.inner.user_id.as_str();
            let device = self.inner.device_id.as_str();
            let mut one_time_keys = serde_json::Map::new();
            for (id, key) in account.one_time_keys() {
                let mut signed = json!({ "key": key.to_base64() });
                sign(account, user, device, &mut signed)?;
                one_time_keys.insert(format!("{SIGNED_CURVE25519}:{}", id.to_base64()), signed);
            }
            let mut fallback_keys = serde_json::Map::new();
            for (id, key) in account.fallback_key() {
                let mut signed = json!({ "key": key.to_base64(), "fallback": true });
                sign(account, user, device, &mut signed)?;
                fallback_keys.insert(format!("{SIGNED_CURVE25519}:{}", id.to_base64()), signed);
            }
            if !one_time_keys.is_empty() {
                body.insert("one_time_keys".into(), one_time_keys.into());
            }
            if !fallback_keys.is_empty() {
                body.insert("fallback_keys".into(), fallback_keys.into());
            }
            if body.is_empty() {
                return Ok(());
            }
            (body, account.pickle().encrypt(self.pickle_key()))
        };
        // The private halves are on disk before the public ones leave: a pre-key message for
        // any key the server hands out can be decrypted after a crash.
        self.write(hyphae_store::CryptoWrite {
            account: Some(pickle),
            ..Default::default()
        })
        .await?;
        let uploaded_device_keys = body.contains_key("device_keys");
        let _: Value = cs.post("/v3/keys/upload", &Value::Object(body)).await?;
        let pickle = {
            let mut state = self.state();
            state.account.mark_keys_as_published();
            state.device_keys_published |= uploaded_device_keys;
            state.account.pickle().encrypt(self.pickle_key())
        };
        self.write(hyphae_store::CryptoWrite {
            account: Some(pickle),
            device_keys_published: uploaded_device_keys,
            ..Default::default()
        })
        .await?;
        tracing::debug!(device_id = %self.inner.device_id, "uploaded keys");
        Ok(())
    }

    /// This device's signed device keys.
    fn device_keys(&self, account: &Account) -> Result<Value, CryptoError> {
        let device = self.inner.device_id.as_str();
        let mut keys = json!({
            "user_id": self.inner.user_id,
            "device_id": device,
            "algorithms": [OLM, MEGOLM],
            "keys": {
                format!("curve25519:{device}"): account.curve25519_key().to_base64(),
                format!("ed25519:{device}"): account.ed25519_key().to_base64(),
            },
        });
        sign(account, self.inner.user_id.as_str(), device, &mut keys)?;
        Ok(keys)
    }
}

/// Adds the account's signature to `value` (as `signatures.<user>.ed25519:<device>`).
pub(super) fn sign(
    account: &Account,
    user: &str,
    device: &str,
    value: &mut Value,
) -> Result<(), CryptoError> {
    let bytes = signing_bytes(value)
        .ok_or_else(|| CryptoError::Worker("a key object is not canonical JSON".into()))?;
    let signature = account.sign(bytes.as_bytes()).to_base64();
    value["signatures"] = json!({ user: { format!("ed25519:{device}"): signature } });
    Ok(())
}
