//! The kubelet: runs the pods bound to the cluster's nodes as runc containers, writes their
//! logs in the CRI format, reports their status, restarts them, runs ephemeral containers, and
//! serves `pods/log`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Api, Reply, ReqInfo, Request};
use crate::resources as res;
use crate::runtime::{Bind, ContainerConfig, ImageKind, Images, Join, Runc};
use crate::status::ApiError;
use crate::store::{meta_str, now_rfc3339};

/// A running container instance, for exec and attach.
#[derive(Clone)]
pub struct Target {
    pub id: String,
    pub rootfs: PathBuf,
    pub pid: u32,
    pub output: broadcast::Sender<(u8, Bytes)>,
    pub stdin: Option<mpsc::Sender<Bytes>>,
}

struct CtrRt {
    current: Option<Target>,
    restart_count: u32,
    /// One log file per instance, oldest first.
    logs: Vec<PathBuf>,
    running: bool,
    ephemeral: bool,
    started_at: String,
    last_terminated: Option<Value>,
    terminated: Option<Value>,
    image: String,
    image_id: String,
}

struct PodRt {
    ns: String,
    name: String,
    uid: String,
    node: String,
    dir: PathBuf,
    sandbox: Mutex<Option<(String, u32)>>,
    containers: Mutex<HashMap<String, CtrRt>>,
    stopping: AtomicBool,
    stopped: AtomicBool,
    pod_ip: String,
    host_ip: String,
    started: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The kubelet of every node (all nodes run on this host).
pub struct Kubelet {
    pub runc: Runc,
    pub images: Images,
    dir: PathBuf,
    pods: Mutex<HashMap<String, Arc<PodRt>>>,
    pub nodes: Vec<String>,
    next_ip: AtomicU32,
    /// Longest a container is given to stop after SIGTERM (the pod's grace period, capped).
    pub max_grace: Duration,
}

pub fn host_ip(node_index: usize) -> String {
    format!("192.0.2.{}", 10 + node_index)
}

impl Kubelet {
    pub fn new(runc: Runc, images: Images, dir: PathBuf, nodes: Vec<String>) -> Kubelet {
        Kubelet {
            runc,
            images,
            dir,
            pods: Mutex::new(HashMap::new()),
            nodes,
            next_ip: AtomicU32::new(2),
            max_grace: Duration::from_secs(2),
        }
    }

    pub fn running_container(&self, pod_uid: &str, container: &str) -> Option<Target> {
        let pods = lock(&self.pods);
        let p = pods.get(pod_uid)?;
        let cs = lock(&p.containers);
        let c = cs.get(container)?;
        if c.running {
            c.current.clone()
        } else {
            None
        }
    }

    /// Where a pod's container logs (CRI format, one file per container start) are.
    pub fn log_dir(&self, pod_uid: &str) -> Option<PathBuf> {
        lock(&self.pods).get(pod_uid).map(|p| p.dir.join("logs"))
    }

    /// Node names, for the scheduler.
    pub fn node_names(&self) -> &[String] {
        &self.nodes
    }

    /// Reconcile the pods bound to our nodes with the containers we run.
    pub fn sync(&self, api: &Arc<Api>) {
        let (_, pods) = api.store.list(&res::PODS, None);
        let mut known: Vec<String> = Vec::new();
        for pod in pods {
            let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
            if node.is_empty() || !self.nodes.iter().any(|n| n == node) {
                continue;
            }
            let uid = meta_str(&pod, "uid").to_string();
            known.push(uid.clone());
            let existing = lock(&self.pods).get(&uid).cloned();
            let terminating = pod["metadata"].get("deletionTimestamp").is_some();
            match existing {
                None if terminating => {
                    let api = api.clone();
                    let (ns, name) = (meta_str(&pod, "namespace").to_string(), meta_str(&pod, "name").to_string());
                    let node = node.to_string();
                    tokio::spawn(async move { finalize_pod(&api, &node, &ns, &name).await });
                }
                None => {
                    if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                        continue;
                    }
                    let rt = self.admit(&pod, node);
                    let api = api.clone();
                    let pod = (*pod).clone();
                    tokio::spawn(async move { start_pod(api, rt, pod).await });
                }
                Some(rt) => {
                    if terminating {
                        if !rt.stopping.swap(true, Ordering::SeqCst) {
                            let api = api.clone();
                            let grace = pod["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(30);
                            tokio::spawn(async move { stop_pod(&api, rt, grace, true).await });
                        }
                    } else if !rt.stopping.load(Ordering::SeqCst) {
                        // ephemeral containers added since the last sync
                        for e in pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
                            let name = e["name"].as_str().unwrap_or("").to_string();
                            let fresh = {
                                let mut cs = lock(&rt.containers);
                                if cs.contains_key(&name) || lock(&rt.sandbox).is_none() {
                                    false
                                } else {
                                    cs.insert(name.clone(), new_ctr(e, true, &self.images));
                                    true
                                }
                            };
                            if fresh {
                                report(api, &rt, &format!("system:node:{}", rt.node));
                                let api = api.clone();
                                let (rt, spec, pod) = (rt.clone(), e.clone(), (*pod).clone());
                                tokio::spawn(async move { supervise(api, rt, pod, spec, true).await });
                            }
                        }
                    }
                }
            }
        }
        // Pods removed from the store (force deletion): stop their containers.
        let gone: Vec<Arc<PodRt>> = lock(&self.pods).values().filter(|p| !known.contains(&p.uid)).cloned().collect();
        for rt in gone {
            if !rt.stopping.swap(true, Ordering::SeqCst) {
                let api = api.clone();
                tokio::spawn(async move { stop_pod(&api, rt, 0, false).await });
            }
        }
    }

