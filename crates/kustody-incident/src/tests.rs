#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::render::{self, Context};

const S: i64 = 1_000_000_000;

fn finding(id: i64, rule: &str, p: Priority, t: i64) -> FindingInput {
    FindingInput {
        finding_id: id,
        rule: rule.into(),
        priority: Some(p),
        events: 1,
        first_ns: Some(t),
        last_ns: Some(t),
        user: Some("system:serviceaccount:default:web".into()),
        namespace: Some("default".into()),
        resource: Some("secrets".into()),
        name: Some("db-password".into()),
        verb: Some("get".into()),
        source_ip: Some("10.244.1.7".into()),
        output: format!("{rule} fired"),
        audit_ids: vec![format!("audit-{id}")],
        acting_pod: Some("default/web-7d9f8b6c5d-x2k4p".into()),
        ..Default::default()
    }
}

#[test]
fn one_identity_in_two_clusters_is_two_incidents_each_with_its_cluster() {
    // a detector of several clusters (its book has no cluster of its own)
    let mut b = Book::new(Options::default());
    let mut eu = finding(1, "Secret Read", Priority::Warning, 100 * S);
    eu.cluster = Some("eu".into());
    let mut us = finding(2, "Secret Read", Priority::Warning, 101 * S);
    us.cluster = Some("us".into());
    let (ce, cu) = (b.observe(&eu), b.observe(&us));
    assert!(ce.opened && cu.opened);
    assert_ne!(ce.key, cu.key);
    assert_eq!(b.get(&ce.key).unwrap().cluster.as_deref(), Some("eu"));
    assert_eq!(b.get(&cu.key).unwrap().cluster.as_deref(), Some("us"));
    let mut eu2 = finding(3, "Exec Into Pod", Priority::Notice, 102 * S);
    eu2.cluster = Some("eu".into());
    assert!(!b.observe(&eu2).opened, "the same cluster's next finding joins its incident");
    // a single-cluster server: findings of its own cluster keep the keys they always had
    let mut own = Book::new(Options { cluster: Some("eu".into()), ..Default::default() });
    let plain = own.observe(&finding(4, "Secret Read", Priority::Warning, 100 * S));
    let mut tagged = finding(5, "Exec Into Pod", Priority::Notice, 101 * S);
    tagged.cluster = Some("eu".into());
    let c = own.observe(&tagged);
    assert_eq!((c.opened, &c.key), (false, &plain.key));
    assert_eq!(own.get(&c.key).unwrap().cluster.as_deref(), Some("eu"));
}

#[test]
fn one_identity_and_workload_within_the_window_is_one_incident() {
    let mut b = Book::new(Options::default());
    let c1 = b.observe(&finding(1, "Secret Read", Priority::Warning, 100 * S));
    assert!(c1.opened);
    let c2 = b.observe(&finding(2, "Exec Into Pod", Priority::Notice, 200 * S));
    assert!(!c2.opened);
    assert_eq!(c1.key, c2.key);
    // another pod of the same Deployment acts: same workload, same incident
    let mut f3 = finding(3, "Secrets Listed", Priority::Warning, 300 * S);
    f3.acting_pod = Some("default/web-7d9f8b6c5d-qqqqq".into());
    assert!(!b.observe(&f3).opened);
    let inc = b.get(&c1.key).unwrap();
    assert_eq!(inc.steps.len(), 3);
    assert_eq!(inc.pods.len(), 2);
    assert_eq!(inc.workload.as_ref().unwrap().name, "web");
    // another identity: another incident
    let mut f4 = finding(4, "Secret Read", Priority::Warning, 300 * S);
    f4.user = Some("alice".into());
    f4.acting_pod = None;
    assert!(b.observe(&f4).opened);
    // the same identity from a different workload: another incident
    let mut f5 = finding(5, "Secret Read", Priority::Warning, 300 * S);
    f5.acting_pod = Some("default/other-0".into());
    assert!(b.observe(&f5).opened);
    assert_eq!(b.len(), 3);
}

