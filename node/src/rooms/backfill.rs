//! History older than this node's copy of a room (a server that joined late has the state and
//! what came after its join): fetched with `backfill` from the room's other servers and stored
//! before the rest of the timeline. Only the history asked for is taken: events reachable
//! through prev_events from the events asked for (a member cannot slip in a fork it made up),
//! each checked against its own auth events and, where this node can tell it (the batch reaches
//! back to events whose state is kept here, or to the create event), the state before it.

use std::collections::{HashMap, HashSet};

use axum::http::Method;
use hyphae_store::AcceptedPdu;
use ruma::{OwnedEventId, RoomId};
use serde_json::value::RawValue;

use super::incoming::{check_auth, urlencode, verify_pdu, with_create};
use super::{Pdu, RoomError, RoomState, Rooms};

/// Events asked for per backfill request.
const BACKFILL_LIMIT: usize = 50;

#[derive(serde::Deserialize)]
struct Backfill {
    #[serde(default)]
    pdus: Vec<Box<RawValue>>,
}

impl Rooms {
    /// Fetches history before the oldest events this node holds of the room; returns how many
    /// events were added (0 when the history here is whole or nobody could help).
    pub(crate) async fn backfill(&self, room_id: &RoomId) -> Result<usize, RoomError> {
        let frontier = self
            .inner
            .store
            .backfill_frontier(room_id.to_string(), 20)
            .await?;
        if frontier.is_empty() {
            return Ok(0);
        }
        let version = self.version(room_id).await?;
        let state = self.state(room_id).await?;
        let query: String = frontier
            .iter()
            .map(|id| format!("&v={}", urlencode(id)))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/backfill/{}?limit={BACKFILL_LIMIT}{query}",
            urlencode(room_id.as_str())
        );
        // Servers this node is connected to first: asking one that cannot be reached costs a
        // connection timeout while the user waits.
        let connected = self.inner.federation.connected_servers().await;
        let mut servers = super::joined_servers(&state, &self.inner.server_name);
        servers.sort_by_key(|s| !connected.contains(s));
        for server in servers {
            let Ok(server) = ruma::OwnedServerName::try_from(server) else {
                continue;
            };
            let answer: Backfill = match self
                .inner
                .federation
                .request(&server, Method::GET, &path, None)
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "backfill from a server failed");
                    continue;
                }
            };
            let events: Vec<Pdu> = answer
                .pdus
                .iter()
                .filter_map(|raw| {
                    let json = serde_json::from_str(raw.get()).ok()?;
                    verify_pdu(&version, json).ok()
                })
                .filter(|pdu| pdu.room_id().as_deref() == Some(room_id))
                .collect();
            let (mut events, strays) = ancestors_of(&frontier, events);
            if strays > 0 {
                tracing::warn!(%room_id, %server, strays, "a backfill answer held events that are not history asked for; left out");
            }
            // Checked oldest first, so each event's auth events are judged before it.
            events.sort_by_key(|p| (p.depth, p.origin_server_ts));
            let mut known: HashMap<OwnedEventId, Pdu> = with_create(&state);
            // The state after each event of the batch, where it can be told.
            let mut states_after: HashMap<OwnedEventId, RoomState> = HashMap::new();
            let mut accepted = Vec::new();
            // Kept as rejected outliers: never shown, but settled, so the frontier moves past
            // them (left out, they would stay in it, and be asked for again on every page).
            let mut rejected = Vec::new();
            for pdu in events {
                if let Some(reason) = self.backfill_refusal(room_id, &pdu) {
                    tracing::warn!(%room_id, %server, event_id = %pdu.event_id, %reason, "refusing a backfilled event");
                    rejected.push(self.rejected_outlier(&pdu, reason)?);
                    continue;
                }
                let mut auth = known.clone();
                let mut auth_missing = false;
                for id in &pdu.auth_events {
                    if auth.contains_key(id) {
                        continue;
                    }
                    match self.inner.store.pdu(id.to_string()).await? {
                        Some(stored) => {
                            if stored.rejection_reason.is_none()
                                && let Ok(event) = Pdu::from_stored(&stored)
                            {
                                auth.insert(id.clone(), event);
                            }
                        }
                        None => auth_missing = true,
                    }
                }
                let state_before = self
                    .state_before_backfilled(&version, &pdu, &states_after)
                    .await?;
                let verdict =
                    check_auth(&version, &pdu, &auth, None).and_then(|()| match &state_before {
                        Some(state) => check_auth(&version, &pdu, &auth, Some(state)),
                        None => Ok(()),
                    });
                match verdict {
                    Ok(()) => {
                        if let Some(mut state) = state_before {
                            if let Some(key) = &pdu.state_key {
                                state.insert(
                                    (pdu.kind.to_string().into(), key.clone()),
                                    pdu.clone(),
                                );
                            }
                            states_after.insert(pdu.event_id.clone(), state);
                        }
                        if pdu.state_key.is_some() {
                            known.insert(pdu.event_id.clone(), pdu.clone());
                        }
                        accepted.push(self.accepted(&pdu, None, None, Vec::new())?.pdu);
                    }
                    // Judged on all its auth events: it fails for good.
                    Err(reason) if !auth_missing => {
                        tracing::info!(%room_id, %server, event_id = %pdu.event_id, %reason, "backfilled event fails auth");
                        rejected.push(self.rejected_outlier(&pdu, reason)?);
                    }
                    // Some auth event is not here: it may pass once it is, so nothing is kept.
                    Err(reason) => {
                        tracing::info!(%room_id, %server, event_id = %pdu.event_id, %reason, "backfilled event fails auth without all its auth events");
                    }
                }
            }
            if !rejected.is_empty() {
                self.inner.store.append_accepted(rejected).await?;
            }
            // Stored newest first: each goes before the ones already there.
            accepted.reverse();
            let added = self.inner.store.append_backfilled(accepted).await?;
            return Ok(added);
        }
        Ok(0)
    }

    /// The state before a backfilled event when this node can tell it: from the state after
    /// each of its prev events, taken earlier in the batch (`states_after`) or kept here with
    /// them, resolved when there are several; empty before the create event. `None` when the
    /// state at some prev event is not known here.
    async fn state_before_backfilled(
        &self,
        version: &ruma::RoomVersionId,
        pdu: &Pdu,
        states_after: &HashMap<OwnedEventId, RoomState>,
    ) -> Result<Option<RoomState>, RoomError> {
        let mut states = Vec::with_capacity(pdu.prev_events.len());
        for prev in &pdu.prev_events {
            if let Some(state) = states_after.get(prev) {
                states.push(state.clone());
                continue;
            }
            let Some(stored) = self.inner.store.pdu(prev.to_string()).await? else {
                return Ok(None);
            };
            let Some(snapshot) = self.inner.store.state_at(prev.to_string()).await? else {
                return Ok(None);
            };
            let prev_pdu =
                Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            let mut state = self.load_state(&snapshot).await?;
            if let Some(key) = &prev_pdu.state_key
                && !prev_pdu.rejected
            {
                state.insert((prev_pdu.kind.to_string().into(), key.clone()), prev_pdu);
            }
            states.push(state);
        }
        match states.len() {
            // Only the create event has no prev events, and nothing comes before it.
            0 => Ok(Some(RoomState::new())),
            1 => Ok(states.pop()),
            _ => {
                let room_id = pdu
                    .room_id()
                    .ok_or_else(|| RoomError::Internal("no room".into()))?;
                Ok(Some(self.resolve(&room_id, version, states).await?))
            }
        }
    }

    /// Why the node's policy refuses a backfilled event, as the live path does (see
    /// `policy_refusal`): only non-state events, and none in the node's own lists.
    fn backfill_refusal(&self, room_id: &RoomId, pdu: &Pdu) -> Option<String> {
        if pdu.state_key.is_some() {
            return None;
        }
        let (_, reason) = self.inner.policy.node_ban_in(room_id, &pdu.sender)?;
        Some(reason)
    }

    /// A backfilled event kept as rejected: out of the timeline, with no state (history is
    /// stored without it).
    fn rejected_outlier(&self, pdu: &Pdu, reason: String) -> Result<AcceptedPdu, RoomError> {
        let mut rejected = self.accepted(pdu, None, None, Vec::new())?;
        rejected.pdu.rejection_reason = Some(reason);
        rejected.pdu.outlier = true;
        rejected.prev_may_be_missing = true;
        Ok(rejected)
    }
}

/// The events of a backfill answer that are history asked for: `asked` and what is reachable
/// from them through prev_events within the answer. Returns them, and how many were not.
fn ancestors_of(asked: &[String], events: Vec<Pdu>) -> (Vec<Pdu>, usize) {
    let by_id: HashMap<&str, &Pdu> = events.iter().map(|p| (p.event_id.as_str(), p)).collect();
    let mut reached: HashSet<&str> = HashSet::new();
    let mut waiting: Vec<&str> = asked.iter().map(String::as_str).collect();
    while let Some(id) = waiting.pop() {
        if let Some(pdu) = by_id.get(id)
            && reached.insert(pdu.event_id.as_str())
        {
            waiting.extend(pdu.prev_events.iter().map(|p| p.as_str()));
        }
    }
    let reached: HashSet<OwnedEventId> = reached
        .into_iter()
        .filter_map(|id| by_id.get(id).map(|p| p.event_id.clone()))
        .collect();
    let total = events.len();
    let kept: Vec<Pdu> = events
        .into_iter()
        .filter(|p| reached.contains(&p.event_id))
        .collect();
    let strays = total - kept.len();
    (kept, strays)
}
