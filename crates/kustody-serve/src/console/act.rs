//! Response actions from the console: collect evidence, quarantine, release.
//!
//! Quarantine and release first show the exact plan — the same library flow run as a dry run
//! against the cluster, so the requests listed are the ones that would be sent now — and ask
//! for a reason. Confirming commits the action (`planned`, playbook `console`, with the acting
//! user and the reason) before the executor runs it through the same flows as playbooks and the
//! CLI; the cluster is planned again when it runs, and what was sent is in the action's record
//! and the action log (`requestedBy`). The incident gets a note naming the user.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kustody_playbook::{Action, CollectSpec, QuarantineSpec, ReleaseSpec};
use kustody_store::{ActionRow, Batch, Store};
use serde::Deserialize;
use serde_json::json;

use super::html::{esc, page, q};
use super::{forbidden, redirect, session, viewer};
use crate::auth::Role;
use crate::http::AppState;
use crate::writer::now_ns;

/// Longest reason kept.
const MAX_REASON: usize = 2000;

#[derive(Debug, Default, Deserialize)]
pub struct ActQuery {
    /// `collect`, `quarantine` or `release`.
    #[serde(default)]
    action: String,
    /// `namespace/pod`.
    #[serde(default)]
    pod: String,
    incident: Option<i64>,
    #[serde(default)]
    allow_dns: Option<String>,
    #[serde(default)]
    cordon: Option<String>,
    #[serde(default)]
    restore_labels: Option<String>,
    #[serde(default)]
    profile: Option<String>,
}

/// The confirming form: the action's fields (no `#[serde(flatten)]`: form values are all
/// strings, which flattening would not convert), the CSRF token and the reason.
#[derive(Debug, Default, Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    pod: String,
    incident: Option<i64>,
    allow_dns: Option<String>,
    cordon: Option<String>,
    restore_labels: Option<String>,
    profile: Option<String>,
}

impl ActForm {
    fn split(self) -> (String, String, ActQuery) {
        let q = ActQuery {
            action: self.action,
            pod: self.pod,
            incident: self.incident,
            allow_dns: self.allow_dns,
            cordon: self.cordon,
            restore_labels: self.restore_labels,
            profile: self.profile,
        };
        (self.csrf, self.reason, q)
    }
}

