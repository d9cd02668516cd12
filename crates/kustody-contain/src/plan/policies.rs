//! kustody's NetworkPolicies (deny-all, DNS egress, honeypot egress and ingress) and the
//! requests that create, restore or delete them.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::{
    honeypot_ingress_name, honeypot_policy_name, Access, Honeypot, Request, Step, LABEL, LABEL_DNS, LABEL_HONEYPOT,
    MANAGED_BY, POLICY_DENY, POLICY_DNS,
};

pub(crate) fn deny_all_policy(ns: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": POLICY_DENY, "namespace": ns, "labels": {MANAGED_BY: "kustody"},
            "annotations": {"kustody.io/purpose": "deny all ingress and egress of pods labelled kustody.io/quarantined=true"}},
        "spec": {"podSelector": {"matchLabels": {LABEL: "true"}}, "policyTypes": ["Ingress", "Egress"]}
    })
}

pub(crate) fn dns_policy(ns: &str) -> Value {
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

pub(crate) fn honeypot_egress_policy(ns: &str, h: &Honeypot) -> Value {
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

pub(crate) fn honeypot_ingress_policy(source_ns: &str, h: &Honeypot) -> Value {
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

pub(crate) fn np_path(ns: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{n}"),
        None => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
    }
}

pub(crate) fn np_access(verb: &str, ns: &str, name: Option<&str>) -> Access {
    Access {
        verb: verb.into(),
        group: "networking.k8s.io".into(),
        resource: "networkpolicies".into(),
        namespace: Some(ns.into()),
        name: name.map(str::to_owned),
    }
}

/// Create `desired` if no policy of its name exists, replace its spec if it differs, else nothing.
pub(crate) fn ensure_policy(existing: &[NetworkPolicy], desired: Value, purpose: &str, out: &mut Vec<Request>) {
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

pub(crate) fn delete_policy(ns: &str, name: &str, why: &str) -> Request {
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
