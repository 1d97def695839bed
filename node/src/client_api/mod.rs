//! The Client-Server API router: the endpoints Matrix clients call, and the Matrix error shape
//! every failure is turned into.

mod error;
mod versions;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ruma::api::{OutgoingResponse, OutgoingResponseExt};

use crate::node::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_matrix/client/versions", get(versions::get_versions))
        .route("/health", get(versions::health))
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// A ruma response as an HTTP response.
pub(crate) struct Ruma<T>(pub(crate) T);

impl<T: OutgoingResponse> IntoResponse for Ruma<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(axum::body::Body::from).into_response(),
            Err(e) => {
                // Not a MatrixError: encoding that could fail the same way.
                tracing::error!(error = %e, "could not encode a response");
                axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
