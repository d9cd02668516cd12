//! The executor: runs playbook actions against the cluster, through the same library flows
//! the CLI uses (`kustody_collect::acquire`, `kustody_contain::quarantine` and `release`), and
//! records every state an action passes through (running, then applied, dry-run, failed or
//! skipped) with its outcome — the plan sent, the bundle written, the checks made.
//!
//! Actions are committed (state `planned`) with the incident that called for them before they
//! are handed here, so a crash never loses one: at start, actions still `planned` run, and
//! actions caught `running` are marked `interrupted` (whether they changed the cluster is not
//! known; the action log and the cluster say).
//!
//! Guardrails that need the cluster are checked here, before anything changes: a quarantine
//! keeps at least `min_healthy_replicas` other ready pods in the workload.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kustody_playbook::Action;
use kustody_store::{ActionQuery, ActionRow, Batch, OutboxWrite, Ref, Store};
use serde_json::json;

use crate::metrics::Metrics;
use crate::writer::{now_ns, Write};

/// A connected cluster.
#[derive(Clone)]
pub struct Connected {
    pub client: kube::Client,
    pub server: String,
    pub context: Option<String>,
}

/// How the executor reaches the cluster (the binary knows the kubeconfig).
pub type Connect = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Connected, String>> + Send>> + Send + Sync>;

/// One pod's actions of one playbook run, in order.
#[derive(Debug, Clone)]
pub struct Job {
    pub incident: Option<i64>,
    pub playbook: String,
    /// `namespace/pod`.
    pub target: String,
    /// (action row id, what to do).
    pub steps: Vec<(i64, Action)>,
    pub dry_run: bool,
    pub min_healthy_replicas: u32,
    pub reason: String,
    /// The incident's notification (JSON) for `notify` actions.
    pub notification: Option<String>,
    /// When the finding that led here was committed (for the latency metric).
    pub since: Instant,
    /// Who approved it, when it needed approval (kept in the action's record).
    pub approved_by: Option<String>,
    /// Who asked for it from the console (kept in the action's record and the action log).
    pub requested_by: Option<String>,
}

/// Sets `key` in a JSON object (nothing when `d` is not one).
pub(crate) fn put(d: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(o) = d.as_object_mut() {
        o.insert(key.to_owned(), value);
    }
}

/// What an action row's `detail` holds for the executor.
pub fn detail(spec: &Action, job_fields: serde_json::Value) -> String {
    let mut d = json!({ "spec": spec });
    if let (Some(o), serde_json::Value::Object(extra)) = (d.as_object_mut(), job_fields) {
        o.extend(extra);
    }
    d.to_string()
}

pub struct Executor {
    pub jobs: Receiver<Job>,
    pub writes: SyncSender<Write>,
    pub connect: Option<Connect>,
    pub data_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Sinks' wake-up channels, for `notify` actions.
    pub wake: HashMap<String, SyncSender<()>>,
    /// Read-only: actions left over by the last run.
    pub store: Box<dyn Store>,
}

struct Ctx {
    writes: SyncSender<Write>,
    connect: Option<Connect>,
    cluster: tokio::sync::Mutex<Option<Connected>>,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    wake: HashMap<String, SyncSender<()>>,
}

impl Executor {
    pub fn run(self) {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the action executor");
                return;
            }
        };
        let ctx = Arc::new(Ctx {
            writes: self.writes,
            connect: self.connect,
            cluster: tokio::sync::Mutex::new(None),
            data_dir: self.data_dir,
            metrics: self.metrics,
            wake: self.wake,
        });
        for job in leftovers(self.store.as_ref(), &ctx) {
            let c = ctx.clone();
            rt.spawn(async move { run_job(&c, job).await });
        }
        // One job at a time: a pod's actions stay in order, and a workload's health
        // (`min_healthy_replicas`) is read after the previous quarantine has been verified, so
        // concurrent quarantines cannot each see the same ready pods.
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        while let Ok(job) = self.jobs.recv() {
            let (c, slots) = (ctx.clone(), slots.clone());
            rt.spawn(async move {
                let _slot = slots.acquire().await;
                run_job(&c, job).await;
            });
        }
        // Shutdown: what runs finishes (bounded), the rest stays `planned` for the next start.
        rt.shutdown_timeout(Duration::from_secs(30));
    }
}

