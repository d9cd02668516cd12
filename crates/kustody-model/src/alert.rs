//! A runtime alert (Falco), the second kind of record next to the audit [`crate::Event`].

/// One Falco runtime alert: what `kustody serve` reads (`kustody_ingest::falco`), stores and
/// indexes (`kustody_store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeAlert {
    pub time_ns: Option<i64>,
    pub rule: String,
    pub priority: String,
    pub source: Option<String>,
    pub hostname: Option<String>,
    /// `k8s.ns.name`, `k8s.pod.name`, `container.id` from `output_fields`.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container_id: Option<String>,
    pub output: String,
    /// The alert as received, re-serialised compactly (JSON). The store compresses it and
    /// de-duplicates alerts on it: a redelivered alert is stored once.
    pub raw: String,
    /// The cluster it came from (`kustody serve --cluster`), when known.
    pub cluster: Option<String>,
}
