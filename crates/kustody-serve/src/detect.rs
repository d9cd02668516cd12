//! The detector thread: every stored event, in commit order, through the same engine, allow
//! list, correlator and finding grouper as `hunt`; findings stored, then published.
//!
//! It works from the store, not from memory alone: its cursor (the last event id evaluated) is
//! stored with the findings, so after a restart it first evaluates what was stored but not yet
//! evaluated. Delivery is therefore at least once: a crash between storing findings and moving
//! the cursor re-evaluates that batch (matches may then repeat; events never go unevaluated).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kustody_model::{Event, SourceFormat, SourceRef};
use kustody_rules::allow::AllowList;
use kustody_rules::live::{Change, Detector, Update};
use kustody_rules::Engine;
use kustody_store::{FindingRow, MatchRow, Store};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::respond::{self, Responder, Writes};
use crate::writer::{now_ns, DetectMsg};

/// Name of the detector's cursor in the store.
pub const CURSOR: &str = "detector";
/// The `file` of the [`SourceRef`] of a stored event; its `line` is the event's row id.
pub const STORE_REF: &str = "store";

/// A rule set waiting to replace the detector's (set by a reload, taken by the detector).
pub type PendingRules = Arc<Mutex<Option<(Arc<Engine>, Arc<AllowList>)>>>;

pub struct DetectorThread {
    /// Read-only: the cursor and the catch-up after a restart.
    pub store: Box<dyn Store>,
    /// Results go to the writer thread, the only writer.
    pub writes: std::sync::mpsc::SyncSender<crate::writer::Write>,
    pub detector: Detector,
    /// On a bus, events of other clusters than this server's go through a detector of their
    /// own each (findings, correlations and grouping never mix clusters), made on first sight.
    pub others: HashMap<String, Detector>,
    pub rx: Receiver<DetectMsg>,
    /// Incidents and notifications.
    pub responder: Responder,
    /// Playbook jobs, once their actions are committed.
    pub exec: Option<std::sync::mpsc::SyncSender<crate::execute::Job>>,
    pub metrics: Arc<Metrics>,
    pub publish: broadcast::Sender<Arc<str>>,
    pub pending: PendingRules,
    /// When the cursor was last stored.
    pub cursor_written: Instant,
    /// Who each IP was (shared with the writer and the live watch).
    pub identity: Arc<crate::identity::Identity>,
    /// The live baseline's options (`None`: no baseline).
    pub baseline: Option<kustody_baseline::live::LiveOptions>,
    /// A save of the live baseline is under way.
    pub baseline_saving: Arc<std::sync::atomic::AtomicBool>,
    /// Events come from bus partitions (several detectors share the store): ids from
    /// reserved blocks, no catch-up from the store, a cursor per partition.
    pub bus: bool,
    /// Ids in a reserved block (shared writers; set by the store).
    pub block: i64,
    /// The bus lease the round being recorded is evaluated under (its commit is fenced by it).
    pub lease: Option<(u32, String, i64)>,
}

/// Name of the live baseline's state in the store.
pub const BASELINE_STATE: &str = "baseline";
/// How often the live baseline is stored.
const BASELINE_SAVE: Duration = Duration::from_secs(300);

/// The pod behind a finding's peer IP, its acting pod's own IP, and the peer IP.
type Behind = (Option<kustody_incident::IpOwner>, Option<String>, Option<String>);

/// What makes two findings one (the grouper's key, and the cluster).
type AdoptKey = (String, Option<String>, Option<String>, Option<String>, Option<String>);

fn adopt_key(f: &FindingRow) -> AdoptKey {
    let sub = serde_json::from_str::<serde_json::Value>(&f.detail)
        .ok()
        .and_then(|d| d.get("subresource").and_then(serde_json::Value::as_str).map(str::to_owned));
    (f.rule.clone(), f.user.clone(), f.resource.clone(), sub, f.cluster.clone())
}

