//! Falco evaluation semantics, one small rule per semantic (tests/data/semantics.*.yaml), through
//! both evaluators; plus the loader's load-order, override and diagnostic behaviour.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use kustody_rules::testing::run_cases;
use kustody_rules::{Diagnostic, Engine, EngineOptions, Severity};

fn load(files: &[(&str, &str)]) -> (Engine, Vec<Diagnostic>) {
    let files: Vec<(String, String)> = files.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
    Engine::load(&files, &EngineOptions::default())
}

fn fired(engine: &Engine, event: &str) -> Vec<String> {
    let ev = kustody_model::Event::parse(event).unwrap();
    let mut scratch = kustody_rules::Scratch::default();
    let mut out = Vec::new();
    engine.matches(&ev, &mut scratch, &mut out);
    let reference = engine.matches_reference(&ev, &mut scratch);
    assert_eq!(out, reference, "optimised and reference evaluators disagree on {event}");
    out.iter().map(|&i| engine.rule(i).unwrap().name.clone()).collect()
}

const EV_GET_PODS: &str = r#"{"auditID":"1","stage":"ResponseComplete","verb":"get","user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"default"}}"#;

#[test]
fn semantics_cases() {
    let rules = include_str!("data/semantics.rules.yaml");
    let (engine, diags) = load(&[("semantics.rules.yaml", rules)]);
    assert!(diags.is_empty(), "{diags:#?}");
    let (n, failures) = run_cases(&engine, include_str!("data/semantics.cases.yaml"), "semantics.cases.yaml").unwrap();
    assert!(n >= 50);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn rule(name: &str, cond: &str) -> String {
    format!("- rule: {name}\n  desc: d\n  condition: {cond}\n  output: o %ka.verb\n  priority: WARNING\n  source: k8s_audit\n")
}

#[test]
fn every_error_is_reported_and_good_rules_still_load() {
    let text = [
        rule("good", "ka.verb = get"),
        rule("bad field", "ka.nope = get"),
        rule("bad syntax", "ka.verb = get and"),
        rule("bad macro", "no_such_macro"),
        rule("list op on list field", "ka.user.groups = a"),
        rule("bytes op", "ka.verb bcontains 6162"),
        rule("numeric op", "ka.verb < abc"),
        "- rule: no output\n  desc: d\n  condition: ka.verb = get\n  priority: WARNING\n  source: k8s_audit\n".to_owned(),
        "- rule: bad prio\n  desc: d\n  condition: ka.verb = get\n  output: o\n  priority: SEVERE\n  source: k8s_audit\n".to_owned(),
        "- rule: bad output\n  desc: d\n  condition: ka.verb = get\n  output: o %ka.bogus\n  priority: INFO\n  source: k8s_audit\n".to_owned(),
        rule("good too", "ka.verb = get"),
    ]
    .concat();
    let (engine, diags) = load(&[("rules.yaml", &text)]);
    let names: Vec<_> = engine.rules().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["good", "good too"]);
    let errors: Vec<String> = diags.iter().filter(|d| d.severity == Severity::Error).map(ToString::to_string).collect();
    assert_eq!(errors.len(), 9, "{errors:#?}");
    // Each names file:line:column and the rule.
    assert!(
        errors[0].starts_with("rules.yaml:9:14: error: rule `bad field`: unknown field `ka.nope`"),
        "{}",
        errors[0]
    );
    assert!(
        errors.iter().any(|e| e.contains("rule `bad syntax`") && e.contains("unexpected end of condition")),
        "{errors:#?}"
    );
    assert!(errors.iter().any(|e| e.contains("undefined macro `no_such_macro`")));
    assert!(errors.iter().any(|e| e.contains("only `exists`, `in` and `intersects`")));
    assert!(errors.iter().any(|e| e.contains("`bcontains` applies to byte-buffer fields")));
    assert!(errors.iter().any(|e| e.contains("needs a numeric value")));
    assert!(errors.iter().any(|e| e.contains("rule `no output`: missing required key `output`")));
    assert!(errors.iter().any(|e| e.contains("unknown priority `SEVERE`")));
    assert!(errors.iter().any(|e| e.contains("invalid output: unknown field `ka.bogus`")));
    assert_eq!(fired(&engine, EV_GET_PODS), ["good", "good too"]);
}

#[test]
fn invalid_yaml_is_a_positioned_error() {
    let (_, diags) = load(&[("broken.yaml", "- rule: x\n  condition: [a\n")]);
    assert_eq!(diags.len(), 1);
    assert!(diags[0].to_string().starts_with("broken.yaml:"), "{}", diags[0]);
    assert!(diags[0].message.contains("invalid YAML"));
}

