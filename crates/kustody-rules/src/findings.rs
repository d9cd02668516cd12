//! Findings: what a responder pages on, instead of one alert per rule match.
//!
//! Two foldings, both streaming in input order with bounded state:
//!
//! 1. **Per event.** Every rule an event fired becomes one finding: the highest priority wins
//!    (its rule names the finding), and all rules and tags are listed. One privileged
//!    DaemonSet create is one finding, not five alerts.
//! 2. **Repeats.** Findings with the same lead rule, by the same identity, on the same kind of
//!    target (resource and subresource) within a window (10 minutes by default, counted from the
//!    first) fold into one, with a count, first and last seen, and sample audit IDs. A pod token
//!    used with kubectl for a hundred requests is one finding with `count: 100`.
//!
//! A finding is emitted when its window has passed (by event time), when too many are open
//! ([`FindingOptions::max_open`], oldest first), or at the end of input ([`Grouper::finish`]).
//! Emission order is the order findings were opened, except that findings without an event
//! time wait for the end. Like the correlator, the result depends only on the order of inputs.

use std::collections::VecDeque;
use std::sync::Arc;

use kustody_model::{Detection, Priority, SourceRef};
use rustc_hash::FxHashMap;

/// How findings fold.
#[derive(Debug, Clone, Copy)]
pub struct FindingOptions {
    /// Repeats within this many nanoseconds of a finding's first event fold into it.
    pub window_ns: i64,
    /// Audit IDs kept per finding (the first ones).
    pub samples: usize,
    /// Findings held open at once before the oldest is emitted.
    pub max_open: usize,
}

impl Default for FindingOptions {
    fn default() -> Self {
        FindingOptions { window_ns: 600 * 1_000_000_000, samples: 5, max_open: 50_000 }
    }
}

/// One finding: a lead detection (the first event's highest-priority match) and what folded
/// into it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The first event's highest-priority detection: output text, fields and context.
    pub lead: Detection,
    /// The highest priority of any folded match.
    pub priority: Priority,
    /// Every rule that fired, in first-seen order.
    pub rules: Vec<Arc<str>>,
    /// Every tag of those rules, sorted.
    pub tags: Vec<String>,
    /// Events folded (an event with several rules counts once).
    pub events: u64,
    /// Rule matches folded.
    pub matches: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// The first audit IDs (at most [`FindingOptions::samples`]).
    pub audit_ids: Vec<String>,
    /// Where the last folded event is.
    pub last_ref: SourceRef,
    /// Number of this finding in its [`Grouper`] (1, 2, …; 0 for [`Finding::single`]): how a
    /// live caller recognises a finding it has seen opened when repeats fold into it.
    pub seq: u64,
}

impl Finding {
    /// A finding of one match (what `--no-group` reports).
    pub fn single(d: Detection) -> Finding {
        Finding {
            priority: d.priority,
            rules: vec![d.rule.clone()],
            tags: d.tags.to_vec(),
            events: 1,
            matches: 1,
            first_ns: d.time_ns,
            last_ns: d.time_ns,
            audit_ids: d.audit_id.iter().cloned().collect(),
            last_ref: d.source_ref.clone(),
            lead: d,
            seq: 0,
        }
    }
}

type Key = (Arc<str>, Option<String>, Option<String>, Option<String>);

/// Streaming folding of one run's detections into findings.
pub struct Grouper {
    opts: FindingOptions,
    open: FxHashMap<Key, Finding>,
    /// Open keys in the order they were opened (with their first time), for expiry.
    order: VecDeque<(Key, Option<i64>)>,
    /// Audit IDs of folded events and their finding: a later stage of the same request (an exec
    /// session's ResponseComplete after its ResponseStarted) joins that finding.
    stages: FxHashMap<String, Key>,
    /// Findings opened so far.
    opened: u64,
    /// Added to every [`Finding::seq`] (several groupers feeding one caller number apart).
    seq_base: u64,
}

impl Grouper {
    pub fn new(opts: FindingOptions) -> Grouper {
        Grouper {
            opts,
            open: FxHashMap::default(),
            order: VecDeque::new(),
            stages: FxHashMap::default(),
            opened: 0,
            seq_base: 0,
        }
    }

