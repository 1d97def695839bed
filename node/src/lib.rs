//! hyphae-node: the homeserver a Hyphae app embeds. `Node::start` opens the store, loads the
//! identity, joins the overlay and serves both Matrix APIs; `Node::app` is the device owner's
//! in-process client. `ARCHITECTURE.md` maps the modules and what may call what.

pub mod app;
mod backup;
mod client_api;
mod config;
mod credentials;
mod error;
mod federation;
#[doc(hidden)]
pub mod fuzz;
mod limits;
mod node;
mod peers;
mod people;
pub mod policy;
mod push;
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
