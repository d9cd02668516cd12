//! The quarantine and release flows behind one call each: read → plan → (refuse) → check
//! permissions → log `applying` → send in the safe order (re-planning once when the pod changed
//! underneath, a 409) → verify by reading back → log the outcome. Progress is reported through
//! [`Progress`], so the CLI renders it and a server can run the same flows.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing on objects built here with json!({..}): writes never panic"
)]

use std::time::{Duration, Instant};

use kustody_cluster::identity::{whoami, Actor};
use kustody_cluster::ClusterError;
use serde_json::{json, Value};

use crate::actionlog::ActionLog;
use crate::apply::{self, Check, CheckStatus, Sent};
use crate::error::ContainError;
use crate::plan::{self, Honeypot, Options, Plan, ReleaseOptions, ReleasePlan, Request, Step};

/// The closing note of every quarantine: what NetworkPolicy does not cut, and on which plugins.
pub const NETWORK_NOTE: &str = "note: NetworkPolicy is enforced by the CNI plugin, on new connections: connections \
    opened before the quarantine survive until the plugin's conntrack entry for them expires (kube-router, Calico, \
    Cilium and Antrea are known to keep established connections); ICMP echo (ping) still passes on some plugins \
    (kube-router); traffic from the pod's own node is always allowed; and a cluster without a NetworkPolicy-capable \
    CNI enforces nothing.";

/// The pod a flow acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
}

/// Where the run happens and as which program, for the action log.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// The API server URL.
    pub server: String,
    /// The kubeconfig context, if any.
    pub context: Option<String>,
    /// The version of the program running the flow (the `kustody` field of each entry).
    pub version: String,
    /// The person who asked for the action, when it is not the cluster identity itself (a
    /// console user: the `requestedBy` field of each entry).
    pub requested_by: Option<String>,
}

/// How a flow runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Plan and report, send nothing.
    pub dry_run: bool,
    /// Ask [`Progress::confirm`] before the first change.
    pub confirm: bool,
    /// How long verification may poll.
    pub wait: Duration,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions { dry_run: false, confirm: false, wait: Duration::from_secs(30) }
    }
}

/// What a flow reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// The quarantine is planned and not refused (warnings, the requests in order), as `actor`.
    Planned { plan: &'a Plan, actor: &'a Actor },
    /// The pod changed between reading and patching (409): it was read again and re-planned.
    Replanned { plan: &'a Plan, after: &'a ClusterError },
    /// The release is planned (warnings, requests, and what happens to the pod next).
    ReleasePlanned { plan: &'a ReleasePlan, actor: &'a Actor },
    /// A request was sent (and how it went).
    Sent(&'a Sent),
    /// Everything was sent; reading back starts.
    Verifying,
}

/// Receives a flow's events; may be asked to confirm the plan before the first change.
pub trait Progress {
    fn event(&mut self, _event: Event<'_>) {}
    /// Asked once, with the requests, when [`RunOptions::confirm`] is set. `false` declines:
    /// nothing is sent.
    fn confirm(&mut self, _requests: &[Request]) -> bool {
        true
    }
}

/// No progress reporting.
impl Progress for () {}

/// How a quarantine ended (errors are [`ContainError`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineStatus {
    DryRun,
    Declined,
    /// Already quarantined this way: nothing sent, checks run again.
    Noop,
    Verified,
    /// Applied, but a check still failed when the wait ran out.
    Unverified,
}

#[derive(Debug, Clone)]
pub struct QuarantineOutcome {
    pub status: QuarantineStatus,
    pub actor: Actor,
    pub plan: Plan,
    /// Requests sent, over every attempt.
    pub sent: Vec<Sent>,
    pub checks: Vec<Check>,
    pub apply_ms: f64,
    pub verify_ms: f64,
    pub total_ms: f64,
    /// What the responder must still know ([`NETWORK_NOTE`]).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStatus {
    DryRun,
    Declined,
    /// The pod carries no quarantine: nothing to release.
    NotQuarantined,
    Verified,
    Unverified,
}

