//! The Server-Server API: the axum Router other servers call (served over libp2p, where the
//! transport attaches the noise-authenticated peer to each request), and the `Federation`
//! handle this node uses to call them and to send its outbox.

mod client;
mod directory;
pub(crate) mod edus;
mod events;
#[cfg(test)]
mod exhaustion_tests;
#[cfg(test)]
mod flood_tests;
#[cfg(test)]
pub(crate) mod history_tests;
#[cfg(test)]
pub(crate) mod hostile_peer;
#[cfg(test)]
pub(crate) mod hostile_tests;
mod keys;
pub(crate) mod limits;
pub(crate) mod membership;
mod origin;
#[cfg(test)]
mod partition_tests;
#[cfg(test)]
pub(crate) mod room_tests;
pub(crate) mod send;
mod sender;
mod user_keys;
mod visibility;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::node::AppState;

pub(crate) use client::{Federation, FederationError};
pub(crate) use directory::RoomDirectories;
pub(crate) use limits::body_limits;
pub(crate) use membership::INVITE_EDU;
pub(crate) use origin::Origin;
pub(crate) use sender::OutboxLimits;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_matrix/federation/v1/version", get(keys::version))
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route(client::OWNER_PATH, get(keys::owner))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(send::send_transaction),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(membership::query_directory),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(directory::public_rooms).post(directory::public_rooms_filtered),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(user_keys::query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(user_keys::claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(user_keys::devices),
        )
        .route(
            "/_matrix/federation/v1/query/profile",
            get(user_keys::profile),
        )
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(events::event),
        )
        .route("/_matrix/federation/v1/state/{room_id}", get(events::state))
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(events::state_ids),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(events::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(events::missing_events),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(events::event_auth),
        )
        .route(
            crate::backup::SUBSCRIBE_PATH,
            post(crate::backup::server::subscribe),
        )
        .route(
            crate::backup::UNSUBSCRIBE_PATH,
            post(crate::backup::server::unsubscribe),
        )
        .route(
            crate::backup::REPLICA_PATH,
            post(crate::backup::server::put_replica).get(crate::backup::server::get_replica),
        )
        .route(
            "/_matrix/federation/unstable/io.hyphae.backup/mailbox/{txn_id}",
            put(crate::backup::mailbox::take_mail),
        )
        .route(
            crate::backup::room_keys::ROOM_KEYS_PATH,
            put(crate::backup::room_keys::put_room_keys)
                .get(crate::backup::room_keys::get_room_keys),
        )
        .route(
            crate::backup::mailbox::MAIL_PATH,
            post(crate::backup::mailbox::deliver_mail),
        )
        .route(
            crate::backup::STATUS_PATH,
            get(crate::backup::server::status),
        )
        .route(
            crate::backup::IDENTITY_PATH,
            put(crate::backup::identity::put_identity),
        )
        .route(
            "/_matrix/federation/unstable/io.hyphae.backup/identity/{lookup_id}",
            get(crate::backup::identity::get_identity),
        )
        .fallback(crate::client_api::unrecognized)
        // The transport caps bodies itself (a /send of 50 PDUs is over axum's 2 MiB default).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