    fn admit(&self, pod: &Value, node: &str) -> Arc<PodRt> {
        let uid = meta_str(pod, "uid").to_string();
        let idx = self.nodes.iter().position(|n| n == node).unwrap_or(0);
        let host = host_ip(idx);
        let pod_ip = if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
            host.clone()
        } else {
            let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
            format!("10.244.{}.{}", idx * 4 + (n / 250) as usize, 2 + n % 250)
        };
        let rt = Arc::new(PodRt {
            ns: meta_str(pod, "namespace").to_string(),
            name: meta_str(pod, "name").to_string(),
            uid: uid.clone(),
            node: node.to_string(),
            dir: self.dir.join("pods").join(&uid),
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            pod_ip,
            host_ip: host,
            started: now_rfc3339(),
        });
        lock(&self.pods).insert(uid, rt.clone());
        rt
    }

    /// Stop everything (cluster teardown).
    pub fn shutdown_blocking(&self) {
        self.runc.delete_all_blocking();
    }

    /// `GET pods/NAME/log`.
    pub async fn log(&self, api: &Arc<Api>, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let pod = api
            .store
            .get(&res::PODS, &info.ns, &info.name)
            .ok_or_else(|| ApiError::not_found(&res::PODS, &info.name))?;
        let main: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        let all: Vec<String> = main
            .iter()
            .cloned()
            .chain(
                pod["spec"]["ephemeralContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(String::from)),
            )
            .collect();
        let container = match req.q("container").filter(|c| !c.is_empty()) {
            Some(c) => c.to_string(),
            None if main.len() == 1 => main.first().cloned().unwrap_or_default(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {}, choose one of: [{}]",
                    info.name,
                    main.join(" ")
                )))
            }
        };
        if !all.contains(&container) {
            return Err(ApiError::bad_request(format!("container {container} is not valid for pod {}", info.name)));
        }
        let previous = req.q_bool("previous");
        let (file, live) = {
            let pods = lock(&self.pods);
            let c = pods.get(meta_str(&pod, "uid")).and_then(|p| {
                let cs = lock(&p.containers);
                cs.get(&container).map(|c| (c.logs.clone(), c.running))
            });
            match c {
                Some((logs, _)) if previous => {
                    let n = logs.len();
                    match n.checked_sub(2).and_then(|i| logs.get(i)) {
                        Some(f) => (f.clone(), false),
                        None => {
                            return Err(ApiError::bad_request(format!(
                                "previous terminated container \"{container}\" in pod \"{}\" not found",
                                info.name
                            )))
                        }
                    }
                }
                Some((logs, running)) => match logs.last() {
                    Some(f) => (f.clone(), running),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "container \"{container}\" in pod \"{}\" is waiting to start: ContainerCreating",
                            info.name
                        )))
                    }
                },
                None if previous => {
                    return Err(ApiError::bad_request(format!(
                        "previous terminated container \"{container}\" in pod \"{}\" not found",
                        info.name
                    )))
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "container \"{container}\" in pod \"{}\" is waiting to start: ContainerCreating",
                        info.name
                    )))
                }
            }
        };
        let opts = LogOpts {
            timestamps: req.q_bool("timestamps"),
            tail: req.q("tailLines").and_then(|t| t.parse().ok()),
            since: req
                .q("sinceTime")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .or_else(|| {
                    req.q("sinceSeconds")
                        .and_then(|s| s.parse::<i64>().ok())
                        .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
                }),
            limit: req.q("limitBytes").and_then(|l| l.parse().ok()),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let (body, consumed) = render_log(&text, &opts);
        if !(req.q_bool("follow") && live) {
            return Ok(Reply::Text(200, "text/plain", Bytes::from(body)));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let uid = meta_str(&pod, "uid").to_string();
        let api = api.clone();
        tokio::spawn(async move {
            let mut sent = body.len();
            if tx.send(Bytes::from(body)).await.is_err() {
                return;
            }
            let mut offset = consumed;
            let follow_opts = LogOpts { tail: None, since: None, ..opts };
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if let Some(fresh) = text.get(offset..) {
                    let (chunk, used) = render_log(fresh, &follow_opts);
                    offset += used;
                    if !chunk.is_empty() {
                        if follow_opts.limit.is_some_and(|l| sent >= l) {
                            return;
                        }
                        sent += chunk.len();
                        if tx.send(Bytes::from(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                let still = api.kubelet.running_container(&uid, &container).is_some_and(|t| !t.id.is_empty())
                    && api.kubelet.current_log(&uid, &container).as_deref() == Some(file.as_path());
                if !still {
                    // one last read after the writer finished
                    let text = std::fs::read_to_string(&file).unwrap_or_default();
                    if let Some(fresh) = text.get(offset..) {
                        let (chunk, _) = render_log(fresh, &follow_opts);
                        if !chunk.is_empty() {
                            let _ = tx.send(Bytes::from(chunk)).await;
                        }
                    }
                    return;
                }
            }
        });
        Ok(Reply::Stream(200, "text/plain", rx))
    }

    fn current_log(&self, uid: &str, container: &str) -> Option<PathBuf> {
        let pods = lock(&self.pods);
        let p = pods.get(uid)?;
        let cs = lock(&p.containers);
        cs.get(container).and_then(|c| c.logs.last().cloned())
    }
}

#[derive(Clone, Copy)]
struct LogOpts {
    timestamps: bool,
    tail: Option<usize>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<usize>,
}

/// Render CRI log lines (`TS STREAM P|F CONTENT`) as `pods/log` does. Returns the text and the
/// number of input bytes consumed (whole lines only).
fn render_log(text: &str, o: &LogOpts) -> (String, usize) {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut partial = String::new();
    let mut consumed = 0;
    for raw in text.split_inclusive('\n') {
        if !raw.ends_with('\n') {
            break;
        }
        consumed += raw.len();
        let raw = raw.trim_end_matches('\n');
        let mut parts = raw.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let content = parts.next().unwrap_or("");
        if let Some(since) = o.since {
            if chrono::DateTime::parse_from_rfc3339(ts).is_ok_and(|t| t < since) {
                continue;
            }
        }
        partial.push_str(content);
        if tag == "F" {
            lines.push((ts.to_string(), std::mem::take(&mut partial)));
        }
    }
    let skip = o.tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
    let mut out = String::new();
    for (ts, content) in lines.iter().skip(skip) {
        if o.timestamps {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(content);
        out.push('\n');
    }
    if let Some(l) = o.limit {
        if out.len() > l {
            let mut cut = l;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
    }
    (out, consumed)
}

fn new_ctr(spec: &Value, ephemeral: bool, images: &Images) -> CtrRt {
    let image = spec["image"].as_str().unwrap_or("").to_string();
    CtrRt {
        current: None,
        restart_count: 0,
        logs: Vec::new(),
        running: false,
        ephemeral,
        started_at: String::new(),
        last_terminated: None,
        terminated: None,
        image_id: images.id(images.kind(&image)).to_string(),
        image,
    }
}

fn short(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

fn write_volumes(api: &Api, rt: &PodRt, pod: &Value) -> anyhow::Result<HashMap<String, PathBuf>> {
    use std::os::unix::fs::{chown, PermissionsExt};
    let mut out = HashMap::new();
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let fs_group = pod["spec"]["securityContext"]["fsGroup"].as_u64().and_then(|g| u32::try_from(g).ok());
    // secret and configMap files: `mode`/`defaultMode` (0644 by default); with an fsGroup the
    // kubelet gives them that group and group read (SetVolumeOwnership's read-only mask)
    let write_file = |dir: &Path, path: &str, data: &[u8], mode: u32| -> anyhow::Result<()> {
        let f = dir.join(path.trim_start_matches('/'));
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, data)?;
        let mode = if fs_group.is_some() { mode | 0o440 } else { mode };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode & 0o7777))?;
        if let Some(g) = fs_group {
            chown(&f, Some(0), Some(g))?;
        }
        Ok(())
    };
    let keyed = |v: &Value, data: Vec<(String, Vec<u8>)>, dir: &Path| -> anyhow::Result<()> {
        let default_mode = v["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        match v["items"].as_array() {
            Some(items) => {
                for it in items {
                    let key = it["key"].as_str().unwrap_or("");
                    let Some((_, b)) = data.iter().find(|(k, _)| k == key) else {
                        if v["optional"].as_bool() == Some(true) {
                            continue;
                        }
                        anyhow::bail!("couldn't find key {key} in the volume's source");
                    };
                    let mode = it["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode);
                    write_file(dir, it["path"].as_str().unwrap_or(key), b, mode)?;
                }
            }
            None => {
                for (k, b) in &data {
                    write_file(dir, k, b, default_mode)?;
                }
            }
        }
        Ok(())
    };
    // a ConfigMap or Secret volume: the object's `data`, each value decoded, written by `keyed`
    let from_object = |kind: &'static res::ResourceType,
                       src: &Value,
                       name_key: &str,
                       decode: fn(&Value) -> Vec<u8>,
                       dir: &Path|
     -> anyhow::Result<()> {
        let name = src[name_key].as_str().unwrap_or("");
        match api.store.get(kind, &rt.ns, name) {
            Some(obj) => {
                let data = obj["data"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), decode(v))).collect();
                keyed(src, data, dir)
            }
            None if src["optional"].as_bool() == Some(true) => Ok(()),
            None => anyhow::bail!("{} \"{name}\" not found", kind.singular),
        }
    };
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let mut dir = rt.dir.join("volumes").join(&name);
        std::fs::create_dir_all(&dir)?;
        if let Some(p) = v.get("projected") {
            for s in p["sources"].as_array().into_iter().flatten() {
                if let Some(t) = s.get("serviceAccountToken") {
                    let ttl = t["expirationSeconds"].as_u64().unwrap_or(3607);
                    let token = api.mint_sa_token(&rt.ns, sa, Some((&rt.name, &rt.uid)), Duration::from_secs(ttl));
                    std::fs::write(dir.join(t["path"].as_str().unwrap_or("token")), token)?;
                }
                if s.get("configMap").is_some() {
                    std::fs::write(dir.join("ca.crt"), &api.ca_pem)?;
                }
                if s.get("downwardAPI").is_some() {
                    std::fs::write(dir.join("namespace"), &rt.ns)?;
                }
            }
        } else if let Some(cm) = v.get("configMap") {
            let text = |v: &Value| v.as_str().unwrap_or("").as_bytes().to_vec();
            from_object(&res::CONFIGMAPS, cm, "name", text, &dir)?;
        } else if let Some(sec) = v.get("secret") {
            use base64::Engine;
            let b64 = |v: &Value| {
                base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).unwrap_or_default()
            };
            from_object(&res::SECRETS, sec, "secretName", b64, &dir)?;
        } else if let Some(claim) = v.get("persistentVolumeClaim") {
            // a claim's storage outlives the pod: kept by the claim's bound volume name
            let claim_name = claim["claimName"].as_str().unwrap_or("");
            let Some(pvc) = api.store.get(&res::PVCS, &rt.ns, claim_name) else {
                anyhow::bail!("persistentvolumeclaim \"{claim_name}\" not found");
            };
            let volume = pvc["spec"]["volumeName"].as_str().unwrap_or(claim_name).to_string();
            dir = api.kubelet.dir.join("volumes").join(volume);
            std::fs::create_dir_all(&dir)?;
            if let Some(g) = fs_group {
                chown(&dir, Some(0), Some(g))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775))?;
            }
        } else if v.get("emptyDir").is_some() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            if let Some(g) = fs_group {
                chown(&dir, Some(0), Some(g))?;
            }
        }
        // hostPath and everything else: an empty directory of the pod's own.
        out.insert(name, dir);
    }
    Ok(out)
}

