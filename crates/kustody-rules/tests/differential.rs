//! The optimised evaluator (index, hash sets, automata, reordering) and the plain reference
//! evaluator agree on every event of several corpora, for every rule loaded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::path::PathBuf;

use kustody_rules::{Engine, EngineOptions, Scratch};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rule_files() -> Vec<(String, String)> {
    let mut files = vec![
        ("starter".to_owned(), std::fs::read_to_string(root().join("crates/kustody/rules/kustody.yaml")).unwrap()),
        ("semantics".to_owned(), include_str!("data/semantics.rules.yaml").to_owned()),
    ];
    if let Some(shared) = kustody_testkit::shared("upstream/falco") {
        let upstream = shared.join("upstream/falco");
        for f in ["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"] {
            files.push((f.to_owned(), std::fs::read_to_string(upstream.join(f)).unwrap()));
        }
        // Sigma rules use case-insensitive globs, which the index handles separately.
        let sigma = shared.join("upstream/sigma/kubernetes");
        let mut paths: Vec<_> = std::fs::read_dir(&sigma).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            files.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    } else {
        eprintln!("differential test runs on project rules only");
    }
    files
}

fn check(engine: &Engine, text: &str, what: &str) -> usize {
    let mut scratch = Scratch::default();
    let mut fast = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let Ok(ev) = kustody_model::Event::parse(line) else {
            continue;
        };
        fast.clear();
        engine.matches(&ev, &mut scratch, &mut fast);
        let slow = engine.matches_reference(&ev, &mut scratch);
        assert_eq!(fast, slow, "{what}: evaluators disagree on {line}");
        n += 1;
    }
    n
}

#[test]
fn optimised_and_reference_evaluators_agree() {
    let (engine, _) = Engine::load(&rule_files(), &EngineOptions::default());
    assert!(engine.rules().count() > 30);
    let example = std::fs::read_to_string(root().join("examples/attack-chain.jsonl")).unwrap();
    assert_eq!(check(&engine, &example, "example"), 322);
    let mut corpus = Vec::new();
    kustody_gen::Corpus::new(42).write(3_000_000, &mut corpus).unwrap();
    assert!(check(&engine, &String::from_utf8(corpus).unwrap(), "corpus") > 1000);
    let recorded = root().join("../shared/fixtures/kube-apiserver/audit.jsonl");
    if recorded.exists() {
        assert_eq!(check(&engine, &std::fs::read_to_string(recorded).unwrap(), "recorded"), 405);
    }
}
