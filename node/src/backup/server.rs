//! The backup server's federation endpoints (`/_matrix/federation/unstable/io.hyphae.backup/…`).
//! Every one takes the subscriber to be the authenticated peer (`Origin`), so a server can
//! only subscribe, fill, read or delete its own replica.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use hyphae_store::{BackupSubscriber, ReplicaOutcome, ReplicaPdu};
use ruma::api::error::ErrorKind;
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::client_api::MatrixError;
use crate::federation::Origin;
use crate::node::AppState;
use crate::rooms::{RoomError, verify_pdu};

/// At most this many PDUs per replica request.
pub(crate) const MAX_REPLICA_PDUS: usize = 100;
/// The largest tag an entry may carry (its recorded state names an event id per state entry:
/// a room of several thousand members).
const MAX_TAG_BYTES: usize = 512 << 10;
const MAX_PAGE: u32 = 500;

/// Where invitations wait; `None` when this node is not a backup server (then these endpoints
/// do not exist).
pub(super) fn invites(state: &AppState) -> Result<&std::path::Path, MatrixError> {
    state.backup_invites.as_deref().ok_or_else(|| {
        MatrixError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::Unrecognized,
            "Not a backup server",
        )
    })
}

pub(super) async fn subscriber_of(
    state: &AppState,
    origin: &Origin,
) -> Result<BackupSubscriber, MatrixError> {
    invites(state)?;
    state
        .store
        .backup_subscriber(origin.0.to_string())
        .await?
        .ok_or_else(|| MatrixError::forbidden("Not subscribed to this backup server"))
}

fn usage(subscriber: &BackupSubscriber) -> Value {
    json!({
        "quota_bytes": subscriber.quota_bytes,
        "bytes_used": subscriber.bytes_used,
        "pdus": subscriber.pdus,
    })
}

#[derive(Deserialize)]
pub(crate) struct Subscribe {
    token: String,
}

/// `POST …/subscribe {"token"}`: uses the token up and subscribes the peer; a bad or used
/// token is 403 `M_FORBIDDEN`.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    origin: Origin,
    Json(body): Json<Subscribe>,
) -> Result<Json<Value>, MatrixError> {
    let dir = invites(&state)?;
    if let Err(e) = super::invite::import(&state.store, dir).await {
        tracing::warn!(error = %e, "cannot take in backup invitations");
    }
    let hash = super::invite::token_hash(&body.token);
    match state
        .store
        .backup_subscribe(origin.0.to_string(), hash)
        .await?
    {
        Some(subscriber) => {
            tracing::info!(subscriber = %origin.0, quota = subscriber.quota_bytes, "backup subscription");
            Ok(Json(usage(&subscriber)))
        }
        None => {
            tracing::warn!(peer = %origin.0, "backup subscription with a bad or used token");
            Err(MatrixError::forbidden(
                "Unknown or already used subscription token",
            ))
        }
    }
}

/// `POST …/unsubscribe`: deletes everything kept for the peer. Repeating it is harmless.
pub(crate) async fn unsubscribe(
    State(state): State<AppState>,
    origin: Origin,
) -> Result<Json<Value>, MatrixError> {
    invites(&state)?;
    let deleted = state.store.backup_unsubscribe(origin.0.to_string()).await?;
    tracing::info!(subscriber = %origin.0, deleted, "backup subscription ended; data deleted");
    Ok(Json(json!({"deleted_pdus": deleted})))
}

/// `GET …/status`: the peer's quota and usage.
pub(crate) async fn status(
    State(state): State<AppState>,
    origin: Origin,
) -> Result<Json<Value>, MatrixError> {
    Ok(Json(usage(&subscriber_of(&state, &origin).await?)))
}

#[derive(Deserialize)]
pub(crate) struct ReplicaBatch {
    pdus: Vec<ReplicaItem>,
}

#[derive(Deserialize)]
pub(crate) struct ReplicaItem {
    /// The PDU's room version: how to check it (this server is not in the room).
    room_version: String,
    pdu: Box<RawValue>,
    /// The device's tag (`tag.rs`), kept as it came: only the device can check it.
    #[serde(default)]
    tag: Option<Box<RawValue>>,
}

