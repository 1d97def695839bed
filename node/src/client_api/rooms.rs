//! Rooms over the Client-Server API: creating, membership, sending, state, aliases.

use std::collections::BTreeMap;

use axum::extract::State;
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::membership::{
    ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_members,
    joined_rooms, kick_user, leave_room, unban_user,
};
use ruma::api::client::message::send_message_event;
use ruma::api::client::redact::redact_event;
use ruma::api::client::room::create_room;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, UserId};
use serde_json::{Value, json};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::events::ClientEvents;
use super::request::{Req, User};
use crate::node::AppState;
use crate::rooms::{EventDraft, NewRoom, Pdu, ROOM_VERSIONS};

/// Refuses users who are not joined to the room.
pub(crate) async fn require_joined(
    state: &AppState,
    room_id: &RoomId,
    user: &User,
) -> Result<(), MatrixError> {
    let membership = state
        .store
        .membership(room_id.to_string(), user.user_id.to_string())
        .await?;
    match membership {
        Some(m) if m.membership == "join" => Ok(()),
        _ => Err(MatrixError::forbidden(format!(
            "{} is not in room {room_id}",
            user.user_id
        ))),
    }
}

fn json_object(
    raw: &serde_json::value::RawValue,
    what: &str,
) -> Result<serde_json::Map<String, Value>, MatrixError> {
    match serde_json::from_str(raw.get()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(MatrixError::bad_json(format!(
            "{what} must be a JSON object"
        ))),
    }
}

pub(crate) async fn create(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_room::v3::Request>,
) -> ApiResult<create_room::v3::Response> {
    let version = request
        .room_version
        .unwrap_or_else(|| ROOM_VERSIONS[0].clone());
    if !ROOM_VERSIONS.contains(&version) {
        return Err(crate::rooms::RoomError::UnsupportedVersion(version.to_string()).into());
    }
    let preset = match request.preset {
        Some(preset) => preset.as_str().to_owned(),
        None if request.visibility == ruma::api::client::room::Visibility::Public => {
            "public_chat".into()
        }
        None => "private_chat".into(),
    };
    let mut creation_content = match &request.creation_content {
        Some(raw) => json_object(raw.json(), "creation_content")?,
        None => serde_json::Map::new(),
    };
    creation_content.remove("room_version");
    creation_content.remove("creator");
    let power_level_override = match &request.power_level_content_override {
        Some(raw) => Some(json_object(raw.json(), "power_level_content_override")?),
        None => None,
    };
    let mut initial_state = Vec::new();
    for raw in &request.initial_state {
        let event = json_object(raw.json(), "an initial_state event")?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| MatrixError::bad_json("initial_state event without a type"))?;
        let state_key = event.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push((StateEventType::from(kind), state_key.to_owned(), content));
    }
    let alias = match &request.room_alias_name {
        Some(name) => {
            let alias = RoomAliasId::parse(format!("#{name}:{}", state.server_name))
                .map_err(|e| MatrixError::invalid_param(format!("room_alias_name: {e}")))?;
            if state.store.alias_room(alias.to_string()).await?.is_some() {
                return Err(MatrixError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::RoomInUse,
                    "That room alias is taken",
                ));
            }
            Some(alias.to_string())
        }
        None => None,
    };
    let room_id = state
        .rooms
        .create_room(
            &user.user_id,
            NewRoom {
                version,
                creation_content,
                preset,
                power_level_override,
                initial_state,
                name: request.name,
                topic: request.topic,
                alias,
                invite: request.invite,
                is_direct: request.is_direct,
            },
        )
        .await?;
    if request.visibility == ruma::api::client::room::Visibility::Public {
        state
            .store
            .set_room_published(room_id.to_string(), true)
            .await?;
    }
    Ok(Ruma(create_room::v3::Response::new(room_id)))
}

/// Sets `target`'s membership in a room as `sender`; the auth rules decide whether it may.
async fn set_membership(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: &str,
    reason: Option<String>,
) -> Result<(), MatrixError> {
    let mut content = match membership {
        "join" | "invite" => state.rooms.member_content(target, membership).await?,
        _ => json!({"membership": membership}),
    };
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    state
        .rooms
        .send(
            room_id,
            sender,
            EventDraft::state(StateEventType::RoomMember, target.as_str(), content),
        )
        .await?;
    Ok(())
}

