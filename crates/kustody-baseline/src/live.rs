//! The baseline a live server learns as events arrive, and what it finds against it:
//!
//! - **New behaviour.** Per identity, the first time it does a (verb, resource/subresource,
//!   namespace), uses a user agent (its product, `kubectl/v1.36.0 …` → `kubectl`), or comes
//!   from a source network (IPv4 /24, IPv6 /64). Reported once the server has learnt for
//!   [`LiveOptions::learn_ns`] *and* the identity has been seen for as long (a brand-new
//!   identity's every step would otherwise be "new"), graded by how sensitive the target is
//!   ([`sensitivity`]): secrets, RBAC, exec/attach/port-forward, node proxy, token requests
//!   and admission webhooks are WARNING, other writes NOTICE, new user agents and networks
//!   NOTICE; reads of ordinary resources are learnt and counted, not reported. A value not seen
//!   for [`LiveOptions::forget_ns`] is forgotten, so its return is new again.
//! - **Rates.** Requests per minute per (namespace, identity, verb class), with the expected
//!   rate per hour of the week (seasonality: a nightly backup job is normal at 02:00 on
//!   Sundays, not on Tuesday noon) once a series has two weeks of history, else its overall
//!   rate. A minute whose count passes `expected + k·√expected` (and at least
//!   [`LiveOptions::rate_min_count`]) raises one finding for that minute, the moment it passes.
//! - **Known behaviour** ([`crate::Baseline`]): what demotes a rule's match (seen for this
//!   identity and target on [`LiveOptions::min_days`] days).
//!
//! Memory is bounded: identities and their values by [`LiveOptions::max_values`], rate series
//! by [`LiveOptions::max_series`], known behaviours by the inner baseline's `max_keys`. The
//! least recently active are forgotten first, and counted.
//!
//! **Architecture Invariant:** no I/O, no clock: time is the events' time.

use std::collections::HashMap;
use std::sync::Arc;

use kustody_model::{Detection, Event, EventContext, FieldValue, OutputField, Priority, SourceRef};
use serde::{Deserialize, Serialize};

use crate::Baseline;

const MINUTE_NS: i64 = 60 * 1_000_000_000;
const HOUR_NS: i64 = 60 * MINUTE_NS;
const DAY_NS: i64 = 24 * HOUR_NS;
const WEEK_SLOTS: usize = 168;

/// Rule names of the findings a live baseline raises.
pub const NEW_BEHAVIOUR: &str = "kustody New Behaviour for Identity";
pub const NEW_USER_AGENT: &str = "kustody New User Agent for Identity";
pub const NEW_NETWORK: &str = "kustody New Source Network for Identity";
pub const RATE_OUT_OF_BAND: &str = "kustody Request Rate Out of Band";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveOptions {
    /// How long the server, and each identity, is learnt before new values are reported.
    pub learn_ns: i64,
    /// A value not seen for this long is forgotten.
    pub forget_ns: i64,
    /// Days a behaviour must be seen on to demote a rule's match.
    pub min_days: u32,
    /// Most (identity, value) pairs kept.
    pub max_values: usize,
    /// Most rate series kept.
    pub max_series: usize,
    /// A rate series is judged only after this much history.
    pub rate_learn_ns: i64,
    /// The band's width in standard deviations (Poisson: √expected).
    pub rate_k: f64,
    /// A minute below this count never raises a rate finding.
    pub rate_min_count: u32,
}

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            learn_ns: 7 * DAY_NS,
            forget_ns: 30 * DAY_NS,
            min_days: 2,
            max_values: 3_000_000,
            max_series: 300_000,
            rate_learn_ns: DAY_NS,
            rate_k: 6.0,
            rate_min_count: 30,
        }
    }
}

/// One identity's values: hash of (dimension, value) → last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    first_ns: i64,
    last_ns: i64,
    values: HashMap<u64, i64>,
}

/// One hour-of-week slot of a rate series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    slot: u8,
    /// Requests counted in this slot over all weeks.
    total: u32,
    /// The busiest minute seen in it.
    max: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Series {
    first_ns: i64,
    /// The minute being counted (minute number since the epoch) and its count so far.
    minute: i64,
    count: u32,
    /// Whether this minute already raised a finding.
    alarmed: bool,
    /// Requests in closed minutes.
    total: u64,
    slots: Vec<Slot>,
}