/// Actions the last run left: `running` ones are marked interrupted, `planned` ones run again.
fn leftovers(store: &dyn Store, ctx: &Ctx) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let q = |state: &str| ActionQuery { state: Some(state.into()), limit: 10_000, ..Default::default() };
    if let Ok(rows) = store.search_actions(&q("running")) {
        for mut r in rows {
            r.state = "interrupted".into();
            r.updated_ns = now_ns();
            let mut d: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
            put(
                &mut d,
                "error",
                json!("kustody serve stopped while this action ran: check the action log and the pod"),
            );
            r.detail = d.to_string();
            let _ = save(ctx, r);
        }
    }
    let Ok(mut rows) = store.search_actions(&q("planned")) else { return jobs };
    rows.reverse(); // oldest first
    for r in rows {
        let d: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
        let Ok(spec) = serde_json::from_value::<Action>(d.get("spec").cloned().unwrap_or_default()) else { continue };
        let (Some(id), Some(target)) = (r.id, r.target.clone()) else { continue };
        match jobs.iter_mut().find(|j| j.incident == r.incident_id && j.playbook == r.playbook && j.target == target) {
            Some(j) => j.steps.push((id, spec)),
            None => jobs.push(Job {
                incident: r.incident_id,
                playbook: r.playbook.clone(),
                target,
                steps: vec![(id, spec)],
                // unknown: the safe side
                dry_run: d.get("dry_run").and_then(|b| b.as_bool()).unwrap_or(true),
                min_healthy_replicas: d.get("min_healthy_replicas").and_then(|m| m.as_u64()).unwrap_or(1) as u32,
                reason: d.get("reason").and_then(|m| m.as_str()).unwrap_or_default().to_owned(),
                notification: d.get("notification").and_then(|m| m.as_str()).map(str::to_owned),
                since: Instant::now(),
                approved_by: d.get("approved_by").and_then(|m| m.as_str()).map(str::to_owned),
                requested_by: d.get("requested_by").and_then(|m| m.as_str()).map(str::to_owned),
            }),
        }
    }
    if !jobs.is_empty() {
        tracing::info!(jobs = jobs.len(), "resuming planned actions from the last run");
    }
    jobs
}

/// Writes an action row through the writer thread.
fn save(ctx: &Ctx, row: ActionRow) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task: crate::writer::StoreTask = Box::new(move |s: &mut dyn Store| {
        let r = s.commit(&Batch { actions: std::slice::from_ref(&row), ..Default::default() });
        let _ = tx.send(r.map(drop).map_err(|e| e.to_string()));
    });
    ctx.writes.send(Write::Run(task)).map_err(|_| "the writer stopped".to_owned())?;
    rx.recv().map_err(|_| "the writer stopped".to_owned())?
}

async fn save_async(ctx: &Arc<Ctx>, row: ActionRow) {
    let c = ctx.clone();
    let id = row.id;
    match tokio::task::spawn_blocking(move || save(&c, row)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(action = id, error = %e, "cannot record an action's state"),
        Err(e) => tracing::error!(action = id, error = %e, "cannot record an action's state"),
    }
}

async fn cluster(ctx: &Ctx) -> Result<Connected, String> {
    let mut c = ctx.cluster.lock().await;
    if let Some(k) = c.as_ref() {
        return Ok(k.clone());
    }
    let connect = ctx.connect.as_ref().ok_or("no cluster configured (kustody serve --kubeconfig/--context)")?;
    let k = connect().await?;
    *c = Some(k.clone());
    Ok(k)
}

