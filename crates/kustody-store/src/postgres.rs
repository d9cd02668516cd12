//! The PostgreSQL backend (feature `postgres`): the store a fleet shares when one machine's
//! SQLite is outgrown — receivers, detectors, the console and `search` on several machines
//! against one database.
//!
//! The same [`Store`] contract as [`crate::SqliteStore`], proved by the same tests
//! (`tests/store.rs` runs every one against both, on a throwaway PostgreSQL server the tests
//! start). What differs, and why:
//!
//! - **Durability.** Every write is one transaction committed with `synchronous_commit = on`
//!   (set on each connection): PostgreSQL answers the commit only once its WAL record is
//!   flushed. A writer refuses a server running with `fsync = off`, which would make that
//!   promise void.
//! - **Batched writes.** An append is one multi-row `INSERT … SELECT FROM unnest(arrays)` per
//!   table (events, their IPs, the per-minute counts), not a statement per event.
//! - **Time partitions.** Events are partitioned by day (see [`schema`]); retention by age drops
//!   whole days.
//! - **Idempotence.** (time, auditID, stage) is unique: a redelivered event is stored once
//!   (its origin bit is added), whichever receiver delivers it.
//! - **Connection loss** is [`StoreError::Busy`] (transient); the next call reconnects.
//! - **Credentials.** The connection URL (it may hold a password) is kept in a
//!   [`SecretString`] and never printed: messages name host, port and database only. TLS goes
//!   through rustls, verifying the server against the system's roots or a given CA file.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::{Host, SslMode};
use postgres::{Client, NoTls, Row, Transaction};
use secrecy::{ExposeSecret, SecretString};

use crate::sqlite::codec::{self, Decoder, Dict, Encoder};
use crate::sqlite::counts::{self, Minutes, MINUTE_NS};
use crate::sqlite::{i64_of, rank_of, u64_of};
use crate::{
    ActionQuery, ActionRow, AlertQuery, AlertRow, Appended, Attempt, AttemptRow, Batch, BatchIds, Count, CountQuery,
    EventQuery, EventRow, FileOffset, FindingQuery, FindingRow, IncidentQuery, IncidentRow, MatchRow, NoteRow, Origin,
    OutboxQuery, OutboxRow, Retained, Store, StoreError, StoreStats, StoredAlert, StoredEvent,
};

mod bad;
mod error;
mod query;
mod response;
pub mod schema;

use error::{Fail, Res};
use query::{key, opt, opt_key, text};
pub use schema::SCHEMA_VERSION;

/// Events deleted per transaction by [`Store::retain`].
const RETAIN_BATCH: i64 = 10_000;
/// An event's source IPs stored for search, at most (as SQLite).
const MAX_IPS: usize = 16;
/// kustody's tables besides the events' partitions (what `stats().bytes` measures).
const TABLES: &[&str] = &[
    "event_ips",
    "matches",
    "findings",
    "finding_rules",
    "alerts",
    "cursors",
    "file_offsets",
    "dicts",
    "totals",
    "incidents",
    "incident_findings",
    "incident_notes",
    "outbox",
    "outbox_attempts",
    "actions",
    "ip_intervals",
    "state",
    "event_minutes_ns",
    "event_minutes_user",
    "kustody_meta",
];

/// How long a writer waits for another writer's lock before it gives up.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a reader's statement may run before the server cancels it.
const READ_TIMEOUT: &str = "60s";

/// Where the PostgreSQL store is: a connection URL or key/value string
/// (`postgres://user@host:5432/db?sslmode=require`, `host=… dbname=…`), kept secret, and an
/// optional CA file to verify the server's certificate with.
#[derive(Clone)]
pub struct PgConfig {
    url: SecretString,
    ca: Option<PathBuf>,
    password: Option<SecretString>,
    target: String,
    /// Several writers share the database (detectors on a bus): each takes kustody's writer
    /// lock in shared mode and numbers findings and incidents from blocks (`reserve_ids`).
    shared: bool,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig").field("target", &self.target).field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl PgConfig {
    /// Checks `url` and remembers it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when it is no PostgreSQL connection string (the message does not
    /// repeat it: it may hold a password).
    pub fn new(url: SecretString, ca: Option<PathBuf>) -> Result<PgConfig, StoreError> {
        let cfg: postgres::Config = url.expose_secret().parse().map_err(|e| StoreError::Open {
            path: "postgres".into(),
            reason: format!("not a PostgreSQL connection string: {e}"),
        })?;
        if cfg.get_hosts().iter().any(|h| matches!(h, Host::Tcp(h) if h.contains('@'))) {
            // `user:p@ss@host`: part of the password would be taken for the host (and named in
            // messages); percent-encode `@` in a password as %40
            return Err(StoreError::Open {
                path: "postgres".into(),
                reason: "the connection URL's host contains `@` (percent-encode `@` in a password as %40)".into(),
            });
        }
        let hosts: Vec<String> = cfg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
        let target = format!(
            "{}:{}/{}",
            if hosts.is_empty() { "localhost".to_owned() } else { hosts.join(",") },
            if ports.is_empty() { "5432".to_owned() } else { ports.join(",") },
            cfg.get_dbname().or(cfg.get_user()).unwrap_or("postgres")
        );
        Ok(PgConfig { url, ca, password: None, target, shared: false })
    }

    /// The password to log in with (from a file: a URL on a command line is visible to every
    /// user of the machine); it overrides one in the URL.
    #[must_use]
    pub fn with_password(mut self, password: SecretString) -> PgConfig {
        self.password = Some(password);
        self
    }

    /// Lets several writers share the database (see the field `shared`): a single-writer
    /// `kustody serve` and shared writers exclude each other.
    #[must_use]
    pub fn shared_writers(mut self) -> PgConfig {
        self.shared = true;
        self
    }

    /// Whether writers share the database.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Host, port and database (no user, no password): how messages name the store.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn connect(&self, read_only: bool) -> Res<Client> {
        let mut cfg: postgres::Config =
            self.url.expose_secret().parse().map_err(|_| Fail::other("not a PostgreSQL connection string"))?;
        if let Some(p) = &self.password {
            cfg.password(p.expose_secret());
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("kustody");
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(10));
        }
        // A server gone silent (a dropped network, a failover) is noticed in about 30 s, not
        // the system's default two hours.
        if cfg.get_tcp_user_timeout().is_none() {
            cfg.tcp_user_timeout(std::time::Duration::from_secs(30));
        }
        cfg.keepalives(true).keepalives_idle(std::time::Duration::from_secs(15));
        if cfg.get_keepalives_interval().is_none() {
            cfg.keepalives_interval(std::time::Duration::from_secs(5));
        }
        if cfg.get_keepalives_retries().is_none() {
            cfg.keepalives_retries(3);
        }
        if !read_only {
            // never a standby: its writes would all fail
            cfg.target_session_attrs(postgres::config::TargetSessionAttrs::ReadWrite);
        }
        let tcp = cfg.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        match cfg.get_ssl_mode() {
            SslMode::Disable => return Ok(cfg.connect(NoTls)?),
            // `prefer` (libpq's default) falls back to plain text when the server, or anyone in
            // between, declines TLS: over TCP kustody requires it (`sslmode=disable` to opt out)
            SslMode::Prefer if tcp => {
                cfg.ssl_mode(SslMode::Require);
            }
            _ => {}
        }
        Ok(cfg.connect(self.tls()?)?)
    }

    fn tls(&self) -> Res<tokio_postgres_rustls::MakeRustlsConnect> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| Fail::other(format!("PostgreSQL CA file `{}`: {e}", path.display())))?;
                for c in certs {
                    let c = c.map_err(|e| Fail::other(format!("PostgreSQL CA file `{}`: {e}", path.display())))?;
                    roots.add(c).map_err(|e| Fail::other(format!("PostgreSQL CA file `{}`: {e}", path.display())))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Fail::other(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// The PostgreSQL store. See the [module documentation](self).
pub struct PgStore {
    cfg: PgConfig,
    /// `None` after the connection was lost: the next call connects again.
    conn: RefCell<Option<Client>>,
    read_only: bool,
    enc: Encoder,
    dec: RefCell<Decoder>,
    /// Day partitions known to exist.
    days: BTreeSet<i64>,
    /// Reload `days` before the next append (one failed: the cache may be wrong).
    days_stale: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.cfg.target).field("read_only", &self.read_only).finish()
    }
}