/// A finding continued from another detector's: counts added, the first lead kept.
fn continue_from(base: &FindingRow, row: &mut FindingRow, samples: usize) {
    row.id = base.id;
    row.events += base.events;
    row.matches += base.matches;
    row.first_ns = match (base.first_ns, row.first_ns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let newer = std::mem::take(&mut row.audit_ids);
    row.audit_ids.clone_from(&base.audit_ids);
    for id in newer {
        if row.audit_ids.len() < samples && !row.audit_ids.contains(&id) {
            row.audit_ids.push(id);
        }
    }
    for r in &base.rules {
        if !row.rules.contains(r) {
            row.rules.push(r.clone());
        }
    }
    for t in &base.tags {
        if !row.tags.contains(t) {
            row.tags.push(t.clone());
        }
    }
    row.tags.sort();
    let rank = |p: &str| p.parse::<kustody_model::Priority>().ok();
    if let (Some(b), Some(r)) = (rank(&base.priority), rank(&row.priority)) {
        // `Priority` orders the most severe first
        if b < r {
            row.priority.clone_from(&base.priority);
        }
    }
    row.output.clone_from(&base.output);
    row.detail.clone_from(&base.detail);
    row.lead_event = base.lead_event;
    row.source_ip.clone_from(&base.source_ip);
}

/// What the detector keeps between rounds besides the engine's state.
#[derive(Default)]
struct State {
    /// Finding seq → stored id (the detector allocates ids).
    ids: HashMap<u64, i64>,
    next_finding: i64,
    /// The end of the reserved block of finding ids (shared writers), `None`: unbounded.
    finding_end: Option<i64>,
    /// Finding seq → the cluster of the event that opened it (bus rounds name theirs).
    clusters: HashMap<u64, String>,
    /// Open findings another detector left in partitions taken over (bus): a finding opened
    /// here with the same rule, identity, resource and cluster within the window continues
    /// it rather than doubling it; the others are closed when their window passes.
    adopt: HashMap<AdoptKey, FindingRow>,
    /// Finding seq → the stored finding it continues.
    base: HashMap<u64, FindingRow>,
    /// Findings taken over whose window had passed when their key came again: to close.
    closing: Vec<FindingRow>,
    /// Finding seq → the pod its lead event's identity acted from.
    acting: HashMap<u64, String>,
    /// Names of correlation rules (their findings promote incidents).
    correlations: HashSet<String>,
    /// Finding seq → the pod behind its source IP, and its acting pod's own IP.
    behind: HashMap<u64, Behind>,
    /// What each identity normally does (learnt live), and when it was last stored.
    live: Option<kustody_baseline::live::Live>,
    live_saved: Option<Instant>,
    live_published: Option<Instant>,
}

impl DetectorThread {
    pub fn run(mut self) {
        // Ids must never reuse a stored one: without them the detector waits.
        let (next_finding, next_incident) = loop {
            let next = if self.bus { self.reserve().map(|(f, i, _)| (f, i)) } else { self.store.next_ids() };
            match next {
                Ok(n) => break n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the store's highest ids; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        let mut st =
            State { next_finding, correlations: correlation_names(self.detector.engine()), ..Default::default() };
        if self.bus {
            st.finding_end = Some(next_finding + self.block);
            self.responder.incident_ids_end = Some(next_incident + self.block);
        }
        st.live = self.baseline.clone().map(|opts| restore_baseline(self.store.as_ref(), opts));
        st.live_saved = Some(Instant::now());
        self.responder.restore(self.store.as_ref(), now_ns(), next_incident);
        let ids = &mut st;
        let mut cursor = match self.store.cursor(CURSOR) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the detector's cursor; starting from the beginning");
                0
            }
        };
        // Catch up with what was stored but not evaluated before the last stop (on a bus, the
        // unacknowledged messages come again instead).
        while !self.bus {
            let batch = match self.store.events_after(cursor, 2000) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "detector catch-up failed");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            let clusters: Vec<Option<String>> = batch.iter().map(|e| e.cluster.clone()).collect();
            let events: Vec<(i64, String)> = batch.into_iter().map(|e| (e.id, e.raw)).collect();
            cursor = self.evaluate(&events, &clusters, Instant::now(), ids, cursor, None);
        }
        loop {
            self.take_pending_rules(ids);
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(DetectMsg::Events(msg)) => {
                    // a reload that arrived while waiting applies to these events already
                    self.take_pending_rules(ids);
                    if let Some(round) = msg.round {
                        // ids from a shared sequence: no order to filter by
                        self.evaluate(&msg.events, &msg.clusters, msg.received, ids, cursor, Some(round));
                        continue;
                    }
                    let (fresh, clusters): (Vec<(i64, String)>, Vec<Option<String>>) = msg
                        .events
                        .into_iter()
                        .zip(msg.clusters.into_iter().chain(std::iter::repeat(None)))
                        .filter(|((id, _), _)| *id > cursor)
                        .unzip();
                    if !fresh.is_empty() {
                        cursor = self.evaluate(&fresh, &clusters, msg.received, ids, cursor, None);
                    }
                }
                Ok(DetectMsg::Command(cmd)) => self.command(cmd),
                Ok(DetectMsg::Restore { held, partitions }) => {
                    // once more after a failure: a reader whose connection broke reconnects
                    if !self.responder.restore_incidents(self.store.as_ref(), now_ns()) {
                        let _ = self.responder.restore_incidents(self.store.as_ref(), now_ns());
                    }
                    self.adopt_open_findings(ids, &held, partitions);
                }
                Ok(DetectMsg::Released { held, partitions }) => self.let_go(ids, &held, partitions),
                Err(RecvTimeoutError::Timeout) => {
                    let now = now_ns();
                    let mut updates = Vec::new();
                    self.detector.tick(now, &mut updates);
                    for d in self.others.values_mut() {
                        d.tick(now, &mut updates);
                    }
                    if !updates.is_empty() {
                        let _ = self.record(updates, Vec::new(), ids, None);
                    }
                    self.close_adopted(ids, now);
                    self.responder.book.expire(now);
                    self.baseline_chores(ids, false);
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.baseline_chores(ids, true);
        // Shutdown: close what is open so the store says so, with the cursor where it is (a
        // restart must not evaluate, and learn, the same events again).
        // On a bus they stay open instead: the detector that takes the partitions over
        // continues them (or closes them when their window has passed).
        let mut updates = Vec::new();
        if self.bus {
            self.detector.forget(|_| false);
            for d in self.others.values_mut() {
                d.forget(|_| false);
            }
        } else {
            self.detector.finish(&mut updates);
            for d in self.others.values_mut() {
                d.finish(&mut updates);
            }
        }
        let cursor = (!self.bus).then(|| (CURSOR.to_owned(), cursor));
        let _ = self.record(updates, Vec::new(), ids, cursor);
    }

    /// The detector for events of `cluster` (see the field `others`).
    fn detector_for(&mut self, cluster: Option<&str>) -> &mut Detector {
        let mine = self.responder.book.options().cluster.as_deref();
        match cluster {
            Some(c) if Some(c) != mine => {
                let k = self.others.len() as u64 + 1;
                let (engine, allow, opts) =
                    (self.detector.engine().clone(), self.detector.allow().clone(), *self.detector.options());
                self.others
                    .entry(c.to_owned())
                    .or_insert_with(|| Detector::new(engine, allow, opts).with_seq_base(k << 40))
            }
            _ => &mut self.detector,
        }
    }

    /// The open findings of partitions this detector now holds that it did not open itself
    /// (their detector died or handed them over), ready to be continued or closed.
    /// Forgets, without closing, the open findings (its own and those taken over) of partitions
    /// no longer held: their new holder continues them, and a close written here would race
    /// its updates.
    fn let_go(&mut self, st: &mut State, held: &[u32], partitions: u32) {
        let theirs = |cluster: Option<&str>, user: Option<&str>| {
            !held.contains(&crate::bus::partition_of(cluster, user, partitions))
        };
        let own = self.responder.book.options().cluster.clone();
        let mut gone = self.detector.forget(|f| !theirs(own.as_deref(), f.lead.context.user.as_deref()));
        for (cluster, d) in &mut self.others {
            gone.extend(d.forget(|f| !theirs(Some(cluster), f.lead.context.user.as_deref())));
        }
        // no longer ours: when these partitions come back, their findings are taken over from
        // the store like anyone else's (an id kept here would hide them from that forever)
        for seq in &gone {
            st.ids.remove(seq);
            st.base.remove(seq);
            st.acting.remove(seq);
            st.behind.remove(seq);
            st.clusters.remove(seq);
        }
        let mut n = gone.len();
        let before = st.adopt.len();
        st.adopt.retain(|_, f| !theirs(f.cluster.as_deref(), f.user.as_deref()));
        n += before - st.adopt.len();
        if n > 0 {
            tracing::info!(findings = n, "open findings of partitions handed over, left to their new holder");
        }
    }

    fn adopt_open_findings(&mut self, st: &mut State, held: &[u32], partitions: u32) {
        let ours: std::collections::HashSet<i64> =
            st.ids.values().chain(st.base.values().filter_map(|b| b.id.as_ref())).copied().collect();
        // every open finding, newest first, a page at a time (the partial index `findings_open`)
        let mut found = Vec::new();
        let mut before = None;
        loop {
            let q =
                kustody_store::FindingQuery { open_only: true, limit: 5_000, before_id: before, ..Default::default() };
            let page = match self.store.search_findings(&q).or_else(|_| self.store.search_findings(&q)) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the open findings of partitions taken over");
                    return;
                }
            };
            let last = page.last().and_then(|f| f.id);
            let full = page.len() == q.limit;
            found.extend(page);
            match last {
                Some(id) if full => before = Some(id),
                _ => break,
            }
        }
        let mut n = 0;
        for f in found {
            let Some(id) = f.id else { continue };
            let p = crate::bus::partition_of(f.cluster.as_deref(), f.user.as_deref(), partitions);
            if !f.open || ours.contains(&id) || !held.contains(&p) {
                continue;
            }
            // newest first: the newest open finding of a key is the one to continue
            if let std::collections::hash_map::Entry::Vacant(e) = st.adopt.entry(adopt_key(&f)) {
                e.insert(f);
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(findings = n, "open findings of partitions taken over");
        }
    }

    /// Closes the findings taken over whose window has passed by `now` (as the grouper closes
    /// its own on the clock).
    fn close_adopted(&mut self, st: &mut State, now: i64) {
        let window = self.detector.options().window_ns;
        let expired: Vec<AdoptKey> = st
            .adopt
            .iter()
            .filter(|(_, f)| f.first_ns.is_none_or(|t| now.saturating_sub(t) > window))
            .map(|(k, _)| k.clone())
            .collect();
        let mut rows = std::mem::take(&mut st.closing);
        rows.extend(expired.iter().filter_map(|k| st.adopt.remove(k)));
        if rows.is_empty() {
            return;
        }
        for f in &mut rows {
            f.open = false;
        }
        if let Err(e) = self.write(rows.clone(), Vec::new(), &Writes::default(), None) {
            tracing::error!(error = %e, "cannot close findings taken over; trying again");
            st.closing = rows.into_iter().map(|f| FindingRow { open: true, ..f }).collect();
            return;
        }
        for f in rows {
            let _ = self
                .publish
                .send(Arc::from(serde_json::json!({ "change": "closed", "finding": finding_json(&f) }).to_string()));
        }
    }

    /// Reserves blocks of finding and incident ids through the writer (the only connection
    /// that writes); keeps `block`, the size of each.
    fn reserve(&mut self) -> Result<(i64, i64, i64), kustody_store::StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task: crate::writer::StoreTask = Box::new(move |store| {
            let _ = tx.send(store.reserve_ids());
        });
        self.writes
            .send(crate::writer::Write::Run(task))
            .map_err(|_| kustody_store::StoreError::Other("the writer stopped".into()))?;
        let r = rx.recv().map_err(|_| kustody_store::StoreError::Other("the writer stopped".into()))??;
        self.block = r.2;
        Ok(r)
    }

    /// Makes sure `findings` new finding ids and as many incident ids are left in the
    /// reserved blocks (shared writers only).
    fn ensure_ids(&mut self, st: &mut State, findings: usize) -> Result<(), String> {
        if !self.bus {
            return Ok(());
        }
        let want = i64::try_from(findings).unwrap_or(i64::MAX);
        let short_f = st.finding_end.is_some_and(|end| st.next_finding + want > end);
        let short_i = self.responder.incident_ids_left().is_some_and(|left| left < want);
        if short_f || short_i {
            let (f, i, n) = self.reserve().map_err(|e| format!("cannot reserve ids: {e}"))?;
            st.next_finding = f;
            st.finding_end = Some(f + n);
            self.responder.set_incident_ids(i, i + n);
        }
        Ok(())
    }

    fn take_pending_rules(&mut self, st: &mut State) {
        let next = self.pending.lock().ok().and_then(|mut p| p.take());
        if let Some((engine, allow)) = next {
            st.correlations = correlation_names(&engine);
            for d in self.others.values_mut() {
                d.replace_rules(engine.clone(), allow.clone());
            }
            self.detector.replace_rules(engine, allow);
            tracing::info!("detector now uses the reloaded rules");
        }
    }

    /// A responder's change: applied, stored with its notifications, then answered.
    fn command(&mut self, cmd: respond::Command) {
        let mut w = Writes::default();
        let result = self.responder.command(cmd.incident, &cmd.change, self.store.as_ref(), now_ns(), &mut w);
        let result = match result {
            // the book takes the change only once it is stored: a failed write changes nothing
            Ok((json, changed)) => match self.write(Vec::new(), Vec::new(), &w, None) {
                Ok(ids) => {
                    self.responder.install(changed);
                    self.published(&w, &ids);
                    Ok(json)
                }
                Err(e) => Err(format!("the change could not be stored: {e}")),
            },
            Err(e) => Err(e),
        };
        let _ = cmd.reply.send(result);
    }

    /// Sends a round to the writer and waits for its commit.
    fn write(
        &self,
        findings: Vec<FindingRow>,
        matches: Vec<(MatchRow, Option<usize>)>,
        w: &Writes,
        cursor: Option<(String, i64)>,
    ) -> Result<kustody_store::BatchIds, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = crate::writer::Detections {
            findings,
            matches,
            incidents: w.incidents.clone(),
            notes: w.notes.clone(),
            outbox: w.outbox.clone(),
            actions: w.actions.clone(),
            lease: if cursor.is_some() { self.lease.clone() } else { None },
            cursor,
            reply: tx,
        };
        self.writes
            .send(crate::writer::Write::Detections(Box::new(job)))
            .map_err(|_| "the writer stopped".to_owned())?;
        match rx.recv() {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the writer stopped".to_owned()),
        }
    }

    /// After a commit: incidents to the stream, sinks woken, playbook jobs to the executor.
    fn published(&self, w: &Writes, ids: &kustody_store::BatchIds) {
        if let Some(exec) = &self.exec {
            for (job, rows) in &w.jobs {
                let mut job = job.clone();
                for ((id, _), row) in job.steps.iter_mut().zip(rows) {
                    *id = ids.actions.get(*row).copied().unwrap_or_default();
                }
                if exec.try_send(job).is_err() {
                    // the executor is busy: the actions stay `planned` and run at the next start
                    tracing::error!("the action executor's queue is full; actions stay planned");
                }
            }
        }
        for inc in &w.changed {
            let _ =
                self.publish.send(Arc::from(serde_json::json!({ "change": "incident", "incident": inc }).to_string()));
        }
        self.responder.wake(&w.outbox);
        self.metrics.notifications_queued.fetch_add(w.outbox.len() as u64, Relaxed);
    }

    /// Evaluates events in order, stores findings and matches, moves the cursor; returns it.
    fn evaluate(
        &mut self,
        events: &[(i64, String)],
        clusters: &[Option<String>],
        received: Instant,
        ids: &mut State,
        cursor: i64,
        round: Option<crate::writer::Round>,
    ) -> i64 {
        let file: Arc<str> = Arc::from(STORE_REF);
        let mut updates: Vec<Update> = Vec::new();
        let mut matches: Vec<(i64, kustody_rules::live::Matched)> = Vec::new();
        let mut last = cursor;
        for (n, (id, raw)) in events.iter().enumerate() {
            last = last.max(*id);
            let Ok(ev) = Event::parse(raw) else { continue };
            let src = SourceRef { file: file.clone(), line: *id as u64, offset: 0, format: SourceFormat::Native };
            let before = updates.len();
            // the baseline judges the event by what it knew before it
            let (known, extra) = match ids.live.as_mut() {
                Some(b) => (b.knows(&ev), b.observe(&ev, &src)),
                None => (false, Vec::new()),
            };
            let cluster = clusters.get(n).and_then(Option::as_deref);
            let out = self.detector_for(cluster).observe_with(&ev, &src, known, extra, &mut updates);
            for r in &out.demoted {
                self.metrics.count_demoted(r);
            }
            for u in updates.get(before..).unwrap_or_default() {
                if u.change == Change::Opened {
                    let acting = respond::acting_pod(&ev);
                    let t = ev.time_ns().unwrap_or_default();
                    // the peer the apiserver saw: the last entry (the first is the client's word)
                    let peer = ev.source_ips().and_then(|ips| ips.last().cloned());
                    let behind = peer
                        .as_deref()
                        .and_then(|ip| self.identity.lookup(ip, t))
                        .filter(|a| a.interval.pod.is_pod())
                        .map(|a| kustody_incident::IpOwner {
                            pod: a.interval.pod.qualified_name(),
                            node: a.interval.pod.node.clone(),
                            owner: a.interval.pod.owner.clone(),
                            observed: a.confidence == kustody_iphistory::Confidence::Observed,
                        });
                    let own_ip = acting
                        .as_deref()
                        .and_then(|p| p.split_once('/'))
                        .and_then(|(ns, name)| self.identity.ip_of_pod(ns, name, t));
                    ids.behind.insert(u.finding.seq, (behind, own_ip, peer.map(|p| p.into_owned())));
                    let cluster = clusters.get(n).cloned().flatten();
                    if !ids.adopt.is_empty() {
                        let lead = &u.finding.lead;
                        let key: AdoptKey = (
                            lead.rule.to_string(),
                            lead.context.user.clone(),
                            lead.context.resource.clone(),
                            lead.context.subresource.clone(),
                            cluster.clone(),
                        );
                        let window = self.detector.options().window_ns;
                        if let Some(base) = ids.adopt.remove(&key) {
                            let within = match (base.first_ns, u.finding.first_ns) {
                                (Some(a), Some(b)) => b.saturating_sub(a) <= window,
                                _ => false,
                            };
                            if within {
                                if let Some(id) = base.id {
                                    ids.ids.insert(u.finding.seq, id);
                                }
                                ids.base.insert(u.finding.seq, base);
                            } else {
                                // its window passed: closed on the next tick
                                ids.closing.push(base);
                            }
                        }
                    }
                    if let Some(c) = cluster {
                        ids.clusters.insert(u.finding.seq, c);
                    }
                    if let Some(p) = acting {
                        ids.acting.insert(u.finding.seq, p);
                    }
                }
            }
            for m in out.matched {
                self.metrics.count_rule(&m.rule);
                matches.push((*id, m));
            }
        }
        // The cursor moves with every batch that found something, and at least once a second
        // otherwise: after a crash at most a second of quiet events is evaluated again.
        let move_cursor =
            !updates.is_empty() || !matches.is_empty() || self.cursor_written.elapsed() >= Duration::from_secs(1);
        if move_cursor {
            self.cursor_written = Instant::now();
        }
        match round {
            // a bus round always commits its partition's cursor, and says when it did
            Some(r) => {
                self.lease = Some(r.lease);
                let result = self.record(updates, matches, ids, Some(r.cursor));
                self.lease = None;
                let _ = r.done.send(result);
            }
            None => {
                let _ = self.record(updates, matches, ids, move_cursor.then(|| (CURSOR.to_owned(), last)));
            }
        }
        if !ids.adopt.is_empty() || !ids.closing.is_empty() {
            self.close_adopted(ids, now_ns());
        }
        self.metrics.detect_seconds.observe(received.elapsed().as_secs_f64());
        self.baseline_chores(ids, false);
        last
    }

    /// Publishes the live baseline's numbers (every 5 s) and stores it (every 5 min, and at
    /// `last`), forgetting stale values first.
    fn baseline_chores(&mut self, st: &mut State, last: bool) {
        let Some(live) = st.live.as_mut() else { return };
        if last || st.live_published.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            st.live_published = Some(Instant::now());
            let snap = crate::metrics::BaselineSnapshot {
                identities: live.identities(),
                values: live.values(),
                series: live.series(),
                counts: live.counts.clone(),
                top: live.top_rates(100),
            };
            if let Ok(mut b) = self.metrics.baseline.lock() {
                *b = Some(snap);
            }
        }
        if !last && st.live_saved.is_some_and(|t| t.elapsed() < BASELINE_SAVE) {
            return;
        }
        st.live_saved = Some(Instant::now());
        live.forget_stale();
        if !last && self.baseline_saving.load(Relaxed) {
            return; // the previous save is still being written
        }
        // the final save must not be overtaken by an older one still under way
        let t0 = Instant::now();
        while last && self.baseline_saving.load(Relaxed) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Serialising and compressing a large baseline takes seconds: done on a thread of its
        // own from a copy, so neither detection nor the writer waits (except at shutdown).
        let copy = live.clone();
        let writes = self.writes.clone();
        let saving = self.baseline_saving.clone();
        saving.store(true, Relaxed);
        let save = move || {
            let packed = copy
                .to_json()
                .map_err(|e| e.to_string())
                .and_then(|t| kustody_store::compress_state(t.as_bytes()).map_err(|e| e.to_string()));
            match packed {
                Ok(packed) => {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
                    let task: crate::writer::StoreTask = Box::new(move |store| {
                        let _ = tx.send(store.set_state(BASELINE_STATE, &packed).map_err(|e| e.to_string()));
                    });
                    if writes.send(crate::writer::Write::Run(task)).is_ok() {
                        if let Ok(Err(e)) = rx.recv() {
                            tracing::error!(error = %e, "cannot store the live baseline");
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot serialise the live baseline"),
            }
            saving.store(false, Relaxed);
        };
        if last {
            save();
        } else if std::thread::Builder::new().name("kustody-baseline".into()).spawn(save).is_err() {
            self.baseline_saving.store(false, Relaxed);
        }
    }

    /// Stores finding changes, the incidents they fold into and their notifications, matches
    /// and the cursor in one commit; publishes the changes once stored.
    fn record(
        &mut self,
        updates: Vec<Update>,
        matches: Vec<(i64, kustody_rules::live::Matched)>,
        st: &mut State,
        cursor: Option<(String, i64)>,
    ) -> Result<(), String> {
        // The last state of each finding in this batch, remembering whether it was opened here.
        let mut order: Vec<u64> = Vec::new();
        let mut last: HashMap<u64, (Update, bool)> = HashMap::new();
        for u in updates {
            let seq = u.finding.seq;
            let opened = u.change == Change::Opened;
            match last.get_mut(&seq) {
                Some((prev, was_opened)) => {
                    *was_opened |= opened;
                    *prev = u;
                }
                None => {
                    order.push(seq);
                    last.insert(seq, (u, opened));
                }
            }
        }
        // Ids are allocated here, so matches, incidents and notifications can name them.
        let new = order.iter().filter(|s| !st.ids.contains_key(s)).count();
        if let Err(e) = self.ensure_ids(st, new.max(order.len())) {
            tracing::error!(error = %e, "detections not stored");
            return Err(e);
        }
        for seq in &order {
            if !st.ids.contains_key(seq) {
                st.ids.insert(*seq, st.next_finding);
                st.next_finding += 1;
            }
        }
        let mut rows: Vec<FindingRow> = Vec::with_capacity(order.len());
        let mut inputs = Vec::with_capacity(order.len());
        for seq in &order {
            let Some((u, _)) = last.get(seq) else { continue };
            let owner = st.behind.get(seq).and_then(|b| b.0.as_ref());
            let mut row = finding_row(u, st.ids.get(seq).copied(), owner);
            row.cluster = st.clusters.get(seq).cloned().or_else(|| self.responder.book.options().cluster.clone());
            if let Some(base) = st.base.get(seq) {
                continue_from(base, &mut row, self.detector.options().samples);
            }
            let corr = st.correlations.contains(&*u.finding.lead.rule);
            let mut input = respond::finding_input(&row, &u.finding, st.acting.get(seq).cloned(), corr);
            if let Some((behind, own, peer)) = st.behind.get(seq) {
                input.source_pod.clone_from(behind);
                input.acting_pod_ip.clone_from(own);
                input.peer_ip.clone_from(peer);
            }
            inputs.push((row.clone(), input));
            rows.push(row);
        }
        let match_rows: Vec<(MatchRow, Option<usize>)> = matches
            .into_iter()
            .map(|(event_id, m)| {
                let row = MatchRow {
                    event_id,
                    rule: m.rule.to_string(),
                    priority: m.priority.to_string(),
                    finding_id: st.ids.get(&m.finding_seq).copied(),
                };
                (row, None)
            })
            .collect();
        if rows.is_empty() && match_rows.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let now = now_ns();
        let mut w = Writes::default();
        self.responder.fold(&inputs, now, &mut w);
        let ids = match self.write(rows.clone(), match_rows, &w, cursor) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "detections not stored; their notifications go with the next change");
                self.responder.unmark(&w);
                // A finding the grouper closed is never reported again: its closing is kept
                // and written once the store is back (else it would stay open for good).
                for (seq, row) in order.iter().zip(&rows) {
                    if !row.open {
                        st.closing.push(row.clone());
                        st.ids.remove(seq);
                        st.acting.remove(seq);
                        st.behind.remove(seq);
                        st.clusters.remove(seq);
                        st.base.remove(seq);
                    }
                }
                return Err(e);
            }
        };
        let mut published = Vec::new();
        for (seq, row) in order.iter().zip(rows) {
            let Some((u, opened)) = last.get(seq) else { continue };
            if *opened {
                self.metrics.findings_opened.fetch_add(1, Relaxed);
            }
            if u.change == Change::Closed {
                st.ids.remove(seq);
                st.acting.remove(seq);
                st.behind.remove(seq);
                st.clusters.remove(seq);
                st.base.remove(seq);
            }
            let change = if *opened {
                "opened"
            } else if u.change == Change::Closed {
                "closed"
            } else {
                "updated"
            };
            published.push(serde_json::json!({ "change": change, "finding": finding_json(&row) }).to_string());
        }
        for p in published {
            // No subscriber is fine; slow subscribers see a `lagged` notice from the stream.
            let _ = self.publish.send(Arc::from(p));
        }
        self.published(&w, &ids);
        Ok(())
    }
}

