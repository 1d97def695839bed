//! Events from other servers: checked (hashes; signatures with the key read off each server's
//! name; the auth rules against the event's auth events, the state before it and the current
//! state), gaps behind them filled from the sending server, then applied, resolving the room
//! state with state resolution v2 where branches of the room meet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::http::Method;
use hyphae_store::{ResolvedState, StateSnapshot};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::state_res;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId,
    ServerName,
};
use serde_json::value::RawValue;

use super::auth_fetch::{AuthEvent, AuthSources};
use super::{Pdu, RoomEntry, RoomError, RoomState, Rooms, membership_of, rules, snapshot_of};
use crate::signing::KEY_ID;

/// get_missing_events rounds for one incoming event before the rest counts as a gap.
const MISSING_ROUNDS: usize = 10;
/// Events asked for per get_missing_events round.
const MISSING_LIMIT: usize = 100;
/// The longest one incoming event may hold its room while what it needs is fetched.
const PROCESS_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// Servers an accepted event from elsewhere is passed on to (see `forward_targets`).
const FORWARD_FANOUT: usize = 4;

/// Where an event being applied comes from, which says whom to ask for what it needs.
pub(super) enum Source<'a> {
    /// Sent (or relayed) by `origin`, which is asked for what the event needs (the gap behind
    /// it too, with `fill_gaps`); an accepted event is passed on.
    Peer {
        origin: &'a ServerName,
        fill_gaps: bool,
    },
    /// This device's own backup replica, being restored (`restore.rs`): nobody is asked and
    /// nothing is passed on; every auth event must be here already, and the state before an
    /// event whose prev events are not is the one the device recorded (`None`: not known, the
    /// event is not taken).
    Replica { state_before: Option<&'a RoomState> },
}

/// What became of an incoming PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Received {
    Accepted,
    /// Already here.
    Duplicate,
    /// Allowed by the state before it but not by the room's current state: kept, not shown.
    SoftFailed(String),
    /// Failed the auth rules: kept as rejected, never shown or built on.
    Rejected(String),
    /// Some of its auth events (or of the state before it) could not be had from any server
    /// asked: nothing is kept of it but a copy set aside, tried again later (see
    /// `auth_fetch.rs`); a later delivery is taken as new.
    SetAside(String),
}

