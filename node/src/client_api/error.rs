//! Matrix errors at the API edge: one place turns failures into the spec's `errcode` bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ruma::api::error::{Error, ErrorBody, ErrorKind, StandardErrorBody};

#[derive(Debug)]
pub(crate) struct MatrixError(Error);

impl MatrixError {
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        MatrixError(Error::new(
            status,
            ErrorBody::Standard(StandardErrorBody::new(kind, message.into())),
        ))
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
