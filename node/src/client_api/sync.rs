//! `/sync`: everything that changed for a user's device between two stream positions. With a
//! `timeout` it waits on the store's stream position (a watch, not a polling loop) until
//! something for this user arrives or the time is up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use ruma::api::client::filter::{FilterDefinition, create_filter, get_filter};
use ruma::api::client::sync::sync_events::v3::{
    self as sync, Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, StateEvents, Timeline,
};
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, OwnedUserId, RoomId, UInt, UserId};
use serde_json::{Value, json};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use super::rooms::{history_start, parse_stream_token, stream_token};
use crate::node::AppState;
use crate::rooms::Pdu;

/// Timeline events per room when the filter says nothing.
const DEFAULT_TIMELINE_LIMIT: u32 = 20;
/// To-device messages per response; the rest come with the next sync.
const TO_DEVICE_LIMIT: u32 = 100;
/// Clients ask for 30 s; nobody gets more than this.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn sync(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<sync::Request>,
) -> ApiResult<sync::Response> {
    let (since, typing_since) = match request.since.as_deref() {
        Some(token) => {
            let (position, typing) = parse_sync_token(token)?;
            (Some(position), typing)
        }
        None => (None, None),
    };
    let limit = timeline_limit(&state, &user, request.filter.as_ref()).await?;
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
        let since = Since {
            position: since,
            typing: typing_since,
        };
        let mut response = build(&state, &user, since, upto, request.full_state, limit).await?;
        response.next_batch = format!("{}_t{typing_now}", response.next_batch);
        if since.position.is_none()
            || has_news(&response)
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Ruma(response));
        }
        tokio::select! {
            changed = position.changed() => if changed.is_err() { return Ok(Ruma(response)) },
            changed = typing.changed() => if changed.is_err() { return Ok(Ruma(response)) },
            _ = tokio::time::sleep_until(deadline) => return Ok(Ruma(response)),
        }
    }
}

/// Where the client's last sync ended: a stream position and the typing serial.
#[derive(Clone, Copy)]
struct Since {
    position: Option<i64>,
    typing: Option<u64>,
}

/// `s<position>` or `s<position>_t<typing serial>`.
fn parse_sync_token(token: &str) -> Result<(i64, Option<u64>), MatrixError> {
    match token.split_once("_t") {
        Some((position, typing)) => {
            let typing = typing
                .parse()
                .map_err(|_| MatrixError::invalid_param(format!("Unknown sync token {token:?}")))?;
            Ok((parse_stream_token(position)?, Some(typing)))
        }
        None => Ok((parse_stream_token(token)?, None)),
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
}

async fn timeline_limit(
    state: &AppState,
    user: &User,
    filter: Option<&Filter>,
) -> Result<u32, MatrixError> {
    let definition = match filter {
        None => return Ok(DEFAULT_TIMELINE_LIMIT),
        Some(Filter::FilterDefinition(definition)) => definition.clone(),
        Some(Filter::FilterId(id)) => {
            let stored = match id.parse::<i64>() {
                Ok(id) => state.store.filter(user.localpart.clone(), id).await?,
                Err(_) => None,
            };
            let stored = stored.ok_or_else(|| MatrixError::not_found("Unknown filter"))?;
            serde_json::from_str(&stored).map_err(|e| MatrixError::unknown(e.to_string()))?
        }
        Some(_) => return Ok(DEFAULT_TIMELINE_LIMIT),
    };
    Ok(definition
        .room
        .timeline
        .limit
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| {
            u32::try_from(u64::from(l)).unwrap_or(u32::MAX)
        })
        .clamp(1, 500))
}

