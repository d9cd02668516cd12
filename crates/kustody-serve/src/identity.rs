//! Who an IP was, shared by the threads of `serve`: the writer learns from every pod event it
//! stores and attributes each event's source IP to the pod that held it (stored with the event,
//! indexed), and each Falco alert's container to its pod; the live watch (`watch.rs`) feeds it
//! pods, nodes and Services; the detector asks it who stood behind a finding.
//!
//! The history is bounded ([`kustody_iphistory::Options::max_intervals`]); what changed is
//! stored in the store's `ip_intervals` once a second by the writer (so `whois` answers from an
//! index), and a restart restores it from there and from the last hour of stored pod events.

use std::sync::Mutex;

use kustody_iphistory::{Attribution, Interval, IpHistory, PodFacts};
use kustody_model::Event;
use kustody_store::{AlertRow, EventQuery, EventRow, Store};

/// Window of stored pod events learnt again after a restart (changes are stored every second:
/// this covers a crash between two flushes with a wide margin).
const RELEARN_NS: i64 = 3600 * 1_000_000_000;

pub struct Identity {
    ips: Mutex<IpHistory>,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity::new(kustody_iphistory::Options::default())
    }
}

impl Identity {
    pub fn new(opts: kustody_iphistory::Options) -> Identity {
        Identity { ips: Mutex::new(IpHistory::new(opts)) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut IpHistory) -> T) -> T {
        // A panic while holding the lock leaves a history that is still consistent enough to
        // read (every mutation is a few map operations); keep serving rather than stop.
        let mut g = self.ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Restores what the store holds: the stored intervals (open ones and those of the last
    /// `keep_ns`), then the pod events of the last hour. Returns how many intervals it holds.
    pub fn restore(&self, store: &dyn Store, now_ns: i64, keep_ns: i64) -> usize {
        let stored = match store.recent_intervals(now_ns.saturating_sub(keep_ns), 1_000_000) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored IP history");
                Vec::new()
            }
        };
        let n_stored = stored.len();
        self.with(|h| {
            for i in stored {
                h.restore(i);
            }
        });
        let mut q = EventQuery {
            since_ns: Some(now_ns.saturating_sub(RELEARN_NS)),
            resource: Some("pods".into()),
            limit: 5000,
            ..Default::default()
        };
        let mut events = 0usize;
        // Pages come newest first: observations in any order are fine, but a deletion must
        // follow the observations it ends, so deletions are applied at the end.
        let mut deletions = Vec::new();
        while events < 500_000 {
            let Ok(page) = store.search_events(&q) else { break };
            let Some(last) = page.last().map(|e| e.id) else { break };
            self.with(|h| {
                for e in &page {
                    if let Ok(ev) = Event::parse(&e.raw) {
                        let seen = kustody_iphistory::extract::seen(&ev);
                        let t = ev.time_ns().unwrap_or_default();
                        for p in &seen.pods {
                            h.observe(p, t);
                        }
                        deletions.extend(seen.deleted.into_iter().map(|d| (d, t)));
                    }
                }
            });
            events += page.len();
            q.before_id = Some(last);
        }
        self.with(|h| {
            for ((ns, name, uid), t) in deletions {
                h.deleted(&ns, &name, uid.as_deref(), t);
            }
            if !h.is_empty() {
                tracing::info!(intervals = h.len(), stored = n_stored, events, "IP history restored");
            }
            h.len()
        })
    }

    /// Learns from the pod events of a batch about to be stored, then attributes each event's
    /// source IP (the last one: the peer the apiserver saw) to the pod holding it then.
    pub fn attribute_events(&self, rows: &mut [EventRow<'_>]) {
        self.with(|h| {
            for row in rows.iter_mut() {
                if row.resource.as_deref() == Some("pods") {
                    if let Ok(ev) = Event::parse(&row.raw) {
                        h.learn(&ev);
                    }
                }
                let (Some(ip), Some(t)) = (row.source_ips.last(), row.time_ns) else { continue };
                if let Some(a) = h.lookup(ip, t).filter(|a| a.interval.pod.is_pod()) {
                    row.source_pod = Some(a.interval.pod.qualified_name());
                }
            }
        });
    }

    /// Names the pod of alerts that carry only a container ID.
    pub fn attribute_alerts(&self, alerts: &mut [AlertRow]) {
        if alerts.iter().all(|a| a.pod.is_some() || a.container_id.is_none()) {
            return;
        }
        self.with(|h| {
            for a in alerts.iter_mut().filter(|a| a.pod.is_none()) {
                let Some(c) = a.container_id.as_deref() else { continue };
                if let Some((ns, name, _)) = h.container(c) {
                    a.namespace.get_or_insert_with(|| ns.clone());
                    a.pod = Some(name.clone());
                }
            }
        });
    }

    pub fn lookup(&self, ip: &str, at_ns: i64) -> Option<Attribution> {
        self.with(|h| h.lookup(ip, at_ns))
    }

    /// The pod's IP at `at_ns`.
    pub fn ip_of_pod(&self, namespace: &str, name: &str, at_ns: i64) -> Option<String> {
        self.with(|h| {
            h.of_pod(namespace, name)
                .into_iter()
                .rev()
                .find(|i| i.first_ns <= at_ns && i.ended_ns.is_none_or(|e| e >= at_ns))
                .map(|i| i.ip.clone())
        })
    }

    pub fn observe(&self, facts: &PodFacts, at_ns: i64) {
        self.with(|h| h.observe(facts, at_ns));
    }

    pub fn deleted(&self, namespace: &str, name: &str, uid: Option<&str>, at_ns: i64) {
        self.with(|h| h.deleted(namespace, name, uid, at_ns));
    }

    /// After a relist: holders of `kind` (None: pods) absent from `present` (uids) ended.
    pub fn close_missing(&self, present: &std::collections::HashSet<String>, kind: Option<&str>, at_ns: i64) -> usize {
        self.with(|h| h.close_missing_of(present, kind, at_ns))
    }

    pub fn take_changed(&self) -> Vec<Interval> {
        self.with(IpHistory::take_changed)
    }

    pub fn len(&self) -> usize {
        self.with(|h| h.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evicted(&self) -> u64 {
        self.with(|h| h.evicted)
    }

    /// Puts intervals back to be stored again (a failed flush).
    pub fn requeue(&self, intervals: &[Interval]) {
        self.with(|h| h.mark_changed(intervals));
    }
}
