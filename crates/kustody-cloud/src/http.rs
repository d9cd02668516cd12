//! One HTTPS client per source, keeping its connections (a poll every few seconds should not
//! pay a TLS handshake each time), with a size limit on every answer and a timeout on every
//! request. Plain `http://` only to loopback addresses (local endpoints in tests and
//! benchmarks): credentials never cross a network in clear text.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;

/// What went wrong before an answer came.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("`{url}`: plain http is allowed to loopback addresses only (use https)")]
    Insecure { url: String },
    #[error("`{url}`: {reason}")]
    Transport { url: String, reason: String },
    #[error("`{url}`: no answer within {}s", after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error("`{url}`: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

type Inner = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A pooled HTTPS client (system trust roots).
#[derive(Clone)]
pub struct Client {
    inner: Inner,
    pub max_body: usize,
    pub timeout: Duration,
}

impl Client {
    /// A client reading answers of at most `max_body` bytes.
    ///
    /// # Errors
    ///
    /// When the system's trust roots cannot be read.
    pub fn new(max_body: usize, timeout: Duration) -> Result<Client, HttpError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| HttpError::Transport { url: String::new(), reason: format!("system TLS roots: {e}") })?
            .https_or_http()
            .enable_http1()
            .build();
        let inner = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .build(https);
        Ok(Client { inner, max_body, timeout })
    }

    /// Sends `req` and reads its answer.
    ///
    /// # Errors
    ///
    /// Transport failures, timeouts and answers over the size limit; any HTTP status is an answer.
    pub async fn send(&self, req: http::Request<Vec<u8>>) -> Result<Answer, HttpError> {
        let url = req.uri().to_string();
        check(req.uri(), &url)?;
        let req = req.map(|b| Full::new(Bytes::from(b)));
        let limit = self.max_body;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Transport { url: url.clone(), reason: error_chain(&e) })?;
            let status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    HttpError::TooLarge { url: url.clone(), limit }
                } else {
                    HttpError::Transport { url: url.clone(), reason: format!("reading the answer: {e}") }
                }
            })?;
            Ok(Answer { status, headers: parts.headers, body: body.to_bytes().to_vec() })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| HttpError::Timeout { url: url.clone(), after: self.timeout })?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn check(uri: &http::Uri, url: &str) -> Result<(), HttpError> {
    let loopback = |h: &str| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    match uri.scheme_str() {
        Some("https") if uri.host().is_some() => Ok(()),
        Some("http") if uri.host().is_some_and(loopback) => Ok(()),
        Some("http") => Err(HttpError::Insecure { url: url.to_owned() }),
        _ => Err(HttpError::BadUrl { url: url.to_owned(), reason: "not an http(s) URL".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in
            ["https://logs.eu-west-1.amazonaws.com/", "http://127.0.0.1:5000/", "http://[::1]:1/", "http://localhost/"]
        {
            assert!(check(&ok.parse().unwrap(), ok).is_ok(), "{ok}");
        }
        for bad in ["http://logs.eu-west-1.amazonaws.com/", "http://10.0.0.1/", "ftp://127.0.0.1/"] {
            assert!(check(&bad.parse().unwrap(), bad).is_err(), "{bad}");
        }
    }
}
