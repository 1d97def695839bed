//! Membership asked of this server by others: join templates and joins (`make_join`,
//! `send_join` v2), invites of this server's users (`invite` v2), and room alias lookups.

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use ruma::api::error::ErrorKind;
use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, ServerName,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::Origin;
use super::limits::{MAX_PDU_BYTES, check_invite_state, too_large};
use crate::client_api::MatrixError;
use crate::node::AppState;
use crate::rooms::{ROOM_VERSIONS, Received, membership_of, rules, verify_pdu};

pub(crate) async fn make_join(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path((room_id, user_id)): Path<(OwnedRoomId, OwnedUserId)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, MatrixError> {
    if user_id.server_name() != origin {
        return Err(MatrixError::forbidden(
            "A server may only make joins for its own users",
        ));
    }
    if !state.rooms.participating(&room_id).await? {
        return Err(MatrixError::not_found(format!(
            "This server is not in {room_id}"
        )));
    }
    let version = state.rooms.version(&room_id).await?;
    // The joining server lists the versions it supports; none means version 1 only.
    let supported = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ver="))
        .any(|v| v == version.as_str());
    if !supported {
        return Err(incompatible(&version));
    }
    let template = state
        .rooms
        .membership_template(&room_id, &user_id, "join")
        .await?;
    Ok(Json(json!({"event": template, "room_version": version})))
}

pub(crate) async fn make_leave(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path((room_id, user_id)): Path<(OwnedRoomId, OwnedUserId)>,
) -> Result<Json<Value>, MatrixError> {
    if user_id.server_name() != origin {
        return Err(MatrixError::forbidden(
            "A server may only make leaves for its own users",
        ));
    }
    if !state.rooms.participating(&room_id).await? {
        return Err(MatrixError::not_found(format!(
            "This server is not in {room_id}"
        )));
    }
    let version = state.rooms.version(&room_id).await?;
    let template = state
        .rooms
        .membership_template(&room_id, &user_id, "leave")
        .await?;
    Ok(Json(json!({"event": template, "room_version": version})))
}

/// `send_leave` (v2): a user of the origin leaves, or declines an invite, through this server.
pub(crate) async fn send_leave(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path((room_id, event_id)): Path<(OwnedRoomId, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    let (raw, _) = own_membership(&state, &origin, &room_id, &event_id, "leave", &body).await?;
    match state.rooms.receive_pdu(&origin, &raw).await? {
        (_, Received::Accepted | Received::Duplicate) => Ok(Json(json!({}))),
        (_, Received::Rejected(reason) | Received::SoftFailed(reason)) => Err(
            MatrixError::forbidden(format!("The leave is not allowed: {reason}")),
        ),
        (_, Received::SetAside(reason)) => Err(MatrixError::unknown(format!(
            "The leave cannot be checked yet: {reason}"
        ))),
    }
}

/// The body of a send_join or send_leave, checked to be the origin's own user's `membership`
/// event in this room under the given event id.
async fn own_membership(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    event_id: &str,
    membership: &str,
    body: &[u8],
) -> Result<(Box<RawValue>, crate::rooms::Pdu), MatrixError> {
    let raw: Box<RawValue> = serde_json::from_slice(body)
        .map_err(|e| MatrixError::bad_json(format!("The event is not JSON: {e}")))?;
    let version = state.rooms.version(room_id).await?;
    let json: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|e| MatrixError::bad_json(format!("The event is not canonical JSON: {e}")))?;
    let event = verify_pdu(&version, json)?;
    let own = event.kind == TimelineEventType::RoomMember
        && event.state_key.as_deref() == Some(event.sender.as_str())
        && membership_of(&event.content).as_deref() == Some(membership)
        && event.sender.server_name() == origin;
    if event.event_id.as_str() != event_id || event.room_id().as_deref() != Some(room_id) || !own {
        tracing::warn!(%origin, %room_id, membership, "refused a membership that is not the origin's own");
        return Err(MatrixError::bad_json(format!(
            "Not a {membership} of one of the sending server's users to this room"
        )));
    }
    Ok((raw, event))
}

fn incompatible(version: &RoomVersionId) -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::IncompatibleRoomVersion(
            ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
        ),
        format!("The room is version {version}, which the joining server does not support"),
    )
}

