//! The `rooms` of a `/sync`: each room the user is joined to, invited to or has left, with what
//! changed in it since the client's last sync, as the client's filter keeps it.

use std::collections::{BTreeMap, BTreeSet};

use ruma::api::client::sync::sync_events::v3::{
    self as sync, InviteState, InvitedRoom, JoinedRoom, LeftRoom, RoomSummary, StateEvents,
    Timeline,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};

use super::filter::SyncFilter;
use crate::client_api::error::MatrixError;
use crate::client_api::events::{ClientEvents, parsed};
use crate::client_api::history::history_start;
use crate::client_api::request::User;
use crate::client_api::tokens::stream_token;
use crate::node::AppState;
use crate::rooms::Pdu;

/// Heroes named in a room's summary when it has neither a name nor an alias.
const MAX_HEROES: usize = 5;

/// What the sync covers: `(after, upto]` of the stream, from `since` (none on a first sync).
#[derive(Clone, Copy)]
pub(super) struct Window {
    pub(super) since: Option<i64>,
    pub(super) after: i64,
    pub(super) upto: i64,
    pub(super) typing_since: Option<u64>,
    pub(super) full_state: bool,
}

/// The rooms part of a response, and what the device lists are worked out from.
#[derive(Default)]
pub(super) struct SyncedRooms {
    pub(super) rooms: sync::Rooms,
    /// Every room the user is joined to, whether or not the filter shows it.
    pub(super) joined: Vec<OwnedRoomId>,
    /// Rooms the user left since the last sync.
    pub(super) left: Vec<OwnedRoomId>,
    /// Members whose devices the client may not know yet: of rooms newly joined, and new
    /// members of the others.
    pub(super) new_members: BTreeSet<OwnedUserId>,
}

pub(super) async fn rooms(
    state: &AppState,
    user: &User,
    window: Window,
    filter: &SyncFilter,
) -> Result<SyncedRooms, MatrixError> {
    let user_id = user.user_id.to_string();
    let mut synced = SyncedRooms::default();
    for room in state.store.memberships_of(user_id.clone()).await? {
        let Ok(room_id) = RoomId::parse(&room.room_id) else {
            continue;
        };
        // The membership as of `upto`: a change after it belongs to the next sync.
        let Some(((membership, position), previous)) = state
            .store
            .membership_at(room.room_id.clone(), user_id.clone(), window.upto)
            .await?
        else {
            continue;
        };
        let changed_now = window.since.is_none_or(|s| position > s);
        let wanted = filter.wants_room(&room_id);
        match membership.as_str() {
            "join" => {
                synced.joined.push(room_id.clone());
                // Newly joined (not a name change): the room comes whole, with the history the
                // room lets the member read, as on a first sync.
                let newly_joined =
                    window.since.is_some() && changed_now && previous.as_deref() != Some("join");
                if newly_joined {
                    for member in state
                        .store
                        .room_members(room_id.to_string(), "join".into())
                        .await?
                    {
                        synced.new_members.extend(UserId::parse(member).ok());
                    }
                }
                if !wanted {
                    continue;
                }
                if let Some(joined) =
                    joined_room(state, user, &room_id, window, filter, newly_joined).await?
                {
                    synced.new_members.extend(joined_members_in(&joined.1));
                    synced.rooms.join.insert(room_id, joined.0);
                }
            }
            "invite" if changed_now && wanted => {
                let invited = invited_room(state, user, &room_id, &room.event_id).await?;
                synced.rooms.invite.insert(room_id, invited);
            }
            "leave" | "ban" => {
                let first_sync_with_leave = window.since.is_none() && filter.include_leave;
                if !(window.since.is_some() && changed_now || first_sync_with_leave) {
                    continue;
                }
                if window.since.is_some() {
                    synced.left.push(room_id.clone());
                }
                if !wanted {
                    continue;
                }
                let mut left = LeftRoom::new();
                // Only a member who was in the room sees what happened until they left; a
                // refused or withdrawn invite shows no messages.
                if previous.as_deref() == Some("join") {
                    let (stored, limited) = state
                        .store
                        .room_timeline(
                            room_id.to_string(),
                            window.after,
                            position,
                            filter.timeline_limit,
                        )
                        .await?;
                    // Without relations: what the user could read of the room ended when
                    // they left, and what relates to it since is not theirs to see.
                    let events = ClientEvents::without_relations(state, user, false);
                    left.timeline = timeline_of(&events, &stored, limited, window.after, filter)
                        .await?
                        .0;
                }
                synced.rooms.leave.insert(room_id, left);
            }
            _ => {}
        }
    }
    Ok(synced)
}

