//! Counters for `/metrics` (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// Everything `/metrics` reports. Shared by the sources, the writer and the detector.
#[derive(Default)]
pub struct Metrics {
    /// Events received, per source (`webhook`, `file`, `replay`).
    pub received_webhook: AtomicU64,
    pub received_file: AtomicU64,
    pub received_replay: AtomicU64,
    pub received_cloud: AtomicU64,
    /// Managed-cloud sources, by name (`eks:REGION:CLUSTER`).
    pub sources: Mutex<BTreeMap<String, SourceStats>>,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    /// Events refused inside an otherwise readable payload (bad JSON, not an Event, too big).
    pub rejected_events: AtomicU64,
    /// Requests answered 400 / 401 / 403 / 413 / 429 / 503.
    pub bad_requests: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub forbidden: AtomicU64,
    pub too_large: AtomicU64,
    pub shed_429: AtomicU64,
    pub unavailable_503: AtomicU64,
    pub alerts_received: AtomicU64,
    pub alerts_stored: AtomicU64,
    /// Bytes of accepted request bodies waiting to be committed.
    pub queue_bytes: AtomicU64,
    pub commit_seconds: Histogram,
    /// From receipt of a batch to its findings being stored and published.
    pub detect_seconds: Histogram,
    pub detections: Mutex<BTreeMap<String, u64>>,
    pub findings_opened: AtomicU64,
    pub store_bytes: AtomicU64,
    pub store_events: AtomicU64,
    /// Events that reached the store only from the apiserver's log file although the webhook is
    /// configured (the webhook dropped them), older than the grace period (checked every 3 s).
    pub webhook_gaps: AtomicU64,
    pub store_errors: AtomicU64,
    /// Events the detector has evaluated (its cursor) and events still to evaluate.
    pub detector_lag_events: AtomicU64,
    pub rule_reloads: AtomicU64,
    pub rule_reload_failures: AtomicU64,
    /// Notifications committed to the outbox.
    pub notifications_queued: AtomicU64,
    pub notifications_delivered: AtomicU64,
    /// Delivery attempts that failed (each retry counts).
    pub notification_failures: AtomicU64,
    pub notifications_dead: AtomicU64,
    /// Notifications held back by a sink's rate limit (delayed, not dropped).
    pub notifications_rate_limited: AtomicU64,
    /// From a notification's commit to its delivery.
    pub notify_seconds: Histogram,
    /// From the finding's commit to its playbook's quarantine applied and verified.
    pub quarantine_seconds: Histogram,
    /// Playbook actions by final state.
    pub actions: Mutex<BTreeMap<String, u64>>,
    /// IP history: intervals held, evicted by the bound, events attributed to a pod.
    pub ip_intervals: AtomicU64,
    pub ip_intervals_evicted: AtomicU64,
    pub events_attributed: AtomicU64,
    /// Live watch: objects seen, relists (after a start or a lost watch), holds closed because
    /// a relist no longer showed the object (deleted while no one watched), watch errors.
    pub watch_events: AtomicU64,
    pub watch_relists: AtomicU64,
    pub watch_closed_by_relist: AtomicU64,
    pub watch_errors: AtomicU64,
    /// Runtime alerts whose pod was found by container ID.
    pub alerts_attributed: AtomicU64,
    /// Events and alerts a receiver had acknowledged by JetStream (the bus).
    pub bus_published: AtomicU64,
    /// Publishes to the bus that failed (the sender was answered 503).
    pub bus_publish_errors: AtomicU64,
    /// Bus messages a detector committed and acknowledged.
    pub bus_consumed: AtomicU64,
    /// Bus messages seen again after their round was committed (acknowledged, skipped).
    pub bus_redelivered: AtomicU64,
    /// Bus partitions this detector holds.
    pub bus_partitions: AtomicU64,
    /// Times this detector took a partition over.
    pub bus_takeovers: AtomicU64,
    /// Time from a receiver's arrival to the detector's commit of the findings.
    pub bus_lag_seconds: Histogram,
    /// Rule matches demoted by the live baseline, per rule.
    pub demoted: Mutex<BTreeMap<String, u64>>,
    /// The live baseline's sizes, counts and busiest rate series (refreshed by the detector).
    pub baseline: Mutex<Option<BaselineSnapshot>>,
}

/// A managed-cloud source's counters.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    /// Events converted and handed to the store.
    pub converted: u64,
    /// Records that could not be converted (kept as bad records).
    pub bad: u64,
    /// Bad records whose metadata was still stored as an event.
    pub salvaged: u64,
    pub pages: u64,
    /// Events read again and dropped by id (same millisecond, settle passes).
    pub repeated: u64,
    pub throttled: u64,
    pub errors: u64,
    pub credential_refreshes: u64,
    /// The newest event timestamp read (ms).
    pub newest_ms: i64,
    /// Everything before this timestamp has been read (ms).
    pub settled_ms: i64,
    /// The largest `ingestionTime - timestamp` seen (ms).
    pub max_lateness_ms: i64,
    /// Event ids remembered for de-duplication.
    pub remembered: u64,
    /// Whether this process holds the source's lease.
    pub leader: bool,
    pub last_error: Option<String>,
}

