//! The public room directory over the Client-Server API: publishing a room
//! (`/directory/list/room/{roomId}`, and `createRoom` with `visibility: public`), and listing
//! rooms (`/publicRooms`): this server's, another server's (`server=`), or by default this
//! server's and those of the peers around (see `federation/directory.rs` for which peers and
//! limits). Entries are built from each room's current state; pages are offsets into the
//! sorted list, carried as opaque `next_batch`/`prev_batch` tokens.

use axum::extract::State;
use ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use ruma::api::client::room::Visibility;
use ruma::directory::{Filter, PublicRoomsChunk, RoomNetwork, RoomTypeFilter};
use ruma::events::StateEventType;
use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent};
use ruma::room::JoinRuleKind;
use ruma::{OwnedServerName, RoomId, UInt, UserId};
use serde_json::Value;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use super::rooms::require_joined;
use crate::node::AppState;
use crate::rooms::RoomState;

/// Most entries one page holds, whatever the client asks.
const MAX_LIMIT: u64 = 500;

/// One page of a listing, as both the client and federation responses carry it.
pub(crate) struct Listing {
    pub(crate) chunk: Vec<PublicRoomsChunk>,
    pub(crate) next_batch: Option<String>,
    pub(crate) prev_batch: Option<String>,
    pub(crate) total: UInt,
}

/// A listing in one of the four ruma responses that carry one (client and federation, GET
/// and POST), which have the same fields but no common type.
macro_rules! listing_response {
    ($response:expr, $listing:expr) => {{
        let (mut response, listing) = ($response, $listing);
        response.chunk = listing.chunk;
        response.next_batch = listing.next_batch;
        response.prev_batch = listing.prev_batch;
        response.total_room_count_estimate = Some(listing.total);
        $crate::client_api::Ruma(response)
    }};
}
pub(crate) use listing_response;

/// `GET /directory/list/room/{roomId}`
pub(crate) async fn get_visibility(
    State(state): State<AppState>,
    Req(request): Req<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    if state
        .store
        .room_version(request.room_id.to_string())
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found(format!(
            "Room {} is not known to this server",
            request.room_id
        )));
    }
    let visibility = if state
        .store
        .room_published(request.room_id.to_string())
        .await?
    {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(Ruma(get_room_visibility::v3::Response::new(visibility)))
}

/// `PUT /directory/list/room/{roomId}`: publishing or unpublishing takes what Synapse asks, a
/// member of the room with the power to set its `m.room.canonical_alias` (its creator, and
/// whoever the room's power levels let change that state).
pub(crate) async fn set_visibility(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let published = match request.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => {
            return Err(MatrixError::invalid_param(
                "visibility is public or private",
            ));
        }
    };
    if !state.rooms.participating(&request.room_id).await? {
        return Err(MatrixError::not_found(format!(
            "This server is not in room {}",
            request.room_id
        )));
    }
    require_joined(&state, &request.room_id, &user).await?;
    let room_state = state.rooms.state(&request.room_id).await?;
    if !may_set_canonical_alias(&state, &request.room_id, &room_state, &user.user_id).await? {
        return Err(MatrixError::forbidden(
            "Only someone who may change the room's canonical alias may list it in the directory",
        ));
    }
    state
        .store
        .set_room_published(request.room_id.to_string(), published)
        .await?;
    Ok(Ruma(set_room_visibility::v3::Response::new()))
}

/// Whether the room's power levels (or, from room version 12, being one of its creators) let
/// `user` send `m.room.canonical_alias`.
async fn may_set_canonical_alias(
    state: &AppState,
    room_id: &RoomId,
    room_state: &RoomState,
    user: &UserId,
) -> Result<bool, MatrixError> {
    let version = state.rooms.version(room_id).await?;
    let rules = crate::rooms::rules(&version)?;
    let Some(create) = room_state.get(&(StateEventType::RoomCreate, String::new())) else {
        return Ok(false);
    };
    let mut creators = vec![create.sender.clone()];
    if rules.authorization.additional_room_creators {
        let content: Value = serde_json::from_str(create.content.get()).unwrap_or_default();
        creators.extend(
            content["additional_creators"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().and_then(|c| UserId::parse(c).ok())),
        );
    }
    let levels = match room_state.get(&(StateEventType::RoomPowerLevels, String::new())) {
        Some(pdu) => match serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get()) {
            Ok(content) => Some(content),
            // Power levels this node cannot read grant nothing.
            Err(_) => return Ok(false),
        },
        None => None,
    };
    let levels = RoomPowerLevels::new(levels.into(), &rules.authorization, creators);
    Ok(levels.user_can_send_state(user, StateEventType::RoomCanonicalAlias))
}

/// `GET /publicRooms`. Without an access token (the spec allows none) it lists this server's
/// rooms only: asking other servers takes a user of this one, as Synapse has it by default, so
/// nobody unknown has this node send requests.
pub(crate) async fn public_rooms(
    State(state): State<AppState>,
    user: Option<User>,
    Req(request): Req<get_public_rooms::v3::Request>,
) -> ApiResult<get_public_rooms::v3::Response> {
    if user.is_none()
        && request
            .server
            .as_ref()
            .is_some_and(|s| *s != state.server_name)
    {
        return Err(MatrixError::missing_token());
    }
    let server = match user {
        Some(_) => request.server,
        None => Some(state.server_name.clone()),
    };
    let listing = list(
        &state,
        server,
        request.limit,
        request.since,
        Filter::new(),
        RoomNetwork::Matrix,
    )
    .await?;
    Ok(listing_response!(
        get_public_rooms::v3::Response::new(Vec::new()),
        listing
    ))
}

