//! The shared state of one acquisition (client, bundle, options, the GETs shared by every pod,
//! timings), and the flow for one pod and one container: logs, then the collector in the
//! container or — when it has no shell, or with `--via debug` — in an ephemeral debug
//! container, then the tar copies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kustody_cluster::exec::ExecError;
use kustody_cluster::ClusterError;
use serde_json::{json, Value};

use super::debug::{DebugStart, PodEffects};
use super::{Options, Profile, Via};
use crate::bundle::{component, now, Bundle, Source};
use crate::error::{CollectError, Result};
use crate::script::{self, Mode};

/// One GET's result, shared by every pod that needs it.
type Shared = Arc<tokio::sync::OnceCell<std::result::Result<Value, String>>>;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepTime {
    pub count: u32,
    pub total_ms: f64,
    pub max_ms: f64,
}

/// What happened to one pod, for the manifest's `targets`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PodReport {
    pub namespace: String,
    pub pod: String,
    /// Why the pod could not be collected at all (it could not be read, its task failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub containers: Vec<ContainerReport>,
    pub elapsed_ms: f64,
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
    /// Why nothing was collected from it (its task failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_container: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<Value>,
    pub processes: usize,
    pub sockets: usize,
    pub listening: Vec<String>,
    pub files: usize,
    /// Files changed since the container started, not counting the acquisition's own changes.
    pub drift: usize,
    /// Files the acquisition itself changed (the kubelet rewrote `/etc/hosts` for kustody's
    /// debug container), listed apart from drift.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_by_acquisition: Vec<String>,
    pub hashed: usize,
    pub deleted_executables: Vec<u32>,
}

/// Shared state of one collection run.
pub(crate) struct Session {
    pub(super) client: kube::Client,
    pub(crate) bundle: Bundle,
    pub(super) opts: Arc<Options>,
    cache: Mutex<HashMap<String, Shared>>,
    timings: Mutex<BTreeMap<String, StepTime>>,
}

/// One pod being collected: its object (unredacted, in memory only), where its artifacts go,
/// and what the acquisition did to it.
pub(super) struct PodCtx {
    pub pod: Value,
    pub ns: String,
    pub name: String,
    /// `pods/NS/NAME` in the bundle.
    pub dir: String,
    pub effects: PodEffects,
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A lock that a panicking holder poisoned is taken back: timings and caches are plain maps.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// The result of a joined task, or — when it panicked or was cancelled — a failure recorded
/// for `item` and `fallback(reason)` in its place.
pub(crate) fn joined<T>(
    bundle: &Bundle,
    item: &str,
    res: std::result::Result<T, tokio::task::JoinError>,
    fallback: impl FnOnce(String) -> T,
) -> T {
    match res {
        Ok(v) => v,
        Err(e) => {
            let message = if e.is_panic() {
                let p = e.into_panic();
                p.downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into())
            } else {
                "cancelled".into()
            };
            let err = CollectError::TaskPanicked { task: item.to_owned(), message };
            bundle.fail(item, err.to_string(), None);
            fallback(err.to_string())
        }
    }
}

/// `status.containerStatuses[].state.running.startedAt` as epoch seconds.
fn started_epoch(status: &Value) -> Option<i64> {
    let s = status.pointer("/state/running/startedAt")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp())
}