/// The stored live baseline, or a new one (none stored, or unreadable: said, and relearnt).
fn restore_baseline(store: &dyn Store, opts: kustody_baseline::live::LiveOptions) -> kustody_baseline::live::Live {
    match store.state(BASELINE_STATE) {
        Ok(Some(bytes)) => match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| kustody_baseline::live::Live::from_json(t).map_err(|e| e.to_string()))
        {
            Ok(mut l) => {
                l.opts = opts;
                l.known.min_days = l.opts.min_days.max(1);
                tracing::info!(identities = l.identities(), values = l.values(), "live baseline restored");
                l
            }
            Err(e) => {
                tracing::error!(error = %e, "the stored live baseline is unreadable; learning afresh");
                kustody_baseline::live::Live::new(opts)
            }
        },
        Ok(None) => kustody_baseline::live::Live::new(opts),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the stored live baseline; learning afresh");
            kustody_baseline::live::Live::new(opts)
        }
    }
}

fn correlation_names(engine: &Engine) -> HashSet<String> {
    engine.correlations().map(|c| c.name.clone()).collect()
}

/// The stored row of a finding; `source_pod` is the pod that held its source IP then.
fn finding_row(u: &Update, id: Option<i64>, source_pod: Option<&kustody_incident::IpOwner>) -> FindingRow {
    let f = &u.finding;
    let c = &f.lead.context;
    let fields: serde_json::Map<String, serde_json::Value> =
        f.lead.output_fields.iter().map(|o| (o.name.to_string(), serde_json::Value::String(o.value.text()))).collect();
    FindingRow {
        id,
        rule: f.lead.rule.to_string(),
        priority: f.priority.to_string(),
        rules: f.rules.iter().map(|r| r.to_string()).collect(),
        tags: f.tags.clone(),
        events: f.events,
        matches: f.matches,
        first_ns: f.first_ns,
        last_ns: f.last_ns,
        user: c.user.clone(),
        namespace: c.namespace.clone(),
        resource: c.resource.clone(),
        name: c.name.clone(),
        source_ip: c.source_ip.clone(),
        output: f.lead.output.clone(),
        audit_ids: f.audit_ids.clone(),
        lead_event: (&*f.lead.source_ref.file == STORE_REF).then_some(f.lead.source_ref.line as i64),
        open: u.change != Change::Closed,
        cluster: None,
        detail: serde_json::json!({
            "output_fields": fields,
            "verb": c.verb,
            "subresource": c.subresource,
            "user_agent": c.user_agent,
            "impersonated_user": c.impersonated_user,
            "response_code": c.response_code,
            "request_uri": c.request_uri,
            "command": c.command,
            "source_pod": source_pod.map(|o| serde_json::json!({
                "pod": o.pod, "node": o.node, "owner": o.owner, "observed": o.observed,
            })),
        })
        .to_string(),
    }
}

