//! hyphae-p2p: the libp2p overlay. It owns the node's identity, the swarm behind a
//! cheap-to-clone [`Transport`] handle, discovery (mDNS with mdns-sd, Kademlia), DHT records and
//! providers, QUIC and TCP, relay/dcutr/autonat, and HTTP/1.1 over libp2p streams. It knows
//! nothing of Matrix rooms.

mod address_book;
mod admission;
mod behaviour;
mod config;
mod discovery;
mod error;
mod events;
#[doc(hidden)]
pub mod fuzz;
mod gate;
mod http;
mod identity;
mod records;
mod streams;
mod transport;

pub use admission::BodyTooSlow;
pub use behaviour::{MAX_RECORD_KEY, MAX_RECORD_VALUE};
pub use config::{HttpConfig, MdnsConfig, RecordPolicyHandle, SMALL_BODY, TransportConfig};
pub use error::{HttpError, TransportError};
pub use events::{Discovery, Reachability, TransportEvent};
pub use http::{Destination, RequestOptions};
pub use identity::{
    Identity, IdentityError, NameError, is_weak, peer_id_for_server_name, server_name_of_peer,
};
pub use libp2p::{Multiaddr, Stream, multiaddr};
pub use libp2p_identity::PeerId;
pub use records::RecordPolicy;
pub use transport::{Transport, WeakTransport};

/// The protocol id inbound and outbound HTTP streams use.
pub const HTTP_PROTOCOL: &str = "/http/1.1";
/// The DHT's protocol id.
pub const KAD_PROTOCOL: &str = "/hyphae/kad/1";
/// The DNS-SD service type advertised and browsed on the LAN.
pub const MDNS_SERVICE_TYPE: &str = discovery::mdns::SERVICE_TYPE;
