//! The HTTP API: ingestion, search, the finding stream, metrics and health.
//!
//! Every endpoint but `/healthz` and `/readyz` needs an identity with a role: a bearer token,
//! or a client certificate (ingest only). See docs/SERVE.md and docs/openapi.yaml.

// Handlers return `Result<_, Response>` so a refusal is answered as built; boxing the response
// would only move the same bytes to the heap.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use kustody_model::Event;
use kustody_store::{Origin, Store, StoreError};
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot, Semaphore};

use crate::auth::{bearer, Identity, Role, Tokens};
use crate::metrics::Metrics;
use crate::writer::Job;
use crate::{payload, WhereFilter};

/// The TLS peer of a connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// Common name of a verified client certificate.
    pub cert_name: Option<String>,
}

pub struct AppState {
    pub jobs: SyncSender<Job>,
    /// Whether this process takes events and alerts (a detector on a bus does not).
    pub receives: bool,
    /// Bytes of request bodies admitted and not yet answered.
    pub queue: Arc<Semaphore>,
    pub queue_bytes: usize,
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub publish: broadcast::Sender<Arc<str>>,
    pub data_dir: std::path::PathBuf,
    /// Read-only stores for searches and pages, reused across requests.
    pub readers: Arc<Readers>,
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    pub compile_where: crate::CompileWhere,
    pub reload: tokio::sync::mpsc::Sender<()>,
    /// Responders' changes go to the detector thread, which owns incidents.
    pub commands: SyncSender<crate::writer::DetectMsg>,
    /// Small writes (outbox retries) go to the writer thread.
    pub writes: SyncSender<crate::writer::Write>,
    /// The console's public URL (links).
    pub public_url: Option<String>,
    /// Approved actions go to the executor (when playbooks are configured).
    pub exec: Option<SyncSender<crate::execute::Job>>,
    /// The cluster, for the console's dry-run plans (the executor connects on its own).
    pub connect: Option<crate::execute::Connect>,
    /// The rule set in use and the rules switched off (the console's rules page).
    pub rules: Arc<crate::ruleset::RuleState>,
    /// OpenID Connect login, when configured.
    pub oidc: Option<Arc<crate::console::oidc::Oidc>>,
    /// Console sessions, and the password checks allowed at once (argon2 is slow on purpose).
    pub sessions: Arc<crate::console::session::Sessions>,
    pub logins: Arc<Semaphore>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/audit", post(post_audit))
        .route("/audit", post(post_audit))
        .route("/v1/falco", post(post_falco))
        .route("/v1/events", get(get_events))
        .route("/v1/findings", get(get_findings))
        .route("/v1/alerts", get(get_alerts))
        .route("/v1/bad-records", get(crate::api::list_bad_records))
        .route("/v1/findings/stream", get(stream_findings))
        .route("/v1/rules/reload", post(post_reload))
        .route("/v1/incidents", get(crate::api::list_incidents))
        .route("/v1/incidents/{id}", get(crate::api::get_incident).post(crate::api::change_incident))
        .route("/v1/outbox", get(crate::api::list_outbox))
        .route("/v1/outbox/retry", post(crate::api::retry_outbox))
        .route("/v1/outbox/{id}", get(crate::api::get_outbox))
        .route("/v1/actions", get(crate::api::list_actions))
        .route("/v1/actions/{id}/approve", post(crate::api::approve_action))
        .route("/v1/actions/{id}/reject", post(crate::api::reject_action))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::console::router())
        .with_state(state)
}

pub(crate) fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], v.to_string() + "\n")
        .into_response()
}