#[derive(Debug, Clone)]
pub struct ReleaseOutcome {
    pub status: ReleaseStatus,
    pub actor: Actor,
    pub plan: ReleasePlan,
    pub sent: Vec<Sent>,
    pub checks: Vec<Check>,
    pub total_ms: f64,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The common part of every action-log entry (its `time` is stamped when it is written).
fn entry(ctx: &RunContext, action: &str, outcome: &str, actor: &Actor, t: &Target) -> Value {
    let mut e = json!({
        "time": null,
        "action": action,
        "outcome": outcome,
        "actor": actor,
        "kustody": ctx.version,
        "cluster": {"server": ctx.server, "context": ctx.context},
        "target": {"namespace": t.namespace, "pod": t.pod},
    });
    if let Some(who) = &ctx.requested_by {
        e["requestedBy"] = json!(who);
    }
    e
}

/// Quarantine `target`: one call for the whole flow. Every run writes its outcome to `log`; a
/// run that changes something writes an `applying` entry before its first request.
pub async fn quarantine(
    client: &kube::Client,
    target: &Target,
    opts: &Options,
    run: &RunOptions,
    ctx: &RunContext,
    log: &ActionLog,
    progress: &mut (dyn Progress + Send),
) -> Result<QuarantineOutcome, ContainError> {
    let started = Instant::now();
    let (ns, pod) = (target.namespace.as_str(), target.pod.as_str());
    let (actor, snap) = tokio::try_join!(whoami(client), apply::snapshot(client, ns, pod, opts))?;
    let mut p = plan::quarantine(&snap, opts, &actor, &now());
    let mut e = entry(ctx, "quarantine", "refused", &actor, target);
    e["reason"] = json!(opts.reason);
    e["options"] = json!({"honeypot": opts.honeypot.as_ref().map(Honeypot::spec), "allowDns": opts.allow_dns,
        "cordon": opts.cordon, "force": opts.force, "dryRun": run.dry_run});
    e["target"]["uid"] = json!(snap.pod.metadata.uid);
    e["target"]["node"] = json!(snap.pod.spec.as_ref().and_then(|s| s.node_name.clone()));
    admit(&mut p, opts, &mut e, log)?;
    e["warnings"] = json!(p.warnings);
    e["planned"] = json!(p.requests);
    if let Some(c) = &p.mode_change {
        e["modeChange"] = json!(c);
    }
    if let Some(h) = &p.honeypot_ingress {
        e["honeypotIngress"] = json!(h);
    }
    progress.event(Event::Planned { plan: &p, actor: &actor });
    let mut outcome = QuarantineOutcome {
        status: QuarantineStatus::DryRun,
        actor: actor.clone(),
        plan: p.clone(),
        sent: Vec::new(),
        checks: Vec::new(),
        apply_ms: 0.0,
        verify_ms: 0.0,
        total_ms: 0.0,
        notes: vec![NETWORK_NOTE.to_owned()],
    };
    if run.dry_run || (run.confirm && !p.is_noop() && !progress.confirm(&p.requests)) {
        outcome.status = if run.dry_run { QuarantineStatus::DryRun } else { QuarantineStatus::Declined };
        e["outcome"] = json!(if run.dry_run { "dry-run" } else { "declined" });
        log.write(&mut e)?;
        outcome.total_ms = ms(started);
        return Ok(outcome);
    }
    let t_apply = Instant::now();
    if !p.is_noop() {
        let applying = QuarantineRun { client, target, opts, ctx, log, actor: &actor };
        outcome.sent = applying.apply(&mut p, &mut e, progress).await?;
    }
    outcome.apply_ms = ms(t_apply);
    progress.event(Event::Verifying);
    let t_verify = Instant::now();
    outcome.checks = match apply::verify(client, &p, opts, run.wait).await {
        Ok(c) => c,
        Err(error) => return Err(unverifiable(error, &outcome.sent, &mut e, log)),
    };
    outcome.verify_ms = ms(t_verify);
    let ok = outcome.checks.iter().all(|c| c.status != CheckStatus::Failed);
    outcome.status = if p.is_noop() {
        QuarantineStatus::Noop
    } else if ok {
        QuarantineStatus::Verified
    } else {
        QuarantineStatus::Unverified
    };
    e["outcome"] = json!(outcome.status);
    e["requests"] = json!(outcome.sent);
    e["checks"] = json!(outcome.checks);
    e["record"] = json!(p.record);
    outcome.total_ms = ms(started);
    e["durationMs"] = json!(outcome.total_ms);
    log.write(&mut e)?;
    outcome.plan = p;
    Ok(outcome)
}

/// Reading back failed after the requests were sent: the final entry still says what was sent
/// (outcome `unverified`, with the error), then the error goes to the caller.
fn unverifiable(error: ClusterError, sent: &[Sent], e: &mut Value, log: &ActionLog) -> ContainError {
    e["outcome"] = json!("unverified");
    e["requests"] = json!(sent);
    e["error"] = json!(error.to_string());
    e["errorStatus"] = json!(error.status());
    match log.write(e) {
        Ok(()) => ContainError::Cluster(error),
        Err(logged) => logged,
    }
}

/// Stop on what the plan cannot do (even with `--force`) and on refusals without `--force`,
/// logging the refusal; with `--force`, refusals become warnings.
fn admit(p: &mut Plan, opts: &Options, e: &mut Value, log: &ActionLog) -> Result<(), ContainError> {
    if !p.errors.is_empty() {
        e["outcome"] = json!("failed");
        e["error"] = json!(p.errors);
        log.write(e)?;
        return Err(ContainError::Impossible {
            namespace: p.namespace.clone(),
            pod: p.pod.clone(),
            problems: p.errors.clone(),
        });
    }
    if !p.refusals.is_empty() {
        if !opts.force {
            e["refusals"] = json!(p.refusals);
            log.write(e)?;
            return Err(ContainError::Refused {
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                refusals: p.refusals.clone(),
            });
        }
        let forced: Vec<String> = p.refusals.iter().map(|r| format!("--force: quarantining although {r}")).collect();
        p.warnings.extend(forced);
    }
    Ok(())
}

/// Check the permissions of `requests`; when some are missing, log the failure (`e`) and say which.
async fn permitted(
    client: &kube::Client,
    requests: &[Request],
    actor: &Actor,
    e: &mut Value,
    log: &ActionLog,
) -> Result<(), ContainError> {
    let missing = apply::missing_permissions(client, requests).await?;
    if missing.is_empty() {
        return Ok(());
    }
    e["outcome"] = json!("failed");
    e["missing"] = json!(missing.iter().map(ToString::to_string).collect::<Vec<_>>());
    log.write(e)?;
    Err(ContainError::MissingPermissions { user: actor.username.clone(), missing })
}

/// The changing part of a quarantine.
struct QuarantineRun<'a> {
    client: &'a kube::Client,
    target: &'a Target,
    opts: &'a Options,
    ctx: &'a RunContext,
    log: &'a ActionLog,
    actor: &'a Actor,
}