/// A checkbox's value.
fn on(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `namespace/name` with Kubernetes' name characters.
fn pod_name(s: &str) -> Option<(&str, &str)> {
    let (ns, name) = s.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (ok(ns) && ok(name)).then_some((ns, name))
}

impl ActQuery {
    fn spec(&self) -> Result<Action, String> {
        Ok(match self.action.as_str() {
            "collect" => Action::Collect(CollectSpec {
                profile: match self.profile.as_deref().filter(|p| !p.is_empty()) {
                    None | Some("triage") => None,
                    Some("full") => Some("full".into()),
                    Some(other) => return Err(format!("unknown profile `{other}` (triage, full)")),
                },
                ..Default::default()
            }),
            "quarantine" => Action::Quarantine(QuarantineSpec {
                honeypot: None,
                allow_dns: on(&self.allow_dns),
                cordon: on(&self.cordon),
            }),
            "release" => Action::Release(ReleaseSpec { restore_labels: on(&self.restore_labels), uncordon: false }),
            other => return Err(format!("unknown action `{other}` (collect, quarantine, release)")),
        })
    }

    /// The query string that plans the same action again.
    fn query(&self) -> String {
        let mut s = format!("action={}&pod={}", q(&self.action), q(&self.pod));
        if let Some(i) = self.incident {
            s.push_str(&format!("&incident={i}"));
        }
        for (k, v) in
            [("allow_dns", &self.allow_dns), ("cordon", &self.cordon), ("restore_labels", &self.restore_labels)]
        {
            if on(v) {
                s.push_str(&format!("&{k}=1"));
            }
        }
        if let Some(p) = self.profile.as_deref().filter(|p| !p.is_empty()) {
            s.push_str(&format!("&profile={}", q(p)));
        }
        s
    }

    /// Where to go back to: the incident, or the pod's page.
    fn back(&self) -> String {
        match (self.incident, pod_name(&self.pod)) {
            (Some(i), _) => format!("/incidents/{i}"),
            (None, Some((ns, name))) => format!("/pod?ns={}&name={}", q(ns), q(name)),
            (None, None) => "/".into(),
        }
    }

    /// Hidden fields carrying the action's options into the confirming form.
    fn hidden(&self) -> String {
        let mut s = String::new();
        let mut field =
            |k: &str, v: &str| s.push_str(&format!(r#"<input type="hidden" name="{k}" value="{}">"#, esc(v)));
        field("action", &self.action);
        field("pod", &self.pod);
        if let Some(i) = self.incident {
            field("incident", &i.to_string());
        }
        for (k, v) in
            [("allow_dns", &self.allow_dns), ("cordon", &self.cordon), ("restore_labels", &self.restore_labels)]
        {
            if on(v) {
                field(k, "1");
            }
        }
        if let Some(p) = self.profile.as_deref().filter(|p| !p.is_empty()) {
            field("profile", p);
        }
        s
    }
}

fn run_context(k: &crate::execute::Connected, user: &str) -> kustody_contain::RunContext {
    kustody_contain::RunContext {
        server: k.server.clone(),
        context: k.context.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        requested_by: Some(format!("console:{user}")),
    }
}

/// The requests of a plan, as a table (bodies folded).
fn requests_table(reqs: &[kustody_contain::plan::Request]) -> String {
    let mut b =
        String::from(r#"<table id="plan"><thead><tr><th>#</th><th>Request</th><th>Why</th></tr></thead><tbody>"#);
    for (i, r) in reqs.iter().enumerate() {
        let body = r
            .body
            .as_ref()
            .map(|v| {
                format!(
                    "<details><summary>body</summary><pre>{}</pre></details>",
                    esc(&serde_json::to_string_pretty(v).unwrap_or_default())
                )
            })
            .unwrap_or_default();
        b.push_str(&format!(
            r#"<tr><td>{}</td><td class="mono">{} {}{body}</td><td>{}</td></tr>"#,
            i + 1,
            esc(&r.method),
            esc(&r.path),
            esc(&r.purpose)
        ));
    }
    if reqs.is_empty() {
        b.push_str(r#"<tr><td colspan="3" class="muted">No request: nothing to change.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    b
}

fn list(title: &str, class: &str, items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let li: String = items.iter().map(|i| format!("<li>{}</li>", esc(i))).collect();
    format!(r#"<h3>{title}</h3><ul class="{class}">{li}</ul>"#)
}

/// The dry run of a quarantine or release: (HTML of the plan, whether it may be confirmed).
async fn dry_run(s: &AppState, aq: &ActQuery, spec: &Action, user: &str) -> Result<(String, bool), String> {
    let (ns, pod) = pod_name(&aq.pod).ok_or("not a pod")?;
    let connect = s.connect.as_ref().ok_or("no cluster is configured (kustody serve --kubeconfig/--context)")?;
    let k = tokio::time::timeout(Duration::from_secs(20), connect())
        .await
        .map_err(|_| "the cluster did not answer within 20 s".to_owned())??;
    let log = kustody_contain::actionlog::ActionLog::new(s.data_dir.join("actions.jsonl"));
    let target = kustody_contain::Target { namespace: ns.into(), pod: pod.into() };
    let run = kustody_contain::RunOptions { dry_run: true, confirm: false, wait: Duration::from_secs(30) };
    let rc = run_context(&k, user);
    let mut b = String::new();
    let ok = match spec {
        Action::Quarantine(qs) => {
            let opts = kustody_contain::plan::Options {
                reason: Some("console: plan shown before confirming".into()),
                honeypot: None,
                allow_dns: qs.allow_dns,
                cordon: qs.cordon,
                force: false,
            };
            let o = tokio::time::timeout(
                Duration::from_secs(30),
                kustody_contain::quarantine(&k.client, &target, &opts, &run, &rc, &log, &mut ()),
            )
            .await
            .map_err(|_| "planning took over 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
            b.push_str(&format!(
                r#"<p>kustody acts as <span class="mono">{}</span> on {}.</p>"#,
                esc(&o.actor.username),
                esc(&k.server)
            ));
            if let Some(m) = &o.plan.mode_change {
                b.push_str(&format!(r#"<p class="warn">{}</p>"#, esc(&m.to_string())));
            }
            b.push_str(&list("Warnings", "warn", &o.plan.warnings));
            b.push_str(&requests_table(&o.plan.requests));
            b.push_str(&list("Know this", "muted", &o.notes));
            !o.plan.is_noop()
        }
        Action::Release(rs) => {
            let opts = kustody_contain::plan::ReleaseOptions {
                restore_labels: rs.restore_labels,
                uncordon: rs.uncordon,
                reason: None,
            };
            let o = tokio::time::timeout(
                Duration::from_secs(30),
                kustody_contain::release(&k.client, &target, &opts, &run, &rc, &log, &mut ()),
            )
            .await
            .map_err(|_| "planning took over 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
            b.push_str(&format!(
                r#"<p>kustody acts as <span class="mono">{}</span> on {}.</p>"#,
                esc(&o.actor.username),
                esc(&k.server)
            ));
            b.push_str(&list("Warnings", "warn", &o.plan.warnings));
            b.push_str(&requests_table(&o.plan.requests));
            b.push_str(&format!(r#"<p id="next">{}</p>"#, esc(&o.plan.next.describe(&aq.pod))));
            !o.plan.requests.is_empty()
        }
        _ => return Err("no plan for this action".into()),
    };
    Ok((b, ok))
}

/// The page that plans an action and asks for a reason.
pub async fn plan(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(aq): Query<ActQuery>) -> Response {
    let sess = match session(&s, &headers, &format!("/act?{}", aq.query())) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !sess.identity.may(Role::Respond) {
        s.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return forbidden(&sess, "act on the cluster (needs the responder role)");
    }
    let v = viewer(&sess);
    let bad = |msg: &str| {
        page(
            StatusCode::BAD_REQUEST,
            "Not possible",
            Some(&v),
            &format!(r#"<h1>Not possible</h1><p class="error">{}</p>"#, esc(msg)),
        )
    };
    let Some((ns, name)) = pod_name(&aq.pod) else { return bad("name a pod: pod=NAMESPACE/NAME") };
    let spec = match aq.spec() {
        Ok(x) => x,
        Err(e) => return bad(&e),
    };
    let title = match &spec {
        Action::Collect(_) => "Collect evidence from",
        Action::Quarantine(_) => "Quarantine",
        _ => "Release",
    };
    let mut b = format!(
        r#"<h1>{title} <a class="mono" href="/pod?ns={}&amp;name={}">{}</a></h1>"#,
        q(ns),
        q(name),
        esc(&aq.pod)
    );
    if let Some(i) = aq.incident {
        b.push_str(&format!(r#"<p>For <a href="/incidents/{i}">incident {i}</a>.</p>"#));
    }
    // options: changing one plans again
    let mut opts = String::from(r#"<form class="filters" method="get" action="/act">"#);
    opts.push_str(&format!(
        r#"<input type="hidden" name="action" value="{}"><input type="hidden" name="pod" value="{}">"#,
        esc(&aq.action),
        esc(&aq.pod)
    ));
    if let Some(i) = aq.incident {
        opts.push_str(&format!(r#"<input type="hidden" name="incident" value="{i}">"#));
    }
    let check = |k: &str, label: &str, v: &Option<String>| {
        format!(
            r#"<label><input type="checkbox" name="{k}" value="1"{}> {label}</label>"#,
            if on(v) { " checked" } else { "" }
        )
    };
    let confirmable = match &spec {
        Action::Collect(c) => {
            let full = c.profile.as_deref() == Some("full");
            opts.push_str(&format!(
                r#"<label>Profile <select name="profile"><option value="triage"{}>triage</option><option value="full"{}>full</option></select></label><button type="submit">Change</button></form>"#,
                if full { "" } else { " selected" },
                if full { " selected" } else { "" }
            ));
            b.push_str(&opts);
            b.push_str(&format!(
                r#"<p>kustody copies the pod's {} evidence through an ephemeral debug container (nothing is written into the containers examined), hashing every artifact as it streams, into a bundle under the server's data directory; the bundle's manifest and hashes appear on the evidence page.</p>"#,
                if full { "full" } else { "triage" }
            ));
            s.connect.is_some()
        }
        Action::Quarantine(_) => {
            opts.push_str(&check("allow_dns", "allow DNS", &aq.allow_dns));
            opts.push_str(&check("cordon", "cordon the node", &aq.cordon));
            opts.push_str(r#"<button type="submit">Plan again</button></form>"#);
            b.push_str(&opts);
            b.push_str("<h2>Plan (dry run, nothing sent yet)</h2>");
            match dry_run(&s, &aq, &spec, &sess.identity.name).await {
                Ok((html, ok)) => {
                    b.push_str(&html);
                    ok
                }
                Err(e) => {
                    b.push_str(&format!(r#"<p class="error" id="plan-error">{}</p>"#, esc(&e)));
                    false
                }
            }
        }
        _ => {
            opts.push_str(&check(
                "restore_labels",
                "restore the labels (the controller may adopt it again)",
                &aq.restore_labels,
            ));
            opts.push_str(r#"<button type="submit">Plan again</button></form>"#);
            b.push_str(&opts);
            b.push_str("<h2>Plan (dry run, nothing sent yet)</h2>");
            match dry_run(&s, &aq, &spec, &sess.identity.name).await {
                Ok((html, ok)) => {
                    b.push_str(&html);
                    ok
                }
                Err(e) => {
                    b.push_str(&format!(r#"<p class="error" id="plan-error">{}</p>"#, esc(&e)));
                    false
                }
            }
        }
    };
    if confirmable && s.exec.is_some() {
        b.push_str(&format!(
            r#"<form id="confirm" method="post" action="/act" data-confirm="{} {}?"><input type="hidden" name="csrf" value="{}">{}<p><label for="reason">Reason (kept with the action, in the action log and on the pod)</label><textarea id="reason" name="reason" rows="3" cols="80" required maxlength="{MAX_REASON}"></textarea></p><p><button class="primary" type="submit">{} {}</button> <a href="{}">Cancel</a></p></form>"#,
            esc(title),
            esc(&aq.pod),
            esc(&sess.csrf),
            aq.hidden(),
            esc(title),
            esc(&aq.pod),
            esc(&aq.back()),
        ));
    } else if s.exec.is_none() || s.connect.is_none() {
        b.push_str(r#"<p class="error">No cluster is configured: start kustody serve with --kubeconfig or --context to act from here.</p>"#);
    }
    page(StatusCode::OK, &format!("{title} {}", aq.pod), Some(&v), &b)
}

/// Commits an action row through the writer thread; its id.
async fn commit_action(s: &AppState, row: ActionRow) -> Result<i64, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: crate::writer::StoreTask = Box::new(move |st: &mut dyn Store| {
        let r = st.commit(&Batch { actions: std::slice::from_ref(&row), ..Default::default() });
        let _ = tx.send(
            r.map_err(|e| e.to_string())
                .and_then(|ids| ids.actions.first().copied().ok_or_else(|| "the store gave no id".to_owned())),
        );
    });
    crate::writer::send_task(&s.writes, task).await?;
    rx.await.map_err(|_| "the server is stopping".to_owned())?
}

/// Confirms an action: committed, handed to the executor, noted on the incident.
pub async fn confirm(State(s): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<ActForm>) -> Response {
    let (csrf, reason, aq) = form.split();
    let sess = match session(&s, &headers, &format!("/act?{}", aq.query())) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !session::csrf_ok(&sess, Some(&csrf)) {
        s.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return forbidden(&sess, "act without the page's token (CSRF)");
    }
    if !sess.identity.may(Role::Respond) {
        s.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return forbidden(&sess, "act on the cluster (needs the responder role)");
    }
    let v = viewer(&sess);
    let refuse = |code: StatusCode, msg: &str| {
        page(
            code,
            "Not done",
            Some(&v),
            &format!(
                r#"<h1>Not done</h1><p class="error">{}</p><p><a href="{}">Back</a></p>"#,
                esc(msg),
                esc(&aq.back())
            ),
        )
    };
    let reason = reason.trim();
    if reason.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "a reason is required");
    }
    if reason.len() > MAX_REASON {
        return refuse(StatusCode::BAD_REQUEST, &format!("the reason is over {MAX_REASON} bytes"));
    }
    if pod_name(&aq.pod).is_none() {
        return refuse(StatusCode::BAD_REQUEST, "name a pod: pod=NAMESPACE/NAME");
    }
    let spec = match aq.spec() {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let Some(exec) = s.exec.clone() else {
        return refuse(StatusCode::CONFLICT, "no cluster is configured: nothing runs actions");
    };
    if let Some(i) = aq.incident {
        let found = crate::http::with_store(&s, move |st| st.incident(i).map_err(|e| e.to_string())).await;
        match found {
            Ok(Some(_)) => {}
            Ok(None) => return refuse(StatusCode::NOT_FOUND, &format!("no incident {i}")),
            Err(r) => return r,
        }
    }
    let user = sess.identity.name.clone();
    let who = format!("console:{user}");
    let now = now_ns();
    let row = ActionRow {
        id: None,
        incident_id: aq.incident,
        playbook: "console".into(),
        action: spec.name().into(),
        target: Some(aq.pod.clone()),
        state: "planned".into(),
        created_ns: now,
        updated_ns: now,
        detail: crate::execute::detail(
            &spec,
            json!({ "dry_run": false, "reason": reason, "requested_by": who, "min_healthy_replicas": 0 }),
        ),
    };
    let id = match commit_action(&s, row).await {
        Ok(id) => id,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let job = crate::execute::Job {
        incident: aq.incident,
        playbook: "console".into(),
        target: aq.pod.clone(),
        steps: vec![(id, spec.clone())],
        dry_run: false,
        // a person decided, having seen the plan
        min_healthy_replicas: 0,
        reason: reason.to_owned(),
        notification: None,
        since: std::time::Instant::now(),
        approved_by: None,
        requested_by: Some(who),
    };
    if exec.try_send(job).is_err() {
        // committed as planned: the next start runs it
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the executor's queue is full; the action stays planned");
    }
    tracing::info!(user = %user, action = spec.name(), target = %aq.pod, id, "console action requested");
    if let Some(i) = aq.incident {
        let note = format!("{} of {} requested (action {id}): {reason}", spec.name(), aq.pod);
        let body = crate::api::ChangeBody { status: None, assignee: None, note: Some(note) };
        if let Err((_, e)) = crate::api::apply_change(&s, &sess.identity, i, body).await {
            tracing::warn!(incident = i, error = %e, "cannot note a console action on its incident");
        }
    }
    redirect(&format!("{}#actions", aq.back()))
}

/// The actions table (incident or pod page); `pending` when one is still planned or running.
pub fn actions_table(rows: &[ActionRow]) -> (String, bool) {
    let mut pending = false;
    let mut b = String::from(
        r#"<table id="actions"><thead><tr><th>#</th><th>Updated</th><th>Action</th><th>Target</th><th>State</th><th>By</th><th>Reason</th><th>Outcome</th></tr></thead><tbody>"#,
    );
    for a in rows {
        pending |= matches!(a.state.as_str(), "planned" | "running");
        let d: serde_json::Value = serde_json::from_str(&a.detail).unwrap_or_default();
        let g = |k: &str| d.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        let by = match (g("requested_by"), g("approved_by")) {
            (r, _) if !r.is_empty() => r,
            (_, ap) if !ap.is_empty() => format!("playbook {} (approved by {ap})", a.playbook),
            _ => format!("playbook {}", a.playbook),
        };
        let mut outcome = Vec::new();
        if let Some(st) = d.get("status").and_then(|x| x.as_str()) {
            outcome.push(esc(st));
        }
        if let Some(bundle) = d.get("bundle").and_then(|x| x.as_str()) {
            let name =
                std::path::Path::new(bundle).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if a.state == "applied" {
                outcome.push(format!(
                    r#"bundle <a class="mono" href="/evidence?bundle={}">{}</a>"#,
                    q(&name),
                    esc(&name)
                ));
            } else {
                outcome.push(format!(r#"bundle <span class="mono">{}</span>"#, esc(&name)));
            }
        }
        if let Some(n) = d.get("artifacts").and_then(|x| x.as_u64()) {
            outcome.push(format!("{n} artifacts"));
        }
        for k in ["error", "guardrail"] {
            if let Some(e) = d.get(k).and_then(|x| x.as_str()) {
                outcome.push(format!(r#"<span class="error">{}</span>"#, esc(e)));
            }
        }
        if let Some(checks) = d.get("checks").and_then(|x| x.as_array()) {
            let failed = checks.iter().filter(|c| c.get("status").and_then(|s| s.as_str()) == Some("failed")).count();
            outcome.push(format!("{} checks, {failed} failed", checks.len()));
        }
        let target = a.target.as_deref().map(super::entities::pod_link).unwrap_or_default();
        b.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{target}</td><td class="state-{}">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            a.id.unwrap_or_default(),
            super::time(Some(a.updated_ns)),
            esc(&a.action),
            esc(&a.state),
            esc(&a.state),
            esc(&by),
            esc(&g("reason")),
            outcome.join(" · "),
        ));
    }
    if rows.is_empty() {
        b.push_str(r#"<tr><td colspan="8" class="muted">None.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    (b, pending)
}

/// Buttons to act on a pod (responders).
pub fn buttons(pod: &str, incident: Option<i64>) -> String {
    let inc = incident.map(|i| format!("&amp;incident={i}")).unwrap_or_default();
    let p = q(pod);
    format!(
        r#"<span class="acts"><a class="button" href="/act?action=collect&amp;pod={p}{inc}">Collect evidence</a> <a class="button" href="/act?action=quarantine&amp;pod={p}{inc}&amp;allow_dns=1">Quarantine…</a> <a class="button" href="/act?action=release&amp;pod={p}{inc}">Release…</a></span>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pod_names_are_acted_on() {
        assert_eq!(pod_name("shop/web-1"), Some(("shop", "web-1")));
        for bad in ["shop", "/web", "shop/", "shop/Web", "shop/web/x", "shop/web 1", "../x/y"] {
            assert_eq!(pod_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn options_carry_over_into_the_confirming_form() {
        let aq = ActQuery {
            action: "quarantine".into(),
            pod: "shop/web-1".into(),
            incident: Some(3),
            allow_dns: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(aq.query(), "action=quarantine&pod=shop%2Fweb-1&incident=3&allow_dns=1");
        assert!(aq.hidden().contains(r#"name="allow_dns" value="1""#));
        assert!(!aq.hidden().contains("cordon"));
        assert_eq!(
            aq.spec().unwrap(),
            Action::Quarantine(QuarantineSpec { honeypot: None, allow_dns: true, cordon: false })
        );
        assert!(ActQuery { action: "delete".into(), ..Default::default() }.spec().is_err());
    }
}
