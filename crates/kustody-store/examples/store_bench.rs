//! Append and search throughput of the SQLite store.
//!
//! ```text
//! cargo run --release -p kustody-store --example store_bench -- [EVENTS] [DIR]
//! ```
//!
//! Appends EVENTS (default 1,000,000) synthetic audit events of ~1.5 KB (varied users, service
//! accounts, namespaces, IPs, resources, names; random auditIDs) in batches of 400, each batch
//! its own committed (fsync'd) transaction, into DIR (default: a temporary directory on the
//! same file system as `$TMPDIR`). Prints the append rate, the original text's MB/s, bytes on
//! disk per event, commit latencies, then search latencies by user and other filters. First it
//! compares zstd levels, with and without a trained dictionary, on a sample of the same events
//! (`STORE_BENCH_LEVELS=0` skips that). `STORE_BENCH_BATCH` changes the batch size;
//! `STORE_BENCH_DROP_INDEXES=events_name,events_pod` drops indexes first (what each costs).
//!
//! What it showed (2 vCPUs, ext4 on a virtual disk, another build often running beside it):
//! - zstd per event without a dictionary: ratio 2.0 at level 1 (levels 2–5: 2.0–2.03 for up to
//!   2.5× the time); with a 64 KiB dictionary trained on 5,000 other events: ratio 6.8 and 3×
//!   faster both ways. Hence level 1 and trained dictionaries.
//! - The cost of an append is the WAL, not compression: every B-tree page a commit touches is
//!   written whole (4 KiB) to the WAL, and an index on a high-cardinality key (auditID, object
//!   name, pod, IP, user) touches about one page per distinct key in the batch, anywhere in
//!   the index. With such plain indexes a 400-event commit wrote ~850 pages at 40k events and
//!   more as the store grew: 1M events went in at 5.3k events/s (10.6k/s for the first 100k,
//!   4k/s at the end). Without secondary indexes 16.7k/s (with the dedup index on (auditID,
//!   stage)) and 71k/s (table and time index only).
//! - Hence indexes on those keys lead with the id's bucket (4096 events) and the dedup key
//!   with the time: 1M events at 16–17.6k events/s, flat as the store grows, commit p50 ~20
//!   ms; searches by a key walk buckets newest first (rare keys: ~4 ms at 1M events, ~17 µs a
//!   bucket).
//! - Bigger transactions help: 4,000 events per commit ran 1.7× the rate of 400 with plain
//!   indexes. `synchronous=NORMAL` (no fsync per commit, not acceptable here) ran ~1.8×.
//! - Page sizes of 1, 2 and 8 KiB were slower than 4 KiB or no better; a background
//!   checkpointing thread did not help (the WAL cannot restart while the writer commits
//!   continuously), so the writer checkpoints itself (every 8 MiB of WAL since session 7: the
//!   checkpoint is the tail of the acknowledgement latency).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kustody_model::Event;
use kustody_store::{EventQuery, EventRow, Origin, SqliteStore, Store};

/// Events per append (one transaction); `STORE_BENCH_BATCH` overrides it.
fn batch() -> usize {
    std::env::var("STORE_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).filter(|&b| b > 0).unwrap_or(400)
}
/// 2026-11-23T00:00:00Z.
const BASE_NS: i64 = 1_795_392_000_000_000_000;

/// xorshift64*: reproducible, fast, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Zipf-ish: small indexes much more often (a few busy users, many quiet ones).
    fn skewed(&mut self, n: usize) -> usize {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b).min(self.below(n))
    }
}

const NAMESPACES: usize = 60;
const HUMANS: usize = 200;
const SERVICE_ACCOUNTS: usize = 300;
const IPS: usize = 1000;
const RESOURCES: [(&str, &str); 12] = [
    ("pods", ""),
    ("configmaps", ""),
    ("secrets", ""),
    ("services", ""),
    ("endpoints", ""),
    ("deployments", "apps"),
    ("replicasets", "apps"),
    ("leases", "coordination.k8s.io"),
    ("events", ""),
    ("serviceaccounts", ""),
    ("roles", "rbac.authorization.k8s.io"),
    ("jobs", "batch"),
];
const VERBS: [&str; 8] = ["get", "list", "watch", "update", "patch", "create", "delete", "get"];

