//! Controllers: scheduler, ReplicaSet, Deployment, DaemonSet, StatefulSet, EndpointSlice and
//! Endpoints, garbage collection and namespace deletion. They read the store directly and write
//! through [`Api::call`], as their real counterparts' service accounts, so their writes are
//! validated and audited.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{uri, Api};
use crate::resources::{self as res, ResourceType};
use crate::selectors::LabelSelector;
use crate::store::{meta_str, now_rfc3339};

const RS_CTRL: &str = "system:serviceaccount:kube-system:replicaset-controller";
const DEPLOY_CTRL: &str = "system:serviceaccount:kube-system:deployment-controller";
const DS_CTRL: &str = "system:serviceaccount:kube-system:daemon-set-controller";
const STS_CTRL: &str = "system:serviceaccount:kube-system:statefulset-controller";
const EPS_CTRL: &str = "system:serviceaccount:kube-system:endpointslice-controller";
const EP_CTRL: &str = "system:serviceaccount:kube-system:endpoint-controller";
const GC_CTRL: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
const NS_CTRL: &str = "system:serviceaccount:kube-system:namespace-controller";
const SCHEDULER: &str = "system:kube-scheduler";

/// Events already emitted, so a persistent failure is reported once.
#[derive(Default)]
pub struct State {
    emitted: Mutex<HashSet<String>>,
}

/// Run all controllers until the task is aborted.
pub async fn run(api: Arc<Api>, state: Arc<State>) {
    let mut rx = api.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        reconcile_all(&api, &state).await;
        api.kubelet.sync(&api);
        tokio::select! {
            r = rx.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return; }
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
    }
}

pub async fn reconcile_all(api: &Arc<Api>, state: &State) {
    schedule(api, state).await;
    for d in api.store.list(&res::DEPLOYMENTS, None).1 {
        deployment(api, &d).await;
    }
    for rs in api.store.list(&res::REPLICASETS, None).1 {
        replicaset(api, state, &rs).await;
    }
    for ds in api.store.list(&res::DAEMONSETS, None).1 {
        daemonset(api, state, &ds).await;
    }
    for sts in api.store.list(&res::STATEFULSETS, None).1 {
        statefulset(api, state, &sts).await;
    }
    for svc in api.store.list(&res::SERVICES, None).1 {
        endpoints(api, &svc).await;
    }
    garbage_collect(api).await;
    namespaces(api).await;
}

fn terminating(o: &Value) -> bool {
    o["metadata"].get("deletionTimestamp").is_some()
}

fn finished(p: &Value) -> bool {
    matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn controller_uid(o: &Value) -> Option<&str> {
    o["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)?["uid"].as_str()
}

/// The pods in the owner's namespace whose controller it is.
fn owned_pods(api: &Api, owner: &Value) -> Vec<Arc<Value>> {
    let uid = meta_str(owner, "uid");
    api.store
        .list(&res::PODS, Some(meta_str(owner, "namespace")))
        .1
        .into_iter()
        .filter(|p| controller_uid(p) == Some(uid))
        .collect()
}

fn owner_ref(rt: &ResourceType, owner: &Value) -> Value {
    json!({"apiVersion": rt.api_version(), "kind": rt.kind, "name": meta_str(owner, "name"),
           "uid": meta_str(owner, "uid"), "controller": true, "blockOwnerDeletion": true})
}

/// Writes Events as one controller.
struct Recorder<'a> {
    api: &'a Arc<Api>,
    state: &'a State,
    who: &'static str,
    component: &'static str,
}

impl Recorder<'_> {
    /// An Event about `obj`. With `once`, the same reason and message for the same object is
    /// written only once (a persistent failure is not repeated on every pass).
    async fn event(&self, obj: &Value, rt: &ResourceType, typ: &str, reason: &str, message: &str, once: bool) {
        let key = format!("{}/{reason}/{message}", meta_str(obj, "uid"));
        if once {
            let mut e = match self.state.emitted.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !e.insert(key) {
                return;
            }
        }
        let ns = meta_str(obj, "namespace");
        let ns = if ns.is_empty() { "default" } else { ns };
        let now = now_rfc3339();
        let ev = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{}.{:x}", meta_str(obj, "name"), rand::random::<u64>()), "namespace": ns},
            "involvedObject": {"kind": rt.kind, "namespace": meta_str(obj, "namespace"), "name": meta_str(obj, "name"),
                               "uid": meta_str(obj, "uid"), "apiVersion": rt.api_version(), "resourceVersion": meta_str(obj, "resourceVersion")},
            "reason": reason, "message": message, "source": {"component": self.component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": typ,
            "eventTime": null, "reportingComponent": self.component, "reportingInstance": ""});
        let _ = self.api.call(self.who, "POST", &uri(&res::EVENTS, ns, ""), Some(&ev)).await;
    }
}

