//! What the node tells the transport at start: where to listen, how to find peers, which
//! services to offer, and the limits and timeouts of HTTP over libp2p streams.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

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
    pub http: HttpConfig,
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
            http: HttpConfig::default(),
        }
    }
}

impl TransportConfig {
    /// QUIC and TCP on 127.0.0.1 with random ports and mDNS off: for tests and benchmarks.
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

/// Limits of HTTP/1.1 over libp2p streams, both as client and as server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Client: from the call to an open `/http/1.1` stream (dial, DHT lookup, negotiation).
    pub connect_timeout: Duration,
    /// Client: from an open stream to the whole response body.
    pub request_timeout: Duration,
    /// Client: a larger response is refused.
    pub max_response_body: usize,
    /// Server: a larger request body is answered 413.
    pub max_request_body: usize,
    /// Server: the whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Server: approximate cap on the request head (hyper checks it between reads).
    pub max_header_size: usize,
    /// Server: one stream (head, body, handler, response) ends after this, whatever it does.
    pub serve_timeout: Duration,
    /// Server: requests handled at once; more wait (the muxers bound how many streams wait).
    pub max_concurrent_requests: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            // A /send transaction is at most 50 PDUs of 64 KiB; state and backfill are paged.
            max_response_body: 16 * 1024 * 1024,
            max_request_body: 8 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 16 * 1024,
            serve_timeout: Duration::from_secs(60),
            max_concurrent_requests: 256,
        }
    }
}