async fn start_pod(api: Arc<Api>, rt: Arc<PodRt>, pod: Value) {
    let kubelet = &api.kubelet;
    let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    let result: anyhow::Result<()> = async {
        std::fs::create_dir_all(rt.dir.join("bundles"))?;
        std::fs::create_dir_all(rt.dir.join("logs"))?;
        let sandbox = ContainerConfig {
            id: format!("s-{}", short(&rt.uid)),
            rootfs_from: kubelet.images.sandbox.clone(),
            args: vec!["/pause".into()],
            env: vec![],
            cwd: "/".into(),
            hostname: rt.name.clone(),
            binds: vec![],
            join: Join { net: if host_network { Some(None) } else { None }, ..Default::default() },
            privileged: false,
            link_rootfs: false,
            user: (0, 0, vec![]),
            readonly_root: false,
            drop_caps: vec![],
            add_caps: vec![],
            no_new_privileges: true,
        };
        let started = kubelet.runc.start(&sandbox, &rt.dir.join("bundles"), false).await?;
        let mut child = started.child;
        let pid = started.pid;
        *lock(&rt.sandbox) = Some((sandbox.id.clone(), pid));
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let msg = format!("{e:#}");
        api.update_status(&format!("system:node:{}", rt.node), &res::PODS, &rt.ns, &rt.name, |p| {
            p["status"]["phase"] = json!("Pending");
            p["status"]["conditions"] = json!([{"type": "PodReadyToStartContainers", "status": "False", "lastProbeTime": null,
                "lastTransitionTime": now_rfc3339(), "reason": "SandboxCreateFailed", "message": msg}]);
        });
        return;
    }
    let containers: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    {
        let mut cs = lock(&rt.containers);
        for c in &containers {
            cs.insert(c["name"].as_str().unwrap_or("").to_string(), new_ctr(c, false, &kubelet.images));
        }
    }
    for c in containers {
        let (api, rt, pod) = (api.clone(), rt.clone(), pod.clone());
        tokio::spawn(async move { supervise(api, rt, pod, c, false).await });
    }
}

