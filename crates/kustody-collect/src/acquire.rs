//! Collection against a cluster: for each pod, its cluster context through the API, and for
//! each container its logs and the collector (in the container, or in an ephemeral debug
//! container when it has no shell), then the optional tar copies. Everything lands in a
//! [`Bundle`]; what cannot be collected is recorded as a failure and the rest goes on.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value string-key assignment on objects built here (json!({..})), which never panics"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kustody_cluster::exec::{self, ExecError, ExecSpec};
use kustody_cluster::ClusterError;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::bundle::{component, now, Bundle, Source};
use crate::frame::{Section, Sections};
use crate::procfs::{self, FileEntry, Process, Socket};
use crate::script::{self, Mode};

/// How much to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Volatile state, listing with hashes, logs, cluster context.
    #[default]
    Triage,
    /// Triage plus a tar of every file changed since the container started.
    Full,
}

/// How to reach a container's processes and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Exec a shell in the container; an ephemeral debug container when it has none.
    #[default]
    Auto,
    Exec,
    Debug,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Options {
    pub profile: Profile,
    pub via: Via,
    /// Only this container (default: every container).
    pub container: Option<String>,
    /// Absolute paths or globs to copy as a tar stream.
    pub paths: Vec<String>,
    pub include_env_values: bool,
    pub debug_image: String,
    /// Per exec.
    pub timeout: Duration,
    /// Per log (current and previous).
    pub max_log_bytes: u64,
    /// Files larger than this are listed but not hashed.
    pub max_hash_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            profile: Profile::Triage,
            via: Via::Auto,
            container: None,
            paths: Vec::new(),
            include_env_values: false,
            debug_image: DEFAULT_DEBUG_IMAGE.into(),
            timeout: Duration::from_secs(120),
            max_log_bytes: 256 << 20,
            max_hash_bytes: 512 << 20,
        }
    }
}

/// A static busybox: `sh`, `find`, `stat`, `sha256sum`, `tar`. Pin it by digest in production.
pub const DEFAULT_DEBUG_IMAGE: &str = "docker.io/library/busybox:1.37.0-musl";

/// Where the projected service-account token is mounted by default.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Per-section caps on what the collector may send.
fn cap(tag: &str) -> usize {
    match tag {
        "files" => 512 << 20,
        "hashes" | "hash1" => 64 << 20,
        "net" => 64 << 20,
        "links" | "mountinfo" => 8 << 20,
        _ => 1 << 20,
    }
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepTime {
    pub count: u32,
    pub total_ms: f64,
    pub max_ms: f64,
}

/// One GET's result, shared by every pod that needs it.
type Shared = Arc<tokio::sync::OnceCell<Result<Value, String>>>;

/// Shared state of one collection run.
pub struct Collector {
    client: kube::Client,
    pub bundle: Bundle,
    opts: Arc<Options>,
    cache: Mutex<HashMap<String, Shared>>,
    timings: Mutex<BTreeMap<String, StepTime>>,
}

fn kerr(e: kube::Error) -> String {
    ClusterError::from_kube(e).to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::getrandom(&mut b).is_err() {
        // never expected on Linux; fall back to time-derived bytes rather than fail collection
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `status.containerStatuses[].state.running.startedAt` as epoch seconds.
fn started_epoch(status: &Value) -> Option<i64> {
    let s = status.pointer("/state/running/startedAt")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp())
}

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

fn all_containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array).into_iter().flatten())
        .collect()
}

fn under(path: &str, dirs: &[String]) -> bool {
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

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// What happened to one container, for the manifest's `targets`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// `exec`, `debug` or `none`.
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_container: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<Value>,
    pub processes: usize,
    pub sockets: usize,
    pub listening: Vec<String>,
    pub files: usize,
    pub drift: usize,
    pub hashed: usize,
    pub deleted_executables: Vec<u32>,
}

impl Collector {
    pub fn new(client: kube::Client, bundle: Bundle, opts: Options) -> Collector {
        Collector {
            client,
            bundle,
            opts: Arc::new(opts),
            cache: Mutex::new(HashMap::new()),
            timings: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn timings(&self) -> BTreeMap<String, StepTime> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn time(&self, step: &str, d: Duration) {
        if let Ok(mut t) = self.timings.lock() {
            let e = t.entry(step.to_owned()).or_default();
            e.count += 1;
            e.total_ms += ms(d);
            e.max_ms = e.max_ms.max(ms(d));
        }
    }

    async fn get(&self, url: &str) -> Result<Value, String> {
        let req = http::Request::get(url).body(Vec::new()).map_err(|e| e.to_string())?;
        let text = self.client.request_text(req).await.map_err(kerr)?;
        serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))
    }

    /// A GET shared by every pod of the run (namespace lists, cluster-wide bindings).
    async fn get_cached(&self, url: &str) -> Result<Value, String> {
        let cell = {
            let Ok(mut c) = self.cache.lock() else { return Err("cache poisoned".into()) };
            c.entry(url.to_owned()).or_default().clone()
        };
        cell.get_or_init(|| async { self.get(url).await }).await.clone()
    }