impl QuarantineRun<'_> {
    /// Permissions, the `applying` entry, then the requests in order; a 409 on the pod patch
    /// (the pod changed since it was read, its controller say) re-reads and re-plans once.
    async fn apply(
        &self,
        p: &mut Plan,
        e: &mut Value,
        progress: &mut (dyn Progress + Send),
    ) -> Result<Vec<Sent>, ContainError> {
        permitted(self.client, &p.requests, self.actor, e, self.log).await?;
        let mut applying = entry(self.ctx, "quarantine", "applying", self.actor, self.target);
        applying["requests"] = json!(p.requests);
        applying["reason"] = json!(self.opts.reason);
        if let Some(c) = &p.mode_change {
            applying["modeChange"] = json!(c);
        }
        self.log.write(&mut applying)?;
        let mut sent_all: Vec<Sent> = Vec::new();
        let mut attempt = 0;
        loop {
            let (sent, failure) =
                apply::send_all_with(self.client, &p.requests, &mut |s| progress.event(Event::Sent(s))).await;
            sent_all.extend(sent);
            let Some((i, error)) = failure else { return Ok(sent_all) };
            let step = p.requests.get(i).map(|r| r.step).unwrap_or_default();
            if attempt == 0 && error.is_conflict() && step == Step::Pod {
                attempt += 1;
                let (ns, pod) = (self.target.namespace.as_str(), self.target.pod.as_str());
                let snap = apply::snapshot(self.client, ns, pod, self.opts).await?;
                *p = plan::quarantine(&snap, self.opts, self.actor, &now());
                progress.event(Event::Replanned { plan: p, after: &error });
                continue;
            }
            // what changed counts every attempt: after a re-plan the policy may exist from the
            // first one even though the failing request is first
            let done: Vec<&str> = sent_all.iter().filter(|s| s.ok).map(|s| s.request.purpose.as_str()).collect();
            let advice = failure_advice(step, p, &done);
            e["outcome"] = json!(if done.is_empty() { "failed" } else { "partial" });
            e["requests"] = json!(sent_all);
            e["error"] = json!(error.to_string());
            e["errorStatus"] = json!(error.status());
            e["advice"] = json!(advice);
            self.log.write(e)?;
            return Err(ContainError::Apply { error, step, changed: !done.is_empty(), advice });
        }
    }
}

