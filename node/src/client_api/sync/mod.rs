//! `/sync`: everything that changed for a user's device between two stream positions. With a
//! `timeout` it waits on the store's stream position (a watch, not a polling loop) until
//! something for this user arrives or the time is up.
//!
//! `rooms.rs` builds the rooms, `devices.rs` the end-to-end encryption parts, `filter.rs` reads
//! the client's filter, and `sections.rs` writes out the body as clients validate it.

mod devices;
mod filter;
mod rooms;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use ruma::api::client::sync::sync_events::v3 as sync;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use super::error::MatrixError;
use super::presence;
use super::request::{Req, User};
use super::tokens::Token;
use crate::node::AppState;
use filter::SyncFilter;
pub(crate) use filter::{EventMatch, create_filter, get_filter, lazy_loads};
use rooms::Window;
use sections::SyncBody;

/// Clients ask for 30 s; nobody gets more than this.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn sync(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<sync::Request>,
) -> Result<SyncBody, MatrixError> {
    let (since, typing_since, presence_since) = match request.since.as_deref() {
        Some(token) => {
            let token = Token::parse_stream(token)?;
            (Some(token.position), token.typing, token.presence)
        }
        None => (None, None, None),
    };
    let filter = SyncFilter::load(&state, &user, request.filter.as_ref()).await?;
    presence::syncing(&state, &user.user_id, &request.set_presence).await;
    let presence_since = presence::since(&state, since.is_none(), presence_since);
    let timeout = request.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    // What the client acknowledged with `since` is delivered: drop it, once per request.
    if let Some(since) = since {
        state
            .store
            .delete_to_device_upto(user.localpart.clone(), user.device_id.to_string(), since)
            .await?;
    }
    let mut position = state.store.stream_position();
    let mut typing = state.typing.serial();
    // A token without a typing serial: report typing changes from now on only.
    let typing_since = match (since, typing_since) {
        (Some(_), None) => Some(*typing.borrow()),
        (_, typing_since) => typing_since,
    };
    loop {
        let upto = *position.borrow_and_update();
        let typing_now = *typing.borrow_and_update();
        let window = Window {
            since,
            after: since.unwrap_or(0).min(upto),
            upto,
            typing_since,
            full_state: request.full_state,
        };
        let (mut response, reached) = build(&state, &user, window, &filter).await?;
        let presence_now =
            presence::add_to_sync(&state, &user.user_id, presence_since, &mut response).await?;
        response.presence.events.retain(|event| {
            let sender = event.get_field::<String>("sender").ok().flatten();
            filter
                .presence
                .allows("m.presence", sender.as_deref(), None, None)
        });
        response.next_batch = Token::sync(reached, typing_now, presence_now);
        if since.is_none() || has_news(&response) || tokio::time::Instant::now() >= deadline {
            return Ok(SyncBody(response));
        }
        tokio::select! {
            changed = position.changed() => if changed.is_err() { return Ok(SyncBody(response)) },
            changed = typing.changed() => if changed.is_err() { return Ok(SyncBody(response)) },
            _ = presence::news(&state, &user.user_id, presence_now) => {},
            _ = tokio::time::sleep_until(deadline) => return Ok(SyncBody(response)),
        }
    }
}

fn has_news(response: &sync::Response) -> bool {
    !response.rooms.join.is_empty()
        || !response.account_data.events.is_empty()
        || !response.rooms.invite.is_empty()
        || !response.rooms.leave.is_empty()
        || !response.to_device.events.is_empty()
        || !response.device_lists.changed.is_empty()
        || !response.device_lists.left.is_empty()
        || !response.presence.is_empty()
}

/// What changed for `user` in the window, and the position it reached (short of `upto` when
/// the to-device batch was cut).
async fn build(
    state: &AppState,
    user: &User,
    window: Window,
    filter: &SyncFilter,
) -> Result<(sync::Response, i64), MatrixError> {
    // To-device first: if its batch is cut, the whole response stops where it was cut.
    let (to_device, upto) = devices::to_device(state, user, window.after, window.upto).await?;
    let window = Window { upto, ..window };
    let mut response = sync::Response::new(String::new());
    response.to_device.events = to_device;

    let mut synced = rooms::rooms(state, user, window, filter).await?;
    let (mut global, by_room) = account_data(state, user, window, filter).await?;
    if window.since.is_none() && filter.account_data.allows_type("m.push_rules") {
        crate::push::with_push_rules(&user.user_id, &mut global);
    }
    response.account_data.events = global;
    rooms::room_account_data(&mut synced.rooms, &synced.joined, by_room);
    response.rooms = synced.rooms;

    if window.since.is_some() {
        response.device_lists = devices::device_lists(
            state,
            user,
            (window.after, upto),
            &synced.joined,
            &synced.left,
            synced.new_members,
        )
        .await?;
    }
    devices::key_counts(state, user, &mut response).await?;
    Ok((response, upto))
}

/// Account data the user changed in the window, global and by room, as the filter keeps it.
async fn account_data(
    state: &AppState,
    user: &User,
    window: Window,
    filter: &SyncFilter,
) -> Result<
    (
        Vec<Raw<ruma::events::AnyGlobalAccountDataEvent>>,
        BTreeMap<OwnedRoomId, Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>>,
    ),
    MatrixError,
> {
    let mut global = Vec::new();
    let mut by_room: BTreeMap<OwnedRoomId, Vec<_>> = BTreeMap::new();
    for (room, kind, content) in state
        .store
        .account_data_changes(user.localpart.clone(), window.after, window.upto)
        .await?
    {
        let Ok(content) = serde_json::from_str::<Value>(&content) else {
            continue;
        };
        let Ok(event) = serde_json::value::to_raw_value(&json!({"type": kind, "content": content}))
        else {
            continue;
        };
        if room.is_empty() {
            if filter.account_data.allows_type(&kind) {
                global.push(Raw::from_json(event));
            }
        } else if let Ok(room_id) = RoomId::parse(&room)
            && filter.wants_room(&room_id)
            && filter
                .room_account_data
                .allows(&kind, None, Some(&room_id), None)
        {
            by_room
                .entry(room_id)
                .or_default()
                .push(Raw::from_json(event));
        }
    }
    Ok((global, by_room))
}