pub(crate) async fn invite(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<invite_user::v3::Request>,
) -> ApiResult<invite_user::v3::Response> {
    let invite_user::v3::InvitationRecipient::UserId(invitee) = request.recipient else {
        return Err(MatrixError::invalid_param(
            "Third-party invites are not supported",
        ));
    };
    set_membership(
        &state,
        &request.room_id,
        &user.user_id,
        &invitee.user_id,
        "invite",
        invitee.reason,
    )
    .await?;
    Ok(Ruma(invite_user::v3::Response::new()))
}

async fn join(
    state: &AppState,
    user_id: &UserId,
    room_id: &RoomId,
    alias: Option<&RoomAliasId>,
    reason: Option<String>,
    via: &[OwnedServerName],
) -> Result<(), MatrixError> {
    // The user's own policy lists may ban the room: refused for every client of theirs.
    let subject = crate::policy::Subject {
        room: Some(room_id.as_str()),
        room_alias: alias.map(|a| a.as_str()),
        ..Default::default()
    };
    if let Some(verdict) = state.policy.user_verdict(user_id.localpart(), &subject) {
        return Err(MatrixError::forbidden(format!(
            "Your policy list {} bans this room: rule {} ({})",
            verdict.list, verdict.entity, verdict.reason
        )));
    }
    if state.rooms.participating(room_id).await? {
        return set_membership(state, room_id, user_id, user_id, "join", reason).await;
    }
    // A room held by other servers: join through the inviter's server (clients join by room id
    // alone), then any the client or an alias named, then those whose directory listed it.
    let mut servers = state.rooms.invite_servers(room_id, user_id).await?;
    servers.extend(via.iter().cloned());
    // A room picked from the directory: the servers that listed it.
    servers.extend(state.directory.servers_listing(room_id));
    servers.retain(|s| *s != state.server_name);
    if servers.is_empty() {
        return Err(MatrixError::not_found(format!(
            "Room {room_id} is not known to this server, and no server to join it through is"
        )));
    }
    state.rooms.join_remote(room_id, user_id, &servers).await?;
    Ok(())
}

pub(crate) async fn join_by_id(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    join(
        &state,
        &user.user_id,
        &request.room_id,
        None,
        request.reason,
        &[],
    )
    .await?;
    Ok(Ruma(join_room_by_id::v3::Response::new(request.room_id)))
}

pub(crate) async fn join_by_id_or_alias(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let room_id = join_id_or_alias(
        &state,
        &user.user_id,
        &request.room_id_or_alias,
        request.reason,
        request.via.clone(),
    )
    .await?;
    Ok(Ruma(join_room_by_id_or_alias::v3::Response::new(room_id)))
}

/// Joins a local user to a room named by id or alias (resolved here or by the server it
/// names); the room's id.
pub(crate) async fn join_room(
    state: &AppState,
    user_id: &UserId,
    room: &str,
    via: &[OwnedServerName],
) -> Result<OwnedRoomId, MatrixError> {
    let room = ruma::OwnedRoomOrAliasId::try_from(room).map_err(|e| {
        MatrixError::invalid_param(format!("{room:?} is not a room id or alias: {e}"))
    })?;
    join_id_or_alias(state, user_id, &room, None, via.to_vec()).await
}

async fn join_id_or_alias(
    state: &AppState,
    user_id: &UserId,
    room: &ruma::RoomOrAliasId,
    reason: Option<String>,
    mut via: Vec<OwnedServerName>,
) -> Result<OwnedRoomId, MatrixError> {
    let (room_id, alias): (OwnedRoomId, Option<&RoomAliasId>) = match <&RoomId>::try_from(room) {
        Ok(room_id) => (room_id.to_owned(), None),
        Err(alias) => {
            let (room_id, servers) = resolve_alias_anywhere(state, alias).await?;
            via.extend(servers);
            (room_id, Some(alias))
        }
    };
    join(state, user_id, &room_id, alias, reason, &via).await?;
    Ok(room_id)
}

