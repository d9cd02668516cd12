//! The response API: incidents (list, read, acknowledge, resolve, assign, note) and the
//! notification outbox (list, read with its attempts, retry).
//!
//! Reads open the store read-only like every search; changes to an incident go to the detector
//! thread (which owns open incidents), retries to the writer thread.

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use kustody_incident::render::{self, Context};
use kustody_incident::{Incident, Status};
use kustody_store::{IncidentQuery, IncidentRow, OutboxQuery, OutboxRow, OutboxState, Store};
use serde::Deserialize;

use crate::auth::Role;
use crate::http::{authorize, error, json, with_store, AppState, Peer};
use crate::respond::{Change, Command};
use crate::writer::{now_ns, DetectMsg, Write};

/// Query parameters of `GET /v1/incidents`.
#[derive(Debug, Default, Deserialize)]
pub struct IncidentParams {
    pub status: Option<String>,
    /// `true`: only incidents not resolved.
    pub unresolved: Option<bool>,
    pub min_priority: Option<String>,
    pub identity: Option<String>,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
    /// RFC 3339 time or a duration ago (last activity at or after).
    pub since: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

impl IncidentParams {
    pub fn query(&self) -> Result<IncidentQuery, String> {
        if let Some(s) = &self.status {
            s.parse::<Status>()?;
        }
        Ok(IncidentQuery {
            since_ns: self.since.as_deref().map(|s| crate::search::time_bound(s, now_ns())).transpose()?,
            status: self.status.clone(),
            unresolved: self.unresolved.unwrap_or(false),
            min_severity: self.min_priority.as_deref().map(|p| p.parse().map_err(|e| format!("{e}"))).transpose()?,
            identity: self.identity.clone(),
            namespace: self.namespace.clone(),
            before_id: self.before,
            limit: self.limit.unwrap_or(100),
            cluster: self.cluster.clone(),
        })
    }
}

pub(crate) fn ctx(s: &AppState, id: Option<i64>) -> Context {
    Context {
        data_dir: Some(s.data_dir.display().to_string()),
        url: s.public_url.as_ref().zip(id).map(|(u, i)| format!("{}/incidents/{i}", u.trim_end_matches('/'))),
    }
}

/// An incident row as the API shows it: the rendered incident (title, steps, who, where,
/// evidence, next commands) from its stored state.
pub fn incident_json(row: &IncidentRow, ctx: &Context) -> serde_json::Value {
    match serde_json::from_str::<Incident>(&row.state) {
        Ok(mut inc) => {
            inc.id = row.id;
            render::to_json(&inc, ctx)
        }
        Err(_) => serde_json::json!({
            "id": row.id, "title": row.title, "severity": row.severity, "status": row.status,
            "assignee": row.assignee, "identity": row.identity, "namespace": row.namespace,
        }),
    }
}

pub fn outbox_json(o: &OutboxRow) -> serde_json::Value {
    let t = |ns: Option<i64>| ns.map(kustody_model::time::format_rfc3339_nanos);
    let title = serde_json::from_str::<serde_json::Value>(&o.payload)
        .ok()
        .and_then(|p| p.get("title").and_then(|t| t.as_str()).map(str::to_owned));
    serde_json::json!({
        "id": o.id,
        "sink": o.sink,
        "incident_id": o.incident_id,
        "action": o.action,
        "state": o.state.as_str(),
        "attempts": o.attempts,
        "created": t(Some(o.created_ns)),
        "next_attempt": (o.state == OutboxState::Pending).then(|| t(Some(o.next_ns))),
        "done": t(o.done_ns),
        "last_error": o.last_error,
        "title": title,
    })
}

pub async fn list_incidents(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<IncidentParams>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let q = match p.query() {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let c = ctx(&s, None);
    match with_store(&s, move |st| st.search_incidents(&q).map_err(|e| e.to_string())).await {
        Ok(rows) => {
            let next = rows.last().and_then(|r| r.id);
            let items: Vec<serde_json::Value> = rows.iter().map(|r| incident_json(r, &c)).collect();
            json(StatusCode::OK, serde_json::json!({ "incidents": items, "next_before": next }))
        }
        Err(r) => r,
    }
}

/// One incident with its findings, notes and notifications.
pub fn incident_detail(st: &dyn Store, id: i64, c: &Context) -> Result<Option<serde_json::Value>, String> {
    let e = |e: kustody_store::StoreError| e.to_string();
    let Some(row) = st.incident(id).map_err(e)? else { return Ok(None) };
    let findings = st.incident_findings(id).map_err(e)?;
    let notes = st.incident_notes(id).map_err(e)?;
    let outbox =
        st.search_outbox(&OutboxQuery { incident_id: Some(id), limit: 1000, ..Default::default() }).map_err(e)?;
    let mut v = incident_json(&row, c);
    if let Some(o) = v.as_object_mut() {
        o.insert("findings".into(), crate::search::findings_json(&findings).get("items").cloned().unwrap_or_default());
        o.insert(
            "notes".into(),
            notes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "time": kustody_model::time::format_rfc3339_nanos(n.time_ns),
                        "author": n.author,
                        "text": n.text,
                    })
                })
                .collect(),
        );
        o.insert("notifications".into(), outbox.iter().map(outbox_json).collect());
    }
    Ok(Some(v))
}

