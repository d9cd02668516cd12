//! Data-driven rule tests: cases of (event, rules expected to fire), run through both the
//! optimised and the reference evaluator. Used by this crate's tests and by the binary's tests
//! for the built-in rules; public so users' rule repositories can reuse the format.
//!
//! ```yaml
//! base:            # an audit event every case starts from
//!   verb: get
//!   ...
//! cases:
//!   - name: privileged pod
//!     event:       # deep-merged over `base`; `null` deletes a key; lists replace
//!       verb: create
//!     fires: [Create Privileged Pod]   # exactly these rules, no more, no fewer
//!     only: [Create Privileged Pod]    # optional: compare only among these rules
//!   - name: a chain
//!     events:      # several events, in order, each merged over `base`; correlations
//!       - {...}    # run across them; `fires` is every rule and correlation that fired
//!       - {...}
//!     fires: [Enumeration, Attack Chain]
//! ```

use serde_json::Value;

use crate::engine::{Engine, Scratch};
use crate::yaml::{self, Node};

/// One failed expectation, described for a test report.
pub type Failure = String;

/// Why a cases file cannot be run at all (a failed case is a [`Failure`], not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CasesError {
    #[error("{}{line}:{col}: {message}", prefix(file))]
    Yaml { file: Option<String>, line: u32, col: u32, message: String },
    #[error("{}empty cases file", prefix(file))]
    Empty { file: Option<String> },
    #[error("{}no `cases` list", prefix(file))]
    NoCases { file: Option<String> },
}

fn prefix(file: &Option<String>) -> String {
    file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

/// The `cases` of a cases file, and its `base` event.
fn cases_of<'d>(docs: &'d [Node], file: Option<&str>) -> Result<(Value, &'d [Node]), CasesError> {
    let file = || file.map(str::to_owned);
    let doc = docs.first().ok_or_else(|| CasesError::Empty { file: file() })?;
    let base = doc.get("base").map(yaml::to_json).unwrap_or(Value::Object(Default::default()));
    let Some(Node::Seq { items, .. }) = doc.get("cases") else {
        return Err(CasesError::NoCases { file: file() });
    };
    Ok((base, items))
}

fn parse(cases_yaml: &str, file: Option<&str>) -> Result<Vec<Node>, CasesError> {
    yaml::parse(cases_yaml).map_err(|e| CasesError::Yaml {
        file: file.map(str::to_owned),
        line: e.pos.line,
        col: e.pos.col,
        message: e.message,
    })
}