pub(crate) fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    json(status, serde_json::json!({ "error": reason.into() }))
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The caller's identity if it may act as `role`; else the 401/403 to answer.
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap, peer: &Peer, role: Role) -> Result<Identity, Response> {
    let id = if let Some(h) = headers.get(header::AUTHORIZATION) {
        let token = h.to_str().ok().and_then(bearer);
        match token.and_then(|t| s.tokens.check(t)) {
            Some(id) => id.clone(),
            None => {
                s.metrics.unauthenticated.fetch_add(1, Relaxed);
                tracing::warn!("request with an unknown bearer token refused");
                return Err(www(error(StatusCode::UNAUTHORIZED, "unknown bearer token")));
            }
        }
    } else if let Some(sess) = crate::console::session::cookie(headers).and_then(|c| s.sessions.get(&c)) {
        // A console session: reads with the cookie alone; anything else also needs the
        // session's CSRF token in `X-CSRF-Token` (a cross-site form cannot set it).
        if role != Role::Read {
            let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if !crate::console::session::csrf_ok(&sess, presented) {
                s.metrics.forbidden.fetch_add(1, Relaxed);
                return Err(error(StatusCode::FORBIDDEN, "a console session needs its X-CSRF-Token for this"));
            }
        }
        sess.identity
    } else if let Some(cn) = &peer.cert_name {
        Identity { name: format!("cert:{cn}"), roles: vec![Role::Ingest] }
    } else {
        s.metrics.unauthenticated.fetch_add(1, Relaxed);
        return Err(www(error(
            StatusCode::UNAUTHORIZED,
            "authentication required: a bearer token or a client certificate",
        )));
    };
    if !id.may(role) {
        s.metrics.forbidden.fetch_add(1, Relaxed);
        return Err(error(StatusCode::FORBIDDEN, format!("`{}` may not do this (needs the {role:?} role)", id.name)));
    }
    Ok(id)
}

fn www(mut r: Response) -> Response {
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Reads and discards a refused request's body (up to `limit` bytes, 10 s), so the client
/// sees the answer: closing a connection with unread bytes makes the kernel send a reset, which
/// can destroy the response before the client reads it. Nothing is kept in memory.
async fn drain(body: Body, limit: usize) {
    let mut body = body;
    let mut read = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                read += d.len();
                if read > limit {
                    break;
                }
            }
        }
    })
    .await;
}

/// Admits a body into the bounded queue and reads it; the permit is held until the answer.
async fn admit(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), Response> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.max_request_bytes) {
        s.metrics.too_large.fetch_add(1, Relaxed);
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the {} byte limit", s.max_request_bytes),
        ));
    }
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() != b"identity") {
        s.metrics.bad_requests.fetch_add(1, Relaxed);
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are not accepted"));
    }
    let want = u32::try_from(declared.unwrap_or(s.max_request_bytes).clamp(1, s.queue_bytes)).unwrap_or(u32::MAX);
    let permit = match s.queue.clone().try_acquire_many_owned(want) {
        Ok(p) => p,
        Err(_) => {
            s.metrics.shed_429.fetch_add(1, Relaxed);
            drain(body, s.max_request_bytes).await;
            return Err(retry_after(
                error(StatusCode::TOO_MANY_REQUESTS, "the store is behind: queue full, retry later"),
                1,
            ));
        }
    };
    s.metrics.queue_bytes.fetch_add(u64::from(want), Relaxed);
    let limited = http_body_util::Limited::new(body, s.max_request_bytes);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes().to_vec(),
        Err(e) => {
            s.metrics.queue_bytes.fetch_sub(u64::from(want), Relaxed);
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                s.metrics.too_large.fetch_add(1, Relaxed);
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is over the {} byte limit", s.max_request_bytes),
                ));
            }
            s.metrics.bad_requests.fetch_add(1, Relaxed);
            return Err(error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")));
        }
    };
    Ok((bytes, permit))
}

/// Hands a job to the writer and waits for its commit.
async fn submit(
    s: &AppState,
    job: Job,
    rx: oneshot::Receiver<Result<kustody_store::Appended, StoreError>>,
) -> Result<kustody_store::Appended, Response> {
    match s.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            s.metrics.shed_429.fetch_add(1, Relaxed);
            return Err(retry_after(error(StatusCode::TOO_MANY_REQUESTS, "the store is behind: retry later"), 1));
        }
        Err(TrySendError::Disconnected(_)) => {
            s.metrics.unavailable_503.fetch_add(1, Relaxed);
            return Err(retry_after(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"), 5));
        }
    }
    match tokio::time::timeout(Duration::from_secs(25), rx).await {
        Ok(Ok(Ok(a))) => Ok(a),
        Ok(Ok(Err(e))) => {
            s.metrics.unavailable_503.fetch_add(1, Relaxed);
            let secs = if matches!(e, StoreError::Full(_)) { 10 } else { 2 };
            Err(retry_after(error(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}")), secs))
        }
        Ok(Err(_)) | Err(_) => {
            s.metrics.unavailable_503.fetch_add(1, Relaxed);
            Err(retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the commit did not finish in time; retry (duplicates are stored once)",
                ),
                2,
            ))
        }
    }
}

