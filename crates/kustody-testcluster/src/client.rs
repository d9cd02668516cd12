//! A small HTTPS + WebSocket client for tests against the cluster: real TLS (client
//! certificates or bearer tokens), real HTTP/1.1, real WebSocket frames over a socket. kustody
//! itself talks to clusters through kube-rs; this client exists so the harness can be tested on
//! its own and so tests can act as an attacker with a stolen token.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: tests fail by panicking"
)]

use std::sync::Arc;
use std::time::Duration;

use crate::TestCluster;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone)]
pub struct Client {
    addr: String,
    tls: tokio_rustls::TlsConnector,
    token: Option<String>,
    pub user_agent: String,
    pub headers: Vec<(String, String)>,
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One exec/attach session as the client saw it.
#[derive(Debug, Default)]
pub struct Session {
    pub protocol: String,
    pub frames: Vec<(u8, Vec<u8>)>,
    pub close_code: Option<u16>,
    pub handshake_status: Option<u16>,
    pub handshake_body: String,
}

impl Session {
    pub fn channel(&self, ch: u8) -> Vec<u8> {
        self.frames.iter().filter(|(c, _)| *c == ch).flat_map(|(_, d)| d.clone()).collect()
    }
    pub fn status(&self) -> Value {
        serde_json::from_slice(&self.channel(3)).unwrap_or(Value::Null)
    }
}

fn connector(ca_pem: &str, cert: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        let _ = roots.add(c);
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots));
    let cfg = match (b, cert) {
        (Ok(b), Some((cert_pem, key_pem))) => {
            let key = pem_block(key_pem, "PRIVATE KEY").map(|d| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(d)));
            match key {
                Some(k) => b.with_client_auth_cert(pem_certs(cert_pem), k).ok(),
                None => None,
            }
        }
        (Ok(b), None) => Some(b.with_no_client_auth()),
        _ => None,
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg.unwrap_or_else(|| {
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
            .unwrap_or_else(|_| unreachable_config())
    })))
}

fn unreachable_config() -> rustls::ClientConfig {
    // Only reached if the ring provider cannot build a config at all.
    std::process::abort()
}

fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let s = pem.find(&begin)? + begin.len();
    let e = pem[s..].find(&end)? + s;
    let b64: String = pem[s..e].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    pem.split("-----END CERTIFICATE-----")
        .filter_map(|chunk| pem_block(&format!("{chunk}-----END CERTIFICATE-----"), "CERTIFICATE"))
        .map(CertificateDer::from)
        .collect()
}

impl Client {
    pub fn admin(c: &TestCluster) -> Client {
        let a = c.admin_cert();
        Client::with(c, Some((&a.cert_pem, &a.key_pem)), None)
    }
    pub fn token(c: &TestCluster, token: &str) -> Client {
        Client::with(c, None, Some(token))
    }
    pub fn anonymous(c: &TestCluster) -> Client {
        Client::with(c, None, None)
    }
    pub fn cert(c: &TestCluster, cert_pem: &str, key_pem: &str) -> Client {
        Client::with(c, Some((cert_pem, key_pem)), None)
    }
    fn with(c: &TestCluster, cert: Option<(&str, &str)>, token: Option<&str>) -> Client {
        Client {
            addr: c.url().trim_start_matches("https://").to_string(),
            tls: connector(c.ca_pem(), cert),
            token: token.map(String::from),
            user_agent: "kustody-testcluster-tests/1.0".into(),
            headers: vec![],
        }
    }

    async fn stream(&self) -> R<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        Ok(self.tls.connect(name, tcp).await?)
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> R<hyper::Response<hyper::body::Incoming>> {
        let tls = self.stream().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("user-agent", &self.user_agent)
            .header("content-type", content_type)
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        Ok(sender.send_request(b.body(Full::new(Bytes::from(body)))?).await?)
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<&Value>) -> R<Resp> {
        self.req_ct(method, path, "application/json", body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
            .await
    }

    pub async fn req_ct(&self, method: &str, path: &str, ct: &str, body: Vec<u8>) -> R<Resp> {
        let r = self.send(method, path, ct, body).await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await?.to_bytes();
        Ok(Resp { status, headers, body })
    }

    /// Read watch events until `n` arrived or `timeout` passed.
    pub async fn watch(&self, path: &str, n: usize, timeout: Duration) -> R<Vec<Value>> {
        let r = self.send("GET", path, "application/json", vec![]).await?;
        let mut body = r.into_body();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Some(Ok(frame)) = frame else { break };
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// Exec or attach over WebSocket. `stdin` is sent after the handshake; with v5 stdin is then
    /// closed with `[255, 0]`, otherwise (v4) the client closes the socket after `close_after`.
    pub async fn ws(
        &self,
        path: &str,
        protocols: &[&str],
        stdin: Option<&[u8]>,
        close_after: Option<Duration>,
    ) -> R<Session> {
        let tls = self.stream().await?;
        let mut req = format!("wss://{}{}", self.addr, path).into_client_request()?;
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse()?);
        req.headers_mut().insert("user-agent", self.user_agent.parse()?);
        if let Some(t) = &self.token {
            req.headers_mut().insert("authorization", format!("Bearer {t}").parse()?);
        }
        let mut s = Session::default();
        let (mut ws, resp) = match tokio_tungstenite::client_async(req, tls).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                s.handshake_status = Some(r.status().as_u16());
                s.handshake_body = String::from_utf8_lossy(r.body().as_deref().unwrap_or(&[])).into_owned();
                return Ok(s);
            }
            Err(e) => return Err(e.into()),
        };
        s.protocol =
            resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if let Some(data) = stdin {
            let mut f = vec![0u8];
            f.extend_from_slice(data);
            ws.send(Message::Binary(f.into())).await?;
            if s.protocol.starts_with("v5") {
                ws.send(Message::Binary(vec![255, 0].into())).await?;
            }
        }
        let mut close_at = close_after.map(|d| tokio::time::Instant::now() + d);
        loop {
            let msg = match close_at {
                Some(t) => tokio::select! {
                    m = ws.next() => m,
                    _ = tokio::time::sleep_until(t) => {
                        close_at = None;
                        let _ = ws.close(None).await;
                        continue;
                    }
                },
                None => tokio::time::timeout(Duration::from_secs(30), ws.next()).await.ok().flatten(),
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some((ch, rest)) = b.split_first() {
                        s.frames.push((*ch, rest.to_vec()));
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    s.close_code = c.map(|c| u16::from(c.code));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        Ok(s)
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => std::panic::panic_any(format!("runtime: {e}")),
    }
}

/// Start a cluster, or skip (locally) / fail (CI=true) when runc or busybox-static is missing.
pub fn cluster(b: crate::Builder) -> Option<TestCluster> {
    match b.start() {
        Ok(c) => Some(c),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") && format!("{e:#}").contains("apt-get install") => {
            eprintln!("SKIP: {e:#}");
            None
        }
        Err(e) => std::panic::panic_any(format!("test cluster did not start: {e:#}")),
    }
}
