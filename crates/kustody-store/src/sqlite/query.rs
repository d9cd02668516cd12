//! Search statements, built from a query's filters. Every value is a bound parameter: no
//! text of a query is ever written into the SQL.
//!
//! Event searches are newest first, and each is driven by one index whose entries for the
//! filter's key are in id order, read backwards until `limit` rows matched:
//! - an auditID: `events_audit`, bucket by bucket (see the schema's notes on buckets);
//! - a source IP: `event_ips_ip`, bucket by bucket, joined to the events by id;
//! - a rule: `matches_rule`, joined likewise;
//! - a pod, source pod, service account (by its user name), user or object name, in that order:
//!   its bucketed index, bucket by bucket;
//! - else the first of namespace, resource, verb: its plain index;
//! - else a time window with an end (`until_ns`): `events_time` (SQLite then sorts the window's
//!   ids: a wide window without other filters costs a read of the window);
//! - else the primary key, backwards (`since_ns` alone keeps the newest events, found first).
//!
//! The other filters are tested on the rows the driver yields (a unary `+` keeps SQLite from
//! choosing another index by guesswork).

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
pub(crate) const EVENT_COLUMNS: &str =
    "e.id, e.time_ns, e.audit_id, e.stage, e.origins, e.text_len, e.body, e.src_pod, e.cluster";

/// Events are grouped in buckets of `1 << BUCKET_SHIFT` consecutive ids in the indexes of
/// keys with many values (see the schema).
pub const BUCKET_SHIFT: u32 = 12;

/// How an event search runs.
#[derive(Debug)]
pub(crate) enum EventSearch {
    /// One statement.
    Direct(Sql),
    /// One statement per bucket, newest bucket first, until the limit is reached: the first
    /// parameter is the bucket, the last the rows still wanted.
    Buckets(Sql),
}

impl EventSearch {
    #[cfg(test)]
    pub(crate) fn sql(&self) -> &Sql {
        match self {
            EventSearch::Direct(s) | EventSearch::Buckets(s) => s,
        }
    }
}

/// What drives an event search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// A bucketed index of events on this column.
    Bucketed(&'static str),
    Ip,
    Rule,
    /// The events table with SQLite's choice of plain index (or the primary key).
    Events,
}

