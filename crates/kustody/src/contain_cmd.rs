//! `kustody quarantine` and `kustody release`: flags in, rendering out. The flows themselves
//! (plan, permission check, apply in safe order, verify, action log) are
//! `kustody_contain::quarantine` and `kustody_contain::release`.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value indexing: reads never panic (a missing key is Null), writes go to objects built here with json!({..})"
)]

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kustody_cluster::Cluster;
use kustody_contain::actionlog::ActionLog;
use kustody_contain::apply::{self, Check, CheckStatus};
use kustody_contain::flow::{Event, Progress};
use kustody_contain::plan::{self, Honeypot, Options, Request};
use kustody_contain::{QuarantineStatus, ReleaseStatus, RunContext, RunOptions, Target};
use serde_json::{json, Value};

use crate::cli::{QuarantineArgs, ReleaseArgs};
use crate::cluster_cmd::{connect, pod_name, runtime};
use crate::render::sanitize;

fn action_log(flag: Option<&std::path::Path>) -> ActionLog {
    ActionLog::new(flag.map(std::path::Path::to_path_buf).unwrap_or_else(kustody_contain::actionlog::default_path))
}

fn run_context(cluster: &Cluster) -> RunContext {
    RunContext {
        server: cluster.server.clone(),
        context: cluster.context.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        requested_by: None,
    }
}

fn print_requests(out: &mut impl Write, requests: &[Request]) -> std::io::Result<()> {
    for (i, r) in requests.iter().enumerate() {
        writeln!(out, "{:>2}. {} {}", i + 1, r.method, sanitize(&r.path))?;
        writeln!(out, "    # {}", sanitize(&r.purpose))?;
        if let Some(ct) = &r.content_type {
            writeln!(out, "    Content-Type: {ct}")?;
        }
        if let Some(b) = &r.body {
            let text = serde_json::to_string_pretty(b).unwrap_or_default();
            for line in text.lines() {
                writeln!(out, "    {}", sanitize(line))?;
            }
        }
    }
    Ok(())
}

fn print_checks(out: &mut impl Write, checks: &[Check]) -> std::io::Result<()> {
    for c in checks {
        let mark = match c.status {
            CheckStatus::Ok => "✓",
            CheckStatus::Caveat => "!",
            CheckStatus::Failed => "✗",
        };
        writeln!(out, "  {mark} {:<12} {}", c.name, sanitize(&c.detail))?;
    }
    Ok(())
}

fn options(args: &QuarantineArgs) -> Result<Options> {
    Ok(Options {
        reason: args.reason.clone(),
        honeypot: args.honeypot.as_deref().map(Honeypot::parse).transpose()?,
        allow_dns: args.allow_dns,
        cordon: args.cordon,
        force: args.force,
    })
}

/// Renders a flow's progress: warnings and notes on stderr, the plan on stdout when asked for
/// (`--dry-run`, `--plan`), the confirmation on the terminal. Write errors to the terminal are
/// not the flow's concern and are ignored here.
struct Render<'a> {
    show_plan: bool,
    header: String,
    server: &'a str,
}

impl Progress for Render<'_> {
    fn event(&mut self, event: Event<'_>) {
        let mut err = std::io::stderr().lock();
        match event {
            Event::Planned { plan: p, actor } => {
                for w in &p.warnings {
                    let _ = writeln!(err, "kustody: warning: {}", sanitize(w));
                }
                if let Some(h) = &p.honeypot_ingress {
                    let _ = writeln!(err, "kustody: honeypot: {}", sanitize(h));
                }
                if self.show_plan {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(
                        out,
                        "# quarantine {} as {} on {}",
                        self.header,
                        sanitize(&actor.username),
                        sanitize(self.server)
                    );
                    let _ = if p.is_noop() {
                        writeln!(out, "# already quarantined; no request needed")
                    } else {
                        writeln!(
                            out,
                            "# {} request(s), sent in this order (a failure stops the rest):",
                            p.requests.len()
                        )
                    };
                    let _ = print_requests(&mut out, &p.requests);
                    let _ = out.flush();
                }
            }
            Event::ReleasePlanned { plan: p, actor } => {
                for w in &p.warnings {
                    let _ = writeln!(err, "kustody: warning: {}", sanitize(w));
                }
                let _ = writeln!(err, "kustody: next: {}", sanitize(&p.next.describe(&p.pod)));
                if self.show_plan {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "# release {} as {}", self.header, sanitize(&actor.username));
                    let _ = print_requests(&mut out, &p.requests);
                }
            }
            Event::Replanned { after, .. } => {
                let _ = writeln!(
                    err,
                    "kustody: the pod changed while it was being quarantined ({}); read again and re-planned",
                    sanitize(&after.to_string())
                );
            }
            Event::Sent(_) | Event::Verifying => {}
        }
    }

    fn confirm(&mut self, requests: &[Request]) -> bool {
        eprint!("apply these {} requests? [y/N] ", requests.len());
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim(), "y" | "Y" | "yes" | "YES")
    }
}