/// Emit a kubelet event about a pod (`fieldPath` names the container).
pub async fn pod_event(
    api: &Arc<Api>,
    node: &str,
    pod: &Value,
    container: &str,
    typ: &str,
    reason: &str,
    message: &str,
) {
    let ns = meta_str(pod, "namespace");
    let now = now_rfc3339();
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{:x}", meta_str(pod, "name"), rand::random::<u64>()), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": meta_str(pod, "name"), "uid": meta_str(pod, "uid"),
                           "apiVersion": "v1", "resourceVersion": meta_str(pod, "resourceVersion"), "fieldPath": format!("spec.containers{{{container}}}")},
        "reason": reason, "message": message, "source": {"component": "kubelet", "host": node},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": typ,
        "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": node});
    let _ = api.call(&format!("system:node:{node}"), "POST", &uri(&res::EVENTS, ns, ""), Some(&ev)).await;
}

// ---- scheduler ---------------------------------------------------------------------------

async fn schedule(api: &Arc<Api>, state: &State) {
    let events = Recorder { api, state, who: SCHEDULER, component: "default-scheduler" };
    let (_, pods) = api.store.list(&res::PODS, None);
    let (_, nodes) = api.store.list(&res::NODES, None);
    for p in pods {
        if !p["spec"]["nodeName"].as_str().unwrap_or("").is_empty() || terminating(&p) {
            continue;
        }
        let selector = LabelSelector::from_map(p["spec"].get("nodeSelector"));
        let want_selector = p["spec"]["nodeSelector"].as_object().is_some_and(|m| !m.is_empty());
        let count = |n: &str| api.store.list(&res::PODS, None).1.iter().filter(|x| x["spec"]["nodeName"] == n).count();
        let candidates: Vec<&Arc<Value>> = nodes
            .iter()
            .filter(|n| n["spec"]["unschedulable"].as_bool() != Some(true))
            .filter(|n| !want_selector || selector.matches(n))
            .collect();
        let Some(node) = candidates.into_iter().min_by_key(|n| count(meta_str(n, "name"))) else {
            let msg = format!(
                "0/{} nodes are available: {} node(s) were unschedulable. preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.",
                nodes.len(), nodes.len(), nodes.len(), nodes.len()
            );
            let m2 = msg.clone();
            api.update_status(SCHEDULER, &res::PODS, meta_str(&p, "namespace"), meta_str(&p, "name"), |x| {
                x["status"]["phase"] = json!("Pending");
                x["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                    "lastTransitionTime": now_rfc3339(), "reason": "Unschedulable", "message": m2}]);
            });
            events.event(&p, &res::PODS, "Warning", "FailedScheduling", &msg, true).await;
            continue;
        };
        let node_name = meta_str(node, "name").to_string();
        let (ns, name) = (meta_str(&p, "namespace"), meta_str(&p, "name"));
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}});
        if api.call(SCHEDULER, "POST", &format!("{}/binding", uri(&res::PODS, ns, name)), Some(&binding)).await.is_ok()
        {
            events
                .event(
                    &p,
                    &res::PODS,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node_name}"),
                    false,
                )
                .await;
        }
    }
}

// ---- workloads ---------------------------------------------------------------------------

fn template_hash(template: &Value) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(template.to_string().as_bytes());
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    d.iter().take(10).map(|b| *A.get(*b as usize % A.len()).unwrap_or(&b'x') as char).collect()
}

