//! Verification by reading back: after a quarantine (labels, EndpointSlices, owners, policies,
//! replacements, node) and after a release (the pod released, and what the plan said happens
//! next: it stays unowned and running, or its controller adopts it and removes a surplus replica).

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kustody_cluster::select;
use kustody_cluster::ClusterError;

use crate::apply::{kube_err, workloads};
use crate::plan::{self, is_ours, Next, Options, Plan, ReleasePlan, Workload, LABEL};

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
    out.extend(plan.owners.iter().map(|w| replacement(w, plan, &pod, &all_pods, &node)));
    if opts.cordon && !node.is_empty() {
        let n = Api::<Node>::all(client.clone()).get(&node).await.map_err(kube_err("verify the node is cordoned"))?;
        let un = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        out.push(check("cordoned", un, format!("node {node} {}", if un { "is cordoned" } else { "is NOT cordoned" })));
    }
    Ok(out)
}

/// The `replacement` check for one controller that owned the pod.
fn replacement(w: &Workload, plan: &Plan, pod: &Pod, all_pods: &[Pod], node: &str) -> Check {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let check = |name: &str, ok: bool, detail: String| Check {
        name: name.into(),
        status: if ok { CheckStatus::Ok } else { CheckStatus::Failed },
        detail,
    };
    let owned: Vec<&Pod> = all_pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == w.uid)
        })
        .collect();
    let others: Vec<String> = owned
        .iter()
        .filter(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    match w.kind.as_str() {
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
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
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
    }
}

/// Read back a release: kustody's labels and record are gone, and what the plan said happens
/// next does (`plan.next`): the pod stays unowned and running with no controller selecting it,
/// or its controller adopts it and (a ReplicaSet) is back to its count. Polls until that holds,
/// the pod is being deleted, or `wait` has passed.
pub async fn verify_release(
    client: &kube::Client,
    plan: &ReleasePlan,
    wait: Duration,
) -> Result<Vec<Check>, ClusterError> {
    let started = Instant::now();
    loop {
        let checks = verify_release_once(client, plan).await?;
        let gone = checks.iter().any(|c| c.name == "running" && c.status == CheckStatus::Failed);
        if gone || checks.iter().all(|c| c.status != CheckStatus::Failed) || started.elapsed() >= wait {
            return Ok(checks);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check(name: &str, ok: bool, detail: String) -> Check {
    Check { name: name.into(), status: if ok { CheckStatus::Ok } else { CheckStatus::Failed }, detail }
}

async fn verify_release_once(client: &kube::Client, plan: &ReleasePlan) -> Result<Vec<Check>, ClusterError> {
    let ns = plan.namespace.as_str();
    let name = plan.pod.as_str();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Some(pod) = pods.get_opt(name).await.map_err(kube_err("verify the release"))? else {
        return Ok(vec![check("running", false, format!("pod/{name} is gone: it was deleted after the release"))]);
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let has_record = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(plan::ANNOTATION));
    let ours: Vec<&String> = labels.keys().filter(|k| is_ours(k)).collect();
    let mut out = vec![check(
        "released",
        ours.is_empty() && !has_record,
        if ours.is_empty() && !has_record {
            "no quarantine labels, no record: kustody's policies no longer select it".into()
        } else {
            format!("still carries {}", if ours.is_empty() { plan::ANNOTATION.to_owned() } else { LABEL.to_owned() })
        },
    )];
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let alive = !terminating && phase != "Succeeded" && phase != "Failed";
    let running = |what: &str| {
        check(
            "running",
            alive,
            if alive {
                format!("pod/{name} is {} ({what})", if phase.is_empty() { "not finished" } else { phase.as_str() })
            } else if terminating {
                format!("pod/{name} is being deleted: its controller removed it (collect evidence before releasing)")
            } else {
                format!("pod/{name} has finished ({phase})")
            },
        )
    };
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match &plan.next {
        Next::Nothing => {}
        Next::StaysUnowned => {
            out.push(check(
                "unowned",
                owner.is_none(),
                match owner {
                    None => "no controller owns it".into(),
                    Some(o) => format!("{}/{} adopted it", o.kind, o.name),
                },
            ));
            let selecting: Vec<String> = workloads(client, ns)
                .await?
                .iter()
                .filter(|w| select::matches_opt(w.selector.as_ref(), &labels))
                .map(Workload::id)
                .collect();
            out.push(check(
                "selectors",
                selecting.is_empty(),
                if selecting.is_empty() {
                    "no controller selects its labels: nothing adopts, replaces or deletes it".into()
                } else {
                    format!("{} selects its labels and may adopt it", selecting.join(", "))
                },
            ));
            out.push(running("left alone until someone deletes it"));
        }
        Next::Adopted { controllers, uid, controller_kind, replicas, owned_before } => {
            let by = controllers.first().cloned().unwrap_or_default();
            let adopted = owner.is_some_and(|o| &o.uid == uid);
            out.push(check(
                "adopted",
                adopted,
                if adopted { format!("{by} owns it again") } else { format!("{by} has not adopted it (yet)") },
            ));
            if controller_kind == "ReplicaSet" {
                let all = pods.list(&ListParams::default()).await.map_err(kube_err("verify the release"))?.items;
                let active: Vec<String> = all
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.metadata
                                .owner_references
                                .iter()
                                .flatten()
                                .any(|o| o.controller == Some(true) && &o.uid == uid)
                    })
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                let want = replicas.unwrap_or(1).max(0) as usize;
                let removed: Vec<&String> = owned_before.iter().filter(|n| !active.contains(n)).collect();
                let removed = if removed.is_empty() {
                    "none".to_owned()
                } else {
                    removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                };
                out.push(check(
                    "surplus",
                    adopted && active.len() <= want,
                    format!("{by} has {}/{want} pods ({}); removed: {removed}", active.len(), active.join(", ")),
                ));
            }
            out.push(running("kept by its controller"));
        }
    }
    Ok(out)
}
