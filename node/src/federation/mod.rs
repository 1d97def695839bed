//! The Server-Server API as an axum Router. It travels as HTTP/1.1 over libp2p streams, where
//! the transport attaches the noise-authenticated peer to each request.

mod keys;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::node::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_matrix/federation/v1/version", get(keys::version))
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .fallback(crate::client_api::unrecognized)
        // The transport caps bodies itself (a /send of 50 PDUs is over axum's 2 MiB default).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
