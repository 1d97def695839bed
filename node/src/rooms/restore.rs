//! Rooms taken back from this device's backup replica (`backup/restore.rs` fetches the entries
//! and checks their signatures and the device's tags): every event is authorised again as if it
//! had just arrived (`incoming.rs`: the auth rules against its auth events and the state before
//! it, state resolution where branches meet), never folded into the state as it comes. Then a
//! server of the room's members brings it up to date (`confirm_restored`) before the app shares
//! a room key in it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use axum::http::Method;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedEventId, RoomId, RoomVersionId, ServerName, UserId};

use super::incoming::{EventResponse, Source, check_auth, urlencode};
use super::{Pdu, ROOM_VERSIONS, Received, RoomError, RoomState, Rooms, joined_servers};

/// Servers of a restored room's members asked to bring it up to date, at most...
const CONFIRM_SERVERS: usize = 3;
/// ...and how long each may take.
const CONFIRM_BUDGET: Duration = Duration::from_secs(10);

/// How the device kept an event of its replica (see `backup::tag::Status`).
pub(crate) enum Kept {
    /// In its timeline; with the state before it (event ids) when its prev events were not all
    /// there.
    Timeline(Option<Vec<OwnedEventId>>),
    /// In its timeline with no state known before it: history.
    History,
    /// Checked against its auth events, out of the timeline.
    Outlier,
}

/// An event of the replica, its signatures and the device's tag checked.
pub(crate) struct ReplicaEvent {
    pub(crate) pdu: Pdu,
    pub(crate) kept: Kept,
}

/// What became of a room's replica.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomRestored {
    /// Events taken: in the timeline, as history, or as outliers.
    pub(crate) accepted: usize,
    /// Events the auth rules refused (or soft-failed): never shown, never built on.
    pub(crate) rejected: usize,
    /// Events left out because the state before them could not be had here.
    pub(crate) left_out: usize,
}

impl Rooms {
    /// Takes a room back from the replica into this (new) node: the outliers checked against
    /// their own auth events, the timeline applied through the incoming path in an order where
    /// every event comes after what it cites, history checked and stored before the rest.
    /// `events` must hold the room's create event.
    pub(crate) async fn restore_room(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        events: Vec<ReplicaEvent>,
    ) -> Result<RoomRestored, RoomError> {
        let create = events
            .iter()
            .find(|e| e.pdu.kind == TimelineEventType::RoomCreate && e.pdu.state_key.is_some())
            .map(|e| e.pdu.clone())
            .ok_or_else(|| RoomError::NotFound(format!("no create event for {room_id}")))?;
        self.inner
            .store
            .create_room_with(room_id.to_string(), version.to_string(), Vec::new())
            .await?;
        let order = citing_order(&events, &create.event_id);
        let Some(slot) = self.slot(room_id).await? else {
            return Err(RoomError::Internal("the restored room vanished".into()));
        };
        let mut guard = slot.lock().await;
        let mut entry = self.load_entry(room_id).await?;
        let mut outcome = RoomRestored::default();
        // What this restore took so far, to judge the rest by without waiting for the store.
        let mut taken: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut outliers = Vec::new();
        let mut history = Vec::new();
        let mut events: Vec<Option<ReplicaEvent>> = events.into_iter().map(Some).collect();
        for i in order {
            let Some(ReplicaEvent { pdu, kept }) = events.get_mut(i).and_then(Option::take) else {
                continue;
            };
            match kept {
                Kept::History => history.push(pdu),
                Kept::Outlier => match check_own_auth(version, &create, &pdu, &taken) {
                    Ok(()) => {
                        let mut stored = self.accepted(&pdu, None, None, Vec::new())?.pdu;
                        stored.outlier = true;
                        outliers.push(stored);
                        taken.insert(pdu.event_id.clone(), pdu);
                        outcome.accepted += 1;
                    }
                    Err(reason) => {
                        tracing::warn!(event_id = %pdu.event_id, %reason, "a restored outlier fails the auth rules; not taken");
                        outcome.rejected += 1;
                    }
                },
                Kept::Timeline(recorded) => {
                    if !outliers.is_empty() {
                        self.inner
                            .store
                            .append_pdus(std::mem::take(&mut outliers))
                            .await?;
                    }
                    let recorded = match recorded.map(|ids| state_of(&ids, &taken)) {
                        Some(None) => {
                            tracing::warn!(event_id = %pdu.event_id, "the state before a restored event is not all here; left out");
                            outcome.left_out += 1;
                            continue;
                        }
                        Some(Some(state)) => Some(state),
                        None => None,
                    };
                    if !entry
                        .state
                        .contains_key(&(StateEventType::RoomCreate, String::new()))
                        && let Some(state) = &recorded
                    {
                        // A room joined through another server starts from the state it was
                        // joined with, as `join_through` does; a room made here starts with its
                        // create event.
                        entry.state = state.clone();
                        entry.state_changed(&self.inner.server_name);
                    }
                    let source = Source::Replica {
                        state_before: recorded.as_ref(),
                    };
                    let event_id = pdu.event_id.clone();
                    match self.process(&mut entry, &source, pdu.clone()).await {
                        Ok(Received::Accepted | Received::Duplicate) => {
                            taken.insert(event_id, pdu);
                            outcome.accepted += 1;
                        }
                        Ok(Received::SoftFailed(reason) | Received::Rejected(reason)) => {
                            tracing::warn!(%event_id, %reason, "a restored event fails the auth rules; not taken");
                            outcome.rejected += 1;
                        }
                        // Not reached (a restore asks nobody, and an event missing what it
                        // needs is rejected), but never taken either.
                        Ok(Received::SetAside(reason)) => {
                            tracing::warn!(%event_id, %reason, "a restored event was left out");
                            outcome.left_out += 1;
                        }
                        Err(e) => {
                            tracing::warn!(%event_id, error = %e, "a restored event was left out");
                            outcome.left_out += 1;
                        }
                    }
                }
            }
        }
        if !outliers.is_empty() {
            self.inner.store.append_pdus(outliers).await?;
        }
        // History: checked against its own auth events as `backfill` does, and stored before
        // the rest of the timeline, newest first.
        history.sort_by_key(|p| (p.depth, p.origin_server_ts));
        let mut older = Vec::new();
        for pdu in history {
            match check_own_auth(version, &create, &pdu, &taken) {
                Ok(()) => {
                    older.push(self.accepted(&pdu, None, None, Vec::new())?.pdu);
                    taken.insert(pdu.event_id.clone(), pdu);
                    outcome.accepted += 1;
                }
                Err(reason) => {
                    tracing::warn!(event_id = %pdu.event_id, %reason, "restored history fails the auth rules; not taken");
                    outcome.rejected += 1;
                }
            }
        }
        older.reverse();
        self.inner.store.append_backfilled(older).await?;
        // Read afresh from the store when next needed.
        guard.take();
        Ok(outcome)
    }

