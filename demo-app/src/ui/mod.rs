//! The app's local web UI: a page and a JSON API for the device owner, served by the node itself
//! on the Client-Server API's address under `/app/`, with live updates as server-sent events.
//!
//! Only the owner may use it, though any local user and any web page the owner's browser opens
//! can reach that address. So the API needs a secret: random per data folder (`ui-secret`, mode
//! 0600), carried once in the URL `hyphae up` prints, then kept by the browser as an HttpOnly,
//! SameSite=Strict cookie. Requests another origin makes are refused as well.

mod api;
mod backup;
mod events;
mod policy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use hyphae_node::Node;
use hyphae_node::app::AppClient;
use include_dir::{Dir, include_dir};
use serde::Deserialize;
use tokio::sync::{Mutex, watch};

/// The page, its script and styles: plain files, embedded as they are.
static ASSETS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/assets");

/// Where in the data folder the secret is kept.
pub(crate) const SECRET_FILE: &str = "ui-secret";

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("the node has no owner, so there is no app to show")]
    NoOwner,
    #[error("cannot keep the web UI's secret in {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for the web UI's secret: {0}")]
    Random(String),
}

/// The web UI of one node; its routes go into `Config::extra_routes` before the node starts,
/// and it serves once `attach` has given it the node.
#[derive(Clone)]
pub struct Ui {
    shared: Arc<Shared>,
}

struct Shared {
    ready: OnceLock<Ready>,
    /// Set when the node stops, so open event streams end instead of holding up the shutdown.
    stopping: watch::Sender<bool>,
}

/// What the UI serves once the node runs.
pub(crate) struct Ready {
    pub(crate) app: AppClient,
    /// For what only the node does: the backup subscription, reading policy lists' state.
    pub(crate) node: Node,
    /// Held while the backup settings change, so two clicks (or two tabs) cannot subscribe
    /// twice or mint two recovery keys of which the page shows only one.
    pub(crate) backup_busy: Mutex<()>,
    /// Held while policy lists or subscriptions change: a subscription is read, changed and
    /// written back (account data), so two at once would lose one.
    pub(crate) policy_busy: Mutex<()>,
    pub(crate) server_name: String,
    pub(crate) peer_id: Option<String>,
    secret: String,
    /// Cookies are shared by every port of a host, so each node's has its own name.
    cookie: String,
}

impl Default for Ui {
    fn default() -> Self {
        Ui::new()
    }
}

impl Ui {
    pub fn new() -> Ui {
        Ui {
            shared: Arc::new(Shared {
                ready: OnceLock::new(),
                stopping: watch::channel(false).0,
            }),
        }
    }

    /// The UI's routes, all below `/app`.
    pub fn router(&self) -> Router {
        let api = api::router()
            .merge(backup::router())
            .merge(policy::router())
            .route("/events", get(events::stream))
            .layer(middleware::from_fn_with_state(self.clone(), guard));
        Router::new()
            .route("/app", get(|| async { Redirect::to("/app/") }))
            .route("/app/", get(index))
            .route("/app/assets/{*file}", get(asset))
            .nest("/app/api", api)
            .with_state(self.clone())
    }

    /// Starts serving `node`'s owner; returns the URL that opens the UI (with the secret).
    pub fn attach(&self, node: &Node, data_dir: &Path) -> Result<String, UiError> {
        let app = node.app().ok_or(UiError::NoOwner)?.clone();
        let secret = load_or_create_secret(&data_dir.join(SECRET_FILE))?;
        let addr = node.client_addr();
        let ready = Ready {
            app,
            node: node.clone(),
            backup_busy: Mutex::new(()),
            policy_busy: Mutex::new(()),
            server_name: node.server_name().to_owned(),
            peer_id: node.transport().map(|t| t.local_peer_id().to_string()),
            cookie: format!("hyphae_ui_{}", addr.port()),
            secret,
        };
        let url = format!("http://{}/app/?key={}", url_host(addr), ready.secret);
        // A second attach keeps the first node: there is one per process.
        let _ = self.shared.ready.set(ready);
        Ok(url)
    }

    /// Ends the live-update streams; call before `Node::shutdown`.
    pub fn stop(&self) {
        self.shared.stopping.send_replace(true);
    }

    pub(crate) fn ready(&self) -> Option<&Ready> {
        self.shared.ready.get()
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.shared.stopping.subscribe()
    }
}

/// The address as a browser should open it: an unspecified one (listening everywhere) is opened
/// on loopback.
fn url_host(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port()).to_string()
}

