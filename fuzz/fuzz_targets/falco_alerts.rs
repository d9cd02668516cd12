//! Falco runtime alerts as `kustody serve` receives them (`POST /v1/falco`): never a panic, and
//! every item is either an alert or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (good, bad) = kustody_ingest::falco::parse(data);
    for a in &good {
        assert!(!a.rule.is_empty() || a.raw.contains("\"rule\""));
    }
    for b in &bad {
        assert!(!b.reason.is_empty());
    }
});
