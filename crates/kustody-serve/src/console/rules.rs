//! The rules page: the loaded rules and correlations with their hits (since start, and stored
//! findings), switches (admins; kept in the store, applied by a reload of the rule files), and
//! a retro-hunt of the rules in use over stored events.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kustody_store::{EventQuery, Store};
use serde::Deserialize;

use super::html::{badge, esc, page, q};
use super::{forbidden, redirect, session, time, viewer};
use crate::auth::Role;
use crate::http::AppState;

/// Stored events a retro-hunt reads at most, and the matches it lists.
const HUNT_SCAN: usize = 2_000_000;
const HUNT_ROWS: usize = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct RulesQuery {
    /// Name contains (case-insensitive).
    #[serde(default)]
    q: String,
}

pub async fn rules(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(rq): Query<RulesQuery>) -> Response {
    let sess = match session(&s, &headers, &format!("/rules?q={}", q(&rq.q))) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let stored =
        match crate::http::with_store(&s, |st: &dyn Store| st.rule_finding_counts().map_err(|e| e.to_string())).await {
            Ok(v) => v.into_iter().collect::<BTreeMap<String, u64>>(),
            Err(r) => return r,
        };
    let hits = s.metrics.detections.lock().map(|m| m.clone()).unwrap_or_default();
    let engine = s.rules.engine();
    let disabled = s.rules.disabled();
    let admin = sess.identity.may(Role::Admin);
    let needle = rq.q.to_lowercase();
    let mut b = format!(
        r#"<h1>Rules</h1><p class="muted">Loaded {} · {} active · {} switched off here. Hits count rule matches since the server started; findings are stored ones.</p>"#,
        time(Some(s.rules.loaded_ns.load(Ordering::Relaxed))),
        engine.active_count(),
        disabled.len()
    );
    b.push_str(&format!(
        r#"<form class="filters" method="get" action="/rules"><input name="q" value="{}" placeholder="name contains"><button type="submit">Filter</button></form>"#,
        esc(&rq.q)
    ));
    if sess.identity.may(Role::Respond) {
        b.push_str(
            r#"<form id="hunt-form" class="filters" method="get" action="/rules/hunt"><strong>Retro-hunt</strong><label>Rule <input name="rule" placeholder="every rule in use" size="40"></label><label>Since <input name="since" value="24h" size="8"></label><label>Until <input name="until" placeholder="now" size="8"></label><button type="submit">Hunt stored events</button></form>"#,
        );
    }
    let csrf = esc(&sess.csrf);
    let toggle = |name: &str, on: bool| -> String {
        if !admin {
            return String::new();
        }
        format!(
            r#"<form class="inline" method="post" action="/rules/toggle"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="name" value="{}"><input type="hidden" name="enable" value="{}"><button type="submit">{}</button></form>"#,
            esc(name),
            if on { "0" } else { "1" },
            if on { "Switch off" } else { "Switch on" }
        )
    };
    b.push_str(r#"<table id="rules"><thead><tr><th>Rule</th><th>Priority</th><th>State</th><th>Hits</th><th>Findings</th><th>Tags</th><th>From</th><th></th></tr></thead><tbody>"#);
    let mut shown = 0;
    for r in engine.rules().filter(|r| !r.hidden) {
        if !needle.is_empty() && !r.name.to_lowercase().contains(&needle) {
            continue;
        }
        shown += 1;
        let off_here = disabled.contains(&r.name);
        let state = match (r.enabled, off_here) {
            (true, _) => "on",
            (false, true) => "switched off",
            (false, false) => "off in its file",
        };
        b.push_str(&format!(
            r#"<tr data-rule="{}"><td title="{}">{}</td><td>{}</td><td class="rule-{}">{state}</td><td>{}</td><td>{}</td><td class="muted">{}</td><td class="mono muted">{}:{}</td><td>{}</td></tr>"#,
            esc(&r.name),
            esc(&r.desc),
            esc(&r.name),
            badge(&r.priority.to_string()),
            if r.enabled { "on" } else { "off" },
            hits.get(&r.name).copied().unwrap_or(0),
            stored.get(&r.name).copied().unwrap_or(0),
            esc(&r.tags.join(", ")),
            esc(std::path::Path::new(&*r.file).file_name().map(|f| f.to_string_lossy()).unwrap_or_default().as_ref()),
            r.line,
            if r.enabled || off_here { toggle(&r.name, r.enabled) } else { String::new() },
        ));
    }
    for c in engine.correlations() {
        if !needle.is_empty() && !c.name.to_lowercase().contains(&needle) {
            continue;
        }
        shown += 1;
        b.push_str(&format!(
            r#"<tr data-rule="{}"><td title="{}">{} <span class="muted">(correlation of {} steps within {})</span></td><td>{}</td><td class="rule-{}">{}</td><td>{}</td><td>{}</td><td class="muted">{}</td><td class="mono muted">{}:{}</td><td>{}</td></tr>"#,
            esc(&c.name),
            esc(&c.desc),
            esc(&c.name),
            c.steps.len(),
            esc(&c.window),
            badge(&c.priority.to_string()),
            if c.enabled { "on" } else { "off" },
            if c.enabled { "on" } else if disabled.contains(&c.name) { "switched off" } else { "off in its file" },
            hits.get(&c.name).copied().unwrap_or(0),
            stored.get(&c.name).copied().unwrap_or(0),
            esc(&c.tags.join(", ")),
            esc(std::path::Path::new(&*c.file).file_name().map(|f| f.to_string_lossy()).unwrap_or_default().as_ref()),
            c.line,
            if c.enabled || disabled.contains(&c.name) { toggle(&c.name, c.enabled) } else { String::new() },
        ));
    }
    if shown == 0 {
        b.push_str(r#"<tr><td colspan="8" class="muted">No rule matches.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    page(StatusCode::OK, "Rules", Some(&viewer(&sess)), &b)
}

#[derive(Debug, Default, Deserialize)]
pub struct ToggleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    enable: String,
}

/// Switches a rule on or off: stored, then the rule files reloaded with it; answers once the
/// new set is loaded (or after 20 s, saying so).
pub async fn toggle(State(s): State<Arc<AppState>>, headers: HeaderMap, Form(f): Form<ToggleForm>) -> Response {
    let sess = match session(&s, &headers, "/rules") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !super::session::csrf_ok(&sess, Some(&f.csrf)) || !sess.identity.may(Role::Admin) {
        s.metrics.forbidden.fetch_add(1, Ordering::Relaxed);
        return forbidden(&sess, "switch rules (needs the admin role and the page's token)");
    }
    let engine = s.rules.engine();
    let known = engine.rules().any(|r| r.name == f.name) || engine.correlations().any(|c| c.name == f.name);
    if !known {
        return page(
            StatusCode::NOT_FOUND,
            "No such rule",
            Some(&viewer(&sess)),
            &format!(r#"<p class="error">No loaded rule is named `{}`.</p>"#, esc(&f.name)),
        );
    }
    let enable = f.enable == "1";
    let set = s.rules.set(&f.name, enable);
    let blob = serde_json::to_vec(&set).unwrap_or_default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: crate::writer::StoreTask = Box::new(move |st: &mut dyn Store| {
        let _ = tx.send(st.set_state(crate::ruleset::DISABLED, &blob).map_err(|e| e.to_string()));
    });
    let stored = match crate::writer::send_task(&s.writes, task).await {
        Ok(()) => rx.await.unwrap_or_else(|_| Err("the server is stopping".into())),
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        // not kept: undo in memory too
        s.rules.set(&f.name, !enable);
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not changed",
            Some(&viewer(&sess)),
            &format!(r#"<p class="error">Not stored: {}</p>"#, esc(&e)),
        );
    }
    tracing::info!(user = %sess.identity.name, rule = %f.name, enabled = enable, "rule switched from the console");
    let before = s.rules.generation.load(Ordering::Acquire);
    let _ = s.reload.try_send(()); // a reload already queued reads the new set too
    let t0 = Instant::now();
    while s.rules.generation.load(Ordering::Acquire) == before && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redirect(&format!("/rules?q={}", q(&f.name)))
}

#[derive(Debug, Default, Deserialize)]
pub struct HuntQuery {
    #[serde(default)]
    rule: String,
    since: Option<String>,
    until: Option<String>,
}

/// One retro-hunt match.
struct Hit {
    time_ns: Option<i64>,
    rule: String,
    priority: String,
    user: String,
    what: String,
    output: String,
}

/// Runs the rules in use (or one of them) over stored events of a window, newest first.
pub async fn hunt(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(hq): Query<HuntQuery>) -> Response {
    let sess = match session(&s, &headers, "/rules") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !sess.identity.may(Role::Respond) {
        return forbidden(&sess, "run retro-hunts (needs the responder role)");
    }
    let v = viewer(&sess);
    let now = crate::writer::now_ns();
    let bound = |x: &Option<String>, what: &str| -> Result<Option<i64>, String> {
        x.as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(|t| crate::search::time_bound(t.trim(), now))
            .transpose()
            .map_err(|e| format!("{what}: {e}"))
    };
    let (since, until) = match (bound(&hq.since, "since"), bound(&hq.until, "until")) {
        (Ok(a), Ok(b)) => (a.or(Some(now - 86_400_000_000_000)), b),
        (Err(e), _) | (_, Err(e)) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Retro-hunt",
                Some(&v),
                &format!(r#"<p class="error">{}</p>"#, esc(&e)),
            )
        }
    };
    let engine = s.rules.engine();
    let rule = hq.rule.trim().to_owned();
    if !rule.is_empty() && !engine.rules().any(|r| r.name == rule && r.enabled) {
        return page(
            StatusCode::BAD_REQUEST,
            "Retro-hunt",
            Some(&v),
            &format!(r#"<p class="error">No rule in use is named `{}`.</p>"#, esc(&rule)),
        );
    }
    let t0 = Instant::now();
    let want = rule.clone();
    let got = crate::http::with_store(&s, move |st: &dyn Store| {
        let mut q = EventQuery { since_ns: since, until_ns: until, limit: 5000, ..Default::default() };
        let mut scratch = kustody_rules::Scratch::default();
        let mut idx = Vec::new();
        let (mut hits, mut per_rule, mut scanned) = (Vec::new(), BTreeMap::<String, u64>::new(), 0usize);
        loop {
            let page = st.search_events(&q).map_err(|e| e.to_string())?;
            let done = page.len() < q.limit;
            for e in &page {
                scanned += 1;
                q.before_id = Some(e.id);
                let Ok(ev) = kustody_model::Event::parse(&e.raw) else { continue };
                idx.clear();
                engine.matches(&ev, &mut scratch, &mut idx);
                for &i in &idx {
                    if !engine.emits(i) {
                        continue;
                    }
                    let Some(info) = engine.rule(i) else { continue };
                    if !want.is_empty() && info.name != want {
                        continue;
                    }
                    *per_rule.entry(info.name.clone()).or_default() += 1;
                    if hits.len() < HUNT_ROWS {
                        let c = kustody_model::EventContext::of(&ev);
                        let output = engine
                            .detection(
                                i,
                                &ev,
                                kustody_model::SourceRef {
                                    file: Arc::from("store"),
                                    line: e.id as u64,
                                    offset: 0,
                                    format: kustody_model::SourceFormat::Native,
                                },
                                false,
                            )
                            .map(|d| d.output)
                            .unwrap_or_default();
                        hits.push(Hit {
                            time_ns: e.time_ns,
                            rule: info.name.clone(),
                            priority: info.priority.to_string(),
                            user: c.user.clone().unwrap_or_default(),
                            what: format!(
                                "{} {}",
                                c.verb.as_deref().unwrap_or(""),
                                c.resource_path().unwrap_or_default()
                            ),
                            output,
                        });
                    }
                }
            }
            if done || scanned >= HUNT_SCAN {
                return Ok((hits, per_rule, scanned, !done));
            }
        }
    })
    .await;
    let (hits, per_rule, scanned, cut) = match got {
        Ok(x) => x,
        Err(r) => return r,
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut b = format!(
        r#"<h1>Retro-hunt</h1><p id="hunt-summary">{} over {scanned} stored events from {} to {} · {} matches · {secs:.2} s{}</p>"#,
        if rule.is_empty() { "Every rule in use".to_owned() } else { format!("Rule <strong>{}</strong>", esc(&rule)) },
        time(since),
        until.map_or_else(|| "now".to_owned(), |u| time(Some(u))),
        per_rule.values().sum::<u64>(),
        if cut { format!(" · stopped after {HUNT_SCAN} events: narrow the window") } else { String::new() }
    );
    b.push_str(r#"<table id="hunt-rules"><thead><tr><th>Rule</th><th>Matches</th></tr></thead><tbody>"#);
    let mut ranked: Vec<_> = per_rule.iter().collect();
    ranked.sort_by_key(|(n, c)| (std::cmp::Reverse(**c), (*n).clone()));
    for (name, n) in ranked {
        b.push_str(&format!(
            r#"<tr><td><a href="/search?rule={}&amp;since={}">{}</a></td><td>{n}</td></tr>"#,
            q(name),
            q(hq.since.as_deref().unwrap_or("24h")),
            esc(name)
        ));
    }
    b.push_str("</tbody></table><h2>Matches (newest first)</h2>");
    b.push_str(r#"<table id="hunt-hits"><thead><tr><th>Time</th><th>Priority</th><th>Rule</th><th>User</th><th>Request</th><th>Output</th></tr></thead><tbody>"#);
    for h in &hits {
        b.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="mono">{}</td><td class="mono">{}</td></tr>"#,
            time(h.time_ns),
            badge(&h.priority),
            esc(&h.rule),
            if h.user.is_empty() { String::new() } else { super::entities::identity_link(&h.user) },
            esc(&h.what),
            esc(&h.output)
        ));
    }
    if hits.is_empty() {
        b.push_str(r#"<tr><td colspan="6" class="muted">No match.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    page(StatusCode::OK, "Retro-hunt", Some(&v), &b)
}
