#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use kustody_incident::{Book, FindingInput, Options};

const FIELDS: &[&str] = &["finding.namespace", "finding.tags", "incident.namespace"];
const S: i64 = 1_000_000_000;

const FILE: &str = "playbooks:
  - name: contain
    match:
      rules: [Attack Chain]
      min_priority: critical
      condition: 'incident.namespace != payments'
    dry_run: false
    exclude:
      namespaces: [kube-system, 'monitoring-*']
      identities: ['system:serviceaccount:kube-system:*']
    limits:
      per_hour: 2
      per_namespace_per_hour: 1
      pod_cooldown: 30m
    actions:
      - collect: { profile: triage, paths: ['/tmp/*'] }
      - quarantine: { allow_dns: true }
      - annotate: { key: kustody.io/incident, value: '{{incident_id}}' }
  - name: look
    match: { tags: [T1609] }
    approval: true
    target: reached
    actions:
      - label: { key: kustody.io/suspect, value: 'true' }
";

fn incident(rule: &str, p: Priority, ns: &str) -> Incident {
    let mut b = Book::new(Options::default());
    let c = b.observe(&FindingInput {
        finding_id: 1,
        rule: rule.into(),
        priority: Some(p),
        first_ns: Some(S),
        last_ns: Some(S),
        user: Some("system:serviceaccount:shop:web".into()),
        namespace: Some(ns.into()),
        resource: Some("pods".into()),
        subresource: Some("exec".into()),
        name: Some("db-0".into()),
        acting_pod: Some(format!("{ns}/web-7d9f8b6c5d-x2k4p")),
        ..Default::default()
    });
    let mut inc = b.get(&c.key).unwrap().clone();
    inc.id = Some(7);
    inc
}

fn record(ns: &str, tags: &[&str]) -> Record {
    let mut r = Record::new();
    r.insert("incident.namespace", kustody_rules::route::Value::Str(ns.into()));
    r.insert("finding.tags", kustody_rules::route::Value::List(tags.iter().map(|t| (*t).to_owned()).collect()));
    r
}

#[test]
fn a_playbooks_file_loads_with_defaults_and_matches_incidents() {
    let pbs = parse(FILE, "pb.yaml", FIELDS).unwrap();
    assert_eq!(pbs.len(), 2);
    let (contain, look) = (&pbs[0], &pbs[1]);
    assert!(!contain.dry_run && look.dry_run, "dry run is the default");
    assert_eq!(contain.limits.pod_cooldown_ns, 1800 * S);
    assert_eq!(look.limits, Limits::default());
    assert_eq!(contain.origin, "pb.yaml:2:9");
    let inc = incident("Attack Chain", Priority::Critical, "shop");
    assert!(contain.matches(&inc, &record("shop", &[])));
    assert!(!contain.matches(&inc, &record("payments", &[])), "the condition");
    assert!(
        !contain.matches(&incident("Attack Chain", Priority::Warning, "shop"), &record("shop", &[])),
        "min_priority"
    );
    assert!(!contain.matches(&incident("Other", Priority::Critical, "shop"), &record("shop", &[])), "rules");
    assert!(look.matches(&inc, &record("shop", &["k8s", "T1609"])));
    assert!(!look.matches(&inc, &record("shop", &["k8s"])));
    assert_eq!(contain.targets(&inc), ["shop/web-7d9f8b6c5d-x2k4p"]);
    assert_eq!(look.targets(&inc), ["shop/db-0"]);
    assert_eq!(
        contain.expand("incident-{{incident_id}} by {{playbook}} ({{severity}})", &inc),
        "incident-7 by contain (Critical)"
    );
}

