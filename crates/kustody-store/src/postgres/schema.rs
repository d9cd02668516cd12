//! The PostgreSQL schema, as an ordered list of migration steps (this backend's own list: its
//! version numbers are not SQLite's).
//!
//! `kustody_meta` holds the number of steps applied under `schema_version`. Opening a writer
//! applies the missing steps in one transaction, under an advisory lock, so several kustody
//! processes starting together against one database migrate it once. A database whose version
//! is above [`SCHEMA_VERSION`] was written by a newer kustody and is refused.
//!
//! A step is never edited once released: a change is a new step appended to `MIGRATIONS`.

/// Version 1: everything the SQLite schema holds at its version 4, in PostgreSQL's terms.
///
/// - `events` is partitioned by `time_key` (the event time in nanoseconds; `i64::MIN` without
///   one) in one partition per UTC day, created by the writer before it stores an event of a
///   new day; events without a time (or before 1970) go to the default partition
///   `events_untimed`. Retention by age
///   drops whole days' partitions (no dead rows, no vacuum) and deletes within the oldest
///   remaining day.
/// - De-duplication: the unique index `events_dedup` on (time_key, auditID, stage) — time
///   first, which PostgreSQL requires of a unique index on a partitioned table (it must hold
///   the partition key) and which is what a duplicate is: the same event again, at the same
///   time. Events without an auditID are never duplicates (the index is partial).
/// - Ids come from the sequence `events_id` (one `nextval` per event, taken in input order), so
///   they increase across partitions; `events_by_id` finds an event by id in every partition.
/// - Every searchable column has an index on (column, id): a search for one key reads its
///   newest entries first and stops at the limit.
/// - `body` is the event's JSON text as bytes, zstd-compressed with the store's dictionary when
///   that is smaller (a zstd frame begins with a magic number no UTF-8 text can begin with).
/// - The other tables are SQLite's, with `bigint` for every integer.
const V1: &str = "
CREATE SEQUENCE events_id;
CREATE TABLE events (
    id bigint NOT NULL,
    time_key bigint NOT NULL,
    time_ns bigint,
    audit_id text,
    stage text,
    username text,
    service_account text,
    pod text,
    namespace text,
    resource text,
    subresource text,
    name text,
    verb text,
    code bigint,
    user_agent text,
    origins bigint NOT NULL,
    text_len bigint NOT NULL,
    body bytea NOT NULL,
    src_pod text
) PARTITION BY RANGE (time_key);
CREATE TABLE events_untimed PARTITION OF events DEFAULT;
CREATE UNIQUE INDEX events_dedup ON events (time_key, audit_id, coalesce(stage, '')) WHERE audit_id IS NOT NULL;
CREATE INDEX events_by_id ON events (id);
CREATE INDEX events_time ON events (time_ns, id);
CREATE INDEX events_audit ON events (audit_id, id) WHERE audit_id IS NOT NULL;
CREATE INDEX events_user ON events (username, id) WHERE username IS NOT NULL;
CREATE INDEX events_pod ON events (pod, id) WHERE pod IS NOT NULL;
CREATE INDEX events_src_pod ON events (src_pod, id) WHERE src_pod IS NOT NULL;
CREATE INDEX events_name ON events (name, id) WHERE name IS NOT NULL;
CREATE INDEX events_namespace ON events (namespace, id) WHERE namespace IS NOT NULL;
CREATE INDEX events_resource ON events (resource, id) WHERE resource IS NOT NULL;
CREATE INDEX events_verb ON events (verb, id) WHERE verb IS NOT NULL;
CREATE INDEX events_lone_origins ON events (origins, time_ns) WHERE origins NOT IN (1, 3);

CREATE TABLE event_ips (event_id bigint NOT NULL, n smallint NOT NULL, ip text NOT NULL, PRIMARY KEY (event_id, n));
CREATE INDEX event_ips_ip ON event_ips (ip, event_id);

CREATE TABLE matches (
    event_id bigint NOT NULL,
    rule text NOT NULL,
    priority text NOT NULL,
    finding_id bigint,
    PRIMARY KEY (event_id, rule)
);
CREATE INDEX matches_rule ON matches (rule, event_id);
CREATE INDEX matches_finding ON matches (finding_id) WHERE finding_id IS NOT NULL;

