//! Incidents: what a responder is paged for.
//!
//! A finding says "this rule fired on these events". An incident says "this identity, acting
//! from this workload, did these things": every finding of one identity (a user or service
//! account) and the workload it acted from (the pod its bound token was minted for, taken up to
//! its owner) within a window is one incident. Its severity is the highest of its findings',
//! promoted one level when a correlation chain fired inside it or when three or more different
//! rules of WARNING or above did (several independent signals agree), never above ALERT by
//! promotion alone.
//!
//! The [`Book`] holds the incidents still open in memory (bounded; the store keeps them all),
//! folds findings in and says what changed, so the caller can store the incident and decide
//! whom to notify. Status (new → acknowledged → resolved), the assignee and notes are set by
//! responders. A finding for a resolved incident's key opens a new incident.
//!
//! **Architecture Invariant:** no I/O, no clock: times come in with the findings and calls.

pub mod render;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kustody_model::Priority;
use serde::{Deserialize, Serialize};

pub use workload::Workload;

/// An incident's state in the responders' workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    New,
    Acknowledged,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(Status::New),
            "acknowledged" | "ack" => Ok(Status::Acknowledged),
            "resolved" => Ok(Status::Resolved),
            other => Err(format!("unknown incident status `{other}` (new, acknowledged, resolved)")),
        }
    }
}

/// What the book needs to know of a finding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindingInput {
    /// The cluster of the finding's events, when it differs from the book's own (a detector
    /// of several clusters): incidents never span clusters.
    pub cluster: Option<String>,
    /// The finding's id in the store.
    pub finding_id: i64,
    pub rule: String,
    pub priority: Option<Priority>,
    pub rules: Vec<String>,
    pub tags: Vec<String>,
    pub events: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub user: Option<String>,
    pub namespace: Option<String>,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub name: Option<String>,
    pub verb: Option<String>,
    pub source_ip: Option<String>,
    pub output: String,
    pub audit_ids: Vec<String>,
    /// For exec and attach: the command.
    pub command: Option<String>,
    /// `namespace/name` of the pod the acting identity's bound token was minted for.
    pub acting_pod: Option<String>,
    /// The address the apiserver saw the request come from (the last `sourceIPs` entry: the
    /// first can be set by the client through `X-Forwarded-For`).
    pub peer_ip: Option<String>,
    /// Who the peer IP was when the finding began (IP history), if known.
    pub source_pod: Option<IpOwner>,
    /// The acting pod's own IP then, if known (to tell a token used from elsewhere).
    pub acting_pod_ip: Option<String>,
    /// The finding is a correlation chain's.
    pub correlation: bool,
}

/// The pod behind a source IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpOwner {
    /// `namespace/name`.
    pub pod: String,
    pub node: Option<String>,
    /// `Kind/name`.
    pub owner: Option<String>,
    /// Between two observations (`true`) or after the last one.
    pub observed: bool,
}

