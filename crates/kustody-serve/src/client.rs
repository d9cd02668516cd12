//! A client of the server's API, for `kustody search --server`: HTTPS GET with a bearer token,
//! trusting the server's certificate (or CA) given as a file.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Largest answer read.
const MAX_ANSWER: usize = 256 << 20;

/// GETs `path_and_query` from `server` (`https://host:port`); the answer's status and body.
pub fn get(server: &str, ca: Option<&Path>, token: Option<&str>, path_and_query: &str) -> Result<(u16, String)> {
    request(server, ca, token, "GET", path_and_query, None)
}

/// POSTs a JSON body.
pub fn post(server: &str, ca: Option<&Path>, token: Option<&str>, path: &str, body: &str) -> Result<(u16, String)> {
    request(server, ca, token, "POST", path, Some(body.to_owned()))
}

fn request(
    server: &str,
    ca: Option<&Path>,
    token: Option<&str>,
    method: &str,
    path_and_query: &str,
    body: Option<String>,
) -> Result<(u16, String)> {
    let rest = server.strip_prefix("https://").ok_or_else(|| anyhow!("--server must be an https:// URL"))?;
    let authority = rest.trim_end_matches('/').to_owned();
    let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.clone()
    } else {
        format!("{authority}:443")
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(p) => {
            for c in CertificateDer::pem_file_iter(p).with_context(|| format!("cannot read `{}`", p.display()))? {
                roots.add(c.with_context(|| format!("bad PEM in `{}`", p.display()))?)?;
            }
        }
        None => bail!("--ca is required with --server: the server's certificate (DATA_DIR/tls/server.crt) or its CA"),
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(30), tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| anyhow!("bad host `{host}`"))?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.context("TLS handshake")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(path_and_query).header("host", &authority);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = http_body_util::Full::new(Bytes::from(body.unwrap_or_default()));
        let resp = sender.send_request(req.body(body)?).await?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// `k=v&…` with values percent-encoded.
pub fn query(params: &[(&str, Option<String>)]) -> String {
    params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect::<Vec<_>>().join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
