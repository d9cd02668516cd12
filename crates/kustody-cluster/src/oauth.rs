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

fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if uri.host().is_some_and(plain_http_ok) => Ok(uri),
        _ => Err(format!(
            "refusing to send credentials to {url:?}: only https (or http to loopback and metadata servers)"
        )),
    }
}

/// Send a request; returns status and body (at most 1 MiB).
pub async fn send(req: http::Request<Vec<u8>>) -> Result<(u16, Vec<u8>), String> {
    check_url(&req.uri().to_string())?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("system TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let uri = req.uri().to_string();
    let req = req.map(|b| Full::new(Bytes::from(b)));
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{uri}: {e}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{uri}: reading the response: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body.to_vec()))
    };
    tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| format!("{uri}: no answer within {TIMEOUT:?}"))?
}

/// Percent-encoding of everything but RFC 3986's unreserved characters: form values and URL
/// query values alike.
pub fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
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

/// POST a form; the JSON answer on 2xx, else the endpoint's own error text.
pub async fn post_form(
    url: &str,
    pairs: &[(&str, &str)],
    bearer: Option<&SecretString>,
) -> Result<serde_json::Value, String> {
    let mut req = http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {}", b.expose_secret()));
    }
    let req = req.body(form(pairs)).map_err(|e| e.to_string())?;
    json_answer(url, send(req).await?)
}

pub fn json_answer(url: &str, (status, body): (u16, Vec<u8>)) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if (200..300).contains(&status) {
        if v.is_null() {
            return Err(format!("{url}: {status} with a body that is not JSON"));
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
    Err(format!("{url}: {status}: {why}"))
}

/// The access token of an OAuth token response (`access_token`, `expires_in` seconds).
pub fn token_of(v: &serde_json::Value, now: SystemTime) -> Result<AccessToken, String> {
    let token = v
        .get("access_token")
        .or_else(|| v.get("accessToken"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the token response has no access_token")?;
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let expires_at = match (expires_in, v.get("expireTime").and_then(|x| x.as_str())) {
        (Some(s), _) => now + Duration::from_secs(s),
        (None, Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| UNIX_EPOCH + Duration::from_secs(d.timestamp().max(0) as u64))
            .map_err(|e| format!("expireTime {t:?}: {e}"))?,
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

/// The DER bytes of the first PEM block labelled `label` (e.g. `PRIVATE KEY`, `CERTIFICATE`).
pub fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem.get(start..)?.find(&end)?;
    let body: String = pem.get(start..stop)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// A compact JWS, RS256, over `header` and `claims`, with a PKCS#8 RSA key in PEM.
pub fn jwt_rs256(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key_pem: &SecretString,
) -> Result<String, String> {
    let der = pem_block(key_pem.expose_secret(), "PRIVATE KEY")
        .ok_or("the private key is not a PKCS#8 PEM (BEGIN PRIVATE KEY)")?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("the private key: {e}"))?;
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut sig)
        .map_err(|e| format!("signing: {e}"))?;
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
        assert!(e.contains("400") && e.contains("bad key"), "{e}");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form(&[("a b", "c&d=é")]), b"a%20b=c%26d%3D%C3%A9".to_vec());
    }
}
