//! The little HTTP that native GKE and AKS tokens need: form POSTs and GETs to token
//! endpoints, on the hyper/rustls stack kube-rs already builds (system roots), with size and
//! time limits; RS256 JWT assertions signed with ring.
//!
//! Plain `http://` is allowed only to loopback addresses and the cloud metadata servers:
//! a token must never cross a network in clear text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use secrecy::{ExposeSecret, SecretString};

pub use crate::error::CredentialError;

/// An access token and when it stops working.
#[derive(Clone)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// Largest token response read.
const MAX_BODY: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Hosts reachable over plain HTTP: loopback and the metadata servers.
fn plain_http_ok(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h == "metadata.google.internal"
        || h == "169.254.169.254"
        || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_url(url: &str) -> Result<http::Uri, CredentialError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| CredentialError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if uri.host().is_some_and(plain_http_ok) => Ok(uri),
        _ => Err(CredentialError::InsecureUrl { url: url.to_owned() }),
    }
}

/// Send a request; returns status and body (at most 1 MiB).
pub async fn send(req: http::Request<Vec<u8>>) -> Result<(u16, Vec<u8>), CredentialError> {
    let uri = req.uri().to_string();
    check_url(&uri)?;
    let transport = |reason: String| CredentialError::Transport { url: uri.clone(), reason };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| transport(format!("system TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let req = req.map(|b| Full::new(Bytes::from(b)));
    let fut = async {
        let resp = client.request(req).await.map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the response: {e}")))?
            .to_bytes();
        Ok::<_, CredentialError>((status, body.to_vec()))
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| CredentialError::Timeout { url: uri.clone(), after: TIMEOUT })?
}

/// RFC 3986's unreserved characters stay; everything else is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encoding of everything but RFC 3986's unreserved characters: form values and URL
/// query values alike.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// `application/x-www-form-urlencoded`.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// Build a request (method, URL, headers, body) for [`send`].
pub(crate) fn request(
    b: http::request::Builder,
    url: &str,
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>, CredentialError> {
    b.body(body).map_err(|e| CredentialError::BadUrl { url: url.to_owned(), reason: e.to_string() })
}

/// POST a form; the JSON answer on 2xx, else the endpoint's own error text.
pub async fn post_form(
    url: &str,
    pairs: &[(&str, &str)],
    bearer: Option<&SecretString>,
) -> Result<serde_json::Value, CredentialError> {
    let mut req = http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {}", b.expose_secret()));
    }
    let req = request(req, url, form(pairs))?;
    json_answer(url, send(req).await?)
}

pub fn json_answer(url: &str, (status, body): (u16, Vec<u8>)) -> Result<serde_json::Value, CredentialError> {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if (200..300).contains(&status) {
        if v.is_null() {
            return Err(CredentialError::BadAnswer {
                url: url.to_owned(),
                problem: format!("{status} with a body that is not JSON"),
            });
        }
        return Ok(v);
    }
    // OAuth errors: {"error": ..., "error_description": ...}; Google APIs: {"error": {"message": ...}}
    let why = v
        .get("error_description")
        .and_then(|x| x.as_str())
        .or_else(|| v.pointer("/error/message").and_then(|x| x.as_str()))
        .or_else(|| v.get("error").and_then(|x| x.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body.get(..body.len().min(300)).unwrap_or_default()).into_owned());
    Err(CredentialError::Endpoint { url: url.to_owned(), status, message: why })
}

/// The access token of an OAuth token response (`access_token`, `expires_in` seconds).
pub fn token_of(v: &serde_json::Value, now: SystemTime) -> Result<AccessToken, CredentialError> {
    const ORIGIN: &str = "the token response";
    let token = v
        .get("access_token")
        .or_else(|| v.get("accessToken"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CredentialError::field(ORIGIN, "access_token", "has no access_token"))?;
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let expires_at = match (expires_in, v.get("expireTime").and_then(|x| x.as_str())) {
        (Some(s), _) => now + Duration::from_secs(s),
        (None, Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| UNIX_EPOCH + Duration::from_secs(d.timestamp().max(0) as u64))
            .map_err(|e| CredentialError::field(ORIGIN, "expireTime", format!("expireTime {t:?}: {e}")))?,
        (None, None) => now + Duration::from_secs(300),
    };
    Ok(AccessToken { token: SecretString::from(token.to_owned()), expires_at })
}

/// The ExecCredential kubectl reads from a credential plugin.
pub fn exec_credential(t: &AccessToken) -> serde_json::Value {
    use secrecy::ExposeSecret;
    let exp: chrono::DateTime<chrono::Utc> = t.expires_at.into();
    serde_json::json!({"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1", "spec": {},
        "status": {"expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "token": t.token.expose_secret()}})
}

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A compact JWS, RS256, over `header` and `claims`, with a PKCS#8 RSA key in PEM.
pub fn jwt_rs256(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key_pem: &SecretString,
) -> Result<String, CredentialError> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.expose_secret().as_bytes())
        .map_err(|_| CredentialError::Key("the private key is not a PKCS#8 PEM (BEGIN PRIVATE KEY)".into()))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| CredentialError::Key(format!("the private key: {e}")))?;
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut sig)
        .map_err(|e| CredentialError::Signing(e.to_string()))?;
    Ok(format!("{input}.{}", b64url(&sig)))
}

pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_metadata() {
        assert!(check_url("https://oauth2.googleapis.com/token").is_ok());
        assert!(check_url("http://127.0.0.1:8080/token").is_ok());
        assert!(check_url("http://[::1]:80/x").is_ok());
        assert!(check_url("http://169.254.169.254/metadata").is_ok());
        assert!(check_url("http://metadata.google.internal/computeMetadata").is_ok());
        assert!(check_url("http://login.microsoftonline.com/x").is_err());
        assert!(check_url("ftp://x").is_err());
    }

    #[test]
    fn token_responses() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let t = token_of(&serde_json::json!({"access_token": "a", "expires_in": 3599}), now).unwrap();
        assert_eq!(epoch(t.expires_at), 4599);
        let t = token_of(&serde_json::json!({"access_token": "a", "expires_in": "60"}), now).unwrap();
        assert_eq!(epoch(t.expires_at), 1060);
        let t = token_of(&serde_json::json!({"accessToken": "a", "expireTime": "1970-01-01T01:00:00Z"}), now).unwrap();
        assert_eq!(epoch(t.expires_at), 3600);
        assert!(token_of(&serde_json::json!({"expires_in": 1}), now).is_err());
        assert!(format!("{t:?}").contains("redacted"));
        let e = json_answer("u", (400, br#"{"error":"invalid_grant","error_description":"bad key"}"#.to_vec()))
            .unwrap_err();
        assert!(matches!(&e, CredentialError::Endpoint { status: 400, message, .. } if message == "bad key"), "{e}");
        assert_eq!(e.to_string(), "u: 400: bad key");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form(&[("a b", "c&d=é")]), b"a%20b=c%26d%3D%C3%A9".to_vec());
        assert_eq!(percent_encode("AZaz09-_.~/+"), "AZaz09-_.~%2F%2B");
    }

    #[test]
    fn keys_from_pem() {
        let e = jwt_rs256(&serde_json::json!({}), &serde_json::json!({}), &SecretString::from("no pem".to_owned()))
            .unwrap_err();
        assert!(matches!(e, CredentialError::Key(_)), "{e}");
        assert!(e.to_string().contains("PKCS#8"), "{e}");
    }
}
