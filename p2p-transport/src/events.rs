//! What the transport tells the node: peers found, connected, gone, and changes of its own
//! addresses and reachability. The node keeps its peer book from these.

use libp2p::{Multiaddr, PeerId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A peer and addresses to reach it were learnt.
    PeerDiscovered {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        how: Discovery,
    },
    /// The first connection to a peer is up; `addr` is the remote address it uses.
    Connected { peer: PeerId, addr: Multiaddr },
    /// The last connection to a peer closed.
    Disconnected { peer: PeerId },
    /// A discovery mechanism says the peer went away (mDNS goodbye or expiry).
    PeerLost { peer: PeerId, how: Discovery },
    /// AutoNAT's view of whether others can dial us changed.
    ReachabilityChanged { reachability: Reachability },
    /// A listener bound a new address.
    ListenAddr { addr: Multiaddr },
    /// A listener address went away (interface down, listener closed).
    ListenAddrExpired { addr: Multiaddr },
    /// A relay accepted our reservation: peers can reach us through it.
    RelayReservation { relay: PeerId },
}

/// How a peer was learnt of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discovery {
    /// DNS-SD on the local network.
    Mdns,
    /// The Kademlia DHT (routing table or a lookup).
    Dht,
    /// The peer told us its listen addresses (identify) over a connection.
    Identify,
    /// The node dialled the peer at addresses it was given (a link, a QR code, the CLI).
    Dialled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Others dialled us back on this address.
    Public(Multiaddr),
    /// Behind NAT or a firewall: only reachable through a relay.
    Private,
    Unknown,
}