/// What a failure at step `step` means for the pod, and what to run next.
fn failure_advice(step: Step, p: &Plan, done: &[&str]) -> String {
    let (pod, ns) = (&p.pod, &p.namespace);
    let done = if done.is_empty() { "nothing".to_owned() } else { done.join("; ") };
    match step {
        Step::Policy | Step::Exclusion => format!(
            "the pod was NOT changed and is NOT isolated. Done before the failure: {done}. kustody's policies select only \
             pods labelled {}=true, so they change nothing else. Fix the cause and run the same command again.",
            plan::LABEL
        ),
        Step::Pod => format!(
            "the quarantine NetworkPolicies are in place but pod/{pod} was NOT relabelled, so it is NOT isolated and still \
             serves traffic. Fix the cause and run again: kustody quarantine pod/{pod} -n {ns}"
        ),
        Step::Node => {
            let node = p.record.node.clone().unwrap_or_default();
            format!("pod/{pod} IS quarantined, but node {node} was not cordoned: run `kubectl cordon {node}`")
        }
        Step::Cleanup => format!("done before the failure: {done}"),
    }
}

/// Release `target`: one call for the whole flow, verified by reading back what the plan said
/// happens next (the pod stays unowned and running, or its controller adopts it).
pub async fn release(
    client: &kube::Client,
    target: &Target,
    opts: &ReleaseOptions,
    run: &RunOptions,
    ctx: &RunContext,
    log: &ActionLog,
    progress: &mut (dyn Progress + Send),
) -> Result<ReleaseOutcome, ContainError> {
    let started = Instant::now();
    let (ns, pod) = (target.namespace.as_str(), target.pod.as_str());
    let (actor, snap) = tokio::try_join!(whoami(client), apply::release_snapshot(client, ns, pod))?;
    let p = plan::release(&snap, opts, &actor, &now());
    let mut e = entry(ctx, "release", "noop", &actor, target);
    e["reason"] = json!(opts.reason);
    e["options"] = json!({"restoreLabels": opts.restore_labels, "uncordon": opts.uncordon, "dryRun": run.dry_run});
    e["target"]["uid"] = json!(snap.pod.metadata.uid);
    let mut outcome = ReleaseOutcome {
        status: ReleaseStatus::NotQuarantined,
        actor: actor.clone(),
        plan: p.clone(),
        sent: Vec::new(),
        checks: Vec::new(),
        total_ms: 0.0,
    };
    if p.requests.is_empty() {
        log.write(&mut e)?;
        outcome.total_ms = ms(started);
        return Ok(outcome);
    }
    e["warnings"] = json!(p.warnings);
    e["planned"] = json!(p.requests);
    e["record"] = json!(p.record);
    e["next"] = json!({"expect": p.next, "text": p.next.describe(pod)});
    progress.event(Event::ReleasePlanned { plan: &p, actor: &actor });
    if run.dry_run || (run.confirm && !progress.confirm(&p.requests)) {
        outcome.status = if run.dry_run { ReleaseStatus::DryRun } else { ReleaseStatus::Declined };
        e["outcome"] = json!(if run.dry_run { "dry-run" } else { "declined" });
        log.write(&mut e)?;
        outcome.total_ms = ms(started);
        return Ok(outcome);
    }
    permitted(client, &p.requests, &actor, &mut e, log).await?;
    let mut applying = entry(ctx, "release", "applying", &actor, target);
    applying["requests"] = json!(p.requests);
    applying["reason"] = json!(opts.reason);
    log.write(&mut applying)?;
    let (sent, failure) = apply::send_all_with(client, &p.requests, &mut |s| progress.event(Event::Sent(s))).await;
    e["requests"] = json!(sent);
    if let Some((i, error)) = failure {
        let step = p.requests.get(i).map(|r| r.step).unwrap_or_default();
        let advice = if i == 0 {
            format!("pod/{pod} was not changed: it is still quarantined")
        } else {
            format!(
                "pod/{pod} is released, but cleaning up failed; kustody's leftover policies select only pods \
                 labelled {}=true. Run the release again to finish.",
                plan::LABEL
            )
        };
        e["outcome"] = json!(if i == 0 { "failed" } else { "partial" });
        e["error"] = json!(error.to_string());
        e["errorStatus"] = json!(error.status());
        log.write(&mut e)?;
        return Err(ContainError::Apply { error, step, changed: i > 0, advice });
    }
    outcome.sent = sent;
    progress.event(Event::Verifying);
    outcome.checks = match apply::verify_release(client, &p, run.wait).await {
        Ok(c) => c,
        Err(error) => return Err(unverifiable(error, &outcome.sent, &mut e, log)),
    };
    let ok = outcome.checks.iter().all(|c| c.status != CheckStatus::Failed);
    outcome.status = if ok { ReleaseStatus::Verified } else { ReleaseStatus::Unverified };
    e["outcome"] = json!(outcome.status);
    e["checks"] = json!(outcome.checks);
    outcome.total_ms = ms(started);
    e["durationMs"] = json!(outcome.total_ms);
    log.write(&mut e)?;
    Ok(outcome)
}
