//! What the node tells the transport at start: where to listen, how to find peers, which
//! services to offer, who may connect, and the limits and timeouts of HTTP over libp2p streams.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::records::RecordPolicy;

/// Everything [`crate::Transport::start`] needs besides the identity.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Multiaddrs to listen on; QUIC v1 and TCP on every interface by default.
    pub listen: Vec<Multiaddr>,
    /// LAN discovery with standard DNS-SD.
    pub mdns: MdnsConfig,
    /// Kademlia seeds: peer id and one address each.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Addresses others can reach this node at (a server's public address), announced to
    /// peers through identify and the DHT.
    pub external_addrs: Vec<Multiaddr>,
    /// Serve as a circuit relay v2 for others (a backup server or a well-connected node).
    /// libp2p only offers the relay on a node with external addresses: with none configured,
    /// the listen addresses are announced as such.
    pub relay_server: bool,
    /// How many relays to hold a reservation on by itself: connected peers that offer the relay
    /// (identify lists the hop protocol) are asked, in the order they identify, and a lost
    /// reservation is replaced by another candidate. Through them peers that cannot dial this
    /// node (another network, NAT) reach it; the DHT hands them the circuit address. 0 turns
    /// this off; [`crate::Transport::listen_on`] with a circuit address still reserves.
    pub relay_reservations: usize,
    /// A connection with no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// Dial and upgrade of one connection.
    pub dial_timeout: Duration,
    /// How long [`crate::Transport::get_records`] and [`crate::Transport::providers`] ask the
    /// DHT before answering with what they found. Shorter than kad's own query timeout (20 s,
    /// which bounds puts and announcements): a reader waits on it, and a lookup that stalls on
    /// one unresponsive peer has usually heard from the others long before.
    pub record_lookup_timeout: Duration,
    /// Incoming connections at once from one IP address (relayed ones are the relay's to
    /// bound): a host cannot take every connection slot with made-up peer ids. `None` for no
    /// cap, as on loopback, where every test node shares 127.0.0.1.
    pub max_incoming_per_ip: Option<u32>,
    /// Which DHT records and provider announcements from peers are stored; `None` keeps any
    /// within the size limits. Never a record that replaces one this node published itself.
    pub record_policy: Option<RecordPolicyHandle>,
    pub http: HttpConfig,
}

/// The node's [`RecordPolicy`], shareable and printable with the config.
#[derive(Clone)]
pub struct RecordPolicyHandle(pub Arc<dyn RecordPolicy>);

impl std::fmt::Debug for RecordPolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordPolicy")
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("a valid QUIC multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("a valid TCP multiaddr"),
            ],
            mdns: MdnsConfig::default(),
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            relay_server: false,
            relay_reservations: 2,
            idle_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(10),
            record_lookup_timeout: Duration::from_secs(10),
            max_incoming_per_ip: Some(16),
            record_policy: None,
            http: HttpConfig::default(),
        }
    }
}

