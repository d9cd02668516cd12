//! The one thread that writes the store: group commit of whatever the sources handed over,
//! then an answer to each, then the stored events to the detector.
//!
//! **Architecture Invariant:** a source answers its sender only after the writer's reply,
//! which comes after the commit returned (`synchronous=FULL`: on disk). Nothing is acknowledged
//! from memory.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kustody_store::{
    AlertRow, Appended, Batch, BatchIds, EventRow, FindingRow, IncidentWrite, MatchRow, NoteRow, Origin, OutboxWrite,
    Store, StoreError,
};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Where the writer answers a job, once its commit returned.
pub type Reply = oneshot::Sender<Result<Appended, StoreError>>;

/// Work for the writer.
pub enum Job {
    Events { rows: Vec<EventRow<'static>>, origin: Origin, received: Instant, reply: Reply },
    Alerts { rows: Vec<AlertRow>, reply: Reply },
}

/// The events of one origin in a group commit: rows, each job's count and reply, first arrival.
type Group = (Origin, Vec<EventRow<'static>>, Vec<(usize, Reply)>, Instant);

/// The detector's results, written by the writer (the only SQLite writer, so the detector never
/// waits on the database lock). Matches refer to a finding by its row id when the finding is
/// already stored, or by its index in `findings` when this job inserts it.
pub struct Detections {
    pub findings: Vec<FindingRow>,
    pub matches: Vec<(MatchRow, Option<usize>)>,
    pub incidents: Vec<IncidentWrite>,
    pub notes: Vec<NoteRow>,
    /// Notifications, committed with what caused them.
    pub outbox: Vec<OutboxWrite>,
    /// Playbook actions decided.
    pub actions: Vec<kustody_store::ActionRow>,
    /// Move a cursor (the detector's, or a bus partition's) here, in the same commit.
    pub cursor: Option<(String, i64)>,
    /// Commit only while this bus lease `(partition, owner, epoch)` holds.
    pub lease: Option<(u32, String, i64)>,
    pub reply: std::sync::mpsc::SyncSender<Result<BatchIds, StoreError>>,
}

/// A closure run on the store by the writer (delivery attempts, outbox retries): small writes
/// that must not open a second writer. It answers through its own channel.
pub type StoreTask = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// Hands a task to the writer thread from async code (the channel is bounded: the send may
/// wait, off the runtime).
pub async fn send_task(writes: &std::sync::mpsc::SyncSender<Write>, task: StoreTask) -> Result<(), String> {
    let w = writes.clone();
    match tokio::task::spawn_blocking(move || w.send(Write::Run(task)).is_ok()).await {
        Ok(true) => Ok(()),
        _ => Err("the server is stopping".into()),
    }
}

/// Work for the writer besides ingest.
pub enum Write {
    Detections(Box<Detections>),
    Run(StoreTask),
}

/// Stored events on their way to the detector: (row id, JSON text), with when the batch arrived.
pub struct ToDetect {
    pub events: Vec<(i64, String)>,
    /// Each event's cluster, in the order of `events` (findings carry the cluster of the
    /// event that opened them; events of another cluster than the server's go through a
    /// detector of their own).
    pub clusters: Vec<Option<String>>,
    pub received: Instant,
    /// A bus message's round: its cursor goes into the findings' commit, and the consumer
    /// waits for that commit before acknowledging the message.
    pub round: Option<Round>,
}

/// See [`ToDetect::round`].
pub struct Round {
    /// The partition's cursor and the message's stream sequence.
    pub cursor: (String, i64),
    /// The lease the round is evaluated under `(partition, owner, epoch)`: the commit is
    /// refused once it changed hands.
    pub lease: (u32, String, i64),
    /// Answered once the round's findings and cursor are committed.
    pub done: std::sync::mpsc::SyncSender<Result<(), String>>,
}

/// What the detector thread receives.
pub enum DetectMsg {
    Events(ToDetect),
    Command(crate::respond::Command),
    /// Bus partitions changed hands: read the open incidents again, and the open findings
    /// of the partitions now `held` (of `partitions`).
    Restore {
        held: Vec<u32>,
        partitions: u32,
    },
    /// Bus partitions were lost (to a rebalance, or leases not renewed in time): let go of the
    /// open findings of partitions no longer `held`, without closing them (their new holder
    /// continues them).
    Released {
        held: Vec<u32>,
        partitions: u32,
    },
}

/// Group commits stop growing at this many events.
const GROUP_EVENTS: usize = 2000;

/// What the writer does besides appending: retention on a timer.
pub struct Retention {
    pub max_age_ns: Option<i64>,
    pub max_bytes: Option<u64>,
    pub every: Duration,
}

/// Runs until every job sender is gone (shutdown: the sources stopped, so everything accepted
/// has been answered).
#[allow(clippy::too_many_arguments, reason = "the writer's channels and shared state, wired once by `serve`")]
pub fn run(
    mut store: Box<dyn Store>,
    jobs: Receiver<Job>,
    detections: Receiver<Write>,
    detect: SyncSender<DetectMsg>,
    metrics: Arc<Metrics>,
    retention: Retention,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    identity: Arc<crate::identity::Identity>,
    cluster: Option<String>,
    forward: bool,
) {
    let mut last_retention = Instant::now();
    let mut last_flush = Instant::now();
    let mut last_stats = Instant::now() - Duration::from_secs(60);
    loop {
        serve_detections(store.as_mut(), &detections, &metrics);
        let first = match jobs.recv_timeout(Duration::from_millis(2)) {
            Ok(j) => Some(j),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            let mut n = count(&batch);
            while n < GROUP_EVENTS {
                match jobs.try_recv() {
                    Ok(j) => {
                        batch.push(j);
                        n = count(&batch);
                    }
                    Err(_) => break,
                }
            }
            let to = forward.then_some(&detect);
            commit(store.as_mut(), batch, to, &detections, &metrics, &healthy, (&identity, cluster.as_deref()));
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            last_flush = Instant::now();
            flush_intervals(store.as_mut(), &identity, &metrics);
        }
        if last_retention.elapsed() >= retention.every {
            last_retention = Instant::now();
            let now = now_ns();
            if retention.max_age_ns.is_some() || retention.max_bytes.is_some() {
                match store.retain(now, retention.max_age_ns, retention.max_bytes) {
                    Ok(r) if r.events_removed + r.alerts_removed + r.findings_removed > 0 => tracing::info!(
                        events = r.events_removed,
                        alerts = r.alerts_removed,
                        findings = r.findings_removed,
                        "retention removed old records"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention failed"),
                }
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(5) {
            last_stats = Instant::now();
            if let Ok(s) = store.stats() {
                metrics.store_bytes.store(s.bytes, Relaxed);
                metrics.store_events.store(s.events, Relaxed);
            }
        }
    }
    // The sources are done: let the detector finish (it closes open findings) and write what
    // it sends until it stops.
    drop(detect);
    while let Ok(d) = detections.recv() {
        write_detections(store.as_mut(), d, &metrics);
    }
    flush_intervals(store.as_mut(), &identity, &metrics);
}

/// Stores the IP holds that changed (what `whois` reads); kept to retry when the store fails.
fn flush_intervals(store: &mut dyn Store, identity: &crate::identity::Identity, metrics: &Metrics) {
    metrics.ip_intervals.store(identity.len() as u64, Relaxed);
    metrics.ip_intervals_evicted.store(identity.evicted(), Relaxed);
    let changed = identity.take_changed();
    if changed.is_empty() {
        return;
    }
    if let Err(e) = store.save_intervals(&changed) {
        metrics.store_errors.fetch_add(1, Relaxed);
        tracing::error!(error = %e, intervals = changed.len(), "cannot store IP history; retrying");
        identity.requeue(&changed);
    }
}

fn count(batch: &[Job]) -> usize {
    batch
        .iter()
        .map(|j| match j {
            Job::Events { rows, .. } => rows.len(),
            Job::Alerts { rows, .. } => rows.len(),
        })
        .sum()
}

/// Commits a group of jobs: one transaction per origin, then answers each job with its share.
fn commit(
    store: &mut dyn Store,
    batch: Vec<Job>,
    // `None`: the bus consumer hands the events over itself (with its round)
    detect: Option<&SyncSender<DetectMsg>>,
    detections: &Receiver<Write>,
    metrics: &Metrics,
    healthy: &std::sync::atomic::AtomicBool,
    (identity, cluster): (&crate::identity::Identity, Option<&str>),
) {
    let mut by_origin: Vec<Group> = Vec::new();
    let mut alerts: Vec<(Vec<AlertRow>, Reply)> = Vec::new();
    for j in batch {
        match j {
            Job::Events { rows, origin, received, reply } => {
                let slot = match by_origin.iter().position(|(o, ..)| *o == origin) {
                    Some(i) => i,
                    None => {
                        by_origin.push((origin, Vec::new(), Vec::new(), received));
                        by_origin.len() - 1
                    }
                };
                if let Some((_, all, replies, first)) = by_origin.get_mut(slot) {
                    replies.push((rows.len(), reply));
                    all.extend(rows);
                    if received < *first {
                        *first = received;
                    }
                }
            }
            Job::Alerts { rows, reply } => alerts.push((rows, reply)),
        }
    }
    for (origin, mut rows, replies, received) in by_origin {
        // In commit order: the pods these events show, then who each source IP was.
        identity.attribute_events(&mut rows);
        // a bus message names its cluster; else this server's
        if let Some(c) = cluster {
            for r in rows.iter_mut().filter(|r| r.cluster.is_none()) {
                r.cluster = Some(c.to_owned());
            }
        }
        metrics.events_attributed.fetch_add(rows.iter().filter(|r| r.source_pod.is_some()).count() as u64, Relaxed);
        match store.append_events(&rows, origin) {
            Ok(appended) => {
                healthy.store(true, Relaxed);
                metrics.commit_seconds.observe(received.elapsed().as_secs_f64());
                metrics.stored.fetch_add(appended.stored, Relaxed);
                metrics.duplicates.fetch_add(appended.duplicates, Relaxed);
                // each job's share of the ids, in order
                let mut ids = appended.ids.iter();
                for (n, reply) in replies {
                    let mine: Vec<Option<i64>> = ids.by_ref().take(n).copied().collect();
                    let stored = mine.iter().filter(|i| i.is_some()).count() as u64;
                    let _ = reply.send(Ok(Appended { stored, duplicates: n as u64 - stored, ids: mine }));
                }
                let (events, clusters): (Vec<(i64, String)>, Vec<Option<String>>) = appended
                    .ids
                    .iter()
                    .zip(rows)
                    .filter_map(|(id, row)| id.map(|id| ((id, row.raw.into_owned()), row.cluster)))
                    .unzip();
                if let (false, Some(detect)) = (events.is_empty(), detect) {
                    // Waits while the detector is behind (writing its results meanwhile): the
                    // queue in front of the writer fills and the sources shed load (429)
                    // instead of memory growing.
                    let mut msg = DetectMsg::Events(ToDetect { events, clusters, received, round: None });
                    loop {
                        match detect.try_send(msg) {
                            Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                            Err(TrySendError::Full(m)) => {
                                msg = m;
                                if let Ok(d) = detections.recv_timeout(Duration::from_millis(5)) {
                                    write_detections(store, d, metrics);
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                if matches!(e, StoreError::Full(_)) {
                    healthy.store(false, Relaxed);
                }
                tracing::error!(error = %e, events = rows.len(), "commit failed: nothing of these batches was acknowledged");
                for (_, reply) in replies {
                    let _ = reply.send(Err(clone_err(&e)));
                }
            }
        }
    }
    for (mut rows, reply) in alerts {
        if let Some(c) = cluster {
            for a in rows.iter_mut().filter(|a| a.cluster.is_none()) {
                a.cluster = Some(c.to_owned());
            }
        }
        let before = rows.iter().filter(|a| a.pod.is_some()).count();
        identity.attribute_alerts(&mut rows);
        let after = rows.iter().filter(|a| a.pod.is_some()).count();
        metrics.alerts_attributed.fetch_add((after - before) as u64, Relaxed);
        let r = store.append_alerts(&rows);
        match &r {
            Ok(a) => {
                metrics.alerts_stored.fetch_add(a.stored, Relaxed);
            }
            Err(e) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "commit of runtime alerts failed");
            }
        }
        let _ = reply.send(r);
    }
}

/// Writes whatever detector results are waiting.
fn serve_detections(store: &mut dyn Store, detections: &Receiver<Write>, metrics: &Metrics) {
    while let Ok(d) = detections.try_recv() {
        write_detections(store, d, metrics);
    }
}

/// Findings, matches, incidents, notes, notifications and the cursor in one transaction;
/// answers the detector with the ids; or runs a store task.
fn write_detections(store: &mut dyn Store, w: Write, metrics: &Metrics) {
    let d = match w {
        Write::Detections(d) => d,
        Write::Run(task) => {
            task(store);
            return;
        }
    };
    let result = store.commit(&Batch {
        findings: &d.findings,
        matches: &d.matches,
        incidents: &d.incidents,
        notes: &d.notes,
        outbox: &d.outbox,
        actions: &d.actions,
        cursor: d.cursor.as_ref().map(|(name, c)| (name.as_str(), *c)),
        lease: d.lease.as_ref().map(|(p, owner, epoch)| (*p, owner.as_str(), *epoch)),
    });
    if let Err(e) = &result {
        metrics.store_errors.fetch_add(1, Relaxed);
        tracing::error!(error = %e, "cannot store detections; they will be evaluated again after a restart");
    }
    let _ = d.reply.send(result);
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(s) => StoreError::Full(s.clone()),
        StoreError::Busy(s) => StoreError::Busy(s.clone()),
        other => StoreError::Other(other.to_string()),
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
