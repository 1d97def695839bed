//! Server-side search (`POST /search`, `room_events`): the words of the search term looked up
//! in the full-text index of unencrypted events (`hyphae_store::search`), in the rooms the user
//! is joined to, each from where its history visibility lets them read; with the events around
//! each result, the rooms' state and the senders' profiles when asked. Encrypted events cannot
//! be read by a server and are never found. `groupings` are ignored: results come ungrouped.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use hyphae_store::{EventSearch, SearchCursor, SearchOrder, search_terms};
use ruma::api::client::search::search_events::v3::{
    Criteria, EventContextResult, OrderBy, Request, ResultRoomEvents, SearchKeys, SearchResult,
    UserProfile,
};
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, RoomId, UInt};
use serde_json::{Value, json};

use super::error::MatrixError;
use super::events::ClientEvents;
use super::history::history_start;
use super::request::{Req, User};
use super::tokens::stream_token;
use crate::node::AppState;
use crate::rooms::{Pdu, RoomState};

/// Results per page when the filter does not say, and at most.
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 100;
/// Most events of context on either side of a result.
const MAX_CONTEXT: u32 = 20;

/// `POST /search`
pub(crate) async fn search(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<Request>,
) -> Result<Json<Value>, MatrixError> {
    let Some(criteria) = request.search_categories.room_events else {
        return Ok(Json(json!({"search_categories": {}})));
    };
    let room_events = room_events(&state, &user, criteria, request.next_batch).await?;
    let mut room_events =
        serde_json::to_value(room_events).map_err(|e| MatrixError::unknown(e.to_string()))?;
    // ruma leaves empty lists out; clients (matrix-js-sdk) read `results` and `highlights`
    // as lists even when nothing was found.
    for list in ["results", "highlights"] {
        if room_events.get(list).is_none() {
            room_events[list] = json!([]);
        }
    }
    Ok(Json(
        json!({"search_categories": {"room_events": room_events}}),
    ))
}

async fn room_events(
    state: &AppState,
    user: &User,
    criteria: Criteria,
    next_batch: Option<String>,
) -> Result<ResultRoomEvents, MatrixError> {
    let order = match criteria.order_by {
        None | Some(OrderBy::Rank) => SearchOrder::Rank,
        Some(OrderBy::Recent) => SearchOrder::Recent,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown order_by {:?}",
                other.as_str()
            )));
        }
    };
    let from = next_batch
        .as_deref()
        .map(|token| parse_batch(token, order))
        .transpose()?;
    let filter = criteria.filter;
    let event_types = event_types(criteria.keys.as_deref(), &filter)?;
    let limit = filter
        .limit
        .map_or(DEFAULT_LIMIT, |l| {
            u32::try_from(u64::from(l)).unwrap_or(MAX_LIMIT)
        })
        .clamp(1, MAX_LIMIT);

    let mut rooms = Vec::new();
    for membership in state.store.memberships_of(user.user_id.to_string()).await? {
        if membership.membership != "join" {
            continue;
        }
        let Ok(room_id) = OwnedRoomId::try_from(membership.room_id) else {
            continue;
        };
        let asked = filter.rooms.as_ref().is_none_or(|r| r.contains(&room_id));
        if asked && !filter.not_rooms.contains(&room_id) {
            let start = history_start(state, &room_id, &user.user_id).await?;
            rooms.push((room_id.to_string(), start));
        }
    }
    let terms = search_terms(&criteria.search_term);
    let page = state
        .store
        .search_events(EventSearch {
            terms: terms.clone(),
            rooms: rooms.clone(),
            event_types,
            senders: filter
                .senders
                .map(|s| s.iter().map(ToString::to_string).collect()),
            not_senders: filter.not_senders.iter().map(ToString::to_string).collect(),
            order,
            from,
            limit,
        })
        .await?;

    let context = &criteria.event_context;
    let before = clamp_context(context.before_limit);
    let after = clamp_context(context.after_limit);
    let mut room_states: BTreeMap<OwnedRoomId, RoomState> = BTreeMap::new();
    let mut results = Vec::with_capacity(page.hits.len());
    for hit in &page.hits {
        let Ok(pdu) = Pdu::from_stored(&hit.pdu) else {
            continue;
        };
        let (Some(room_id), Some(position)) = (pdu.room_id(), hit.pdu.stream_pos) else {
            continue;
        };
        if !room_states.contains_key(&room_id) {
            room_states.insert(room_id.clone(), state.rooms.state(&room_id).await?);
        }
        let start = rooms
            .iter()
            .find(|(room, _)| room == room_id.as_str())
            .map_or(i64::MAX, |(_, start)| *start);
        let mut around =
            surroundings(state, user, &room_id, position, start, before, after).await?;
        if context.include_profile {
            let senders = around
                .events_before
                .iter()
                .chain(&around.events_after)
                .filter_map(|e| e.get_field::<ruma::OwnedUserId>("sender").ok().flatten())
                .chain([pdu.sender.clone()]);
            for sender in senders {
                if let Some(profile) = room_states
                    .get(&room_id)
                    .and_then(|room_state| profile_in(room_state, &sender))
                {
                    around.profile_info.insert(sender, profile);
                }
            }
        }
        let mut result = SearchResult::new();
        result.rank = Some(hit.rank);
        result.result = Some(
            ClientEvents::timeline(state, user, &room_id, start, true)
                .serve_one(&pdu)
                .await?,
        );
        result.context = around;
        results.push(result);
    }

    let mut found = ResultRoomEvents::new();
    found.count = Some(UInt::try_from(page.count).unwrap_or(UInt::MAX));
    found.highlights = terms;
    found.next_batch = page.next.map(|cursor| match cursor {
        SearchCursor::Before(position) => format!("p{position}"),
        SearchCursor::Skip(skip) => format!("r{skip}"),
    });
    found.results = results;
    if criteria.include_state == Some(true) {
        let served = ClientEvents::without_relations(state, user, true);
        for (room_id, room_state) in &room_states {
            let pdus: Vec<Pdu> = room_state.values().cloned().collect();
            found
                .state
                .insert(room_id.clone(), served.serve(&pdus).await?);
        }
    }
    Ok(found)
}

