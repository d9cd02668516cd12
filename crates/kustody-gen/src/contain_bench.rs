//! `kustody-gen quarantine-bench`: `kustody quarantine` and `kustody release`, run as a user
//! would (the binary, a fresh process each time), against a test cluster: a Deployment behind a
//! Service with an allow-policy, one pod at a time. Prints wall-clock percentiles per command
//! and kustody's own breakdown (apply, verify).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kustody_testcluster::TestCluster;
use serde_json::json;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// `apply 8 ms, verify 39 ms` from kustody's summary line.
fn breakdown(stdout: &str) -> Option<(f64, f64, f64)> {
    let line = stdout.lines().find(|l| l.starts_with("done in "))?;
    let nums: Vec<f64> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [total, apply, verify, ..] => Some((*total, *apply, *verify)),
        _ => None,
    }
}

pub fn run(n: usize, kustody: &Path) -> Result<()> {
    let ns = "bench";
    let c = TestCluster::builder()
        .namespace(ns)
        .object(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": n, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "front"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox",
                        "ports": [{"containerPort": 8080, "name": "http"}]}]}}}}))
        .object(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}))
        .object(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allow-front", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"tier": "front"}}, "policyTypes": ["Ingress"], "ingress": [{}]}}))
        .start()?;
    let pods = c.wait_for(Duration::from_secs(60), || {
        let p: Vec<String> = c
            .list("pods", Some(ns))
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        (p.len() >= n).then_some(p)
    })?;
    let log = c.dir().join("actions.jsonl");
    let run = |args: &[&str]| -> Result<(f64, String)> {
        let t = Instant::now();
        let out = Command::new(kustody)
            .args(args)
            .arg("--kubeconfig")
            .arg(c.kubeconfig_path())
            .env("KUSTODY_ACTION_LOG", &log)
            .output()?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let (mut wall, mut total, mut apply, mut verify, mut release, mut dry) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in &pods {
        let target = format!("pod/{p}");
        let (ms, _) = run(&["quarantine", &target, "-n", ns, "--dry-run"])?;
        dry.push(ms);
        let (ms, out) = run(&["quarantine", &target, "-n", ns, "--reason", "bench"])?;
        wall.push(ms);
        if let Some((t, a, v)) = breakdown(&out) {
            total.push(t);
            apply.push(a);
            verify.push(v);
        }
    }
    for p in &pods {
        let (ms, _) = run(&["release", &format!("pod/{p}"), "-n", ns])?;
        release.push(ms);
    }
    let show = |name: &str, v: &[f64]| {
        println!("{name:<46} p50 {:>6.1} ms   p95 {:>6.1} ms   max {:>6.1} ms", pct(v, 0.5), pct(v, 0.95), pct(v, 1.0))
    };
    println!("quarantine of {} Deployment pods (Service + allow-policy), one process per command:", pods.len());
    show("quarantine applied + verified (wall, process)", &wall);
    show("  kustody's own total (connect..verified)", &total);
    show("    apply (permission check + requests)", &apply);
    show("    verify (until replaced and out of slices)", &verify);
    show("quarantine --dry-run (wall)", &dry);
    show("release (wall)", &release);
    Ok(())
}