/// One step of an incident's story: a finding, as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub finding_id: i64,
    pub rule: String,
    #[serde(with = "prio")]
    pub priority: Priority,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub events: u64,
    pub output: String,
    /// `namespace/resource/name` (or `resource/name` cluster-wide) the step acted on.
    pub target: Option<String>,
    pub verb: Option<String>,
    pub command: Option<String>,
    pub correlation: bool,
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Store id, once stored.
    pub id: Option<i64>,
    /// Grouping key: identity and acting workload.
    pub key: String,
    pub cluster: Option<String>,
    /// The user or service account (`system:serviceaccount:NS:NAME`).
    pub identity: Option<String>,
    /// The workload the identity acted from (its bound token's pod's owner), when known.
    pub workload: Option<Workload>,
    /// The highest finding priority, promoted (see the crate documentation).
    #[serde(with = "prio")]
    pub severity: Priority,
    /// Why the severity was promoted above the findings', when it was.
    pub promoted: Option<String>,
    pub status: Status,
    pub assignee: Option<String>,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// Findings in time order (first seen), one step each.
    pub steps: Vec<Step>,
    /// Steps not kept once [`Options::max_steps`] was reached (still linked in the store).
    pub steps_dropped: u64,
    pub source_ips: BTreeSet<String>,
    /// Pods the identity acted from.
    pub pods: BTreeSet<String>,
    /// Pods it reached into (exec, attach, port-forward, ephemeral containers): where evidence is.
    #[serde(default)]
    pub reached: BTreeSet<String>,
    /// Source IP → the pod that held it (IP history).
    #[serde(default)]
    pub ip_pods: BTreeMap<String, IpOwner>,
    /// Nodes of the pods involved.
    #[serde(default)]
    pub nodes: BTreeSet<String>,
    /// A bound pod token used from an address that was not its pod's: what was seen.
    #[serde(default)]
    pub stolen_token: Vec<String>,
    /// Namespaces touched.
    pub namespaces: BTreeSet<String>,
    /// Evidence: the first audit IDs of every step (at most [`Options::max_audit_ids`]).
    pub audit_ids: Vec<String>,
    /// Sinks that were sent a trigger (a resolve goes to them only).
    pub notified: BTreeSet<String>,
    /// Playbooks that ran for it (each runs once per incident).
    #[serde(default)]
    pub playbooks: BTreeSet<String>,
    /// When a responder last changed it (ns).
    pub updated_ns: Option<i64>,
}

impl Incident {
    /// Distinct rules of the steps, first-seen order.
    pub fn rules(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.steps.iter().map(|s| s.rule.as_str()).filter(|r| seen.insert(*r)).collect()
    }

    /// Main namespace: the acting workload's, else the first touched.
    pub fn namespace(&self) -> Option<&str> {
        self.workload
            .as_ref()
            .map(|w| w.namespace.as_str())
            .or_else(|| self.namespaces.iter().next().map(String::as_str))
    }

    fn recompute_severity(&mut self) {
        let base = self.steps.iter().map(|s| s.priority).min().unwrap_or(Priority::Debug);
        let correlated = self.steps.iter().any(|s| s.correlation);
        let loud: BTreeSet<&str> =
            self.steps.iter().filter(|s| s.priority.at_least(Priority::Warning)).map(|s| s.rule.as_str()).collect();
        let reason = if correlated {
            Some("a correlation chain fired in it".to_owned())
        } else if loud.len() >= 3 {
            Some(format!("{} different rules of WARNING or above fired in it", loud.len()))
        } else {
            None
        };
        match reason {
            Some(r) if base > Priority::Alert => {
                self.severity = raise(base);
                self.promoted = Some(r);
            }
            _ => {
                self.severity = base;
                self.promoted = None;
            }
        }
    }
}

/// One level more severe (Debug → Informational → … → Alert).
fn raise(p: Priority) -> Priority {
    let i = Priority::ALL.iter().position(|x| *x == p).unwrap_or(0);
    Priority::ALL.get(i.saturating_sub(1)).copied().unwrap_or(p)
}

/// Book limits and grouping.
#[derive(Debug, Clone)]
pub struct Options {
    /// A finding joins an open incident of its key when it starts within this long of the
    /// incident's last activity; later it opens a new incident.
    pub window_ns: i64,
    pub cluster: Option<String>,
    /// Incidents held in memory; beyond, the least recently active are let go (they stay
    /// stored; a later finding of their key opens a new incident).
    pub max_open: usize,
    /// Steps kept per incident (the rest are counted in `steps_dropped`).
    pub max_steps: usize,
    pub max_audit_ids: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { window_ns: 3600 * 1_000_000_000, cluster: None, max_open: 10_000, max_steps: 200, max_audit_ids: 50 }
    }
}

/// What folding one finding changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The incident's key in the book.
    pub key: String,
    pub opened: bool,
    /// The severity before, when this finding raised it.
    pub raised_from: Option<Priority>,
}

/// Open incidents by key.
#[derive(Debug, Default)]
pub struct Book {
    opts: Options,
    open: HashMap<String, Incident>,
    /// Incidents let go because of `max_open`.
    pub evicted: u64,
}

