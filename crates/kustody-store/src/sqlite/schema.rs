//! The schema, as an ordered list of migration steps.
//!
//! `PRAGMA user_version` holds the number of steps applied. Opening a store applies the missing
//! steps in order, in one transaction; a store whose version is above [`SCHEMA_VERSION`] was
//! written by a newer kustody and is refused ([`crate::StoreError::TooNew`]).
//!
//! A step is never edited once released: a change is a new step appended to [`MIGRATIONS`].

/// Version 1.
///
/// - `events.body` is the event's JSON text, zstd-compressed (a BLOB), or the text itself (a
///   TEXT value) when compression does not make it smaller; `text_len` is the text's length.
/// - Why the indexes look as they do: a commit writes every B-tree page it touched, whole, to
///   the WAL, and an index on a key with many values (auditID, user, pod, object name, IP)
///   touches about one page per distinct key of the batch, anywhere in the index: 1–2 pages
///   (4–8 KiB) of WAL per event, growing with the store. So those indexes lead with the id's
///   *bucket* (`id >> 12`, 4096 consecutive events): a batch's entries land in the newest
///   bucket's few pages. A search then visits buckets newest first, one index seek each
///   (2,442 buckets for 10 million events), until it has its rows. Keys with few values
///   (namespace, resource, verb, time) are indexed plainly: each touches few pages anyway.
///   Measured with 1 million events, 400 per commit: 5.3k events/s with plain indexes on every
///   key, 16–17.6k/s so (see `examples/store_bench.rs`).
/// - `events_dedup` de-duplicates on (time, auditID, stage): a duplicate is the same event
///   again, with the same time, and leading with the time keeps the index's writes local (on
///   (auditID, stage) alone, a random key, it cost a third of the append rate). A missing
///   stage counts as `''`, a missing time as 0, and events without an auditID are never
///   duplicates (the index is partial). An auditID is searched through `events_audit`.
/// - Within a bucket (or a plain index's key), entries are in id order (SQLite appends the
///   rowid to every index), so `key = ? ORDER BY id DESC LIMIT n` reads n entries. The indexes
///   are partial (`IS NOT NULL`) where the column is often empty.
/// - A service account is searched through `events_user` (its user name is
///   `system:serviceaccount:NS:NAME`), which saves an index per event.
/// - `events_lone_origins` holds only events that did not come through the webhook alone or
///   with the file (origins 1 and 3, the bulk when the webhook works): what counting the
///   webhook's gaps reads ([`crate::Store::count_only_from`]).
/// - `event_ips` rows have id `event_id << 4 | n` (n < 16, the IP's position): the index on
///   (bucket, `ip`) yields event ids in order (`id >> 16` is the event's bucket), and an
///   event's IPs are one id range (deleted with it) without a second index on the event id.
/// - `matches` is keyed by (event_id, rule): a match recorded again (catch-up after a restart)
///   is one row.
/// - `finding_rules` lists every rule of a finding (the lead one included), for the rule
///   filter.
/// - `dicts` holds the zstd dictionaries bodies are compressed with, by the dictionary ID that
///   each frame's header names.
/// - `totals` holds exact row counts and the events' text size, kept by every write in the same
///   transaction, so statistics need no scan.
const V1: &str = "
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER,
    audit_id TEXT,
    stage TEXT,
    username TEXT,
    service_account TEXT,
    pod TEXT,
    namespace TEXT,
    resource TEXT,
    subresource TEXT,
    name TEXT,
    verb TEXT,
    code INTEGER,
    user_agent TEXT,
    origins INTEGER NOT NULL,
    text_len INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX events_dedup ON events(ifnull(time_ns, 0), audit_id, ifnull(stage, ''))
    WHERE audit_id IS NOT NULL;
CREATE INDEX events_time ON events(time_ns);
CREATE INDEX events_audit ON events(id >> 12, audit_id) WHERE audit_id IS NOT NULL;
CREATE INDEX events_user ON events(id >> 12, username) WHERE username IS NOT NULL;
CREATE INDEX events_pod ON events(id >> 12, pod) WHERE pod IS NOT NULL;
CREATE INDEX events_name ON events(id >> 12, name) WHERE name IS NOT NULL;
CREATE INDEX events_namespace ON events(namespace) WHERE namespace IS NOT NULL;
CREATE INDEX events_resource ON events(resource) WHERE resource IS NOT NULL;
CREATE INDEX events_verb ON events(verb) WHERE verb IS NOT NULL;
CREATE INDEX events_lone_origins ON events(origins, time_ns) WHERE origins NOT IN (1, 3);

