//! Matrix errors at the API edge: every failure of a Client-Server request becomes one of these,
//! with the spec's status code and `errcode`, or a 401 asking for user-interactive auth.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyphae_store::StoreError;
use ruma::api::client::uiaa::{UiaaInfo, UiaaResponse};
use ruma::api::error::{
    Error, ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody,
    UnknownTokenErrorData, WrongRoomKeysVersionErrorData,
};

use crate::credentials::CredentialError;
use crate::rooms::RoomError;

#[derive(Debug)]
pub(crate) struct MatrixError(UiaaResponse);

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            UiaaResponse::MatrixError(error) => error.fmt(f),
            UiaaResponse::AuthResponse(_) => f.write_str("user-interactive authentication needed"),
        }
    }
}

pub(crate) type ApiResult<T> = Result<super::Ruma<T>, MatrixError>;

impl MatrixError {
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        MatrixError(UiaaResponse::MatrixError(Error::new(
            status,
            ErrorBody::Standard(StandardErrorBody::new(kind, message.into())),
        )))
    }

    /// 401 with the flows the client may complete (user-interactive authentication).
    pub(crate) fn uia(info: UiaaInfo) -> Self {
        MatrixError(UiaaResponse::AuthResponse(info))
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    pub(crate) fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }

    pub(crate) fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }

    /// 403: keys may go only into the current backup version, `current`.
    pub(crate) fn wrong_room_keys_version(current: String) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(current)),
            "Keys can only be added to the current backup version",
        )
    }

    pub(crate) fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "Missing access token",
        )
    }

    pub(crate) fn unknown_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken(UnknownTokenErrorData::new()),
            "Unknown access token",
        )
    }

    pub(crate) fn limit_exceeded(retry_after: Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded(data),
            "Too many requests; try again later",
        )
    }

    pub(crate) fn unknown(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unknown,
            message,
        )
    }
}

impl From<StoreError> for MatrixError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store error while serving a request");
        MatrixError::unknown("The server could not read or write its database")
    }
}

impl From<CredentialError> for MatrixError {
    fn from(error: CredentialError) -> Self {
        tracing::error!(%error, "credential error while serving a request");
        MatrixError::unknown("Internal error")
    }
}

impl From<RoomError> for MatrixError {
    fn from(error: RoomError) -> Self {
        match error {
            RoomError::Forbidden(message) => MatrixError::forbidden(message),
            RoomError::NotFound(message) => MatrixError::not_found(message),
            RoomError::UnsupportedVersion(version) => MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported here"),
            ),
            RoomError::BadRequest(message) => MatrixError::invalid_param(message),
            // Another server could not be reached or answered badly: the spec's 502.
            RoomError::Unreachable(message) => {
                MatrixError::new(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message)
            }
            RoomError::LimitExceeded(message, retry_after) => {
                let mut data = LimitExceededErrorData::new();
                data.retry_after = Some(RetryAfter::Delay(retry_after));
                MatrixError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorKind::LimitExceeded(data),
                    message,
                )
            }
            RoomError::TooLarge(message) => {
                MatrixError::new(StatusCode::BAD_REQUEST, ErrorKind::TooLarge, message)
            }
            RoomError::Store(e) => e.into(),
            RoomError::Credentials(e) => e.into(),
            RoomError::Internal(message) => {
                tracing::error!(%message, "internal room error");
                MatrixError::unknown("Internal error")
            }
        }
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        super::Ruma(self.0).into_response()
    }
}

pub(crate) async fn unrecognized() -> MatrixError {
    MatrixError::new(
        StatusCode::NOT_FOUND,
        ErrorKind::Unrecognized,
        "Unrecognized request",
    )
}

pub(crate) async fn method_not_allowed() -> MatrixError {
    MatrixError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Unrecognized,
        "Method not allowed for this endpoint",
    )
}