CREATE TABLE findings (
    id bigint PRIMARY KEY,
    rule text NOT NULL,
    priority text NOT NULL,
    priority_rank bigint NOT NULL,
    rules text NOT NULL,
    tags text NOT NULL,
    events bigint NOT NULL,
    matches bigint NOT NULL,
    first_ns bigint,
    last_ns bigint,
    username text,
    namespace text,
    resource text,
    name text,
    source_ip text,
    output text NOT NULL,
    audit_ids text NOT NULL,
    lead_event bigint,
    open boolean NOT NULL,
    detail text NOT NULL
);
CREATE INDEX findings_last ON findings (last_ns);
CREATE INDEX findings_first ON findings (first_ns);
CREATE INDEX findings_user ON findings (username) WHERE username IS NOT NULL;
CREATE INDEX findings_namespace ON findings (namespace) WHERE namespace IS NOT NULL;
CREATE INDEX findings_closed ON findings (last_ns) WHERE NOT open;
CREATE TABLE finding_rules (rule text NOT NULL, finding_id bigint NOT NULL, PRIMARY KEY (rule, finding_id));
CREATE INDEX finding_rules_finding ON finding_rules (finding_id);

CREATE TABLE alerts (
    id bigint PRIMARY KEY,
    time_ns bigint,
    rule text NOT NULL,
    priority text NOT NULL,
    source text,
    hostname text,
    namespace text,
    pod text,
    container_id text,
    output text NOT NULL,
    hash bytea NOT NULL UNIQUE,
    raw_len bigint NOT NULL,
    raw bytea NOT NULL
);
CREATE SEQUENCE alerts_id OWNED BY alerts.id;
CREATE INDEX alerts_time ON alerts (time_ns);
CREATE INDEX alerts_pod ON alerts (namespace, pod);
CREATE INDEX alerts_pod_name ON alerts (pod) WHERE pod IS NOT NULL;
CREATE INDEX alerts_rule ON alerts (rule);

