//! Search statements for PostgreSQL, built from a query's filters. Every value is a bound
//! parameter: no text of a query is ever written into the SQL.
//!
//! Event searches are newest first (`ORDER BY id DESC LIMIT n`). A source IP drives the search
//! through `event_ips_ip` and a rule through `matches_rule` (both ordered by event id), joined
//! to the events by id; otherwise the planner picks among the (column, id) indexes, each of
//! which yields a key's newest events first. A time window also bounds `time_key`, the
//! partition key, so only the days it covers are read.

use postgres::types::ToSql;

use crate::sqlite::query::limit;
use crate::{AlertQuery, EventQuery, FindingQuery, KeyColumn};

/// `s` as PostgreSQL can hold it in `text`: NUL, which `text` cannot hold, becomes U+FFFD (the
/// event's own text, kept as bytes, keeps it). Applied to every text stored and every text
/// searched for, so a search still finds what was stored.
pub(crate) fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// [`text`] of an optional value.
pub(crate) fn opt(s: Option<&str>) -> Option<String> {
    s.map(text)
}

/// The most bytes of a value kept in an indexed column: a B-tree entry must stay under about
/// 2.7 KB (PostgreSQL refuses the row otherwise), and the de-duplication key holds three such
/// values. Longer values are cut (at a character boundary) both when stored and when searched
/// for; the event's own text keeps them whole.
pub(crate) const KEY_BYTES: usize = 512;