/// Counts a live baseline keeps for metrics and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCounts {
    pub events: u64,
    pub new_behaviours: u64,
    pub new_user_agents: u64,
    pub new_networks: u64,
    /// New values learnt without a finding (learning period, ordinary reads).
    pub new_unreported: u64,
    pub rate_alarms: u64,
    /// Identities (with their values) and rate series forgotten by the memory bounds.
    pub identities_evicted: u64,
    pub series_evicted: u64,
    pub values_forgotten: u64,
}

/// A rate series' last complete minute, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSample {
    pub namespace: String,
    pub identity: String,
    pub class: &'static str,
    pub per_minute: u32,
    pub expected: f64,
    pub upper: f64,
}

/// The live baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Live {
    pub opts: LiveOptions,
    /// First event time learnt.
    pub started_ns: Option<i64>,
    pub last_ns: Option<i64>,
    identities: HashMap<String, Identity>,
    values: usize,
    series: HashMap<String, Series>,
    /// Minutes elapsed per hour-of-week slot while learning (for each slot's expected rate).
    slot_minutes: Vec<u32>,
    /// The last minute counted into `slot_minutes`.
    clock_minute: Option<i64>,
    /// What demotes rule matches.
    pub known: Baseline,
    pub counts: LiveCounts,
    /// Last complete minute per series (not stored).
    #[serde(skip)]
    last_minutes: HashMap<String, (u32, f64, f64)>,
}

impl Live {
    pub fn new(opts: LiveOptions) -> Live {
        let known = Baseline {
            min_days: opts.min_days.max(1),
            forget_after_days: u32::try_from(opts.forget_ns / DAY_NS).unwrap_or(30).max(1),
            ..Baseline::default()
        };
        Live {
            opts,
            started_ns: None,
            last_ns: None,
            identities: HashMap::new(),
            values: 0,
            series: HashMap::new(),
            slot_minutes: vec![0; WEEK_SLOTS],
            clock_minute: None,
            known,
            counts: LiveCounts::default(),
            last_minutes: HashMap::new(),
        }
    }

    /// Identities tracked.
    pub fn identities(&self) -> usize {
        self.identities.len()
    }

