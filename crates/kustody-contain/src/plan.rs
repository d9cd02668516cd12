//! Planning quarantine and release: from a snapshot of the cluster objects around a pod to the
//! exact list of API requests. No I/O here, so every decision is unit-testable and `--dry-run`
//! prints exactly what `apply` would send.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kustody_cluster::select::{self, Labels};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;

/// The label every quarantined pod carries; the deny-all policy selects it.
pub const LABEL: &str = "kustody.io/quarantined";
/// Quarantined pods that may resolve names carry this; the DNS egress policy selects it.
pub const LABEL_DNS: &str = "kustody.io/quarantine-dns";
/// Quarantined pods that may talk to a honeypot carry the honeypot's id under this key.
pub const LABEL_HONEYPOT: &str = "kustody.io/quarantine-honeypot";
/// The quarantine record (JSON) on the pod.
pub const ANNOTATION: &str = "kustody.io/quarantine";
/// The last release (JSON) on the pod.
pub const RELEASED_ANNOTATION: &str = "kustody.io/released";
/// On another team's NetworkPolicy that kustody changed to stop selecting quarantined pods.
pub const EXCLUDES_ANNOTATION: &str = "kustody.io/excludes-quarantined";
/// The deny-all ingress+egress policy, one per namespace.
pub const POLICY_DENY: &str = "kustody-quarantine-deny-all";
/// Egress to cluster DNS only, for `--allow-dns`.
pub const POLICY_DNS: &str = "kustody-quarantine-allow-dns";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Labels that kustody itself sets; never removed as "selecting" labels.
fn is_ours(key: &str) -> bool {
    key == LABEL || key == LABEL_DNS || key == LABEL_HONEYPOT
}

/// `--honeypot NS[/SELECTOR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Honeypot {
    pub namespace: String,
    /// Equality selector (`app=trap,tier=x`); `None` = every pod in the namespace.
    pub selector: Option<BTreeMap<String, String>>,
}

impl Honeypot {
    pub fn parse(s: &str) -> Result<Honeypot, String> {
        let (ns, sel) = s.split_once('/').map_or((s, ""), |(n, q)| (n, q));
        if ns.is_empty()
            || ns.len() > 63
            || !ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!("--honeypot `{s}`: `{ns}` is not a namespace name (NS[/key=value,...])"));
        }
        let selector = select::parse_equality(sel).map_err(|e| format!("--honeypot: {e}"))?;
        Ok(Honeypot { namespace: ns.to_owned(), selector })
    }

    /// Canonical text, as stored in the record.
    pub fn spec(&self) -> String {
        match &self.selector {
            None => self.namespace.clone(),
            Some(m) => {
                let sel: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}/{}", self.namespace, sel.join(","))
            }
        }
    }

    /// A short stable id (label value and policy-name suffix).
    pub fn id(&self) -> String {
        let d = sha2::Sha256::digest(self.spec().as_bytes());
        d.iter().take(5).map(|b| format!("{b:02x}")).collect()
    }

    fn pod_selector(&self) -> Value {
        match &self.selector {
            None => json!({}),
            Some(m) => json!({"matchLabels": m}),
        }
    }
}

/// The egress-to-honeypot policy in the quarantined pod's namespace.
pub fn honeypot_policy_name(id: &str) -> String {
    format!("kustody-quarantine-honeypot-{id}")
}

/// The ingress policy on the honeypot's side, admitting quarantined pods of `source_ns`.
pub fn honeypot_ingress_name(source_ns: &str, id: &str) -> String {
    let mut ns = source_ns.to_owned();
    ns.truncate(200);
    format!("kustody-honeypot-from-{ns}-{id}")
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub reason: Option<String>,
    pub honeypot: Option<Honeypot>,
    pub allow_dns: bool,
    pub cordon: bool,
    pub force: bool,
}

/// A controller that owns or could adopt the pod.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `ReplicaSet`, `Deployment`, `DaemonSet`, `StatefulSet`, `Job`.
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub selector: Option<LabelSelector>,
    /// Desired replicas (ReplicaSet, StatefulSet).
    pub replicas: Option<i32>,
    /// The workload's own controller, `Kind/name` (a ReplicaSet's Deployment).
    pub owner: Option<String>,
}

