//! The swarm's composed behaviour: HTTP streams, identify, ping, Kademlia, relay (client, and
//! server when configured), dcutr and AutoNAT.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, autonat, dcutr, identify, identity, kad, ping, relay};

use crate::config::TransportConfig;
use crate::streams;

/// Our own DHT: never the public IPFS one (`/ipfs/kad/1.0.0`, kad's default).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hyphae/kad/1");
const IDENTIFY_VERSION: &str = "/hyphae/1";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
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
            streams: streams::Behaviour::default(),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_VERSION.to_owned(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            kad,
            relay_client,
            relay_server: config
                .relay_server
                .then(|| relay::Behaviour::new(peer, relay::Config::default()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer),
            autonat: autonat::Behaviour::new(peer, autonat::Config::default()),
        }
    }
}