/// The connection, made (again) when there is none or it closed.
fn client<'c>(cfg: &PgConfig, conn: &'c RefCell<Option<Client>>, read_only: bool) -> Res<RefMut<'c, Client>> {
    let mut slot = conn.try_borrow_mut().map_err(|_| Fail::other("the store's connection is in use"))?;
    if slot.as_ref().is_none_or(Client::is_closed) {
        *slot = None;
        let mut c = cfg.connect(read_only)?;
        session(&mut c, read_only, cfg.shared)?;
        *slot = Some(c);
    }
    RefMut::filter_map(slot, Option::as_mut).map_err(|_| Fail::other("no connection"))
}

/// Session settings: durable commits for a writer; read-only transactions and a statement
/// timeout for a reader.
fn session(c: &mut Client, read_only: bool, shared: bool) -> Res<()> {
    if read_only {
        c.batch_execute(&format!("SET default_transaction_read_only = on; SET statement_timeout = '{READ_TIMEOUT}'"))?;
    } else {
        // durable commits; and the server notices a dead writer (and frees its lock) in
        // seconds, not hours
        c.batch_execute(
            "SET synchronous_commit = on; SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3",
        )?;
        // One writer per database: the live detector numbers findings and incidents itself.
        // A previous writer's session may take a moment to end (a killed process's
        // connection), so the lock is tried for a while.
        // Shared writers (detectors on a bus) take it in shared mode: they exclude a single
        // writer, not each other.
        let t0 = std::time::Instant::now();
        let take = if shared { "SELECT pg_try_advisory_lock_shared($1)" } else { "SELECT pg_try_advisory_lock($1)" };
        loop {
            let got: bool = c.query_one(take, &[&schema::WRITER_LOCK])?.try_get(0)?;
            if got {
                break;
            }
            if t0.elapsed() >= WRITER_WAIT {
                return Err(Fail::Store(StoreError::Busy(if shared {
                    "a single-writer kustody serve is writing to this database (it holds kustody's writer lock); \
                     detectors on a bus cannot share the database with it"
                        .into()
                } else {
                    "another kustody serve is writing to this database (it holds kustody's writer lock); one \
                     writer per database, unless detectors on a bus share it"
                        .into()
                })));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let fsync: String = c.query_one("SHOW fsync", &[])?.try_get(0)?;
        if fsync != "on" {
            return Err(Fail::other(
                "the PostgreSQL server runs with fsync = off: a commit would not be durable, and kustody acknowledges \
                 only durable commits",
            ));
        }
    }
    Ok(())
}

impl PgStore {
    /// Connects for writing and brings the schema up to date (under an advisory lock: several
    /// processes may start together).
    ///
    /// # Errors
    ///
    /// [`StoreError::TooNew`] when a newer kustody wrote the database; [`StoreError::Open`]
    /// when it cannot be reached or is not a kustody store.
    pub fn open(cfg: &PgConfig) -> Result<PgStore, StoreError> {
        let mut s = PgStore::new(cfg, false)?;
        s.setup_writer().map_err(|f| s.open_err(f))?;
        Ok(s)
    }

    /// Connects for reading only (searches, statistics); write calls fail.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when there is no kustody store of this version there (open it
    /// for writing once to create or upgrade it); [`StoreError::TooNew`].
    pub fn open_read_only(cfg: &PgConfig) -> Result<PgStore, StoreError> {
        let s = PgStore::new(cfg, true)?;
        let version = s.version().map_err(|f| s.open_err(f))?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Open {
                path: cfg.target.clone(),
                reason: format!(
                    "its schema version {version} is older than this kustody's ({SCHEMA_VERSION}): open it for \
                     writing (kustody serve) once to create or upgrade it"
                ),
            });
        }
        Ok(s)
    }

    fn new(cfg: &PgConfig, read_only: bool) -> Result<PgStore, StoreError> {
        let enc = Encoder::new().map_err(|f| Fail::from(f).into_store(&cfg.target))?;
        Ok(PgStore {
            cfg: cfg.clone(),
            conn: RefCell::new(None),
            read_only,
            enc,
            dec: RefCell::default(),
            days: BTreeSet::new(),
            days_stale: false,
        })
    }

    fn open_err(&self, f: Fail) -> StoreError {
        match f.into_store(&self.cfg.target) {
            e @ StoreError::TooNew { .. } => e,
            e => StoreError::Open { path: self.cfg.target.clone(), reason: e.to_string() },
        }
    }

    fn fail(&self, f: Fail) -> StoreError {
        if f.is_connection() {
            if let Ok(mut c) = self.conn.try_borrow_mut() {
                *c = None;
            }
        }
        f.into_store(&self.cfg.target)
    }

    fn client(&self) -> Res<RefMut<'_, Client>> {
        client(&self.cfg, &self.conn, self.read_only)
    }

    fn writable(&self) -> Res<()> {
        if self.read_only {
            return Err(Fail::other("the store was opened read-only"));
        }
        Ok(())
    }

    /// The schema version of the database (0 when it holds no kustody store).
    fn version(&self) -> Res<i64> {
        let mut c = self.client()?;
        let exists: bool = c.query_one("SELECT to_regclass('kustody_meta') IS NOT NULL", &[])?.try_get(0)?;
        if !exists {
            return Ok(0);
        }
        let rows = c.query("SELECT value FROM kustody_meta WHERE name = 'schema_version'", &[])?;
        let found: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION }.into());
        }
        Ok(found)
    }

    /// The schema version of the database.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.version().map_err(|f| self.fail(f))
    }

    fn setup_writer(&mut self) -> Res<()> {
        {
            let mut c = self.client()?;
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::MIGRATION_LOCK])?;
            let meta: bool = tx.query_one("SELECT to_regclass('kustody_meta') IS NOT NULL", &[])?.try_get(0)?;
            if !meta {
                let tables: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'events'",
                        &[],
                    )?
                    .try_get(0)?;
                if tables > 0 {
                    return Err(Fail::other(
                        "the database has an `events` table but no kustody schema version: it is not a kustody store",
                    ));
                }
                tx.batch_execute(schema::META)?;
            }
            let rows = tx.query("SELECT value FROM kustody_meta WHERE name = 'schema_version'", &[])?;
            let found: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION }.into());
            }
            let done = usize::try_from(found).map_err(|_| Fail::other(format!("invalid schema version {found}")))?;
            for step in schema::MIGRATIONS.iter().skip(done) {
                tx.batch_execute(step)?;
            }
            tx.execute(
                "INSERT INTO kustody_meta (name, value) VALUES ('schema_version', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&SCHEMA_VERSION],
            )?;
            tx.commit()?;
        }
        self.load_days()?;
        let newest = {
            let mut c = self.client()?;
            let rows = c.query("SELECT dict FROM dicts ORDER BY created_ns DESC, id DESC LIMIT 1", &[])?;
            rows.first().map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()?
        };
        if let Some(d) = newest.and_then(Dict::new) {
            let _ = self.enc.use_dict(&d);
        }
        Ok(())
    }

    /// The day partitions that exist.
    fn load_days(&mut self) -> Res<()> {
        let rows = self.client()?.query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )?;
        self.days.clear();
        for r in rows {
            let name: String = r.try_get(0)?;
            if let Some(d) = name.strip_prefix("events_d").and_then(|d| d.parse::<i64>().ok()) {
                self.days.insert(d);
            }
        }
        Ok(())
    }

    /// Stores a dictionary trained in the background, and compresses with it from now on.
    fn install_trained_dict(&mut self) {
        if let Some(d) = self.enc.poll_training() {
            match self.store_dict(&d).and_then(|()| Ok(self.enc.use_dict(&d)?)) {
                Ok(()) => {}
                Err(_) => self.enc.training_failed(),
            }
        }
    }

    fn store_dict(&self, d: &Dict) -> Res<()> {
        let now = now_ns();
        let id = i64::from(d.id);
        let mut c = self.client()?;
        let n = c.execute(
            "INSERT INTO dicts (id, created_ns, dict) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&id, &now, &d.bytes],
        )?;
        if n == 0 {
            let stored: Vec<u8> = c.query_one("SELECT dict FROM dicts WHERE id = $1", &[&id])?.try_get(0)?;
            if stored != d.bytes {
                return Err(Fail::other(format!("zstd dictionary ID {} is taken", d.id)));
            }
        }
        Ok(())
    }

    /// Trains a zstd dictionary on the newest stored events now (see
    /// [`crate::SqliteStore::train_dictionary`]).
    ///
    /// # Errors
    ///
    /// When the store is read-only or cannot be read or written.
    pub fn train_dictionary(&mut self) -> Result<Option<u32>, StoreError> {
        let r = (|| -> Res<Option<u32>> {
            self.writable()?;
            let n = i64::try_from(codec::TRAIN_SAMPLES).unwrap_or(i64::MAX);
            let sql = format!("SELECT {} FROM events e ORDER BY e.id DESC LIMIT $1", query::EVENT_COLUMNS);
            let samples: Vec<String> = self.read_events(&sql, &[&n])?.into_iter().map(|e| e.raw).collect();
            let Some(d) = codec::train(&samples).and_then(Dict::new) else { return Ok(None) };
            self.store_dict(&d)?;
            self.enc.use_dict(&d)?;
            Ok(Some(d.id))
        })();
        r.map_err(|f| self.fail(f))
    }

    /// Whether the writer trains dictionaries by itself (on by default).
    pub fn set_auto_dictionary(&mut self, on: bool) {
        self.enc.auto_train = on;
    }

    fn append_events_(&mut self, events: &[EventRow<'_>], origin: Origin) -> Res<Appended> {
        self.writable()?;
        self.install_trained_dict();
        let bit = origin.bit();
        let n = events.len();
        let mut out = Appended { ids: Vec::with_capacity(n), stored: 0, duplicates: 0 };
        if n == 0 {
            return Ok(out);
        }
        if self.days_stale {
            self.load_days()?;
            self.days_stale = false;
        }
        let today = now_ns() / schema::DAY_NS;
        let PgStore { cfg, conn, enc, days, read_only, .. } = self;
        let mut c = client(cfg, conn, *read_only)?;
        let mut tx = c.transaction()?;
        let new_days: BTreeSet<i64> = events
            .iter()
            .filter_map(|e| schema::day_of_key(schema::time_key_of(e.time_ns, today)))
            .filter(|d| !days.contains(d))
            .collect();
        for day in &new_days {
            create_partition(&mut tx, *day)?;
        }
        // Tomorrow's partition a day early, so the first events after midnight need not wait
        // for the lock that creating one takes; best effort (in a savepoint): today's appends
        // go on if it cannot be made now.
        let tomorrow = today + 1;
        let mut ahead = None;
        if !days.contains(&tomorrow) && !new_days.contains(&tomorrow) {
            if let Ok(mut sp) = tx.savepoint("kustody_ahead") {
                if create_partition(&mut sp, tomorrow).is_ok() && sp.commit().is_ok() {
                    ahead = Some(tomorrow);
                }
            }
        }
        let count = i64::try_from(n).unwrap_or(i64::MAX);
        let mut ids: Vec<i64> = tx
            .query("SELECT nextval('events_id') FROM generate_series(1, $1::bigint)", &[&count])?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        ids.sort_unstable();
        let mut cols = EventColumns::with_capacity(n);
        for (ev, id) in events.iter().zip(&ids) {
            cols.push(*id, ev, enc, today);
        }
        let stored: std::collections::HashSet<i64> = {
            let c = &cols;
            let p: [&(dyn postgres::types::ToSql + Sync); 20] = [
                &c.id,
                &bit,
                &c.time_key,
                &c.time,
                &c.audit,
                &c.stage,
                &c.user,
                &c.sa,
                &c.pod,
                &c.ns,
                &c.resource,
                &c.sub,
                &c.name,
                &c.verb,
                &c.code,
                &c.ua,
                &c.len,
                &c.body,
                &c.src_pod,
                &c.cluster,
            ];
            tx.query(
                "INSERT INTO events (id, origins, time_key, time_ns, audit_id, stage, username, service_account, pod, \
                 namespace, resource, subresource, name, verb, code, user_agent, text_len, body, src_pod, cluster) \
                 SELECT x.id, $2, x.k, x.t, x.a, x.s, x.u, x.sa, x.p, x.ns, x.r, x.sr, x.n, x.v, x.c, x.ua, x.l, \
                 x.b, x.sp, x.cl FROM unnest($1::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                 $14::text[], $15::bigint[], $16::text[], $17::bigint[], $18::bytea[], $19::text[], $20::text[]) \
                 WITH ORDINALITY AS x(id, k, t, a, s, u, sa, p, ns, r, sr, n, v, c, ua, l, b, sp, cl, o) ORDER BY x.o \
                 ON CONFLICT DO NOTHING RETURNING id",
                &p,
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?
        };
        // duplicates gain the origin's bit; the others' IPs and counts are added
        let (mut dup_k, mut dup_a, mut dup_s, mut dup_c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ip_ev, mut ip_n, mut ip_addr) = (Vec::<i64>::new(), Vec::<i16>::new(), Vec::<String>::new());
        let mut minutes = Minutes::default();
        let mut text_bytes: i64 = 0;
        let mut stored_bytes: i64 = 0;
        for (i, ev) in events.iter().enumerate() {
            let id = cols.id.get(i).copied().unwrap_or_default();
            if !stored.contains(&id) {
                dup_k.push(cols.time_key.get(i).copied().unwrap_or(schema::UNTIMED));
                dup_a.push(opt_key(ev.audit_id.as_deref()));
                dup_s.push(opt_key(ev.stage.as_deref()));
                dup_c.push(opt_key(ev.cluster.as_deref()));
                out.ids.push(None);
                out.duplicates += 1;
                continue;
            }
            let mut seen: Vec<&str> = Vec::new();
            for addr in &ev.source_ips {
                if seen.len() == MAX_IPS {
                    break;
                }
                if addr.is_empty() || seen.contains(&addr.as_ref()) {
                    continue;
                }
                ip_ev.push(id);
                ip_n.push(i16::try_from(seen.len()).unwrap_or(0));
                ip_addr.push(key(addr));
                seen.push(addr);
            }
            out.ids.push(Some(id));
            out.stored += 1;
            text_bytes = text_bytes.saturating_add(i64::try_from(ev.raw.len()).unwrap_or(i64::MAX));
            let body = cols.body.get(i).map_or(0, Vec::len);
            stored_bytes = stored_bytes
                .saturating_add(i64::try_from(body).unwrap_or(i64::MAX))
                .saturating_add(schema::ROW_OVERHEAD);
            if let Some(t) = ev.time_ns {
                minutes.add(t, ev.namespace.as_deref().unwrap_or(""), ev.user.as_deref().unwrap_or(""), 1);
            }
        }
        if !dup_k.is_empty() {
            tx.execute(
                "UPDATE events e SET origins = e.origins | $1 FROM unnest($2::bigint[], $3::text[], $4::text[], \
                 $5::text[]) AS d(k, a, s, c) WHERE e.time_key = d.k AND e.audit_id = d.a \
                 AND coalesce(e.stage, '') = coalesce(d.s, '') AND coalesce(e.cluster, '') = coalesce(d.c, '') \
                 AND e.origins & $1 = 0",
                &[&bit, &dup_k, &dup_a, &dup_s, &dup_c],
            )?;
        }
        if !ip_ev.is_empty() {
            tx.execute(
                "INSERT INTO event_ips (event_id, n, ip) SELECT * FROM unnest($1::bigint[], $2::smallint[], \
                 $3::text[]) ON CONFLICT DO NOTHING",
                &[&ip_ev, &ip_n, &ip_addr],
            )?;
        }
        write_minutes(&mut tx, &minutes)?;
        add_totals(
            &mut tx,
            &[("events", i64_of(out.stored)), ("event_text_bytes", text_bytes), ("stored_bytes", stored_bytes)],
        )?;
        tx.commit()?;
        days.extend(new_days);
        days.extend(ahead);
        Ok(out)
    }

    fn append_alerts_(&mut self, alerts: &[AlertRow]) -> Res<Appended> {
        self.writable()?;
        self.install_trained_dict();
        let mut out = Appended { ids: Vec::with_capacity(alerts.len()), stored: 0, duplicates: 0 };
        let PgStore { cfg, conn, enc, read_only, .. } = self;
        let mut c = client(cfg, conn, *read_only)?;
        let mut tx = c.transaction()?;
        for a in alerts {
            let hash = crate::sqlite::alert_hash(a).to_vec();
            let len = i64::try_from(a.raw.len()).unwrap_or(i64::MAX);
            let body = stored_bytes(enc, &a.raw);
            let rows = tx.query(
                "INSERT INTO alerts (id, time_ns, rule, priority, source, hostname, namespace, pod, container_id, \
                 output, hash, raw_len, raw, cluster) VALUES (nextval('alerts_id'), $1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13) ON CONFLICT (hash) DO NOTHING RETURNING id",
                &[
                    &a.time_ns,
                    &key(&a.rule),
                    &text(&a.priority),
                    &opt(a.source.as_deref()),
                    &opt(a.hostname.as_deref()),
                    &opt_key(a.namespace.as_deref()),
                    &opt_key(a.pod.as_deref()),
                    &opt(a.container_id.as_deref()),
                    &text(&a.output),
                    &hash,
                    &len,
                    &body,
                    &opt_key(a.cluster.as_deref()),
                ],
            )?;
            match rows.first() {
                Some(r) => {
                    out.ids.push(Some(r.try_get(0)?));
                    out.stored += 1;
                }
                None => {
                    out.ids.push(None);
                    out.duplicates += 1;
                }
            }
        }
        add_totals(&mut tx, &[("alerts", i64_of(out.stored))])?;
        tx.commit()?;
        Ok(out)
    }

    fn commit_(&mut self, b: &Batch<'_>) -> Res<BatchIds> {
        self.writable()?;
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        if let Some((part, owner, epoch)) = b.lease {
            // held in share mode until the commit: a takeover (an UPDATE of the row) waits
            // for it, and reads the cursor this commit writes
            let part = i32::try_from(part).unwrap_or(i32::MAX);
            let held = tx.query(
                "SELECT 1 FROM bus_leases WHERE part = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
                &[&part, &owner, &epoch],
            )?;
            if held.is_empty() {
                return Err(Fail::Store(StoreError::Other(format!(
                    "bus partition {part} changed hands (epoch {epoch} is over): nothing committed"
                ))));
            }
        }
        let mut ids = Vec::with_capacity(b.findings.len());
        let mut new_findings: i64 = 0;
        let mut new_matches: i64 = 0;
        for f in b.findings {
            let json = |v: &Vec<String>| serde_json::to_string(v).map_err(|e| Fail::other(format!("json: {e}")));
            let (rules, tags, audit_ids) = (json(&f.rules)?, json(&f.tags)?, json(&f.audit_ids)?);
            let (rank, events, matches) = (rank_of(&f.priority), i64_of(f.events), i64_of(f.matches));
            let (rule, priority, output, detail) = (text(&f.rule), text(&f.priority), text(&f.output), text(&f.detail));
            let cluster = opt_key(f.cluster.as_deref());
            let (user, namespace, resource, name, source_ip) = (
                opt_key(f.user.as_deref()),
                opt_key(f.namespace.as_deref()),
                opt(f.resource.as_deref()),
                opt(f.name.as_deref()),
                opt(f.source_ip.as_deref()),
            );
            let p: [&(dyn postgres::types::ToSql + Sync); 21] = [
                &f.id,
                &rule,
                &priority,
                &rank,
                &rules,
                &tags,
                &events,
                &matches,
                &f.first_ns,
                &f.last_ns,
                &user,
                &namespace,
                &resource,
                &name,
                &source_ip,
                &output,
                &audit_ids,
                &f.lead_event,
                &f.open,
                &detail,
                &cluster,
            ];
            let updated = match f.id {
                Some(_) => tx.execute(
                    "UPDATE findings SET rule = $2, priority = $3, priority_rank = $4, rules = $5, tags = $6, \
                     events = $7, matches = $8, first_ns = $9, last_ns = $10, username = $11, namespace = $12, \
                     resource = $13, name = $14, source_ip = $15, output = $16, audit_ids = $17, lead_event = $18, \
                     open = $19, detail = $20, cluster = $21 WHERE id = $1",
                    &p,
                )?,
                None => 0,
            };
            // An update of a finding no longer stored (removed by retention) stores it again.
            let id: i64 = if updated == 1 {
                let id = f.id.unwrap_or_default();
                tx.execute("DELETE FROM finding_rules WHERE finding_id = $1", &[&id])?;
                id
            } else {
                new_findings += 1;
                tx.query_one(
                    "INSERT INTO findings (id, rule, priority, priority_rank, rules, tags, events, matches, first_ns, \
                     last_ns, username, namespace, resource, name, source_ip, output, audit_ids, lead_event, open, \
                     detail, cluster) VALUES (coalesce($1, (SELECT coalesce(max(id), 0) + 1 FROM findings)), $2, $3, \
                     $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) RETURNING id",
                    &p,
                )?
                .try_get(0)?
            };
            let all: Vec<String> = std::iter::once(&f.rule).chain(&f.rules).map(|r| key(r)).collect();
            tx.execute(
                "INSERT INTO finding_rules (rule, finding_id) SELECT r, $2 FROM unnest($1::text[]) AS r \
                 ON CONFLICT DO NOTHING",
                &[&all, &id],
            )?;
            ids.push(id);
        }
        for (m, new) in b.matches {
            let finding = m.finding_id.or_else(|| new.and_then(|i| ids.get(i).copied()));
            let (rule, priority) = (key(&m.rule), text(&m.priority));
            let p: [&(dyn postgres::types::ToSql + Sync); 4] = [&m.event_id, &rule, &priority, &finding];
            let n = tx.execute(
                "INSERT INTO matches (event_id, rule, priority, finding_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event_id, rule) DO NOTHING",
                &p,
            )?;
            if n == 1 {
                new_matches += 1;
            } else {
                tx.execute(
                    "UPDATE matches SET priority = $3, finding_id = coalesce($4, finding_id) \
                     WHERE event_id = $1 AND rule = $2",
                    &p,
                )?;
            }
        }
        add_totals(&mut tx, &[("findings", new_findings), ("matches", new_matches)])?;
        if let Some((name, value)) = b.cursor {
            // a bus partition's cursor never moves back
            let sql = if b.lease.is_some() {
                "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = \
                 greatest(cursors.value, $2)"
            } else {
                "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2"
            };
            tx.execute(sql, &[&name, &value])?;
        }
        let incidents = response::write_incidents(&mut tx, b.incidents, &ids)?;
        let notes = response::write_notes(&mut tx, b.notes)?;
        let outbox = response::write_outbox(&mut tx, b.outbox, &incidents)?;
        let actions = response::write_actions(&mut tx, b.actions)?;
        tx.commit()?;
        Ok(BatchIds { findings: ids, incidents, notes, outbox, actions })
    }

    /// The events of a query, decoded.
    fn read_events(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Res<Vec<StoredEvent>> {
        let rows = self.client()?.query(sql, params)?;
        self.with_texts(|texts| rows.iter().map(|r| read_event(r, texts)).collect())
    }

    /// Runs `f` with the store's decoder (which loads the dictionaries it needs).
    fn with_texts<T>(&self, f: impl FnOnce(&mut Texts<'_>) -> Res<T>) -> Res<T> {
        let mut load = |id: u32| -> Res<Option<Vec<u8>>> {
            let rows = self.client()?.query("SELECT dict FROM dicts WHERE id = $1", &[&i64::from(id)])?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
        };
        let mut own = None;
        let mut shared = self.dec.try_borrow_mut().ok();
        let dec = match shared.as_deref_mut() {
            Some(d) => d,
            None => own.insert(Decoder::default()),
        };
        f(&mut Texts { dec, load: &mut load })
    }

    fn search_events_(&self, q: &EventQuery) -> Res<Vec<StoredEvent>> {
        let sql = query::events(q);
        self.read_events(&sql.text, &sql.params())
    }

    fn search_alerts_(&self, q: &AlertQuery) -> Res<Vec<StoredAlert>> {
        let sql = query::alerts(q);
        let rows = self.client()?.query(&sql.text, &sql.params())?;
        self.with_texts(|texts| rows.iter().map(|r| read_alert(r, texts)).collect())
    }

    fn retain_(&mut self, now_ns: i64, max_age_ns: Option<i64>, max_bytes: Option<u64>) -> Res<Retained> {
        self.writable()?;
        let mut out = Retained::default();
        if let Some(age) = max_age_ns {
            let cutoff = now_ns.saturating_sub(age);
            // whole days first, then what is left before the cutoff
            let old: Vec<i64> = self
                .days
                .iter()
                .copied()
                .filter(|d| d.saturating_add(1).saturating_mul(schema::DAY_NS) <= cutoff)
                .collect();
            for day in old {
                out.events_removed += self.drop_day(day)?;
            }
            loop {
                let n = self.delete_events(Some(cutoff), RETAIN_BATCH)?;
                out.events_removed += n;
                if n == 0 {
                    break;
                }
            }
            let mut c = self.client()?;
            let mut tx = c.transaction()?;
            let alerts = tx.execute("DELETE FROM alerts WHERE time_ns < $1", &[&cutoff])?;
            tx.execute("DELETE FROM bad_records WHERE received_ns < $1", &[&cutoff])?;
            let gone: Vec<i64> = tx
                .query("DELETE FROM findings WHERE NOT open AND last_ns < $1 RETURNING id", &[&cutoff])?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            tx.execute("DELETE FROM finding_rules WHERE finding_id = ANY($1)", &[&gone])?;
            response::retain_intervals(&mut tx, cutoff)?;
            let findings = u64::try_from(gone.len()).unwrap_or(0);
            add_totals(&mut tx, &[("alerts", -i64_of(alerts)), ("findings", -i64_of(findings))])?;
            tx.commit()?;
            out.alerts_removed += alerts;
            out.findings_removed += findings;
        }
        if let Some(max) = max_bytes {
            // Bounded on `stored_bytes` (bodies plus an estimated row overhead), which shrinks
            // with every removal: PostgreSQL's files do not shrink on DELETE (vacuum makes the
            // space reusable), so their size could not tell this loop when to stop.
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            loop {
                let used = self.total("stored_bytes")?;
                let count = self.total("events")?;
                if used <= max || count <= 0 {
                    break;
                }
                let per_event = (used / count).max(1);
                let want = ((used - max) / per_event).saturating_add(1).clamp(16, RETAIN_BATCH);
                let n = self.delete_events(None, want)?;
                out.events_removed += n;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes the partition of `day` with its events' IPs, matches and counts, in one
    /// transaction. Returns how many events it held.
    fn drop_day(&mut self, day: i64) -> Res<u64> {
        let part = schema::partition(day);
        let n;
        {
            let mut c = self.client()?;
            let mut tx = c.transaction()?;
            let exists: bool = tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&part])?.try_get(0)?;
            if !exists {
                tx.commit()?;
                drop(c);
                self.days.remove(&day);
                return Ok(0);
            }
            let row = tx.query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(text_len), 0)::bigint, coalesce(sum(octet_length(body)), 0)::bigint \
                     FROM {part}"
                ),
                &[],
            )?;
            let (count, text, body): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let stored = body.saturating_add(count.saturating_mul(schema::ROW_OVERHEAD));
            let matches = tx.execute(&format!("DELETE FROM matches WHERE event_id IN (SELECT id FROM {part})"), &[])?;
            tx.execute(&format!("DELETE FROM event_ips WHERE event_id IN (SELECT id FROM {part})"), &[])?;
            let mut minutes = Minutes::default();
            for r in tx.query(
                &format!(
                    "SELECT min(time_ns), coalesce(namespace, ''), coalesce(username, ''), count(*) FROM {part} \
                     WHERE time_ns IS NOT NULL GROUP BY time_ns / {MINUTE_NS}, 2, 3"
                ),
                &[],
            )? {
                let (t, ns, user, k): (i64, String, String, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                minutes.add(t, &ns, &user, -k);
            }
            write_minutes(&mut tx, &minutes)?;
            tx.batch_execute(&format!("DROP TABLE {part}"))?;
            add_totals(
                &mut tx,
                &[
                    ("events", -count),
                    ("event_text_bytes", -text),
                    ("stored_bytes", -stored),
                    ("matches", -i64_of(matches)),
                ],
            )?;
            tx.commit()?;
            n = u64_of(count);
        }
        self.days.remove(&day);
        Ok(n)
    }

    /// Deletes, in one transaction, up to `limit` events with their IPs and matches: the
    /// oldest by time before `cutoff`, or (`None`) the oldest by id. Returns how many.
    fn delete_events(&mut self, cutoff: Option<i64>, limit: i64) -> Res<u64> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        let victims = match cutoff {
            Some(t) => tx.query(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_key < $1 AND time_ns < $1 \
                 ORDER BY time_ns LIMIT $2) RETURNING id, text_len, time_ns, namespace, username, \
                 octet_length(body)::bigint",
                &[&t, &limit],
            )?,
            None => tx.query(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT $1) \
                 RETURNING id, text_len, time_ns, namespace, username, octet_length(body)::bigint",
                &[&limit],
            )?,
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(victims.len());
        let mut text: i64 = 0;
        let mut stored: i64 = 0;
        let mut minutes = Minutes::default();
        for r in &victims {
            let (id, len, t, ns, user): (i64, i64, Option<i64>, Option<String>, Option<String>) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
            ids.push(id);
            text = text.saturating_add(len);
            stored = stored.saturating_add(r.try_get::<_, i64>(5)?).saturating_add(schema::ROW_OVERHEAD);
            if let Some(t) = t {
                minutes.add(t, ns.as_deref().unwrap_or(""), user.as_deref().unwrap_or(""), -1);
            }
        }
        tx.execute("DELETE FROM event_ips WHERE event_id = ANY($1)", &[&ids])?;
        let matches = tx.execute("DELETE FROM matches WHERE event_id = ANY($1)", &[&ids])?;
        write_minutes(&mut tx, &minutes)?;
        let n = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        add_totals(
            &mut tx,
            &[("events", -n), ("event_text_bytes", -text), ("stored_bytes", -stored), ("matches", -i64_of(matches))],
        )?;
        tx.commit()?;
        Ok(u64_of(n))
    }

    fn total(&self, name: &str) -> Res<i64> {
        let rows = self.client()?.query("SELECT value FROM totals WHERE name = $1", &[&name])?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Bytes of kustody's tables and their indexes on disk.
    fn used_bytes_(&self) -> Res<u64> {
        let row = self.client()?.query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r' \
             AND (c.relname = ANY($1) OR c.relname LIKE 'events\\_d%' OR c.relname = 'events_other')",
            &[&TABLES],
        )?;
        Ok(u64_of(row.try_get(0)?))
    }

    fn stats_(&self) -> Res<StoreStats> {
        Ok(StoreStats {
            events: u64_of(self.total("events")?),
            alerts: u64_of(self.total("alerts")?),
            findings: u64_of(self.total("findings")?),
            matches: u64_of(self.total("matches")?),
            bytes: self.used_bytes_()?,
            event_text_bytes: u64_of(self.total("event_text_bytes")?),
        })
    }

    fn write<T>(&mut self, f: impl FnOnce(&mut Transaction<'_>) -> Res<T>) -> Result<T, StoreError> {
        let r = (|| {
            self.writable()?;
            let mut c = self.client()?;
            let mut tx = c.transaction()?;
            let v = f(&mut tx)?;
            tx.commit()?;
            Ok(v)
        })();
        r.map_err(|e| self.fail(e))
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Res<T>) -> Result<T, StoreError> {
        let r = (|| {
            let mut c = self.client()?;
            f(&mut c)
        })();
        r.map_err(|e| self.fail(e))
    }
}

/// A decoder and how to load a dictionary: what reading stored texts needs.
struct Texts<'a> {
    dec: &'a mut Decoder,
    load: &'a mut dyn FnMut(u32) -> Res<Option<Vec<u8>>>,
}

