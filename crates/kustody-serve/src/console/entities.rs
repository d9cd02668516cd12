//! Entity pages: a pod, an identity (user or service account), an IP — what the store knows of
//! each: its timeline, findings, runtime alerts, incidents, IP holds and response actions.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kustody_store::{ActionQuery, AlertQuery, EventQuery, FindingQuery, IncidentQuery, Interval, Store, StoredEvent};
use serde::Deserialize;

use super::html::{badge, esc, page, q};
use super::{session, time, viewer};
use crate::http::AppState;

/// Rows shown per section.
const ROWS: usize = 200;

/// A link to a pod's page (`NS/NAME`).
pub fn pod_link(pod: &str) -> String {
    match pod.split_once('/') {
        Some((ns, name)) => {
            format!(r#"<a class="mono" href="/pod?ns={}&amp;name={}">{}</a>"#, q(ns), q(name), esc(pod))
        }
        None => esc(pod),
    }
}

pub fn identity_link(user: &str) -> String {
    format!(r#"<a class="mono" href="/identity?user={}">{}</a>"#, q(user), esc(user))
}

pub fn ip_link(ip: &str) -> String {
    format!(r#"<a class="mono" href="/ip?ip={}">{}</a>"#, q(ip), esc(ip))
}

/// `link`'s anchor narrowed to `cluster` (an entity's page then shows that cluster only).
fn in_cluster(link: String, cluster: Option<&str>) -> String {
    match cluster {
        Some(c) => link.replacen("\">", &format!("&amp;cluster={}\">", q(c)), 1),
        None => link,
    }
}

/// The `cluster` filter of an entity page (empty: every cluster).
fn cluster_of(c: &str) -> Option<String> {
    (!c.is_empty()).then(|| c.to_owned())
}

/// How an entity page's heading says which clusters it shows.
fn cluster_note(c: &str) -> String {
    if c.is_empty() {
        r#" <span class="muted">(every cluster)</span>"#.to_owned()
    } else {
        format!(r#" <span class="muted">in cluster</span> <span class="mono" id="cluster">{}</span>"#, esc(c))
    }
}

/// A table of events, newest first: time, who, what, code, from where.
pub(crate) fn events_table(id: &str, events: &[StoredEvent]) -> String {
    // a cluster column (and links narrowed to it) once the store holds named clusters
    let clusters = events.iter().any(|e| e.cluster.is_some());
    let mut b = format!(
        r#"<table id="{id}"><thead><tr><th>Time</th>{}<th>User</th><th>Verb</th><th>Resource</th><th>Code</th><th>From</th><th>Pod behind the IP</th></tr></thead><tbody>"#,
        if clusters { "<th>Cluster</th>" } else { "" }
    );
    for e in events {
        let ev = kustody_model::Event::parse(&e.raw).ok();
        let c = ev.as_ref().map(kustody_model::EventContext::of).unwrap_or_default();
        let k = e.cluster.as_deref();
        b.push_str(&format!(
            "<tr><td>{}</td>{}<td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(e.time_ns),
            if clusters { format!("<td>{}</td>", esc(k.unwrap_or(""))) } else { String::new() },
            c.user.as_deref().map(|u| in_cluster(identity_link(u), k)).unwrap_or_default(),
            esc(c.verb.as_deref().unwrap_or("")),
            esc(&c.resource_path().unwrap_or_default()),
            c.response_code.map(|x| x.to_string()).unwrap_or_default(),
            c.source_ip.as_deref().map(|ip| in_cluster(ip_link(ip), k)).unwrap_or_default(),
            e.source_pod.as_deref().map(|p| in_cluster(pod_link(p), k)).unwrap_or_default(),
        ));
    }
    if events.is_empty() {
        b.push_str(r#"<tr><td colspan="8" class="muted">None stored.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    b
}

fn holds_table(holds: &[Interval]) -> String {
    let mut b = String::from(
        r#"<table id="holds"><thead><tr><th>IP</th><th>Holder</th><th>Node</th><th>Owner</th><th>First seen</th><th>Last seen</th><th>Ended</th></tr></thead><tbody>"#,
    );
    for i in holds {
        let holder = if i.pod.is_pod() {
            pod_link(&i.pod.qualified_name())
        } else {
            format!("{} {}", esc(i.pod.kind.as_deref().unwrap_or("")), esc(&i.pod.name))
        };
        b.push_str(&format!(
            "<tr><td>{}</td><td>{holder}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ip_link(&i.ip),
            esc(i.pod.node.as_deref().unwrap_or("–")),
            esc(i.pod.owner.as_deref().unwrap_or("–")),
            time(Some(i.first_ns)),
            time(Some(i.last_ns)),
            i.ended_ns.map_or_else(|| "holds it".to_owned(), |e| time(Some(e))),
        ));
    }
    if holds.is_empty() {
        b.push_str(r#"<tr><td colspan="7" class="muted">No hold known.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    b
}

fn findings_table(rows: &[kustody_store::FindingRow]) -> String {
    let mut b = String::from(
        r#"<table id="findings"><thead><tr><th>Last seen</th><th>Priority</th><th>Rule</th><th>Output</th></tr></thead><tbody>"#,
    );
    for f in rows {
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            time(f.last_ns),
            badge(&f.priority),
            esc(&f.rule),
            esc(&f.output)
        ));
    }
    if rows.is_empty() {
        b.push_str(r#"<tr><td colspan="4" class="muted">None.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    b
}

fn incidents_list(rows: &[kustody_store::IncidentRow]) -> String {
    if rows.is_empty() {
        return r#"<p class="muted">None.</p>"#.into();
    }
    let mut b = String::from("<ul>");
    for r in rows {
        let id = r.id.unwrap_or_default();
        b.push_str(&format!(
            r#"<li>{} <a href="/incidents/{id}">{}</a> <span class="status-{}">{}</span></li>"#,
            badge(&r.severity),
            esc(&r.title),
            esc(&r.status),
            esc(&r.status)
        ));
    }
    b.push_str("</ul>");
    b
}

#[derive(Debug, Default, Deserialize)]
pub struct PodQuery {
    #[serde(default)]
    ns: String,
    #[serde(default)]
    name: String,
    /// Only this cluster's records (empty: every cluster).
    #[serde(default)]
    cluster: String,
}

/// What the store knows of one pod.
struct PodView {
    holds: Vec<Interval>,
    from: Vec<StoredEvent>,
    about: Vec<StoredEvent>,
    alerts: Vec<kustody_store::StoredAlert>,
    actions: Vec<kustody_store::ActionRow>,
}

fn pod_view(st: &dyn Store, ns: &str, name: &str, cluster: Option<String>) -> Result<PodView, String> {
    let e = |e: kustody_store::StoreError| e.to_string();
    let pod = format!("{ns}/{name}");
    let cl = || cluster.clone();
    Ok(PodView {
        holds: st.pod_intervals(ns, name).map_err(e)?,
        from: st
            .search_events(&EventQuery {
                source_pod: Some(pod.clone()),
                limit: ROWS,
                cluster: cl(),
                ..Default::default()
            })
            .map_err(e)?,
        about: st
            .search_events(&EventQuery { pod: Some(pod.clone()), limit: ROWS, cluster: cl(), ..Default::default() })
            .map_err(e)?,
        alerts: st
            .search_alerts(&AlertQuery {
                namespace: Some(ns.to_owned()),
                pod: Some(name.to_owned()),
                limit: ROWS,
                cluster: cl(),
                ..Default::default()
            })
            .map_err(e)?,
        actions: st.search_actions(&ActionQuery { target: Some(pod), limit: ROWS, ..Default::default() }).map_err(e)?,
    })
}

pub async fn pod(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(pq): Query<PodQuery>) -> Response {
    let back = format!("/pod?ns={}&name={}&cluster={}", q(&pq.ns), q(&pq.name), q(&pq.cluster));
    let sess = match session(&s, &headers, &back) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if pq.ns.is_empty() || pq.name.is_empty() || pq.ns.len() > 253 || pq.name.len() > 253 {
        return page(
            StatusCode::BAD_REQUEST,
            "Pod",
            Some(&viewer(&sess)),
            "<h1>Name a pod: ?ns=NAMESPACE&amp;name=NAME</h1>",
        );
    }
    let (ns, name, cluster) = (pq.ns.clone(), pq.name.clone(), cluster_of(&pq.cluster));
    let v = match crate::http::with_store(&s, move |st| pod_view(st, &ns, &name, cluster)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let quarantined = v
        .actions
        .iter()
        .filter(|a| a.state == "applied" && matches!(a.action.as_str(), "quarantine" | "release"))
        .max_by_key(|a| a.updated_ns)
        .is_some_and(|a| a.action == "quarantine");
    let mut b = format!(
        r#"<h1>Pod <span class="mono">{}/{}</span>{}{}</h1>"#,
        esc(&pq.ns),
        esc(&pq.name),
        cluster_note(&pq.cluster),
        if quarantined { r#" <span class="badge sev-critical" id="quarantined">quarantined</span>"# } else { "" }
    );
    if sess.identity.may(crate::auth::Role::Respond) {
        b.push_str(&format!("<p>{}</p>", super::act::buttons(&format!("{}/{}", pq.ns, pq.name), None)));
    }
    b.push_str("<h2>Its IPs</h2>");
    b.push_str(&holds_table(&v.holds));
    b.push_str("<h2>Requests from its IP</h2>");
    b.push_str(&events_table("from-pod", &v.from));
    b.push_str("<h2>Requests about it, or with its bound token</h2>");
    b.push_str(&events_table("about-pod", &v.about));
    b.push_str(r#"<h2>Runtime alerts</h2><table id="alerts"><thead><tr><th>Time</th><th>Priority</th><th>Rule</th><th>Output</th></tr></thead><tbody>"#);
    for a in &v.alerts {
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            time(a.alert.time_ns),
            badge(&a.alert.priority),
            esc(&a.alert.rule),
            esc(&a.alert.output)
        ));
    }
    if v.alerts.is_empty() {
        b.push_str(r#"<tr><td colspan="4" class="muted">None.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    let (table, pending) = super::act::actions_table(&v.actions);
    b.push_str(&format!(
        r#"<h2>Response actions</h2><div id="actions-box"{}>{table}</div>"#,
        if pending { r#" data-refresh="2""# } else { "" }
    ));
    page(StatusCode::OK, &format!("Pod {}/{}", pq.ns, pq.name), Some(&viewer(&sess)), &b)
}

#[derive(Debug, Default, Deserialize)]
pub struct IdentityQuery {
    #[serde(default)]
    user: String,
    /// Only this cluster's records (empty: every cluster).
    #[serde(default)]
    cluster: String,
}

pub async fn identity(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(iq): Query<IdentityQuery>) -> Response {
    let sess = match session(&s, &headers, &format!("/identity?user={}&cluster={}", q(&iq.user), q(&iq.cluster))) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if iq.user.is_empty() || iq.user.len() > 1024 {
        return page(
            StatusCode::BAD_REQUEST,
            "Identity",
            Some(&viewer(&sess)),
            "<h1>Name an identity: ?user=NAME</h1>",
        );
    }
    let (user, cluster) = (iq.user.clone(), cluster_of(&iq.cluster));
    let got = crate::http::with_store(&s, move |st| {
        let e = |e: kustody_store::StoreError| e.to_string();
        let cl = || cluster.clone();
        let events = st
            .search_events(&EventQuery { user: Some(user.clone()), limit: ROWS, cluster: cl(), ..Default::default() })
            .map_err(e)?;
        let findings = st
            .search_findings(&FindingQuery {
                user: Some(user.clone()),
                limit: ROWS,
                cluster: cl(),
                ..Default::default()
            })
            .map_err(e)?;
        let incidents = st
            .search_incidents(&IncidentQuery {
                identity: Some(user.clone()),
                limit: ROWS,
                cluster: cl(),
                ..Default::default()
            })
            .map_err(e)?;
        Ok((events, findings, incidents))
    })
    .await;
    let (events, findings, incidents) = match got {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut b =
        format!(r#"<h1>Identity <span class="mono">{}</span>{}</h1>"#, esc(&iq.user), cluster_note(&iq.cluster));
    if let Some(sa) = iq.user.strip_prefix("system:serviceaccount:") {
        b.push_str(&format!(r#"<p class="muted">Service account {}</p>"#, esc(&sa.replacen(':', "/", 1))));
    }
    b.push_str("<h2>Incidents</h2>");
    b.push_str(&incidents_list(&incidents));
    b.push_str("<h2>Findings</h2>");
    b.push_str(&findings_table(&findings));
    b.push_str("<h2>Timeline</h2>");
    b.push_str(&events_table("timeline", &events));
    page(StatusCode::OK, &format!("Identity {}", iq.user), Some(&viewer(&sess)), &b)
}

#[derive(Debug, Default, Deserialize)]
pub struct IpQuery {
    #[serde(default)]
    ip: String,
    /// Only this cluster's records (empty: every cluster).
    #[serde(default)]
    cluster: String,
}

pub async fn ip(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(iq): Query<IpQuery>) -> Response {
    let sess = match session(&s, &headers, &format!("/ip?ip={}&cluster={}", q(&iq.ip), q(&iq.cluster))) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if iq.ip.parse::<std::net::IpAddr>().is_err() {
        return page(StatusCode::BAD_REQUEST, "IP", Some(&viewer(&sess)), "<h1>Name an IP address: ?ip=ADDRESS</h1>");
    }
    let (addr, cluster) = (iq.ip.clone(), cluster_of(&iq.cluster));
    let got = crate::http::with_store(&s, move |st| {
        let e = |e: kustody_store::StoreError| e.to_string();
        let holds = st.ip_intervals(&addr).map_err(e)?;
        let events =
            st.search_events(&EventQuery { ip: Some(addr), limit: ROWS, cluster, ..Default::default() }).map_err(e)?;
        Ok((holds, events))
    })
    .await;
    let (holds, events) = match got {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut b = format!(
        r#"<h1>IP <span class="mono">{}</span>{}</h1><h2>Who held it</h2>"#,
        esc(&iq.ip),
        cluster_note(&iq.cluster)
    );
    b.push_str(&holds_table(&holds));
    b.push_str("<h2>Requests from it</h2>");
    b.push_str(&events_table("from-ip", &events));
    page(StatusCode::OK, &format!("IP {}", iq.ip), Some(&viewer(&sess)), &b)
}
