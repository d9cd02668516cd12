//! The web console, served by `kustody serve` at `/` (docs/CONSOLE.md): server-rendered HTML,
//! one embedded stylesheet and one small script, no build step and nothing from elsewhere.
//!
//! People log in with a local user (`kustody serve user add`, argon2-hashed) or an API token;
//! a session cookie then stands for them, on the console's pages and on the API (reads; a
//! change needs the session's CSRF token too). Roles: viewer (read), responder (also act on
//! incidents), admin. Every change goes through the same path as the API's and is stored with
//! the acting user's name.

pub mod act;
pub mod chart;
pub mod entities;
pub mod evidence;
pub mod html;
pub mod oidc;
pub mod rules;
pub mod search;
pub mod session;
pub mod status;
pub mod users;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::auth::Role;
use crate::http::AppState;
use html::{badge, esc, page, q, Viewer};
use session::Session;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(incidents))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/login/oidc", get(oidc::start))
        .route("/login/oidc/callback", get(oidc::callback))
        .route("/incidents/{id}", get(incident))
        .route("/incidents/{id}/change", post(change))
        .route("/act", get(act::plan).post(act::confirm))
        .route("/search", get(search::search))
        .route("/charts", get(search::charts))
        .route("/evidence", get(evidence::evidence))
        .route("/evidence/verify", post(evidence::verify))
        .route("/status", get(status::status))
        .route("/rules", get(rules::rules))
        .route("/rules/toggle", post(rules::toggle))
        .route("/rules/hunt", get(rules::hunt))
        .route("/pod", get(entities::pod))
        .route("/identity", get(entities::identity))
        .route("/ip", get(entities::ip))
        .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", html::CSS) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", html::JS) }))
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn redirect(to: &str) -> Response {
    html::secure(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")))],
        )
            .into_response(),
    )
}

/// The logged-in session, or a redirect to the login page.
fn session(s: &AppState, headers: &HeaderMap, back: &str) -> Result<Session, Box<Response>> {
    session::cookie(headers)
        .and_then(|c| s.sessions.get(&c))
        .ok_or_else(|| Box::new(redirect(&format!("/login?next={}", q(back)))))
}

fn viewer(sess: &Session) -> Viewer<'_> {
    Viewer { name: &sess.identity.name, role: &sess.role, csrf: &sess.csrf }
}

