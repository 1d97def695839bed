//! The subscribing device's side: subscribing and unsubscribing (`Node::subscribe_backup`…),
//! sending the replica from the outbox (called by the destination's outbox sender), and waking
//! that sender when new PDUs are stored.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use hyphae_p2p::{Multiaddr, Transport};
use hyphae_store::{BackupSubscription, OutboxEntry, Store};
use ruma::{OwnedServerName, ServerName};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::tag::{ReplicaKey, Status};
use super::{BackupError, REPLICA_PATH, SUBSCRIBE_PATH, UNSUBSCRIBE_PATH};
use crate::federation::Federation;
use crate::node::Node;

/// How often the waker looks at the replica queue even with nothing new in the stream
/// (outliers are stored without a stream position).
const IDLE_WAKE: Duration = Duration::from_secs(30);

/// Where this device's backup stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// The backup server's name.
    pub server: String,
    pub addresses: Vec<String>,
    /// Bytes of this device's PDUs the server says it keeps.
    pub bytes_acknowledged: i64,
    pub pdus_acknowledged: i64,
    /// PDUs the server refused (quota, bad signature); they are not sent again.
    pub pdus_refused: i64,
    /// PDUs still to send.
    pub pending: i64,
    /// The server's last refusal, if the last batch had one.
    pub last_error: Option<String>,
}

impl Node {
    /// Subscribes this device to the backup server `server` (its name: the hex key), dialled at
    /// `addrs`, with the token its operator gave; then queues every PDU this device holds for
    /// it, and from then on every new one.
    pub async fn subscribe_backup(
        &self,
        server: &str,
        addrs: Vec<Multiaddr>,
        token: &str,
    ) -> Result<(), BackupError> {
        let name = OwnedServerName::try_from(server)
            .map_err(|e| BackupError::BadServerName(server.to_owned(), e.to_string()))?;
        let peer = hyphae_p2p::peer_id_for_server_name(server)
            .map_err(|e| BackupError::BadServerName(server.to_owned(), e.to_string()))?;
        let transport = self.transport().ok_or(BackupError::Offline)?;
        transport
            .dial(peer, addrs.clone())
            .await
            .map_err(|e| BackupError::Unreachable(e.to_string()))?;
        let state = self.app_state();
        let answer: Value = state
            .federation
            .request(
                &name,
                Method::POST,
                SUBSCRIBE_PATH,
                Some(&json!({"token": token})),
            )
            .await?;
        let queued = self
            .store()
            .subscribe_backup(
                server.to_owned(),
                addrs.iter().map(ToString::to_string).collect(),
            )
            .await?;
        tracing::info!(server, queued, quota = %answer["quota_bytes"], "subscribed to a backup server");
        self.backup_target().send_replace(Some(name));
        // A new server has none of the room-key entries.
        if let Some(owner) = &state.owner {
            self.store()
                .reset_backup_keys_on_server(owner.clone())
                .await?;
        }
        let addresses: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        super::mailbox::publish_record(state, Some(transport), Some((server, &addresses))).await;
        // Key backup on already: the identity (sealed with its recovery key) goes there now.
        if let Some(app) = self.app() {
            app.back_up_identity_or_warn().await;
        }
        Ok(())
    }

    /// Ends the subscription: the server deletes everything it kept for this device, and this
    /// device stops sending.
    pub async fn unsubscribe_backup(&self) -> Result<(), BackupError> {
        let subscription = self
            .store()
            .backup_subscription()
            .await?
            .ok_or(BackupError::NotSubscribed)?;
        let name = OwnedServerName::try_from(subscription.server.as_str())
            .map_err(|e| BackupError::BadServerName(subscription.server.clone(), e.to_string()))?;
        let _: Value = self
            .app_state()
            .federation
            .request(&name, Method::POST, UNSUBSCRIBE_PATH, Some(&json!({})))
            .await?;
        self.store().unsubscribe_backup().await?;
        self.backup_target().send_replace(None);
        super::mailbox::publish_record(self.app_state(), self.transport(), None).await;
        tracing::info!(server = %name, "unsubscribed from the backup server");
        Ok(())
    }

