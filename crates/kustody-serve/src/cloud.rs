//! Managed-cloud audit sources in `serve` (issue 20): EKS's audit log in CloudWatch Logs.
//!
//! One thread per source, with its own small async runtime for the provider's HTTP calls.
//! Each page read goes: convert (bad records kept with their reason; an event EKS cut short is
//! also salvaged as a Metadata-level event) → the writer commits the events (`Origin::Cloud`)
//! → the writer stores the bad records and the cursor's checkpoint. A crash in between reads
//! the page again: the store drops the events it has (same cluster, auditID, stage and time)
//! and keeps a bad record once (same source and locator).
//!
//! A source runs where its lease is held (`Store::source_lease`): with a single-writer store
//! that is this process; processes sharing a PostgreSQL store take turns, the lease moving
//! when its holder stops renewing it. Errors never end a source: throttling backs off
//! (jittered, honouring `Retry-After`), refused credentials are fetched again, a missing log
//! group is reported and polled slowly.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kustody_cloud::aws::{Aws, Kind};
use kustody_cloud::cloudwatch::{Checkpoint, Cursor, LogEvent, PassKind, Reader, Timing};
use kustody_cloud::limit::Backoff;
use kustody_store::{BadRecord, EventRow, Origin, Store};

use crate::metrics::{Metrics, SourceStats};
use crate::writer::{Job, StoreTask, Write};

/// An EKS cluster's audit log, as configured.
#[derive(Debug, Clone)]
pub struct EksConfig {
    /// The EKS cluster's name (its log group is `/aws/eks/NAME/cluster`).
    pub cluster: String,
    /// The cluster name stored with its events (default: the EKS name).
    pub label: String,
    pub endpoint: kustody_cloud::aws::Endpoint,
    pub credentials: kustody_cloud::aws::CredentialSource,
    /// Between live passes.
    pub poll: Duration,
    /// Where a first start begins reading, before now.
    pub since: Duration,
    pub timing: Timing,
    /// FilterLogEvents calls a second this process makes per account and region (AWS allows
    /// 5 for the whole account).
    pub max_calls_per_second: f64,
    /// The log group, when not EKS's default.
    pub log_group: Option<String>,
}

impl EksConfig {
    pub fn source_name(&self) -> String {
        format!("eks:{}:{}", self.endpoint.region, self.cluster)
    }
}

pub struct EksSource {
    pub config: EksConfig,
    pub store: Box<dyn Store>,
    pub writes: SyncSender<Write>,
    pub jobs: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    pub max_event_bytes: usize,
    pub owner: String,
}

/// How long a source lease lasts unrenewed.
const LEASE_TTL: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    crate::writer::now_ns() / 1_000_000
}

