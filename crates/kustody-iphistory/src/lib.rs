//! Who an IP was: pod IPs are reused many times a day, so an audit event's source IP means
//! nothing until it is tied to the pod that held it at that moment.
//!
//! The history is built from **observations**: a pod, with its IP, seen at a time — in an audit
//! event's request or response body (a pod created, patched, read, listed, its status
//! updated: whatever the audit policy records at Request level or above), or from a pod watch.
//! A pod's deletion ends its hold. For each IP the history keeps intervals, one per pod that
//! held it, from the first to the last observation; between two holders the IP is attributed
//! to the earlier one up to the later one's first observation, marked as extrapolated.
//!
//! **Architecture Invariant:** no I/O and bounded memory: at most [`Options::max_intervals`]
//! intervals; the oldest are evicted first and counted.

pub mod extract;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// What is known of a pod at an observation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Every IP of the pod (`status.podIPs`, else `status.podIP`).
    pub ips: Vec<String>,
    pub node: Option<String>,
    pub service_account: Option<String>,
    /// The controller owner, `Kind/name`.
    pub owner: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The pod uses the node's network: its IP is the node's, not its own.
    pub host_network: bool,
    /// Its containers' runtime IDs without the `containerd://`-style prefix (what Falco's
    /// `container.id` abbreviates to 12 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// What held the IP when it was not a pod: `Node` or `Service` (from a live watch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl PodFacts {
    /// Whether the holder is a pod (not a node or a Service).
    pub fn is_pod(&self) -> bool {
        self.kind.is_none()
    }

    /// `namespace/name`, or the name alone for a holder without a namespace (a node).
    pub fn qualified_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// Length of the container ID prefix Falco reports (`container.id`).
pub const SHORT_CONTAINER_ID: usize = 12;

/// One pod's hold of an IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub ip: String,
    pub pod: PodFacts,
    /// First and last observation.
    pub first_ns: i64,
    pub last_ns: i64,
    /// When the pod was deleted, when seen.
    pub ended_ns: Option<i64>,
}

/// How sure an attribution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Between two observations of the same pod with this IP.
    Observed,
    /// After the pod's last observation, before anything else was seen with the IP (or before
    /// its first one, back to its creation).
    Extrapolated,
}

/// Who held an IP at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub interval: Interval,
    pub confidence: Confidence,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub max_intervals: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_intervals: 1_000_000 }
    }
}

/// The history.
#[derive(Debug, Default)]
pub struct IpHistory {
    opts: Options,
    /// Per IP, intervals in order of first observation.
    by_ip: HashMap<String, Vec<Interval>>,
    /// (ip, uid) in order of creation, for eviction.
    order: VecDeque<(String, String)>,
    /// uid → the IPs it held; (namespace, name) → uids: deletions and pod lookups without a scan.
    by_uid: HashMap<String, Vec<String>>,
    by_name: HashMap<(String, String), Vec<String>>,
    count: usize,
    /// Intervals evicted by the bound.
    pub evicted: u64,
    /// (ip, uid) of intervals created or changed since [`IpHistory::take_changed`].
    changed: std::collections::HashSet<(String, String)>,
    /// Short container ID → (namespace, name, uid) of its pod, and the IDs in order of
    /// arrival: at most `max_intervals`, the oldest forgotten first.
    containers: HashMap<String, (String, String, String)>,
    container_order: VecDeque<String>,
}