/// A `next_batch` this endpoint gave for the same order.
fn parse_batch(token: &str, order: SearchOrder) -> Result<SearchCursor, MatrixError> {
    let cursor = match (order, token.split_at_checked(1)) {
        (SearchOrder::Recent, Some(("p", position))) => {
            position.parse().ok().map(SearchCursor::Before)
        }
        (SearchOrder::Rank, Some(("r", skip))) => skip.parse().ok().map(SearchCursor::Skip),
        _ => None,
    };
    cursor.ok_or_else(|| MatrixError::invalid_param(format!("Unknown next_batch {token:?}")))
}

/// The event types the search `keys` name (all three by default), narrowed by the filter's
/// `types` and `not_types`.
fn event_types(
    keys: Option<&[SearchKeys]>,
    filter: &ruma::api::client::filter::RoomEventFilter,
) -> Result<Vec<String>, MatrixError> {
    let keys = keys.unwrap_or(&[
        SearchKeys::ContentBody,
        SearchKeys::ContentName,
        SearchKeys::ContentTopic,
    ]);
    let mut types = Vec::new();
    for key in keys {
        let kind = match key {
            SearchKeys::ContentBody => "m.room.message",
            SearchKeys::ContentName => "m.room.name",
            SearchKeys::ContentTopic => "m.room.topic",
            other => {
                return Err(MatrixError::invalid_param(format!(
                    "Unknown search key {:?}",
                    other.as_str()
                )));
            }
        };
        let asked = filter
            .types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == kind));
        if asked && !filter.not_types.iter().any(|t| t == kind) && !types.contains(&kind) {
            types.push(kind);
        }
    }
    Ok(types.into_iter().map(str::to_owned).collect())
}

fn clamp_context(limit: UInt) -> u32 {
    u32::try_from(u64::from(limit))
        .unwrap_or(MAX_CONTEXT)
        .min(MAX_CONTEXT)
}

/// The events just before and after a result that the user may read, with tokens for
/// paginating further either way.
async fn surroundings(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    position: i64,
    start: i64,
    before: u32,
    after: u32,
) -> Result<EventContextResult, MatrixError> {
    let mut context = EventContextResult::new();
    let served = ClientEvents::timeline(state, user, room_id, start, true);
    let mut earliest = position;
    if before > 0 {
        let mut pdus = state
            .store
            .room_page(room_id.to_string(), position - 1, true, before)
            .await?;
        pdus.retain(|p| p.stream_pos.is_some_and(|pos| pos >= start));
        earliest = pdus.last().and_then(|p| p.stream_pos).unwrap_or(position);
        context.events_before = served.serve_stored(&pdus).await?;
    }
    let mut latest = position;
    if after > 0 {
        let pdus = state
            .store
            .room_page(room_id.to_string(), position, false, after)
            .await?;
        latest = pdus.last().and_then(|p| p.stream_pos).unwrap_or(position);
        context.events_after = served.serve_stored(&pdus).await?;
    }
    context.start = Some(stream_token(earliest - 1));
    context.end = Some(stream_token(latest));
    Ok(context)
}

/// A member's name and avatar as the room's current state has them.
fn profile_in(room_state: &RoomState, user: &ruma::UserId) -> Option<UserProfile> {
    let member = room_state.get(&(StateEventType::RoomMember, user.to_string()))?;
    let content: Value = serde_json::from_str(member.content.get()).ok()?;
    let mut profile = UserProfile::new();
    profile.displayname = content["displayname"].as_str().map(str::to_owned);
    profile.avatar_url = content["avatar_url"].as_str().map(Into::into);
    Some(profile)
}
