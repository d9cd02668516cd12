//! Falco runtime alerts to store rows (the reader is `kustody_ingest::falco`).

use kustody_ingest::falco::{self, BadAlert, FalcoAlert};
use kustody_store::AlertRow;

/// Reads every alert of a payload; good ones are kept even when others are bad.
pub fn parse(body: &[u8]) -> (Vec<AlertRow>, Vec<BadAlert>) {
    let (good, bad) = falco::parse(body);
    (good.into_iter().map(row).collect(), bad)
}

fn row(a: FalcoAlert) -> AlertRow {
    AlertRow {
        time_ns: a.time_ns,
        rule: a.rule,
        priority: a.priority,
        source: a.source,
        hostname: a.hostname,
        namespace: a.namespace,
        pod: a.pod,
        container_id: a.container_id,
        output: a.output,
        raw: a.raw,
    }
}