    /// Numbers findings from `base + 1` (see the field `seq_base`).
    pub fn set_seq_base(&mut self, base: u64) {
        self.seq_base = base;
    }

    /// How this grouper folds.
    pub fn options(&self) -> &FindingOptions {
        &self.opts
    }

    /// Findings currently open.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Findings opened so far (the highest [`Finding::seq`] given).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Feeds the detections of one event (a correlation finding is an event of its own);
    /// appends the findings this closes to `out`.
    pub fn event(&mut self, dets: Vec<Detection>, out: &mut Vec<Finding>) {
        self.add(dets, out, true);
    }

    /// Like [`Grouper::event`], and returns the open finding the event opened or folded into
    /// (a live detector reports it at once instead of when it closes).
    pub fn event_live(&mut self, dets: Vec<Detection>, out: &mut Vec<Finding>) -> Option<&Finding> {
        let key = self.add(dets, out, true)?;
        self.open.get(&key)
    }

    /// Like [`Grouper::correlation`], returning the finding as [`Grouper::event_live`] does.
    pub fn correlation_live(&mut self, d: Detection, out: &mut Vec<Finding>) -> Option<&Finding> {
        let key = self.add(vec![d], out, false)?;
        self.open.get(&key)
    }

    /// Closes the findings whose window has passed by `now_ns` (a live detector calls this on a
    /// clock tick, so a finding closes even when no later event arrives).
    pub fn expire_until(&mut self, now_ns: i64, out: &mut Vec<Finding>) {
        self.expire(now_ns, out);
    }

    /// Feeds a correlation's finding: a finding of its own, never folded into the event that
    /// completed it (it carries that event's audit ID).
    pub fn correlation(&mut self, d: Detection, out: &mut Vec<Finding>) {
        self.add(vec![d], out, false);
    }

    fn add(&mut self, mut dets: Vec<Detection>, out: &mut Vec<Finding>, stages: bool) -> Option<Key> {
        if dets.is_empty() {
            return None;
        }
        // most severe first (`Priority` orders Emergency first); ties keep rule order
        dets.sort_by_key(|d| d.priority);
        let time = dets.iter().find_map(|d| d.time_ns);
        if let Some(t) = time {
            self.expire(t, out);
        }
        let mut iter = dets.into_iter();
        let lead = iter.next()?;
        let rest: Vec<Detection> = iter.collect();
        // another stage of a request already in a finding: the same finding, not another event
        let stage_of = lead
            .audit_id
            .as_ref()
            .filter(|_| stages)
            .and_then(|id| self.stages.get(id))
            .and_then(|k| self.open.get_mut(k));
        if let Some(f) = stage_of.filter(|f| f.lead.context.user == lead.context.user) {
            fold(f, &lead, &rest, self.opts.samples);
            f.events -= 1;
            let id = lead.audit_id.as_ref()?;
            return self.stages.get(id).cloned();
        }
        let c = &lead.context;
        let key: Key = (lead.rule.clone(), c.user.clone(), c.resource.clone(), c.subresource.clone());
        if let Some(id) = lead.audit_id.as_ref().filter(|_| stages) {
            if self.stages.len() >= self.opts.max_open.saturating_mul(4) {
                self.stages.clear(); // bounded: only later-stage folding is lost
            }
            self.stages.insert(id.clone(), key.clone());
        }
        if let Some(f) = self.open.get_mut(&key) {
            fold(f, &lead, &rest, self.opts.samples);
            return Some(key);
        }
        if self.open.len() >= self.opts.max_open {
            self.close_oldest(out);
        }
        let mut f = Finding {
            priority: lead.priority,
            rules: Vec::new(),
            tags: Vec::new(),
            events: 0,
            matches: 0,
            first_ns: time,
            last_ns: time,
            audit_ids: Vec::new(),
            last_ref: lead.source_ref.clone(),
            lead: lead.clone(),
            seq: self.seq_base + self.opened + 1,
        };
        self.opened += 1;
        fold(&mut f, &lead, &rest, self.opts.samples);
        self.order.push_back((key.clone(), time));
        self.open.insert(key.clone(), f);
        Some(key)
    }

