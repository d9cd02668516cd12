//! `kustody-gen exec-bench`: kustody's exec path against a test cluster, next to bare `runc
//! exec` and the Python `kubernetes` client, and EKS token minting next to `aws eks get-token`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kustody_cluster::exec::{exec, ExecPool, ExecSpec};
use kustody_cluster::{Cluster, ClusterOptions};
use kustody_testcluster::{Pod, TestCluster};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

fn spec(ns: &str, argv: &[&str]) -> ExecSpec {
    ExecSpec {
        namespace: ns.into(),
        pod: "shell".into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        timeout: Some(Duration::from_secs(120)),
        ..ExecSpec::default()
    }
}

pub fn run(n: usize, threads: usize, python: bool) -> Result<()> {
    let c = TestCluster::builder().namespace("bench").pod(Pod::new("shell")).start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let kubeconfig = c.kubeconfig_path().to_path_buf();
    let (lat, seq, pool, mbps) = rt.block_on(async {
        let k =
            Cluster::connect(&ClusterOptions { kubeconfig: Some(kubeconfig.clone()), ..Default::default() }).await?;
        let (lat, seq, pool) = execs(&k.client, n, n.max(50), threads).await?;
        let t = Instant::now();
        let mut sink = tokio::io::sink();
        let o = exec(&k.client, &spec("bench", &["head", "-c", "100000000", "/dev/zero"]), &mut sink).await?;
        let secs = t.elapsed().as_secs_f64();
        if o.stdout_bytes != 100_000_000 {
            bail!("stream: {} bytes", o.stdout_bytes);
        }
        Ok::<_, anyhow::Error>((lat, seq, pool, 100.0 / secs))
    })?;
    // bare runc exec of the same command in the same container
    let runc_root = c.dir().join("runc");
    let id =
        String::from_utf8(Command::new("runc").arg("--root").arg(&runc_root).args(["list", "-q"]).output()?.stdout)?
            .lines()
            .find(|l| l.starts_with("k-"))
            .context("no container")?
            .to_owned();
    let mut bare = Vec::new();
    for _ in 0..n.max(50) {
        let t = Instant::now();
        let out = Command::new("runc").arg("--root").arg(&runc_root).args(["exec", &id, "echo", "hi"]).output()?;
        if !out.status.success() {
            bail!("runc exec failed");
        }
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut lat2 = lat.clone();
    let (p50, p99) = (pct(&mut lat2, 0.5), pct(&mut lat2, 0.99));
    let bare50 = pct(&mut bare, 0.5);
    println!("small exec (echo hi), {} runs: p50 {p50:.2} ms, p99 {p99:.2} ms", lat.len());
    println!("bare runc exec, same command and container: p50 {bare50:.2} ms");
    println!("kustody + API server + kubelet overhead per exec (p50 - bare p50): {:.2} ms", p50 - bare50);
    println!("{n} small execs: sequential {:.2} s, pool of {threads} {:.2} s", seq.as_secs_f64(), pool.as_secs_f64());
    println!("100 MB stdout stream (hashed, discarded): {mbps:.0} MB/s");
    // EKS token minting, warm credentials
    let creds = kustody_cluster::eks::AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: secrecy::SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
        session_token: None,
        source: "bench".into(),
    };
    let t = Instant::now();
    for _ in 0..1000 {
        kustody_cluster::eks::token(&creds, "prod", "eu-west-1", std::time::SystemTime::now())
            .map_err(anyhow::Error::msg)?;
    }
    println!(
        "EKS token minting in-process: {:.1} µs per token (1000 tokens)",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
    let t = Instant::now();
    let ok = Command::new("aws")
        .args(["eks", "get-token", "--cluster-name", "prod", "--region", "eu-west-1"])
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        println!("aws eks get-token (awscli, a process): {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    let (py_seq, py_pool) = if python { python_bench(&kubeconfig, n, threads)? } else { (0.0, 0.0) };
    if python {
        println!(
            "python kubernetes client, {n} execs: sequential {py_seq:.2} s, thread pool of {threads} {py_pool:.2} s"
        );
        println!(
            "ratios: kustody pool vs python sequential {:.1}x, vs python pool {:.1}x; kustody sequential vs python sequential {:.1}x",
            py_seq / pool.as_secs_f64(),
            py_pool / pool.as_secs_f64(),
            py_seq / seq.as_secs_f64()
        );
    }
    drop(c);
    runtime_free(n, threads, python)
}

/// The same sequence against a test cluster whose API server answers `echo` execs itself (TLS,
/// authentication, authorization, audit, upgrade and framing, but no `runc exec`): what is left
/// is the client and the API server, which is where kustody's own overhead shows.
fn runtime_free(n: usize, threads: usize, python: bool) -> Result<()> {
    let c = TestCluster::builder().namespace("bench").pod(Pod::new("shell")).exec_without_runtime().start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let kubeconfig = c.kubeconfig_path().to_path_buf();
    let (mut lat, seq, pool) = rt.block_on(async {
        let k =
            Cluster::connect(&ClusterOptions { kubeconfig: Some(kubeconfig.clone()), ..Default::default() }).await?;
        execs(&k.client, n, n.max(200), threads).await
    })?;
    let count = lat.len();
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!("without the container runtime (the API server answers `echo` itself):");
    println!("  small exec, {count} runs: p50 {p50:.2} ms, p99 {p99:.2} ms (kustody client + API server, no runc)");
    println!("  {n} small execs: sequential {:.2} s, pool of {threads} {:.2} s", seq.as_secs_f64(), pool.as_secs_f64());
    if python {
        let (ps, pp) = python_bench(&kubeconfig, n, threads)?;
        println!("  python kubernetes client: sequential {ps:.2} s, thread pool of {threads} {pp:.2} s");
        println!(
            "  ratios: kustody pool vs python sequential {:.1}x, vs python pool {:.1}x; sequential vs sequential {:.1}x",
            ps / pool.as_secs_f64(),
            pp / pool.as_secs_f64(),
            ps / seq.as_secs_f64()
        );
    }
    Ok(())
}

/// Latency of `echo hi` (`samples` runs, output checked), then `n` execs sequentially and
/// through a pool of `threads`.
async fn execs(
    client: &kube::Client,
    n: usize,
    samples: usize,
    threads: usize,
) -> Result<(Vec<f64>, Duration, Duration)> {
    // warm up: TLS session, connection pool
    exec(client, &spec("bench", &["echo", "warm"]), &mut Vec::new()).await?;
    let mut lat = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let mut out = Vec::new();
        exec(client, &spec("bench", &["echo", "hi"]), &mut out).await?;
        if out != b"hi\n" {
            bail!("unexpected output {out:?}");
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    for i in 0..n {
        exec(client, &spec("bench", &["echo", &format!("job {i}")]), &mut Vec::new()).await?;
    }
    let seq = t.elapsed();
    let p = ExecPool::new(client.clone(), threads);
    let t = Instant::now();
    let jobs = (0..n).map(|i| {
        let p = p.clone();
        async move { p.run(spec("bench", &["echo", &format!("job {i}")])).await }
    });
    for r in futures_util::future::join_all(jobs).await {
        r?;
    }
    Ok((lat, seq, t.elapsed()))
}

fn python_bench(kubeconfig: &Path, n: usize, threads: usize) -> Result<(f64, f64)> {
    {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/exec_bench.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(kubeconfig)
            .args(["bench", "shell", &n.to_string(), &threads.to_string()])
            .output()
            .context("python3")?;
        if !out.status.success() {
            bail!("python client benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let ps = v.get("sequential_s").and_then(|x| x.as_f64()).unwrap_or(0.0);
        let pp = v.get("pool_s").and_then(|x| x.as_f64()).unwrap_or(0.0);
        Ok((ps, pp))
    }
}