impl Rooms {
    /// Takes one PDU from `origin` (which may be relaying another server's event).
    pub(crate) async fn receive_pdu(
        &self,
        origin: &ServerName,
        raw: &RawValue,
    ) -> Result<(OwnedEventId, Received), RoomError> {
        // Parsed, a PDU takes many times its size: one over the spec's cap is not parsed at all,
        // whoever sent it (a transaction, a join, an answer to a fetch).
        let max = crate::federation::limits::MAX_PDU_BYTES;
        if raw.get().len() > max {
            return Err(RoomError::BadRequest(format!(
                "a PDU of {} bytes; at most {max}",
                raw.get().len()
            )));
        }
        let json: CanonicalJsonObject = serde_json::from_str(raw.get())
            .map_err(|e| RoomError::BadRequest(format!("PDU is not canonical JSON: {e}")))?;
        let room_id = match json.get("room_id") {
            Some(CanonicalJsonValue::String(s)) => {
                RoomId::parse(s).map_err(|e| RoomError::BadRequest(format!("room_id: {e}")))?
            }
            _ => return Err(RoomError::BadRequest("PDU without a room_id".into())),
        };
        let Some(slot) = self.slot(&room_id).await? else {
            return Err(RoomError::NotFound(format!(
                "This server is not in {room_id}"
            )));
        };
        let version = self.version(&room_id).await?;
        let pdu = verify_pdu(&version, json)?;
        if pdu.room_id().as_deref() != Some(&*room_id) {
            return Err(RoomError::BadRequest("PDU for another room".into()));
        }
        let event_id = pdu.event_id.clone();
        if self.settled(&event_id).await? {
            return Ok((event_id, Received::Duplicate));
        }
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_entry(&room_id).await?);
        }
        let Some(entry) = guard.as_mut() else {
            return Err(RoomError::Internal("room cache vanished".into()));
        };
        if !entry
            .state
            .contains_key(&(StateEventType::RoomCreate, String::new()))
        {
            return Err(RoomError::NotFound(format!(
                "This server has no state for {room_id} yet"
            )));
        }
        self.admit(entry, origin, &pdu)?;
        // The room stays locked while missing events are asked for; a member server that
        // answers slowly must not keep the room's own users from sending for long. What is
        // applied so far stays (each step is its own commit); the rest is asked for again when
        // a later event names it.
        let from = Source::Peer {
            origin,
            fill_gaps: true,
        };
        let result = match tokio::time::timeout(PROCESS_BUDGET, self.process(entry, &from, pdu))
            .await
        {
            Ok(result) => result,
            Err(_) => {
                // Not the event's fault: it is tried again later.
                self.set_aside(&entry.room_id, &event_id, raw.to_owned());
                Err(RoomError::Unreachable(format!(
                    "{origin} took longer than {PROCESS_BUDGET:?} to supply what the event needs"
                )))
            }
        };
        if result.is_err() {
            // The cache may be ahead of or behind the store now.
            guard.take();
        }
        Ok((event_id, result?))
    }

    /// Checks and applies one PDU to a room whose lock the caller holds. With `fill_gaps`, missing
    /// prev events are first fetched from `origin` and applied, oldest first.
    pub(super) async fn process(
        &self,
        entry: &mut RoomEntry,
        source: &Source<'_>,
        pdu: Pdu,
    ) -> Result<Received, RoomError> {
        let (origin, fill_gaps) = match source {
            Source::Peer { origin, fill_gaps } => (*origin, *fill_gaps),
            // Never asked: a server is asked only about rooms it has members in (`may_ask`),
            // and this one is left out of those.
            Source::Replica { .. } => (&*self.inner.server_name, false),
        };
        if self.settled(&pdu.event_id).await? {
            return Ok(Received::Duplicate);
        }
        // A prev event of another room would make that room's state the state "before" this
        // event, and resolving it against this room's state would swap in the other room's
        // (a hostile server could bring the state of a room where it holds all power). Checked
        // before anything is stored of the event, a refusal by policy included: what is kept
        // with it (the state before it) is what later events built on it start from.
        let prev_ids = pdu.prev_events.iter().map(ToString::to_string).collect();
        let prevs = self.inner.store.pdus(prev_ids).await?;
        if let Some(prev) = prevs
            .iter()
            .find(|prev| prev.room_id != entry.room_id.as_str())
        {
            return Err(RoomError::Forbidden(format!(
                "prev event {} is in another room",
                prev.event_id
            )));
        }
        let mut missing = missing_among(&pdu.prev_events, &prevs);
        if let Some(refusal) = self.policy_refusal(entry, &pdu) {
            let prevs_known = missing.is_empty();
            return self
                .refuse_by_policy(entry, origin, pdu, refusal, prevs_known)
                .await;
        }
        if !missing.is_empty() && fill_gaps {
            self.fill_gap(entry, origin, &pdu).await;
            missing = self.unknown(&pdu.prev_events).await?;
        }

        // A restore asks nobody: every auth event must be here already.
        let mut sources = match source {
            Source::Peer { .. } => self.auth_sources(entry, origin, &pdu).await,
            Source::Replica { .. } => AuthSources::none(origin),
        };
        let (auth_events, missing_auth) = self.auth_events_of(entry, &mut sources, &pdu).await?;
        if let Source::Replica { .. } = source
            && let Some(absent) = pdu
                .auth_events
                .iter()
                .find(|id| !auth_events.contains_key(*id))
        {
            // Its backup server left it out, or it was not accepted: judged without it, the
            // event could pass on defaults.
            let reason = format!("auth event {absent} is not here");
            return self.reject(entry, origin, pdu, reason).await;
        }
        if let Err(reason) = check_auth(&entry.version, &pdu, &auth_events, None) {
            if !missing_auth.is_empty() {
                let reason = format!("{reason} (auth events not to be had: {missing_auth:?})");
                return self.set_aside_pdu(entry, &pdu, reason);
            }
            return self.reject(entry, origin, pdu, reason).await;
        }

        let state_before = if missing.is_empty() {
            self.state_from_prev_events(entry, &pdu).await?
        } else {
            None
        };
        let state_before = match (state_before, source) {
            (Some(state), _) => state,
            (None, Source::Peer { .. }) => match self
                .fetch_state_before(entry, origin, &mut sources, &pdu)
                .await?
            {
                Some(state) => state,
                None => {
                    let reason = "some of the state before it could not be had".to_owned();
                    return self.set_aside_pdu(entry, &pdu, reason);
                }
            },
            (None, Source::Replica { state_before }) => match state_before {
                Some(recorded) => (*recorded).clone(),
                None => {
                    return Err(RoomError::NotFound(format!(
                        "the state before {} is not known here",
                        pdu.event_id
                    )));
                }
            },
        };
        if let Err(reason) = check_auth(&entry.version, &pdu, &auth_events, Some(&state_before)) {
            return self.reject(entry, origin, pdu, reason).await;
        }
        if let Err(reason) = check_auth(&entry.version, &pdu, &auth_events, Some(&entry.state)) {
            tracing::info!(event_id = %pdu.event_id, %reason, "soft-failing an event");
            if self.keep_refused(entry, origin) {
                let mut accepted = self.accepted(&pdu, None, None, Vec::new())?;
                // Kept, marked, and treated like a rejected event here: out of the timeline,
                // never a prev event, never shown to a client, not asked about again.
                accepted.pdu.rejection_reason = Some(format!("soft-failed: {reason}"));
                accepted.prev_may_be_missing = true;
                self.inner.store.append_accepted(vec![accepted]).await?;
            }
            return Ok(Received::SoftFailed(reason));
        }

        let mut state_after = state_before.clone();
        if let Some(key) = &pdu.state_key {
            state_after.insert((pdu.kind.to_string().into(), key.clone()), pdu.clone());
        }
        // An event on top of everything this server has makes the state after it current; one
        // on another branch is resolved against the current state.
        let extends_all = entry
            .extremities
            .iter()
            .all(|e| pdu.prev_events.iter().any(|p| p.as_str() == e));
        let new_state = if extends_all {
            state_after
        } else {
            self.resolve(
                &entry.room_id,
                &entry.version,
                vec![entry.state.clone(), state_after],
            )
            .await?
        };

        let room_id = entry.room_id.clone();
        let mut memberships = Vec::new();
        for (key, event) in &new_state {
            if key.0 == StateEventType::RoomMember
                && entry.state.get(key).map(|e| &e.event_id) != Some(&event.event_id)
                && let Some(membership) = membership_of(&event.content)
            {
                memberships.push((key.1.clone(), membership, event.event_id.to_string()));
            }
        }
        // A state event of a sender the node's lists ban is taken (see `policy_refusal`), but
        // this node does not spread it: the banned sender's own server does.
        let forward_to = if let Source::Replica { .. } = source {
            // Restored from the backup: the others have it.
            Vec::new()
        } else if self.banned_by_node(entry, &pdu) {
            tracing::info!(event_id = %pdu.event_id, sender = %pdu.sender, "a state event of a banned sender: taken for the room's state, not shown or passed on");
            Vec::new()
        } else {
            self.forward_targets(&new_state, origin, &pdu).await
        };
        let mut accepted = self.accepted(
            &pdu,
            None,
            Some(Arc::new(snapshot_of(&room_id, &state_before))),
            forward_to.clone(),
        )?;
        let after = Arc::new(snapshot_of(&room_id, &new_state));
        accepted.state_after = Some(after.clone());
        accepted.resolved_state = Some(ResolvedState {
            snapshot: after,
            memberships,
        });
        accepted.prev_may_be_missing = !missing.is_empty();
        self.inner.store.append_accepted(vec![accepted]).await?;
        self.wake(&forward_to);
        if pdu.state_key.is_some() || !extends_all {
            self.inner.policy.state_changed(&room_id);
        }

        entry.state = new_state;
        entry.state_changed(&self.inner.server_name);
        entry
            .extremities
            .retain(|e| !pdu.prev_events.iter().any(|p| p.as_str() == e));
        entry.extremities.push(pdu.event_id.to_string());
        entry.depth = entry
            .depth
            .max(i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX));
        if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) = &pdu.redacts
            && let Some(target) = self.event(target).await?
            && target.room_id() == pdu.room_id()
            && (target.sender.server_name() == pdu.sender.server_name()
                || super::has_power(entry, &pdu.sender, "redact", 50))
        {
            self.apply_redaction(&entry.version, target, &pdu).await?;
        }
        Ok(Received::Accepted)
    }

    /// Where an accepted event is passed on. The origin may not reach every server of the
    /// room (a mesh at an offline event, where A reaches C only through B), and a join through
    /// this server must reach the rest of the room; but if every server passed every event to
    /// every other, a room of n servers would cost n² requests per message. So each server
    /// passes it to a few others, those it is connected to first (the ones it can surely
    /// reach), chosen at random otherwise: the event spreads like gossip, repeats are answered
    /// cheaply, and a server that still misses one fetches it when a later event names it.
    /// Membership changes go to every server (up to the node's cap on destinations), so
    /// everyone knows who is in the room.
    async fn forward_targets(
        &self,
        state: &RoomState,
        origin: &ServerName,
        pdu: &Pdu,
    ) -> Vec<String> {
        let candidates: Vec<String> = super::joined_servers(state, &self.inner.server_name)
            .into_iter()
            .filter(|s| s != origin.as_str() && s != pdu.sender.server_name().as_str())
            .collect();
        let fanout = if pdu.kind == TimelineEventType::RoomMember {
            self.inner.limits.config.max_destinations
        } else {
            FORWARD_FANOUT
        };
        self.pick_destinations(candidates, None, fanout).await
    }

    /// Whether `origin` may send `pdu` into the room now: a server with a member joined, or one
    /// sending its own user's membership (a join through send_join, a leave); a membership
    /// change only within the pace allowed for its sender's server. What is refused here is
    /// not stored: a server that only knows a room's id cannot fill the disk (nor the backup
    /// quota everything stored is replicated to) with the room's events.
    fn admit(&self, entry: &RoomEntry, origin: &ServerName, pdu: &Pdu) -> Result<(), RoomError> {
        let own_membership = pdu.kind == TimelineEventType::RoomMember
            && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
            && pdu.sender.server_name() == origin;
        if !may_ask(entry, origin) && !own_membership {
            return Err(RoomError::Forbidden(format!(
                "{origin} has no member in {}; its events are not taken",
                entry.room_id
            )));
        }
        if pdu.kind == TimelineEventType::RoomMember {
            let server = pdu.sender.server_name();
            self.inner
                .limits
                .membership_change(&entry.room_id, server)
                .map_err(|wait| {
                    RoomError::LimitExceeded(
                        format!(
                            "{server} changes memberships in {} faster than this server takes",
                            entry.room_id
                        ),
                        wait,
                    )
                })?;
        }
        Ok(())
    }

    /// Whether one more refused event (rejected, soft-failed, or an auth event fetched as an
    /// outlier) from `origin` may be kept; past the budget it is answered and forgotten.
    pub(super) fn keep_refused(&self, entry: &RoomEntry, origin: &ServerName) -> bool {
        let keep = self.inner.limits.keep_refusal(origin, &entry.room_id);
        if !keep {
            tracing::info!(%origin, room_id = %entry.room_id, "over the budget of refused events kept; this one is not");
        }
        keep
    }

    /// Whether the event is here already, in the timeline or rejected (an outlier may still
    /// take its place in the timeline).
    async fn settled(&self, event_id: &EventId) -> Result<bool, RoomError> {
        Ok(self
            .inner
            .store
            .pdu(event_id.to_string())
            .await?
            .is_some_and(|p| p.stream_pos.is_some() || p.rejection_reason.is_some()))
    }

    /// The node-level policy rule that bans the PDU's sender or the sender's server, if any,
    /// for an event the node refuses: a non-state event (a message, a reaction, a redaction).
    /// A banned sender's state events (their invite of someone, a power level change they were
    /// allowed to make) are the room's state on every other server: refusing them here would
    /// reject the honest events that cite them as auth events (the invitee's join, then all
    /// the invitee says), and this node's copy of the room would drift from everyone else's.
    /// They go through the auth rules and state resolution like any event; the app does not
    /// show them and the node does not pass them on (see `banned_by_node`).
    /// A list the node subscribes to is exempt: refusing its events would cut the node off
    /// from the very rules it follows (a list may ban a server that also writes to it).
    fn policy_refusal(&self, entry: &RoomEntry, pdu: &Pdu) -> Option<String> {
        if pdu.state_key.is_some() {
            return None;
        }
        let (list, reason) = self.inner.policy.node_ban_in(&entry.room_id, &pdu.sender)?;
        tracing::warn!(
            event_id = %pdu.event_id,
            room_id = %entry.room_id,
            sender = %pdu.sender,
            %list,
            %reason,
            "refusing an event at the federation edge"
        );
        Some(reason)
    }

    /// Whether the node's lists ban the sender of a state event taken into a room that is not
    /// one of the node's lists (a banned sender's other events never get this far).
    fn banned_by_node(&self, entry: &RoomEntry, pdu: &Pdu) -> bool {
        pdu.state_key.is_some()
            && self
                .inner
                .policy
                .node_ban_in(&entry.room_id, &pdu.sender)
                .is_some()
    }

    /// Keeps a PDU the node's policy refuses as rejected: the room's history stays whole (a
    /// later event built on it still finds it, and the state before it), but it is never
    /// shown, built on, served or passed on. Only non-state events are refused, so the state
    /// after it is the state before it; its prev events are known to be in this room (the
    /// caller checked), so that state is this room's.
    async fn refuse_by_policy(
        &self,
        entry: &RoomEntry,
        origin: &ServerName,
        pdu: Pdu,
        reason: String,
        prevs_known: bool,
    ) -> Result<Received, RoomError> {
        if !self.keep_refused(entry, origin) {
            return Ok(Received::Rejected(reason));
        }
        // The state before it, when it can be had without asking anyone: what its children
        // need to be checked without a round trip.
        let state_before = if prevs_known {
            self.state_from_prev_events(entry, &pdu)
                .await
                .ok()
                .flatten()
                .map(|state| Arc::new(snapshot_of(&entry.room_id, &state)))
        } else {
            None
        };
        let mut accepted = self.accepted(&pdu, None, state_before, Vec::new())?;
        accepted.pdu.rejection_reason = Some(reason.clone());
        accepted.prev_may_be_missing = true;
        self.inner.store.append_accepted(vec![accepted]).await?;
        Ok(Received::Rejected(reason))
    }

    /// Sets the PDU aside (see `auth_fetch.rs`): nothing of it is stored.
    fn set_aside_pdu(
        &self,
        entry: &RoomEntry,
        pdu: &Pdu,
        reason: String,
    ) -> Result<Received, RoomError> {
        let raw = serde_json::value::to_raw_value(&pdu.json)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        tracing::info!(event_id = %pdu.event_id, room_id = %entry.room_id, %reason, "an event waits for what it needs");
        self.set_aside(&entry.room_id, &pdu.event_id, raw);
        Ok(Received::SetAside(reason))
    }

    async fn reject(
        &self,
        entry: &RoomEntry,
        origin: &ServerName,
        pdu: Pdu,
        reason: String,
    ) -> Result<Received, RoomError> {
        tracing::info!(event_id = %pdu.event_id, room_id = %entry.room_id, %reason, "rejecting an event");
        if !self.keep_refused(entry, origin) {
            return Ok(Received::Rejected(reason));
        }
        let mut accepted = self.accepted(&pdu, None, None, Vec::new())?;
        accepted.pdu.rejection_reason = Some(reason.clone());
        accepted.prev_may_be_missing = true;
        self.inner.store.append_accepted(vec![accepted]).await?;
        Ok(Received::Rejected(reason))
    }

    /// The ids among `ids` this server does not hold.
    async fn unknown(&self, ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>, RoomError> {
        let known = self
            .inner
            .store
            .pdus(ids.iter().map(ToString::to_string).collect())
            .await?;
        Ok(missing_among(ids, &known))
    }

    /// Asks `origin` for the events between what this server has and `pdu`, and applies them
    /// oldest first. The whole gap is fetched before any of it is applied, each round asking
    /// for what is still missing behind the events fetched so far: an event takes its place in
    /// the timeline when it is applied, so a gap longer than one answer, applied an answer at a
    /// time (the newest part first), would show its older part after the newer. What cannot be
    /// fetched stays a gap; the event is still taken.
    async fn fill_gap(&self, entry: &mut RoomEntry, origin: &ServerName, pdu: &Pdu) {
        if !may_ask(entry, origin) {
            return;
        }
        let path = format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            urlencode(entry.room_id.as_str())
        );
        let mut fetched: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut latest = vec![pdu.event_id.clone()];
        for _ in 0..MISSING_ROUNDS {
            let body = serde_json::json!({
                "earliest_events": entry.extremities,
                "latest_events": latest,
                "limit": MISSING_LIMIT,
                "min_depth": 0,
            });
            let response: Result<MissingEvents, _> = self
                .inner
                .federation
                .request(origin, Method::POST, &path, Some(&body))
                .await;
            let events = match response {
                Ok(response) => response.events,
                Err(e) => {
                    tracing::info!(%origin, error = %e, "could not fetch missing events");
                    break;
                }
            };
            let before = fetched.len();
            for raw in events {
                let Ok(missing) = parse_and_verify(&entry.version, &raw) else {
                    continue;
                };
                if missing.room_id() == Some(entry.room_id.clone())
                    && missing.event_id != pdu.event_id
                {
                    fetched.insert(missing.event_id.clone(), missing);
                }
            }
            if fetched.len() == before {
                break;
            }
            // The prev events still missing, and the events that name them: next round's ask.
            let mut wanted: Vec<OwnedEventId> = std::iter::once(pdu)
                .chain(fetched.values())
                .flat_map(|event| event.prev_events.iter())
                .filter(|id| !fetched.contains_key(*id))
                .cloned()
                .collect();
            wanted.sort();
            wanted.dedup();
            let still_missing = match self.unknown(&wanted).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the store while filling a gap");
                    break;
                }
            };
            if still_missing.is_empty() {
                break;
            }
            latest = std::iter::once(pdu)
                .chain(fetched.values())
                .filter(|event| event.prev_events.iter().any(|p| still_missing.contains(p)))
                .map(|event| event.event_id.clone())
                .collect();
        }
        // Oldest first: an honest server's depth is more than each of its prev events'.
        let mut events: Vec<Pdu> = fetched.into_values().collect();
        events.sort_by(|x, y| {
            x.depth
                .cmp(&y.depth)
                .then_with(|| x.event_id.cmp(&y.event_id))
        });
        for missing in events {
            let from = Source::Peer {
                origin,
                fill_gaps: false,
            };
            if let Err(e) = Box::pin(self.process(entry, &from, missing)).await {
                tracing::info!(%origin, error = %e, "a fetched missing event failed");
            }
        }
    }

    /// The state before `pdu` from the state this server kept at its prev events (resolved
    /// when there are several); `None` when some prev event's state is not known here.
    async fn state_from_prev_events(
        &self,
        entry: &RoomEntry,
        pdu: &Pdu,
    ) -> Result<Option<RoomState>, RoomError> {
        // The usual case: the event was built on exactly what this server has, so the state
        // before it is the current state, already in memory.
        if pdu.prev_events.len() == entry.extremities.len()
            && pdu
                .prev_events
                .iter()
                .all(|p| entry.extremities.iter().any(|e| e == p.as_str()))
        {
            return Ok(Some(entry.state.clone()));
        }
        let mut states = Vec::new();
        for prev in &pdu.prev_events {
            let Some(stored) = self.inner.store.pdu(prev.to_string()).await? else {
                return Ok(None);
            };
            let prev_pdu =
                Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            let mut state = match self.inner.store.state_at(prev.to_string()).await? {
                Some(snapshot) => self.load_state(&snapshot).await?,
                // Events stored before states were kept per event: the current state is the
                // state after the only extremity.
                None if entry.extremities == [prev.to_string()] => {
                    states.push(entry.state.clone());
                    continue;
                }
                None => return Ok(None),
            };
            if let Some(key) = &prev_pdu.state_key
                && !prev_pdu.rejected
            {
                state.insert((prev_pdu.kind.to_string().into(), key.clone()), prev_pdu);
            }
            states.push(state);
        }
        match states.len() {
            0 => Ok(None),
            1 => Ok(states.pop()),
            _ => Ok(Some(
                self.resolve(&entry.room_id, &entry.version, states).await?,
            )),
        }
    }

    /// The state before `pdu` as `origin` says it is, for an event with a gap behind it: every
    /// event of it verified and checked against its own auth events (fetched from `sources`
    /// when not held here). `None` when some of it could not be had: judged on part of the
    /// state, the event could be rejected for good for what this node did not know.
    async fn fetch_state_before(
        &self,
        entry: &RoomEntry,
        origin: &ServerName,
        sources: &mut AuthSources,
        pdu: &Pdu,
    ) -> Result<Option<RoomState>, RoomError> {
        if !may_ask(entry, origin) {
            return Err(RoomError::Forbidden(format!(
                "the state before the event is unknown here, and {origin} is not in the room"
            )));
        }
        let path = format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            urlencode(entry.room_id.as_str()),
            urlencode(pdu.event_id.as_str())
        );
        let response: StateIds = match self
            .inner
            .federation
            .request(origin, Method::GET, &path, None)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(%origin, event_id = %pdu.event_id, error = %e, "could not fetch the state before an event");
                return Ok(None);
            }
        };
        sources.refill();
        let mut state = RoomState::new();
        for id in &response.pdu_ids {
            match self.auth_event(entry, sources, id).await? {
                AuthEvent::Found(event) => {
                    if let Some(key) = &event.state_key {
                        state.insert((event.kind.to_string().into(), key.clone()), *event);
                    }
                }
                AuthEvent::Rejected => {}
                AuthEvent::Missing => return Ok(None),
            }
        }
        Ok(Some(state))
    }

    /// The events of a stored snapshot.
    pub(super) async fn load_state(
        &self,
        snapshot: &StateSnapshot,
    ) -> Result<RoomState, RoomError> {
        let ids = snapshot
            .entries
            .iter()
            .map(|(_, _, id)| id.clone())
            .collect();
        let mut state = RoomState::new();
        for stored in self.inner.store.pdus(ids).await? {
            let pdu = Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            if let Some(key) = &pdu.state_key {
                state.insert((pdu.kind.to_string().into(), key.clone()), pdu);
            }
        }
        Ok(state)
    }
}

