//! Quarantine and release planning without a cluster: which labels go, which policies are
//! created or changed, the order of requests, refusals, and that applying a plan and planning
//! again gives nothing to do.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use kustody_contain::plan::{
    self, Actor, Honeypot, Options, ReleaseOptions, ReleaseSnapshot, Snapshot, Step, Workload,
};
use serde_json::{json, Value};

fn actor() -> Actor {
    Actor { username: "alice".into(), ..Actor::default() }
}

fn pod(labels: Value, extra: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-pod", "resourceVersion": "10", "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u-rs", "controller": true}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    json_patch::merge(&mut p, &extra);
    p
}

fn svc(name: &str, sel: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop"}, "spec": {"selector": sel}})
}

fn np(name: &str, sel: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop", "resourceVersion": "5"}, "spec": {"podSelector": sel, "policyTypes": ["Ingress"]}})
}

fn rs(sel: Value) -> Workload {
    Workload {
        kind: "ReplicaSet".into(),
        name: "web-abc".into(),
        uid: "u-rs".into(),
        selector: Some(serde_json::from_value(sel).unwrap()),
        replicas: Some(2),
        owner: Some("Deployment/web".into()),
    }
}

fn snapshot(pod: Value, services: Vec<Value>, policies: Vec<Value>, workloads: Vec<Workload>) -> Snapshot {
    Snapshot {
        pod: serde_json::from_value(pod).unwrap(),
        services: services.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect(),
        policies: policies.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect(),
        workloads,
        ..Snapshot::default()
    }
}

/// Apply the plan's requests to the snapshot the way the API server would.
fn apply(snap: &mut Snapshot, p: &plan::Plan) {
    for r in &p.requests {
        let body = r.body.clone().unwrap_or(Value::Null);
        if r.path.contains("/pods/") {
            let mut v = serde_json::to_value(&snap.pod).unwrap();
            json_patch::merge(&mut v, &body);
            v["metadata"]["resourceVersion"] = json!("11");
            snap.pod = serde_json::from_value(v).unwrap();
        } else if r.method == "POST" {
            snap.policies.push(serde_json::from_value(body).unwrap());
        } else if r.method == "PATCH" && r.path.contains("networkpolicies") {
            let name = r.path.rsplit('/').next().unwrap();
            let p = snap.policies.iter_mut().find(|p| p.metadata.name.as_deref() == Some(name)).unwrap();
            let mut v = serde_json::to_value(&*p).unwrap();
            json_patch::merge(&mut v, &body);
            *p = serde_json::from_value(v).unwrap();
        }
    }
}

#[test]
fn deployment_pod_minimal_relabel_release_from_controller_and_noop_after() {
    let mut snap = snapshot(
        pod(json!({"app": "web", "pod-template-hash": "abc", "team": "x"}), json!({})),
        vec![svc("web", json!({"app": "web"}))],
        vec![np("allow-front", json!({"matchLabels": {"team": "x"}}))],
        vec![rs(json!({"matchLabels": {"app": "web", "pod-template-hash": "abc"}}))],
    );
    let opts = Options { reason: Some("miner".into()), ..Options::default() };
    let p = plan::quarantine(&snap, &opts, &actor(), "T0");
    assert!(p.refusals.is_empty() && p.errors.is_empty());
    let steps: Vec<Step> = p.requests.iter().map(|r| r.step).collect();
    assert_eq!(steps, [Step::Policy, Step::Pod], "policy first, then the pod");
    assert_eq!(p.requests[0].method, "POST");
    let body = p.requests[1].body.as_ref().unwrap();
    assert_eq!(body["metadata"]["labels"], json!({"app": null, "team": null, "kustody.io/quarantined": "true"}));
    assert_eq!(body["metadata"]["ownerReferences"], Value::Null, "the controller reference goes");
    assert!(body["metadata"].as_object().unwrap().contains_key("ownerReferences"));
    assert_eq!(body["metadata"]["resourceVersion"], "10", "optimistic concurrency");
    assert_eq!(p.record.removed_labels, ["app", "team"]);
    assert_eq!(p.record.services, ["web"]);
    assert_eq!(p.record.network_policies, ["allow-front"]);
    assert_eq!(p.record.controllers, ["Deployment/web", "ReplicaSet/web-abc"]);
    assert_eq!(p.record.by, "alice");
    assert_eq!(p.owners.len(), 1);
    assert!(p.final_labels.contains_key("pod-template-hash"), "labels nothing selects by are kept for the analyst");

    apply(&mut snap, &p);
    let again = plan::quarantine(&snap, &opts, &actor(), "T1");
    assert!(again.is_noop(), "{:#?}", again.requests);
    assert_eq!(again.existing.as_ref().unwrap().at, "T0");
    assert_eq!(again.owners.len(), 1, "the former owner is still known for the replacement check");

    // a changed mode (DNS now allowed) is an update, not a new quarantine
    let dns = plan::quarantine(&snap, &Options { allow_dns: true, ..opts }, &actor(), "T2");
    assert_eq!(dns.requests.len(), 2, "{:#?}", dns.requests);
    assert_eq!(dns.record.at, "T0");
    assert_eq!(dns.record.updated_at.as_deref(), Some("T2"));
}

