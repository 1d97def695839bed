//! Who may hold a connection: at most a few incoming connections per IP address (so one host
//! cannot take every slot with made-up peer ids), and never a peer whose ed25519 key is weak
//! (a small-order point, for which anyone can make signatures that verify).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Denied {
    #[error("{ip} already holds {limit} incoming connections")]
    TooManyFromIp { ip: IpAddr, limit: u32 },
    #[error("peer {0} has a weak key")]
    WeakKey(PeerId),
}

pub(crate) struct Behaviour {
    max_per_ip: Option<u32>,
    /// Incoming connections, pending or established, by the IP address they come from.
    incoming: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, u32>,
}

impl Behaviour {
    pub fn new(max_per_ip: Option<u32>) -> Behaviour {
        Behaviour {
            max_per_ip,
            incoming: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    fn forget(&mut self, connection: ConnectionId) {
        if let Some(ip) = self.incoming.remove(&connection)
            && let Some(count) = self.per_ip.get_mut(&ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// The IP address a direct connection comes from; none for a relayed one (the relay's own
/// limits bound those).
fn direct_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

fn check_key(peer: PeerId) -> Result<(), ConnectionDenied> {
    if crate::identity::is_weak_peer(&peer) {
        return Err(ConnectionDenied::new(Denied::WeakKey(peer)));
    }
    Ok(())
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let (Some(limit), Some(ip)) = (self.max_per_ip, direct_ip(remote)) else {
            return Ok(());
        };
        let count = self.per_ip.entry(ip).or_default();
        if *count >= limit {
            return Err(ConnectionDenied::new(Denied::TooManyFromIp { ip, limit }));
        }
        *count += 1;
        self.incoming.insert(connection, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Err(denied) = check_key(peer) {
            self.forget(connection);
            return Err(denied);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        check_key(peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(closed) => self.forget(closed.connection_id),
            // Also when another behaviour denied a connection this one let through.
            FromSwarm::ListenFailure(failure) => self.forget(failure.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Identity, Transport, TransportConfig};

    /// A transport listening (and so dialling from) `ip` over QUIC, with `max_per_ip`.
    async fn on(ip: &str, max_per_ip: Option<u32>) -> (Transport, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let config = TransportConfig {
            listen: vec![format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap()],
            max_incoming_per_ip: max_per_ip,
            dial_timeout: Duration::from_secs(3),
            ..TransportConfig::loopback()
        };
        (Transport::start(config, &identity).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn one_address_holds_only_so_many_incoming_connections() {
        let (node, _dir) = on("127.0.0.1", Some(2)).await;
        let addrs = node.listen_addrs().await.unwrap();
        let dial = |from: Transport| {
            let (peer, addrs) = (node.local_peer_id(), addrs.clone());
            async move { from.dial(peer, addrs).await }
        };
        // Three peer ids on one host: the third is refused.
        let mut sybils = Vec::new();
        for _ in 0..3 {
            sybils.push(on("127.0.0.2", None).await);
        }
        dial(sybils[0].0.clone()).await.unwrap();
        dial(sybils[1].0.clone()).await.unwrap();
        assert!(dial(sybils[2].0.clone()).await.is_err());
        // Another host is not held up by them.
        let (other, _other_dir) = on("127.0.0.3", None).await;
        dial(other.clone()).await.unwrap();
        // When one of the host's connections goes, another may come.
        sybils[0].0.shutdown().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        dial(sybils[2].0.clone()).await.unwrap();
    }
}