impl EksSource {
    pub fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the EKS source's runtime");
                return;
            }
        };
        self.main(&rt);
    }

    fn stats<R>(&self, f: impl FnOnce(&mut SourceStats) -> R) -> R {
        self.metrics.source(&self.config.source_name(), f)
    }

    /// Runs `task` on the writer and waits for its answer.
    fn on_writer<T: Send + 'static>(&self, task: impl FnOnce(&mut dyn Store) -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let t: StoreTask = Box::new(move |s: &mut dyn Store| {
            let _ = tx.send(task(s));
        });
        self.writes.send(Write::Run(t)).ok()?;
        rx.recv().ok()
    }

    /// The source's loop. The store is synchronous (PostgreSQL's client runs a runtime of its
    /// own), so this thread enters its runtime only for the provider's calls.
    fn main(self, rt: &tokio::runtime::Runtime) {
        let name = self.config.source_name();
        let group = match &self.config.log_group {
            Some(g) => {
                kustody_cloud::cloudwatch::Group { name: g.clone(), stream_prefix: "kube-apiserver-audit".into() }
            }
            None => kustody_cloud::cloudwatch::Group::of_eks_cluster(&self.config.cluster),
        };
        let source_label = format!("cloudwatch:{}:{}", self.config.endpoint.region, group.name);
        let http = match kustody_cloud::http::Client::new(64 << 20, Duration::from_secs(60)) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(source = %name, error = %e, "cannot start the EKS source");
                return;
            }
        };
        let aws = Arc::new(Aws::new(self.config.endpoint.clone(), self.config.credentials.clone(), http));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        // the quota bucket is per account: known once credentials are
        let key = loop {
            if self.stop.load(Relaxed) {
                return;
            }
            match rt.block_on(aws.access_key_id()) {
                Ok(k) => break k,
                Err(e) => {
                    self.stats(|s| {
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                    });
                    tracing::error!(source = %name, error = %e, "no AWS credentials for the EKS source");
                    self.sleep(backoff.next(None));
                }
            }
        };
        let rate = self.config.max_calls_per_second;
        let bucket =
            kustody_cloud::limit::shared(&format!("logs:{key}:{}", self.config.endpoint.region), rate, rate.max(1.0));
        let mut reader = Reader { aws: aws.clone(), group: group.clone(), bucket, page_limit: 2_000 };
        let mut cursor: Option<Cursor> = None;
        let mut lease_at: Option<Instant> = None;
        let mut epoch: Option<i64> = None;
        let mut not_found_said = false;
        while !self.stop.load(Relaxed) {
            // the lease: renewed every ttl/3; lost → the cursor is dropped and read again later
            if lease_at.is_none_or(|t| t.elapsed() >= LEASE_TTL / 3) {
                let (n, o) = (name.clone(), self.owner.clone());
                let held = self.on_writer(move |s| s.source_lease(&n, &o, LEASE_TTL));
                match held {
                    Some(Ok(Some(e))) => {
                        if epoch != Some(e) {
                            tracing::info!(source = %name, epoch = e, "reading the EKS audit log (lease taken)");
                            cursor = None;
                        }
                        epoch = Some(e);
                        lease_at = Some(Instant::now());
                        self.stats(|s| s.leader = true);
                    }
                    Some(Ok(None)) => {
                        if epoch.is_some() {
                            tracing::info!(source = %name, "another kustody reads the EKS audit log now");
                        }
                        epoch = None;
                        cursor = None;
                        lease_at = Some(Instant::now());
                        self.stats(|s| s.leader = false);
                        self.sleep(LEASE_TTL / 3);
                        continue;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(source = %name, error = %e, "cannot renew the source lease");
                        self.sleep(Duration::from_secs(2));
                        continue;
                    }
                    None => return,
                }
            }
            let c = match cursor.as_mut() {
                Some(c) => c,
                None => {
                    let stored = self.store.state(&state_name(&name));
                    let cp = match stored {
                        Ok(Some(b)) => serde_json::from_slice::<Checkpoint>(&b).ok(),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!(source = %name, error = %e, "cannot read the source's checkpoint");
                            self.sleep(Duration::from_secs(2));
                            continue;
                        }
                    };
                    let prefix = group.stream_prefix.clone();
                    cursor.insert(match cp {
                        Some(cp) => {
                            tracing::info!(source = %name, settled_ms = cp.settled_ms, "resuming the EKS audit log");
                            Cursor::resume(cp, self.config.timing.clone(), &prefix)
                        }
                        None => {
                            let since = now_ms() - self.config.since.as_millis() as i64;
                            Cursor::new(since, self.config.timing.clone(), &prefix)
                        }
                    })
                }
            };
            let req = c.next_request(now_ms());
            let started = Instant::now();
            let (events, token) = match rt.block_on(reader.fetch(&req)) {
                Ok(page) => {
                    backoff.reset();
                    not_found_said = false;
                    page
                }
                Err(e) => {
                    let refreshes = aws.refreshes.load(Relaxed);
                    self.stats(|s| {
                        s.credential_refreshes = refreshes;
                        s.last_error = Some(e.to_string());
                        if e.kind == Kind::Throttled {
                            s.throttled += 1;
                        } else {
                            s.errors += 1;
                        }
                    });
                    let wait = match e.kind {
                        Kind::Throttled => backoff.next(e.retry_after),
                        Kind::NotFound => {
                            if !not_found_said {
                                tracing::warn!(source = %name, group = %group.name, error = %e, "the EKS log group is not there: is audit logging on? (kustody setup eks --cluster {} --check)", self.config.cluster);
                                not_found_said = true;
                            }
                            Duration::from_secs(30)
                        }
                        Kind::Invalid => {
                            // a stale token or a window AWS refuses: start the pass again
                            c.abandon_pass();
                            tracing::error!(source = %name, error = %e, "FilterLogEvents refused the request");
                            backoff.next(None).max(Duration::from_secs(5))
                        }
                        _ => {
                            tracing::warn!(source = %name, error = %e, "reading the EKS audit log failed; retrying");
                            backoff.next(None)
                        }
                    };
                    self.sleep(wait);
                    continue;
                }
            };
            let page = c.page(events, token);
            let checkpoint = c.checkpoint();
            let remembered = c.remembered();
            let (rows, bad, salvaged) = convert(&page.new, &source_label, &self.config.label, self.max_event_bytes);
            let n = rows.len();
            if !rows.is_empty() && !crate::follow::commit(&self.jobs, rows, Origin::Cloud, &self.stop) {
                return;
            }
            self.metrics.received_cloud.fetch_add(n as u64, Relaxed);
            let nbad = bad.len();
            let (state, cp_bytes) = (state_name(&name), serde_json::to_vec(&checkpoint).unwrap_or_default());
            let stored = self.on_writer(move |s| {
                if !bad.is_empty() {
                    s.append_bad_records(&bad)?;
                }
                s.set_state(&state, &cp_bytes)
            });
            match stored {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    // the events are stored; the page is read again (de-duplicated) after a restart
                    tracing::warn!(source = %name, error = %e, "cannot store the source's checkpoint");
                }
                None => return,
            }
            let refreshes = aws.refreshes.load(Relaxed);
            let newest = page.new.iter().map(|e| e.timestamp).max();
            self.stats(|s| {
                s.converted += n as u64;
                s.bad += nbad as u64;
                s.salvaged += salvaged;
                s.pages += 1;
                s.repeated += page.repeated as u64;
                s.credential_refreshes = refreshes;
                s.max_lateness_ms = s.max_lateness_ms.max(page.max_lateness_ms);
                s.remembered = remembered as u64;
                s.settled_ms = checkpoint.settled_ms;
                if let Some(t) = newest {
                    s.newest_ms = s.newest_ms.max(t);
                }
                s.last_error = None;
            });
            if page.pass_done == Some(PassKind::Live) {
                let wait = self.config.poll.saturating_sub(started.elapsed());
                self.sleep(wait);
            }
        }
        if epoch.is_some() {
            let (n, o) = (name.clone(), self.owner.clone());
            let _ = self.on_writer(move |s| s.release_source_lease(&n, &o));
        }
    }

    /// Sleeps, waking early when the server stops.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(200)));
        }
    }
}