impl TransportConfig {
    /// QUIC and TCP on 127.0.0.1 with random ports, mDNS off and no caps per IP address (every
    /// peer is 127.0.0.1): for tests and benchmarks.
    pub fn loopback() -> Self {
        TransportConfig {
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("a valid QUIC multiaddr"),
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .expect("a valid TCP multiaddr"),
            ],
            mdns: MdnsConfig {
                enabled: false,
                ..MdnsConfig::default()
            },
            max_incoming_per_ip: None,
            http: HttpConfig {
                max_streams_per_ip: None,
                ..HttpConfig::default()
            },
            ..TransportConfig::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct MdnsConfig {
    pub enabled: bool,
    /// Interface names to use; empty means every interface (mdns-sd's default, with IPv6 as
    /// `ipv6` says). Naming interfaces keeps multicast off the others.
    pub interfaces: Vec<String>,
    pub ipv6: bool,
    /// How often peers found on mDNS but not connected are asked whether they are still
    /// there (their records would otherwise outlive them by the TTL, over an hour).
    pub verify_interval: Duration,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        MdnsConfig {
            enabled: true,
            interfaces: Vec::new(),
            ipv6: false,
            verify_interval: Duration::from_secs(60),
        }
    }
}

/// Limits of HTTP/1.1 over libp2p streams, both as client and as server. As a server, every
/// stream first waits for a slot (a few per peer, handed out in turn among the peers that
/// wait), then its head must arrive in time, then a body over [`SMALL_BODY`] waits for room in
/// the shared budget of body bytes and must keep arriving at `min_body_rate`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Client: from the call to an open `/http/1.1` stream (dial, DHT lookup, negotiation).
    pub connect_timeout: Duration,
    /// Client: from an open stream to the whole response body.
    pub request_timeout: Duration,
    /// Client: a larger response is refused.
    pub max_response_body: usize,
    /// Client: requests in flight to one peer; more wait their turn here. At most what a
    /// server serves and lets wait per peer (`max_requests_per_peer + max_waiting_per_peer`),
    /// so an honest burst is never refused.
    pub max_requests_to_peer: usize,
    /// Server: a larger request body is answered 413, whatever the path.
    pub max_request_body: usize,
    /// Server: smaller caps for paths starting with a prefix (the longest matching prefix
    /// counts, the later one of equal prefixes); a declared length over the cap is answered
    /// 413 before anything is read.
    pub body_limits: Vec<(String, usize)>,
    /// Server: the whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Server: approximate cap on the request head (hyper checks it between reads).
    pub max_header_size: usize,
    /// Server: one stream (head, body, handler, response) ends after this once it has its
    /// slot, whatever it does. Waiting for the slot is bounded by `slot_wait` instead.
    pub serve_timeout: Duration,
    /// Server: requests handled at once, over all peers.
    pub max_concurrent_requests: usize,
    /// Server: requests of one peer handled at once; its others wait for its own slots.
    pub max_requests_per_peer: usize,
    /// Server: streams of one peer waiting for a slot; more are closed at once, unread.
    pub max_waiting_per_peer: usize,
    /// Server: a stream that got no slot within this is closed unread.
    pub slot_wait: Duration,
    /// Server: streams (served or waiting) from one IP address at once; more are closed at
    /// once, unread. Below `max_concurrent_requests`, so that one host, whatever peer ids it
    /// makes up, leaves slots for everyone else. `None` for no cap (loopback, where every test
    /// node is 127.0.0.1).
    pub max_streams_per_ip: Option<usize>,
    /// Server: bytes of request bodies over [`SMALL_BODY`] held at once (their declared length
    /// is reserved before they are read); a body waits for room (a quarter of the slots at
    /// most wait so), and gets a 503 if none comes within `slot_wait`.
    pub max_body_bytes_in_flight: usize,
    /// Server: after `body_grace`, a body must have arrived at this average rate (bytes per
    /// second) since its head, or the request fails with 408: a peer trickling bytes loses
    /// its slot.
    pub min_body_rate: u64,
    pub body_grace: Duration,
}

/// Request bodies up to this size skip the body budget: how many of them are read at once is
/// bounded by the slots alone.
pub const SMALL_BODY: usize = 64 * 1024;

impl HttpConfig {
    /// The body cap for `path`: the longest matching prefix's, else `max_request_body`.
    pub(crate) fn body_limit(&self, path: &str) -> usize {
        self.body_limits
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.max_request_body, |(_, limit)| *limit)
            .min(self.max_request_body)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            // A /send transaction is at most 50 PDUs of 64 KiB; state and backfill are paged.
            max_response_body: 16 * 1024 * 1024,
            max_requests_to_peer: 16,
            max_request_body: 8 * 1024 * 1024,
            body_limits: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 16 * 1024,
            serve_timeout: Duration::from_secs(60),
            // Requests take milliseconds; 64 at once is far beyond a device's honest load, and
            // with 8 per peer it takes 8 peers to fill them, which the fair turn among waiting
            // peers makes pointless (see `admission`).
            max_concurrent_requests: 64,
            max_requests_per_peer: 8,
            // A waiting stream may hold a muxer window (256 KiB) of unread data: 16 streams make
            // 4 MiB per peer at most.
            max_waiting_per_peer: 8,
            slot_wait: Duration::from_secs(30),
            max_streams_per_ip: Some(32),
            // Two /send transactions of the largest size at once: what a phone can spare, not
            // what peers can ask for (an honest transaction is a few KiB).
            max_body_bytes_in_flight: 8 * 1024 * 1024,
            // 32 KiB/s is a poor mobile link; an honest peer sends at once what it has.
            min_body_rate: 32 * 1024,
            body_grace: Duration::from_secs(10),
        }
    }
}