pub async fn get_incident(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let c = ctx(&s, Some(id));
    match with_store(&s, move |st| incident_detail(st, id, &c)).await {
        Ok(Some(v)) => json(StatusCode::OK, v),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no incident {id}")),
        Err(r) => r,
    }
}

/// Body of `POST /v1/incidents/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    pub status: Option<String>,
    /// `""` clears the assignee.
    pub assignee: Option<String>,
    pub note: Option<String>,
}

/// Longest note accepted.
const MAX_NOTE: usize = 16 << 10;

pub async fn change_incident(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    let who = match authorize(&s, &headers, &peer, Role::Respond) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if body.len() > 64 << 10 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the change is over 64 KiB");
    }
    let b: ChangeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    match apply_change(&s, &who, id, b).await {
        Ok(v) => json(StatusCode::OK, v),
        Err((code, reason)) => error(code, reason),
    }
}

/// A responder's change of an incident (the API's and the console's): checked, sent to the
/// detector thread, which owns incidents, and answered once stored.
pub(crate) async fn apply_change(
    s: &AppState,
    who: &crate::auth::Identity,
    id: i64,
    b: ChangeBody,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let bad = |r: &str| (StatusCode::BAD_REQUEST, r.to_owned());
    let status = b.status.as_deref().map(str::parse::<Status>).transpose().map_err(|e| bad(&e))?;
    if b.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE || n.trim().is_empty()) {
        return Err(bad("a note must be non-empty and at most 16 KiB"));
    }
    if b.assignee.as_ref().is_some_and(|a| a.len() > 256) {
        return Err(bad("an assignee is at most 256 bytes"));
    }
    if status.is_none() && b.assignee.is_none() && b.note.is_none() {
        return Err(bad("nothing to change: give status, assignee or note"));
    }
    let change = Change {
        status,
        assignee: b.assignee.map(|a| (!a.trim().is_empty()).then(|| a.trim().to_owned())),
        note: b.note,
        author: who.name.clone(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cmd = DetectMsg::Command(Command { incident: id, change, reply: tx });
    let commands = s.commands.clone();
    let stopping = (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping".to_owned());
    if tokio::task::spawn_blocking(move || commands.send(cmd)).await.map_or(true, |r| r.is_err()) {
        return Err(stopping);
    }
    match rx.await {
        Ok(Ok(v)) => {
            tracing::info!(incident = id, by = %who.name, "incident changed");
            Ok(v)
        }
        Ok(Err(e)) if e.starts_with("no incident") => Err((StatusCode::NOT_FOUND, e)),
        Ok(Err(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(_) => Err(stopping),
    }
}

/// Query parameters of `GET /v1/outbox`.
#[derive(Debug, Default, Deserialize)]
pub struct OutboxParams {
    pub state: Option<String>,
    pub sink: Option<String>,
    pub incident: Option<i64>,
    pub limit: Option<usize>,
}

impl OutboxParams {
    pub fn query(&self) -> Result<OutboxQuery, String> {
        let state = match self.state.as_deref() {
            Some(s) => {
                Some(OutboxState::parse(s).ok_or_else(|| format!("unknown state `{s}` (pending, delivered, dead)"))?)
            }
            None => None,
        };
        Ok(OutboxQuery { state, sink: self.sink.clone(), incident_id: self.incident, limit: self.limit.unwrap_or(100) })
    }
}

/// A notification's delivery attempts as the API and `serve outbox show` print them.
pub fn attempts_json(attempts: &[kustody_store::AttemptRow]) -> serde_json::Value {
    attempts
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.n,
                "time": kustody_model::time::format_rfc3339_nanos(a.time_ns),
                "duration_ms": a.duration_us as f64 / 1000.0,
                "error": a.error,
            })
        })
        .collect()
}