impl Texts<'_> {
    fn decode(&mut self, b: &[u8], len: i64) -> Res<String> {
        let load = &mut *self.load;
        let mut shim = |id: u32| -> crate::sqlite::error::Res<Option<Vec<u8>>> {
            load(id).map_err(|f| crate::sqlite::error::Fail::Store(f.into_store("")))
        };
        Ok(self.dec.decode_bytes(b, len, &mut shim)?)
    }
}

fn read_event(r: &Row, texts: &mut Texts<'_>) -> Res<StoredEvent> {
    let len: i64 = r.try_get(5)?;
    let body: &[u8] = r.try_get(6)?;
    Ok(StoredEvent {
        id: r.try_get(0)?,
        time_ns: r.try_get(1)?,
        audit_id: r.try_get(2)?,
        stage: r.try_get(3)?,
        origins: r.try_get(4)?,
        raw: texts.decode(body, len)?,
        source_pod: r.try_get(7)?,
        cluster: r.try_get(8)?,
    })
}

fn json_list(r: &Row, i: usize) -> Res<Vec<String>> {
    let s: String = r.try_get(i)?;
    serde_json::from_str(&s).map_err(|e| Fail::other(format!("stored list: {e}")))
}

fn read_finding(r: &Row) -> Res<FindingRow> {
    Ok(FindingRow {
        id: Some(r.try_get(0)?),
        rule: r.try_get(1)?,
        priority: r.try_get(2)?,
        rules: json_list(r, 3)?,
        tags: json_list(r, 4)?,
        events: u64_of(r.try_get(5)?),
        matches: u64_of(r.try_get(6)?),
        first_ns: r.try_get(7)?,
        last_ns: r.try_get(8)?,
        user: r.try_get(9)?,
        namespace: r.try_get(10)?,
        resource: r.try_get(11)?,
        name: r.try_get(12)?,
        source_ip: r.try_get(13)?,
        output: r.try_get(14)?,
        audit_ids: json_list(r, 15)?,
        lead_event: r.try_get(16)?,
        open: r.try_get(17)?,
        detail: r.try_get(18)?,
        cluster: r.try_get(19)?,
    })
}

