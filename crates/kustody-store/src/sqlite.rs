//! The embedded backend: SQLite in WAL mode.
//!
//! One file, `kustody.db`, in the store's directory (with SQLite's `-wal` and `-shm` beside
//! it). The writer ([`SqliteStore::open`]) commits with `synchronous=FULL`: the WAL is fsync'd
//! before a commit returns. Readers ([`SqliteStore::open_read_only`]) run beside it and see
//! every committed transaction.
//!
//! Space: `auto_vacuum=INCREMENTAL` is set when the database is created; [`Store::retain`]
//! returns the pages it freed to the file system (`PRAGMA incremental_vacuum`) after it
//! deleted rows. Pages freed otherwise stay on SQLite's free list and are reused by later
//! appends. The WAL is checkpointed automatically every [`WAL_AUTOCHECKPOINT`] pages and
//! truncated to [`JOURNAL_SIZE_LIMIT`] afterwards.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kustody_model::Priority;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::{
    ActionQuery, ActionRow, AlertQuery, AlertRow, Appended, Attempt, AttemptRow, Batch, BatchIds, Count, CountQuery,
    EventQuery, EventRow, FileOffset, FindingQuery, FindingRow, IncidentQuery, IncidentRow, MatchRow, NoteRow, Origin,
    OutboxQuery, OutboxRow, Retained, Store, StoreError, StoreStats, StoredAlert, StoredEvent,
};

mod bad;
pub(crate) mod codec;
pub(crate) mod counts;
pub(crate) mod error;
mod intervals;
pub(crate) mod query;
mod response;
mod schema;

use codec::{Decoder, Dict, Encoder};
use error::{Fail, Res};
pub use query::{DEFAULT_LIMIT, MAX_LIMIT};
pub use schema::SCHEMA_VERSION;

/// The database file's name in the store's directory.
pub const DB_FILE: &str = "kustody.db";

/// Page size of a new database: 4 KiB, SQLite's default. Larger pages make each commit write
/// more (every index touched by a batch writes whole pages to the WAL).
pub const PAGE_SIZE: u32 = 4096;
/// WAL pages between automatic checkpoints (8 MiB of 4 KiB pages, 2× SQLite's default). The
/// checkpoint runs inside the commit that crosses the mark, so its size is the tail of the
/// acknowledgement latency: 16,384 pages (64 MiB) gave ~15 % more throughput at saturation but
/// a p99 batch acknowledgement of 135 ms at 10,000 events/s, 2,000 pages 92 ms
/// (`kustody-gen serve-bench --rate 10000`, BENCHMARKS.md). (A background
/// checkpointing thread was tried: while the writer commits continuously the WAL cannot
/// restart, so it only added work; see the benchmark notes in `examples/store_bench.rs`.)
pub const WAL_AUTOCHECKPOINT: u32 = 2_000;
/// The WAL is truncated to this size after a checkpoint.
pub const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;
/// Page cache per connection (KiB).
const CACHE_KIB: i64 = 64 << 10;
/// Memory-mapped reads of the database file, up to this size.
const MMAP_BYTES: i64 = 1 << 30;
/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Events deleted per transaction by [`Store::retain`].
const RETAIN_BATCH: usize = 10_000;
/// An event's source IPs stored for search, at most (`event_ips` rowids hold 4 bits).
const MAX_IPS: usize = 16;

/// The SQLite store. See the [module documentation](self).
pub struct SqliteStore {
    conn: Connection,
    dir: PathBuf,
    read_only: bool,
    enc: Encoder,
    dec: RefCell<Decoder>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("dir", &self.dir).field("read_only", &self.read_only).finish()
    }
}

/// The numeric rank of a priority: 0 for Emergency … 7 for Debug.
pub fn rank(p: Priority) -> i64 {
    Priority::ALL.iter().position(|q| *q == p).and_then(|i| i64::try_from(i).ok()).unwrap_or(RANK_UNKNOWN)
}

/// The rank of a priority name kustody does not know: below Debug, so a minimum never admits
/// it.
const RANK_UNKNOWN: i64 = 8;