/// `POST …/replica {"pdus": [{"room_version", "pdu", "tag"}]}`: stores the PDUs whose
/// signatures (by their sender's server) and hashes check, in order, as far as the quota
/// allows, each with the device's tag (a PDU kept already takes its new tag). The answer has a
/// result per PDU in request order: `{}` when kept (or already kept), else `{"errcode",
/// "error"}`, with `M_RESOURCE_LIMIT_EXCEEDED` once the quota is full.
pub(crate) async fn put_replica(
    State(state): State<AppState>,
    origin: Origin,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    subscriber_of(&state, &origin).await?;
    let batch: ReplicaBatch = serde_json::from_slice(&body)
        .map_err(|e| MatrixError::bad_json(format!("Malformed replica batch: {e}")))?;
    if batch.pdus.len() > MAX_REPLICA_PDUS {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge,
            format!("At most {MAX_REPLICA_PDUS} PDUs per request"),
        ));
    }
    let mut results: Vec<Option<Value>> = Vec::with_capacity(batch.pdus.len());
    let mut checked = Vec::new();
    let mut redactions = Vec::new();
    for item in &batch.pdus {
        match check(item) {
            Ok((pdu, is_redaction)) => {
                if is_redaction {
                    redactions.push((item.room_version.clone(), pdu.json.clone()));
                }
                checked.push(pdu);
                results.push(None);
            }
            Err((errcode, error)) => {
                tracing::warn!(subscriber = %origin.0, %error, "refused a replica PDU");
                results.push(Some(json!({"errcode": errcode, "error": error})));
            }
        }
    }
    let Some(outcomes) = state
        .store
        .backup_store_replica(origin.0.to_string(), checked)
        .await?
    else {
        // Unsubscribed while this request was under way.
        return Err(MatrixError::forbidden(
            "Not subscribed to this backup server",
        ));
    };
    for (version, redaction) in redactions {
        redact_replica(&state, &origin, &version, &redaction).await?;
    }
    let subscriber = subscriber_of(&state, &origin).await?;
    let mut outcomes = outcomes.into_iter();
    let results: Vec<Value> = results
        .into_iter()
        .map(|result| match result {
            Some(error) => error,
            None => match outcomes.next() {
                Some(ReplicaOutcome::Stored | ReplicaOutcome::Duplicate) => json!({}),
                Some(ReplicaOutcome::OverQuota) | None => json!({
                    "errcode": "M_RESOURCE_LIMIT_EXCEEDED",
                    "error": format!(
                        "Backup quota of {} bytes exhausted ({} used)",
                        subscriber.quota_bytes, subscriber.bytes_used
                    ),
                }),
            },
        })
        .collect();
    let mut answer = usage(&subscriber);
    answer["results"] = Value::Array(results);
    Ok(Json(answer))
}