async fn run_job(ctx: &Arc<Ctx>, job: Job) {
    let Some((ns, pod)) = job.target.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())) else { return };
    let mut failed: Option<String> = None;
    for (id, spec) in &job.steps {
        let base = ActionRow {
            id: Some(*id),
            incident_id: job.incident,
            playbook: job.playbook.clone(),
            action: spec.name().to_owned(),
            target: Some(job.target.clone()),
            state: "running".into(),
            created_ns: now_ns(),
            updated_ns: now_ns(),
            detail: detail(spec, json!({})),
        };
        if let Some(why) = &failed {
            let d = json!({ "spec": spec, "error": format!("not run: {why}") });
            save_async(ctx, ActionRow { state: "skipped".into(), detail: d.to_string(), ..base }).await;
            continue;
        }
        save_async(ctx, base.clone()).await;
        let t0 = Instant::now();
        let (state, outcome) = match act(ctx, &job, spec, &ns, &pod).await {
            Ok((state, out)) => (state, out),
            Err(e) => {
                failed = Some(format!("{} failed", spec.name()));
                ("failed", json!({ "error": e }))
            }
        };
        let mut d = json!({ "spec": spec, "reason": job.reason, "ms": t0.elapsed().as_secs_f64() * 1000.0 });
        if let Some(who) = &job.approved_by {
            put(&mut d, "approved_by", json!(who));
        }
        if let Some(who) = &job.requested_by {
            put(&mut d, "requested_by", json!(who));
        }
        if let (Some(o), serde_json::Value::Object(extra)) = (d.as_object_mut(), outcome) {
            o.extend(extra);
        }
        if spec.name() == "quarantine" && state == "applied" {
            ctx.metrics.quarantine_seconds.observe(job.since.elapsed().as_secs_f64());
        }
        ctx.metrics.count_action(state);
        let entry = json!({
            "time": kustody_model::time::format_rfc3339_nanos(now_ns()),
            "action": format!("playbook:{}", spec.name()),
            "outcome": state,
            "playbook": job.playbook,
            "incident": job.incident,
            "target": { "namespace": ns, "pod": pod },
            "detail": d,
        });
        if !matches!(spec, Action::Quarantine(_) | Action::Release(_)) || state != "applied" {
            // quarantine and release write their own entries when they act
            if let Err(e) = kustody_contain::actionlog::append(&ctx.data_dir.join("actions.jsonl"), &entry) {
                tracing::error!(error = %e, "cannot write the action log");
            }
        }
        tracing::info!(playbook = %job.playbook, action = spec.name(), target = %job.target, state, "playbook action");
        save_async(ctx, ActionRow { state: state.into(), updated_ns: now_ns(), detail: d.to_string(), ..base }).await;
    }
}