/// A room alias of this server or, asked over federation, of the server it names; with the
/// servers to join through.
async fn resolve_alias_anywhere(
    state: &AppState,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError> {
    if alias.server_name() == state.server_name {
        return Ok((resolve_alias(state, alias).await?, Vec::new()));
    }
    #[derive(serde::Deserialize)]
    struct Directory {
        room_id: OwnedRoomId,
        #[serde(default)]
        servers: Vec<OwnedServerName>,
    }
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        crate::rooms::urlencode(alias.as_str())
    );
    let answer: Directory = state
        .federation
        .request(alias.server_name(), axum::http::Method::GET, &path, None)
        .await
        .map_err(|e| match e {
            crate::federation::FederationError::Refused { status, .. } if status == 404 => {
                MatrixError::not_found(format!("Room alias {alias} not found"))
            }
            e => MatrixError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                ruma::api::error::ErrorKind::Unknown,
                format!("Could not ask {} about {alias}: {e}", alias.server_name()),
            ),
        })?;
    let mut servers = answer.servers;
    servers.insert(0, alias.server_name().to_owned());
    Ok((answer.room_id, servers))
}

async fn resolve_alias(state: &AppState, alias: &RoomAliasId) -> Result<OwnedRoomId, MatrixError> {
    let room_id = state
        .store
        .alias_room(alias.to_string())
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    RoomId::parse(room_id).map_err(|e| MatrixError::unknown(format!("stored room id: {e}")))
}

pub(crate) async fn leave(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<leave_room::v3::Request>,
) -> ApiResult<leave_room::v3::Response> {
    if !state.rooms.participating(&request.room_id).await? {
        // Only invited, to a room held by other servers.
        state
            .rooms
            .decline_remote_invite(&request.room_id, &user.user_id, request.reason)
            .await?;
        return Ok(Ruma(leave_room::v3::Response::new()));
    }
    set_membership(
        &state,
        &request.room_id,
        &user.user_id,
        &user.user_id,
        "leave",
        request.reason,
    )
    .await?;
    Ok(Ruma(leave_room::v3::Response::new()))
}

pub(crate) async fn forget(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<forget_room::v3::Request>,
) -> ApiResult<forget_room::v3::Response> {
    let membership = state
        .store
        .membership(request.room_id.to_string(), user.user_id.to_string())
        .await?;
    match membership.as_ref().map(|m| m.membership.as_str()) {
        Some("leave" | "ban") => {}
        Some(_) => {
            return Err(MatrixError::new(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Leave the room before forgetting it",
            ));
        }
        None => return Err(MatrixError::not_found("You were never in this room")),
    }
    state
        .store
        .forget_room(user.user_id.to_string(), request.room_id.to_string())
        .await?;
    Ok(Ruma(forget_room::v3::Response::new()))
}

pub(crate) async fn kick(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<kick_user::v3::Request>,
) -> ApiResult<kick_user::v3::Response> {
    set_membership(
        &state,
        &request.room_id,
        &user.user_id,
        &request.user_id,
        "leave",
        request.reason,
    )
    .await?;
    Ok(Ruma(kick_user::v3::Response::new()))
}

pub(crate) async fn ban(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<ban_user::v3::Request>,
) -> ApiResult<ban_user::v3::Response> {
    set_membership(
        &state,
        &request.room_id,
        &user.user_id,
        &request.user_id,
        "ban",
        request.reason,
    )
    .await?;
    Ok(Ruma(ban_user::v3::Response::new()))
}

pub(crate) async fn unban(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<unban_user::v3::Request>,
) -> ApiResult<unban_user::v3::Response> {
    let membership = state
        .store
        .membership(request.room_id.to_string(), request.user_id.to_string())
        .await?;
    if membership.is_none_or(|m| m.membership != "ban") {
        return Err(MatrixError::forbidden(format!(
            "{} is not banned",
            request.user_id
        )));
    }
    set_membership(
        &state,
        &request.room_id,
        &user.user_id,
        &request.user_id,
        "leave",
        request.reason,
    )
    .await?;
    Ok(Ruma(unban_user::v3::Response::new()))
}

