#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

const S: i64 = 1_000_000_000;

fn pod(name: &str, uid: &str, ip: &str) -> PodFacts {
    PodFacts {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
        ips: vec![ip.into()],
        node: Some("node-1".into()),
        service_account: Some("web".into()),
        owner: Some("ReplicaSet/web-7d9f8b6c5d".into()),
        ..Default::default()
    }
}

#[test]
fn three_pods_holding_one_ip_over_an_hour_are_told_apart() {
    let mut h = IpHistory::new(Options::default());
    let ip = "10.244.1.7";
    // web-a holds it 0–1200 s, deleted at 1250; web-b 1300–2400, deleted 2450; web-c from 2500
    h.observe(&pod("web-a", "a", ip), 0);
    h.observe(&pod("web-a", "a", ip), 1200 * S);
    h.deleted("shop", "web-a", Some("a"), 1250 * S);
    h.observe(&pod("web-b", "b", ip), 1300 * S);
    h.observe(&pod("web-b", "b", ip), 2400 * S);
    h.deleted("shop", "web-b", None, 2450 * S);
    h.observe(&pod("web-c", "c", ip), 2500 * S);
    let who = |t: i64| h.lookup(ip, t * S).map(|a| (a.interval.pod.name, a.confidence));
    assert_eq!(who(600), Some(("web-a".into(), Confidence::Observed)));
    assert_eq!(who(1220), Some(("web-a".into(), Confidence::Extrapolated)));
    assert_eq!(who(1260), None, "after web-a's deletion, before web-b was seen");
    assert_eq!(who(2000), Some(("web-b".into(), Confidence::Observed)));
    assert_eq!(who(2460), None);
    assert_eq!(who(3500), Some(("web-c".into(), Confidence::Extrapolated)));
    assert_eq!(who(-5), None, "before anything was seen");
    assert_eq!(h.intervals(ip).len(), 3);
    assert_eq!(h.of_pod("shop", "web-b").len(), 1);
    let a = h.lookup(ip, 2000 * S).unwrap();
    assert_eq!(a.interval.pod.node.as_deref(), Some("node-1"));
    assert_eq!(a.interval.ended_ns, Some(2450 * S));
}

#[test]
fn observations_out_of_order_and_host_network_pods() {
    let mut h = IpHistory::new(Options::default());
    h.observe(&pod("web-b", "b", "10.0.0.9"), 500 * S);
    h.observe(&pod("web-a", "a", "10.0.0.9"), 100 * S);
    h.observe(&pod("web-a", "a", "10.0.0.9"), 50 * S);
    assert_eq!(h.lookup("10.0.0.9", 60 * S).unwrap().interval.pod.name, "web-a");
    assert_eq!(h.lookup("10.0.0.9", 501 * S).unwrap().interval.pod.name, "web-b");
    // a hostNetwork pod's IP is the node's: never attributed to the pod
    let mut node_pod = pod("kube-proxy-x", "k", "192.168.1.10");
    node_pod.host_network = true;
    h.observe(&node_pod, 10 * S);
    assert!(h.lookup("192.168.1.10", 10 * S).is_none());
}

#[test]
fn memory_is_bounded_oldest_first() {
    let mut h = IpHistory::new(Options { max_intervals: 100 });
    for i in 0..250 {
        h.observe(&pod(&format!("p{i}"), &format!("u{i}"), &format!("10.1.{}.{}", i / 250, i % 250)), i * S);
    }
    assert_eq!(h.len(), 100);
    assert_eq!(h.evicted, 150);
    assert!(h.lookup("10.1.0.0", 0).is_none());
    assert_eq!(h.lookup("10.1.0.249", 249 * S).unwrap().interval.pod.name, "p249");
}

