//! Planning a release: the pod first (so a failure leaves it still isolated), then the policies
//! no quarantined pod needs any more, then the node; and what happens to the pod afterwards.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use kustody_cluster::select::{self, Labels};
use serde_json::{json, Value};

use super::policies::{delete_policy, np_access, np_path};
use super::{
    existing_record, honeypot_ingress_name, is_managed, is_ours, name_of, Access, Actor, ReleaseOptions, ReleasePlan,
    ReleaseSnapshot, Request, Step, Workload, ANNOTATION, EXCLUDES_ANNOTATION, LABEL, LABEL_DNS, LABEL_HONEYPOT,
    POLICY_DENY, POLICY_DNS, RELEASED_ANNOTATION,
};

/// What happens to the pod after release.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Next {
    /// Nothing to release.
    #[default]
    Nothing,
    /// No controller selects the pod's labels after release: it keeps running, unowned, until
    /// someone deletes it.
    StaysUnowned,
    /// Controllers select the pod's labels again (after `--restore-labels`): the first adopts it
    /// and, one pod over its count, deletes a surplus replica.
    Adopted {
        /// `Kind/name` of the selecting controllers.
        controllers: Vec<String>,
        /// The adopting controller's uid.
        uid: String,
        /// Its kind (`ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, …).
        controller_kind: String,
        /// Its desired replicas, where it has such a count.
        replicas: Option<i32>,
        /// The pods it owned, not terminating, when the release was planned.
        owned_before: Vec<String>,
    },
}

impl Next {
    /// In words, for the plan and the output.
    pub fn describe(&self, pod: &str) -> String {
        match self {
            Next::Nothing => format!("pod/{pod} is not quarantined"),
            Next::StaysUnowned => format!(
                "pod/{pod} keeps running, unowned: no controller selects its labels, so nothing adopts, replaces or \
                 deletes it; delete it when the analysis is done (--restore-labels hands it back to its controller instead)"
            ),
            Next::Adopted { controllers, controller_kind, .. } => {
                let by = controllers.first().cloned().unwrap_or_default();
                let then = match controller_kind.as_str() {
                    "ReplicaSet" => {
                        "then, one pod over its count, deletes a surplus replica: normally the newest, the replacement \
                         it started during the quarantine (possibly this pod)"
                    }
                    "DaemonSet" => "then deletes one of its two pods on the node (possibly this pod)",
                    "StatefulSet" => "which had run one short while the pod was quarantined",
                    _ => "and its own logic decides what happens to its other pods",
                };
                format!("{by} selects pod/{pod} again: it adopts the pod {then}")
            }
        }
    }
}

/// Plan a release: the pod first (so a failure leaves it still isolated), then the policies no
/// quarantined pod needs any more, then the node.
pub fn release(snap: &ReleaseSnapshot, opts: &ReleaseOptions, actor: &Actor, now: &str) -> ReleasePlan {
    let pod = &snap.pod;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = name_of(&pod.metadata);
    let mut plan = ReleasePlan { namespace: ns.clone(), pod: name.clone(), ..ReleasePlan::default() };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let record = match existing_record(pod) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            plan.warnings.push(e.to_string());
            None
        }
        None => None,
    };
    let has_label = labels.keys().any(|k| is_ours(k));
    if record.is_none() && !has_label {
        return plan;
    }
    let mut label_patch = serde_json::Map::new();
    let mut after: Labels = labels.iter().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for k in labels.keys().filter(|k| is_ours(k)) {
        label_patch.insert(k.clone(), Value::Null);
    }
    if opts.restore_labels {
        match &record {
            Some(r) => {
                for k in &r.removed_labels {
                    if let (Some(v), None) = (r.original_labels.get(k), labels.get(k)) {
                        label_patch.insert(k.clone(), Value::String(v.clone()));
                        after.insert(k.clone(), v.clone());
                    }
                }
            }
            None => plan.warnings.push("--restore-labels: no quarantine record on the pod, nothing to restore".into()),
        }
    }
    plan.next = next(snap, &after);
    let released = json!({"at": now, "by": actor.username, "reason": opts.reason,
        "quarantinedAt": record.as_ref().map(|r| r.at.clone()), "quarantinedBy": record.as_ref().map(|r| r.by.clone())});
    plan.requests.push(Request {
        method: "PATCH".into(),
        path: format!("/api/v1/namespaces/{ns}/pods/{name}"),
        content_type: Some("application/merge-patch+json".into()),
        body: Some(json!({"metadata": {"resourceVersion": pod.metadata.resource_version, "labels": label_patch,
            "annotations": {ANNOTATION: null, RELEASED_ANNOTATION: released.to_string()}}})),
        purpose: format!(
            "pod {ns}/{name}: remove the quarantine labels{}",
            if opts.restore_labels { " and restore the original ones" } else { "" }
        ),
        step: Step::Pod,
        access: Access {
            verb: "patch".into(),
            resource: "pods".into(),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            ..Access::default()
        },
    });
    cleanup(snap, &ns, &mut plan.requests);
    if opts.uncordon {
        uncordon(snap, record.as_ref(), &mut plan);
    }
    plan.final_labels = after;
    plan.record = record;
    plan
}

