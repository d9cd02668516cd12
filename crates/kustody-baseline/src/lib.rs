//! A baseline: what each identity normally does, learnt from audit events.
//!
//! A **behaviour** is (identity, verb, resource/subresource, namespace, object name): a
//! monitoring operator reading the same Secret every minute is one behaviour seen on many days.
//! The baseline records, per behaviour, when it was first and last seen, how often, and on which
//! days (UTC). A rule match on an event whose behaviour the baseline has seen on at least
//! `min_days` distinct days is *known*: `hunt --baseline` demotes it — leaves it out of the
//! alerts and counts it per rule in the summary, like an allow-list entry, so nothing is dropped
//! silently and `--no-baseline` shows everything again.
//!
//! Memory is bounded ([`Baseline::max_keys`]): beyond it the behaviours seen least recently are
//! forgotten first, and counted. Behaviours not seen for `forget_after_days` are forgotten when
//! the baseline is saved.
//!
//! **Architecture Invariant:** no I/O here; files are read and written by the binary.

pub mod live;

use std::collections::HashMap;

use kustody_model::Event;
use serde::{Deserialize, Serialize};

/// The file format's version.
pub const VERSION: u32 = 1;
const DAY_NS: i64 = 86_400 * 1_000_000_000;
/// Distinct days kept per behaviour (the most recent).
pub const MAX_DAYS: usize = 32;

/// One behaviour's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub first_ns: i64,
    pub last_ns: i64,
    pub count: u64,
    /// Distinct UTC day numbers (days since the epoch), ascending, at most [`MAX_DAYS`].
    pub days: Vec<i64>,
}

/// What was learnt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u32,
    /// A behaviour seen on at least this many distinct days is known.
    pub min_days: u32,
    /// Behaviours not seen for this many days are forgotten.
    pub forget_after_days: u32,
    pub max_keys: usize,
    /// Events learnt from, and their time span.
    pub events: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// Behaviours forgotten to stay under `max_keys`.
    pub evicted: u64,
    pub behaviours: HashMap<String, Seen>,
}

impl Default for Baseline {
    fn default() -> Baseline {
        Baseline {
            version: VERSION,
            min_days: 2,
            forget_after_days: 30,
            max_keys: 1_000_000,
            events: 0,
            first_ns: None,
            last_ns: None,
            evicted: 0,
            behaviours: HashMap::new(),
        }
    }
}

/// Why a baseline file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("not a kustody baseline: {0}")]
    Format(String),
    #[error("baseline version {0} is not supported (this kustody reads version {VERSION})")]
    Version(u32),
}

/// The behaviour key of an event: `user|verb|resource[/sub]|namespace|name`; `None` without a
/// user or a verb.
pub fn key(ev: &Event<'_>) -> Option<String> {
    let user = ev.user().and_then(|u| u.username.as_deref())?;
    let verb = ev.verb()?;
    let o = ev.object_ref();
    let res = o.and_then(|o| o.resource.as_deref()).unwrap_or("");
    let sub = o.and_then(|o| o.subresource.as_deref());
    let ns = o.and_then(|o| o.namespace.as_deref()).unwrap_or("");
    let name = o.and_then(|o| o.name.as_deref()).unwrap_or("");
    let res = match sub {
        Some(s) => format!("{res}/{s}"),
        None => res.to_owned(),
    };
    Some(format!("{user}|{verb}|{res}|{ns}|{name}"))
}

impl Baseline {
    pub fn new(min_days: u32) -> Baseline {
        Baseline { min_days: min_days.max(1), ..Baseline::default() }
    }

    /// Learns one event.
    pub fn learn(&mut self, ev: &Event<'_>) {
        let (Some(k), Some(t)) = (key(ev), ev.time_ns()) else { return };
        self.events += 1;
        self.first_ns = Some(self.first_ns.map_or(t, |f| f.min(t)));
        self.last_ns = Some(self.last_ns.map_or(t, |l| l.max(t)));
        let day = t.div_euclid(DAY_NS);
        let s =
            self.behaviours.entry(k).or_insert_with(|| Seen { first_ns: t, last_ns: t, count: 0, days: Vec::new() });
        s.count += 1;
        s.first_ns = s.first_ns.min(t);
        s.last_ns = s.last_ns.max(t);
        if let Err(at) = s.days.binary_search(&day) {
            s.days.insert(at, day);
            if s.days.len() > MAX_DAYS {
                s.days.remove(0);
            }
        }
        if self.behaviours.len() > self.max_keys {
            self.evict();
        }
    }