pub(crate) fn rank_of(name: &str) -> i64 {
    name.parse::<Priority>().map_or(RANK_UNKNOWN, rank)
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating it and `dir` if needed) the store in `dir` for writing, and brings its
    /// schema up to date.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooNew`] when a newer kustody wrote it; [`StoreError::Open`] when `dir`
    /// cannot be created or does not hold a usable database.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: dir.display().to_string(), reason };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(dir.join(DB_FILE), flags).map_err(|e| open_err(e.to_string()))?;
        let mut store = SqliteStore::new(conn, dir, false)?;
        store.setup_writer().map_err(|f| match f.into_store(dir) {
            e @ (StoreError::TooNew { .. } | StoreError::Full(_) | StoreError::Busy(_)) => e,
            e => open_err(e.to_string()),
        })?;
        Ok(store)
    }

    fn new(conn: Connection, dir: &Path, read_only: bool) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            conn,
            dir: dir.to_owned(),
            read_only,
            enc: Encoder::new().map_err(|f| f.into_store(dir))?,
            dec: RefCell::default(),
        })
    }

    /// Opens an existing store for reading only (searches, statistics); works while a writer
    /// has it open. Write calls fail.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when there is no store in `dir` or its schema is older than this
    /// build's (open it for writing once to upgrade it); [`StoreError::TooNew`].
    pub fn open_read_only(dir: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: dir.display().to_string(), reason };
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(open_err(format!("{} does not exist", path.display())));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| open_err(e.to_string()))?;
        let store = SqliteStore::new(conn, dir, true)?;
        store.setup_reader().map_err(|f| match f.into_store(dir) {
            e @ (StoreError::TooNew { .. } | StoreError::Busy(_)) => e,
            e => open_err(e.to_string()),
        })?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The schema version of the database (`PRAGMA user_version`).
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| self.fail(e.into()))
    }

    /// Bytes of the database's pages in use (what [`Store::retain`]'s `max_bytes` bounds):
    /// `(page_count - freelist_count) * page_size`.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        self.used_bytes_().map_err(|f| self.fail(f))
    }

    fn fail(&self, f: Fail) -> StoreError {
        f.into_store(&self.dir)
    }

    fn tuning(&self) -> Res<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        self.conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        self.conn.pragma_update(None, "temp_store", "MEMORY")?;
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    fn check_version(&self) -> Res<i64> {
        let found: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION }.into());
        }
        Ok(found)
    }

    fn setup_writer(&mut self) -> Res<()> {
        self.tuning()?;
        let version = self.check_version()?;
        let objects: i64 = self.conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if version == 0 && objects > 0 {
            return Err(Fail::other(
                "the database is not a kustody store (it has tables but no kustody schema version)",
            ));
        }
        if objects == 0 {
            // Only a database without tables takes these.
            self.conn.pragma_update(None, "page_size", PAGE_SIZE)?;
            self.conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        let mode: String = self.conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::other(format!("cannot use WAL mode (journal mode is {mode})")));
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        self.conn.pragma_update(None, "journal_size_limit", i64_of(JOURNAL_SIZE_LIMIT))?;
        self.migrate()?;
        // Fresh statistics for the query planner where they are stale (cheap: bounded work).
        // Best effort: it writes, and a store on a full disk must still open.
        let _ = self.conn.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002;");
        // Compress with the newest dictionary.
        let newest: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT dict FROM dicts ORDER BY created_ns DESC, id DESC LIMIT 1", [], |r| r.get(0))
            .optional()?;
        if let Some(d) = newest.and_then(Dict::new) {
            // Best effort: without it texts are compressed plainly (or a new one is trained).
            let _ = self.enc.use_dict(&d);
        }
        Ok(())
    }

    fn setup_reader(&self) -> Res<()> {
        self.tuning()?;
        self.conn.pragma_update(None, "query_only", true)?;
        let version = self.check_version()?;
        if version < SCHEMA_VERSION {
            return Err(Fail::other(format!(
                "its schema version {version} is older than this kustody's ({SCHEMA_VERSION}): open it for writing \
                 (kustody serve) once to upgrade it"
            )));
        }
        Ok(())
    }

    /// Applies the missing migration steps in one transaction.
    fn migrate(&mut self) -> Res<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION }.into());
        }
        let done = usize::try_from(found).map_err(|_| Fail::other(format!("invalid schema version {found}")))?;
        if done == schema::MIGRATIONS.len() {
            return Ok(());
        }
        for step in schema::MIGRATIONS.iter().skip(done) {
            tx.execute_batch(step)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    fn writable(&self) -> Res<()> {
        if self.read_only {
            return Err(Fail::other("the store was opened read-only"));
        }
        Ok(())
    }

    fn write_tx(&mut self) -> Res<Transaction<'_>> {
        self.writable()?;
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Stores a dictionary trained in the background, and compresses with it from now on.
    fn install_trained_dict(&mut self) {
        if let Some(d) = self.enc.poll_training() {
            match self.store_dict(&d).and_then(|()| self.enc.use_dict(&d)) {
                Ok(()) => {}
                Err(_) => self.enc.training_failed(),
            }
        }
    }

    /// Stores `d` (durably: before any frame needs it).
    fn store_dict(&self, d: &Dict) -> Res<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX));
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO dicts (id, created_ns, dict) VALUES (?1, ?2, ?3)",
            params![d.id, now, d.bytes],
        )?;
        if n == 0 {
            // The same ID again: usable only if it is the same dictionary.
            let stored: Vec<u8> = self.conn.query_row("SELECT dict FROM dicts WHERE id = ?1", [d.id], |r| r.get(0))?;
            if stored != d.bytes {
                return Err(Fail::other(format!("zstd dictionary ID {} is taken", d.id)));
            }
        }
        Ok(())
    }

    /// Trains a zstd dictionary on the newest stored events (up to 4,000) now, stores it and
    /// compresses with it from now on; returns its ID, or `None` when zstd could not make one
    /// (too few events). The writer also does this by itself, in the background, after its
    /// first 4,000 events and every 2 million events.
    ///
    /// # Errors
    ///
    /// When the store is read-only or cannot be read or written.
    pub fn train_dictionary(&mut self) -> Result<Option<u32>, StoreError> {
        let train = || -> Res<Option<u32>> {
            self.writable()?;
            let sql = format!("SELECT {} FROM events e ORDER BY e.id DESC LIMIT ?1", query::EVENT_COLUMNS);
            let limit = i64::try_from(codec::TRAIN_SAMPLES).unwrap_or(i64::MAX);
            let samples: Vec<String> = self.read_rows(&sql, [limit], read_event)?.into_iter().map(|e| e.raw).collect();
            let Some(d) = codec::train(&samples).and_then(Dict::new) else { return Ok(None) };
            self.store_dict(&d)?;
            Ok(Some(d.id))
        };
        let id = train().map_err(|f| self.fail(f))?;
        let dict_id = match id {
            Some(id) => {
                let bytes: Vec<u8> = self
                    .conn
                    .query_row("SELECT dict FROM dicts WHERE id = ?1", [id], |r| r.get(0))
                    .map_err(|e| self.fail(e.into()))?;
                let d = Dict::new(bytes).ok_or_else(|| StoreError::Other("stored dictionary is unusable".into()))?;
                self.enc.use_dict(&d).map_err(|f| self.fail(f))?;
                Some(d.id)
            }
            None => None,
        };
        Ok(dict_id)
    }

    /// The ID of the zstd dictionary new texts are compressed with, if any.
    pub fn dictionary(&self) -> Option<u32> {
        self.enc.dict_id()
    }

    /// Whether the writer trains dictionaries by itself (on by default).
    pub fn set_auto_dictionary(&mut self, on: bool) {
        self.enc.auto_train = on;
    }

    fn append_events_(&mut self, events: &[EventRow<'_>], origin: Origin) -> Res<Appended> {
        self.writable()?;
        self.install_trained_dict();
        let bit = origin.bit();
        let mut out = Appended { ids: Vec::with_capacity(events.len()), stored: 0, duplicates: 0 };
        let mut text_bytes: i64 = 0;
        let mut minutes = counts::Minutes::default();
        let SqliteStore { conn, enc, .. } = self;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (time_ns, audit_id, stage, username, service_account, pod, namespace, \
                 resource, subresource, name, verb, code, user_agent, origins, text_len, body, src_pod, cluster) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            let mut dup = tx.prepare_cached(
                "UPDATE events SET origins = origins | ?1 WHERE ifnull(time_ns, 0) = ifnull(?4, 0) \
                 AND audit_id = ?2 AND ifnull(stage, '') = ifnull(?3, '') AND ifnull(cluster, '') = ifnull(?5, '') \
                 AND origins & ?1 = 0",
            )?;
            let mut ip = tx.prepare_cached("INSERT OR IGNORE INTO event_ips (id, ip) VALUES (?1, ?2)")?;
            for ev in events {
                let len = i64::try_from(ev.raw.len()).unwrap_or(i64::MAX);
                let body = enc.encode(&ev.raw);
                let n = insert.execute(params![
                    ev.time_ns,
                    ev.audit_id.as_deref(),
                    ev.stage.as_deref(),
                    ev.user.as_deref(),
                    ev.service_account.as_deref(),
                    ev.pod.as_deref(),
                    ev.namespace.as_deref(),
                    ev.resource.as_deref(),
                    ev.subresource.as_deref(),
                    ev.name.as_deref(),
                    ev.verb.as_deref(),
                    ev.code,
                    ev.user_agent.as_deref(),
                    bit,
                    len,
                    body,
                    ev.source_pod.as_deref(),
                    ev.cluster.as_deref(),
                ])?;
                if n == 0 {
                    dup.execute(params![
                        bit,
                        ev.audit_id.as_deref(),
                        ev.stage.as_deref(),
                        ev.time_ns,
                        ev.cluster.as_deref()
                    ])?;
                    out.ids.push(None);
                    out.duplicates += 1;
                    continue;
                }
                let id = tx.last_insert_rowid();
                let mut seen: Vec<&str> = Vec::with_capacity(ev.source_ips.len().min(MAX_IPS));
                for addr in &ev.source_ips {
                    if seen.len() == MAX_IPS {
                        break;
                    }
                    if addr.is_empty() || seen.contains(&addr.as_ref()) {
                        continue;
                    }
                    let k = i64::try_from(seen.len()).unwrap_or(0);
                    ip.execute(params![id.saturating_mul(16).saturating_add(k), addr.as_ref()])?;
                    seen.push(addr);
                }
                out.ids.push(Some(id));
                out.stored += 1;
                text_bytes = text_bytes.saturating_add(len);
                if let Some(t) = ev.time_ns {
                    minutes.add(t, ev.namespace.as_deref().unwrap_or(""), ev.user.as_deref().unwrap_or(""), 1);
                }
            }
        }
        minutes.write(&tx)?;
        add_totals(&tx, &[("events", i64_of(out.stored)), ("event_text_bytes", text_bytes)])?;
        tx.commit()?;
        Ok(out)
    }

    fn append_alerts_(&mut self, alerts: &[AlertRow]) -> Res<Appended> {
        self.writable()?;
        self.install_trained_dict();
        let mut out = Appended { ids: Vec::with_capacity(alerts.len()), stored: 0, duplicates: 0 };
        let SqliteStore { conn, enc, .. } = self;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts (time_ns, rule, priority, source, hostname, namespace, pod, container_id, \
                 output, hash, raw_len, raw, cluster) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for a in alerts {
                let hash = alert_hash(a);
                let len = i64::try_from(a.raw.len()).unwrap_or(i64::MAX);
                let body = enc.encode(&a.raw);
                let n = insert.execute(params![
                    a.time_ns,
                    a.rule,
                    a.priority,
                    a.source,
                    a.hostname,
                    a.namespace,
                    a.pod,
                    a.container_id,
                    a.output,
                    &hash[..],
                    len,
                    body,
                    a.cluster,
                ])?;
                if n == 0 {
                    out.ids.push(None);
                    out.duplicates += 1;
                } else {
                    out.ids.push(Some(tx.last_insert_rowid()));
                    out.stored += 1;
                }
            }
        }
        add_totals(&tx, &[("alerts", i64_of(out.stored))])?;
        tx.commit()?;
        Ok(out)
    }

    fn commit_(&mut self, b: &Batch<'_>) -> Res<BatchIds> {
        if b.lease.is_some() {
            return Err(Fail::Store(StoreError::Other("SQLite has a single writer: it keeps no bus leases".into())));
        }
        let (findings, matches, cursor) = (b.findings, b.matches, b.cursor);
        let tx = self.write_tx()?;
        let mut ids = Vec::with_capacity(findings.len());
        let mut new_findings: i64 = 0;
        let mut new_matches: i64 = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO findings (id, rule, priority, priority_rank, rules, tags, events, matches, first_ns, \
                 last_ns, username, namespace, resource, name, source_ip, output, audit_ids, lead_event, open, detail, \
                 cluster) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
                 ?20, ?21)",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE findings SET rule = ?2, priority = ?3, priority_rank = ?4, rules = ?5, tags = ?6, events = ?7, \
                 matches = ?8, first_ns = ?9, last_ns = ?10, username = ?11, namespace = ?12, resource = ?13, \
                 name = ?14, source_ip = ?15, output = ?16, audit_ids = ?17, lead_event = ?18, open = ?19, \
                 detail = ?20, cluster = ?21 WHERE id = ?1",
            )?;
            let mut clear_rules = tx.prepare_cached("DELETE FROM finding_rules WHERE finding_id = ?1")?;
            let mut add_rule =
                tx.prepare_cached("INSERT OR IGNORE INTO finding_rules (rule, finding_id) VALUES (?1, ?2)")?;
            for f in findings {
                let json = |v: &Vec<String>| serde_json::to_string(v).map_err(|e| Fail::other(format!("json: {e}")));
                let (rules, tags, audit_ids) = (json(&f.rules)?, json(&f.tags)?, json(&f.audit_ids)?);
                let p = params![
                    f.id,
                    f.rule,
                    f.priority,
                    rank_of(&f.priority),
                    rules,
                    tags,
                    i64_of(f.events),
                    i64_of(f.matches),
                    f.first_ns,
                    f.last_ns,
                    f.user,
                    f.namespace,
                    f.resource,
                    f.name,
                    f.source_ip,
                    f.output,
                    audit_ids,
                    f.lead_event,
                    f.open,
                    f.detail,
                    f.cluster,
                ];
                // An update of a finding no longer stored (removed by retention) stores it
                // again under its id.
                let id = match f.id {
                    Some(id) if update.execute(p)? == 1 => {
                        clear_rules.execute([id])?;
                        id
                    }
                    _ => {
                        insert.execute(p)?;
                        new_findings += 1;
                        tx.last_insert_rowid()
                    }
                };
                for rule in std::iter::once(&f.rule).chain(&f.rules) {
                    add_rule.execute(params![rule, id])?;
                }
                ids.push(id);
            }
            let mut insert_match = tx.prepare_cached(
                "INSERT OR IGNORE INTO matches (event_id, rule, priority, finding_id) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut update_match = tx.prepare_cached(
                "UPDATE matches SET priority = ?3, finding_id = coalesce(?4, finding_id) \
                 WHERE event_id = ?1 AND rule = ?2",
            )?;
            for (m, new) in matches {
                let finding = m.finding_id.or_else(|| new.and_then(|i| ids.get(i).copied()));
                let p = params![m.event_id, m.rule, m.priority, finding];
                if insert_match.execute(p)? == 1 {
                    new_matches += 1;
                } else {
                    update_match.execute(p)?;
                }
            }
        }
        add_totals(&tx, &[("findings", new_findings), ("matches", new_matches)])?;
        if let Some((name, value)) = cursor {
            tx.prepare_cached(
                "INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2",
            )?
            .execute(params![name, value])?;
        }
        let incidents = response::write_incidents(&tx, b.incidents, &ids)?;
        let notes = response::write_notes(&tx, b.notes)?;
        let outbox = response::write_outbox(&tx, b.outbox, &incidents)?;
        let actions = response::write_actions(&tx, b.actions)?;
        tx.commit()?;
        Ok(BatchIds { findings: ids, incidents, notes, outbox, actions })
    }

    fn events_after_(&self, after: i64, limit: usize) -> Res<Vec<StoredEvent>> {
        let sql = format!("SELECT {} FROM events e WHERE e.id > ?1 ORDER BY e.id LIMIT ?2", query::EVENT_COLUMNS);
        self.read_rows(&sql, params![after, query::limit(limit)], read_event)
    }

    fn search_events_(&self, q: &EventQuery) -> Res<Vec<StoredEvent>> {
        let sql = match query::events(q) {
            query::EventSearch::Direct(sql) => {
                return self.read_rows(&sql.text, rusqlite::params_from_iter(sql.args.iter()), read_event)
            }
            query::EventSearch::Buckets(sql) => sql,
        };
        // Bucket by bucket, newest first, from the one holding the newest wanted id.
        let (lo, hi): (Option<i64>, Option<i64>) = self.conn.query_row(
            // Two subqueries: each is one seek (min and max in one SELECT scan the table).
            "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (Some(lo), Some(mut hi)) = (lo, hi) else { return Ok(Vec::new()) };
        if let Some(b) = q.before_id {
            hi = hi.min(b.saturating_sub(1));
        }
        let limit = query::limit(q.limit);
        if hi < lo {
            return Ok(Vec::new());
        }
        // One statement, bound once; per bucket only the bucket and the rows still wanted
        // change (a bucket costs one index seek when it has none).
        let last = sql.args.len();
        self.with_texts(|texts| {
            let mut st = self.conn.prepare_cached(&sql.text)?;
            for (i, v) in sql.args.iter().enumerate() {
                st.raw_bind_parameter(i + 1, v)?;
            }
            let mut out: Vec<StoredEvent> = Vec::new();
            for bucket in ((lo >> query::BUCKET_SHIFT)..=(hi >> query::BUCKET_SHIFT)).rev() {
                let wanted = limit.saturating_sub(i64::try_from(out.len()).unwrap_or(i64::MAX));
                if wanted <= 0 {
                    break;
                }
                st.raw_bind_parameter(1, bucket)?;
                st.raw_bind_parameter(last, wanted)?;
                let mut rows = st.raw_query();
                while let Some(r) = rows.next()? {
                    out.push(read_event(r, texts)?);
                }
            }
            Ok(out)
        })
    }

    fn search_findings_(&self, q: &FindingQuery) -> Res<Vec<FindingRow>> {
        let sql = query::findings(q);
        self.read_rows(&sql.text, rusqlite::params_from_iter(sql.args.iter()), |r, _| read_finding(r))
    }

    fn search_alerts_(&self, q: &AlertQuery) -> Res<Vec<StoredAlert>> {
        let sql = query::alerts(q);
        self.read_rows(&sql.text, rusqlite::params_from_iter(sql.args.iter()), read_alert)
    }

    /// The rows of a query, each read by `read` (with the store's decoder, which loads the
    /// dictionaries it needs).
    fn read_rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        p: P,
        read: impl Fn(&Row<'_>, &mut Texts<'_>) -> Res<T>,
    ) -> Res<Vec<T>> {
        self.with_texts(|texts| {
            let mut st = self.conn.prepare_cached(sql)?;
            let mut rows = st.query(p)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read(r, texts)?);
            }
            Ok(out)
        })
    }

    /// Runs `f` with the store's decoder (which loads the dictionaries it needs).
    fn with_texts<T>(&self, f: impl FnOnce(&mut Texts<'_>) -> Res<T>) -> Res<T> {
        let mut load = |id: u32| -> Res<Option<Vec<u8>>> {
            let mut st = self.conn.prepare_cached("SELECT dict FROM dicts WHERE id = ?1")?;
            Ok(st.query_row([id], |r| r.get(0)).optional()?)
        };
        let mut own = None;
        let mut shared = self.dec.try_borrow_mut().ok();
        let dec = match shared.as_deref_mut() {
            Some(d) => d,
            None => own.insert(Decoder::default()),
        };
        f(&mut Texts { dec, load: &mut load })
    }

    fn count_only_from_(&self, only: Origin, missing: Origin, before_ns: i64) -> Res<u64> {
        // Origins take 3 bits: count each qualifying value. All but 1 and 3 (webhook alone,
        // webhook and file) are in `events_lone_origins` (origins, time_ns): a range each.
        // Counting those two reads the time index up to `before_ns`.
        let mut lone = self.conn.prepare_cached(
            "SELECT count(*) FROM events WHERE origins = ?1 AND time_ns < ?2 AND origins NOT IN (1, 3)",
        )?;
        let mut bulk = self.conn.prepare_cached("SELECT count(*) FROM events WHERE origins = ?1 AND time_ns < ?2")?;
        let mut total: u64 = 0;
        for v in 1..8_i64 {
            if v & only.bit() != 0 && v & missing.bit() == 0 {
                let st = if v == 1 || v == 3 { &mut bulk } else { &mut lone };
                let n: i64 = st.query_row(params![v, before_ns], |r| r.get(0))?;
                total = total.saturating_add(u64_of(n));
            }
        }
        Ok(total)
    }

    /// `(page_count - freelist_count) * page_size`.
    fn used_bytes_(&self) -> Res<u64> {
        let q = |p: &str| -> Res<i64> { Ok(self.conn.pragma_query_value(None, p, |r| r.get(0))?) };
        let used = q("page_count")?.saturating_sub(q("freelist_count")?).saturating_mul(q("page_size")?);
        Ok(u64_of(used))
    }

    fn retain_(&mut self, now_ns: i64, max_age_ns: Option<i64>, max_bytes: Option<u64>) -> Res<Retained> {
        self.writable()?;
        let mut out = Retained::default();
        if let Some(age) = max_age_ns {
            let cutoff = now_ns.saturating_sub(age);
            loop {
                let n = self.delete_events(Some(cutoff), RETAIN_BATCH)?;
                out.events_removed += n;
                if n == 0 {
                    break;
                }
            }
            let tx = self.write_tx()?;
            let alerts = tx.execute("DELETE FROM alerts WHERE time_ns < ?1", [cutoff])?;
            tx.execute("DELETE FROM bad_records WHERE received_ns < ?1", [cutoff])?;
            let findings: Vec<i64> = {
                let mut st = tx.prepare("SELECT id FROM findings WHERE open = 0 AND last_ns < ?1")?;
                let ids = st.query_map([cutoff], |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?;
                ids
            };
            {
                let mut del = tx.prepare_cached("DELETE FROM findings WHERE id = ?1")?;
                let mut del_rules = tx.prepare_cached("DELETE FROM finding_rules WHERE finding_id = ?1")?;
                for id in &findings {
                    del.execute([id])?;
                    del_rules.execute([id])?;
                }
            }
            intervals::retain(&tx, cutoff)?;
            let (alerts, findings) = (u64::try_from(alerts).unwrap_or(0), u64::try_from(findings.len()).unwrap_or(0));
            add_totals(&tx, &[("alerts", -i64_of(alerts)), ("findings", -i64_of(findings))])?;
            tx.commit()?;
            out.alerts_removed += alerts;
            out.findings_removed += findings;
        }
        if let Some(max) = max_bytes {
            loop {
                let used = self.used_bytes_()?;
                if used <= max {
                    break;
                }
                let count = self.total("events")?;
                if count <= 0 {
                    break;
                }
                // As many events as the excess holds at the average size, within bounds: a few
                // passes converge without deleting much more than needed.
                let per_event = (used / u64_of(count)).max(1);
                let want = ((used - max) / per_event).saturating_add(1).clamp(16, RETAIN_BATCH as u64);
                let n = self.delete_events(None, usize::try_from(want).unwrap_or(RETAIN_BATCH))?;
                out.events_removed += n;
                if n == 0 {
                    break;
                }
            }
        }
        if out.events_removed + out.alerts_removed + out.findings_removed > 0 {
            // Return the freed pages to the file system, and refresh the planner's statistics.
            // Best effort: the deletions are committed, and on a full disk these may not be.
            let _ = self.conn.execute_batch("PRAGMA incremental_vacuum; PRAGMA optimize;");
        }
        Ok(out)
    }

    /// Deletes, in one transaction, up to `limit` events with their IPs and matches: the
    /// oldest by time before `cutoff`, or (`None`) the oldest by id. Returns how many.
    fn delete_events(&mut self, cutoff: Option<i64>, limit: usize) -> Res<u64> {
        let tx = self.write_tx()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // (id, text length, time, namespace, user)
        type Victim = (i64, i64, Option<i64>, Option<String>, Option<String>);
        let victims: Vec<Victim> = {
            let row = |r: &Row<'_>| {
                Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0), r.get(2)?, r.get(3)?, r.get(4)?))
            };
            match cutoff {
                Some(t) => tx
                    .prepare_cached(
                        "SELECT id, text_len, time_ns, namespace, username FROM events WHERE time_ns < ?1 \
                         ORDER BY time_ns LIMIT ?2",
                    )?
                    .query_map(params![t, limit], row)?
                    .collect::<Result<_, _>>()?,
                None => tx
                    .prepare_cached(
                        "SELECT id, text_len, time_ns, namespace, username FROM events ORDER BY id LIMIT ?1",
                    )?
                    .query_map(params![limit], row)?
                    .collect::<Result<_, _>>()?,
            }
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let mut text: i64 = 0;
        let mut matches: i64 = 0;
        {
            let mut del = tx.prepare_cached("DELETE FROM events WHERE id = ?1")?;
            let mut del_ips = tx.prepare_cached("DELETE FROM event_ips WHERE id BETWEEN ?1 AND ?2")?;
            let mut del_matches = tx.prepare_cached("DELETE FROM matches WHERE event_id = ?1")?;
            let mut minutes = counts::Minutes::default();
            for (id, len, t, ns, user) in &victims {
                if let Some(t) = t {
                    minutes.add(*t, ns.as_deref().unwrap_or(""), user.as_deref().unwrap_or(""), -1);
                }
                del.execute([id])?;
                let lo = id.saturating_mul(16);
                del_ips.execute([lo, lo.saturating_add(15)])?;
                matches += i64::try_from(del_matches.execute([id])?).unwrap_or(0);
                text = text.saturating_add(*len);
            }
            minutes.write(&tx)?;
        }
        let n = i64::try_from(victims.len()).unwrap_or(i64::MAX);
        add_totals(&tx, &[("events", -n), ("event_text_bytes", -text), ("matches", -matches)])?;
        tx.commit()?;
        Ok(u64_of(n))
    }

    fn total(&self, name: &str) -> Res<i64> {
        let mut st = self.conn.prepare_cached("SELECT value FROM totals WHERE name = ?1")?;
        Ok(st.query_row([name], |r| r.get(0)).optional()?.unwrap_or(0))
    }

    fn stats_(&self) -> Res<StoreStats> {
        let file =
            |suffix: &str| std::fs::metadata(self.dir.join(format!("{DB_FILE}{suffix}"))).map(|m| m.len()).unwrap_or(0);
        Ok(StoreStats {
            events: u64_of(self.total("events")?),
            alerts: u64_of(self.total("alerts")?),
            findings: u64_of(self.total("findings")?),
            matches: u64_of(self.total("matches")?),
            bytes: file("").saturating_add(file("-wal")),
            event_text_bytes: u64_of(self.total("event_text_bytes")?),
        })
    }
}

