//! Why a node could not start or keep running.

use std::net::SocketAddr;

use hyphae_p2p::IdentityError;
use hyphae_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the peer-to-peer transport could not start: {0}")]
    Transport(String),
    #[error("no account {0:?} on this node")]
    NoSuchAccount(String),
    #[error("a start-up task failed: {0}")]
    Startup(String),
}