async fn post_audit(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    if !s.receives {
        drain(body, s.max_request_bytes).await;
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this kustody serve is a detector: it takes events from the bus; send them to a receiver",
        );
    }
    if let Err(r) = authorize(&s, &headers, &peer, Role::Ingest) {
        drain(body, s.max_request_bytes).await;
        return r;
    }
    let (bytes, permit) = match admit(&s, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let held = permit.num_permits() as u64;
    let max_event = s.max_event_bytes;
    let parsed = tokio::task::spawn_blocking(move || payload::parse("webhook", bytes, max_event)).await;
    let response = match parsed {
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("payload reader failed: {e}")),
        Ok(parsed) => audit_answer(&s, parsed, received).await,
    };
    s.metrics.queue_bytes.fetch_sub(held, Relaxed);
    drop(permit);
    response
}

async fn audit_answer(s: &AppState, parsed: payload::Parsed, received: Instant) -> Response {
    s.metrics.received_webhook.fetch_add(parsed.rows.len() as u64, Relaxed);
    s.metrics.rejected_events.fetch_add(parsed.rejected.len() as u64, Relaxed);
    let rejected: Vec<&payload::Rejected> = parsed.rejected.iter().take(20).collect();
    if parsed.rows.is_empty() {
        if parsed.rejected.is_empty() {
            return json(StatusCode::OK, serde_json::json!({ "stored": 0, "duplicates": 0 }));
        }
        s.metrics.bad_requests.fetch_add(1, Relaxed);
        let first = parsed.rejected.first().map(|r| r.reason.clone()).unwrap_or_default();
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": format!("no audit event could be read: {first}"), "rejected": rejected, "rejected_count": parsed.rejected.len() }),
        );
    }
    let (tx, rx) = oneshot::channel();
    let n = parsed.rows.len();
    let job = Job::Events { rows: parsed.rows, origin: Origin::Webhook, received, reply: tx };
    match submit(s, job, rx).await {
        Err(r) => r,
        Ok(a) if parsed.rejected.is_empty() => {
            json(StatusCode::OK, serde_json::json!({ "stored": a.stored, "duplicates": a.duplicates }))
        }
        Ok(a) => {
            // The good events are committed; the bad ones are reported, counted, and refused.
            s.metrics.bad_requests.fetch_add(1, Relaxed);
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": format!("{} of {} events could not be read (the others are stored)", parsed.rejected.len(), n + parsed.rejected.len()),
                    "stored": a.stored, "duplicates": a.duplicates,
                    "rejected": rejected, "rejected_count": parsed.rejected.len(),
                }),
            )
        }
    }
}

async fn post_falco(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !s.receives {
        drain(body, s.max_request_bytes).await;
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this kustody serve is a detector: it takes events from the bus; send them to a receiver",
        );
    }
    if let Err(r) = authorize(&s, &headers, &peer, Role::Ingest) {
        return r;
    }
    let (bytes, permit) = match admit(&s, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let held = permit.num_permits() as u64;
    let (good, bad) = kustody_ingest::falco::parse(&bytes);
    s.metrics.alerts_received.fetch_add(good.len() as u64, Relaxed);
    s.metrics.rejected_events.fetch_add(bad.len() as u64, Relaxed);
    let response = if good.is_empty() && !bad.is_empty() {
        s.metrics.bad_requests.fetch_add(1, Relaxed);
        let first = bad.first().map(|b| b.reason.clone()).unwrap_or_default();
        error(StatusCode::BAD_REQUEST, format!("no Falco alert could be read: {first}"))
    } else if good.is_empty() {
        json(StatusCode::OK, serde_json::json!({ "stored": 0 }))
    } else {
        let (tx, rx) = oneshot::channel();
        match submit(&s, Job::Alerts { rows: good, reply: tx }, rx).await {
            Err(r) => r,
            Ok(a) if bad.is_empty() => {
                json(StatusCode::OK, serde_json::json!({ "stored": a.stored, "duplicates": a.duplicates }))
            }
            Ok(a) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": format!("{} alerts could not be read (the others are stored)", bad.len()),
                    "stored": a.stored, "duplicates": a.duplicates,
                    "rejected": bad.iter().take(20).map(|b| serde_json::json!({"item": b.item, "reason": b.reason})).collect::<Vec<_>>(),
                }),
            ),
        }
    };
    s.metrics.queue_bytes.fetch_sub(held, Relaxed);
    drop(permit);
    response
}

