//! Reading the cluster, checking permissions, sending a plan's requests in their safe order, and
//! verifying the result by reading it back.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kustody_cluster::select;
use kustody_cluster::ClusterError;
use serde_json::{json, Value};

use crate::plan::{self, Access, Options, Plan, ReleaseSnapshot, Request, Snapshot, Workload, LABEL};

fn kube_err(what: &str) -> impl Fn(kube::Error) -> ClusterError + '_ {
    move |e| match ClusterError::from_kube(e) {
        ClusterError::NotFound(m) => ClusterError::NotFound(m),
        ClusterError::Forbidden(m) => ClusterError::Forbidden(format!("{m} (needed to {what})")),
        other => other,
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
async fn workloads(client: &kube::Client, ns: &str) -> Result<Vec<Workload>, ClusterError> {
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
            .map_err(|e| ClusterError::Api(e.to_string()))?;
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
    let req = b.body(body).map_err(|e| ClusterError::Api(e.to_string()))?;
    client.request::<Value>(req).await.map_err(ClusterError::from_kube)
}

/// Send requests in order; stop at the first failure.
pub async fn send_all(client: &kube::Client, requests: &[Request]) -> (Vec<Sent>, Option<(usize, ClusterError)>) {
    let mut sent = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let t = Instant::now();
        let res = send(client, r).await;
        let millis = t.elapsed().as_secs_f64() * 1000.0;
        match res {
            Ok(_) => sent.push(Sent { request: r.clone(), outcome: "ok".into(), ok: true, millis }),
            Err(e) => {
                sent.push(Sent { request: r.clone(), outcome: e.to_string(), ok: false, millis });
                return (sent, Some((i, e)));
            }
        }
    }
    (sent, None)
}

/// One verification result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Holds, with a caveat the responder must know (no replacement possible, same node).
    Caveat,
    Failed,
}

fn pod_ref_matches(e: &k8s_openapi::api::discovery::v1::Endpoint, pod: &str, uid: &str) -> bool {
    e.target_ref.as_ref().is_some_and(|t| {
        t.kind.as_deref() == Some("Pod") && (t.uid.as_deref() == Some(uid) || t.name.as_deref() == Some(pod))
    })
}