pub(crate) async fn joined(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<joined_rooms::v3::Response> {
    let rooms = state
        .store
        .memberships_of(user.user_id.to_string())
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .filter_map(|m| RoomId::parse(m.room_id).ok())
        .collect();
    Ok(Ruma(joined_rooms::v3::Response::new(rooms)))
}

pub(crate) async fn members_joined(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<joined_members::v3::Request>,
) -> ApiResult<joined_members::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let room_state = state.rooms.state(&request.room_id).await?;
    let mut joined = BTreeMap::new();
    for ((kind, key), pdu) in &room_state {
        if *kind != StateEventType::RoomMember
            || crate::rooms::membership_of(&pdu.content).as_deref() != Some("join")
        {
            continue;
        }
        let Ok(member) = UserId::parse(key) else {
            continue;
        };
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let mut info = joined_members::v3::RoomMember::new();
        info.display_name = content
            .get("displayname")
            .and_then(Value::as_str)
            .map(Into::into);
        info.avatar_url = content
            .get("avatar_url")
            .and_then(Value::as_str)
            .map(Into::into);
        joined.insert(member, info);
    }
    Ok(Ruma(joined_members::v3::Response::new(joined)))
}

pub(crate) async fn members(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<ruma::api::client::membership::get_member_events::v3::Request>,
) -> ApiResult<ruma::api::client::membership::get_member_events::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let room_state = state.rooms.state(&request.room_id).await?;
    let chunk = room_state
        .iter()
        .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
        .filter(|(_, pdu)| {
            let membership = crate::rooms::membership_of(&pdu.content).unwrap_or_default();
            request
                .membership
                .as_ref()
                .is_none_or(|m| m.as_str() == membership)
                && request
                    .not_membership
                    .as_ref()
                    .is_none_or(|m| m.as_str() != membership)
        })
        .map(|(_, pdu)| pdu.clone())
        .collect::<Vec<Pdu>>();
    let chunk = ClientEvents::without_relations(&state, &user, true)
        .serve(&chunk)
        .await?;
    Ok(Ruma(
        ruma::api::client::membership::get_member_events::v3::Response::new(chunk),
    ))
}

/// The key of a client transaction: per device, and per endpoint and room, as the spec scopes
/// transaction ids.
fn transaction(
    user: &User,
    endpoint: &str,
    room_id: &RoomId,
    txn_id: &str,
) -> (String, String, String) {
    (
        user.localpart.clone(),
        user.device_id.to_string(),
        format!("{endpoint}/{room_id}/{txn_id}"),
    )
}

pub(crate) async fn send(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<send_message_event::v3::Request>,
) -> ApiResult<send_message_event::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let content = json_object(request.body.json(), "the event content")?;
    let kind = TimelineEventType::from(request.event_type.to_string());
    // A redaction sent as a plain event is checked like one sent through /redact.
    let redacts = match kind {
        TimelineEventType::RoomRedaction => Some(
            content
                .get("redacts")
                .and_then(Value::as_str)
                .and_then(|id| ruma::EventId::parse(id).ok())
                .ok_or_else(|| MatrixError::bad_json("A redaction needs content.redacts"))?,
        ),
        _ => None,
    };
    let event_id = state
        .rooms
        .send(
            &request.room_id,
            &user.user_id,
            EventDraft {
                kind,
                state_key: None,
                content: Value::Object(content),
                redacts,
                transaction: Some(transaction(
                    &user,
                    "send",
                    &request.room_id,
                    request.txn_id.as_str(),
                )),
            },
        )
        .await?;
    Ok(Ruma(send_message_event::v3::Response::new(event_id)))
}

pub(crate) async fn redact(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<redact_event::v3::Request>,
) -> ApiResult<redact_event::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let mut content = json!({"redacts": request.event_id.as_str()});
    if let Some(reason) = request.reason {
        content["reason"] = reason.into();
    }
    let event_id = state
        .rooms
        .send(
            &request.room_id,
            &user.user_id,
            EventDraft {
                kind: TimelineEventType::RoomRedaction,
                state_key: None,
                content,
                // Before room version 11 the target is a top-level field; later versions read the
                // content and ignore the field.
                redacts: Some(request.event_id.clone()),
                transaction: Some(transaction(
                    &user,
                    "redact",
                    &request.room_id,
                    request.txn_id.as_str(),
                )),
            },
        )
        .await?;
    Ok(Ruma(redact_event::v3::Response::new(event_id)))
}