pub async fn list_outbox(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<OutboxParams>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let q = match p.query() {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match with_store(&s, move |st| st.search_outbox(&q).map_err(|e| e.to_string())).await {
        Ok(rows) => json(
            StatusCode::OK,
            serde_json::json!({ "notifications": rows.iter().map(outbox_json).collect::<Vec<_>>() }),
        ),
        Err(r) => r,
    }
}

pub async fn get_outbox(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let found = with_store(&s, move |st| {
        let e = |e: kustody_store::StoreError| e.to_string();
        let attempts = st.outbox_attempts(id).map_err(e)?;
        let row = st.outbox_row(id).map_err(e)?;
        Ok((row, attempts))
    })
    .await;
    match found {
        Ok((Some(row), attempts)) => {
            let mut v = outbox_json(&row);
            if let Some(o) = v.as_object_mut() {
                o.insert("history".into(), attempts_json(&attempts));
                o.insert("notification".into(), serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null));
            }
            json(StatusCode::OK, v)
        }
        Ok((None, _)) => error(StatusCode::NOT_FOUND, format!("no notification {id}")),
        Err(r) => r,
    }
}

/// Body of `POST /v1/outbox/retry`: the ids to send again, or every dead one (of `sink`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    #[serde(default)]
    pub ids: Vec<i64>,
    pub sink: Option<String>,
}

pub async fn retry_outbox(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match authorize(&s, &headers, &peer, Role::Admin) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let b: RetryBody = if body.is_empty() {
        RetryBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
        }
    };
    if b.ids.len() > 10_000 {
        return error(StatusCode::BAD_REQUEST, "at most 10,000 ids per retry");
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: crate::writer::StoreTask = Box::new(move |st: &mut dyn Store| {
        let _ = tx.send(st.retry_outbox(&b.ids, b.sink.as_deref(), now_ns()).map_err(|e| e.to_string()));
    });
    let writes = s.writes.clone();
    if tokio::task::spawn_blocking(move || writes.send(Write::Run(task))).await.map_or(true, |r| r.is_err()) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    }
    match rx.await {
        Ok(Ok(n)) => {
            tracing::info!(retried = n, by = %who.name, "outbox retry");
            json(StatusCode::OK, serde_json::json!({ "retried": n }))
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

/// Query parameters of `GET /v1/actions`.
#[derive(Debug, Default, Deserialize)]
pub struct ActionParams {
    pub incident: Option<i64>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

pub fn action_json(a: &kustody_store::ActionRow) -> serde_json::Value {
    let t = kustody_model::time::format_rfc3339_nanos;
    serde_json::json!({
        "id": a.id,
        "incident_id": a.incident_id,
        "playbook": a.playbook,
        "action": a.action,
        "target": a.target,
        "state": a.state,
        "created": t(a.created_ns),
        "updated": t(a.updated_ns),
        "detail": serde_json::from_str::<serde_json::Value>(&a.detail).unwrap_or(serde_json::Value::Null),
    })
}

pub async fn list_actions(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<ActionParams>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, &peer, Role::Read) {
        return r;
    }
    let q = kustody_store::ActionQuery {
        incident_id: p.incident,
        state: p.state.clone(),
        since_ns: None,
        limit: p.limit.unwrap_or(100),
        target: None,
    };
    match with_store(&s, move |st| st.search_actions(&q).map_err(|e| e.to_string())).await {
        Ok(rows) => {
            json(StatusCode::OK, serde_json::json!({ "actions": rows.iter().map(action_json).collect::<Vec<_>>() }))
        }
        Err(r) => r,
    }
}

/// Moves an action waiting for approval to `to` (through the writer); the row as it now is.
async fn decide_action(s: &AppState, id: i64, to: &str, who: &str) -> Result<kustody_store::ActionRow, Response> {
    let row = with_store(s, move |st| st.action(id).map_err(|e| e.to_string())).await?;
    let Some(mut row) = row else { return Err(error(StatusCode::NOT_FOUND, format!("no action {id}"))) };
    if row.state != "awaiting-approval" {
        return Err(error(StatusCode::CONFLICT, format!("action {id} is {}, not awaiting approval", row.state)));
    }
    let mut d: serde_json::Value = serde_json::from_str(&row.detail).unwrap_or_default();
    crate::execute::put(&mut d, if to == "planned" { "approved_by" } else { "rejected_by" }, serde_json::json!(who));
    row.state = to.to_owned();
    row.updated_ns = now_ns();
    row.detail = d.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let r2 = row.clone();
    let task: crate::writer::StoreTask = Box::new(move |st: &mut dyn Store| {
        let _ = tx.send(st.transition_action(&r2, "awaiting-approval").map_err(|e| e.to_string()));
    });
    let writes = s.writes.clone();
    if tokio::task::spawn_blocking(move || writes.send(Write::Run(task))).await.map_or(true, |r| r.is_err()) {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"));
    }
    match rx.await {
        Ok(Ok(true)) => Ok(row),
        Ok(Ok(false)) => Err(error(StatusCode::CONFLICT, format!("action {id} was decided meanwhile"))),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")),
    }
}

pub async fn approve_action(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let who = match authorize(&s, &headers, &peer, Role::Respond) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(exec) = s.exec.clone() else {
        return error(StatusCode::CONFLICT, "no playbooks are configured: nothing runs actions");
    };
    let row = match decide_action(&s, id, "planned", &who.name).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let d: serde_json::Value = serde_json::from_str(&row.detail).unwrap_or_default();
    let spec = match serde_json::from_value::<kustody_playbook::Action>(d.get("spec").cloned().unwrap_or_default()) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("action {id}: stored spec unreadable: {e}")),
    };
    let job = crate::execute::Job {
        incident: row.incident_id,
        playbook: row.playbook.clone(),
        target: row.target.clone().unwrap_or_default(),
        steps: vec![(id, spec)],
        dry_run: d.get("dry_run").and_then(|b| b.as_bool()).unwrap_or(true),
        min_healthy_replicas: d.get("min_healthy_replicas").and_then(|m| m.as_u64()).unwrap_or(1) as u32,
        reason: d.get("reason").and_then(|m| m.as_str()).unwrap_or_default().to_owned(),
        notification: d.get("notification").and_then(|m| m.as_str()).map(str::to_owned),
        since: std::time::Instant::now(),
        approved_by: Some(who.name.clone()),
        requested_by: None,
    };
    if exec.try_send(job).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the executor's queue is full; the action stays planned");
    }
    tracing::info!(action = id, by = %who.name, "action approved");
    json(StatusCode::ACCEPTED, action_json(&row))
}