async fn deployment(api: &Arc<Api>, d: &Value) {
    if terminating(d) {
        return;
    }
    let (ns, name, uid) = (meta_str(d, "namespace"), meta_str(d, "name"), meta_str(d, "uid"));
    let hash = template_hash(&d["spec"]["template"]);
    let rs_name = format!("{name}-{hash}");
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let owned: Vec<Arc<Value>> =
        api.store.list(&res::REPLICASETS, Some(ns)).1.into_iter().filter(|r| controller_uid(r) == Some(uid)).collect();
    if !owned.iter().any(|r| meta_str(r, "name") == rs_name) {
        let mut tmpl = d["spec"]["template"].clone();
        tmpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                         "annotations": {"deployment.kubernetes.io/desired-replicas": replicas.to_string(), "deployment.kubernetes.io/revision": (owned.len() + 1).to_string()},
                         "ownerReferences": [owner_ref(&res::DEPLOYMENTS, d)]},
            "spec": {"replicas": replicas, "selector": selector, "template": tmpl}});
        let _ = api.call(DEPLOY_CTRL, "POST", &uri(&res::REPLICASETS, ns, ""), Some(&rs)).await;
    }
    for r in &owned {
        let want = if meta_str(r, "name") == rs_name { replicas } else { 0 };
        if r["spec"]["replicas"].as_i64() != Some(want) {
            let patch = json!({"spec": {"replicas": want}});
            let _ =
                api.call(DEPLOY_CTRL, "PATCH", &uri(&res::REPLICASETS, ns, meta_str(r, "name")), Some(&patch)).await;
        }
    }
    let owned: Vec<Arc<Value>> =
        api.store.list(&res::REPLICASETS, Some(ns)).1.into_iter().filter(|r| controller_uid(r) == Some(uid)).collect();
    let sum = |f: &str| owned.iter().map(|r| r["status"][f].as_i64().unwrap_or(0)).sum::<i64>();
    let (total, ready) = (sum("replicas"), sum("readyReplicas"));
    let updated = owned
        .iter()
        .find(|r| meta_str(r, "name") == rs_name)
        .map(|r| r["status"]["replicas"].as_i64().unwrap_or(0))
        .unwrap_or(0);
    let gen = d["metadata"]["generation"].clone();
    api.update_status(DEPLOY_CTRL, &res::DEPLOYMENTS, ns, name, |x| {
        let available = if ready >= replicas { "True" } else { "False" };
        let prev = x["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Available").cloned());
        let since = match prev {
            Some(c) if c["status"] == available => c["lastTransitionTime"].clone(),
            _ => json!(now_rfc3339()),
        };
        x["status"] = json!({"observedGeneration": gen, "replicas": total, "updatedReplicas": updated,
            "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": (replicas - ready).max(0),
            "conditions": [{"type": "Available", "status": available, "lastUpdateTime": since, "lastTransitionTime": since,
                            "reason": if available == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                            "message": if available == "True" { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }}]});
    });
}

