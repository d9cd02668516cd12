//! The upstream Falco k8s audit rules (../shared/upstream/falco) load unchanged with zero
//! diagnostics, alone and with the GKE overlay, and fire exactly as Falco's would on events
//! written from their semantics (tests/data/upstream-falco.cases.yaml).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::path::PathBuf;

use kustody_rules::testing::run_cases;
use kustody_rules::{Engine, EngineOptions};

/// `../shared/upstream/falco`, or `None` (with a notice) when it is absent outside CI.
fn upstream_dir() -> Option<PathBuf> {
    kustody_testkit::shared("upstream/falco/k8s_audit_rules.yaml").map(|s| s.join("upstream/falco"))
}

fn load(names: &[&str]) -> (Engine, Vec<kustody_rules::Diagnostic>) {
    let dir = upstream_dir().expect("checked by caller");
    let files: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let p = dir.join(n);
            (p.display().to_string(), std::fs::read_to_string(&p).expect("readable"))
        })
        .collect();
    Engine::load(&files, &EngineOptions::default())
}

#[test]
fn upstream_rules_load_with_zero_diagnostics() {
    if upstream_dir().is_none() {
        return;
    }
    let (engine, diags) = load(&["k8s_audit_rules.yaml"]);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(engine.rules().count(), 48);
    let (engine, diags) = load(&["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"]);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(engine.rules().count(), 48);
    // Rules disabled through always-false macros are still enabled rules (Falco semantics).
    assert!(engine.rules().all(|r| r.enabled && r.source == "k8s_audit"));
}

#[test]
fn upstream_rules_fire_as_falco_would() {
    if upstream_dir().is_none() {
        return;
    }
    let (engine, diags) = load(&["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"]);
    assert!(diags.is_empty());
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/upstream-falco.cases.yaml");
    let text = std::fs::read_to_string(file).unwrap();
    let (n, failures) = run_cases(&engine, &text, file).unwrap();
    assert!(n >= 70, "only {n} cases");
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_upstream_rule_has_a_true_positive_or_is_disabled_by_default() {
    if upstream_dir().is_none() {
        return;
    }
    // Rules that upstream ships switched off through always-true/never-true macros.
    let off_by_default = [
        "Create Disallowed Pod",
        "All K8s Audit Events",
        "Full K8s Administrative Access",
        "Untrusted Node Successfully Joined the Cluster",
        "Untrusted Node Unsuccessfully Tried to Join the Cluster",
    ];
    let (engine, _) = load(&["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"]);
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/upstream-falco.cases.yaml")).unwrap();
    for r in engine.rules() {
        let covered = text.contains(&format!("[{}", r.name)) || text.contains(&format!(", {}", r.name));
        assert!(covered || off_by_default.contains(&r.name.as_str()), "no true-positive case for `{}`", r.name);
    }
}

fn sigma_dir() -> Option<PathBuf> {
    kustody_testkit::shared("upstream/sigma/kubernetes").map(|s| s.join("upstream/sigma/kubernetes"))
}

#[test]
fn all_16_upstream_sigma_rules_load_unchanged_and_fire_as_specified() {
    let Some(dir) = sigma_dir() else { return };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let files: Vec<(String, String)> =
        paths.iter().map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap())).collect();
    assert_eq!(files.len(), 16);
    let (engine, diags) = Engine::load(&files, &EngineOptions::default());
    assert_eq!(engine.rules().count(), 16);
    // The one rule that compares a number with 'ALLOW' is reported as never matching.
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(
        diags[0].message.contains("can never match") && diags[0].file.contains("potential_enumeration"),
        "{diags:#?}"
    );
    assert!(engine.rules().all(|r| r.tags.iter().any(|t| t == "sigma")));
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/upstream-sigma.cases.yaml");
    let (n, failures) = run_cases(&engine, &std::fs::read_to_string(file).unwrap(), file).unwrap();
    assert!(n >= 20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
