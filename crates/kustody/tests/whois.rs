//! `kustody whois`: who an IP was, from pod bodies in audit events, over files and the store.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::process::Command;

use serde_json::{json, Value};

fn kustody(args: &[&str]) -> kustody_testkit::Run {
    kustody_testkit::run(Command::new(env!("CARGO_BIN_EXE_kustody")).args(args))
}

/// A pod's status patch by its kubelet (its IP in the response), or its deletion.
fn event(id: usize, t: &str, verb: &str, pod: &str, uid: &str, ip: &str) -> String {
    let sub = if verb == "patch" { json!("status") } else { Value::Null };
    let mut e = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": format!("a-{id}"), "stage": "ResponseComplete", "verb": verb,
        "requestURI": format!("/api/v1/namespaces/shop/pods/{pod}"),
        "user": {"username": "system:node:node-1"}, "sourceIPs": ["192.168.1.10"],
        "objectRef": {"resource": "pods", "namespace": "shop", "name": pod, "apiVersion": "v1", "subresource": sub},
        "responseStatus": {"metadata": {}, "code": 200},
        "responseObject": {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": pod, "namespace": "shop", "uid": uid,
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f8b6c5d", "controller": true}]},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web"},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}},
        "requestReceivedTimestamp": t, "stageTimestamp": t});
    if sub.is_null() {
        e["objectRef"].as_object_mut().unwrap().remove("subresource");
    }
    e.to_string()
}

/// A request by the `web` service account from `ip`.
fn request(id: usize, t: &str, ip: &str) -> String {
    json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("r-{id}"), "stage": "ResponseComplete", "verb": "get",
        "requestURI": "/api/v1/namespaces/shop/configmaps/settings",
        "user": {"username": "system:serviceaccount:shop:web"}, "sourceIPs": [ip],
        "objectRef": {"resource": "configmaps", "namespace": "shop", "name": "settings", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": t, "stageTimestamp": t})
    .to_string()
}

/// Three pods hold 10.9.0.7 in turn over an hour, each making a request from it.
fn reuse_log() -> String {
    let ip = "10.9.0.7";
    [
        event(1, "2026-11-20T09:00:00Z", "patch", "web-a", "a", ip),
        request(1, "2026-11-20T09:10:00Z", ip),
        event(2, "2026-11-20T09:15:00Z", "patch", "web-a", "a", ip),
        event(3, "2026-11-20T09:20:00Z", "delete", "web-a", "a", ip),
        event(4, "2026-11-20T09:21:00Z", "patch", "web-b", "b", ip),
        request(2, "2026-11-20T09:30:00Z", ip),
        event(5, "2026-11-20T09:40:00Z", "patch", "web-b", "b", ip),
        event(6, "2026-11-20T09:41:00Z", "delete", "web-b", "b", ip),
        event(7, "2026-11-20T09:42:00Z", "patch", "web-c", "c", ip),
        request(3, "2026-11-20T09:50:00Z", ip),
    ]
    .join("\n")
        + "\n"
}

fn at(source: &[&str], t: &str) -> (i32, Value) {
    let mut args = vec!["whois", "10.9.0.7", "--at", t, "-o", "json"];
    args.extend_from_slice(source);
    let r = kustody(&args);
    assert!(r.code <= 1, "{}", r.stderr);
    (r.code, serde_json::from_str(&r.stdout).unwrap())
}

fn check(source: &[&str]) {
    let (code, v) = at(source, "2026-11-20T09:10:00Z");
    assert_eq!(
        (code, v["holder"]["pod"].as_str(), v["confidence"].as_str()),
        (0, Some("shop/web-a"), Some("observed"))
    );
    assert_eq!(v["holder"]["node"], "node-1");
    assert_eq!(v["holder"]["owner"], "ReplicaSet/web-7d9f8b6c5d");
    let (code, v) = at(source, "2026-11-20T09:18:00Z");
    assert_eq!((code, v["confidence"].as_str()), (0, Some("extrapolated")));
    let (code, v) = at(source, "2026-11-20T09:20:30Z");
    assert_eq!((code, &v["holder"]), (1, &Value::Null), "deleted, not yet reused");
    let (_, v) = at(source, "2026-11-20T09:30:00Z");
    assert_eq!(v["holder"]["pod"], "shop/web-b");
    let (_, v) = at(source, "2026-11-20T10:00:00Z");
    assert_eq!(v["holder"]["pod"], "shop/web-c");
    let mut args = vec!["whois", "10.9.0.7"];
    args.extend_from_slice(source);
    let r = kustody(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.starts_with("shop/web-")).count(), 3, "{}", r.stdout);
}

