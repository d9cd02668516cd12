//! The live detector: findings reported when opened, updated as repeats fold in, closed when
//! their window passes; allow-listed matches quieted; correlations found in arrival order;
//! rules replaced without losing open findings.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::sync::Arc;

use kustody_model::{Event, SourceFormat, SourceRef};
use kustody_rules::allow::AllowList;
use kustody_rules::findings::FindingOptions;
use kustody_rules::live::{Change, Detector};
use kustody_rules::{Engine, EngineOptions};

const RULES: &str = r#"
- rule: Exec
  desc: exec into a pod
  condition: ka.target.subresource = exec
  output: "exec by %ka.user.name into %ka.target.name"
  priority: WARNING
  source: k8s_audit
- rule: Secret read
  desc: secret get
  condition: ka.verb = get and ka.target.resource = secrets
  output: "secret %ka.target.name read by %ka.user.name"
  priority: NOTICE
  source: k8s_audit
- correlation: Exec then secret
  desc: d
  by: [ka.user.name]
  window: 10m
  sequence: [Exec, Secret read]
  output: "exec then secret read by %ka.user.name"
  priority: CRITICAL
"#;

const ALLOW: &str = r#"
- allow: backup operator reads secrets
  identities: [system:serviceaccount:backup:velero]
  rules: [Secret read]
"#;

fn event(id: &str, t_s: i64, user: &str, verb: &str, resource: &str, sub: Option<&str>, name: &str) -> String {
    let sub = sub.map_or(String::new(), |s| format!(r#","subresource":"{s}""#));
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/x","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.1"],"objectRef":{{"resource":"{resource}","namespace":"shop","name":"{name}"{sub}}},"responseStatus":{{"code":200}},"stageTimestamp":"2026-12-02T03:{:02}:{:02}.000000Z"}}"#,
        t_s / 60,
        t_s % 60
    )
}

fn detector() -> Detector {
    let (engine, diags) = Engine::load(&[("r.yaml".into(), RULES.into())], &EngineOptions::default());
    assert!(diags.iter().all(|d| d.severity != kustody_rules::Severity::Error), "{diags:?}");
    let (allow, diags) = AllowList::load(&[("a.yaml".into(), ALLOW.into())]);
    assert!(diags.is_empty(), "{diags:?}");
    Detector::new(
        Arc::new(engine),
        Arc::new(allow),
        FindingOptions { window_ns: 600 * 1_000_000_000, ..Default::default() },
    )
}

fn src(line: u64) -> SourceRef {
    SourceRef { file: Arc::from("store"), line, offset: 0, format: SourceFormat::Native }
}

#[test]
fn a_finding_is_reported_when_opened_updated_by_repeats_and_closed_when_its_window_passes() {
    let mut d = detector();
    let mut updates = Vec::new();
    let e1 = event("a1", 0, "mallory", "create", "pods", Some("exec"), "web-1");
    let out = d.observe(&Event::parse(&e1).unwrap(), &src(1), &mut updates);
    assert_eq!(out.matched.len(), 1);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].change, Change::Opened);
    let seq = updates[0].finding.seq;
    assert_eq!(out.matched[0].finding_seq, seq);

    updates.clear();
    let e2 = event("a2", 30, "mallory", "create", "pods", Some("exec"), "web-2");
    d.observe(&Event::parse(&e2).unwrap(), &src(2), &mut updates);
    assert_eq!(updates.len(), 1);
    assert_eq!((updates[0].change, updates[0].finding.seq, updates[0].finding.events), (Change::Updated, seq, 2));

    // an allow-listed identity's match is quieted and folds into nothing
    updates.clear();
    let quiet = event("b1", 40, "system:serviceaccount:backup:velero", "get", "secrets", None, "db");
    let out = d.observe(&Event::parse(&quiet).unwrap(), &src(3), &mut updates);
    assert!(out.matched.is_empty() && updates.is_empty());
    assert_eq!(out.quieted, vec![0]);

    // the same identity's secret read completes the correlation: its own finding
    updates.clear();
    let e3 = event("a3", 60, "mallory", "get", "secrets", None, "db");
    let out = d.observe(&Event::parse(&e3).unwrap(), &src(4), &mut updates);
    let rules: Vec<&str> = out.matched.iter().map(|m| &*m.rule).collect();
    assert_eq!(rules, vec!["Secret read", "Exec then secret"]);
    assert_eq!(updates.iter().filter(|u| u.change == Change::Opened).count(), 2);

    // 11 minutes later the clock closes all three
    updates.clear();
    d.tick(Event::parse(&e3).unwrap().time_ns().unwrap() + 700 * 1_000_000_000, &mut updates);
    assert_eq!(updates.len(), 3);
    assert!(updates.iter().all(|u| u.change == Change::Closed));
    assert_eq!(updates.iter().find(|u| u.finding.seq == seq).unwrap().finding.events, 2);
}

#[test]
fn reloaded_rules_keep_open_findings() {
    let mut d = detector();
    let mut updates = Vec::new();
    let e1 = event("a1", 0, "mallory", "create", "pods", Some("exec"), "web-1");
    d.observe(&Event::parse(&e1).unwrap(), &src(1), &mut updates);
    let (engine, _) = Engine::load(&[("r.yaml".into(), RULES.into())], &EngineOptions::default());
    d.replace_rules(Arc::new(engine), Arc::new(AllowList::default()));
    updates.clear();
    let e2 = event("a2", 10, "mallory", "create", "pods", Some("exec"), "web-1");
    d.observe(&Event::parse(&e2).unwrap(), &src(2), &mut updates);
    assert_eq!(updates[0].change, Change::Updated);
    let mut closed = Vec::new();
    d.finish(&mut closed);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].finding.events, 2);
}