/// Adds to the named totals, in the caller's transaction.
fn add_totals(tx: &Transaction<'_>, deltas: &[(&str, i64)]) -> Res<()> {
    let mut st = tx.prepare_cached("UPDATE totals SET value = value + ?2 WHERE name = ?1")?;
    for (name, d) in deltas {
        if *d != 0 {
            st.execute(params![name, d])?;
        }
    }
    Ok(())
}

/// An alert's identity for de-duplication: [`content_hash`] of its text, preceded by its
/// cluster when it has one (two clusters' identical alerts are two alerts).
pub(crate) fn alert_hash(a: &AlertRow) -> [u8; 16] {
    match &a.cluster {
        Some(c) => content_hash(&format!("{c}\n{}", a.raw)),
        None => content_hash(&a.raw),
    }
}

/// 128 bits of SHA-256 of an alert's text: its identity for de-duplication.
pub(crate) fn content_hash(raw: &str) -> [u8; 16] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(raw.as_bytes());
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(d.iter()) {
        *o = *b;
    }
    out
}

/// A decoder and how to load a dictionary: what reading stored texts needs.
struct Texts<'a> {
    dec: &'a mut Decoder,
    load: &'a mut dyn FnMut(u32) -> Res<Option<Vec<u8>>>,
}

impl Texts<'_> {
    fn decode(&mut self, v: ValueRef<'_>, len: i64) -> Res<String> {
        self.dec.decode(v, len, self.load)
    }
}