impl Workload {
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

pub use kustody_cluster::identity::Actor;

/// Everything read from the cluster before planning.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pod: Pod,
    /// Services, NetworkPolicies and controllers in the pod's namespace.
    pub services: Vec<Service>,
    pub policies: Vec<NetworkPolicy>,
    pub workloads: Vec<Workload>,
    pub node: Option<Node>,
    /// NetworkPolicies in the honeypot namespace (with `--honeypot`).
    pub honeypot_policies: Vec<NetworkPolicy>,
    /// Pods the honeypot selector selects (with `--honeypot`).
    pub honeypot_pods: usize,
    /// Whether the honeypot namespace exists (with `--honeypot`).
    pub honeypot_namespace_exists: bool,
}

/// The quarantine record: stored as JSON in the pod's `kustody.io/quarantine` annotation and in
/// the action log. Field names are part of the documented format (docs/CONTAINMENT.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    /// RFC 3339 time of the first quarantine.
    pub at: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pod's labels before quarantine.
    pub original_labels: Labels,
    /// Keys removed so nothing selects the pod any more.
    pub removed_labels: Vec<String>,
    /// The pod's ownerReferences before quarantine.
    pub owner_references: Vec<Value>,
    /// `Kind/name` of the controllers that owned or selected it.
    pub controllers: Vec<String>,
    /// Services that selected it.
    pub services: Vec<String>,
    /// NetworkPolicies (other than kustody's) that selected it.
    pub network_policies: Vec<String>,
    /// Policies kustody changed to stop selecting quarantined pods (their selectors could not be
    /// escaped by removing labels).
    #[serde(default)]
    pub excluded_policies: Vec<String>,
    /// kustody's policies in effect for the pod.
    pub policies: Vec<String>,
    pub node: Option<String>,
    #[serde(default)]
    pub cordoned: bool,
    #[serde(default)]
    pub node_was_unschedulable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honeypot: Option<String>,
    #[serde(default)]
    pub allow_dns: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// One planned API request, in the order it is sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Why, in words.
    pub purpose: String,
    #[serde(skip)]
    pub step: Step,
    /// The RBAC permission it needs (checked with SelfSubjectAccessReview before anything is sent).
    #[serde(skip)]
    pub access: Access,
}

/// Where a request sits in the safe order: policies, then other policies, then the pod, then the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    #[default]
    Policy,
    Exclusion,
    Pod,
    Node,
    Cleanup,
}

/// An RBAC permission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let res =
            if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) };
        write!(f, "{} {}", self.verb, res)?;
        if let Some(n) = &self.name {
            write!(f, " \"{n}\"")?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace \"{ns}\""),
            None => f.write_str(" (cluster scope)"),
        }
    }
}

/// The outcome of planning a quarantine.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub namespace: String,
    pub pod: String,
    /// Reasons to refuse (empty, or overridden with `--force`).
    pub refusals: Vec<String>,
    /// Reasons the plan cannot be carried out at all, even with `--force`.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub requests: Vec<Request>,
    /// The record as it will be after the requests.
    pub record: Record,
    /// The record already on the pod (a repeated quarantine).
    pub existing: Option<Record>,
    /// The pod's labels after the requests.
    pub final_labels: Labels,
    /// Controllers that owned the pod (a replacement is expected from them).
    pub owners: Vec<Workload>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.requests.is_empty()
    }
}

fn name_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

fn is_managed(p: &NetworkPolicy) -> bool {
    p.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).is_some_and(|v| v == "kustody")
}

fn policy_selects(p: &NetworkPolicy, labels: &Labels) -> bool {
    p.spec.as_ref().is_some_and(|s| select::matches(&s.pod_selector.clone().unwrap_or_default(), labels))
}

/// The pod's record, when it has one that parses.
pub fn existing_record(pod: &Pod) -> Option<Result<Record, String>> {
    let raw = pod.metadata.annotations.as_ref()?.get(ANNOTATION)?;
    Some(serde_json::from_str(raw).map_err(|e| format!("annotation {ANNOTATION} is not a kustody record: {e}")))
}