#[test]
fn override_append_replace_and_deprecated_append() {
    let base = [
        "- list: users\n  items: [alice]\n",
        "- macro: m\n  condition: ka.verb = get\n",
        &rule("r", "m and ka.user.name in (users)"),
    ]
    .concat();
    let overlay = "\
- list: users
  items: [bob]
  override: {items: append}
- macro: m
  condition: or ka.verb = list
  override: {condition: append}
- rule: r
  condition: and ka.target.namespace = default
  override: {condition: append}
- rule: r
  priority: CRITICAL
  tags: [new]
  override: {priority: replace, tags: append}
";
    let (engine, diags) = load(&[("base.yaml", &base), ("overlay.yaml", overlay)]);
    assert!(diags.is_empty(), "{diags:#?}");
    let r = engine.rules().next().unwrap();
    assert_eq!(r.priority, kustody_model::Priority::Critical);
    assert_eq!(r.tags, ["new"]);
    assert_eq!(fired(&engine, &EV_GET_PODS.replace("alice", "bob")), ["r"]);
    assert!(fired(&engine, &EV_GET_PODS.replace("default", "prod")).is_empty());
    // The appended macro text is `ka.verb = get or ka.verb = list`.
    assert_eq!(fired(&engine, &EV_GET_PODS.replace("\"get\"", "\"list\"")), ["r"]);

    let deprecated = "- rule: r\n  condition: and ka.user.name = alice\n  append: true\n";
    let (engine, diags) = load(&[("base.yaml", &base), ("old.yaml", deprecated)]);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].severity, Severity::Warning);
    assert!(diags[0].message.contains("deprecated"));
    assert_eq!(fired(&engine, EV_GET_PODS), ["r"]);
}

#[test]
fn override_mistakes_are_errors() {
    let base = rule("r", "ka.verb = get");
    let cases = [
        (
            "- rule: r\n  condition: x\n  override: {output: append}\n",
            "an override for `output` was specified but `output` is not defined",
        ),
        (
            "- rule: r\n  condition: and x\n  priority: INFO\n  override: {condition: append}\n",
            "unexpected key `priority`",
        ),
        ("- rule: nope\n  condition: x\n  override: {condition: append}\n", "no rule `nope` exists to override"),
        (
            "- rule: r\n  priority: INFO\n  override: {priority: append}\n",
            "`priority` cannot be overridden with `append`",
        ),
        ("- rule: r\n  condition: x\n  append: true\n  override: {condition: append}\n", "cannot be used together"),
        ("- rule: nope\n  enabled: false\n", "no rule `nope` exists yet"),
        ("- list: l\n  items: [a]\n  append: true\n", "never defined"),
    ];
    for (overlay, want) in cases {
        let (_, diags) = load(&[("base.yaml", &base), ("o.yaml", overlay)]);
        assert!(diags.iter().any(|d| d.message.contains(want)), "for {overlay:?} wanted {want:?}, got {diags:#?}");
    }
}

#[test]
fn enabled_false_and_redefinition() {
    let base = [rule("r", "ka.verb = get"), rule("s", "ka.verb = get")].concat();
    let overlay =
        "- rule: r\n  enabled: false\n  override: {enabled: replace}\n".to_owned() + &rule("s", "ka.verb = list");
    let (engine, diags) = load(&[("base.yaml", &base), ("o.yaml", &overlay)]);
    assert!(diags.is_empty(), "{diags:#?}");
    assert!(fired(&engine, EV_GET_PODS).is_empty());
    // Redefinition replaces in place: order is kept.
    let names: Vec<_> = engine.rules().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["r", "s"]);
    assert!(!engine.rules().next().unwrap().enabled);
}

#[test]
fn load_order_lists_and_macros() {
    // `late` is defined after `early` references it: not expanded in the list (a literal item),
    // yet condition list references always use final items.
    let text = "\
- list: early
  items: [late, carol]
- list: late
  items: [alice]
- macro: first
  condition: second
- macro: second
  condition: ka.verb = get
"
    .to_owned()
        + &rule("list order", "ka.user.name in (early)")
        + &rule("cond list", "ka.user.name in (late)")
        + &rule("macro order", "first");
    let (engine, diags) = load(&[("f.yaml", &text)]);
    let names: Vec<_> = engine.rules().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["list order", "cond list"]);
    assert!(
        diags.iter().any(|d| d.message.contains("undefined macro `second`") && d.message.contains("in macro `first`")),
        "{diags:#?}"
    );
    assert_eq!(fired(&engine, EV_GET_PODS), ["cond list"]);
    assert_eq!(fired(&engine, &EV_GET_PODS.replace("alice", "late")), ["list order"]);
}

