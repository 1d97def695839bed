//! History older than this node's copy of a room (a server that joined late has the state and
//! what came after its join): fetched with `backfill` from the room's other servers, each event
//! checked like any other, and stored before the rest of the timeline.

use std::collections::HashMap;

use axum::http::Method;
use hyphae_store::AcceptedPdu;
use ruma::{OwnedEventId, RoomId};
use serde_json::value::RawValue;

use super::incoming::{check_auth, urlencode, verify_pdu, with_create};
use super::{Pdu, RoomError, Rooms};

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
            let mut events: Vec<Pdu> = answer
                .pdus
                .iter()
                .filter_map(|raw| {
                    let json = serde_json::from_str(raw.get()).ok()?;
                    verify_pdu(&version, json).ok()
                })
                .filter(|pdu| pdu.room_id().as_deref() == Some(room_id))
                .collect();
            // Checked oldest first, so each event's auth events are judged before it.
            events.sort_by_key(|p| (p.depth, p.origin_server_ts));
            let mut known: HashMap<OwnedEventId, Pdu> = with_create(&state);
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
                match check_auth(&version, &pdu, &auth, None) {
                    Ok(()) => {
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