    /// (identity, value) pairs tracked.
    pub fn values(&self) -> usize {
        self.values
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Whether the inner baseline knows the event's behaviour (a rule match on it is demoted).
    pub fn knows(&self, ev: &Event<'_>) -> bool {
        self.known.knows(ev)
    }

    /// Learns one event; returns the findings it raises (new values, a rate out of band).
    pub fn observe(&mut self, ev: &Event<'_>, src: &SourceRef) -> Vec<Detection> {
        let mut out = Vec::new();
        // One learning per request: its final stage (or a stageless event).
        if ev.stage().is_some_and(|s| s != "ResponseComplete" && s != "Panic") {
            return out;
        }
        let (Some(t), Some(user)) = (ev.time_ns(), ev.user().and_then(|u| u.username.as_deref())) else {
            return out;
        };
        let Some(verb) = ev.verb() else { return out };
        self.counts.events += 1;
        self.known.learn(ev);
        let started = *self.started_ns.get_or_insert(t);
        self.last_ns = Some(self.last_ns.map_or(t, |l| l.max(t)));
        self.advance_clock(t);
        let o = ev.object_ref();
        let resource = o.and_then(|o| o.resource.as_deref()).unwrap_or("");
        let sub = o.and_then(|o| o.subresource.as_deref()).unwrap_or("");
        let ns = o.and_then(|o| o.namespace.as_deref()).unwrap_or("");
        let ok = ev.response_status().and_then(|r| r.code).is_none_or(|c| c < 400);

        // New values of this identity.
        let learnt = t - started >= self.opts.learn_ns;
        let new_identity = !self.identities.contains_key(user);
        let forget = self.opts.forget_ns;
        let mut fresh: Vec<(&'static str, String, Priority)> = Vec::new();
        {
            let id = self.identities.entry(user.to_owned()).or_insert_with(|| Identity {
                first_ns: t,
                last_ns: t,
                values: HashMap::new(),
            });
            id.first_ns = id.first_ns.min(t);
            id.last_ns = id.last_ns.max(t);
            let mature = learnt && t - id.first_ns >= self.opts.learn_ns && !new_identity;
            let behaviour =
                if sub.is_empty() { format!("{verb} {resource}") } else { format!("{verb} {resource}/{sub}") };
            let behaviour = if ns.is_empty() { behaviour } else { format!("{behaviour} in {ns}") };
            let mut dims: Vec<(&'static str, String, Priority)> =
                vec![(NEW_BEHAVIOUR, behaviour, sensitivity(verb, resource, sub))];
            if let Some(agent) = ev.user_agent().map(agent_product).filter(|a| !a.is_empty()) {
                dims.push((NEW_USER_AGENT, agent, Priority::Notice));
            }
            if let Some(net) = ev.source_ips().and_then(|ips| ips.last().map(|ip| network(ip))).flatten() {
                dims.push((NEW_NETWORK, net, Priority::Notice));
            }
            for (rule, value, prio) in dims {
                let h = hash(rule, &value);
                let prev = id.values.get(&h).copied();
                let is_new = prev.is_none_or(|last| t - last > forget);
                // a refused request is reported when new, but not learnt as normal
                if ok {
                    if prev.is_none() {
                        self.values += 1;
                    }
                    id.values.insert(h, t);
                }
                if is_new {
                    if mature && prio <= Priority::Notice {
                        fresh.push((rule, value, prio));
                    } else {
                        self.counts.new_unreported += 1;
                    }
                }
            }
        }
        for (rule, value, prio) in fresh {
            match rule {
                NEW_BEHAVIOUR => self.counts.new_behaviours += 1,
                NEW_USER_AGENT => self.counts.new_user_agents += 1,
                _ => self.counts.new_networks += 1,
            }
            let what = match rule {
                NEW_BEHAVIOUR => "did something it had not done before",
                NEW_USER_AGENT => "used a client it had not used before",
                _ => "came from a network it had not come from before",
            };
            let output = format!(
                "{user} {what}: {value} (learnt for {} days; code={})",
                (t - started) / DAY_NS,
                ev.response_status().and_then(|r| r.code).map_or("<NA>".to_owned(), |c| c.to_string())
            );
            out.push(detection(ev, src, rule, prio, output, &[("baseline.new", value)]));
        }
        if self.values > self.opts.max_values {
            self.evict_identities();
        }

        // Rates.
        let class = verb_class(verb, resource, sub);
        let key = format!("{ns}|{user}|{class}");
        let minute = t.div_euclid(MINUTE_NS);
        if !self.series.contains_key(&key) && self.series.len() >= self.opts.max_series {
            self.evict_series();
        }
        let s = self.series.entry(key.clone()).or_insert_with(|| Series { first_ns: t, minute, ..Default::default() });
        if minute > s.minute {
            close_minute(s, &mut self.last_minutes, &key, &self.slot_minutes, &self.opts);
            s.minute = minute;
            s.count = 0;
            s.alarmed = false;
        }
        if minute == s.minute {
            s.count = s.count.saturating_add(1);
            if !s.alarmed && t - s.first_ns >= self.opts.rate_learn_ns && s.count >= self.opts.rate_min_count {
                let (expected, upper) = band(s, slot_of(minute), &self.slot_minutes, self.opts.rate_k, t);
                if f64::from(s.count) > upper {
                    s.alarmed = true;
                    self.counts.rate_alarms += 1;
                    let output = format!(
                        "{user} made {} {class} requests in {} within a minute; about {expected:.1} expected at this hour of the week (band up to {upper:.1})",
                        s.count,
                        if ns.is_empty() { "the cluster scope" } else { ns },
                    );
                    out.push(detection(
                        ev,
                        src,
                        RATE_OUT_OF_BAND,
                        Priority::Warning,
                        output,
                        &[
                            ("baseline.rate.count", s.count.to_string()),
                            ("baseline.rate.expected", format!("{expected:.2}")),
                            ("baseline.rate.class", class.to_owned()),
                        ],
                    ));
                }
            }
        }
        out
    }

    /// Counts the minutes that passed into their hour-of-week slots.
    fn advance_clock(&mut self, t: i64) {
        let minute = t.div_euclid(MINUTE_NS);
        let Some(last) = self.clock_minute else {
            self.clock_minute = Some(minute);
            return;
        };
        if minute <= last {
            return;
        }
        // a long gap (the server was down) counts at most a week of minutes
        let from = (last + 1).max(minute - 7 * 24 * 60);
        for m in from..=minute {
            if let Some(n) = self.slot_minutes.get_mut(slot_of(m)) {
                *n = n.saturating_add(1);
            }
        }
        self.clock_minute = Some(minute);
    }

    /// Forgets the values not seen for `forget_ns` before the newest event (call now and then).
    pub fn forget_stale(&mut self) -> usize {
        let Some(last) = self.last_ns else { return 0 };
        let limit = last.saturating_sub(self.opts.forget_ns);
        let mut n = 0;
        for id in self.identities.values_mut() {
            let before = id.values.len();
            id.values.retain(|_, seen| *seen >= limit);
            n += before - id.values.len();
        }
        self.identities.retain(|_, id| id.last_ns >= limit);
        self.values = self.identities.values().map(|i| i.values.len()).sum();
        self.series.retain(|_, s| s.minute.saturating_mul(MINUTE_NS) >= limit);
        self.counts.values_forgotten += n as u64;
        n + self.known.forget_stale()
    }

    /// Forgets the tenth of identities seen least recently.
    fn evict_identities(&mut self) {
        let mut by_last: Vec<(i64, String)> = self.identities.iter().map(|(k, i)| (i.last_ns, k.clone())).collect();
        by_last.sort_unstable();
        let n = (by_last.len() / 10).max(1);
        for (_, k) in by_last.into_iter().take(n) {
            if let Some(id) = self.identities.remove(&k) {
                self.values -= id.values.len();
                self.counts.identities_evicted += 1;
            }
        }
    }

    fn evict_series(&mut self) {
        let mut by_last: Vec<(i64, String)> = self.series.iter().map(|(k, s)| (s.minute, k.clone())).collect();
        by_last.sort_unstable();
        let n = (by_last.len() / 10).max(1);
        for (_, k) in by_last.into_iter().take(n) {
            self.series.remove(&k);
            self.last_minutes.remove(&k);
            self.counts.series_evicted += 1;
        }
    }

    /// The busiest series' last complete minute, at most `n`, busiest first.
    pub fn top_rates(&self, n: usize) -> Vec<RateSample> {
        let mut v: Vec<(&String, &(u32, f64, f64))> = self.last_minutes.iter().collect();
        v.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .filter_map(|(k, (c, e, u))| {
                let mut parts = k.splitn(3, '|');
                let (ns, id, class) = (parts.next()?, parts.next()?, parts.next()?);
                Some(RateSample {
                    namespace: ns.to_owned(),
                    identity: id.to_owned(),
                    class: CLASSES.iter().find(|c| **c == class).copied().unwrap_or("other"),
                    per_minute: *c,
                    expected: *e,
                    upper: *u,
                })
            })
            .collect()
    }

    pub fn to_json(&self) -> Result<String, crate::BaselineError> {
        serde_json::to_string(self).map_err(|e| crate::BaselineError::Format(e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Live, crate::BaselineError> {
        serde_json::from_str(text).map_err(|e| crate::BaselineError::Format(e.to_string()))
    }
}

/// Closes a series' minute: its count joins its hour-of-week slot.
fn close_minute(
    s: &mut Series,
    last: &mut HashMap<String, (u32, f64, f64)>,
    key: &str,
    slot_minutes: &[u32],
    opts: &LiveOptions,
) {
    let slot = slot_of(s.minute);
    let (expected, upper) = band(s, slot, slot_minutes, opts.rate_k, s.minute.saturating_mul(MINUTE_NS));
    last.insert(key.to_owned(), (s.count, expected, upper));
    s.total += u64::from(s.count);
    let slot = u8::try_from(slot).unwrap_or(0);
    let at = match s.slots.binary_search_by_key(&slot, |x| x.slot) {
        Ok(i) => i,
        Err(i) => {
            s.slots.insert(i, Slot { slot, ..Default::default() });
            i
        }
    };
    if let Some(x) = s.slots.get_mut(at) {
        x.total = x.total.saturating_add(s.count);
        x.max = x.max.max(u16::try_from(s.count).unwrap_or(u16::MAX));
    }
}

/// Expected requests per minute in `slot` and the band's upper bound: the slot's own mean once
/// the series has two weeks of history (seasonality), else its overall mean.
fn band(s: &Series, slot: usize, slot_minutes: &[u32], k: f64, now_ns: i64) -> (f64, f64) {
    let age_min = ((now_ns - s.first_ns) / MINUTE_NS).max(1) as f64;
    let overall = s.total as f64 / age_min;
    let seasonal = (now_ns - s.first_ns >= 14 * DAY_NS)
        .then(|| {
            let minutes = f64::from(*slot_minutes.get(slot)?);
            let total = s.slots.iter().find(|x| usize::from(x.slot) == slot).map_or(0, |x| x.total);
            (minutes >= 120.0).then(|| f64::from(total) / minutes)
        })
        .flatten();
    let expected = seasonal.unwrap_or(overall);
    (expected, expected + k * expected.max(1.0).sqrt())
}

/// Hour of the week (0 = Thursday 00:00 UTC, the epoch's weekday; only consistency matters).
fn slot_of(minute: i64) -> usize {
    usize::try_from((minute / 60).rem_euclid(WEEK_SLOTS as i64)).unwrap_or(0)
}

/// Verb classes of rate series.
pub const CLASSES: [&str; 5] = ["read", "write", "delete", "exec", "other"];

pub fn verb_class(verb: &str, resource: &str, sub: &str) -> &'static str {
    if resource == "pods" && matches!(sub, "exec" | "attach" | "portforward") {
        return "exec";
    }
    match verb {
        "get" | "list" | "watch" => "read",
        "create" | "update" | "patch" | "apply" => "write",
        "delete" | "deletecollection" => "delete",
        _ => "other",
    }
}

/// How sensitive a new (verb, resource, subresource) is.
pub fn sensitivity(verb: &str, resource: &str, sub: &str) -> Priority {
    let write = !matches!(verb, "get" | "list" | "watch");
    let critical = matches!(
        (resource, sub),
        ("secrets", _)
            | ("pods", "exec" | "attach" | "portforward" | "ephemeralcontainers")
            | ("nodes", "proxy")
            | ("serviceaccounts", "token")
            | ("certificatesigningrequests", "approval")
    );
    let rbac = matches!(resource, "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings");
    let admission = matches!(resource, "mutatingwebhookconfigurations" | "validatingwebhookconfigurations");
    if critical || ((rbac || admission) && write) {
        Priority::Warning
    } else if write || rbac || resource == "nodes" {
        Priority::Notice
    } else {
        Priority::Informational
    }
}

/// The product of a user agent: `kubectl/v1.36.0 (linux/amd64) kubernetes/abc` → `kubectl`.
pub fn agent_product(ua: &str) -> String {
    let first = ua.split_whitespace().next().unwrap_or("");
    let product = first.split('/').next().unwrap_or("");
    product.chars().take(64).collect()
}

/// The network of an address: IPv4 /24, IPv6 /64.
pub fn network(ip: &str) -> Option<String> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        std::net::IpAddr::V6(a) => {
            let s = a.segments();
            Some(format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
        }
    }
}

/// FNV-1a: stable across builds and toolchains (the state is stored and read back).
fn hash(dim: &str, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dim.bytes().chain([0u8]).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn detection(
    ev: &Event<'_>,
    src: &SourceRef,
    rule: &str,
    priority: Priority,
    output: String,
    extra: &[(&str, String)],
) -> Detection {
    let context = EventContext::of(ev);
    let mut output_fields = vec![
        OutputField {
            name: Arc::from("ka.user.name"),
            value: context.user.clone().map_or(FieldValue::Missing, FieldValue::Str),
        },
        OutputField {
            name: Arc::from("ka.verb"),
            value: context.verb.clone().map_or(FieldValue::Missing, FieldValue::Str),
        },
    ];
    output_fields
        .extend(extra.iter().map(|(k, v)| OutputField { name: Arc::from(*k), value: FieldValue::Str(v.clone()) }));
    Detection {
        rule: Arc::from(rule),
        priority,
        source: Arc::from("k8s_audit"),
        tags: Arc::from(vec!["baseline".to_owned()]),
        time_ns: ev.time_ns(),
        output,
        output_fields,
        audit_id: ev.audit_id().map(str::to_owned),
        source_ref: src.clone(),
        context,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const T0: i64 = 1_780_000_000 * 1_000_000_000; // a Thursday-ish start; only offsets matter

    struct Ev<'a> {
        user: &'a str,
        verb: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
        ua: &'a str,
        ip: &'a str,
        code: u16,
    }

    const OP: Ev<'static> = Ev {
        user: "system:serviceaccount:monitoring:prometheus",
        verb: "list",
        resource: "configmaps",
        sub: "",
        ns: "monitoring",
        ua: "prometheus/2.53.0",
        ip: "10.244.1.7",
        code: 200,
    };

    fn text(e: &Ev<'_>, t: i64) -> String {
        let sub = if e.sub.is_empty() { String::new() } else { format!(r#","subresource":"{}""#, e.sub) };
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/x","verb":"{}","user":{{"username":"{}"}},"sourceIPs":["{}"],"userAgent":"{}","objectRef":{{"resource":"{}","namespace":"{}"{sub}}},"responseStatus":{{"code":{}}},"stageTimestamp":"{}"}}"#,
            e.verb,
            e.user,
            e.ip,
            e.ua,
            e.resource,
            e.ns,
            e.code,
            kustody_model::time::format_rfc3339_nanos(t)
        )
    }

    fn feed(l: &mut Live, e: &Ev<'_>, t: i64) -> Vec<Detection> {
        let raw = text(e, t);
        let ev = Event::parse(&raw).unwrap();
        let src = SourceRef { file: Arc::from("t"), line: 1, offset: 0, format: kustody_model::SourceFormat::Native };
        l.observe(&ev, &src)
    }

    fn rules(d: &[Detection]) -> Vec<(&str, Priority)> {
        d.iter().map(|d| (&*d.rule, d.priority)).collect()
    }

    #[test]
    fn a_new_behaviour_is_found_after_learning_graded_by_sensitivity() {
        let mut l = Live::new(LiveOptions::default());
        for h in 0..(8 * 24) {
            assert!(feed(&mut l, &OP, T0 + h * HOUR_NS).is_empty(), "learning: nothing is new yet");
        }
        let t = T0 + 8 * DAY_NS + MINUTE_NS;
        // the operator reads secrets for the first time: WARNING, once
        let secrets = Ev { verb: "get", resource: "secrets", ..OP };
        assert_eq!(rules(&feed(&mut l, &secrets, t)), [(NEW_BEHAVIOUR, Priority::Warning)]);
        assert!(feed(&mut l, &secrets, t + 1).is_empty());
        // a new write of an ordinary resource: NOTICE; a new ordinary read: learnt quietly
        let write = Ev { verb: "patch", resource: "configmaps", ..OP };
        assert_eq!(rules(&feed(&mut l, &write, t + 2)), [(NEW_BEHAVIOUR, Priority::Notice)]);
        assert!(feed(&mut l, &Ev { resource: "services", ..OP }, t + 3).is_empty());
        // a new client and a new network
        let kubectl = Ev { ua: "kubectl/v1.36.0 (linux/amd64) kubernetes/abc", ip: "203.0.113.9", ..OP };
        assert_eq!(
            rules(&feed(&mut l, &kubectl, t + 4)),
            [(NEW_USER_AGENT, Priority::Notice), (NEW_NETWORK, Priority::Notice)]
        );
        // exec by it: WARNING
        let exec = Ev { verb: "create", resource: "pods", sub: "exec", ..OP };
        assert_eq!(rules(&feed(&mut l, &exec, t + 5)), [(NEW_BEHAVIOUR, Priority::Warning)]);
        // a brand-new identity is learnt first, whatever it does
        let newcomer = Ev { user: "system:serviceaccount:shop:web", verb: "get", resource: "secrets", ..OP };
        assert!(feed(&mut l, &newcomer, t + 6).is_empty());
        assert_eq!(l.counts.new_behaviours, 3);
        // a refused attempt is reported but not learnt: the next attempt is new again
        let denied = Ev { verb: "delete", resource: "secrets", code: 403, ..OP };
        assert_eq!(rules(&feed(&mut l, &denied, t + 7)).len(), 1);
        assert_eq!(rules(&feed(&mut l, &denied, t + 8)).len(), 1);
        // forgotten after 30 days unseen: new again
        let later = t + 31 * DAY_NS;
        feed(&mut l, &OP, later);
        assert_eq!(rules(&feed(&mut l, &secrets, later + 1)), [(NEW_BEHAVIOUR, Priority::Warning)]);
        // the state survives a round trip
        let back = Live::from_json(&l.to_json().unwrap()).unwrap();
        assert_eq!(back.values(), l.values());
        assert_eq!(back.counts, l.counts);
    }

    #[test]
    fn a_rate_spike_is_found_once_per_minute_and_seasonal_bursts_are_normal() {
        let mut l = Live::new(LiveOptions::default());
        let list = Ev { verb: "list", resource: "pods", ..OP };
        // three weeks: 2 requests a minute, and 100 a minute in one hour of every week
        let weekly_hour = 50i64; // hour of week of the nightly burst
        let start_minute = T0 / MINUTE_NS;
        let mut spikes = 0;
        for m in 0..(21 * 24 * 60) {
            let minute = start_minute + m;
            let t = minute * MINUTE_NS;
            let n = if (minute / 60).rem_euclid(168) == weekly_hour { 100 } else { 2 };
            for i in 0..n {
                spikes += feed(&mut l, &list, t + i * 100_000_000).len();
            }
        }
        // the first week's bursts were judged against the overall rate (no seasonal history
        // yet): at most one finding per burst minute; later weeks' bursts are normal
        let week1 = l.counts.rate_alarms;
        assert!(spikes as u64 == week1, "{spikes} {week1}");
        let after = |week: i64| {
            let mut l2 = l.clone();
            let mut found = 0;
            // the next minute of the burst hour in week 4, and a Tuesday-noon-like ordinary hour
            let base = (start_minute / (168 * 60) + week) * 168 * 60;
            let burst = base + weekly_hour * 60 + 5;
            for i in 0..100 {
                found += feed(&mut l2, &list, burst * MINUTE_NS + i * 100_000_000).len();
            }
            let quiet = base + (weekly_hour + 30) * 60 + 5;
            let mut quiet_found = Vec::new();
            for i in 0..100 {
                quiet_found.extend(feed(&mut l2, &list, quiet * MINUTE_NS + i * 100_000_000));
            }
            (found, quiet_found)
        };
        let (burst, quiet) = after(4);
        assert_eq!(burst, 0, "the weekly burst is normal at its hour");
        assert_eq!(rules(&quiet), [(RATE_OUT_OF_BAND, Priority::Warning)], "the same burst elsewhere is not");
        assert!(quiet[0].output.contains("30 read requests in monitoring"), "{}", quiet[0].output);
        let top = l.top_rates(5);
        assert_eq!(top[0].identity, OP.user);
        assert_eq!(top[0].class, "read");
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let mut l = Live::new(LiveOptions { max_values: 1000, max_series: 100, ..LiveOptions::default() });
        for i in 0..2000 {
            let user = format!("user-{i}");
            feed(&mut l, &Ev { user: &user, ..OP }, T0 + i * 1_000_000);
        }
        assert!(l.values() <= 1000, "{}", l.values());
        assert!(l.series() <= 100);
        assert!(l.counts.identities_evicted > 0 && l.counts.series_evicted > 0);
        assert!(l.identities() < 2000);
    }
}