    /// Store an API object (redacted), or record why it could not be read.
    fn store_api(
        &self,
        rel: &str,
        item: &str,
        url: &str,
        started: String,
        res: Result<Value, String>,
        notes: Vec<String>,
    ) -> Option<Value> {
        let src = Source::Api { method: "GET".into(), url: url.to_owned() };
        match res {
            Ok(mut v) => {
                let redacted =
                    if self.opts.include_env_values { Vec::new() } else { crate::redact::env_values(&mut v) };
                if let Err(e) = self.bundle.write(rel, &pretty(&v), src, started, notes, redacted) {
                    self.bundle.fail(item, format!("writing {rel}: {e}"), None);
                }
                Some(v)
            }
            Err(e) => {
                self.bundle.fail(item, e, Some(src));
                None
            }
        }
    }

    /// GET `url` into `DIR/cluster/NAME.json`, or record why not.
    async fn fetch(&self, dir: &str, name: &str, url: &str) {
        let started = now();
        let r = self.get(url).await;
        self.store_api(
            &format!("{dir}/cluster/{name}.json"),
            &format!("{dir}/cluster/{name}"),
            url,
            started,
            r,
            vec![],
        );
    }

    /// Pods matching a label selector, in a namespace or all.
    pub async fn select(&self, ns: Option<&str>, selector: &str) -> Result<Vec<(String, String)>, String> {
        let base = match ns {
            Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
            None => "/api/v1/pods".to_owned(),
        };
        let mut url = format!("{base}?labelSelector={}", kustody_cluster::oauth::percent_encode(selector));
        let mut out = Vec::new();
        loop {
            let v = self.get(&url).await?;
            for p in v.get("items").and_then(Value::as_array).into_iter().flatten() {
                let ns = p.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
                let name = p.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                out.push((ns.to_owned(), name.to_owned()));
            }
            match v.pointer("/metadata/continue").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => {
                    url = format!(
                        "{base}?labelSelector={}&continue={}",
                        kustody_cluster::oauth::percent_encode(selector),
                        kustody_cluster::oauth::percent_encode(c)
                    );
                }
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    /// Everything for one pod. Returns its entry for the manifest's `targets`.
    pub async fn collect_pod(self: &Arc<Self>, ns: &str, name: &str) -> Value {
        let t0 = Instant::now();
        let dir = format!("pods/{}/{}", component(ns), component(name));
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let started = now();
        let res = self.get(&url).await;
        self.time("api: pod", t0.elapsed());
        let Some(pod) = self.store_api(
            &format!("{dir}/cluster/pod.json"),
            &format!("{dir}/cluster/pod"),
            &url,
            started,
            res.clone(),
            vec![],
        ) else {
            return json!({"namespace": ns, "pod": name, "error": res.err()});
        };
        // the unredacted object stays in memory only
        let pod = res.unwrap_or(pod);
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_owned();
        let statuses: Vec<Value> = ["containerStatuses", "initContainerStatuses"]
            .iter()
            .flat_map(|k| pod.pointer(&format!("/status/{k}")).and_then(Value::as_array).cloned().unwrap_or_default())
            .collect();
        let mut names: Vec<String> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
            .collect();
        if let Some(only) = &self.opts.container {
            if !names.contains(only) {
                self.bundle.fail(
                    format!("{dir}/containers/{only}"),
                    format!("pod {ns}/{name} has no container {only:?} (it has: {})", names.join(", ")),
                    None,
                );
            }
            names.retain(|n| n == only);
        }
        let ctx = {
            let me = self.clone();
            let (pod, dir) = (pod.clone(), dir.clone());
            tokio::spawn(async move { me.context(&pod, &dir).await })
        };
        let mut tasks = Vec::new();
        for c in names {
            let me = self.clone();
            let status = statuses
                .iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(&c))
                .cloned()
                .unwrap_or_default();
            let (pod, dir, ns, name) = (pod.clone(), dir.clone(), ns.to_owned(), name.to_owned());
            tasks.push(tokio::spawn(async move { me.container(&pod, &status, &ns, &name, &c, &dir).await }));
        }
        let mut containers = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                containers.push(r);
            }
        }
        let _ = ctx.await;
        self.time("pod total", t0.elapsed());
        json!({
            "namespace": ns, "pod": name, "uid": uid, "node": node,
            "phase": pod.pointer("/status/phase"),
            "containers": containers,
            "elapsed_ms": ms(t0.elapsed()),
        })
    }

    /// Cluster context: owners, node, events, service account and its RBAC, policies, services, images.
    async fn context(self: &Arc<Self>, pod: &Value, dir: &str) {
        let t0 = Instant::now();
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        let labels = labels_of(pod);
        let sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);

        let owners = async {
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
                            e,
                            Some(Source::Api { method: "GET".into(), url }),
                        );
                        break;
                    }
                }
                if chain.len() > 8 {
                    break;
                }
            }
            let url = urls.join(" ");
            self.store_api(
                &format!("{dir}/cluster/owners.json"),
                &format!("{dir}/cluster/owners"),
                &url,
                started,
                Ok(Value::Array(chain)),
                vec![],
            );
        };
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
        let selecting = async {
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
        };
        tokio::join!(owners, node_f, events, sa_f, selecting);
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
        let _ = self.bundle.write(
            &format!("{dir}/cluster/images.json"),
            &pretty(&Value::Array(images)),
            Source::Api { method: "GET".into(), url },
            now(),
            vec!["from the pod's container statuses (imageID is the digest the node resolved)".into()],
            vec![],
        );
        self.time("cluster context", t0.elapsed());
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
        let mut roles = Vec::new();
        let mut seen = BTreeSet::new();
        for b in &bindings {
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
        let v =
            json!({"serviceAccount": format!("system:serviceaccount:{ns}:{sa}"), "bindings": bindings, "roles": roles});
        let _ = self.bundle.write(
            &format!("{dir}/cluster/rbac.json"),
            &pretty(&v),
            Source::Api { method: "GET".into(), url: urls.join(" ") },
            started,
            vec!["bindings whose subjects include the service account, its groups or system:authenticated".into()],
            vec![],
        );
    }

    /// One container: logs, collector, copies.
    async fn container(
        self: &Arc<Self>,
        pod: &Value,
        status: &Value,
        ns: &str,
        name: &str,
        c: &str,
        dir: &str,
    ) -> ContainerReport {
        let cdir = format!("{dir}/containers/{}", component(c));
        let mut report = ContainerReport {
            name: c.to_owned(),
            image: status.get("image").and_then(Value::as_str).unwrap_or_default().to_owned(),
            image_id: status.get("imageID").and_then(Value::as_str).unwrap_or_default().to_owned(),
            via: "none".into(),
            ..ContainerReport::default()
        };
        let logs = self.logs(ns, name, c, &cdir, status);
        let running = status.pointer("/state/running").is_some();
        let work = async {
            if !running {
                let state = status.get("state").map(|s| s.to_string()).unwrap_or_else(|| "no status".into());
                self.bundle.fail(
                    format!("{cdir}/collector"),
                    format!("container {c} is not running ({state}): nothing to exec into"),
                    None,
                );
                return;
            }
            self.acquire(pod, status, ns, name, c, &cdir, &mut report).await;
        };
        tokio::join!(logs, work);
        report
    }

    async fn logs(&self, ns: &str, name: &str, c: &str, cdir: &str, status: &Value) {
        let restarts = status.get("restartCount").and_then(Value::as_u64).unwrap_or(0);
        let mut which = vec![false];
        if restarts > 0 || status.pointer("/lastState/terminated").is_some() {
            which.push(true);
        }
        for previous in which {
            let t0 = Instant::now();
            let url = format!(
                "/api/v1/namespaces/{ns}/pods/{name}/log?container={c}&timestamps=true&limitBytes={}{}",
                self.opts.max_log_bytes,
                if previous { "&previous=true" } else { "" }
            );
            let rel = format!("{cdir}/log{}.txt", if previous { ".previous" } else { "" });
            let started = now();
            let src = Source::Api { method: "GET".into(), url: url.clone() };
            let res: Result<(String, u64), String> = async {
                let req = http::Request::get(&url).body(Vec::new()).map_err(|e| e.to_string())?;
                let body = self.client.request_stream(req).await.map_err(kerr)?;
                let mut body = std::pin::pin!(body);
                let mut f = self.bundle.open_async(&rel).await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = futures_util::AsyncReadExt::read(&mut body, &mut buf)
                        .await
                        .map_err(|e| format!("reading the log: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    tokio::io::AsyncWriteExt::write_all(&mut f, buf.get(..n).unwrap_or_default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                f.finish().await.map_err(|e| e.to_string())
            }
            .await;
            let max = self.opts.max_log_bytes;
            let res = res.map(|(sha, size)| {
                let notes =
                    if size >= max { vec![format!("limited to {max} bytes (--max-log-bytes)")] } else { vec![] };
                (sha, size, notes)
            });
            self.bundle.settle(&rel, res, src, started);
            self.time("logs", t0.elapsed());
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn acquire(
        self: &Arc<Self>,
        pod: &Value,
        status: &Value,
        ns: &str,
        name: &str,
        c: &str,
        cdir: &str,
        report: &mut ContainerReport,
    ) {
        let mut exec_container = c.to_owned();
        let mut mode = Mode::InContainer;
        if self.opts.via == Via::Debug {
            match self.debug_container(pod, ns, name, c, report).await {
                Ok(d) => {
                    exec_container = d;
                    mode = Mode::Debug;
                }
                Err(e) => {
                    self.bundle.fail(format!("{cdir}/collector"), e, None);
                    return;
                }
            }
        }
        let started_at = started_epoch(status);
        let excluded = credential_mounts(pod, c);
        let mut run = self.run_collector(ns, name, &exec_container, mode, started_at, &excluded).await;
        if mode == Mode::InContainer && run.sections.is_empty() && matches!(run.error, Some(ExecError::Transport(_))) {
            // The script is sent as soon as the stream opens; when `sh` cannot start, the server
            // may close the socket on that unread input before its status arrives (a reset).
            // Ask once more without input: that answer says whether there is a shell.
            if let Err(e @ ExecError::CommandNotFound { .. }) = self.probe_shell(ns, name, &exec_container).await {
                run.error = Some(e);
            }
        }
        if let Some(ExecError::CommandNotFound { .. }) = &run.error {
            if self.opts.via == Via::Auto {
                // no shell (distroless): the static collector in an ephemeral container
                match self.debug_container(pod, ns, name, c, report).await {
                    Ok(d) => {
                        exec_container = d;
                        mode = Mode::Debug;
                        run = self.run_collector(ns, name, &exec_container, mode, started_at, &excluded).await;
                    }
                    Err(e) => {
                        self.bundle.fail(
                            format!("{cdir}/collector"),
                            format!("the container has no shell, and the debug container failed: {e}"),
                            None,
                        );
                        return;
                    }
                }
            }
        }
        report.via = if mode == Mode::Debug { "debug".into() } else { "exec".into() };
        run.finish(self, ns, name, &exec_container, cdir, report);
        // copies
        let root = match (mode, run.target_pid) {
            (Mode::Debug, Some(t)) => format!("/proc/{t}/root/"),
            (Mode::Debug, None) => String::new(),
            _ => "/".to_owned(),
        };
        if !root.is_empty() && !self.opts.paths.is_empty() {
            let cmd = script::tar_command(&root, &self.opts.paths, &excluded);
            self.tar(ns, name, &exec_container, &format!("{cdir}/paths.tar"), cmd, None, "copy --paths").await;
        }
        if !root.is_empty() && self.opts.profile == Profile::Full {
            let list: Vec<String> = run
                .files
                .iter()
                .filter(|f| f.drift && f.kind == "file" && script::batchable(&f.path) && !under(&f.path, &excluded))
                .map(|f| format!(".{}", f.path))
                .collect();
            if list.is_empty() {
                report.collector.get_or_insert_with(|| json!({}))["changed_tar"] = json!("no changed files");
            } else {
                let mut stdin = list.join("\n").into_bytes();
                stdin.push(b'\n');
                let cmd = script::tar_list_command(&root);
                self.tar(
                    ns,
                    name,
                    &exec_container,
                    &format!("{cdir}/changed.tar"),
                    cmd,
                    Some(stdin),
                    "tar changed files",
                )
                .await;
            }
        }
        if mode == Mode::Debug {
            self.stop_debug(ns, name, &exec_container).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn tar(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        rel: &str,
        command: Vec<String>,
        stdin: Option<Vec<u8>>,
        step: &str,
    ) {
        let t0 = Instant::now();
        let started = now();
        let stdin_rel = stdin.as_ref().map(|_| format!("{rel}.list"));
        if let (Some(s), Some(r)) = (&stdin, &stdin_rel) {
            let _ = self.bundle.write(
                r,
                s,
                Source::Kustody { what: "the file list sent to tar on stdin".into() },
                now(),
                vec![],
                vec![],
            );
        }
        let spec = ExecSpec {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: Some(container.to_owned()),
            command: command.clone(),
            stdin,
            timeout: Some(self.opts.timeout),
            verify_size: false,
            max_stderr: Some(64 * 1024),
        };
        let src = Source::Exec {
            namespace: ns.into(),
            pod: pod.into(),
            container: container.into(),
            command,
            stdin: stdin_rel,
        };
        let res = async {
            let mut f = self.bundle.open_async(rel).await.map_err(|e| e.to_string())?;
            let out = exec::exec(&self.client, &spec, &mut f).await.map_err(|e| e.to_string())?;
            let (sha, size) = f.finish().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((out, sha, size))
        }
        .await;
        let res = res.map(|(out, sha256, size)| {
            let mut notes = vec![format!("exit code {}", out.exit_code)];
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if !err.is_empty() {
                notes.push(format!("stderr: {}", err.chars().take(2000).collect::<String>()));
            }
            (sha256, size, notes)
        });
        self.bundle.settle(rel, res, src, started);
        self.time(step, t0.elapsed());
    }

    /// Add an ephemeral container targeting `c` and wait until it runs; returns its name.
    async fn debug_container(
        &self,
        pod: &Value,
        ns: &str,
        name: &str,
        c: &str,
        report: &mut ContainerReport,
    ) -> Result<String, String> {
        let t0 = Instant::now();
        let dname = format!("kustody-{}", rand_hex(3));
        let target = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|x| x.get("name").and_then(Value::as_str) == Some(c));
        let mut spec = json!({
            "name": dname, "image": self.opts.debug_image,
            "command": ["sleep", "900"],
            "targetContainerName": c,
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        });
        if let Some(sc) = debug_security_context(pod, target) {
            spec["securityContext"] = sc;
        }
        let body = json!({"spec": {"ephemeralContainers": [spec.clone()]}});
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}/ephemeralcontainers");
        let req = http::Request::patch(&url)
            .header("content-type", "application/strategic-merge-patch+json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        self.client
            .request_text(req)
            .await
            .map_err(|e| format!("{} (a shell-less container needs `patch` on `pods/ephemeralcontainers`)", kerr(e)))?;
        report.debug_container = Some(json!({"name": dname, "patch": {"method": "PATCH", "url": url, "body": body},
            "note": "the only change kustody makes to the pod: ephemeral containers cannot be removed and stay in its spec"}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.get(&format!("/api/v1/namespaces/{ns}/pods/{name}")).await?;
            let st = p
                .pointer("/status/ephemeralContainerStatuses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|s| s.get("name").and_then(Value::as_str) == Some(&dname)).cloned());
            if let Some(st) = st {
                if st.pointer("/state/running").is_some() {
                    break;
                }
                if let Some(w) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
                    if matches!(
                        w,
                        "ErrImagePull"
                            | "ImagePullBackOff"
                            | "InvalidImageName"
                            | "CreateContainerError"
                            | "RunContainerError"
                    ) {
                        return Err(format!("debug container {dname} ({}): {w}", self.opts.debug_image));
                    }
                }
                if st.pointer("/state/terminated").is_some() {
                    return Err(format!("debug container {dname} exited before collection"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("debug container {dname} did not start within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.time("debug container start", t0.elapsed());
        Ok(dname)
    }

    /// `sh -c 'exit 0'` without stdin: `CommandNotFound` when the container has no shell.
    async fn probe_shell(&self, ns: &str, pod: &str, container: &str) -> Result<(), ExecError> {
        let spec = ExecSpec {
            namespace: ns.into(),
            pod: pod.into(),
            container: Some(container.into()),
            command: vec!["sh".into(), "-c".into(), "exit 0".into()],
            timeout: Some(Duration::from_secs(20)),
            ..ExecSpec::default()
        };
        exec::exec(&self.client, &spec, &mut tokio::io::sink()).await.map(|_| ())
    }

    /// End the debug container's idle process (it would otherwise sleep for 15 minutes).
    async fn stop_debug(&self, ns: &str, pod: &str, container: &str) {
        let spec = ExecSpec {
            namespace: ns.into(),
            pod: pod.into(),
            container: Some(container.into()),
            command: vec![
                "sh".into(),
                "-c".into(),
                "S=$(readlink /proc/self/ns/mnt); for d in /proc/[0-9]*; do p=${d#/proc/}; [ \"$p\" = \"$$\" ] && continue; \
                 [ \"$(readlink $d/ns/mnt 2>/dev/null)\" = \"$S\" ] && kill $p 2>/dev/null; done; exit 0"
                    .into(),
            ],
            timeout: Some(Duration::from_secs(10)),
            ..ExecSpec::default()
        };
        let _ = exec::exec(&self.client, &spec, &mut tokio::io::sink()).await;
    }

    /// The two-phase collector over one exec.
    #[allow(clippy::too_many_arguments)]
    async fn run_collector(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        mode: Mode,
        started_at: Option<i64>,
        excluded: &[String],
    ) -> CollectorRun {
        let t0 = Instant::now();
        let nonce = rand_hex(16);
        let p1 = script::phase1(&nonce, mode);
        let spec = ExecSpec {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: Some(container.to_owned()),
            command: script::command(),
            stdin: None,
            timeout: Some(self.opts.timeout),
            verify_size: false,
            max_stderr: Some(1 << 20),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let _ = tx.send(p1.clone().into_bytes()).await;
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        let client = self.client.clone();
        let exec_task = tokio::spawn(async move {
            let res = exec::exec_interactive(&client, &spec, rx, &mut w).await;
            drop(w);
            res
        });
        let mut sections = Sections::new(&nonce, cap);
        let mut done: Vec<Section> = Vec::new();
        let mut tx = Some(tx);
        let mut phase1_ms = None;
        let mut p2 = None;
        let mut to_hash: Vec<String> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut files: Vec<FileEntry> = Vec::new();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (complete, started) = sections.push(buf.get(..n).unwrap_or_default());
            done.extend(complete);
            if started.iter().any(|t| t == "end") && p2.is_none() {
                phase1_ms = Some(ms(t0.elapsed()));
                // phase 1 is complete: choose what to hash from the listing
                let listing = done.iter().find(|s| s.tag == "files");
                let (f, _) = listing.map(|s| procfs::parse_listing(&s.body, started_at)).unwrap_or_default();
                files = f;
                to_hash = choose_hashes(&mut files, excluded, self.opts.max_hash_bytes);
                let text = script::phase2(&to_hash);
                if let Some(tx) = tx.take() {
                    let _ = tx.send(text.clone().into_bytes()).await;
                }
                p2 = Some(text);
            }
        }
        drop(tx);
        done.extend(sections.finish());
        let outcome = exec_task.await.map_err(|e| ExecError::Failed { message: e.to_string() }).and_then(|r| r);
        self.time(
            "collector phase 1 (processes, network, listing)",
            Duration::from_secs_f64(phase1_ms.unwrap_or(ms(t0.elapsed())) / 1000.0),
        );
        if let Some(p1ms) = phase1_ms {
            self.time(
                "collector phase 2 (hashes)",
                Duration::from_secs_f64((ms(t0.elapsed()) - p1ms).max(0.0) / 1000.0),
            );
        }
        let (outcome, error) = match outcome {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(e)),
        };
        CollectorRun {
            phase1: p1,
            phase2: p2,
            sections: done,
            files,
            to_hash,
            outcome,
            error,
            malformed: sections.deframer.malformed,
            preamble: sections.preamble,
            target_pid: None,
            include_env_values: self.opts.include_env_values,
            started_at,
            excluded: excluded.to_vec(),
            elapsed: t0.elapsed(),
        }
    }
}

/// The debug container's securityContext: the target's user and group, so `/proc/PID/root` and
/// the target's files are readable without added capabilities; for a non-root target also what
/// the `restricted` Pod Security level demands (no privilege escalation, all capabilities
/// dropped, RuntimeDefault seccomp), so admission accepts it where the target was accepted.
pub fn debug_security_context(pod: &Value, target: Option<&Value>) -> Option<Value> {
    let pick = |k: &str| {
        target
            .and_then(|t| t.pointer(&format!("/securityContext/{k}")))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{k}")))
            .cloned()
    };
    let user = pick("runAsUser");
    let group = pick("runAsGroup");
    let non_root = pick("runAsNonRoot").and_then(|v| v.as_bool()).unwrap_or(false)
        || user.as_ref().and_then(Value::as_u64).is_some_and(|u| u != 0);
    if user.is_none() && group.is_none() && !non_root {
        return None;
    }
    let mut sc = serde_json::Map::new();
    if let Some(u) = user {
        sc.insert("runAsUser".into(), u);
    }
    if let Some(g) = group {
        sc.insert("runAsGroup".into(), g);
    }
    if non_root {
        sc.insert("runAsNonRoot".into(), json!(true));
        sc.insert("allowPrivilegeEscalation".into(), json!(false));
        sc.insert("capabilities".into(), json!({"drop": ["ALL"]}));
        sc.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
    }
    Some(Value::Object(sc))
}

/// Which files to hash: executables once per inode, changed files, within the size limit,
/// never under credential mounts.
fn choose_hashes(files: &mut [FileEntry], excluded: &[String], max: u64) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in files.iter_mut() {
        if f.kind != "file" || !(f.executable() || f.drift) {
            continue;
        }
        if under(&f.path, excluded) {
            f.not_hashed = Some("credential volume (listed only)".into());
            continue;
        }
        if f.size > max {
            f.not_hashed = Some(format!("larger than --max-hash-bytes ({max})"));
            continue;
        }
        if seen.insert(f.inode) {
            out.push(f.path.clone());
        }
    }
    out
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

/// The collector's output, before it is written.
struct CollectorRun {
    phase1: String,
    phase2: Option<String>,
    sections: Vec<Section>,
    files: Vec<FileEntry>,
    to_hash: Vec<String>,
    outcome: Option<exec::ExecOutcome>,
    error: Option<ExecError>,
    malformed: u64,
    preamble: Vec<u8>,
    target_pid: Option<u32>,
    include_env_values: bool,
    started_at: Option<i64>,
    excluded: Vec<String>,
    elapsed: Duration,
}

impl CollectorRun {
    /// Parse the sections and write the artifacts.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        col: &Collector,
        ns: &str,
        pod: &str,
        exec_container: &str,
        cdir: &str,
        report: &mut ContainerReport,
    ) {
        let b = &col.bundle;
        let started = now();
        let csrc = |sections: &[&str]| Source::Collector {
            namespace: ns.into(),
            pod: pod.into(),
            container: exec_container.into(),
            sections: sections.iter().map(|s| (*s).to_owned()).collect(),
        };
        let item = format!("{cdir}/collector");
        let _ = b.write(
            &format!("{cdir}/collector/phase1.sh"),
            self.phase1.as_bytes(),
            Source::Kustody {
                what: format!("collector script, phase 1, sent on stdin to `sh -s` in {exec_container}"),
            },
            started.clone(),
            vec![],
            vec![],
        );
        if let Some(p2) = &self.phase2 {
            let _ = b.write(
                &format!("{cdir}/collector/phase2.sh"),
                p2.as_bytes(),
                Source::Kustody { what: "collector script, phase 2 (hashes chosen from the listing)".into() },
                started.clone(),
                vec![],
                vec![],
            );
        }
        let mut transcript = json!({
            "command": script::command(), "container": exec_container,
            "elapsed_ms": ms(self.elapsed),
            "sections": self.sections.len(),
        });
        if let Some(o) = &self.outcome {
            transcript["exit_code"] = json!(o.exit_code);
            transcript["protocol"] = json!(o.protocol);
            // the raw stream holds environment values, so it is hashed, not stored
            transcript["transcript_sha256"] = json!(o.stdout_sha256);
            transcript["transcript_bytes"] = json!(o.stdout_bytes);
            if !o.stderr.is_empty() {
                let _ = b.write(
                    &format!("{cdir}/collector/stderr.txt"),
                    &o.stderr,
                    Source::Exec {
                        namespace: ns.into(),
                        pod: pod.into(),
                        container: exec_container.into(),
                        command: script::command(),
                        stdin: None,
                    },
                    started.clone(),
                    if o.stderr_dropped > 0 {
                        vec![format!("{} more bytes dropped", o.stderr_dropped)]
                    } else {
                        vec![]
                    },
                    vec![],
                );
            }
        }
        if self.malformed > 0 {
            transcript["malformed_markers"] = json!(self.malformed);
        }
        if !self.preamble.is_empty() {
            transcript["preamble"] = json!(String::from_utf8_lossy(&self.preamble));
        }
        let ended = |phase: &str| self.sections.iter().any(|s| s.tag == "end" && s.arg == phase);
        let stopped = match &self.error {
            Some(ExecError::Transport(m)) => {
                Some(format!("the collector's stream ended early (pod or container gone?): {m}"))
            }
            Some(other) => Some(other.to_string()),
            None if !(ended("1") && ended("2")) => {
                let code = self.outcome.as_ref().map_or(-1, |o| o.exit_code);
                Some(format!(
                    "the collector stopped before {} (exit code {code}{}): was the pod or container deleted, or the shell killed?",
                    if ended("1") { "hashing finished" } else { "reading processes, sockets and files finished" },
                    if code == 137 { ", SIGKILL" } else { "" }
                ))
            }
            None => None,
        };
        if let Some(reason) = stopped {
            transcript["error"] = json!(reason);
            let source = Source::Exec {
                namespace: ns.into(),
                pod: pod.into(),
                container: exec_container.into(),
                command: script::command(),
                stdin: Some(format!("{cdir}/collector/phase1.sh")),
            };
            b.fail(item.clone(), reason, Some(source));
        }
        if !self.sections.iter().any(|s| s.tag == "begin") {
            report.collector = Some(transcript);
            return;
        }
        let one = |tag: &str| self.sections.iter().find(|s| s.tag == tag);
        let text = |s: &Section| String::from_utf8_lossy(&s.body).into_owned();
        self.target_pid = one("target").and_then(|s| text(s).trim().parse().ok());
        let btime: Option<u64> =
            one("btime").and_then(|s| text(s).split_whitespace().nth(1).and_then(|x| x.parse().ok()));
        // processes
        let mut procs: BTreeMap<u32, Process> = BTreeMap::new();
        for s in &self.sections {
            let Ok(pid) = s.arg.parse::<u32>() else { continue };
            if !matches!(s.tag.as_str(), "stat" | "status" | "cmdline" | "environ" | "links") {
                continue;
            }
            let p = procs.entry(pid).or_insert_with(|| Process { pid, ..Process::default() });
            if s.rc.is_some_and(|rc| rc != 0) && s.body.is_empty() {
                p.unreadable.push(s.tag.clone());
                continue;
            }
            match s.tag.as_str() {
                "stat" => {
                    if let Some((ppid, state, comm, start, threads)) = procfs::parse_stat(&text(s)) {
                        p.ppid = Some(ppid);
                        p.state = state;
                        p.name = comm;
                        p.start_ticks = Some(start);
                        p.threads = Some(threads);
                        p.started = btime.and_then(|bt| {
                            chrono::DateTime::from_timestamp(
                                (bt + start / procfs::USER_HZ) as i64,
                                ((start % procfs::USER_HZ) * 10_000_000) as u32,
                            )
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        });
                    } else {
                        p.unreadable.push("stat (unparsed)".into());
                    }
                }
                "status" => {
                    let (u, g) = procfs::parse_status_ids(&text(s));
                    p.uid = u;
                    p.gid = g;
                }
                "cmdline" => p.cmdline = procfs::split_nul(&s.body),
                "environ" => {
                    let (names, values) = procfs::parse_environ(&s.body, self.include_env_values);
                    p.env_names = names;
                    p.env = values;
                }
                "links" => {
                    let (exe, cwd, fds) = procfs::parse_links(pid, &text(s));
                    if let Some(e) = exe {
                        p.exe_deleted = e.ends_with(" (deleted)");
                        p.exe = Some(e.trim_end_matches(" (deleted)").to_owned());
                    }
                    p.cwd = cwd;
                    p.fds = procfs::summarize_fds(&fds);
                }
                _ => {}
            }
        }
        // a pid listed but gone before its stat could be read
        procs.retain(|_, p| !(p.name.is_empty() && p.unreadable.iter().any(|u| u == "stat")));
        let procs: Vec<Process> = procs.into_values().collect();
        report.processes = procs.len();
        report.deleted_executables = procs.iter().filter(|p| p.exe_deleted).map(|p| p.pid).collect();
        let mut redacted = Vec::new();
        if !self.include_env_values {
            redacted.push("environment variable values (names kept; --include-env-values keeps values)".into());
        }
        let _ = b.write(
            &format!("{cdir}/processes.json"),
            &pretty(&serde_json::to_value(&procs).unwrap_or_default()),
            csrc(&["stat", "status", "cmdline", "environ", "links"]),
            started.clone(),
            vec![format!("start times: boot time + ticks / {} (USER_HZ)", procfs::USER_HZ)],
            redacted,
        );
        // network
        let mut sockets: Vec<Socket> = Vec::new();
        let mut bad = 0;
        for s in self.sections.iter().filter(|s| s.tag == "net") {
            let body = text(s);
            let (mut v, n) =
                if s.arg == "unix" { procfs::parse_net_unix(&body) } else { procfs::parse_net_inet(&s.arg, &body) };
            sockets.append(&mut v);
            bad += n;
            let _ = b.write(
                &format!("{cdir}/raw/proc-net-{}", component(&s.arg)),
                &s.body,
                csrc(&["net"]),
                started.clone(),
                vec![format!("/proc/net/{}", s.arg)],
                vec![],
            );
        }
        procfs::map_sockets(&mut sockets, &procs);
        report.sockets = sockets.len();
        report.listening = sockets
            .iter()
            .filter(|s| s.listening && !s.proto.starts_with("unix"))
            .map(|s| {
                format!(
                    "{} {}{}",
                    s.proto,
                    s.local,
                    if s.pids.is_empty() { String::new() } else { format!(" (pid {:?})", s.pids) }
                )
            })
            .collect();
        let net = json!({"listening": sockets.iter().filter(|s| s.listening).collect::<Vec<_>>(), "sockets": sockets});
        let _ = b.write(
            &format!("{cdir}/network.json"),
            &pretty(&net),
            csrc(&["net tcp", "net tcp6", "net udp", "net udp6", "net unix", "links"]),
            started.clone(),
            if bad > 0 { vec![format!("{bad} lines did not parse (kept in raw/)")] } else { vec![] },
            vec![],
        );
        for (tag, rel) in [("mountinfo", "raw/mountinfo"), ("hosts", "etc/hosts"), ("resolv", "etc/resolv.conf")] {
            if let Some(s) = one(tag) {
                if s.rc.is_some_and(|rc| rc != 0) && s.body.is_empty() {
                    b.fail(
                        format!("{cdir}/{rel}"),
                        format!("not readable in the container (exit {})", s.rc.unwrap_or(-1)),
                        None,
                    );
                } else {
                    let _ = b.write(&format!("{cdir}/{rel}"), &s.body, csrc(&[tag]), started.clone(), vec![], vec![]);
                }
            }
        }
        // listing + hashes
        if let Some(listing) = one("files") {
            let mut hashes: BTreeMap<String, String> = BTreeMap::new();
            for s in self.sections.iter().filter(|s| s.tag == "hashes") {
                for (name, h) in procfs::parse_sha256sum(&text(s)) {
                    hashes.insert(name.strip_prefix('.').unwrap_or(&name).to_owned(), h);
                }
            }
            for s in self.sections.iter().filter(|s| s.tag == "hash1") {
                if let (Ok(i), Some((h, _))) = (s.arg.parse::<usize>(), text(s).split_once(' ')) {
                    if let Some(p) = self.to_hash.get(i) {
                        hashes.insert(p.clone(), h.to_owned());
                    }
                }
            }
            // hardlinks share the hash of the inode's first path
            let by_inode: BTreeMap<u64, String> =
                self.files.iter().filter_map(|f| hashes.get(&f.path).map(|h| (f.inode, h.clone()))).collect();
            let phase2_done = self.sections.iter().any(|s| s.tag == "end" && s.arg == "2");
            for f in &mut self.files {
                if f.kind == "file" && (f.executable() || f.drift) && f.not_hashed.is_none() {
                    f.sha256 = by_inode.get(&f.inode).cloned();
                    if f.sha256.is_none() {
                        f.not_hashed = Some(if phase2_done {
                            "unreadable in the container".into()
                        } else {
                            "collection ended before hashing".into()
                        });
                    }
                }
            }
            report.files = self.files.len();
            report.drift = self.files.iter().filter(|f| f.drift).count();
            report.hashed = self.files.iter().filter(|f| f.sha256.is_some()).count();
            let mut out = Vec::with_capacity(self.files.len() * 160);
            for f in &self.files {
                if let Ok(line) = serde_json::to_vec(f) {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
            }
            let mut notes = vec![match self.started_at {
                Some(s) => format!("drift: ctime or mtime after the container started ({s}, whole seconds)"),
                None => "drift unknown: the container's start time is not in its status".into(),
            }];
            if listing.dropped > 0 {
                notes.push(format!("listing truncated: {} bytes beyond the limit dropped", listing.dropped));
            }
            if listing.rc.is_some_and(|rc| rc != 0) {
                notes.push(format!(
                    "find/stat exited {} (some paths unreadable; see collector/stderr.txt)",
                    listing.rc.unwrap_or(-1)
                ));
            }
            if self.files.is_empty() {
                b.fail(
                    format!("{cdir}/files.jsonl"),
                    format!(
                        "no file listing: find/stat exited {} in the container (missing tools?); --via debug lists it with the debug image's",
                        listing.rc.unwrap_or(-1)
                    ),
                    None,
                );
            }
            notes.push(format!("credential volumes listed but never hashed or copied: {}", self.excluded.join(", ")));
            let _ = b.write(
                &format!("{cdir}/files.jsonl"),
                &out,
                csrc(&["files", "hashes", "hash1"]),
                started.clone(),
                notes,
                vec![],
            );
            let drift: Vec<&FileEntry> = self.files.iter().filter(|f| f.drift).collect();
            let _ = b.write(
                &format!("{cdir}/drift.json"),
                &pretty(&serde_json::to_value(&drift).unwrap_or_default()),
                csrc(&["files", "hashes"]),
                started.clone(),
                vec!["files changed since the container started (subset of files.jsonl)".into()],
                vec![],
            );
        } else if self.error.is_none() {
            b.fail(format!("{cdir}/files.jsonl"), "the collector sent no file listing", None);
        }
        report.collector = Some(transcript);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_container_security_context() {
        let root = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(debug_security_context(&root, root.pointer("/spec/containers/0")).is_none());
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1001}}]}});
        let sc = debug_security_context(&pod, pod.pointer("/spec/containers/0")).unwrap();
        assert_eq!(sc["runAsUser"], 1001);
        assert_eq!(sc["runAsGroup"], 3000);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        let explicit_root = json!({"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}});
        let sc = debug_security_context(&explicit_root, None).unwrap();
        assert_eq!(sc["runAsUser"], 0);
        assert!(sc.get("capabilities").is_none(), "a root target keeps the default capabilities");
    }
}
