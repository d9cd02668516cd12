//! Search statements, built from a query's filters. Every value is a bound parameter: no
//! text of a query is ever written into the SQL.
//!
//! Event searches are newest first, and each is driven by one index whose entries for the
//! filter's key are in id order, read backwards until `limit` rows matched:
//! - an auditID: `events_dedup`;
//! - a source IP: `event_ips_ip`, joined to the events by rowid;
//! - a rule: `matches_rule`, joined likewise;
//! - else the most selective equality filter (pod, service account (by its user name), user,
//!   name, namespace, resource, verb, in that order): the others are tested on the rows it yields (a unary `+`
//!   keeps SQLite from choosing an index by guesswork when several apply);
//! - else a time window with an end (`until_ns`): `events_time` (SQLite then sorts the window's
//!   ids: a wide window without other filters costs a read of the window);
//! - else the primary key, backwards (`since_ns` alone keeps the newest events, found first).

use rusqlite::types::Value;

use crate::{AlertQuery, EventQuery, FindingQuery};

/// Rows returned when the query's limit is 0.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one search returns.
pub const MAX_LIMIT: usize = 10_000;

/// The effective limit of a query's `limit`.
pub fn limit(n: usize) -> i64 {
    let n = if n == 0 { DEFAULT_LIMIT } else { n.min(MAX_LIMIT) };
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A statement and its parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Value>,
}

impl Sql {
    fn and(&mut self, clause: &str, v: impl Into<Value>) {
        self.text.push_str(" AND ");
        self.text.push_str(clause);
        self.args.push(v.into());
    }
}

/// The columns [`super::read_event`] reads, of events aliased `e`.
pub(crate) const EVENT_COLUMNS: &str = "e.id, e.time_ns, e.audit_id, e.stage, e.origins, e.text_len, e.body";

pub(crate) fn events(q: &EventQuery) -> Sql {
    let mut s = Sql::default();
    // The equality filters on events' own columns, most selective first. A service account
    // `NS/NAME` is its user name `system:serviceaccount:NS:NAME` (indexed), and the column
    // itself is checked too.
    let sa_user = q.service_account.as_ref().map(|sa| match sa.split_once('/') {
        Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
        // Not `namespace/name`: no stored event has it. An empty user name matches none
        // either, through the index.
        None => String::new(),
    });
    let eqs: Vec<(&str, &String)> = [
        ("e.audit_id", &q.audit_id),
        ("e.pod", &q.pod),
        ("e.username", &sa_user),
        ("e.username", &q.user),
        ("e.name", &q.name),
        ("e.namespace", &q.namespace),
        ("e.resource", &q.resource),
        ("e.verb", &q.verb),
        ("e.service_account", &q.service_account),
    ]
    .into_iter()
    .filter_map(|(c, v)| v.as_ref().map(|v| (c, v)))
    .collect();
    let by_audit_id = q.audit_id.is_some();
    let order;
    if let (Some(ip), false) = (&q.ip, by_audit_id) {
        s.text = format!(
            "SELECT {EVENT_COLUMNS} FROM event_ips i CROSS JOIN events e ON e.id = (i.rowid >> 4) WHERE i.ip = ?"
        );
        s.args.push(Value::from(ip.clone()));
        if let Some(b) = q.before_id {
            s.and("i.rowid < ?", b.saturating_mul(16));
        }
        if let Some(rule) = &q.rule {
            s.and("EXISTS (SELECT 1 FROM matches m WHERE m.event_id = e.id AND m.rule = ?)", rule.clone());
        }
        order = "i.rowid DESC";
    } else if let (Some(rule), false) = (&q.rule, by_audit_id) {
        s.text =
            format!("SELECT {EVENT_COLUMNS} FROM matches m CROSS JOIN events e ON e.id = m.event_id WHERE m.rule = ?");
        s.args.push(Value::from(rule.clone()));
        if let Some(b) = q.before_id {
            s.and("m.event_id < ?", b);
        }
        order = "m.event_id DESC";
    } else {
        s.text = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE 1");
        if let Some(b) = q.before_id {
            s.and("e.id < ?", b);
        }
        if let Some(ip) = &q.ip {
            s.and(
                "EXISTS (SELECT 1 FROM event_ips x WHERE x.rowid BETWEEN (e.id << 4) AND (e.id << 4) + 15 AND x.ip = ?)",
                ip.clone(),
            );
        }
        if let Some(rule) = &q.rule {
            s.and("EXISTS (SELECT 1 FROM matches m WHERE m.event_id = e.id AND m.rule = ?)", rule.clone());
        }
        order = "e.id DESC";
    }
    let events_driven = order == "e.id DESC";
    for (i, (col, v)) in eqs.iter().enumerate() {
        // Only the first equality may use its index when the events table drives the search.
        let plus = if events_driven && i == 0 { "" } else { "+" };
        s.and(&format!("{plus}{col} = ?"), (*v).clone());
    }
    // The time index only when nothing better applies and the window has an end.
    let time_index = events_driven && eqs.is_empty() && q.until_ns.is_some();
    let plus = if time_index { "" } else { "+" };
    if let Some(t) = q.since_ns {
        s.and(&format!("{plus}e.time_ns >= ?"), t);
    }
    if let Some(t) = q.until_ns {
        s.and(&format!("{plus}e.time_ns < ?"), t);
    }
    s.text.push_str(" ORDER BY ");
    s.text.push_str(order);
    s.text.push_str(" LIMIT ?");
    s.args.push(Value::from(limit(q.limit)));
    s
}