/// The grouping key of a finding, and the acting workload: identity and workload, prefixed by
/// the cluster when the finding's is not the book's own (`book_cluster`), so one identity's
/// activity in two clusters is two incidents while single-cluster keys stay as they were.
pub fn key_of(f: &FindingInput, book_cluster: Option<&str>) -> (String, Option<Workload>) {
    let workload = f.acting_pod.as_deref().and_then(|p| p.split_once('/')).map(|(ns, pod)| workload::of_pod(ns, pod));
    let who = f.user.clone().unwrap_or_else(|| "(no identity)".to_owned());
    let key = match &workload {
        Some(w) => format!("{who}|{}/{}/{}", w.namespace, w.kind, w.name),
        // No identity and no acting pod: group by what was acted on (namespace).
        None if f.user.is_none() => format!("{who}|ns:{}", f.namespace.as_deref().unwrap_or("")),
        None => format!("{who}|"),
    };
    let key = match f.cluster.as_deref() {
        Some(c) if Some(c) != book_cluster => format!("cluster:{c}|{key}"),
        _ => key,
    };
    (key, workload)
}

impl Book {
    pub fn new(opts: Options) -> Book {
        Book { opts, open: HashMap::new(), evicted: 0 }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Puts a stored, unresolved incident back (after a restart).
    pub fn restore(&mut self, inc: Incident) {
        if inc.status != Status::Resolved {
            self.open.insert(inc.key.clone(), inc);
            self.bound();
        }
    }

    pub fn get(&self, key: &str) -> Option<&Incident> {
        self.open.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Incident> {
        self.open.get_mut(key)
    }

    /// The open incident with this store id.
    pub fn by_id(&mut self, id: i64) -> Option<&mut Incident> {
        self.open.values_mut().find(|i| i.id == Some(id))
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Folds a finding (new, or an update of one folded before) into its incident.
    pub fn observe(&mut self, f: &FindingInput) -> Change {
        let (key, workload) = key_of(f, self.opts.cluster.as_deref());
        let start = f.first_ns.or(f.last_ns);
        // A stale or resolved incident of the key gives way to a new one.
        // An update of a finding the incident already holds stays in it, resolved or not.
        let stale = self.open.get(&key).is_some_and(|inc| {
            let known = inc.steps.iter().any(|s| s.finding_id == f.finding_id);
            !known
                && (inc.status == Status::Resolved
                    || match (inc.last_ns, start) {
                        (Some(last), Some(t)) => t.saturating_sub(last) > self.opts.window_ns,
                        _ => false,
                    })
        });
        if stale {
            self.open.remove(&key);
        }
        let mut opened = false;
        let opts = self.opts.clone();
        let inc = self.open.entry(key.clone()).or_insert_with(|| {
            opened = true;
            Incident {
                id: None,
                key: key.clone(),
                cluster: f.cluster.clone().or_else(|| opts.cluster.clone()),
                identity: f.user.clone(),
                workload,
                severity: Priority::Debug,
                promoted: None,
                status: Status::New,
                assignee: None,
                first_ns: None,
                last_ns: None,
                steps: Vec::new(),
                steps_dropped: 0,
                source_ips: BTreeSet::new(),
                pods: BTreeSet::new(),
                reached: BTreeSet::new(),
                ip_pods: BTreeMap::new(),
                nodes: BTreeSet::new(),
                stolen_token: Vec::new(),
                namespaces: BTreeSet::new(),
                audit_ids: Vec::new(),
                notified: BTreeSet::new(),
                playbooks: BTreeSet::new(),
                updated_ns: None,
            }
        });
        let before = inc.severity;
        fold(inc, f, &opts);
        let raised_from = (!opened && inc.severity < before).then_some(before);
        if opened {
            self.bound();
        }
        Change { key, opened, raised_from }
    }

    /// Lets go of incidents idle for longer than the window before `now_ns` (they stay stored
    /// as they are); returns how many.
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let w = self.opts.window_ns;
        let before = self.open.len();
        self.open.retain(|_, i| i.last_ns.is_none_or(|l| now_ns.saturating_sub(l) <= w));
        before - self.open.len()
    }

    fn bound(&mut self) {
        while self.open.len() > self.opts.max_open {
            let oldest = self.open.iter().min_by_key(|(_, i)| i.last_ns.unwrap_or(i64::MIN)).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.open.remove(&k);
                    self.evicted += 1;
                }
                None => break,
            }
        }
    }
}