/// Merges `patch` into `base`: objects recursively, `null` deletes, anything else replaces.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Runs every case in `cases_yaml` against `engine`. Returns (cases run, failures).
pub fn run_cases(engine: &Engine, cases_yaml: &str, file: &str) -> Result<(usize, Vec<Failure>), CasesError> {
    let docs = parse(cases_yaml, Some(file))?;
    let (base, items) = cases_of(&docs, Some(file))?;
    let mut failures = Vec::new();
    let mut scratch = Scratch::default();
    for case in items {
        let line = case.pos().line;
        let name = case.get("name").and_then(Node::as_str).unwrap_or("?").to_owned();
        // `event:` is one event; `events:` a sequence, run in order through one correlator.
        let patches: Vec<Value> = match (case.get("events"), case.get("event")) {
            (Some(Node::Seq { items, .. }), _) => items.iter().map(yaml::to_json).collect(),
            (_, Some(p)) => vec![yaml::to_json(p)],
            _ => vec![Value::Object(Default::default())],
        };
        let strs = |key: &str| -> Option<Vec<String>> {
            match case.get(key) {
                Some(Node::Seq { items, .. }) => {
                    Some(items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect())
                }
                _ => None,
            }
        };
        let mut expected = strs("fires").unwrap_or_default();
        let only = strs("only");
        let keep = |n: &String| only.as_ref().is_none_or(|o| o.contains(n));
        let names = |idx: &[u32]| -> Vec<String> {
            idx.iter()
                .filter(|&&i| engine.emits(i))
                .filter_map(|&i| engine.rule(i).map(|r| r.name.clone()))
                .filter(|n| keep(n))
                .collect()
        };
        let mut correlator = engine.correlator();
        let (mut fast_all, mut reference_all) = (Vec::new(), Vec::new());
        for (k, patch) in patches.iter().enumerate() {
            let mut ev = base.clone();
            merge(&mut ev, patch);
            let text = ev.to_string();
            let event = match kustody_model::Event::parse(&text) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("{file}:{line}: case `{name}`, event {}: does not parse: {e}", k + 1));
                    continue;
                }
            };
            let mut fast = Vec::new();
            engine.matches(&event, &mut scratch, &mut fast);
            let src = kustody_model::SourceRef {
                file: std::sync::Arc::from(file),
                line: line as u64,
                offset: k as u64,
                format: kustody_model::SourceFormat::Native,
            };
            let mut inputs = Vec::new();
            for &i in &fast {
                engine.correlation_inputs(i, &event, &src, &mut inputs);
            }
            for inp in &inputs {
                if let Some(d) = correlator.observe(inp) {
                    let n = d.rule.to_string();
                    if keep(&n) {
                        fast_all.push(n.clone());
                        reference_all.push(n);
                    }
                }
            }
            fast_all.extend(names(&fast));
            reference_all.extend(names(&engine.matches_reference(&event, &mut scratch)));
        }
        for v in [&mut fast_all, &mut reference_all, &mut expected] {
            v.sort();
            v.dedup();
        }
        if fast_all != expected {
            failures.push(format!("{file}:{line}: case `{name}`: expected {expected:?}, fired {fast_all:?}"));
        }
        if reference_all != fast_all {
            failures.push(format!(
                "{file}:{line}: case `{name}`: reference evaluator fired {reference_all:?}, optimised {fast_all:?}"
            ));
        }
    }
    Ok((items.len(), failures))
}

/// For each rule and correlation, the first case (in file order) where it fires, with the
/// rendered output: the examples in generated rule documentation. Only `fires:` cases count.
pub fn examples(engine: &Engine, cases_yaml: &str) -> Result<Vec<(String, String, String)>, CasesError> {
    let docs = parse(cases_yaml, None)?;
    let (base, items) = cases_of(&docs, None)?;
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut scratch = Scratch::default();
    for case in items {
        let name = case.get("name").and_then(Node::as_str).unwrap_or("?").to_owned();
        let patches: Vec<Value> = match (case.get("events"), case.get("event")) {
            (Some(Node::Seq { items, .. }), _) => items.iter().map(yaml::to_json).collect(),
            (_, Some(p)) => vec![yaml::to_json(p)],
            _ => vec![Value::Object(Default::default())],
        };
        let mut correlator = engine.correlator();
        for patch in &patches {
            let mut ev = base.clone();
            merge(&mut ev, patch);
            let text = ev.to_string();
            let Ok(event) = kustody_model::Event::parse(&text) else { continue };
            let mut fired = Vec::new();
            engine.matches(&event, &mut scratch, &mut fired);
            let src = kustody_model::SourceRef {
                file: std::sync::Arc::from("example"),
                line: 1,
                offset: 0,
                format: kustody_model::SourceFormat::Native,
            };
            let mut inputs = Vec::new();
            for &i in &fired {
                engine.correlation_inputs(i, &event, &src, &mut inputs);
                if !engine.emits(i) {
                    continue;
                }
                if let Some(d) = engine.detection(i, &event, src.clone(), false) {
                    if !out.iter().any(|(r, _, _)| *r == *d.rule) {
                        out.push((d.rule.to_string(), name.clone(), d.output));
                    }
                }
            }
            for inp in &inputs {
                if let Some(d) = correlator.observe(inp) {
                    if !out.iter().any(|(r, _, _)| *r == *d.rule) {
                        out.push((d.rule.to_string(), name.clone(), d.output));
                    }
                }
            }
        }
    }
    Ok(out)
}