#[test]
fn mistakes_name_the_file_line_and_key() {
    let bad = |text: &str| parse(text, "pb.yaml", FIELDS).unwrap_err().to_string();
    let e = bad(
        "playbooks:\n  - name: x\n    match: { rules: [a] }\n    actions:\n      - quarantine: { allow_dsn: true }\n",
    );
    assert!(
        e.starts_with("pb.yaml:5:23: playbooks[0].actions[0].quarantine.allow_dsn: unknown field `allow_dsn`"),
        "{e}"
    );
    let e = bad("playbooks:\n  - name: x\n    match: { rules: [a] }\n    actions: [ { delete_pod: {} } ]\n");
    assert!(e.contains("unknown variant `delete_pod`"), "{e}");
    let e = bad(
        "playbooks:\n  - name: x\n    match: { condition: 'finding.nope = 1' }\n    actions: [ { release: {} } ]\n",
    );
    assert!(e.contains("playbooks[0].match.condition: unknown field `finding.nope`"), "{e}");
    let e = bad("playbooks:\n  - name: x\n    actions: [ { release: {} } ]\n");
    assert!(e.contains("say what it matches"), "{e}");
    let e = bad("playbooks:\n  - name: x\n    match: { rules: [a] }\n    limits: { pod_cooldown: soon }\n    actions: [ { release: {} } ]\n");
    assert!(e.contains("pb.yaml:4:13: playbooks[0].limits.pod_cooldown: bad duration `soon`"), "{e}");
    let e = bad("playbooks:\n  - name: x\n    match: { rules: [a] }\n    actions: [ { label: { key: kustody.io/quarantine, value: x } } ]\n");
    assert!(e.contains("not a key a playbook may set"), "{e}");
    let e = bad("playbooks:\n  - name: x\n    match: { rules: [a] }\n    actions: [ { release: {} } ]\n  - name: x\n    match: { rules: [a] }\n    actions: [ { release: {} } ]\n");
    assert!(e.contains("unique"), "{e}");
}

#[test]
fn guardrails_exclude_rate_limit_and_cool_down() {
    let pbs = parse(FILE, "pb.yaml", FIELDS).unwrap();
    let (contain, look) = (&pbs[0], &pbs[1]);
    let mut g = Guard::new(&pbs);
    let sa = Some("system:serviceaccount:shop:web");
    let skip = |d: Decision| match d {
        Decision::Skip(why) => why,
        other => panic!("not skipped: {other:?}"),
    };
    assert!(
        skip(g.decide(contain, "kube-system", "x", sa, 0)).contains("namespace kube-system is excluded (kube-system)")
    );
    assert!(skip(g.decide(contain, "monitoring-eu", "x", sa, 0)).contains("monitoring-*"));
    assert!(skip(g.decide(contain, "shop", "x", Some("system:serviceaccount:kube-system:foo"), 0)).contains("identity"));
    assert_eq!(g.decide(contain, "shop", "a", sa, 10 * S), Decision::Run);
    // the same pod inside the cooldown
    assert!(skip(g.decide(contain, "shop", "a", sa, 20 * S)).contains("cooldown 1800 s"));
    // one per namespace per hour
    assert!(skip(g.decide(contain, "shop", "b", sa, 30 * S)).contains("in namespace shop"));
    assert_eq!(g.decide(contain, "cart", "c", sa, 40 * S), Decision::Run);
    // two per hour for the playbook
    assert!(skip(g.decide(contain, "web", "d", sa, 50 * S)).contains("acted 2 times in the last hour"));
    // an hour later the budget is back
    assert_eq!(g.decide(contain, "web", "d", sa, 3700 * S), Decision::Run);
    // another playbook has its own budget and cooldown; approval and dry-run decisions
    assert_eq!(g.decide(look, "web", "d", sa, 3701 * S), Decision::AwaitApproval);
    assert_eq!(g.decide(look, "other", "e", sa, 3700 * S), Decision::AwaitApproval);
    let mut dry = look.clone();
    dry.approval = false;
    assert_eq!(g.decide(&dry, "other2", "f", sa, 3700 * S), Decision::DryRun);
}