fn read_event(r: &Row<'_>, dec: &mut Texts<'_>) -> Res<StoredEvent> {
    let len: i64 = r.get(5)?;
    let raw = dec.decode(r.get_ref(6)?, len)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        time_ns: r.get(1)?,
        audit_id: r.get(2)?,
        stage: r.get(3)?,
        origins: r.get(4)?,
        raw,
        source_pod: r.get(7)?,
        cluster: r.get(8)?,
    })
}

fn json_list(r: &Row<'_>, i: usize) -> Res<Vec<String>> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s).map_err(|e| Fail::other(format!("stored list: {e}")))
}

fn read_finding(r: &Row<'_>) -> Res<FindingRow> {
    Ok(FindingRow {
        id: Some(r.get(0)?),
        rule: r.get(1)?,
        priority: r.get(2)?,
        rules: json_list(r, 3)?,
        tags: json_list(r, 4)?,
        events: u64_of(r.get(5)?),
        matches: u64_of(r.get(6)?),
        first_ns: r.get(7)?,
        last_ns: r.get(8)?,
        user: r.get(9)?,
        namespace: r.get(10)?,
        resource: r.get(11)?,
        name: r.get(12)?,
        source_ip: r.get(13)?,
        output: r.get(14)?,
        audit_ids: json_list(r, 15)?,
        lead_event: r.get(16)?,
        open: r.get(17)?,
        detail: r.get(18)?,
        cluster: r.get(19)?,
    })
}

