//! Correlation: findings that span events, which Falco's one-event rules cannot express.
//!
//! A kustody extension to the rule format (docs/RULES-FORMAT.md):
//!
//! ```yaml
//! - correlation: Attack Chain by One Identity
//!   desc: ...
//!   by: [ka.user.name]          # grouping key: the steps must share these values
//!   window: 30m                 # all steps within this time (s, m, h)
//!   sequence:                   # in this order
//!     - rule: Permission Enumeration
//!     - rules: [Secrets Listed, Secret Read]
//!     - condition: ka.verb = create and ka.target.resource = pods
//!   priority: CRITICAL
//!   output: Attack chain (user=%ka.user.name steps=%kustody.steps)
//!   tags: [T1613, T1552.007, T1610]
//!
//! - correlation: Burst of Forbidden Requests
//!   by: [ka.user.name]
//!   window: 60s
//!   count: 10                   # a threshold: one step, seen this often within the window
//!   sequence: [Forbidden Request]
//! ```
//!
//! A step names rules (which fire on their own too, if enabled at the run's minimum priority)
//! or gives a condition (compiled as a hidden rule that never alerts). Evaluation streams in
//! input order with bounded state: per correlation at most [`MAX_KEYS`] identities are tracked;
//! the stalest are dropped first.

use std::collections::VecDeque;
use std::sync::Arc;

use kustody_model::{Detection, EventContext, FieldValue, OutputField, Priority, SourceRef};
use rustc_hash::FxHashMap;

use crate::loader::Loc;
use crate::output::Template;

/// Identities tracked per correlation before the stalest are dropped.
pub const MAX_KEYS: usize = 50_000;

/// A `correlation` item as loaded.
#[derive(Debug, Clone)]
pub(crate) struct CorrDef {
    pub name: String,
    pub desc: String,
    pub by: Vec<String>,
    pub window: String,
    pub window_ns: i64,
    /// Each step's rule names (condition steps name their hidden rule).
    pub steps: Vec<Vec<String>>,
    /// `sequence` (true): the steps in order; `steps` (false): all of them in any order.
    pub ordered: bool,
    pub count: Option<u32>,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub output: String,
    pub enabled: bool,
    pub loc: Loc,
}

/// A correlation as listed by `kustody rules list`.
#[derive(Debug, Clone)]
pub struct CorrelationInfo {
    pub name: String,
    pub desc: String,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub enabled: bool,
    pub file: Arc<str>,
    pub line: u32,
    pub by: Vec<String>,
    pub window: String,
    /// Rule names per step (hidden condition steps as `<name> / step N`).
    pub steps: Vec<Vec<String>>,
    /// Whether the steps must come in order (`sequence`) or in any order (`steps`).
    pub ordered: bool,
    pub count: Option<u32>,
}

pub(crate) struct Compiled {
    pub info: CorrelationInfo,
    pub name: Arc<str>,
    pub tags: Arc<[String]>,
    pub key: Template,
    pub window_ns: i64,
    pub output: String,
}

/// What a matched rule contributes to a correlation: computed where the event is (workers),
/// consumed in input order (the collector).
#[derive(Debug, Clone)]
pub struct CorrInput {
    pub corr: u16,
    /// The steps the rule satisfies (bit i = step i).
    pub steps: u64,
    /// The grouping key's values, joined by U+001F.
    pub key: Box<str>,
    pub rule: Arc<str>,
    pub time_ns: i64,
    pub source_ref: SourceRef,
    pub audit_id: Option<String>,
    pub context: EventContext,
}

/// Parse `30m`, `60s`, `2h`, `1d` into nanoseconds.
pub fn parse_window(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "s" | "sec" => n,
        "m" | "min" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| secs.checked_mul(1_000_000_000)).flatten()
}

struct Hit {
    rule: Arc<str>,
    time_ns: i64,
    source_ref: SourceRef,
    audit_id: Option<String>,
    context: EventContext,
}

#[derive(Default)]
struct KeyState {
    /// Sequence progress: the hits of steps 0..len.
    hits: Vec<Hit>,
    /// Any-order progress: the latest hit of each step, by step index.
    slots: Vec<Option<Hit>>,
    /// Threshold: times in the window, oldest first.
    times: VecDeque<i64>,
    last_seen: i64,
    /// When a threshold last fired (one finding per burst).
    fired_at: Option<i64>,
}

