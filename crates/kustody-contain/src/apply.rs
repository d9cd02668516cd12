//! Reading the cluster, checking permissions, sending a plan's requests in their safe order, and
//! verifying the result by reading it back.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::time::Instant;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kustody_cluster::ClusterError;
use serde_json::{json, Value};

use crate::plan::{self, Access, Options, ReleaseSnapshot, Request, Snapshot, Workload, LABEL};
pub use crate::verify::{verify, verify_release, Check, CheckStatus};

/// A kube-rs error as a [`ClusterError`]; a refusal (403) says what the call was needed for.
pub(crate) fn kube_err(what: &str) -> impl Fn(kube::Error) -> ClusterError + '_ {
    move |e| {
        let e = ClusterError::from_kube(e);
        if e.is_forbidden() {
            e.needed_to(what)
        } else {
            e
        }
    }
}

fn controller_of(m: &ObjectMeta) -> Option<String> {
    m.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| format!("{}/{}", o.kind, o.name))
}

fn workload(
    kind: &str,
    m: &ObjectMeta,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    replicas: Option<i32>,
) -> Workload {
    Workload {
        kind: kind.into(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        selector,
        replicas,
        owner: controller_of(m),
    }
}

/// Every controller in the namespace that owns or could adopt pods.
pub(crate) async fn workloads(client: &kube::Client, ns: &str) -> Result<Vec<Workload>, ClusterError> {
    let lp = ListParams::default();
    let (rs, dep, ds, ss, jobs) = tokio::try_join!(
        async {
            Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the pod's controllers"))
        },
        async {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the pod's controllers"))
        },
        async {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the pod's controllers"))
        },
        async {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the pod's controllers"))
        },
        async {
            Api::<Job>::namespaced(client.clone(), ns).list(&lp).await.map_err(kube_err("find the pod's controllers"))
        },
    )?;
    let mut out = Vec::new();
    for x in rs.items {
        let s = x.spec.unwrap_or_default();
        out.push(workload("ReplicaSet", &x.metadata, Some(s.selector), s.replicas.or(Some(1))));
    }
    for x in dep.items {
        let s = x.spec.unwrap_or_default();
        out.push(workload("Deployment", &x.metadata, Some(s.selector), s.replicas.or(Some(1))));
    }
    for x in ds.items {
        let s = x.spec.unwrap_or_default();
        out.push(workload("DaemonSet", &x.metadata, Some(s.selector), None));
    }
    for x in ss.items {
        let s = x.spec.unwrap_or_default();
        out.push(workload("StatefulSet", &x.metadata, Some(s.selector), s.replicas.or(Some(1))));
    }
    for x in jobs.items {
        let s = x.spec.unwrap_or_default();
        out.push(workload("Job", &x.metadata, s.selector, s.parallelism));
    }
    Ok(out)
}

/// Read what a quarantine of `ns/pod` needs to know, concurrently.
pub async fn snapshot(client: &kube::Client, ns: &str, pod: &str, opts: &Options) -> Result<Snapshot, ClusterError> {
    let lp = ListParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (p, services, policies, wl) = tokio::try_join!(
        async { pods.get(pod).await.map_err(kube_err("read the pod")) },
        async {
            Api::<Service>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the Services selecting the pod"))
        },
        async {
            Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("find the NetworkPolicies selecting the pod"))
        },
        workloads(client, ns),
    )?;
    let node = match (opts.cordon, p.spec.as_ref().and_then(|s| s.node_name.clone())) {
        (true, Some(n)) => Some(Api::<Node>::all(client.clone()).get(&n).await.map_err(kube_err("cordon the node"))?),
        _ => None,
    };
    let mut snap = Snapshot {
        pod: p,
        services: services.items,
        policies: policies.items,
        workloads: wl,
        node,
        ..Snapshot::default()
    };
    if let Some(h) = &opts.honeypot {
        match Api::<Namespace>::all(client.clone()).get_opt(&h.namespace).await {
            Ok(Some(_)) => snap.honeypot_namespace_exists = true,
            Ok(None) => {}
            // without `get namespaces`, find out through the policies list below
            Err(kube::Error::Api(s)) if s.code == 403 => snap.honeypot_namespace_exists = true,
            Err(e) => return Err(kube_err("check the honeypot namespace")(e)),
        }
        if snap.honeypot_namespace_exists {
            let hp = Api::<NetworkPolicy>::namespaced(client.clone(), &h.namespace)
                .list(&lp)
                .await
                .map_err(kube_err("set up the honeypot's ingress policy"))?;
            snap.honeypot_policies = hp.items;
            let mut hlp = ListParams::default();
            if let Some(sel) = &h.selector {
                let s: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
                hlp = hlp.labels(&s.join(","));
            }
            let hpods = Api::<Pod>::namespaced(client.clone(), &h.namespace)
                .list(&hlp)
                .await
                .map_err(kube_err("find the honeypot pods"))?;
            snap.honeypot_pods = hpods.items.len();
            snap.honeypot_pod_labels =
                hpods.items.iter().map(|p| p.metadata.labels.clone().unwrap_or_default()).collect();
        }
    }
    Ok(snap)
}

