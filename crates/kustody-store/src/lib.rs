//! kustody's event store: what `kustody serve` keeps and `kustody search`, `hunt --store` and
//! `timeline --store` read.
//!
//! Four kinds of record, each linked to its evidence:
//! - **events**: audit events as their native JSON text (compressed), indexed by time, auditID,
//!   user, service account, namespace, resource, name, verb, response code, source IPs and the
//!   pod a bound service-account token was minted for; de-duplicated on (auditID, stage), with
//!   the set of origins (webhook, file, …) that delivered each one;
//! - **alerts**: Falco runtime alerts (`http_output` JSON or falcosidekick), tied to the pod;
//! - **matches**: which rule fired on which stored event;
//! - **findings**: what the live detector folded those matches into.
//!
//! [`Store`] is the interface; [`sqlite::SqliteStore`] is the embedded backend (SQLite in WAL
//! mode, `synchronous=FULL`: a commit returns only once it is on disk). Another backend must
//! pass the same tests (`tests/store.rs` runs them against any `Store`).
//!
//! **Architecture Invariant:** a write call returns `Ok` only after its transaction is durably
//! committed; callers acknowledge to senders only then.

use std::borrow::Cow;

use kustody_model::Event;

pub mod export;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod response;
pub mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::{PgConfig, PgStore};
pub use response::{
    ActionQuery, ActionRow, Attempt, AttemptRow, Batch, BatchIds, IncidentQuery, IncidentRow, IncidentWrite, NoteRow,
    OutboxQuery, OutboxRow, OutboxState, OutboxWrite, Ref,
};
pub use sqlite::SqliteStore;

/// Who delivered an event. Stored as a bit set per event: a webhook event later also read from
/// the apiserver's log file has both bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    Webhook = 1,
    File = 2,
    /// `kustody serve --replay` and imports.
    Replay = 4,
    /// A managed cloud's logging service (CloudWatch Logs, Cloud Logging, Azure Storage).
    Cloud = 8,
}

impl Origin {
    pub fn bit(self) -> i64 {
        self as i64
    }
}

/// One audit event to store, with the indexed fields pulled out of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRow<'a> {
    /// The event's native JSON text (one line, as read).
    pub raw: Cow<'a, str>,
    pub time_ns: Option<i64>,
    pub audit_id: Option<Cow<'a, str>>,
    pub stage: Option<Cow<'a, str>>,
    pub user: Option<Cow<'a, str>>,
    /// `namespace/name` when the user is a service account (`system:serviceaccount:NS:NAME`).
    pub service_account: Option<String>,
    /// `namespace/name` of the pod a bound token was issued for (`user.extra`
    /// `authentication.kubernetes.io/pod-name`), else the pod the request is about.
    pub pod: Option<String>,
    pub namespace: Option<Cow<'a, str>>,
    pub resource: Option<Cow<'a, str>>,
    pub subresource: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub verb: Option<Cow<'a, str>>,
    pub code: Option<i64>,
    pub source_ips: Vec<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    /// `namespace/name` of the pod that held the request's source IP at the event's time (the
    /// IP history's answer; `None` when the IP was no known pod's). Set by the ingest path.
    pub source_pod: Option<String>,
    /// The cluster the event came from (`kustody serve --cluster`). Set by the ingest path;
    /// part of the de-duplication key, so clusters never shadow each other's events.
    pub cluster: Option<String>,
}