fn read_alert(r: &Row<'_>, dec: &mut Texts<'_>) -> Res<StoredAlert> {
    let len: i64 = r.get(10)?;
    let raw = match r.get_ref(11)? {
        v @ (ValueRef::Text(_) | ValueRef::Blob(_)) => dec.decode(v, len)?,
        _ => String::new(),
    };
    Ok(StoredAlert {
        id: r.get(0)?,
        alert: AlertRow {
            time_ns: r.get(1)?,
            rule: r.get(2)?,
            priority: r.get(3)?,
            source: r.get(4)?,
            hostname: r.get(5)?,
            namespace: r.get(6)?,
            pod: r.get(7)?,
            container_id: r.get(8)?,
            output: r.get(9)?,
            raw,
            cluster: r.get(12)?,
        },
    })
}

impl Store for SqliteStore {
    fn append_events(&mut self, events: &[EventRow<'_>], origin: Origin) -> Result<Appended, StoreError> {
        self.append_events_(events, origin).map_err(|f| self.fail(f))
    }

    fn append_alerts(&mut self, alerts: &[AlertRow]) -> Result<Appended, StoreError> {
        self.append_alerts_(alerts).map_err(|f| self.fail(f))
    }

    fn record_detections(&mut self, findings: &[FindingRow], matches: &[MatchRow]) -> Result<Vec<i64>, StoreError> {
        let matches: Vec<(MatchRow, Option<usize>)> = matches.iter().map(|m| (m.clone(), None)).collect();
        let b = Batch { findings, matches: &matches, ..Default::default() };
        self.commit_(&b).map(|ids| ids.findings).map_err(|f| self.fail(f))
    }

    /// One transaction (one fsync) for the whole batch.
    fn commit(&mut self, batch: &Batch<'_>) -> Result<BatchIds, StoreError> {
        self.commit_(batch).map_err(|f| self.fail(f))
    }

    fn next_ids(&self) -> Result<(i64, i64), StoreError> {
        let get = || -> Res<(i64, i64)> {
            Ok(self.conn.query_row(
                "SELECT max((SELECT coalesce(max(id), 0) FROM findings), \
                 (SELECT coalesce(max(finding_id), 0) FROM incident_findings)) + 1, \
                 (SELECT coalesce(max(id), 0) FROM incidents) + 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        };
        get().map_err(|f| self.fail(f))
    }

    fn search_incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError> {
        response::search_incidents(&self.conn, q).map_err(|f| self.fail(f))
    }

    fn incident(&self, id: i64) -> Result<Option<IncidentRow>, StoreError> {
        response::incident(&self.conn, id).map_err(|f| self.fail(f))
    }

    fn incident_findings(&self, id: i64) -> Result<Vec<FindingRow>, StoreError> {
        let get = || -> Res<Vec<FindingRow>> {
            let ids = response::incident_finding_ids(&self.conn, id)?;
            let sql = format!("SELECT {} FROM findings f WHERE f.id = ?1", query::FINDING_COLUMNS);
            let mut out = Vec::with_capacity(ids.len());
            for fid in ids {
                out.extend(self.read_rows(&sql, [fid], |r, _| read_finding(r))?);
            }
            out.sort_by_key(|f| (f.first_ns, f.id));
            Ok(out)
        };
        get().map_err(|f| self.fail(f))
    }

    fn incident_notes(&self, id: i64) -> Result<Vec<NoteRow>, StoreError> {
        response::notes(&self.conn, id).map_err(|f| self.fail(f))
    }

    fn outbox_due(&self, sink: &str, now_ns: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        response::outbox_due(&self.conn, sink, now_ns, limit).map_err(|f| self.fail(f))
    }

    fn outbox_next_due(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        response::outbox_next_due(&self.conn, sink).map_err(|f| self.fail(f))
    }

    fn record_attempts(&mut self, attempts: &[Attempt]) -> Result<(), StoreError> {
        let write = |s: &mut Self| -> Res<()> {
            let tx = s.write_tx()?;
            response::record_attempts(&tx, attempts)?;
            tx.commit()?;
            Ok(())
        };
        write(self).map_err(|f| self.fail(f))
    }

    fn search_actions(&self, q: &ActionQuery) -> Result<Vec<ActionRow>, StoreError> {
        response::search_actions(&self.conn, q).map_err(|f| self.fail(f))
    }

    fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError> {
        response::action(&self.conn, id).map_err(|f| self.fail(f))
    }

    fn transition_action(&mut self, row: &ActionRow, from: &str) -> Result<bool, StoreError> {
        let write = |s: &mut Self| -> Res<bool> {
            let tx = s.write_tx()?;
            let done = response::transition_action(&tx, row, from)?;
            tx.commit()?;
            Ok(done)
        };
        write(self).map_err(|f| self.fail(f))
    }

    fn search_outbox(&self, q: &OutboxQuery) -> Result<Vec<OutboxRow>, StoreError> {
        response::search_outbox(&self.conn, q).map_err(|f| self.fail(f))
    }

    fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>, StoreError> {
        response::outbox_row(&self.conn, id).map_err(|f| self.fail(f))
    }

    fn outbox_attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        response::attempts(&self.conn, outbox_id).map_err(|f| self.fail(f))
    }

    fn retry_outbox(&mut self, ids: &[i64], sink: Option<&str>, now_ns: i64) -> Result<u64, StoreError> {
        let write = |s: &mut Self| -> Res<u64> {
            let tx = s.write_tx()?;
            let n = response::retry(&tx, ids, sink, now_ns)?;
            tx.commit()?;
            Ok(n)
        };
        write(self).map_err(|f| self.fail(f))
    }

    /// At most `min(limit, MAX_LIMIT)` events (`limit` 0: [`DEFAULT_LIMIT`]).
    fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_after_(after, limit).map_err(|f| self.fail(f))
    }

    /// `since_ns` ≤ time < `until_ns`; see [`query`](self) for the indexes each filter uses.
    fn search_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.search_events_(q).map_err(|f| self.fail(f))
    }

    /// Findings last seen at or after `since_ns` and first seen before `until_ns`, ordered by
    /// last seen (newest first) then id. `before_id` keeps ids below it: as the order is not
    /// the id's, it pages reliably only through findings that are no longer updated.
    fn search_findings(&self, q: &FindingQuery) -> Result<Vec<FindingRow>, StoreError> {
        self.search_findings_(q).map_err(|f| self.fail(f))
    }

    fn search_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        self.search_alerts_(q).map_err(|f| self.fail(f))
    }
    fn event_counts(&self, q: &CountQuery) -> Result<Vec<Count>, StoreError> {
        counts::events(&self.conn, q).map_err(|e| self.fail(e))
    }
    fn finding_counts(&self, since_ns: i64, until_ns: i64, bucket_ns: i64) -> Result<Vec<Count>, StoreError> {
        counts::findings(&self.conn, since_ns, until_ns, bucket_ns).map_err(|e| self.fail(e))
    }
    fn rule_finding_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        counts::rules(&self.conn).map_err(|e| self.fail(e))
    }

    fn cursor(&self, name: &str) -> Result<i64, StoreError> {
        let get = || -> Res<i64> {
            let mut st = self.conn.prepare_cached("SELECT value FROM cursors WHERE name = ?1")?;
            Ok(st.query_row([name], |r| r.get(0)).optional()?.unwrap_or(0))
        };
        get().map_err(|f| self.fail(f))
    }

    fn set_cursor(&mut self, name: &str, value: i64) -> Result<(), StoreError> {
        let set = || -> Res<()> {
            self.writable()?;
            self.conn
                .prepare_cached(
                    "INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2",
                )?
                .execute(params![name, value])?;
            Ok(())
        };
        set().map_err(|f| self.fail(f))
    }

    fn file_offset(&self, path: &str) -> Result<Option<FileOffset>, StoreError> {
        let get = || -> Res<Option<FileOffset>> {
            let mut st =
                self.conn.prepare_cached("SELECT dev, ino, byte_offset, line FROM file_offsets WHERE path = ?1")?;
            Ok(st
                .query_row([path], |r| {
                    Ok(FileOffset {
                        path: path.to_owned(),
                        // Stored as the same 64 bits (SQLite integers are signed).
                        dev: r.get::<_, i64>(0)? as u64,
                        ino: r.get::<_, i64>(1)? as u64,
                        offset: r.get::<_, i64>(2)? as u64,
                        line: r.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()?)
        };
        get().map_err(|f| self.fail(f))
    }

    fn set_file_offset(&mut self, off: &FileOffset) -> Result<(), StoreError> {
        let set = || -> Res<()> {
            self.writable()?;
            self.conn
                .prepare_cached(
                    "INSERT INTO file_offsets (path, dev, ino, byte_offset, line) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (path) DO UPDATE SET dev = ?2, ino = ?3, byte_offset = ?4, line = ?5",
                )?
                .execute(params![off.path, off.dev as i64, off.ino as i64, off.offset as i64, off.line as i64])?;
            Ok(())
        };
        set().map_err(|f| self.fail(f))
    }

    fn count_only_from(&self, only: Origin, missing: Origin, before_ns: i64) -> Result<u64, StoreError> {
        self.count_only_from_(only, missing, before_ns).map_err(|f| self.fail(f))
    }

    /// Events with no time are removed only for size, alerts and findings only for age.
    /// `max_bytes` bounds the database's pages in use (the WAL, at most
    /// [`JOURNAL_SIZE_LIMIT`] after a checkpoint, is not counted); the oldest events (lowest
    /// ids) go first.
    fn retain(&mut self, now_ns: i64, max_age_ns: Option<i64>, max_bytes: Option<u64>) -> Result<Retained, StoreError> {
        self.retain_(now_ns, max_age_ns, max_bytes).map_err(|f| self.fail(f))
    }

    /// Exact counts, kept in the `totals` table by every write (no scan); `bytes` are the
    /// sizes of the database file and its WAL.
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.stats_().map_err(|f| self.fail(f))
    }

    fn save_intervals(&mut self, rows: &[crate::Interval]) -> Result<(), StoreError> {
        let r = (|| {
            let tx = self.write_tx()?;
            intervals::save(&tx, rows)?;
            tx.commit()?;
            Ok(())
        })();
        r.map_err(|f| self.fail(f))
    }

    fn ip_intervals(&self, ip: &str) -> Result<Vec<crate::Interval>, StoreError> {
        intervals::of_ip(&self.conn, ip).map_err(|f| self.fail(f))
    }

    fn pod_intervals(&self, namespace: &str, name: &str) -> Result<Vec<crate::Interval>, StoreError> {
        intervals::of_pod(&self.conn, namespace, name).map_err(|f| self.fail(f))
    }

    fn recent_intervals(&self, since_ns: i64, limit: usize) -> Result<Vec<crate::Interval>, StoreError> {
        intervals::recent(&self.conn, since_ns, limit).map_err(|f| self.fail(f))
    }

    fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        intervals::state(&self.conn, name).map_err(|f| self.fail(f))
    }

    fn set_state(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let r = (|| {
            let tx = self.write_tx()?;
            intervals::set_state(&tx, name, value)?;
            tx.commit()?;
            Ok(())
        })();
        r.map_err(|f| self.fail(f))
    }

    fn append_bad_records(&mut self, records: &[crate::BadRecord]) -> Result<u64, StoreError> {
        let r = (|| {
            let tx = self.write_tx()?;
            let n = bad::append(&tx, records)?;
            tx.commit()?;
            Ok(n)
        })();
        r.map_err(|f| self.fail(f))
    }

    fn bad_records(&self, q: &crate::BadRecordQuery) -> Result<Vec<crate::BadRecordRow>, StoreError> {
        bad::list(&self.conn, q).map_err(|f| self.fail(f))
    }
}

#[cfg(test)]
mod tests;
