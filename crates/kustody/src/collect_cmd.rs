//! `kustody collect` and `kustody verify`. The acquisition itself is
//! `kustody_collect::acquire`; this file turns flags into its `Request` and renders its
//! progress and outcome.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kustody_collect::acquire::{self, BundleOutcome, Options, PodReport, Profile, Progress, Request, Targets, Via};
use kustody_collect::bundle;
use serde_json::json;

use crate::cli::{CollectArgs, ProfileArg, VerifyArgs, ViaArg};
use crate::cluster_cmd::{connect, pod_name, runtime};
use crate::render::sanitize;

fn default_output(args: &CollectArgs) -> PathBuf {
    let what = args
        .case
        .clone()
        .or_else(|| args.target.as_deref().and_then(|t| pod_name(t).ok()))
        .or_else(|| args.selector.clone())
        .unwrap_or_else(|| "pods".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    PathBuf::from(format!("kustody-evidence-{}-{stamp}", bundle::component(&what)))
}

fn options(args: &CollectArgs) -> Options {
    Options {
        profile: match args.profile {
            ProfileArg::Triage => Profile::Triage,
            ProfileArg::Full => Profile::Full,
        },
        via: match args.via {
            ViaArg::Auto => Via::Auto,
            ViaArg::Exec => Via::Exec,
            ViaArg::Debug => Via::Debug,
        },
        container: args.container.clone(),
        paths: args.paths.clone(),
        include_env_values: args.include_env_values,
        debug_image: args.debug_image.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        max_log_bytes: args.max_log_bytes,
        max_hash_bytes: args.max_hash_bytes,
    }
}

/// Progress on stderr: a bar on a terminal, a line per pod otherwise; nothing for one pod or
/// with `--quiet`.
fn progress_reporter(quiet: bool) -> impl Fn(Progress) + Send + Sync + 'static {
    let bar: std::sync::OnceLock<Option<indicatif::ProgressBar>> = std::sync::OnceLock::new();
    move |p| match p {
        Progress::Selected { pods, .. } => {
            let _ = bar.set((!quiet && pods > 1 && std::io::stderr().is_terminal()).then(|| {
                let pb = indicatif::ProgressBar::new(pods as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} pods {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                pb
            }));
        }
        Progress::PodDone { done, total, namespace, pod, elapsed } => match bar.get().and_then(Option::as_ref) {
            Some(pb) => {
                pb.set_message(format!("{}/{}", sanitize(&namespace), sanitize(&pod)));
                pb.inc(1);
            }
            None if !quiet && total > 1 => eprintln!(
                "kustody: [{done}/{total}] {}/{} {:.0} ms",
                sanitize(&namespace),
                sanitize(&pod),
                elapsed.as_secs_f64() * 1000.0
            ),
            None => {}
        },
        Progress::Sealed { .. } => {
            if let Some(pb) = bar.get().and_then(Option::as_ref) {
                pb.finish_and_clear();
            }
        }
        _ => {}
    }
}

pub fn collect(args: CollectArgs) -> Result<ExitCode> {
    let mut request = Request {
        targets: Targets::Pod { namespace: String::new(), name: String::new() },
        output: args.output.clone().unwrap_or_else(|| default_output(&args)),
        options: options(&args),
        parallel: usize::from(args.parallel),
        case: args.case.clone(),
        command: std::env::args().collect(),
        cluster: json!(null),
    };
    // bad flags are explained before the cluster is contacted
    acquire::check(&request)?;
    if args.target.is_none() && args.selector.is_none() {
        anyhow::bail!("name a pod (`kustody collect pod/NAME`) or select pods with -l SELECTOR");
    }
    let target = args.target.as_deref().map(pod_name).transpose()?;
    runtime()?.block_on(async move {
        let cluster = connect(&args.cluster).await?;
        let ns = cluster.namespace.clone();
        request.targets = match (target, &args.selector) {
            (Some(name), _) => Targets::Pod { namespace: ns, name },
            (None, Some(sel)) => {
                Targets::Selector { namespace: (!args.all_namespaces).then_some(ns), selector: sel.clone() }
            }
            (None, None) => anyhow::bail!("name a pod or give -l SELECTOR"),
        };
        request.cluster = json!({"server": cluster.server, "context": cluster.context});
        let outcome = kustody_collect::acquire(&cluster.client, &request, progress_reporter(args.quiet))
            .await
            .with_context(|| match &request.targets {
                Targets::Selector { selector, .. } => format!("collecting pods matching `{selector}`"),
                Targets::Pod { namespace, name } => format!("collecting pod {namespace}/{name}"),
            })?;
        render(&outcome)?;
        Ok(if outcome.complete() { ExitCode::SUCCESS } else { ExitCode::from(3) })
    })
}

/// One line per container: how it was read, what was found.
fn container_line(o: &mut impl Write, c: &acquire::ContainerReport) -> std::io::Result<()> {
    let listening: Vec<String> = c.listening.iter().map(|x| sanitize(x)).collect();
    let deleted: Vec<String> = c.deleted_executables.iter().map(u32::to_string).collect();
    writeln!(
        o,
        "    {:<16} via {:<6} {} processes, {} sockets, {} files ({} changed since start{}, {} hashed){}{}",
        sanitize(&c.name),
        c.via,
        c.processes,
        c.sockets,
        c.files,
        c.drift,
        if c.changed_by_acquisition.is_empty() {
            String::new()
        } else {
            format!(
                "; {} by kustody's debug container: {}",
                c.changed_by_acquisition.len(),
                c.changed_by_acquisition.join(", ")
            )
        },
        c.hashed,
        if listening.is_empty() { String::new() } else { format!("; listening: {}", listening.join(", ")) },
        if deleted.is_empty() { String::new() } else { format!("; DELETED EXECUTABLE: pid {}", deleted.join(", ")) },
    )
}

/// The ephemeral containers kustody added: the one change it makes to a pod.
fn debug_notes(o: &mut impl Write, pods: &[PodReport]) -> std::io::Result<()> {
    for t in pods {
        for c in &t.containers {
            let Some(d) = c.debug_container.as_ref().and_then(|d| d.get("name")).and_then(|n| n.as_str()) else {
                continue;
            };
            writeln!(
                o,
                "note: added ephemeral container {} to pod {}/{} to read {} (it has no shell, or --via debug); \
                 Kubernetes cannot remove it, it stays in the pod's spec (terminated) — recorded in the manifest",
                sanitize(d),
                sanitize(&t.namespace),
                sanitize(&t.pod),
                sanitize(&c.name),
            )?;
        }
    }
    Ok(())
}

fn render(outcome: &BundleOutcome) -> Result<()> {
    let mut o = std::io::stdout().lock();
    let containers: usize = outcome.pods.iter().map(|t| t.containers.len()).sum();
    writeln!(
        o,
        "collected {containers} container(s) in {} pod(s) in {:.2} s: {} artifacts, {} bytes",
        outcome.pods.len(),
        outcome.elapsed.as_secs_f64(),
        outcome.artifacts.len(),
        outcome.artifacts.iter().map(|a| a.size).sum::<u64>()
    )?;
    for t in &outcome.pods {
        writeln!(o, "  pod {}/{}", sanitize(&t.namespace), sanitize(&t.pod))?;
        for c in &t.containers {
            container_line(&mut o, c)?;
        }
    }
    debug_notes(&mut o, &outcome.pods)?;
    if !outcome.failures.is_empty() {
        writeln!(o, "not collected ({}):", outcome.failures.len())?;
        for f in &outcome.failures {
            writeln!(o, "  ✗ {}: {}", sanitize(&f.item), sanitize(&f.reason))?;
        }
    }
    writeln!(o, "time by step (ms):          count     total       max")?;
    for (step, t) in &outcome.timings {
        writeln!(o, "  {:<50} {:>5} {:>9.1} {:>9.1}", step, t.count, t.total_ms, t.max_ms)?;
    }
    writeln!(o, "bundle: {}", outcome.path.display())?;
    if let Some(a) = &outcome.archive_sha256 {
        writeln!(o, "archive sha256: {a}")?;
    }
    let sha = &outcome.manifest_sha256;
    writeln!(o, "MANIFEST.json sha256: {sha}")?;
    writeln!(
        o,
        "record this hash with the case; `kustody verify {} --expect {sha}` checks the bundle",
        outcome.path.display()
    )?;
    Ok(())
}

pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    if !args.bundle.exists() {
        anyhow::bail!("{}: no such bundle", args.bundle.display());
    }
    let r = bundle::verify(&args.bundle);
    let expect_ok = args.expect.as_ref().map(|e| e.trim().eq_ignore_ascii_case(&r.manifest_sha256));
    let mut o = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("expected_manifest_sha256_matches".into(), json!(expect_ok));
            o.insert("intact".into(), json!(r.clean() && expect_ok != Some(false)));
        }
        serde_json::to_writer_pretty(&mut o, &v)?;
        writeln!(o)?;
    } else {
        writeln!(o, "bundle: {}", args.bundle.display())?;
        if let Some(c) = &r.case {
            writeln!(o, "case: {}", sanitize(c))?;
        }
        writeln!(
            o,
            "MANIFEST.json sha256: {} ({})",
            r.manifest_sha256,
            if r.manifest_hash_ok { "matches MANIFEST.json.sha256" } else { "does NOT match MANIFEST.json.sha256" }
        )?;
        match expect_ok {
            Some(true) => writeln!(o, "matches the expected manifest hash")?,
            Some(false) => writeln!(
                o,
                "does NOT match the expected manifest hash {}",
                sanitize(args.expect.as_deref().unwrap_or_default())
            )?,
            None => {}
        }
        writeln!(o, "artifacts: {} checked, {} intact", r.checked, r.ok)?;
        for (what, list) in
            [("changed", &r.changed), ("missing", &r.missing), ("extra", &r.extra), ("error", &r.errors)]
        {
            for p in list {
                writeln!(o, "  {what}: {}", sanitize(p))?;
            }
        }
        if r.failures_recorded > 0 {
            writeln!(o, "items recorded as not collected at acquisition: {}", r.failures_recorded)?;
        }
        writeln!(o, "{}", if r.clean() && expect_ok != Some(false) { "INTACT" } else { "NOT INTACT" })?;
    }
    if !r.errors.is_empty() && r.checked == 0 {
        return Ok(ExitCode::from(2));
    }
    Ok(if r.clean() && expect_ok != Some(false) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
