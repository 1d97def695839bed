//! The device keys of the users this device shares rooms with: queried with keys/query when a
//! user is new or their device list changed, checked (ids match, self-signed, an ed25519 key
//! never changes under one device id), kept in the store.

use std::collections::{BTreeMap, HashMap, HashSet};

use hyphae_store::{Store, TrackedDevice, TrackedUserWrite};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value, json};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::util::{blocking, parallel_map, verify_signed};
use super::{Crypto, CryptoError};
use crate::app::cs::CsApi;

/// How long keys/query and keys/claim wait for other servers.
pub(super) const FEDERATION_TIMEOUT_MS: u64 = 10_000;

/// A device with checked keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Device {
    pub(super) user_id: OwnedUserId,
    pub(super) device_id: OwnedDeviceId,
    pub(super) curve25519: Curve25519PublicKey,
    pub(super) ed25519: Ed25519PublicKey,
}

/// A user whose devices are tracked.
#[derive(Debug, Default)]
pub(super) struct TrackedUser {
    /// Their device list changed since it was last queried.
    pub(super) outdated: bool,
    /// Counts device-list changes, so a query that raced with one leaves the user outdated.
    changes: u64,
    pub(super) devices: BTreeMap<OwnedDeviceId, Device>,
}

/// The tracked users as stored.
pub(super) async fn load(
    store: &Store,
    account_id: i64,
) -> Result<HashMap<OwnedUserId, TrackedUser>, CryptoError> {
    let mut users = HashMap::new();
    for user in store.crypto_tracked_users(account_id).await? {
        let Ok(user_id) = UserId::parse(&user.user_id) else {
            continue;
        };
        let mut devices = BTreeMap::new();
        for d in user.devices {
            let (Ok(curve25519), Ok(ed25519)) = (
                Curve25519PublicKey::from_base64(&d.curve25519),
                Ed25519PublicKey::from_base64(&d.ed25519),
            ) else {
                continue;
            };
            let device_id = OwnedDeviceId::from(d.device_id);
            devices.insert(
                device_id.clone(),
                Device {
                    user_id: user_id.clone(),
                    device_id,
                    curve25519,
                    ed25519,
                },
            );
        }
        users.insert(
            user_id,
            TrackedUser {
                outdated: user.outdated,
                changes: 0,
                devices,
            },
        );
    }
    Ok(users)
}

impl Crypto {
    /// Users whose device lists changed (sync's `device_lists.changed` and `left`): their
    /// devices are queried again before the next key share. Untracked users are left alone:
    /// they are queried when first needed.
    pub(crate) async fn device_lists_changed(&self, changed: &[OwnedUserId]) {
        let writes: Vec<TrackedUserWrite> = {
            let mut state = self.state();
            changed
                .iter()
                .filter_map(|user_id| {
                    let user = state.users.get_mut(user_id)?;
                    user.outdated = true;
                    user.changes += 1;
                    Some(TrackedUserWrite {
                        user_id: user_id.to_string(),
                        outdated: true,
                        devices: None,
                    })
                })
                .collect()
        };
        if writes.is_empty() {
            return;
        }
        let write = self.write(hyphae_store::CryptoWrite {
            users: writes,
            ..Default::default()
        });
        if let Err(e) = write.await {
            // Still outdated in memory: queried again in this run all the same.
            tracing::warn!(error = %e, "could not keep device-list changes");
        }
    }

