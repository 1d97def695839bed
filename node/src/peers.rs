//! The node's side of the overlay: starts the transport with the peer book from the store,
//! serves the federation router over it, and keeps the peer book up to date from the
//! transport's events, so a restarted node redials the peers it knew at once.

use hyphae_p2p::{Identity, Multiaddr, PeerId, Transport, TransportConfig, TransportEvent};
use hyphae_store::Store;
use tokio::sync::broadcast::error::RecvError;

use crate::error::NodeError;

/// Starts the transport, handing it the peers the store remembers.
pub(crate) async fn start_transport(
    mut config: TransportConfig,
    identity: &Identity,
    store: &Store,
    federation: axum::Router,
) -> Result<Transport, NodeError> {
    for known in store.known_peers().await? {
        let Ok(peer) = known.peer_id.parse::<PeerId>() else {
            tracing::warn!(peer = %known.peer_id, "skipping a malformed peer id in the peer book");
            continue;
        };
        let addrs: Vec<Multiaddr> = known
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if !addrs.is_empty() {
            config.known_peers.push((peer, addrs));
        }
    }
    let transport = Transport::start(config, identity)
        .await
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    transport.serve(federation);
    tokio::spawn(keep_peer_book(transport.events(), store.clone()));
    Ok(transport)
}

/// Writes what the transport learns of peers into the store. Ends when the transport does
/// (its event channel closes with the swarm task).
async fn keep_peer_book(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    store: Store,
) {
    loop {
        let (peer, addrs, how) = match events.recv().await {
            Ok(TransportEvent::PeerDiscovered { peer, addrs, how }) => {
                (peer, addrs, format!("{how:?}").to_lowercase())
            }
            Ok(TransportEvent::Connected { peer, addr }) => {
                // A relayed or inbound address is not one to dial back; remember the peer only.
                let dialable = !addr.to_string().contains("p2p-circuit");
                (
                    peer,
                    if dialable { vec![addr] } else { Vec::new() },
                    "connected".into(),
                )
            }
            Ok(_) => continue,
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "peer book fell behind the transport's events");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let addrs = addrs.iter().map(ToString::to_string).collect();
        if let Err(e) = store.remember_peer(peer.to_string(), addrs, how).await {
            tracing::warn!(%peer, error = %e, "could not update the peer book");
        }
    }
}