    /// Brings a room restored from the backup up to date from a server of its members, so that
    /// the next message's room key goes to the members the room has now, not those the backup
    /// last saw: that server is asked for a join template for a local member, whose prev
    /// events are its latest events, and those are taken as if it had just sent them (the gap
    /// before them filled with `get_missing_events`, the state before them asked with
    /// `state_ids` when it cannot be, all authorised). Servers this node is connected to are
    /// asked first. `Ok(true)` at once for a room that was not restored or has no other
    /// member's server; `Ok(false)` while none answers: the room stays to confirm.
    pub(crate) async fn confirm_restored(&self, room_id: &RoomId) -> Result<bool, RoomError> {
        let store = &self.inner.store;
        if !store.room_to_confirm(room_id.to_string()).await? {
            return Ok(true);
        }
        let own = &self.inner.server_name;
        let state = self.state(room_id).await?;
        let local = state.iter().find_map(|((kind, key), pdu)| {
            let user = UserId::parse(key.as_str()).ok()?;
            (*kind == StateEventType::RoomMember
                && user.server_name() == own
                && super::membership_of(&pdu.content).as_deref() == Some("join"))
            .then_some(user)
        });
        let mut servers = joined_servers(&state, own);
        let Some(local) = local.filter(|_| !servers.is_empty()) else {
            store.room_confirmed(room_id.to_string()).await?;
            return Ok(true);
        };
        let connected = self.inner.federation.connected_servers().await;
        servers.sort_by_key(|s| !connected.contains(s));
        for server in servers.iter().take(CONFIRM_SERVERS) {
            let Ok(server) = ruma::OwnedServerName::try_from(server.as_str()) else {
                continue;
            };
            let latest = self.take_latest_from(room_id, &local, &server);
            match tokio::time::timeout(CONFIRM_BUDGET, latest).await {
                Ok(Ok(())) => {
                    store.room_confirmed(room_id.to_string()).await?;
                    tracing::info!(%room_id, %server, "a restored room brought up to date");
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    tracing::info!(%room_id, %server, error = %e, "could not bring a restored room up to date")
                }
                Err(_) => {
                    tracing::info!(%room_id, %server, "no answer in time to bring a restored room up to date")
                }
            }
        }
        Ok(false)
    }

