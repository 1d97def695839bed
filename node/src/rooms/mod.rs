//! Rooms: building, signing and authorising this node's own events, and applying them. Each room
//! has one lock, so events built here always extend the room's latest extremities.

mod auth_fetch;
#[cfg(test)]
mod auth_fetch_tests;
mod backfill;
#[cfg(test)]
mod backfill_tests;
mod create;
mod incoming;
mod pdu;
mod remote;
mod resolution;
#[cfg(test)]
mod resolution_tests;
mod restore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyphae_store::{AcceptedPdu, StateSnapshot, Store, StoreError};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue;

use crate::federation::Federation;
use crate::signing::SigningKey;
pub(crate) use create::NewRoom;
pub use incoming::urlencode;
pub(crate) use incoming::{Received, parse_and_verify, verify_key_of, verify_pdu};
pub(crate) use pdu::Pdu;
pub(crate) use remote::{INVITE_STATE, stripped};
pub(crate) use restore::{Kept, ReplicaEvent, RoomRestored};

/// The room versions this node creates and joins; the first is the default (12: matrix-sdk,
/// the real client in the tests, handles it; see tests/tests/e2ee_matrix_sdk.rs).
pub(crate) const ROOM_VERSIONS: [RoomVersionId; 3] =
    [RoomVersionId::V12, RoomVersionId::V11, RoomVersionId::V10];

/// Rooms whose state is kept in memory for sending; past this, idle ones are dropped.
const MAX_CACHED_ROOMS: usize = 512;

/// At most this many forward extremities become one event's prev_events.
const MAX_PREV_EVENTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RoomError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("room version {0} is not supported here")]
    UnsupportedVersion(String),
    #[error("{0}")]
    BadRequest(String),
    /// Another server was needed and could not be reached, or answered badly.
    #[error("{0}")]
    Unreachable(String),
    /// More than the node takes from a peer right now; it may try again after the delay.
    #[error("{0}")]
    LimitExceeded(String, std::time::Duration),
    /// More work (a state resolution over a huge auth graph) than the node does for anyone.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialError),
    #[error("{0}")]
    Internal(String),
}

/// The state of a room: (type, state key) → the event.
pub(crate) type RoomState = HashMap<(StateEventType, String), Pdu>;

/// A handle to the node's rooms; cheap to clone.
#[derive(Clone)]
pub(crate) struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    server_name: OwnedServerName,
    signing_key: SigningKey,
    federation: Federation,
    /// Told of state changes (a subscribed list's rules), and asked at the federation edge.
    policy: crate::policy::Policy,
    /// What other servers may cost this node.
    limits: Arc<crate::limits::Limits>,
    /// State resolutions computing now (see `resolution`).
    resolutions: Arc<tokio::sync::Semaphore>,
    /// One slot per room this node sends into: its lock, and what is cached of the room.
    rooms: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<Option<RoomEntry>>>>>,
    /// Incoming PDUs waiting for auth events no server supplied yet.
    set_aside: auth_fetch::SetAside,
}

/// What the node keeps in memory of a room it sends into: enough to build and authorise the
/// next event without reading the store, so sending does not wait for the previous commit.
struct RoomEntry {
    room_id: OwnedRoomId,
    version: RoomVersionId,
    state: RoomState,
    /// The state above as the store keeps it: the state before the next event.
    snapshot: Arc<StateSnapshot>,
    /// The other servers with members joined: where the room's new events go.
    servers: Vec<String>,
    extremities: Vec<String>,
    depth: i64,
    /// Client transactions built here whose commit may still be pending.
    pending_transactions: HashMap<(String, String, String), OwnedEventId>,
}

impl RoomEntry {
    fn new(
        room_id: OwnedRoomId,
        version: RoomVersionId,
        state: RoomState,
        own: &ServerName,
    ) -> RoomEntry {
        let mut entry = RoomEntry {
            snapshot: Arc::new(StateSnapshot::new(room_id.as_str(), Vec::new())),
            room_id,
            version,
            state,
            servers: Vec::new(),
            extremities: Vec::new(),
            depth: 0,
            pending_transactions: HashMap::new(),
        };
        entry.state_changed(own);
        entry
    }

