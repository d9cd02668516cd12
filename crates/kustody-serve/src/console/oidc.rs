//! OpenID Connect login (optional): the authorization code flow with PKCE (S256), `state` and
//! `nonce`, the client authenticating with its secret (`client_secret_basic`). The ID token is
//! checked by `jsonwebtoken` against the issuer's published keys (RS256/PS256/ES256 only: never
//! `none` or a shared-secret algorithm), its issuer, audience, expiry and nonce. The person's
//! console role comes from a claim (groups, by default) through `--oidc-role VALUE=ROLE`, the
//! highest role wins; no mapped value and no `--oidc-default-role`: refused.
//!
//! The session cookie is `SameSite=Strict`, which a browser does not send on the first
//! navigation after a cross-site redirect; the callback therefore answers with a small page
//! that moves on to the target (a same-site navigation), instead of a redirect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::html::{esc, page, q};
use super::users::ConsoleRole;
use crate::http::AppState;

/// The cookie that ties a login in progress to the browser that started it.
const STATE_COOKIE: &str = "kustody_oidc";
/// Logins in progress kept at most, and for how long.
const MAX_PENDING: usize = 10_000;
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 1 << 20;

/// What `kustody serve --oidc-*` configures.
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// `https://PUBLIC/login/oidc/callback`, registered with the provider.
    pub redirect_url: String,
    /// Extra CA certificates (PEM) to trust for the provider.
    pub ca_pem: Option<Vec<u8>>,
    pub scopes: Vec<String>,
    /// The claim naming the person (`email` by default).
    pub username_claim: String,
    /// The claim holding group or role values (`groups` by default).
    pub roles_claim: String,
    /// Claim value → console role.
    pub role_map: Vec<(String, ConsoleRole)>,
    pub default_role: Option<ConsoleRole>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

