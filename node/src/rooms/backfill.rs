//! History older than this node's copy of a room (a server that joined late has the state and
//! what came after its join): fetched with `backfill` from the room's other servers, each event
//! checked like any other, and stored before the rest of the timeline.

use std::collections::HashMap;

use axum::http::Method;
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
            for pdu in events {
                let mut auth = known.clone();
                for id in &pdu.auth_events {
                    if auth.contains_key(id) {
                        continue;
                    }
                    if let Some(stored) = self.inner.store.pdu(id.to_string()).await?
                        && stored.rejection_reason.is_none()
                        && let Ok(event) = Pdu::from_stored(&stored)
                    {
                        auth.insert(id.clone(), event);
                    }
                }
                if self.inner.policy.node_has_lists()
                    && !self.inner.policy.is_list(room_id)
                    && let Some((list, reason)) = self
                        .inner
                        .policy
                        .node_verdict(&crate::policy::Subject::user(&pdu.sender))
                {
                    // History is stored without its state: left out, as events that fail auth.
                    tracing::warn!(%room_id, %server, event_id = %pdu.event_id, %list, %reason, "refusing a backfilled event");
                    continue;
                }
                match check_auth(&version, &pdu, &auth, None) {
                    Ok(()) => {
                        if pdu.state_key.is_some() {
                            known.insert(pdu.event_id.clone(), pdu.clone());
                        }
                        accepted.push(self.accepted(&pdu, None, None, Vec::new())?.pdu);
                    }
                    Err(reason) => {
                        tracing::info!(%room_id, %server, event_id = %pdu.event_id, %reason, "backfilled event fails auth");
                    }
                }
            }
            // Stored newest first: each goes before the ones already there.
            accepted.reverse();
            let added = self.inner.store.append_backfilled(accepted).await?;
            return Ok(added);
        }
        Ok(0)
    }
}