    fn apply(&mut self, pdu: &Pdu, own: &ServerName) {
        if let Some(state_key) = &pdu.state_key {
            let key = (pdu.kind.to_string().into(), state_key.clone());
            self.state.insert(key, pdu.clone());
            self.state_changed(own);
        }
        self.extremities = vec![pdu.event_id.to_string()];
        self.depth = i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX);
    }

    fn state_changed(&mut self, own: &ServerName) {
        self.snapshot = Arc::new(snapshot_of(&self.room_id, &self.state));
        self.servers = joined_servers(&self.state, own);
    }
}

/// The state as the store keeps it.
pub(crate) fn snapshot_of(room_id: &RoomId, state: &RoomState) -> StateSnapshot {
    StateSnapshot::new(
        room_id.as_str(),
        state
            .iter()
            .map(|((kind, key), pdu)| (kind.to_string(), key.clone(), pdu.event_id.to_string()))
            .collect(),
    )
}

/// The servers other than `own` with a member joined in `state`.
pub(crate) fn joined_servers(state: &RoomState, own: &ServerName) -> Vec<String> {
    let mut servers: Vec<String> = state
        .iter()
        .filter(|((kind, _), pdu)| {
            *kind == StateEventType::RoomMember
                && membership_of(&pdu.content).as_deref() == Some("join")
        })
        .filter_map(|((_, key), _)| UserId::parse(key.as_str()).ok())
        .map(|user| user.server_name().to_owned())
        .filter(|server| server != own)
        .map(|server| server.to_string())
        .collect();
    servers.sort();
    servers.dedup();
    servers
}

/// An event this node is about to create.
pub(crate) struct EventDraft {
    pub(crate) kind: TimelineEventType,
    pub(crate) state_key: Option<String>,
    pub(crate) content: serde_json::Value,
    pub(crate) redacts: Option<OwnedEventId>,
    /// The client transaction that asks for it: (localpart, device id, txn id).
    pub(crate) transaction: Option<(String, String, String)>,
}

