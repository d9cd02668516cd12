//! `kustody-gen collect-bench`: `kustody collect` run as a user would (the binary, a fresh
//! process each time) against a test cluster:
//! - a triage bundle of a pod with 3 containers (two busybox, one distroless → debug container);
//! - a sweep of a 50-pod Deployment by label selector;
//! - side by side, the same container collected the obvious way: one exec per command.
//!
//! Prints wall-clock percentiles and kustody's own time-by-step table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kustody_cluster::exec::{exec, ExecSpec};
use kustody_cluster::{Cluster, ClusterOptions};
use kustody_testcluster::{Pod, TestCluster};
use serde_json::json;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

fn collect(kustody: &Path, kubeconfig: &Path, out: &Path, args: &[&str]) -> Result<(f64, String)> {
    let t = Instant::now();
    let o = Command::new(kustody)
        .arg("collect")
        .args(args)
        .arg("--output-file")
        .arg(out)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("-q")
        .output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        bail!(
            "kustody collect {args:?} exited {:?}:\n{stdout}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok((ms, stdout))
}

fn steps(stdout: &str) -> String {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("time by step"))
        .take_while(|l| !l.starts_with("bundle:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One container collected with one exec per command (what a kubectl script does).
async fn naive(client: &kube::Client, ns: &str, pod: &str, container: &str) -> Result<usize> {
    let run = |argv: Vec<String>| {
        let spec = ExecSpec {
            namespace: ns.into(),
            pod: pod.into(),
            container: Some(container.into()),
            command: argv,
            timeout: Some(Duration::from_secs(60)),
            ..ExecSpec::default()
        };
        async move {
            let mut out = Vec::new();
            exec(client, &spec, &mut out).await?;
            Ok::<Vec<u8>, anyhow::Error>(out)
        }
    };
    let sv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let mut n = 0;
    let pids = String::from_utf8_lossy(&run(sv(&["ls", "/proc"])).await?).into_owned();
    n += 1;
    for pid in pids.split_whitespace().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        for f in ["stat", "status", "cmdline", "environ"] {
            let _ = run(sv(&["cat", &format!("/proc/{pid}/{f}")])).await;
            n += 1;
        }
        let _ = run(sv(&[
            "ls",
            "-l",
            &format!("/proc/{pid}/exe"),
            &format!("/proc/{pid}/cwd"),
            &format!("/proc/{pid}/fd/"),
        ]))
        .await;
        n += 1;
    }
    for f in [
        "/proc/self/mountinfo",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/proc/net/tcp",
        "/proc/net/tcp6",
        "/proc/net/udp",
        "/proc/net/udp6",
        "/proc/net/unix",
    ] {
        let _ = run(sv(&["cat", f])).await;
        n += 1;
    }
    let listing = run(sv(&["find", "/", "-xdev", "-type", "f", "-perm", "-100"])).await?;
    n += 1;
    for f in String::from_utf8_lossy(&listing).lines() {
        let _ = run(sv(&["sha256sum", f])).await;
        n += 1;
    }
    let _ = run(sv(&["find", "/", "-xdev", "-exec", "stat", "-c", "%i|%h|%s|%f|%u|%g|%Y|%Z|%n", "{}", "+"])).await;
    n += 1;
    Ok(n)
}

pub fn run(runs: usize, fleet: usize, parallel: usize, kustody: &Path) -> Result<()> {
    let ns = "bench";
    let trio = Pod::new("trio")
        .label("app", "trio")
        .container("side", "busybox:1.36", &["sh", "-c", "exec sleep 3600"])
        .container("app", "gcr.io/distroless/static:nonroot", &[]);
    let t = Instant::now();
    let c = TestCluster::builder()
        .namespace(ns)
        .pod(trio)
        .object(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fleet", "namespace": ns},
            "spec": {"replicas": fleet, "selector": {"matchLabels": {"app": "fleet"}},
                "template": {"metadata": {"labels": {"app": "fleet"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox"}]}}}}))
        .start()?;
    c.wait_for(Duration::from_secs(120), || {
        let n = c
            .list("pods", Some(ns))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "fleet" && p["status"]["phase"] == "Running")
            .count();
        (n >= fleet).then_some(())
    })?;
    eprintln!("test cluster with {} pods up in {:.1} s", fleet + 1, t.elapsed().as_secs_f64());
    let kc = c.kubeconfig_path().to_path_buf();
    let work = tempfile::tempdir()?;

    println!("kustody collect pod/trio (3 containers: 2 busybox via exec, 1 distroless via debug container), triage, {runs} runs");
    let mut walls = Vec::new();
    let mut last = String::new();
    for i in 0..runs {
        let (ms, out) = collect(kustody, &kc, &work.path().join(format!("trio-{i}")), &["pod/trio", "-n", ns])?;
        walls.push(ms);
        last = out;
    }
    println!("  wall ms: p50 {:.1}  p95 {:.1}  max {:.1}", pct(&walls, 0.5), pct(&walls, 0.95), pct(&walls, 1.0));
    println!("  last run, {}", steps(&last));

    println!("kustody collect -l app=fleet ({fleet} pods), --parallel {parallel}, 3 runs");
    let mut walls = Vec::new();
    for i in 0..3 {
        let (ms, out) = collect(
            kustody,
            &kc,
            &work.path().join(format!("fleet-{i}")),
            &["-l", "app=fleet", "-n", ns, "--parallel", &parallel.to_string()],
        )?;
        walls.push(ms);
        last = out;
    }
    println!("  wall ms: p50 {:.1}  max {:.1}", pct(&walls, 0.5), pct(&walls, 1.0));
    println!("  last run, {}", steps(&last));

    println!("one busybox container (trio/main): kustody collect -c main vs one exec per command, 5 runs each");
    let mut ours = Vec::new();
    for i in 0..5 {
        ours.push(
            collect(kustody, &kc, &work.path().join(format!("main-{i}")), &["pod/trio", "-n", ns, "-c", "main"])?.0,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (theirs, execs) = rt.block_on(async {
        let cl = Cluster::connect(&ClusterOptions { kubeconfig: Some(kc.clone()), ..Default::default() }).await?;
        let mut v = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let t = Instant::now();
            n = naive(&cl.client, ns, "trio", "main").await?;
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok::<_, anyhow::Error>((v, n))
    })?;
    let (a, b) = (pct(&ours, 0.5), pct(&theirs, 0.5));
    println!("  kustody collect (whole CLI run incl. context and logs): p50 {a:.1} ms");
    println!("  one exec per command ({execs} execs, no context, no logs):  p50 {b:.1} ms");
    println!("  ratio: {:.1}x", b / a.max(0.001));
    Ok(())
}
