//! Relations and threads over the Client-Server API (spec "Relationships" and "Threading"):
//! the events relating to an event, paged from the store's relations index, and a room's
//! threads by latest activity. Both show only what the room's history visibility lets the
//! user read, as `/messages` does.

use axum::extract::State;
use hyphae_store::{MAX_RELATION_DEPTH, RelationFilter, StreamPage};
use ruma::api::Direction;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type,
    get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::threads::get_threads::v1::{self as get_threads, IncludeThreads};
use ruma::events::AnyMessageLikeEvent;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, UInt};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::events::ClientEvents;
use super::history::{history_start, page_limit, visible_event};
use super::request::{Req, User};
use super::rooms::require_joined;
use super::tokens::{parse_page_token, stream_token};
use crate::node::AppState;

/// Relating events per page when the client does not say, and at most.
const DEFAULT_RELATIONS_LIMIT: u32 = 50;
const MAX_RELATIONS_LIMIT: u32 = 100;
/// Threads per page when the client does not say, and at most.
const DEFAULT_THREADS_LIMIT: u32 = 20;
const MAX_THREADS_LIMIT: u32 = 100;

/// What the three relations endpoints ask, whichever path they came by.
struct RelationsQuery {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    dir: Direction,
    limit: Option<UInt>,
    recurse: bool,
}

/// One page of relating events, as all three endpoints answer.
struct RelationsPage {
    chunk: Vec<Raw<AnyMessageLikeEvent>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

/// The three relations endpoints differ only in the filters their path carries.
macro_rules! relations_endpoint {
    ($handler:ident, $endpoint:ident, |$request:ident| ($rel_type:expr, $event_type:expr)) => {
        pub(crate) async fn $handler(
            State(state): State<AppState>,
            user: User,
            Req($request): Req<$endpoint::v1::Request>,
        ) -> ApiResult<$endpoint::v1::Response> {
            let query = RelationsQuery {
                rel_type: $rel_type,
                event_type: $event_type,
                room_id: $request.room_id,
                event_id: $request.event_id,
                from: $request.from,
                to: $request.to,
                dir: $request.dir,
                limit: $request.limit,
                recurse: $request.recurse,
            };
            let page = relations_page(&state, &user, query).await?;
            let mut response = $endpoint::v1::Response::new(page.chunk);
            response.next_batch = page.next_batch;
            response.prev_batch = page.prev_batch;
            response.recursion_depth = page.recursion_depth;
            Ok(Ruma(response))
        }
    };
}

relations_endpoint!(relating_events, get_relating_events, |request| (None, None));
relations_endpoint!(
    relating_events_with_rel_type,
    get_relating_events_with_rel_type,
    |request| (Some(request.rel_type.to_string()), None)
);
relations_endpoint!(
    relating_events_with_rel_type_and_event_type,
    get_relating_events_with_rel_type_and_event_type,
    |request| (
        Some(request.rel_type.to_string()),
        Some(request.event_type.to_string())
    )
);

/// Tokens are stream positions, as for `/messages`: backwards from `s<n>` gives relations at
/// or before n, newest first; forwards gives those after n, oldest first.
async fn relations_page(
    state: &AppState,
    user: &User,
    query: RelationsQuery,
) -> Result<RelationsPage, MatrixError> {
    require_joined(state, &query.room_id, user).await?;
    let backwards = query.dir == Direction::Backward;
    let from = query.from.as_deref().map(parse_page_token).transpose()?;
    let to = query.to.as_deref().map(parse_page_token).transpose()?;
    let limit = page_limit(query.limit, DEFAULT_RELATIONS_LIMIT, MAX_RELATIONS_LIMIT);
    let start = history_start(state, &query.room_id, &user.user_id).await?;
    visible_event(state, &query.room_id, &query.event_id, start).await?;
    let depth = if query.recurse { MAX_RELATION_DEPTH } else { 1 };
    let mut relating = state
        .store
        .relating_events(
            query.room_id.to_string(),
            query.event_id.to_string(),
            RelationFilter {
                rel_type: query.rel_type,
                event_type: query.event_type,
                depth,
            },
            StreamPage {
                from,
                to,
                backwards,
                // One more than asked: whether there is a next page.
                limit: limit + 1,
            },
            start,
        )
        .await?;
    let more = relating.len() > limit as usize;
    relating.truncate(limit as usize);
    let next_batch = relating
        .last()
        .and_then(|p| p.stream_pos)
        .filter(|_| more)
        .map(|pos| stream_token(if backwards { pos - 1 } else { pos }));
    let chunk = ClientEvents::timeline(state, user, &query.room_id, start, true)
        .serve_stored(&relating)
        .await?;
    Ok(RelationsPage {
        chunk,
        next_batch,
        prev_batch: query.from,
        recursion_depth: query.recurse.then(|| UInt::from(depth)),
    })
}

/// The room's threads, the most recently active first. `from` is a `next_batch` of an earlier
/// page: threads whose latest reply is at or before its position.
pub(crate) async fn threads(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_threads::Request>,
) -> ApiResult<get_threads::Response> {
    require_joined(&state, &request.room_id, &user).await?;
    let before = request.from.as_deref().map(parse_page_token).transpose()?;
    let limit = page_limit(request.limit, DEFAULT_THREADS_LIMIT, MAX_THREADS_LIMIT);
    let participated_by = match request.include {
        IncludeThreads::All => None,
        IncludeThreads::Participated => Some(user.user_id.to_string()),
        other => {
            return Err(MatrixError::invalid_param(format!(
                "include must be all or participated, not {}",
                other.as_str()
            )));
        }
    };
    let start = history_start(&state, &request.room_id, &user.user_id).await?;
    let mut roots = state
        .store
        .thread_roots(
            request.room_id.to_string(),
            participated_by,
            before,
            limit + 1,
            start,
        )
        .await?;
    let more = roots.len() > limit as usize;
    roots.truncate(limit as usize);
    let next_batch = roots
        .last()
        .filter(|_| more)
        .map(|thread| stream_token(thread.latest_pos - 1));
    let roots: Vec<_> = roots.into_iter().map(|thread| thread.root).collect();
    let chunk = ClientEvents::timeline(&state, &user, &request.room_id, start, true)
        .serve_stored(&roots)
        .await?;
    let mut response = get_threads::Response::new(chunk);
    response.next_batch = next_batch;
    Ok(Ruma(response))
}