/// Query parameters of the search endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchParams {
    /// The cluster events and findings came from (`kustody serve --cluster`).
    pub cluster: Option<String>,
    pub user: Option<String>,
    #[serde(alias = "sa")]
    pub service_account: Option<String>,
    pub pod: Option<String>,
    pub ip: Option<String>,
    /// `namespace/name` of the pod the requests came from (its source IP's holder).
    pub from_pod: Option<String>,
    pub namespace: Option<String>,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub audit_id: Option<String>,
    pub rule: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    #[serde(rename = "where")]
    pub where_: Option<String>,
    pub min_priority: Option<String>,
    pub limit: Option<usize>,
    pub before: Option<i64>,
}

/// Read-only stores, opened on demand and kept for the next request (a PostgreSQL reader is a
/// connection: opening one per request would cost a login each time). At most
/// [`Readers::IDLE`] are kept; one that failed is dropped, not reused.
pub struct Readers {
    location: kustody_store::Location,
    idle: std::sync::Mutex<Vec<Box<dyn Store>>>,
}

impl Readers {
    pub const IDLE: usize = 8;

    pub fn new(location: kustody_store::Location) -> Readers {
        Readers { location, idle: std::sync::Mutex::new(Vec::new()) }
    }

    /// Runs `f` on a reader (blocking: call it off the async threads).
    pub fn with<T>(&self, f: impl FnOnce(&dyn Store) -> Result<T, String>) -> Result<T, String> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let store = match pooled {
            Some(s) => s,
            None => self.location.open_read_only().map_err(|e| e.to_string())?,
        };
        let out = f(store.as_ref());
        if out.is_ok() {
            if let Ok(mut v) = self.idle.lock() {
                if v.len() < Self::IDLE {
                    v.push(store);
                }
            }
        }
        out
    }
}

impl Drop for Readers {
    /// A PostgreSQL reader closes its connection by blocking on its own runtime, which must
    /// not happen on an async thread (the pool is dropped with the API's state, on one): the
    /// readers are dropped on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// Runs a search on a read-only store in a blocking task.
pub(crate) async fn with_store<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&dyn Store) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let readers = s.readers.clone();
    match tokio::task::spawn_blocking(move || readers.with(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn get_events(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<SearchParams>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let filter = match p.where_.as_deref().map(|w| (s.compile_where)(w)).transpose() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("where: {e}")),
    };
    let q = match crate::search::event_query(&p) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match with_store(&s, move |st| crate::search::events(st, q, filter.as_ref()).map_err(|e| e.to_string())).await {
        Ok(page) => json(StatusCode::OK, page.to_json()),
        Err(r) => r,
    }
}

/// A search of the read role: authorize, build the query, run it on a read-only store, answer.
async fn read_search<Q: Send + 'static, T: Send + 'static>(
    s: &AppState,
    headers: &HeaderMap,
    peer: &Peer,
    query: Result<Q, String>,
    run: fn(&dyn Store, &Q) -> Result<T, StoreError>,
    render: fn(&T) -> serde_json::Value,
) -> Response {
    if let Err(r) = authorize(s, headers, peer, Role::Read) {
        return r;
    }
    let q = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match with_store(s, move |st| run(st, &q).map_err(|e| e.to_string())).await {
        Ok(found) => json(StatusCode::OK, render(&found)),
        Err(r) => r,
    }
}

async fn get_findings(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<SearchParams>,
) -> Response {
    let q = crate::search::finding_query(&p);
    read_search(&s, &headers, &peer, q, |st, q| st.search_findings(q), |r| crate::search::findings_json(r)).await
}

async fn get_alerts(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<SearchParams>,
) -> Response {
    let q = crate::search::alert_query(&p);
    read_search(&s, &headers, &peer, q, |st, q| st.search_alerts(q), |r| crate::search::alerts_json(r)).await
}

/// Server-sent events: one `finding` event per change (opened, updated, closed), as JSON.
async fn stream_findings(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let rx = s.publish.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Ok(msg)) => format!("event: finding\ndata: {msg}\n\n"),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n")
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Err(_) => ": keep-alive\n\n".to_owned(),
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "stream"))
}

async fn post_reload(State(s): State<Arc<AppState>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Admin) {
        return r;
    }
    let _ = s.reload.try_send(());
    json(StatusCode::ACCEPTED, serde_json::json!({ "reload": "requested" }))
}

async fn get_metrics(State(s): State<Arc<AppState>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let full = s.queue.available_permits() == 0;
    if !s.healthy.load(Relaxed) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the store cannot write (disk full?)");
    }
    if full {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the ingest queue is full");
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Whether an event passes a compiled `--where` filter.
pub fn passes(filter: &WhereFilter, raw: &str) -> bool {
    Event::parse(raw).is_ok_and(|ev| (filter.test)(&ev))
}