/// What `/metrics` shows of the live baseline.
#[derive(Debug, Clone, Default)]
pub struct BaselineSnapshot {
    pub identities: usize,
    pub values: usize,
    pub series: usize,
    pub counts: kustody_baseline::live::LiveCounts,
    pub top: Vec<kustody_baseline::live::RateSample>,
}

impl Metrics {
    /// Updates (or starts) a source's counters.
    pub fn source<R>(&self, name: &str, f: impl FnOnce(&mut SourceStats) -> R) -> R {
        let mut m = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(m.entry(name.to_owned()).or_default())
    }

    pub fn count_rule(&self, rule: &str) {
        bump(&self.detections, rule);
    }

    pub fn count_demoted(&self, rule: &str) {
        bump(&self.demoted, rule);
    }

    pub fn count_action(&self, state: &str) {
        bump(&self.actions, state);
    }

    fn render_sources(&self, o: &mut String) {
        let sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if sources.is_empty() {
            return;
        }
        let now_ms = crate::writer::now_ns() / 1_000_000;
        type Get = fn(&SourceStats) -> i64;
        let series: [(&str, &str, &str, Get); 10] = [
            ("kustody_source_events_total", "counter", "Events converted from a managed-cloud source.", |s| {
                s.converted as i64
            }),
            (
                "kustody_source_bad_records_total",
                "counter",
                "Records of a source that could not be converted (kept as bad records).",
                |s| s.bad as i64,
            ),
            ("kustody_source_salvaged_total", "counter", "Cut-short events whose metadata was still stored.", |s| {
                s.salvaged as i64
            }),
            ("kustody_source_repeated_total", "counter", "Events read again and dropped by their id.", |s| {
                s.repeated as i64
            }),
            ("kustody_source_throttled_total", "counter", "Calls the provider throttled.", |s| s.throttled as i64),
            ("kustody_source_errors_total", "counter", "Calls that failed otherwise.", |s| s.errors as i64),
            (
                "kustody_source_credential_refreshes_total",
                "counter",
                "Credentials fetched again after the provider refused them.",
                |s| s.credential_refreshes as i64,
            ),
            (
                "kustody_source_max_lateness_seconds",
                "gauge",
                "The largest delay seen between an event's time and its arrival at the provider.",
                |s| s.max_lateness_ms / 1000,
            ),
            ("kustody_source_leader", "gauge", "1 while this process reads the source (holds its lease).", |s| {
                i64::from(s.leader)
            }),
            ("kustody_source_remembered_events", "gauge", "Event ids kept for de-duplication.", |s| {
                s.remembered as i64
            }),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (src, st) in &sources {
                let _ = writeln!(o, "{name}{{source=\"{src}\"}} {}", get(st));
            }
        }
        let _ = writeln!(o, "# HELP kustody_source_lag_seconds Now minus the newest event time read from the source.\n# TYPE kustody_source_lag_seconds gauge");
        for (src, st) in &sources {
            if st.newest_ms > 0 {
                let _ = writeln!(
                    o,
                    "kustody_source_lag_seconds{{source=\"{src}\"}} {:.3}",
                    (now_ms - st.newest_ms) as f64 / 1000.0
                );
            }
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.load(Relaxed));
        };
        let _ = writeln!(o, "# HELP kustody_events_received_total Audit events received, by source.\n# TYPE kustody_events_received_total counter");
        for (src, v) in [
            ("webhook", &self.received_webhook),
            ("file", &self.received_file),
            ("replay", &self.received_replay),
            ("cloud", &self.received_cloud),
        ] {
            let _ = writeln!(o, "kustody_events_received_total{{source=\"{src}\"}} {}", v.load(Relaxed));
        }
        self.render_sources(&mut o);
        counter(&mut o, "kustody_events_stored_total", "Audit events durably stored.", &self.stored);
        counter(
            &mut o,
            "kustody_events_duplicate_total",
            "Audit events already stored (same auditID and stage): not stored again.",
            &self.duplicates,
        );
        counter(
            &mut o,
            "kustody_events_rejected_total",
            "Events refused inside a payload (unreadable, not an audit Event, too large).",
            &self.rejected_events,
        );
        let _ = writeln!(o, "# HELP kustody_requests_rejected_total Requests refused, by reason.\n# TYPE kustody_requests_rejected_total counter");
        for (reason, v) in [
            ("bad_request", &self.bad_requests),
            ("unauthenticated", &self.unauthenticated),
            ("forbidden", &self.forbidden),
            ("too_large", &self.too_large),
            ("overloaded_429", &self.shed_429),
            ("unavailable_503", &self.unavailable_503),
        ] {
            let _ = writeln!(o, "kustody_requests_rejected_total{{reason=\"{reason}\"}} {}", v.load(Relaxed));
        }
        counter(&mut o, "kustody_alerts_received_total", "Falco runtime alerts received.", &self.alerts_received);
        counter(
            &mut o,
            "kustody_alerts_stored_total",
            "Falco runtime alerts stored (duplicates excluded).",
            &self.alerts_stored,
        );
        gauge(&mut o, "kustody_queue_bytes", "Bytes of accepted requests waiting for their commit.", &self.queue_bytes);
        self.commit_seconds.write(
            &mut o,
            "kustody_commit_seconds",
            "Time from a batch's arrival to its durable commit.",
        );
        counter(
            &mut o,
            "kustody_bus_published_total",
            "Events and alerts acknowledged by JetStream (receivers).",
            &self.bus_published,
        );
        counter(
            &mut o,
            "kustody_bus_publish_errors_total",
            "Publishes to JetStream that failed (answered 503).",
            &self.bus_publish_errors,
        );
        counter(
            &mut o,
            "kustody_bus_consumed_total",
            "Bus messages committed and acknowledged (detectors).",
            &self.bus_consumed,
        );
        counter(
            &mut o,
            "kustody_bus_redelivered_total",
            "Bus messages delivered again after their round was committed (skipped).",
            &self.bus_redelivered,
        );
        gauge(&mut o, "kustody_bus_partitions", "Bus partitions this detector holds.", &self.bus_partitions);
        counter(&mut o, "kustody_bus_takeovers_total", "Bus partitions this detector took over.", &self.bus_takeovers);
        self.bus_lag_seconds.write(
            &mut o,
            "kustody_bus_lag_seconds",
            "Time from a receiver's arrival of a batch to a detector's commit of its findings.",
        );
        self.detect_seconds.write(
            &mut o,
            "kustody_detection_seconds",
            "Time from a batch's arrival to its findings being stored and published.",
        );
        let _ = writeln!(
            o,
            "# HELP kustody_detections_total Rule matches, by rule.\n# TYPE kustody_detections_total counter"
        );
        if let Ok(m) = self.detections.lock() {
            for (rule, n) in m.iter() {
                let _ = writeln!(o, "kustody_detections_total{{rule=\"{}\"}} {n}", label(rule));
            }
        }
        counter(&mut o, "kustody_findings_opened_total", "Findings opened.", &self.findings_opened);
        gauge(&mut o, "kustody_store_bytes", "Bytes the store uses on disk (database and WAL).", &self.store_bytes);
        gauge(&mut o, "kustody_store_events", "Audit events in the store.", &self.store_events);
        gauge(&mut o, "kustody_webhook_gap_events", "Events only the apiserver's log file delivered although the webhook is configured: the webhook dropped them.", &self.webhook_gaps);
        counter(
            &mut o,
            "kustody_store_errors_total",
            "Failed store writes (a full disk, I/O errors).",
            &self.store_errors,
        );
        gauge(
            &mut o,
            "kustody_detector_lag_events",
            "Stored events the detector has not evaluated yet.",
            &self.detector_lag_events,
        );
        counter(&mut o, "kustody_rule_reloads_total", "Rule sets reloaded.", &self.rule_reloads);
        counter(
            &mut o,
            "kustody_rule_reload_failures_total",
            "Rule reloads refused because the new set had errors (the last good set stays).",
            &self.rule_reload_failures,
        );
        counter(
            &mut o,
            "kustody_notifications_queued_total",
            "Notifications committed to the outbox.",
            &self.notifications_queued,
        );
        counter(
            &mut o,
            "kustody_notifications_delivered_total",
            "Notifications a sink accepted.",
            &self.notifications_delivered,
        );
        counter(
            &mut o,
            "kustody_notification_failures_total",
            "Delivery attempts that failed (each retry counts).",
            &self.notification_failures,
        );
        counter(
            &mut o,
            "kustody_notifications_dead_total",
            "Notifications given up on (dead letter): `kustody serve outbox retry` sends them again.",
            &self.notifications_dead,
        );
        counter(
            &mut o,
            "kustody_notifications_rate_limited_total",
            "Times a sink's rate limit delayed a delivery.",
            &self.notifications_rate_limited,
        );
        self.notify_seconds.write(
            &mut o,
            "kustody_notification_seconds",
            "Time from a notification's commit to its delivery.",
        );
        gauge(&mut o, "kustody_ip_intervals", "IP holds (IP, pod) the IP history keeps in memory.", &self.ip_intervals);
        counter(
            &mut o,
            "kustody_ip_intervals_evicted_total",
            "IP holds forgotten by the memory bound, oldest first.",
            &self.ip_intervals_evicted,
        );
        counter(
            &mut o,
            "kustody_events_attributed_total",
            "Stored events whose source IP was attributed to a pod.",
            &self.events_attributed,
        );
        counter(
            &mut o,
            "kustody_alerts_attributed_total",
            "Runtime alerts whose pod was found by container ID.",
            &self.alerts_attributed,
        );
        counter(
            &mut o,
            "kustody_watch_events_total",
            "Pods, nodes and Services seen by the live watch.",
            &self.watch_events,
        );
        counter(
            &mut o,
            "kustody_watch_relists_total",
            "Full lists by the live watch (start, lost watch).",
            &self.watch_relists,
        );
        counter(
            &mut o,
            "kustody_watch_closed_by_relist_total",
            "IP holds ended because a relist no longer showed the object (deleted while unwatched).",
            &self.watch_closed_by_relist,
        );
        counter(&mut o, "kustody_watch_errors_total", "Live watch errors (retried with backoff).", &self.watch_errors);
        let _ = writeln!(
            o,
            "# HELP kustody_baseline_demoted_total Rule matches demoted because the baseline knows the behaviour (seen for this identity and target on enough days), by rule.\n# TYPE kustody_baseline_demoted_total counter"
        );
        if let Ok(m) = self.demoted.lock() {
            for (rule, n) in m.iter() {
                let _ = writeln!(o, "kustody_baseline_demoted_total{{rule=\"{}\"}} {n}", label(rule));
            }
        }
        if let Some(b) = self.baseline.lock().ok().and_then(|b| b.clone()) {
            let _ = writeln!(o, "# HELP kustody_baseline_identities Identities the live baseline tracks.\n# TYPE kustody_baseline_identities gauge\nkustody_baseline_identities {}", b.identities);
            let _ = writeln!(o, "# HELP kustody_baseline_values (identity, value) pairs the live baseline tracks.\n# TYPE kustody_baseline_values gauge\nkustody_baseline_values {}", b.values);
            let _ = writeln!(o, "# HELP kustody_rate_series Rate series (namespace, identity, verb class) tracked.\n# TYPE kustody_rate_series gauge\nkustody_rate_series {}", b.series);
            let c = &b.counts;
            let _ = writeln!(o, "# HELP kustody_new_values_total New values per identity, by kind; `unreported` were learnt quietly (learning period, ordinary reads).\n# TYPE kustody_new_values_total counter");
            for (k, n) in [
                ("behaviour", c.new_behaviours),
                ("user_agent", c.new_user_agents),
                ("network", c.new_networks),
                ("unreported", c.new_unreported),
            ] {
                let _ = writeln!(o, "kustody_new_values_total{{kind=\"{k}\"}} {n}");
            }
            let _ = writeln!(o, "# HELP kustody_rate_alarms_total Minutes whose request rate left its band.\n# TYPE kustody_rate_alarms_total counter\nkustody_rate_alarms_total {}", c.rate_alarms);
            let _ = writeln!(o, "# HELP kustody_baseline_evicted_total Forgotten by the memory bounds, oldest first.\n# TYPE kustody_baseline_evicted_total counter");
            let _ = writeln!(o, "kustody_baseline_evicted_total{{what=\"identities\"}} {}", c.identities_evicted);
            let _ = writeln!(o, "kustody_baseline_evicted_total{{what=\"series\"}} {}", c.series_evicted);
            for (name, help, f) in [
                ("kustody_rate_requests_per_minute", "Requests in the last complete minute of the busiest series.", 0),
                ("kustody_rate_expected_per_minute", "Requests per minute expected at this hour of the week.", 1),
                (
                    "kustody_rate_band_upper_per_minute",
                    "Upper bound of the normal band; above it a finding is raised.",
                    2,
                ),
            ] {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
                for r in &b.top {
                    let v = match f {
                        0 => f64::from(r.per_minute),
                        1 => r.expected,
                        _ => r.upper,
                    };
                    let _ = writeln!(
                        o,
                        "{name}{{namespace=\"{}\",identity=\"{}\",class=\"{}\"}} {v}",
                        label(&r.namespace),
                        label(&r.identity),
                        r.class
                    );
                }
            }
        }
        o
    }
}

/// One more of `key` in a labelled counter.
fn bump(m: &Mutex<BTreeMap<String, u64>>, key: &str) {
    if let Ok(mut m) = m.lock() {
        *m.entry(key.to_owned()).or_insert(0) += 1;
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