/// Whether `origin` may be asked for what an event it sent needs (the gap before it, its auth
/// events, the state before it): only a server with members in the room. All of that is asked
/// with the room locked, so a server not in the room that never answered would otherwise hold
/// the room up for everyone, local users sending included, with events it need not even be
/// allowed to send.
pub(super) fn may_ask(entry: &RoomEntry, origin: &ServerName) -> bool {
    entry.servers.iter().any(|server| server == origin.as_str())
}

/// A map of auth events holding the room's create event, which from room version 12 events
/// do not list but the auth rules still read.
pub(super) fn with_create(state: &RoomState) -> HashMap<OwnedEventId, Pdu> {
    state
        .get(&(StateEventType::RoomCreate, String::new()))
        .map(|create| (create.event_id.clone(), create.clone()))
        .into_iter()
        .collect()
}

/// The auth rules: state-independent ones against the event's own auth events, and the
/// state-dependent ones against `state` (the auth events themselves when `None`).
pub(crate) fn check_auth(
    version: &RoomVersionId,
    pdu: &Pdu,
    auth_events: &HashMap<OwnedEventId, Pdu>,
    state: Option<&RoomState>,
) -> Result<(), String> {
    let rules = rules(version).map_err(|e| e.to_string())?;
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
        auth_events.get(id).cloned()
    })?;
    match state {
        Some(state) => {
            state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
                state.get(&(kind.clone(), key.to_owned())).cloned()
            })
        }
        None => {
            let by_key: HashMap<(StateEventType, String), &Pdu> = auth_events
                .values()
                .filter_map(|p| {
                    p.state_key
                        .clone()
                        .map(|k| ((p.kind.to_string().into(), k), p))
                })
                .collect();
            state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
                by_key
                    .get(&(kind.clone(), key.to_owned()))
                    .map(|p| (*p).clone())
            })
        }
    }
}