#[test]
fn one_ip_held_by_three_pods_in_an_hour_is_told_apart_from_files_and_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    std::fs::write(&log, reuse_log()).unwrap();
    check(&[log.to_str().unwrap()]);
    let data = tmp.path().join("data");
    let r = kustody(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--replay",
        log.to_str().unwrap(),
        "--exit-after-replay",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    check(&["--store", data.to_str().unwrap()]);
    // every stored request carries the pod that held its source IP then, and is found by it
    let r = kustody(&["search", "--data-dir", data.to_str().unwrap(), "--resource", "configmaps", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let by: Vec<(&str, &str)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"]["auditID"].as_str().unwrap(), e["source_pod"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(by, [("r-3", "shop/web-c"), ("r-2", "shop/web-b"), ("r-1", "shop/web-a")]);
    let r = kustody(&["search", "--data-dir", data.to_str().unwrap(), "--from-pod", "shop/web-b"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.contains("shop/web-b")).count(), 1, "{}", r.stdout);
    let r = kustody(&["whois", "not-an-ip", log.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not an IP address"), "{}", r.stderr);
}

#[test]
fn the_recorded_apiserver_log_says_which_pod_held_an_ip() {
    let Some(shared) = kustody_testkit::shared("fixtures/kube-apiserver/audit.jsonl") else { return };
    let log = shared.join("fixtures/kube-apiserver/audit.jsonl");
    let r = kustody(&["whois", "10.244.0.26", "--at", "2026-11-23T05:38:00Z", log.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("pod fixture-rec/web-5cfcc47844-nbg64"), "{}", r.stdout);
    assert!(r.stdout.contains("on node vm") && r.stdout.contains("owned by ReplicaSet/web-5cfcc47844"), "{}", r.stdout);
    // after its deletion nobody is known to hold it
    let r = kustody(&["whois", "10.244.0.26", "--at", "2026-11-23T05:41:00Z", log.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stdout);
}

#[test]
fn a_timeline_names_the_pod_behind_each_source_ip_and_a_pods_timeline_has_requests_from_its_ip() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    std::fs::write(&log, reuse_log()).unwrap();
    let r = kustody(&["timeline", "--ip", "10.9.0.7", "-o", "jsonl", log.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pods: Vec<(String, String)> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["resource"] == "configmaps")
        .map(|v| (v["audit_id"].as_str().unwrap().to_owned(), v["source_pod"].as_str().unwrap_or("-").to_owned()))
        .collect();
    assert_eq!(
        pods,
        [
            ("r-1".to_owned(), "shop/web-a".to_owned()),
            ("r-2".to_owned(), "shop/web-b".to_owned()),
            ("r-3".to_owned(), "shop/web-c".to_owned())
        ]
    );
    // web-b's own timeline holds the request made from its address while it held it, and not
    // the others'
    let r = kustody(&["timeline", "--pod", "shop/web-b", "-o", "jsonl", log.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let from_ip: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["resource"] == "configmaps")
        .collect();
    assert_eq!(from_ip.len(), 1, "only web-b's own request, not its predecessor's nor successor's: {}", r.stdout);
    assert_eq!(from_ip[0]["why"], "SA token, from its IP");
    assert_eq!(from_ip[0]["audit_id"], "r-2");
    let r = kustody(&["timeline", "--ip", "10.9.0.7", log.to_str().unwrap()]);
    assert!(r.stdout.contains("from 10.9.0.7 (pod shop/web-c)"), "{}", r.stdout);
}

#[test]
fn hunt_findings_name_the_pod_behind_their_source_ip() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    std::fs::write(&log, reuse_log()).unwrap();
    let rules = tmp.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "- rule: Settings Read\n  desc: t\n  condition: ka.target.resource=configmaps\n  output: read by %ka.user.name\n  priority: WARNING\n  source: k8s_audit\n",
    )
    .unwrap();
    let r = kustody(&[
        "hunt",
        "--no-default-rules",
        "-r",
        rules.to_str().unwrap(),
        "-o",
        "findings",
        "--group-window",
        "1s",
        log.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "findings exit 1: {}", r.stderr);
    let pods: Vec<String> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            let s = v.to_string();
            ["shop/web-a", "shop/web-b", "shop/web-c"].into_iter().find(|p| s.contains(p)).unwrap_or("-").to_owned()
        })
        .collect();
    assert_eq!(pods, ["shop/web-a", "shop/web-b", "shop/web-c"], "{}", r.stdout);
}