/// A joined room's part of the response (and the events of its timeline), or `None` when
/// nothing in it changed for this sync.
async fn joined_room(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    window: Window,
    filter: &SyncFilter,
    newly_joined: bool,
) -> Result<Option<(JoinedRoom, Vec<Pdu>)>, MatrixError> {
    let store = &state.store;
    let start = if window.since.is_none() || newly_joined {
        Some(history_start(state, room_id, &user.user_id).await?)
    } else {
        None
    };
    let from = start.map_or(window.after, |start| start.saturating_sub(1).max(0));
    let (mut stored, mut limited) = store
        .room_timeline(
            room_id.to_string(),
            from,
            window.upto,
            filter.timeline_limit,
        )
        .await?;
    let ephemeral: Vec<_> = crate::client_api::ephemeral::room_ephemeral(
        state,
        &user.user_id,
        room_id,
        window.after,
        window.upto,
        window.since.and(window.typing_since),
    )
    .await?
    .into_iter()
    .filter(|e| {
        filter
            .ephemeral
            .allows_type(e["type"].as_str().unwrap_or_default())
    })
    .collect();
    if window.since.is_some()
        && stored.is_empty()
        && ephemeral.is_empty()
        && !newly_joined
        && !window.full_state
    {
        return Ok(None);
    }
    // The state as of the timeline's start: whole, or what changed in the gap a limited
    // timeline left out.
    let whole = window.since.is_none() || newly_joined || window.full_state;
    // Outside the gap, the state before the timeline, for the members a lazy-loading client
    // has not been sent yet.
    let mut before_gap = Vec::new();
    let mut state_pdus = if whole {
        whole_state(state, room_id, &mut stored, &mut limited, window.upto).await?
    } else {
        let timeline_start = stored
            .first()
            .and_then(|p| p.stream_pos)
            .unwrap_or(window.upto + 1);
        let (gap, rest) = store
            .state_before(room_id.to_string(), timeline_start)
            .await?
            .into_iter()
            .partition::<Vec<_>, _>(|s| {
                limited && s.stream_pos.is_some_and(|pos| pos > window.after)
            });
        if filter.lazy_load_members {
            before_gap = parsed(&rest);
        }
        parsed(&gap)
    };
    // What of the room the user may read, for the relations bundled with the timeline; only
    // needed when there is one.
    let visible_from = match start {
        Some(start) => start,
        None if stored.is_empty() => i64::MAX,
        None => history_start(state, room_id, &user.user_id).await?,
    };
    let events = ClientEvents::timeline(state, user, room_id, visible_from, false);
    let (timeline, pdus) = timeline_of(&events, &stored, limited, from, filter).await?;

    // With lazy-loaded members, only those of the timeline's senders (and the user's own) come
    // with the state.
    let senders: BTreeSet<&str> = pdus
        .iter()
        .map(|p| p.sender.as_str())
        .chain([user.user_id.as_str()])
        .collect();
    // Each timeline sender comes with their member event, which the client may not have been
    // sent with the state it had. No record is kept of what each device was sent, so a
    // sender's member event is sent again with each sync they speak in (redundant, which the
    // spec allows).
    state_pdus.extend(before_gap.into_iter().filter(|pdu| {
        pdu.kind.to_string() == "m.room.member"
            && pdu
                .state_key
                .as_deref()
                .is_some_and(|k| senders.contains(k))
    }));
    let state_pdus: Vec<Pdu> = state_pdus
        .into_iter()
        .filter(|pdu| filter.state.allows_pdu(pdu))
        .filter(|pdu| {
            !filter.lazy_load_members
                || pdu.kind.to_string() != "m.room.member"
                || pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|k| senders.contains(k))
        })
        .collect();
    let members_changed = whole
        || state_pdus
            .iter()
            .chain(&pdus)
            .any(|p| p.kind.to_string() == "m.room.member");

    let mut room = JoinedRoom::new();
    room.unread_notifications =
        crate::push::unread_notifications(state, &user.user_id, room_id, window.upto).await?;
    room.timeline = timeline;
    room.ephemeral.events = ephemeral
        .into_iter()
        .filter_map(|e| serde_json::value::to_raw_value(&e).ok())
        .map(Raw::from_json)
        .collect();
    let mut state_before = StateEvents::new();
    state_before.events = ClientEvents::without_relations(state, user, false)
        .serve(&state_pdus)
        .await?;
    room.state = sync::State::Before(state_before);
    // Clients name rooms without a name from the summary, and count members from it when
    // members are lazy-loaded: sent whenever the membership may have changed.
    if members_changed {
        room.summary = summary(state, room_id, &user.user_id).await?;
    }
    Ok(Some((room, pdus)))
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

