//! Searching the store: shared by the HTTP API and `kustody search` (which reads a data
//! directory directly or asks a running server).

use kustody_store::{AlertQuery, EventQuery, FindingQuery, FindingRow, Store, StoreError, StoredAlert, StoredEvent};

use crate::http::SearchParams;
use crate::WhereFilter;

/// Events a `--where` filter may read past to fill one page.
const WHERE_SCAN: usize = 200_000;

/// A time bound: RFC 3339, or a duration ago (`30s`, `15m`, `2h`, `7d`).
pub fn time_bound(s: &str, now_ns: i64) -> Result<i64, String> {
    if let Some(t) = kustody_model::time::parse_rfc3339_nanos(s) {
        return Ok(t);
    }
    kustody_rules::correlate::parse_window(s)
        .map(|d| now_ns.saturating_sub(d))
        .ok_or_else(|| format!("`{s}` is neither an RFC 3339 time nor a duration like 30m, 2h, 7d"))
}

fn bounds(p: &SearchParams) -> Result<(Option<i64>, Option<i64>), String> {
    let now = crate::writer::now_ns();
    let since = p.since.as_deref().map(|s| time_bound(s, now)).transpose().map_err(|e| format!("since: {e}"))?;
    let until = p.until.as_deref().map(|s| time_bound(s, now)).transpose().map_err(|e| format!("until: {e}"))?;
    Ok((since, until))
}

pub fn event_query(p: &SearchParams) -> Result<EventQuery, String> {
    let (since_ns, until_ns) = bounds(p)?;
    Ok(EventQuery {
        since_ns,
        until_ns,
        user: p.user.clone(),
        service_account: p.service_account.clone(),
        pod: p.pod.clone(),
        ip: p.ip.clone(),
        source_pod: p.from_pod.clone(),
        namespace: p.namespace.clone(),
        verb: p.verb.clone(),
        resource: p.resource.clone(),
        name: p.name.clone(),
        audit_id: p.audit_id.clone(),
        rule: p.rule.clone(),
        before_id: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 10_000),
        one_of: Vec::new(),
        cluster: p.cluster.clone(),
    })
}

pub fn finding_query(p: &SearchParams) -> Result<FindingQuery, String> {
    let (since_ns, until_ns) = bounds(p)?;
    let min_priority = p
        .min_priority
        .as_deref()
        .map(|s| s.parse::<kustody_model::Priority>().map_err(|e| format!("min_priority: {e}")))
        .transpose()?;
    Ok(FindingQuery {
        since_ns,
        until_ns,
        user: p.user.clone(),
        namespace: p.namespace.clone(),
        rule: p.rule.clone(),
        min_priority,
        before_id: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 10_000),
        cluster: p.cluster.clone(),
        open_only: false,
    })
}

pub fn alert_query(p: &SearchParams) -> Result<AlertQuery, String> {
    let (since_ns, until_ns) = bounds(p)?;
    Ok(AlertQuery {
        since_ns,
        until_ns,
        namespace: p.namespace.clone(),
        pod: p.pod.clone(),
        rule: p.rule.clone(),
        before_id: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 10_000),
        cluster: p.cluster.clone(),
    })
}

/// One page of events, newest first.
pub struct EventPage {
    pub items: Vec<StoredEvent>,
    /// Pass as `before` for the next page (`None`: no more).
    pub next_before: Option<i64>,
    /// Events read to fill the page (more than `items` with a `where` filter).
    pub scanned: usize,
}

/// Runs an event search; with a `where` filter, reads on (newest first) until the page is full
/// or 200,000 events were read.
pub fn events(store: &dyn Store, mut q: EventQuery, filter: Option<&WhereFilter>) -> Result<EventPage, StoreError> {
    let limit = q.limit;
    let Some(filter) = filter else {
        let items = store.search_events(&q)?;
        let next_before = (items.len() == limit).then(|| items.last().map(|e| e.id)).flatten();
        return Ok(EventPage { scanned: items.len(), items, next_before });
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    q.limit = 2000;
    q.one_of.extend(filter.keys.iter().cloned());
    loop {
        let page = store.search_events(&q)?;
        let done = page.len() < q.limit;
        for e in page {
            scanned += 1;
            q.before_id = Some(e.id);
            if crate::http::passes(filter, &e.raw) {
                items.push(e);
                if items.len() == limit {
                    return Ok(EventPage { next_before: q.before_id, items, scanned });
                }
            }
        }
        if done {
            return Ok(EventPage { items, next_before: None, scanned });
        }
        if scanned >= WHERE_SCAN {
            return Ok(EventPage { items, next_before: q.before_id, scanned });
        }
    }
}

/// Origin bits as names.
pub fn origins(bits: i64) -> Vec<&'static str> {
    [(1, "webhook"), (2, "file"), (4, "replay"), (8, "cloud")]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
}

