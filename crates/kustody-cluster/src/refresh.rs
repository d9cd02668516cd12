//! Natively minted tokens, kept fresh: a tower layer on kube-rs's client that sets
//! `Authorization: Bearer` from a cache, mints a new token shortly before the old one expires,
//! and on a 401 mints once more and retries the request once (FACTS.md §6: EKS tokens live
//! 15 minutes, GKE and AKS about an hour; a fleet collection can outlive them).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use kube::client::Body;
use secrecy::ExposeSecret;
use tower::{Layer, Service, ServiceExt};

use crate::error::CredentialError;
use crate::oauth::AccessToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Mint =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<AccessToken, CredentialError>> + Send>> + Send + Sync>;

/// Mint a new token when less than this is left.
pub const MARGIN: Duration = Duration::from_secs(60);

/// The cached token and how to mint another.
#[derive(Clone)]
pub struct TokenCache {
    current: Arc<tokio::sync::Mutex<Option<AccessToken>>>,
    mint: Mint,
    /// Tokens minted after the first (expiry or 401).
    pub refreshes: Arc<AtomicU64>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache(<redacted>)")
    }
}

impl TokenCache {
    pub fn new(first: AccessToken, mint: Mint) -> TokenCache {
        TokenCache {
            current: Arc::new(tokio::sync::Mutex::new(Some(first))),
            mint,
            refreshes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The token to use; a new one when the cached one is within [`MARGIN`] of expiry, or
    /// when `stale` (the server just refused it) is the token still cached.
    async fn get(&self, stale: Option<&str>) -> Result<String, CredentialError> {
        let mut g = self.current.lock().await;
        let fresh = g.as_ref().filter(|t| {
            t.expires_at > SystemTime::now() + MARGIN && stale.is_none_or(|s| s != t.token.expose_secret())
        });
        if let Some(t) = fresh {
            return Ok(t.token.expose_secret().to_owned());
        }
        let t = (self.mint)().await?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let s = t.token.expose_secret().to_owned();
        *g = Some(t);
        Ok(s)
    }
}

#[derive(Clone)]
pub struct RefreshLayer(pub TokenCache);

impl<S> Layer<S> for RefreshLayer {
    type Service = RefreshService<S>;
    fn layer(&self, inner: S) -> RefreshService<S> {
        RefreshService { inner: Arc::new(tokio::sync::Mutex::new(inner)), cache: self.0.clone() }
    }
}

/// The inner service is behind a mutex only for `ready` + `call`; the calls' futures run
/// concurrently.
#[derive(Clone)]
pub struct RefreshService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    cache: TokenCache,
}

fn with_token(mut req: Request<Body>, token: &str) -> Result<Request<Body>, BoxError> {
    let v = http::HeaderValue::from_str(&format!("Bearer {token}"))?;
    let mut v = v;
    v.set_sensitive(true);
    req.headers_mut().insert(http::header::AUTHORIZATION, v);
    Ok(req)
}

impl<S, B> Service<Request<Body>> for RefreshService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let cache = self.cache.clone();
        Box::pin(async move {
            // what a retry needs: the request without its body, and the body if it can be copied
            let again = req.body().try_clone().map(|b| {
                let mut r = Request::new(b);
                *r.method_mut() = req.method().clone();
                *r.uri_mut() = req.uri().clone();
                *r.version_mut() = req.version();
                *r.headers_mut() = req.headers().clone();
                r
            });
            let token = cache.get(None).await.map_err(BoxError::from)?;
            let send = |r: Request<Body>| {
                let inner = inner.clone();
                async move {
                    let fut = {
                        let mut s = inner.lock().await;
                        s.ready().await.map_err(Into::into)?;
                        s.call(r)
                    };
                    fut.await.map_err(Into::into)
                }
            };
            let resp: Response<B> = send(with_token(req, &token)?).await?;
            if resp.status() != http::StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let Some(again) = again else { return Ok(resp) };
            // refused: mint once more (unless another request already did) and retry once
            let token = cache.get(Some(&token)).await.map_err(BoxError::from)?;
            send(with_token(again, &token)?).await
        })
    }
}
