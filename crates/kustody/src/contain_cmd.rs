//! `kustody quarantine` and `kustody release`: plan (kustody-contain, no I/O), permission check,
//! apply in safe order, verify, and an action-log entry for every step.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kustody_cluster::{Cluster, ClusterError};
use kustody_contain::apply::{self, CheckStatus};
use kustody_contain::plan::{self, Actor, Honeypot, Options, Request, Step};
use serde_json::{json, Value};

use crate::cli::{QuarantineArgs, ReleaseArgs};
use crate::cluster_cmd::{connect, pod_name, runtime};
use crate::render::sanitize;

const CNI_WARNING: &str =
    "note: NetworkPolicy is enforced by the CNI plugin: connections established before the policy \
    may survive on some (Calico, Cilium and Antrea keep them), traffic from the pod's own node is always allowed, \
    and a cluster without a NetworkPolicy-capable CNI enforces nothing.";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The common part of every action-log entry.
fn entry(action: &str, outcome: &str, actor: &Actor, cluster: &Cluster, ns: &str, pod: &str) -> Value {
    json!({
        "time": now(),
        "action": action,
        "outcome": outcome,
        "actor": actor,
        "kustody": env!("CARGO_PKG_VERSION"),
        "cluster": {"server": cluster.server, "context": cluster.context},
        "target": {"namespace": ns, "pod": pod},
    })
}

struct Log {
    path: std::path::PathBuf,
}

impl Log {
    fn new(flag: Option<&std::path::Path>) -> Log {
        Log { path: flag.map(std::path::Path::to_path_buf).unwrap_or_else(kustody_contain::actionlog::default_path) }
    }
    fn write(&self, e: &Value) -> Result<()> {
        kustody_contain::actionlog::append(&self.path, e)
            .with_context(|| format!("cannot append to the action log `{}`", self.path.display()))
    }
}

fn print_requests(out: &mut impl Write, requests: &[Request]) -> Result<()> {
    for (i, r) in requests.iter().enumerate() {
        writeln!(out, "{:>2}. {} {}", i + 1, r.method, sanitize(&r.path))?;
        writeln!(out, "    # {}", sanitize(&r.purpose))?;
        if let Some(ct) = &r.content_type {
            writeln!(out, "    Content-Type: {ct}")?;
        }
        if let Some(b) = &r.body {
            for line in serde_json::to_string_pretty(b)?.lines() {
                writeln!(out, "    {}", sanitize(line))?;
            }
        }
    }
    Ok(())
}