/// Read back and check the quarantine: labels, EndpointSlices, owners, policies, replacements,
/// node. Polls until everything holds or `wait` has passed.
pub async fn verify(
    client: &kube::Client,
    plan: &Plan,
    opts: &Options,
    wait: Duration,
) -> Result<Vec<Check>, ClusterError> {
    let ns = plan.namespace.as_str();
    let started = Instant::now();
    loop {
        let checks = verify_once(client, plan, opts, ns).await?;
        if checks.iter().all(|c| c.status != CheckStatus::Failed) || started.elapsed() >= wait {
            return Ok(checks);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn verify_once(client: &kube::Client, plan: &Plan, opts: &Options, ns: &str) -> Result<Vec<Check>, ClusterError> {
    let lp = ListParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (pod, slices, policies, all_pods) = tokio::try_join!(
        async { pods.get(&plan.pod).await.map_err(kube_err("verify the quarantine")) },
        async {
            Api::<EndpointSlice>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("verify the pod left its Services' EndpointSlices"))
        },
        async {
            Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .map_err(kube_err("verify the NetworkPolicies"))
        },
        async {
            if plan.owners.is_empty() {
                Ok(Vec::new())
            } else {
                pods.list(&lp).await.map(|l| l.items).map_err(kube_err("verify the replacement pod"))
            }
        },
    )?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut out = Vec::new();
    let check = |name: &str, ok: bool, detail: String| Check {
        name: name.into(),
        status: if ok { CheckStatus::Ok } else { CheckStatus::Failed },
        detail,
    };
    out.push(check(
        "labelled",
        labels.get(LABEL).map(String::as_str) == Some("true"),
        format!("pod carries {LABEL}=true"),
    ));
    let in_slices: Vec<String> = slices
        .items
        .iter()
        .filter(|s| s.endpoints.iter().flatten().any(|e| pod_ref_matches(e, &plan.pod, &uid)))
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    out.push(check(
        "endpoints",
        in_slices.is_empty(),
        if in_slices.is_empty() {
            "in no EndpointSlice: no Service sends it traffic".into()
        } else {
            format!("still in EndpointSlice {}", in_slices.join(", "))
        },
    ));
    let owners: Vec<String> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    out.push(check(
        "unowned",
        owners.is_empty(),
        if owners.is_empty() {
            "no controller owns it".into()
        } else {
            format!("still owned by {}", owners.join(", "))
        },
    ));
    let selecting: Vec<&NetworkPolicy> = policies
        .items
        .iter()
        .filter(|p| {
            p.spec.as_ref().is_some_and(|s| select::matches(&s.pod_selector.clone().unwrap_or_default(), &labels))
        })
        .collect();
    let foreign: Vec<String> = selecting
        .iter()
        .filter(|p| !p.metadata.name.as_deref().unwrap_or_default().starts_with("kustody-quarantine-"))
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    let deny = selecting.iter().any(|p| p.metadata.name.as_deref() == Some(plan::POLICY_DENY));
    out.push(check(
        "policies",
        deny && foreign.is_empty(),
        if !deny {
            format!("NetworkPolicy {} does not select the pod", plan::POLICY_DENY)
        } else if foreign.is_empty() {
            let names: Vec<String> = selecting.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
            format!("selected only by kustody's {}", names.join(", "))
        } else {
            format!("other NetworkPolicies still select it and may allow traffic: {}", foreign.join(", "))
        },
    ));
    if plan.owners.is_empty() {
        out.push(Check {
            name: "replacement".into(),
            status: CheckStatus::Caveat,
            detail: "no controller owned the pod: nothing starts a replacement".into(),
        });
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    for w in &plan.owners {
        let owned: Vec<&Pod> = all_pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.controller == Some(true) && o.uid == w.uid)
            })
            .collect();
        let others: Vec<String> = owned
            .iter()
            .filter(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        let c = match w.kind.as_str() {
            "ReplicaSet" => {
                let want = w.replicas.unwrap_or(1).max(0) as usize;
                let via = w.owner.as_ref().map(|o| format!(" (of {o})")).unwrap_or_default();
                check(
                    "replacement",
                    owned.len() >= want && !owned.iter().any(|p| p.metadata.uid.as_deref() == Some(uid.as_str())),
                    format!("ReplicaSet {}{via} has {}/{want} pods without this one: {}", w.name, owned.len(), others.join(", ")),
                )
            }
            "DaemonSet" => {
                let same: Vec<&String> = owned
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
                    .filter_map(|p| p.metadata.name.as_ref())
                    .collect();
                if same.is_empty() {
                    check("replacement", false, format!("DaemonSet {} has not yet replaced the pod on node {node}", w.name))
                } else {
                    Check {
                        name: "replacement".into(),
                        status: CheckStatus::Caveat,
                        detail: format!(
                            "DaemonSet {} replaced it with {} on the SAME node {node}: if the node is compromised, so is the replacement (--cordon does not stop DaemonSet pods)",
                            w.name,
                            same.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    }
                }
            }
            "StatefulSet" => Check {
                name: "replacement".into(),
                status: CheckStatus::Caveat,
                detail: format!(
                    "StatefulSet {} cannot replace it: the quarantined pod still holds the name {}, so the set runs one replica short until `kustody release` or the pod is deleted after analysis",
                    w.name, plan.pod
                ),
            },
            other => Check {
                name: "replacement".into(),
                status: CheckStatus::Caveat,
                detail: format!("{other} {}: whether it starts another pod depends on its own logic; not checked", w.name),
            },
        };
        out.push(c);
    }
    if opts.cordon && !node.is_empty() {
        let n = Api::<Node>::all(client.clone()).get(&node).await.map_err(kube_err("verify the node is cordoned"))?;
        let un = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        out.push(check("cordoned", un, format!("node {node} {}", if un { "is cordoned" } else { "is NOT cordoned" })));
    }
    Ok(out)
}

/// Read what a release needs.
pub async fn release_snapshot(client: &kube::Client, ns: &str, pod: &str) -> Result<ReleaseSnapshot, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (p, q, policies) = tokio::try_join!(
        async { pods.get(pod).await.map_err(kube_err("read the pod")) },
        async {
            pods.list(&ListParams::default().labels(&format!("{LABEL}=true")))
                .await
                .map_err(kube_err("find the other quarantined pods"))
        },
        async {
            Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(kube_err("find kustody's NetworkPolicies"))
        },
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
    Ok(ReleaseSnapshot {
        other_quarantined: q.items.into_iter().filter(|x| x.metadata.uid != uid).collect(),
        pod: p,
        policies: policies.items,
        honeypot_policies,
        node,
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