impl<'a> EventRow<'a> {
    /// The row of a parsed event (its text is `ev.raw()`).
    pub fn of(ev: &Event<'a>) -> EventRow<'a> {
        let user = ev.user().and_then(|u| u.username.clone());
        let service_account = user.as_deref().and_then(service_account_of);
        let obj = ev.object_ref();
        let namespace = obj.and_then(|o| o.namespace.clone());
        let resource = obj.and_then(|o| o.resource.clone());
        let name = obj.and_then(|o| o.name.clone());
        let bound_pod =
            kustody_model::rawjson::pointer(ev.raw(), &["user", "extra", "authentication.kubernetes.io/pod-name", "0"])
                // Only a non-empty JSON string names a pod (`null`, numbers and `""` do not).
                .filter(|v| v.starts_with('"'))
                .and_then(kustody_model::rawjson::text)
                .filter(|p| !p.is_empty());
        let pod = match (bound_pod, &service_account) {
            (Some(p), Some(sa)) => sa.split_once('/').map(|(ns, _)| format!("{ns}/{p}")),
            (Some(p), None) => Some(p.into_owned()),
            _ if resource.as_deref() == Some("pods") => match (&namespace, &name) {
                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                _ => None,
            },
            _ => None,
        };
        EventRow {
            raw: Cow::Borrowed(ev.raw()),
            time_ns: ev.time_ns(),
            audit_id: ev.audit_id().map(|s| Cow::Owned(s.to_owned())),
            stage: ev.stage().map(|s| Cow::Owned(s.to_owned())),
            user,
            service_account,
            pod,
            namespace,
            resource,
            subresource: obj.and_then(|o| o.subresource.clone()),
            name,
            verb: ev.verb().map(|s| Cow::Owned(s.to_owned())),
            code: ev.response_status().and_then(|s| s.code),
            source_ips: ev.source_ips().map(<[_]>::to_vec).unwrap_or_default(),
            user_agent: ev.user_agent().map(|s| Cow::Owned(s.to_owned())),
            source_pod: None,
            cluster: None,
        }
    }
}

/// `namespace/name` of a service-account user name.
pub fn service_account_of(user: &str) -> Option<String> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some(format!("{ns}/{name}"))
}

/// What one append did, per input row in order: the stored row id, or `None` for a duplicate
/// (already stored; its origin bit was added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    pub ids: Vec<Option<i64>>,
    pub stored: u64,
    pub duplicates: u64,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub time_ns: Option<i64>,
    pub audit_id: Option<String>,
    pub stage: Option<String>,
    /// Bit set of [`Origin`]s.
    pub origins: i64,
    /// The event's JSON text, decompressed.
    pub raw: String,
    /// `namespace/name` of the pod that held its source IP, as attributed at ingest.
    pub source_pod: Option<String>,
    /// The cluster it came from, when known.
    pub cluster: Option<String>,
}

/// One Falco runtime alert, as stored.
pub use kustody_model::RuntimeAlert as AlertRow;

/// A stored runtime alert.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    pub id: i64,
    pub alert: AlertRow,
}

/// A rule match on a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRow {
    pub event_id: i64,
    pub rule: String,
    pub priority: String,
    /// The finding the match folded into, when known.
    pub finding_id: Option<i64>,
}

/// A finding as stored: created when the detector opens it, updated as repeats fold in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindingRow {
    /// `None` to insert; the row id to update.
    pub id: Option<i64>,
    pub rule: String,
    pub priority: String,
    /// Every rule that fired, first-seen order.
    pub rules: Vec<String>,
    pub tags: Vec<String>,
    pub events: u64,
    pub matches: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub user: Option<String>,
    pub namespace: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub source_ip: Option<String>,
    /// The lead detection's output text.
    pub output: String,
    /// Sample audit IDs (the first ones).
    pub audit_ids: Vec<String>,
    /// Stored event that opened the finding (its evidence), when it is a stored event.
    pub lead_event: Option<i64>,
    /// Still folding repeats (`true`) or closed.
    pub open: bool,
    /// The lead detection as JSON (output fields, context), for the console and exports.
    pub detail: String,
    /// The cluster of its events.
    pub cluster: Option<String>,
}

/// What event counts are split by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CountBy {
    #[default]
    Total,
    Namespace,
    User,
}

/// Events per time bucket, from counts kept per minute (exact, and cheap over days): filtered
/// by one namespace or one user (not both), split by namespace or user or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountQuery {
    pub since_ns: i64,
    pub until_ns: i64,
    /// Rounded down to whole minutes (at least one).
    pub bucket_ns: i64,
    pub namespace: Option<String>,
    pub user: Option<String>,
    pub by: CountBy,
}

/// How many in one bucket (starting at `start_ns`) for one key (namespace, user or priority;
/// empty for totals, cluster-scoped requests, or events without a user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub start_ns: i64,
    pub key: String,
    pub n: u64,
}

/// A stored column an event search may restrict to a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyColumn {
    Verb,
    Resource,
    Subresource,
    Stage,
}

