//! Start a test cluster for manual use and print its kubeconfig.
//!
//! `kustody-testcluster [--pods N] [--namespace NS] [--nodes N] [--port P]` starts a cluster,
//! creates the namespace with N busybox pods (`app=web`, behind a Deployment and a Service) and one
//! distroless pod, writes the kubeconfig and audit log paths to stdout, and runs until Ctrl-C.

use std::time::Duration;

use clap::Parser;
use kustody_testcluster::{Pod, TestCluster};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Start a kustody test cluster (runc containers behind a Kubernetes API) for manual use")]
struct Args {
    /// Namespace for the example workloads.
    #[arg(long, default_value = "demo")]
    namespace: String,
    /// Replicas of the example Deployment `web`.
    #[arg(long, default_value_t = 2)]
    pods: u32,
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Port to listen on (default: random).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the kubeconfig here too.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Instead of serving: start and stop N clusters, each with one running busybox pod, and
    /// print startup latency percentiles (the image cache is built before the first).
    #[arg(long, value_name = "N")]
    measure: Option<usize>,
}

fn measure(n: usize) -> anyhow::Result<()> {
    use std::time::Instant;
    // warm the image cache
    drop(TestCluster::builder().start()?);
    let mut ms = Vec::with_capacity(n);
    let mut teardown = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = TestCluster::builder().namespace("m").pod(Pod::new("one")).start()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        drop(c);
        teardown.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or(0.0)
    };
    println!(
        "cluster start with 1 running pod, n={n}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms; teardown p50 {:.0} ms",
        pct(&mut ms, 0.5),
        pct(&mut ms, 0.95),
        pct(&mut ms, 1.0),
        pct(&mut teardown, 0.5)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.measure {
        return measure(n.max(1));
    }
    let ns = args.namespace.clone();
    let cluster = TestCluster::builder()
        .nodes(args.nodes)
        .port(args.port)
        .namespace(&ns)
        .object(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": args.pods, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox:1.36",
                                           "command": ["sh", "-c", "echo web up; while true; do sleep 5; echo tick; done"],
                                           "ports": [{"containerPort": 8080, "name": "http"}]}]}}}}))
        .object(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}))
        .pod(Pod::distroless("app").label("app", "distroless"))
        .start()?;
    if let Some(p) = &args.kubeconfig {
        std::fs::copy(cluster.kubeconfig_path(), p)?;
    }
    println!("server:     {}", cluster.url());
    println!("kubeconfig: {}", args.kubeconfig.as_deref().unwrap_or(cluster.kubeconfig_path()).display());
    println!("audit log:  {}", cluster.audit_log_path().display());
    println!("namespace:  {ns} (Deployment web x{}, Service web, distroless pod app)", args.pods);
    println!("Ctrl-C stops the cluster and removes its containers.");
    let (tx, rx) = std::sync::mpsc::channel();
    cluster.block_on(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(());
    })?;
    let _ = rx.recv_timeout(Duration::from_secs(1));
    drop(cluster);
    Ok(())
}
