//! Quotas: a token bucket per account and region (CloudWatch Logs' FilterLogEvents allows 5
//! calls a second per account and region, shared with every other tool of the account), and
//! jittered exponential backoff after throttling or failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A token bucket: `rate` calls a second on average, bursts of `burst`.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Bucket {
        let rate = rate.max(0.001);
        let burst = burst.max(1.0);
        Bucket { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// How long to wait before the next call, taking its token (no wait: zero).
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = *s;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst) - 1.0;
        *s = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn take(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The process's bucket for `key` (e.g. `logs:ACCESS-KEY-ID:eu-west-1`): sources of one
/// account and region share it.
pub fn shared(key: &str, rate: f64, burst: f64) -> Arc<Bucket> {
    static BUCKETS: OnceLock<Mutex<HashMap<String, Arc<Bucket>>>> = OnceLock::new();
    let map = BUCKETS.get_or_init(Default::default);
    let mut m = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    m.entry(key.to_owned()).or_insert_with(|| Arc::new(Bucket::new(rate, burst))).clone()
}

/// Exponential backoff with full jitter ("Exponential Backoff and Jitter", AWS Architecture
/// Blog): attempt `n` waits a random time below `min(cap, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Backoff { base, cap, attempt: 0, seed: seed | 1 }
    }

    /// The next wait (at least a millisecond, at least `floor` when the provider asked for it).
    pub fn next(&mut self, floor: Option<Duration>) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: jitter, not secrecy
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let wait = Duration::from_secs_f64(ceiling.as_secs_f64() * frac).max(Duration::from_millis(1));
        floor.map_or(wait, |f| wait.max(f))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_its_rate() {
        let b = Bucket::new(2.0, 2.0);
        let t = Instant::now();
        assert_eq!(b.reserve(t), Duration::ZERO);
        assert_eq!(b.reserve(t), Duration::ZERO);
        let w = b.reserve(t);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // a second later, two more tokens came: the debt of one is paid, one is left
        assert_eq!(b.reserve(t + Duration::from_millis(1500)), Duration::ZERO);
    }

    #[test]
    fn shared_buckets_are_one_per_key() {
        let a = shared("logs:k:r1", 5.0, 5.0);
        let b = shared("logs:k:r1", 1.0, 1.0);
        let c = shared("logs:k:r2", 5.0, 5.0);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_honours_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..12).map(|_| b.next(None)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2) && *w >= Duration::from_millis(1)), "{waits:?}");
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "jittered: {waits:?}");
        assert!(b.next(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        b.reset();
        assert!(b.next(None) <= Duration::from_millis(100));
    }
}
