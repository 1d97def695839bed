//! Web pages used as people use them: headless Chromium driven over WebDriver by chromedriver
//! (a minimal W3C WebDriver client, chromedriver in a process group of its own that ends with
//! the test), screenshots into an artefacts folder, and a static file server on loopback for
//! pages built outside the clone.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The folder for screenshots and logs: `$HYPHAE_ARTIFACTS`, else `default` (a test passes
/// one below its `CARGO_TARGET_TMPDIR`). Failure screenshots of an earlier run are removed.
pub fn artifacts_dir(default: PathBuf) -> PathBuf {
    let dir = std::env::var_os("HYPHAE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or(default);
    std::fs::create_dir_all(&dir).expect("artefacts folder");
    // Failures of an earlier run would read as this run's.
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("failure-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// A program on PATH (or where `env` says), if there is one.
pub fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

pub fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A minimal W3C WebDriver client: just what the tests do, over plain HTTP to chromedriver.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    label: &'static str,
    artifacts: PathBuf,
}

/// The key WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const WAIT: Duration = Duration::from_secs(90);

async fn webdriver(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", answer["value"]));
    }
    Ok(answer["value"].clone())
}

impl Browser {
    /// A new browser with its own profile (so its own cookies), phone-sized or desktop-sized.
    pub async fn open(
        driver: &str,
        chromium: &Path,
        phone: bool,
        label: &'static str,
        artifacts: &Path,
    ) -> Browser {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--lang=en-US",
            // Nothing beyond loopback: no background services, every host name unresolvable but
            // localhost, and anything else sent to a closed loopback port.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--metrics-recording-only",
            "--no-pings",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
        ];
        if !phone {
            args.push("--window-size=1280,800");
        }
        let mut options = json!({ "binary": chromium, "args": args });
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": 375, "height": 740, "pixelRatio": 2.0, "touch": true }
            });
        }
        let http = reqwest::Client::new();
        let created = webdriver(
            &http,
            reqwest::Method::POST,
            &format!("{driver}/session"),
            Some(json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}})),
        )
        .await
        .expect("chromedriver starts a browser");
        let session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Browser {
            http,
            session: format!("{driver}/session/{session}"),
            label,
            artifacts: artifacts.to_owned(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match webdriver(&self.http, method, &format!("{}{path}", self.session), body).await {
            Ok(value) => value,
            Err(e) => self.fail(&format!("WebDriver {path}: {e}")).await,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    pub async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        match found[ELEMENT].as_str() {
            Some(element) => element.to_owned(),
            None => {
                self.fail(&format!("no element {css}: {found}")).await;
                unreachable!()
            }
        }
    }

    /// Clicks as a person would: the element must be shown and not covered.
    pub async fn click(&self, css: &str) {
        self.wait_for(
            &format!("{css} to be shown"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0 && !e.disabled;",
            json!([css]),
        )
        .await;
        // The page re-renders lists as updates arrive, so the element found may be replaced
        // before the click lands; a person would click the new one, and so does this.
        for _ in 0..5 {
            let element = self.element(css).await;
            let path = format!("/element/{element}/click");
            let url = format!("{}{path}", self.session);
            match webdriver(&self.http, reqwest::Method::POST, &url, Some(json!({}))).await {
                Ok(_) => return,
                Err(e) if e.contains("stale element reference") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    self.fail(&format!("WebDriver {path}: {e}")).await;
                }
            }
        }
        self.fail(&format!("{css} was replaced before every click"))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until `condition` (a function body returning a truthy value) holds; returns it.
    pub async fn wait_for(&self, what: &str, condition: &str, args: Value) -> Value {
        self.wait_for_within(WAIT, what, condition, args).await
    }

    /// `wait_for`, giving up after `within`.
    pub async fn wait_for_within(
        &self,
        within: Duration,
        what: &str,
        condition: &str,
        args: Value,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.js(condition, args.clone()).await;
            if !(value.is_null() || value == false || value == "") {
                return value;
            }
            if Instant::now() > deadline {
                self.fail(&format!("waited {within:?} for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = webdriver(
            &self.http,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.session),
            None,
        )
        .await
        .expect("a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .expect("a PNG in base64");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }

    /// Fails the test with what the page showed, keeping a screenshot of it.
    pub async fn fail(&self, why: &str) -> Value {
        let shot = self.screenshot(&format!("failure-{}", self.label)).await;
        let text = webdriver(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.session),
            Some(json!({ "script": "return document.body.innerText", "args": [] })),
        )
        .await
        .unwrap_or_default();
        panic!(
            "{} browser: {why}\nscreenshot: {}\npage text:\n{}",
            self.label,
            shot.display(),
            text.as_str().unwrap_or_default()
        );
    }

    pub async fn close(self) {
        let _ = webdriver(&self.http, reqwest::Method::DELETE, &self.session, None).await;
    }
}

/// chromedriver and the browsers it started: all in one process group, ended together, so a
/// failing test leaves no browser behind.
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // A negative pid is the process group made for chromedriver below, and only that.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free loopback port; returns it and its URL once it answers.
pub async fn start_chromedriver(program: &Path, log: &Path) -> (Driver, String) {
    use std::os::unix::process::CommandExt;
    let port = free_loopback_port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .process_group(0)
        .stdout(std::fs::File::create(log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let running = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) =
            webdriver(&http, reqwest::Method::GET, &format!("{url}/status"), None).await
            && status["ready"] == true
        {
            return (running, url);
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer on {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chromium and chromedriver, or `None` after `skip_or_fail` said why `test` cannot run.
pub fn browser_programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let found = (
        find_program(
            "HYPHAE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        ),
        find_program("HYPHAE_CHROMEDRIVER", &["chromedriver"]),
    );
    if let (Some(chromium), Some(chromedriver)) = found {
        return Some((chromium, chromedriver));
    }
    crate::skip_or_fail(
        test,
        "chromium and chromedriver are not both installed (Debian: apt-get install chromium \
         chromium-driver; scripts/test.sh does). The web page was NOT tested.",
    );
    None
}

/// A folder's files served over HTTP on a loopback port, until this is dropped.
pub struct StaticSite {
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StaticSite {
    /// Serves `root` (`/` is its `index.html`) on a free loopback port.
    pub async fn serve(root: PathBuf) -> StaticSite {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a loopback port for the page");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let site = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let root = root.clone();
            async move { file_response(&root, uri.path()) }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, site).await;
        });
        StaticSite { url, server }
    }
}

/// The file at `path` below `root` with its content type (browsers insist on it for scripts,
/// wasm and service workers), or 404; nothing outside `root`.
fn file_response(root: &Path, path: &str) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let relative = match path.trim_start_matches('/') {
        "" => "index.html",
        relative => relative,
    };
    if relative
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let content_type = match relative.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    };
    match std::fs::read(root.join(relative)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
