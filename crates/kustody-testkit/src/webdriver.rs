//! A small W3C WebDriver client for the console's browser tests: Debian's `chromedriver`
//! driving `chromium` headless.
//!
//! Why not a crate: fantoccini, the maintained Rust client, pulls Mozilla's `webdriver` crate
//! and with it a second `http`, a second `cookie` and an ICU segmenter — duplicates deny.toml
//! refuses, for a test-only need of a dozen JSON calls over plain HTTP to localhost. This is
//! those calls (W3C WebDriver: session, navigate, find, click, send keys, text, screenshot).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where Debian installs them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser when installed; `None` with a SKIP notice otherwise, and a failure under
/// `CI=true` (scripts/test installs both).
pub fn available() -> bool {
    let ok = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but chromium or chromedriver is missing (scripts/test installs them)"
        );
        eprintln!("SKIP: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)");
    }
    ok
}

/// A running chromedriver with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element reference.
#[derive(Debug, Clone)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium that accepts the test
    /// server's self-signed certificate.
    ///
    /// # Panics
    ///
    /// When either cannot start: the test cannot run.
    pub fn start() -> Browser {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(9515);
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut b = Browser { driver, port, session: String::new(), _profile: profile };
        let t0 = Instant::now();
        while b.call("GET", "/status", None).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--ignore-certificate-errors".to_owned(),
            "--window-size=1400,1000".to_owned(),
            format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}});
        let v = b.call("POST", "/session", Some(&caps)).unwrap_or_else(|e| panic!("new session: {e}"));
        b.session =
            v.get("sessionId").and_then(Value::as_str).unwrap_or_else(|| panic!("no session id: {v}")).to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open: read the head, then Content-Length bytes
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (head_len, length) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before an answer".into());
            }
            raw.extend_from_slice(buf.get(..n).unwrap_or_default());
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(raw.get(..at).unwrap_or_default()).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
                break (at + 4, length);
            }
        };
        let Some(length) = length else { return Err("an answer without Content-Length".into()) };
        while raw.len() < head_len + length {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let body = String::from_utf8_lossy(raw.get(head_len..).unwrap_or_default()).into_owned();
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if value.get("error").is_some() {
            return Err(format!("{method} {path}: {value}"));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// # Panics
    ///
    /// When the browser refuses: the test fails there.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url }))).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// The page's HTML.
    pub fn source(&self) -> String {
        self.session_call("GET", "/source", None).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    pub fn find(&self, css: &str) -> Option<Element> {
        let v = self.session_call("POST", "/element", Some(&json!({"using": "css selector", "value": css}))).ok()?;
        v.get(ELEMENT_KEY).and_then(Value::as_str).map(|s| Element(s.to_owned()))
    }

    /// Waits until `css` matches, up to `timeout`.
    ///
    /// # Panics
    ///
    /// When it never does (with the page's source).
    pub fn wait(&self, css: &str, timeout: Duration) -> Element {
        self.poll(&format!("`{css}`"), timeout, || self.find(css)).0
    }

    /// Calls `f` every 50 ms until it gives a value; returns it and how long it took.
    fn poll<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f() {
                return (v, t0.elapsed());
            }
            assert!(
                t0.elapsed() < timeout,
                "{what} did not appear within {timeout:?} on {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the page's text contains `text`; returns how long it took.
    ///
    /// # Panics
    ///
    /// When it never does.
    pub fn wait_text(&self, text: &str, timeout: Duration) -> Duration {
        self.poll(&format!("`{text}`"), timeout, || self.text_of("body").contains(text).then_some(())).1
    }

    /// The rendered text of the first element matching `css` (empty when none).
    pub fn text_of(&self, css: &str) -> String {
        self.find(css).map(|e| self.text(&e)).unwrap_or_default()
    }

    pub fn text(&self, e: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", e.0), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// # Panics
    ///
    /// When the click is refused.
    pub fn click(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(&json!({})))
            .unwrap_or_else(|err| panic!("{err}"));
    }

    /// # Panics
    ///
    /// When typing is refused.
    pub fn type_in(&self, e: &Element, text: &str) {
        self.session_call("POST", &format!("/element/{}/value", e.0), Some(&json!({ "text": text })))
            .unwrap_or_else(|err| panic!("{err}"));
    }

    /// Answers the page's `confirm()` dialog (accept or dismiss).
    pub fn answer_dialog(&self, accept: bool) -> Result<(), String> {
        let what = if accept { "accept" } else { "dismiss" };
        self.session_call("POST", &format!("/alert/{what}"), Some(&json!({}))).map(drop)
    }

    /// Deletes the cookies of the current page's site (another site's session, say).
    pub fn clear_cookies(&self) -> Result<(), String> {
        self.session_call("DELETE", "/cookie", None).map(drop)
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self, to: &Path) -> Result<(), String> {
        use base64::Engine as _;
        let v = self.session_call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or("no screenshot")?)
            .map_err(|e| e.to_string())?;
        std::fs::write(to, png).map_err(|e| e.to_string())
    }

    /// Runs a script in the page and returns its value.
    pub fn script(&self, js: &str) -> Result<Value, String> {
        self.session_call("POST", "/execute/sync", Some(&json!({"script": js, "args": []})))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
