//! `kustody quarantine` / `release` end to end against the test cluster, run as a user holding
//! exactly the shipped `deploy/rbac/kustody-responder` ClusterRole: a Deployment pod (replaced,
//! out of its Service, allow-policy escaped), a policy no label removal escapes, honeypot + DNS,
//! DaemonSet and StatefulSet caveats, cordon/uncordon, dry run, idempotency, release, refusals,
//! the action log, and every missing permission named.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod, TestCluster};
use kustody_testkit::{repo_file, run, Run};
use serde_json::{json, Value};

const LABEL: &str = "kustody.io/quarantined";

fn kustody(kubeconfig: &Path, log: &Path, args: &[&str]) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env("KUSTODY_ACTION_LOG", log))
}

/// A cluster with the shipped roles, and a kubeconfig for a user bound to kustody-responder.
fn setup(b: kustody_testcluster::Builder) -> Option<(TestCluster, PathBuf, tempfile::TempDir)> {
    let c = cluster(b)?;
    c.apply_yaml(&repo_file("deploy/rbac/kustody-reader.yaml")).unwrap();
    c.apply_yaml(&repo_file("deploy/rbac/kustody-responder.yaml")).unwrap();
    let token = c.add_user_with_cluster_role("responder", "kustody-responder", None).unwrap();
    let kc = c.write_kubeconfig_for_token("responder", &token).unwrap();
    let dir = tempfile::tempdir().unwrap();
    Some((c, kc, dir))
}

fn web(ns: &str, name: &str, replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, "tier": "front"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox:1.36",
                    "ports": [{"containerPort": 8080, "name": "http"}]}]}}}})
}

fn service(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": "http"}]}})
}

fn policy(ns: &str, name: &str, pod_selector: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": pod_selector, "policyTypes": ["Ingress"], "ingress": [{}]}})
}

/// Running pods whose controller is `owner` (by name prefix), waiting for `n`.
fn running_pods(c: &TestCluster, ns: &str, prefix: &str, n: usize) -> Vec<Value> {
    c.wait_for(Duration::from_secs(20), || {
        let pods: Vec<Value> = c
            .list("pods", Some(ns))
            .into_iter()
            .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(prefix))
            .filter(|p| p["status"]["phase"] == "Running")
            .collect();
        (pods.len() >= n).then_some(pods)
    })
    .unwrap()
}

fn names(v: &[Value]) -> Vec<String> {
    v.iter().map(|x| x["metadata"]["name"].as_str().unwrap().to_owned()).collect()
}

fn in_slices(c: &TestCluster, ns: &str, pod: &str) -> bool {
    c.list("endpointslices", Some(ns))
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .any(|e| e["targetRef"]["name"] == pod)
}

