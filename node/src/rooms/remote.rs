//! Membership that needs another server: inviting its users (it countersigns the invite) and
//! joining rooms this node is not in yet (make_join / send_join through a resident server).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;
use hyphae_store::ResolvedState;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue;

use super::incoming::{check_auth, urlencode, verify_pdu};
use super::{Pdu, ROOM_VERSIONS, RoomError, RoomState, Rooms, membership_of, rules, snapshot_of};
use crate::federation::FederationError;

/// State event types an invitee is shown before joining (the spec's recommended set).
pub(crate) const INVITE_STATE: [&str; 6] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
];

#[derive(serde::Deserialize)]
struct SignedEvent {
    event: Box<RawValue>,
}

#[derive(serde::Deserialize)]
struct MakeJoin {
    event: CanonicalJsonObject,
    room_version: Option<RoomVersionId>,
}

#[derive(serde::Deserialize)]
struct SendJoin {
    #[serde(default)]
    state: Vec<Box<RawValue>>,
    #[serde(default)]
    auth_chain: Vec<Box<RawValue>>,
}

impl Rooms {
    /// Whether this node holds the room's state (it is in the room, not merely invited).
    pub(crate) async fn participating(&self, room_id: &RoomId) -> Result<bool, RoomError> {
        Ok(self
            .inner
            .store
            .current_state(room_id.to_string())
            .await?
            .iter()
            .any(|(kind, key, _)| kind == "m.room.create" && key.is_empty()))
    }