#[test]
fn selectors_no_label_removal_escapes_are_excluded_and_cascades_followed() {
    let snap = snapshot(
        pod(json!({"app": "web", "role": "x"}), json!({"metadata": {"ownerReferences": null}})),
        vec![],
        vec![
            np("everything", json!({})),
            // removing `app` (for by-app) makes this one match: followed until stable
            np(
                "no-app",
                json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}, {"key": "role", "operator": "In", "values": ["x"]}]}),
            ),
            np("by-app", json!({"matchLabels": {"app": "web"}})),
            np("not-db", json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]})),
        ],
        vec![],
    );
    let p = plan::quarantine(&snap, &Options::default(), &actor(), "T0");
    let excluded: Vec<&str> =
        p.requests.iter().filter(|r| r.step == Step::Exclusion).map(|r| r.path.rsplit('/').next().unwrap()).collect();
    assert_eq!(excluded, ["everything", "not-db"]);
    assert_eq!(p.record.removed_labels, ["app", "role"], "role removed once no-app matched");
    let ex = p.requests.iter().find(|r| r.path.ends_with("/not-db")).unwrap().body.clone().unwrap();
    assert_eq!(
        ex["spec"]["podSelector"]["matchExpressions"],
        json!([{"key": "app", "operator": "NotIn", "values": ["db"]}, {"key": "kustody.io/quarantined", "operator": "DoesNotExist"}])
    );
    assert_eq!(ex["metadata"]["resourceVersion"], "5");
    let first_pod = p.requests.iter().position(|r| r.step == Step::Pod).unwrap();
    assert!(p.requests.iter().rposition(|r| r.step == Step::Exclusion).unwrap() < first_pod);
}

#[test]
fn refusals_name_the_reason() {
    let cases = [
        (json!({"metadata": {"namespace": "kube-system"}}), "kube-system"),
        (json!({"spec": {"hostNetwork": true}}), "hostNetwork"),
        (json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}}), "static (mirror) pod"),
        (json!({"metadata": {"labels": {"component": "etcd"}}}), "control-plane"),
    ];
    for (extra, want) in cases {
        let snap = snapshot(pod(json!({"app": "web"}), extra), vec![], vec![], vec![]);
        let p = plan::quarantine(&snap, &Options::default(), &actor(), "T0");
        assert!(p.refusals.iter().any(|r| r.contains(want)), "{want}: {:?}", p.refusals);
    }
    let snap = snapshot(pod(json!({"app": "web"}), json!({})), vec![], vec![], vec![]);
    assert!(plan::quarantine(&snap, &Options::default(), &actor(), "T0").refusals.is_empty());
}