fn state_name(source: &str) -> String {
    format!("source:{source}")
}

/// A page's new events as rows, bad records (with the salvaged events among the rows), and
/// how many were salvaged.
pub fn convert(
    events: &[LogEvent],
    source: &str,
    cluster: &str,
    max_event_bytes: usize,
) -> (Vec<EventRow<'static>>, Vec<BadRecord>, u64) {
    let received = crate::writer::now_ns();
    let mut rows = Vec::with_capacity(events.len());
    let mut bad = Vec::new();
    let mut salvaged = 0;
    // one payload of every event's text, a line each (a message holding a newline alone)
    let mut body = Vec::new();
    let mut line_of = Vec::new();
    let mut alone = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.message.contains('\n') {
            alone.push(i);
        } else {
            body.extend_from_slice(e.message.as_bytes());
            body.push(b'\n');
            line_of.push(i);
        }
    }
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let parsed = crate::payload::parse(source, body, max_event_bytes);
    rows.extend(parsed.rows);
    for r in parsed.rejected {
        if let Some(i) = usize::try_from(r.line).ok().and_then(|l| l.checked_sub(1)).and_then(|l| line_of.get(l)) {
            rejected.push((*i, r.reason));
        }
    }
    for i in alone {
        let Some(e) = events.get(i) else { continue };
        let p = crate::payload::parse(source, e.message.clone().into_bytes(), max_event_bytes);
        rows.extend(p.rows);
        if let Some(r) = p.rejected.into_iter().next() {
            rejected.push((i, r.reason));
        }
    }
    for (i, reason) in rejected {
        let Some(e) = events.get(i) else { continue };
        let text = e.message.trim_end();
        let cut = text.ends_with(kustody_ingest::salvage::EKS_TRUNCATED);
        let time = chrono::DateTime::from_timestamp_millis(e.timestamp)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let saved = kustody_ingest::salvage::truncated_event(text, &time)
            .map(|t| crate::payload::parse(source, t.into_bytes(), max_event_bytes).rows)
            .filter(|r| !r.is_empty());
        let mut why = if cut {
            format!("cut short by CloudWatch Logs ({} bytes, ends with [Truncated...]): {reason}", e.message.len())
        } else {
            reason
        };
        if let Some(r) = saved {
            salvaged += 1;
            why.push_str("; its metadata was stored as a Metadata-level event (annotation kustody.io/truncated)");
            rows.extend(r);
        }
        let mut b = BadRecord::new(
            received,
            source,
            format!("{}/{}", e.log_stream_name, e.event_id),
            why,
            e.message.as_bytes(),
        );
        b.audit_id = kustody_ingest::salvage::audit_id(text);
        b.cluster = Some(cluster.to_owned());
        bad.push(b);
    }
    for r in &mut rows {
        r.cluster = Some(cluster.to_owned());
    }
    (rows, bad, salvaged)
}