CREATE TABLE cursors (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE file_offsets (
    path text PRIMARY KEY,
    dev bigint NOT NULL,
    ino bigint NOT NULL,
    byte_offset bigint NOT NULL,
    line bigint NOT NULL
);
CREATE TABLE dicts (id bigint PRIMARY KEY, created_ns bigint NOT NULL, dict bytea NOT NULL);
CREATE TABLE totals (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO totals (name, value) VALUES
    ('events', 0), ('alerts', 0), ('findings', 0), ('matches', 0), ('event_text_bytes', 0);

CREATE TABLE incidents (
    id bigint PRIMARY KEY,
    key text NOT NULL,
    title text NOT NULL,
    severity text NOT NULL,
    severity_rank bigint NOT NULL,
    status text NOT NULL,
    assignee text,
    identity text,
    namespace text,
    cluster text,
    first_ns bigint,
    last_ns bigint,
    updated_ns bigint NOT NULL,
    state text NOT NULL
);
CREATE INDEX incidents_last ON incidents (last_ns);
CREATE INDEX incidents_unresolved ON incidents (last_ns) WHERE status != 'resolved';
CREATE INDEX incidents_identity ON incidents (identity) WHERE identity IS NOT NULL;
CREATE TABLE incident_findings (finding_id bigint PRIMARY KEY, incident_id bigint NOT NULL);
CREATE INDEX incident_findings_incident ON incident_findings (incident_id);
CREATE TABLE incident_notes (
    id bigint PRIMARY KEY,
    incident_id bigint NOT NULL,
    time_ns bigint NOT NULL,
    author text NOT NULL,
    text text NOT NULL
);
CREATE INDEX incident_notes_incident ON incident_notes (incident_id);
CREATE TABLE outbox (
    id bigint PRIMARY KEY,
    sink text NOT NULL,
    incident_id bigint,
    action text NOT NULL,
    payload text NOT NULL,
    state text NOT NULL,
    attempts bigint NOT NULL DEFAULT 0,
    created_ns bigint NOT NULL,
    next_ns bigint NOT NULL,
    done_ns bigint,
    last_error text
);
CREATE INDEX outbox_due ON outbox (sink, next_ns) WHERE state = 'pending';
CREATE INDEX outbox_state ON outbox (state);
CREATE INDEX outbox_incident ON outbox (incident_id);
CREATE TABLE outbox_attempts (
    outbox_id bigint NOT NULL,
    n bigint NOT NULL,
    time_ns bigint NOT NULL,
    duration_us bigint NOT NULL,
    error text,
    PRIMARY KEY (outbox_id, n)
);
CREATE TABLE actions (
    id bigint PRIMARY KEY,
    incident_id bigint,
    playbook text NOT NULL,
    action text NOT NULL,
    target text,
    state text NOT NULL,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL,
    detail text NOT NULL
);
CREATE INDEX actions_incident ON actions (incident_id);

CREATE TABLE ip_intervals (
    ip text NOT NULL,
    uid text NOT NULL,
    first_ns bigint NOT NULL,
    last_ns bigint NOT NULL,
    ended_ns bigint,
    namespace text NOT NULL,
    name text NOT NULL,
    facts text NOT NULL,
    PRIMARY KEY (ip, uid)
);
CREATE INDEX ip_intervals_pod ON ip_intervals (namespace, name);
CREATE INDEX ip_intervals_last ON ip_intervals (last_ns);
CREATE INDEX ip_intervals_open ON ip_intervals (first_ns) WHERE ended_ns IS NULL;
CREATE TABLE state (name text PRIMARY KEY, value bytea NOT NULL);

CREATE TABLE event_minutes_ns (minute bigint NOT NULL, namespace text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (minute, namespace));
CREATE TABLE event_minutes_user (minute bigint NOT NULL, username text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (minute, username));
";

/// Version 2: clusters, bounded keys, a size that shrinks with deletions.
///
/// - `cluster` on events (in the de-duplication key: clusters never shadow each other's
///   events) and findings, indexed with incidents' for the cluster filters.
/// - Events without a time, or outside the window of days that get partitions (see
///   `time_key_of`), go to the range partition `events_other` (`MINVALUE` to 0) instead of a
///   DEFAULT partition: a DEFAULT partition must be scanned whenever a day's partition is
///   created, and a row left in it for a day blocks that day's partition forever.
/// - `stored_bytes` in `totals`: the bytes of stored bodies plus an estimate of each row's
///   index and tuple overhead, kept by every append and removal. Retention by size bounds it:
///   PostgreSQL's files do not shrink when rows are deleted, so their size cannot tell a
///   retention pass when to stop.
const V2: &str = "
ALTER TABLE events ADD COLUMN cluster text;
ALTER TABLE findings ADD COLUMN cluster text;
DROP INDEX events_dedup;
CREATE UNIQUE INDEX events_dedup ON events (time_key, audit_id, coalesce(stage, ''), coalesce(cluster, ''))
    WHERE audit_id IS NOT NULL;
CREATE INDEX events_cluster ON events (cluster, id) WHERE cluster IS NOT NULL;
CREATE INDEX findings_cluster ON findings (cluster) WHERE cluster IS NOT NULL;
CREATE INDEX incidents_cluster ON incidents (cluster) WHERE cluster IS NOT NULL;
ALTER TABLE events DETACH PARTITION events_untimed;
ALTER TABLE events_untimed RENAME TO events_other;
UPDATE events_other SET time_key = -1 WHERE time_key >= 0;
ALTER TABLE events ATTACH PARTITION events_other FOR VALUES FROM (MINVALUE) TO (0);
INSERT INTO totals (name, value)
    SELECT 'stored_bytes', coalesce(sum(octet_length(body)), 0) + count(*) * 300 FROM events;
";

/// Version 3: the cluster of runtime alerts (part of their de-duplication hash when set).
const V3: &str = "
ALTER TABLE alerts ADD COLUMN cluster text;
CREATE INDEX alerts_cluster ON alerts (cluster) WHERE cluster IS NOT NULL;
";

/// Version 4: several writers (detectors on a bus) sharing one database.
///
/// - `id_blocks`: the last block of finding and incident ids handed out. A shared writer takes
///   a block of [`ID_BLOCK`] ids at a time (`UPDATE … RETURNING`: the row lock orders
///   concurrent takers), never below the highest stored id, so writers never number two
///   findings alike.
/// - `bus_members` and `bus_leases`: which detector evaluates which bus partition. A member
///   renews its row and its leases every few seconds; a lease whose time ran out goes to
///   another member, with its `epoch` raised; each member takes a fair share.
const V4: &str = "
CREATE TABLE id_blocks (name text PRIMARY KEY, block bigint NOT NULL);
CREATE TABLE bus_members (owner text PRIMARY KEY, expires timestamptz NOT NULL);
CREATE TABLE bus_leases (part integer PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL,
    expires timestamptz NOT NULL);
";

/// Version 5: the open findings by id, for a detector taking partitions over (it pages through
/// every open finding, not the newest few thousand findings).
const V5: &str = "
CREATE INDEX findings_open ON findings (id) WHERE open;
";

/// Version 6: bad records (as SQLite's version 7) and leases on named sources: which process
/// reads a cloud source (`eks:…`) when several share the database. A lease unrenewed for its
/// time goes to another process, with its `epoch` raised.
const V6: &str = "
CREATE TABLE bad_records (
    id bigserial PRIMARY KEY,
    received_ns bigint NOT NULL,
    source text NOT NULL,
    locator text NOT NULL,
    reason text NOT NULL,
    raw_len bigint NOT NULL,
    raw bytea NOT NULL,
    audit_id text,
    cluster text
);
CREATE UNIQUE INDEX bad_records_key ON bad_records (source, locator);
CREATE INDEX bad_records_time ON bad_records (received_ns);
CREATE TABLE source_leases (name text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL,
    expires timestamptz NOT NULL);
";

/// Ids in one block of [`V4`]'s `id_blocks`.
pub(crate) const ID_BLOCK: i64 = 100_000;

/// Bytes of row and index overhead counted per stored event in `stored_bytes` (thirteen index
/// entries and a tuple header, measured to within a few tens of bytes on ~1 KB events).
pub(crate) const ROW_OVERHEAD: i64 = 300;

/// The migration steps, oldest first: step `i` brings the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6];

/// The schema version this build writes (the number of migration steps).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Created before any step: where the version is kept.
pub(crate) const META: &str = "CREATE TABLE IF NOT EXISTS kustody_meta (name text PRIMARY KEY, value bigint NOT NULL)";

/// The advisory lock key migrations run under ("kustody" in ASCII).
pub(crate) const MIGRATION_LOCK: i64 = 0x006b_7573_746f_6479;

/// The session-level advisory lock the writer holds while connected: one writer per database.
pub(crate) const WRITER_LOCK: i64 = MIGRATION_LOCK + 1;

/// One UTC day in nanoseconds: the events' partition width.
pub(crate) const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// `time_key` of an event without a time.
pub(crate) const UNTIMED: i64 = i64::MIN;
/// `time_key` of an event whose time is before the partitioned window.
pub(crate) const TOO_OLD: i64 = -1;
/// `time_key` of an event whose time is after the partitioned window.
pub(crate) const TOO_NEW: i64 = -2;
/// Days before today that still get partitions (older times go to `events_other`).
pub(crate) const PAST_DAYS: i64 = 400;
/// Days after today that get partitions (a clock running ahead; later times go to
/// `events_other`): so nobody can make a partition per day of the next millennium.
pub(crate) const FUTURE_DAYS: i64 = 2;

/// The partition key of an event time, `today` being the writer's day (days since the epoch):
/// the time itself within the window of partitioned days, else a marker of `events_other`.
/// (A redelivery of an event whose time leaves the window between the two deliveries is
/// stored twice: an event more than 400 days old or days in the future.)
pub(crate) fn time_key_of(time_ns: Option<i64>, today: i64) -> i64 {
    match time_ns {
        None => UNTIMED,
        Some(t) if t < 0 || t / DAY_NS < today - PAST_DAYS => TOO_OLD,
        Some(t) if t / DAY_NS > today + FUTURE_DAYS => TOO_NEW,
        Some(t) => t,
    }
}

/// The day partition of a partition key, `None` for `events_other`.
pub(crate) fn day_of_key(key: i64) -> Option<i64> {
    (key >= 0).then_some(key / DAY_NS)
}

/// The name of the partition holding day `day`.
pub(crate) fn partition(day: i64) -> String {
    format!("events_d{day}")
}
