//! The Client-Server API as the in-process client calls it: requests go through the node's own
//! router in memory (no socket, no HTTP parsing), so the app's client sees exactly what a
//! standard client sees, from one implementation of the API.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// Why a call failed: the API's own error (errcode and message) or a broken exchange.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{status} {errcode}: {error}")]
    Matrix {
        status: u16,
        errcode: String,
        error: String,
    },
    #[error("the API answered something unreadable: {0}")]
    Unreadable(String),
}

impl ApiError {
    pub fn errcode(&self) -> Option<&str> {
        match self {
            ApiError::Matrix { errcode, .. } => Some(errcode),
            ApiError::Unreadable(_) => None,
        }
    }
}

/// A handle on the node's Client-Server API, in memory; cheap to clone.
#[derive(Clone)]
pub(crate) struct CsApi {
    router: Router,
    token: Option<String>,
}

/// Requests from the in-process client count as coming from loopback (rate limits, the
/// registration policy).
const IN_PROCESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl CsApi {
    pub(crate) fn new(router: Router) -> CsApi {
        CsApi {
            router,
            token: None,
        }
    }

    /// The same API, calling as the holder of `token`.
    pub(crate) fn with_token(&self, token: String) -> CsApi {
        CsApi {
            router: self.router.clone(),
            token: Some(token),
        }
    }

    /// Calls `path` (below `/_matrix/client`) and parses the JSON answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/_matrix/client{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = request
            .body(Body::from(body))
            .map_err(|e| ApiError::Unreadable(e.to_string()))?;
        request.extensions_mut().insert(ConnectInfo(IN_PROCESS));
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Unreadable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ApiError::Matrix {
                status: status.as_u16(),
                errcode: error["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
                error: error["error"].as_str().unwrap_or_default().to_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Unreadable(format!("{path}: {e}")))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        self.call(Method::PUT, path, Some(body)).await
    }
}
