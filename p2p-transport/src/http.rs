//! HTTP/1.1 over libp2p streams, as libp2p's HTTP spec has it (protocol `/http/1.1`, one request
//! per stream): the client half sends one request on a fresh stream, the server half runs hyper
//! on one inbound stream with the node's registered service.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use libp2p::{PeerId, Stream};
use tokio::sync::Semaphore;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::config::HttpConfig;
use crate::error::HttpError;

/// The service the node registers: its federation router, type-erased so it can be swapped.
pub(crate) type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Where a request goes: a key-derived server name or a peer id.
#[derive(Debug, Clone)]
pub enum Destination {
    ServerName(String),
    Peer(PeerId),
}

impl From<&str> for Destination {
    fn from(name: &str) -> Self {
        Destination::ServerName(name.to_owned())
    }
}
impl From<String> for Destination {
    fn from(name: String) -> Self {
        Destination::ServerName(name)
    }
}
impl From<&String> for Destination {
    fn from(name: &String) -> Self {
        Destination::ServerName(name.clone())
    }
}
impl From<PeerId> for Destination {
    fn from(peer: PeerId) -> Self {
        Destination::Peer(peer)
    }
}
impl From<&PeerId> for Destination {
    fn from(peer: &PeerId) -> Self {
        Destination::Peer(*peer)
    }
}

impl Destination {
    pub(crate) fn peer(&self) -> Result<PeerId, HttpError> {
        match self {
            Destination::ServerName(name) => Ok(crate::peer_id_for_server_name(name)?),
            Destination::Peer(peer) => Ok(*peer),
        }
    }
}

/// Per-request limits; [`crate::Transport::request`] takes them from the config.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_body: usize,
}

impl From<&HttpConfig> for RequestOptions {
    fn from(config: &HttpConfig) -> Self {
        RequestOptions {
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_response_body: config.max_response_body,
        }
    }
}

/// The request as it goes on the wire: origin-form target and `Host: <server name>`
/// (hyper's connection API adds no Host itself).
pub(crate) fn prepare(peer: &PeerId, req: Request<Bytes>) -> Result<Request<Bytes>, HttpError> {
    let (mut parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = target
        .parse::<Uri>()
        .map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
    let host = crate::server_name_of_peer(peer).unwrap_or_else(|_| peer.to_string());
    let host =
        HeaderValue::from_str(&host).map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
    parts.headers.insert(HOST, host);
    Ok(Request::from_parts(parts, body))
}

/// Aborts the hyper connection task when the request ends for any reason. Over yamux a server
/// that answered early (413) leaves our upload blocked on flow control with no reset, so the
/// task would otherwise live until the whole connection closes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one request on `stream` and reads the whole response, at most `max_body` bytes.
/// The caller bounds the time.
pub(crate) async fn send(
    peer: PeerId,
    stream: Stream,
    req: Request<Bytes>,
    max_body: usize,
) -> Result<Response<Bytes>, HttpError> {
    let http = |source| HttpError::Http { peer, source };
    let io = TokioIo::new(stream.compat());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "HTTP client connection ended with an error");
        }
    }));
    let response = sender
        .send_request(req.map(Full::new))
        .await
        .map_err(http)?;
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(HttpError::ResponseTooLarge {
            peer,
            limit: max_body,
        });
    }
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                HttpError::ResponseTooLarge {
                    peer,
                    limit: max_body,
                }
            } else {
                HttpError::Body {
                    peer,
                    reason: e.to_string(),
                }
            }
        })?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// What every inbound stream shares: the registered service, the limits, and the permits
/// that bound how many requests run at once.
pub(crate) struct Server {
    pub service: RwLock<Option<HttpService>>,
    pub config: HttpConfig,
    pub permits: Arc<Semaphore>,
}

impl Server {
    pub fn new(config: HttpConfig) -> Server {
        Server {
            service: RwLock::new(None),
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            config,
        }
    }

    pub fn set_service(&self, service: HttpService) {
        // A poisoned lock only means a panic elsewhere while swapping; the value is whole.
        *self.service.write().unwrap_or_else(|e| e.into_inner()) = Some(service);
    }

    fn service(&self) -> Option<HttpService> {
        self.service
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Serves one inbound stream from `peer`: one request, then the stream closes. Everything
/// (waiting for a permit, head, body, handler, response) ends within `serve_timeout`.
pub(crate) async fn serve(server: Arc<Server>, peer: PeerId, stream: Stream) {
    serve_io(server, peer, stream.compat()).await
}

/// [`serve`] on any byte stream (the fuzz targets feed it an in-memory one).
pub(crate) async fn serve_io<I>(server: Arc<Server>, peer: PeerId, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = &server.config;
    let serve_timeout = config.serve_timeout;
    let work = async {
        let Ok(_permit) = server.permits.clone().acquire_owned().await else {
            return;
        };
        let service = server.service();
        let max_body = config.max_request_body;
        let handle = hyper::service::service_fn(move |req: Request<Incoming>| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(handle(service, peer, max_body, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            // Without a timer hyper silently disables the header timeout (and panics if one
            // is set), so the timer is not optional.
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_size)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), handle);
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "refused or broken inbound HTTP stream");
        }
    };
    if tokio::time::timeout(serve_timeout, work).await.is_err() {
        tracing::debug!(%peer, ?serve_timeout, "inbound HTTP stream timed out");
    }
}

async fn handle(
    service: Option<HttpService>,
    peer: PeerId,
    max_body: usize,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(service) = service else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no service is registered yet",
        );
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let (mut parts, body) = req.into_parts();
    // The peer id comes from the noise/TLS handshake of the connection: it is authenticated.
    parts.extensions.insert(ConnectInfo(peer));
    // A body without a length (chunked) is cut at the limit; axum's extractors answer 413.
    let body = Body::new(Limited::new(body, max_body));
    match service.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}