impl IpHistory {
    pub fn new(opts: Options) -> IpHistory {
        IpHistory { opts, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A pod seen at `time_ns` (its IPs as they were then).
    pub fn observe(&mut self, pod: &PodFacts, time_ns: i64) {
        if pod.uid.is_empty() {
            return;
        }
        for c in &pod.containers {
            if let Some(short) = c.get(..SHORT_CONTAINER_ID) {
                let owner = (pod.namespace.clone(), pod.name.clone(), pod.uid.clone());
                if self.containers.insert(short.to_owned(), owner).is_none() {
                    self.container_order.push_back(short.to_owned());
                    while self.container_order.len() > self.opts.max_intervals {
                        if let Some(old) = self.container_order.pop_front() {
                            self.containers.remove(&old);
                        }
                    }
                }
            }
        }
        if pod.host_network {
            return;
        }
        // Labels are kept for the answer, not unbounded: at most 32, each at most 256 bytes.
        let trimmed;
        let pod = if pod.labels.len() > 32 || pod.labels.iter().any(|(k, v)| k.len() + v.len() > 256) {
            let mut p = pod.clone();
            p.labels = pod
                .labels
                .iter()
                .filter(|(k, v)| k.len() + v.len() <= 256)
                .take(32)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            trimmed = p;
            &trimmed
        } else {
            pod
        };
        for ip in &pod.ips {
            let list = self.by_ip.entry(ip.clone()).or_default();
            match list.iter_mut().rev().find(|i| i.pod.uid == pod.uid) {
                Some(i) => {
                    let earlier = time_ns < i.first_ns;
                    i.first_ns = i.first_ns.min(time_ns);
                    i.last_ns = i.last_ns.max(time_ns);
                    // later facts win (a node assigned, labels changed)
                    if time_ns >= i.last_ns {
                        merge(&mut i.pod, pod);
                    }
                    if earlier {
                        // keep the list in order of first observation (lookups bisect it)
                        list.sort_by_key(|i| i.first_ns);
                    }
                    self.changed.insert((ip.clone(), pod.uid.clone()));
                }
                None => {
                    let ips = self.by_uid.entry(pod.uid.clone()).or_default();
                    if !ips.contains(ip) {
                        ips.push(ip.clone());
                    }
                    let uids = self.by_name.entry((pod.namespace.clone(), pod.name.clone())).or_default();
                    if !uids.contains(&pod.uid) {
                        uids.push(pod.uid.clone());
                    }
                    let at = list.partition_point(|i| i.first_ns <= time_ns);
                    list.insert(
                        at,
                        Interval {
                            ip: ip.clone(),
                            pod: pod.clone(),
                            first_ns: time_ns,
                            last_ns: time_ns,
                            ended_ns: None,
                        },
                    );
                    self.order.push_back((ip.clone(), pod.uid.clone()));
                    self.changed.insert((ip.clone(), pod.uid.clone()));
                    self.count += 1;
                }
            }
        }
        self.bound();
    }

    /// A pod deleted at `time_ns` (by uid, or by namespace and name when the uid is unknown).
    pub fn deleted(&mut self, namespace: &str, name: &str, uid: Option<&str>, time_ns: i64) {
        let uids: Vec<String> = match uid {
            Some(u) if !u.is_empty() => vec![u.to_owned()],
            _ => self.by_name.get(&(namespace.to_owned(), name.to_owned())).cloned().unwrap_or_default(),
        };
        for u in uids {
            for ip in self.by_uid.get(&u).cloned().unwrap_or_default() {
                for i in self.by_ip.get_mut(&ip).into_iter().flatten() {
                    let open = uid.is_some_and(|x| !x.is_empty()) || i.ended_ns.is_none();
                    if i.pod.uid == u && open && i.first_ns <= time_ns {
                        i.ended_ns = Some(i.ended_ns.map_or(time_ns, |e| e.min(time_ns)));
                        self.changed.insert((ip.clone(), u.clone()));
                    }
                }
            }
        }
    }

    /// Learns what one audit event shows: the pods it carries (with their IPs) and the pods it
    /// deleted, at the event's time.
    pub fn learn(&mut self, ev: &kustody_model::Event<'_>) {
        let seen = extract::seen(ev);
        let t = ev.time_ns().unwrap_or_default();
        for p in &seen.pods {
            self.observe(p, t);
        }
        for (ns, name, uid) in &seen.deleted {
            self.deleted(ns, name, uid.as_deref(), t);
        }
    }

    /// An interval as stored (a restart): kept as is, not marked changed.
    pub fn restore(&mut self, i: Interval) {
        let pod = i.pod.clone();
        let (first, last, ended) = (i.first_ns, i.last_ns, i.ended_ns);
        let ip = i.ip.clone();
        let mut p = pod;
        p.ips = vec![ip.clone()];
        self.observe(&p, first);
        self.observe(&p, last);
        if let Some(e) = ended {
            for x in self.by_ip.get_mut(&ip).into_iter().flatten() {
                if x.pod.uid == p.uid {
                    x.ended_ns = Some(e);
                }
            }
        }
        self.changed.remove(&(ip, p.uid));
    }

    /// Marks intervals to be taken again by [`IpHistory::take_changed`] (a store that failed).
    pub fn mark_changed(&mut self, intervals: &[Interval]) {
        for i in intervals {
            self.changed.insert((i.ip.clone(), i.pod.uid.clone()));
        }
    }

    /// The intervals created or changed since the last call (to be stored), and forgets them.
    pub fn take_changed(&mut self) -> Vec<Interval> {
        let keys: Vec<(String, String)> = self.changed.drain().collect();
        keys.into_iter()
            .filter_map(|(ip, uid)| self.by_ip.get(&ip)?.iter().find(|i| i.pod.uid == uid).cloned())
            .collect()
    }

    /// After a full list of the cluster's pods (a watch started or resumed by relisting):
    /// every pod still holding an IP here but absent from `present` (uids) was deleted while
    /// no one watched; its hold ends at `at_ns`. Returns how many intervals were closed.
    pub fn close_missing(&mut self, present: &std::collections::HashSet<String>, at_ns: i64) -> usize {
        self.close_missing_of(present, None, at_ns)
    }

    /// [`IpHistory::close_missing`] for holders of one kind (`None`: pods; `Node`, `Service`).
    pub fn close_missing_of(
        &mut self,
        present: &std::collections::HashSet<String>,
        kind: Option<&str>,
        at_ns: i64,
    ) -> usize {
        let mut gone: Vec<(String, String, String)> = Vec::new();
        for list in self.by_ip.values() {
            for i in list {
                if i.ended_ns.is_none()
                    && i.first_ns <= at_ns
                    && i.pod.kind.as_deref() == kind
                    && !present.contains(&i.pod.uid)
                {
                    gone.push((i.pod.namespace.clone(), i.pod.name.clone(), i.pod.uid.clone()));
                }
            }
        }
        gone.sort();
        gone.dedup();
        let n = gone.len();
        for (ns, name, uid) in gone {
            self.deleted(&ns, &name, Some(&uid), at_ns);
        }
        n
    }

    /// The pod a container ran in, by its runtime ID (full or Falco's 12-character prefix):
    /// (namespace, name, uid).
    pub fn container(&self, id: &str) -> Option<&(String, String, String)> {
        let id = id.rsplit("://").next().unwrap_or(id);
        self.containers.get(id.get(..SHORT_CONTAINER_ID)?)
    }

    /// Who held `ip` at `at_ns`.
    pub fn lookup(&self, ip: &str, at_ns: i64) -> Option<Attribution> {
        let list = self.by_ip.get(ip)?;
        // the last interval that started (was first observed) at or before `at_ns`
        let idx = list.partition_point(|i| i.first_ns <= at_ns);
        if let Some(i) = idx.checked_sub(1).and_then(|k| list.get(k)) {
            if i.ended_ns.is_some_and(|e| e < at_ns) {
                return None; // deleted before: the IP was free or someone unseen held it
            }
            let confidence = if at_ns <= i.last_ns { Confidence::Observed } else { Confidence::Extrapolated };
            return Some(Attribution { interval: i.clone(), confidence });
        }
        // before the first observation: the first holder, if it was created before (its IP is
        // assigned after scheduling, so only shortly before)
        None
    }

    /// Every interval of `ip`, oldest first.
    pub fn intervals(&self, ip: &str) -> &[Interval] {
        self.by_ip.get(ip).map_or(&[], Vec::as_slice)
    }

    /// The IPs a pod held (`namespace/name`), as intervals.
    pub fn of_pod(&self, namespace: &str, name: &str) -> Vec<&Interval> {
        let uids = self.by_name.get(&(namespace.to_owned(), name.to_owned()));
        let mut v: Vec<&Interval> = uids
            .into_iter()
            .flatten()
            .flat_map(|u| self.by_uid.get(u).into_iter().flatten().map(move |ip| (u, ip)))
            .filter_map(|(u, ip)| self.by_ip.get(ip)?.iter().find(|i| &i.pod.uid == u))
            .collect();
        v.sort_by_key(|i| i.first_ns);
        v
    }

    fn bound(&mut self) {
        while self.count > self.opts.max_intervals {
            let Some((ip, uid)) = self.order.pop_front() else { break };
            if let Some(list) = self.by_ip.get_mut(&ip) {
                if let Some(k) = list.iter().position(|i| i.pod.uid == uid) {
                    let gone = list.remove(k);
                    self.count -= 1;
                    self.evicted += 1;
                    if let Some(ips) = self.by_uid.get_mut(&uid) {
                        ips.retain(|x| x != &ip);
                        if ips.is_empty() {
                            self.by_uid.remove(&uid);
                            let key = (gone.pod.namespace, gone.pod.name);
                            if let Some(u) = self.by_name.get_mut(&key) {
                                u.retain(|x| x != &uid);
                                if u.is_empty() {
                                    self.by_name.remove(&key);
                                }
                            }
                        }
                    }
                }
                if list.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }
}

fn merge(into: &mut PodFacts, from: &PodFacts) {
    if from.node.is_some() {
        into.node.clone_from(&from.node);
    }
    if from.service_account.is_some() {
        into.service_account.clone_from(&from.service_account);
    }
    if from.owner.is_some() {
        into.owner.clone_from(&from.owner);
    }
    if !from.labels.is_empty() {
        into.labels.clone_from(&from.labels);
    }
}

#[cfg(test)]
mod tests;
