//! Planning a quarantine: which labels go, which policies are created or changed, the pod patch
//! with its record, the node. Each step is a function; [`quarantine`] puts them in the safe order.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kustody_cluster::select::{self, Labels};
use serde_json::{json, Value};

use super::policies::{
    deny_all_policy, dns_policy, ensure_policy, honeypot_egress_policy, honeypot_ingress_policy, np_access, np_path,
};
use super::{
    existing_record, honeypot_ingress_name, honeypot_policy_name, is_managed, is_ours, name_of, policy_selects,
    quarantine_labels, refusals, Access, Actor, Honeypot, Options, Plan, Record, Request, Snapshot, Step, ANNOTATION,
    EXCLUDES_ANNOTATION, LABEL, POLICY_DENY, POLICY_DNS,
};

/// Plan a quarantine of `snap.pod`. `actor` and `now` (RFC 3339) go into the record.
pub fn quarantine(snap: &Snapshot, opts: &Options, actor: &Actor, now: &str) -> Plan {
    let pod = &snap.pod;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = name_of(&pod.metadata);
    let mut plan = Plan { namespace: ns.clone(), pod: name.clone(), ..Plan::default() };
    plan.refusals = refusals(pod);
    let existing = match existing_record(pod) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            plan.warnings.push(format!("{e}; it will be replaced"));
            None
        }
        None => None,
    };
    if let Some(r) = &existing {
        plan.mode_change = mode_change(r, opts);
        if let Some(c) = &plan.mode_change {
            plan.warnings.push(c.to_string());
        }
    }
    let current: Labels = pod.metadata.labels.clone().unwrap_or_default();
    let original: Labels = existing.as_ref().map_or_else(|| current.clone(), |r| r.original_labels.clone());
    let escape = escape_selectors(snap, opts, &current, &mut plan.warnings);
    plan.final_labels = escape.labels.clone();
    let history = history(snap, existing.as_ref(), &original);
    plan.owners = history.owners.clone();

    // 1. Our policies, then the honeypot side; 2. other teams' policies that labels cannot escape.
    let mut requests = Vec::new();
    let policies = our_policies(snap, opts, &ns, &mut plan, &mut requests);
    for p in snap.policies.iter().filter(|p| escape.excluded.contains(&name_of(&p.metadata))) {
        requests.push(exclusion(&ns, p));
    }

    // 3. The pod: labels, record, controller ownerReference.
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let node_unschedulable =
        snap.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.unschedulable).unwrap_or(false);
    let mut record = existing.clone().unwrap_or_else(|| Record {
        version: 1,
        at: now.to_owned(),
        by: actor.username.clone(),
        reason: opts.reason.clone(),
        original_labels: original.clone(),
        owner_references: history.owner_refs.clone(),
        node: node_name.clone(),
        node_was_unschedulable: node_unschedulable,
        ..Record::default()
    });
    let union = |a: &[String], b: &[String]| -> Vec<String> {
        let s: BTreeSet<String> = a.iter().chain(b).cloned().collect();
        s.into_iter().collect()
    };
    record.removed_labels = union(&record.removed_labels, &escape.removed.iter().cloned().collect::<Vec<_>>());
    record.controllers = union(&record.controllers, &history.controllers);
    record.services = union(&record.services, &history.services);
    record.network_policies = union(&record.network_policies, &history.policies);
    record.excluded_policies = union(&record.excluded_policies, &escape.excluded.iter().cloned().collect::<Vec<_>>());
    record.policies = policies;
    record.allow_dns = opts.allow_dns;
    record.honeypot = opts.honeypot.as_ref().map(Honeypot::spec);
    record.cordoned = record.cordoned || (opts.cordon && node_name.is_some());
    if opts.reason.is_some() && existing.is_some() && record.reason != opts.reason {
        record.reason = match &record.reason {
            Some(r) => Some(format!("{r}; {}", opts.reason.clone().unwrap_or_default())),
            None => opts.reason.clone(),
        };
    }
    let record_changed = existing.as_ref().is_none_or(|e| {
        let mut a = e.clone();
        let mut b = record.clone();
        a.updated_at = None;
        a.updated_by = None;
        b.updated_at = None;
        b.updated_by = None;
        a != b
    });
    if existing.is_some() && record_changed {
        record.updated_at = Some(now.to_owned());
        record.updated_by = Some(actor.username.clone());
    }
    if let Some(r) = pod_patch(pod, &current, &escape, &record, record_changed) {
        requests.push(r);
    }

    // 4. The node.
    if opts.cordon {
        match (&node_name, node_unschedulable) {
            (None, _) => plan.warnings.push("--cordon: the pod is not scheduled on a node".into()),
            (Some(_), true) => {}
            (Some(n), false) => requests.push(Request {
                method: "PATCH".into(),
                path: format!("/api/v1/nodes/{n}"),
                content_type: Some("application/merge-patch+json".into()),
                body: Some(json!({"spec": {"unschedulable": true}})),
                purpose: format!("cordon node {n}: no new pods are scheduled there"),
                step: Step::Node,
                access: Access {
                    verb: "patch".into(),
                    resource: "nodes".into(),
                    name: Some(n.clone()),
                    ..Access::default()
                },
            }),
        }
    }
    plan.requests = requests;
    plan.record = record;
    plan.existing = existing;
    plan
}