/// What changed for `user` in `(since, upto]` (everything up to `upto` when `since` is `None`).
async fn build(
    state: &AppState,
    user: &User,
    since: Since,
    upto: i64,
    full_state: bool,
    limit: u32,
) -> Result<sync::Response, MatrixError> {
    let typing_since = since.typing;
    let since = since.position;
    let store = &state.store;
    let user_id = user.user_id.to_string();
    let device_id = user.device_id.to_string();
    let after = since.unwrap_or(0).min(upto);

    // To-device first: if the batch is cut, the whole response stops where it was cut, so
    // nothing in the other streams is skipped.
    let messages = store
        .to_device_messages(
            user.localpart.clone(),
            device_id.clone(),
            after,
            upto,
            TO_DEVICE_LIMIT,
        )
        .await?;
    let upto = if messages.len() as u32 == TO_DEVICE_LIMIT {
        messages.last().map_or(upto, |m| m.0)
    } else {
        upto
    };
    let mut response = sync::Response::new(stream_token(upto));
    response.to_device.events = messages
        .into_iter()
        .filter_map(|(_, kind, sender, content)| {
            let content: Value = serde_json::from_str(&content).ok()?;
            let event = json!({"type": kind, "sender": sender, "content": content});
            Some(Raw::from_json(
                serde_json::value::to_raw_value(&event).ok()?,
            ))
        })
        .collect();

    let mut newly_joined_members: BTreeSet<OwnedUserId> = BTreeSet::new();
    let mut shared_rooms = Vec::new();
    let mut left_rooms = Vec::new();
    for room in store.memberships_of(user_id.clone()).await? {
        let Ok(room_id) = RoomId::parse(&room.room_id) else {
            continue;
        };
        // The membership as of `upto`: a change after it belongs to the next sync.
        let Some(((membership, position), previous)) = store
            .membership_at(room.room_id.clone(), user_id.clone(), upto)
            .await?
        else {
            continue;
        };
        let changed_now = since.is_none_or(|s| position > s);
        match membership.as_str() {
            "join" => {
                shared_rooms.push(room_id.clone());
                // Newly joined (not a name change): the room comes whole, with the history
                // the room lets the member read, as on a first sync.
                let newly_joined =
                    since.is_some() && changed_now && previous.as_deref() != Some("join");
                let from = if since.is_none() || newly_joined {
                    history_start(state, &room_id, &user.user_id)
                        .await?
                        .saturating_sub(1)
                        .max(0)
                } else {
                    after
                };
                let (mut timeline, mut limited) = store
                    .room_timeline(room_id.to_string(), from, upto, limit)
                    .await?;
                let whole = since.is_none() || newly_joined || full_state;
                // The state as of the timeline's start: whole, or what changed in the gap a
                // limited timeline left out.
                let state_events: Vec<Pdu> = if whole {
                    whole_state(state, &room_id, &mut timeline, &mut limited, upto).await?
                } else {
                    let timeline_start = timeline
                        .first()
                        .and_then(|p| p.stream_pos)
                        .unwrap_or(upto + 1);
                    store
                        .state_before(room_id.to_string(), timeline_start)
                        .await?
                        .iter()
                        .filter(|s| limited && s.stream_pos.is_some_and(|pos| pos > after))
                        .filter_map(|s| Pdu::from_stored(s).ok())
                        .collect()
                };
                let ephemeral = super::ephemeral::room_ephemeral(
                    state,
                    &user.user_id,
                    &room_id,
                    after,
                    upto,
                    if since.is_some() { typing_since } else { None },
                )
                .await?;
                if since.is_some()
                    && timeline.is_empty()
                    && ephemeral.is_empty()
                    && !newly_joined
                    && !full_state
                {
                    continue;
                }
                if newly_joined {
                    for member in store
                        .room_members(room_id.to_string(), "join".into())
                        .await?
                    {
                        if let Ok(member) = UserId::parse(member) {
                            newly_joined_members.insert(member);
                        }
                    }
                }
                let (timeline, pdus) = timeline_of(state, user, &timeline, limited, from).await?;
                for pdu in &pdus {
                    if pdu.kind.to_string() == "m.room.member"
                        && crate::rooms::membership_of(&pdu.content).as_deref() == Some("join")
                        && let Some(member) =
                            pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
                    {
                        newly_joined_members.insert(member);
                    }
                }
                let state_events = state_events.iter().map(|pdu| pdu.to_raw(false)).collect();
                let mut room = JoinedRoom::new();
                room.timeline = timeline;
                room.ephemeral.events = ephemeral
                    .into_iter()
                    .filter_map(|e| serde_json::value::to_raw_value(&e).ok())
                    .map(Raw::from_json)
                    .collect();
                let mut state_before = StateEvents::new();
                state_before.events = state_events;
                room.state = sync::State::Before(state_before);
                response.rooms.join.insert(room_id, room);
            }
            "invite" if changed_now => {
                let mut events = Vec::new();
                // An invite from another server comes with the state it chose to show.
                if let Some(stripped_state) = store
                    .invite_state(room_id.to_string(), user_id.clone())
                    .await?
                {
                    let shown: Vec<Raw<ruma::events::AnyStrippedStateEvent>> =
                        serde_json::from_str(&stripped_state).unwrap_or_default();
                    events.extend(shown);
                    if let Some(invite) =
                        state
                            .rooms
                            .event(&ruma::EventId::parse(&room.event_id).map_err(|e| {
                                MatrixError::unknown(format!("stored event id: {e}"))
                            })?)
                            .await?
                    {
                        events.push(stripped(&invite));
                    }
                }
                for pdu in state.rooms.state(&room_id).await?.values() {
                    let kind = pdu.kind.to_string();
                    let mine =
                        kind == "m.room.member" && pdu.state_key.as_deref() == Some(&user_id);
                    if crate::rooms::INVITE_STATE.contains(&kind.as_str()) || mine {
                        events.push(stripped(pdu));
                    }
                }
                let mut room = InvitedRoom::new();
                room.invite_state = InviteState::from(events);
                response.rooms.invite.insert(room_id, room);
            }
            "leave" | "ban" if since.is_some() && changed_now => {
                left_rooms.push(room_id.clone());
                let mut room = LeftRoom::new();
                // Only a member who was in the room sees what happened until they left; a
                // refused or withdrawn invite shows no messages.
                if previous.as_deref() == Some("join") {
                    let (timeline, limited) = store
                        .room_timeline(room_id.to_string(), after, position, limit)
                        .await?;
                    room.timeline = timeline_of(state, user, &timeline, limited, after).await?.0;
                }
                response.rooms.leave.insert(room_id, room);
            }
            _ => {}
        }
    }

    let mut room_account_data: BTreeMap<String, Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>> =
        BTreeMap::new();
    for (room, kind, content) in store
        .account_data_changes(user.localpart.clone(), after, upto)
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
            response.account_data.events.push(Raw::from_json(event));
        } else {
            room_account_data
                .entry(room)
                .or_default()
                .push(Raw::from_json(event));
        }
    }
    for (room, events) in room_account_data {
        let Ok(room_id) = RoomId::parse(&room) else {
            continue;
        };
        if let Some(joined) = response.rooms.join.get_mut(&room_id) {
            joined.account_data.events = events;
        } else if shared_rooms.contains(&room_id) {
            let mut joined = JoinedRoom::new();
            joined.account_data.events = events;
            response.rooms.join.insert(room_id, joined);
        }
    }

    if since.is_some() {
        // Whose devices to re-fetch: users sharing a room whose keys changed, and new members.
        let mut sharing: BTreeSet<String> = BTreeSet::from([user_id.clone()]);
        for room_id in &shared_rooms {
            sharing.extend(
                store
                    .room_members(room_id.to_string(), "join".into())
                    .await?,
            );
        }
        let mut changed: BTreeSet<OwnedUserId> = store
            .users_with_key_changes(after, upto)
            .await?
            .into_iter()
            .filter(|u| sharing.contains(u))
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        changed.extend(
            newly_joined_members
                .into_iter()
                .filter(|u| *u != user.user_id),
        );
        response.device_lists.changed = changed.into_iter().collect();

        // Users who no longer share any room: they left one of ours, or we left theirs.
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        for room_id in &shared_rooms {
            for (member, membership) in store
                .membership_changes(room_id.to_string(), after, upto)
                .await?
            {
                if membership == "leave" || membership == "ban" {
                    candidates.insert(member);
                }
            }
        }
        for room_id in &left_rooms {
            candidates.extend(
                store
                    .room_members(room_id.to_string(), "join".into())
                    .await?,
            );
        }
        response.device_lists.left = candidates
            .into_iter()
            .filter(|u| !sharing.contains(u))
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
    }

    response.device_one_time_keys_count = store
        .one_time_key_counts(user_id.clone(), device_id.clone())
        .await?
        .into_iter()
        .map(|(algorithm, count)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::try_from(count).unwrap_or_default(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    response.device_unused_fallback_key_types = Some(
        store
            .unused_fallback_key_types(user_id, device_id)
            .await?
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect(),
    );
    Ok(response)
}

/// The room's whole state as of the start of `timeline`. A room this node joined through another
/// server has no known state before the join: the invite that came first was stored alone. Then
/// the timeline starts at the first event whose state is known (the join), marked limited so the
/// client pages back for the rest; without this the client would get the room with no create,
/// power levels or encryption event, and could not send in it.
async fn whole_state(
    state: &AppState,
    room_id: &RoomId,
    timeline: &mut Vec<hyphae_store::StoredPdu>,
    limited: &mut bool,
    upto: i64,
) -> Result<Vec<Pdu>, MatrixError> {
    let store = &state.store;
    let start = timeline
        .first()
        .and_then(|p| p.stream_pos)
        .unwrap_or(upto + 1);
    let parsed = |stored: &[hyphae_store::StoredPdu]| -> Vec<Pdu> {
        stored
            .iter()
            .filter_map(|s| Pdu::from_stored(s).ok())
            .collect()
    };
    let before = parsed(&store.state_before(room_id.to_string(), start).await?);
    let is_create = |pdu: &Pdu| pdu.kind == ruma::events::TimelineEventType::RoomCreate;
    let starts_at_creation = timeline
        .first()
        .and_then(|s| Pdu::from_stored(s).ok())
        .is_some_and(|pdu| is_create(&pdu));
    if starts_at_creation || before.iter().any(is_create) {
        return Ok(before);
    }
    for (index, event) in timeline.iter().enumerate() {
        let Some(snapshot) = store.state_at(event.event_id.clone()).await? else {
            continue;
        };
        let ids = snapshot.entries.into_iter().map(|(_, _, id)| id).collect();
        let known = parsed(&store.pdus(ids).await?);
        if known.iter().any(is_create) {
            if index > 0 {
                timeline.drain(..index);
                *limited = true;
            }
            return Ok(known);
        }
    }
    Ok(before)
}

/// The timeline as clients get it, and the parsed events; `prev_batch` points just before the
/// first event (or at `after` when there is none), for `/messages` to go back from.
async fn timeline_of(
    state: &AppState,
    user: &User,
    stored: &[hyphae_store::StoredPdu],
    limited: bool,
    after: i64,
) -> Result<(Timeline, Vec<Pdu>), MatrixError> {
    let pdus: Vec<Pdu> = stored
        .iter()
        .filter_map(|s| match Pdu::from_stored(s) {
            Ok(pdu) => Some(pdu),
            Err(e) => {
                tracing::error!(error = %e, "skipping a damaged stored event");
                None
            }
        })
        .collect();
    let mut timeline = Timeline::new();
    timeline.limited = limited;
    let before_first = stored
        .first()
        .and_then(|s| s.stream_pos)
        .map_or(after, |pos| pos - 1);
    timeline.prev_batch = Some(stream_token(before_first));
    timeline.events = super::rooms::client_events(state, user, &pdus, false).await?;
    Ok((timeline, pdus))
}

fn stripped(pdu: &Pdu) -> Raw<ruma::events::AnyStrippedStateEvent> {
    let event = crate::rooms::stripped(pdu);
    Raw::from_json(serde_json::value::to_raw_value(&event).unwrap_or_default())
}

pub(crate) async fn create_filter(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden(
            "You can only make filters for yourself",
        ));
    }
    let filter =
        serde_json::to_string(&request.filter).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let id = state.store.save_filter(user.localpart, filter).await?;
    Ok(Ruma(create_filter::v3::Response::new(id.to_string())))
}

pub(crate) async fn get_filter(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_filter::v3::Request>,
) -> ApiResult<get_filter::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden("You can only read your own filters"));
    }
    let stored = match request.filter_id.parse::<i64>() {
        Ok(id) => state.store.filter(user.localpart, id).await?,
        Err(_) => None,
    };
    let stored = stored.ok_or_else(|| MatrixError::not_found("Unknown filter"))?;
    let filter: FilterDefinition =
        serde_json::from_str(&stored).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(Ruma(get_filter::v3::Response::new(filter)))
}
