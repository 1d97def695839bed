//! End-to-end encryption keys: devices upload their identity, one-time and fallback keys; others
//! query and claim them; cross-signing keys and signatures on them. Other servers' users' keys
//! are asked of their servers (`remote_keys`); the federation API serves ours with the same
//! functions (`user_keys`, `local_keys`, `claim_local`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use hyphae_store::{ClaimedKey, KeySignature, KeyUpload, StoreError};
use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use ruma::encryption::{CrossSigningKey, DeviceKeys, OneTimeKey};
use ruma::serde::{Base64, Raw};
use ruma::signatures::to_canonical_json_string_for_signing;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId,
    OwnedServerName, OwnedUserId, UInt, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use super::Ruma;
use super::account::rate_limit;
use super::error::{ApiResult, MatrixError};
use super::remote_keys;
use super::request::{Req, User};
use super::tokens::Token;
use super::uia;
use crate::node::AppState;

const MASTER: &str = "master";
const SELF_SIGNING: &str = "self_signing";
const USER_SIGNING: &str = "user_signing";

pub(crate) async fn upload(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<upload_keys::v3::Request>,
) -> ApiResult<upload_keys::v3::Response> {
    let device_keys = match request.device_keys {
        Some(raw) => Some(own_device_keys(&user, &raw)?),
        None => None,
    };
    // Whether the device keys change, to tell other servers only then (a client uploads the
    // same keys again when it is unsure they arrived).
    let keys_changed = match &device_keys {
        Some(keys) => state
            .store
            .device_keys(user.user_id.to_string(), vec![user.device_id.to_string()])
            .await?
            .pop()
            .is_none_or(|(_, stored)| stored != *keys),
        None => false,
    };
    let upload = KeyUpload {
        user_id: user.user_id.to_string(),
        device_id: user.device_id.to_string(),
        device_keys,
        one_time_keys: keys_to_store(request.one_time_keys)?,
        fallback_keys: keys_to_store(request.fallback_keys)?,
    };
    let counts = match state.store.upload_keys(upload).await {
        Ok(counts) => counts,
        // Worded as Synapse does: matrix-rust-sdk recognises it.
        Err(StoreError::KeyConflict { key_id, old, new }) => {
            return Err(MatrixError::invalid_param(format!(
                "One time key {key_id} already exists. Old key: {old}; new key: {new}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if keys_changed {
        remote_keys::announce_device(&state, &user.user_id, &user.device_id).await;
    }
    Ok(Ruma(upload_keys::v3::Response::new(counts_to_ruma(counts))))
}

pub(crate) async fn query(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_keys::v3::Request>,
) -> ApiResult<get_keys::v3::Response> {
    let (local, remote) = split_by_server(&state, request.device_keys);
    let mut response = local_keys(&state, Some(&user.user_id), local).await?;
    remote_keys::query(&state, remote, request.timeout, &mut response).await;
    Ok(Ruma(response))
}

pub(crate) async fn claim(
    State(state): State<AppState>,
    _user: User,
    Req(request): Req<claim_keys::v3::Request>,
) -> ApiResult<claim_keys::v3::Response> {
    let (local, remote) = split_by_server(&state, request.one_time_keys);
    let mut response = claim_keys::v3::Response::new(claim_local(&state, local).await?);
    remote_keys::claim(&state, remote, request.timeout, &mut response).await;
    Ok(Ruma(response))
}

/// A request's users split into this server's and, by server, other servers'.
pub(super) type ByServer<T> = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>;

fn split_by_server<T>(
    state: &AppState,
    users: BTreeMap<OwnedUserId, T>,
) -> (BTreeMap<OwnedUserId, T>, ByServer<T>) {
    let mut local = BTreeMap::new();
    let mut remote: ByServer<T> = BTreeMap::new();
    for (user_id, wanted) in users {
        if user_id.server_name() == state.server_name {
            local.insert(user_id, wanted);
        } else {
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id, wanted);
        }
    }
    (local, remote)
}

/// One local user's keys as others see them.
pub(crate) struct UserKeys {
    /// Device keys with the server's `unsigned.device_display_name`, and the display name.
    pub(crate) devices: BTreeMap<OwnedDeviceId, (Raw<DeviceKeys>, Option<String>)>,
    pub(crate) master: Option<Raw<CrossSigningKey>>,
    pub(crate) self_signing: Option<Raw<CrossSigningKey>>,
    /// Only when the viewer is the user themselves.
    pub(crate) user_signing: Option<Raw<CrossSigningKey>>,
}

/// The keys of a local user (`None` if there is no such account): the devices among
/// `device_ids` (all when empty) and the cross-signing keys, with the signatures the user and
/// `viewer` uploaded merged in. `viewer` is a local user asking, or `None` for another server.
pub(crate) async fn user_keys(
    state: &AppState,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
    viewer: Option<&UserId>,
) -> Result<Option<UserKeys>, MatrixError> {
    if user_id.server_name() != state.server_name {
        return Ok(None);
    }
    let localpart = user_id.localpart().to_owned();
    if state.store.account(localpart.clone()).await?.is_none() {
        return Ok(None);
    }
    let mut signers = vec![user_id.to_string()];
    signers.extend(viewer.map(ToString::to_string));
    let signatures = state
        .store
        .key_signatures(user_id.to_string(), signers)
        .await?;
    let names: BTreeMap<String, Option<String>> = state
        .store
        .devices(localpart)
        .await?
        .into_iter()
        .map(|device| (device.device_id, device.display_name))
        .collect();
    let stored = state
        .store
        .device_keys(
            user_id.to_string(),
            device_ids.iter().map(ToString::to_string).collect(),
        )
        .await?;
    let mut keys = UserKeys {
        devices: BTreeMap::new(),
        master: None,
        self_signing: None,
        user_signing: None,
    };
    for (device_id, json) in stored {
        let mut object = parse_object(&json)?;
        add_signatures(&mut object, &signatures, &device_id);
        let name = names.get(&device_id).cloned().flatten();
        if let Some(name) = &name {
            let mut unsigned = CanonicalJsonObject::new();
            unsigned.insert("device_display_name".into(), name.clone().into());
            object.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
        }
        keys.devices
            .insert(OwnedDeviceId::from(device_id), (to_raw(object)?, name));
    }
    for key in state.store.cross_signing_keys(user_id.to_string()).await? {
        let mut object = parse_object(&key.json)?;
        add_signatures(&mut object, &signatures, &key.public_key);
        let raw = Some(to_raw(object)?);
        match key.usage.as_str() {
            MASTER => keys.master = raw,
            SELF_SIGNING => keys.self_signing = raw,
            // Only its owner sees a user-signing key.
            USER_SIGNING if viewer == Some(user_id) => keys.user_signing = raw,
            _ => {}
        }
    }
    Ok(Some(keys))
}

/// The keys of the local users in `wanted` (user id -> device ids, all when empty) as `viewer`
/// sees them (see [`user_keys`]); unknown users and other servers' are left out.
pub(crate) async fn local_keys(
    state: &AppState,
    viewer: Option<&UserId>,
    wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> Result<get_keys::v3::Response, MatrixError> {
    let mut response = get_keys::v3::Response::new();
    for (user_id, device_ids) in wanted {
        let Some(keys) = user_keys(state, &user_id, &device_ids, viewer).await? else {
            continue;
        };
        if let Some(master) = keys.master {
            response.master_keys.insert(user_id.clone(), master);
        }
        if let Some(self_signing) = keys.self_signing {
            response
                .self_signing_keys
                .insert(user_id.clone(), self_signing);
        }
        if let Some(user_signing) = keys.user_signing {
            response
                .user_signing_keys
                .insert(user_id.clone(), user_signing);
        }
        let devices = keys
            .devices
            .into_iter()
            .map(|(device_id, (raw, _))| (device_id, raw))
            .collect();
        response.device_keys.insert(user_id, devices);
    }
    Ok(response)
}

/// Claims a key of each local device in `claims` for the algorithm given: a one-time key, or
/// the fallback key once they are gone. Devices with neither, unknown users and other
/// servers' users are left out.
pub(crate) async fn claim_local(
    state: &AppState,
    claims: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> Result<BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys>, MatrixError> {
    let mut wanted = Vec::new();
    for (user_id, devices) in claims {
        if user_id.server_name() != state.server_name {
            continue;
        }
        for (device_id, algorithm) in devices {
            wanted.push((
                user_id.to_string(),
                device_id.to_string(),
                algorithm.to_string(),
            ));
        }
    }
    let mut one_time_keys: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    for ClaimedKey {
        user_id,
        device_id,
        key,
        ..
    } in state.store.claim_keys(wanted).await?
    {
        let (Ok(user_id), Ok(key_id)) = (
            OwnedUserId::try_from(user_id),
            OwnedOneTimeKeyId::try_from(format!("{}:{}", key.algorithm, key.key_id)),
        ) else {
            continue;
        };
        one_time_keys
            .entry(user_id)
            .or_default()
            .entry(device_id.into())
            .or_default()
            .insert(key_id, Raw::from_json(raw_json(key.key)?));
    }
    Ok(one_time_keys)
}

pub(crate) async fn changes(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_key_changes::v3::Request>,
) -> ApiResult<get_key_changes::v3::Response> {
    let from = Token::parse_stream(&request.from)?.position;
    let to = Token::parse_stream(&request.to)?.position;
    let changed = state
        .store
        .users_with_key_changes_seen_by(user.user_id.to_string(), from, to)
        .await?
        .into_iter()
        .filter_map(|user_id| OwnedUserId::try_from(user_id).ok())
        .collect();
    Ok(Ruma(get_key_changes::v3::Response::new(
        changed,
        Vec::new(),
    )))
}

pub(crate) async fn upload_signing_keys(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: User,
    Req(request): Req<upload_signing_keys::v3::Request>,
) -> ApiResult<upload_signing_keys::v3::Response> {
    let mut keys = Vec::new();
    for (usage, raw) in [
        (MASTER, &request.master_key),
        (SELF_SIGNING, &request.self_signing_key),
        (USER_SIGNING, &request.user_signing_key),
    ] {
        if let Some(raw) = raw {
            keys.push(own_cross_signing_key(&user.user_id, usage, raw)?);
        }
    }
    let stored = state
        .store
        .cross_signing_keys(user.user_id.to_string())
        .await?;
    // The spec waives user-interactive auth for a first upload, and for one that changes nothing.
    let has_master = stored.iter().any(|k| k.usage == MASTER);
    let changes_nothing = keys.iter().all(|key| stored.contains(key));
    if has_master && !changes_nothing {
        rate_limit(&state, peer)?;
        uia::require_password(&state, &user, request.auth).await?;
    }
    let master = keys
        .iter()
        .chain(&stored)
        .find(|k| k.usage == MASTER)
        .map(|k| k.public_key.clone());
    for key in keys.iter().filter(|k| k.usage != MASTER) {
        let Some(master) = &master else {
            return Err(MatrixError::invalid_param(
                "A master key must be uploaded before the other cross-signing keys",
            ));
        };
        let object = parse_object(&key.json)?;
        let signature = signature_of(&object, user.user_id.as_str(), &key_id(master));
        if !signature.is_some_and(|s| verify(&object, master, &s)) {
            return Err(MatrixError::invalid_param(format!(
                "The {} key must be signed by the master key",
                key.usage
            )));
        }
    }
    let changed = state
        .store
        .set_cross_signing_keys(user.user_id.to_string(), keys)
        .await?;
    if changed {
        remote_keys::announce_cross_signing(&state, &user.user_id).await;
    }
    Ok(Ruma(upload_signing_keys::v3::Response::new()))
}

pub(crate) async fn upload_signatures(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<upload_signatures::v3::Request>,
) -> ApiResult<upload_signatures::v3::Response> {
    let own = state
        .store
        .cross_signing_keys(user.user_id.to_string())
        .await?;
    let own_key = |usage: &str| {
        own.iter()
            .find(|k| k.usage == usage)
            .map(|k| k.public_key.clone())
    };
    let mut accepted = Vec::new();
    let mut response = upload_signatures::v3::Response::new();
    for (target, signed) in &request.signed_keys {
        for (key_id, json) in signed {
            match check_signatures(&state, &user, target, key_id, json, &own_key).await? {
                Ok(signatures) => accepted.extend(signatures),
                Err((errcode, message)) => {
                    let failure = serde_json::from_value(serde_json::json!({
                        "errcode": errcode, "error": message,
                    }))
                    .map_err(|e| MatrixError::unknown(e.to_string()))?;
                    response
                        .failures
                        .entry(target.clone())
                        .or_default()
                        .insert(key_id.to_owned(), failure);
                }
            }
        }
    }
    // Others see the new signatures on this user's own devices and master key; signatures on
    // other users' keys are the signer's own business.
    let own_targets: BTreeSet<String> = accepted
        .iter()
        .filter(|s| s.target_user_id == user.user_id.as_str())
        .map(|s| s.target_key_id.clone())
        .collect();
    state.store.add_key_signatures(accepted).await?;
    let mut master_signed = false;
    for target in own_targets {
        if own_key(MASTER).as_ref() == Some(&target) {
            master_signed = true;
        } else {
            remote_keys::announce_device(&state, &user.user_id, &OwnedDeviceId::from(target)).await;
        }
    }
    if master_signed {
        remote_keys::announce_cross_signing(&state, &user.user_id).await;
    }
    Ok(Ruma(response))
}

/// Checks one signed key of a signatures upload: the object must be a key the server holds,
/// unchanged, and carry at least one valid signature by a key the uploader may sign it with:
/// their self-signing key for their own devices, one of their devices for their own master key,
/// their user-signing key for another user's master key. Returns the new signatures, or the
/// failure's errcode and message.
async fn check_signatures(
    state: &AppState,
    user: &User,
    target: &UserId,
    key_id: &str,
    json: &RawJsonValue,
    own_key: &impl Fn(&str) -> Option<String>,
) -> Result<Result<Vec<KeySignature>, (&'static str, String)>, MatrixError> {
    let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(json.get()) else {
        return Ok(Err(("M_INVALID_PARAM", "Not a JSON object".into())));
    };
    let not_found = || Ok(Err(("M_NOT_FOUND", format!("Unknown key {key_id}"))));
    let (stored, signers): (String, BTreeMap<String, String>) = if target == user.user_id {
        let device = state
            .store
            .device_keys(target.to_string(), vec![key_id.to_owned()])
            .await?
            .pop();
        let master = state
            .store
            .cross_signing_keys(target.to_string())
            .await?
            .into_iter()
            .find(|k| k.usage == MASTER && k.public_key == key_id);
        if let Some((_, device_json)) = device {
            let signers = own_key(SELF_SIGNING)
                .map(|ssk| BTreeMap::from([(self::key_id(&ssk), ssk)]))
                .unwrap_or_default();
            (device_json, signers)
        } else if let Some(master) = master {
            // A device vouches for its user's master key.
            let mut signers = BTreeMap::new();
            for (_, device_json) in state
                .store
                .device_keys(target.to_string(), Vec::new())
                .await?
            {
                let Ok(device) = serde_json::from_str::<DeviceKeys>(&device_json) else {
                    continue;
                };
                let id = format!("ed25519:{}", device.device_id);
                if let Some((_, key)) = device.keys.iter().find(|(k, _)| k.as_str() == id) {
                    signers.insert(id, key.clone());
                }
            }
            (master.json, signers)
        } else {
            return not_found();
        }
    } else {
        if target.server_name() != state.server_name {
            tracing::debug!(%target, "signing other servers' users' keys waits for federation");
            return not_found();
        }
        let master = state
            .store
            .cross_signing_keys(target.to_string())
            .await?
            .into_iter()
            .find(|k| k.usage == MASTER && k.public_key == key_id);
        let Some(master) = master else {
            return not_found();
        };
        let signers = own_key(USER_SIGNING)
            .map(|usk| BTreeMap::from([(self::key_id(&usk), usk)]))
            .unwrap_or_default();
        (master.json, signers)
    };
    let stored = parse_object(&stored)?;
    let signable = |object: &CanonicalJsonObject| to_canonical_json_string_for_signing(object).ok();
    if signable(&stored).is_none() || signable(&stored) != signable(&object) {
        return Ok(Err((
            "M_INVALID_PARAM",
            format!("Key {key_id} differs from the one uploaded"),
        )));
    }
    let mut accepted = Vec::new();
    let mut signed = false;
    for (signer_key_id, public_key) in &signers {
        let Some(signature) = signature_of(&object, user.user_id.as_str(), signer_key_id) else {
            continue;
        };
        signed = true;
        // Already part of the key as uploaded: nothing to add.
        if signature_of(&stored, user.user_id.as_str(), signer_key_id).as_ref() == Some(&signature)
        {
            continue;
        }
        if !verify(&object, public_key, &signature) {
            return Ok(Err((
                "M_INVALID_SIGNATURE",
                format!("Invalid signature by {signer_key_id}"),
            )));
        }
        accepted.push(KeySignature {
            target_user_id: target.to_string(),
            target_key_id: key_id.to_owned(),
            signer_user_id: user.user_id.to_string(),
            signer_key_id: signer_key_id.clone(),
            signature,
        });
    }
    if !signed {
        return Ok(Err((
            "M_INVALID_SIGNATURE",
            format!("No signature on {key_id} by a key that may sign it"),
        )));
    }
    Ok(Ok(accepted))
}

/// The device keys a device uploads for itself, checked, as canonical JSON without `unsigned`
/// (the server adds its own when the keys are queried).
fn own_device_keys(user: &User, raw: &Raw<DeviceKeys>) -> Result<String, MatrixError> {
    let keys = raw
        .deserialize()
        .map_err(|e| MatrixError::bad_json(format!("Invalid device_keys: {e}")))?;
    if keys.user_id != user.user_id || keys.device_id != user.device_id {
        return Err(MatrixError::invalid_param(
            "device_keys must be this device's own: their user_id and device_id must match the \
             access token's",
        ));
    }
    let mut object = parse_object(raw.json().get())?;
    object.remove("unsigned");
    Ok(CanonicalJsonValue::Object(object).to_string())
}

/// A cross-signing key of `user_id` for `usage`, checked.
fn own_cross_signing_key(
    user_id: &UserId,
    usage: &str,
    raw: &Raw<CrossSigningKey>,
) -> Result<hyphae_store::CrossSigningKey, MatrixError> {
    let key = raw
        .deserialize()
        .map_err(|e| MatrixError::bad_json(format!("Invalid {usage} key: {e}")))?;
    if key.user_id != user_id {
        return Err(MatrixError::invalid_param(format!(
            "The {usage} key's user_id must be the uploader's"
        )));
    }
    if !key.usage.iter().any(|u| u.as_str() == usage) {
        return Err(MatrixError::invalid_param(format!(
            "The {usage} key's usage must include {usage}"
        )));
    }
    let mut keys = key.keys.iter();
    let public_key = match (keys.next(), keys.next()) {
        (Some((id, public_key)), None) if id.as_str() == key_id(public_key) => public_key.clone(),
        _ => {
            return Err(MatrixError::invalid_param(format!(
                "The {usage} key must hold exactly one key, ed25519:<key> -> <key>"
            )));
        }
    };
    let object = parse_object(raw.json().get())?;
    Ok(hyphae_store::CrossSigningKey {
        usage: usage.to_owned(),
        public_key,
        json: CanonicalJsonValue::Object(object).to_string(),
    })
}

fn keys_to_store(
    keys: BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
) -> Result<Vec<hyphae_store::OneTimeKey>, MatrixError> {
    keys.into_iter()
        .map(|(id, raw)| {
            raw.deserialize()
                .map_err(|e| MatrixError::bad_json(format!("Invalid key {id}: {e}")))?;
            let key: CanonicalJsonValue = serde_json::from_str(raw.json().get())
                .map_err(|e| MatrixError::bad_json(format!("Invalid key {id}: {e}")))?;
            Ok(hyphae_store::OneTimeKey {
                algorithm: id.algorithm().to_string(),
                key_id: id.key_name().to_string(),
                key: key.to_string(),
            })
        })
        .collect()
}

/// The counts clients expect: `signed_curve25519` is always there, 0 when none are left.
pub(crate) fn counts_to_ruma(counts: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    let mut out: BTreeMap<OneTimeKeyAlgorithm, UInt> = counts
        .into_iter()
        .map(|(algorithm, count)| (algorithm.into(), UInt::new_saturating(count)))
        .collect();
    out.entry(OneTimeKeyAlgorithm::SignedCurve25519)
        .or_insert(UInt::MIN);
    out
}

fn key_id(public_key: &str) -> String {
    format!("ed25519:{public_key}")
}

fn parse_object(json: &str) -> Result<CanonicalJsonObject, MatrixError> {
    serde_json::from_str(json).map_err(|e| MatrixError::bad_json(format!("Not a JSON object: {e}")))
}

fn raw_json(json: String) -> Result<Box<RawJsonValue>, MatrixError> {
    RawJsonValue::from_string(json).map_err(|e| MatrixError::unknown(e.to_string()))
}

fn to_raw<T>(object: CanonicalJsonObject) -> Result<Raw<T>, MatrixError> {
    Ok(Raw::from_json(raw_json(
        CanonicalJsonValue::Object(object).to_string(),
    )?))
}

/// The signature `signer_key_id` of `signer` made on `object`, if it carries one.
fn signature_of(object: &CanonicalJsonObject, signer: &str, signer_key_id: &str) -> Option<String> {
    match object.get("signatures")? {
        CanonicalJsonValue::Object(signatures) => match signatures.get(signer)? {
            CanonicalJsonValue::Object(by_key) => match by_key.get(signer_key_id)? {
                CanonicalJsonValue::String(signature) => Some(signature.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Whether `signature` is `public_key`'s (both unpadded base64) over `object`'s signed part.
fn verify(object: &CanonicalJsonObject, public_key: &str, signature: &str) -> bool {
    let (Ok(json), Ok(public_key), Ok(signature)) = (
        to_canonical_json_string_for_signing(object),
        Base64::<ruma::serde::base64::Standard>::parse(public_key),
        Base64::<ruma::serde::base64::Standard>::parse(signature),
    ) else {
        return false;
    };
    crate::signing::verify_strict(public_key.as_bytes(), signature.as_bytes(), json.as_bytes())
}

/// Merges the uploaded signatures on `target_key_id` into its key object.
fn add_signatures(object: &mut CanonicalJsonObject, signatures: &[KeySignature], target: &str) {
    for s in signatures.iter().filter(|s| s.target_key_id == target) {
        let all = object
            .entry("signatures".into())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        let CanonicalJsonValue::Object(all) = all else {
            continue;
        };
        let by_signer = all
            .entry(s.signer_user_id.clone())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        if let CanonicalJsonValue::Object(by_signer) = by_signer {
            by_signer.insert(s.signer_key_id.clone(), s.signature.clone().into());
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use ruma::CanonicalJsonObject;
    use ruma::serde::Base64;
    use ruma::serde::base64::Standard;
    use ruma::signatures::{Ed25519KeyPair, KeyPair, sign_json};
    use serde_json::{Value, json};

    use super::super::test_support::Api;

    /// An ed25519 key and its unpadded base64 public key.
    pub(crate) struct Key {
        pub(crate) pair: Ed25519KeyPair,
        pub(crate) public: String,
    }

    /// A new key whose key id is `ed25519:<version>`, or `ed25519:<public key>` (cross-signing).
    pub(crate) fn new_key(version: Option<&str>) -> Key {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "probe".into()).unwrap();
        let public = Base64::<Standard>::new(probe.public_key().to_vec()).encode();
        let version = version.map_or_else(|| public.clone(), str::to_owned);
        Key {
            pair: Ed25519KeyPair::from_der(&der, version).unwrap(),
            public,
        }
    }

    pub(crate) fn signed(signer: &str, key: &impl KeyPair, value: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
        sign_json(signer, key, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }

    pub(crate) fn device_keys(user_id: &str, device_id: &str, ed25519: &str) -> Value {
        json!({
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device_id}"): "Y3VydmUyNTUxOWtleQ",
                format!("ed25519:{device_id}"): ed25519,
            },
            "signatures": {user_id: {format!("ed25519:{device_id}"): "c2ln"}},
        })
    }

    pub(crate) fn one_time_key(user_id: &str, device_id: &str, key: &str) -> Value {
        json!({"key": key, "signatures": {user_id: {format!("ed25519:{device_id}"): "c2ln"}}})
    }

    pub(crate) fn cross_signing_key(user_id: &str, usage: &str, key: &Key) -> Value {
        json!({
            "user_id": user_id,
            "usage": [usage],
            "keys": {format!("ed25519:{}", key.public): key.public},
        })
    }

    fn password_auth(user: &str) -> Value {
        json!({"type": "m.login.password",
               "identifier": {"type": "m.id.user", "user": user},
               "password": "password"})
    }

    async fn stream_position(api: &Api) -> i64 {
        api.node
            .store()
            .read(hyphae_store::current_stream_pos)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn uploaded_keys_are_queried_and_claimed_by_others() {
        let api = Api::start().await;
        let (alice, alice_token, device) = api.register("alice", "password").await;
        let (_, bob_token, _) = api.register("bob", "password").await;
        let (status, _) = api
            .put(
                &format!("/v3/devices/{device}"),
                Some(&alice_token),
                json!({"display_name": "Alice's phone"}),
            )
            .await;
        assert_eq!(status, 200);

        let keys = device_keys(&alice, &device, "ZWQyNTUxOWtleQ");
        let (status, body) = api
            .post(
                "/v3/keys/upload",
                Some(&alice_token),
                json!({
                    "device_keys": keys,
                    "one_time_keys": {
                        "signed_curve25519:AAAAAQ": one_time_key(&alice, &device, "b25l"),
                        "signed_curve25519:AAAAAg": one_time_key(&alice, &device, "dHdv"),
                    },
                    "fallback_keys": {
                        "signed_curve25519:AAAAAw": one_time_key(&alice, &device, "ZmFsbGJhY2s"),
                    },
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);

        let (status, body) = api
            .post(
                "/v3/keys/query",
                Some(&bob_token),
                json!({"device_keys": {
                    alice.as_str(): [],
                    format!("@nobody:{}", api.node.server_name()): [],
                }}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let queried = &body["device_keys"][alice.as_str()][device.as_str()];
        assert_eq!(queried["keys"], keys["keys"]);
        assert_eq!(queried["user_id"], alice.as_str());
        assert_eq!(queried["unsigned"]["device_display_name"], "Alice's phone");
        assert_eq!(body["device_keys"].as_object().unwrap().len(), 1, "{body}");
        assert!(body["failures"].as_object().is_none_or(|f| f.is_empty()));

        // Each claim takes another one-time key; then the fallback key, again and again.
        let claim = || {
            api.post(
                "/v3/keys/claim",
                Some(&bob_token),
                json!({"one_time_keys": {alice.as_str(): {device.as_str(): "signed_curve25519"}}}),
            )
        };
        let count = || {
            api.node
                .store()
                .one_time_key_counts(alice.clone(), device.clone())
        };
        let mut claimed = Vec::new();
        for left in [1, 0] {
            let (status, body) = claim().await;
            assert_eq!(status, 200, "{body}");
            let keys = body["one_time_keys"][alice.as_str()][device.as_str()]
                .as_object()
                .unwrap()
                .clone();
            assert_eq!(keys.len(), 1);
            claimed.extend(keys.into_iter());
            let counts = count().await.unwrap();
            assert_eq!(counts.get("signed_curve25519").copied().unwrap_or(0), left);
        }
        claimed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(claimed[0].0, "signed_curve25519:AAAAAQ");
        assert_eq!(claimed[0].1["key"], "b25l");
        assert_eq!(claimed[1].0, "signed_curve25519:AAAAAg");
        for _ in 0..2 {
            let (_, body) = claim().await;
            let key =
                &body["one_time_keys"][alice.as_str()][device.as_str()]["signed_curve25519:AAAAAw"];
            assert_eq!(key["key"], "ZmFsbGJhY2s", "{body}");
        }
        let (_, body) = api
            .post("/v3/keys/upload", Some(&alice_token), json!({}))
            .await;
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0);
    }

    #[tokio::test]
    async fn uploads_of_other_devices_keys_or_changed_one_time_keys_are_refused() {
        let api = Api::start().await;
        let (alice, token, device) = api.register("alice", "password").await;
        let (bob, _, bob_device) = api.register("bob", "password").await;
        for (user, device) in [(&bob, &device), (&alice, &bob_device)] {
            let (status, body) = api
                .post(
                    "/v3/keys/upload",
                    Some(&token),
                    json!({"device_keys": device_keys(user, device, "ZWQ")}),
                )
                .await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (400, Some("M_INVALID_PARAM")),
                "{body}"
            );
        }

        let upload = |key: &str| {
            api.post(
                "/v3/keys/upload",
                Some(&token),
                json!({"one_time_keys": {
                    "signed_curve25519:AAAAAQ": one_time_key(&alice, &device, key),
                }}),
            )
        };
        assert_eq!(upload("b25l").await.0, 200);
        // The same key again is fine (a retried upload).
        let (status, body) = upload("b25l").await;
        assert_eq!(status, 200);
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1);
        let (status, body) = upload("b3RoZXI").await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.starts_with("One time key"), "{message}");
        assert!(message.contains("Old key:") && message.contains("; new key:"));
    }

    #[tokio::test]
    async fn key_changes_between_sync_tokens() {
        let api = Api::start().await;
        let (alice, token, device) = api.register("alice", "password").await;
        let (bob, bob_token, bob_device) = api.register("bob", "password").await;
        let before = stream_position(&api).await;
        for (user, token, device) in [(&alice, &token, &device), (&bob, &bob_token, &bob_device)] {
            let (status, _) = api
                .post(
                    "/v3/keys/upload",
                    Some(token),
                    json!({"device_keys": device_keys(user, device, "ZWQ")}),
                )
                .await;
            assert_eq!(status, 200);
        }
        let after = stream_position(&api).await;
        assert!(after > before);
        let (status, body) = api
            .get(
                &format!("/v3/keys/changes?from=s{before}&to=s{after}"),
                Some(&token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // Bob shares no room with Alice.
        assert_eq!(body["changed"], json!([alice]));
        let (_, body) = api
            .get(
                &format!("/v3/keys/changes?from=s{after}&to=s{after}"),
                Some(&token),
            )
            .await;
        assert_eq!(body["changed"], json!([]));
        let (status, body) = api
            .get("/v3/keys/changes?from=yesterday&to=s1", Some(&token))
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM"))
        );

        // Once they share a room, Alice hears of Bob's changes.
        let (status, body) = api
            .post(
                "/v3/createRoom",
                Some(&token),
                json!({"preset": "public_chat"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room_id = body["room_id"].as_str().unwrap().to_owned();
        let (status, body) = api
            .post(&format!("/v3/join/{room_id}"), Some(&bob_token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = api
            .get(
                &format!("/v3/keys/changes?from=s{before}&to=s{after}"),
                Some(&token),
            )
            .await;
        assert_eq!(body["changed"], json!([alice, bob]));

        // Deleting a device with keys is a change too.
        let (status, _) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/v3/devices/{bob_device}"),
                Some(&bob_token),
                Some(json!({"auth": password_auth(&bob)})),
            )
            .await;
        assert_eq!(status, 200);
        let changed = api
            .node
            .store()
            .users_with_key_changes(after, stream_position(&api).await)
            .await
            .unwrap();
        assert_eq!(changed, [bob]);
    }

    #[tokio::test]
    async fn cross_signing_keys_and_signatures() {
        let api = Api::start().await;
        let (alice, token, device) = api.register("alice", "password").await;
        let (bob, bob_token, _) = api.register("bob", "password").await;
        let device_key = new_key(Some(&device));
        let keys = signed(
            &alice,
            &device_key.pair,
            device_keys(&alice, &device, &device_key.public),
        );
        let (status, _) = api
            .post(
                "/v3/keys/upload",
                Some(&token),
                json!({"device_keys": keys}),
            )
            .await;
        assert_eq!(status, 200);

        // Cross-signing keys: the first upload needs no password; the others must be signed by
        // the master key.
        let (master, self_signing, user_signing) = (new_key(None), new_key(None), new_key(None));
        let master_json = signed(
            &alice,
            &device_key.pair,
            cross_signing_key(&alice, "master", &master),
        );
        let unsigned_ssk = cross_signing_key(&alice, "self_signing", &self_signing);
        let (status, body) = api
            .post(
                "/v3/keys/device_signing/upload",
                Some(&token),
                json!({"master_key": master_json, "self_signing_key": unsigned_ssk}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{body}"
        );
        let upload = json!({
            "master_key": master_json,
            "self_signing_key": signed(&alice, &master.pair, unsigned_ssk),
            "user_signing_key": signed(
                &alice, &master.pair, cross_signing_key(&alice, "user_signing", &user_signing)),
        });
        let (status, body) = api
            .post(
                "/v3/keys/device_signing/upload",
                Some(&token),
                upload.clone(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // The same keys again change nothing and need no password either.
        let (status, _) = api
            .post("/v3/keys/device_signing/upload", Some(&token), upload)
            .await;
        assert_eq!(status, 200);

        let query = |token: String| {
            let alice = alice.clone();
            let api = &api;
            async move {
                let (status, body) = api
                    .post(
                        "/v3/keys/query",
                        Some(&token),
                        json!({"device_keys": {alice: []}}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                body
            }
        };
        let seen_by_bob = query(bob_token.clone()).await;
        assert_eq!(
            seen_by_bob["master_keys"][alice.as_str()]["keys"],
            json!({format!("ed25519:{}", master.public): master.public})
        );
        assert!(seen_by_bob["self_signing_keys"][alice.as_str()].is_object());
        assert!(
            seen_by_bob["user_signing_keys"]
                .get(alice.as_str())
                .is_none(),
            "only Alice sees her user-signing key"
        );
        assert!(query(token.clone()).await["user_signing_keys"][alice.as_str()].is_object());

        // Alice's self-signing key signs her device.
        let ssk_id = format!("ed25519:{}", self_signing.public);
        let signatures = |body: Value| api.post("/v3/keys/signatures/upload", Some(&token), body);
        let (status, body) = signatures(json!({alice.as_str(): {
            device.as_str(): signed(&alice, &self_signing.pair, keys.clone()),
        }}))
        .await;
        assert_eq!(status, 200);
        assert!(
            body["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{body}"
        );
        // The same signature again is not a failure (clients retry).
        let (_, body) = signatures(json!({alice.as_str(): {
            device.as_str(): signed(&alice, &self_signing.pair, keys.clone()),
        }}))
        .await;
        assert!(
            body["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{body}"
        );
        let queried = query(bob_token.clone()).await;
        let device_signatures =
            &queried["device_keys"][alice.as_str()][device.as_str()]["signatures"][alice.as_str()];
        assert!(device_signatures[&ssk_id].is_string(), "{queried}");
        assert!(device_signatures[format!("ed25519:{device}")].is_string());

        // A bad signature, a key the server does not hold, and a changed key fail.
        let mut forged = keys.clone();
        forged["signatures"][alice.as_str()][&ssk_id] = json!("Zm9yZ2Vk");
        let mut changed = signed(&alice, &self_signing.pair, keys.clone());
        changed["algorithms"] = json!(["something.else"]);
        let (status, body) = signatures(json!({alice.as_str(): {
            device.as_str(): forged,
            "NOSUCHDEVICE": signed(&alice, &self_signing.pair, keys.clone()),
        }}))
        .await;
        assert_eq!(status, 200);
        let failures = &body["failures"][alice.as_str()];
        assert_eq!(failures[device.as_str()]["errcode"], "M_INVALID_SIGNATURE");
        assert_eq!(failures["NOSUCHDEVICE"]["errcode"], "M_NOT_FOUND");
        let (_, body) = signatures(json!({alice.as_str(): {device.as_str(): changed}})).await;
        assert_eq!(
            body["failures"][alice.as_str()][device.as_str()]["errcode"],
            "M_INVALID_PARAM"
        );

        // Bob verifies Alice: his user-signing key signs her master key. Only he sees it.
        let (bob_master, bob_usk) = (new_key(None), new_key(None));
        let (status, _) = api
            .post(
                "/v3/keys/device_signing/upload",
                Some(&bob_token),
                json!({
                    "master_key": cross_signing_key(&bob, "master", &bob_master),
                    "user_signing_key": signed(&bob, &bob_master.pair,
                        cross_signing_key(&bob, "user_signing", &bob_usk)),
                }),
            )
            .await;
        assert_eq!(status, 200);
        let alice_master = query(bob_token.clone()).await["master_keys"][alice.as_str()].clone();
        let (status, body) = api
            .post(
                "/v3/keys/signatures/upload",
                Some(&bob_token),
                json!({alice.as_str(): {
                    master.public.as_str(): signed(&bob, &bob_usk.pair, alice_master),
                }}),
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            body["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{body}"
        );
        let bob_usk_id = format!("ed25519:{}", bob_usk.public);
        let seen_by_bob = query(bob_token.clone()).await;
        assert!(
            seen_by_bob["master_keys"][alice.as_str()]["signatures"][bob.as_str()][&bob_usk_id]
                .is_string(),
            "{seen_by_bob}"
        );
        let seen_by_alice = query(token.clone()).await;
        assert!(
            seen_by_alice["master_keys"][alice.as_str()]["signatures"]
                .get(bob.as_str())
                .is_none()
        );

        // Replacing a master key needs the password.
        let replacement =
            json!({"master_key": cross_signing_key(&alice, "master", &new_key(None))});
        let (status, body) = api
            .post(
                "/v3/keys/device_signing/upload",
                Some(&token),
                replacement.clone(),
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(body["flows"][0]["stages"][0], "m.login.password");
        let mut with_auth = replacement;
        with_auth["auth"] = password_auth(&alice);
        let (status, body) = api
            .post("/v3/keys/device_signing/upload", Some(&token), with_auth)
            .await;
        assert_eq!(status, 200, "{body}");
    }
}
