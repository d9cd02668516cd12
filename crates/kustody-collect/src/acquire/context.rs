//! A pod's cluster context through the API: the controller chain, the node, events, the
//! service account and the RBAC that grants it rights, the NetworkPolicies and Services that
//! select the pod, and the images the node resolved. Lists shared by every pod of a run are
//! fetched once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::session::{pretty, Session};
use crate::bundle::{now, Source};

/// Where the projected service-account token is mounted by default.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Mount paths of volumes that hold credentials (Secrets, projected service-account tokens):
/// listed, never hashed or copied.
pub fn credential_mounts(pod: &Value, container: &str) -> Vec<String> {
    let volumes: BTreeMap<&str, &Value> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.get("name")?.as_str()?, v)))
        .collect();
    let is_credential = |v: &Value| {
        v.get("secret").is_some()
            || v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|x| x.get("secret").is_some() || x.get("serviceAccountToken").is_some()))
    };
    let mut out: Vec<String> = all_containers(pod)
        .into_iter()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(container))
        .flat_map(|c| c.get("volumeMounts").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter(|m| {
            m.get("name").and_then(Value::as_str).and_then(|n| volumes.get(n)).is_some_and(|v| is_credential(v))
        })
        .filter_map(|m| m.get("mountPath").and_then(Value::as_str).map(|p| p.trim_end_matches('/').to_owned()))
        .collect();
    if !out.iter().any(|p| p == SA_MOUNT) {
        out.push(SA_MOUNT.into());
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn all_containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array).into_iter().flatten())
        .collect()
}

pub(super) fn under(path: &str, dirs: &[String]) -> bool {
    dirs.iter().any(|d| path == d || path.starts_with(&format!("{d}/")))
}

/// The plural resource and API prefix for an owner kind.
fn owner_url(ns: &str, api_version: &str, kind: &str, name: &str) -> Option<String> {
    let plural = match kind {
        "ReplicaSet" => "replicasets",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "Job" => "jobs",
        "CronJob" => "cronjobs",
        "ReplicationController" => "replicationcontrollers",
        _ => return None,
    };
    let base = if api_version == "v1" { "/api/v1".to_owned() } else { format!("/apis/{api_version}") };
    Some(format!("{base}/namespaces/{ns}/{plural}/{name}"))
}