impl EventDraft {
    pub(crate) fn state(kind: StateEventType, state_key: &str, content: serde_json::Value) -> Self {
        EventDraft {
            kind: kind.to_string().into(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
            transaction: None,
        }
    }
}

impl Rooms {
    pub(crate) fn new(
        store: Store,
        signing_key: SigningKey,
        federation: Federation,
        policy: crate::policy::Policy,
        limits: Arc<crate::limits::Limits>,
    ) -> Self {
        Rooms {
            inner: Arc::new(Inner {
                store,
                server_name: signing_key.server_name().clone(),
                signing_key,
                federation,
                policy,
                limits,
                resolutions: Arc::new(tokio::sync::Semaphore::new(resolution::RESOLUTIONS_AT_ONCE)),
                rooms: Mutex::new(HashMap::new()),
                set_aside: Default::default(),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn server_name(&self) -> &OwnedServerName {
        &self.inner.server_name
    }

    /// The room's slot, made only for rooms that exist (so made-up room ids cost nothing).
    async fn slot(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Option<RoomEntry>>>>, RoomError> {
        if let Some(slot) = self
            .inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
        {
            return Ok(Some(slot.clone()));
        }
        if self
            .inner
            .store
            .room_version(room_id.to_string())
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(self.slot_made(room_id)))
    }

    /// The room's slot, made if there is none: by `slot` for a room known to exist, and for a
    /// room this node is joining, before it is stored.
    fn slot_made(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<Option<RoomEntry>>> {
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.len() >= MAX_CACHED_ROOMS {
            // Rooms nobody is sending into right now (no one holds their slot, so no commit
            // is pending) are read from the store again when next needed.
            rooms.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        rooms.entry(room_id.to_owned()).or_default().clone()
    }

    /// Drops what is cached of a room, so it is read afresh from the store.
    fn forget_cached(&self, room_id: &RoomId) {
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
    }

    async fn load_entry(&self, room_id: &RoomId) -> Result<RoomEntry, RoomError> {
        let version = self.version(room_id).await?;
        let state = self.state(room_id).await?;
        let mut extremities = self
            .inner
            .store
            .forward_extremities(room_id.to_string())
            .await?;
        extremities.truncate(MAX_PREV_EVENTS);
        let depth = self
            .inner
            .store
            .pdus(extremities.clone())
            .await?
            .iter()
            .map(|p| p.depth)
            .max()
            .unwrap_or(0);
        let mut entry = RoomEntry::new(room_id.to_owned(), version, state, &self.inner.server_name);
        entry.extremities = extremities;
        entry.depth = depth;
        Ok(entry)
    }

    pub(crate) async fn version(&self, room_id: &RoomId) -> Result<RoomVersionId, RoomError> {
        let version = self
            .inner
            .store
            .room_version(room_id.to_string())
            .await?
            .ok_or_else(|| RoomError::NotFound(format!("Unknown room {room_id}")))?;
        RoomVersionId::try_from(version.as_str())
            .map_err(|_| RoomError::Internal(format!("stored room version {version:?}")))
    }

    /// The room's current state, parsed.
    pub(crate) async fn state(&self, room_id: &RoomId) -> Result<RoomState, RoomError> {
        let stored = self
            .inner
            .store
            .current_state_pdus(room_id.to_string())
            .await?;
        let mut state = HashMap::with_capacity(stored.len());
        for stored in &stored {
            let pdu = Pdu::from_stored(stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            let key = (
                pdu.kind.to_string().into(),
                pdu.state_key.clone().unwrap_or_default(),
            );
            state.insert(key, pdu);
        }
        Ok(state)
    }

    /// Builds, signs and authorises an event from `sender` against the room's current state,
    /// then stores it. Refused events are not stored: a local client gets the refusal. The room
    /// stays locked only while the event is built; its commit is awaited outside the lock, so
    /// events sent close together share one commit.
    pub(crate) async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        draft: EventDraft,
    ) -> Result<OwnedEventId, RoomError> {
        let Some(slot) = self.slot(room_id).await? else {
            return Err(RoomError::NotFound(format!("Unknown room {room_id}")));
        };
        let mut invite_by_edu = None;
        let (pdu, redaction, commit, destinations) = {
            let mut guard = slot.lock().await;
            if guard.is_none() {
                *guard = Some(self.load_entry(room_id).await?);
            }
            let Some(entry) = guard.as_mut() else {
                return Err(RoomError::Internal("room cache vanished".into()));
            };
            // Checked under the room lock, against what is pending too: a retry that arrives
            // while the first attempt is still committing gets the same event.
            if let Some(transaction) = &draft.transaction {
                if let Some(event_id) = entry.pending_transactions.get(transaction) {
                    return Ok(event_id.clone());
                }
                let (localpart, device_id, txn_id) = transaction.clone();
                if let Some(event_id) = self
                    .inner
                    .store
                    .transaction_event(localpart, device_id, txn_id)
                    .await?
                {
                    return EventId::parse(event_id)
                        .map_err(|e| RoomError::Internal(format!("stored event id: {e}")));
                }
            }
            let pdu = self.build(
                &entry.version,
                Some(room_id),
                sender,
                draft_ref(&draft),
                &entry.state,
                (entry.extremities.clone(), entry.depth + 1),
            )?;
            self.authorise(&entry.version, &pdu, &entry.state)?;
            // An invite to another server's user needs that server's signature first. The room
            // stays locked meanwhile, so the invite is built on what is still the latest state.
            let pdu = if pdu.kind == TimelineEventType::RoomMember
                && membership_of(&pdu.content).as_deref() == Some("invite")
                && pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| UserId::parse(k).ok())
                    .is_some_and(|invitee| invitee.server_name() != self.inner.server_name)
            {
                match self
                    .countersign_invite(&entry.version, &pdu, &entry.state)
                    .await?
                {
                    remote::Countersigned::Signed(signed) => signed,
                    // The invitee's server is away: the invite stands as it is (the auth rules
                    // ask only for the inviter's signature) and reaches it by EDU through the
                    // outbox: into its mailbox, or when it is back.
                    remote::Countersigned::Away(reason, body) => {
                        tracing::info!(room = %room_id, invitee = ?pdu.state_key, %reason, "the invitee's server is away; the invite goes by the outbox");
                        invite_by_edu = Some(body);
                        pdu
                    }
                }
            } else {
                pdu
            };
            let redaction = match &draft.redacts {
                Some(target) if pdu.kind == TimelineEventType::RoomRedaction => {
                    Some(self.check_redaction(entry, room_id, sender, target).await?)
                }
                _ => None,
            };
            // Where it goes: the servers in the room before it and after it (a member who is
            // kicked or banned learns of it too).
            let mut destinations = entry.servers.clone();
            let target = (pdu.kind == TimelineEventType::RoomMember)
                .then(|| pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()))
                .flatten()
                .map(|target| target.server_name().to_string())
                .filter(|server| server != self.inner.server_name.as_str());
            destinations.extend(target.clone());
            let accepted = self.accepted(
                &pdu,
                draft.transaction.clone(),
                Some(entry.snapshot.clone()),
                Vec::new(),
            )?;
            entry.apply(&pdu, &self.inner.server_name);
            destinations.extend(entry.servers.iter().cloned());
            destinations.sort();
            destinations.dedup();
            let most = self.inner.limits.config.max_destinations;
            let destinations = self
                .pick_destinations(destinations, target.as_deref(), most)
                .await;
            let commit = self.inner.store.append_accepted(vec![AcceptedPdu {
                destinations: destinations.clone(),
                state_after: Some(entry.snapshot.clone()),
                ..accepted
            }]);
            if let Some(transaction) = draft.transaction {
                if entry.pending_transactions.len() >= 1024 {
                    // Older ones are committed by now and found in the store.
                    entry.pending_transactions.clear();
                }
                entry
                    .pending_transactions
                    .insert(transaction, pdu.event_id.clone());
            }
            (pdu, redaction, commit, destinations)
        };
        if let Err(e) = commit.await {
            // What is cached may be ahead of the store: read the room afresh next time. Events
            // built on this one meanwhile are refused by the store (their prev event is
            // missing).
            slot.lock().await.take();
            return Err(e.into());
        }
        self.wake(&destinations);
        if pdu.state_key.is_some() {
            self.inner.policy.state_changed(room_id);
        }
        if let Some(body) = invite_by_edu
            && let Some(invitee) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            let edu = serde_json::json!({
                "edu_type": crate::federation::INVITE_EDU,
                "content": body,
            });
            let server = invitee.server_name().to_owned();
            if let Err(e) = self.inner.federation.queue_edu(vec![server], edu).await {
                tracing::warn!(error = %e, "cannot queue the invite for the invitee's server");
            }
        }
        if let Some((target, version)) = redaction {
            self.apply_redaction(&version, target, &pdu).await?;
        }
        Ok(pdu.event_id)
    }

    /// A redaction is allowed for the target's own sender, or with the room's `redact` power.
    /// (From room version 3 the auth rules leave this check to the server.)
    async fn check_redaction(
        &self,
        entry: &RoomEntry,
        room_id: &RoomId,
        sender: &UserId,
        target: &EventId,
    ) -> Result<(Pdu, RoomVersionId), RoomError> {
        let target = self
            .event(target)
            .await?
            .filter(|pdu| pdu.room_id().as_deref() == Some(room_id))
            .ok_or_else(|| RoomError::NotFound("No such event in this room".into()))?;
        if target.sender != sender && !has_power(entry, sender, "redact", 50) {
            return Err(RoomError::Forbidden(
                "You may only redact your own events here".into(),
            ));
        }
        Ok((target, entry.version.clone()))
    }

    /// Replaces the stored target with its redacted form, keeping what the room version keeps.
    async fn apply_redaction(
        &self,
        version: &RoomVersionId,
        target: Pdu,
        redaction: &Pdu,
    ) -> Result<(), RoomError> {
        let rules = rules(version)?;
        let state_of = target
            .state_key
            .is_some()
            .then(|| target.room_id())
            .flatten();
        let because = ruma::canonical_json::RedactedBecause::from_json(redaction.json.clone());
        let redacted = ruma::canonical_json::redact(target.json, &rules.redaction, Some(because))
            .map_err(|e| RoomError::Internal(format!("redacting: {e}")))?;
        let json =
            serde_json::to_string(&redacted).map_err(|e| RoomError::Internal(e.to_string()))?;
        self.inner
            .store
            .replace_pdu_json(target.event_id.to_string(), json)
            .await?;
        // A redacted state event keeps no content: a redacted policy rule bans nobody, and
        // the list holding it must be compiled again (the redaction itself has no state key).
        if let Some(room_id) = state_of {
            self.inner.policy.state_changed(&room_id);
        }
        Ok(())
    }

    /// Builds and signs an event on top of `prev` (prev_events and depth).
    fn build(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        sender: &UserId,
        draft: DraftRef<'_>,
        state: &RoomState,
        (prev_events, depth): (Vec<String>, i64),
    ) -> Result<Pdu, RoomError> {
        let rules = rules(version)?;
        let content = serde_json::value::to_raw_value(draft.content)
            .map_err(|e| RoomError::BadRequest(format!("content: {e}")))?;
        let auth_types = state_res::auth_types_for_event(
            draft.kind,
            sender,
            draft.state_key,
            &content,
            &rules.authorization,
        )
        .map_err(|e| RoomError::BadRequest(e.to_string()))?;
        let mut auth_events: Vec<String> = auth_types
            .iter()
            .filter_map(|key| state.get(key).map(|pdu| pdu.event_id.to_string()))
            .collect();
        auth_events.sort();
        auth_events.dedup();

        let mut json = CanonicalJsonObject::new();
        let string = |s: &str| CanonicalJsonValue::String(s.to_owned());
        let ids = |v: &[String]| CanonicalJsonValue::Array(v.iter().map(|s| string(s)).collect());
        if let Some(room_id) = room_id {
            json.insert("room_id".into(), string(room_id.as_str()));
        }
        json.insert("sender".into(), string(sender.as_str()));
        json.insert("type".into(), string(&draft.kind.to_string()));
        json.insert(
            "content".into(),
            serde_json::from_value(draft.content.clone()).map_err(|e| {
                RoomError::BadRequest(format!("content is not canonical JSON: {e}"))
            })?,
        );
        if let Some(state_key) = draft.state_key {
            json.insert("state_key".into(), string(state_key));
        }
        if let Some(redacts) = draft.redacts {
            json.insert("redacts".into(), string(redacts.as_str()));
        }
        json.insert("origin_server_ts".into(), now_ts());
        json.insert(
            "depth".into(),
            // A member may have sent an event at the largest depth JSON allows; ours stay there
            // rather than wrapping to 0.
            CanonicalJsonValue::Integer(depth.try_into().unwrap_or(ruma::Int::MAX)),
        );
        json.insert("prev_events".into(), ids(&prev_events));
        json.insert("auth_events".into(), ids(&auth_events));

        self.inner
            .signing_key
            .hash_and_sign_event(&mut json, &rules.redaction)
            .map_err(|e| RoomError::BadRequest(format!("cannot sign the event: {e}")))?;
        let hash = ruma::signatures::reference_hash(&json, &rules)
            .map_err(|e| RoomError::BadRequest(format!("cannot hash the event: {e}")))?;
        let event_id = EventId::parse(format!("${hash}"))
            .map_err(|e| RoomError::Internal(format!("event id: {e}")))?;
        state_res::check_pdu_format(&json, &rules.event_format).map_err(RoomError::BadRequest)?;
        Pdu::from_json(event_id, json, false).map_err(|e| RoomError::Internal(e.to_string()))
    }

    /// The room version's auth rules, against the event's auth events and the current state.
    fn authorise(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
        state: &RoomState,
    ) -> Result<(), RoomError> {
        let rules = rules(version)?;
        // Only the event's own auth events can be asked for, and the create event (which from
        // room version 12 is named by the room id instead).
        let by_id: HashMap<&EventId, &Pdu> = state
            .values()
            .filter(|p| {
                pdu.auth_events.contains(&p.event_id) || p.kind == TimelineEventType::RoomCreate
            })
            .map(|p| (p.event_id.as_ref(), p))
            .collect();
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
            by_id.get(id).map(|p| (*p).clone())
        })
        .map_err(RoomError::Forbidden)?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
            state.get(&(kind.clone(), key.to_owned())).cloned()
        })
        .map_err(RoomError::Forbidden)?;
        Ok(())
    }

