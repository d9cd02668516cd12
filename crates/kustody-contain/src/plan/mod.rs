//! Planning quarantine and release: from a snapshot of the cluster objects around a pod to the
//! exact list of API requests. No I/O here, so every decision is unit-testable and `--dry-run`
//! prints exactly what `apply` would send.
//!
//! This file holds the vocabulary (options, snapshot, record, request, plan) and the refusals;
//! [`policies`] builds kustody's NetworkPolicies, `quarantine.rs` and `release.rs` plan the two
//! actions.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kustody_cluster::select::{self, Labels};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;

use crate::error::ContainError;

pub mod policies;
mod quarantine;
mod release;

pub use quarantine::{mode_text, quarantine, ModeChange};
pub use release::{release, Next};

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
pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Labels that kustody itself sets; never removed as "selecting" labels.
pub(crate) fn is_ours(key: &str) -> bool {
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
    pub fn parse(s: &str) -> Result<Honeypot, ContainError> {
        let (ns, sel) = s.split_once('/').map_or((s, ""), |(n, q)| (n, q));
        let bad = |problem: String| ContainError::Honeypot { spec: s.to_owned(), problem };
        if ns.is_empty()
            || ns.len() > 63
            || !ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(format!("`{ns}` is not a namespace name (NS[/key=value,...])")));
        }
        let selector = select::parse_equality(sel).map_err(|e| bad(e.to_string()))?;
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

    pub(crate) fn pod_selector(&self) -> Value {
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
    /// Those pods' labels (with `--honeypot`): which of the honeypot's policies select them.
    pub honeypot_pod_labels: Vec<Labels>,
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
    /// A repeated quarantine that replaces the mode in effect (also among the warnings).
    pub mode_change: Option<ModeChange>,
    /// With `--honeypot`: what happens on the honeypot's side, in words.
    pub honeypot_ingress: Option<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.requests.is_empty()
    }
}

pub(crate) fn name_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

pub(crate) fn is_managed(p: &NetworkPolicy) -> bool {
    p.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).is_some_and(|v| v == "kustody")
}

pub(crate) fn policy_selects(p: &NetworkPolicy, labels: &Labels) -> bool {
    p.spec.as_ref().is_some_and(|s| select::matches(&s.pod_selector.clone().unwrap_or_default(), labels))
}

/// The pod's record, when it has one that parses.
pub fn existing_record(pod: &Pod) -> Option<Result<Record, ContainError>> {
    let raw = pod.metadata.annotations.as_ref()?.get(ANNOTATION)?;
    Some(serde_json::from_str(raw).map_err(|e| ContainError::BadRecord { reason: e.to_string() }))
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
pub(crate) fn quarantine_labels(opts: &Options) -> Labels {
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
    /// The controllers of the namespace: which of them will select the pod after release.
    pub workloads: Vec<Workload>,
    /// The pods of the namespace: which replica a controller that adopts the pod removes.
    pub pods: Vec<Pod>,
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
    /// The pod's labels after release.
    pub final_labels: Labels,
    /// What happens to the pod after release (printed before, verified after).
    pub next: Next,
}
