//! The body-heavy, alert-heavy corpus profile (issue 21): a quarter of the events are
//! RequestResponse pod creates whose request and response bodies together weigh about 2.5 KB,
//! shaped like a real API server's (managedFields, projected token volume, tolerations), and
//! over a third of the events raise an alert with the upstream Falco rules: people running
//! kubectl ("Disallowed K8s User"), privileged, hostPath, hostNetwork and hostPID pods, pods in
//! kube-system, exec into pods, configmaps holding credentials.

use serde_json::{json, Value};

use crate::events::{benign, Ev, KUBECTL, NODES};
use crate::Rng;

const KCM: &str = "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350";
const PEOPLE: &[(&str, &str)] = &[("alice@example.com", "192.0.2.10"), ("bob@example.com", "192.0.2.44")];
const APPS: &[&str] = &["web-frontend", "checkout", "catalog", "payments", "search", "cart"];

/// What a pod create asks for beyond an ordinary workload.
#[derive(Default)]
struct Risk {
    privileged: bool,
    host_network: bool,
    host_pid: bool,
    host_paths: &'static [&'static str],
}

/// The next event of the profile at time `t`.
pub(crate) fn next(rng: &mut Rng, t: i64) -> Ev {
    match rng.below(20) {
        0..=4 => pod_create(rng, t),
        5 | 6 => exec(rng, t),
        7 => configmap(rng, t),
        8 | 9 => {
            let (user, ip) = *rng.pick(PEOPLE).unwrap_or(&PEOPLE[0]);
            let app = *rng.pick(APPS).unwrap_or(&"app");
            match rng.below(3) {
                0 => Ev::new(rng, t, user, KUBECTL, ip, "list", "pods").ns("shop").query("limit=500"),
                1 => Ev::new(rng, t, user, KUBECTL, ip, "get", "deployments").api("apps", "v1").ns("shop").name(app),
                _ => Ev::new(rng, t, user, KUBECTL, ip, "get", "pods")
                    .ns("shop")
                    .name(&format!("{app}-7d9f8b6c5-x2m4q"))
                    .sub("log")
                    .query("container=app&follow=true"),
            }
        }
        _ => {
            let pad = rng.below(600) as usize;
            benign(rng, t, pad)
        }
    }
}

fn pod_create(rng: &mut Rng, t: i64) -> Ev {
    let node = *rng.pick(NODES).unwrap_or(&"node");
    let app = *rng.pick(APPS).unwrap_or(&"app");
    let (user, ua, ip, ns, image, risk) = match rng.below(8) {
        0..=2 => (
            "system:serviceaccount:kube-system:replicaset-controller".to_owned(),
            format!("{KCM}/system:serviceaccount:kube-system:replicaset-controller"),
            "10.0.0.10",
            if app == "payments" { "payments" } else { "shop" },
            format!("registry.example.com/shop/{app}:1.{}.{}", rng.below(9), rng.below(20)),
            Risk::default(),
        ),
        3 => (
            "system:serviceaccount:kube-system:daemon-set-controller".to_owned(),
            format!("{KCM}/system:serviceaccount:kube-system:daemon-set-controller"),
            "10.0.0.10",
            "kube-system",
            "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni:v1.18.0".to_owned(),
            Risk {
                privileged: true,
                host_network: true,
                host_paths: &["/opt/cni/bin", "/var/run/aws-node"],
                ..Risk::default()
            },
        ),
        4 | 5 => {
            let (user, ip) = *rng.pick(PEOPLE).unwrap_or(&PEOPLE[0]);
            (
                user.to_owned(),
                KUBECTL.to_owned(),
                ip,
                "shop",
                "docker.io/library/ubuntu:22.04".to_owned(),
                Risk { privileged: true, host_pid: true, host_paths: &["/"], ..Risk::default() },
            )
        }
        6 => (
            "system:serviceaccount:ci:pipeline-runner".to_owned(),
            "tekton-pipelines-controller/v0.56.0".to_owned(),
            "10.244.3.12",
            "ci",
            "docker.io/library/docker:24-dind".to_owned(),
            Risk { host_paths: &["/var/run/docker.sock"], ..Risk::default() },
        ),
        _ => {
            let (user, ip) = *rng.pick(PEOPLE).unwrap_or(&PEOPLE[0]);
            (
                user.to_owned(),
                KUBECTL.to_owned(),
                ip,
                "shop",
                format!("registry.example.com/shop/{app}-debug:0.{}", rng.below(9)),
                Risk::default(),
            )
        }
    };
    let hash = format!("{:010x}", rng.below(1 << 40));
    let pod = format!("{app}-{hash}-{:05x}", rng.below(0xfffff));
    let (req, resp) = pod_bodies(rng, ns, app, &pod, node, &image, &risk, t);
    Ev::new(rng, t, &user, &ua, ip, "create", "pods").ns(ns).req(req).resp(resp)
}

