//! Live detection: one event at a time, in arrival order, the way `hunt` does it for a file.
//!
//! A [`Detector`] holds what hunt's collector holds for a run — the compiled engine, the
//! allow-list and its per-rule index, the correlator and the finding grouper — and applies them
//! to each event as it arrives. Unlike hunt, which writes a finding when it closes, a live
//! detector reports a finding the moment an event opens it, and again when repeats fold in and
//! when it closes: a responder sees the first `kubectl exec` at once, not ten minutes later.

use std::sync::Arc;

use kustody_model::{Event, Priority, SourceRef};

use crate::allow::{AllowList, RuleRef};
use crate::findings::{Finding, FindingOptions, Grouper};
use crate::{Correlator, Engine, Scratch};

/// What happened to a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An event opened it: report it now.
    Opened,
    /// A repeat (or a later stage of the same request) folded into it.
    Updated,
    /// Its window passed (or too many were open): it will not change again.
    Closed,
}

/// A finding and what just happened to it.
#[derive(Debug, Clone)]
pub struct Update {
    pub change: Change,
    pub finding: Finding,
}

/// A rule that fired on the event (kept, not quieted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: Arc<str>,
    pub priority: Priority,
    /// [`Finding::seq`] of the finding the match folded into (0 when it folded into none, e.g.
    /// a rule that only feeds correlations).
    pub finding_seq: u64,
}

/// What one event did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub matched: Vec<Matched>,
    /// Allow-list entries (by index) that quieted a match of this event.
    pub quieted: Vec<usize>,
    /// A rule needed a body that could not be parsed.
    pub degraded: bool,
    /// Rules whose match was demoted because the baseline knows the behaviour (counted, kept
    /// out of findings and correlations).
    pub demoted: Vec<Arc<str>>,
}

/// The streaming detector of `kustody serve`.
pub struct Detector {
    engine: Arc<Engine>,
    allow: Arc<AllowList>,
    allow_index: Vec<Vec<usize>>,
    correlator: Correlator,
    grouper: Grouper,
    scratch: Scratch,
    matched: Vec<u32>,
}

