//! The search page (the filters and `--where` condition of `kustody search`, results as a
//! timeline with a histogram) and the charts page (event rates by namespace and identity,
//! findings by priority).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kustody_store::{CountBy, CountQuery, Store};
use serde::Deserialize;

use super::chart::{self, Series};
use super::html::{esc, page, q};
use super::{session, viewer};
use crate::http::{AppState, SearchParams};

/// Rows shown in the timeline.
const SHOWN: usize = 200;
/// Newest matches binned when the per-minute counts cannot answer the filters.
const BINNED: usize = 10_000;
/// Bars of a histogram at most.
const BARS: i64 = 1440;

/// Empty form fields are no filter.
fn clean(mut p: SearchParams) -> SearchParams {
    for f in [
        &mut p.cluster,
        &mut p.user,
        &mut p.service_account,
        &mut p.pod,
        &mut p.ip,
        &mut p.from_pod,
        &mut p.namespace,
        &mut p.verb,
        &mut p.resource,
        &mut p.name,
        &mut p.audit_id,
        &mut p.rule,
        &mut p.since,
        &mut p.until,
        &mut p.where_,
        &mut p.min_priority,
    ] {
        if f.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *f = None;
        } else if let Some(v) = f {
            *v = v.trim().to_owned();
        }
    }
    p
}