impl Session {
    pub fn new(client: kube::Client, bundle: Bundle, opts: Options) -> Session {
        Session {
            client,
            bundle,
            opts: Arc::new(opts),
            cache: Mutex::new(HashMap::new()),
            timings: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn timings(&self) -> BTreeMap<String, StepTime> {
        lock(&self.timings).clone()
    }

    pub(super) fn time(&self, step: &str, d: Duration) {
        let mut t = lock(&self.timings);
        let e = t.entry(step.to_owned()).or_default();
        e.count += 1;
        e.total_ms += ms(d);
        e.max_ms = e.max_ms.max(ms(d));
    }

    pub(super) async fn get(&self, url: &str) -> Result<Value> {
        let req = http::Request::get(url).body(Vec::new()).map_err(|e| CollectError::InvalidOption {
            option: "url",
            value: url.into(),
            reason: e.to_string(),
        })?;
        let text = self.client.request_text(req).await.map_err(ClusterError::from_kube)?;
        serde_json::from_str(&text).map_err(|source| CollectError::Decode { url: url.to_owned(), source })
    }

    /// A GET shared by every pod of the run (namespace lists, cluster-wide bindings). The
    /// error is kept as text: one error value is handed to every pod that asked.
    pub(super) async fn get_cached(&self, url: &str) -> std::result::Result<Value, String> {
        let cell = lock(&self.cache).entry(url.to_owned()).or_default().clone();
        cell.get_or_init(|| async { self.get(url).await.map_err(|e| e.to_string()) }).await.clone()
    }

    /// Store an API object (redacted), or record why it could not be read or written.
    pub(super) fn store_api(
        &self,
        rel: &str,
        item: &str,
        url: &str,
        started: String,
        res: std::result::Result<Value, String>,
        notes: Vec<String>,
    ) -> Option<Value> {
        let src = Source::Api { method: "GET".into(), url: url.to_owned() };
        match res {
            Ok(mut v) => {
                let redacted =
                    if self.opts.include_env_values { Vec::new() } else { crate::redact::env_values(&mut v) };
                self.bundle.save(rel, &pretty(&v), src, started, notes, redacted);
                Some(v)
            }
            Err(e) => {
                self.bundle.fail(item, e, Some(src));
                None
            }
        }
    }

    /// GET `url` into `DIR/cluster/NAME.json`, or record why not.
    pub(super) async fn fetch(&self, dir: &str, name: &str, url: &str) {
        let started = now();
        let r = self.get(url).await.map_err(|e| e.to_string());
        self.store_api(
            &format!("{dir}/cluster/{name}.json"),
            &format!("{dir}/cluster/{name}"),
            url,
            started,
            r,
            vec![],
        );
    }

    /// Pods matching a label selector, in a namespace or all, sorted.
    pub async fn select(&self, ns: Option<&str>, selector: &str) -> Result<Vec<(String, String)>> {
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

    /// Everything for one pod: its context and every container, concurrently. A container task
    /// that panics is a failure and a container entry of its own.
    pub async fn collect_pod(self: &Arc<Self>, ns: &str, name: &str) -> PodReport {
        let t0 = Instant::now();
        let dir = format!("pods/{}/{}", component(ns), component(name));
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let started = now();
        let res = self.get(&url).await.map_err(|e| e.to_string());
        self.time("api: pod", t0.elapsed());
        let mut report = PodReport { namespace: ns.to_owned(), pod: name.to_owned(), ..PodReport::default() };
        let stored = self.store_api(
            &format!("{dir}/cluster/pod.json"),
            &format!("{dir}/cluster/pod"),
            &url,
            started,
            res.clone(),
            vec![],
        );
        // the unredacted object stays in memory only
        let pod = match (res, stored) {
            (Ok(pod), Some(_)) => pod,
            (res, _) => {
                report.error = res.err().or_else(|| Some("the pod object could not be stored".into()));
                report.elapsed_ms = ms(t0.elapsed());
                return report;
            }
        };
        report.uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
        report.node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_owned();
        report.phase = pod.pointer("/status/phase").and_then(Value::as_str).map(String::from);
        let names = self.container_names(&pod, ns, name, &dir);
        let ctx = Arc::new(PodCtx {
            effects: PodEffects::default(),
            pod,
            ns: ns.to_owned(),
            name: name.to_owned(),
            dir: dir.clone(),
        });
        let context = {
            let (me, ctx) = (self.clone(), ctx.clone());
            tokio::spawn(async move { me.context(&ctx.pod, &ctx.dir).await })
        };
        let mut tasks = Vec::new();
        for c in names {
            let (me, ctx2) = (self.clone(), ctx.clone());
            let c2 = c.clone();
            tasks.push((c, tokio::spawn(async move { me.container(&ctx2, &c2).await })));
        }
        for (c, t) in tasks {
            let item = format!("{dir}/containers/{}", component(&c));
            let r = joined(&self.bundle, &item, t.await, |error| ContainerReport {
                name: c.clone(),
                via: "none".into(),
                error: Some(error),
                ..ContainerReport::default()
            });
            report.containers.push(r);
        }
        joined(&self.bundle, &format!("{dir}/cluster"), context.await, |_| ());
        self.time("pod total", t0.elapsed());
        report.elapsed_ms = ms(t0.elapsed());
        report
    }

    /// The pod's containers to collect (`-c`, or all); a `-c` the pod lacks is a failure.
    fn container_names(&self, pod: &Value, ns: &str, name: &str, dir: &str) -> Vec<String> {
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
                    format!("pod {ns}/{name} has no container `{only}` (it has: {})", names.join(", ")),
                    None,
                );
            }
            names.retain(|n| n == only);
        }
        names
    }

