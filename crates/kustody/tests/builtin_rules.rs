//! Every built-in rule and correlation has true-positive and true-negative events beside it
//! (rules/kustody.cases.yaml; the rules that are off by default in
//! rules/kustody-optional.cases.yaml), run through both evaluators and the correlator.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

use std::collections::BTreeSet;

use kustody_rules::testing::run_cases;
use kustody_rules::{Engine, EngineOptions};

const RULES: &str = include_str!("../rules/kustody.yaml");
const CASES: &str = include_str!("../rules/kustody.cases.yaml");
const OPTIONAL: &str = include_str!("../rules/kustody-optional.cases.yaml");

fn load(extra: Option<&str>) -> Engine {
    let mut files = vec![("kustody.yaml".to_owned(), RULES.to_owned())];
    if let Some(e) = extra {
        files.push(("enable.yaml".to_owned(), e.to_owned()));
    }
    let (engine, diags) = Engine::load(&files, &EngineOptions::default());
    assert!(diags.is_empty(), "{diags:#?}");
    engine
}

#[test]
fn builtin_rules_load_cleanly_and_fire_exactly_on_their_cases() {
    let engine = load(None);
    let (n, failures) = run_cases(&engine, CASES, "kustody.cases.yaml").unwrap();
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn rules_that_are_off_by_default_fire_on_their_cases_once_enabled() {
    let enable = "- rule: kustody Image From Untrusted Registry\n  enabled: true\n  override: {enabled: replace}\n\
                  - rule: kustody Image Not Pinned by Digest\n  enabled: true\n  override: {enabled: replace}\n";
    let engine = load(Some(enable));
    let (n, failures) = run_cases(&engine, OPTIONAL, "kustody-optional.cases.yaml").unwrap();
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_rule_has_a_true_positive_and_every_rule_is_tagged_with_attack_techniques() {
    let engine = load(None);
    let cases = format!("{CASES}\n{OPTIONAL}");
    let mut names: Vec<(String, Vec<String>)> =
        engine.rules().filter(|r| !r.hidden).map(|r| (r.name.clone(), r.tags.clone())).collect();
    names.extend(engine.correlations().map(|c| (c.name.clone(), c.tags.clone())));
    let mut missing = BTreeSet::new();
    for (name, tags) in &names {
        // a true positive names the rule in some `fires:` list
        if !cases
            .lines()
            .filter(|l| l.contains("fires:") || l.trim_start().starts_with("kustody"))
            .any(|l| l.contains(name.as_str()))
        {
            missing.insert(format!("{name}: no true-positive case"));
        }
        if !tags
            .iter()
            .any(|t| t.starts_with('T') && t.get(1..5).is_some_and(|d| d.chars().all(|c| c.is_ascii_digit())))
        {
            missing.insert(format!("{name}: no ATT&CK technique tag"));
        }
    }
    assert!(names.len() >= 30, "{} rules", names.len());
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn users_extend_the_allow_lists_from_their_own_rule_file() {
    use kustody_rules::Scratch;
    let ev = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a","stage":"ResponseComplete",
        "requestURI":"/api/v1/namespaces/ci/pods","verb":"create","user":{"username":"system:serviceaccount:ci:deployer"},
        "sourceIPs":["10.0.0.5"],"userAgent":"helm/v3","objectRef":{"resource":"pods","namespace":"ci","apiVersion":"v1"},
        "responseStatus":{"code":201},"stageTimestamp":"2026-01-01T00:00:00Z",
        "requestObject":{"spec":{"containers":[{"name":"a","image":"x","securityContext":{"privileged":true}}]}}}"#;
    let ev = kustody_model::Event::parse(ev).unwrap();
    let fired = |engine: &Engine| {
        let mut out = Vec::new();
        engine.matches(&ev, &mut Scratch::default(), &mut out);
        out.iter().filter(|&&i| engine.emits(i)).map(|&i| engine.rule(i).unwrap().name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(fired(&load(None)), ["kustody Privileged Container in Workload"]);
    let allow = "- list: kustody_allowed_automation\n  items: [\"system:serviceaccount:ci:deployer\"]\n  override: {items: append}\n";
    assert!(fired(&load(Some(allow))).is_empty());
}

#[test]
fn the_allow_catalogue_loads_cleanly_and_every_entry_names_existing_rules() {
    let (list, diags) = kustody_rules::allow::AllowList::load(&[(
        "allow.yaml".to_owned(),
        include_str!("../rules/allow.yaml").to_owned(),
    )]);
    assert!(diags.is_empty(), "{diags:#?}");
    assert!(list.entries().len() >= 15, "{} entries", list.entries().len());
    let engine = load(None);
    let names: Vec<String> =
        engine.rules().map(|r| r.name.clone()).chain(engine.correlations().map(|c| c.name.clone())).collect();
    for e in list.entries() {
        assert!(!e.desc.is_empty(), "allow `{}` has no desc", e.name);
        for pat in &e.rules {
            let p = kustody_rules::allow::glob(pat);
            assert!(names.iter().any(|n| p.matches(n)), "allow `{}`: `{pat}` names no built-in rule", e.name);
        }
    }
}
