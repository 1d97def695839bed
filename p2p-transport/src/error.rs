//! The errors the crate hands out: starting the transport and its commands (dials, DHT records),
//! and one HTTP request to a peer.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::NameError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot set up the libp2p transports: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("cannot dial {peer}: {reason}")]
    Dial { peer: PeerId, reason: String },
    #[error("peer {0} was not found (no known address, and the DHT did not find one)")]
    PeerNotFound(PeerId),
    #[error("the DHT has no peers to ask: configure a bootstrap peer")]
    NoKnownPeers,
    #[error("a DHT record value of {size} bytes is over the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("a DHT key of {size} bytes is over the limit of {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    /// The local record store refused: it is full of records or provider keys.
    #[error("the local DHT store refused the record: {0}")]
    RecordStore(String),
    #[error("the transport has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid destination: {0}")]
    Destination(#[from] NameError),
    #[error("a node does not send requests to itself over the network")]
    ToSelf,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("peer {0} was not found (no known address, and the DHT did not find one)")]
    PeerNotFound(PeerId),
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("peer {peer} does not serve HTTP over libp2p")]
    UnsupportedProtocol { peer: PeerId },
    #[error("could not open a stream to peer {peer} within {after:?}")]
    ConnectTimeout { peer: PeerId, after: Duration },
    #[error("peer {peer} did not answer within {after:?}")]
    Timeout { peer: PeerId, after: Duration },
    #[error("HTTP exchange with peer {peer} failed: {source}")]
    Http { peer: PeerId, source: hyper::Error },
    #[error("the response from peer {peer} is larger than {limit} bytes")]
    ResponseTooLarge { peer: PeerId, limit: usize },
    #[error("reading the response from peer {peer} failed: {reason}")]
    Body { peer: PeerId, reason: String },
    #[error("the transport has stopped")]
    Stopped,
}