fn read_alert(r: &Row, texts: &mut Texts<'_>) -> Res<StoredAlert> {
    let len: i64 = r.try_get(10)?;
    let raw: &[u8] = r.try_get(11)?;
    Ok(StoredAlert {
        id: r.try_get(0)?,
        alert: AlertRow {
            time_ns: r.try_get(1)?,
            rule: r.try_get(2)?,
            priority: r.try_get(3)?,
            source: r.try_get(4)?,
            hostname: r.try_get(5)?,
            namespace: r.try_get(6)?,
            pod: r.try_get(7)?,
            container_id: r.try_get(8)?,
            output: r.try_get(9)?,
            raw: texts.decode(raw, len)?,
            cluster: r.try_get(12)?,
        },
    })
}

impl Store for PgStore {
    fn append_events(&mut self, events: &[EventRow<'_>], origin: Origin) -> Result<Appended, StoreError> {
        let r = self.append_events_(events, origin);
        if r.is_err() {
            // a partition the cache believed in may be missing: look again next time
            self.days_stale = true;
        }
        r.map_err(|f| self.fail(f))
    }

    fn append_alerts(&mut self, alerts: &[AlertRow]) -> Result<Appended, StoreError> {
        self.append_alerts_(alerts).map_err(|f| self.fail(f))
    }

    fn record_detections(&mut self, findings: &[FindingRow], matches: &[MatchRow]) -> Result<Vec<i64>, StoreError> {
        let matches: Vec<(MatchRow, Option<usize>)> = matches.iter().map(|m| (m.clone(), None)).collect();
        let b = Batch { findings, matches: &matches, ..Default::default() };
        self.commit_(&b).map(|ids| ids.findings).map_err(|f| self.fail(f))
    }

    fn commit(&mut self, batch: &Batch<'_>) -> Result<BatchIds, StoreError> {
        self.commit_(batch).map_err(|f| self.fail(f))
    }

    fn next_ids(&self) -> Result<(i64, i64), StoreError> {
        self.read(|c| {
            let r = c.query_one(
                "SELECT greatest((SELECT coalesce(max(id), 0) FROM findings), \
                 (SELECT coalesce(max(finding_id), 0) FROM incident_findings)) + 1, \
                 (SELECT coalesce(max(id), 0) FROM incidents) + 1",
                &[],
            )?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    fn search_incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError> {
        self.read(|c| response::search_incidents(c, q))
    }

    fn incident(&self, id: i64) -> Result<Option<IncidentRow>, StoreError> {
        self.read(|c| response::incident(c, id))
    }

    fn incident_findings(&self, id: i64) -> Result<Vec<FindingRow>, StoreError> {
        self.read(|c| {
            let ids = response::incident_finding_ids(c, id)?;
            let sql = format!("SELECT {} FROM findings f WHERE f.id = ANY($1)", query::FINDING_COLUMNS);
            let mut out: Vec<FindingRow> = c.query(&sql, &[&ids])?.iter().map(read_finding).collect::<Res<_>>()?;
            out.sort_by_key(|f| (f.first_ns, f.id));
            Ok(out)
        })
    }

    fn incident_notes(&self, id: i64) -> Result<Vec<NoteRow>, StoreError> {
        self.read(|c| response::notes(c, id))
    }

    fn outbox_due(&self, sink: &str, now_ns: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|c| response::outbox_due(c, sink, now_ns, limit))
    }

    fn outbox_next_due(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        self.read(|c| response::outbox_next_due(c, sink))
    }

    fn record_attempts(&mut self, attempts: &[Attempt]) -> Result<(), StoreError> {
        self.write(|tx| response::record_attempts(tx, attempts))
    }

    fn search_outbox(&self, q: &OutboxQuery) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|c| response::search_outbox(c, q))
    }

    fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>, StoreError> {
        self.read(|c| response::outbox_row(c, id))
    }

    fn outbox_attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(|c| response::attempts(c, outbox_id))
    }

