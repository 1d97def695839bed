//! The public room directory across servers: this node's published rooms served to any
//! authenticated peer (`/_matrix/federation/v1/publicRooms`, GET and POST: a public directory
//! is public), and [`RoomDirectories`], how this node asks other servers for theirs.
//!
//! "Rooms nearby", what a client gets from `/publicRooms` without `server`, are this node's own
//! and those of the peers it has a connection to right now: at most [`MAX_PEERS`] of them,
//! asked concurrently for at most [`MAX_ENTRIES_PER_PEER`] rooms each, each within
//! [`PEER_TIMEOUT`], so a peer that is slow or gone costs a listing that long and no more.
//! Peers found but not connected are not dialled: a dial to a device that left waits for its
//! timeout, and the point is the people around now. Each peer's answer (or failure) is kept
//! for [`FRESH_FOR`] and the client's filter applied here, so a client searching as its user
//! types asks the peers once, not per keystroke; concurrent listings share one round. Which
//! servers listed a room is remembered, so a client joining it by room id alone (room
//! version 12 ids name no server) joins through them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Method;
use hyphae_p2p::RequestOptions;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
use ruma::directory::{Filter, PublicRoomsChunk, RoomNetwork};
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UInt};
use serde_json::{Value, json};

use super::events::Incoming;
use super::{Federation, FederationError, Origin};
use crate::client_api::{MatrixError, Ruma, directory};
use crate::node::AppState;

/// Most connected peers asked for their rooms in one round.
const MAX_PEERS: usize = 16;
/// Most rooms taken from one peer.
const MAX_ENTRIES_PER_PEER: usize = 100;
/// How long a peer gets to answer in a round.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one server named by a client (`server=`) gets to answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest directory answer read from a peer.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How long a peer's answer is used before it is asked again.
const FRESH_FOR: Duration = Duration::from_secs(30);
/// How long the servers that listed a room are remembered for joining it.
const LISTED_FOR: Duration = Duration::from_secs(3600);
/// Most rooms whose listing servers are remembered.
const MAX_LISTED: usize = 4096;

/// `GET /_matrix/federation/v1/publicRooms`
pub(crate) async fn public_rooms(
    State(state): State<AppState>,
    Origin(_): Origin,
    Incoming(request): Incoming<get_public_rooms::v1::Request>,
) -> Result<Ruma<get_public_rooms::v1::Response>, MatrixError> {
    let listing = local_listing(
        &state,
        request.limit,
        request.since,
        &Filter::new(),
        &request.room_network,
    )
    .await?;
    Ok(directory::listing_response!(
        get_public_rooms::v1::Response::new(),
        listing
    ))
}

/// `POST /_matrix/federation/v1/publicRooms`
pub(crate) async fn public_rooms_filtered(
    State(state): State<AppState>,
    Origin(_): Origin,
    Incoming(request): Incoming<get_public_rooms_filtered::v1::Request>,
) -> Result<Ruma<get_public_rooms_filtered::v1::Response>, MatrixError> {
    let listing = local_listing(
        &state,
        request.limit,
        request.since,
        &request.filter,
        &request.room_network,
    )
    .await?;
    Ok(directory::listing_response!(
        get_public_rooms_filtered::v1::Response::new(),
        listing
    ))
}

/// This node's own rooms only: peers are not asked on another server's behalf.
async fn local_listing(
    state: &AppState,
    limit: Option<UInt>,
    since: Option<String>,
    filter: &Filter,
    network: &RoomNetwork,
) -> Result<directory::Listing, MatrixError> {
    let entries = match network {
        RoomNetwork::ThirdParty(_) => Vec::new(),
        _ => directory::local_entries(state).await?,
    };
    directory::page(entries, filter, limit, since.as_deref())
}

/// Other servers' directories as this node has asked for them; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct RoomDirectories {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each peer's rooms as it last answered (empty when it did not), and when.
    answers: Mutex<HashMap<OwnedServerName, (Instant, Vec<PublicRoomsChunk>)>>,
    /// Held while a round of asking runs: a listing arriving meanwhile waits for its answers.
    round: tokio::sync::Mutex<()>,
    /// The servers that listed a room, and when one last did.
    listed_by: Mutex<HashMap<OwnedRoomId, (Instant, Vec<OwnedServerName>)>>,
}

/// A directory answer as read from a peer: entries one by one, so one bad entry does not cost
/// the others.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    chunk: Vec<Value>,
    #[serde(default)]
    next_batch: Option<String>,
    #[serde(default)]
    prev_batch: Option<String>,
    #[serde(default)]
    total_room_count_estimate: Option<UInt>,
}

