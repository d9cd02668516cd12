//! `kustody collect` and `kustody verify`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kustody_collect::acquire::{Collector, Options, Profile, Via};
use kustody_collect::bundle::{self, Bundle, Manifest};
use serde_json::{json, Value};

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

fn is_archive(p: &Path) -> bool {
    p.to_string_lossy().ends_with(".tar.zst")
}

pub fn collect(args: CollectArgs) -> Result<ExitCode> {
    for g in &args.paths {
        kustody_collect::script::check_glob(g).map_err(anyhow::Error::msg)?;
    }
    if args.target.is_none() && args.selector.is_none() {
        anyhow::bail!("name a pod (`kustody collect pod/NAME`) or select pods with -l SELECTOR");
    }
    let target = args.target.as_deref().map(pod_name).transpose()?;
    let out = args.output.clone().unwrap_or_else(|| default_output(&args));
    let archive = is_archive(&out);
    if archive && out.exists() {
        anyhow::bail!("{} exists; evidence is never overwritten", out.display());
    }
    let stage = if archive {
        let mut s = out.clone().into_os_string();
        s.push(".partial");
        PathBuf::from(s)
    } else {
        out.clone()
    };
    let opts = Options {
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
    };
    let command: Vec<String> = std::env::args().collect();
    runtime()?.block_on(async move {
        let t0 = Instant::now();
        let started = bundle::now();
        let cluster = connect(&args.cluster).await?;
        let ns = cluster.namespace.clone();
        // who we are, before anything is written
        let actor = kustody_cluster::identity::whoami(&cluster.client).await;
        let b = Bundle::create(&stage).with_context(|| format!("creating {}", stage.display()))?;
        let collector_identity = match &actor {
            Ok(a) => serde_json::to_value(a).unwrap_or_default(),
            Err(e) => {
                b.fail("collector identity (SelfSubjectReview)", e.to_string(), None);
                json!({"error": e.to_string()})
            }
        };
        let options_json = serde_json::to_value(&opts).unwrap_or_default();
        let col = Arc::new(Collector::new(cluster.client.clone(), b.clone(), opts));
        let pods: Vec<(String, String)> = match (&target, &args.selector) {
            (Some(p), _) => vec![(ns.clone(), p.clone())],
            (None, Some(sel)) => {
                let scope = if args.all_namespaces { None } else { Some(ns.as_str()) };
                col.select(scope, sel).await.map_err(|e| anyhow::anyhow!("listing pods matching {sel:?}: {e}"))?
            }
            (None, None) => anyhow::bail!("name a pod or give -l SELECTOR"),
        };
        if pods.is_empty() {
            let _ = std::fs::remove_dir(&stage);
            anyhow::bail!(
                "no pod matches {:?} in {}",
                args.selector.as_deref().unwrap_or_default(),
                if args.all_namespaces { "any namespace".to_owned() } else { format!("namespace {ns}") }
            );
        }
        let progress = !args.quiet && pods.len() > 1;
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new(pods.len() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} pods {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb
        });
        let permits = Arc::new(tokio::sync::Semaphore::new(usize::from(args.parallel)));
        let total = pods.len();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (pns, pname) in pods {
            let (col, permits, bar, done) = (col.clone(), permits.clone(), bar.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let v = col.collect_pod(&pns, &pname).await;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                match &bar {
                    Some(pb) => {
                        pb.set_message(format!("{pns}/{pname}"));
                        pb.inc(1);
                    }
                    None if progress => {
                        eprintln!(
                            "kustody: [{n}/{total}] {}/{} {:.0} ms",
                            sanitize(&pns),
                            sanitize(&pname),
                            v.get("elapsed_ms").and_then(Value::as_f64).unwrap_or_default()
                        );
                    }
                    None => {}
                }
                v
            }));
        }
        let mut targets = Vec::new();
        for t in tasks {
            match t.await {
                Ok(v) => targets.push(v),
                Err(e) => b.fail("a pod's collection task", e.to_string(), None),
            }
        }
        if let Some(pb) = &bar {
            pb.finish_and_clear();
        }
        let timings = col.timings();
        let manifest = Manifest {
            case: args.case.clone(),
            kustody_version: env!("CARGO_PKG_VERSION").into(),
            collector: collector_identity,
            cluster: json!({"server": cluster.server, "context": cluster.context}),
            command,
            options: options_json,
            started,
            finished: bundle::now(),
            targets: targets.clone(),
            timings: serde_json::to_value(&timings).unwrap_or_default(),
            ..Manifest::default()
        };
        let sha = b.seal(manifest).context("writing MANIFEST.json")?;
        let failures = b.failures();
        let artifacts = b.artifacts();
        let mut final_path = stage.clone();
        let mut archive_sha = None;
        if archive {
            archive_sha = Some(bundle::pack(&stage, &out).with_context(|| format!("packing {}", out.display()))?);
            std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
            final_path = out.clone();
        }
        let elapsed = t0.elapsed();
        let mut o = std::io::stdout().lock();
        let containers: usize =
            targets.iter().map(|t| t.get("containers").and_then(Value::as_array).map_or(0, Vec::len)).sum();
        writeln!(
            o,
            "collected {containers} container(s) in {} pod(s) in {:.2} s: {} artifacts, {} bytes",
            targets.len(),
            elapsed.as_secs_f64(),
            artifacts.len(),
            artifacts.iter().map(|a| a.size).sum::<u64>()
        )?;
        for t in &targets {
            let pns = t.get("namespace").and_then(Value::as_str).unwrap_or_default();
            let pn = t.get("pod").and_then(Value::as_str).unwrap_or_default();
            writeln!(o, "  pod {}/{}", sanitize(pns), sanitize(pn))?;
            for c in t.get("containers").and_then(Value::as_array).into_iter().flatten() {
                let g = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or_default();
                let listening: Vec<String> = c
                    .get("listening")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(sanitize))
                    .collect();
                let deleted: Vec<String> = c
                    .get("deleted_executables")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|x| x.to_string())
                    .collect();
                writeln!(
                    o,
                    "    {:<16} via {:<6} {} processes, {} sockets, {} files ({} changed since start, {} hashed){}{}",
                    sanitize(c.get("name").and_then(Value::as_str).unwrap_or_default()),
                    c.get("via").and_then(Value::as_str).unwrap_or_default(),
                    g("processes"),
                    g("sockets"),
                    g("files"),
                    g("drift"),
                    g("hashed"),
                    if listening.is_empty() { String::new() } else { format!("; listening: {}", listening.join(", ")) },
                    if deleted.is_empty() {
                        String::new()
                    } else {
                        format!("; DELETED EXECUTABLE: pid {}", deleted.join(", "))
                    },
                )?;
            }
        }
        for t in &targets {
            for c in t.get("containers").and_then(Value::as_array).into_iter().flatten() {
                if let Some(d) = c.pointer("/debug_container/name").and_then(Value::as_str) {
                    writeln!(
                        o,
                        "note: added ephemeral container {} to pod {}/{} to read {} (it has no shell, or --via debug); \
                         Kubernetes cannot remove it, it stays in the pod's spec (terminated) — recorded in the manifest",
                        sanitize(d),
                        sanitize(t.get("namespace").and_then(Value::as_str).unwrap_or_default()),
                        sanitize(t.get("pod").and_then(Value::as_str).unwrap_or_default()),
                        sanitize(c.get("name").and_then(Value::as_str).unwrap_or_default()),
                    )?;
                }
            }
        }
        if !failures.is_empty() {
            writeln!(o, "not collected ({}):", failures.len())?;
            for f in &failures {
                writeln!(o, "  ✗ {}: {}", sanitize(&f.item), sanitize(&f.reason))?;
            }
        }
        writeln!(o, "time by step (ms):          count     total       max")?;
        for (step, t) in &timings {
            writeln!(o, "  {:<50} {:>5} {:>9.1} {:>9.1}", step, t.count, t.total_ms, t.max_ms)?;
        }
        writeln!(o, "bundle: {}", final_path.display())?;
        if let Some(a) = archive_sha {
            writeln!(o, "archive sha256: {a}")?;
        }
        writeln!(o, "MANIFEST.json sha256: {sha}")?;
        writeln!(
            o,
            "record this hash with the case; `kustody verify {} --expect {sha}` checks the bundle",
            final_path.display()
        )?;
        Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
    })
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