    /// Stops using the backup server without telling it, for a server that is gone for good
    /// (`unsubscribe_backup` needs it to answer): nothing more is sent there and this device
    /// names no mailbox any more. What the server kept stays with it until its operator removes
    /// it.
    pub async fn forget_backup(&self) -> Result<(), BackupError> {
        let subscription = self
            .store()
            .backup_subscription()
            .await?
            .ok_or(BackupError::NotSubscribed)?;
        self.store().unsubscribe_backup().await?;
        self.backup_target().send_replace(None);
        let dropped = self
            .store()
            .outbox_drop_destination(subscription.server.clone())
            .await?;
        super::mailbox::publish_record(self.app_state(), self.transport(), None).await;
        tracing::warn!(server = %subscription.server, dropped, "forgot the backup server without its answer; it keeps its copy");
        Ok(())
    }

    /// The backup servers announced in the DHT (their server names), as far as this node can
    /// see; subscribing to one still takes a token from its operator.
    pub async fn find_backup_servers(&self) -> Result<Vec<String>, BackupError> {
        let transport = self.transport().ok_or(BackupError::Offline)?;
        let peers = transport
            .providers(super::ANNOUNCE_KEY.to_vec())
            .await
            .map_err(|e| BackupError::Unreachable(e.to_string()))?;
        Ok(peers
            .iter()
            .filter_map(|peer| hyphae_p2p::server_name_of_peer(peer).ok())
            .collect())
    }

    /// The subscription and how far the replica has come; `None` when not subscribed.
    pub async fn backup_status(&self) -> Result<Option<BackupStatus>, BackupError> {
        Ok(self
            .store()
            .backup_subscription()
            .await?
            .map(|s| BackupStatus {
                server: s.server,
                addresses: s.addresses,
                bytes_acknowledged: s.bytes_acked,
                pdus_acknowledged: s.pdus_acked,
                pdus_refused: s.pdus_refused,
                pending: s.pending,
                last_error: s.last_error,
            }))
    }

    /// A page of this device's replica as the backup server keeps it (in the order it received
    /// them), of one room or all: the PDUs and where the next page starts.
    pub async fn backup_replica(
        &self,
        room_id: Option<&str>,
        from: i64,
        limit: u32,
    ) -> Result<(Vec<Value>, Option<i64>), BackupError> {
        let subscription = self
            .store()
            .backup_subscription()
            .await?
            .ok_or(BackupError::NotSubscribed)?;
        let name = OwnedServerName::try_from(subscription.server.as_str())
            .map_err(|e| BackupError::BadServerName(subscription.server.clone(), e.to_string()))?;
        let mut path = format!("{REPLICA_PATH}?from={from}&limit={limit}");
        if let Some(room_id) = room_id {
            path.push_str(&format!("&room_id={}", crate::rooms::urlencode(room_id)));
        }
        let answer: Value = self
            .app_state()
            .federation
            .request(&name, Method::GET, &path, None)
            .await?;
        let pdus = answer["pdus"].as_array().cloned().unwrap_or_default();
        Ok((pdus, answer["next_from"].as_i64()))
    }
}

/// Keeps the backup server's sender woken while PDUs are stored. Ends when `target`'s sender
/// (the node) goes.
pub(crate) fn spawn_waker(
    store: &Store,
    federation: Federation,
    mut target: watch::Receiver<Option<OwnedServerName>>,
) {
    let mut stream = store.stream_position();
    tokio::spawn(async move {
        loop {
            let server = target.borrow_and_update().clone();
            if let Some(server) = &server {
                federation.wake(server);
            }
            tokio::select! {
                changed = target.changed() => if changed.is_err() { return },
                changed = stream.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(IDLE_WAKE) => {}
            }
        }
    });
}

/// What came of sending a replica batch.
pub(crate) enum ReplicaSent {
    /// Answered: the entries can leave the outbox (kept or refused for good).
    Done,
    /// Worth trying again later.
    Retry(String),
}