    /// Queries the keys of those of `users` that are not tracked yet or outdated (all of
    /// `force` too). Users whose server does not answer keep what was known.
    pub(crate) async fn refresh_devices(
        &self,
        cs: &CsApi,
        users: &[OwnedUserId],
        force: &[OwnedUserId],
    ) -> Result<(), CryptoError> {
        let wanted: Vec<(OwnedUserId, u64)> = {
            let state = self.state();
            let mut seen = HashSet::new();
            users
                .iter()
                .filter(|u| state.users.get(*u).is_none_or(|t| t.outdated))
                .chain(force)
                .filter(|u| seen.insert((*u).clone()))
                .map(|u| (u.clone(), state.users.get(u).map_or(0, |t| t.changes)))
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let query: serde_json::Map<String, Value> = wanted
            .iter()
            .map(|(u, _)| (u.to_string(), json!([])))
            .collect();
        let response: Value = cs
            .post(
                "/v3/keys/query",
                &json!({ "device_keys": query, "timeout": FEDERATION_TIMEOUT_MS }),
            )
            .await?;
        let failed_servers: HashSet<String> = response["failures"]
            .as_object()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        // (user, device id, keys object) of every device in the answer, checked in parallel.
        let mut listed = Vec::new();
        let mut answered = Vec::new();
        for (user_id, _) in &wanted {
            match response["device_keys"].get(user_id.as_str()) {
                Some(Value::Object(devices)) => {
                    answered.push(user_id.clone());
                    for (device_id, keys) in devices {
                        listed.push((user_id.clone(), device_id.clone(), keys.clone()));
                    }
                }
                _ if failed_servers.contains(user_id.server_name().as_str()) => {}
                // The server answered without them: no devices (or no such user).
                _ => answered.push(user_id.clone()),
            }
        }
        let checked = blocking(move || {
            parallel_map(listed, |(user_id, device_id, keys)| {
                let device = check_device_keys(&user_id, &device_id, &keys);
                (user_id, device_id, keys, device)
            })
        })
        .await?;
        let mut found: HashMap<OwnedUserId, Vec<(Device, Value)>> = HashMap::new();
        for (user_id, device_id, keys, device) in checked {
            match device {
                Ok(device) => found.entry(user_id).or_default().push((device, keys)),
                Err(reason) => {
                    tracing::warn!(%user_id, device_id, reason, "ignoring a device's keys")
                }
            }
        }
        let writes = {
            let mut state = self.state();
            let mut writes = Vec::new();
            for (user_id, changes) in &wanted {
                if !answered.contains(user_id) {
                    continue;
                }
                let user = state.users.entry(user_id.clone()).or_default();
                let mut devices = BTreeMap::new();
                let mut rows = Vec::new();
                for (device, keys) in found.remove(user_id).unwrap_or_default() {
                    // The spec: a device's ed25519 key never changes; one that did is not
                    // the device that was known, and gets nothing.
                    if let Some(old) = user.devices.get(&device.device_id)
                        && old.ed25519 != device.ed25519
                    {
                        tracing::warn!(%user_id, device_id = %device.device_id,
                            "a device's ed25519 key changed; ignoring the device");
                        continue;
                    }
                    rows.push(TrackedDevice {
                        device_id: device.device_id.to_string(),
                        curve25519: device.curve25519.to_base64(),
                        ed25519: device.ed25519.to_base64(),
                        keys: keys.to_string(),
                    });
                    devices.insert(device.device_id.clone(), device);
                }
                user.devices = devices;
                // A change that came in while the query ran needs another query.
                user.outdated = user.changes != *changes;
                writes.push(TrackedUserWrite {
                    user_id: user_id.to_string(),
                    outdated: user.outdated,
                    devices: Some(rows),
                });
            }
            writes
        };
        self.write(hyphae_store::CryptoWrite {
            users: writes,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// The known devices of `users`.
    pub(super) fn devices_of<'a>(
        &self,
        users: impl IntoIterator<Item = &'a OwnedUserId>,
    ) -> Vec<Device> {
        let state = self.state();
        users
            .into_iter()
            .filter_map(|u| state.users.get(u))
            .flat_map(|u| u.devices.values().cloned())
            .collect()
    }

    /// `user_id`'s known device with the curve25519 key `curve25519`.
    pub(super) fn device_by_key(
        &self,
        user_id: &UserId,
        curve25519: &Curve25519PublicKey,
    ) -> Option<Device> {
        let state = self.state();
        device_by_key(&state.users, user_id, curve25519)
    }

    /// Whether `user_id`'s device with this key is unknown and a query could help.
    pub(super) fn should_query(&self, user_id: &UserId, curve25519: &Curve25519PublicKey) -> bool {
        let state = self.state();
        match state.users.get(user_id) {
            None => true,
            Some(user) => {
                user.outdated || device_by_key(&state.users, user_id, curve25519).is_none()
            }
        }
    }
}

pub(super) fn device_by_key(
    users: &HashMap<OwnedUserId, TrackedUser>,
    user_id: &UserId,
    curve25519: &Curve25519PublicKey,
) -> Option<Device> {
    users
        .get(user_id)?
        .devices
        .values()
        .find(|d| d.curve25519 == *curve25519)
        .cloned()
}

/// A queried device's keys, checked: they name the user and device they were listed under,
/// hold both keys, and are signed by the device's own ed25519 key.
fn check_device_keys(user_id: &UserId, device_id: &str, keys: &Value) -> Result<Device, String> {
    if keys["user_id"].as_str() != Some(user_id.as_str())
        || keys["device_id"].as_str() != Some(device_id)
    {
        return Err("the keys name another user or device".into());
    }
    let curve25519 = keys["keys"][format!("curve25519:{device_id}")]
        .as_str()
        .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
        .ok_or("no valid curve25519 key")?;
    let ed25519 = keys["keys"][format!("ed25519:{device_id}")]
        .as_str()
        .and_then(|k| Ed25519PublicKey::from_base64(k).ok())
        .ok_or("no valid ed25519 key")?;
    if !verify_signed(keys, user_id.as_str(), device_id, &ed25519) {
        return Err("the device's signature on its keys is missing or wrong".into());
    }
    Ok(Device {
        user_id: user_id.to_owned(),
        device_id: device_id.into(),
        curve25519,
        ed25519,
    })
}
