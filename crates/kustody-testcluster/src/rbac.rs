//! Authorization: the RBAC authorizer over the Roles, ClusterRoles and bindings in the store,
//! plus `system:masters`, and the self-subject reviews built on it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
use crate::store::{meta_str, Store};

/// Who is asking.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(username: &str, groups: &[&str]) -> Self {
        UserInfo {
            username: username.to_string(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: BTreeMap::new(),
        }
    }
    /// The audit/`SelfSubjectReview` rendering.
    pub fn to_json(&self) -> Value {
        let mut u = json!({});
        if !self.username.is_empty() {
            u["username"] = json!(self.username);
        }
        if !self.uid.is_empty() {
            u["uid"] = json!(self.uid);
        }
        if !self.groups.is_empty() {
            u["groups"] = json!(self.groups);
        }
        if !self.extra.is_empty() {
            u["extra"] = json!(self.extra);
        }
        u
    }
}

/// What is being asked for.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array().into_iter().flatten().any(|v| v.as_str() == Some(want) || v.as_str() == Some("*"))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule["nonResourceURLs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|u| u == "*" || u == a.path || (u.ends_with('*') && a.path.starts_with(u.trim_end_matches('*'))));
    }
    if !has(&rule["apiGroups"], &a.group) {
        return false;
    }
    let combined =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let res_ok = rule["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|r| {
        r == "*" || r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !res_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            !a.name.is_empty() && names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    }
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or("");
    match s["kind"].as_str().unwrap_or("") {
        "User" => user.username == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// One binding that applies to the user, with the rules of the role it grants.
struct Grant {
    describe: String,
    rules: Vec<Value>,
}

fn grants(store: &Store, user: &UserInfo, namespace: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    let role_rules = |kind: &str, name: &str, ns: &str| -> Vec<Value> {
        let role = if kind == "ClusterRole" { store.get(&CLUSTERROLES, "", name) } else { store.get(&ROLES, ns, name) };
        role.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default()
    };
    let (_, crbs) = store.list(&CLUSTERROLEBINDINGS, None);
    for b in crbs {
        if b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, user, "")) {
            let role = b["roleRef"]["name"].as_str().unwrap_or("");
            out.push(Grant {
                describe: format!("ClusterRoleBinding \"{}\" of ClusterRole \"{role}\"", meta_str(&b, "name")),
                rules: role_rules("ClusterRole", role, ""),
            });
        }
    }
    if !namespace.is_empty() {
        let (_, rbs) = store.list(&ROLEBINDINGS, Some(namespace));
        for b in rbs {
            if b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, user, namespace)) {
                let kind = b["roleRef"]["kind"].as_str().unwrap_or("Role");
                let role = b["roleRef"]["name"].as_str().unwrap_or("");
                out.push(Grant {
                    describe: format!("RoleBinding \"{}/{namespace}\" of {kind} \"{role}\"", meta_str(&b, "name")),
                    rules: role_rules(kind, role, namespace),
                });
            }
        }
    }
    out
}

/// `(allowed, reason)`, in the words of kube-apiserver's audit annotations.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> (bool, String) {
    if user.groups.iter().any(|g| g == "system:masters") {
        return (true, String::new());
    }
    for g in grants(store, user, &a.namespace) {
        if g.rules.iter().any(|r| rule_allows(r, a)) {
            let subject = if user.username.starts_with("system:serviceaccount:") {
                let mut parts = user.username.rsplitn(2, ':');
                let name = parts.next().unwrap_or("");
                let ns = parts.next().unwrap_or("").trim_start_matches("system:serviceaccount:");
                format!("ServiceAccount \"{name}/{ns}\"")
            } else {
                format!("User \"{}\"", user.username)
            };
            return (true, format!("RBAC: allowed by {} to {subject}", g.describe));
        }
    }
    (false, String::new())
}

/// The `status` of a SelfSubjectRulesReview for `namespace`.
pub fn rules_review(store: &Store, user: &UserInfo, namespace: &str) -> Value {
    if user.groups.iter().any(|g| g == "system:masters") {
        return json!({"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                      "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": false});
    }
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for g in grants(store, user, namespace) {
        for r in g.rules {
            if r.get("nonResourceURLs").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
                non_resource_rules.push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
            } else {
                let mut rr = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                if let Some(n) = r.get("resourceNames") {
                    rr["resourceNames"] = n.clone();
                }
                resource_rules.push(rr);
            }
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// The ClusterRoles and bindings a fresh cluster has (the subset of the bootstrap policy that
/// kustody's tests touch).
pub fn bootstrap_objects() -> Vec<(&'static crate::resources::ResourceType, Value)> {
    let cr = |name: &str, rules: Value| {
        (
            &CLUSTERROLES,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules}),
        )
    };
    let crb = |name: &str, role: &str, group: &str| {
        (
            &CLUSTERROLEBINDINGS,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]}),
        )
    };
    vec![
        cr(
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                   {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        cr(
            "view",
            json!([{"apiGroups": ["", "apps", "batch", "networking.k8s.io", "discovery.k8s.io"],
            "resources": ["pods", "pods/log", "pods/status", "services", "endpoints", "configmaps", "events",
                          "serviceaccounts", "namespaces", "deployments", "replicasets", "daemonsets",
                          "statefulsets", "jobs", "cronjobs", "networkpolicies", "endpointslices"],
            "verbs": ["get", "list", "watch"]}]),
        ),
        cr(
            "system:basic-user",
            json!([
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
        cr(
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz",
            "/livez", "/readyz", "/version", "/version/", "/openapi", "/openapi/*"], "verbs": ["get"]}]),
        ),
        crb("cluster-admin", "cluster-admin", "system:masters"),
        crb("system:basic-user", "system:basic-user", "system:authenticated"),
        crb("system:discovery", "system:discovery", "system:authenticated"),
    ]
}