/// Runs one action; `(state, outcome fields)`.
async fn act(
    ctx: &Arc<Ctx>,
    job: &Job,
    spec: &Action,
    ns: &str,
    pod: &str,
) -> Result<(&'static str, serde_json::Value), String> {
    let dry = job.dry_run;
    if let Action::Notify(n) = spec {
        return notify(ctx, job, &n.sink, dry).await;
    }
    let k = cluster(ctx).await?;
    match spec {
        Action::Collect(c) => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            let out = ctx
                .data_dir
                .join("evidence")
                .join(format!("incident-{}-{ns}-{pod}-{stamp}", job.incident.unwrap_or_default()));
            if dry {
                return Ok(("dry-run", json!({ "would": "collect", "bundle": out })));
            }
            std::fs::create_dir_all(out.parent().unwrap_or(&ctx.data_dir)).map_err(|e| e.to_string())?;
            let profile = match c.profile.as_deref() {
                None | Some("triage") => kustody_collect::acquire::Profile::Triage,
                Some("full") => kustody_collect::acquire::Profile::Full,
                Some(other) => return Err(format!("unknown collect profile `{other}` (triage, full)")),
            };
            let req = kustody_collect::acquire::Request {
                targets: kustody_collect::acquire::Targets::Pod { namespace: ns.into(), name: pod.into() },
                output: out.clone(),
                options: kustody_collect::acquire::Options {
                    profile,
                    paths: c.paths.clone(),
                    container: c.container.clone(),
                    ..Default::default()
                },
                parallel: 1,
                case: job.incident.map(|i| format!("incident-{i}")),
                command: match &job.requested_by {
                    Some(who) => vec!["kustody serve".into(), format!("requested by {who}")],
                    None => vec!["kustody serve".into(), format!("playbook {}", job.playbook)],
                },
                cluster: json!({ "server": k.server, "context": k.context }),
            };
            let b = kustody_collect::acquire::acquire(&k.client, &req, |_| {}).await.map_err(|e| e.to_string())?;
            Ok((
                "applied",
                json!({
                    "bundle": b.path,
                    "manifest_sha256": b.manifest_sha256,
                    "artifacts": b.artifacts.len(),
                    "failures": b.failures.len(),
                    "complete": b.complete(),
                }),
            ))
        }
        Action::Quarantine(q) => {
            if !dry {
                if let Some(why) = unhealthy(&k.client, ns, pod, job.min_healthy_replicas).await? {
                    return Ok(("skipped", json!({ "guardrail": why })));
                }
            }
            let opts = kustody_contain::plan::Options {
                reason: Some(job.reason.clone()),
                honeypot: q
                    .honeypot
                    .as_deref()
                    .map(kustody_contain::plan::Honeypot::parse)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                allow_dns: q.allow_dns,
                cordon: q.cordon,
                force: false,
            };
            let run = kustody_contain::RunOptions { dry_run: dry, confirm: false, wait: Duration::from_secs(30) };
            let rc = kustody_contain::RunContext {
                server: k.server.clone(),
                context: k.context.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                requested_by: job.requested_by.clone().or_else(|| job.approved_by.clone()),
            };
            let log = kustody_contain::actionlog::ActionLog::new(ctx.data_dir.join("actions.jsonl"));
            let target = kustody_contain::Target { namespace: ns.into(), pod: pod.into() };
            let o = kustody_contain::quarantine(&k.client, &target, &opts, &run, &rc, &log, &mut ())
                .await
                .map_err(|e| e.to_string())?;
            let state = match o.status {
                kustody_contain::QuarantineStatus::DryRun => "dry-run",
                kustody_contain::QuarantineStatus::Verified | kustody_contain::QuarantineStatus::Noop => "applied",
                kustody_contain::QuarantineStatus::Unverified => "applied",
                kustody_contain::QuarantineStatus::Declined => "skipped",
            };
            Ok((
                state,
                json!({ "status": o.status, "requests": o.plan.requests, "checks": o.checks, "warnings": o.plan.warnings, "total_ms": o.total_ms }),
            ))
        }
        Action::Release(r) => {
            let opts = kustody_contain::plan::ReleaseOptions {
                restore_labels: r.restore_labels,
                uncordon: r.uncordon,
                reason: Some(job.reason.clone()),
            };
            let run = kustody_contain::RunOptions { dry_run: dry, confirm: false, wait: Duration::from_secs(30) };
            let rc = kustody_contain::RunContext {
                server: k.server.clone(),
                context: k.context.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                requested_by: job.requested_by.clone().or_else(|| job.approved_by.clone()),
            };
            let log = kustody_contain::actionlog::ActionLog::new(ctx.data_dir.join("actions.jsonl"));
            let target = kustody_contain::Target { namespace: ns.into(), pod: pod.into() };
            let o = kustody_contain::release(&k.client, &target, &opts, &run, &rc, &log, &mut ())
                .await
                .map_err(|e| e.to_string())?;
            let state = if dry { "dry-run" } else { "applied" };
            Ok((state, json!({ "status": o.status, "requests": o.plan.requests, "checks": o.checks })))
        }
        Action::Label(kv) | Action::Annotate(kv) => {
            let field = if matches!(spec, Action::Label(_)) { "labels" } else { "annotations" };
            let severity = job
                .notification
                .as_deref()
                .and_then(|n| serde_json::from_str::<serde_json::Value>(n).ok())
                .and_then(|n| n.get("severity").and_then(|s| s.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let value = kv
                .value
                .replace("{{incident_id}}", &job.incident.map(|i| i.to_string()).unwrap_or_default())
                .replace("{{playbook}}", &job.playbook)
                .replace("{{severity}}", &severity);
            let patch = json!({ "metadata": { field: { &kv.key: value } } });
            let pp = PatchParams { dry_run: dry, field_manager: Some("kustody".into()), ..Default::default() };
            let pods: Api<Pod> = Api::namespaced(k.client.clone(), ns);
            pods.patch(pod, &pp, &Patch::Merge(&patch)).await.map_err(|e| e.to_string())?;
            Ok((if dry { "dry-run" } else { "applied" }, json!({ "patch": patch })))
        }
        Action::Notify(_) => Err("unreachable".into()),
    }
}

/// A `notify` action: the incident's notification committed to the sink's outbox.
async fn notify(ctx: &Arc<Ctx>, job: &Job, sink: &str, dry: bool) -> Result<(&'static str, serde_json::Value), String> {
    let Some(payload) = job.notification.clone() else { return Err("no notification to send".into()) };
    let Some(incident) = job.incident else { return Err("no incident".into()) };
    if !ctx.wake.contains_key(sink) {
        return Err(format!("no sink named `{sink}` (--sinks)"));
    }
    if dry {
        return Ok(("dry-run", json!({ "would": "notify", "sink": sink })));
    }
    let row = OutboxWrite {
        sink: sink.to_owned(),
        incident: Ref::Id(incident),
        action: "update".into(),
        payload,
        created_ns: now_ns(),
    };
    let c = ctx.clone();
    let r = tokio::task::spawn_blocking(move || {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task: crate::writer::StoreTask = Box::new(move |s: &mut dyn Store| {
            let r = s.commit(&Batch { outbox: std::slice::from_ref(&row), ..Default::default() });
            let _ = tx.send(r.map(|ids| ids.outbox).map_err(|e| e.to_string()));
        });
        c.writes.send(Write::Run(task)).map_err(|_| "the writer stopped".to_owned())?;
        rx.recv().map_err(|_| "the writer stopped".to_owned())?
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Some(w) = ctx.wake.get(sink) {
        let _ = w.try_send(());
    }
    ctx.metrics.notifications_queued.fetch_add(1, Relaxed);
    Ok(("applied", json!({ "sink": sink, "outbox": r })))
}

/// Why quarantining the pod would leave its workload below `min` other ready pods, if it would.
async fn unhealthy(client: &kube::Client, ns: &str, pod: &str, min: u32) -> Result<Option<String>, String> {
    if min == 0 {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = pods.get(pod).await.map_err(|e| e.to_string())?;
    let Some(owner) = p.metadata.owner_references.as_ref().and_then(|o| o.iter().find(|r| r.controller == Some(true)))
    else {
        return Ok(None); // a bare pod: no workload to keep healthy
    };
    let ready_self = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let ready: i64 = match owner.kind.as_str() {
        "ReplicaSet" => {
            let a: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), ns);
            a.get(&owner.name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                .into()
        }
        "StatefulSet" => {
            let a: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), ns);
            a.get(&owner.name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                .into()
        }
        "DaemonSet" => {
            let a: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client.clone(), ns);
            a.get(&owner.name).await.map_err(|e| e.to_string())?.status.map(|s| s.number_ready).unwrap_or(0).into()
        }
        _ => return Ok(None),
    };
    let others = ready - i64::from(ready_self);
    if others < i64::from(min) {
        return Ok(Some(format!(
            "{} {} has {others} other ready pod(s); min_healthy_replicas is {min}: not quarantined",
            owner.kind, owner.name
        )));
    }
    Ok(None)
}