/// The columns [`super::read_finding`] reads.
pub(crate) const FINDING_COLUMNS: &str = "f.id, f.rule, f.priority, f.rules, f.tags, f.events, f.matches, f.first_ns, \
     f.last_ns, f.username, f.namespace, f.resource, f.name, f.source_ip, f.output, f.audit_ids, f.lead_event, f.open, \
     f.detail";

/// Findings seen in the window: last seen at or after `since_ns`, first seen before
/// `until_ns`. Newest (last seen) first.
pub(crate) fn findings(q: &FindingQuery) -> Sql {
    let mut s = Sql { text: format!("SELECT {FINDING_COLUMNS} FROM findings f WHERE 1"), args: Vec::new() };
    if let Some(t) = q.since_ns {
        s.and("f.last_ns >= ?", t);
    }
    if let Some(t) = q.until_ns {
        s.and("coalesce(f.first_ns, f.last_ns) < ?", t);
    }
    if let Some(u) = &q.user {
        s.and("f.username = ?", u.clone());
    }
    if let Some(n) = &q.namespace {
        s.and("f.namespace = ?", n.clone());
    }
    if let Some(r) = &q.rule {
        s.and("f.id IN (SELECT finding_id FROM finding_rules WHERE rule = ?)", r.clone());
    }
    if let Some(p) = q.min_priority {
        s.and("f.priority_rank <= ?", super::rank(p));
    }
    if let Some(b) = q.before_id {
        s.and("f.id < ?", b);
    }
    s.text.push_str(" ORDER BY f.last_ns DESC, f.id DESC LIMIT ?");
    s.args.push(Value::from(limit(q.limit)));
    s
}

/// The columns [`super::read_alert`] reads.
pub(crate) const ALERT_COLUMNS: &str =
    "a.id, a.time_ns, a.rule, a.priority, a.source, a.hostname, a.namespace, a.pod, \
     a.container_id, a.output, a.raw_len, a.raw";

pub(crate) fn alerts(q: &AlertQuery) -> Sql {
    let mut s = Sql { text: format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE 1"), args: Vec::new() };
    let has_eq = q.namespace.is_some() || q.pod.is_some() || q.rule.is_some();
    let plus = if has_eq || q.until_ns.is_none() { "+" } else { "" };
    if let Some(t) = q.since_ns {
        s.and(&format!("{plus}a.time_ns >= ?"), t);
    }
    if let Some(t) = q.until_ns {
        s.and(&format!("{plus}a.time_ns < ?"), t);
    }
    if let Some(n) = &q.namespace {
        s.and("a.namespace = ?", n.clone());
    }
    if let Some(p) = &q.pod {
        s.and("a.pod = ?", p.clone());
    }
    if let Some(r) = &q.rule {
        let plus = if q.pod.is_some() { "+" } else { "" };
        s.and(&format!("{plus}a.rule = ?"), r.clone());
    }
    if let Some(b) = q.before_id {
        s.and("a.id < ?", b);
    }
    s.text.push_str(" ORDER BY a.id DESC LIMIT ?");
    s.args.push(Value::from(limit(q.limit)));
    s
}