fn pod_from_template(
    owner_rt: &ResourceType,
    owner: &Value,
    template: &Value,
    name: Option<&str>,
    generate: &str,
) -> Value {
    let mut meta = json!({"namespace": meta_str(owner, "namespace"), "labels": template["metadata"]["labels"].clone(),
                          "ownerReferences": [owner_ref(owner_rt, owner)]});
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(generate),
    }
    if let Some(a) = template["metadata"].get("annotations") {
        meta["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

/// Release owned pods that stopped matching and adopt matching orphans. Returns the active
/// owned pods after the change.
async fn claim(
    api: &Arc<Api>,
    who: &str,
    owner_rt: &ResourceType,
    owner: &Value,
    sel: &LabelSelector,
) -> Vec<Arc<Value>> {
    let (ns, uid) = (meta_str(owner, "namespace"), meta_str(owner, "uid"));
    let pods = api.store.list(&res::PODS, Some(ns)).1;
    let mut active = Vec::new();
    for p in pods {
        let ctrl = controller_uid(&p);
        let matches = sel.matches(&p);
        let pname = meta_str(&p, "name");
        if ctrl == Some(uid) && !matches {
            let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": meta_str(&p, "uid")}});
            let _ = api.call(who, "PATCH", &uri(&res::PODS, ns, pname), Some(&patch)).await;
        } else if ctrl.is_none() && matches && !terminating(&p) && !finished(&p) && !terminating(owner) {
            let patch =
                json!({"metadata": {"ownerReferences": [owner_ref(owner_rt, owner)], "uid": meta_str(&p, "uid")}});
            if api.call(who, "PATCH", &uri(&res::PODS, ns, pname), Some(&patch)).await.is_ok() {
                active.push(p);
            }
        } else if ctrl == Some(uid) && !terminating(&p) && !finished(&p) {
            active.push(p);
        }
    }
    active
}

async fn replicaset(api: &Arc<Api>, state: &State, rs: &Value) {
    let events = Recorder { api, state, who: RS_CTRL, component: "replicaset-controller" };
    if terminating(rs) {
        return;
    }
    let (ns, name) = (meta_str(rs, "namespace"), meta_str(rs, "name"));
    let sel = LabelSelector::from_object(rs["spec"].get("selector"));
    let active = claim(api, RS_CTRL, &res::REPLICASETS, rs, &sel).await;
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    if active.len() < want {
        for _ in active.len()..want {
            let pod = pod_from_template(&res::REPLICASETS, rs, &rs["spec"]["template"], None, &format!("{name}-"));
            if let Ok(created) = api.call(RS_CTRL, "POST", &uri(&res::PODS, ns, ""), Some(&pod)).await {
                events
                    .event(
                        rs,
                        &res::REPLICASETS,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {}", meta_str(&created, "name")),
                        false,
                    )
                    .await;
            }
        }
    } else if active.len() > want {
        let mut victims = active.clone();
        victims.sort_by(|a, b| meta_str(b, "creationTimestamp").cmp(meta_str(a, "creationTimestamp")));
        for v in victims.iter().take(active.len() - want) {
            if api.call(RS_CTRL, "DELETE", &uri(&res::PODS, ns, meta_str(v, "name")), None).await.is_ok() {
                events
                    .event(
                        rs,
                        &res::REPLICASETS,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", meta_str(v, "name")),
                        false,
                    )
                    .await;
            }
        }
    }
    let active: Vec<Arc<Value>> = owned_pods(api, rs).into_iter().filter(|p| !terminating(p) && !finished(p)).collect();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let gen = rs["metadata"]["generation"].clone();
    let total = active.len();
    api.update_status(RS_CTRL, &res::REPLICASETS, ns, name, |x| {
        x["status"] = json!({"replicas": total, "fullyLabeledReplicas": total, "readyReplicas": ready,
                             "availableReplicas": ready, "observedGeneration": gen});
    });
}

async fn daemonset(api: &Arc<Api>, state: &State, ds: &Value) {
    let events = Recorder { api, state, who: DS_CTRL, component: "daemonset-controller" };
    if terminating(ds) {
        return;
    }
    let (ns, name) = (meta_str(ds, "namespace"), meta_str(ds, "name"));
    let sel = LabelSelector::from_object(ds["spec"].get("selector"));
    let active = claim(api, DS_CTRL, &res::DAEMONSETS, ds, &sel).await;
    let nodes: Vec<String> =
        api.store.list(&res::NODES, None).1.iter().map(|n| meta_str(n, "name").to_string()).collect();
    for node in &nodes {
        if active.iter().any(|p| p["spec"]["nodeName"] == node.as_str()) {
            continue;
        }
        let mut pod = pod_from_template(&res::DAEMONSETS, ds, &ds["spec"]["template"], None, &format!("{name}-"));
        pod["spec"]["nodeName"] = json!(node);
        if let Ok(created) = api.call(DS_CTRL, "POST", &uri(&res::PODS, ns, ""), Some(&pod)).await {
            events
                .event(
                    ds,
                    &res::DAEMONSETS,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta_str(&created, "name")),
                    false,
                )
                .await;
        }
    }
    let active: Vec<Arc<Value>> = owned_pods(api, ds).into_iter().filter(|p| !terminating(p)).collect();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let (n, cur, gen) = (nodes.len(), active.len(), ds["metadata"]["generation"].clone());
    api.update_status(DS_CTRL, &res::DAEMONSETS, ns, name, |x| {
        x["status"] = json!({"currentNumberScheduled": cur, "desiredNumberScheduled": n, "numberMisscheduled": 0,
                             "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": cur, "observedGeneration": gen});
    });
}

/// A StatefulSet pod's claims from `volumeClaimTemplates`: `TEMPLATE-STS-ORDINAL`, created when
/// missing (and kept after the pod and the StatefulSet go, as with the default retention
/// policy), mounted in place of a template volume of the same name.
async fn claims_for(api: &Arc<Api>, sts: &Value, ordinal: usize, pod: &mut Value) -> Result<(), String> {
    let (ns, name) = (meta_str(sts, "namespace"), meta_str(sts, "name"));
    for t in sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let tname = t["metadata"]["name"].as_str().unwrap_or("");
        let claim = format!("{tname}-{name}-{ordinal}");
        if api.store.get(&res::PVCS, ns, &claim).is_none() {
            let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": ns, "labels": t["metadata"]["labels"].clone()},
                "spec": t["spec"].clone()});
            for (k, v) in sts["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
                pvc["metadata"]["labels"][k] = v.clone();
            }
            if let Err(e) = api.call(STS_CTRL, "POST", &uri(&res::PVCS, ns, ""), Some(&pvc)).await {
                return Err(format!(
                    "create Claim {claim} for Pod {name}-{ordinal} in StatefulSet {name} failed error: {}",
                    e.message
                ));
            }
        }
        let vol = json!({"name": tname, "persistentVolumeClaim": {"claimName": claim}});
        match pod["spec"]["volumes"].as_array_mut() {
            Some(vs) => {
                vs.retain(|v| v["name"] != tname);
                vs.push(vol);
            }
            None => pod["spec"]["volumes"] = json!([vol]),
        }
    }
    Ok(())
}