fn controller_ref(obj: &Value) -> Option<(String, String, String)> {
    let r = obj
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?;
    Some((
        r.get("apiVersion")?.as_str()?.to_owned(),
        r.get("kind")?.as_str()?.to_owned(),
        r.get("name")?.as_str()?.to_owned(),
    ))
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

fn selects(what: &str, o: &Value, labels: &BTreeMap<String, String>) -> bool {
    match what {
        "networkpolicies" => o
            .pointer("/spec/podSelector")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .is_some_and(|sel| kustody_cluster::select::matches(&sel, labels)),
        _ => {
            let sel: Option<BTreeMap<String, String>> =
                o.pointer("/spec/selector").and_then(|s| serde_json::from_value(s.clone()).ok());
            sel.as_ref().is_some_and(|s| !s.is_empty())
                && kustody_cluster::select::service_matches(sel.as_ref(), labels)
        }
    }
}

impl Session {
    /// Cluster context: owners, node, events, service account and its RBAC, policies,
    /// services, images.
    pub(super) async fn context(self: &Arc<Self>, pod: &Value, dir: &str) {
        let t0 = Instant::now();
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        let sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        let node_f = async {
            if let Some(n) = node {
                self.fetch(dir, "node", &format!("/api/v1/nodes/{n}")).await;
            }
        };
        let events = async {
            let url = format!(
                "/api/v1/namespaces/{ns}/events?fieldSelector={}",
                kustody_cluster::oauth::percent_encode(&format!("involvedObject.uid={uid}"))
            );
            self.fetch(dir, "events", &url).await;
        };
        let sa_f = async {
            self.fetch(dir, "serviceaccount", &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}")).await;
            self.rbac(ns, sa, dir).await;
        };
        tokio::join!(self.owners(pod, ns, dir), node_f, events, sa_f, self.selecting(pod, ns, dir));
        // images with the digests the kubelet resolved
        let images: Vec<Value> = ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"]
            .iter()
            .flat_map(|k| pod.pointer(&format!("/status/{k}")).and_then(Value::as_array).cloned().unwrap_or_default())
            .map(|s| json!({"container": s.get("name"), "image": s.get("image"), "imageID": s.get("imageID"), "containerID": s.get("containerID")}))
            .collect();
        let url = format!(
            "/api/v1/namespaces/{ns}/pods/{}",
            pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
        );
        self.bundle.save(
            &format!("{dir}/cluster/images.json"),
            &pretty(&Value::Array(images)),
            Source::Api { method: "GET".into(), url },
            now(),
            vec!["from the pod's container statuses (imageID is the digest the node resolved)".into()],
            vec![],
        );
        self.time("cluster context", t0.elapsed());
    }

    /// The controller chain, up to the Deployment, CronJob, StatefulSet or DaemonSet.
    async fn owners(&self, pod: &Value, ns: &str, dir: &str) {
        let started = now();
        let mut chain = Vec::new();
        let mut cur = pod.clone();
        let mut urls = Vec::new();
        while let Some((av, kind, oname)) = controller_ref(&cur) {
            let Some(url) = owner_url(ns, &av, &kind, &oname) else {
                chain.push(json!({"kind": kind, "name": oname, "apiVersion": av, "note": "kind not followed"}));
                break;
            };
            match self.get(&url).await {
                Ok(o) => {
                    chain.push(json!({"url": url, "object": o}));
                    urls.push(url);
                    cur = o;
                }
                Err(e) => {
                    self.bundle.fail(
                        format!("{dir}/cluster/owners ({kind}/{oname})"),
                        e.to_string(),
                        Some(Source::Api { method: "GET".into(), url }),
                    );
                    break;
                }
            }
            if chain.len() > 8 {
                break;
            }
        }
        self.store_api(
            &format!("{dir}/cluster/owners.json"),
            &format!("{dir}/cluster/owners"),
            &urls.join(" "),
            started,
            Ok(Value::Array(chain)),
            vec![],
        );
    }

    /// The NetworkPolicies and Services of the namespace that select the pod's labels.
    async fn selecting(&self, pod: &Value, ns: &str, dir: &str) {
        let labels = labels_of(pod);
        for (what, url) in [
            ("networkpolicies", format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")),
            ("services", format!("/api/v1/namespaces/{ns}/services")),
        ] {
            let started = now();
            let r = self.get_cached(&url).await.map(|list| {
                let items: Vec<Value> = list
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|o| selects(what, o, &labels))
                    .cloned()
                    .collect();
                Value::Array(items)
            });
            self.store_api(
                &format!("{dir}/cluster/{what}.json"),
                &format!("{dir}/cluster/{what}"),
                &url,
                started,
                r,
                vec![format!("the {what} in {ns} that select the pod's labels")],
            );
        }
    }

    /// The bindings that grant the service account rights, and the roles they refer to.
    async fn rbac(&self, ns: &str, sa: &str, dir: &str) {
        let started = now();
        let rb_url = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings");
        let crb_url = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_owned();
        let (rb, crb) = tokio::join!(self.get_cached(&rb_url), self.get_cached(&crb_url));
        let groups = [
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_owned(),
        ];
        let grants = |b: &Value| {
            b.get("subjects").and_then(Value::as_array).into_iter().flatten().any(|s| {
                let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
                let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "ServiceAccount" => name == sa && s.get("namespace").and_then(Value::as_str).unwrap_or(ns) == ns,
                    "User" => name == format!("system:serviceaccount:{ns}:{sa}"),
                    "Group" => groups.iter().any(|g| g == name),
                    _ => false,
                }
            })
        };
        let mut bindings = Vec::new();
        let mut urls = Vec::new();
        for (res, url) in [(rb, rb_url), (crb, crb_url)] {
            match res {
                Ok(list) => {
                    urls.push(url);
                    bindings.extend(
                        list.get("items")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter(|b| grants(b))
                            .cloned(),
                    );
                }
                Err(e) => {
                    self.bundle.fail(format!("{dir}/cluster/rbac"), e, Some(Source::Api { method: "GET".into(), url }))
                }
            }
        }
        let roles = self.roles(ns, dir, &bindings, &mut urls).await;
        let v =
            json!({"serviceAccount": format!("system:serviceaccount:{ns}:{sa}"), "bindings": bindings, "roles": roles});
        self.bundle.save(
            &format!("{dir}/cluster/rbac.json"),
            &pretty(&v),
            Source::Api { method: "GET".into(), url: urls.join(" ") },
            started,
            vec!["bindings whose subjects include the service account, its groups or system:authenticated".into()],
            vec![],
        );
    }

    /// The roles `bindings` refer to, each read once.
    async fn roles(&self, ns: &str, dir: &str, bindings: &[Value], urls: &mut Vec<String>) -> Vec<Value> {
        let mut roles = Vec::new();
        let mut seen = BTreeSet::new();
        for b in bindings {
            let kind = b.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or_default();
            let name = b.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
            let url = match kind {
                "ClusterRole" => format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
                "Role" => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}"),
                _ => continue,
            };
            if !seen.insert(url.clone()) {
                continue;
            }
            match self.get_cached(&url).await {
                Ok(r) => {
                    roles.push(r);
                    urls.push(url);
                }
                Err(e) => self.bundle.fail(
                    format!("{dir}/cluster/rbac ({kind}/{name})"),
                    e,
                    Some(Source::Api { method: "GET".into(), url }),
                ),
            }
        }
        roles
    }
}