/// Ask the API server (SelfSubjectAccessReview) whether every request of the plan is allowed,
/// before anything is changed. Returns the permissions that are missing.
pub async fn missing_permissions(client: &kube::Client, requests: &[Request]) -> Result<Vec<Access>, ClusterError> {
    let mut wanted: Vec<&Access> = Vec::new();
    for r in requests {
        if !wanted.contains(&&r.access) {
            wanted.push(&r.access);
        }
    }
    let checks = wanted.iter().map(|a| async move {
        let mut attrs = json!({"verb": a.verb, "group": a.group, "resource": a.resource});
        if let Some(ns) = &a.namespace {
            attrs["namespace"] = json!(ns);
        }
        if let Some(n) = &a.name {
            attrs["name"] = json!(n);
        }
        let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}});
        let req = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| ClusterError::Request { what: "SelfSubjectAccessReview".into(), reason: e.to_string() })?;
        let v: Value = client.request(req).await.map_err(kube_err("check permissions (SelfSubjectAccessReview)"))?;
        Ok::<_, ClusterError>((v["status"]["allowed"].as_bool() == Some(true), (*a).clone()))
    });
    let results = futures_util::future::join_all(checks).await;
    let mut missing = Vec::new();
    for r in results {
        let (allowed, a) = r?;
        if !allowed {
            missing.push(a);
        }
    }
    Ok(missing)
}

/// A request that was sent, and how it went.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    #[serde(flatten)]
    pub request: Request,
    /// HTTP status, or the error text.
    pub outcome: String,
    pub ok: bool,
    pub millis: f64,
}

/// Send one request.
pub async fn send(client: &kube::Client, r: &Request) -> Result<Value, ClusterError> {
    let mut b = http::Request::builder().method(r.method.as_str()).uri(&r.path);
    if let Some(ct) = &r.content_type {
        b = b.header("content-type", ct);
    }
    let body = r.body.as_ref().map(|v| serde_json::to_vec(v).unwrap_or_default()).unwrap_or_default();
    let req = b
        .body(body)
        .map_err(|e| ClusterError::Request { what: format!("{} {}", r.method, r.path), reason: e.to_string() })?;
    client.request::<Value>(req).await.map_err(ClusterError::from_kube)
}

/// Send requests in order; stop at the first failure.
pub async fn send_all(client: &kube::Client, requests: &[Request]) -> (Vec<Sent>, Option<(usize, ClusterError)>) {
    send_all_with(client, requests, &mut |_| {}).await
}

/// [`send_all`], telling `each` about every request as soon as it has been sent.
pub async fn send_all_with(
    client: &kube::Client,
    requests: &[Request],
    each: &mut (dyn FnMut(&Sent) + Send),
) -> (Vec<Sent>, Option<(usize, ClusterError)>) {
    let mut sent = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let t = Instant::now();
        let res = send(client, r).await;
        let millis = t.elapsed().as_secs_f64() * 1000.0;
        let (s, failure) = match res {
            Ok(_) => (Sent { request: r.clone(), outcome: "ok".into(), ok: true, millis }, None),
            Err(e) => (Sent { request: r.clone(), outcome: e.to_string(), ok: false, millis }, Some((i, e))),
        };
        each(&s);
        sent.push(s);
        if failure.is_some() {
            return (sent, failure);
        }
    }
    (sent, None)
}

/// Read what a release needs.
pub async fn release_snapshot(client: &kube::Client, ns: &str, pod: &str) -> Result<ReleaseSnapshot, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (p, all, policies, workloads) = tokio::try_join!(
        async { pods.get(pod).await.map_err(kube_err("read the pod")) },
        async {
            pods.list(&ListParams::default())
                .await
                .map_err(kube_err("find the other quarantined pods and the pod's controller's replicas"))
        },
        async {
            Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(kube_err("find kustody's NetworkPolicies"))
        },
        workloads(client, ns),
    )?;
    let record = plan::existing_record(&p).and_then(Result::ok);
    let mut honeypot_policies = Vec::new();
    if let Some(h) = record.as_ref().and_then(|r| r.honeypot.as_deref()).and_then(|s| plan::Honeypot::parse(s).ok()) {
        honeypot_policies = Api::<NetworkPolicy>::namespaced(client.clone(), &h.namespace)
            .list(&ListParams::default())
            .await
            .map_err(kube_err("remove the honeypot's ingress policy"))?
            .items;
    }
    let node = match record.as_ref().and_then(|r| if r.cordoned { r.node.clone() } else { None }) {
        Some(n) => Api::<Node>::all(client.clone()).get_opt(&n).await.map_err(kube_err("uncordon the node"))?,
        None => None,
    };
    let uid = p.metadata.uid.clone();
    let quarantined = |x: &Pod| x.metadata.labels.as_ref().and_then(|l| l.get(LABEL)).is_some_and(|v| v == "true");
    Ok(ReleaseSnapshot {
        other_quarantined: all.items.iter().filter(|x| x.metadata.uid != uid && quarantined(x)).cloned().collect(),
        pod: p,
        policies: policies.items,
        honeypot_policies,
        node,
        workloads,
        pods: all.items,
    })
}

/// Quarantined pods in one namespace or all.
pub async fn list_quarantined(client: &kube::Client, ns: Option<&str>) -> Result<Vec<Pod>, ClusterError> {
    let api: Api<Pod> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut pods = api
        .list(&ListParams::default().labels(&format!("{LABEL}=true")))
        .await
        .map_err(kube_err("list quarantined pods"))?
        .items;
    pods.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    Ok(pods)
}
