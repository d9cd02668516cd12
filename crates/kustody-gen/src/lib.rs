//! Deterministic generators of Kubernetes audit logs.
//!
//! * [`example`] replays the seed-003 attack chain (malicious image → in-pod token used with
//!   kubectl → permission enumeration → forbidden secret listing → exec → privileged DaemonSet
//!   mounting the host's `/`) inside realistic benign control-plane traffic. Its output is
//!   committed as `examples/attack-chain.jsonl`; a test regenerates and compares it.
//! * [`Corpus`] streams arbitrarily large realistic corpora for benchmarks: mixed verbs and
//!   resources, Metadata/Request/RequestResponse levels, event sizes from 0.5 to 20 KB, attack
//!   events sprinkled in. [`Corpus::body_heavy`] is the body-heavy, alert-heavy profile: a
//!   quarter of the events RequestResponse pod creates with ~2.5 KB bodies, over a third
//!   raising an upstream Falco alert.
//!
//! * [`operators`] writes the benign traffic of the operators real clusters run (Helm release
//!   prefixes, non-default namespaces), for the noise test.
//!
//! No randomness from the environment: a seeded SplitMix64 drives every choice.

mod events;
mod heavy;
pub mod operators;

pub use events::{example, wrap_line, Corpus, Wrap};

/// SplitMix64: tiny, fast, and good enough to make generated traffic look varied.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
    /// A UUID-shaped hex string.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}
