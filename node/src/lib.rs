//! hyphae-node: the homeserver a Hyphae app embeds. `Node::start` opens the store, loads the
//! identity, and serves the Client-Server API; the Server-Server API, rooms, sync, keys and the
//! in-process client grow here (see DESIGN.md).

pub mod app;
mod backup;
mod client_api;
mod config;
mod credentials;
mod error;
mod federation;
mod limits;
mod node;
mod peers;
pub mod policy;
mod rooms;
mod signing;
mod typing;

pub use backup::{
    BackupError, BackupStatus, DEFAULT_QUOTA, Restored, create_invite, parse_size,
    restore_from_backup,
};
pub use config::{Config, PeerLimits, RateLimit, Registration};
pub use error::NodeError;
pub use hyphae_p2p::{
    Multiaddr, PeerId, Transport, TransportConfig, multiaddr, server_name_of_peer,
};
pub use node::Node;
pub use rooms::urlencode;

/// Benchmarks of the app client's end-to-end encryption (`bench-megolm-share`); not an API.
#[doc(hidden)]
pub use app::crypto::bench as crypto_bench;