impl EventPage {
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id,
                    "time": e.time_ns.map(kustody_model::time::format_rfc3339_nanos),
                    "origins": origins(e.origins),
                    "source_pod": e.source_pod,
                    "cluster": e.cluster,
                    "event": serde_json::from_str::<serde_json::Value>(&e.raw).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        serde_json::json!({ "items": items, "next_before": self.next_before, "scanned": self.scanned })
    }
}

pub fn findings_json(rows: &[FindingRow]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = rows.iter().map(crate::detect::finding_json).collect();
    let next = rows.last().and_then(|f| f.id);
    serde_json::json!({ "items": items, "next_before": next })
}

pub fn alerts_json(rows: &[StoredAlert]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|a| {
            serde_json::json!({
                "id": a.id,
                "time": a.alert.time_ns.map(kustody_model::time::format_rfc3339_nanos),
                "rule": a.alert.rule,
                "priority": a.alert.priority,
                "namespace": a.alert.namespace,
                "pod": a.alert.pod,
                "container_id": a.alert.container_id,
                "hostname": a.alert.hostname,
                "cluster": a.alert.cluster,
                "output": a.alert.output,
                "alert": serde_json::from_str::<serde_json::Value>(&a.alert.raw).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    serde_json::json!({ "items": items, "next_before": rows.last().map(|a| a.id) })
}

fn time_of(v: &serde_json::Value) -> Option<i64> {
    v.as_str().and_then(kustody_model::time::parse_rfc3339_nanos)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn opt(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// An event page as the API returns it, read back (`kustody search --server`).
pub fn event_page_from_json(v: &serde_json::Value) -> EventPage {
    let items = v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| StoredEvent {
                    id: e["id"].as_i64().unwrap_or(0),
                    time_ns: time_of(&e["time"]),
                    audit_id: e.pointer("/event/auditID").and_then(|v| v.as_str()).map(str::to_owned),
                    stage: e.pointer("/event/stage").and_then(|v| v.as_str()).map(str::to_owned),
                    origins: strings(&e["origins"]).iter().fold(0, |b, o| {
                        b | match o.as_str() {
                            "webhook" => 1,
                            "file" => 2,
                            "replay" => 4,
                            _ => 0,
                        }
                    }),
                    raw: e["event"].to_string(),
                    source_pod: opt(&e["source_pod"]),
                    cluster: opt(&e["cluster"]),
                })
                .collect()
        })
        .unwrap_or_default();
    EventPage { items, next_before: v["next_before"].as_i64(), scanned: v["scanned"].as_u64().unwrap_or(0) as usize }
}

/// Findings as the API returns them, read back.
pub fn findings_from_json(v: &serde_json::Value) -> Vec<FindingRow> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| FindingRow {
                    id: f["id"].as_i64(),
                    rule: f["rule"].as_str().unwrap_or_default().to_owned(),
                    priority: f["priority"].as_str().unwrap_or_default().to_owned(),
                    rules: strings(&f["rules"]),
                    tags: strings(&f["tags"]),
                    events: f["events"].as_u64().unwrap_or(0),
                    matches: f["matches"].as_u64().unwrap_or(0),
                    first_ns: time_of(&f["first_seen"]),
                    last_ns: time_of(&f["last_seen"]),
                    user: opt(&f["user"]),
                    namespace: opt(&f["namespace"]),
                    resource: opt(&f["resource"]),
                    name: opt(&f["name"]),
                    source_ip: opt(&f["source_ip"]),
                    output: f["output"].as_str().unwrap_or_default().to_owned(),
                    audit_ids: strings(&f["audit_ids"]),
                    cluster: opt(&f["cluster"]),
                    lead_event: f["evidence_event"].as_i64(),
                    open: f["open"].as_bool().unwrap_or(false),
                    detail: f["detail"].to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runtime alerts as the API returns them, read back.
pub fn alerts_from_json(v: &serde_json::Value) -> Vec<StoredAlert> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| StoredAlert {
                    id: x["id"].as_i64().unwrap_or(0),
                    alert: kustody_store::AlertRow {
                        time_ns: time_of(&x["time"]),
                        rule: x["rule"].as_str().unwrap_or_default().to_owned(),
                        priority: x["priority"].as_str().unwrap_or_default().to_owned(),
                        source: x.pointer("/alert/source").and_then(|v| v.as_str()).map(str::to_owned),
                        hostname: opt(&x["hostname"]),
                        namespace: opt(&x["namespace"]),
                        pod: opt(&x["pod"]),
                        container_id: opt(&x["container_id"]),
                        output: x["output"].as_str().unwrap_or_default().to_owned(),
                        raw: x["alert"].to_string(),
                        cluster: opt(&x["cluster"]),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}