struct Tracked {
    name: Arc<str>,
    tags: Arc<[String]>,
    priority: Priority,
    by: Vec<Arc<str>>,
    window_ns: i64,
    steps: usize,
    ordered: bool,
    count: Option<u32>,
    output: String,
    keys: FxHashMap<Box<str>, KeyState>,
}

/// Streaming correlation state for one run.
pub struct Correlator {
    tracked: Vec<Tracked>,
    source: Arc<str>,
}

impl Correlator {
    pub(crate) fn new(corrs: &[Compiled]) -> Correlator {
        Correlator {
            tracked: corrs
                .iter()
                .map(|c| Tracked {
                    name: c.name.clone(),
                    tags: c.tags.clone(),
                    priority: c.info.priority,
                    by: c.info.by.iter().map(|b| Arc::from(b.as_str())).collect(),
                    window_ns: c.window_ns,
                    steps: c.info.steps.len(),
                    ordered: c.info.ordered,
                    count: c.info.count,
                    output: c.output.clone(),
                    keys: FxHashMap::default(),
                })
                .collect(),
            source: Arc::from(crate::loader::K8S_AUDIT),
        }
    }

    /// Identities currently tracked, over all correlations.
    pub fn tracked_keys(&self) -> usize {
        self.tracked.iter().map(|t| t.keys.len()).sum()
    }

    /// Feed one input; returns the finding it completes, if any.
    pub fn observe(&mut self, inp: &CorrInput) -> Option<Detection> {
        let source = self.source.clone();
        let t = self.tracked.get_mut(inp.corr as usize)?;
        if !t.keys.contains_key(&inp.key) && t.keys.len() >= MAX_KEYS {
            evict(&mut t.keys, inp.time_ns - t.window_ns);
        }
        let st = t.keys.entry(inp.key.clone()).or_default();
        st.last_seen = st.last_seen.max(inp.time_ns);
        let hit = || Hit {
            rule: inp.rule.clone(),
            time_ns: inp.time_ns,
            source_ref: inp.source_ref.clone(),
            audit_id: inp.audit_id.clone(),
            context: inp.context.clone(),
        };
        if let Some(count) = t.count {
            st.times.push_back(inp.time_ns);
            while st.times.front().is_some_and(|f| inp.time_ns - *f > t.window_ns) {
                st.times.pop_front();
            }
            while st.times.len() > count as usize {
                st.times.pop_front();
            }
            let quiet = st.fired_at.is_none_or(|f| inp.time_ns - f > t.window_ns);
            if st.times.len() >= count as usize && quiet {
                st.fired_at = Some(inp.time_ns);
                let first = st.times.front().copied().unwrap_or(inp.time_ns);
                st.times.clear();
                let summary = vec![format!("{} x{count} from {}", inp.rule, fmt_time(first))];
                return Some(finding(t, &source, &inp.key, &[hit()], summary));
            }
            return None;
        }
        if !t.ordered {
            return observe_any_order(t, &source, inp, hit());
        }
        // Sequence: a stale partial match starts over.
        if st.hits.first().is_some_and(|h| inp.time_ns - h.time_ns > t.window_ns) {
            st.hits.clear();
        }
        let next = st.hits.len();
        if inp.steps & (1u64 << next) != 0 {
            st.hits.push(hit());
        } else if next > 0 && inp.steps & 1 != 0 && st.hits.len() == 1 {
            // a fresher first step replaces a lone older one (keeps the window tight)
            st.hits.clear();
            st.hits.push(hit());
        }
        if st.hits.len() == t.steps {
            let hits = std::mem::take(&mut st.hits);
            let summary =
                hits.iter().map(|h| format!("{} at {} ({})", h.rule, fmt_time(h.time_ns), h.source_ref)).collect();
            return Some(finding(t, &source, &inp.key, &hits, summary));
        }
        None
    }
}