    fn retry_outbox(&mut self, ids: &[i64], sink: Option<&str>, now_ns: i64) -> Result<u64, StoreError> {
        self.write(|tx| response::retry(tx, ids, sink, now_ns))
    }

    fn search_actions(&self, q: &ActionQuery) -> Result<Vec<ActionRow>, StoreError> {
        self.read(|c| response::search_actions(c, q))
    }

    fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError> {
        self.read(|c| response::action(c, id))
    }

    fn transition_action(&mut self, row: &ActionRow, from: &str) -> Result<bool, StoreError> {
        self.write(|tx| response::transition_action(tx, row, from))
    }

    fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!("SELECT {} FROM events e WHERE e.id > $1 ORDER BY e.id LIMIT $2", query::EVENT_COLUMNS);
        let n = crate::sqlite::query::limit(limit);
        self.read_events(&sql, &[&after, &n]).map_err(|f| self.fail(f))
    }

    fn search_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.search_events_(q).map_err(|f| self.fail(f))
    }

    fn search_findings(&self, q: &FindingQuery) -> Result<Vec<FindingRow>, StoreError> {
        let sql = query::findings(q);
        self.read(|c| c.query(&sql.text, &sql.params())?.iter().map(read_finding).collect())
    }

    fn search_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        self.search_alerts_(q).map_err(|f| self.fail(f))
    }

    fn event_counts(&self, q: &CountQuery) -> Result<Vec<Count>, StoreError> {
        let counts::Plan { bucket, lo, hi, table, col, filter, total } = counts::plan(q).map_err(StoreError::Other)?;
        let key = if total { "''::text" } else { col };
        let sql = format!(
            "SELECT (minute / $1) * $1, {key}, sum(n)::bigint FROM {table} WHERE minute >= $2 AND minute < $3 \
             AND ($4::text IS NULL OR {col} = $4) GROUP BY 1, 2 ORDER BY 1"
        );
        self.read(|c| {
            c.query(&sql, &[&bucket, &lo, &hi, &opt(filter)])?
                .iter()
                .map(|r| {
                    Ok(Count {
                        start_ns: r.try_get::<_, i64>(0)?.saturating_mul(MINUTE_NS),
                        key: r.try_get(1)?,
                        n: u64_of(r.try_get(2)?),
                    })
                })
                .collect()
        })
    }

    fn finding_counts(&self, since_ns: i64, until_ns: i64, bucket_ns: i64) -> Result<Vec<Count>, StoreError> {
        let bucket = bucket_ns.max(1);
        self.read(|c| {
            c.query(
                "SELECT (first_ns / $1) * $1, priority, count(*) FROM findings \
                 WHERE first_ns >= $2 AND first_ns < $3 GROUP BY 1, 2 ORDER BY 1",
                &[&bucket, &since_ns, &until_ns],
            )?
            .iter()
            .map(|r| Ok(Count { start_ns: r.try_get(0)?, key: r.try_get(1)?, n: u64_of(r.try_get(2)?) }))
            .collect()
        })
    }

    fn rule_finding_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            c.query("SELECT rule, count(*) FROM finding_rules GROUP BY rule", &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, u64_of(r.try_get(1)?))))
                .collect()
        })
    }

    fn cursor(&self, name: &str) -> Result<i64, StoreError> {
        self.read(|c| {
            let rows = c.query("SELECT value FROM cursors WHERE name = $1", &[&name])?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
        })
    }

    fn set_cursor(&mut self, name: &str, value: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
                &[&name, &value],
            )?;
            Ok(())
        })
    }

    fn file_offset(&self, path: &str) -> Result<Option<FileOffset>, StoreError> {
        self.read(|c| {
            let rows = c.query("SELECT dev, ino, byte_offset, line FROM file_offsets WHERE path = $1", &[&path])?;
            let Some(r) = rows.first() else { return Ok(None) };
            // stored as the same 64 bits (bigint is signed)
            Ok(Some(FileOffset {
                path: path.to_owned(),
                dev: r.try_get::<_, i64>(0)? as u64,
                ino: r.try_get::<_, i64>(1)? as u64,
                offset: r.try_get::<_, i64>(2)? as u64,
                line: r.try_get::<_, i64>(3)? as u64,
            }))
        })
    }

    fn set_file_offset(&mut self, off: &FileOffset) -> Result<(), StoreError> {
        let (dev, ino, offset, line) = (off.dev as i64, off.ino as i64, off.offset as i64, off.line as i64);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO file_offsets (path, dev, ino, byte_offset, line) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (path) DO UPDATE SET dev = $2, ino = $3, byte_offset = $4, line = $5",
                &[&off.path, &dev, &ino, &offset, &line],
            )?;
            Ok(())
        })
    }

    fn count_only_from(&self, only: Origin, missing: Origin, before_ns: i64) -> Result<u64, StoreError> {
        let values: Vec<i64> = (1..8_i64).filter(|v| v & only.bit() != 0 && v & missing.bit() == 0).collect();
        self.read(|c| {
            let r = c.query_one(
                "SELECT count(*) FROM events WHERE origins = ANY($1) AND time_ns < $2",
                &[&values, &before_ns],
            )?;
            Ok(u64_of(r.try_get(0)?))
        })
    }

    /// Events with no time are removed only for size, alerts and findings only for age. Whole
    /// days older than the cutoff go by dropping their partition. `max_bytes` bounds the size
    /// of kustody's tables and indexes: the oldest events are removed, as many as the excess
    /// holds at the average size (PostgreSQL reuses the space after vacuum; it does not shrink
    /// the files).
    fn retain(&mut self, now_ns: i64, max_age_ns: Option<i64>, max_bytes: Option<u64>) -> Result<Retained, StoreError> {
        self.retain_(now_ns, max_age_ns, max_bytes).map_err(|f| self.fail(f))
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.stats_().map_err(|f| self.fail(f))
    }

    fn save_intervals(&mut self, intervals: &[crate::Interval]) -> Result<(), StoreError> {
        self.write(|tx| response::save_intervals(tx, intervals))
    }

    fn ip_intervals(&self, ip: &str) -> Result<Vec<crate::Interval>, StoreError> {
        self.read(|c| response::of_ip(c, ip))
    }

    fn pod_intervals(&self, namespace: &str, name: &str) -> Result<Vec<crate::Interval>, StoreError> {
        self.read(|c| response::of_pod(c, namespace, name))
    }

    fn recent_intervals(&self, since_ns: i64, limit: usize) -> Result<Vec<crate::Interval>, StoreError> {
        self.read(|c| response::recent(c, since_ns, limit))
    }

    fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| response::state(c, name))
    }

    fn set_state(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| response::set_state(tx, name, value))
    }

    fn append_bad_records(&mut self, records: &[crate::BadRecord]) -> Result<u64, StoreError> {
        self.write(|tx| bad::append(tx, records))
    }

    fn bad_records(&self, q: &crate::BadRecordQuery) -> Result<Vec<crate::BadRecordRow>, StoreError> {
        self.read(|c| bad::list(c, q))
    }

    fn source_lease(&mut self, name: &str, owner: &str, ttl: std::time::Duration) -> Result<Option<i64>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.write(|tx| bad::lease(tx, name, owner, ttl_ms))
    }

    fn release_source_lease(&mut self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.write(|tx| bad::release(tx, name, owner))
    }

    fn reserve_ids(&mut self) -> Result<(i64, i64, i64), StoreError> {
        let block = schema::ID_BLOCK;
        self.write(|tx| {
            let mut take = |name: &str, max: &str| -> Res<i64> {
                let floor = format!("(SELECT coalesce(max(id), 0) FROM {max}) / $2 + 1");
                let r = tx.query_one(
                    &format!(
                        "INSERT INTO id_blocks (name, block) VALUES ($1, {floor}) ON CONFLICT (name) DO UPDATE SET \
                         block = greatest(id_blocks.block + 1, {floor}) RETURNING block"
                    ),
                    &[&name, &block],
                )?;
                let b: i64 = r.try_get(0)?;
                Ok(b.saturating_mul(block))
            };
            let f = take(
                "findings",
                "(SELECT id FROM findings UNION ALL SELECT finding_id AS id FROM incident_findings) f",
            )?;
            let i = take("incidents", "incidents")?;
            Ok((f, i, block))
        })
    }

    fn stored_event_ids(&self, rows: &[EventRow<'_>]) -> Result<Vec<Option<i64>>, StoreError> {
        let today = now_ns() / schema::DAY_NS;
        let mut ks = Vec::with_capacity(rows.len());
        let (mut a, mut st, mut cl) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            ks.push(schema::time_key_of(r.time_ns, today));
            a.push(opt_key(r.audit_id.as_deref()));
            st.push(opt_key(r.stage.as_deref()));
            cl.push(opt_key(r.cluster.as_deref()));
        }
        self.read(|c| {
            let found = c.query(
                "SELECT d.o, e.id FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
                 AS d(k, a, s, c, o) JOIN events e ON e.time_key = d.k AND e.audit_id = d.a \
                 AND coalesce(e.stage, '') = coalesce(d.s, '') AND coalesce(e.cluster, '') = coalesce(d.c, '')",
                &[&ks, &a, &st, &cl],
            )?;
            let mut out = vec![None; rows.len()];
            for r in found {
                let o: i64 = r.try_get(0)?;
                let id: i64 = r.try_get(1)?;
                if let Some(slot) = usize::try_from(o).ok().and_then(|o| o.checked_sub(1)).and_then(|o| out.get_mut(o))
                {
                    *slot = Some(id);
                }
            }
            Ok(out)
        })
    }

    fn bus_leases(
        &mut self,
        owner: &str,
        partitions: u32,
        ttl: std::time::Duration,
    ) -> Result<Vec<(u32, i64)>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let n = i32::try_from(partitions).unwrap_or(i32::MAX);
        self.write(|tx| {
            let ttl = "now() + make_interval(secs => $2::bigint / 1000.0)";
            tx.execute(
                &format!(
                    "INSERT INTO bus_members (owner, expires) VALUES ($1, {ttl}) ON CONFLICT (owner) DO UPDATE SET \
                     expires = excluded.expires"
                ),
                &[&owner, &ttl_ms],
            )?;
            // not one's own row: two members renewing after an outage would deadlock on each
            // other's expired rows
            tx.execute("DELETE FROM bus_members WHERE expires < now() AND owner <> $1", &[&owner])?;
            let members: i64 = tx.query_one("SELECT count(*) FROM bus_members", &[])?.try_get(0)?;
            tx.execute(
                "INSERT INTO bus_leases (part, owner, epoch, expires) SELECT g, '', 0, '-infinity' FROM \
                 generate_series(0, $1::integer - 1) g ON CONFLICT (part) DO NOTHING",
                &[&n],
            )?;
            // partitions beyond the count (a smaller count configured) are nobody's
            tx.execute("DELETE FROM bus_leases WHERE part >= $1", &[&n])?;
            let fair = (i64::from(n) + members.max(1) - 1) / members.max(1);
            let mut mine: Vec<(i32, i64)> = tx
                .query(
                    &format!("UPDATE bus_leases SET expires = {ttl} WHERE owner = $1 RETURNING part, epoch"),
                    &[&owner, &ttl_ms],
                )?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Res<_>>()?;
            mine.sort_unstable();
            let have = i64::try_from(mine.len()).unwrap_or(i64::MAX);
            if have > fair {
                let extra: Vec<i32> = mine.iter().skip(usize::try_from(fair).unwrap_or(0)).map(|m| m.0).collect();
                tx.execute(
                    "UPDATE bus_leases SET owner = '', expires = '-infinity' WHERE owner = $1 AND part = ANY($2)",
                    &[&owner, &extra],
                )?;
                mine.retain(|m| !extra.contains(&m.0));
            } else if have < fair {
                let want = fair - have;
                let taken = tx.query(
                    &format!(
                        "UPDATE bus_leases SET owner = $1, epoch = epoch + 1, expires = {ttl} WHERE part IN \
                         (SELECT part FROM bus_leases WHERE expires < now() ORDER BY part LIMIT $3 FOR UPDATE SKIP \
                         LOCKED) RETURNING part, epoch"
                    ),
                    &[&owner, &ttl_ms, &want],
                )?;
                for r in taken {
                    mine.push((r.try_get(0)?, r.try_get(1)?));
                }
                mine.sort_unstable();
            }
            Ok(mine.into_iter().map(|(p, e)| (u32::try_from(p).unwrap_or(0), e)).collect())
        })
    }

    fn release_leases(&mut self, owner: &str, only: Option<&[u32]>) -> Result<(), StoreError> {
        self.write(|tx| {
            match only {
                Some(parts) => {
                    let parts: Vec<i32> = parts.iter().map(|p| i32::try_from(*p).unwrap_or(i32::MAX)).collect();
                    tx.execute(
                        "UPDATE bus_leases SET owner = '', expires = '-infinity' WHERE owner = $1 AND part = ANY($2)",
                        &[&owner, &parts],
                    )?;
                }
                None => {
                    tx.execute("UPDATE bus_leases SET owner = '', expires = '-infinity' WHERE owner = $1", &[&owner])?;
                    tx.execute("DELETE FROM bus_members WHERE owner = $1", &[&owner])?;
                }
            }
            Ok(())
        })
    }
}