/// Why kustody will not quarantine this pod without `--force`.
pub fn refusals(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if ns == "kube-system" {
        out.push("it runs in kube-system: cutting a cluster component's network can take the cluster down".into());
    }
    let component = labels.get("component").map(String::as_str);
    if labels.get("tier").map(String::as_str) == Some("control-plane")
        || matches!(
            component,
            Some("kube-apiserver" | "etcd" | "kube-controller-manager" | "kube-scheduler" | "cloud-controller-manager")
        )
    {
        out.push("it is a control-plane component: isolating it can take the cluster down".into());
    }
    let mirror = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let node_owned = pod.metadata.owner_references.iter().flatten().any(|o| o.kind == "Node");
    if mirror || node_owned {
        out.push(
            "it is a static (mirror) pod: the kubelet runs it from a file on the node, so labels and policies set \
             through the API do not control it; isolate the node instead"
                .into(),
        );
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        out.push(
            "it uses hostNetwork: it shares the node's network namespace, which NetworkPolicy cannot isolate; \
             cordon and isolate the node instead"
                .into(),
        );
    }
    out
}

/// The labels kustody sets for these options.
fn quarantine_labels(opts: &Options) -> Labels {
    let mut q = Labels::new();
    q.insert(LABEL.into(), "true".into());
    if opts.allow_dns {
        q.insert(LABEL_DNS.into(), "true".into());
    }
    if let Some(h) = &opts.honeypot {
        q.insert(LABEL_HONEYPOT.into(), h.id());
    }
    q
}

fn deny_all_policy(ns: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": POLICY_DENY, "namespace": ns, "labels": {MANAGED_BY: "kustody"},
            "annotations": {"kustody.io/purpose": "deny all ingress and egress of pods labelled kustody.io/quarantined=true"}},
        "spec": {"podSelector": {"matchLabels": {LABEL: "true"}}, "policyTypes": ["Ingress", "Egress"]}
    })
}

fn dns_policy(ns: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": POLICY_DNS, "namespace": ns, "labels": {MANAGED_BY: "kustody"},
            "annotations": {"kustody.io/purpose": "quarantined pods labelled kustody.io/quarantine-dns=true may query cluster DNS"}},
        "spec": {
            "podSelector": {"matchLabels": {LABEL: "true", LABEL_DNS: "true"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
            }]
        }
    })
}

fn honeypot_egress_policy(ns: &str, h: &Honeypot) -> Value {
    let id = h.id();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": honeypot_policy_name(&id), "namespace": ns, "labels": {MANAGED_BY: "kustody"},
            "annotations": {"kustody.io/purpose": format!("quarantined pods labelled {LABEL_HONEYPOT}={id} may talk only to the honeypot {}", h.spec())}},
        "spec": {
            "podSelector": {"matchLabels": {LABEL: "true", LABEL_HONEYPOT: id}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": h.namespace}},
                                "podSelector": h.pod_selector()}]}]
        }
    })
}

fn honeypot_ingress_policy(source_ns: &str, h: &Honeypot) -> Value {
    let id = h.id();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": honeypot_ingress_name(source_ns, &id), "namespace": h.namespace, "labels": {MANAGED_BY: "kustody"},
            "annotations": {"kustody.io/purpose": format!("the honeypot accepts quarantined pods of namespace {source_ns}")}},
        "spec": {
            "podSelector": h.pod_selector(),
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": source_ns}},
                                   "podSelector": {"matchLabels": {LABEL: "true", LABEL_HONEYPOT: id}}}]}]
        }
    })
}

fn np_path(ns: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{n}"),
        None => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
    }
}

fn np_access(verb: &str, ns: &str, name: Option<&str>) -> Access {
    Access {
        verb: verb.into(),
        group: "networking.k8s.io".into(),
        resource: "networkpolicies".into(),
        namespace: Some(ns.into()),
        name: name.map(str::to_owned),
    }
}

