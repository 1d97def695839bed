//! Extractors: a ruma request parsed from the HTTP request (with the spec's errors for bad
//! bodies), and the user an access token belongs to.

use axum::extract::{
    FromRequest, FromRequestParts, OptionalFromRequestParts, RawPathParams, Request,
};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ruma::api::error::ErrorKind;
use ruma::api::{IncomingRequest, IncomingRequestExt};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::error::MatrixError;
use crate::credentials::token_hash;
use crate::node::AppState;

/// Largest request body accepted; media uploads will get their own limit.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A ruma request type parsed from path, query, headers and JSON body.
pub(crate) struct Req<T>(pub(crate) T);

impl<T, S> FromRequest<S> for Req<T>
where
    T: IncomingRequest,
    S: Send + Sync,
{
    type Rejection = MatrixError;

    async fn from_request(request: Request, state: &S) -> Result<Self, MatrixError> {
        let (mut parts, body) = request.into_parts();
        let path_args: Vec<String> = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map(|params| params.iter().map(|(_, v)| v.to_owned()).collect())
            .unwrap_or_default();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    MatrixError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorKind::TooLarge,
                        format!("Request body over {MAX_BODY} bytes"),
                    )
                } else {
                    MatrixError::bad_json(format!("Could not read the request body: {e}"))
                }
            })?
            .to_bytes();
        if !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::NotJson,
                "Request body is not valid JSON",
            ));
        }
        // Some clients (matrix-nio's join, for one) POST with no body at all where every field
        // is optional; read that as the empty object, as other homeservers do.
        let body = if body.is_empty() && matches!(parts.method, Method::POST | Method::PUT) {
            axum::body::Bytes::from_static(b"{}")
        } else {
            body
        };
        let request = axum::http::Request::from_parts(parts, &body[..]);
        let path_args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        T::try_from_http_request(request, &path_args)
            .map(Req)
            .map_err(|e| MatrixError::bad_json(e.to_string()))
    }
}

/// The logged-in user and device making a request.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) localpart: String,
    pub(crate) user_id: OwnedUserId,
    pub(crate) device_id: OwnedDeviceId,
}

impl FromRequestParts<AppState> for User {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, MatrixError> {
        let token = access_token(parts).ok_or_else(MatrixError::missing_token)?;
        let (localpart, device_id) = state
            .store
            .device_for_token(token_hash(&token))
            .await?
            .ok_or_else(MatrixError::unknown_token)?;
        let user_id = UserId::parse_with_server_name(localpart.as_str(), &state.server_name)
            .map_err(|_| MatrixError::unknown_token())?;
        Ok(User {
            localpart,
            user_id,
            device_id: device_id.into(),
        })
    }
}

/// The user where an endpoint takes requests without an access token too: none without a
/// token, refused with a token that is not valid.
impl OptionalFromRequestParts<AppState> for User {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, MatrixError> {
        if access_token(parts).is_none() {
            return Ok(None);
        }
        <User as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// The token from `Authorization: Bearer`, or the deprecated `access_token` query parameter.
fn access_token(parts: &Parts) -> Option<String> {
    if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        return header
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(|t| t.trim().to_owned());
    }
    parts.uri.query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == "access_token").then(|| value.to_owned())
        })
    })
}