    /// Takes `server`'s latest events of the room (the prev events of a join template it makes
    /// for `local`), as if it had sent them.
    async fn take_latest_from(
        &self,
        room_id: &RoomId,
        local: &UserId,
        server: &ServerName,
    ) -> Result<(), RoomError> {
        let versions: String = ROOM_VERSIONS.iter().map(|v| format!("&ver={v}")).collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            urlencode(room_id.as_str()),
            urlencode(local.as_str()),
            &versions[1..]
        );
        let template: serde_json::Value = self
            .inner
            .federation
            .request(server, Method::GET, &path, None)
            .await
            .map_err(|e| RoomError::Unreachable(e.to_string()))?;
        let latest: Vec<&str> = template["event"]["prev_events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .take(super::MAX_PREV_EVENTS)
            .collect();
        if latest.is_empty() {
            return Err(RoomError::Unreachable(format!(
                "{server} named no latest events"
            )));
        }
        for id in latest {
            let path = format!("/_matrix/federation/v1/event/{}", urlencode(id));
            let answer: EventResponse = self
                .inner
                .federation
                .request(server, Method::GET, &path, None)
                .await
                .map_err(|e| RoomError::Unreachable(e.to_string()))?;
            let Some(raw) = answer.pdus.first() else {
                return Err(RoomError::Unreachable(format!(
                    "{server} did not send {id}"
                )));
            };
            self.receive_pdu(server, raw).await?;
        }
        Ok(())
    }
}

/// The order to apply a room's events in: each after the events it cites that are here (prev
/// events, auth events, the recorded state before it) and after the create event; among those
/// ready, the lowest depth first, then the replica's order.
fn citing_order(events: &[ReplicaEvent], create: &OwnedEventId) -> Vec<usize> {
    let index: HashMap<&OwnedEventId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (&e.pdu.event_id, i))
        .collect();
    let mut waiting_on = vec![0usize; events.len()];
    let mut cited_by: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    for (i, event) in events.iter().enumerate() {
        let pdu = &event.pdu;
        let recorded = match &event.kept {
            Kept::Timeline(Some(ids)) => ids.as_slice(),
            _ => &[],
        };
        let cited: HashSet<usize> = pdu
            .prev_events
            .iter()
            .chain(&pdu.auth_events)
            .chain(recorded)
            .chain(std::iter::once(create))
            .filter_map(|id| index.get(id).copied())
            .filter(|j| *j != i)
            .collect();
        waiting_on[i] = cited.len();
        for j in cited {
            cited_by[j].push(i);
        }
    }
    let depth = |i: usize| u64::from(events[i].pdu.depth);
    let mut ready: BinaryHeap<Reverse<(u64, usize)>> = (0..events.len())
        .filter(|i| waiting_on[*i] == 0)
        .map(|i| Reverse((depth(i), i)))
        .collect();
    let mut order = Vec::with_capacity(events.len());
    let mut placed = vec![false; events.len()];
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &j in &cited_by[i] {
            waiting_on[j] -= 1;
            if waiting_on[j] == 0 {
                ready.push(Reverse((depth(j), j)));
            }
        }
    }
    // Event ids are hashes, so events cannot cite each other in a ring; a recorded state could
    // name a later event, though. Whatever is left goes last, by depth.
    let mut rest: Vec<usize> = (0..events.len()).filter(|i| !placed[*i]).collect();
    rest.sort_by_key(|i| (depth(*i), *i));
    order.extend(rest);
    order
}

/// The recorded state before an event, from what this restore took; `None` if some of it was
/// not taken (left out by the backup server, or refused here).
fn state_of(ids: &[OwnedEventId], taken: &HashMap<OwnedEventId, Pdu>) -> Option<RoomState> {
    let mut state = RoomState::new();
    for id in ids {
        let pdu = taken.get(id)?;
        let key = pdu.state_key.clone()?;
        state.insert((pdu.kind.to_string().into(), key), pdu.clone());
    }
    Some(state)
}

/// The auth rules against the event's own auth events, all of which must have been taken.
fn check_own_auth(
    version: &RoomVersionId,
    create: &Pdu,
    pdu: &Pdu,
    taken: &HashMap<OwnedEventId, Pdu>,
) -> Result<(), String> {
    let mut auth = HashMap::from([(create.event_id.clone(), create.clone())]);
    for id in &pdu.auth_events {
        match taken.get(id) {
            Some(event) => {
                auth.insert(id.clone(), event.clone());
            }
            None if *id == create.event_id => {}
            None => return Err(format!("auth event {id} is not here")),
        }
    }
    check_auth(version, pdu, &auth, None)
}