#[test]
fn a_finding_after_the_window_or_a_resolution_opens_a_new_incident() {
    let mut b = Book::new(Options { window_ns: 600 * S, ..Default::default() });
    let c = b.observe(&finding(1, "A", Priority::Warning, 0));
    assert!(b.observe(&finding(2, "B", Priority::Warning, 500 * S)).opened.eq(&false));
    // 600 s after the last activity (500 s) is still inside
    assert!(!b.observe(&finding(3, "C", Priority::Warning, 1100 * S)).opened);
    assert!(b.observe(&finding(4, "D", Priority::Warning, 1701 * S)).opened);
    b.get_mut(&c.key).unwrap().status = Status::Resolved;
    // an update of a finding the resolved incident holds stays in it
    assert!(!b.observe(&finding(4, "D", Priority::Warning, 1701 * S)).opened);
    assert_eq!(b.get(&c.key).unwrap().status, Status::Resolved);
    assert!(b.observe(&finding(5, "E", Priority::Warning, 1702 * S)).opened);
    // an update of a finding already in the incident never splits it
    let c6 = b.observe(&finding(5, "E", Priority::Warning, 1702 * S));
    assert!(!c6.opened);
    assert_eq!(b.get(&c6.key).unwrap().steps.len(), 1);
}

#[test]
fn correlation_and_agreeing_rules_promote_severity() {
    let mut b = Book::new(Options::default());
    let c = b.observe(&finding(1, "A", Priority::Warning, 10 * S));
    assert_eq!(b.get(&c.key).unwrap().severity, Priority::Warning);
    b.observe(&finding(2, "B", Priority::Warning, 11 * S));
    assert_eq!(b.get(&c.key).unwrap().severity, Priority::Warning);
    let c3 = b.observe(&finding(3, "C", Priority::Notice, 12 * S));
    assert_eq!(c3.raised_from, None, "a NOTICE rule is not a third loud signal");
    let c4 = b.observe(&finding(4, "D", Priority::Warning, 13 * S));
    assert_eq!(c4.raised_from, Some(Priority::Warning));
    let inc = b.get(&c.key).unwrap();
    assert_eq!(inc.severity, Priority::Error);
    assert!(inc.promoted.as_deref().unwrap().contains("3 different rules"));

    let mut b = Book::new(Options::default());
    let mut chain = finding(9, "Attack Chain", Priority::Critical, 20 * S);
    chain.correlation = true;
    let c = b.observe(&chain);
    assert_eq!(b.get(&c.key).unwrap().severity, Priority::Alert);
    // promotion never reaches EMERGENCY
    let mut e = finding(10, "Alert rule", Priority::Alert, 21 * S);
    e.correlation = true;
    b.observe(&e);
    assert_eq!(b.get(&c.key).unwrap().severity, Priority::Alert);
}

#[test]
fn steps_are_kept_in_time_order_and_bounded() {
    let mut b = Book::new(Options { max_steps: 3, max_audit_ids: 2, ..Default::default() });
    let c = b.observe(&finding(1, "late", Priority::Warning, 50 * S));
    b.observe(&finding(2, "early", Priority::Warning, 10 * S));
    b.observe(&finding(3, "middle", Priority::Warning, 30 * S));
    b.observe(&finding(4, "dropped", Priority::Warning, 60 * S));
    let inc = b.get(&c.key).unwrap();
    let rules: Vec<&str> = inc.steps.iter().map(|s| s.rule.as_str()).collect();
    assert_eq!(rules, ["early", "middle", "late"]);
    assert_eq!(inc.steps_dropped, 1);
    assert_eq!(inc.audit_ids.len(), 2);
    assert_eq!(inc.first_ns, Some(10 * S));
    assert_eq!(inc.last_ns, Some(60 * S));
}

#[test]
fn memory_is_bounded_and_idle_incidents_expire() {
    let mut b = Book::new(Options { max_open: 2, window_ns: 100 * S, ..Default::default() });
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        let mut f = finding(i as i64, "R", Priority::Warning, (i as i64) * S);
        f.user = Some((*u).into());
        b.observe(&f);
    }
    assert_eq!(b.len(), 2);
    assert_eq!(b.evicted, 1);
    assert!(b.get("a|default/deployment/web").is_none());
    assert_eq!(b.expire(101 * S + S / 2), 1);
    assert_eq!(b.len(), 1);
}

