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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