    /// At most `most` of `candidates` for an event to go to: `keep` (the server of a
    /// membership change's target) and the servers this node is connected to first (those it
    /// surely reaches), the rest at random. Every server that joins a room (and a Sybil swarm
    /// of made-up ones costs nothing to join) would otherwise cost an outbox entry per event;
    /// those left out get the event by gossip, or fetch it when a later event names it.
    async fn pick_destinations(
        &self,
        mut candidates: Vec<String>,
        keep: Option<&str>,
        most: usize,
    ) -> Vec<String> {
        if candidates.len() <= most {
            return candidates;
        }
        let connected = self.inner.federation.connected_servers().await;
        incoming::shuffle(&mut candidates);
        candidates.sort_by_key(|s| (Some(s.as_str()) != keep, !connected.contains(s)));
        candidates.truncate(most);
        candidates
    }

    /// Tells the senders of these servers that the outbox has something for them.
    fn wake(&self, destinations: &[String]) {
        for destination in destinations {
            if let Ok(destination) = <&ServerName>::try_from(destination.as_str()) {
                self.inner.federation.wake(destination);
            }
        }
    }

    /// The PDU as the store takes it.
    fn accepted(
        &self,
        pdu: &Pdu,
        transaction: Option<(String, String, String)>,
        state_before: Option<Arc<StateSnapshot>>,
        destinations: Vec<String>,
    ) -> Result<AcceptedPdu, RoomError> {
        let room_id = pdu
            .room_id()
            .ok_or_else(|| RoomError::Internal("event without a room".into()))?;
        let membership = (pdu.kind == TimelineEventType::RoomMember)
            .then(|| membership_of(&pdu.content))
            .flatten();
        Ok(AcceptedPdu {
            pdu: pdu
                .to_new_pdu(room_id.as_str())
                .map_err(|e| RoomError::Internal(e.to_string()))?,
            membership,
            transaction,
            destinations,
            state_before,
            state_after: None,
            resolved_state: None,
            prev_may_be_missing: false,
        })
    }