fn log_entries(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn deployment_pod_is_replaced_cut_out_and_released() {
    let ns = "shop";
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .namespace(ns)
            .object(web(ns, "web", 2))
            .object(service(ns, "web", "web"))
            .object(policy(ns, "allow-web", json!({"matchLabels": {"tier": "front"}}))),
    ) else {
        return;
    };
    let log = dir.path().join("actions.jsonl");
    let pods = running_pods(&c, ns, "web-", 2);
    let victim = names(&pods)[0].clone();
    c.wait_for(Duration::from_secs(10), || in_slices(&c, ns, &victim).then_some(())).unwrap();
    let target = format!("pod/{victim}");

    // dry run: the exact requests, no change
    let before = c.get("pods", ns, &victim).unwrap();
    let r = kustody(&kc, &log, &["quarantine", &target, "-n", ns, "--dry-run", "--reason", "miner"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("POST /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("PATCH /api/v1/namespaces/shop/pods/{victim}")), "{}", r.stdout);
    assert!(r.stdout.contains("\"tier\": null") && r.stdout.contains("\"app\": null"), "{}", r.stdout);
    let after = c.get("pods", ns, &victim).unwrap();
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"], "dry run changed the pod");
    assert!(c.get("networkpolicies", ns, "kustody-quarantine-deny-all").is_none(), "dry run created a policy");

    // quarantine as the responder
    let r = kustody(&kc, &log, &["quarantine", &target, "-n", ns, "--reason", "miner"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    for want in ["✓ labelled", "✓ endpoints", "✓ unowned", "✓ policies", "✓ replacement"] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    // the closing note: what NetworkPolicy does not cut, and where
    for want in ["opened before the quarantine survive", "conntrack", "kube-router", "Calico", "ICMP echo"] {
        assert!(r.stderr.contains(want), "closing note lacks `{want}`: {}", r.stderr);
    }
    let pod = c.get("pods", ns, &victim).unwrap();
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels[LABEL], "true");
    assert!(labels.get("app").is_none() && labels.get("tier").is_none(), "{labels}");
    assert!(pod["metadata"].get("ownerReferences").is_none(), "{}", pod["metadata"]);
    assert_eq!(pod["status"]["phase"], "Running", "the pod stays alive for analysis");
    let record: Value =
        serde_json::from_str(pod["metadata"]["annotations"]["kustody.io/quarantine"].as_str().unwrap()).unwrap();
    assert_eq!(record["by"], "responder");
    assert_eq!(record["reason"], "miner");
    assert_eq!(record["originalLabels"]["app"], "web");
    assert_eq!(record["services"], json!(["web"]));
    assert_eq!(record["networkPolicies"], json!(["allow-web"]));
    assert_eq!(record["ownerReferences"][0]["kind"], "ReplicaSet");
    let deny = c.get("networkpolicies", ns, "kustody-quarantine-deny-all").unwrap();
    assert_eq!(deny["spec"]["podSelector"], json!({"matchLabels": {LABEL: "true"}}));
    assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
    assert!(!in_slices(&c, ns, &victim));
    let now = running_pods(&c, ns, "web-", 3);
    assert_eq!(now.iter().filter(|p| p["metadata"]["labels"]["app"] == "web").count(), 2, "replacement running");

    // listed, with who and why
    let r = kustody(&kc, &log, &["quarantine", "--list", "-A"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&victim) && r.stdout.contains("responder") && r.stdout.contains("miner"), "{}", r.stdout);

    // twice: a no-op, nothing written
    let rv = c.get("pods", ns, &victim).unwrap()["metadata"]["resourceVersion"].clone();
    let prv = deny["metadata"]["resourceVersion"].clone();
    let r = kustody(&kc, &log, &["quarantine", &target, "-n", ns, "--reason", "miner"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("already quarantined"), "{}", r.stderr);
    assert!(r.stdout.contains("✓ replacement"), "{}", r.stdout);
    assert_eq!(c.get("pods", ns, &victim).unwrap()["metadata"]["resourceVersion"], rv);
    assert_eq!(
        c.get("networkpolicies", ns, "kustody-quarantine-deny-all").unwrap()["metadata"]["resourceVersion"],
        prv
    );

    // release: networking back, policy gone (last quarantined pod), labels kept off by default;
    // it says, and verifies, that the pod stays unowned and running
    let r = kustody(&kc, &log, &["release", &target, "-n", ns, "--reason", "cleared"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("next: pod/") && r.stdout.contains("keeps running, unowned"), "{}", r.stdout);
    for want in ["✓ released", "✓ unowned", "✓ selectors", "✓ running"] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    let pod = c.get("pods", ns, &victim).unwrap();
    assert!(pod["metadata"]["labels"].get(LABEL).is_none());
    assert!(pod["metadata"]["labels"].get("app").is_none(), "labels restored only on request");
    assert!(pod["metadata"]["annotations"].get("kustody.io/quarantine").is_none());
    assert!(pod["metadata"]["annotations"]["kustody.io/released"].as_str().unwrap().contains("cleared"));
    assert!(c.get("networkpolicies", ns, "kustody-quarantine-deny-all").is_none());
    assert!(c.get("networkpolicies", ns, "allow-web").is_some(), "other policies untouched");
    assert!(pod["metadata"].get("ownerReferences").is_none(), "nothing adopted it");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(running_pods(&c, ns, "web-", 3).len(), 3, "the ReplicaSet keeps its two, the released pod runs on");
    let r = kustody(&kc, &log, &["release", &target, "-n", ns]);
    assert_eq!(r.code, 1, "not quarantined any more: {}", r.stderr);

    // the action log: who, what, when, why
    let entries = log_entries(&log);
    let outcomes: Vec<&str> = entries.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        ["dry-run", "applying", "verified", "noop", "applying", "verified", "noop"],
        "every changing run, release too, writes `applying` first: {entries:#?}"
    );
    // each entry is stamped when written: never earlier than the one before
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> =
        entries.iter().map(|e| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(entries[5]["next"]["expect"]["kind"], "staysUnowned", "{:#}", entries[5]);
    let v = &entries[2];
    assert_eq!(v["actor"]["username"], "responder");
    assert_eq!(v["action"], "quarantine");
    assert_eq!(v["reason"], "miner");
    assert_eq!(v["target"]["namespace"], ns);
    assert!(v["requests"].as_array().unwrap().iter().all(|r| r["ok"] == true && r["method"].is_string()));
    assert!(v["checks"].as_array().unwrap().len() >= 5);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn policies_that_labels_cannot_escape_are_excluded_then_restored() {
    let ns = "ops";
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .namespace(ns)
            .pod(Pod::new("solo").label("app", "solo"))
            .object(policy(ns, "allow-all-pods", json!({})))
            .object(policy(ns, "not-db", json!({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}))),
    ) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let r = kustody(&kc, &log, &["quarantine", "pod/solo", "-n", ns]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("! replacement") && r.stdout.contains("nothing starts a replacement"), "{}", r.stdout);
    for name in ["allow-all-pods", "not-db"] {
        let p = c.get("networkpolicies", ns, name).unwrap();
        let exprs = p["spec"]["podSelector"]["matchExpressions"].as_array().unwrap();
        assert!(exprs.contains(&json!({"key": LABEL, "operator": "DoesNotExist"})), "{name}: {p}");
    }
    let r = kustody(&kc, &log, &["release", "pod/solo", "-n", ns]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(c.get("networkpolicies", ns, "allow-all-pods").unwrap()["spec"]["podSelector"]
        .get("matchExpressions")
        .is_none());
    let notdb = c.get("networkpolicies", ns, "not-db").unwrap();
    assert_eq!(notdb["spec"]["podSelector"]["matchExpressions"], json!([{"key": "role", "operator": "DoesNotExist"}]));
    assert!(notdb["metadata"]["annotations"].get("kustody.io/excludes-quarantined").is_none());
}

#[test]
fn honeypot_with_dns_then_release_cleans_both_sides() {
    let ns = "prod";
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .namespace(ns)
            .object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "trap"}}))
            .pod(Pod::new("suspect").label("app", "api"))
            .pod(Pod::new("other").label("app", "api2"))
            .pod(Pod::new("honey").namespace("trap").label("app", "honeypot"))
            // the honeypot is isolated for ingress already: kustody adds the quarantined pods as one more peer
            .object(policy("trap", "monitoring-only", json!({"matchLabels": {"app": "honeypot"}}))),
    ) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let r = kustody(&kc, &log, &["quarantine", "pod/nosuch", "-n", ns]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pods \"nosuch\" not found"), "{}", r.stderr);
    let r = kustody(&kc, &log, &["quarantine", "pod/suspect", "-n", ns, "--honeypot", "nowhere/app=x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("honeypot namespace `nowhere` does not exist"), "{}", r.stderr);

    for pod in ["suspect", "other"] {
        let r = kustody(
            &kc,
            &log,
            &["quarantine", &format!("pod/{pod}"), "-n", ns, "--honeypot", "trap/app=honeypot", "--allow-dns"],
        );
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    }
    let pols: Vec<String> = names(&c.list("networkpolicies", Some(ns)));
    let hp = pols.iter().find(|n| n.starts_with("kustody-quarantine-honeypot-")).unwrap().clone();
    let id = hp.trim_start_matches("kustody-quarantine-honeypot-").to_owned();
    assert!(
        pols.contains(&"kustody-quarantine-deny-all".into()) && pols.contains(&"kustody-quarantine-allow-dns".into())
    );
    let egress = c.get("networkpolicies", ns, &hp).unwrap();
    assert_eq!(
        egress["spec"]["egress"][0]["to"][0],
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trap"}},
               "podSelector": {"matchLabels": {"app": "honeypot"}}})
    );
    let dns = c.get("networkpolicies", ns, "kustody-quarantine-allow-dns").unwrap();
    assert_eq!(dns["spec"]["egress"][0]["ports"][0]["port"], 53);
    let ingress_name = format!("kustody-honeypot-from-{ns}-{id}");
    let ingress = c.get("networkpolicies", "trap", &ingress_name).unwrap();
    assert_eq!(ingress["spec"]["podSelector"], json!({"matchLabels": {"app": "honeypot"}}));
    assert_eq!(
        ingress["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["kustody.io/quarantine-honeypot"],
        id
    );
    assert!(c.get("networkpolicies", "trap", "monitoring-only").is_some(), "the honeypot's own policy stays");
    let labels = &c.get("pods", ns, "suspect").unwrap()["metadata"]["labels"];
    assert_eq!(labels["kustody.io/quarantine-dns"], "true");
    assert_eq!(labels["kustody.io/quarantine-honeypot"], id.as_str());

    // releasing one keeps everything the other still needs
    let r = kustody(&kc, &log, &["release", "pod/suspect", "-n", ns]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(c.list("networkpolicies", Some(ns)).len(), 3);
    assert!(c.get("networkpolicies", "trap", &ingress_name).is_some());
    let r = kustody(&kc, &log, &["release", "pod/other", "-n", ns]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(c.list("networkpolicies", Some(ns)).is_empty(), "{:?}", names(&c.list("networkpolicies", Some(ns))));
    assert!(c.get("networkpolicies", "trap", &ingress_name).is_none());
    assert!(c.get("networkpolicies", "trap", "monitoring-only").is_some());
}

/// A honeypot nothing isolates accepts everyone: kustody creates no policy on its side (which
/// would cut its other clients off) and says so. Quarantining again without `--allow-dns`
/// replaces the mode: the output and the action log say the pod loses DNS.
#[test]
fn open_honeypot_keeps_its_clients_and_a_changed_mode_is_said() {
    let ns = "prod";
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .namespace(ns)
            .object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "trap"}}))
            .pod(Pod::new("suspect").label("app", "api"))
            .pod(Pod::new("honey").namespace("trap").label("app", "honeypot")),
    ) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let r =
        kustody(&kc, &log, &["quarantine", "pod/suspect", "-n", ns, "--honeypot", "trap/app=honeypot", "--allow-dns"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("creates no policy in namespace trap"), "{}", r.stderr);
    assert!(c.list("networkpolicies", Some("trap")).is_empty(), "the open honeypot stays open to its other clients");
    assert!(names(&c.list("networkpolicies", Some(ns))).iter().any(|n| n.starts_with("kustody-quarantine-honeypot-")));

    let r = kustody(&kc, &log, &["quarantine", "pod/suspect", "-n", ns, "--honeypot", "trap/app=honeypot"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("replaces that with deny-all+honeypot trap/app=honeypot"), "{}", r.stderr);
    assert!(r.stderr.contains("the pod loses DNS egress"), "{}", r.stderr);
    let labels = &c.get("pods", ns, "suspect").unwrap()["metadata"]["labels"];
    assert!(labels.get("kustody.io/quarantine-dns").is_none(), "{labels}");
    let entries = log_entries(&log);
    let applying = entries.iter().rev().find(|e| e["outcome"] == "applying").unwrap();
    assert_eq!(applying["modeChange"]["dropped"], json!(["DNS egress"]), "{applying:#}");
    assert_eq!(entries.last().unwrap()["modeChange"]["from"], "deny-all+dns+honeypot trap/app=honeypot");
}

/// `release --restore-labels` says the controller takes the pod back, then verifies it: the
/// ReplicaSet adopts the pod and deletes the surplus replacement, the released pod runs on.
#[test]
fn restored_labels_hand_the_pod_back_to_its_controller() {
    let ns = "back";
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).object(web(ns, "web", 1))) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let victim = names(&running_pods(&c, ns, "web-", 1))[0].clone();
    // the replacement must be younger: the ReplicaSet deletes the newest surplus pod, and
    // creation times have second precision
    std::thread::sleep(Duration::from_millis(1100));
    let r = kustody(&kc, &log, &["quarantine", &format!("pod/{victim}"), "-n", ns]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let replacement: Vec<String> =
        names(&running_pods(&c, ns, "web-", 2)).into_iter().filter(|n| *n != victim).collect();
    assert_eq!(replacement.len(), 1);

    let r = kustody(&kc, &log, &["release", &format!("pod/{victim}"), "-n", ns, "--restore-labels"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("kustody: next: ReplicaSet/web-"), "said before sending: {}", r.stderr);
    assert!(r.stdout.contains("adopts the pod") && r.stdout.contains("deletes a surplus replica"), "{}", r.stdout);
    for want in ["✓ released", "✓ adopted", "✓ surplus", "✓ running"] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    assert!(r.stdout.contains(&format!("removed: {}", replacement[0])), "{}", r.stdout);
    let pod = c.get("pods", ns, &victim).unwrap();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert!(pod["metadata"].get("deletionTimestamp").is_none());
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    let gone = c.get("pods", ns, &replacement[0]);
    assert!(gone.as_ref().is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some()), "{gone:?}");
    let last = log_entries(&log).pop().unwrap();
    assert_eq!(last["outcome"], "verified");
    assert_eq!(last["next"]["expect"]["kind"], "adopted");
}

