//! The node's side of the overlay: starts the transport with the peer book from the store,
//! serves the federation router over it, and keeps the peer book up to date from the
//! transport's events, so a restarted node redials the peers it knew at once.

use std::collections::HashMap;
use std::time::Duration;

use hyphae_p2p::{Identity, Multiaddr, PeerId, Transport, TransportConfig, TransportEvent};
use hyphae_store::Store;
use tokio::sync::broadcast::error::RecvError;

use crate::error::NodeError;

/// Peers redialled at start, most recently seen first: old entries from other networks must
/// not turn a start into a dial storm.
const REDIAL_AT_START: usize = 64;
/// Addresses per peer handed to the transport (it keeps as many).
const ADDRESSES_PER_PEER: usize = 16;
/// Peer book changes are written together, at most this long after the first one.
const FLUSH_AFTER: Duration = Duration::from_secs(2);

/// Starts the transport, serves the federation router on it, then redials the peers the
/// store remembers (after the router is in place, so no early peer is answered 503).
pub(crate) async fn start_transport(
    config: TransportConfig,
    identity: &Identity,
    store: &Store,
    federation: axum::Router,
) -> Result<Transport, NodeError> {
    let transport = Transport::start(config, identity)
        .await
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    transport.serve(federation);
    tokio::spawn(keep_peer_book(transport.events(), store.clone()));
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
    Ok(transport)
}

/// Writes what the transport learns of peers into the store, a batch at a time. Ends when the
/// transport does (its event channel closes with the swarm task).
async fn keep_peer_book(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    store: Store,
) {
    // peer -> (addresses, how found), merged until the next flush.
    let mut pending: HashMap<PeerId, (Vec<Multiaddr>, String)> = HashMap::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let event = match flush_at {
            Some(deadline) => match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    flush(&store, &mut pending).await;
                    flush_at = None;
                    continue;
                }
            },
            None => events.recv().await,
        };
        match event {
            // Addresses come from discovery (mDNS, the DHT, the peer's own identify); the
            // address of a connection may be an inbound, ephemeral one and is not kept.
            Ok(TransportEvent::PeerDiscovered { peer, addrs, how }) => {
                let entry = pending
                    .entry(peer)
                    .or_insert_with(|| (Vec::new(), String::new()));
                for addr in addrs {
                    if !entry.0.contains(&addr) {
                        entry.0.push(addr);
                    }
                }
                entry.1 = format!("{how:?}").to_lowercase();
                flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_AFTER);
            }
            Ok(_) => {}
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