#[test]
fn the_summary_says_what_who_where_when_evidence_and_next() {
    let mut b = Book::new(Options { cluster: Some("prod-eu".into()), ..Default::default() });
    let c = b.observe(&finding(1, "Secret Read", Priority::Warning, 1_700_000_000 * S));
    let mut ex = finding(2, "Exec Into Pod", Priority::Critical, 1_700_000_100 * S);
    ex.resource = Some("pods".into());
    ex.subresource = Some("exec".into());
    ex.name = Some("db-0".into());
    ex.command = Some("sh -c id".into());
    b.observe(&ex);
    let inc = b.get_mut(&c.key).unwrap();
    inc.id = Some(42);
    let inc = inc.clone();
    let ctx = Context { data_dir: Some("/var/lib/kustody".into()), url: None };
    let title = render::title(&inc);
    assert_eq!(
        title,
        "CRITICAL incident #42: Exec Into Pod (+1 more) — system:serviceaccount:default:web from deployment/web in default"
    );
    let s = render::summary(&inc, &ctx);
    for want in [
        "Secret Read fired",
        "[command: sh -c id]",
        "Who: system:serviceaccount:default:web",
        "from 10.244.1.7",
        "acting from pod(s) default/web-7d9f8b6c5d-x2k4p",
        "Where: cluster prod-eu, namespace(s) default, workload deployment/web in default (from the pod name)",
        "Evidence (auditIDs): audit-1, audit-2",
        "kustody timeline --store /var/lib/kustody --sa default/web --since 2023-11-14T22:08:20",
        "kustody collect -n default web-7d9f8b6c5d-x2k4p --case incident-42",
        "kustody quarantine -n default web-7d9f8b6c5d-x2k4p --dry-run --reason 'incident 42: Secret Read'",
        "reached into pod(s) default/db-0",
        "kustody collect -n default db-0 --case incident-42",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    // steps in time order
    assert!(s.find("Secret Read fired").unwrap() < s.find("Exec Into Pod fired").unwrap());
    let j = render::to_json(&inc, &ctx);
    assert_eq!(j["severity"], "Critical");
    assert_eq!(j["steps"][1]["target"], "default/pods/exec/db-0");
    assert_eq!(j["where"]["workload"]["kind"], "deployment");
    assert!(j["next"].as_array().unwrap().len() >= 3);
}

#[test]
fn shell_quoting_survives_hostile_names() {
    assert_eq!(render::shell_quote("web-1"), "web-1");
    assert_eq!(render::shell_quote("a b"), "'a b'");
    assert_eq!(render::shell_quote("x';rm -rf /;'"), r"'x'\'';rm -rf /;'\'''");
    assert_eq!(render::shell_quote("$(id)"), "'$(id)'");
    assert_eq!(render::shell_quote(""), "''");
}

#[test]
fn an_incident_round_trips_through_json_for_restore() {
    let mut b = Book::new(Options::default());
    let c = b.observe(&finding(1, "A", Priority::Warning, 10 * S));
    let inc = b.get(&c.key).unwrap().clone();
    let text = serde_json::to_string(&inc).unwrap();
    let back: Incident = serde_json::from_str(&text).unwrap();
    assert_eq!(back, inc);
    let mut b2 = Book::new(Options::default());
    b2.restore(back);
    assert!(!b2.observe(&finding(2, "B", Priority::Warning, 20 * S)).opened);
}

#[test]
fn pods_behind_source_ips_and_a_token_used_outside_its_pod() {
    let mut b = Book::new(Options::default());
    let mut f = finding(1, "Secret Read", Priority::Warning, 10 * S);
    f.source_pod = Some(IpOwner {
        pod: "default/web-7d9f8b6c5d-x2k4p".into(),
        node: Some("node-1".into()),
        owner: None,
        observed: true,
    });
    let c = b.observe(&f);
    assert!(b.get(&c.key).unwrap().stolen_token.is_empty(), "used from its own pod");
    let mut g = finding(2, "Secret Read", Priority::Warning, 20 * S);
    g.source_ip = Some("10.244.9.9".into());
    g.source_pod =
        Some(IpOwner { pod: "tools/debug-0".into(), node: Some("node-2".into()), owner: None, observed: true });
    b.observe(&g);
    let mut h = finding(3, "Secret Read", Priority::Warning, 30 * S);
    h.source_ip = Some("203.0.113.5".into());
    h.acting_pod_ip = Some("10.244.1.7".into());
    b.observe(&h);
    let inc = b.get(&c.key).unwrap();
    assert_eq!(inc.nodes.iter().collect::<Vec<_>>(), ["node-1", "node-2"]);
    assert_eq!(
        inc.stolen_token,
        [
            "the token of pod default/web-7d9f8b6c5d-x2k4p was used from 10.244.9.9, pod tools/debug-0's",
            "the token of pod default/web-7d9f8b6c5d-x2k4p was used from 203.0.113.5, not its pod's (10.244.1.7)",
        ]
    );
    let s = render::summary(inc, &Context::default());
    assert!(s.contains("10.244.1.7 (pod default/web-7d9f8b6c5d-x2k4p on node-1)"), "{s}");
    assert!(s.contains("10.244.9.9 (pod tools/debug-0 on node-2)"), "{s}");
    assert!(s.contains("STOLEN TOKEN? the token of pod"), "{s}");
    assert!(s.contains("node(s) node-1, node-2"), "{s}");
}