/// A Pod create's request and response bodies, as a real API server records them.
#[allow(clippy::too_many_arguments, reason = "one call site; the arguments are the pod's identity")]
fn pod_bodies(
    rng: &mut Rng,
    ns: &str,
    app: &str,
    pod: &str,
    node: &str,
    image: &str,
    risk: &Risk,
    t: i64,
) -> (Value, Value) {
    let mut sc = json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}});
    if risk.privileged {
        sc = json!({"privileged": true, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}});
    }
    let mut mounts: Vec<Value> = Vec::new();
    let mut volumes: Vec<Value> = Vec::new();
    for (i, p) in risk.host_paths.iter().enumerate() {
        mounts.push(json!({"name": format!("host-{i}"), "mountPath": format!("/host{i}")}));
        volumes.push(json!({"name": format!("host-{i}"), "hostPath": {"path": p, "type": ""}}));
    }
    let container = json!({
        "name": "app",
        "image": image,
        "args": ["--port=8080", "--log-format=json"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.monitoring:4317"},
        ],
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": sc,
    });
    let labels = json!({"app": app, "pod-template-hash": pod.rsplit('-').nth(1).unwrap_or("x")});
    let mut spec = json!({
        "volumes": volumes,
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": true,
    });
    if risk.host_network {
        spec["hostNetwork"] = json!(true);
    }
    if risk.host_pid {
        spec["hostPID"] = json!(true);
    }
    let req = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"generateName": format!("{}-", pod.rsplit_once('-').map_or(pod, |p| p.0)), "namespace": ns, "labels": labels},
        "spec": spec,
        "status": {},
    });
    let mut rspec = spec.clone();
    if let Some(v) = rspec["volumes"].as_array_mut() {
        v.push(json!({"name": "kube-api-access-x7k2p", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ], "defaultMode": 420}}));
    }
    rspec["nodeName"] = json!(node);
    rspec["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    rspec["priority"] = json!(0);
    rspec["preemptionPolicy"] = json!("PreemptLowerPriority");
    let created = kustody_model::time::format_rfc3339_secs(t);
    let resp = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod,
            "generateName": req["metadata"]["generateName"],
            "namespace": ns,
            "uid": rng.uuid(),
            "resourceVersion": (rng.below(9_000_000) + 1_000_000).to_string(),
            "creationTimestamp": created,
            "labels": req["metadata"]["labels"],
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": created,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:args": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:resources": {}, "f:securityContext": {}}},
                    "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}
            }]
        },
        "spec": rspec,
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    });
    (req, resp)
}

/// `kubectl exec` by a person: the ResponseStarted stage ("Attach/Exec Pod") and the
/// ResponseComplete one ("Disallowed K8s User").
fn exec(rng: &mut Rng, t: i64) -> Ev {
    let (user, ip) = *rng.pick(PEOPLE).unwrap_or(&PEOPLE[0]);
    let app = *rng.pick(APPS).unwrap_or(&"app");
    let stage = if rng.below(2) == 0 { "ResponseStarted" } else { "ResponseComplete" };
    Ev::new(rng, t, user, KUBECTL, ip, "get", "pods")
        .ns("shop")
        .name(&format!("{app}-7d9f8b6c5-x2m4q"))
        .sub("exec")
        .query("command=sh&command=-c&command=cat%20%2Fetc%2Fconfig%2Fapp.yaml&container=app&stdin=true&stdout=true&stderr=true&tty=false")
        .code(101)
        .stage(stage)
}

/// A configmap written with credentials in it, by a person or by Argo CD.
fn configmap(rng: &mut Rng, t: i64) -> Ev {
    let app = *rng.pick(APPS).unwrap_or(&"app");
    let data = json!({
        "config.yaml": format!("server:\n  port: 8080\nstorage:\n  bucket: {app}-assets\n  region: eu-west-1\n"),
        "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    });
    let body = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": format!("{app}-config"), "namespace": "shop"}, "data": data});
    if rng.below(2) == 0 {
        let (user, ip) = *rng.pick(PEOPLE).unwrap_or(&PEOPLE[0]);
        Ev::new(rng, t, user, KUBECTL, ip, "create", "configmaps").ns("shop").req(body)
    } else {
        Ev::new(
            rng,
            t,
            "system:serviceaccount:argocd:argocd-application-controller",
            "argocd-application-controller/v2.9.3+6eba5be",
            "10.244.1.5",
            "update",
            "configmaps",
        )
        .ns("shop")
        .name(&format!("{app}-config"))
        .req(body)
    }
}