fn container_config(
    api: &Api,
    rt: &PodRt,
    pod: &Value,
    spec: &Value,
    instance: u32,
    volumes: &HashMap<String, PathBuf>,
) -> Result<ContainerConfig, String> {
    let kubelet = &api.kubelet;
    let image = spec["image"].as_str().unwrap_or("");
    let kind = kubelet.images.kind(image);
    let mut args: Vec<String> =
        spec["command"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    let extra: Vec<String> =
        spec["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    if args.is_empty() {
        args = match kind {
            ImageKind::Busybox if extra.is_empty() => vec!["sleep".into(), "2147483647".into()],
            ImageKind::Busybox => vec![],
            ImageKind::Distroless => vec!["/app".into()],
            ImageKind::Custom(i) => {
                let entry = &kubelet.images.custom[i].0.entrypoint;
                if extra.is_empty() {
                    entry.clone()
                } else {
                    entry.iter().take(1).cloned().collect()
                }
            }
        };
    }
    args.extend(extra);
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("HOSTNAME={}", rt.name),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
    ];
    for e in spec["env"].as_array().into_iter().flatten() {
        if let (Some(n), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            env.push(format!("{n}={v}"));
        }
    }
    let mut binds: Vec<Bind> = spec["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let src = volumes.get(m["name"].as_str().unwrap_or(""))?;
            Some(Bind {
                source: src.clone(),
                destination: m["mountPath"].as_str().unwrap_or("/mnt").to_string(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    if !host_network {
        binds.extend(hosts_file(rt));
    }
    let sandbox_pid = lock(&rt.sandbox).as_ref().map(|(_, p)| *p).unwrap_or(0);
    let ns = |n: &str| PathBuf::from(format!("/proc/{sandbox_pid}/ns/{n}"));
    let target_pid = spec["targetContainerName"].as_str().and_then(|t| {
        let cs = lock(&rt.containers);
        cs.get(t).and_then(|c| c.current.as_ref().map(|x| PathBuf::from(format!("/proc/{}/ns/pid", x.pid))))
    });
    let host_pid = pod["spec"]["hostPID"].as_bool() == Some(true);
    let privileged = spec["securityContext"]["privileged"].as_bool() == Some(true);
    let name = spec["name"].as_str().unwrap_or("c");
    let (user, non_root) = security_user(pod, spec, kubelet.images.user(kind));
    if non_root && user.0 == 0 {
        // the kubelet's words (kuberuntime_container_linux.go / security_context_others.go)
        let pod_ref = format!("pod: \"{}_{}({})\", container: {name}", rt.name, rt.ns, rt.uid);
        let explicit =
            spec["securityContext"]["runAsUser"].is_u64() || pod["spec"]["securityContext"]["runAsUser"].is_u64();
        return Err(if explicit {
            format!("container's runAsUser breaks non-root policy ({pod_ref})")
        } else {
            format!("container has runAsNonRoot and image will run as root ({pod_ref})")
        });
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
    };
    let sc = &spec["securityContext"];
    Ok(ContainerConfig {
        id: format!("k-{}-{}-{instance}", short(&rt.uid), name),
        rootfs_from: kubelet.images.rootfs(kind).to_path_buf(),
        args,
        env,
        cwd: spec["workingDir"].as_str().unwrap_or("/").to_string(),
        hostname: rt.name.clone(),
        binds,
        join: Join {
            net: Some(if host_network { None } else { Some(ns("net")) }),
            ipc: Some(ns("ipc")),
            uts: Some(ns("uts")),
            pid: if host_pid { Some(PathBuf::from("/proc/1/ns/pid")) } else { target_pid },
        },
        privileged,
        link_rootfs: matches!(kind, ImageKind::Custom(_)),
        user,
        readonly_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        drop_caps: strings(&sc["capabilities"]["drop"]),
        add_caps: strings(&sc["capabilities"]["add"]),
        no_new_privileges: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
    })
}

/// The process user from the pod's and the container's securityContext (the container's wins),
/// falling back to the image's user: (uid, gid, supplementary groups) and whether
/// `runAsNonRoot` is asked for.
fn security_user(pod: &Value, spec: &Value, image: (u32, u32)) -> ((u32, u32, Vec<u32>), bool) {
    let (p, c) = (&pod["spec"]["securityContext"], &spec["securityContext"]);
    let num = |k: &str| c[k].as_u64().or_else(|| p[k].as_u64()).and_then(|v| u32::try_from(v).ok());
    let uid = num("runAsUser").unwrap_or(image.0);
    let gid = num("runAsGroup").unwrap_or(if num("runAsUser").is_some() { 0 } else { image.1 });
    let mut groups: Vec<u32> = p["fsGroup"].as_u64().and_then(|v| u32::try_from(v).ok()).into_iter().collect();
    groups.extend(
        p["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64())
            .filter_map(|v| u32::try_from(v).ok()),
    );
    let non_root = c["runAsNonRoot"].as_bool().or_else(|| p["runAsNonRoot"].as_bool()) == Some(true);
    ((uid, gid, groups), non_root)
}

/// The pod's `/etc/hosts`, as the kubelet keeps it: one file per pod, rewritten in place
/// whenever a container of the pod starts (ephemeral containers too), bind-mounted into every
/// container. `None` when it cannot be written (the container then keeps its image's).
fn hosts_file(rt: &PodRt) -> Option<Bind> {
    let path = rt.dir.join("etc-hosts");
    let text = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{}\n",
        rt.pod_ip, rt.name
    );
    std::fs::write(&path, text).ok()?;
    Some(Bind { source: path, destination: "/etc/hosts".into(), read_only: false })
}

async fn pump_log(
    mut r: impl tokio::io::AsyncRead + Unpin,
    stream: u8,
    file: Arc<Mutex<std::fs::File>>,
    out: broadcast::Sender<(u8, Bytes)>,
) {
    let name = if stream == 1 { "stdout" } else { "stderr" };
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or(&[]);
        if n > 0 {
            let _ = out.send((stream, Bytes::copy_from_slice(chunk)));
        }
        pending.extend_from_slice(chunk);
        let mut text = String::new();
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
            text.push_str(&format!(
                "{ts} {name} F {}\n",
                String::from_utf8_lossy(line.get(..line.len() - 1).unwrap_or(&[]))
            ));
        }
        if n == 0 && !pending.is_empty() {
            let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
            text.push_str(&format!("{ts} {name} F {}\n", String::from_utf8_lossy(&pending)));
            pending.clear();
        }
        if !text.is_empty() {
            let _ = lock(&file).write_all(text.as_bytes());
        }
        if n == 0 {
            return;
        }
    }
}

/// Run one container (with restarts) until the pod stops.
async fn supervise(api: Arc<Api>, rt: Arc<PodRt>, pod: Value, spec: Value, ephemeral: bool) {
    let name = spec["name"].as_str().unwrap_or("").to_string();
    let node_user = format!("system:node:{}", rt.node);
    let volumes = match write_volumes(&api, &rt, &pod) {
        Ok(v) => v,
        Err(e) => {
            set_waiting(&api, &rt, &name, ephemeral, "CreateContainerConfigError", &format!("{e:#}"), &node_user);
            return;
        }
    };
    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
    let mut instance = 0u32;
    loop {
        if rt.stopping.load(Ordering::SeqCst) {
            return;
        }
        let cfg = match container_config(&api, &rt, &pod, &spec, instance, &volumes) {
            Ok(c) => c,
            Err(msg) => {
                set_waiting(&api, &rt, &name, ephemeral, "CreateContainerConfigError", &msg, &node_user);
                return;
            }
        };
        let log_path = rt.dir.join("logs").join(format!("{name}-{instance}.log"));
        let file = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
            Ok(f) => Arc::new(Mutex::new(f)),
            Err(_) => return,
        };
        let with_stdin = spec["stdin"].as_bool() == Some(true);
        let started = api.kubelet.runc.start(&cfg, &rt.dir.join("bundles"), with_stdin).await;
        let mut started = match started {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}");
                set_waiting(&api, &rt, &name, ephemeral, "RunContainerError", &msg, &node_user);
                return;
            }
        };
        let (out_tx, _) = broadcast::channel(256);
        let stdin_tx = started.child.stdin.take().map(|mut w| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
            tx
        });
        let target = Target {
            id: cfg.id.clone(),
            rootfs: started.bundle.join("rootfs"),
            pid: started.pid,
            output: out_tx.clone(),
            stdin: stdin_tx,
        };
        let started_at = now_rfc3339();
        {
            let mut cs = lock(&rt.containers);
            if let Some(c) = cs.get_mut(&name) {
                c.current = Some(target);
                c.running = true;
                c.restart_count = instance;
                c.logs.push(log_path.clone());
                c.started_at = started_at.clone();
                c.terminated = None;
            }
        }
        report(&api, &rt, &node_user);
        if instance == 0 {
            let (api, pod, node, name, image) = (
                api.clone(),
                pod.clone(),
                rt.node.clone(),
                name.clone(),
                spec["image"].as_str().unwrap_or("").to_string(),
            );
            tokio::spawn(async move {
                let msg =
                    format!("Container image \"{image}\" already present on machine and can be accessed by the pod");
                crate::controllers::pod_event(&api, &node, &pod, &name, "Normal", "Pulled", &msg).await;
                crate::controllers::pod_event(&api, &node, &pod, &name, "Normal", "Created", "Container created").await;
                crate::controllers::pod_event(&api, &node, &pod, &name, "Normal", "Started", "Container started").await;
            });
        }
        let mut pumps = Vec::new();
        if let Some(o) = started.child.stdout.take() {
            pumps.push(tokio::spawn(pump_log(o, 1, file.clone(), out_tx.clone())));
        }
        if let Some(e) = started.child.stderr.take() {
            pumps.push(tokio::spawn(pump_log(e, 2, file.clone(), out_tx.clone())));
        }
        drop(out_tx);
        let code = match started.child.wait().await {
            Ok(st) => st.code().unwrap_or(137),
            Err(_) => 137,
        };
        for p in pumps {
            let _ = p.await;
        }
        let finished = now_rfc3339();
        let term = json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_at, "finishedAt": finished, "containerID": format!("runc://{}", cfg.id)}});
        {
            let mut cs = lock(&rt.containers);
            if let Some(c) = cs.get_mut(&name) {
                c.running = false;
                c.terminated = Some(term.clone());
                c.last_terminated = Some(term.clone());
            }
        }
        api.kubelet.runc.delete(&cfg.id).await;
        let restart = !ephemeral
            && !rt.stopping.load(Ordering::SeqCst)
            && (policy == "Always" || (policy == "OnFailure" && code != 0));
        if !restart {
            report(&api, &rt, &node_user);
            return;
        }
        instance += 1;
        report(&api, &rt, &node_user);
        let backoff = Duration::from_millis((100u64 << instance.min(4)).min(1000));
        tokio::time::sleep(backoff).await;
    }
}