    /// The content of a join or invite of `user_id`, with their profile when they are local.
    pub(crate) async fn member_content(
        &self,
        user_id: &UserId,
        membership: &str,
    ) -> Result<serde_json::Value, RoomError> {
        let mut content = serde_json::json!({"membership": membership});
        if user_id.server_name() == self.inner.server_name
            && let Some((displayname, avatar_url)) = self
                .inner
                .store
                .profile(user_id.localpart().to_owned())
                .await?
        {
            if let Some(name) = displayname {
                content["displayname"] = name.into();
            }
            if let Some(url) = avatar_url {
                content["avatar_url"] = url.into();
            }
        }
        Ok(content)
    }

    /// Reads one event the user may see.
    pub(crate) async fn event(&self, event_id: &EventId) -> Result<Option<Pdu>, RoomError> {
        match self.inner.store.pdu(event_id.to_string()).await? {
            Some(stored) if stored.rejection_reason.is_none() => Ok(Some(
                Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?,
            )),
            _ => Ok(None),
        }
    }
}

/// A borrowed view of a draft, so `create` can build the create event before a room exists.
#[derive(Clone, Copy)]
struct DraftRef<'a> {
    kind: &'a TimelineEventType,
    state_key: Option<&'a str>,
    content: &'a serde_json::Value,
    redacts: Option<&'a EventId>,
}