    /// Lets go of the open findings `keep` refuses, without emitting them: another process
    /// continues them (a bus partition that changed hands). Returns their seqs.
    pub fn forget(&mut self, keep: impl Fn(&Finding) -> bool) -> Vec<u64> {
        let gone: Vec<Key> = self.open.iter().filter(|(_, f)| !keep(f)).map(|(k, _)| k.clone()).collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let mut seqs = Vec::with_capacity(gone.len());
        for k in &gone {
            if let Some(f) = self.open.remove(k) {
                seqs.push(f.seq);
            }
        }
        let open = &self.open;
        // no stale entry may later close a finding reopened under the same key
        self.order.retain(|(k, _)| open.contains_key(k));
        self.stages.retain(|_, k| open.contains_key(k));
        seqs
    }

    /// Emits every open finding, in the order they were opened.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        while let Some((k, _)) = self.order.pop_front() {
            if let Some(f) = self.open.remove(&k) {
                out.push(f);
            }
        }
    }

    fn expire(&mut self, now: i64, out: &mut Vec<Finding>) {
        while let Some((_, Some(first))) = self.order.front() {
            if now.saturating_sub(*first) <= self.opts.window_ns {
                break;
            }
            self.close_oldest(out);
        }
    }

    fn close_oldest(&mut self, out: &mut Vec<Finding>) {
        if let Some((k, _)) = self.order.pop_front() {
            if let Some(f) = self.open.remove(&k) {
                out.push(f);
            }
        }
    }
}