fn forbidden(sess: &Session, what: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        Some(&viewer(sess)),
        &format!(
            r#"<h1>Not allowed</h1><p>{} ({}) may not {}.</p>"#,
            esc(&sess.identity.name),
            esc(&sess.role),
            esc(what)
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only a local path is followed after login (no open redirect).
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn login_page(s: &AppState, status: StatusCode, next: &str, message: Option<&str>) -> Response {
    let msg = message.map(|m| format!(r#"<p class="error">{}</p>"#, esc(m))).unwrap_or_default();
    let sso = if s.oidc.is_some() {
        format!(
            r#"<p><a class="button" id="oidc-login" href="/login/oidc?next={}">Log in with single sign-on</a></p><p class="muted">or</p>"#,
            q(next)
        )
    } else {
        String::new()
    };
    page(
        status,
        "Log in",
        None,
        &format!(
            r#"<div class="login card"><h1>Log in</h1>{msg}{sso}
<form method="post" action="/login">
<input type="hidden" name="next" value="{}">
<label for="user">User</label><input id="user" name="user" autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">
<p class="muted">or</p>
<label for="token">API token</label><input id="token" name="token" type="password" autocomplete="off">
<p><button class="primary" type="submit">Log in</button></p>
</form></div>"#,
            esc(next)
        ),
    )
}

async fn login_form(State(s): State<Arc<AppState>>, Query(lq): Query<LoginQuery>) -> Response {
    login_page(&s, StatusCode::OK, &local(lq.next.as_deref()), None)
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn login(State(s): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let next = local(f.next.as_deref());
    if f.user.len() > 256 || f.password.len() > 1024 || f.token.len() > 1024 {
        return login_page(&s, StatusCode::BAD_REQUEST, &next, Some("Too long."));
    }
    let found = if !f.token.is_empty() {
        s.tokens.check(f.token.trim()).filter(|id| id.may(Role::Read)).map(|id| (id.clone(), "token".to_owned()))
    } else {
        // argon2 is slow on purpose: off the runtime, and a few at a time
        let Ok(_permit) = s.logins.clone().acquire_owned().await else {
            return login_page(&s, StatusCode::SERVICE_UNAVAILABLE, &next, Some("The server is stopping."));
        };
        let (dir, user, pass) = (s.data_dir.clone(), f.user.clone(), f.password.clone());
        match tokio::task::spawn_blocking(move || users::verify(&dir, &user, &pass)).await {
            Ok(Ok(Some(role))) => {
                Some((crate::auth::Identity { name: f.user.clone(), roles: role.roles() }, role.name().to_owned()))
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the console users file is unusable");
                return login_page(
                    &s,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &next,
                    Some("The users file is unusable; see the server log."),
                );
            }
            Err(_) => None,
        }
    };
    let Some((identity, role)) = found else {
        s.metrics.unauthenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(user = %f.user.chars().take(64).collect::<String>(), "console login refused");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return login_page(&s, StatusCode::UNAUTHORIZED, &next, Some("Wrong user, password or token."));
    };
    let (id, _) = match s.sessions.open(identity.clone(), &role) {
        Ok(x) => x,
        Err(e) => return login_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &next, Some(&e.to_string())),
    };
    tracing::info!(user = %identity.name, role = %role, "console login");
    let mut r = redirect(&next);
    let cookie = format!("{}={id}; Path=/; Secure; HttpOnly; SameSite=Strict", session::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some(c) = session::cookie(&headers) {
        if let Some(sess) = s.sessions.get(&c) {
            if !session::csrf_ok(&sess, Some(&f.csrf)) {
                return forbidden(&sess, "log out without the page's token");
            }
            tracing::info!(user = %sess.identity.name, "console logout");
        }
        s.sessions.close(&c);
    }
    let mut r = redirect("/login");
    let gone = format!("{}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0", session::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// `open` (default), `all`, `new`, `acknowledged`, `resolved`.
    status: Option<String>,
    severity: Option<String>,
    /// Only this cluster's incidents.
    cluster: Option<String>,
}

/// Links for the strings of a JSON array (IPs, pods); strings only, anything else is shown
/// as text. `pods` entries may be objects with a `pod` field.
fn links(v: Option<&serde_json::Value>, link: fn(&str) -> String) -> String {
    let items: Vec<String> = v
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().or_else(|| i.get("pod").and_then(|p| p.as_str())).map(link))
        .collect();
    if items.is_empty() {
        "–".into()
    } else {
        items.join(", ")
    }
}

fn time(ns: Option<i64>) -> String {
    ns.map(kustody_model::time::format_rfc3339_secs).unwrap_or_else(|| "–".into())
}

async fn incidents(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(lq): Query<ListQuery>) -> Response {
    let sess = match session(&s, &headers, "/") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let status = lq.status.clone().unwrap_or_else(|| "open".into());
    let min_severity = lq.severity.as_deref().filter(|v| !v.is_empty()).and_then(|v| v.parse().ok());
    let cluster = lq.cluster.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let query = kustody_store::IncidentQuery {
        status: matches!(status.as_str(), "new" | "acknowledged" | "resolved").then(|| status.clone()),
        unresolved: status == "open",
        min_severity,
        cluster: cluster.clone(),
        limit: 500,
        ..Default::default()
    };
    let rows = match crate::http::with_store(&s, move |st| st.search_incidents(&query).map_err(|e| e.to_string())).await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut body = String::from(
        r#"<h1>Incidents <span id="live" class="live"></span></h1><form class="filters" method="get" action="/">"#,
    );
    body.push_str(r#"<label>Status <select name="status">"#);
    for v in ["open", "new", "acknowledged", "resolved", "all"] {
        let sel = if v == status { " selected" } else { "" };
        body.push_str(&format!(r#"<option value="{v}"{sel}>{v}</option>"#));
    }
    body.push_str(r#"</select></label><label>At least <select name="severity"><option value="">any</option>"#);
    for v in ["critical", "error", "warning", "notice"] {
        let sel = if lq.severity.as_deref() == Some(v) { " selected" } else { "" };
        body.push_str(&format!(r#"<option value="{v}"{sel}>{v}</option>"#));
    }
    body.push_str(&format!(
        r#"</select></label><label>Cluster <input name="cluster" value="{}" placeholder="any" size="12"></label><button type="submit">Filter</button></form>"#,
        esc(cluster.as_deref().unwrap_or(""))
    ));
    body.push_str(r#"<table id="incidents"><thead><tr><th>#</th><th>Severity</th><th>Incident</th><th>Status</th><th>Identity</th><th>Workload</th><th>First seen</th><th>Last seen</th><th>Cluster</th></tr></thead><tbody>"#);
    for r in &rows {
        let inc: Option<kustody_incident::Incident> = serde_json::from_str(&r.state).ok();
        let workload = inc.as_ref().and_then(|i| i.workload.as_ref()).map_or_else(|| "–".into(), |w| w.display());
        let id = r.id.unwrap_or_default();
        body.push_str(&format!(
            r#"<tr><td><a href="/incidents/{id}">{id}</a></td><td>{}</td><td><a href="/incidents/{id}">{}</a></td><td class="status-{}">{}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            badge(&r.severity),
            esc(&r.title),
            esc(&r.status),
            esc(&r.status),
            r.identity.as_deref().map_or_else(|| "–".into(), entities::identity_link),
            esc(&workload),
            time(r.first_ns),
            time(r.last_ns),
            esc(r.cluster.as_deref().unwrap_or("–")),
        ));
    }
    if rows.is_empty() {
        body.push_str(r#"<tr><td colspan="9" class="muted">No incident matches.</td></tr>"#);
    }
    body.push_str("</tbody></table>");
    page(StatusCode::OK, "Incidents", Some(&viewer(&sess)), &body)
}

async fn incident(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let sess = match session(&s, &headers, &format!("/incidents/{id}")) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let c = crate::api::ctx(&s, Some(id));
    let got = crate::http::with_store(&s, move |st| {
        let detail = crate::api::incident_detail(st, id, &c)?;
        let q = kustody_store::ActionQuery { incident_id: Some(id), limit: 500, ..Default::default() };
        Ok((detail, st.search_actions(&q).map_err(|e| e.to_string())?))
    })
    .await;
    let (detail, actions) = match got {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(v) = detail else {
        return page(
            StatusCode::NOT_FOUND,
            "No such incident",
            Some(&viewer(&sess)),
            &format!("<h1>No incident {id}</h1>"),
        );
    };
    let st = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let list = |x: Option<&serde_json::Value>| -> String {
        x.and_then(|a| a.as_array())
            .map(|a| {
                a.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(", ")
            })
            .unwrap_or_default()
    };
    let mut b = format!(
        r#"<h1>{} {}</h1><p>Incident {id} · <span class="status-{}">{}</span> · assigned to {} · first seen {} · last seen {}</p>"#,
        badge(&st("severity")),
        esc(&st("title")),
        esc(&st("status")),
        esc(&st("status")),
        esc(v.get("assignee").and_then(|a| a.as_str()).unwrap_or("nobody")),
        esc(&st("first_seen")),
        esc(&st("last_seen")),
    );
    // Responders act here; viewers see no buttons (and the server refuses them anyway).
    if sess.identity.may(Role::Respond) {
        b.push_str(r#"<div class="filters">"#);
        for (to, label) in [("acknowledged", "Acknowledge"), ("resolved", "Resolve"), ("new", "Reopen")] {
            if st("status") != to {
                b.push_str(&format!(
                    r#"<form class="inline" method="post" action="/incidents/{id}/change"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="status" value="{to}"><button type="submit">{label}</button></form>"#,
                    esc(&sess.csrf)
                ));
            }
        }
        b.push_str(&format!(
            r#"<form class="inline" method="post" action="/incidents/{id}/change"><input type="hidden" name="csrf" value="{}"><input name="assignee" placeholder="assignee" value="{}"><button type="submit">Assign</button></form></div>"#,
            esc(&sess.csrf),
            esc(v.get("assignee").and_then(|a| a.as_str()).unwrap_or(""))
        ));
    }
    let who = v.get("who");
    let wh = v.get("where");
    b.push_str(&format!(
        r#"<div class="grid"><div class="card"><dl><dt>Identity</dt><dd>{}</dd><dt>Source IPs</dt><dd>{}</dd><dt>Pods</dt><dd>{}</dd></dl></div><div class="card"><dl><dt>Cluster</dt><dd>{}</dd><dt>Namespaces</dt><dd class="mono">{}</dd><dt>Workload</dt><dd class="mono">{}</dd></dl></div></div>"#,
        who.and_then(|w| w.get("identity")).and_then(|x| x.as_str()).map_or_else(|| "–".into(), entities::identity_link),
        links(who.and_then(|w| w.get("source_ips")), entities::ip_link),
        links(who.and_then(|w| w.get("pods")), entities::pod_link),
        esc(wh.and_then(|w| w.get("cluster")).and_then(|x| x.as_str()).unwrap_or("–")),
        esc(&list(wh.and_then(|w| w.get("namespaces")))),
        esc(&wh
            .and_then(|w| w.get("workload"))
            .and_then(|w| serde_json::from_value::<kustody_incident::Workload>(w.clone()).ok())
            .map_or_else(|| "–".into(), |w| w.display())),
    ));
    b.push_str(r#"<h2>Story</h2><table id="story"><thead><tr><th>First seen</th><th>Priority</th><th>Rule</th><th>Target</th><th>Command</th><th>Events</th></tr></thead><tbody>"#);
    for step in v.get("steps").and_then(|x| x.as_array()).into_iter().flatten() {
        let g = |k: &str| step.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        b.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td title="{}">{}</td><td class="mono">{} {}</td><td class="mono">{}</td><td>{}</td></tr>"#,
            esc(&g("first_seen")),
            badge(&g("priority")),
            esc(&g("output")),
            esc(&g("rule")),
            esc(&g("verb")),
            esc(&g("target")),
            esc(&g("command")),
            step.get("events").and_then(serde_json::Value::as_u64).unwrap_or(0),
        ));
    }
    b.push_str("</tbody></table>");
    b.push_str("<h2>Findings</h2><table><thead><tr><th>#</th><th>Priority</th><th>Rule</th><th>Output</th></tr></thead><tbody>");
    for f in v.get("findings").and_then(|x| x.as_array()).into_iter().flatten() {
        let g = |k: &str| f.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        b.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="mono">{}</td></tr>"#,
            f.get("id").and_then(serde_json::Value::as_i64).unwrap_or(0),
            badge(&g("priority")),
            esc(&g("rule")),
            esc(&g("output")),
        ));
    }
    b.push_str("</tbody></table>");
    // Respond: the incident's pods, each with its actions (responders), then what was done.
    let pods: Vec<String> = who
        .and_then(|w| w.get("pods"))
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().or_else(|| i.get("pod").and_then(|p| p.as_str())).map(str::to_owned))
        .collect();
    if sess.identity.may(Role::Respond) && !pods.is_empty() {
        b.push_str(r#"<h2>Respond</h2><table id="respond"><tbody>"#);
        for p in &pods {
            b.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", entities::pod_link(p), act::buttons(p, Some(id))));
        }
        b.push_str("</tbody></table>");
    }
    let (table, pending) = act::actions_table(&actions);
    b.push_str(&format!(
        r#"<h2>Actions</h2><div id="actions-box"{}>{table}</div>"#,
        if pending { r#" data-refresh="2""# } else { "" }
    ));
    b.push_str("<h2>Notes</h2>");
    for n in v.get("notes").and_then(|x| x.as_array()).into_iter().flatten() {
        let g = |k: &str| n.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        b.push_str(&format!(
            r#"<div class="card"><small class="muted">{} · {}</small><pre>{}</pre></div>"#,
            esc(&g("author")),
            esc(&g("time")),
            esc(&g("text"))
        ));
    }
    if sess.identity.may(Role::Respond) {
        b.push_str(&format!(
            r#"<form method="post" action="/incidents/{id}/change"><input type="hidden" name="csrf" value="{}"><p><textarea name="note" rows="3" cols="80" placeholder="Add a note"></textarea></p><button type="submit">Add note</button></form>"#,
            esc(&sess.csrf)
        ));
    }
    // one command per line (a command may itself hold ", ")
    let next: Vec<&str> =
        v.get("next").and_then(|a| a.as_array()).into_iter().flatten().filter_map(|c| c.as_str()).collect();
    b.push_str(&format!("<h2>Next</h2><pre>{}</pre>", esc(&next.join("\n"))));
    page(StatusCode::OK, &st("title"), Some(&viewer(&sess)), &b)
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    csrf: String,
    status: Option<String>,
    assignee: Option<String>,
    note: Option<String>,
}

async fn change(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<ChangeForm>,
) -> Response {
    let back = format!("/incidents/{id}");
    let sess = match session(&s, &headers, &back) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !session::csrf_ok(&sess, Some(&f.csrf)) {
        s.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return forbidden(&sess, "change an incident without the page's token (CSRF)");
    }
    if !sess.identity.may(Role::Respond) {
        s.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return forbidden(&sess, "change incidents (needs the responder role)");
    }
    let body = crate::api::ChangeBody {
        status: f.status.filter(|x| !x.is_empty()),
        assignee: f.assignee,
        note: f.note.filter(|n| !n.trim().is_empty()),
    };
    match crate::api::apply_change(&s, &sess.identity, id, body).await {
        Ok(_) => redirect(&back),
        Err((code, reason)) => page(
            code,
            "Not changed",
            Some(&viewer(&sess)),
            &format!(r#"<h1>Not changed</h1><p class="error">{}</p><p><a href="{back}">Back</a></p>"#, esc(&reason)),
        ),
    }
}