impl Detector {
    pub fn new(engine: Arc<Engine>, allow: Arc<AllowList>, opts: FindingOptions) -> Detector {
        let allow_index = index(&engine, &allow);
        Detector {
            correlator: engine.correlator(),
            engine,
            allow,
            allow_index,
            grouper: Grouper::new(opts),
            scratch: Scratch::default(),
            matched: Vec::new(),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn allow(&self) -> &Arc<AllowList> {
        &self.allow
    }

    /// Numbers this detector's findings from `base + 1`: several detectors (one per cluster)
    /// feeding one caller keep their [`Finding::seq`]s apart.
    #[must_use]
    pub fn with_seq_base(mut self, base: u64) -> Detector {
        self.grouper.set_seq_base(base);
        self
    }

    /// How findings fold (window, samples).
    pub fn options(&self) -> &FindingOptions {
        self.grouper.options()
    }

    /// Swaps in a reloaded rule set. Open findings stay open (they are keyed by rule name);
    /// correlations start afresh, because their partial state belongs to the old rules.
    pub fn replace_rules(&mut self, engine: Arc<Engine>, allow: Arc<AllowList>) {
        self.allow_index = index(&engine, &allow);
        self.correlator = engine.correlator();
        self.engine = engine;
        self.allow = allow;
    }

    /// Evaluates one event; appends what happened to findings to `updates`.
    pub fn observe(&mut self, ev: &Event<'_>, src: &SourceRef, updates: &mut Vec<Update>) -> Outcome {
        self.observe_with(ev, src, false, Vec::new(), updates)
    }

    /// [`Detector::observe`] with what a baseline says of the event: `known` demotes the rules'
    /// matches (counted in [`Outcome::demoted`]), and `extra` are its own detections (new
    /// behaviour, a rate out of band), grouped into findings like the rules'.
    pub fn observe_with(
        &mut self,
        ev: &Event<'_>,
        src: &SourceRef,
        known: bool,
        extra: Vec<kustody_model::Detection>,
        updates: &mut Vec<Update>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        self.matched.clear();
        self.engine.matches(ev, &mut self.scratch, &mut self.matched);
        outcome.degraded = ev.body_unparsed();
        if self.matched.is_empty() && extra.is_empty() {
            return outcome;
        }
        let mut dets = extra;
        let mut corr = Vec::new();
        for &i in &self.matched {
            if let Some(entries) = self.allow_index.get(i as usize) {
                if let Some(entry) = self.allow.suppression_among(entries, ev) {
                    outcome.quieted.push(entry);
                    continue;
                }
            }
            if known {
                if let Some(r) = self.engine.rule(i).filter(|_| self.engine.emits(i)) {
                    outcome.demoted.push(Arc::from(r.name.as_str()));
                }
                continue;
            }
            if self.engine.has_correlations() {
                self.engine.correlation_inputs(i, ev, src, &mut corr);
            }
            if !self.engine.emits(i) {
                continue;
            }
            if let Some(d) = self.engine.detection(i, ev, src.clone(), true) {
                dets.push(d);
            }
        }
        let mut closed = Vec::new();
        if !dets.is_empty() {
            let rules: Vec<(Arc<str>, Priority)> = dets.iter().map(|d| (d.rule.clone(), d.priority)).collect();
            let opened_before = self.opened();
            let seq = match self.grouper.event_live(dets, &mut closed) {
                Some(f) => {
                    let change = if f.seq > opened_before { Change::Opened } else { Change::Updated };
                    updates.push(Update { change, finding: f.clone() });
                    f.seq
                }
                None => 0,
            };
            outcome.matched.extend(rules.into_iter().map(|(rule, priority)| Matched {
                rule,
                priority,
                finding_seq: seq,
            }));
        }
        for inp in &corr {
            if let Some(d) = self.correlator.observe(inp) {
                let (rule, priority) = (d.rule.clone(), d.priority);
                let opened_before = self.opened();
                let seq = match self.grouper.correlation_live(d, &mut closed) {
                    Some(f) => {
                        let change = if f.seq > opened_before { Change::Opened } else { Change::Updated };
                        updates.push(Update { change, finding: f.clone() });
                        f.seq
                    }
                    None => 0,
                };
                outcome.matched.push(Matched { rule, priority, finding_seq: seq });
            }
        }
        updates.extend(closed.into_iter().map(|finding| Update { change: Change::Closed, finding }));
        outcome
    }

    /// Closes findings whose window has passed by `now_ns` (call it on a clock tick).
    pub fn tick(&mut self, now_ns: i64, updates: &mut Vec<Update>) {
        let mut closed = Vec::new();
        self.grouper.expire_until(now_ns, &mut closed);
        updates.extend(closed.into_iter().map(|finding| Update { change: Change::Closed, finding }));
    }

    /// Lets go of the open findings `keep` refuses without closing them (another process
    /// continues them); returns how many.
    pub fn forget(&mut self, keep: impl Fn(&crate::findings::Finding) -> bool) -> Vec<u64> {
        self.grouper.forget(keep)
    }

    /// Closes every open finding (shutdown).
    pub fn finish(&mut self, updates: &mut Vec<Update>) {
        let mut closed = Vec::new();
        self.grouper.finish(&mut closed);
        updates.extend(closed.into_iter().map(|finding| Update { change: Change::Closed, finding }));
    }

    /// Findings opened so far.
    fn opened(&self) -> u64 {
        self.grouper.opened()
    }
}

fn index(engine: &Engine, allow: &AllowList) -> Vec<Vec<usize>> {
    let rules: Vec<RuleRef<'_>> = engine.rules().map(|r| RuleRef { name: &r.name, priority: r.priority }).collect();
    allow.index(&rules)
}
