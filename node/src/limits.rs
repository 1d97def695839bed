//! What one peer, or one room, may cost this node: the rate limits on federation input
//! (`Config::peer_limits`), kept in memory per server, per room and per invitee. Every stranger
//! on the network is a peer, and a server name costs nothing to make, so what a peer sends is
//! taken only within these; past them it is refused (or dropped, for what has no answer) with
//! the reason logged.

use std::time::Duration;

use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};

use crate::client_api::RateLimiter;
use crate::config::PeerLimits;

/// The node's limits on peers; one per node, shared.
pub(crate) struct Limits {
    pub(crate) config: PeerLimits,
    refusals_by_origin: RateLimiter<OwnedServerName>,
    refusals_by_room: RateLimiter<OwnedRoomId>,
    memberships: RateLimiter<(OwnedRoomId, OwnedServerName)>,
    edus: RateLimiter<OwnedServerName>,
    key_claims: RateLimiter<OwnedServerName>,
    invites: RateLimiter<OwnedServerName>,
    invites_per_invitee: RateLimiter<(OwnedServerName, OwnedUserId)>,
}

impl Limits {
    pub(crate) fn new(config: PeerLimits) -> Limits {
        let config = clamped(config);
        Limits {
            refusals_by_origin: RateLimiter::new(config.kept_refusals_per_origin),
            refusals_by_room: RateLimiter::new(config.kept_refusals_per_room),
            memberships: RateLimiter::new(config.membership_changes_per_server),
            edus: RateLimiter::new(config.edus_per_origin),
            key_claims: RateLimiter::new(config.key_claims_per_origin),
            invites: RateLimiter::new(config.invites_per_origin),
            invites_per_invitee: RateLimiter::new(config.invites_per_invitee),
            config,
        }
    }

    /// Whether one more refused event (rejected, soft-failed, or fetched as an auth event)
    /// from `origin` in `room` may be kept. Kept ones make a repeat cheap; past the budget they
    /// are answered with the refusal and forgotten, so a stranger cannot fill the disk (nor
    /// the backup quota the store replicates to) with them.
    pub(crate) fn keep_refusal(&self, origin: &ServerName, room: &RoomId) -> bool {
        self.refusals_by_origin.check(origin.to_owned()).is_ok()
            && self.refusals_by_room.check(room.to_owned()).is_ok()
    }

    /// One membership change of `server`'s users in `room`, as that server (or a relay) sends
    /// it: a server that joins and leaves users in a loop (or joins thousands of Sybil users,
    /// each a destination of every later event) is held to a pace.
    pub(crate) fn membership_change(
        &self,
        room: &RoomId,
        server: &ServerName,
    ) -> Result<(), Duration> {
        self.memberships.check((room.to_owned(), server.to_owned()))
    }

    /// One EDU from `origin`.
    pub(crate) fn edu(&self, origin: &ServerName) -> Result<(), Duration> {
        self.edus.check(origin.to_owned())
    }

    /// One `user/keys/claim` from `origin`.
    pub(crate) fn key_claim(&self, origin: &ServerName) -> Result<(), Duration> {
        self.key_claims.check(origin.to_owned())
    }

    /// One invite from `origin` for `invitee`: within the server's pace and the pace for that
    /// invitee.
    pub(crate) fn invite(&self, origin: &ServerName, invitee: &UserId) -> Result<(), Duration> {
        self.invites.check(origin.to_owned())?;
        self.invites_per_invitee
            .check((origin.to_owned(), invitee.to_owned()))
    }
}

/// Limits an embedding app set absurdly (none at all, or more than a phone holds) are brought
/// back into range.
fn clamped(mut config: PeerLimits) -> PeerLimits {
    config.resolution_events = config.resolution_events.clamp(16, 1_000_000);
    config.resolution_time = config
        .resolution_time
        .clamp(Duration::from_millis(10), Duration::from_secs(120));
    config.to_device_per_sender = config.to_device_per_sender.clamp(1, 100_000);
    config.pending_invites = config.pending_invites.clamp(1, 100_000);
    config.max_destinations = config.max_destinations.clamp(4, 100_000);
    config.outbox_per_destination = config.outbox_per_destination.clamp(1, 10_000_000);
    config.outbox_ttl = config.outbox_ttl.clamp(
        Duration::from_secs(60),
        Duration::from_secs(365 * 24 * 3600),
    );
    config
}
