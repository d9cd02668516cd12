//! Outbox delivery: one thread per sink takes its due notifications from the store, sends them
//! and records every attempt.
//!
//! Nothing is delivered from memory: a notification exists only once committed (with the
//! finding or change that caused it), and it stays pending until an attempt succeeds or it is
//! declared dead, so a restart, a crash or a receiver that is down for hours loses nothing.
//! Delivery is at least once: a crash after the receiver accepted a batch but before the
//! attempt was recorded sends it again (receivers de-duplicate on the incident's stable
//! `dedup_key` where their API allows: PagerDuty, Elasticsearch's `_id`).
//!
//! Retries back off exponentially (1 s, 2 s, 4 s … capped at 5 min, with jitter, or the
//! receiver's `Retry-After`); a refusal that cannot succeed (HTTP 400) or the sink's
//! `max_attempts` makes the notification dead. A sink's `rate_per_minute` delays deliveries, it
//! never drops them.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kustody_notify::{Notification, Sink};
use kustody_store::{Attempt, OutboxRow, OutboxState, Store};

use crate::metrics::Metrics;
use crate::writer::{now_ns, Write};

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Delivery {
    pub sink: Sink,
    /// Read-only: the due notifications.
    pub store: Box<dyn Store>,
    /// Attempts are written by the writer thread.
    pub writes: SyncSender<Write>,
    /// Woken when the detector commits a notification for this sink.
    pub wake: Receiver<()>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
}

/// A token bucket of `per_minute` tokens.
struct Bucket {
    per_minute: Option<u32>,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: Option<u32>) -> Bucket {
        Bucket { per_minute, tokens: per_minute.map_or(0.0, f64::from), at: Instant::now() }
    }

    /// How many of `want` may go now.
    fn take(&mut self, want: usize) -> usize {
        let Some(pm) = self.per_minute else { return want };
        let rate = f64::from(pm) / 60.0;
        self.tokens = (self.tokens + self.at.elapsed().as_secs_f64() * rate).min(f64::from(pm.max(1)));
        self.at = Instant::now();
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// Until the next token.
    fn wait(&self) -> Duration {
        match self.per_minute {
            Some(pm) if pm > 0 => Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) * 60.0 / f64::from(pm)),
            _ => Duration::from_secs(1),
        }
    }
}