struct Pending {
    nonce: String,
    verifier: String,
    next: String,
    at: Instant,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct Oidc {
    cfg: OidcConfig,
    http: HttpClient,
    discovery: tokio::sync::Mutex<Option<(Discovery, Instant)>>,
    keys: tokio::sync::Mutex<Option<(JwkSet, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn random() -> Result<String, String> {
    crate::auth::random_token().map_err(|e| e.to_string())
}

impl Oidc {
    pub fn new(cfg: OidcConfig) -> anyhow::Result<Oidc> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(pem) = &cfg.ca_pem {
            for c in <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| anyhow::anyhow!("--oidc-ca: {e}"))?)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let issuer = cfg.issuer.trim_end_matches('/').to_owned();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| issuer.starts_with(p));
        if !issuer.starts_with("https://") && !loopback {
            anyhow::bail!("--oidc-issuer must be an https:// URL (plain http only on the loopback, for testing)");
        }
        Ok(Oidc {
            cfg: OidcConfig { issuer, ..cfg },
            http,
            discovery: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch(&self, req: hyper::Request<Full<Bytes>>) -> Result<serde_json::Value, String> {
        let uri = req.uri().to_string();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| format!("{uri}: no answer within 10 s"))?
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{uri}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            // the provider's error code and description, not its whole page
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(format!(
                "{uri}: {status} {} {}",
                str_of(&v, "error").unwrap_or(""),
                str_of(&v, "error_description").unwrap_or("")
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{uri}: not JSON: {e}"))
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, String> {
        let req = hyper::Request::get(url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.fetch(req).await
    }

    /// The provider's metadata, kept for an hour.
    async fn discovery(&self) -> Result<Discovery, String> {
        let mut d = self.discovery.lock().await;
        if let Some((x, at)) = d.as_ref().filter(|(_, at)| at.elapsed() < Duration::from_secs(3600)) {
            let _ = at;
            return Ok(x.clone());
        }
        let v = self.get(&format!("{}/.well-known/openid-configuration", self.cfg.issuer)).await?;
        let x: Discovery = serde_json::from_value(v).map_err(|e| format!("the provider's metadata: {e}"))?;
        if x.issuer.trim_end_matches('/') != self.cfg.issuer {
            return Err(format!("the provider names itself `{}`, not `{}`", x.issuer, self.cfg.issuer));
        }
        *d = Some((x.clone(), Instant::now()));
        Ok(x)
    }

    /// The key `kid` signs with; the key set is fetched again (at most once a minute) when it
    /// does not hold it (the provider rotated its keys).
    async fn key(&self, kid: Option<&str>, jwks_uri: &str) -> Result<jsonwebtoken::jwk::Jwk, String> {
        let mut k = self.keys.lock().await;
        let find = |set: &JwkSet| match kid {
            Some(id) => set.find(id).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(j) = k.as_ref().and_then(|(set, _)| find(set)) {
            return Ok(j);
        }
        if k.as_ref().is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(60)) {
            return Err(format!("no key `{}` in the provider's key set", kid.unwrap_or("?")));
        }
        let v = self.get(jwks_uri).await?;
        let set: JwkSet = serde_json::from_value(v).map_err(|e| format!("the provider's keys: {e}"))?;
        let found = find(&set);
        *k = Some((set, Instant::now()));
        found.ok_or_else(|| format!("no key `{}` in the provider's key set", kid.unwrap_or("?")))
    }

    /// The console role of a person's claims.
    fn role(&self, claims: &serde_json::Value) -> Option<ConsoleRole> {
        let values: Vec<String> = match &claims[&self.cfg.roles_claim] {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        self.cfg
            .role_map
            .iter()
            .filter(|(v, _)| values.contains(v))
            .map(|(_, r)| *r)
            .max_by_key(|r| match r {
                ConsoleRole::Viewer => 0,
                ConsoleRole::Responder => 1,
                ConsoleRole::Admin => 2,
            })
            .or(self.cfg.default_role)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    page(
        status,
        "Login failed",
        None,
        &format!(
            r#"<div class="login card"><h1>Login failed</h1><p class="error" id="oidc-error">{}</p><p><a href="/login">Back</a></p></div>"#,
            esc(msg)
        ),
    )
}

/// Starts a login: to the provider, with state, nonce and a PKCE challenge.
pub async fn start(State(s): State<Arc<AppState>>, Query(sq): Query<StartQuery>) -> Response {
    let Some(o) = s.oidc.clone() else { return error_page(StatusCode::NOT_FOUND, "OpenID Connect is not configured") };
    let d = match o.discovery().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "OpenID Connect provider unusable");
            return error_page(StatusCode::BAD_GATEWAY, &format!("the identity provider is unusable: {e}"));
        }
    };
    let (Ok(state), Ok(nonce), Ok(verifier)) = (random(), random(), random()) else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "no system randomness");
    };
    let challenge = {
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    {
        let mut p = o.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, x| x.at.elapsed() < PENDING_TTL);
        if p.len() >= MAX_PENDING {
            return error_page(StatusCode::SERVICE_UNAVAILABLE, "too many logins in progress; try again in a minute");
        }
        let next = super::local(sq.next.as_deref());
        p.insert(state.clone(), Pending { nonce: nonce.clone(), verifier, next, at: Instant::now() });
    }
    let sep = if d.authorization_endpoint.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        d.authorization_endpoint,
        q(&o.cfg.client_id),
        q(&o.cfg.redirect_url),
        q(&o.cfg.scopes.join(" ")),
        q(&state),
        q(&nonce),
        q(&challenge)
    );
    let mut r = super::redirect(&url);
    let c = format!("{STATE_COOKIE}={state}; Path=/login/oidc; Secure; HttpOnly; SameSite=Lax; Max-Age=600");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider's answer: code → tokens → a checked ID token → a console session.
pub async fn callback(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(cq): Query<CallbackQuery>) -> Response {
    let Some(o) = s.oidc.clone() else { return error_page(StatusCode::NOT_FOUND, "OpenID Connect is not configured") };
    if let Some(e) = &cq.error {
        return error_page(
            StatusCode::UNAUTHORIZED,
            &format!("the identity provider refused: {e} {}", cq.error_description.as_deref().unwrap_or("")),
        );
    }
    let (Some(code), Some(state)) = (cq.code, cq.state) else {
        return error_page(StatusCode::BAD_REQUEST, "the provider's answer has no code or state");
    };
    // the state must be the one this browser started with, and is used once
    let cookie_state = super::session::cookie_named(&headers, STATE_COOKIE);
    if cookie_state.as_deref() != Some(state.as_str()) {
        s.metrics.unauthenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return error_page(StatusCode::BAD_REQUEST, "this login was not started by this browser (state mismatch)");
    }
    let pending = o.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&state);
    let Some(p) = pending.filter(|p| p.at.elapsed() < PENDING_TTL) else {
        return error_page(StatusCode::BAD_REQUEST, "this login expired or was already used; start again");
    };
    match finish(&s, &o, &code, &p).await {
        Ok((identity, role)) => {
            let (id, _) = match s.sessions.open(identity.clone(), role.name()) {
                Ok(x) => x,
                Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            tracing::info!(user = %identity.name, role = role.name(), "console login (OpenID Connect)");
            let target = esc(&p.next);
            let html = format!(
                r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}"><title>Logged in · kustody</title></head><body><p>Logged in. <a href="{target}">Continue</a></p></body></html>"#
            );
            let mut r = super::html::secure(
                (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
            );
            let c = format!("{}={id}; Path=/; Secure; HttpOnly; SameSite=Strict", super::session::COOKIE);
            let gone = format!("{STATE_COOKIE}=; Path=/login/oidc; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
            for v in [c, gone] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err((status, msg)) => {
            s.metrics.unauthenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(reason = %msg, "OpenID Connect login refused");
            error_page(status, &msg)
        }
    }
}

async fn finish(
    _s: &AppState,
    o: &Oidc,
    code: &str,
    p: &Pending,
) -> Result<(crate::auth::Identity, ConsoleRole), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::UNAUTHORIZED, m);
    let d = o.discovery().await.map_err(|e| (StatusCode::BAD_GATEWAY, e))?;
    let form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        q(code),
        q(&o.cfg.redirect_url),
        q(&p.verifier)
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        q(&o.cfg.client_id),
        q(o.cfg.client_secret.expose_secret())
    ));
    let req = hyper::Request::post(&d.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| bad(e.to_string()))?;
    let tokens = o.fetch(req).await.map_err(|e| (StatusCode::BAD_GATEWAY, format!("the token request failed: {e}")))?;
    let id_token = str_of(&tokens, "id_token").ok_or_else(|| bad("the provider sent no ID token".into()))?;
    let head = jsonwebtoken::decode_header(id_token).map_err(|e| bad(format!("the ID token: {e}")))?;
    if !matches!(
        head.alg,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::ES384
    ) {
        return Err(bad(format!("the ID token is signed with {:?}, which kustody does not accept", head.alg)));
    }
    let jwk = o.key(head.kid.as_deref(), &d.jwks_uri).await.map_err(bad)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(format!("the provider's key: {e}")))?;
    let mut v = Validation::new(head.alg);
    v.set_issuer(&[o.cfg.issuer.as_str(), d.issuer.as_str()]);
    v.set_audience(&[o.cfg.client_id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 60;
    let data = jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &v)
        .map_err(|e| bad(format!("the ID token was refused: {e}")))?;
    let mut claims = data.claims;
    if str_of(&claims, "nonce") != Some(p.nonce.as_str()) {
        return Err(bad("the ID token's nonce is not this login's".into()));
    }
    // Providers may keep the name and groups out of the ID token (oidc-provider and Okta do by
    // default): then they come from userinfo, for the same subject (OIDC Core 5.3.2).
    let missing = |c: &serde_json::Value| c.get(&o.cfg.username_claim).is_none() || c.get(&o.cfg.roles_claim).is_none();
    if let (true, Some(url), Some(access)) = (missing(&claims), &d.userinfo_endpoint, str_of(&tokens, "access_token")) {
        let req = hyper::Request::get(url)
            .header(header::AUTHORIZATION, format!("Bearer {access}"))
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| bad(e.to_string()))?;
        let info = o.fetch(req).await.map_err(|e| (StatusCode::BAD_GATEWAY, format!("userinfo: {e}")))?;
        if info.get("sub").is_none() || info.get("sub") != claims.get("sub") {
            return Err(bad("userinfo is about another subject than the ID token".into()));
        }
        if let (Some(c), Some(i)) = (claims.as_object_mut(), info.as_object()) {
            for (k, v) in i {
                c.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    let name = str_of(&claims, &o.cfg.username_claim)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("the ID token has no `{}` claim", o.cfg.username_claim)))?;
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(bad("the user name claim is empty, too long or holds control characters".into()));
    }
    let role = o.role(&claims).ok_or_else(|| {
        (
            StatusCode::FORBIDDEN,
            format!("{name} has no console role: no `{}` value is mapped (--oidc-role)", o.cfg.roles_claim),
        )
    })?;
    Ok((crate::auth::Identity { name, roles: role.roles() }, role))
}

