//! The HTTP(S) transport: one hyper client per sink over rustls (ring), trusting the system's
//! roots plus the sink's `ca_file`. Every request runs under the sink's timeout; response
//! bodies are read up to [`BODY_LIMIT`]. Status codes are classified here: 2xx is success;
//! 408, 425, 429, 5xx and transport failures are worth retrying (honouring `Retry-After`
//! seconds); any other status is not.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::SendError;

/// Response bodies are read up to this size; the rest is dropped.
pub const BODY_LIMIT: usize = 64 * 1024;

/// An http(s) URL with a host, or why not (the message never repeats the URL).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err("an http:// or https:// URL with a host expected".into()),
    }
}

/// The TLS client configuration: system roots plus the PEM certificates of `ca_file`.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {}: no PEM certificate in it", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What came back.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<HttpClient, String> {
        let tls = tls_config(ca_file)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        Ok(HttpClient { client, timeout })
    }

    /// Sends `req`; `Ok` only for a 2xx answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, SendError> {
        let round_trip = async {
            let resp = self.client.request(req).await.map_err(|e| SendError::retry(transport_message(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_limited(resp.into_body()).await;
            Ok::<_, SendError>((Reply { status, body }, retry_after))
        };
        let (reply, retry_after) = tokio::time::timeout(self.timeout, round_trip)
            .await
            .map_err(|_| SendError::retry(format!("no answer within {:?}", self.timeout)))??;
        classify(reply, retry_after)
    }
}

/// The error and its causes, without the request (whose URL may be a credential).
fn transport_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = String::from("request failed");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        msg.push_str(": ");
        msg.push_str(&err.to_string());
        cur = err.source();
    }
    msg
}

async fn read_limited(mut body: hyper::body::Incoming) -> Bytes {
    let mut out = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = BODY_LIMIT.saturating_sub(out.len());
            out.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            if out.len() >= BODY_LIMIT {
                break;
            }
        }
    }
    Bytes::from(out)
}

/// 2xx is `Ok`; otherwise a [`SendError`] saying whether to retry.
pub(crate) fn classify(reply: Reply, retry_after: Option<Duration>) -> Result<Reply, SendError> {
    let code = reply.status.as_u16();
    if reply.status.is_success() {
        return Ok(reply);
    }
    let text = String::from_utf8_lossy(&reply.body);
    let text = crate::render::truncate_chars(&crate::render::one_line(text.trim()), 300);
    let message = if text.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {text}") };
    let retryable = matches!(code, 408 | 425 | 429) || reply.status.is_server_error();
    Err(SendError { retryable, retry_after: retry_after.filter(|_| retryable), message })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    fn reply(code: u16, body: &str) -> Reply {
        Reply { status: StatusCode::from_u16(code).unwrap(), body: Bytes::from(body.to_owned()) }
    }

    #[test]
    fn status_classes() {
        assert!(classify(reply(202, ""), None).is_ok());
        for code in [408, 425, 429, 500, 503] {
            assert!(classify(reply(code, ""), None).unwrap_err().retryable, "{code}");
        }
        let e = classify(reply(400, "{\"status\":\"invalid event\"}"), Some(Duration::from_secs(3))).unwrap_err();
        assert!(!e.retryable);
        assert_eq!(e.retry_after, None);
        assert_eq!(e.message, "HTTP 400: {\"status\":\"invalid event\"}");
        let e = classify(reply(429, ""), Some(Duration::from_secs(7))).unwrap_err();
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn urls() {
        assert!(check_url("https://events.pagerduty.com/v2/enqueue").is_ok());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
    }
}