pub(crate) fn parse_and_verify(version: &RoomVersionId, raw: &RawValue) -> Result<Pdu, RoomError> {
    let json: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|e| RoomError::BadRequest(format!("PDU is not canonical JSON: {e}")))?;
    verify_pdu(version, json)
}

/// Checks a PDU's format, its signatures (each server's key is its name) and its content hash;
/// a PDU whose content does not match its hash is redacted, as the spec says. Returns it with
/// its event id (the reference hash).
pub(crate) fn verify_pdu(
    version: &RoomVersionId,
    mut json: CanonicalJsonObject,
) -> Result<Pdu, RoomError> {
    let rules = rules(version)?;
    // Fields a sender must not set on the wire.
    json.remove("unsigned");
    json.remove("event_id");
    state_res::check_pdu_format(&json, &rules.event_format).map_err(RoomError::BadRequest)?;
    let keys = public_keys(&json);
    match ruma::signatures::verify_event(&keys, &json, &rules) {
        Ok(Verified::All) => {}
        Ok(Verified::Signatures) => {
            json = ruma::canonical_json::redact(json, &rules.redaction, None)
                .map_err(|e| RoomError::BadRequest(format!("redacting: {e}")))?;
        }
        Err(e) => return Err(RoomError::Forbidden(format!("bad signature: {e}"))),
    }
    let hash = ruma::signatures::reference_hash(&json, &rules)
        .map_err(|e| RoomError::BadRequest(format!("cannot hash the event: {e}")))?;
    let event_id = EventId::parse(format!("${hash}"))
        .map_err(|e| RoomError::BadRequest(format!("event id: {e}")))?;
    Pdu::from_json(event_id, json, false).map_err(|e| RoomError::BadRequest(e.to_string()))
}