/// Any order: each step keeps its latest hit within the window; one event fills one step (the
/// first empty one it satisfies, else it refreshes the oldest of its steps). When every step is
/// filled the finding lists the hits in time order and the key starts over.
fn observe_any_order(t: &mut Tracked, source: &Arc<str>, inp: &CorrInput, hit: Hit) -> Option<Detection> {
    let (window, steps) = (t.window_ns, t.steps);
    let st = t.keys.get_mut(&inp.key)?;
    if st.slots.len() != steps {
        st.slots.resize_with(steps, || None);
    }
    for slot in st.slots.iter_mut() {
        if slot.as_ref().is_some_and(|h| (inp.time_ns - h.time_ns).abs() > window) {
            *slot = None;
        }
    }
    let mine = |i: usize| inp.steps & (1u64 << i) != 0;
    let target = (0..steps).find(|&i| mine(i) && st.slots.get(i).is_some_and(Option::is_none)).or_else(|| {
        (0..steps)
            .filter(|&i| mine(i))
            .min_by_key(|&i| st.slots.get(i).and_then(|s| s.as_ref()).map_or(i64::MIN, |h| h.time_ns))
    });
    if let Some(slot) = target.and_then(|i| st.slots.get_mut(i)) {
        *slot = Some(hit);
    }
    if !st.slots.iter().all(Option::is_some) {
        return None;
    }
    let mut hits: Vec<Hit> = std::mem::take(&mut st.slots).into_iter().flatten().collect();
    hits.sort_by_key(|h| h.time_ns);
    let summary = hits.iter().map(|h| format!("{} at {} ({})", h.rule, fmt_time(h.time_ns), h.source_ref)).collect();
    let t: &Tracked = t;
    Some(finding(t, source, &inp.key, &hits, summary))
}

fn evict(keys: &mut FxHashMap<Box<str>, KeyState>, horizon: i64) {
    keys.retain(|_, s| s.last_seen >= horizon);
    if keys.len() >= MAX_KEYS {
        let mut seen: Vec<i64> = keys.values().map(|s| s.last_seen).collect();
        seen.sort_unstable();
        let cut = seen.get(seen.len() / 2).copied().unwrap_or(i64::MAX);
        keys.retain(|_, s| s.last_seen > cut);
    }
}

fn fmt_time(ns: i64) -> String {
    kustody_model::time::format_rfc3339_nanos(ns)
}

fn finding(t: &Tracked, source: &Arc<str>, key: &str, hits: &[Hit], steps: Vec<String>) -> Detection {
    let values: Vec<&str> = key.split('\u{1f}').collect();
    let mut fields: Vec<OutputField> =
        t.by.iter()
            .zip(values.iter())
            .map(|(n, v)| OutputField { name: n.clone(), value: FieldValue::Str((*v).to_owned()) })
            .collect();
    let mut output = t.output.clone();
    // longest names first, so `%ka.user.name` is not cut by a shorter prefix
    let mut by: Vec<(&Arc<str>, &&str)> = t.by.iter().zip(values.iter()).collect();
    by.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (n, v) in by {
        output = output.replace(&format!("%{n}"), v);
    }
    output = output.replace("%kustody.steps", &steps.join(" -> "));
    fields.push(OutputField { name: Arc::from("kustody.steps"), value: FieldValue::List(steps) });
    let last = hits.last();
    let audit_id = last.and_then(|h| h.audit_id.clone());
    fields.push(OutputField {
        name: Arc::from("ka.auditid"),
        value: audit_id.clone().map_or(FieldValue::Missing, FieldValue::Str),
    });
    Detection {
        rule: t.name.clone(),
        priority: t.priority,
        source: source.clone(),
        tags: t.tags.clone(),
        time_ns: last.map(|h| h.time_ns),
        output,
        output_fields: fields,
        audit_id,
        source_ref: last.map(|h| h.source_ref.clone()).unwrap_or_else(|| SourceRef {
            file: Arc::from(""),
            line: 0,
            offset: 0,
            format: kustody_model::SourceFormat::Native,
        }),
        context: last.map(|h| h.context.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("60s"), Some(60_000_000_000));
        assert_eq!(parse_window("30m"), Some(1_800_000_000_000));
        assert_eq!(parse_window("2h"), Some(7_200_000_000_000));
        assert_eq!(parse_window("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("5"), None);
        assert_eq!(parse_window("5w"), None);
        assert_eq!(parse_window("99999999999999999h"), None);
    }
}