/// Applies a redaction the subscriber kept to the replica's copy of its target, so what a
/// user deleted does not outlive the deletion here. Without the room's state this server
/// cannot tell a moderator's power, so only a sender's redaction of their own event (which
/// the auth rules always allow) is applied here; the device applies the others, and a restore
/// brings back what it kept.
async fn redact_replica(
    state: &AppState,
    origin: &Origin,
    version: &str,
    redaction: &str,
) -> Result<(), MatrixError> {
    let Ok(redaction) = serde_json::from_str::<CanonicalJsonObject>(redaction) else {
        return Ok(());
    };
    let field = |object: &CanonicalJsonObject, name: &str| match object.get(name) {
        Some(ruma::CanonicalJsonValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    if field(&redaction, "type").as_deref() != Some("m.room.redaction") {
        return Ok(());
    }
    // `redacts` is in the content from room version 11 on, at the top level before.
    let content_redacts = match redaction.get("content") {
        Some(ruma::CanonicalJsonValue::Object(content)) => field(content, "redacts"),
        _ => None,
    };
    let Some(target_id) = content_redacts.or_else(|| field(&redaction, "redacts")) else {
        return Ok(());
    };
    let subscriber = origin.0.to_string();
    let Some(target) = state
        .store
        .backup_replica_pdu(subscriber.clone(), target_id.clone())
        .await?
    else {
        return Ok(());
    };
    let (Ok(target), Ok(version)) = (
        serde_json::from_str::<CanonicalJsonObject>(&target),
        RoomVersionId::try_from(version),
    ) else {
        return Ok(());
    };
    if field(&target, "sender") != field(&redaction, "sender") {
        return Ok(());
    }
    let Some(rules) = version.rules() else {
        return Ok(());
    };
    let because = ruma::canonical_json::RedactedBecause::from_json(redaction);
    let Ok(redacted) = ruma::canonical_json::redact(target, &rules.redaction, Some(because)) else {
        return Ok(());
    };
    let redacted =
        serde_json::to_string(&redacted).map_err(|e| MatrixError::unknown(e.to_string()))?;
    state
        .store
        .backup_redact_replica_pdu(subscriber, target_id, redacted)
        .await?;
    Ok(())
}

/// A replica PDU, checked as any received PDU is (format, signatures, content hash; a PDU
/// whose content does not match its hash is kept redacted), but not authorised: the server
/// keeps a copy and is no member of the room. Says whether it is a redaction.
fn check(item: &ReplicaItem) -> Result<(ReplicaPdu, bool), (&'static str, String)> {
    if item
        .tag
        .as_ref()
        .is_some_and(|tag| tag.get().len() > MAX_TAG_BYTES)
    {
        return Err((
            "M_TOO_LARGE",
            format!("a tag holds at most {MAX_TAG_BYTES} bytes"),
        ));
    }
    let version = RoomVersionId::try_from(item.room_version.as_str())
        .map_err(|e| ("M_BAD_JSON", format!("room version: {e}")))?;
    let max = crate::federation::limits::MAX_PDU_BYTES;
    if item.pdu.get().len() > max {
        return Err(("M_TOO_LARGE", format!("a PDU over {max} bytes")));
    }
    let json: CanonicalJsonObject = serde_json::from_str(item.pdu.get())
        .map_err(|e| ("M_BAD_JSON", format!("not a PDU: {e}")))?;
    let pdu = verify_pdu(&version, json).map_err(|e| match e {
        RoomError::Forbidden(message) => ("M_FORBIDDEN", message),
        other => ("M_BAD_JSON", other.to_string()),
    })?;
    let room_id = pdu
        .room_id()
        .ok_or(("M_BAD_JSON", "the PDU names no room".to_owned()))?
        .to_string();
    let json = serde_json::to_string(&pdu.json).map_err(|e| ("M_BAD_JSON", e.to_string()))?;
    let is_redaction = pdu.kind == ruma::events::TimelineEventType::RoomRedaction;
    Ok((
        ReplicaPdu {
            event_id: pdu.event_id.to_string(),
            room_id,
            json,
            tag: item.tag.as_ref().map(|tag| tag.get().to_owned()),
        },
        is_redaction,
    ))
}

#[derive(Deserialize)]
pub(crate) struct Page {
    room_id: Option<String>,
    #[serde(default)]
    from: i64,
    limit: Option<u32>,
}

/// `GET …/replica?room_id=&from=&limit=`: the peer's own replica, in the order received, and
/// beside it each entry's tag (`null` for one that came without); `next_from` is where the
/// next page starts (absent at the end).
pub(crate) async fn get_replica(
    State(state): State<AppState>,
    origin: Origin,
    Query(page): Query<Page>,
) -> Result<Json<Value>, MatrixError> {
    subscriber_of(&state, &origin).await?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let entries = state
        .store
        .backup_replica_page(origin.0.to_string(), page.room_id, page.from, limit)
        .await?;
    let next_from = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let (pdus, tags): (Vec<Box<RawValue>>, Vec<Option<Box<RawValue>>>) = entries
        .into_iter()
        .filter_map(|e| {
            let tag = e.tag.and_then(|tag| RawValue::from_string(tag).ok());
            Some((RawValue::from_string(e.json).ok()?, tag))
        })
        .unzip();
    let mut answer = json!({"pdus": pdus, "tags": tags});
    if let Some(next) = next_from {
        answer["next_from"] = json!(next);
    }
    Ok(Json(answer))
}