/// `text` as stored: its zstd frame when smaller, else its bytes.
fn stored_bytes(enc: &mut Encoder, text: &str) -> Vec<u8> {
    match enc.compress(text) {
        Some(frame) => frame.to_vec(),
        None => text.as_bytes().to_vec(),
    }
}

/// An append's columns, as arrays.
#[derive(Default)]
struct EventColumns {
    id: Vec<i64>,
    time_key: Vec<i64>,
    time: Vec<Option<i64>>,
    audit: Vec<Option<String>>,
    stage: Vec<Option<String>>,
    user: Vec<Option<String>>,
    sa: Vec<Option<String>>,
    pod: Vec<Option<String>>,
    ns: Vec<Option<String>>,
    resource: Vec<Option<String>>,
    sub: Vec<Option<String>>,
    name: Vec<Option<String>>,
    verb: Vec<Option<String>>,
    code: Vec<Option<i64>>,
    ua: Vec<Option<String>>,
    len: Vec<i64>,
    body: Vec<Vec<u8>>,
    src_pod: Vec<Option<String>>,
    cluster: Vec<Option<String>>,
}

impl EventColumns {
    fn with_capacity(n: usize) -> EventColumns {
        EventColumns { id: Vec::with_capacity(n), body: Vec::with_capacity(n), ..Default::default() }
    }