pub(crate) async fn put_state(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<send_state_event::v3::Request>,
) -> ApiResult<send_state_event::v3::Response> {
    let mut content = json_object(request.body.json(), "the state content")?;
    if request.event_type == StateEventType::RoomMember {
        // Joins, invites and the like go through their endpoints, which check what the auth
        // rules leave to the server; here a member may only update their own joined
        // membership (name, avatar).
        let current = state
            .store
            .membership(request.room_id.to_string(), user.user_id.to_string())
            .await?;
        let own = request.state_key == user.user_id.as_str();
        let stays_joined = content.get("membership").and_then(Value::as_str) == Some("join")
            && current.is_some_and(|m| m.membership == "join");
        if !(own && stays_joined) {
            return Err(MatrixError::forbidden(
                "Change memberships with the join, invite, leave, kick and ban endpoints",
            ));
        }
        // Only this server may vouch for a restricted join, after checking the room's rules.
        content.remove("join_authorised_via_users_server");
    }
    let event_id = state
        .rooms
        .send(
            &request.room_id,
            &user.user_id,
            EventDraft::state(
                request.event_type.clone(),
                &request.state_key,
                Value::Object(content),
            ),
        )
        .await?;
    Ok(Ruma(send_state_event::v3::Response::new(event_id)))
}

pub(crate) async fn get_state(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_state_events::v3::Request>,
) -> ApiResult<get_state_events::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let events = ClientEvents::without_relations(&state, &user, true)
        .serve_room_state(&request.room_id)
        .await?;
    Ok(Ruma(get_state_events::v3::Response::new(events)))
}

pub(crate) async fn get_state_for_key(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let room_state = state.rooms.state(&request.room_id).await?;
    let pdu = room_state
        .get(&(request.event_type.clone(), request.state_key.clone()))
        .ok_or_else(|| MatrixError::not_found("No such state event"))?;
    let body = match request.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            ClientEvents::without_relations(&state, &user, true)
                .serve_json(std::slice::from_ref(pdu))
                .await?
                .pop()
                .unwrap_or_default()
        }
        _ => serde_json::from_str(pdu.content.get()).unwrap_or_default(),
    };
    let raw =
        serde_json::value::to_raw_value(&body).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(Ruma(get_state_event_for_key::v3::Response::new(raw)))
}

pub(crate) async fn alias_get(
    State(state): State<AppState>,
    Req(request): Req<get_alias::v3::Request>,
) -> ApiResult<get_alias::v3::Response> {
    let room_id = resolve_alias(&state, &request.room_alias).await?;
    Ok(Ruma(get_alias::v3::Response::new(
        room_id,
        vec![state.server_name.clone()],
    )))
}

pub(crate) async fn alias_put(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_alias::v3::Request>,
) -> ApiResult<create_alias::v3::Response> {
    if request.room_alias.server_name() != state.server_name {
        return Err(MatrixError::invalid_param("Aliases must be on this server"));
    }
    require_joined(&state, &request.room_id, &user).await?;
    state
        .store
        .set_alias(
            request.room_alias.to_string(),
            request.room_id.to_string(),
            user.user_id.to_string(),
        )
        .await
        .map_err(|e| match e {
            hyphae_store::StoreError::AlreadyExists(_) => MatrixError::new(
                axum::http::StatusCode::CONFLICT,
                ruma::api::error::ErrorKind::Unknown,
                "That room alias is taken",
            ),
            e => e.into(),
        })?;
    Ok(Ruma(create_alias::v3::Response::new()))
}

pub(crate) async fn alias_delete(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_alias::v3::Request>,
) -> ApiResult<delete_alias::v3::Response> {
    let removed = state
        .store
        .delete_alias(request.room_alias.to_string(), user.user_id.to_string())
        .await?;
    if !removed {
        return Err(MatrixError::not_found("No such alias of yours"));
    }
    Ok(Ruma(delete_alias::v3::Response::new()))
}