/// A finding as the API and the stream show it.
pub fn finding_json(f: &FindingRow) -> serde_json::Value {
    let t = |ns: Option<i64>| ns.map(kustody_model::time::format_rfc3339_nanos);
    serde_json::json!({
        "id": f.id,
        "rule": f.rule,
        "priority": f.priority,
        "rules": f.rules,
        "tags": f.tags,
        "events": f.events,
        "matches": f.matches,
        "first_seen": t(f.first_ns),
        "last_seen": t(f.last_ns),
        "user": f.user,
        "namespace": f.namespace,
        "resource": f.resource,
        "name": f.name,
        "source_ip": f.source_ip,
        "output": f.output,
        "audit_ids": f.audit_ids,
        "evidence_event": f.lead_event,
        "open": f.open,
        "cluster": f.cluster,
        "detail": serde_json::from_str::<serde_json::Value>(&f.detail).unwrap_or(serde_json::Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Option<i64>, first: i64, audit: &[&str], priority: &str, output: &str) -> FindingRow {
        FindingRow {
            id,
            rule: "r".into(),
            priority: priority.into(),
            rules: vec!["r".into()],
            tags: vec!["b".into()],
            events: 2,
            matches: 3,
            first_ns: Some(first),
            last_ns: Some(first + 10),
            user: Some("u".into()),
            namespace: None,
            resource: Some("secrets".into()),
            name: None,
            source_ip: None,
            output: output.into(),
            audit_ids: audit.iter().map(|s| (*s).to_owned()).collect(),
            lead_event: Some(first),
            open: true,
            cluster: Some("eu".into()),
            detail: r#"{"subresource":null}"#.into(),
        }
    }

    #[test]
    fn a_finding_taken_over_is_continued_not_doubled() {
        let base = row(Some(42), 100, &["a", "b"], "Warning", "first lead");
        let mut new = row(None, 150, &["b", "c", "d", "e"], "Critical", "later lead");
        new.tags = vec!["a".into()];
        assert_eq!(adopt_key(&base), adopt_key(&new));
        continue_from(&base, &mut new, 4);
        assert_eq!(new.id, Some(42), "the stored finding is updated, not a second one inserted");
        assert_eq!((new.events, new.matches), (4, 6));
        assert_eq!(new.first_ns, Some(100));
        assert_eq!(new.audit_ids, ["a", "b", "c", "d"]);
        assert_eq!(new.priority, "Critical", "the more severe priority");
        assert_eq!(new.output, "first lead");
        assert_eq!(new.lead_event, Some(100));
        assert_eq!(new.tags, ["a", "b"]);
        let mut other = row(None, 150, &[], "Warning", "x");
        other.cluster = Some("us".into());
        assert_ne!(adopt_key(&base), adopt_key(&other), "clusters never share a finding");
    }
}