fn draft_ref(draft: &EventDraft) -> DraftRef<'_> {
    DraftRef {
        kind: &draft.kind,
        state_key: draft.state_key.as_deref(),
        content: &draft.content,
        redacts: draft.redacts.as_deref(),
    }
}

/// Now, as an event's `origin_server_ts`: never the same twice in this process. In room
/// version 12 a room's id is the hash of its create event, so two rooms created alike by one
/// user in the same millisecond would otherwise be the same room (the second refused as
/// existing); a millisecond's drift ahead under bursts is harmless.
pub(crate) fn now_ts() -> CanonicalJsonValue {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = u64::from(MilliSecondsSinceUnixEpoch::now().0);
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or(now);
    let ts = now.max(previous + 1);
    CanonicalJsonValue::Integer(ts.try_into().unwrap_or_default())
}

pub(crate) fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, RoomError> {
    version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))
}

/// Whether `user` reaches the power level the room's `m.room.power_levels` asks for `action`
/// (a top-level field such as "redact"; `default` when the field is absent). Room creators hold
/// unlimited power from room version 12.
fn has_power(entry: &RoomEntry, user: &UserId, action: &str, default: i64) -> bool {
    let create = entry
        .state
        .get(&(StateEventType::RoomCreate, String::new()));
    if let (Ok(rules), Some(create)) = (rules(&entry.version), create)
        && rules.authorization.explicitly_privilege_room_creators
    {
        let content: serde_json::Value =
            serde_json::from_str(create.content.get()).unwrap_or_default();
        let additional = content["additional_creators"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c.as_str() == Some(user.as_str())));
        if create.sender == user || additional {
            return true;
        }
    }
    let Some(levels) = entry
        .state
        .get(&(StateEventType::RoomPowerLevels, String::new()))
    else {
        // Without power levels the creator holds 100 and everyone else 0.
        return create.is_some_and(|c| c.sender == user) || default <= 0;
    };
    let levels: serde_json::Value = serde_json::from_str(levels.content.get()).unwrap_or_default();
    let number = |v: &serde_json::Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let user_level = number(&levels["users"][user.as_str()])
        .or_else(|| number(&levels["users_default"]))
        .unwrap_or(0);
    let needed = number(&levels[action]).unwrap_or(default);
    user_level >= needed
}

/// The `membership` of an `m.room.member` content.
pub(crate) fn membership_of(content: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Member {
        membership: String,
    }
    serde_json::from_str::<Member>(content.get())
        .ok()
        .map(|m| m.membership)
}