fn fold(f: &mut Finding, lead: &Detection, rest: &[Detection], samples: usize) {
    f.events += 1;
    for d in std::iter::once(lead).chain(rest) {
        f.matches += 1;
        if d.priority < f.priority {
            f.priority = d.priority;
        }
        if !f.rules.contains(&d.rule) {
            f.rules.push(d.rule.clone());
        }
        for t in d.tags.iter() {
            if let Err(i) = f.tags.binary_search(t) {
                f.tags.insert(i, t.clone());
            }
        }
    }
    if let Some(t) = lead.time_ns {
        f.first_ns = Some(f.first_ns.map_or(t, |x| x.min(t)));
        f.last_ns = Some(f.last_ns.map_or(t, |x| x.max(t)));
    }
    if let Some(id) = &lead.audit_id {
        if f.audit_ids.len() < samples && !f.audit_ids.contains(id) {
            f.audit_ids.push(id.clone());
        }
    }
    f.last_ref = lead.source_ref.clone();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]
    use super::*;
    use kustody_model::{EventContext, SourceFormat};

    fn det(rule: &str, prio: Priority, user: &str, resource: &str, t_s: i64, id: &str) -> Detection {
        Detection {
            rule: Arc::from(rule),
            priority: prio,
            source: Arc::from("k8s_audit"),
            tags: Arc::from(vec![format!("T{}", rule.len())]),
            time_ns: Some(t_s * 1_000_000_000),
            output: format!("{rule} by {user}"),
            output_fields: Vec::new(),
            audit_id: Some(id.to_owned()),
            source_ref: SourceRef { file: Arc::from("f"), line: t_s as u64, offset: 0, format: SourceFormat::Native },
            context: EventContext {
                user: Some(user.to_owned()),
                resource: Some(resource.to_owned()),
                ..EventContext::default()
            },
        }
    }

    #[test]
    fn forgotten_findings_are_neither_emitted_nor_closing_a_later_one_early() {
        let w = FindingOptions::default().window_ns / 1_000_000_000;
        let mut g = Grouper::new(FindingOptions::default());
        let mut out = Vec::new();
        g.event(vec![det("Secret Read", Priority::Warning, "alice", "secrets", 0, "a")], &mut out);
        g.event(vec![det("Secret Read", Priority::Warning, "bob", "secrets", 1, "b")], &mut out);
        assert_eq!(g.open(), 2);
        // alice's partition went to another detector
        assert_eq!(g.forget(|f| f.lead.context.user.as_deref() != Some("alice")).len(), 1);
        assert_eq!(g.open(), 1);
        // alice comes back later (the partition returned): a new finding of the same key, which
        // the forgotten one's old place in the expiry order must not close early
        g.event(vec![det("Secret Read", Priority::Warning, "alice", "secrets", w - 1, "c")], &mut out);
        g.expire_until((w + 2) * 1_000_000_000, &mut out);
        let closed: Vec<_> = out.iter().map(|f| f.lead.context.user.clone().unwrap()).collect();
        assert_eq!(closed, vec!["bob".to_string()], "only bob's window has passed");
        assert_eq!(g.open(), 1);
        let mut rest = Vec::new();
        g.finish(&mut rest);
        assert_eq!(rest[0].audit_ids, vec!["c".to_string()], "alice's new finding, not the forgotten one");
    }

    #[test]
    fn one_event_with_five_rules_is_one_finding_led_by_the_highest_priority() {
        let mut g = Grouper::new(FindingOptions::default());
        let mut out = Vec::new();
        let dets = vec![
            det("DaemonSet Created", Priority::Warning, "u", "daemonsets", 0, "a"),
            det("Privileged", Priority::Critical, "u", "daemonsets", 0, "a"),
            det("Host Path", Priority::Critical, "u", "daemonsets", 0, "a"),
            det("Host Namespaces", Priority::Warning, "u", "daemonsets", 0, "a"),
            det("Root", Priority::Notice, "u", "daemonsets", 0, "a"),
        ];
        g.event(dets, &mut out);
        g.finish(&mut out);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(&*f.lead.rule, "Privileged");
        assert_eq!(f.priority, Priority::Critical);
        assert_eq!(f.rules.len(), 5);
        assert_eq!((f.events, f.matches), (1, 5));
        assert_eq!(f.audit_ids, ["a"]);
    }

    #[test]
    fn repeats_fold_within_the_window_and_reopen_after_it() {
        let mut g = Grouper::new(FindingOptions { samples: 3, ..FindingOptions::default() });
        let mut out = Vec::new();
        for i in 0..100 {
            g.event(vec![det("Token Used", Priority::Warning, "sa", "pods", i, &format!("id{i}"))], &mut out);
        }
        // another identity and another kind of target are other findings
        g.event(vec![det("Token Used", Priority::Warning, "sb", "pods", 100, "x")], &mut out);
        g.event(vec![det("Token Used", Priority::Warning, "sa", "secrets", 101, "y")], &mut out);
        assert!(out.is_empty(), "nothing closes within the window");
        assert_eq!(g.open(), 3);
        // eleven minutes after the first: the first closes, a new one opens
        g.event(vec![det("Token Used", Priority::Warning, "sa", "pods", 661, "z")], &mut out);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.events, 100);
        assert_eq!((f.first_ns, f.last_ns), (Some(0), Some(99_000_000_000)));
        assert_eq!(f.audit_ids, ["id0", "id1", "id2"]);
        assert_eq!(f.last_ref.line, 99);
        g.finish(&mut out);
        assert_eq!(out.len(), 4);
        let users: Vec<_> = out.iter().map(|f| f.lead.context.user.clone().unwrap()).collect();
        assert_eq!(users, ["sa", "sb", "sa", "sa"]);
    }

    #[test]
    fn the_stages_of_one_request_are_one_finding() {
        let mut g = Grouper::new(FindingOptions::default());
        let mut out = Vec::new();
        g.event(vec![det("Exec", Priority::Warning, "sa", "pods", 0, "req-1")], &mut out);
        // ResponseComplete of the same exec fires another rule: it joins, as the same event
        g.event(vec![det("Token Used Interactively", Priority::Warning, "sa", "pods", 8, "req-1")], &mut out);
        g.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].events, out[0].matches), (1, 2));
        assert_eq!(out[0].rules.len(), 2);
        assert_eq!(out[0].last_ns, Some(8_000_000_000));
    }

    #[test]
    fn open_findings_are_bounded() {
        let mut g = Grouper::new(FindingOptions { max_open: 10, ..FindingOptions::default() });
        let mut out = Vec::new();
        for i in 0..25 {
            g.event(vec![det("R", Priority::Warning, &format!("u{i}"), "pods", 0, &format!("a{i}"))], &mut out);
        }
        assert_eq!(g.open(), 10);
        assert_eq!(out.len(), 15);
        assert_eq!(out[0].lead.context.user.as_deref(), Some("u0"));
    }
}
