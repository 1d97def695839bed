//! Other people as this node knows them: profiles of other servers' users (asked of their
//! servers and cached), the owners of the nodes nearby, and presence. The Client-Server
//! handlers are `client_api::{profile, user_directory, presence}`.

mod nearby;
pub(crate) mod presence;
pub(crate) mod profiles;

#[cfg(test)]
mod directory_tests;
#[cfg(test)]
pub(crate) mod presence_tests;
#[cfg(test)]
mod profile_tests;

use std::collections::HashSet;
use std::sync::Arc;

use hyphae_p2p::{Transport, TransportEvent, WeakTransport, server_name_of_peer};
use hyphae_store::{Store, StoreError};
use ruma::OwnedServerName;
use tokio::sync::broadcast::error::RecvError;

use crate::federation::Federation;
pub(crate) use presence::Presence;

#[derive(Clone)]
pub(crate) struct People {
    pub(crate) presence: Presence,
    pub(crate) profiles: Arc<profiles::ProfileCache>,
    pub(crate) nearby: Arc<nearby::Nearby>,
}

impl People {
    pub(crate) async fn start(
        store: &Store,
        federation: &Federation,
        server_name: OwnedServerName,
    ) -> Result<People, StoreError> {
        Ok(People {
            presence: Presence::start(store.clone(), federation.clone(), server_name).await?,
            profiles: Arc::default(),
            nearby: Arc::default(),
        })
    }

    /// Follows the transport's connections: the users of a server whose node connects show
    /// online, and offline once it disconnects.
    pub(crate) async fn attach(&self, transport: &Transport) {
        // Subscribed before listing who is connected, so no connection falls in between.
        let events = transport.events();
        for peer in transport.connected_peers().await.unwrap_or_default() {
            if let Some(server) = server_of(&peer) {
                self.presence.server_connected(server);
            }
        }
        tokio::spawn(follow(events, self.presence.clone(), transport.downgrade()));
    }
}

fn server_of(peer: &hyphae_p2p::PeerId) -> Option<OwnedServerName> {
    server_name_of_peer(peer)
        .ok()
        .and_then(|name| OwnedServerName::try_from(name).ok())
}

/// Ends when the transport stops.
async fn follow(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    presence: Presence,
    transport: WeakTransport,
) {
    loop {
        match events.recv().await {
            Ok(TransportEvent::Connected { peer, .. }) => {
                if let Some(server) = server_of(&peer) {
                    presence.server_connected(server);
                }
            }
            Ok(TransportEvent::Disconnected { peer }) => {
                if let Some(server) = server_of(&peer) {
                    presence.server_disconnected(server);
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "presence fell behind the transport's events");
                if let Some(transport) = transport.upgrade() {
                    resync(&presence, &transport).await;
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Takes who is connected from the transport, after missing some of its events.
async fn resync(presence: &Presence, transport: &Transport) {
    let connected: HashSet<OwnedServerName> = transport
        .connected_peers()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(server_of)
        .collect();
    let known: HashSet<OwnedServerName> = presence.connected_servers().into_iter().collect();
    for server in known.difference(&connected) {
        presence.server_disconnected(server.clone());
    }
    for server in connected.difference(&known) {
        presence.server_connected(server.clone());
    }
}

/// Milliseconds since the Unix epoch, as Matrix counts time.
pub(crate) fn now_ms() -> i64 {
    i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0)
}