/// Backoff before attempt `n + 1` after `n` failures: 2^(n-1) s, capped, ±20 % jitter.
pub fn backoff(n: u32, seed: i64) -> Duration {
    let base = Duration::from_secs(1u64 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    // jitter from the low bits of the seed (a time): spreads retries of many notifications
    let frac = ((seed.unsigned_abs() % 401) as f64 - 200.0) / 1000.0;
    base.mul_f64(1.0 + frac)
}

impl Delivery {
    pub fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(sink = self.sink.name(), error = %e, "cannot start the delivery runtime");
                return;
            }
        };
        let name = self.sink.name().to_owned();
        let cfg = self.sink.config().clone();
        let mut bucket = Bucket::new(cfg.rate_per_minute);
        while !self.stop.load(Relaxed) {
            let now = now_ns();
            let due = match self.store.outbox_due(&name, now, cfg.max_batch.max(1)) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot read the outbox");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if due.is_empty() {
                let wait = match self.store.outbox_next_due(&name) {
                    Ok(Some(t)) => Duration::from_nanos(t.saturating_sub(now).max(0) as u64),
                    _ => Duration::from_secs(1),
                };
                self.sleep(wait.clamp(Duration::from_millis(2), Duration::from_secs(1)));
                continue;
            }
            let n = bucket.take(due.len());
            if n == 0 {
                self.metrics.notifications_rate_limited.fetch_add(1, Relaxed);
                std::thread::sleep(bucket.wait().clamp(Duration::from_millis(10), Duration::from_secs(1)));
                continue;
            }
            let batch: Vec<OutboxRow> = due.into_iter().take(n).collect();
            let attempts = self.attempt(&rt, &batch, &cfg);
            if let Err(e) = self.record(attempts) {
                // The notifications stay pending and go again: at least once.
                tracing::error!(sink = %name, error = %e, "cannot record delivery attempts");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Waits for a wake-up or `d`.
    fn sleep(&self, d: Duration) {
        match self.wake.recv_timeout(d) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(d),
        }
    }

    /// Sends one batch; returns an attempt per notification.
    fn attempt(
        &self,
        rt: &tokio::runtime::Runtime,
        batch: &[OutboxRow],
        cfg: &kustody_notify::SinkConfig,
    ) -> Vec<Attempt> {
        let start = Instant::now();
        let time_ns = now_ns();
        let mut attempts = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        let mut notes: Vec<Notification> = Vec::with_capacity(batch.len());
        for r in batch {
            match serde_json::from_str::<Notification>(&r.payload) {
                Ok(n) => {
                    notes.push(n);
                    rows.push(r);
                }
                Err(e) => attempts.push(Attempt {
                    outbox_id: r.id,
                    time_ns,
                    duration_us: 0,
                    error: Some(format!("the stored notification cannot be read: {e}")),
                    state: OutboxState::Dead,
                    next_ns: time_ns,
                }),
            }
        }
        if notes.is_empty() {
            return attempts;
        }
        // The sink has its own per-request timeout; this bounds a batch as a whole.
        let limit = cfg.timeout.saturating_mul(2) + Duration::from_secs(5);
        let result = match rt.block_on(async { tokio::time::timeout(limit, self.sink.send(&notes)).await }) {
            Ok(r) => r,
            Err(_) => Err(kustody_notify::SendError::retry(format!("no answer within {} s", limit.as_secs()))),
        };
        let duration_us = start.elapsed().as_micros().min(i64::MAX as u128) as i64;
        for r in rows {
            let a = match &result {
                Ok(()) => {
                    self.metrics.notifications_delivered.fetch_add(1, Relaxed);
                    let waited = time_ns.saturating_sub(r.created_ns).max(0) as f64 / 1e9;
                    self.metrics.notify_seconds.observe(waited + start.elapsed().as_secs_f64());
                    Attempt {
                        outbox_id: r.id,
                        time_ns,
                        duration_us,
                        error: None,
                        state: OutboxState::Delivered,
                        next_ns: time_ns,
                    }
                }
                Err(e) => {
                    self.metrics.notification_failures.fetch_add(1, Relaxed);
                    let n = r.attempts.saturating_add(1);
                    let dead = !e.retryable || n >= cfg.max_attempts;
                    if dead {
                        self.metrics.notifications_dead.fetch_add(1, Relaxed);
                        tracing::warn!(sink = self.sink.name(), outbox = r.id, attempts = n, error = %e, "notification is dead");
                    } else {
                        tracing::info!(sink = self.sink.name(), outbox = r.id, attempts = n, error = %e, "delivery failed; will retry");
                    }
                    let wait = e.retry_after.map_or_else(|| backoff(n, time_ns ^ r.id), |d| d.min(MAX_BACKOFF));
                    Attempt {
                        outbox_id: r.id,
                        time_ns,
                        duration_us,
                        error: Some(e.message.clone()),
                        state: if dead { OutboxState::Dead } else { OutboxState::Pending },
                        next_ns: time_ns.saturating_add(wait.as_nanos().min(i64::MAX as u128) as i64),
                    }
                }
            };
            attempts.push(a);
        }
        attempts
    }

    /// Writes the attempts through the writer thread and waits for the commit.
    fn record(&self, attempts: Vec<Attempt>) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task: crate::writer::StoreTask = Box::new(move |s: &mut dyn Store| {
            let _ = tx.send(s.record_attempts(&attempts).map_err(|e| e.to_string()));
        });
        self.writes.send(Write::Run(task)).map_err(|_| "the writer stopped".to_owned())?;
        rx.recv().map_err(|_| "the writer stopped".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        for seed in [0, 7, 199, 200, 400, -5, i64::MIN] {
            let b1 = backoff(1, seed).as_secs_f64();
            assert!((0.8..=1.2).contains(&b1), "{b1}");
            let b4 = backoff(4, seed).as_secs_f64();
            assert!((6.4..=9.6).contains(&b4), "{b4}");
            let b30 = backoff(30, seed).as_secs_f64();
            assert!((240.0..=360.0).contains(&b30), "{b30}");
        }
    }

    #[test]
    fn the_bucket_delays_and_never_drops() {
        let mut b = Bucket::new(Some(2));
        assert_eq!(b.take(5), 2);
        assert_eq!(b.take(5), 0);
        assert!(b.wait() > Duration::from_secs(20));
        let mut free = Bucket::new(None);
        assert_eq!(free.take(1000), 1000);
    }
}