fn confirm(prompt: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("--plan asks for confirmation and needs a terminal; use --dry-run to only print the plan");
    }
    eprint!("{prompt} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

fn options(args: &QuarantineArgs) -> Result<Options> {
    Ok(Options {
        reason: args.reason.clone(),
        honeypot: args.honeypot.as_deref().map(Honeypot::parse).transpose().map_err(anyhow::Error::msg)?,
        allow_dns: args.allow_dns,
        cordon: args.cordon,
        force: args.force,
    })
}

fn missing_message(missing: &[plan::Access], actor: &Actor) -> String {
    let lines: Vec<String> = missing.iter().map(|a| format!("  - {a}")).collect();
    format!(
        "missing permissions: User \"{}\" may not\n{}\nnothing was changed. The ClusterRole kustody-responder (deploy/rbac/) grants them.",
        actor.username,
        lines.join("\n")
    )
}

pub fn quarantine(args: QuarantineArgs) -> Result<ExitCode> {
    if args.list {
        return list(args);
    }
    let pod = pod_name(args.target.as_deref().unwrap_or_default())?;
    let opts = options(&args)?;
    let log = Log::new(args.action_log.as_deref());
    runtime()?.block_on(async move {
        let started = Instant::now();
        let cluster = connect(&args.cluster).await?;
        let client = &cluster.client;
        let ns = cluster.namespace.clone();
        let (actor, snap) =
            tokio::try_join!(kustody_cluster::identity::whoami(client), apply::snapshot(client, &ns, &pod, &opts))?;
        let mut p = plan::quarantine(&snap, &opts, &actor, &now());
        let mut err = std::io::stderr().lock();
        let base = |outcome: &str| entry("quarantine", outcome, &actor, &cluster, &ns, &pod);
        let mut e = base("refused");
        e["reason"] = json!(opts.reason);
        e["options"] = json!({"honeypot": opts.honeypot.as_ref().map(Honeypot::spec), "allowDns": opts.allow_dns,
            "cordon": opts.cordon, "force": opts.force, "dryRun": args.dry_run});
        e["target"]["uid"] = json!(snap.pod.metadata.uid);
        e["target"]["node"] = json!(snap.pod.spec.as_ref().and_then(|s| s.node_name.clone()));
        if !p.errors.is_empty() {
            e["outcome"] = json!("failed");
            e["error"] = json!(p.errors);
            log.write(&e)?;
            anyhow::bail!("cannot quarantine pod/{pod}: {}", p.errors.join("; "));
        }
        if !p.refusals.is_empty() {
            if !opts.force {
                e["refusals"] = json!(p.refusals);
                log.write(&e)?;
                let why: Vec<String> = p.refusals.iter().map(|r| format!("  - {r}")).collect();
                anyhow::bail!(
                    "refusing to quarantine pod/{pod} in {ns}:\n{}\nnothing was changed; --force quarantines it anyway",
                    why.join("\n")
                );
            }
            for r in &p.refusals {
                p.warnings.push(format!("--force: quarantining although {r}"));
            }
        }
        for w in &p.warnings {
            writeln!(err, "kustody: warning: {}", sanitize(w))?;
        }
        e["warnings"] = json!(p.warnings);
        e["planned"] = json!(p.requests);
        if args.dry_run || args.plan {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# quarantine pod/{pod} in {ns} as {} on {}",
                sanitize(&actor.username),
                sanitize(&cluster.server)
            )?;
            if p.is_noop() {
                writeln!(out, "# already quarantined; no request needed")?;
            } else {
                writeln!(out, "# {} request(s), sent in this order (a failure stops the rest):", p.requests.len())?;
            }
            print_requests(&mut out, &p.requests)?;
            out.flush()?;
            if args.dry_run {
                e["outcome"] = json!("dry-run");
                log.write(&e)?;
                return Ok(ExitCode::SUCCESS);
            }
            if !p.is_noop() && !confirm(&format!("apply these {} requests?", p.requests.len()))? {
                e["outcome"] = json!("declined");
                log.write(&e)?;
                writeln!(err, "kustody: nothing was changed")?;
                return Ok(ExitCode::from(2));
            }
        }
        let t_apply = Instant::now();
        let mut sent_all = Vec::new();
        if p.is_noop() {
            let r = p.existing.clone().unwrap_or_default();
            writeln!(
                err,
                "kustody: pod/{pod} in {ns} is already quarantined (since {} by {}{}); nothing to change",
                sanitize(&r.at),
                sanitize(&r.by),
                r.reason.as_deref().map(|x| format!(": {}", sanitize(x))).unwrap_or_default()
            )?;
        } else {
            let missing = apply::missing_permissions(client, &p.requests).await?;
            if !missing.is_empty() {
                e["outcome"] = json!("failed");
                e["missing"] = json!(missing.iter().map(ToString::to_string).collect::<Vec<_>>());
                log.write(&e)?;
                anyhow::bail!("{}", missing_message(&missing, &actor));
            }
            let mut applying = base("applying");
            applying["requests"] = json!(p.requests);
            applying["reason"] = json!(opts.reason);
            log.write(&applying)?;
            let mut attempt = 0;
            loop {
                let (sent, failure) = apply::send_all(client, &p.requests).await;
                sent_all.extend(sent);
                match failure {
                    None => break,
                    // the pod changed between reading and patching (its controller, say): re-read and re-plan once
                    Some((i, ClusterError::Api(m)))
                        if attempt == 0
                            && m.starts_with("409")
                            && p.requests.get(i).is_some_and(|r| r.step == Step::Pod) =>
                    {
                        attempt += 1;
                        let snap = apply::snapshot(client, &ns, &pod, &opts).await?;
                        p = plan::quarantine(&snap, &opts, &actor, &now());
                    }
                    Some((i, error)) => {
                        let step = p.requests.get(i).map(|r| r.step).unwrap_or_default();
                        // what changed counts every attempt: after a re-plan the policy may
                        // exist from the first one even though the failing request is first
                        let done: Vec<&str> =
                            sent_all.iter().filter(|s| s.ok).map(|s| s.request.purpose.as_str()).collect();
                        let advice = failure_advice(step, &pod, &ns, &p, &done);
                        e["outcome"] = json!(if done.is_empty() { "failed" } else { "partial" });
                        e["requests"] = json!(sent_all);
                        e["error"] = json!(error.to_string());
                        e["advice"] = json!(advice);
                        log.write(&e)?;
                        anyhow::bail!("{error}\n{advice}");
                    }
                }
            }
        }
        let applied_ms = t_apply.elapsed().as_secs_f64() * 1000.0;
        let t_verify = Instant::now();
        let checks = apply::verify(client, &p, &opts, Duration::from_secs(args.wait)).await?;
        let verify_ms = t_verify.elapsed().as_secs_f64() * 1000.0;
        let ok = checks.iter().all(|c| c.status != CheckStatus::Failed);
        let mut out = std::io::stdout().lock();
        if !p.is_noop() {
            writeln!(out, "quarantined pod/{pod} in {ns} ({} request(s)):", sent_all.len())?;
            for s in &sent_all {
                writeln!(out, "  ✓ {}", sanitize(&s.request.purpose))?;
            }
        }
        writeln!(out, "verified by reading back:")?;
        for c in &checks {
            let mark = match c.status {
                CheckStatus::Ok => "✓",
                CheckStatus::Caveat => "!",
                CheckStatus::Failed => "✗",
            };
            writeln!(out, "  {mark} {:<12} {}", c.name, sanitize(&c.detail))?;
        }
        writeln!(
            out,
            "{} in {:.0} ms (apply {:.0} ms, verify {:.0} ms)",
            if ok { "done" } else { "NOT fully verified" },
            started.elapsed().as_secs_f64() * 1000.0,
            applied_ms,
            verify_ms
        )?;
        writeln!(err, "kustody: {CNI_WARNING}")?;
        e["outcome"] = json!(if p.is_noop() {
            "noop"
        } else if ok {
            "verified"
        } else {
            "unverified"
        });
        e["requests"] = json!(sent_all);
        e["checks"] = json!(checks);
        e["record"] = json!(p.record);
        e["durationMs"] = json!(started.elapsed().as_secs_f64() * 1000.0);
        log.write(&e)?;
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

/// What a failure at step `step` means for the pod, and what to run next.
fn failure_advice(step: Step, pod: &str, ns: &str, p: &plan::Plan, done: &[&str]) -> String {
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

fn list(args: QuarantineArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let cluster = connect(&args.cluster).await?;
        let ns = if args.all_namespaces { None } else { Some(cluster.namespace.as_str()) };
        let pods = apply::list_quarantined(&cluster.client, ns).await?;
        let mut out = std::io::stdout().lock();
        let rows: Vec<Value> = pods
            .iter()
            .map(|p| {
                let r = plan::existing_record(p).and_then(Result::ok);
                let mode = r.as_ref().map_or("deny-all".to_owned(), |r| {
                    let mut m = "deny-all".to_owned();
                    if r.allow_dns {
                        m.push_str("+dns");
                    }
                    if let Some(h) = &r.honeypot {
                        m.push_str(&format!("+honeypot {h}"));
                    }
                    m
                });
                json!({"namespace": p.metadata.namespace, "pod": p.metadata.name,
                    "since": r.as_ref().map(|r| r.at.clone()), "by": r.as_ref().map(|r| r.by.clone()),
                    "reason": r.as_ref().and_then(|r| r.reason.clone()),
                    "node": p.spec.as_ref().and_then(|s| s.node_name.clone()), "mode": mode, "record": r})
            })
            .collect();
        match args.format {
            crate::cli::ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
            crate::cli::ListFormat::Table => {
                if rows.is_empty() {
                    writeln!(out, "no quarantined pods{}", ns.map(|n| format!(" in {n}")).unwrap_or_default())?;
                } else {
                    writeln!(
                        out,
                        "{:<16} {:<28} {:<25} {:<20} {:<14} {:<18} REASON",
                        "NAMESPACE", "POD", "SINCE", "BY", "NODE", "MODE"
                    )?;
                    let s = |v: &Value| sanitize(v.as_str().unwrap_or("-"));
                    for r in &rows {
                        writeln!(
                            out,
                            "{:<16} {:<28} {:<25} {:<20} {:<14} {:<18} {}",
                            s(&r["namespace"]),
                            s(&r["pod"]),
                            s(&r["since"]),
                            s(&r["by"]),
                            s(&r["node"]),
                            s(&r["mode"]),
                            s(&r["reason"])
                        )?;
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let pod = pod_name(&args.target)?;
    let log = Log::new(args.action_log.as_deref());
    runtime()?.block_on(async move {
        let started = Instant::now();
        let cluster = connect(&args.cluster).await?;
        let client = &cluster.client;
        let ns = cluster.namespace.clone();
        let (actor, snap) =
            tokio::try_join!(kustody_cluster::identity::whoami(client), apply::release_snapshot(client, &ns, &pod))?;
        let opts = plan::ReleaseOptions {
            restore_labels: args.restore_labels,
            uncordon: args.uncordon,
            reason: args.reason.clone(),
        };
        let p = plan::release(&snap, &opts, &actor, &now());
        let mut err = std::io::stderr().lock();
        let mut e = entry("release", "noop", &actor, &cluster, &ns, &pod);
        e["reason"] = json!(opts.reason);
        e["options"] = json!({"restoreLabels": opts.restore_labels, "uncordon": opts.uncordon, "dryRun": args.dry_run});
        if p.requests.is_empty() {
            log.write(&e)?;
            writeln!(err, "kustody: pod/{pod} in {ns} is not quarantined; nothing to release")?;
            return Ok(ExitCode::from(1));
        }
        for w in &p.warnings {
            writeln!(err, "kustody: warning: {}", sanitize(w))?;
        }
        e["warnings"] = json!(p.warnings);
        e["planned"] = json!(p.requests);
        e["record"] = json!(p.record);
        if args.dry_run {
            let mut out = std::io::stdout().lock();
            writeln!(out, "# release pod/{pod} in {ns} as {}", sanitize(&actor.username))?;
            print_requests(&mut out, &p.requests)?;
            e["outcome"] = json!("dry-run");
            log.write(&e)?;
            return Ok(ExitCode::SUCCESS);
        }
        let missing = apply::missing_permissions(client, &p.requests).await?;
        if !missing.is_empty() {
            e["outcome"] = json!("failed");
            e["missing"] = json!(missing.iter().map(ToString::to_string).collect::<Vec<_>>());
            log.write(&e)?;
            anyhow::bail!("{}", missing_message(&missing, &actor));
        }
        let (sent, failure) = apply::send_all(client, &p.requests).await;
        e["requests"] = json!(sent);
        if let Some((i, error)) = failure {
            e["outcome"] = json!(if i == 0 { "failed" } else { "partial" });
            e["error"] = json!(error.to_string());
            log.write(&e)?;
            if i == 0 {
                anyhow::bail!("{error}\npod/{pod} was not changed: it is still quarantined");
            }
            anyhow::bail!(
                "{error}\npod/{pod} is released, but cleaning up failed; kustody's leftover policies select only pods \
                 labelled {}=true. Run the release again to finish.",
                plan::LABEL
            );
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "released pod/{pod} in {ns} ({} request(s)):", sent.len())?;
        for s in &sent {
            writeln!(out, "  ✓ {}", sanitize(&s.request.purpose))?;
        }
        writeln!(out, "done in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0)?;
        e["outcome"] = json!("applied");
        e["durationMs"] = json!(started.elapsed().as_secs_f64() * 1000.0);
        log.write(&e)?;
        Ok(ExitCode::SUCCESS)
    })
}