#[test]
fn daemonset_and_statefulset_caveats_and_cordon() {
    let ns = "infra";
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .nodes(2)
            .namespace(ns)
            .object(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                    "template": {"metadata": {"labels": {"app": "agent"}},
                        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "a", "image": "busybox"}]}}}}))
            .object(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": ns},
                "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}},
                        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "db", "image": "busybox"}]}}}})),
    ) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let agents = running_pods(&c, ns, "agent-", 2);
    let victim = &agents[0];
    let vname = victim["metadata"]["name"].as_str().unwrap().to_owned();
    let node = victim["spec"]["nodeName"].as_str().unwrap().to_owned();
    let r = kustody(&kc, &log, &["quarantine", &format!("pod/{vname}"), "-n", ns, "--cordon"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("! replacement") && r.stdout.contains("SAME node"), "{}", r.stdout);
    assert!(r.stdout.contains("✓ cordoned"), "{}", r.stdout);
    assert_eq!(c.get("nodes", "", &node).unwrap()["spec"]["unschedulable"], true);

    running_pods(&c, ns, "db-0", 1);
    let r = kustody(&kc, &log, &["quarantine", "pod/db-0", "-n", ns]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("StatefulSet db cannot replace it"), "{}", r.stdout);

    let r = kustody(&kc, &log, &["release", &format!("pod/{vname}"), "-n", ns, "--uncordon"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(c.get("nodes", "", &node).unwrap()["spec"].get("unschedulable").is_none_or(|u| u == false));
    assert!(c.get("networkpolicies", ns, "kustody-quarantine-deny-all").is_some(), "db-0 still needs it");
}

#[test]
fn refuses_what_network_policy_cannot_isolate_unless_forced() {
    let Some((c, kc, dir)) = setup(
        TestCluster::builder()
            .namespace("web")
            .pod(Pod::new("hostnet").spec(json!({"hostNetwork": true})))
            .pod(Pod::new("dns").namespace("kube-system").label("k8s-app", "kube-dns")),
    ) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let r = kustody(&kc, &log, &["quarantine", "pod/hostnet", "-n", "web"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("hostNetwork") && r.stderr.contains("--force"), "{}", r.stderr);
    assert!(c.get("pods", "web", "hostnet").unwrap()["metadata"]["labels"].get(LABEL).is_none());
    let r = kustody(&kc, &log, &["quarantine", "pod/dns", "-n", "kube-system"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("kube-system"), "{}", r.stderr);
    let r = kustody(&kc, &log, &["quarantine", "pod/dns", "-n", "kube-system", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("--force: quarantining although"), "{}", r.stderr);
    assert_eq!(log_entries(&log)[0]["outcome"], "refused");
}

/// The roles are sufficient (the tests above run as kustody-responder), and each permission
/// quarantine needs, when missing, gives an error naming the verb and resource, with nothing
/// changed.
#[test]
fn every_missing_permission_is_named_and_nothing_changes() {
    let ns = "sec";
    let Some((c, _kc, dir)) =
        setup(TestCluster::builder().namespace(ns).pod(Pod::new("p").label("app", "p")).object(service(ns, "p", "p")))
    else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let responder = c.get("clusterroles", "", "kustody-responder").unwrap();
    let rules = responder["rules"].as_array().unwrap().clone();
    // (group, resource, verb, what the error must say)
    let cases = [
        ("", "pods", "patch", "patch pods \"p\" in namespace \"sec\""),
        (
            "networking.k8s.io",
            "networkpolicies",
            "create",
            "create networkpolicies.networking.k8s.io in namespace \"sec\"",
        ),
        ("", "nodes", "patch", "patch nodes"),
        ("", "pods", "get", "cannot get resource \"pods\""),
        ("", "services", "list", "cannot list resource \"services\""),
        ("networking.k8s.io", "networkpolicies", "list", "cannot list resource \"networkpolicies\""),
        ("apps", "replicasets", "list", "cannot list resource \"replicasets\""),
        ("apps", "daemonsets", "list", "cannot list resource \"daemonsets\""),
        ("apps", "statefulsets", "list", "cannot list resource \"statefulsets\""),
        ("batch", "jobs", "list", "cannot list resource \"jobs\""),
        ("", "nodes", "get", "cannot get resource \"nodes\""),
    ];
    for (i, (group, resource, verb, want)) in cases.iter().enumerate() {
        // the responder's rules with this one verb removed
        let mut reduced = Vec::new();
        for r in &rules {
            let groups: Vec<&str> = r["apiGroups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
            let resources: Vec<&str> = r["resources"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
            if !groups.contains(group) || !resources.contains(resource) {
                reduced.push(r.clone());
                continue;
            }
            let others: Vec<&str> = resources.iter().copied().filter(|x| x != resource).collect();
            if !others.is_empty() {
                let mut o = r.clone();
                o["resources"] = json!(others);
                reduced.push(o);
            }
            let verbs: Vec<&str> =
                r["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).filter(|v| v != verb).collect();
            if !verbs.is_empty() {
                reduced.push(json!({"apiGroups": [group], "resources": [resource], "verbs": verbs}));
            }
        }
        let user = format!("weak{i}");
        let token = c.add_user(&user, &[], json!(reduced), None).unwrap();
        let kc = c.write_kubeconfig_for_token(&user, &token).unwrap();
        let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns, "--cordon"]);
        assert_eq!(r.code, 2, "without {verb} {resource}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(want), "without {verb} {resource}, expected `{want}` in:\n{}", r.stderr);
        let pod = c.get("pods", ns, "p").unwrap();
        assert!(pod["metadata"]["labels"].get(LABEL).is_none(), "without {verb} {resource} the pod was changed");
        assert_eq!(pod["metadata"]["labels"]["app"], "p");
        assert!(c.list("networkpolicies", Some(ns)).is_empty(), "without {verb} {resource} a policy was created");
    }
    // kustody-reader alone can look (dry run) but not change
    let token = c.add_user_with_cluster_role("reader", "kustody-reader", Some(ns)).unwrap();
    let kc = c.write_kubeconfig_for_token("reader", &token).unwrap();
    let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns, "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("missing permissions: User \"reader\""), "{}", r.stderr);
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
}

#[test]
fn shipped_roles_reader_is_a_subset_of_responder() {
    let parse = |f: &str| -> Vec<Value> {
        let docs = yaml_rust2_docs(&repo_file(f));
        docs[0]["rules"].as_array().unwrap().clone()
    };
    let reader = parse("deploy/rbac/kustody-reader.yaml");
    let responder = parse("deploy/rbac/kustody-responder.yaml");
    for r in &reader {
        assert!(responder.contains(r), "kustody-responder lacks reader rule {r}");
    }
    let text = serde_json::to_string(&reader).unwrap();
    assert!(!text.contains("secrets"), "the reader never reads Secrets");
    assert!(!text.contains("\"*\""), "no wildcards");
}

fn yaml_rust2_docs(text: &str) -> Vec<Value> {
    kustody_testcluster::yaml_documents(text).unwrap()
}

/// A failure after the policy exists (here the API server rejects the pod patch: annotations
/// over 256 KiB) says the pod is not isolated and what to run; `--plan` without a terminal
/// refuses and changes nothing.
#[test]
fn partial_failure_is_explained_and_plan_needs_a_terminal() {
    let ns = "edge";
    // 200 KB of annotations already: kustody's record with a 100 KB reason crosses 256 KiB
    let mut pod = Pod::new("p").label("app", "p").to_object(ns);
    pod["metadata"]["annotations"] = json!({"example.com/bulk": "y".repeat(200_000)});
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).object(pod)) else {
        return;
    };
    let log = dir.path().join("a.jsonl");
    let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns, "--plan"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("needs a terminal"), "{}", r.stderr);
    assert!(c.list("networkpolicies", Some(ns)).is_empty());

    let huge = "x".repeat(100_000);
    let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns, "--reason", &huge]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("Too long"), "{}", &r.stderr[..r.stderr.len().min(2000)]);
    assert!(
        r.stderr.contains("was NOT relabelled, so it is NOT isolated"),
        "{}",
        &r.stderr[..2000.min(r.stderr.len())]
    );
    assert!(r.stderr.contains("kustody quarantine pod/p -n edge"), "what to run");
    assert!(c.get("pods", ns, "p").unwrap()["metadata"]["labels"].get(LABEL).is_none());
    assert!(c.get("networkpolicies", ns, "kustody-quarantine-deny-all").is_some());
    let entries = log_entries(&log);
    assert_eq!(entries.last().unwrap()["outcome"], "partial");
    // and running it again (with a sane reason) completes the quarantine
    let r = kustody(&kc, &log, &["quarantine", "pod/p", "-n", ns, "--reason", "retry"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