fn user(rng: &mut Rng) -> (String, bool) {
    if rng.below(3) == 0 {
        (format!("user{}@example.com", rng.skewed(HUMANS)), false)
    } else {
        let sa = rng.skewed(SERVICE_ACCOUNTS);
        (format!("system:serviceaccount:ns{}:sa{sa}", sa % NAMESPACES), true)
    }
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// One realistic audit event (RequestResponse-ish metadata, ~1.5 KB).
fn event(rng: &mut Rng, seq: u64, out: &mut String) {
    out.clear();
    let (username, is_sa) = user(rng);
    let ns = rng.skewed(NAMESPACES);
    let (resource, group) = RESOURCES[rng.skewed(RESOURCES.len())];
    let verb = VERBS[rng.below(VERBS.len())];
    let name = format!("{}-{}", resource.trim_end_matches('s'), rng.skewed(5000));
    let ip = rng.skewed(IPS);
    let ts = kustody_model::time::format_rfc3339_nanos(BASE_NS + (seq as i64) * 100_000);
    let received = kustody_model::time::format_rfc3339_nanos(BASE_NS + (seq as i64) * 100_000 - 1_500_000);
    let audit = uuid(rng);
    let uid = uuid(rng);
    let api = if group.is_empty() { "v1".to_owned() } else { format!("{group}/v1") };
    let prefix = if group.is_empty() { "/api/v1".to_owned() } else { format!("/apis/{group}/v1") };
    let extra = if is_sa {
        format!(
            r#","extra":{{"authentication.kubernetes.io/credential-id":["JTI={}"],"authentication.kubernetes.io/node-name":["node-{}"],"authentication.kubernetes.io/node-uid":["{}"],"authentication.kubernetes.io/pod-name":["pod-{}-{}"],"authentication.kubernetes.io/pod-uid":["{}"]}}"#,
            uuid(rng),
            rng.below(50),
            uuid(rng),
            rng.below(100),
            rng.below(1000),
            uuid(rng)
        )
    } else {
        String::new()
    };
    let groups = if is_sa {
        format!(r#"["system:serviceaccounts","system:serviceaccounts:ns{ns}","system:authenticated"]"#)
    } else {
        r#"["developers","system:authenticated"]"#.to_owned()
    };
    let code = if rng.below(20) == 0 {
        403
    } else if verb == "create" {
        201
    } else {
        200
    };
    let _ = write!(
        out,
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit}","stage":"ResponseComplete","requestURI":"{prefix}/namespaces/ns{ns}/{resource}/{name}?timeout=10s","verb":"{verb}","user":{{"username":"{username}","uid":"{uid}","groups":{groups}{extra}}},"sourceIPs":["10.{}.{}.{}"],"userAgent":"kube-controller-manager/v1.31.2 (linux/amd64) kubernetes/5864a46/{}","objectRef":{{"resource":"{resource}","namespace":"ns{ns}","name":"{name}","uid":"{}","apiGroup":"{group}","apiVersion":"{api}","resourceVersion":"{}"}},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestReceivedTimestamp":"{received}","stageTimestamp":"{ts}","annotations":{{"authorization.k8s.io/decision":"{}","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:controller:{username}\" of ClusterRole \"system:controller:{resource}-controller\" to ServiceAccount \"{username}/kube-system\"","apiserver.latency.k8s.io/etcd":"{}ms","apiserver.latency.k8s.io/response-write":"{}us","apiserver.latency.k8s.io/serialize-response-object":"{}us","apiserver.latency.k8s.io/total":"{}ms","apiserver.latency.k8s.io/transform-response-object":"{}us"}}}}"#,
        ip / 250,
        (ip / 10) % 25,
        ip % 250 + 1,
        ["replicaset-controller", "deployment-controller", "endpoint-controller", "shared-informers"][rng.below(4)],
        uuid(rng),
        rng.below(10_000_000),
        if code == 403 { "forbid" } else { "allow" },
        rng.below(30),
        rng.below(900),
        rng.below(900),
        rng.below(40),
        rng.below(900),
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// CPU time (user + system) of this process so far, from /proc (Linux), for the share of
/// the wall time the benchmark actually ran (another build on the same cores inflates wall time).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// zstd levels on a sample of the events: ratio and compression speed.
fn compare_levels(rng: &mut Rng) {
    let mut text = String::new();
    let sample: Vec<String> = (0..20_000)
        .map(|i| {
            event(rng, i, &mut text);
            text.clone()
        })
        .collect();
    let raw: usize = sample.iter().map(String::len).sum();
    println!("zstd on {} events of {} B on average (one frame per event):", sample.len(), raw / sample.len());
    // A dictionary trained on other events of the same kind.
    let mut train_rng = Rng(99);
    let training: Vec<String> = (0..5000)
        .map(|i| {
            event(&mut train_rng, i, &mut text);
            text.clone()
        })
        .collect();
    for dsize in [16 << 10, 64 << 10, 112 << 10] {
        let t = Instant::now();
        let dict = zstd::dict::from_samples(&training, dsize).unwrap();
        let train = t.elapsed();
        for level in [1, 3] {
            let cd = zstd::dict::EncoderDictionary::copy(&dict, level);
            let mut zc = zstd::bulk::Compressor::with_prepared_dictionary(&cd).unwrap();
            let t = Instant::now();
            let mut packed = 0;
            for s in &sample {
                packed += zc.compress(s.as_bytes()).unwrap().len();
            }
            let c = t.elapsed();
            let frames: Vec<Vec<u8>> = sample.iter().map(|s| zc.compress(s.as_bytes()).unwrap()).collect();
            let dd = zstd::dict::DecoderDictionary::copy(&dict);
            let mut zd = zstd::bulk::Decompressor::with_prepared_dictionary(&dd).unwrap();
            let t = Instant::now();
            for (f, s) in frames.iter().zip(&sample) {
                zd.decompress(f, s.len()).unwrap();
            }
            let d = t.elapsed();
            println!(
                "  dict {:>3} KiB (trained in {:.2} s on 5000 events), level {level}: ratio {:.2}, {:>4} B/event, compress {:>4.0} MB/s ({:.1} µs/event), decompress {:>4.0} MB/s",
                dict.len() >> 10,
                train.as_secs_f64(),
                raw as f64 / packed as f64,
                packed / sample.len(),
                raw as f64 / c.as_secs_f64() / 1e6,
                c.as_secs_f64() * 1e6 / sample.len() as f64,
                raw as f64 / d.as_secs_f64() / 1e6,
            );
        }
    }
    for level in [-1, 1, 2, 3, 5] {
        let mut zc = zstd::bulk::Compressor::new(level).unwrap();
        let t = Instant::now();
        let mut packed = 0;
        for s in &sample {
            packed += zc.compress(s.as_bytes()).unwrap().len();
        }
        let c = t.elapsed();
        let frames: Vec<Vec<u8>> = sample.iter().map(|s| zc.compress(s.as_bytes()).unwrap()).collect();
        let mut zd = zstd::bulk::Decompressor::new().unwrap();
        let t = Instant::now();
        for (f, s) in frames.iter().zip(&sample) {
            zd.decompress(f, s.len()).unwrap();
        }
        let d = t.elapsed();
        println!(
            "  level {level:>2}: ratio {:.2}, {:>4} B/event, compress {:>4.0} MB/s ({:.1} µs/event), decompress {:>4.0} MB/s",
            raw as f64 / packed as f64,
            packed / sample.len(),
            raw as f64 / c.as_secs_f64() / 1e6,
            c.as_secs_f64() * 1e6 / sample.len() as f64,
            raw as f64 / d.as_secs_f64() / 1e6,
        );
    }
}

fn drop_indexes(dir: &std::path::Path, names: &str) {
    drop(SqliteStore::open(dir).unwrap());
    let c = rusqlite::Connection::open(dir.join(kustody_store::sqlite::DB_FILE)).unwrap();
    for name in names.split(',').filter(|n| !n.is_empty()) {
        // Index names are ours, from the command line: quoted as identifiers.
        c.execute_batch(&format!("DROP INDEX IF EXISTS \"{}\"", name.replace('"', "\"\""))).unwrap();
        eprintln!("dropped index {name}");
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1_000_000, |a| a.replace('_', "").parse().expect("EVENTS: a number"));
    let tmp;
    let dir = match args.next() {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_owned()
        }
    };
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    if std::env::var("STORE_BENCH_LEVELS").as_deref() != Ok("0") {
        compare_levels(&mut Rng(7));
    }

    // `STORE_BENCH_DROP_INDEXES=events_name,...`: what an index costs (searches then scan).
    if let Ok(drop) = std::env::var("STORE_BENCH_DROP_INDEXES") {
        drop_indexes(&dir, &drop);
    }
    if let Ok(sql) = std::env::var("STORE_BENCH_EXPERIMENT_SQL") {
        drop(SqliteStore::open(&dir).unwrap());
        rusqlite::Connection::open(dir.join(kustody_store::sqlite::DB_FILE)).unwrap().execute_batch(&sql).unwrap();
    }
    let mut s = SqliteStore::open(&dir).unwrap();
    let mut texts: Vec<String> = (0..batch()).map(|_| String::new()).collect();
    let mut commits = Vec::with_capacity(n / batch() + 1);
    let (mut gen, mut parse) = (Duration::ZERO, Duration::ZERO);
    let mut text_bytes = 0usize;
    let mut stored = 0u64;
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut seq = 0u64;
    while (seq as usize) < n {
        let k = batch().min(n - seq as usize);
        let t = Instant::now();
        for text in texts.iter_mut().take(k) {
            event(&mut rng, seq, text);
            seq += 1;
            text_bytes += text.len();
        }
        gen += t.elapsed();
        let t = Instant::now();
        let rows: Vec<EventRow<'_>> = texts.iter().take(k).map(|t| EventRow::of(&Event::parse(t).unwrap())).collect();
        parse += t.elapsed();
        let t = Instant::now();
        let a = s.append_events(&rows, Origin::Webhook).unwrap();
        commits.push(t.elapsed());
        stored += a.stored;
        if commits.len() % 250 == 0 {
            let so_far: Duration = commits.iter().sum();
            eprint!("\r{seq} events, {:.0}/s   ", seq as f64 / so_far.as_secs_f64());
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    eprintln!();
    let store_time: Duration = commits.iter().sum();
    commits.sort();
    let st = s.stats().unwrap();
    let used = s.used_bytes().unwrap();
    println!(
        "\nappended {n} events ({stored} stored) in batches of {}, one fsync'd commit each, into {}",
        batch(),
        dir.display()
    );
    println!(
        "  append: {:.0} events/s, {:.1} MB/s of original text ({:.2} s in append_events)",
        n as f64 / store_time.as_secs_f64(),
        text_bytes as f64 / store_time.as_secs_f64() / 1e6,
        store_time.as_secs_f64()
    );
    println!(
        "  with parsing (Event::parse + EventRow::of, {:.2} s): {:.0} events/s; generating took {:.2} s; wall {:.2} s",
        parse.as_secs_f64(),
        n as f64 / (store_time + parse).as_secs_f64(),
        gen.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "  process CPU time over the whole loop: {:.2} s ({:.1} µs/event incl. generating and parsing) for {:.2} s wall",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        wall.as_secs_f64()
    );
    println!(
        "  commit latency (batch of {}): p50 {}, p99 {}, max {}",
        batch(),
        ms(pct(&commits, 0.5)),
        ms(pct(&commits, 0.99)),
        ms(pct(&commits, 1.0))
    );
    println!(
        "  text {:.0} B/event; on disk {:.0} B/event (db+wal {:.1} MB), pages in use {:.0} B/event ({:.1} MB)",
        text_bytes as f64 / n as f64,
        dir_bytes(&dir) as f64 / stored as f64,
        st.bytes as f64 / 1e6,
        used as f64 / stored as f64,
        used as f64 / 1e6
    );

    // Searches, from a reader beside the open writer (as the HTTP handlers do).
    let r = SqliteStore::open_read_only(&dir).unwrap();
    let mut probe = Rng(42);
    let mut time_queries = |label: &str, make: &mut dyn FnMut(&mut Rng) -> EventQuery| {
        let mut lat = Vec::new();
        let mut rows = 0;
        for _ in 0..15 {
            let q = make(&mut probe);
            let t = Instant::now();
            rows += r.search_events(&q).unwrap().len();
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "  {label:<44} p50 {:>9}  max {:>9}  ({:.0} rows/query)",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 1.0)),
            rows as f64 / lat.len() as f64
        );
    };
    println!("\nsearch over {} events (limit 100, newest first; 15 queries each):", st.events);
    time_queries("by user (a service account)", &mut |g| EventQuery {
        user: Some({
            let sa = g.below(20);
            format!("system:serviceaccount:ns{}:sa{sa}", sa % NAMESPACES)
        }),
        ..Default::default()
    });
    time_queries("by user (a rare human, limit 100)", &mut |g| EventQuery {
        user: Some(format!("user{}@example.com", 150 + g.below(50))),
        ..Default::default()
    });
    time_queries("by service account + verb=delete", &mut |g| EventQuery {
        service_account: Some({
            let sa = g.below(30);
            format!("ns{}/sa{sa}", sa % NAMESPACES)
        }),
        verb: Some("delete".into()),
        ..Default::default()
    });
    time_queries("by source IP", &mut |g| {
        let ip = g.below(IPS);
        EventQuery { ip: Some(format!("10.{}.{}.{}", ip / 250, (ip / 10) % 25, ip % 250 + 1)), ..Default::default() }
    });
    time_queries("by namespace + resource=secrets", &mut |g| EventQuery {
        namespace: Some(format!("ns{}", g.below(NAMESPACES))),
        resource: Some("secrets".into()),
        ..Default::default()
    });
    time_queries("by object name", &mut |g| EventQuery {
        name: Some(format!("pod-{}", g.below(5000))),
        ..Default::default()
    });
    let span = n as i64 * 100_000;
    time_queries("by time window (1% of the span)", &mut |g| {
        let from = BASE_NS + (g.below(99) as i64) * span / 100;
        EventQuery { since_ns: Some(from), until_ns: Some(from + span / 100), ..Default::default() }
    });
    time_queries("newest (no filter), page 2 of a user", &mut |g| {
        let q = EventQuery {
            user: Some({
                let sa = g.below(10);
                format!("system:serviceaccount:ns{}:sa{sa}", sa % NAMESPACES)
            }),
            ..Default::default()
        };
        let first = r.search_events(&q).unwrap();
        EventQuery { before_id: first.last().map(|e| e.id), ..q }
    });
    let t = Instant::now();
    let st = r.stats().unwrap();
    println!("  stats(): {} ({} events)", ms(t.elapsed()), st.events);
}