/// The column must hold one of `values` (compared ASCII case-insensitively with `ci`, the
/// values then lower case); an event without the column does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOf {
    pub column: KeyColumn,
    pub values: Vec<String>,
    pub ci: bool,
}

/// Filters of an event search; every set field must match (AND). Newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// Exact user name.
    pub user: Option<String>,
    /// `namespace/name`.
    pub service_account: Option<String>,
    /// `namespace/name`.
    pub pod: Option<String>,
    /// Any of the event's source IPs.
    pub ip: Option<String>,
    /// `namespace/name` of the pod the request came from (its source IP's holder).
    pub source_pod: Option<String>,
    pub namespace: Option<String>,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub audit_id: Option<String>,
    /// Events a rule matched.
    pub rule: Option<String>,
    /// Only rows with an id below this (paging backwards: pass the last id seen).
    pub before_id: Option<i64>,
    pub limit: usize,
    /// Pre-filters on stored columns (a `where` condition's index keys).
    pub one_of: Vec<OneOf>,
    pub cluster: Option<String>,
}

/// Filters of a finding search. Newest first (by last seen).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindingQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub user: Option<String>,
    pub namespace: Option<String>,
    /// Lead rule or any folded rule.
    pub rule: Option<String>,
    /// At least this severe (a Falco priority name).
    pub min_priority: Option<kustody_model::Priority>,
    pub before_id: Option<i64>,
    pub limit: usize,
    pub cluster: Option<String>,
    /// Only findings still open, newest id first (so `before_id` pages through them exactly):
    /// what a detector taking partitions over continues.
    pub open_only: bool,
}

/// Filters of a runtime-alert search. Newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub namespace: Option<String>,
    /// Pod name (with `namespace` to be exact).
    pub pod: Option<String>,
    pub rule: Option<String>,
    pub before_id: Option<i64>,
    pub limit: usize,
    pub cluster: Option<String>,
}

/// Sizes and counts for `/metrics` and `kustody search --stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub events: u64,
    pub alerts: u64,
    pub findings: u64,
    pub matches: u64,
    /// Database and WAL bytes on disk.
    pub bytes: u64,
    /// Total length of stored events' original JSON text.
    pub event_text_bytes: u64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    pub events_removed: u64,
    pub alerts_removed: u64,
    pub findings_removed: u64,
}

/// Where a followed file was read up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffset {
    pub path: String,
    /// Device and inode of the file, to notice rotation.
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub line: u64,
}

/// The longest part of a bad record's raw bytes kept ([`BadRecord::raw_len`] has its length).
pub const MAX_BAD_RAW: usize = 4 << 20;

/// A record a source could not convert into an event, kept with why: never acknowledged and
/// forgotten. `(source, locator)` identifies it; storing it again changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadRecord {
    /// When it was read (ns since the epoch).
    pub received_ns: i64,
    /// The source: `file:/var/log/kube-audit.log`, `cloudwatch:eu-west-1:/aws/eks/prod/cluster`…
    pub source: String,
    /// Where in the source: `line 12`, `kube-apiserver-audit-1a2b/3761…` (stream/eventId)…
    pub locator: String,
    pub reason: String,
    /// The record as read, at most [`MAX_BAD_RAW`] bytes of it.
    pub raw: Vec<u8>,
    /// The record's whole length.
    pub raw_len: u64,
    /// The auditID that could still be read from it.
    pub audit_id: Option<String>,
    pub cluster: Option<String>,
}

impl BadRecord {
    /// A bad record of `raw`, cut at [`MAX_BAD_RAW`].
    pub fn new(received_ns: i64, source: &str, locator: String, reason: String, raw: &[u8]) -> BadRecord {
        BadRecord {
            received_ns,
            source: source.to_owned(),
            locator,
            reason,
            raw: raw.get(..MAX_BAD_RAW).unwrap_or(raw).to_vec(),
            raw_len: raw.len() as u64,
            audit_id: None,
            cluster: None,
        }
    }
}

/// A stored bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecordRow {
    pub id: i64,
    pub record: BadRecord,
}

