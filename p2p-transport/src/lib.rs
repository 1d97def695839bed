//! hyphae-p2p: the libp2p overlay. It owns the node's identity and, as the transport grows, the
//! swarm, discovery and HTTP over libp2p streams. It knows nothing of Matrix rooms.

mod identity;

pub use identity::{
    Identity, IdentityError, NameError, peer_id_for_server_name, server_name_of_peer,
};
pub use libp2p_identity::PeerId;
