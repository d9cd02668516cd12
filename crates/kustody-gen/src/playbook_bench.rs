//! `kustody-gen playbook-bench`: finding → quarantine applied and verified, by a playbook of
//! `kustody serve` against a test cluster (needs root and runc). A Deployment's pods each get a
//! stolen token of their own service account; each token execs into its pod, one at a time;
//! `serve` follows the cluster's audit log, opens an incident per identity and its playbook
//! quarantines the pod. Prints, per quarantine: finding committed → quarantine applied and
//! verified (the action's own record) and exec answered → applied (adds the audit log's
//! writing and following).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kustody_testcluster::client::{rt, Client};
use kustody_testcluster::TestCluster;
use serde_json::{json, Value};

use crate::serve_bench::{start, Started};

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN)
}

fn actions(kustody: &Path, data: &Path) -> Vec<Value> {
    let out = Command::new(kustody)
        .args(["actions", "list", "-o", "json", "--limit", "10000", "--data-dir"])
        .arg(data)
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v.get("actions").and_then(|a| a.as_array()).cloned())
        .unwrap_or_default()
}

fn ns_of(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0)
}

pub fn run(n: usize, kustody: &Path) -> Result<()> {
    let ns = "bench";
    let c = TestCluster::builder()
        .namespace(ns)
        .object(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": n + 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox"}]}}}}))
        .start()?;
    let pods = c.wait_for(Duration::from_secs(60), || {
        let p: Vec<(String, String)> = c
            .list("pods", Some(ns))
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                Some((p["metadata"]["name"].as_str()?.to_owned(), p["metadata"]["uid"].as_str()?.to_owned()))
            })
            .collect();
        (p.len() > n).then_some(p)
    })?;
    let dir = tempfile::tempdir()?;
    let playbooks = dir.path().join("playbooks.yaml");
    std::fs::write(
        &playbooks,
        "playbooks:\n  - name: contain\n    match: { rules: [kustody Exec by Service Account] }\n    dry_run: false\n    limits: { per_hour: 100000, per_namespace_per_hour: 100000, min_healthy_replicas: 1 }\n    actions:\n      - quarantine: {}\n",
    )?;
    let audit = c.audit_log_path().to_string_lossy().into_owned();
    let kc = c.kubeconfig_path().to_string_lossy().into_owned();
    let Started { tmp: _tmp, data, mut child, .. } =
        start(kustody, &["--follow", &audit, "--playbooks", &playbooks.to_string_lossy(), "--kubeconfig", &kc])?;
    let (mut from_finding, mut from_exec, mut own) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (pod, uid)) in pods.iter().take(n).enumerate() {
        let sa = format!("sa-{i}");
        c.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}))?;
        c.grant(
            &json!({"kind": "ServiceAccount", "name": sa, "namespace": ns}),
            &sa,
            json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]),
            Some(ns),
        )?;
        let token = c.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid}}})),
        )?;
        let mut a = Client::token(&c, token["status"]["token"].as_str().context("no token")?);
        a.user_agent = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350".into();
        rt().block_on(a.ws(
            &format!("/api/v1/namespaces/{ns}/pods/{pod}/exec?command=id&stdout=true"),
            &["v5.channel.k8s.io"],
            None,
            None,
        ))
        .map_err(|e| anyhow::anyhow!("exec into {pod}: {e}"))?;
        let exec_done = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let t0 = Instant::now();
        let target = format!("{ns}/{pod}");
        let row = loop {
            let found = actions(kustody, &data).into_iter().find(|x| {
                x["target"] == target.as_str() && matches!(x["state"].as_str(), Some("applied" | "failed" | "skipped"))
            });
            if let Some(r) = found {
                break r;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!("no quarantine of {target} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if row["state"] != "applied" {
            let _ = child.kill();
            bail!("the quarantine of {target} was {}: {}", row["state"], row["detail"]);
        }
        let (created, updated) =
            (ns_of(row["created"].as_str().unwrap_or("")), ns_of(row["updated"].as_str().unwrap_or("")));
        from_finding.push((updated - created) as f64 / 1e6);
        from_exec.push((updated - exec_done) as f64 / 1e6);
        own.push(row["detail"]["total_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    println!(
        "playbook-bench: {n} incidents, one quarantine each, on the test cluster (a Deployment of {} pods)",
        n + 1
    );
    let show = |name: &str, v: &[f64]| {
        println!("  {name}: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms", pct(v, 0.5), pct(v, 0.9), pct(v, 1.0));
    };
    show("finding committed → quarantine applied and verified", &from_finding);
    show("quarantine flow alone (apply + verify)", &own);
    show("exec answered → quarantine verified (audit log written and followed, 250 ms poll)", &from_exec);
    Ok(())
}