/// The form, filled with the current values.
fn form(p: &SearchParams) -> String {
    let field = |name: &str, label: &str, v: &Option<String>, hint: &str| {
        format!(
            r#"<label>{label} <input name="{name}" value="{}" placeholder="{}" size="14"></label>"#,
            esc(v.as_deref().unwrap_or("")),
            esc(hint)
        )
    };
    let mut b = String::from(r#"<form id="search-form" class="filters" method="get" action="/search">"#);
    b.push_str(&field("since", "Since", &p.since.clone().or_else(|| Some("24h".into())), "24h or RFC 3339"));
    b.push_str(&field("until", "Until", &p.until, "now"));
    b.push_str(&field("cluster", "Cluster", &p.cluster, "any"));
    b.push_str(&field("user", "User", &p.user, "alice or system:serviceaccount:…"));
    b.push_str(&field("namespace", "Namespace", &p.namespace, ""));
    b.push_str(&field("verb", "Verb", &p.verb, "get, create…"));
    b.push_str(&field("resource", "Resource", &p.resource, "secrets"));
    b.push_str(&field("name", "Name", &p.name, ""));
    b.push_str(&field("pod", "Pod", &p.pod, "ns/name"));
    b.push_str(&field("from_pod", "From pod", &p.from_pod, "ns/name"));
    b.push_str(&field("ip", "Source IP", &p.ip, ""));
    b.push_str(&field("rule", "Rule", &p.rule, "matched rule"));
    b.push_str(&format!(
        r#"<label class="wide">Condition <input name="where" value="{}" placeholder="ka.verb=delete and ka.target.resource=secrets" size="60"></label><button class="primary" type="submit">Search</button></form>"#,
        esc(p.where_.as_deref().unwrap_or(""))
    ));
    b
}

/// Whether the per-minute counts answer these filters exactly.
fn countable(p: &SearchParams) -> bool {
    // the per-minute counts are kept per namespace and per user, not per cluster
    let others = [
        &p.cluster,
        &p.service_account,
        &p.pod,
        &p.ip,
        &p.from_pod,
        &p.verb,
        &p.resource,
        &p.name,
        &p.audit_id,
        &p.rule,
        &p.where_,
    ];
    others.iter().all(|f| f.is_none()) && !(p.user.is_some() && p.namespace.is_some())
}

pub async fn search(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(p): Query<SearchParams>) -> Response {
    let p = clean(p);
    let back = format!("/search?{}", pairs(&query_pairs(&p)));
    let sess = match session(&s, &headers, &back) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v = viewer(&sess);
    let mut b = format!("<h1>Search</h1>{}", form(&p));
    let bad = |b: &mut String, e: &str| b.push_str(&format!(r#"<p class="error" id="search-error">{}</p>"#, esc(e)));
    let filter = match p.where_.as_deref().map(|w| (s.compile_where)(w)).transpose() {
        Ok(f) => f,
        Err(e) => {
            bad(&mut b, &format!("condition: {e}"));
            return page(StatusCode::BAD_REQUEST, "Search", Some(&v), &b);
        }
    };
    let mut p2 = SearchParams { limit: Some(BINNED), ..p.clone() };
    if p2.since.is_none() {
        p2.since = Some("24h".into());
    }
    let mut query = match crate::search::event_query(&p2) {
        Ok(q) => q,
        Err(e) => {
            bad(&mut b, &e);
            return page(StatusCode::BAD_REQUEST, "Search", Some(&v), &b);
        }
    };
    let now = crate::writer::now_ns();
    let since_ns = query.since_ns.unwrap_or(now - 86_400_000_000_000);
    let until_ns = query.until_ns.unwrap_or(now);
    if until_ns <= since_ns {
        bad(&mut b, "the window is empty: `until` is not after `since`");
        return page(StatusCode::BAD_REQUEST, "Search", Some(&v), &b);
    }
    let bucket = chart::bucket_ns(since_ns, until_ns, BARS);
    let exact = countable(&p);
    let counts = CountQuery {
        since_ns,
        until_ns,
        bucket_ns: bucket,
        namespace: p.namespace.clone(),
        user: p.user.clone(),
        by: CountBy::Total,
    };
    if !exact {
        query.limit = BINNED;
    } else {
        query.limit = SHOWN;
    }
    let t0 = std::time::Instant::now();
    let got = crate::http::with_store(&s, move |st: &dyn Store| {
        let page = crate::search::events(st, query, filter.as_ref()).map_err(|e| e.to_string())?;
        let counts = if exact { Some(st.event_counts(&counts).map_err(|e| e.to_string())?) } else { None };
        Ok((page, counts))
    })
    .await;
    let (found, counts) = match got {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut hist = Series::new();
    let note = match &counts {
        Some(c) => {
            for x in c {
                *hist.entry(x.start_ns).or_default() += x.n;
            }
            "every match in the window".to_owned()
        }
        None => {
            for e in &found.items {
                if let Some(t) = e.time_ns {
                    let start = since_ns + (t - since_ns).div_euclid(bucket) * bucket;
                    *hist.entry(start).or_default() += 1;
                }
            }
            if found.next_before.is_some() {
                format!("the newest {} matches (older ones are not counted)", found.items.len())
            } else {
                "every match in the window".to_owned()
            }
        }
    };
    b.push_str(&chart::stacked(
        "histogram",
        &format!("Matches: {note}"),
        &[(String::new(), hist)],
        since_ns,
        until_ns,
        bucket,
        None,
    ));
    let shown: Vec<_> = found.items.iter().take(SHOWN).cloned().collect();
    b.push_str(&format!(
        r#"<p class="muted" id="search-summary">{} shown, newest first · {} events read · {ms:.0} ms</p>"#,
        shown.len(),
        found.scanned
    ));
    b.push_str(&super::entities::events_table("results", &shown));
    if let Some(last) = shown.last().filter(|_| found.items.len() > SHOWN || found.next_before.is_some()) {
        let mut more = query_pairs(&p);
        more.push(("before".into(), last.id.to_string()));
        b.push_str(&format!(r#"<p><a href="/search?{}">Older</a></p>"#, esc(&pairs(&more))));
    }
    page(StatusCode::OK, "Search", Some(&v), &b)
}

/// `k=v&…`, percent-encoded.
fn pairs(p: &[(String, String)]) -> String {
    p.iter().map(|(k, v)| format!("{k}={}", q(v))).collect::<Vec<_>>().join("&")
}

/// The search's parameters as query pairs (for links).
fn query_pairs(p: &SearchParams) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in [
        ("since", &p.since),
        ("until", &p.until),
        ("cluster", &p.cluster),
        ("user", &p.user),
        ("namespace", &p.namespace),
        ("verb", &p.verb),
        ("resource", &p.resource),
        ("name", &p.name),
        ("pod", &p.pod),
        ("from_pod", &p.from_pod),
        ("ip", &p.ip),
        ("rule", &p.rule),
        ("where", &p.where_),
    ] {
        if let Some(v) = v {
            out.push((k.to_owned(), v.clone()));
        }
    }
    out
}

#[derive(Debug, Default, Deserialize)]
pub struct ChartsQuery {
    since: Option<String>,
}

/// Event rates by namespace and identity, findings by priority.
pub async fn charts(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(cq): Query<ChartsQuery>) -> Response {
    let since = cq.since.filter(|x| !x.trim().is_empty()).unwrap_or_else(|| "24h".into());
    let sess = match session(&s, &headers, &format!("/charts?since={}", q(&since))) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v = viewer(&sess);
    let now = crate::writer::now_ns();
    let since_ns = match crate::search::time_bound(&since, now) {
        Ok(t) if t < now => t,
        Ok(_) => {
            return page(StatusCode::BAD_REQUEST, "Charts", Some(&v), "<p class=\"error\">since: in the future</p>")
        }
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Charts",
                Some(&v),
                &format!(r#"<p class="error">since: {}</p>"#, esc(&e)),
            )
        }
    };
    let bucket = chart::bucket_ns(since_ns, now, 288);
    let got = crate::http::with_store(&s, move |st: &dyn Store| {
        let e = |e: kustody_store::StoreError| e.to_string();
        let q = |by| CountQuery { since_ns, until_ns: now, bucket_ns: bucket, by, ..Default::default() };
        Ok((
            st.event_counts(&q(CountBy::Namespace)).map_err(e)?,
            st.event_counts(&q(CountBy::User)).map_err(e)?,
            st.finding_counts(since_ns, now, bucket).map_err(e)?,
        ))
    })
    .await;
    let (by_ns, by_user, findings) = match got {
        Ok(x) => x,
        Err(r) => return r,
    };
    let group = |rows: Vec<kustody_store::Count>, blank: &str| -> Vec<(String, Series)> {
        let mut m: std::collections::BTreeMap<String, Series> = Default::default();
        for c in rows {
            let k = if c.key.is_empty() { blank.to_owned() } else { c.key };
            *m.entry(k).or_default().entry(c.start_ns).or_default() += c.n;
        }
        m.into_iter().collect()
    };
    let mut b = String::from(r#"<h1>Charts</h1><form class="filters" method="get" action="/charts">"#);
    for w in ["1h", "6h", "24h", "7d", "30d"] {
        let sel = if w == since { " selected" } else { "" };
        b.push_str(&format!(r#"<a class="button{sel}" href="/charts?since={w}">{w}</a>"#));
    }
    b.push_str("</form>");
    let fnd = group(findings, "(none)");
    b.push_str(&chart::stacked(
        "findings-chart",
        "Findings first seen, by priority",
        &fnd,
        since_ns,
        now,
        bucket,
        Some(chart::priority_colour),
    ));
    b.push_str(&chart::stacked(
        "namespaces-chart",
        "Events by namespace (top 8)",
        &chart::top(group(by_ns, "(cluster)"), 8),
        since_ns,
        now,
        bucket,
        None,
    ));
    b.push_str(&chart::stacked(
        "identities-chart",
        "Events by identity (top 8)",
        &chart::top(group(by_user, "(anonymous)"), 8),
        since_ns,
        now,
        bucket,
        None,
    ));
    page(StatusCode::OK, "Charts", Some(&v), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_fields_are_no_filter_and_only_namespace_or_user_is_counted_exactly() {
        let p = clean(SearchParams { user: Some(" ".into()), namespace: Some(" shop ".into()), ..Default::default() });
        assert_eq!((p.user.as_deref(), p.namespace.as_deref()), (None, Some("shop")));
        assert!(countable(&p));
        assert!(!countable(&SearchParams { verb: Some("get".into()), ..p.clone() }));
        assert!(!countable(&SearchParams { user: Some("a".into()), ..p }));
    }
}
