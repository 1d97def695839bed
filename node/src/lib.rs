//! hyphae-node: the homeserver a Hyphae app embeds. `Node::start` opens the store, loads the
//! identity, and serves the Client-Server API; the Server-Server API, rooms, sync, keys and the
//! in-process client grow here (see DESIGN.md).

mod client_api;
mod config;
mod credentials;
mod error;
mod federation;
mod node;
mod peers;
mod rooms;
mod signing;
mod typing;

pub use config::{Config, RateLimit, Registration};
pub use error::NodeError;
pub use hyphae_p2p::{Multiaddr, PeerId, Transport, TransportConfig, multiaddr};
pub use node::Node;