#[test]
fn honeypot_dns_cordon_and_release_order() {
    let mut snap =
        snapshot(pod(json!({"app": "web"}), json!({})), vec![svc("web", json!({"app": "web"}))], vec![], vec![]);
    snap.honeypot_namespace_exists = true;
    snap.honeypot_pods = 1;
    snap.honeypot_pod_labels = vec![[("app".to_owned(), "honeypot".to_owned())].into()];
    // the honeypot is already isolated for ingress by its own policy: kustody adds one more peer
    let mut own = np("trap-frontends", json!({"matchLabels": {"app": "honeypot"}}));
    own["metadata"]["namespace"] = json!("trap");
    snap.honeypot_policies = vec![serde_json::from_value(own).unwrap()];
    snap.node = Some(serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {}})).unwrap());
    let h = Honeypot::parse("trap/app=honeypot").unwrap();
    assert!(Honeypot::parse("Bad NS").is_err());
    assert!(Honeypot::parse("trap/app").is_err());
    let opts = Options { honeypot: Some(h.clone()), allow_dns: true, cordon: true, ..Options::default() };
    let p = plan::quarantine(&snap, &opts, &actor(), "T0");
    let paths: Vec<String> = p.requests.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        paths,
        [
            "POST /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies".to_owned(),
            "POST /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies".into(),
            "POST /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies".into(),
            "POST /apis/networking.k8s.io/v1/namespaces/trap/networkpolicies".into(),
            "PATCH /api/v1/namespaces/shop/pods/web-1".into(),
            "PATCH /api/v1/nodes/n1".into(),
        ]
    );
    assert_eq!(p.requests[5].access.to_string(), "patch nodes \"n1\" (cluster scope)");
    assert_eq!(p.final_labels.get(plan::LABEL_HONEYPOT), Some(&h.id()));
    assert!(p.record.cordoned && !p.record.node_was_unschedulable);

    // release of the last quarantined pod: the pod first, then every policy, then the node
    apply(&mut snap, &p);
    let mut node: Value = serde_json::to_value(snap.node.as_ref().unwrap()).unwrap();
    node["spec"]["unschedulable"] = json!(true);
    let in_ns = |ns: &str| -> Vec<_> {
        snap.policies.iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns)).cloned().collect()
    };
    let rs = ReleaseSnapshot {
        pod: snap.pod.clone(),
        policies: in_ns("shop"),
        honeypot_policies: in_ns("trap"),
        node: Some(serde_json::from_value(node).unwrap()),
        other_quarantined: vec![],
        ..ReleaseSnapshot::default()
    };
    let r = plan::release(&rs, &ReleaseOptions { restore_labels: true, uncordon: true, reason: None }, &actor(), "T2");
    let seq: Vec<(String, Step)> = r.requests.iter().map(|q| (q.method.clone(), q.step)).collect();
    assert_eq!(seq[0], ("PATCH".into(), Step::Pod));
    assert_eq!(seq.iter().filter(|(m, _)| m == "DELETE").count(), 4, "{:#?}", r.requests);
    assert_eq!(seq.last().unwrap().1, Step::Node);
    let labels = &r.requests[0].body.as_ref().unwrap()["metadata"]["labels"];
    assert_eq!(labels["app"], "web", "restored");
    assert_eq!(labels[plan::LABEL], Value::Null);

    // another quarantined pod with the same mode still needs every policy
    let mut other = snap.pod.clone();
    other.metadata.name = Some("web-2".into());
    other.metadata.uid = Some("u-2".into());
    let r = plan::release(
        &ReleaseSnapshot { other_quarantined: vec![other], ..rs },
        &ReleaseOptions::default(),
        &actor(),
        "T2",
    );
    assert_eq!(r.requests.len(), 1, "{:#?}", r.requests);
}