#[test]
fn macro_loops_are_reported() {
    let text = "- macro: a\n  condition: b\n- macro: b\n  condition: a\n".to_owned() + &rule("r", "a");
    let (engine, diags) = load(&[("f.yaml", &text)]);
    assert_eq!(engine.rules().count(), 0);
    assert!(
        diags.iter().any(|d| d.message.contains("undefined macro") || d.message.contains("refers to itself")),
        "{diags:#?}"
    );
}

#[test]
fn versions_sources_and_unknown_items() {
    let text = "\
- required_engine_version: 0.99.0
- required_plugin_versions:
    - name: k8saudit
      version: 9.0.0
- rule: syscall rule
  desc: d
  condition: proc.name = sh
  output: o
  priority: INFO
- something: else
";
    let (engine, diags) = load(&[("f.yaml", text)]);
    assert_eq!(engine.rules().count(), 0);
    let msgs: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert!(diags.iter().all(|d| d.severity == Severity::Warning), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("engine version 0.99.0")));
    assert!(msgs.iter().any(|m| m.contains("plugin k8saudit 9.0.0")));
    assert!(msgs.iter().any(|m| m.contains("source `syscall` skipped")));
    assert!(msgs.iter().any(|m| m.contains("unknown item `something`")));
}

#[test]
fn skip_if_unknown_filter() {
    let text = "- rule: r\n  desc: d\n  condition: ka.future.field = x\n  output: o\n  priority: INFO\n  source: k8s_audit\n  skip-if-unknown-filter: true\n";
    let (engine, diags) = load(&[("f.yaml", text)]);
    assert_eq!(engine.rules().count(), 0);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].severity, Severity::Warning);
}

#[test]
fn min_priority_filters_evaluation_not_loading() {
    let text = [rule("warn", "ka.verb = get"), rule("info", "ka.verb = get").replace("WARNING", "INFO")].concat();
    let files = vec![("f.yaml".to_owned(), text)];
    let (engine, _) =
        Engine::load(&files, &EngineOptions { min_priority: kustody_model::Priority::Warning, ..Default::default() });
    assert_eq!(engine.rules().count(), 2);
    assert_eq!(engine.active_count(), 1);
    assert_eq!(fired(&engine, EV_GET_PODS), ["warn"]);
}

#[test]
fn hostile_rule_files_are_refused_with_diagnostics_not_crashes() {
    let started = std::time::Instant::now();
    // Macros that use the previous one twice: 2^40 nodes if inlined blindly.
    let mut text = "- macro: m0\n  condition: ka.verb = get\n".to_owned();
    for i in 1..=40 {
        text.push_str(&format!("- macro: m{i}\n  condition: (m{p} or m{p})\n", p = i - 1));
    }
    text += &rule("exp", "m40");
    // A long chain of `not`.
    text.push_str("- macro: n0\n  condition: ka.verb = get\n");
    for i in 1..=3000 {
        text.push_str(&format!("- macro: n{i}\n  condition: not n{}\n", i - 1));
    }
    text += &rule("deep", "n3000");
    // Lists that double at every level.
    text.push_str("- list: l0\n  items: [a, b]\n");
    for i in 1..=40 {
        text.push_str(&format!("- list: l{i}\n  items: [l{p}, l{p}]\n", p = i - 1));
    }
    text += &rule("big list", "ka.verb in (l40)");
    text += &rule("fine", "ka.verb = get");
    let (engine, diags) = load(&[("hostile.yaml", &text)]);
    let names: Vec<_> = engine.rules().map(|r| r.name.clone()).collect();
    assert!(names.contains(&"fine".to_owned()), "{names:?}");
    assert!(!names.contains(&"exp".to_owned()) && !names.contains(&"deep".to_owned()));
    let msgs: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert!(msgs.iter().any(|m| m.contains("rule `exp`") && m.contains("nodes")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("rule `deep`") && m.contains("nested")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("list `l40`") && m.contains("truncated")), "{msgs:#?}");
    assert!(started.elapsed().as_secs() < 30, "refusing must be quick");
}

#[test]
fn every_bad_comparison_of_one_condition_is_reported() {
    let text = rule("two", "ka.user.groups = foo or ka.nope contains x or (ka.verb = get and ka.verb < abc)");
    let (engine, diags) = load(&[("f.yaml", &text)]);
    assert_eq!(engine.rules().count(), 0);
    let msgs: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(
        msgs[0].contains("list field") && msgs[1].contains("unknown field `ka.nope`") && msgs[2].contains("numeric"),
        "{msgs:#?}"
    );
    // Columns point at each comparison.
    assert!(msgs[0].starts_with("f.yaml:3:14:") && msgs[1].starts_with("f.yaml:3:38:"), "{msgs:#?}");
}