fn fold(inc: &mut Incident, f: &FindingInput, opts: &Options) {
    let priority = f.priority.unwrap_or(Priority::Debug);
    let target = match (&f.namespace, &f.resource, &f.name) {
        (ns, Some(r), name) => {
            let r = match &f.subresource {
                Some(s) => format!("{r}/{s}"),
                None => r.clone(),
            };
            Some(match (ns, name) {
                (Some(ns), Some(n)) => format!("{ns}/{r}/{n}"),
                (Some(ns), None) => format!("{ns}/{r}"),
                (None, Some(n)) => format!("{r}/{n}"),
                (None, None) => r,
            })
        }
        _ => None,
    };
    let step = Step {
        finding_id: f.finding_id,
        rule: f.rule.clone(),
        priority,
        first_ns: f.first_ns,
        last_ns: f.last_ns,
        events: f.events,
        output: f.output.clone(),
        target,
        verb: f.verb.clone(),
        command: f.command.clone(),
        correlation: f.correlation,
    };
    let kept = inc.steps.len();
    match inc.steps.iter_mut().find(|s| s.finding_id == f.finding_id) {
        Some(s) => *s = step,
        None if kept < opts.max_steps => {
            let at = inc.steps.partition_point(|s| s.first_ns <= step.first_ns);
            inc.steps.insert(at, step);
        }
        None => inc.steps_dropped += 1,
    }
    inc.first_ns = min_opt(inc.first_ns, f.first_ns);
    inc.last_ns = max_opt(inc.last_ns, f.last_ns);
    if let Some(ip) = &f.source_ip {
        inc.source_ips.insert(ip.clone());
    }
    if let Some(p) = &f.acting_pod {
        inc.pods.insert(p.clone());
    }
    let peer = f.peer_ip.as_ref().or(f.source_ip.as_ref());
    if let (Some(ip), Some(o)) = (peer, &f.source_pod) {
        if let Some(n) = &o.node {
            inc.nodes.insert(n.clone());
        }
        inc.ip_pods.insert(ip.clone(), o.clone());
    }
    // A bound token is its pod's: used from an address that was another pod's, or not its pod's
    // own, it was taken out of the pod.
    if let (Some(pod), Some(ip)) = (&f.acting_pod, peer) {
        // another pod's only when seen with the IP around then (not extrapolated)
        let other = f.source_pod.as_ref().filter(|o| &o.pod != pod && o.observed).map(|o| format!("pod {}'s", o.pod));
        let not_own = f.acting_pod_ip.as_ref().filter(|own| *own != ip).map(|own| format!("not its pod's ({own})"));
        if let Some(why) = other.or(not_own) {
            let line = format!("the token of pod {pod} was used from {ip}, {why}");
            if !inc.stolen_token.contains(&line) && inc.stolen_token.len() < 20 {
                inc.stolen_token.push(line);
            }
        }
    }
    let into_pod = matches!(f.subresource.as_deref(), Some("exec" | "attach" | "portforward" | "ephemeralcontainers"));
    if let (true, Some("pods"), Some(ns), Some(name)) = (into_pod, f.resource.as_deref(), &f.namespace, &f.name) {
        inc.reached.insert(format!("{ns}/{name}"));
    }
    if let Some(ns) = &f.namespace {
        inc.namespaces.insert(ns.clone());
    }
    for a in &f.audit_ids {
        if inc.audit_ids.len() >= opts.max_audit_ids {
            break;
        }
        if !inc.audit_ids.contains(a) {
            inc.audit_ids.push(a.clone());
        }
    }
    inc.recompute_severity();
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// A priority as its Falco name (`"Critical"`), read back in any case.
pub mod prio {
    use kustody_model::Priority;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.falco_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