pub async fn reject_action(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let who = match authorize(&s, &headers, &peer, Role::Respond) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match decide_action(&s, id, "rejected", &who.name).await {
        Ok(row) => {
            tracing::info!(action = id, by = %who.name, "action rejected");
            json(StatusCode::OK, action_json(&row))
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct BadRecordParams {
    pub source: Option<String>,
    pub cluster: Option<String>,
    /// Only ids below this (the next page: the last id of the previous one).
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

/// `GET /v1/bad-records`: what sources could not convert, newest first. The records' text (it
/// may hold request bodies) only for admins; everyone with `read` sees where, why and the
/// auditID.
pub async fn list_bad_records(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(p): Query<BadRecordParams>,
) -> Response {
    let who = match authorize(&s, &headers, &peer, Role::Read) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let with_raw = who.may(Role::Admin);
    let q = kustody_store::BadRecordQuery {
        source: p.source,
        cluster: p.cluster,
        since_ns: None,
        before_id: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    match with_store(&s, move |st| st.bad_records(&q).map_err(|e| e.to_string())).await {
        Ok(rows) => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let b = &r.record;
                    let mut v = serde_json::json!({
                        "id": r.id,
                        "received": kustody_model::time::format_rfc3339_nanos(b.received_ns),
                        "source": b.source,
                        "locator": b.locator,
                        "reason": b.reason,
                        "bytes": b.raw_len,
                        "auditID": b.audit_id,
                        "cluster": b.cluster,
                    });
                    if let (true, Some(o)) = (with_raw, v.as_object_mut()) {
                        o.insert("raw".into(), String::from_utf8_lossy(&b.raw).into_owned().into());
                        o.insert("rawCut".into(), (b.raw.len() as u64 != b.raw_len).into());
                    }
                    v
                })
                .collect();
            json(StatusCode::OK, serde_json::json!({ "items": items }))
        }
        Err(r) => r,
    }
}