/// A string member of a JSON object, if it is there and a string.
fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(serde_json::Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(map: &[(&str, ConsoleRole)], default: Option<ConsoleRole>) -> Oidc {
        Oidc::new(OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "kustody".into(),
            client_secret: SecretString::from("x"),
            redirect_url: "https://kustody.example/login/oidc/callback".into(),
            ca_pem: None,
            scopes: vec!["openid".into()],
            username_claim: "email".into(),
            roles_claim: "groups".into(),
            role_map: map.iter().map(|(v, r)| ((*v).to_owned(), *r)).collect(),
            default_role: default,
        })
        .unwrap()
    }

    #[test]
    fn the_highest_mapped_role_wins_and_unmapped_people_are_refused() {
        let o =
            oidc(&[("sec", ConsoleRole::Viewer), ("ir", ConsoleRole::Responder), ("root", ConsoleRole::Admin)], None);
        assert_eq!(o.role(&serde_json::json!({"groups": ["sec", "ir"]})), Some(ConsoleRole::Responder));
        assert_eq!(o.role(&serde_json::json!({"groups": "root"})), Some(ConsoleRole::Admin));
        assert_eq!(o.role(&serde_json::json!({"groups": ["other"]})), None);
        assert_eq!(o.role(&serde_json::json!({})), None);
        let d = oidc(&[], Some(ConsoleRole::Viewer));
        assert_eq!(d.role(&serde_json::json!({})), Some(ConsoleRole::Viewer));
    }

    #[test]
    fn a_plain_http_issuer_is_refused_off_the_loopback() {
        let cfg = |issuer: &str| OidcConfig {
            issuer: issuer.into(),
            client_id: "k".into(),
            client_secret: SecretString::from("x"),
            redirect_url: String::new(),
            ca_pem: None,
            scopes: Vec::new(),
            username_claim: "email".into(),
            roles_claim: "groups".into(),
            role_map: Vec::new(),
            default_role: None,
        };
        assert!(Oidc::new(cfg("http://idp.example")).is_err());
        assert!(Oidc::new(cfg("http://127.0.0.1:5556")).is_ok());
    }
}