    /// Has the invitee's server countersign an invite this node built, and returns the event as
    /// it came back (checked: same event, signed by the invitee's server). When that server
    /// cannot be reached at all, says so with the `/invite` body, for sending it another way.
    pub(super) async fn countersign_invite(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
        state: &RoomState,
    ) -> Result<Countersigned, RoomError> {
        let Some(invitee) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
            return Err(RoomError::BadRequest("invite without an invitee".into()));
        };
        let server = invitee.server_name();
        let room_id = pdu
            .room_id()
            .ok_or_else(|| RoomError::Internal("invite without a room".into()))?;
        let stripped = invite_room_state(state, pdu);
        let body = serde_json::json!({
            "room_version": version,
            "event": pdu.json,
            "invite_room_state": stripped,
        });
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            urlencode(room_id.as_str()),
            urlencode(pdu.event_id.as_str())
        );
        let response: SignedEvent = match self
            .inner
            .federation
            .request(server, Method::PUT, &path, Some(&body))
            .await
        {
            Ok(response) => response,
            Err(e @ (FederationError::Http(_) | FederationError::Offline)) => {
                return Ok(Countersigned::Away(e.to_string(), body));
            }
            Err(e) => {
                return Err(RoomError::Unreachable(format!(
                    "{server} did not take the invite: {e}"
                )));
            }
        };
        let signed: CanonicalJsonObject = serde_json::from_str(response.event.get())
            .map_err(|e| RoomError::Unreachable(format!("{server} sent back a bad invite: {e}")))?;
        let signed_by_invitee = matches!(
            signed.get("signatures"),
            Some(CanonicalJsonValue::Object(s)) if s.contains_key(server.as_str())
        );
        let checked = verify_pdu(version, signed)?;
        if checked.event_id != pdu.event_id || !signed_by_invitee {
            return Err(RoomError::Unreachable(format!(
                "{server} sent back a different or unsigned invite"
            )));
        }
        // Every signature on it is checked here, the invitee server's included, which the
        // event checks do not ask for.
        let keys = super::incoming::public_keys(&checked.json);
        ruma::signatures::verify_json(
            &keys,
            &ruma::canonical_json::redact(checked.json.clone(), &rules(version)?.redaction, None)
                .map_err(|e| RoomError::BadRequest(e.to_string()))?,
        )
        .map_err(|e| RoomError::Forbidden(format!("{server}'s signature on the invite: {e}")))?;
        Ok(Countersigned::Signed(checked))
    }

    /// Joins `user` to a room this node is not in, through the first of `servers` that lets
    /// them in: asks it for a join template, signs the join, and takes the room's state from its
    /// answer (every event checked, as from any server).
    pub(crate) async fn join_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
    ) -> Result<OwnedEventId, RoomError> {
        let mut last_error =
            RoomError::NotFound(format!("No server to join {room_id} through is known"));
        for server in servers {
            if *server == self.inner.server_name {
                continue;
            }
            // While the join is under way the room's servers may already send to this node
            // (from the moment the resident server accepted the join, before its answer is
            // read here): their PDUs wait on the room's slot for its state, instead of being
            // refused as for a room this node is not in, and lost.
            let slot = self.slot_made(room_id);
            let mut joining = slot.lock().await;
            let joined = self.join_through(room_id, user, server).await;
            // What was cached (an invite at most) is stale either way: read afresh.
            *joining = None;
            drop(joining);
            self.forget_cached(room_id);
            match joined {
                Ok(event_id) => return Ok(event_id),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "could not join through a server");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn join_through(
        &self,
        room_id: &RoomId,
        user: &UserId,
        server: &ServerName,
    ) -> Result<OwnedEventId, RoomError> {
        let versions: String = ROOM_VERSIONS.iter().map(|v| format!("&ver={v}")).collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            urlencode(room_id.as_str()),
            urlencode(user.as_str()),
            &versions[1..]
        );
        let template: MakeJoin = self
            .inner
            .federation
            .request(server, Method::GET, &path, None)
            .await
            .map_err(|e| match e {
                crate::federation::FederationError::Refused { errcode, error, .. }
                    if errcode == "M_FORBIDDEN" =>
                {
                    RoomError::Forbidden(error)
                }
                e => RoomError::Unreachable(e.to_string()),
            })?;
        let version = template.room_version.unwrap_or(RoomVersionId::V12);
        if !ROOM_VERSIONS.contains(&version) {
            return Err(RoomError::UnsupportedVersion(version.to_string()));
        }
        let rules = rules(&version)?;

        // The template decides the DAG position; the content and signature are ours.
        let mut json = CanonicalJsonObject::new();
        for field in [
            "room_id",
            "type",
            "state_key",
            "prev_events",
            "auth_events",
            "depth",
        ] {
            if let Some(value) = template.event.get(field) {
                json.insert(field.into(), value.clone());
            }
        }
        json.insert(
            "sender".into(),
            CanonicalJsonValue::String(user.to_string()),
        );
        json.insert(
            "state_key".into(),
            CanonicalJsonValue::String(user.to_string()),
        );
        json.insert(
            "type".into(),
            CanonicalJsonValue::String("m.room.member".into()),
        );
        let mut content = self.member_content(user, "join").await?;
        if let Some(CanonicalJsonValue::Object(theirs)) = template.event.get("content")
            && let Some(CanonicalJsonValue::String(via)) =
                theirs.get("join_authorised_via_users_server")
        {
            content["join_authorised_via_users_server"] = via.clone().into();
        }
        json.insert(
            "content".into(),
            serde_json::from_value(content)
                .map_err(|e| RoomError::Internal(format!("content: {e}")))?,
        );
        json.insert("origin_server_ts".into(), super::now_ts());
        self.inner
            .signing_key
            .hash_and_sign_event(&mut json, &rules.redaction)
            .map_err(|e| RoomError::BadRequest(format!("cannot sign the join: {e}")))?;
        let join = verify_pdu(&version, json)?;
        if join.room_id().as_deref() != Some(room_id) {
            return Err(RoomError::BadRequest(format!(
                "{server} offered a join to another room"
            )));
        }

        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            urlencode(room_id.as_str()),
            urlencode(join.event_id.as_str())
        );
        let body = serde_json::to_value(&join.json)
            .map_err(|e| RoomError::Internal(format!("join: {e}")))?;
        let answer: SendJoin = self
            .inner
            .federation
            .request(server, Method::PUT, &path, Some(&body))
            .await
            .map_err(|e| match e {
                crate::federation::FederationError::Refused { errcode, error, .. }
                    if errcode == "M_FORBIDDEN" =>
                {
                    RoomError::Forbidden(error)
                }
                e => RoomError::Unreachable(e.to_string()),
            })?;

        // Every event of the state and auth chain is checked like any other: signatures, and
        // the auth rules against its own auth events, oldest first.
        let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for raw in answer.auth_chain.iter().chain(&answer.state) {
            match serde_json::from_str::<CanonicalJsonObject>(raw.get())
                .map_err(|e| RoomError::BadRequest(e.to_string()))
                .and_then(|json| verify_pdu(&version, json))
            {
                Ok(pdu) if pdu.room_id().as_deref() == Some(room_id) => {
                    events.insert(pdu.event_id.clone(), pdu);
                }
                Ok(_) => tracing::warn!(%server, "send_join answer holds another room's event"),
                Err(e) => tracing::warn!(%server, error = %e, "send_join answer holds a bad event"),
            }
        }
        let mut ordered: Vec<&Pdu> = events.values().collect();
        ordered.sort_by_key(|p| (p.depth, p.origin_server_ts));
        let mut valid: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut outliers = Vec::new();
        let mut create: Option<Pdu> = None;
        for pdu in ordered {
            let mut auth: HashMap<OwnedEventId, Pdu> = pdu
                .auth_events
                .iter()
                .filter_map(|id| valid.get(id).map(|p| (id.clone(), p.clone())))
                .collect();
            if let Some(create) = &create {
                auth.insert(create.event_id.clone(), create.clone());
            }
            let mut stored = self.accepted(pdu, None, None, Vec::new())?.pdu;
            stored.outlier = true;
            match check_auth(&version, pdu, &auth, None) {
                Ok(()) => {
                    if pdu.kind == TimelineEventType::RoomCreate {
                        create = Some(pdu.clone());
                    }
                    valid.insert(pdu.event_id.clone(), pdu.clone());
                }
                Err(reason) => {
                    tracing::warn!(%server, event_id = %pdu.event_id, %reason, "send_join state event fails auth");
                    stored.rejection_reason = Some(reason);
                }
            }
            outliers.push(stored);
        }
        let mut state = RoomState::new();
        for raw in &answer.state {
            let Some(pdu) = serde_json::from_str::<CanonicalJsonObject>(raw.get())
                .ok()
                .and_then(|json| verify_pdu(&version, json).ok())
                .and_then(|pdu| valid.get(&pdu.event_id).cloned())
            else {
                continue;
            };
            if let Some(key) = &pdu.state_key {
                state.insert((pdu.kind.to_string().into(), key.clone()), pdu);
            }
        }
        if !state.contains_key(&(StateEventType::RoomCreate, String::new())) {
            return Err(RoomError::Unreachable(format!(
                "{server} sent a room state without its create event"
            )));
        }
        let mut join_auth = super::incoming::with_create(&state);
        join_auth.extend(
            join.auth_events
                .iter()
                .filter_map(|id| valid.get(id).map(|p| (id.clone(), p.clone()))),
        );
        check_auth(&version, &join, &join_auth, Some(&state)).map_err(RoomError::Forbidden)?;

        let mut after = state.clone();
        after.insert((StateEventType::RoomMember, user.to_string()), join.clone());
        let memberships = after
            .iter()
            .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
            .filter_map(|((_, key), pdu)| {
                membership_of(&pdu.content).map(|m| (key.clone(), m, pdu.event_id.to_string()))
            })
            .collect();
        let mut accepted = self.accepted(
            &join,
            None,
            Some(Arc::new(snapshot_of(room_id, &state))),
            Vec::new(),
        )?;
        let after_snapshot = Arc::new(snapshot_of(room_id, &after));
        accepted.state_after = Some(after_snapshot.clone());
        accepted.resolved_state = Some(ResolvedState {
            snapshot: after_snapshot,
            memberships,
        });
        accepted.prev_may_be_missing = true;
        self.inner
            .store
            .join_remote_room(version.to_string(), outliers, accepted)
            .await?;
        // The room's whole state arrived at once: a list someone here subscribes to (or asked
        // for, and may now be in) is compiled from it.
        self.inner.policy.state_changed(room_id);
        tracing::info!(%room_id, %server, %user, "joined a room through another server");
        Ok(join.event_id)
    }

    /// A join or leave event for `user` that this room would allow now, unsigned, for the
    /// user's server to complete and sign (`make_join`, `make_leave`).
    pub(crate) async fn membership_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
    ) -> Result<CanonicalJsonObject, RoomError> {
        let Some(slot) = self.slot(room_id).await? else {
            return Err(RoomError::NotFound(format!("Unknown room {room_id}")));
        };
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_entry(room_id).await?);
        }
        let Some(entry) = guard.as_ref() else {
            return Err(RoomError::Internal("room cache vanished".into()));
        };
        let kind = TimelineEventType::RoomMember;
        let content = serde_json::json!({ "membership": membership });
        let pdu = self.build(
            &entry.version,
            Some(room_id),
            user,
            super::DraftRef {
                kind: &kind,
                state_key: Some(user.as_str()),
                content: &content,
                redacts: None,
            },
            &entry.state,
            (entry.extremities.clone(), entry.depth + 1),
        )?;
        self.authorise(&entry.version, &pdu, &entry.state)?;
        let mut template = pdu.json;
        template.remove("signatures");
        template.remove("hashes");
        Ok(template)
    }

    /// What a server that just joined through this one needs: the room state before its join,
    /// and the auth chain of that state, as PDUs.
    pub(crate) async fn state_for_join(
        &self,
        room_id: &RoomId,
        join: &EventId,
    ) -> Result<(Vec<Box<RawValue>>, Vec<Box<RawValue>>), RoomError> {
        let Some(snapshot) = self.inner.store.state_at(join.to_string()).await? else {
            return Err(RoomError::Internal("the join's state was not kept".into()));
        };
        let ids: Vec<String> = snapshot.entries.into_iter().map(|(_, _, id)| id).collect();
        let state = self.inner.store.pdus(ids.clone()).await?;
        let auth_chain = self
            .inner
            .store
            .auth_chain(room_id.to_string(), ids)
            .await?;
        let raw = |pdus: Vec<hyphae_store::StoredPdu>| {
            pdus.into_iter()
                .filter(|p| p.rejection_reason.is_none())
                .filter_map(|p| RawValue::from_string(p.json).ok())
                .collect::<Vec<_>>()
        };
        Ok((raw(state), raw(auth_chain)))
    }

    /// Every server with a member joined to the room, this one included.
    pub(crate) async fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<String>, RoomError> {
        // The memberships table answers this without reading and parsing the room's state
        // (typing, receipts and delivery state ask often).
        let mut servers: Vec<String> = self
            .inner
            .store
            .room_members(room_id.to_string(), "join".into())
            .await?
            .iter()
            .filter_map(|user| UserId::parse(user.as_str()).ok())
            .map(|user| user.server_name().to_string())
            .collect();
        servers.push(self.inner.server_name.to_string());
        servers.sort();
        servers.dedup();
        Ok(servers)
    }

    /// Keeps an invite of a local user to a room on another server, countersigned by this
    /// server, with the stripped state the inviter sent.
    pub(crate) async fn record_remote_invite(
        &self,
        version: &RoomVersionId,
        invite: &Pdu,
        signed: &CanonicalJsonObject,
        stripped_state: &[Box<RawValue>],
    ) -> Result<(), RoomError> {
        let mut pdu = self.accepted(invite, None, None, Vec::new())?.pdu;
        pdu.json = serde_json::to_string(signed).map_err(|e| RoomError::Internal(e.to_string()))?;
        let stripped = serde_json::to_string(stripped_state)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        self.inner
            .store
            .record_remote_membership(
                version.to_string(),
                pdu,
                "invite".into(),
                Some(stripped),
                Vec::new(),
            )
            .await?;
        Ok(())
    }

    /// Declines an invite to a room this node is not in: a leave built on the invite itself
    /// (which the inviting server holds), kept here at once and sent to the inviter's server,
    /// so the refusal holds even while that server is away.
    pub(crate) async fn decline_remote_invite(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<String>,
    ) -> Result<OwnedEventId, RoomError> {
        let membership = self
            .inner
            .store
            .membership(room_id.to_string(), user.to_string())
            .await?
            .filter(|m| m.membership == "invite")
            .ok_or_else(|| RoomError::Forbidden(format!("You are not invited to {room_id}")))?;
        let invite = EventId::parse(&membership.event_id)
            .map_err(|e| RoomError::Internal(format!("stored invite id: {e}")))?;
        let invite = self
            .event(&invite)
            .await?
            .ok_or_else(|| RoomError::Internal("the invite event is missing".into()))?;
        let version = self.version(room_id).await?;
        let rules = rules(&version)?;
        // The leave is authorised by the create event, the power levels and the invite: the
        // invite's own auth events hold the first two.
        let mut auth_events: Vec<OwnedEventId> = Vec::new();
        for id in &invite.auth_events {
            if let Some(event) = self.event(id).await?
                && matches!(
                    event.kind,
                    TimelineEventType::RoomCreate | TimelineEventType::RoomPowerLevels
                )
            {
                auth_events.push(id.clone());
            }
        }
        auth_events.push(invite.event_id.clone());
        let mut content = serde_json::json!({"membership": "leave"});
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        let string = |s: &str| CanonicalJsonValue::String(s.to_owned());
        let ids = |v: &[OwnedEventId]| {
            CanonicalJsonValue::Array(v.iter().map(|id| string(id.as_str())).collect())
        };
        let mut json = CanonicalJsonObject::new();
        json.insert("room_id".into(), string(room_id.as_str()));
        json.insert("sender".into(), string(user.as_str()));
        json.insert("state_key".into(), string(user.as_str()));
        json.insert("type".into(), string("m.room.member"));
        json.insert(
            "content".into(),
            serde_json::from_value(content).map_err(|e| RoomError::Internal(e.to_string()))?,
        );
        json.insert(
            "prev_events".into(),
            ids(std::slice::from_ref(&invite.event_id)),
        );
        json.insert("auth_events".into(), ids(&auth_events));
        json.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(
                i64::try_from(u64::from(invite.depth) + 1)
                    .unwrap_or(i64::MAX)
                    .try_into()
                    .unwrap_or(ruma::Int::MAX),
            ),
        );
        json.insert("origin_server_ts".into(), super::now_ts());
        self.inner
            .signing_key
            .hash_and_sign_event(&mut json, &rules.redaction)
            .map_err(|e| RoomError::BadRequest(format!("cannot sign the leave: {e}")))?;
        let leave = verify_pdu(&version, json)?;
        let inviter = invite.sender.server_name().to_string();
        let pdu = self.accepted(&leave, None, None, Vec::new())?.pdu;
        self.inner
            .store
            .record_remote_membership(
                version.to_string(),
                pdu,
                "leave".into(),
                None,
                vec![inviter.clone()],
            )
            .await?;
        self.wake(&[inviter]);
        Ok(leave.event_id)
    }

    /// The servers that may let `user` into a room they were invited to: the inviter's.
    pub(crate) async fn invite_servers(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Vec<OwnedServerName>, RoomError> {
        let Some(membership) = self
            .inner
            .store
            .membership(room_id.to_string(), user.to_string())
            .await?
        else {
            return Ok(Vec::new());
        };
        let Ok(event_id) = EventId::parse(&membership.event_id) else {
            return Ok(Vec::new());
        };
        Ok(match self.inner.store.pdu(event_id.to_string()).await? {
            Some(stored) => Pdu::from_stored(&stored)
                .map(|pdu| vec![pdu.sender.server_name().to_owned()])
                .unwrap_or_default(),
            None => Vec::new(),
        })
    }
}