/// `s` as stored in an indexed column: [`text`], at most [`KEY_BYTES`].
pub(crate) fn key(s: &str) -> String {
    let mut t = text(s);
    if t.len() > KEY_BYTES {
        let mut end = KEY_BYTES;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}

/// [`key`] of an optional value.
pub(crate) fn opt_key(s: Option<&str>) -> Option<String> {
    s.map(key)
}

/// A boxed parameter.
pub(crate) type Arg = Box<dyn ToSql + Sync + Send>;

/// A statement and its parameters, in order (`$1`, `$2`, …).
#[derive(Default)]
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub(crate) fn new(text: impl Into<String>) -> Sql {
        Sql { text: text.into(), args: Vec::new() }
    }

    /// Adds a parameter; returns its placeholder.
    pub(crate) fn arg(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.args.push(Box::new(v));
        format!("${}", self.args.len())
    }

    /// ` AND ` `clause`, with `{}` replaced by the placeholder of `v`.
    pub(crate) fn and(&mut self, clause: &str, v: impl ToSql + Sync + Send + 'static) {
        let p = self.arg(v);
        self.text.push_str(" AND ");
        self.text.push_str(&clause.replace("{}", &p));
    }

    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// The columns [`super::read_event`] reads, of events aliased `e`.
pub(crate) const EVENT_COLUMNS: &str =
    "e.id, e.time_ns, e.audit_id, e.stage, e.origins, e.text_len, e.body, e.src_pod, e.cluster";

pub(crate) fn events(q: &EventQuery) -> Sql {
    let mut s = if let Some(ip) = &q.ip {
        let mut s =
            Sql::new(format!("SELECT {EVENT_COLUMNS} FROM event_ips i JOIN events e ON e.id = i.event_id WHERE "));
        let p = s.arg(key(ip));
        s.text.push_str(&format!("i.ip = {p}"));
        if let Some(b) = q.before_id {
            s.and("i.event_id < {}", b);
        }
        s
    } else if let Some(rule) = &q.rule {
        let mut s =
            Sql::new(format!("SELECT {EVENT_COLUMNS} FROM matches m JOIN events e ON e.id = m.event_id WHERE "));
        let p = s.arg(key(rule));
        s.text.push_str(&format!("m.rule = {p}"));
        if let Some(b) = q.before_id {
            s.and("m.event_id < {}", b);
        }
        s
    } else {
        let mut s = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events e WHERE TRUE"));
        if let Some(b) = q.before_id {
            s.and("e.id < {}", b);
        }
        s
    };
    if q.ip.is_some() {
        if let Some(rule) = &q.rule {
            s.and("EXISTS (SELECT 1 FROM matches x WHERE x.event_id = e.id AND x.rule = {})", key(rule));
        }
    }
    // A service account `NS/NAME` is its user name `system:serviceaccount:NS:NAME` (indexed),
    // and the column itself is checked too.
    if let Some(sa) = &q.service_account {
        let user = match sa.split_once('/') {
            Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
            None => String::new(),
        };
        s.and("e.username = {}", key(&user));
        s.and("e.service_account = {}", text(sa));
    }
    for (col, v) in [
        ("e.audit_id", &q.audit_id),
        ("e.pod", &q.pod),
        ("e.src_pod", &q.source_pod),
        ("e.username", &q.user),
        ("e.name", &q.name),
        ("e.namespace", &q.namespace),
        ("e.resource", &q.resource),
        ("e.verb", &q.verb),
        ("e.cluster", &q.cluster),
    ] {
        if let Some(v) = v {
            s.and(&format!("{col} = {{}}"), key(v));
        }
    }
    for c in &q.one_of {
        let col = match c.column {
            KeyColumn::Verb => "e.verb",
            KeyColumn::Resource => "e.resource",
            KeyColumn::Subresource => "e.subresource",
            KeyColumn::Stage => "e.stage",
        };
        // ASCII folding, as the rule engine's and SQLite's `lower` (not the locale's)
        let expr = if c.ci { format!("lower({col} COLLATE \"C\")") } else { col.to_owned() };
        s.and(&format!("{expr} = ANY({{}})"), c.values.iter().map(|v| key(v)).collect::<Vec<String>>());
    }
    if let Some(t) = q.since_ns {
        // `events_other` (negative keys: no time, or outside the partitioned days) is always
        // read; the time itself decides
        s.and("(e.time_key >= {} OR e.time_key < 0)", t);
        s.and("e.time_ns >= {}", t);
    }
    if let Some(t) = q.until_ns {
        s.and("e.time_key < {}", t);
        s.and("e.time_ns < {}", t);
    }
    let order = if q.ip.is_some() {
        "i.event_id"
    } else if q.rule.is_some() {
        "m.event_id"
    } else {
        "e.id"
    };
    let l = s.arg(limit(q.limit));
    s.text.push_str(&format!(" ORDER BY {order} DESC LIMIT {l}"));
    s
}

/// The columns [`super::read_finding`] reads.
pub(crate) const FINDING_COLUMNS: &str = "f.id, f.rule, f.priority, f.rules, f.tags, f.events, f.matches, f.first_ns, \
     f.last_ns, f.username, f.namespace, f.resource, f.name, f.source_ip, f.output, f.audit_ids, f.lead_event, f.open, \
     f.detail, f.cluster";

/// Findings seen in the window: last seen at or after `since_ns`, first seen before
/// `until_ns`. Newest (last seen) first.
pub(crate) fn findings(q: &FindingQuery) -> Sql {
    let mut s = Sql::new(format!("SELECT {FINDING_COLUMNS} FROM findings f WHERE TRUE"));
    if let Some(t) = q.since_ns {
        s.and("f.last_ns >= {}", t);
    }
    if let Some(t) = q.until_ns {
        s.and("coalesce(f.first_ns, f.last_ns) < {}", t);
    }
    if let Some(u) = &q.user {
        s.and("f.username = {}", key(u));
    }
    if let Some(n) = &q.namespace {
        s.and("f.namespace = {}", key(n));
    }
    if let Some(c) = &q.cluster {
        s.and("f.cluster = {}", key(c));
    }
    if let Some(r) = &q.rule {
        s.and("f.id IN (SELECT finding_id FROM finding_rules WHERE rule = {})", key(r));
    }
    if let Some(p) = q.min_priority {
        s.and("f.priority_rank <= {}", crate::sqlite::rank(p));
    }
    if let Some(b) = q.before_id {
        s.and("f.id < {}", b);
    }
    let l = s.arg(limit(q.limit));
    if q.open_only {
        // the partial index `findings_open` (schema V5)
        s.text.push_str(&format!(" AND f.open ORDER BY f.id DESC LIMIT {l}"));
    } else {
        s.text.push_str(&format!(" ORDER BY f.last_ns DESC NULLS LAST, f.id DESC LIMIT {l}"));
    }
    s
}

/// The columns [`super::read_alert`] reads.
pub(crate) const ALERT_COLUMNS: &str =
    "a.id, a.time_ns, a.rule, a.priority, a.source, a.hostname, a.namespace, a.pod, a.container_id, a.output, \
     a.raw_len, a.raw, a.cluster";

pub(crate) fn alerts(q: &AlertQuery) -> Sql {
    let mut s = Sql::new(format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE TRUE"));
    if let Some(t) = q.since_ns {
        s.and("a.time_ns >= {}", t);
    }
    if let Some(t) = q.until_ns {
        s.and("a.time_ns < {}", t);
    }
    if let Some(n) = &q.namespace {
        s.and("a.namespace = {}", key(n));
    }
    if let Some(p) = &q.pod {
        s.and("a.pod = {}", key(p));
    }
    if let Some(r) = &q.rule {
        s.and("a.rule = {}", key(r));
    }
    if let Some(c) = &q.cluster {
        s.and("a.cluster = {}", key(c));
    }
    if let Some(b) = q.before_id {
        s.and("a.id < {}", b);
    }
    let l = s.arg(limit(q.limit));
    s.text.push_str(&format!(" ORDER BY a.id DESC LIMIT {l}"));
    s
}