    /// Forgets the tenth of behaviours seen least recently (amortised: one sort per overflow).
    fn evict(&mut self) {
        let mut lasts: Vec<(i64, String)> = self.behaviours.iter().map(|(k, s)| (s.last_ns, k.clone())).collect();
        lasts.sort_unstable();
        let n = (self.behaviours.len() - self.max_keys).max(self.max_keys / 10).min(lasts.len());
        for (_, k) in lasts.into_iter().take(n) {
            self.behaviours.remove(&k);
            self.evicted += 1;
        }
    }

    /// Forgets behaviours not seen for `forget_after_days` before the newest event learnt.
    pub fn forget_stale(&mut self) -> usize {
        let Some(last) = self.last_ns else { return 0 };
        let limit = last.saturating_sub(i64::from(self.forget_after_days).saturating_mul(DAY_NS));
        let before = self.behaviours.len();
        self.behaviours.retain(|_, s| s.last_ns >= limit);
        before - self.behaviours.len()
    }

    /// Whether the event's behaviour is known (seen on at least `min_days` days).
    pub fn knows(&self, ev: &Event<'_>) -> bool {
        key(ev).and_then(|k| self.behaviours.get(&k)).is_some_and(|s| s.days.len() >= self.min_days as usize)
    }

    /// Distinct identities learnt.
    pub fn identities(&self) -> usize {
        let mut ids: Vec<&str> = self.behaviours.keys().filter_map(|k| k.split('|').next()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    pub fn to_json(&self) -> Result<String, BaselineError> {
        serde_json::to_string(self).map_err(|e| BaselineError::Format(e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Baseline, BaselineError> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let p: Probe = serde_json::from_str(text).map_err(|e| BaselineError::Format(e.to_string()))?;
        if p.version != VERSION {
            return Err(BaselineError::Version(p.version));
        }
        serde_json::from_str(text).map_err(|e| BaselineError::Format(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(user: &str, verb: &str, name: &str, day: u32, minute: u32) -> String {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/monitoring/secrets/{name}","verb":"{verb}","user":{{"username":"{user}"}},"objectRef":{{"resource":"secrets","namespace":"monitoring","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"stageTimestamp":"2026-11-{day:02}T10:{minute:02}:00.000000Z"}}"#
        )
    }

    #[test]
    fn a_behaviour_seen_on_enough_days_is_known() {
        let op = "system:serviceaccount:monitoring:prometheus-operator";
        let mut b = Baseline::new(2);
        for m in 0..30 {
            b.learn(&Event::parse(&ev(op, "get", "tls", 1, m)).unwrap());
        }
        let day3 = ev(op, "get", "tls", 3, 0);
        assert!(!b.knows(&Event::parse(&day3).unwrap()), "one day is not enough");
        b.learn(&Event::parse(&ev(op, "get", "tls", 2, 0)).unwrap());
        assert!(b.knows(&Event::parse(&day3).unwrap()));
        // another secret, another verb, another identity: not known
        assert!(!b.knows(&Event::parse(&ev(op, "get", "admin-token", 3, 0)).unwrap()));
        assert!(!b.knows(&Event::parse(&ev(op, "list", "tls", 3, 0)).unwrap()));
        assert!(!b.knows(&Event::parse(&ev("alice", "get", "tls", 3, 0)).unwrap()));
        let s = &b.behaviours[&format!("{op}|get|secrets|monitoring|tls")];
        assert_eq!((s.count, s.days.len()), (31, 2));
        assert_eq!(b.identities(), 1);
        // round trip, and a version this kustody does not read
        let back = Baseline::from_json(&b.to_json().unwrap()).unwrap();
        assert_eq!(back, b);
        let newer = b.to_json().unwrap().replace("\"version\":1", "\"version\":9");
        assert!(matches!(Baseline::from_json(&newer), Err(BaselineError::Version(9))));
        assert!(matches!(Baseline::from_json("[]"), Err(BaselineError::Format(_))));
    }

    #[test]
    fn memory_is_bounded_and_stale_behaviours_are_forgotten() {
        let mut b = Baseline { max_keys: 100, ..Baseline::new(1) };
        for i in 0..300u32 {
            b.learn(&Event::parse(&ev("u", "get", &format!("s{i}"), 1 + i / 60, i % 60)).unwrap());
        }
        assert!(b.behaviours.len() <= 100);
        assert!(b.evicted >= 200);
        assert!(b.behaviours.contains_key("u|get|secrets|monitoring|s299"), "the newest are kept");
        let mut c = Baseline { forget_after_days: 1, ..Baseline::new(1) };
        c.learn(&Event::parse(&ev("u", "get", "old", 1, 0)).unwrap());
        c.learn(&Event::parse(&ev("u", "get", "new", 5, 0)).unwrap());
        assert_eq!(c.forget_stale(), 1);
        assert!(c.behaviours.contains_key("u|get|secrets|monitoring|new"));
    }
}