/// Users who joined in these events.
fn joined_members_in(pdus: &[Pdu]) -> impl Iterator<Item = OwnedUserId> + '_ {
    pdus.iter()
        .filter(|pdu| {
            pdu.kind.to_string() == "m.room.member"
                && crate::rooms::membership_of(&pdu.content).as_deref() == Some("join")
        })
        .filter_map(|pdu| pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()))
}

/// The room's member counts, and its heroes when it has neither a name nor an alias.
async fn summary(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<RoomSummary, MatrixError> {
    let joined = state
        .store
        .room_members(room_id.to_string(), "join".into())
        .await?;
    let invited = state
        .store
        .room_members(room_id.to_string(), "invite".into())
        .await?;
    let mut summary = RoomSummary::new();
    summary.joined_member_count = Some(UInt::try_from(joined.len()).unwrap_or_default());
    summary.invited_member_count = Some(UInt::try_from(invited.len()).unwrap_or_default());
    let named = state
        .store
        .current_state(room_id.to_string())
        .await?
        .iter()
        .any(|(kind, key, _)| {
            key.is_empty() && (kind == "m.room.name" || kind == "m.room.canonical_alias")
        });
    if !named {
        let mut heroes: Vec<OwnedUserId> = joined
            .iter()
            .chain(&invited)
            .filter(|member| *member != user.as_str())
            .filter_map(|member| UserId::parse(member).ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        heroes.truncate(MAX_HEROES);
        summary.heroes = heroes;
    }
    Ok(summary)
}

/// An invited room: the stripped state its members chose to show.
async fn invited_room(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    invite_event: &str,
) -> Result<InvitedRoom, MatrixError> {
    let user_id = user.user_id.as_str();
    let mut events = Vec::new();
    // An invite from another server comes with the state it chose to show.
    if let Some(stripped_state) = state
        .store
        .invite_state(room_id.to_string(), user_id.to_owned())
        .await?
    {
        let shown: Vec<Raw<ruma::events::AnyStrippedStateEvent>> =
            serde_json::from_str(&stripped_state).unwrap_or_default();
        events.extend(shown);
        let invite_event = ruma::EventId::parse(invite_event)
            .map_err(|e| MatrixError::unknown(format!("stored event id: {e}")))?;
        if let Some(invite) = state.rooms.event(&invite_event).await? {
            events.push(stripped(&invite));
        }
    }
    for pdu in state.rooms.state(room_id).await?.values() {
        let kind = pdu.kind.to_string();
        let mine = kind == "m.room.member" && pdu.state_key.as_deref() == Some(user_id);
        if crate::rooms::INVITE_STATE.contains(&kind.as_str()) || mine {
            events.push(stripped(pdu));
        }
    }
    let mut room = InvitedRoom::new();
    room.invite_state = InviteState::from(events);
    Ok(room)
}

/// The timeline as clients get it, and the parsed events it holds (those the filter keeps);
/// `prev_batch` points just before the first event (or at `after` when there is none), for
/// `/messages` to go back from.
async fn timeline_of(
    events: &ClientEvents<'_>,
    stored: &[hyphae_store::StoredPdu],
    limited: bool,
    after: i64,
    filter: &SyncFilter,
) -> Result<(Timeline, Vec<Pdu>), MatrixError> {
    let mut pdus = parsed(stored);
    pdus.retain(|pdu| filter.timeline.allows_pdu(pdu));
    let mut timeline = Timeline::new();
    timeline.limited = limited;
    let before_first = stored
        .first()
        .and_then(|s| s.stream_pos)
        .map_or(after, |pos| pos - 1);
    timeline.prev_batch = Some(stream_token(before_first));
    timeline.events = events.serve(&pdus).await?;
    Ok((timeline, pdus))
}

fn stripped(pdu: &Pdu) -> Raw<ruma::events::AnyStrippedStateEvent> {
    let event = crate::rooms::stripped(pdu);
    Raw::from_json(serde_json::value::to_raw_value(&event).unwrap_or_default())
}

/// Room account data of the rooms this sync speaks of, by room.
pub(super) fn room_account_data(
    rooms: &mut sync::Rooms,
    joined: &[OwnedRoomId],
    changes: BTreeMap<OwnedRoomId, Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>>,
) {
    for (room_id, events) in changes {
        if let Some(room) = rooms.join.get_mut(&room_id) {
            room.account_data.events = events;
        } else if joined.contains(&room_id) {
            let mut room = JoinedRoom::new();
            room.account_data.events = events;
            rooms.join.insert(room_id, room);
        }
    }
}
