//! The live watch: pods, nodes and Services of the cluster `serve` watches, into the IP
//! history, while it runs (`kustody serve --watch-cluster`).
//!
//! kube-rs's watcher lists, then watches from the list's resourceVersion, and lists again
//! when the watch is lost (a disconnect, a `410 Gone`), with backoff. A list is the complete
//! truth: every hold of an object the list no longer shows ends at that moment (the object
//! was deleted while no one watched), so a pod deleted during a disconnect still gets its
//! interval closed. Pods that finished (`Succeeded`, `Failed`) give their IP back.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use kustody_iphistory::PodFacts;

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::writer::now_ns;

/// Watches until the runtime stops: three watchers (pods, nodes, Services), each retried with
/// backoff on errors.
pub async fn run(client: kube::Client, identity: Arc<Identity>, metrics: Arc<Metrics>) {
    let pods = watch_kind::<Pod>(Api::all(client.clone()), identity.clone(), metrics.clone(), None, pod_change);
    let nodes =
        watch_kind::<Node>(Api::all(client.clone()), identity.clone(), metrics.clone(), Some("Node"), node_change);
    let services = watch_kind::<Service>(Api::all(client), identity, metrics, Some("Service"), service_change);
    tokio::join!(pods, nodes, services);
}

/// What one object means for the history.
enum Change {
    /// It holds these IPs now.
    Holds(PodFacts),
    /// It gave its IPs back (a finished pod): (namespace, name, uid).
    Released(String, String, String),
    Nothing,
}

async fn watch_kind<K>(
    api: Api<K>,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    kind: Option<&'static str>,
    change: fn(&K) -> Change,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let what = kind.unwrap_or("Pod");
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    // uids listed since the last Init
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(e) => e,
            Err(e) => {
                metrics.watch_errors.fetch_add(1, Relaxed);
                tracing::warn!(kind = what, error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        let now = now_ns();
        match ev {
            Event::Init => {
                listed.clear();
                metrics.watch_relists.fetch_add(1, Relaxed);
            }
            Event::InitApply(obj) => {
                metrics.watch_events.fetch_add(1, Relaxed);
                if let Some(uid) = apply(&identity, change(&obj), now) {
                    listed.insert(uid);
                }
            }
            Event::InitDone => {
                let closed = identity.close_missing(&listed, kind, now);
                metrics.watch_closed_by_relist.fetch_add(closed as u64, Relaxed);
                if closed > 0 {
                    tracing::info!(kind = what, closed, "holds ended: objects deleted while not watched");
                }
                listed.clear();
            }
            Event::Apply(obj) => {
                metrics.watch_events.fetch_add(1, Relaxed);
                apply(&identity, change(&obj), now);
            }
            Event::Delete(obj) => {
                metrics.watch_events.fetch_add(1, Relaxed);
                let m = obj.meta();
                let uid = m.uid.clone().map(|u| uid_of(kind, &u));
                identity.deleted(
                    m.namespace.as_deref().unwrap_or_default(),
                    &name_of(kind, m.name.as_deref().unwrap_or_default()),
                    uid.as_deref(),
                    now,
                );
            }
        }
    }
}

/// Applies a change; returns the uid of an object that still holds its IPs.
fn apply(identity: &Identity, c: Change, now: i64) -> Option<String> {
    match c {
        Change::Holds(f) => {
            let uid = f.uid.clone();
            identity.observe(&f, now);
            Some(uid)
        }
        Change::Released(ns, name, uid) => {
            identity.deleted(&ns, &name, Some(&uid), now);
            None
        }
        Change::Nothing => None,
    }
}

/// Nodes and Services share the history with pods: their uids are prefixed so they never
/// collide, and a node's name is `node/NAME`.
fn uid_of(kind: Option<&str>, uid: &str) -> String {
    match kind {
        Some(k) => format!("{}:{uid}", k.to_ascii_lowercase()),
        None => uid.to_owned(),
    }
}

fn name_of(kind: Option<&str>, name: &str) -> String {
    match kind {
        Some("Node") => format!("node/{name}"),
        _ => name.to_owned(),
    }
}

fn pod_change(p: &Pod) -> Change {
    let Ok(raw) = serde_json::to_string(p) else { return Change::Nothing };
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        let m = &p.metadata;
        return match (&m.namespace, &m.name, &m.uid) {
            (Some(ns), Some(n), Some(u)) => Change::Released(ns.clone(), n.clone(), u.clone()),
            _ => Change::Nothing,
        };
    }
    kustody_iphistory::extract::pod_facts(&raw).map_or(Change::Nothing, Change::Holds)
}

fn node_change(n: &Node) -> Change {
    let (Some(name), Some(uid)) = (&n.metadata.name, &n.metadata.uid) else { return Change::Nothing };
    let ips: Vec<String> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
                .map(|a| a.address.clone())
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        return Change::Nothing;
    }
    Change::Holds(PodFacts {
        namespace: String::new(),
        name: name_of(Some("Node"), name),
        uid: uid_of(Some("Node"), uid),
        ips,
        node: Some(name.clone()),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        kind: Some("Node".into()),
        ..Default::default()
    })
}

fn service_change(s: &Service) -> Change {
    let m = &s.metadata;
    let (Some(ns), Some(name), Some(uid)) = (&m.namespace, &m.name, &m.uid) else { return Change::Nothing };
    let spec = s.spec.as_ref();
    let mut ips: Vec<String> = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.and_then(|s| s.cluster_ip.clone()));
    }
    ips.retain(|i| !i.is_empty() && i != "None");
    if ips.is_empty() {
        return Change::Nothing;
    }
    Change::Holds(PodFacts {
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid_of(Some("Service"), uid),
        ips,
        labels: m.labels.clone().unwrap_or_default(),
        kind: Some("Service".into()),
        ..Default::default()
    })
}