/// A repeated quarantine whose mode differs from the one in effect: what it replaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModeChange {
    /// The mode in effect (`deny-all`, `deny-all+dns`, `deny-all+honeypot NS/SEL`, …).
    pub from: String,
    pub to: String,
    /// What the pod loses, in words (`DNS egress`, `egress to the honeypot NS/SEL`).
    pub dropped: Vec<String>,
}

impl std::fmt::Display for ModeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the pod is already quarantined as {}; this run replaces that with {}", self.from, self.to)?;
        if !self.dropped.is_empty() {
            write!(f, ": the pod loses {}", self.dropped.join(" and "))?;
        }
        f.write_str(" (repeat the earlier options to keep them)")
    }
}

/// The mode of a record or of options, as `quarantine --list` shows it.
pub fn mode_text(allow_dns: bool, honeypot: Option<&str>) -> String {
    let mut m = "deny-all".to_owned();
    if allow_dns {
        m.push_str("+dns");
    }
    if let Some(h) = honeypot {
        m.push_str(&format!("+honeypot {h}"));
    }
    m
}

fn mode_change(existing: &Record, opts: &Options) -> Option<ModeChange> {
    let want_h = opts.honeypot.as_ref().map(Honeypot::spec);
    if existing.allow_dns == opts.allow_dns && existing.honeypot == want_h {
        return None;
    }
    let mut dropped = Vec::new();
    if existing.allow_dns && !opts.allow_dns {
        dropped.push("DNS egress".to_owned());
    }
    if let Some(h) = existing.honeypot.as_ref().filter(|h| want_h.as_ref() != Some(*h)) {
        dropped.push(format!("egress to the honeypot {h}"));
    }
    Some(ModeChange {
        from: mode_text(existing.allow_dns, existing.honeypot.as_deref()),
        to: mode_text(opts.allow_dns, want_h.as_deref()),
        dropped,
    })
}

/// The pod's labels after quarantine, the keys removed, and the policies no label removal escapes.
struct Escape {
    labels: Labels,
    removed: BTreeSet<String>,
    excluded: BTreeSet<String>,
}