/// Sends a batch of replica entries (event ids) to the backup server, each with the device's
/// tag (`tag.rs`), and records its answer. Refusals (quota, signatures, no longer subscribed)
/// are logged and kept in the status, not retried: the server would refuse them again.
pub(crate) async fn send_replica(
    store: &Store,
    transport: &Transport,
    key: &ReplicaKey,
    destination: &ServerName,
    batch: &[OutboxEntry],
) -> ReplicaSent {
    let ids = batch.iter().map(|e| e.payload.clone()).collect();
    let sources = match store.replica_sources(ids).await {
        Ok(sources) => sources,
        Err(e) => return ReplicaSent::Retry(e.to_string()),
    };
    let mut versions: HashMap<String, Option<String>> = HashMap::new();
    let mut items = Vec::with_capacity(sources.len());
    for source in sources {
        let pdu = source.pdu;
        if !versions.contains_key(&pdu.room_id) {
            let version = match store.room_version(pdu.room_id.clone()).await {
                Ok(version) => version,
                Err(e) => return ReplicaSent::Retry(e.to_string()),
            };
            versions.insert(pdu.room_id.clone(), version);
        }
        // A PDU of a room this device never had the create event of cannot be checked.
        let Some(Some(version)) = versions.get(&pdu.room_id) else {
            tracing::debug!(event_id = %pdu.event_id, "no room version; not replicated");
            continue;
        };
        let (status, state_before) = match pdu.stream_pos {
            None => (Status::Outlier, None),
            Some(position) if position <= 0 => (Status::History, None),
            Some(_) if source.prevs_in_timeline => (Status::Timeline, None),
            Some(_) => match source.state_before {
                Some(state) => (Status::Timeline, Some(state)),
                None => (Status::History, None),
            },
        };
        let tag = key.tag(&pdu.event_id, status, state_before);
        let Ok(raw) = RawValue::from_string(pdu.json) else {
            continue;
        };
        items.push(json!({"room_version": version, "pdu": raw, "tag": tag}));
    }
    if items.is_empty() {
        return ReplicaSent::Done;
    }
    let sent = items.len() as i64;
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri(REPLICA_PATH)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Bytes::from(json!({"pdus": items}).to_string()));
    let request = match request {
        Ok(request) => request,
        Err(e) => return ReplicaSent::Retry(e.to_string()),
    };
    let response = match transport.request(destination.as_str(), request).await {
        Ok(response) => response,
        Err(e) => return ReplicaSent::Retry(e.to_string()),
    };
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return ReplicaSent::Retry(format!("status {status}"));
    }
    let answer: Value = serde_json::from_slice(response.body()).unwrap_or_default();
    let record = if status.is_success() {
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        let refusals: Vec<&Value> = results
            .iter()
            .filter(|r| r.get("errcode").is_some())
            .collect();
        let error = refusals.last().map(|r| {
            format!(
                "{} {}",
                r["errcode"].as_str().unwrap_or("M_UNKNOWN"),
                r["error"].as_str().unwrap_or_default()
            )
        });
        if let Some(error) = &error {
            tracing::warn!(%destination, refused = refusals.len(), %error, "the backup server refused PDUs; not retrying them");
        }
        let refused = refusals.len() as i64;
        store.backup_acknowledged(
            destination.to_string(),
            answer["bytes_used"].as_i64(),
            sent - refused,
            refused,
            error,
        )
    } else {
        let error = format!(
            "{} {}",
            answer["errcode"].as_str().unwrap_or("M_UNKNOWN"),
            answer["error"].as_str().unwrap_or_default()
        );
        tracing::warn!(%destination, %status, %error, "the backup server refused a replica batch; dropping it");
        store.backup_acknowledged(destination.to_string(), None, 0, sent, Some(error))
    };
    if let Err(e) = record.await {
        tracing::warn!(%destination, error = %e, "cannot record the backup server's answer");
    }
    ReplicaSent::Done
}

/// At start, for a subscribed device: the backup server's addresses go to the transport (for
/// its sender), then it is dialled (so the mailbox pushes what it holds at once) and the
/// mailbox record is signed and spread again.
pub(crate) async fn resume(
    state: &crate::node::AppState,
    transport: Option<&Transport>,
    subscription: BackupSubscription,
) {
    let Some(transport) = transport else {
        return;
    };
    let peer = hyphae_p2p::peer_id_for_server_name(&subscription.server).ok();
    let addrs: Vec<Multiaddr> = subscription
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    if let Some(peer) = peer {
        for addr in &addrs {
            let _ = transport.add_address(peer, addr.clone()).await;
        }
    }
    let (state, transport) = (state.clone(), transport.clone());
    tokio::spawn(async move {
        if let Some(peer) = peer
            && let Err(e) = transport.dial(peer, addrs).await
        {
            tracing::info!(server = %subscription.server, error = %e, "backup server not reachable now");
        }
        super::mailbox::publish_record(
            &state,
            Some(&transport),
            Some((&subscription.server, &subscription.addresses)),
        )
        .await;
        // Entries a stop interrupted the sending of.
        if let Err(e) = super::push_room_keys(&state).await {
            tracing::info!(error = %e, "room keys not sent to the backup server yet");
        }
    });
}