    /// One container: logs, collector, copies.
    async fn container(self: &Arc<Self>, pod: &PodCtx, c: &str) -> ContainerReport {
        let status = ["containerStatuses", "initContainerStatuses"]
            .iter()
            .flat_map(|k| pod.pod.pointer(&format!("/status/{k}")).and_then(Value::as_array).into_iter().flatten())
            .find(|s| s.get("name").and_then(Value::as_str) == Some(c))
            .cloned()
            .unwrap_or_default();
        let cdir = format!("{}/containers/{}", pod.dir, component(c));
        let mut report = ContainerReport {
            name: c.to_owned(),
            image: status.get("image").and_then(Value::as_str).unwrap_or_default().to_owned(),
            image_id: status.get("imageID").and_then(Value::as_str).unwrap_or_default().to_owned(),
            via: "none".into(),
            ..ContainerReport::default()
        };
        let logs = self.logs(&pod.ns, &pod.name, c, &cdir, &status);
        let work = async {
            if status.pointer("/state/running").is_none() {
                let state = status.get("state").map(|s| s.to_string()).unwrap_or_else(|| "no status".into());
                self.bundle.fail(
                    format!("{cdir}/collector"),
                    format!("container {c} is not running ({state}): nothing to exec into"),
                    None,
                );
                return;
            }
            self.acquire(pod, &status, c, &cdir, &mut report).await;
        };
        tokio::join!(logs, work);
        report
    }