/// A honeypot that accepts everyone gets no policy on its side (one would cut its other clients
/// off); one kustody created earlier is removed; the plan says which.
#[test]
fn an_open_honeypot_keeps_its_other_clients() {
    let mut snap = snapshot(pod(json!({"app": "web"}), json!({})), vec![], vec![], vec![]);
    snap.honeypot_namespace_exists = true;
    snap.honeypot_pods = 1;
    snap.honeypot_pod_labels = vec![[("app".to_owned(), "honeypot".to_owned())].into()];
    let h = Honeypot::parse("trap/app=honeypot").unwrap();
    let opts = Options { honeypot: Some(h.clone()), ..Options::default() };
    let p = plan::quarantine(&snap, &opts, &actor(), "T0");
    assert!(!p.requests.iter().any(|r| r.path.contains("/namespaces/trap/")), "{:#?}", p.requests);
    let said = p.honeypot_ingress.clone().unwrap();
    assert!(said.contains("creates no policy in namespace trap") && said.contains("cut every other client"), "{said}");
    // an ingress policy from an earlier kustody run is removed again
    let ours = json!({"metadata": {"name": plan::honeypot_ingress_name("shop", &h.id()), "namespace": "trap",
        "labels": {"app.kubernetes.io/managed-by": "kustody"}},
        "spec": {"podSelector": {"matchLabels": {"app": "honeypot"}}, "policyTypes": ["Ingress"]}});
    snap.honeypot_policies = vec![serde_json::from_value(ours).unwrap()];
    let p = plan::quarantine(&snap, &opts, &actor(), "T0");
    let del: Vec<&str> = p.requests.iter().filter(|r| r.method == "DELETE").map(|r| r.path.as_str()).collect();
    assert_eq!(del.len(), 1, "{:#?}", p.requests);
    assert!(del[0].contains("/namespaces/trap/networkpolicies/kustody-honeypot-from-shop-"), "{del:?}");
    // an egress-only policy there does not isolate ingress: still open
    let egress_only = json!({"metadata": {"name": "e", "namespace": "trap"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}});
    snap.honeypot_policies = vec![serde_json::from_value(egress_only).unwrap()];
    let p = plan::quarantine(&snap, &opts, &actor(), "T0");
    assert!(!p.requests.iter().any(|r| r.path.contains("/namespaces/trap/")), "{:#?}", p.requests);
}

/// Quarantining again with other options replaces the mode, and the plan says what is lost.
#[test]
fn a_different_mode_on_a_quarantined_pod_is_said() {
    let mut snap = snapshot(pod(json!({"app": "web"}), json!({})), vec![], vec![], vec![]);
    let p = plan::quarantine(&snap, &Options { allow_dns: true, ..Options::default() }, &actor(), "T0");
    apply(&mut snap, &p);
    let again = plan::quarantine(&snap, &Options { allow_dns: true, ..Options::default() }, &actor(), "T1");
    assert!(again.mode_change.is_none() && again.is_noop(), "{:#?}", again.requests);
    let p = plan::quarantine(&snap, &Options::default(), &actor(), "T1");
    let c = p.mode_change.clone().unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("deny-all+dns", "deny-all"));
    assert_eq!(c.dropped, ["DNS egress"]);
    assert!(p.warnings.iter().any(|w| w.contains("the pod loses DNS egress")), "{:?}", p.warnings);
    assert_eq!(p.final_labels.get(plan::LABEL_DNS), None);
}

/// What happens after release: no controller selects the pod (it stays, unowned), or with
/// restored labels its ReplicaSet adopts it.
#[test]
fn release_says_what_happens_next() {
    let mut snap = snapshot(
        pod(json!({"app": "web", "pod-template-hash": "abc"}), json!({})),
        vec![],
        vec![],
        vec![rs(json!({"matchLabels": {"app": "web", "pod-template-hash": "abc"}}))],
    );
    let p = plan::quarantine(&snap, &Options::default(), &actor(), "T0");
    apply(&mut snap, &p);
    let mut replacement: Value = pod(json!({"app": "web", "pod-template-hash": "abc"}), json!({}));
    replacement["metadata"]["name"] = json!("web-2");
    replacement["metadata"]["uid"] = json!("u-2");
    let rsnap = ReleaseSnapshot {
        pod: snap.pod.clone(),
        workloads: snap.workloads.clone(),
        pods: vec![snap.pod.clone(), serde_json::from_value(replacement).unwrap()],
        ..ReleaseSnapshot::default()
    };
    let r = plan::release(&rsnap, &ReleaseOptions::default(), &actor(), "T1");
    assert_eq!(r.next, plan::Next::StaysUnowned);
    assert!(r.next.describe("web-1").contains("keeps running, unowned"));
    let r = plan::release(&rsnap, &ReleaseOptions { restore_labels: true, ..Default::default() }, &actor(), "T1");
    match &r.next {
        plan::Next::Adopted { controllers, controller_kind, owned_before, replicas, .. } => {
            assert_eq!(controllers[0], "ReplicaSet/web-abc");
            assert_eq!(controller_kind, "ReplicaSet");
            assert_eq!(owned_before, &["web-2"]);
            assert_eq!(*replicas, Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert!(r.next.describe("web-1").contains("deletes a surplus replica"), "{}", r.next.describe("web-1"));
}
