//! Collection against a cluster, behind one call: [`acquire`] takes a client and a [`Request`]
//! (which pods, where, how), reports [`Progress`] through a callback, and returns the sealed
//! bundle's [`BundleOutcome`]. The CLI only parses flags and renders; a server can run the same.
//!
//! For each pod: its cluster context through the API ([`context`](self) — owners, node, events,
//! service account and RBAC, policies, services, images), and for each container its logs and
//! the collector (in the container, or in an ephemeral debug container when it has no shell),
//! then the optional tar copies. Everything lands in a [`Bundle`]; what cannot be collected is
//! recorded as a failure and the rest goes on.
//!
//! Seams: `session` (shared state of a run, one pod, one container, the exec-or-debug
//! decision), `context` (API context and RBAC), `debug` (the ephemeral debug container),
//! `run` (the collector's exec conversation), `record` (its sections parsed and written),
//! `streams` (logs and tar copies).

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value string-key assignment on objects built here (json!({..})), which never panics"
)]

mod context;
mod debug;
mod record;
mod run;
mod session;
mod streams;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bundle::{self, now, Artifact, Bundle, Failure, Manifest};
use crate::error::{CollectError, Result};

pub use context::credential_mounts;
pub use debug::debug_security_context;
pub use session::{ContainerReport, PodReport, StepTime};

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

/// Which pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// One pod.
    Pod { namespace: String, name: String },
    /// Every pod matching a label selector, in one namespace (`Some`) or all.
    Selector { namespace: Option<String>, selector: String },
}

/// One acquisition: what to collect, where to, and what the manifest records about it.
#[derive(Debug, Clone)]
pub struct Request {
    pub targets: Targets,
    /// A new (or empty) directory, or `FILE.tar.zst` (built as `FILE.tar.zst.partial/`).
    pub output: PathBuf,
    pub options: Options,
    /// Pods collected at once.
    pub parallel: usize,
    /// The case identifier, recorded in the manifest.
    pub case: Option<String>,
    /// The command line as run, recorded in the manifest.
    pub command: Vec<String>,
    /// Recorded as the manifest's `cluster` (API server URL, kubeconfig context).
    pub cluster: Value,
}

/// What [`acquire`] reports while it runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress {
    /// The pods are known and the bundle directory exists.
    Selected { pods: usize, bundle: PathBuf },
    /// One pod is done (`done` of `total`).
    PodDone { done: usize, total: usize, namespace: String, pod: String, elapsed: Duration },
    /// The manifest is written; `.tar.zst` packing may follow.
    Sealed { manifest_sha256: String },
}

/// A sealed bundle.
#[derive(Debug, Clone)]
pub struct BundleOutcome {
    /// The bundle: the directory, or the `.tar.zst`.
    pub path: PathBuf,
    /// The archive's SHA-256 (also in `FILE.tar.zst.sha256`).
    pub archive_sha256: Option<String>,
    /// The SHA-256 of `MANIFEST.json`: what ties the bundle to the moment of collection.
    pub manifest_sha256: String,
    pub pods: Vec<PodReport>,
    pub artifacts: Vec<Artifact>,
    /// Every item not collected (with the reason); empty when everything was.
    pub failures: Vec<Failure>,
    pub timings: BTreeMap<String, StepTime>,
    pub elapsed: Duration,
}