/// `POST /publicRooms`: with a filter (a search term, room types) and a network.
pub(crate) async fn public_rooms_filtered(
    State(state): State<AppState>,
    _user: User,
    Req(request): Req<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<get_public_rooms_filtered::v3::Response> {
    let listing = list(
        &state,
        request.server,
        request.limit,
        request.since,
        request.filter,
        request.room_network,
    )
    .await?;
    Ok(listing_response!(
        get_public_rooms_filtered::v3::Response::new(),
        listing
    ))
}

async fn list(
    state: &AppState,
    server: Option<OwnedServerName>,
    limit: Option<UInt>,
    since: Option<String>,
    filter: Filter,
    network: RoomNetwork,
) -> Result<Listing, MatrixError> {
    if let Some(server) = server.as_ref().filter(|s| **s != state.server_name) {
        return state
            .directory
            .ask(&state.federation, server, limit, since, &filter, &network)
            .await
            .map_err(|e| {
                MatrixError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    ruma::api::error::ErrorKind::Unknown,
                    format!("Could not list the rooms of {server}: {e}"),
                )
            });
    }
    if matches!(network, RoomNetwork::ThirdParty(_)) {
        // This server bridges no other network.
        return page(Vec::new(), &filter, limit, since.as_deref());
    }
    let mut entries = local_entries(state).await?;
    if server.is_none() {
        for room in state.directory.nearby(&state.federation).await {
            if !entries.iter().any(|e| e.room_id == room.room_id) {
                entries.push(room);
            }
        }
    }
    page(entries, &filter, limit, since.as_deref())
}

/// The rooms this server lists in its directory and is still in, as directory entries.
pub(crate) async fn local_entries(state: &AppState) -> Result<Vec<PublicRoomsChunk>, MatrixError> {
    let mut entries = Vec::new();
    for room_id in state.store.published_rooms().await? {
        let Ok(room_id) = RoomId::parse(&room_id) else {
            continue;
        };
        // Nobody here is in it any more: this server could not let anyone join.
        if !state.rooms.participating(&room_id).await? {
            continue;
        }
        let room_state = state.rooms.state(&room_id).await?;
        let joined = state
            .store
            .room_members(room_id.to_string(), "join".into())
            .await?
            .len();
        entries.push(entry(room_id, &room_state, joined));
    }
    Ok(entries)
}

/// A room's directory entry, from its current state.
fn entry(room_id: ruma::OwnedRoomId, room_state: &RoomState, joined: usize) -> PublicRoomsChunk {
    let content = |kind: StateEventType| -> Value {
        room_state
            .get(&(kind, String::new()))
            .and_then(|pdu| serde_json::from_str(pdu.content.get()).ok())
            .unwrap_or_default()
    };
    let text = |value: &Value| value.as_str().map(str::to_owned);
    let mut chunk = PublicRoomsChunk::from(ruma::directory::PublicRoomsChunkInit {
        num_joined_members: UInt::try_from(joined).unwrap_or(UInt::MAX),
        room_id,
        world_readable: content(StateEventType::RoomHistoryVisibility)["history_visibility"]
            == "world_readable",
        guest_can_join: content(StateEventType::RoomGuestAccess)["guest_access"] == "can_join",
    });
    chunk.name = text(&content(StateEventType::RoomName)["name"]).filter(|n| !n.is_empty());
    chunk.topic = text(&content(StateEventType::RoomTopic)["topic"]).filter(|t| !t.is_empty());
    chunk.canonical_alias =
        text(&content(StateEventType::RoomCanonicalAlias)["alias"]).and_then(|a| a.try_into().ok());
    chunk.avatar_url = text(&content(StateEventType::RoomAvatar)["url"]).map(Into::into);
    chunk.join_rule = text(&content(StateEventType::RoomJoinRules)["join_rule"])
        .map(|rule| JoinRuleKind::from(rule.as_str()))
        .unwrap_or(JoinRuleKind::Invite);
    chunk.room_type = text(&content(StateEventType::RoomCreate)["type"]).map(Into::into);
    chunk
}

/// Whether an entry passes a client's filter: its search term in the name, topic or
/// canonical alias (ignoring case), its room type among those asked for.
fn matches(entry: &PublicRoomsChunk, filter: &Filter) -> bool {
    let term = filter
        .generic_search_term
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase);
    let has_term = term.is_none_or(|term| {
        [
            entry.name.as_deref(),
            entry.topic.as_deref(),
            entry.canonical_alias.as_ref().map(|a| a.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.to_lowercase().contains(&term))
    });
    let room_type = RoomTypeFilter::from(entry.room_type.clone());
    has_term && (filter.room_types.is_empty() || filter.room_types.contains(&room_type))
}

/// The page of `entries` that `since` and `limit` ask for, after `filter`; the biggest rooms
/// first.
pub(crate) fn page(
    mut entries: Vec<PublicRoomsChunk>,
    filter: &Filter,
    limit: Option<UInt>,
    since: Option<&str>,
) -> Result<Listing, MatrixError> {
    entries.retain(|e| matches(e, filter));
    entries.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let total = entries.len();
    let start = match since {
        Some(token) => token
            .strip_prefix('d')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| MatrixError::invalid_param(format!("Unknown since token {token:?}")))?
            .min(total),
        None => 0,
    };
    let limit = limit.map_or(MAX_LIMIT, u64::from).clamp(1, MAX_LIMIT) as usize;
    let end = start.saturating_add(limit).min(total);
    let chunk = entries.drain(start..end).collect();
    Ok(Listing {
        chunk,
        next_batch: (end < total).then(|| format!("d{end}")),
        prev_batch: (start > 0).then(|| format!("d{}", start.saturating_sub(limit))),
        total: UInt::try_from(total).unwrap_or(UInt::MAX),
    })
}