    /// `today`: the writer's day (partition window). Indexed columns hold [`key`]s.
    fn push(&mut self, id: i64, ev: &EventRow<'_>, enc: &mut Encoder, today: i64) {
        let k = |v: &Option<std::borrow::Cow<'_, str>>| opt_key(v.as_deref());
        self.id.push(id);
        self.time_key.push(schema::time_key_of(ev.time_ns, today));
        self.time.push(ev.time_ns);
        self.audit.push(k(&ev.audit_id));
        self.stage.push(k(&ev.stage));
        self.user.push(k(&ev.user));
        self.sa.push(opt(ev.service_account.as_deref()));
        self.pod.push(opt_key(ev.pod.as_deref()));
        self.ns.push(k(&ev.namespace));
        self.resource.push(k(&ev.resource));
        self.sub.push(k(&ev.subresource));
        self.name.push(k(&ev.name));
        self.verb.push(k(&ev.verb));
        self.code.push(ev.code);
        self.ua.push(opt(ev.user_agent.as_deref()));
        self.len.push(i64::try_from(ev.raw.len()).unwrap_or(i64::MAX));
        self.body.push(stored_bytes(enc, &ev.raw));
        self.src_pod.push(opt_key(ev.source_pod.as_deref()));
        self.cluster.push(opt_key(ev.cluster.as_deref()));
    }
}

