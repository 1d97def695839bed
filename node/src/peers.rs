//! The node's side of the overlay: starts the transport with the peer book from the store,
//! serves the federation router over it, and keeps the peer book up to date from the
//! transport's events, so a restarted node redials the peers it knew at once.

use std::collections::HashMap;
use std::time::Duration;

use hyphae_p2p::{Identity, Multiaddr, PeerId, Transport, TransportConfig, TransportEvent};
use hyphae_store::Store;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::oneshot;

use crate::error::NodeError;

/// Peers redialled at start, most recently seen first: old entries from other networks must
/// not turn a start into a dial storm.
const REDIAL_AT_START: usize = 64;
/// Addresses per peer handed to the transport (it keeps as many).
const ADDRESSES_PER_PEER: usize = 16;
/// Peer book changes are written together, at most this long after the first one...
const FLUSH_AFTER: Duration = Duration::from_secs(2);
/// ...or as soon as this many peers wait to be written (peer ids cost nothing to make up).
const FLUSH_AT: usize = 256;

/// The task that keeps the peer book. The node finishes it before closing the store: what
/// the transport learnt in its last moments must be written, or a node stopped soon after
/// meeting a peer would not redial it when it starts again.
pub(crate) struct PeerBookWriter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerBookWriter {
    /// Writes what is pending (call it once the transport has stopped) and ends the task.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the peer book task failed");
        }
    }
}

/// Starts the transport, serves the federation router on it, then redials the peers the
/// store remembers (after the router is in place, so no early peer is answered 503). The
/// transport caps request bodies per federation route (limits `config` sets itself come after,
/// and so win for the same prefix) and keeps only DHT records the node can vouch for.
pub(crate) async fn start_transport(
    mut config: TransportConfig,
    identity: &Identity,
    store: &Store,
    federation: axum::Router,
) -> Result<(Transport, PeerBookWriter), NodeError> {
    let mut body_limits = crate::federation::body_limits();
    body_limits.append(&mut config.http.body_limits);
    config.http.body_limits = body_limits;
    if config.record_policy.is_none() {
        config.record_policy = Some(crate::backup::record_policy(identity.server_name()));
    }
    let transport = Transport::start(config, identity)
        .await
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    transport.serve(federation);
    let (stop, stopped) = oneshot::channel();
    let writer = PeerBookWriter {
        stop,
        task: tokio::spawn(keep_peer_book(transport.events(), store.clone(), stopped)),
    };
    for known in store.known_peers().await?.into_iter().take(REDIAL_AT_START) {
        let Ok(peer) = known.peer_id.parse::<PeerId>() else {
            tracing::warn!(peer = %known.peer_id, "skipping a malformed peer id in the peer book");
            continue;
        };
        // The store lists addresses newest first; the transport keeps the last ones it is given.
        let mut addrs: Vec<Multiaddr> = known
            .addresses
            .iter()
            .take(ADDRESSES_PER_PEER)
            .filter_map(|a| a.parse().ok())
            .collect();
        addrs.reverse();
        if addrs.is_empty() {
            continue;
        }
        let transport = transport.clone();
        tokio::spawn(async move {
            // Bounded by the dial timeout; a peer that is away now is found again later by
            // discovery.
            if let Err(e) = transport.dial(peer, addrs).await {
                tracing::debug!(%peer, error = %e, "a known peer did not answer");
            }
        });
    }
    Ok((transport, writer))
}

/// Writes what the transport learns of peers into the store, a batch at a time. Ends when told
/// to (or when the transport's event channel closes), after writing what is pending.
async fn keep_peer_book(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    store: Store,
    mut stop: oneshot::Receiver<()>,
) {
    // peer -> (addresses, how found), merged until the next flush.
    let mut pending: HashMap<PeerId, (Vec<Multiaddr>, String)> = HashMap::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            // A dropped sender (the node dropped without `shutdown`) ends the task too.
            _ = &mut stop => {
                // The transport has stopped: what it said last is still in the channel.
                loop {
                    match events.try_recv() {
                        Ok(event) => {
                            note(&mut pending, event);
                        }
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                flush(&store, &mut pending).await;
                return;
            }
            _ = sleep_until_some(flush_at) => {
                flush(&store, &mut pending).await;
                flush_at = None;
                continue;
            }
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                if note(&mut pending, event) {
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_AFTER);
                }
                if pending.len() >= FLUSH_AT {
                    flush(&store, &mut pending).await;
                    flush_at = None;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "peer book fell behind the transport's events");
            }
            Err(RecvError::Closed) => {
                flush(&store, &mut pending).await;
                return;
            }
        }
    }
}

/// Merges what `event` says of a peer into `pending`; whether it said anything.
fn note(pending: &mut HashMap<PeerId, (Vec<Multiaddr>, String)>, event: TransportEvent) -> bool {
    match event {
        // Addresses come from discovery (mDNS, the DHT, the peer's own identify); the
        // address of a connection may be an inbound, ephemeral one and is not kept.
        TransportEvent::PeerDiscovered { peer, addrs, how } => {
            let entry = pending
                .entry(peer)
                .or_insert_with(|| (Vec::new(), String::new()));
            for addr in addrs {
                if !entry.0.contains(&addr) {
                    entry.0.push(addr);
                }
            }
            entry.1 = format!("{how:?}").to_lowercase();
            true
        }
        _ => false,
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes the pending changes concurrently, so the store's writer commits them together.
async fn flush(store: &Store, pending: &mut HashMap<PeerId, (Vec<Multiaddr>, String)>) {
    let writes = pending.drain().map(|(peer, (addrs, how))| async move {
        let addrs = addrs.iter().map(ToString::to_string).collect();
        if let Err(e) = store.remember_peer(peer.to_string(), addrs, how).await {
            tracing::warn!(%peer, error = %e, "could not update the peer book");
        }
    });
    futures::future::join_all(writes).await;
}