fn set_waiting(api: &Api, rt: &PodRt, name: &str, ephemeral: bool, reason: &str, msg: &str, who: &str) {
    {
        let mut cs = lock(&rt.containers);
        if let Some(c) = cs.get_mut(name) {
            c.terminated = None;
            c.running = false;
            c.current = None;
        }
    }
    let (name, reason, msg) = (name.to_string(), reason.to_string(), msg.to_string());
    let key = if ephemeral { "ephemeralContainerStatuses" } else { "containerStatuses" };
    api.update_status(who, &res::PODS, &rt.ns, &rt.name, |p| {
        if let Some(list) = p["status"][key].as_array_mut() {
            for s in list.iter_mut().filter(|s| s["name"] == name.as_str()) {
                s["state"] = json!({"waiting": {"reason": reason, "message": msg}});
            }
        }
    });
}

fn status_of(c: &CtrRt, name: &str) -> Value {
    let state = if c.running {
        json!({"running": {"startedAt": c.started_at}})
    } else if let Some(t) = &c.terminated {
        t.clone()
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    };
    let last = match (&c.last_terminated, c.running || c.terminated.is_none()) {
        (Some(t), true) => t.clone(),
        _ => json!({}),
    };
    let mut s = json!({"name": name, "state": state, "lastState": last, "ready": c.running && !c.ephemeral,
        "restartCount": c.restart_count, "image": c.image, "imageID": c.image_id});
    if let Some(cur) = &c.current {
        s["containerID"] = json!(format!("runc://{}", cur.id));
        s["started"] = json!(c.running);
    }
    s
}