pub(crate) async fn send_join(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path((room_id, event_id)): Path<(OwnedRoomId, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    let (raw, join) = own_membership(&state, &origin, &room_id, &event_id, "join", &body).await?;
    match state.rooms.receive_pdu(&origin, &raw).await? {
        (_, Received::Accepted) => {}
        // A join sent again gets the answer again only while it is the user's membership: an
        // old join of a user who left or was banned since would hand the room's servers now,
        // and the state of then, to a server with no one in the room.
        (_, Received::Duplicate) => {
            let current = state
                .store
                .membership(room_id.to_string(), join.sender.to_string())
                .await?;
            if current.is_none_or(|m| m.membership != "join" || m.event_id != event_id) {
                return Err(MatrixError::forbidden(format!(
                    "{} is not joined by this event",
                    join.sender
                )));
            }
        }
        (_, Received::Rejected(reason) | Received::SoftFailed(reason)) => {
            return Err(MatrixError::forbidden(format!(
                "The join is not allowed: {reason}"
            )));
        }
        (_, Received::SetAside(reason)) => {
            return Err(MatrixError::unknown(format!(
                "The join cannot be checked yet: {reason}"
            )));
        }
    }
    let (room_state, auth_chain) = state.rooms.state_for_join(&room_id, &join.event_id).await?;
    let servers = state.rooms.servers_in_room(&room_id).await?;
    Ok(Json(json!({
        "state": room_state,
        "auth_chain": auth_chain,
        "event": join.json,
        "members_omitted": false,
        "servers_in_room": servers,
    })))
}

/// The EDU an inviting server sends, through the outbox (and so the mailbox), when the
/// invitee's server cannot be reached to countersign: the same body as `/invite` v2.
pub(crate) const INVITE_EDU: &str = "io.hyphae.invite";

/// An invite as `/invite` v2 carries it, and as the `io.hyphae.invite` EDU does.
pub(crate) struct InviteRequest {
    pub(crate) room_version: RoomVersionId,
    pub(crate) event: CanonicalJsonObject,
    pub(crate) invite_room_state: Vec<Box<RawValue>>,
}

/// An invite before its event and state are parsed.
#[derive(Deserialize)]
struct RawInvite<'a> {
    room_version: RoomVersionId,
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(default, borrow)]
    invite_room_state: Vec<&'a RawValue>,
}