/// Which controller, if any, selects the released pod's labels (`after`).
fn next(snap: &ReleaseSnapshot, after: &Labels) -> Next {
    let selecting: Vec<&Workload> =
        snap.workloads.iter().filter(|w| select::matches_opt(w.selector.as_ref(), after)).collect();
    // a Deployment acts through its ReplicaSet: the one that adopts is the one that is not owned by another selecting workload
    let Some(first) = selecting.iter().find(|w| w.kind != "Deployment").or(selecting.first()) else {
        return Next::StaysUnowned;
    };
    let owned_before = snap
        .pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == first.uid)
        })
        .map(|p| name_of(&p.metadata))
        .collect();
    let mut controllers: Vec<String> = vec![first.id()];
    controllers.extend(selecting.iter().map(|w| w.id()).filter(|id| *id != first.id()));
    Next::Adopted {
        controllers,
        uid: first.uid.clone(),
        controller_kind: first.kind.clone(),
        replicas: first.replicas,
        owned_before,
    }
}

/// kustody's policies no remaining quarantined pod of the namespace needs, and the exclusions
/// added to other teams' policies when none is left.
fn cleanup(snap: &ReleaseSnapshot, ns: &str, requests: &mut Vec<Request>) {
    let others: Vec<Labels> =
        snap.other_quarantined.iter().map(|p| p.metadata.labels.clone().unwrap_or_default()).collect();
    let exists = |n: &str| snap.policies.iter().any(|p| p.metadata.name.as_deref() == Some(n));
    if others.is_empty() {
        if exists(POLICY_DENY) {
            requests.push(delete_policy(ns, POLICY_DENY, "no quarantined pod is left in the namespace"));
        }
        for p in snap.policies.iter().filter(|p| {
            p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(EXCLUDES_ANNOTATION)) && !is_managed(p)
        }) {
            let pname = name_of(&p.metadata);
            let exprs: Vec<Value> = p
                .spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref().and_then(|p| p.match_expressions.clone()))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| !(e.key == LABEL && e.operator == "DoesNotExist"))
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect();
            requests.push(Request {
                method: "PATCH".into(),
                path: np_path(ns, Some(&pname)),
                content_type: Some("application/merge-patch+json".into()),
                body: Some(json!({"metadata": {"resourceVersion": p.metadata.resource_version,
                    "annotations": {EXCLUDES_ANNOTATION: null}},
                    "spec": {"podSelector": {"matchExpressions": if exprs.is_empty() { Value::Null } else { Value::Array(exprs) }}}})),
                purpose: format!("NetworkPolicy {ns}/{pname}: remove the `{LABEL} DoesNotExist` kustody added"),
                step: Step::Cleanup,
                access: np_access("patch", ns, Some(&pname)),
            });
        }
    }
    if exists(POLICY_DNS) && !others.iter().any(|l| l.contains_key(LABEL_DNS)) {
        requests.push(delete_policy(ns, POLICY_DNS, "no quarantined pod in the namespace uses DNS"));
    }
    for p in snap.policies.iter().filter(|p| is_managed(p)) {
        let pname = name_of(&p.metadata);
        let Some(id) = pname.strip_prefix("kustody-quarantine-honeypot-") else { continue };
        if others.iter().any(|l| l.get(LABEL_HONEYPOT).map(String::as_str) == Some(id)) {
            continue;
        }
        requests.push(delete_policy(ns, &pname, "no quarantined pod in the namespace uses this honeypot"));
        let ingress = honeypot_ingress_name(ns, id);
        if let Some(hp) = snap.honeypot_policies.iter().find(|p| p.metadata.name.as_deref() == Some(ingress.as_str())) {
            let hns = hp.metadata.namespace.clone().unwrap_or_default();
            requests.push(delete_policy(
                &hns,
                &ingress,
                "the honeypot's ingress for this namespace is no longer needed",
            ));
        }
    }
}

/// `--uncordon`: the node, only if this quarantine cordoned it.
fn uncordon(snap: &ReleaseSnapshot, record: Option<&super::Record>, plan: &mut ReleasePlan) {
    let cordoned_by_us = record.is_some_and(|r| r.cordoned && !r.node_was_unschedulable);
    let unschedulable = snap.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.unschedulable).unwrap_or(false);
    match (record.and_then(|r| r.node.clone()), cordoned_by_us, unschedulable) {
        (Some(n), true, true) => plan.requests.push(Request {
            method: "PATCH".into(),
            path: format!("/api/v1/nodes/{n}"),
            content_type: Some("application/merge-patch+json".into()),
            body: Some(json!({"spec": {"unschedulable": null}})),
            purpose: format!("uncordon node {n}, which the quarantine cordoned"),
            step: Step::Node,
            access: Access { verb: "patch".into(), resource: "nodes".into(), name: Some(n), ..Access::default() },
        }),
        (Some(n), false, true) => {
            plan.warnings.push(format!("--uncordon: node {n} was not cordoned by this quarantine; leaving it cordoned"))
        }
        _ => {}
    }
}
