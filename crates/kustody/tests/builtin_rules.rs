//! Every built-in rule has true-positive and true-negative events beside it
//! (rules/kustody-starter.cases.yaml), run through both evaluators.

use kustody_rules::testing::run_cases;
use kustody_rules::{Engine, EngineOptions};

#[test]
fn builtin_rules_load_cleanly_and_fire_exactly_on_their_cases() {
    let rules = include_str!("../rules/kustody-starter.yaml");
    let cases = include_str!("../rules/kustody-starter.cases.yaml");
    let (engine, diags) =
        Engine::load(&[("kustody-starter.yaml".to_owned(), rules.to_owned())], &EngineOptions::default());
    assert!(diags.is_empty(), "{diags:#?}");
    let (n, failures) = run_cases(&engine, cases, "kustody-starter.cases.yaml").unwrap();
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
    for r in engine.rules() {
        let positive = cases.contains(&format!("[{}", r.name)) || cases.contains(&format!(", {}]", r.name));
        assert!(positive, "rule `{}` has no true-positive case", r.name);
        assert!(
            r.tags.iter().any(|t| t.starts_with('T') && t[1..].chars().next().is_some_and(|c| c.is_ascii_digit())),
            "rule `{}` has no ATT&CK technique tag",
            r.name
        );
        assert!(r.desc.len() > 40, "rule `{}` needs a description saying why it matters", r.name);
    }
    assert!(n >= 2 * engine.rules().count());
}