impl RoomDirectories {
    /// The rooms the connected peers list, asking those whose answer is not fresh.
    pub(crate) async fn nearby(&self, federation: &Federation) -> Vec<PublicRoomsChunk> {
        let mut peers: Vec<OwnedServerName> = federation
            .connected_servers()
            .await
            .into_iter()
            .filter_map(|name| OwnedServerName::try_from(name).ok())
            .collect();
        peers.sort();
        peers.truncate(MAX_PEERS);
        let round = self.inner.round.lock().await;
        let stale: Vec<OwnedServerName> = {
            let answers = lock(&self.inner.answers);
            peers
                .iter()
                .filter(|peer| {
                    answers
                        .get(*peer)
                        .is_none_or(|(asked, _)| asked.elapsed() >= FRESH_FOR)
                })
                .cloned()
                .collect()
        };
        let asked = futures::future::join_all(stale.into_iter().map(|peer| async move {
            let body = json!({"limit": MAX_ENTRIES_PER_PEER});
            let rooms = match self.request(federation, &peer, &body, PEER_TIMEOUT).await {
                Ok(answer) => answer.0,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "a peer did not list its rooms");
                    Vec::new()
                }
            };
            (peer, rooms)
        }))
        .await;
        let mut answers = lock(&self.inner.answers);
        for (peer, rooms) in asked {
            answers.insert(peer, (Instant::now(), rooms));
        }
        answers.retain(|_, (asked, _)| asked.elapsed() < FRESH_FOR);
        drop(round);
        peers
            .iter()
            .filter_map(|peer| answers.get(peer))
            .flat_map(|(_, rooms)| rooms.iter().cloned())
            .collect()
    }

    /// A page of one server's directory, as a client asked for it.
    pub(crate) async fn ask(
        &self,
        federation: &Federation,
        server: &ServerName,
        limit: Option<UInt>,
        since: Option<String>,
        filter: &Filter,
        network: &RoomNetwork,
    ) -> Result<directory::Listing, FederationError> {
        let mut body = json!({"filter": filter});
        if let Some(limit) = limit {
            body["limit"] = json!(limit);
        }
        if let Some(since) = since {
            body["since"] = json!(since);
        }
        match network {
            RoomNetwork::Matrix => {}
            RoomNetwork::All => body["include_all_networks"] = json!(true),
            RoomNetwork::ThirdParty(id) => body["third_party_instance_id"] = json!(id),
            _ => {}
        }
        let (chunk, answer) = self
            .request(federation, server, &body, SERVER_TIMEOUT)
            .await?;
        Ok(directory::Listing {
            chunk,
            next_batch: answer.next_batch,
            prev_batch: answer.prev_batch,
            total: answer.total_room_count_estimate.unwrap_or_default(),
        })
    }

    /// Asks `server` for its rooms and remembers it lists them; its valid entries, at most
    /// [`MAX_ENTRIES_PER_PEER`].
    async fn request(
        &self,
        federation: &Federation,
        server: &ServerName,
        body: &Value,
        within: Duration,
    ) -> Result<(Vec<PublicRoomsChunk>, Answer), FederationError> {
        let limits = RequestOptions {
            connect_timeout: within,
            request_timeout: within,
            max_response_body: MAX_ANSWER_BYTES,
        };
        let asking = federation.request_with::<Answer>(
            server,
            Method::POST,
            "/_matrix/federation/v1/publicRooms",
            Some(body),
            Some(limits),
        );
        // The connection and the request each get `within`; together no more either.
        let mut answer = tokio::time::timeout(within, asking).await.map_err(|_| {
            FederationError::BadResponse {
                server: server.to_owned(),
                reason: format!("no answer within {within:?}"),
            }
        })??;
        let rooms: Vec<PublicRoomsChunk> = std::mem::take(&mut answer.chunk)
            .into_iter()
            .filter_map(|entry| serde_json::from_value(entry).ok())
            .take(MAX_ENTRIES_PER_PEER)
            .collect();
        self.remember(server, &rooms);
        Ok((rooms, answer))
    }

    fn remember(&self, server: &ServerName, rooms: &[PublicRoomsChunk]) {
        let mut listed_by = lock(&self.inner.listed_by);
        for room in rooms {
            let (when, servers) = listed_by
                .entry(room.room_id.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            *when = Instant::now();
            if !servers.iter().any(|s| s == server) {
                servers.insert(0, server.to_owned());
            }
        }
        if listed_by.len() > MAX_LISTED {
            listed_by.retain(|_, (when, _)| when.elapsed() < LISTED_FOR);
        }
        if listed_by.len() > MAX_LISTED {
            listed_by.clear();
        }
    }

    /// The servers that listed `room_id` lately, most recent first: where to join it through.
    pub(crate) fn servers_listing(&self, room_id: &RoomId) -> Vec<OwnedServerName> {
        lock(&self.inner.listed_by)
            .get(room_id)
            .filter(|(when, _)| when.elapsed() < LISTED_FOR)
            .map(|(_, servers)| servers.clone())
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