/// Labels after quarantine: current minus the keys every Service, controller and other policy
/// selects it by, plus ours (stale ours replaced). Removing labels can make a
/// `NotIn`/`DoesNotExist` selector match, so this repeats until nothing changes.
fn escape_selectors(snap: &Snapshot, opts: &Options, current: &Labels, warnings: &mut Vec<String>) -> Escape {
    let mut labels: Labels = current.iter().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.extend(quarantine_labels(opts));
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let drop_keys = |keys: Vec<String>, labels: &mut Labels, removed: &mut BTreeSet<String>| -> bool {
        let keys: Vec<String> = keys.into_iter().filter(|k| !is_ours(k) && labels.contains_key(k)).collect();
        for k in &keys {
            labels.remove(k);
            removed.insert(k.clone());
        }
        !keys.is_empty()
    };
    for _ in 0..8 {
        let mut changed = false;
        for s in &snap.services {
            let sel = s.spec.as_ref().and_then(|x| x.selector.as_ref());
            if select::service_matches(sel, &labels) {
                changed |=
                    drop_keys(sel.map(|m| m.keys().cloned().collect()).unwrap_or_default(), &mut labels, &mut removed);
            }
        }
        for w in &snap.workloads {
            if select::matches_opt(w.selector.as_ref(), &labels) {
                let keys = w.selector.as_ref().map(select::required_keys).unwrap_or_default();
                if drop_keys(keys, &mut labels, &mut removed) {
                    changed = true;
                } else if warned.insert(w.id()) {
                    warnings.push(format!(
                        "{} selects the pod with a selector that removing labels cannot escape: it may adopt the pod again",
                        w.id()
                    ));
                }
            }
        }
        for p in snap.policies.iter().filter(|p| !is_managed(p)) {
            let pname = name_of(&p.metadata);
            if excluded.contains(&pname) || !policy_selects(p, &labels) {
                continue;
            }
            let keys = p
                .spec
                .as_ref()
                .map(|s| select::required_keys(&s.pod_selector.clone().unwrap_or_default()))
                .unwrap_or_default();
            if !drop_keys(keys, &mut labels, &mut removed) {
                excluded.insert(pname);
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
    Escape { labels, removed, excluded }
}

/// Who selected or owned the pod before quarantine (for the record and for verification).
struct History {
    services: Vec<String>,
    policies: Vec<String>,
    owner_refs: Vec<Value>,
    owners: Vec<super::Workload>,
    controllers: Vec<String>,
}

fn history(snap: &Snapshot, existing: Option<&Record>, original: &Labels) -> History {
    let pod = &snap.pod;
    let services = snap
        .services
        .iter()
        .filter(|s| select::service_matches(s.spec.as_ref().and_then(|x| x.selector.as_ref()), original))
        .map(|s| name_of(&s.metadata))
        .collect();
    let policies = snap
        .policies
        .iter()
        .filter(|p| !is_managed(p) && policy_selects(p, original))
        .map(|p| name_of(&p.metadata))
        .collect();
    let owner_refs: Vec<Value> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
        .collect();
    // the controller that owned the pod, now or (on a repeated quarantine) before the first one
    let mut owner_uids: BTreeSet<&str> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
        .collect();
    for o in existing.iter().flat_map(|r| &r.owner_references) {
        if o["controller"].as_bool() == Some(true) {
            owner_uids.extend(o["uid"].as_str());
        }
    }
    let owners = snap.workloads.iter().filter(|w| owner_uids.contains(w.uid.as_str())).cloned().collect();
    let mut controllers: Vec<String> = Vec::new();
    for w in &snap.workloads {
        if owner_uids.contains(w.uid.as_str()) || select::matches_opt(w.selector.as_ref(), original) {
            controllers.push(w.id());
            if let Some(o) = &w.owner {
                controllers.push(o.clone());
            }
        }
    }
    for o in pod.metadata.owner_references.iter().flatten() {
        let id = format!("{}/{}", o.kind, o.name);
        if o.controller == Some(true) && !controllers.contains(&id) {
            controllers.push(id);
        }
    }
    controllers.dedup();
    History { services, policies, owner_refs, owners, controllers }
}

/// Step 1: kustody's policies (deny-all, DNS, honeypot egress and, when needed, the honeypot's
/// ingress). Returns the names of the policies in effect for the pod.
fn our_policies(
    snap: &Snapshot,
    opts: &Options,
    ns: &str,
    plan: &mut Plan,
    requests: &mut Vec<Request>,
) -> Vec<String> {
    let mut policies = vec![POLICY_DENY.to_owned()];
    ensure_policy(&snap.policies, deny_all_policy(ns), "deny all ingress and egress", requests);
    if opts.allow_dns {
        policies.push(POLICY_DNS.into());
        ensure_policy(&snap.policies, dns_policy(ns), "allow DNS to kube-system/k8s-app=kube-dns", requests);
    }
    if let Some(h) = &opts.honeypot {
        policies.push(honeypot_policy_name(&h.id()));
        ensure_policy(&snap.policies, honeypot_egress_policy(ns, h), &format!("egress only to {}", h.spec()), requests);
        honeypot_side(snap, ns, h, plan, requests);
        if !snap.honeypot_namespace_exists {
            plan.errors.push(format!("the honeypot namespace `{}` does not exist", h.namespace));
        } else if snap.honeypot_pods == 0 {
            plan.warnings.push(format!("no pod matches the honeypot {}: the pod's egress goes nowhere", h.spec()));
        }
    }
    policies
}

/// Does a NetworkPolicy isolate pods with `labels` for ingress (selects them, `Ingress` among
/// its policy types, which is the default)?
fn isolates_ingress(p: &NetworkPolicy, labels: &Labels) -> bool {
    let ingress =
        p.spec.as_ref().is_some_and(|s| s.policy_types.as_ref().is_none_or(|t| t.iter().any(|x| x == "Ingress")));
    ingress && policy_selects(p, labels)
}

/// The honeypot side. A NetworkPolicy selecting the honeypot's pods makes them isolated for
/// ingress, so creating one where none isolated them would cut every other client off the
/// honeypot. kustody therefore adds its ingress policy (one more allowed peer: the quarantined
/// pods) only when every honeypot pod is already isolated for ingress by other policies; where
/// the honeypot accepts everyone, it already accepts the quarantined pod, and nothing is created
/// there. The plan says which.
fn honeypot_side(snap: &Snapshot, ns: &str, h: &Honeypot, plan: &mut Plan, requests: &mut Vec<Request>) {
    let name = honeypot_ingress_name(ns, &h.id());
    let others: Vec<&NetworkPolicy> = snap.honeypot_policies.iter().filter(|p| !is_managed(p)).collect();
    // the honeypot pods' labels; without pods, what the selector requires stands for them
    let pods: Vec<Labels> = if snap.honeypot_pod_labels.is_empty() {
        vec![h.selector.clone().unwrap_or_default()]
    } else {
        snap.honeypot_pod_labels.clone()
    };
    let isolated = pods.iter().filter(|l| others.iter().any(|p| isolates_ingress(p, l))).count();
    if snap.honeypot_namespace_exists && isolated == pods.len() {
        plan.honeypot_ingress = Some(format!(
            "the honeypot's pods are already isolated for ingress by their own NetworkPolicies: kustody adds \
             {}/{name}, admitting the quarantined pods as one more peer; every client the honeypot accepted \
             before is still accepted",
            h.namespace
        ));
        ensure_policy(
            &snap.honeypot_policies,
            honeypot_ingress_policy(ns, h),
            "let the quarantined pod reach the honeypot (its other clients keep their access)",
            requests,
        );
        return;
    }
    plan.honeypot_ingress = Some(format!(
        "no NetworkPolicy restricts ingress to {}the honeypot's pods: they accept the quarantined pod as they \
         accept everyone, so kustody creates no policy in namespace {} (one would cut every other client off \
         the honeypot)",
        if isolated > 0 { "some of " } else { "" },
        h.namespace
    ));
    if isolated > 0 {
        plan.warnings.push(format!(
            "{isolated} of {} honeypot pods are isolated for ingress by their own policies and will not accept the \
             quarantined pod; the others accept everyone, so kustody adds no ingress policy in {}",
            pods.len(),
            h.namespace
        ));
    }
    // an ingress policy kustody created earlier cuts the other clients off: remove it
    if snap.honeypot_policies.iter().any(|p| is_managed(p) && p.metadata.name.as_deref() == Some(name.as_str())) {
        let mut r = super::policies::delete_policy(
            &h.namespace,
            &name,
            "it made the honeypot refuse every client but the quarantined pods",
        );
        r.step = Step::Policy;
        requests.push(r);
    }
}

/// Step 2: another team's policy that no label removal escapes stops selecting quarantined pods.
fn exclusion(ns: &str, p: &NetworkPolicy) -> Request {
    let pname = name_of(&p.metadata);
    let mut exprs: Vec<Value> = p
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref().and_then(|p| p.match_expressions.clone()))
        .unwrap_or_default()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    exprs.push(json!({"key": LABEL, "operator": "DoesNotExist"}));
    Request {
        method: "PATCH".into(),
        path: np_path(ns, Some(&pname)),
        content_type: Some("application/merge-patch+json".into()),
        body: Some(json!({"metadata": {"resourceVersion": p.metadata.resource_version,
            "annotations": {EXCLUDES_ANNOTATION: "true"}},
            "spec": {"podSelector": {"matchExpressions": exprs}}})),
        purpose: format!(
            "NetworkPolicy {ns}/{pname} selects the pod by a selector no label removal escapes: add `{LABEL} DoesNotExist` to it (reverted by release)"
        ),
        step: Step::Exclusion,
        access: np_access("patch", ns, Some(&pname)),
    }
}

/// Step 3: the pod's one merge patch (labels, record, controller reference), when anything changes.
fn pod_patch(pod: &Pod, current: &Labels, escape: &Escape, record: &Record, record_changed: bool) -> Option<Request> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = name_of(&pod.metadata);
    let labels = &escape.labels;
    let controller_refs = pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
    if labels == current && !controller_refs && !record_changed {
        return None;
    }
    let mut label_patch = serde_json::Map::new();
    for k in current.keys().filter(|k| !labels.contains_key(*k)) {
        label_patch.insert(k.clone(), Value::Null);
    }
    for (k, v) in labels.iter().filter(|(k, v)| current.get(*k) != Some(v)) {
        label_patch.insert(k.clone(), Value::String(v.clone()));
    }
    let kept: Vec<Value> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller != Some(true))
        .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
        .collect();
    let mut meta = json!({
        "resourceVersion": pod.metadata.resource_version,
        "labels": label_patch,
        "annotations": {ANNOTATION: serde_json::to_string(record).unwrap_or_default()},
    });
    if controller_refs {
        meta["ownerReferences"] = if kept.is_empty() { Value::Null } else { Value::Array(kept) };
    }
    let what = if escape.removed.is_empty() {
        "label it quarantined".to_owned()
    } else {
        format!(
            "label it quarantined and remove the labels {} that select it",
            escape.removed.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Some(Request {
        method: "PATCH".into(),
        path: format!("/api/v1/namespaces/{ns}/pods/{name}"),
        content_type: Some("application/merge-patch+json".into()),
        body: Some(json!({"metadata": meta})),
        purpose: format!(
            "pod {ns}/{name}: {what}{}; record the original state in annotation {ANNOTATION}",
            if controller_refs { ", release it from its controller" } else { "" }
        ),
        step: Step::Pod,
        access: Access {
            verb: "patch".into(),
            resource: "pods".into(),
            namespace: Some(ns),
            name: Some(name),
            ..Access::default()
        },
    })
}