/// What came of asking the invitee's server to countersign an invite.
pub(super) enum Countersigned {
    Signed(Pdu),
    /// The server could not be reached (why, and the `/invite` body to send another way).
    Away(String, serde_json::Value),
}

/// What an invite shows of its room: the `INVITE_STATE` events in that order, then the
/// inviter's membership, as many as fit the invitee's caps (a name or topic can be large).
fn invite_room_state(state: &RoomState, invite: &Pdu) -> Vec<serde_json::Value> {
    use crate::federation::limits::{MAX_INVITE_STATE_BYTES, MAX_INVITE_STATE_EVENTS};
    let rank = |p: &Pdu| {
        let kind = p.kind.to_string();
        INVITE_STATE
            .iter()
            .position(|shown| *shown == kind)
            .or_else(|| {
                (p.kind == TimelineEventType::RoomMember
                    && p.state_key.as_deref() == Some(invite.sender.as_str()))
                .then_some(INVITE_STATE.len())
            })
    };
    let mut shown: Vec<(usize, &Pdu)> = state
        .values()
        .filter_map(|p| rank(p).map(|r| (r, p)))
        .collect();
    shown.sort_by_key(|(rank, _)| *rank);
    let mut bytes = 0;
    let mut kept = Vec::new();
    for (_, pdu) in shown.into_iter().take(MAX_INVITE_STATE_EVENTS) {
        let event = stripped(pdu);
        let size = event.to_string().len();
        if bytes + size > MAX_INVITE_STATE_BYTES {
            continue;
        }
        bytes += size;
        kept.push(event);
    }
    kept
}

/// A state event as an invitee sees it before joining.
pub(crate) fn stripped(pdu: &Pdu) -> serde_json::Value {
    serde_json::json!({
        "type": pdu.kind.to_string(),
        "state_key": pdu.state_key.clone().unwrap_or_default(),
        "content": serde_json::from_str::<serde_json::Value>(pdu.content.get()).unwrap_or_default(),
        "sender": pdu.sender,
    })
}
