//! What a node is started with, and the policies derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// The data folder: database, identity key, media. Created if missing.
    pub data_dir: PathBuf,
    /// Where the Client-Server API listens (port 0: any free port; see `Node::client_addr`).
    pub client_listen: SocketAddr,
    /// Let anyone register, even when the API listens beyond loopback.
    pub open_registration: bool,
    /// Tokens that allow registering (`m.login.registration_token`); when set, registering needs
    /// one unless `open_registration` is set.
    pub registration_tokens: Vec<String>,
    /// Limit for login, registration and password checks, per client address.
    pub auth_rate_limit: RateLimit,
    /// The peer-to-peer overlay (federation, discovery); `None` runs the node alone. Off in
    /// `Config::new`: an embedding app (or `hyphae up`) opts in, so nothing multicasts on a
    /// network by accident.
    pub p2p: Option<hyphae_p2p::TransportConfig>,
    /// The device owner's localpart: the node makes that account on first start and signs the
    /// app's own client in as it (`Node::app`). `None`: a node with no owner (a server, tests).
    pub owner: Option<String>,
    /// More routes served on the Client-Server API's address (the app's own web UI), merged
    /// with the API's; they get none of its layers (no CORS headers) and must not overlap it.
    pub extra_routes: Option<axum::Router>,
    /// Serve as a backup server (`hyphae backup-server`): devices holding one of the operator's
    /// invitations (`create_invite`) may subscribe and keep a replica here.
    pub backup_server: bool,
    /// What one peer, or one room, may cost this node (federation input).
    pub peer_limits: PeerLimits,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests allowed at once.
    pub burst: u32,
    /// Requests allowed per second after the burst.
    pub per_second: f64,
}

/// What other servers may cost this node: every stranger on the network is a peer, and some are
/// hostile. Defaults suit a phone; tests lower them to reach them quickly.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// Events one state resolution may read (the auth graph of the states it resolves): an
    /// event whose state needs more is refused, not resolved.
    pub resolution_events: usize,
    /// How long one state resolution may compute before it is abandoned and the event refused.
    pub resolution_time: Duration,
    /// Rejected, soft-failed and fetched (outlier) events kept per server that sent them.
    pub kept_refusals_per_origin: RateLimit,
    /// The same per room, whoever sent them.
    pub kept_refusals_per_room: RateLimit,
    /// Membership changes of one server's users taken per room, as sent (not as fetched to
    /// fill a gap).
    pub membership_changes_per_server: RateLimit,
    /// EDUs taken per origin server; past it they are dropped.
    pub edus_per_origin: RateLimit,
    /// To-device messages from one remote sender waiting for one device.
    pub to_device_per_sender: u32,
    /// One-time-key claims (`user/keys/claim`) per origin server.
    pub key_claims_per_origin: RateLimit,
    /// Invites taken per inviting server.
    pub invites_per_origin: RateLimit,
    /// Invites taken per (inviting server, invitee).
    pub invites_per_invitee: RateLimit,
    /// Invites from other servers one local user may have waiting.
    pub pending_invites: u32,
    /// Servers one event is sent to or passed on to; past this, the rest get it by gossip.
    pub max_destinations: usize,
    /// Outbox entries waiting for one destination that cannot be reached; the oldest go first
    /// (the destination fetches what it misses when a later event names it).
    pub outbox_per_destination: u32,
    /// How long an outbox entry waits for its destination.
    pub outbox_ttl: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            resolution_events: 50_000,
            resolution_time: Duration::from_secs(10),
            kept_refusals_per_origin: RateLimit {
                burst: 500,
                per_second: 0.5,
            },
            kept_refusals_per_room: RateLimit {
                burst: 2_000,
                per_second: 2.0,
            },
            membership_changes_per_server: RateLimit {
                burst: 50,
                per_second: 0.2,
            },
            edus_per_origin: RateLimit {
                burst: 500,
                per_second: 20.0,
            },
            to_device_per_sender: 500,
            key_claims_per_origin: RateLimit {
                burst: 20,
                per_second: 0.2,
            },
            invites_per_origin: RateLimit {
                burst: 20,
                per_second: 0.05,
            },
            invites_per_invitee: RateLimit {
                burst: 3,
                per_second: 0.005,
            },
            pending_invites: 100,
            max_destinations: 200,
            outbox_per_destination: 2_000,
            outbox_ttl: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// Who may register, as `hyphae up` reports it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Anyone who can reach the API (with `m.login.dummy`): the operator said so.
    Open,
    /// Open because the API listens on loopback only, so only this device reaches it; requests
    /// from web pages (with an `Origin` header) are refused, since any site the device's browser
    /// opens could otherwise register here.
    Loopback,
    /// Whoever has one of these tokens.
    Token(Vec<String>),
    /// Nobody: the API is reachable beyond loopback and no token is set.
    Closed,
}

impl Config {
    /// The embedded default address: loopback only, the port Matrix clients try first.
    pub const DEFAULT_CLIENT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8008);

    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            client_listen: Config::DEFAULT_CLIENT_LISTEN,
            open_registration: false,
            registration_tokens: Vec::new(),
            auth_rate_limit: RateLimit {
                burst: 20,
                per_second: 1.0,
            },
            p2p: None,
            owner: None,
            extra_routes: None,
            backup_server: false,
            peer_limits: PeerLimits::default(),
        }
    }

    /// Open only while nobody but this device can reach the API, unless the operator says so.
    pub fn registration(&self) -> Registration {
        if self.open_registration {
            Registration::Open
        } else if !self.registration_tokens.is_empty() {
            Registration::Token(self.registration_tokens.clone())
        } else if self.client_listen.ip().is_loopback() {
            Registration::Loopback
        } else {
            Registration::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_open_on_loopback_only_unless_configured() {
        let mut config = Config::new("/tmp/x");
        assert_eq!(config.registration(), Registration::Loopback);
        config.client_listen = "0.0.0.0:8008".parse().unwrap();
        assert_eq!(config.registration(), Registration::Closed);
        config.registration_tokens = vec!["t".into()];
        assert_eq!(config.registration(), Registration::Token(vec!["t".into()]));
        config.open_registration = true;
        assert_eq!(config.registration(), Registration::Open);
        config.client_listen = "[::1]:8008".parse().unwrap();
        config.open_registration = false;
        assert_eq!(config.registration(), Registration::Token(vec!["t".into()]));
    }
}
