//! The swarm's composed behaviour: who may connect (connection limits, the per-IP gate), HTTP
//! streams, identify, ping, Kademlia, relay (client, and server when configured), dcutr and
//! AutoNAT.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, identify, identity, kad, ping, relay,
};

use crate::config::TransportConfig;
use crate::{gate, streams};

/// Our own DHT: never the public IPFS one (`/ipfs/kad/1.0.0`, kad's default).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hyphae/kad/1");
const IDENTIFY_VERSION: &str = "/hyphae/1";

/// Connections one peer may hold at once, and incoming connections overall: a peer must not be
/// able to tie up memory with connections (each buffers streams).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_ESTABLISHED_INCOMING: u32 = 256;
/// Streams a peer may open at once on one connection (yamux's default is 512, QUIC's 256).
/// Each can make the muxer buffer up to its window (256 KiB for yamux) before it is read; the
/// HTTP server closes at once the streams of a peer or an address past their caps, so this is
/// the backstop. A yamux peer that opens more has its connection closed, so it stays well
/// above what this node opens itself (32 requests per peer, kad, identify, ping).
pub(crate) const MAX_STREAMS_PER_CONNECTION: usize = 128;
/// QUIC's flow control: what a peer may have sent unread on one stream (yamux's fixed window)
/// and on one whole connection (libp2p's defaults are 10 MB and 15 MB, which a few strangers
/// holding requests unread would turn into hundreds of MB). Still 5 MB/s at a 100 ms round
/// trip.
pub(crate) const QUIC_STREAM_WINDOW: u32 = 256 * 1024;
pub(crate) const QUIC_CONNECTION_WINDOW: u32 = 512 * 1024;

/// How long one DHT query (lookup, put, provide) may run, and the upper bound on a
/// `put_record` or `start_providing` call.
pub(crate) const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest DHT record value we store or publish (a mailbox record is a small signed JSON
/// blob). [`crate::Transport::put_record`] refuses larger ones; the store refuses them from peers.
pub const MAX_RECORD_VALUE: usize = 16 * 1024;
/// The longest DHT key we accept from callers (`/hyphae/mailbox/<server name>` is far shorter).
pub const MAX_RECORD_KEY: usize = 1024;
/// Records (others' and our own) and provider keys held at once. With the value cap this bounds
/// what peers can make us keep to about 17 MiB of records; a mesh stores each record on its 20
/// closest peers, so a node normally holds a few dozen.
const MAX_STORED_RECORDS: usize = 1024;
const MAX_PROVIDER_KEYS: usize = 1024;
/// kad's default packet limit (16 KiB) is smaller than a full record plus its key, publisher and
/// the closer peers a GET_VALUE answer carries: a value near the limit could not be sent at all.
const MAX_KAD_PACKET: usize = 64 * 1024;
/// Records expire a day after their last (re)publication: a device that changed its mailbox
/// record, or left, stops being served stale versions after at most a day.
const RECORD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The publisher re-sends its records hourly (kad's default is 22 h, against a 48 h TTL): on a
/// small or offline mesh the closest peers change often, and a peer that joins (or comes back)
/// gets the current record, replacing an old version it may hold, within the hour.
const RECORD_PUBLICATION_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Holders re-replicate records to the current closest peers (kad's default): keeps a record
/// alive while its publisher is offline, until its TTL.
const RECORD_REPLICATION_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Providers (backup servers) are always-on and re-announce hourly; a provider that went away
/// drops out after a few missed announcements instead of kad's 48 h, so callers are not sent to
/// dead servers for days.
const PROVIDER_TTL: Duration = Duration::from_secs(6 * 60 * 60);
const PROVIDER_PUBLICATION_INTERVAL: Duration = Duration::from_secs(60 * 60);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub gate: gate::Behaviour,
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
        kad_config
            .set_query_timeout(KAD_QUERY_TIMEOUT)
            .set_max_packet_size(MAX_KAD_PACKET)
            .set_record_ttl(Some(RECORD_TTL))
            .set_publication_interval(Some(RECORD_PUBLICATION_INTERVAL))
            .set_replication_interval(Some(RECORD_REPLICATION_INTERVAL))
            .set_provider_record_ttl(Some(PROVIDER_TTL))
            .set_provider_publication_interval(Some(PROVIDER_PUBLICATION_INTERVAL))
            // Every record and provider announcement from a peer comes to the swarm task,
            // which stores it only if it may (see `records`).
            .set_record_filtering(kad::StoreInserts::FilterBoth);
        let store = kad::store::MemoryStore::with_config(
            peer,
            kad::store::MemoryStoreConfig {
                max_records: MAX_STORED_RECORDS,
                // The store refuses values of `max_value_bytes` and more.
                max_value_bytes: MAX_RECORD_VALUE + 1,
                max_providers_per_key: kad::K_VALUE.get(),
                max_provided_keys: MAX_PROVIDER_KEYS,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer, store, kad_config);
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
            gate: gate::Behaviour::new(config.max_incoming_per_ip),
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

/// What this node relays for others, whoever they are (libp2p's relay cannot tell a subscriber
/// from a stranger): enough for federation between peers that only meet through it (a
/// transaction is at most 4 MiB; a backup server relays its subscribers' replica and mail), not
/// enough to make a phone a free tunnel. libp2p's defaults (2 minutes, 128 KiB) are too little
/// for a transaction; the old 1 h / 256 MiB let a stranger spend a phone's data plan. A circuit
/// that ends is simply dialled again by the next request.
/// - 16 circuits at once (4 per peer), each at most 10 minutes and 32 MiB: at worst 512 MiB
///   relayed per 10 minutes, when someone actually uses them;
/// - 64 reservations (4 per peer) of an hour, and libp2p's rate limits on new reservations and
///   circuits per peer and per IP address.
fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: 64,
        max_reservations_per_peer: 4,
        max_circuits: 16,
        max_circuits_per_peer: 4,
        max_circuit_duration: Duration::from_secs(10 * 60),
        max_circuit_bytes: 32 * 1024 * 1024,
        ..relay::Config::default()
    }
}
