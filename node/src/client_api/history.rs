//! Reading a room's history: what part of it a user may see (its history visibility), the
//! stream tokens pages are read with, and `/event`, `/messages` and `/context`.

use axum::extract::State;
use ruma::api::Direction;
use ruma::api::client::context::get_context;
use ruma::api::client::message::get_message_events;
use ruma::api::client::room::get_room_event;
use ruma::{RoomId, UserId};
use serde_json::Value;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::events::{ClientEvents, parsed};
use super::request::{Req, User};
use super::rooms::require_joined;
use super::sync::{EventMatch, lazy_loads};
use super::tokens::{parse_page_token, stream_token};
use crate::node::AppState;
use crate::rooms::Pdu;

/// A page size as asked (`default` when not), within 1..=`max`.
pub(crate) fn page_limit(asked: Option<ruma::UInt>, default: u32, max: u32) -> u32 {
    asked
        .map_or(default, |l| u32::try_from(u64::from(l)).unwrap_or(max))
        .clamp(1, max)
}

/// The first stream position of a room that `user` may read, by the room's history
/// visibility: everything for "shared" and "world_readable", from their invite or join for
/// "invited", from their join for "joined".
pub(crate) async fn history_start(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<i64, MatrixError> {
    let current = state.store.current_state(room_id.to_string()).await?;
    let visibility_event = current
        .iter()
        .find(|(kind, key, _)| kind == "m.room.history_visibility" && key.is_empty())
        .map(|(_, _, id)| id.clone());
    let visibility = match visibility_event {
        Some(id) => state
            .store
            .pdu(id)
            .await?
            .and_then(|p| serde_json::from_str::<Value>(&p.json).ok())
            .and_then(|json| {
                json["content"]["history_visibility"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".into()),
        None => "shared".into(),
    };
    let from_invite = match visibility.as_str() {
        "joined" => false,
        "invited" => true,
        // All of it, history fetched from other servers (at negative positions) included.
        _ => return Ok(i64::MIN),
    };
    Ok(state
        .store
        .membership_start(room_id.to_string(), user.to_string(), from_invite)
        .await?
        .unwrap_or(i64::MAX))
}

/// An event of the room that the user may read (`start` is where their history begins), or
/// 404: not in this room, rejected, or from before what they may see.
pub(crate) async fn visible_event(
    state: &AppState,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    start: i64,
) -> Result<hyphae_store::StoredPdu, MatrixError> {
    state
        .store
        .pdu(event_id.to_string())
        .await?
        .filter(|p| p.room_id == room_id.as_str() && p.rejection_reason.is_none())
        .filter(|p| p.stream_pos.is_none_or(|pos| pos >= start))
        .ok_or_else(|| MatrixError::not_found("Event not found"))
}

pub(crate) async fn event(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_room_event::v3::Request>,
) -> ApiResult<get_room_event::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let start = history_start(&state, &request.room_id, &user.user_id).await?;
    let stored = visible_event(&state, &request.room_id, &request.event_id, start).await?;
    let pdu = Pdu::from_stored(&stored).map_err(|e| MatrixError::unknown(e.to_string()))?;
    let event = ClientEvents::timeline(&state, &user, &request.room_id, start, true)
        .serve_one(&pdu)
        .await?;
    Ok(Ruma(get_room_event::v3::Response::new(event)))
}

/// History pages. Tokens are stream positions: backwards from `s<n>` gives events at or before
/// n, forwards gives events after n.
pub(crate) async fn messages(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let backwards = request.dir == Direction::Backward;
    let from = match &request.from {
        Some(token) => parse_page_token(token)?,
        None if backwards => *state.store.stream_position().borrow(),
        None => i64::MIN,
    };
    let to = request.to.as_deref().map(parse_page_token).transpose()?;
    let limit = page_limit(Some(request.limit), 10, 1000);
    let mut pdus = state
        .store
        .room_page(request.room_id.to_string(), from, backwards, limit)
        .await?;
    // Short of a page going back: history older than what this node holds may be had from
    // the room's other servers.
    if backwards && (pdus.len() as u32) < limit {
        match state.rooms.backfill(&request.room_id).await {
            Ok(0) => {}
            Ok(_) => {
                pdus = state
                    .store
                    .room_page(request.room_id.to_string(), from, backwards, limit)
                    .await?;
            }
            Err(e) => tracing::info!(room_id = %request.room_id, error = %e, "backfill failed"),
        }
    }
    let start = history_start(&state, &request.room_id, &user.user_id).await?;
    let reached_start = pdus
        .iter()
        .any(|p| p.stream_pos.unwrap_or_default() < start);
    pdus.retain(|p| p.stream_pos.unwrap_or_default() >= start);
    if let Some(to) = to {
        pdus.retain(|p| {
            let pos = p.stream_pos.unwrap_or_default();
            if backwards { pos > to } else { pos <= to }
        });
    }
    let end = pdus
        .last()
        .and_then(|p| p.stream_pos)
        .map(|pos| stream_token(if backwards { pos - 1 } else { pos }));
    let full_page = pdus.len() as u32 == limit;
    // The filter keeps what it names of the page; the tokens still follow the whole page, so
    // paging goes on past what it left out.
    let kept = EventMatch::of_room_events(&request.filter);
    let mut chunk = parsed(&pdus);
    chunk.retain(|pdu| kept.allows_pdu(pdu));
    let mut response = get_message_events::v3::Response::new();
    if lazy_loads(&request.filter) {
        response.state = senders_members(&state, &user, &request.room_id, &chunk).await?;
    }
    response.chunk = ClientEvents::timeline(&state, &user, &request.room_id, start, true)
        .serve(&chunk)
        .await?;
    response.start = stream_token(from);
    response.end = end.filter(|_| (full_page && !reached_start) || !backwards);
    Ok(Ruma(response))
}

/// The room's member events of a page's senders, for a client that lazy-loads members.
async fn senders_members(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    page: &[Pdu],
) -> Result<Vec<ruma::serde::Raw<ruma::events::AnyStateEvent>>, MatrixError> {
    let senders: std::collections::BTreeSet<&str> =
        page.iter().map(|pdu| pdu.sender.as_str()).collect();
    let room_state = state.rooms.state(room_id).await?;
    let members: Vec<Pdu> = senders
        .into_iter()
        .filter_map(|sender| {
            room_state
                .get(&(ruma::events::StateEventType::RoomMember, sender.to_owned()))
                .cloned()
        })
        .collect();
    ClientEvents::without_relations(state, user, true)
        .serve(&members)
        .await
}

/// An event with the events around it (for jumping to a reply or search result).
pub(crate) async fn context(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_context::v3::Request>,
) -> ApiResult<get_context::v3::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let start = history_start(&state, &request.room_id, &user.user_id).await?;
    let stored = visible_event(&state, &request.room_id, &request.event_id, start).await?;
    let position = stored
        .stream_pos
        .ok_or_else(|| MatrixError::not_found("Event not in this room's timeline"))?;
    let limit = u32::try_from(u64::from(request.limit))
        .unwrap_or(10)
        .min(100);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let room = request.room_id.to_string();
    let mut before = state
        .store
        .room_page(room.clone(), position - 1, true, before_limit.max(1))
        .await?;
    before.retain(|p| p.stream_pos.is_some_and(|pos| pos >= start));
    let mut after = state
        .store
        .room_page(room, position, false, after_limit.max(1))
        .await?;
    before.truncate(before_limit as usize);
    after.truncate(after_limit as usize);
    // The event and those around it served as one page, then taken apart.
    let event = Pdu::from_stored(&stored).map_err(|e| MatrixError::unknown(e.to_string()))?;
    let events_before = parsed(&before);
    let before_count = events_before.len();
    let pdus: Vec<Pdu> = std::iter::once(event)
        .chain(events_before)
        .chain(parsed(&after))
        .collect();
    let mut served = ClientEvents::timeline(&state, &user, &request.room_id, start, true)
        .serve(&pdus)
        .await?;
    let mut response = get_context::v3::Response::new();
    response.events_after = served.split_off(1 + before_count);
    response.events_before = served.split_off(1);
    response.event = served.pop();
    let earliest = before.last().and_then(|p| p.stream_pos).unwrap_or(position);
    let latest = after.last().and_then(|p| p.stream_pos).unwrap_or(position);
    response.start = Some(stream_token(earliest - 1));
    response.end = Some(stream_token(latest));
    response.state = ClientEvents::without_relations(&state, &user, true)
        .serve_room_state(&request.room_id)
        .await?;
    Ok(Ruma(response))
}