async fn statefulset(api: &Arc<Api>, state: &State, sts: &Value) {
    let events = Recorder { api, state, who: STS_CTRL, component: "statefulset-controller" };
    if terminating(sts) {
        return;
    }
    let (ns, name, uid) = (meta_str(sts, "namespace"), meta_str(sts, "name"), meta_str(sts, "uid"));
    let sel = LabelSelector::from_object(sts["spec"].get("selector"));
    let _ = claim(api, STS_CTRL, &res::STATEFULSETS, sts, &sel).await;
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    for i in 0..replicas {
        let pod_name = format!("{name}-{i}");
        match api.store.get(&res::PODS, ns, &pod_name) {
            Some(p) if controller_uid(&p) == Some(uid) => {}
            Some(_) => {
                let msg = format!(
                    "create Pod {pod_name} in StatefulSet {name} failed error: pods \"{pod_name}\" already exists"
                );
                events.event(sts, &res::STATEFULSETS, "Warning", "FailedCreate", &msg, true).await;
                break;
            }
            None => {
                let mut pod = pod_from_template(&res::STATEFULSETS, sts, &sts["spec"]["template"], Some(&pod_name), "");
                pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
                pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(i.to_string());
                pod["spec"]["hostname"] = json!(pod_name);
                if let Err(msg) = claims_for(api, sts, i, &mut pod).await {
                    events.event(sts, &res::STATEFULSETS, "Warning", "FailedCreate", &msg, true).await;
                    break;
                }
                match api.call(STS_CTRL, "POST", &uri(&res::PODS, ns, ""), Some(&pod)).await {
                    Ok(_) => {
                        events
                            .event(
                                sts,
                                &res::STATEFULSETS,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                                false,
                            )
                            .await;
                    }
                    Err(e) => {
                        let msg = format!("create Pod {pod_name} in StatefulSet {name} failed error: {}", e.message);
                        events.event(sts, &res::STATEFULSETS, "Warning", "FailedCreate", &msg, true).await;
                    }
                }
                // OrderedReady: one pod at a time until it is running; Parallel: all at once
                if !parallel {
                    break;
                }
                continue;
            }
        }
        if !parallel && !api.store.get(&res::PODS, ns, &pod_name).is_some_and(|p| is_ready(&p)) {
            break;
        }
    }
    let owned = owned_pods(api, sts);
    for p in &owned {
        let ord = meta_str(p, "name").rsplit('-').next().and_then(|o| o.parse::<usize>().ok());
        if ord.is_some_and(|o| o >= replicas) && !terminating(p) {
            let _ = api.call(STS_CTRL, "DELETE", &uri(&res::PODS, ns, meta_str(p, "name")), None).await;
        }
    }
    let ready = owned.iter().filter(|p| is_ready(p) && !terminating(p)).count();
    let (cur, gen) = (owned.iter().filter(|p| !terminating(p)).count(), sts["metadata"]["generation"].clone());
    api.update_status(STS_CTRL, &res::STATEFULSETS, ns, name, |x| {
        x["status"] = json!({"observedGeneration": gen, "replicas": cur, "readyReplicas": ready, "currentReplicas": cur,
                             "updatedReplicas": cur, "availableReplicas": ready});
    });
}

