//! Pod observations in audit events: the bodies of pod requests and responses (a Pod, or a
//! PodList's items) and pod deletions.

use std::collections::BTreeMap;

use kustody_model::rawjson::{items, pointer, text};
use kustody_model::Event;

use crate::PodFacts;

/// What an event says about pods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub pods: Vec<PodFacts>,
    /// (namespace, name, uid) of pods deleted.
    pub deleted: Vec<(String, String, Option<String>)>,
}

fn s(raw: &str, path: &[&str]) -> Option<String> {
    pointer(raw, path).filter(|v| v.starts_with('"')).and_then(text).map(|c| c.into_owned())
}

/// The facts of one Pod object's JSON, when it has an IP and still holds it (a pod that
/// Succeeded or Failed keeps showing an IP that may already be another pod's).
pub fn pod_facts(raw: &str) -> Option<PodFacts> {
    // Most pod bodies (creations, specs) carry no IP yet: one substring scan instead of the
    // pointer walks below (hunt reads every pod body of a log).
    if !has_ip(raw) {
        return None;
    }
    if matches!(s(raw, &["status", "phase"]).as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<String> = pointer(raw, &["status", "podIPs"])
        .and_then(items)
        .map(|v| v.iter().filter_map(|i| s(i, &["ip"])).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(s(raw, &["status", "podIP"]));
    }
    ips.retain(|i| !i.is_empty());
    if ips.is_empty() {
        return None;
    }
    let owner = pointer(raw, &["metadata", "ownerReferences"]).and_then(items).and_then(|refs| {
        refs.iter()
            .find(|r| pointer(r, &["controller"]) == Some("true"))
            .or_else(|| refs.first())
            .and_then(|r| Some(format!("{}/{}", s(r, &["kind"])?, s(r, &["name"])?)))
    });
    let labels: BTreeMap<String, String> = pointer(raw, &["metadata", "labels"])
        .and_then(kustody_model::rawjson::keys)
        .map(|keys| keys.iter().filter_map(|k| Some((k.to_string(), s(raw, &["metadata", "labels", k])?))).collect())
        .unwrap_or_default();
    let mut containers = Vec::new();
    for list in ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"] {
        for st in pointer(raw, &["status", list]).and_then(items).unwrap_or_default() {
            if let Some(id) = s(st, &["containerID"]) {
                let id = id.rsplit("://").next().unwrap_or(&id).to_owned();
                if !id.is_empty() && containers.len() < 64 {
                    containers.push(id);
                }
            }
        }
    }
    Some(PodFacts {
        containers,
        namespace: s(raw, &["metadata", "namespace"]).unwrap_or_default(),
        name: s(raw, &["metadata", "name"])?,
        uid: s(raw, &["metadata", "uid"]).unwrap_or_default(),
        ips,
        node: s(raw, &["spec", "nodeName"]).filter(|n| !n.is_empty()),
        service_account: s(raw, &["spec", "serviceAccountName"]),
        owner,
        labels,
        host_network: pointer(raw, &["spec", "hostNetwork"]) == Some("true"),
        kind: None,
    })
}

/// Whether a pod (or pod list) body mentions an IP at all.
fn has_ip(raw: &str) -> bool {
    raw.contains("\"podIP")
}

/// Pods an audit event shows (bodies of pod requests and responses), and pods it deleted.
pub fn seen(ev: &Event<'_>) -> Seen {
    let mut out = Seen::default();
    let Some(o) = ev.object_ref() else { return out };
    if o.resource.as_deref() != Some("pods") {
        return out;
    }
    let sub = o.subresource.as_deref();
    if !matches!(sub, None | Some("status")) {
        return out;
    }
    let ok = ev.response_status().and_then(|r| r.code).is_none_or(|c| (200..300).contains(&c));
    if !ok {
        return out;
    }
    if ev.verb() == Some("delete") && sub.is_none() {
        if let (Some(ns), Some(name)) = (o.namespace.as_deref(), o.name.as_deref()) {
            let uid = ev.response_object_raw().and_then(|r| s(r, &["metadata", "uid"]));
            out.deleted.push((ns.to_owned(), name.to_owned(), uid));
        }
        return out;
    }
    // A dry run changed nothing.
    if ev.request_uri().is_some_and(|u| u.contains("dryRun=")) {
        return out;
    }
    // What the apiserver answered is what it stored. A request body is the client's word: only
    // a node's own status report (the kubelet's) is taken from it, when no response body is.
    let kubelet = sub == Some("status")
        && ev.user().and_then(|u| u.username.as_deref()).is_some_and(|u| u.starts_with("system:node:"));
    let bodies = [Some(ev.response_object_raw()), kubelet.then(|| ev.request_object_raw())];
    for raw in bodies.into_iter().flatten().flatten() {
        if !has_ip(raw) {
            continue;
        }
        match s(raw, &["kind"]).as_deref() {
            Some("PodList") => {
                for item in pointer(raw, &["items"]).and_then(items).unwrap_or_default() {
                    out.pods.extend(pod_facts(item));
                }
            }
            _ => out.pods.extend(pod_facts(raw)),
        }
        if !out.pods.is_empty() {
            break;
        }
    }
    // A status patch's request body may lack metadata: name it from objectRef.
    for p in &mut out.pods {
        if p.namespace.is_empty() {
            p.namespace = o.namespace.clone().map(|c| c.into_owned()).unwrap_or_default();
        }
    }
    out
}
