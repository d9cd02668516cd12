//! The resource types the test cluster serves, and their discovery documents.

use serde_json::{json, Value};

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    /// Subresources served under this type (`status`, `log`, `exec`, ...).
    pub subresources: &'static [&'static str],
    /// Only `create` is served (reviews and token requests, which are never stored).
    pub create_only: bool,
    /// `group/plural`: the key objects are stored under.
    pub key: &'static str,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

macro_rules! rt {
    ($g:literal, $v:literal, $p:literal, $s:literal, $k:literal, $ns:expr, $short:expr, $sub:expr) => {
        ResourceType {
            group: $g,
            version: $v,
            plural: $p,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short: $short,
            subresources: $sub,
            create_only: false,
            key: concat!($g, "/", $p),
        }
    };
    (review $g:literal, $v:literal, $p:literal, $s:literal, $k:literal) => {
        ResourceType {
            group: $g,
            version: $v,
            plural: $p,
            singular: $s,
            kind: $k,
            namespaced: false,
            short: &[],
            subresources: &[],
            create_only: true,
            key: concat!($g, "/", $p),
        }
    };
}

pub static NAMESPACES: ResourceType =
    rt!("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], &["status", "finalize"]);
pub static PODS: ResourceType = rt!(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    true,
    &["po"],
    &["status", "log", "exec", "attach", "ephemeralcontainers", "binding"]
);
pub static NODES: ResourceType = rt!("", "v1", "nodes", "node", "Node", false, &["no"], &["status", "proxy"]);
pub static EVENTS: ResourceType = rt!("", "v1", "events", "event", "Event", true, &["ev"], &[]);
pub static SERVICES: ResourceType = rt!("", "v1", "services", "service", "Service", true, &["svc"], &["status"]);
pub static ENDPOINTS: ResourceType = rt!("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], &[]);
pub static SERVICEACCOUNTS: ResourceType =
    rt!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], &["token"]);
pub static PVCS: ResourceType = rt!(
    "",
    "v1",
    "persistentvolumeclaims",
    "persistentvolumeclaim",
    "PersistentVolumeClaim",
    true,
    &["pvc"],
    &["status"]
);
pub static SECRETS: ResourceType = rt!("", "v1", "secrets", "secret", "Secret", true, &[], &[]);
pub static CONFIGMAPS: ResourceType = rt!("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], &[]);
pub static DEPLOYMENTS: ResourceType =
    rt!("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], &["status", "scale"]);
pub static REPLICASETS: ResourceType =
    rt!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], &["status", "scale"]);
pub static DAEMONSETS: ResourceType =
    rt!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], &["status"]);
pub static STATEFULSETS: ResourceType =
    rt!("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, &["sts"], &["status", "scale"]);
pub static JOBS: ResourceType = rt!("batch", "v1", "jobs", "job", "Job", true, &[], &["status"]);
pub static CRONJOBS: ResourceType = rt!("batch", "v1", "cronjobs", "cronjob", "CronJob", true, &["cj"], &["status"]);
pub static ENDPOINTSLICES: ResourceType =
    rt!("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, &[], &[]);
pub static NETWORKPOLICIES: ResourceType =
    rt!("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", true, &["netpol"], &[]);
pub static ROLES: ResourceType = rt!("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, &[], &[]);
pub static ROLEBINDINGS: ResourceType =
    rt!("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, &[], &[]);
pub static CLUSTERROLES: ResourceType =
    rt!("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, &[], &[]);
pub static CLUSTERROLEBINDINGS: ResourceType = rt!(
    "rbac.authorization.k8s.io",
    "v1",
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    false,
    &[],
    &[]
);
pub static SSAR: ResourceType = rt!(review "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview");
pub static SSRR: ResourceType = rt!(review "authorization.k8s.io", "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview");
pub static SSR: ResourceType =
    rt!(review "authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview");

pub static ALL: &[&ResourceType] = &[
    &NAMESPACES,
    &PODS,
    &NODES,
    &EVENTS,
    &SERVICES,
    &ENDPOINTS,
    &SERVICEACCOUNTS,
    &SECRETS,
    &CONFIGMAPS,
    &PVCS,
    &DEPLOYMENTS,
    &REPLICASETS,
    &DAEMONSETS,
    &STATEFULSETS,
    &JOBS,
    &CRONJOBS,
    &ENDPOINTSLICES,
    &NETWORKPOLICIES,
    &ROLES,
    &ROLEBINDINGS,
    &CLUSTERROLES,
    &CLUSTERROLEBINDINGS,
    &SSAR,
    &SSRR,
    &SSR,
];

/// The resource type served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type for a `group` and `Kind` (any version).
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceType> {
    ALL.iter().copied().find(|r| r.group == group && r.kind == kind)
}

/// The resource type by `group` and plural name (any version).
pub fn by_plural(group: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter().copied().find(|r| r.group == group && r.plural == plural)
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in ALL {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv.clone()], "preferredVersion": gv}))
}

/// `GET /api/v1` or `GET /apis/GROUP/VERSION`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in ALL.iter().filter(|r| r.group == group && r.version == version) {
        let verbs: Vec<&str> = if r.create_only {
            vec!["create"]
        } else {
            vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        };
        let mut entry = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                               "kind": r.kind, "verbs": verbs});
        if !r.short.is_empty() {
            entry["shortNames"] = json!(r.short);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (kind, verbs): (&str, Vec<&str>) = match *sub {
                "status" => (r.kind, vec!["get", "patch", "update"]),
                "log" => (r.kind, vec!["get"]),
                "exec" | "attach" => ("PodExecOptions", vec!["create", "get"]),
                "ephemeralcontainers" => (r.kind, vec!["get", "patch", "update"]),
                "binding" => ("Binding", vec!["create"]),
                "scale" => ("Scale", vec!["get", "patch", "update"]),
                "token" => ("TokenRequest", vec!["create"]),
                "proxy" => ("NodeProxyOptions", vec!["create", "delete", "get", "patch", "update"]),
                "finalize" => (r.kind, vec!["update"]),
                _ => (r.kind, vec!["get"]),
            };
            let mut entry = json!({"name": format!("{}/{}", r.plural, sub), "singularName": "",
                                   "namespaced": r.namespaced});
            // subresources served as another group's kind name it
            match *sub {
                "scale" => {
                    entry["group"] = json!("autoscaling");
                    entry["version"] = json!("v1");
                }
                "token" => {
                    entry["group"] = json!("authentication.k8s.io");
                    entry["version"] = json!("v1");
                }
                _ => {}
            }
            entry["kind"] = json!(kind);
            entry["verbs"] = json!(verbs);
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    if group.is_empty() {
        // the legacy core group's list carries no apiVersion
        return Some(json!({"kind": "APIResourceList", "groupVersion": version, "resources": resources}));
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": resources}),
    )
}

/// `GET /version`.
pub fn version() -> Value {
    json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
           "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
           "gitVersion": "v1.36.2-kustody-testcluster", "gitCommit": "0000000000000000000000000000000000000000",
           "gitTreeState": "clean", "buildDate": "2026-11-23T00:00:00Z", "goVersion": "go1.26.4",
           "compiler": "gc", "platform": "linux/amd64"})
}