// ---- services ----------------------------------------------------------------------------

fn resolve_port(pod: &Value, target: &Value) -> Option<i64> {
    if let Some(n) = target.as_i64() {
        return Some(n);
    }
    let name = target.as_str()?;
    if let Ok(n) = name.parse::<i64>() {
        return Some(n);
    }
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name)?["containerPort"]
        .as_i64()
}

async fn endpoints(api: &Arc<Api>, svc: &Value) {
    let sel = LabelSelector::from_map(svc["spec"].get("selector"));
    if svc["spec"]["selector"].as_object().is_none_or(|m| m.is_empty()) || terminating(svc) {
        return;
    }
    let (ns, name) = (meta_str(svc, "namespace"), meta_str(svc, "name"));
    let mut pods: Vec<Arc<Value>> = api
        .select(&res::PODS, ns, &sel)
        .into_iter()
        .filter(|p| !p["status"]["podIP"].as_str().unwrap_or("").is_empty() && !finished(p))
        .collect();
    pods.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
    let svc_ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let first_pod = pods.first().cloned();
    let ports: Vec<Value> = svc_ports
        .iter()
        .filter_map(|p| {
            let port = match &first_pod {
                Some(pod) => resolve_port(pod, &p["targetPort"])?,
                None => p["targetPort"].as_i64().or_else(|| p["port"].as_i64())?,
            };
            Some(json!({"name": p["name"].as_str().unwrap_or(""), "protocol": p["protocol"].as_str().unwrap_or("TCP"), "port": port}))
        })
        .collect();
    let eps: Vec<Value> = pods
        .iter()
        .map(|p| {
            let ready = is_ready(p) && !terminating(p);
            json!({"addresses": [p["status"]["podIP"]], "conditions": {"ready": ready, "serving": is_ready(p), "terminating": terminating(p)},
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")},
                   "nodeName": p["spec"]["nodeName"]})
        })
        .collect();
    // EndpointSlice
    let slice_sel = LabelSelector::from_map(Some(
        &json!({"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}),
    ));
    let existing = api.select(&res::ENDPOINTSLICES, ns, &slice_sel);
    match existing.first() {
        None => {
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"generateName": format!("{name}-"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                             "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now_rfc3339()},
                             "ownerReferences": [owner_ref(&res::SERVICES, svc)]},
                "addressType": "IPv4", "endpoints": eps, "ports": ports});
            let _ = api.call(EPS_CTRL, "POST", &uri(&res::ENDPOINTSLICES, ns, ""), Some(&slice)).await;
        }
        Some(s) if s["endpoints"] != json!(eps) || s["ports"] != json!(ports) => {
            let mut new = (**s).clone();
            new["endpoints"] = json!(eps);
            new["ports"] = json!(ports);
            new["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"] = json!(now_rfc3339());
            let _ = api.call(EPS_CTRL, "PUT", &uri(&res::ENDPOINTSLICES, ns, meta_str(s, "name")), Some(&new)).await;
        }
        Some(_) => {}
    }
    // Endpoints (legacy)
    let addr = |p: &Arc<Value>| {
        json!({"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"],
        "targetRef": {"kind": "Pod", "namespace": ns, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")}})
    };
    let ready: Vec<Value> = pods.iter().filter(|p| is_ready(p) && !terminating(p)).map(addr).collect();
    let not_ready: Vec<Value> = pods.iter().filter(|p| !is_ready(p) || terminating(p)).map(addr).collect();
    let mut subset = json!({"ports": ports});
    if !ready.is_empty() {
        subset["addresses"] = json!(ready);
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = json!(not_ready);
    }
    let subsets = if ready.is_empty() && not_ready.is_empty() { json!([]) } else { json!([subset]) };
    match api.store.get(&res::ENDPOINTS, ns, name) {
        None => {
            let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": svc["metadata"]["labels"].clone()}, "subsets": subsets});
            let _ = api.call(EP_CTRL, "POST", &uri(&res::ENDPOINTS, ns, ""), Some(&ep)).await;
        }
        Some(e) if e.get("subsets").cloned().unwrap_or(json!([])) != subsets => {
            let mut new = (*e).clone();
            new["subsets"] = subsets;
            let _ = api.call(EP_CTRL, "PUT", &uri(&res::ENDPOINTS, ns, name), Some(&new)).await;
        }
        Some(_) => {}
    }
}

// ---- garbage collection and namespaces ---------------------------------------------------

async fn garbage_collect(api: &Arc<Api>) {
    let stored: Vec<&'static ResourceType> = res::ALL.iter().copied().filter(|r| !r.create_only).collect();
    let mut uids: HashSet<String> = HashSet::new();
    let mut all: Vec<(&'static ResourceType, Arc<Value>)> = Vec::new();
    for rt in &stored {
        for o in api.store.list(rt, None).1 {
            uids.insert(meta_str(&o, "uid").to_string());
            all.push((rt, o));
        }
    }
    for (rt, o) in all {
        let Some(refs) = o["metadata"]["ownerReferences"].as_array().filter(|r| !r.is_empty()) else { continue };
        let owner_gone = refs.iter().all(|r| !uids.contains(r["uid"].as_str().unwrap_or("")));
        // An owner being deleted takes its dependents with it (background propagation).
        let owner_terminating = refs.iter().filter(|r| r["controller"] == true).any(|r| {
            let kind = r["kind"].as_str().unwrap_or("");
            let group = r["apiVersion"].as_str().unwrap_or("").split_once('/').map(|(g, _)| g).unwrap_or("");
            res::by_kind(group, kind)
                .and_then(|ort| api.store.get(ort, meta_str(&o, "namespace"), r["name"].as_str().unwrap_or("")))
                .is_some_and(|owner| terminating(&owner) && owner["metadata"]["uid"] == r["uid"])
        });
        if (owner_gone || owner_terminating) && !terminating(&o) {
            let _ = api.call(GC_CTRL, "DELETE", &uri(rt, meta_str(&o, "namespace"), meta_str(&o, "name")), None).await;
        }
    }
}

async fn namespaces(api: &Arc<Api>) {
    for n in api.store.list(&res::NAMESPACES, None).1 {
        if n["status"]["phase"] != "Terminating" {
            continue;
        }
        let ns = meta_str(&n, "name").to_string();
        let mut left = 0;
        for rt in res::ALL.iter().copied().filter(|r| r.namespaced && !r.create_only) {
            for o in api.store.list(rt, Some(&ns)).1 {
                left += 1;
                if !terminating(&o) {
                    let _ = api.call(NS_CTRL, "DELETE", &uri(rt, &ns, meta_str(&o, "name")), None).await;
                }
            }
        }
        if left == 0 {
            let _ = api.store.delete(&res::NAMESPACES, "", &ns);
        }
    }
}

/// The Node objects of a fresh cluster.
pub fn node_objects(names: &[String]) -> Vec<Value> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let now = now_rfc3339();
            let ip = crate::kubelet::host_ip(i);
            let cond = |t: &str, s: &str, reason: &str, msg: &str| json!({"type": t, "status": s, "lastHeartbeatTime": now, "lastTransitionTime": now, "reason": reason, "message": msg});
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
                "spec": {},
                "status": {"capacity": {"cpu": "2", "ephemeral-storage": "64Gi", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "24Gi", "pods": "110"},
                           "allocatable": {"cpu": "2", "ephemeral-storage": "60Gi", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "23Gi", "pods": "110"},
                           "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                                          cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                                          cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                                          cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")],
                           "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                           "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                           "nodeInfo": {"machineID": format!("{:032x}", i + 1), "systemUUID": format!("{:032x}", i + 1), "bootID": format!("{:032x}", i + 7),
                                        "kernelVersion": "6.1.0-kustody", "osImage": "kustody test cluster (runc)",
                                        "containerRuntimeVersion": "runc://1.1.5", "kubeletVersion": "v1.36.2-kustody-testcluster",
                                        "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                           "images": []}})
        })
        .collect()
}
