//! End to end: an attack against a running test cluster (real API, real containers, real audit
//! log), then `kustody hunt` on the audit log the cluster wrote.
//!
//! The attacker holds a workload's service-account token and uses it with kubectl's user agent:
//! enumerates its permissions, tries to list secrets (forbidden), starts a privileged pod that
//! mounts the node's root, and execs into it over WebSocket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::process::Command;
use std::time::Duration;

use kustody_testcluster::client::{cluster, rt, Client};
use kustody_testcluster::{Pod, TestCluster};
use serde_json::{json, Value};

const SA: &str = "system:serviceaccount:shop:web-sa";

fn hunt(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_kustody")).args(args).output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "kustody failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn fired<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["rule"] == rule && a["output_fields"]["ka.user.name"] == SA).collect()
}

#[test]
fn kustody_hunt_finds_an_attack_run_against_the_test_cluster() {
    let Some(c) = cluster(TestCluster::builder().namespace("shop").pod(Pod::new("web").label("app", "web"))) else {
        return;
    };
    c.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web-sa", "namespace": "shop"}}))
        .unwrap();
    c.grant(
        &json!({"kind": "ServiceAccount", "name": "web-sa", "namespace": "shop"}),
        "web-sa",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create"]},
               {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]),
        Some("shop"),
    )
    .unwrap();
    let token = c.service_account_token("shop", "web-sa").unwrap();
    let mut attacker = Client::token(&c, &token);
    attacker.user_agent = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350".into();
    rt().block_on(async {
        let rules = attacker
            .req("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                 Some(&json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "shop"}})))
            .await
            .unwrap();
        assert_eq!(rules.status, 201);
        assert_eq!(attacker.req("GET", "/api/v1/namespaces/shop/secrets", None).await.unwrap().status, 403);
        let pwn = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pwn", "namespace": "shop"},
            "spec": {"serviceAccountName": "web-sa", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "pwn", "image": "busybox:1.36", "securityContext": {"privileged": true},
                                     "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
                     "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}});
        assert_eq!(attacker.req("POST", "/api/v1/namespaces/shop/pods", Some(&pwn)).await.unwrap().status, 201);
    });
    c.wait_pod_running("shop", "pwn", Duration::from_secs(20)).unwrap();
    rt().block_on(async {
        let s = attacker
            .ws(
                "/api/v1/namespaces/shop/pods/pwn/exec?command=id&container=pwn&stdout=true&stderr=true",
                &["v5.channel.k8s.io"],
                None,
                None,
            )
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&s.channel(1)).starts_with("uid=0"));
    });
    let audit = c.audit_log_path().to_str().unwrap().to_string();

    // kustody's built-in rules see every step, attributed to the stolen identity
    let alerts = hunt(&["hunt", &audit, "-f", "jsonl"]);
    for rule in [
        "kustody Service Account Token Used Interactively",
        "kustody Permission Enumeration by Service Account",
        "kustody Secrets Listed by Service Account or Cluster-wide",
        "kustody Forbidden Request by Service Account",
        "kustody Privileged Container in Workload",
        "kustody Sensitive Host Path Mounted by Workload",
        "kustody Exec or Attach Into Pod",
        // enumerate -> secrets -> privileged pod / exec, by the one identity
        "kustody Attack Chain from Enumeration to Escalation",
    ] {
        assert!(
            !fired(&alerts, rule).is_empty(),
            "{rule} did not fire; alerts: {:#?}",
            alerts.iter().map(|a| &a["rule"]).collect::<Vec<_>>()
        );
    }
    let exec = fired(&alerts, "kustody Exec or Attach Into Pod")[0];
    assert!(exec["output"].as_str().unwrap().contains("command=id"), "{}", exec["output"]);
    // the cluster's own components raise nothing at WARNING or above
    let system_noise: Vec<&Value> = alerts
        .iter()
        .filter(|a| {
            let u = a["output_fields"]["ka.user.name"].as_str().unwrap_or("");
            u.starts_with("system:node:")
                || u.starts_with("system:kube-")
                || u.starts_with("system:serviceaccount:kube-system:")
        })
        .filter(|a| matches!(a["priority"].as_str(), Some("Warning" | "Error" | "Critical" | "Alert" | "Emergency")))
        .collect();
    assert!(system_noise.is_empty(), "{system_noise:#?}");

    // and the upstream Falco rules, unchanged, catch the privileged pod and the host mount
    let Some(shared) = kustody_testkit::shared("upstream/falco/k8s_audit_rules.yaml") else { return };
    let upstream = shared.join("upstream/falco/k8s_audit_rules.yaml");
    let alerts = hunt(&["hunt", &audit, "--no-default-rules", "--rules", upstream.to_str().unwrap(), "-f", "jsonl"]);
    for rule in ["Create Privileged Pod", "Create Sensitive Mount Pod"] {
        assert!(!fired(&alerts, rule).is_empty(), "{rule} did not fire");
    }
}