/// Write the pod's status from the runtime state.
fn report(api: &Api, rt: &PodRt, who: &str) {
    let (statuses, ephemeral, all_running, all_done, any_failed) = {
        let cs = lock(&rt.containers);
        let mut st = Vec::new();
        let mut eph = Vec::new();
        let mut all_running = true;
        let mut all_done = true;
        let mut any_failed = false;
        let mut names: Vec<&String> = cs.keys().collect();
        names.sort();
        for n in names {
            let Some(c) = cs.get(n) else { continue };
            if c.ephemeral {
                eph.push(status_of(c, n));
                continue;
            }
            all_running &= c.running;
            all_done &= !c.running && c.terminated.is_some();
            if let Some(t) = &c.terminated {
                any_failed |= t["terminated"]["exitCode"].as_i64().unwrap_or(0) != 0;
            }
            st.push(status_of(c, n));
        }
        (st, eph, all_running, all_done, any_failed)
    };
    let now = now_rfc3339();
    let (pod_ip, host_ip, started) = (rt.pod_ip.clone(), rt.host_ip.clone(), rt.started.clone());
    let stopping = rt.stopping.load(Ordering::SeqCst);
    api.update_status(who, &res::PODS, &rt.ns, &rt.name, |p| {
        // keep the order of spec.containers
        let order: Vec<String> = p["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect();
        let mut statuses = statuses.clone();
        statuses.sort_by_key(|s| order.iter().position(|n| s["name"] == n.as_str()).unwrap_or(usize::MAX));
        let restart_never = p["spec"]["restartPolicy"] != "Always";
        // finished for good only when no container runs and none will be restarted
        let phase = match (all_done && restart_never, any_failed, statuses.is_empty()) {
            (true, true, _) => "Failed",
            (true, false, _) => "Succeeded",
            (false, _, true) => "Pending",
            (false, _, false) => "Running",
        };
        let ready = if all_running && !stopping { "True" } else { "False" };
        let gen = p["metadata"]["generation"].clone();
        let cond = |t: &str, s: &str, old: &Value| -> Value {
            let prev = old["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned());
            let since = match &prev {
                Some(c) if c["status"] == s => c["lastTransitionTime"].clone(),
                _ => json!(now),
            };
            json!({"type": t, "observedGeneration": gen, "status": s, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let old = p.clone();
        p["status"]["phase"] = json!(phase);
        p["status"]["observedGeneration"] = gen.clone();
        p["status"]["conditions"] = json!([cond("PodReadyToStartContainers", "True", &old), cond("Initialized", "True", &old),
            cond("Ready", ready, &old), cond("ContainersReady", ready, &old), cond("PodScheduled", "True", &old)]);
        p["status"]["hostIP"] = json!(host_ip);
        p["status"]["hostIPs"] = json!([{"ip": host_ip}]);
        p["status"]["podIP"] = json!(pod_ip);
        p["status"]["podIPs"] = json!([{"ip": pod_ip}]);
        p["status"]["startTime"] = json!(started);
        p["status"]["containerStatuses"] = json!(statuses);
        if !ephemeral.is_empty() {
            p["status"]["ephemeralContainerStatuses"] = json!(ephemeral);
        }
        p["status"]["qosClass"] = json!("BestEffort");
    });
}

async fn stop_pod(api: &Arc<Api>, rt: Arc<PodRt>, grace: u64, delete_object: bool) {
    let kubelet = &api.kubelet;
    let ids: Vec<String> = lock(&rt.containers)
        .values()
        .filter_map(|c| c.current.as_ref().filter(|_| c.running).map(|t| t.id.clone()))
        .collect();
    for id in &ids {
        kubelet.runc.kill(id, "TERM").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace).min(kubelet.max_grace);
    while tokio::time::Instant::now() < deadline {
        if lock(&rt.containers).values().all(|c| !c.running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        kubelet.runc.kill(id, "KILL").await;
    }
    for _ in 0..250 {
        if lock(&rt.containers).values().all(|c| !c.running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        kubelet.runc.delete(id).await;
    }
    let sandbox = lock(&rt.sandbox).take();
    if let Some((id, _)) = sandbox {
        kubelet.runc.kill(&id, "KILL").await;
        kubelet.runc.delete(&id).await;
    }
    let _ = std::fs::remove_dir_all(rt.dir.join("bundles"));
    rt.stopped.store(true, Ordering::SeqCst);
    lock(&kubelet.pods).remove(&rt.uid);
    if delete_object {
        finalize_pod(api, &rt.node, &rt.ns, &rt.name).await;
    }
}

/// The kubelet's final delete of a terminated pod: grace period 0, on the pod's uid.
async fn finalize_pod(api: &Arc<Api>, node: &str, ns: &str, name: &str) {
    let Some(pod) = api.store.get(&res::PODS, ns, name) else { return };
    let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                      "preconditions": {"uid": meta_str(&pod, "uid")}});
    let uri = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let _ = api.call(&format!("system:node:{node}"), "DELETE", &uri, Some(&opts)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_rendering() {
        let text = "2026-01-01T00:00:01.000000001Z stdout F one\n2026-01-01T00:00:02.000000002Z stderr P tw\n2026-01-01T00:00:02.000000003Z stderr F o\n2026-01-01T00:00:03.000000003Z stdout F three\n2026-01-01T00:00:04Z stdout F part";
        let o = LogOpts { timestamps: false, tail: None, since: None, limit: None };
        let (out, used) = render_log(text, &o);
        assert_eq!(out, "one\ntwo\nthree\n");
        assert_eq!(used, text.rfind('\n').map(|i| i + 1).unwrap_or(0));
        let (out, _) = render_log(text, &LogOpts { timestamps: true, tail: Some(1), ..o });
        assert_eq!(out, "2026-01-01T00:00:03.000000003Z three\n");
        let since =
            chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:02Z").ok().map(|t| t.with_timezone(&chrono::Utc));
        let (out, _) = render_log(text, &LogOpts { since, ..o });
        assert_eq!(out, "two\nthree\n");
        let (out, _) = render_log(text, &LogOpts { limit: Some(5), ..o });
        assert_eq!(out, "one\nt");
    }
}