/// The verify key of every server that signed the PDU, read off its name; names that are not
/// a key are left out, so a signature required from such a server fails.
pub(super) fn public_keys(json: &CanonicalJsonObject) -> PublicKeyMap {
    let mut keys = PublicKeyMap::new();
    let Some(CanonicalJsonValue::Object(signatures)) = json.get("signatures") else {
        return keys;
    };
    for server in signatures.keys() {
        if let Some(key) = verify_key_of(server) {
            keys.insert(
                server.clone(),
                BTreeMap::from([(KEY_ID.to_owned(), Base64::new(key.to_vec()))]),
            );
        }
    }
    keys
}

/// A Hyphae server's ed25519 key: its name, when the name is 64 lowercase hex characters of a
/// valid key.
pub(crate) fn verify_key_of(server: &str) -> Option<[u8; 32]> {
    hyphae_p2p::peer_id_for_server_name(server).ok()?;
    let bytes = hex::decode(server).ok()?;
    bytes.try_into().ok()
}

/// The ids among `ids` that `known` (what the store returned for them) does not hold.
fn missing_among(ids: &[OwnedEventId], known: &[hyphae_store::StoredPdu]) -> Vec<OwnedEventId> {
    let known: HashSet<&str> = known.iter().map(|p| p.event_id.as_str()).collect();
    ids.iter()
        .filter(|id| !known.contains(id.as_str()))
        .cloned()
        .collect()
}

pub(super) fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            return;
        }
        let j = (u64::from_le_bytes(bytes) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Percent-encodes `s` as one path segment (or query value).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct MissingEvents {
    #[serde(default)]
    events: Vec<Box<RawValue>>,
}

#[derive(serde::Deserialize)]
pub(super) struct EventResponse {
    #[serde(default)]
    pub(super) pdus: Vec<Box<RawValue>>,
}

#[derive(serde::Deserialize)]
struct StateIds {
    #[serde(default)]
    pdu_ids: Vec<OwnedEventId>,
}