pub fn quarantine(args: QuarantineArgs) -> Result<ExitCode> {
    if args.list {
        return list(args);
    }
    let pod = pod_name(args.target.as_deref().unwrap_or_default())?;
    let opts = options(&args)?;
    if args.plan && !std::io::stdin().is_terminal() {
        anyhow::bail!("--plan asks for confirmation and needs a terminal; use --dry-run to only print the plan");
    }
    let log = action_log(args.action_log.as_deref());
    runtime()?.block_on(async move {
        let cluster = connect(&args.cluster).await?;
        let target = Target { namespace: cluster.namespace.clone(), pod: pod.clone() };
        let run = RunOptions { dry_run: args.dry_run, confirm: args.plan, wait: Duration::from_secs(args.wait) };
        let mut render = Render {
            show_plan: args.dry_run || args.plan,
            header: format!("pod/{pod} in {}", target.namespace),
            server: &cluster.server,
        };
        let o = kustody_contain::quarantine(
            &cluster.client,
            &target,
            &opts,
            &run,
            &run_context(&cluster),
            &log,
            &mut render,
        )
        .await?;
        let ns = &target.namespace;
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        match o.status {
            QuarantineStatus::DryRun => return Ok(ExitCode::SUCCESS),
            QuarantineStatus::Declined => {
                writeln!(err, "kustody: nothing was changed")?;
                return Ok(ExitCode::from(2));
            }
            QuarantineStatus::Noop => {
                let r = o.plan.existing.clone().unwrap_or_default();
                writeln!(
                    err,
                    "kustody: pod/{pod} in {ns} is already quarantined (since {} by {}{}); nothing to change",
                    sanitize(&r.at),
                    sanitize(&r.by),
                    r.reason.as_deref().map(|x| format!(": {}", sanitize(x))).unwrap_or_default()
                )?;
            }
            QuarantineStatus::Verified | QuarantineStatus::Unverified => {
                writeln!(out, "quarantined pod/{pod} in {ns} ({} request(s)):", o.sent.len())?;
                for s in &o.sent {
                    writeln!(out, "  {} {}", if s.ok { "✓" } else { "✗" }, sanitize(&s.request.purpose))?;
                }
            }
        }
        writeln!(out, "verified by reading back:")?;
        print_checks(&mut out, &o.checks)?;
        let ok = o.status != QuarantineStatus::Unverified;
        writeln!(
            out,
            "{} in {:.0} ms (apply {:.0} ms, verify {:.0} ms)",
            if ok { "done" } else { "NOT fully verified" },
            o.total_ms,
            o.apply_ms,
            o.verify_ms
        )?;
        for n in &o.notes {
            writeln!(err, "kustody: {n}")?;
        }
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
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
                let mode = r
                    .as_ref()
                    .map_or_else(|| "deny-all".to_owned(), |r| plan::mode_text(r.allow_dns, r.honeypot.as_deref()));
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
    let log = action_log(args.action_log.as_deref());
    runtime()?.block_on(async move {
        let cluster = connect(&args.cluster).await?;
        let target = Target { namespace: cluster.namespace.clone(), pod: pod.clone() };
        let ns = target.namespace.clone();
        let opts = plan::ReleaseOptions {
            restore_labels: args.restore_labels,
            uncordon: args.uncordon,
            reason: args.reason.clone(),
        };
        let run = RunOptions { dry_run: args.dry_run, confirm: false, wait: Duration::from_secs(args.wait) };
        let mut render =
            Render { show_plan: args.dry_run, header: format!("pod/{pod} in {ns}"), server: &cluster.server };
        let o =
            kustody_contain::release(&cluster.client, &target, &opts, &run, &run_context(&cluster), &log, &mut render)
                .await?;
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        match o.status {
            ReleaseStatus::NotQuarantined => {
                writeln!(err, "kustody: pod/{pod} in {ns} is not quarantined; nothing to release")?;
                Ok(ExitCode::from(1))
            }
            ReleaseStatus::DryRun | ReleaseStatus::Declined => Ok(ExitCode::SUCCESS),
            ReleaseStatus::Verified | ReleaseStatus::Unverified => {
                writeln!(out, "released pod/{pod} in {ns} ({} request(s)):", o.sent.len())?;
                for s in &o.sent {
                    writeln!(out, "  ✓ {}", sanitize(&s.request.purpose))?;
                }
                writeln!(out, "next: {}", sanitize(&o.plan.next.describe(&pod)))?;
                writeln!(out, "verified by reading back:")?;
                print_checks(&mut out, &o.checks)?;
                let ok = o.status == ReleaseStatus::Verified;
                writeln!(out, "{} in {:.0} ms", if ok { "done" } else { "NOT fully verified" }, o.total_ms)?;
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
        }
    })
}