impl BundleOutcome {
    /// Everything was collected.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Check the request before anything runs.
pub fn check(request: &Request) -> Result<()> {
    for g in &request.options.paths {
        crate::script::check_glob(g)?;
    }
    if request.parallel == 0 {
        return Err(CollectError::InvalidOption {
            option: "--parallel",
            value: "0".into(),
            reason: "at least one pod must be collected at a time".into(),
        });
    }
    if let Targets::Selector { selector, .. } = &request.targets {
        if selector.trim().is_empty() {
            return Err(CollectError::InvalidOption {
                option: "-l",
                value: selector.clone(),
                reason: "an empty selector would select every pod; name them".into(),
            });
        }
    }
    Ok(())
}

/// Whether `output` names an archive (`.tar.zst`) rather than a directory.
pub fn is_archive(output: &Path) -> bool {
    output.to_string_lossy().ends_with(".tar.zst")
}

/// Collect `request.targets` into a new bundle at `request.output`: identify the caller, select
/// the pods, collect them (`request.parallel` at a time), seal the manifest, pack a `.tar.zst`.
/// Items that cannot be collected are `failures` of the outcome (and of the manifest); an `Err`
/// means no bundle was sealed: the output exists, no pod matched, the pods could not be listed,
/// or the manifest or the archive could not be written.
pub async fn acquire(
    client: &kube::Client,
    request: &Request,
    progress: impl Fn(Progress) + Send + Sync + 'static,
) -> Result<BundleOutcome> {
    let t0 = Instant::now();
    let started = now();
    check(request)?;
    let archive = is_archive(&request.output);
    if archive && request.output.exists() {
        return Err(CollectError::Exists { path: request.output.clone() });
    }
    let stage = if archive {
        let mut s = request.output.clone().into_os_string();
        s.push(".partial");
        PathBuf::from(s)
    } else {
        request.output.clone()
    };
    // who we are, before anything is written
    let actor = kustody_cluster::identity::whoami(client).await;
    let existed = stage.exists();
    let bundle = Bundle::create(&stage)?;
    let collector_identity = match actor {
        Ok(a) => serde_json::to_value(a).unwrap_or_default(),
        Err(e) => {
            bundle.fail("collector identity (SelfSubjectReview)", e.to_string(), None);
            json!({"error": e.to_string()})
        }
    };
    let session = Arc::new(session::Session::new(client.clone(), bundle.clone(), request.options.clone()));
    let pods = match select(&session, &request.targets).await {
        Ok(p) if !p.is_empty() => p,
        other => {
            // nothing was collected: leave no empty bundle directory of ours behind
            if !existed {
                let _ = std::fs::remove_dir(&stage);
            }
            return Err(other.err().unwrap_or_else(|| no_match(&request.targets)));
        }
    };
    let progress: Arc<dyn Fn(Progress) + Send + Sync> = Arc::new(progress);
    progress(Progress::Selected { pods: pods.len(), bundle: stage.clone() });
    let reports = collect_all(&session, pods, request.parallel, progress.clone()).await;
    let timings = session.timings();
    let manifest = Manifest {
        case: request.case.clone(),
        kustody_version: env!("CARGO_PKG_VERSION").into(),
        collector: collector_identity,
        cluster: request.cluster.clone(),
        command: request.command.clone(),
        options: serde_json::to_value(&request.options).unwrap_or_default(),
        started,
        finished: now(),
        targets: reports.iter().map(|r| serde_json::to_value(r).unwrap_or_default()).collect(),
        timings: serde_json::to_value(&timings).unwrap_or_default(),
        ..Manifest::default()
    };
    let manifest_sha256 = bundle.seal(manifest)?;
    progress(Progress::Sealed { manifest_sha256: manifest_sha256.clone() });
    let (path, archive_sha256) = if archive { pack(&stage, &request.output)? } else { (stage, None) };
    Ok(BundleOutcome {
        path,
        archive_sha256,
        manifest_sha256,
        pods: reports,
        artifacts: bundle.artifacts(),
        failures: bundle.failures(),
        timings,
        elapsed: t0.elapsed(),
    })
}

fn no_match(targets: &Targets) -> CollectError {
    let (selector, scope) = match targets {
        Targets::Selector { namespace: Some(ns), selector } => (selector.clone(), format!("namespace {ns}")),
        Targets::Selector { namespace: None, selector } => (selector.clone(), "any namespace".to_owned()),
        Targets::Pod { namespace, name } => (format!("pod/{name}"), format!("namespace {namespace}")),
    };
    CollectError::NoPodMatches { selector, scope }
}

/// The pods `targets` names, sorted.
async fn select(session: &session::Session, targets: &Targets) -> Result<Vec<(String, String)>> {
    match targets {
        Targets::Pod { namespace, name } => Ok(vec![(namespace.clone(), name.clone())]),
        Targets::Selector { namespace, selector } => session.select(namespace.as_deref(), selector).await,
    }
}

/// Pack the sealed directory `stage` into `out` and remove it. When packing fails, the partial
/// archive is removed and the sealed directory kept (the error names it).
fn pack(stage: &Path, out: &Path) -> Result<(PathBuf, Option<String>)> {
    match bundle::pack(stage, out) {
        Ok(sha) => {
            std::fs::remove_dir_all(stage).map_err(|e| CollectError::io(stage, e))?;
            Ok((out.to_path_buf(), Some(sha)))
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            let mut side = out.as_os_str().to_owned();
            side.push(".sha256");
            let _ = std::fs::remove_file(PathBuf::from(side));
            Err(CollectError::io(
                out,
                std::io::Error::other(format!("{e}; the sealed bundle directory is kept at {}", stage.display())),
            ))
        }
    }
}

/// Every pod, `parallel` at a time, each reported as it ends. A pod task that panics is a
/// failure and a target entry of its own: nothing vanishes from the manifest.
async fn collect_all(
    session: &Arc<session::Session>,
    pods: Vec<(String, String)>,
    parallel: usize,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Vec<PodReport> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let total = pods.len();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (ns, name) in pods {
        let (s, permits, done, progress) = (session.clone(), permits.clone(), done.clone(), progress.clone());
        let (ns2, name2) = (ns.clone(), name.clone());
        let task = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t0 = Instant::now();
            let report = s.collect_pod(&ns2, &name2).await;
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            progress(Progress::PodDone { done: n, total, namespace: ns2, pod: name2, elapsed: t0.elapsed() });
            report
        });
        tasks.push((ns, name, task));
    }
    let mut reports = Vec::new();
    for (ns, name, task) in tasks {
        let item = format!("pods/{}/{}", bundle::component(&ns), bundle::component(&name));
        let r = session::joined(&session.bundle, &item, task.await, |error| PodReport {
            namespace: ns.clone(),
            pod: name.clone(),
            error: Some(error),
            ..PodReport::default()
        });
        reports.push(r);
    }
    reports
}