CREATE TABLE event_ips (id INTEGER PRIMARY KEY, ip TEXT NOT NULL);
CREATE INDEX event_ips_ip ON event_ips(id >> 16, ip);

CREATE TABLE matches (
    event_id INTEGER NOT NULL,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,
    finding_id INTEGER,
    PRIMARY KEY (event_id, rule)
) WITHOUT ROWID;
CREATE INDEX matches_rule ON matches(rule, event_id);
CREATE INDEX matches_finding ON matches(finding_id) WHERE finding_id IS NOT NULL;

CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    rules TEXT NOT NULL,
    tags TEXT NOT NULL,
    events INTEGER NOT NULL,
    matches INTEGER NOT NULL,
    first_ns INTEGER,
    last_ns INTEGER,
    username TEXT,
    namespace TEXT,
    resource TEXT,
    name TEXT,
    source_ip TEXT,
    output TEXT NOT NULL,
    audit_ids TEXT NOT NULL,
    lead_event INTEGER,
    open INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX findings_last ON findings(last_ns);
CREATE INDEX findings_user ON findings(username) WHERE username IS NOT NULL;
CREATE INDEX findings_namespace ON findings(namespace) WHERE namespace IS NOT NULL;
CREATE INDEX findings_rank ON findings(priority_rank);
CREATE INDEX findings_closed ON findings(last_ns) WHERE open = 0;
CREATE TABLE finding_rules (
    rule TEXT NOT NULL,
    finding_id INTEGER NOT NULL,
    PRIMARY KEY (rule, finding_id)
) WITHOUT ROWID;
CREATE INDEX finding_rules_finding ON finding_rules(finding_id);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,
    source TEXT,
    hostname TEXT,
    namespace TEXT,
    pod TEXT,
    container_id TEXT,
    output TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    raw_len INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE INDEX alerts_time ON alerts(time_ns);
CREATE INDEX alerts_pod ON alerts(namespace, pod);
CREATE INDEX alerts_pod_name ON alerts(pod) WHERE pod IS NOT NULL;
CREATE INDEX alerts_rule ON alerts(rule);

CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE file_offsets (
    path TEXT PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    line INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE dicts (id INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL, dict BLOB NOT NULL);

CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO totals(name, value) VALUES
    ('events', 0), ('alerts', 0), ('findings', 0), ('matches', 0), ('event_text_bytes', 0);
";

/// Version 2: incidents, notes, the notification outbox and its attempts, response actions.
///
/// - `incidents.state` is the whole incident (kustody-incident's JSON), what a restart restores;
///   the other columns are for searching. `incident_findings` gives each finding one incident.
/// - `outbox_due` is partial on pending rows: delivery reads only what is still to send.
/// - `outbox_attempts` is keyed (notification, attempt number): a delivery's history.
/// - `actions` records response actions (playbooks) and their outcomes.
const V2: &str = "
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    title TEXT NOT NULL,
    severity TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,
    status TEXT NOT NULL,
    assignee TEXT,
    identity TEXT,
    namespace TEXT,
    cluster TEXT,
    first_ns INTEGER,
    last_ns INTEGER,
    updated_ns INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX incidents_last ON incidents(last_ns);
CREATE INDEX incidents_unresolved ON incidents(last_ns) WHERE status != 'resolved';
CREATE INDEX incidents_identity ON incidents(identity) WHERE identity IS NOT NULL;

CREATE TABLE incident_findings (
    finding_id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL
);
CREATE INDEX incident_findings_incident ON incident_findings(incident_id);

CREATE TABLE incident_notes (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX incident_notes_incident ON incident_notes(incident_id);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    incident_id INTEGER,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    next_ns INTEGER NOT NULL,
    done_ns INTEGER,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox(sink, next_ns) WHERE state = 'pending';
CREATE INDEX outbox_state ON outbox(state);
CREATE INDEX outbox_incident ON outbox(incident_id);

CREATE TABLE outbox_attempts (
    outbox_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (outbox_id, n)
) WITHOUT ROWID;

CREATE TABLE actions (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER,
    playbook TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX actions_incident ON actions(incident_id);
";

/// Version 3: who an IP was, and named state.
///
/// - `events.src_pod` is the pod that held the event's source IP when it was ingested (`NS/NAME`),
///   indexed by bucket like the other many-valued keys.
/// - `ip_intervals` is the IP history (kustody-iphistory's intervals, one per IP and pod uid):
///   `whois` reads an IP's rows through the primary key without touching the events, and a
///   restart restores the recent ones. `facts` is the pod's JSON (node, owner, labels…).
/// - `state` holds named blobs: the live baseline.
const V3: &str = "
ALTER TABLE events ADD COLUMN src_pod TEXT;
CREATE INDEX events_src_pod ON events(id >> 12, src_pod) WHERE src_pod IS NOT NULL;

CREATE TABLE ip_intervals (
    ip TEXT NOT NULL,
    uid TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    ended_ns INTEGER,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    facts TEXT NOT NULL,
    PRIMARY KEY (ip, uid)
) WITHOUT ROWID;
CREATE INDEX ip_intervals_pod ON ip_intervals(namespace, name);
CREATE INDEX ip_intervals_last ON ip_intervals(last_ns);
CREATE INDEX ip_intervals_open ON ip_intervals(first_ns) WHERE ended_ns IS NULL;

CREATE TABLE state (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

/// Version 4: events per minute, by namespace and by user, kept by every append and removal in
/// the same transaction, so the console's histograms and charts read a few thousand rows
/// instead of every event of a day (1M events: 1.8 s grouped from the events table). The empty
/// string stands for cluster-scoped requests (namespace) and for events without a user.
const V4: &str = "
CREATE TABLE event_minutes_ns (
    minute INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, namespace)
) WITHOUT ROWID;
CREATE TABLE event_minutes_user (
    minute INTEGER NOT NULL,
    username TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, username)
) WITHOUT ROWID;
INSERT INTO event_minutes_ns (minute, namespace, n)
    SELECT time_ns / 60000000000, ifnull(namespace, ''), count(*) FROM events
    WHERE time_ns IS NOT NULL GROUP BY 1, 2;
INSERT INTO event_minutes_user (minute, username, n)
    SELECT time_ns / 60000000000, ifnull(username, ''), count(*) FROM events
    WHERE time_ns IS NOT NULL GROUP BY 1, 2;
";

/// Version 5: the cluster of every event and finding (several clusters in one store).
///
/// - `events.cluster` joins the de-duplication key: two clusters' events never shadow each
///   other, whatever their auditIDs (the index is rebuilt once, on upgrade).
/// - Events, findings and incidents are searchable by cluster.
const V5: &str = "
ALTER TABLE events ADD COLUMN cluster TEXT;
ALTER TABLE findings ADD COLUMN cluster TEXT;
DROP INDEX events_dedup;
CREATE UNIQUE INDEX events_dedup ON events(ifnull(time_ns, 0), audit_id, ifnull(stage, ''), ifnull(cluster, ''))
    WHERE audit_id IS NOT NULL;
CREATE INDEX events_cluster ON events(cluster) WHERE cluster IS NOT NULL;
CREATE INDEX findings_cluster ON findings(cluster) WHERE cluster IS NOT NULL;
CREATE INDEX incidents_cluster ON incidents(cluster) WHERE cluster IS NOT NULL;
";

/// Version 6: the cluster of runtime alerts (part of their de-duplication hash when set).
const V6: &str = "
ALTER TABLE alerts ADD COLUMN cluster TEXT;
CREATE INDEX alerts_cluster ON alerts(cluster) WHERE cluster IS NOT NULL;
";

/// Version 7: records a source could not convert into an event, kept with the reason
/// ([`crate::BadRecord`]). `(source, locator)` is a record's identity: a record read again after
/// a restart (its checkpoint not yet stored) is kept once. `raw` is zstd-compressed.
const V7: &str = "
CREATE TABLE bad_records (
    id INTEGER PRIMARY KEY,
    received_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    locator TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw_len INTEGER NOT NULL,
    raw BLOB NOT NULL,
    audit_id TEXT,
    cluster TEXT
);
CREATE UNIQUE INDEX bad_records_key ON bad_records(source, locator);
CREATE INDEX bad_records_time ON bad_records(received_ns);
";

/// The migration steps, oldest first: step `i` brings the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

/// The schema version this build writes (the number of migration steps).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
