//! Read receipts, read markers and typing notifications: what the room's members see of each
//! other's reading and typing, sent in `/sync` as ephemeral events.

use axum::extract::State;
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::api::client::typing::create_typing_event::{self, v3::Typing};
use ruma::{EventId, RoomId, UserId};
use serde_json::json;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use super::rooms::require_joined;
use crate::node::AppState;

/// Stores a receipt (or, for `m.fully_read`, the read marker in the room's account data).
async fn mark(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    receipt_type: &str,
    thread_id: String,
    event_id: &EventId,
) -> Result<(), MatrixError> {
    let belongs = state
        .rooms
        .event(event_id)
        .await?
        .is_some_and(|pdu| pdu.room_id().as_deref() == Some(room_id));
    if !belongs {
        return Err(MatrixError::not_found("No such event in this room"));
    }
    match receipt_type {
        "m.fully_read" => {
            state
                .store
                .set_account_data(
                    user.localpart.clone(),
                    Some(room_id.to_string()),
                    "m.fully_read".into(),
                    json!({"event_id": event_id}).to_string(),
                )
                .await?
        }
        "m.read" | "m.read.private" => {
            state
                .store
                .set_receipt(
                    room_id.to_string(),
                    user.user_id.to_string(),
                    receipt_type.to_owned(),
                    thread_id.clone(),
                    event_id.to_string(),
                )
                .await?;
            if receipt_type == "m.read" {
                let mut data = json!({"ts": ruma::MilliSecondsSinceUnixEpoch::now()});
                if !thread_id.is_empty() {
                    data["thread_id"] = thread_id.into();
                }
                let edu = json!({"edu_type": "m.receipt", "content": {room_id.as_str(): {
                    "m.read": {user.user_id.as_str(): {"event_ids": [event_id], "data": data}}
                }}});
                tell_room_servers(state, room_id, edu).await;
            }
        }
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown receipt type {other}"
            )));
        }
    }
    Ok(())
}

pub(crate) async fn receipt(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_receipt::v3::Request>,
) -> ApiResult<create_receipt::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let thread = request.thread.as_str().unwrap_or_default().to_owned();
    mark(
        &state,
        &user,
        &request.room_id,
        request.receipt_type.as_str(),
        thread,
        &request.event_id,
    )
    .await?;
    Ok(Ruma(create_receipt::v3::Response::new()))
}

pub(crate) async fn read_markers(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    for (kind, event_id) in [
        ("m.fully_read", &request.fully_read),
        ("m.read", &request.read_receipt),
        ("m.read.private", &request.private_read_receipt),
    ] {
        if let Some(event_id) = event_id {
            mark(
                &state,
                &user,
                &request.room_id,
                kind,
                String::new(),
                event_id,
            )
            .await?;
        }
    }
    Ok(Ruma(set_read_marker::v3::Response::new()))
}

pub(crate) async fn typing(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_typing_event::v3::Request>,
) -> ApiResult<create_typing_event::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden(
            "You can only say that you are typing",
        ));
    }
    require_joined(&state, &request.room_id, &user).await?;
    let timeout = match request.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    state.typing.set(&request.room_id, &user.user_id, timeout);
    let edu = json!({"edu_type": "m.typing", "content": {
        "room_id": request.room_id, "user_id": user.user_id, "typing": timeout.is_some(),
    }});
    tell_room_servers(&state, &request.room_id, edu).await;
    Ok(Ruma(create_typing_event::v3::Response::new()))
}

/// Sends an EDU to the room's other servers. What a user sees locally does not wait on them,
/// and a failure to queue costs only the others' view of a receipt or of typing.
async fn tell_room_servers(state: &AppState, room_id: &RoomId, edu: serde_json::Value) {
    let servers = match state.rooms.servers_in_room(room_id).await {
        Ok(servers) => servers,
        Err(e) => {
            tracing::warn!(%room_id, error = %e, "could not list the room's servers");
            return;
        }
    };
    let servers = servers
        .into_iter()
        .filter_map(|s| ruma::OwnedServerName::try_from(s).ok())
        .collect();
    if let Err(e) = state.federation.queue_edu(servers, edu).await {
        tracing::warn!(%room_id, error = %e, "could not queue an EDU for the room's servers");
    }
}

/// The ephemeral events of a joined room for `viewer`: receipts changed in `(after, upto]`
/// (private ones only the viewer's own) and typing, if it changed after `typing_since`.
pub(crate) async fn room_ephemeral(
    state: &AppState,
    viewer: &UserId,
    room_id: &RoomId,
    after: i64,
    upto: i64,
    typing_since: Option<u64>,
) -> Result<Vec<serde_json::Value>, MatrixError> {
    let mut events = Vec::new();
    let mut receipts = serde_json::Map::new();
    for receipt in state
        .store
        .receipts(room_id.to_string(), after, upto)
        .await?
    {
        if receipt.receipt_type == "m.read.private" && receipt.user_id != viewer.as_str() {
            continue;
        }
        let mut data = json!({"ts": receipt.ts});
        if !receipt.thread_id.is_empty() {
            data["thread_id"] = receipt.thread_id.clone().into();
        }
        let by_type = receipts
            .entry(receipt.event_id.clone())
            .or_insert_with(|| json!({}));
        by_type[&receipt.receipt_type][&receipt.user_id] = data;
    }
    if !receipts.is_empty() {
        events.push(json!({"type": "m.receipt", "content": receipts}));
    }
    let (typing, changed) = state.typing.in_room(room_id, typing_since);
    if changed {
        events.push(json!({"type": "m.typing", "content": {"user_ids": typing}}));
    }
    Ok(events)
}
