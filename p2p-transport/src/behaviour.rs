//! The swarm's composed behaviour: HTTP streams, identify, ping, Kademlia, relay (client, and
//! server when configured), dcutr and AutoNAT.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, identify, identity, kad, ping, relay,
};

use crate::config::TransportConfig;
use crate::streams;

/// Our own DHT: never the public IPFS one (`/ipfs/kad/1.0.0`, kad's default).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hyphae/kad/1");
const IDENTIFY_VERSION: &str = "/hyphae/1";

/// Connections one peer may hold at once, and incoming connections overall: a peer must not be
/// able to tie up memory with connections (each buffers streams).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_ESTABLISHED_INCOMING: u32 = 256;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub streams: streams::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::Behaviour,
}

impl Behaviour {
    pub fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        config: &TransportConfig,
    ) -> Behaviour {
        let peer = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(20));
        let mut kad =
            kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
        // Left on automatic, a node serves the DHT only once AutoNAT confirms a public address,
        // which never happens on a LAN, offline, or behind NAT: then nobody can find anybody.
        kad.set_mode(Some(kad::Mode::Server));
        for (peer, addr) in &config.bootstrap {
            kad.add_address(peer, addr.clone());
        }
        Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING)),
            ),
            streams: streams::Behaviour::default(),
            // Pushing new listen addresses tells connected peers (and through them the DHT)
            // at once of a relay circuit reserved after they identified us; without it they
            // learn it at the next periodic identify, minutes later, and the DHT finds the
            // node only at addresses that cannot reach it.
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_owned(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::default(),
            kad,
            relay_client,
            relay_server: config
                .relay_server
                .then(|| relay::Behaviour::new(peer, relay_config()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer),
            autonat: autonat::Behaviour::new(peer, autonat::Config::default()),
        }
    }
}

/// libp2p's defaults cap a circuit at 128 KiB and 2 minutes, too little for federation between
/// peers that can only meet through this relay (a backup server relays for its subscribers).
fn relay_config() -> relay::Config {
    relay::Config {
        max_circuit_duration: Duration::from_secs(60 * 60),
        max_circuit_bytes: 256 * 1024 * 1024,
        ..relay::Config::default()
    }
}
