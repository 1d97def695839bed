//! The Client-Server API router: the endpoints Matrix clients call, CORS for browser clients,
//! and the Matrix error shape every failure is turned into.

mod account;
mod devices;
mod error;
mod rate_limit;
mod request;
mod uia;
mod versions;

#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ruma::api::{OutgoingResponse, OutgoingResponseExt};

use crate::node::AppState;

pub(crate) use rate_limit::RateLimiter;

pub(crate) fn router(state: AppState) -> Router {
    let client = Router::new()
        .route("/versions", get(versions::get_versions))
        .route("/v3/register", post(account::register))
        .route("/v3/register/available", get(account::username_available))
        .route("/v3/login", get(account::login_types).post(account::login))
        .route("/v3/logout", post(account::logout))
        .route("/v3/logout/all", post(account::logout_all))
        .route("/v3/account/whoami", get(account::whoami))
        .route("/v3/account/password", post(account::change_password))
        .route("/v3/devices", get(devices::list))
        .route(
            "/v3/devices/{device_id}",
            get(devices::get)
                .put(devices::update)
                .delete(devices::delete),
        )
        .route("/v3/delete_devices", post(devices::delete_many));
    Router::new()
        .nest("/_matrix/client", client)
        .route("/health", get(versions::health))
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// The CORS headers the spec asks of every Client-Server response, so browser clients work;
/// preflight requests are answered here.
async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
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
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