/// Create `desired` if no policy of its name exists, replace its spec if it differs, else nothing.
fn ensure_policy(existing: &[NetworkPolicy], desired: Value, purpose: &str, out: &mut Vec<Request>) {
    let ns = desired["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let name = desired["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    match existing.iter().find(|p| p.metadata.name.as_deref() == Some(name.as_str())) {
        None => out.push(Request {
            method: "POST".into(),
            path: np_path(&ns, None),
            content_type: Some("application/json".into()),
            body: Some(desired),
            purpose: format!("create NetworkPolicy {ns}/{name}: {purpose}"),
            step: Step::Policy,
            access: np_access("create", &ns, None),
        }),
        Some(p) => {
            let current = serde_json::to_value(&p.spec).unwrap_or(Value::Null);
            let want: Option<k8s_openapi::api::networking::v1::NetworkPolicySpec> =
                serde_json::from_value(desired["spec"].clone()).ok();
            let want = serde_json::to_value(&want).unwrap_or(Value::Null);
            if current != want {
                out.push(Request {
                    method: "PATCH".into(),
                    path: np_path(&ns, Some(&name)),
                    content_type: Some("application/json-patch+json".into()),
                    body: Some(json!([{"op": "replace", "path": "/spec", "value": desired["spec"]}])),
                    purpose: format!("restore NetworkPolicy {ns}/{name} to kustody's spec (it was changed): {purpose}"),
                    step: Step::Policy,
                    access: np_access("patch", &ns, Some(&name)),
                });
            }
        }
    }
}

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
    let current: Labels = pod.metadata.labels.clone().unwrap_or_default();
    let original: Labels = existing.as_ref().map_or_else(|| current.clone(), |r| r.original_labels.clone());
    let q = quarantine_labels(opts);

    // Labels after quarantine: current minus selecting keys, plus ours (stale ours replaced).
    let mut labels: Labels = current.iter().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.extend(q.clone());
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    // Removing labels can make a NotIn/DoesNotExist selector match, so repeat until stable.
    for _ in 0..8 {
        let mut changed = false;
        let drop_keys = |keys: Vec<String>, labels: &mut Labels, removed: &mut BTreeSet<String>| -> bool {
            let keys: Vec<String> = keys.into_iter().filter(|k| !is_ours(k) && labels.contains_key(k)).collect();
            for k in &keys {
                labels.remove(k);
                removed.insert(k.clone());
            }
            !keys.is_empty()
        };
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
                    plan.warnings.push(format!(
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
    plan.final_labels = labels.clone();

    // Who selected or owned the pod before (for the record and for verification).
    let selecting_services: Vec<String> = snap
        .services
        .iter()
        .filter(|s| select::service_matches(s.spec.as_ref().and_then(|x| x.selector.as_ref()), &original))
        .map(|s| name_of(&s.metadata))
        .collect();
    let selecting_policies: Vec<String> = snap
        .policies
        .iter()
        .filter(|p| !is_managed(p) && policy_selects(p, &original))
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
    plan.owners = snap.workloads.iter().filter(|w| owner_uids.contains(w.uid.as_str())).cloned().collect();
    let mut controllers: Vec<String> = Vec::new();
    for w in &snap.workloads {
        if owner_uids.contains(w.uid.as_str()) || select::matches_opt(w.selector.as_ref(), &original) {
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

    // 1. Our policies, then the honeypot side.
    let mut requests = Vec::new();
    let mut policies = vec![POLICY_DENY.to_owned()];
    ensure_policy(&snap.policies, deny_all_policy(&ns), "deny all ingress and egress", &mut requests);
    if opts.allow_dns {
        policies.push(POLICY_DNS.into());
        ensure_policy(&snap.policies, dns_policy(&ns), "allow DNS to kube-system/k8s-app=kube-dns", &mut requests);
    }
    if let Some(h) = &opts.honeypot {
        policies.push(honeypot_policy_name(&h.id()));
        ensure_policy(
            &snap.policies,
            honeypot_egress_policy(&ns, h),
            &format!("egress only to {}", h.spec()),
            &mut requests,
        );
        ensure_policy(
            &snap.honeypot_policies,
            honeypot_ingress_policy(&ns, h),
            "let the quarantined pod reach the honeypot",
            &mut requests,
        );
        if !snap.honeypot_namespace_exists {
            plan.errors.push(format!("the honeypot namespace `{}` does not exist", h.namespace));
        } else if snap.honeypot_pods == 0 {
            plan.warnings.push(format!("no pod matches the honeypot {}: the pod's egress goes nowhere", h.spec()));
        }
    }

    // 2. Other teams' policies that cannot be escaped by labels stop selecting quarantined pods.
    for p in snap.policies.iter().filter(|p| excluded.contains(&name_of(&p.metadata))) {
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
        requests.push(Request {
            method: "PATCH".into(),
            path: np_path(&ns, Some(&pname)),
            content_type: Some("application/merge-patch+json".into()),
            body: Some(json!({"metadata": {"resourceVersion": p.metadata.resource_version,
                "annotations": {EXCLUDES_ANNOTATION: "true"}},
                "spec": {"podSelector": {"matchExpressions": exprs}}})),
            purpose: format!(
                "NetworkPolicy {ns}/{pname} selects the pod by a selector no label removal escapes: add `{LABEL} DoesNotExist` to it (reverted by release)"
            ),
            step: Step::Exclusion,
            access: np_access("patch", &ns, Some(&pname)),
        });
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
        owner_references: owner_refs.clone(),
        node: node_name.clone(),
        node_was_unschedulable: node_unschedulable,
        ..Record::default()
    });
    let union = |a: &[String], b: &[String]| -> Vec<String> {
        let s: BTreeSet<String> = a.iter().chain(b).cloned().collect();
        s.into_iter().collect()
    };
    record.removed_labels = union(&record.removed_labels, &removed.iter().cloned().collect::<Vec<_>>());
    record.controllers = union(&record.controllers, &controllers);
    record.services = union(&record.services, &selecting_services);
    record.network_policies = union(&record.network_policies, &selecting_policies);
    record.excluded_policies = union(&record.excluded_policies, &excluded.iter().cloned().collect::<Vec<_>>());
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
    let controller_refs = pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
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
    if labels != current || controller_refs || record_changed {
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
            "annotations": {ANNOTATION: serde_json::to_string(&record).unwrap_or_default()},
        });
        if controller_refs {
            meta["ownerReferences"] = if kept.is_empty() { Value::Null } else { Value::Array(kept) };
        }
        let what = if removed.is_empty() {
            "label it quarantined".to_owned()
        } else {
            format!(
                "label it quarantined and remove the labels {} that select it",
                removed.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        requests.push(Request {
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
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                ..Access::default()
            },
        });
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

/// What `release` is given.
#[derive(Debug, Clone, Default)]
pub struct ReleaseSnapshot {
    pub pod: Pod,
    /// Other pods in the namespace still labelled quarantined.
    pub other_quarantined: Vec<Pod>,
    /// NetworkPolicies in the pod's namespace.
    pub policies: Vec<NetworkPolicy>,
    /// The honeypot namespace's policies, when the record names a honeypot.
    pub honeypot_policies: Vec<NetworkPolicy>,
    pub node: Option<Node>,
}

#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    pub restore_labels: bool,
    pub uncordon: bool,
    pub reason: Option<String>,
}

/// The outcome of planning a release.
#[derive(Debug, Clone, Default)]
pub struct ReleasePlan {
    pub namespace: String,
    pub pod: String,
    pub record: Option<Record>,
    pub warnings: Vec<String>,
    pub requests: Vec<Request>,
}

fn delete_policy(ns: &str, name: &str, why: &str) -> Request {
    Request {
        method: "DELETE".into(),
        path: np_path(ns, Some(name)),
        content_type: None,
        body: None,
        purpose: format!("delete NetworkPolicy {ns}/{name}: {why}"),
        step: Step::Cleanup,
        access: np_access("delete", ns, Some(name)),
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
            plan.warnings.push(e);
            None
        }
        None => None,
    };
    let has_label = labels.keys().any(|k| is_ours(k));
    if record.is_none() && !has_label {
        return plan;
    }
    let mut label_patch = serde_json::Map::new();
    for k in labels.keys().filter(|k| is_ours(k)) {
        label_patch.insert(k.clone(), Value::Null);
    }
    if opts.restore_labels {
        if let Some(r) = &record {
            for k in &r.removed_labels {
                if let (Some(v), None) = (r.original_labels.get(k), labels.get(k)) {
                    label_patch.insert(k.clone(), Value::String(v.clone()));
                }
            }
            if !r.controllers.is_empty() {
                plan.warnings.push(format!(
                    "labels restored: {} will adopt the pod again, and may then delete a surplus replica (possibly this pod)",
                    r.controllers.join(", ")
                ));
            }
        } else {
            plan.warnings.push("--restore-labels: no quarantine record on the pod, nothing to restore".into());
        }
    }
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

    let others: Vec<Labels> =
        snap.other_quarantined.iter().map(|p| p.metadata.labels.clone().unwrap_or_default()).collect();
    let exists = |n: &str| snap.policies.iter().any(|p| p.metadata.name.as_deref() == Some(n));
    if others.is_empty() {
        if exists(POLICY_DENY) {
            plan.requests.push(delete_policy(&ns, POLICY_DENY, "no quarantined pod is left in the namespace"));
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
            plan.requests.push(Request {
                method: "PATCH".into(),
                path: np_path(&ns, Some(&pname)),
                content_type: Some("application/merge-patch+json".into()),
                body: Some(json!({"metadata": {"resourceVersion": p.metadata.resource_version,
                    "annotations": {EXCLUDES_ANNOTATION: null}},
                    "spec": {"podSelector": {"matchExpressions": if exprs.is_empty() { Value::Null } else { Value::Array(exprs) }}}})),
                purpose: format!("NetworkPolicy {ns}/{pname}: remove the `{LABEL} DoesNotExist` kustody added"),
                step: Step::Cleanup,
                access: np_access("patch", &ns, Some(&pname)),
            });
        }
    }
    if exists(POLICY_DNS) && !others.iter().any(|l| l.contains_key(LABEL_DNS)) {
        plan.requests.push(delete_policy(&ns, POLICY_DNS, "no quarantined pod in the namespace uses DNS"));
    }
    for p in snap.policies.iter().filter(|p| is_managed(p)) {
        let pname = name_of(&p.metadata);
        let Some(id) = pname.strip_prefix("kustody-quarantine-honeypot-") else { continue };
        if others.iter().any(|l| l.get(LABEL_HONEYPOT).map(String::as_str) == Some(id)) {
            continue;
        }
        plan.requests.push(delete_policy(&ns, &pname, "no quarantined pod in the namespace uses this honeypot"));
        let ingress = honeypot_ingress_name(&ns, id);
        if let Some(hp) = snap.honeypot_policies.iter().find(|p| p.metadata.name.as_deref() == Some(ingress.as_str())) {
            let hns = hp.metadata.namespace.clone().unwrap_or_default();
            plan.requests.push(delete_policy(
                &hns,
                &ingress,
                "the honeypot's ingress for this namespace is no longer needed",
            ));
        }
    }
    if opts.uncordon {
        let cordoned_by_us = record.as_ref().is_some_and(|r| r.cordoned && !r.node_was_unschedulable);
        let unschedulable =
            snap.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.unschedulable).unwrap_or(false);
        match (record.as_ref().and_then(|r| r.node.clone()), cordoned_by_us, unschedulable) {
            (Some(n), true, true) => plan.requests.push(Request {
                method: "PATCH".into(),
                path: format!("/api/v1/nodes/{n}"),
                content_type: Some("application/merge-patch+json".into()),
                body: Some(json!({"spec": {"unschedulable": null}})),
                purpose: format!("uncordon node {n}, which the quarantine cordoned"),
                step: Step::Node,
                access: Access { verb: "patch".into(), resource: "nodes".into(), name: Some(n), ..Access::default() },
            }),
            (Some(n), false, true) => plan
                .warnings
                .push(format!("--uncordon: node {n} was not cordoned by this quarantine; leaving it cordoned")),
            _ => {}
        }
    }
    plan.record = record;
    plan
}