/// Which bad records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct BadRecordQuery {
    /// Exactly this source.
    pub source: Option<String>,
    pub cluster: Option<String>,
    pub since_ns: Option<i64>,
    /// Only ids below this (paging).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full (SQLITE_FULL or ENOSPC): nothing of the call was committed.
    #[error("the store's disk is full: {0}")]
    Full(String),
    /// The store is busy or locked beyond the busy timeout.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// Written by a newer kustody.
    #[error("the store's schema version {found} is newer than this kustody's ({supported}); upgrade kustody")]
    TooNew { found: i64, supported: i64 },
    #[error("the store at `{path}` cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether a sender should retry later (503 with Retry-After) rather than give up.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::Busy(_))
    }
}

/// The storage interface. One writer at a time holds a `Store`; readers open their own.
pub trait Store: Send {
    /// Stores events in one durable transaction; duplicates already stored are not stored again
    /// but gain `origin`'s bit. A duplicate is the same (auditID, stage) of the same cluster
    /// with the same event time: what a redelivery or the log file holds (SQLite keys it time first, so the key's
    /// index grows at its end). Events without an auditID are never duplicates.
    fn append_events(&mut self, events: &[EventRow<'_>], origin: Origin) -> Result<Appended, StoreError>;
    /// Stores runtime alerts in one durable transaction (content duplicates stored once).
    fn append_alerts(&mut self, alerts: &[AlertRow]) -> Result<Appended, StoreError>;
    /// Inserts (id `None`) or updates findings and stores matches, in one durable transaction.
    /// Returns the id of every finding, in order.
    fn record_detections(&mut self, findings: &[FindingRow], matches: &[MatchRow]) -> Result<Vec<i64>, StoreError>;
    /// What a live detector stores for one batch, in **one** durable transaction: findings
    /// (inserted or updated), matches — each pointing at a finding by id, or by its index in
    /// `findings` when this call inserts it — and the detector's cursor. Returns every
    /// finding's id, in order.
    fn record_batch(
        &mut self,
        findings: &[FindingRow],
        matches: &[(MatchRow, Option<usize>)],
        cursor: Option<(&str, i64)>,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(self.commit(&Batch { findings, matches, cursor, ..Default::default() })?.findings)
    }
    /// Findings, matches, incidents (with their findings), notes, notifications and a cursor,
    /// in **one** durable transaction.
    fn commit(&mut self, batch: &Batch<'_>) -> Result<BatchIds, StoreError>;
    /// The next free finding id and incident id (above every stored or linked one): a live
    /// detector allocates ids itself so notifications committed with a new incident name it.
    fn next_ids(&self) -> Result<(i64, i64), StoreError>;
    /// Incidents, most recently active first.
    fn search_incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError>;
    fn incident(&self, id: i64) -> Result<Option<IncidentRow>, StoreError>;
    /// The findings an incident holds, in first-seen order.
    fn incident_findings(&self, id: i64) -> Result<Vec<FindingRow>, StoreError>;
    fn incident_notes(&self, id: i64) -> Result<Vec<NoteRow>, StoreError>;
    /// Pending notifications of `sink` due at `now_ns`, oldest first; a notification waits
    /// while an older one of the same incident and sink is still pending (a resolve never
    /// overtakes its trigger).
    fn outbox_due(&self, sink: &str, now_ns: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;
    /// When the next pending notification of `sink` is due, if any.
    fn outbox_next_due(&self, sink: &str) -> Result<Option<i64>, StoreError>;
    /// Records delivery attempts and the states they lead to, in one durable transaction.
    fn record_attempts(&mut self, attempts: &[Attempt]) -> Result<(), StoreError>;
    fn search_outbox(&self, q: &OutboxQuery) -> Result<Vec<OutboxRow>, StoreError>;
    fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>, StoreError>;
    fn outbox_attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>, StoreError>;
    /// Makes dead (or pending) notifications due again at `now_ns`: the given ids, or with
    /// `ids` empty every dead one (of `sink` when given). Returns how many. A trigger or update
    /// whose incident was resolved on that sink since is not sent again (it would reopen it).
    fn retry_outbox(&mut self, ids: &[i64], sink: Option<&str>, now_ns: i64) -> Result<u64, StoreError>;
    fn search_actions(&self, q: &ActionQuery) -> Result<Vec<ActionRow>, StoreError>;
    fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError>;
    /// Updates action `row.id` only while it is in state `from` (an approval that lost a race
    /// changes nothing); returns whether it did, durably.
    fn transition_action(&mut self, row: &ActionRow, from: &str) -> Result<bool, StoreError>;
    /// Events with an id above `after`, oldest first, at most `limit` (the detector's catch-up
    /// after a restart, and retro-hunts).
    fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;
    fn search_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    fn search_findings(&self, q: &FindingQuery) -> Result<Vec<FindingRow>, StoreError>;
    fn search_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError>;
    /// Events per bucket in `[since_ns, until_ns)` (minute resolution), from counts kept with
    /// the events; an error for a namespace and a user together.
    fn event_counts(&self, q: &CountQuery) -> Result<Vec<Count>, StoreError>;
    /// Findings first seen per bucket in `[since_ns, until_ns)`, keyed by priority.
    fn finding_counts(&self, since_ns: i64, until_ns: i64, bucket_ns: i64) -> Result<Vec<Count>, StoreError>;
    /// Stored findings per rule (every rule a finding lists, not only its lead), by rule name.
    fn rule_finding_counts(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// A named cursor (the detector's last processed event id); 0 when never set.
    fn cursor(&self, name: &str) -> Result<i64, StoreError>;
    fn set_cursor(&mut self, name: &str, value: i64) -> Result<(), StoreError>;
    fn file_offset(&self, path: &str) -> Result<Option<FileOffset>, StoreError>;
    fn set_file_offset(&mut self, off: &FileOffset) -> Result<(), StoreError>;
    /// Events that reached the store only through `only` (e.g. the file) although `missing`
    /// (the webhook) is configured, older than `before_ns`: the webhook's gaps.
    fn count_only_from(&self, only: Origin, missing: Origin, before_ns: i64) -> Result<u64, StoreError>;
    /// Removes events, alerts and closed findings older than `max_age_ns` before `now_ns`, then
    /// the oldest events until the store is under `max_bytes`.
    fn retain(&mut self, now_ns: i64, max_age_ns: Option<i64>, max_bytes: Option<u64>) -> Result<Retained, StoreError>;
    fn stats(&self) -> Result<StoreStats, StoreError>;
    /// Inserts or replaces IP intervals (keyed by IP and pod uid), in one durable transaction.
    fn save_intervals(&mut self, intervals: &[Interval]) -> Result<(), StoreError>;
    /// Every stored interval of `ip`, oldest first.
    fn ip_intervals(&self, ip: &str) -> Result<Vec<Interval>, StoreError>;
    /// The intervals of a pod (`namespace`, `name`), oldest first.
    fn pod_intervals(&self, namespace: &str, name: &str) -> Result<Vec<Interval>, StoreError>;
    /// Intervals still open or last seen at or after `since_ns` (what a restart restores),
    /// oldest first, at most `limit`.
    fn recent_intervals(&self, since_ns: i64, limit: usize) -> Result<Vec<Interval>, StoreError>;
    /// A named state blob (the live baseline), when stored. Stored compressed (zstd), and
    /// given back as it was given.
    fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set_state(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Keeps records that could not be converted, in one durable transaction; a record already
    /// stored (same source and locator) is left as it is. Returns how many were new.
    fn append_bad_records(&mut self, records: &[BadRecord]) -> Result<u64, StoreError>;
    /// Stored bad records, newest first.
    fn bad_records(&self, q: &BadRecordQuery) -> Result<Vec<BadRecordRow>, StoreError>;
    /// Takes or renews the lease on the source `name` for `owner`: its epoch (it rises each
    /// time the source changes hands) while `owner` holds it, `None` while another process
    /// does. A lease unrenewed for `ttl` goes to the next process asking. A backend with a
    /// single writer has one process: its lease is always held.
    ///
    /// # Errors
    ///
    /// As any write.
    fn source_lease(&mut self, name: &str, owner: &str, ttl: std::time::Duration) -> Result<Option<i64>, StoreError> {
        let _ = (name, owner, ttl);
        Ok(Some(0))
    }
    /// Gives up `owner`'s lease on `name` so another process takes it at once.
    ///
    /// # Errors
    ///
    /// As any write.
    fn release_source_lease(&mut self, name: &str, owner: &str) -> Result<(), StoreError> {
        let _ = (name, owner);
        Ok(())
    }

    /// A fresh block of finding ids and one of incident ids, `(first finding id, first
    /// incident id, ids in each block)`, for a writer that shares the database with others
    /// (detectors on a bus). Backends with a single writer number from [`Store::next_ids`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] on a backend without shared writers.
    fn reserve_ids(&mut self) -> Result<(i64, i64, i64), StoreError> {
        Err(StoreError::Other("this store has a single writer: it does not hand out id blocks".into()))
    }
    /// The ids of stored events with the same de-duplication key as each row (cluster,
    /// auditID, stage, time), `None` where none is stored: what a detector that takes over a
    /// bus partition evaluates again when its predecessor stored a batch but died before
    /// evaluating it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] on a backend without shared writers.
    fn stored_event_ids(&self, rows: &[EventRow<'_>]) -> Result<Vec<Option<i64>>, StoreError> {
        let _ = rows;
        Err(StoreError::Other("this store does not look events up by their de-duplication key".into()))
    }
    /// Renews `owner`'s membership and bus leases, releases what is above its fair share of
    /// `partitions` among live members, and takes expired ones up to it; returns the
    /// partitions it holds with their epochs (an epoch rises each time a partition changes
    /// hands). Members and leases unrenewed for `ttl` expire.
    ///
    /// # Errors
    ///
    /// As any write; [`StoreError::Other`] on a backend without shared writers.
    fn bus_leases(
        &mut self,
        owner: &str,
        partitions: u32,
        ttl: std::time::Duration,
    ) -> Result<Vec<(u32, i64)>, StoreError> {
        let _ = (owner, partitions, ttl);
        Err(StoreError::Other("this store does not keep bus leases".into()))
    }
    /// Gives up `owner`'s leases (those in `only`, or all) so others take them at once.
    ///
    /// # Errors
    ///
    /// As any write; [`StoreError::Other`] on a backend without shared writers.
    fn release_leases(&mut self, owner: &str, only: Option<&[u32]>) -> Result<(), StoreError> {
        let _ = (owner, only);
        Err(StoreError::Other("this store does not keep bus leases".into()))
    }
}

pub use kustody_iphistory::Interval;

/// Compresses a state blob as [`Store::set_state`] stores it, so a caller can do the work on
/// its own thread (a large live baseline takes a second or more) instead of the writer's.
pub fn compress_state(value: &[u8]) -> Result<Vec<u8>, StoreError> {
    zstd::bulk::compress(value, 3).map_err(|e| StoreError::Other(format!("compressing state: {e}")))
}

/// Where a store is: what `kustody serve --store` names. A server opens its writer and its
/// readers through it, whatever the backend.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded SQLite store in this directory.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgConfig),
}

impl Location {
    /// The writer (creating the store or bringing its schema up to date).
    ///
    /// # Errors
    ///
    /// When the store cannot be opened (see the backends' `open`).
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Location::Sqlite(dir) => Box::new(SqliteStore::open(dir)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(cfg) => Box::new(PgStore::open(cfg)?),
        })
    }

    /// A reader beside the writer.
    ///
    /// # Errors
    ///
    /// When there is no store of this version there (open the writer once first).
    pub fn open_read_only(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Location::Sqlite(dir) => Box::new(SqliteStore::open_read_only(dir)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(cfg) => Box::new(PgStore::open_read_only(cfg)?),
        })
    }

    /// The same store for one of several writers (detectors on a bus).
    ///
    /// # Errors
    ///
    /// When the backend has a single writer (SQLite).
    pub fn shared_writers(self) -> Result<Location, String> {
        match self {
            Location::Sqlite(_) => Err("several writers share only a PostgreSQL store (--store postgres://…)".into()),
            #[cfg(feature = "postgres")]
            Location::Postgres(cfg) => Ok(Location::Postgres(cfg.shared_writers())),
        }
    }

    /// How messages name it: the directory, or PostgreSQL's host, port and database (never a
    /// password).
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.display().to_string(),
            #[cfg(feature = "postgres")]
            Location::Postgres(cfg) => format!("postgres {}", cfg.target()),
        }
    }
}