/// Reads the secret, or makes one (32 random bytes, hex) readable by this user only.
fn load_or_create_secret(path: &Path) -> Result<String, UiError> {
    let error = |source| UiError::Secret {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(secret) if is_secret(secret.trim()) => {
            keep_private(path).map_err(error)?;
            return Ok(secret.trim().to_owned());
        }
        // A damaged file is replaced: the cost is opening the newly printed link.
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the web UI's secret was unreadable; making a new one")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| UiError::Random(e.to_string()))?;
    let secret = hex::encode(bytes);
    // Written beside and renamed, so a crash never leaves half a secret.
    let partial = path.with_extension("partial");
    let mut file = open_private(&partial).map_err(error)?;
    file.write_all(secret.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)?;
    Ok(secret)
}

/// A secret file that others could read (copied, say) is made private again.
#[cfg(unix)]
fn keep_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)?.permissions();
    if permissions.mode() & 0o077 != 0 {
        permissions.set_mode(0o600);
        std::fs::set_permissions(path, permissions)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn keep_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn is_secret(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares in time that does not depend on where the strings differ.
fn same_secret(given: &str, secret: &str) -> bool {
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the request carries the secret in its cookie.
fn signed_in(ready: &Ready, headers: &HeaderMap) -> bool {
    cookie(headers, &ready.cookie).is_some_and(|given| same_secret(given, &ready.secret))
}

/// Why a request is not the UI's own page talking, if it is not. Browsers say where a request
/// comes from (`Origin` on anything but a plain GET, `Sec-Fetch-Site` on everything); a request
/// that says another site is refused even if it carried the cookie.
fn cross_origin(headers: &HeaderMap) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site != "same-origin"
    {
        return Some("the request comes from another site");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same = host.is_some_and(|host| {
            origin
                .to_str()
                .is_ok_and(|origin| origin.strip_prefix("http://") == Some(host))
        });
        if !same {
            return Some("the request comes from another origin");
        }
    }
    None
}

/// Answers for the UI's API: `{"errcode": "M_…", "error": "…"}` with a status, shaped like the
/// Client-Server API's errors so a page (or a script) can tell causes apart by `errcode` and
/// show `error` to a person.
pub(crate) fn error(status: StatusCode, errcode: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "errcode": errcode, "error": message.into() });
    (status, no_store(), axum::Json(body)).into_response()
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Lets through only the owner's own page: signed in, same origin.
async fn guard(State(ui): State<Ui>, request: Request, next: Next) -> Response {
    let Some(ready) = ui.ready() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "starting up");
    };
    if let Some(reason) = cross_origin(request.headers()) {
        return error(StatusCode::FORBIDDEN, "M_FORBIDDEN", reason);
    }
    if !signed_in(ready, request.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "open the link `hyphae up` printed to sign in",
        );
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// The page. Opened with the secret (`?key=`), it sets the cookie and sends the browser on to
/// the address without it, so the secret stays out of the address bar and the history.
async fn index(
    State(ui): State<Ui>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(ready) = ui.ready() else {
        return plain_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Hyphae is starting; reload in a moment.",
        );
    };
    if let Some(key) = query.key {
        if !same_secret(&key, &ready.secret) {
            return plain_page(
                StatusCode::FORBIDDEN,
                "That link is not this device's. Open the link `hyphae up` printed.",
            );
        }
        let cookie = format!(
            "{}={}; Path=/app; HttpOnly; SameSite=Strict; Max-Age=31536000",
            ready.cookie, ready.secret
        );
        let mut response = Redirect::to("/app/").into_response();
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response.headers_mut().insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        return response;
    }
    if !signed_in(ready, &headers) {
        return plain_page(
            StatusCode::UNAUTHORIZED,
            "To use this device's Hyphae, open the link `hyphae up` printed (it holds a key).",
        );
    }
    match ASSETS.get_file("index.html") {
        Some(file) => (
            page_headers(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            file.contents(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A page of one sentence, for a browser that is not (yet) signed in.
fn plain_page(status: StatusCode, text: &str) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>Hyphae</title><p style=\"font:16px system-ui;margin:2em\">{text}</p>"
    );
    (
        status,
        page_headers(),
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// No framing by other sites (clickjacking), scripts and connections only from here.
fn page_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                 base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        ),
    ]
}

/// The script, styles and icons: public, the same on every device.
async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    let Some(found) = ASSETS.get_file(&file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // Changes with the binary, which a browser cannot tell: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        found.contents(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hyphae_ui_8008=s3cret; b=2"),
        );
        assert_eq!(cookie(&headers, "hyphae_ui_8008"), Some("s3cret"));
        assert_eq!(cookie(&headers, "hyphae_ui_8009"), None);
    }

    #[test]
    fn other_origins_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8008"));
        assert_eq!(cross_origin(&headers), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8008"),
        );
        assert_eq!(cross_origin(&headers), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_origin(&headers).is_some());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8009"),
        );
        assert!(cross_origin(&headers).is_some());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_origin(&headers).is_some());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(cross_origin(&headers), None);
    }

    #[test]
    fn the_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let secret = load_or_create_secret(&path).unwrap();
        assert!(is_secret(&secret));
        assert_eq!(load_or_create_secret(&path).unwrap(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let loose = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(&path, loose).unwrap();
            assert_eq!(load_or_create_secret(&path).unwrap(), secret);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "made private again");
        }
        std::fs::write(&path, "garbage").unwrap();
        let new = load_or_create_secret(&path).unwrap();
        assert!(is_secret(&new) && new != secret);
    }

    #[test]
    fn the_page_and_its_files_are_embedded() {
        for file in ["index.html", "app.js", "style.css"] {
            assert!(ASSETS.get_file(file).is_some(), "{file}");
        }
    }
}
