//! HTTP/1.1 over libp2p streams, as libp2p's HTTP spec has it (protocol `/http/1.1`, one request
//! per stream): the client half sends one request on a fresh stream, the server half runs hyper
//! on one inbound stream with the node's registered service.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use libp2p::{PeerId, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::admission::{BodyBudget, IpStreams, PacedBody, Slots};
use crate::config::{HttpConfig, SMALL_BODY};
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

/// The client's side of the server's per-peer slots: requests to one peer at once, the rest
/// wait here. A burst of requests to one peer (hundreds of lookups at once) then queues in
/// this node instead of past the peer's streams and slots, where it would be refused.
#[derive(Default)]
pub(crate) struct ClientSlots {
    peers: std::sync::Mutex<std::collections::HashMap<PeerId, Arc<Semaphore>>>,
}

/// Peers a node keeps a request queue for before it forgets the idle ones.
const CLIENT_PEERS: usize = 1024;

impl ClientSlots {
    /// Waits for a turn to send a request to `peer`, at most `per_peer` at once.
    pub async fn acquire(&self, peer: PeerId, per_peer: usize) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if peers.len() >= CLIENT_PEERS {
                // Only the map holds an idle peer's semaphore.
                peers.retain(|_, slots| Arc::strong_count(slots) > 1);
            }
            peers
                .entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(per_peer.max(1))))
                .clone()
        };
        slots.acquire_owned().await.ok()
    }
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

/// What every inbound stream shares: the registered service, the limits, the slots that bound
/// how many requests run at once (per peer and overall) and the budget of body bytes.
pub(crate) struct Server {
    pub service: RwLock<Option<HttpService>>,
    pub config: HttpConfig,
    per_ip: IpStreams,
    slots: Arc<Slots>,
    budget: BodyBudget,
}

impl Server {
    pub fn new(config: HttpConfig) -> Server {
        Server {
            service: RwLock::new(None),
            per_ip: IpStreams::new(config.max_streams_per_ip),
            slots: Slots::new(
                config.max_concurrent_requests,
                config.max_requests_per_peer,
                config.max_waiting_per_peer,
            ),
            // A quarter of the slots may wait for room for a large body.
            budget: BodyBudget::new(
                config.max_body_bytes_in_flight,
                config.max_concurrent_requests.div_ceil(4),
            ),
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

/// Serves one inbound stream from `peer` (connected from `ip`): one request, then the stream
/// closes. The stream counts against its IP address, then waits for a slot (see [`Slots`]);
/// one over its address's cap, or that gets no slot in time, is closed unread. From the slot
/// on, everything (head, body, handler, response) ends within `serve_timeout`.
pub(crate) async fn serve(server: Arc<Server>, peer: PeerId, ip: Option<IpAddr>, stream: Stream) {
    serve_io(server, peer, ip, stream.compat()).await
}

/// [`serve`] on any byte stream (the fuzz targets feed it an in-memory one).
pub(crate) async fn serve_io<I>(server: Arc<Server>, peer: PeerId, ip: Option<IpAddr>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = &server.config;
    let Ok(_from_ip) = server.per_ip.enter(ip) else {
        tracing::debug!(%peer, ?ip, "inbound HTTP stream closed: too many from its address");
        return;
    };
    let slot = match server.slots.acquire(peer, config.slot_wait).await {
        Ok(slot) => slot,
        Err(why) => {
            tracing::debug!(%peer, ?why, "inbound HTTP stream closed without a slot");
            return;
        }
    };
    let serve_timeout = config.serve_timeout;
    let work = async {
        let service = server.service();
        let handle = hyper::service::service_fn(|req: Request<Incoming>| {
            let (server, service) = (server.clone(), service.clone());
            async move { Ok::<_, Infallible>(handle(&server, service, peer, req).await) }
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
    drop(slot);
}

async fn handle(
    server: &Server,
    service: Option<HttpService>,
    peer: PeerId,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(service) = service else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no service is registered yet",
        );
    };
    let config = &server.config;
    let max_body = config.body_limit(req.uri().path());
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    // What the body may bring into memory: its length, or the cap when it has none (chunked).
    let size = req.body().size_hint().upper().map_or(max_body, |upper| {
        usize::try_from(upper).unwrap_or(max_body).min(max_body)
    });
    let _room = if size > SMALL_BODY {
        match server.budget.reserve(size, config.slot_wait).await {
            Some(room) => Some(room),
            None => {
                tracing::debug!(%peer, size, "no room for a request body in time");
                let mut busy = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many large requests at once; try again",
                );
                busy.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return busy;
            }
        }
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    // The peer id comes from the noise/TLS handshake of the connection: it is authenticated.
    parts.extensions.insert(ConnectInfo(peer));
    // A body without a length (chunked) is cut at the limit; axum's extractors answer 413.
    let body = PacedBody::new(body, config.body_grace, config.min_body_rate);
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
