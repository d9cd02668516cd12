//! Correlation items: loading diagnostics, sequence and threshold semantics, bounded state.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::sync::Arc;

use kustody_model::{EventContext, SourceFormat, SourceRef};
use kustody_rules::correlate::MAX_KEYS;
use kustody_rules::{CorrInput, Engine, EngineOptions};

const RULES: &str = r#"
- rule: A
  desc: a
  condition: ka.verb = get
  output: "%ka.user.name"
  priority: NOTICE
  source: k8s_audit
- rule: B
  desc: b
  condition: ka.verb = list
  output: "%ka.user.name"
  priority: NOTICE
  source: k8s_audit
- correlation: A then B
  desc: d
  by: [ka.user.name]
  window: 10s
  sequence: [A, B]
  output: "A then B by %ka.user.name: %kustody.steps"
  priority: WARNING
- correlation: Many A
  desc: d
  window: 60s
  count: 3
  sequence: [A]
  output: "%ka.user.name"
  priority: WARNING
- correlation: A and B in any order
  desc: d
  by: [ka.user.name]
  window: 10s
  steps: [A, B]
  output: "A and B by %ka.user.name: %kustody.steps"
  priority: WARNING
"#;

fn load(text: &str) -> (Engine, Vec<String>) {
    let (e, d) = Engine::load(&[("t.yaml".to_owned(), text.to_owned())], &EngineOptions::default());
    (e, d.iter().map(|d| d.to_string()).collect())
}

fn input(corr: u16, steps: u64, key: &str, t_s: i64) -> CorrInput {
    CorrInput {
        corr,
        steps,
        key: key.into(),
        rule: Arc::from("A"),
        time_ns: t_s * 1_000_000_000,
        source_ref: SourceRef { file: Arc::from("f"), line: t_s as u64, offset: 0, format: SourceFormat::Native },
        audit_id: Some(format!("id-{t_s}")),
        context: EventContext::default(),
    }
}

#[test]
fn sequences_need_order_one_key_and_the_window() {
    let (engine, diags) = load(RULES);
    assert!(diags.is_empty(), "{diags:?}");
    let mut c = engine.correlator();
    // B before A does not count; A then B within 10 s does
    assert!(c.observe(&input(0, 0b10, "u", 0)).is_none());
    assert!(c.observe(&input(0, 0b01, "u", 1)).is_none());
    let f = c.observe(&input(0, 0b10, "u", 5)).expect("A then B");
    assert_eq!(&*f.rule, "A then B");
    assert!(f.output.starts_with("A then B by u: A at "), "{}", f.output);
    assert_eq!(f.audit_id.as_deref(), Some("id-5"));
    assert_eq!(f.source_ref.line, 5);
    // another identity's B does not complete u's A; an expired A does not either
    assert!(c.observe(&input(0, 0b01, "u", 10)).is_none());
    assert!(c.observe(&input(0, 0b10, "v", 11)).is_none());
    assert!(c.observe(&input(0, 0b10, "u", 30)).is_none());
}

#[test]
fn any_order_sets_fire_whatever_the_order_and_list_steps_in_time_order() {
    let (engine, diags) = load(RULES);
    assert!(diags.is_empty(), "{diags:?}");
    let mut c = engine.correlator();
    // B then A completes the set; the steps are listed in time order
    assert!(c.observe(&input(2, 0b10, "u", 0)).is_none());
    let f = c.observe(&input(2, 0b01, "u", 3)).expect("B then A");
    assert_eq!(&*f.rule, "A and B in any order");
    assert_eq!(f.audit_id.as_deref(), Some("id-3"));
    let steps = f.output.split(": ").nth(1).unwrap();
    assert!(steps.find("f:0").unwrap() < steps.find("f:3").unwrap(), "{steps}");
    // the set starts over after firing; one event cannot fill both steps twice
    assert!(c.observe(&input(2, 0b10, "u", 4)).is_none());
    assert!(c.observe(&input(2, 0b10, "u", 5)).is_none());
    // a B older than the window does not count, a fresh one does
    assert!(c.observe(&input(2, 0b01, "u", 30)).is_none());
    assert!(c.observe(&input(2, 0b10, "v", 31)).is_none(), "another identity's B");
    assert!(c.observe(&input(2, 0b10, "u", 32)).is_some());
    // an event that satisfies both steps fills one of them
    assert!(c.observe(&input(2, 0b11, "w", 40)).is_none());
    assert!(c.observe(&input(2, 0b11, "w", 41)).is_some());
}

#[test]
fn thresholds_fire_once_per_burst() {
    let (engine, _) = load(RULES);
    let mut c = engine.correlator();
    let fired: Vec<bool> =
        [0, 1, 2, 3, 4, 100, 101, 102].iter().map(|t| c.observe(&input(1, 1, "u", *t)).is_some()).collect();
    assert_eq!(fired, [false, false, true, false, false, false, false, true]);
}

#[test]
fn state_is_bounded() {
    let (engine, _) = load(RULES);
    let mut c = engine.correlator();
    for i in 0..(MAX_KEYS as i64 * 2 + 10) {
        c.observe(&input(0, 0b01, &format!("user-{i}"), i / 1000));
    }
    assert!(c.tracked_keys() <= MAX_KEYS, "{} keys tracked", c.tracked_keys());
    // the freshest identities are still tracked
    let last = MAX_KEYS as i64 * 2 + 9;
    assert!(c.observe(&input(0, 0b10, &format!("user-{last}"), last / 1000)).is_some());
}

#[test]
fn bad_correlations_are_diagnosed_with_their_position() {
    let cases = [
        ("sequence: [A, Nope]", "no rule `Nope`"),
        ("sequence: [A]", "at least two steps"),
        ("steps: [A]", "at least two steps"),
        ("sequence: [A, B]\n  steps: [A, B]", "not both"),
        ("by: [ka.user.name]", "missing required key `sequence` (or `steps`)"),
        ("count: 3\n  sequence: [A, B]", "exactly one step"),
        ("window: 10 minutes\n  sequence: [A, B]", "invalid window"),
        ("by: [ka.nope]\n  sequence: [A, B]", "unknown field `ka.nope`"),
        ("output: \"%ka.verb\"\n  sequence: [A, B]", "not `%ka.verb`"),
        ("sequence: [{condition: \"ka.verb = \"}, B]", "t.yaml:"),
    ];
    for (body, want) in cases {
        let mut text = RULES.split("- correlation: A then B").next().unwrap().to_owned();
        let mut item =
            format!("- correlation: X\n  desc: d\n  window: 10s\n  output: o\n  priority: WARNING\n  {body}\n");
        // a later key overrides an earlier one in these tests only by position: put ours first
        if body.starts_with("window") || body.starts_with("output") {
            item = item
                .replace("  window: 10s\n", "")
                .replace("  output: o\n", if body.starts_with("output") { "" } else { "  output: o\n" });
            if body.starts_with("output") {
                item = item.replace("  priority", "  window: 10s\n  priority");
            }
        }
        text.push_str(&item);
        let (_, diags) = load(&text);
        assert!(diags.iter().any(|d| d.contains(want)), "{body}: {diags:#?}");
        assert!(diags.iter().all(|d| d.starts_with("t.yaml:")), "{diags:?}");
    }
}