impl InviteRequest {
    /// Reads an invite, refusing an event over a PDU's size or more room state than an invite
    /// shows before either is parsed.
    pub(crate) fn parse(body: &[u8]) -> Result<InviteRequest, MatrixError> {
        let raw: RawInvite = serde_json::from_slice(body)
            .map_err(|e| MatrixError::bad_json(format!("Malformed invite: {e}")))?;
        if raw.event.get().len() > MAX_PDU_BYTES {
            return Err(too_large(format!(
                "An invite event of {} bytes; at most {MAX_PDU_BYTES}",
                raw.event.get().len()
            )));
        }
        check_invite_state(&raw.invite_room_state)?;
        let event = serde_json::from_str(raw.event.get())
            .map_err(|e| MatrixError::bad_json(format!("Malformed invite event: {e}")))?;
        Ok(InviteRequest {
            room_version: raw.room_version,
            event,
            invite_room_state: raw
                .invite_room_state
                .into_iter()
                .map(ToOwned::to_owned)
                .collect(),
        })
    }
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: an invite for a user of this node.
pub(crate) async fn invite(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path((room_id, event_id)): Path<(OwnedRoomId, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    let request = InviteRequest::parse(&body)?;
    drop(body);
    let signed = take_invite(&state, &origin, request, Some((&room_id, &event_id))).await?;
    Ok(Json(json!({ "event": CanonicalJsonValue::Object(signed) })))
}

/// Takes an invite from `origin` for a user of this node, by `/invite` (`addressed`: the room
/// and event id in its path) or, from a server that could not reach this one, by an
/// `io.hyphae.invite` EDU that came through this node's mailbox: checked, countersigned, and
/// kept with the state the inviter showed unless this node is in the room already.
pub(crate) async fn take_invite(
    state: &AppState,
    origin: &ServerName,
    request: InviteRequest,
    addressed: Option<(&RoomId, &str)>,
) -> Result<CanonicalJsonObject, MatrixError> {
    if !ROOM_VERSIONS.contains(&request.room_version) {
        return Err(incompatible(&request.room_version));
    }
    let invite = verify_pdu(&request.room_version, request.event)?;
    let invitee = invite
        .state_key
        .as_deref()
        .and_then(|k| ruma::UserId::parse(k).ok());
    let Some(room_id) = invite.room_id() else {
        return Err(MatrixError::bad_json("An invite names its room"));
    };
    let well_formed = addressed.is_none_or(|(room, event_id)| {
        invite.event_id.as_str() == event_id && room_id.as_str() == room.as_str()
    }) && invite.kind == TimelineEventType::RoomMember
        && membership_of(&invite.content).as_deref() == Some("invite")
        && invite.sender.server_name() == origin;
    let Some(invitee) = invitee.filter(|_| well_formed) else {
        tracing::warn!(%origin, %room_id, "refused a malformed invite");
        return Err(MatrixError::bad_json(
            "Not an invite from the sending server to this room",
        ));
    };
    if let Some((list, reason)) = state
        .policy
        .node_verdict(&crate::policy::Subject::user(&invite.sender))
    {
        tracing::warn!(%origin, %room_id, inviter = %invite.sender, %list, %reason, "refusing an invite at the federation edge");
        return Err(MatrixError::forbidden(reason));
    }
    if invitee.server_name() != state.server_name
        || state
            .store
            .account(invitee.localpart().to_owned())
            .await?
            .is_none()
    {
        return Err(MatrixError::not_found(format!("No user {invitee} here")));
    }
    admit_invite(state, origin, &invitee).await?;
    let mut signed = invite.json.clone();
    let rules = rules(&request.room_version)?;
    state
        .signing_key
        .hash_and_sign_event(&mut signed, &rules.redaction)
        .map_err(|e| MatrixError::unknown(format!("signing the invite: {e}")))?;
    // A room this node is in gets the invite through the room like any event; otherwise it is
    // kept with the state the inviter showed, until the invitee joins or declines.
    if !state.rooms.participating(&room_id).await? {
        state
            .rooms
            .record_remote_invite(
                &request.room_version,
                &invite,
                &signed,
                &request.invite_room_state,
            )
            .await?;
    }
    tracing::info!(%origin, %room_id, %invitee, "invited by another server");
    Ok(signed)
}

/// Invites cost the invitee's attention and the node's store: a server may invite only at a
/// pace (overall, and per invitee), and a user with `pending_invites` waiting gets no more from
/// other servers until they answer some.
async fn admit_invite(
    state: &AppState,
    origin: &ServerName,
    invitee: &ruma::UserId,
) -> Result<(), MatrixError> {
    if let Err(wait) = state.limits.invite(origin, invitee) {
        tracing::info!(%origin, %invitee, "invites over the pace; refused");
        return Err(MatrixError::limit_exceeded(wait));
    }
    let waiting = state
        .store
        .memberships_of(invitee.to_string())
        .await?
        .iter()
        .filter(|m| m.membership == "invite")
        .count();
    if waiting >= state.limits.config.pending_invites as usize {
        tracing::info!(%origin, %invitee, waiting, "too many invites waiting; refused");
        return Err(MatrixError::forbidden(format!(
            "{invitee} has {waiting} invites waiting already"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct DirectoryQuery {
    room_alias: OwnedRoomAliasId,
}

/// `query/directory`: which room a local alias names, and servers to join it through.
pub(crate) async fn query_directory(
    State(state): State<AppState>,
    Origin(_): Origin,
    Query(query): Query<DirectoryQuery>,
) -> Result<Json<Value>, MatrixError> {
    let Some(room_id) = state.store.alias_room(query.room_alias.to_string()).await? else {
        return Err(MatrixError::not_found(format!(
            "Room alias {} not found",
            query.room_alias
        )));
    };
    let mut servers = vec![state.server_name.to_string()];
    if let Ok(room_id) = ruma::RoomId::parse(&room_id) {
        servers.extend(state.rooms.servers_in_room(&room_id).await?);
    }
    servers.dedup();
    Ok(Json(json!({"room_id": room_id, "servers": servers})))
}