pub(crate) fn events(q: &EventQuery) -> EventSearch {
    // A service account `NS/NAME` is its user name `system:serviceaccount:NS:NAME` (indexed),
    // and the column itself is checked too.
    let sa_user = q.service_account.as_ref().map(|sa| match sa.split_once('/') {
        Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
        // Not `namespace/name`: no stored event has it, nor an empty user name.
        None => String::new(),
    });
    // Equality filters on events' own columns, the bucketed ones (most selective) first.
    let eqs: Vec<(&'static str, &String, bool)> = [
        ("e.audit_id", &q.audit_id, true),
        ("e.pod", &q.pod, true),
        ("e.src_pod", &q.source_pod, true),
        ("e.username", &sa_user, true),
        ("e.username", &q.user, true),
        ("e.name", &q.name, true),
        ("e.namespace", &q.namespace, false),
        ("e.resource", &q.resource, false),
        ("e.verb", &q.verb, false),
        ("e.service_account", &q.service_account, false),
        ("e.cluster", &q.cluster, false),
    ]
    .into_iter()
    .filter_map(|(c, v, b)| v.as_ref().map(|v| (c, v, b)))
    .collect();
    let first = eqs.first().copied();
    let driver = match first {
        Some(("e.audit_id", _, _)) => Driver::Bucketed("e.audit_id"),
        _ if q.ip.is_some() => Driver::Ip,
        _ if q.rule.is_some() => Driver::Rule,
        Some((col, _, true)) => Driver::Bucketed(col),
        _ => Driver::Events,
    };
    let mut s = Sql::default();
    let order = match driver {
        Driver::Ip => {
            s.text = format!(
                "SELECT {EVENT_COLUMNS} FROM event_ips i CROSS JOIN events e ON e.id = (i.id >> 4) \
                 WHERE (i.id >> 16) = ? AND i.ip = ?"
            );
            s.args.push(Value::Integer(0));
            s.args.push(Value::from(q.ip.clone().unwrap_or_default()));
            if let Some(b) = q.before_id {
                s.and("+i.id < ?", b.saturating_mul(16));
            }
            "i.id DESC"
        }
        Driver::Rule => {
            s.text = format!(
                "SELECT {EVENT_COLUMNS} FROM matches m CROSS JOIN events e ON e.id = m.event_id WHERE m.rule = ?"
            );
            s.args.push(Value::from(q.rule.clone().unwrap_or_default()));
            if let Some(b) = q.before_id {
                s.and("m.event_id < ?", b);
            }
            "m.event_id DESC"
        }
        Driver::Bucketed(_) | Driver::Events => {
            s.text = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE ");
            if let Driver::Bucketed(col) = driver {
                s.text.push_str("(e.id >> 12) = ?");
                s.args.push(Value::Integer(0));
                let v = first.map(|(_, v, _)| v.clone()).unwrap_or_default();
                s.and(&format!("{col} = ?"), v);
                if let Some(b) = q.before_id {
                    s.and("+e.id < ?", b);
                }
            } else {
                s.text.push('1');
                if let Some(b) = q.before_id {
                    s.and("e.id < ?", b);
                }
            }
            "e.id DESC"
        }
    };
    if driver != Driver::Ip {
        if let Some(ip) = &q.ip {
            s.and(
                "EXISTS (SELECT 1 FROM event_ips x WHERE x.id BETWEEN (e.id << 4) AND (e.id << 4) + 15 AND x.ip = ?)",
                ip.clone(),
            );
        }
    }
    if driver != Driver::Rule {
        if let Some(rule) = &q.rule {
            s.and("EXISTS (SELECT 1 FROM matches m WHERE m.event_id = e.id AND m.rule = ?)", rule.clone());
        }
    }
    for (i, (col, v, _)) in eqs.iter().enumerate() {
        match driver {
            // Already the driver's key.
            Driver::Bucketed(_) if i == 0 => continue,
            // The events table drives: only the first equality may use its (plain) index.
            Driver::Events if i == 0 => s.and(&format!("{col} = ?"), (*v).clone()),
            _ => s.and(&format!("+{col} = ?"), (*v).clone()),
        }
    }
    for c in &q.one_of {
        let col = match c.column {
            crate::KeyColumn::Verb => "e.verb",
            crate::KeyColumn::Resource => "e.resource",
            crate::KeyColumn::Subresource => "e.subresource",
            crate::KeyColumn::Stage => "e.stage",
        };
        if c.values.is_empty() {
            s.text.push_str(" AND 0");
            continue;
        }
        let marks = vec!["?"; c.values.len()].join(", ");
        // plain IN may use the column's index; a case-insensitive set cannot
        let expr = if c.ci { format!("lower({col})") } else { format!("+{col}") };
        s.text.push_str(&format!(" AND {expr} IN ({marks})"));
        s.args.extend(c.values.iter().map(|v| Value::from(v.clone())));
    }
    // The time index only when nothing better applies and the window has an end.
    let time_index = driver == Driver::Events && eqs.is_empty() && q.until_ns.is_some();
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
    match driver {
        Driver::Bucketed(_) | Driver::Ip => EventSearch::Buckets(s),
        Driver::Rule | Driver::Events => EventSearch::Direct(s),
    }
}

/// The columns [`super::read_finding`] reads.
pub(crate) const FINDING_COLUMNS: &str = "f.id, f.rule, f.priority, f.rules, f.tags, f.events, f.matches, f.first_ns, \
     f.last_ns, f.username, f.namespace, f.resource, f.name, f.source_ip, f.output, f.audit_ids, f.lead_event, f.open, \
     f.detail, f.cluster";

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
    if let Some(c) = &q.cluster {
        s.and("f.cluster = ?", c.clone());
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
    if q.open_only {
        s.text.push_str(" AND f.open = 1 ORDER BY f.id DESC LIMIT ?");
    } else {
        s.text.push_str(" ORDER BY f.last_ns DESC, f.id DESC LIMIT ?");
    }
    s.args.push(Value::from(limit(q.limit)));
    s
}

/// The columns [`super::read_alert`] reads.
pub(crate) const ALERT_COLUMNS: &str =
    "a.id, a.time_ns, a.rule, a.priority, a.source, a.hostname, a.namespace, a.pod, \
     a.container_id, a.output, a.raw_len, a.raw, a.cluster";

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
    if let Some(c) = &q.cluster {
        s.and("+a.cluster = ?", c.clone());
    }
    if let Some(b) = q.before_id {
        s.and("a.id < ?", b);
    }
    s.text.push_str(" ORDER BY a.id DESC LIMIT ?");
    s.args.push(Value::from(limit(q.limit)));
    s
}
