//! The app's room-key backup kept on the backup server entry by entry: the device sends the
//! entries its server-side key backup (`room_keys`) holds and the backup server lacks, and a
//! restore pages through them. The entries are encrypted to the backup key on the device (the
//! spec's `m.megolm_backup.v1.curve25519-aes-sha2`), so the server cannot read them; they count
//! against the subscriber's quota.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use hyphae_store::BackupKey;
use ruma::ServerName;
use ruma::api::error::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::BackupError;
use super::server::subscriber_of;
use crate::client_api::MatrixError;
use crate::federation::{Federation, Origin};
use crate::node::AppState;

pub(crate) const ROOM_KEYS_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/room_keys";
/// Entries per request, both ways.
const BATCH: u32 = 500;

/// One entry as it travels: the store's `BackupKey`, whose `data` is the spec's
/// `KeyBackupData` as JSON.
#[derive(Serialize, Deserialize)]
pub(crate) struct Entry {
    room_id: String,
    session_id: String,
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    data: String,
}

impl From<BackupKey> for Entry {
    fn from(key: BackupKey) -> Entry {
        Entry {
            room_id: key.room_id,
            session_id: key.session_id,
            first_message_index: key.first_message_index,
            forwarded_count: key.forwarded_count,
            is_verified: key.is_verified,
            data: key.data,
        }
    }
}

impl From<Entry> for BackupKey {
    fn from(entry: Entry) -> BackupKey {
        BackupKey {
            room_id: entry.room_id,
            session_id: entry.session_id,
            first_message_index: entry.first_message_index,
            forwarded_count: entry.forwarded_count,
            is_verified: entry.is_verified,
            data: entry.data,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Upload {
    version: String,
    keys: Vec<Entry>,
}

/// `PUT …/room_keys {"version", "keys"}`: keeps the subscriber's entries of that backup version
/// (entries of an older version are dropped). Over the quota: `M_RESOURCE_LIMIT_EXCEEDED`, and
/// nothing of the request is kept.
pub(crate) async fn put_room_keys(
    State(state): State<AppState>,
    origin: Origin,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    // Only a subscriber's upload is read at all.
    subscriber_of(&state, &origin).await?;
    let upload: Upload = serde_json::from_slice(&body)
        .map_err(|e| MatrixError::bad_json(format!("Malformed room keys: {e}")))?;
    drop(body);
    if upload.keys.len() > BATCH as usize {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge,
            format!("At most {BATCH} keys per request"),
        ));
    }
    if upload
        .keys
        .iter()
        .any(|k| serde_json::from_str::<serde_json::Map<String, Value>>(&k.data).is_err())
    {
        return Err(MatrixError::bad_json("A key's data is not a JSON object"));
    }
    let count = upload.keys.len();
    let keys = upload.keys.into_iter().map(BackupKey::from).collect();
    match state
        .store
        .backup_put_room_keys(origin.0.to_string(), upload.version, keys)
        .await?
    {
        Some(true) => Ok(Json(json!({"count": count}))),
        Some(false) => Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::ResourceLimitExceeded(
                ruma::api::error::ResourceLimitExceededErrorData::new(String::new()),
            ),
            "Backup quota exhausted: the room keys were not kept",
        )),
        None => Err(MatrixError::forbidden(
            "Not subscribed to this backup server",
        )),
    }
}

#[derive(Deserialize)]
pub(crate) struct Page {
    version: String,
    #[serde(default)]
    from: i64,
}

/// `GET …/room_keys?version=&from=`: a page of the subscriber's own entries; `next_from` is
/// where the next starts (absent at the end).
pub(crate) async fn get_room_keys(
    State(state): State<AppState>,
    origin: Origin,
    Query(page): Query<Page>,
) -> Result<Json<Value>, MatrixError> {
    subscriber_of(&state, &origin).await?;
    let keys = state
        .store
        .backup_room_keys_page(origin.0.to_string(), page.version, page.from, BATCH)
        .await?;
    let next_from = (keys.len() == BATCH as usize)
        .then(|| keys.last().map(|(id, _)| *id))
        .flatten();
    let keys: Vec<Entry> = keys.into_iter().map(|(_, key)| key.into()).collect();
    let mut answer = json!({"keys": keys});
    if let Some(next) = next_from {
        answer["next_from"] = json!(next);
    }
    Ok(Json(answer))
}

/// Sends the backup server the owner's room-key entries it does not have yet; how many. Nothing
/// to do without a subscription, an owner or a key backup.
pub(crate) async fn push(state: &AppState) -> Result<usize, BackupError> {
    let (Some(owner), Some(subscription)) = (
        state.owner.clone(),
        state.store.backup_subscription().await?,
    ) else {
        return Ok(0);
    };
    let server = <&ServerName>::try_from(subscription.server.as_str())
        .map_err(|e| BackupError::BadServerName(subscription.server.clone(), e.to_string()))?;
    let mut sent = 0;
    loop {
        let Some((version, keys)) = state
            .store
            .backup_keys_not_on_server(owner.clone(), BATCH)
            .await?
        else {
            return Ok(sent);
        };
        if keys.is_empty() {
            return Ok(sent);
        }
        let entries: Vec<Entry> = keys.iter().cloned().map(Entry::from).collect();
        let _: Value = state
            .federation
            .request(
                server,
                Method::PUT,
                ROOM_KEYS_PATH,
                Some(&json!({"version": version, "keys": entries})),
            )
            .await?;
        sent += keys.len();
        state
            .store
            .mark_backup_keys_on_server(owner.clone(), version, keys)
            .await?;
    }
}

/// Every room-key entry of backup `version` the backup server `server` keeps for this node.
pub(crate) async fn fetch(
    federation: &Federation,
    server: &ServerName,
    version: &str,
) -> Result<Vec<BackupKey>, BackupError> {
    let mut keys = Vec::new();
    let mut from = 0;
    loop {
        let path = format!(
            "{ROOM_KEYS_PATH}?version={}&from={from}",
            crate::rooms::urlencode(version)
        );
        let answer: Value = federation.request(server, Method::GET, &path, None).await?;
        let page: Vec<Entry> = serde_json::from_value(answer["keys"].clone())
            .map_err(|e| BackupError::BadResponse(format!("room keys: {e}")))?;
        keys.extend(page.into_iter().map(BackupKey::from));
        match answer["next_from"].as_i64() {
            Some(next) if next > from => from = next,
            _ => return Ok(keys),
        }
    }
}