#[test]
fn pods_are_read_from_audit_event_bodies() {
    let ev = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/pods/web-a/status","verb":"patch","user":{"username":"system:node:node-1"},"objectRef":{"resource":"pods","namespace":"shop","name":"web-a","subresource":"status","apiVersion":"v1"},"responseStatus":{"code":200},"responseObject":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-a","namespace":"shop","uid":"a","labels":{"app":"web"},"ownerReferences":[{"kind":"ReplicaSet","name":"web-7d9f8b6c5d","controller":true}]},"spec":{"nodeName":"node-1","serviceAccountName":"web"},"status":{"podIP":"10.244.1.7","podIPs":[{"ip":"10.244.1.7"},{"ip":"fd00::7"}]}},"requestReceivedTimestamp":"2026-11-20T09:00:00.000000Z","stageTimestamp":"2026-11-20T09:00:00.000000Z"}"#;
    let e = kustody_model::Event::parse(ev).unwrap();
    let seen = extract::seen(&e);
    assert_eq!(seen.pods.len(), 1);
    let p = &seen.pods[0];
    assert_eq!((p.name.as_str(), p.uid.as_str(), p.node.as_deref()), ("web-a", "a", Some("node-1")));
    assert_eq!(p.ips, ["10.244.1.7", "fd00::7"]);
    assert_eq!(p.owner.as_deref(), Some("ReplicaSet/web-7d9f8b6c5d"));
    assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
    let del = ev.replace(r#""verb":"patch""#, r#""verb":"delete""#).replace(r#","subresource":"status""#, "");
    let e = kustody_model::Event::parse(&del).unwrap();
    assert_eq!(extract::seen(&e).deleted, [("shop".into(), "web-a".into(), Some("a".into()))]);
    // a pod that finished no longer holds its IP; a dry run stored nothing; a client's own
    // request body is not believed
    let done = ev.replace(r#""podIP":"10.244.1.7","#, r#""phase":"Succeeded","podIP":"10.244.1.7","#);
    assert!(extract::seen(&kustody_model::Event::parse(&done).unwrap()).pods.is_empty());
    let dry = ev.replace("/web-a/status", "/web-a/status?dryRun=All");
    assert!(extract::seen(&kustody_model::Event::parse(&dry).unwrap()).pods.is_empty());
    let forged = ev
        .replace(r#""responseObject""#, r#""requestObject""#)
        .replace("system:node:node-1", "mallory")
        .replace(r#","subresource":"status""#, "");
    assert!(extract::seen(&kustody_model::Event::parse(&forged).unwrap()).pods.is_empty());
    let kubelet_request = ev.replace(r#""responseObject""#, r#""requestObject""#);
    assert_eq!(extract::seen(&kustody_model::Event::parse(&kubelet_request).unwrap()).pods.len(), 1);
    // a refused request shows nothing
    let refused = ev.replace(r#""code":200"#, r#""code":403"#);
    assert!(extract::seen(&kustody_model::Event::parse(&refused).unwrap()).pods.is_empty());
}

#[test]
fn the_recorded_apiserver_audit_log_names_its_pods_ips() {
    let Some(shared) = shared_dir() else { return };
    let text = std::fs::read_to_string(shared.join("fixtures/kube-apiserver/audit.jsonl")).unwrap();
    let mut h = IpHistory::new(Options::default());
    for line in text.lines() {
        let Ok(e) = kustody_model::Event::parse(line) else { continue };
        h.learn(&e);
    }
    assert!(!h.is_empty(), "the real apiserver's log shows pods with IPs");
    assert!(!h.of_pod("fixture-rec", "shell").is_empty());
}

fn shared_dir() -> Option<std::path::PathBuf> {
    kustody_testkit::shared("fixtures/kube-apiserver/audit.jsonl")
}

#[test]
fn changes_are_taken_once_and_restored_ones_are_not_changes() {
    let mut h = IpHistory::new(Options::default());
    h.observe(&pod("web-1", "u1", "10.0.0.9"), 10);
    h.observe(&pod("web-1", "u1", "10.0.0.9"), 20);
    let c = h.take_changed();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].first_ns, c[0].last_ns), (10, 20));
    assert!(h.take_changed().is_empty());
    h.deleted("shop", "web-1", Some("u1"), 30);
    assert_eq!(h.take_changed()[0].ended_ns, Some(30));

    let mut r = IpHistory::new(Options::default());
    r.restore(c[0].clone());
    assert!(r.take_changed().is_empty());
    assert_eq!(r.lookup("10.0.0.9", 15).unwrap().interval.pod.name, "web-1");
    assert_eq!(r.intervals("10.0.0.9")[0].last_ns, 20);
}

#[test]
fn a_relist_closes_pods_deleted_while_no_one_watched() {
    let mut h = IpHistory::new(Options::default());
    h.observe(&pod("web-1", "u1", "10.0.0.1"), 10);
    h.observe(&pod("web-2", "u2", "10.0.0.2"), 10);
    let present: std::collections::HashSet<String> = ["u2".to_owned()].into();
    assert_eq!(h.close_missing(&present, 50), 1);
    assert!(h.lookup("10.0.0.1", 60).is_none(), "gone after the relist");
    assert_eq!(h.lookup("10.0.0.1", 40).unwrap().interval.pod.name, "web-1");
    assert!(h.lookup("10.0.0.2", 60).is_some());
}

#[test]
fn containers_name_their_pod_by_falco_short_id() {
    let mut h = IpHistory::new(Options::default());
    let mut p = pod("db-0", "u9", "10.0.0.5");
    p.containers = vec!["0123456789abcdef0123456789abcdef".into()];
    h.observe(&p, 10);
    assert_eq!(h.container("0123456789ab").map(|c| c.1.as_str()), Some("db-0"));
    assert_eq!(h.container("containerd://0123456789abcdef0123").map(|c| c.1.as_str()), Some("db-0"));
    assert!(h.container("ffffffffffff").is_none());
    assert!(h.container("short").is_none());
}