    /// The collector in the container, or in a debug container (`--via debug`, or no shell
    /// with `--via auto`); then the copies; then the debug container is ended.
    async fn acquire(
        self: &Arc<Self>,
        pod: &PodCtx,
        status: &Value,
        c: &str,
        cdir: &str,
        report: &mut ContainerReport,
    ) {
        let (ns, name) = (pod.ns.as_str(), pod.name.as_str());
        let mut exec_container = c.to_owned();
        let mut mode = Mode::InContainer;
        let mut debug: Option<DebugStart> = None;
        if self.opts.via == Via::Debug {
            match self.start_debug(pod, c, report).await {
                Ok(d) => {
                    exec_container = d.name.clone();
                    debug = Some(d);
                    mode = Mode::Debug;
                }
                Err(e) => {
                    self.bundle.fail(format!("{cdir}/collector"), e.to_string(), None);
                    return;
                }
            }
        }
        let started_at = started_epoch(status);
        let excluded = super::context::credential_mounts(&pod.pod, c);
        let managed = managed_paths(&pod.pod, c);
        let mut run = self.run_collector(ns, name, &exec_container, mode, started_at, &excluded, &managed).await;
        if mode == Mode::InContainer && run.sections.is_empty() && matches!(run.error, Some(ExecError::Transport(_))) {
            // The script is sent as soon as the stream opens; when `sh` cannot start, the server
            // may close the socket on that unread input before its status arrives (a reset).
            // Ask once more without input: that answer says whether there is a shell.
            if let Err(e @ ExecError::CommandNotFound { .. }) = self.probe_shell(ns, name, &exec_container).await {
                run.error = Some(e);
            }
        }
        if matches!(run.error, Some(ExecError::CommandNotFound { .. })) && self.opts.via == Via::Auto {
            // no shell (distroless): the static collector in an ephemeral container
            match self.start_debug(pod, c, report).await {
                Ok(d) => {
                    exec_container = d.name.clone();
                    debug = Some(d);
                    mode = Mode::Debug;
                    run = self.run_collector(ns, name, &exec_container, mode, started_at, &excluded, &managed).await;
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
        report.via = if mode == Mode::Debug { "debug".into() } else { "exec".into() };
        run.finish(self, pod, &exec_container, cdir, report);
        self.copies(pod, &run, mode, &exec_container, cdir, &excluded, report).await;
        if let Some(d) = debug {
            self.stop_debug(pod, &d, report).await;
        }
    }

    /// `--paths` and, with `--profile full`, every changed file, as tar streams.
    #[allow(clippy::too_many_arguments)]
    async fn copies(
        &self,
        pod: &PodCtx,
        run: &super::run::CollectorRun,
        mode: Mode,
        exec_container: &str,
        cdir: &str,
        excluded: &[String],
        report: &mut ContainerReport,
    ) {
        let (ns, name) = (pod.ns.as_str(), pod.name.as_str());
        let root = match (mode, run.target_pid) {
            (Mode::Debug, Some(t)) => format!("/proc/{t}/root/"),
            (Mode::Debug, None) => return,
            _ => "/".to_owned(),
        };
        if !self.opts.paths.is_empty() {
            let cmd = script::tar_command(&root, &self.opts.paths, excluded);
            self.tar(ns, name, exec_container, &format!("{cdir}/paths.tar"), cmd, None, "copy --paths").await;
        }
        if self.opts.profile == Profile::Full {
            let list: Vec<String> = run
                .files
                .iter()
                .filter(|f| {
                    f.drift
                        && f.kind == "file"
                        && script::batchable(&f.path)
                        && !super::context::under(&f.path, excluded)
                })
                .map(|f| format!(".{}", f.path))
                .collect();
            if list.is_empty() {
                report.collector.get_or_insert_with(|| json!({}))["changed_tar"] = json!("no changed files");
            } else {
                let mut stdin = list.join("\n").into_bytes();
                stdin.push(b'\n');
                let cmd = script::tar_list_command(&root);
                let rel = format!("{cdir}/changed.tar");
                self.tar(ns, name, exec_container, &rel, cmd, Some(stdin), "tar changed files").await;
            }
        }
    }
}

/// The kubelet-managed paths of container `c` (its `terminationMessagePath`, or the default).
fn managed_paths(pod: &Value, c: &str) -> Vec<String> {
    let term = super::context::all_containers(pod)
        .into_iter()
        .find(|x| x.get("name").and_then(Value::as_str) == Some(c))
        .and_then(|x| x.get("terminationMessagePath"))
        .and_then(Value::as_str);
    crate::kubelet::managed_paths(term)
}

/// Errors of an exec as the manifest's reason text.
pub(super) fn source_exec(ns: &str, pod: &str, container: &str, command: Vec<String>, stdin: Option<String>) -> Source {
    Source::Exec { namespace: ns.into(), pod: pod.into(), container: container.into(), command, stdin }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_is_a_recorded_failure_not_a_lost_entry() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let t = tempfile::tempdir().unwrap();
        let b = Bundle::create(&t.path().join("b")).unwrap();
        let (ok, bad) = rt.block_on(async {
            let ok = tokio::spawn(async { ContainerReport { processes: 7, ..ContainerReport::default() } }).await;
            let bad = tokio::spawn(async {
                if std::hint::black_box(true) {
                    panic!("listing parser bug");
                }
                ContainerReport::default()
            })
            .await;
            (ok, bad)
        });
        assert_eq!(joined(&b, "pods/ns/a/containers/x", ok, |_| ContainerReport::default()).processes, 7);
        let report = joined(&b, "pods/ns/a/containers/y", bad, |e| ContainerReport {
            name: "y".into(),
            error: Some(e),
            ..ContainerReport::default()
        });
        assert!(report.error.as_deref().unwrap().contains("listing parser bug"), "{report:?}");
        let f = b.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].item, "pods/ns/a/containers/y");
        assert!(f[0].reason.contains("panicked") && f[0].reason.contains("listing parser bug"), "{:?}", f[0]);
        // and the manifest has it
        b.seal(crate::bundle::Manifest::default()).unwrap();
        let m: Value = serde_json::from_slice(&std::fs::read(b.root().join("MANIFEST.json")).unwrap()).unwrap();
        assert_eq!(m["failures"][0]["item"], "pods/ns/a/containers/y");
    }
}