/// Creates the partition of `day` unless another writer did (under a per-day advisory lock).
fn create_partition(tx: &mut Transaction<'_>, day: i64) -> Res<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(schema::MIGRATION_LOCK ^ day)])?;
    // it locks `events` exclusively for a moment: never queue behind a long search for long
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")?;
    let lo = day.saturating_mul(schema::DAY_NS);
    let hi = lo.saturating_add(schema::DAY_NS);
    // names and bounds are numbers this code made, not input text
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({lo}) TO ({hi})",
        schema::partition(day)
    ))?;
    Ok(())
}

/// Writes one transaction's changes to the per-minute counts (accumulated as SQLite does).
fn write_minutes(tx: &mut Transaction<'_>, minutes: &Minutes) -> Res<()> {
    for (table, col, map) in
        [("event_minutes_ns", "namespace", &minutes.ns), ("event_minutes_user", "username", &minutes.user)]
    {
        // keys as `text` holds them; two that become the same are one row
        let mut merged: HashMap<(i64, String), i64> = HashMap::with_capacity(map.len());
        for ((m, k), n) in map {
            *merged.entry((*m, text(k))).or_default() += n;
        }
        let (mut ms, mut ks, mut ns) = (Vec::new(), Vec::new(), Vec::new());
        for ((m, k), n) in &merged {
            if *n != 0 {
                ms.push(*m);
                ks.push(k.as_str());
                ns.push(*n);
            }
        }
        if ms.is_empty() {
            continue;
        }
        tx.execute(
            &format!(
                "INSERT INTO {table} (minute, {col}, n) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[]) \
                 ON CONFLICT (minute, {col}) DO UPDATE SET n = {table}.n + excluded.n"
            ),
            &[&ms, &ks, &ns],
        )?;
        if ns.iter().any(|n| *n < 0) {
            tx.execute(&format!("DELETE FROM {table} WHERE n <= 0"), &[])?;
        }
    }
    Ok(())
}

/// Adds to the named totals, in the caller's transaction.
fn add_totals(tx: &mut Transaction<'_>, deltas: &[(&str, i64)]) -> Res<()> {
    for (name, d) in deltas {
        if *d != 0 {
            tx.execute("UPDATE totals SET value = value + $2 WHERE name = $1", &[name, d])?;
        }
    }
    Ok(())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
}
