//! The store's contract, run against every backend: each test is a function generic over a
//! [`Backend`] (how to open a store in a directory), instantiated per backend by `suite!` at
//! the end. Backend-specific tests (SQLite's schema versions, its full-disk handling) follow.
//!
//! Events are built from small synthetic audit events embedded here; one test also stores the
//! recorded kube-apiserver fixture from `../shared` when it is present.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use kustody_model::{Event, Priority};
use kustody_store::{
    AlertQuery, AlertRow, Attempt, Batch, CountBy, CountQuery, EventQuery, EventRow, FileOffset, FindingQuery,
    FindingRow, IncidentQuery, IncidentRow, IncidentWrite, KeyColumn, MatchRow, NoteRow, OneOf, Origin, OutboxQuery,
    OutboxState, OutboxWrite, Ref, SqliteStore, Store, StoreError, StoredEvent,
};
use serde_json::json;

/// How to open a store of one backend.
trait Backend: 'static {
    type S: Store;
    /// Whether the backend can run here (else its tests print a skip notice and pass).
    fn available() -> bool {
        true
    }
    /// The writer.
    fn open(dir: &Path) -> Self::S;
    /// A reader beside the writer.
    fn reader(dir: &Path) -> Self::S;
}

struct Sqlite;

impl Backend for Sqlite {
    type S = SqliteStore;
    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir).unwrap()
    }
    fn reader(dir: &Path) -> SqliteStore {
        SqliteStore::open_read_only(dir).unwrap()
    }
}

/// PostgreSQL (feature `postgres`): one throwaway server for the test process
/// (`kustody_testkit::postgres`), a database per test directory. Without PostgreSQL installed
/// the tests print a skip notice (and fail under `CI=true`).
#[cfg(feature = "postgres")]
mod pg {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    use kustody_store::{PgConfig, PgStore};
    use kustody_testkit::postgres::Postgres;

    pub struct Pg;

    static SERVER: OnceLock<Option<Postgres>> = OnceLock::new();
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

    /// The connection settings of the database standing for `dir`, created on first use.
    pub fn config(dir: &Path) -> Option<PgConfig> {
        let server = SERVER.get_or_init(Postgres::start).as_ref()?;
        let mut dbs = DATABASES.lock().unwrap();
        let dbs = dbs.get_or_insert_with(HashMap::new);
        let next = dbs.len();
        let name = dbs
            .entry(dir.to_owned())
            .or_insert_with(|| {
                let name = format!("t{}_{next}", std::process::id());
                server.create_db(&name);
                name
            })
            .clone();
        Some(PgConfig::new(server.url(&name).into(), None).unwrap())
    }

    impl super::Backend for Pg {
        type S = PgStore;
        fn available() -> bool {
            SERVER.get_or_init(Postgres::start).is_some()
        }
        fn open(dir: &Path) -> PgStore {
            PgStore::open(&config(dir).unwrap()).unwrap()
        }
        fn reader(dir: &Path) -> PgStore {
            PgStore::open_read_only(&config(dir).unwrap()).unwrap()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic audit events.

/// 2026-11-23T00:00:00Z.
const BASE_NS: i64 = 1_795_392_000_000_000_000;
const SEC: i64 = 1_000_000_000;

/// The parts of a synthetic audit event.
#[derive(Clone)]
struct Ev {
    audit_id: Option<String>,
    stage: &'static str,
    user: String,
    namespace: Option<&'static str>,
    resource: Option<&'static str>,
    name: Option<String>,
    verb: &'static str,
    ips: Vec<&'static str>,
    /// Seconds after [`BASE_NS`].
    t: i64,
    /// `user.extra` pod-name of a bound service-account token.
    bound_pod: Option<&'static str>,
    /// Bytes of filler in `requestObject` (to make big events).
    pad: usize,
}

fn ev(n: usize) -> Ev {
    Ev {
        audit_id: Some(format!("00000000-0000-4000-8000-{n:012}")),
        stage: "ResponseComplete",
        user: "alice".into(),
        namespace: Some("default"),
        resource: Some("configmaps"),
        name: Some(format!("cm-{n}")),
        verb: "get",
        ips: vec!["10.0.0.1"],
        t: i64::try_from(n).unwrap(),
        bound_pod: None,
        pad: 0,
    }
}

impl Ev {
    fn json(&self) -> String {
        let ts = kustody_model::time::format_rfc3339_nanos(BASE_NS + self.t * SEC);
        let mut user = json!({"username": self.user, "groups": ["system:authenticated"]});
        if let Some(p) = self.bound_pod {
            user["extra"] = json!({"authentication.kubernetes.io/pod-name": [p]});
        }
        let mut v = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Request",
            "stage": self.stage,
            "requestURI": "/api/v1/x",
            "verb": self.verb,
            "user": user,
            "sourceIPs": self.ips,
            "userAgent": "kubectl/v1.31.0",
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": ts,
            "stageTimestamp": ts,
        });
        if let Some(id) = &self.audit_id {
            v["auditID"] = json!(id);
        }
        let mut obj = serde_json::Map::new();
        for (k, val) in [
            ("resource", self.resource.map(str::to_owned)),
            ("namespace", self.namespace.map(str::to_owned)),
            ("name", self.name.clone()),
        ] {
            if let Some(val) = val {
                obj.insert(k.into(), json!(val));
            }
        }
        if !obj.is_empty() {
            v["objectRef"] = serde_json::Value::Object(obj);
        }
        if self.pad > 0 {
            // Pseudo-random hex: compresses like real opaque data (certificates, tokens).
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ self.t as u64;
            let pad: String = (0..self.pad)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b"0123456789abcdef"[(x & 15) as usize])
                })
                .collect();
            v["requestObject"] = json!({"data": {"blob": pad}});
        }
        v.to_string()
    }
}

/// The rows of `texts`, parsed as audit events.
fn rows(texts: &[String]) -> Vec<EventRow<'_>> {
    texts.iter().map(|t| EventRow::of(&Event::parse(t).unwrap_or_else(|e| panic!("{e}: {t}")))).collect()
}

fn texts(evs: &[Ev]) -> Vec<String> {
    evs.iter().map(Ev::json).collect()
}

/// Stores `evs` through `origin`; returns their texts and ids.
fn put(s: &mut impl Store, evs: &[Ev], origin: Origin) -> (Vec<String>, Vec<Option<i64>>) {
    let t = texts(evs);
    let a = s.append_events(&rows(&t), origin).unwrap();
    (t, a.ids)
}

fn ids(found: &[StoredEvent]) -> Vec<i64> {
    found.iter().map(|e| e.id).collect()
}

/// Every stored event, oldest first.
fn all_events(s: &impl Store) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = s.events_after(after, 1000).unwrap();
        let Some(last) = batch.last() else { return out };
        after = last.id;
        out.extend(batch);
    }
}

fn find(s: &impl Store, q: EventQuery) -> Vec<i64> {
    ids(&s.search_events(&q).unwrap())
}

fn q() -> EventQuery {
    EventQuery::default()
}

// ---------------------------------------------------------------------------------------------
// The contract.

fn append_and_dedup<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let a = ev(1);
    let texts = texts(std::slice::from_ref(&a));
    let first = s.append_events(&rows(&texts), Origin::Webhook).unwrap();
    assert_eq!((first.stored, first.duplicates), (1, 0));
    let id = first.ids[0].unwrap();

    // The same event from the file: one row, both origins.
    let again = s.append_events(&rows(&texts), Origin::File).unwrap();
    assert_eq!(again.ids, vec![None]);
    assert_eq!((again.stored, again.duplicates), (0, 1));
    let stored = all_events(&s);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].origins, Origin::Webhook.bit() | Origin::File.bit());
    assert_eq!(stored[0].raw, texts[0], "the text comes back exactly");
    assert_eq!(stored[0].audit_id.as_deref(), a.audit_id.as_deref());
    assert_eq!(stored[0].stage.as_deref(), Some("ResponseComplete"));
    assert_eq!(stored[0].time_ns, Some(BASE_NS + SEC));

    // Another stage of the same request is another event.
    let started = Ev { stage: "ResponseStarted", ..a.clone() };
    let (_, ids2) = put(&mut s, std::slice::from_ref(&started), Origin::Webhook);
    assert!(ids2[0].unwrap() > id);

    // Without an auditID nothing is a duplicate, even the same text twice in one batch.
    let anon = Ev { audit_id: None, ..ev(2) };
    let (_, ids3) = put(&mut s, &[anon.clone(), anon], Origin::Webhook);
    assert!(ids3.iter().all(Option::is_some));

    // Duplicates inside one batch, and a batch mixing new and known events.
    let (_, ids4) = put(&mut s, &[ev(3), ev(3), started, ev(4)], Origin::Replay);
    assert!(ids4[0].is_some() && ids4[1].is_none() && ids4[2].is_none() && ids4[3].is_some());
    assert!(ids4[0] < ids4[3], "ids grow in batch order");
    let st = s.stats().unwrap();
    assert_eq!(st.events, 6);
    assert_eq!(all_events(&s).len(), 6);
    let replayed = s.search_events(&EventQuery { audit_id: ev(3).audit_id, ..q() }).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].origins, Origin::Replay.bit());
    let started = s.search_events(&EventQuery { audit_id: a.audit_id, ..q() }).unwrap();
    assert_eq!(started.len(), 2);
    assert_eq!(started.iter().find(|e| e.stage.as_deref() == Some("ResponseStarted")).unwrap().origins, 5);

    // An empty batch is fine.
    let none = s.append_events(&[], Origin::Webhook).unwrap();
    assert_eq!((none.ids.len(), none.stored, none.duplicates), (0, 0, 0));
}

fn ids_and_events_after<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let evs: Vec<Ev> = (0..250).map(ev).collect();
    let (texts, got) = put(&mut s, &evs, Origin::Webhook);
    let got: Vec<i64> = got.into_iter().map(Option::unwrap).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let first = s.events_after(0, 10).unwrap();
    assert_eq!(ids(&first), got[..10].to_vec());
    let rest = s.events_after(got[9], 1000).unwrap();
    assert_eq!(rest.len(), 240);
    assert_eq!(rest.iter().map(|e| e.raw.clone()).collect::<Vec<_>>(), texts[10..].to_vec());
    assert!(s.events_after(got[249], 10).unwrap().is_empty());
    assert_eq!(s.events_after(0, 0).unwrap().len(), 100, "limit 0 is the default");
    assert_eq!(s.events_after(i64::MIN, 3).unwrap().len(), 3);
    assert!(s.events_after(i64::MAX, 3).unwrap().is_empty());
}

/// A small population with one distinctive event per filter.
fn population() -> Vec<Ev> {
    let mut v: Vec<Ev> = (0..40).map(ev).collect();
    v.push(Ev {
        user: "system:serviceaccount:shop:cart".into(),
        bound_pod: Some("cart-7d9f"),
        namespace: Some("shop"),
        resource: Some("secrets"),
        name: Some("db-password".into()),
        verb: "list",
        ips: vec!["10.9.9.9", "192.0.2.7"],
        ..ev(100)
    });
    v.push(Ev {
        user: "bob".into(),
        namespace: Some("kube-system"),
        resource: Some("pods"),
        name: Some("etcd-0".into()),
        verb: "delete",
        ips: vec!["192.0.2.7"],
        ..ev(101)
    });
    v.push(Ev {
        user: "bob".into(),
        namespace: None,
        resource: Some("nodes"),
        name: Some("node-1".into()),
        verb: "patch",
        ..ev(102)
    });
    v.extend((0..10).map(|i| Ev { user: "bob".into(), verb: "create", ..ev(200 + i) }));
    v
}

fn search_each_filter<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let pop = population();
    let (_, got) = put(&mut s, &pop, Origin::Webhook);
    let id = |n: usize| got[pop.iter().position(|e| e.t == i64::try_from(n).unwrap()).unwrap()].unwrap();
    let some = |v: &str| Some(v.to_owned());

    assert_eq!(find(&s, EventQuery { service_account: some("shop/cart"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { user: some("system:serviceaccount:shop:cart"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { pod: some("shop/cart-7d9f"), ..q() }), vec![id(100)]);
    // A request about a pod is found by that pod.
    assert_eq!(find(&s, EventQuery { pod: some("kube-system/etcd-0"), ..q() }), vec![id(101)]);
    assert_eq!(find(&s, EventQuery { ip: some("10.9.9.9"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { ip: some("192.0.2.7"), ..q() }), vec![id(101), id(100)]);
    assert_eq!(find(&s, EventQuery { namespace: some("shop"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { verb: some("delete"), ..q() }), vec![id(101)]);
    assert_eq!(find(&s, EventQuery { resource: some("secrets"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { name: some("node-1"), ..q() }), vec![id(102)]);
    assert_eq!(find(&s, EventQuery { audit_id: ev(101).audit_id, ..q() }), vec![id(101)]);
    let bob: Vec<i64> = (200..210).rev().map(id).chain([id(102), id(101)]).collect();
    assert_eq!(find(&s, EventQuery { user: some("bob"), ..q() }), bob, "newest first");
    assert_eq!(find(&s, EventQuery { user: some("alice"), ..q() }).len(), 40);

    // Filters combine (AND).
    assert_eq!(find(&s, EventQuery { user: some("bob"), verb: some("patch"), ..q() }), vec![id(102)]);
    assert_eq!(find(&s, EventQuery { ip: some("192.0.2.7"), user: some("bob"), ..q() }), vec![id(101)]);
    assert_eq!(find(&s, EventQuery { ip: some("192.0.2.7"), audit_id: ev(100).audit_id, ..q() }), vec![id(100)]);
    assert!(find(&s, EventQuery { user: some("bob"), namespace: some("shop"), ..q() }).is_empty());
    assert!(find(&s, EventQuery { ip: some("10.9.9.9"), verb: some("get"), ..q() }).is_empty());

    // Time window: since ≤ t < until.
    let at = |sec: i64| Some(BASE_NS + sec * SEC);
    assert_eq!(find(&s, EventQuery { since_ns: at(100), until_ns: at(102), ..q() }), vec![id(101), id(100)]);
    assert_eq!(find(&s, EventQuery { since_ns: at(205), ..q() }), (205..210).rev().map(id).collect::<Vec<_>>());
    assert_eq!(find(&s, EventQuery { until_ns: at(2), ..q() }), vec![id(1), id(0)]);
    assert_eq!(
        find(&s, EventQuery { user: some("bob"), since_ns: at(101), until_ns: at(201), ..q() }),
        vec![id(200), id(102), id(101)]
    );

    // Rules, through matches.
    let m = |event_id: i64, rule: &str| MatchRow {
        event_id,
        rule: rule.into(),
        priority: "Warning".into(),
        finding_id: None,
    };
    s.record_detections(&[], &[m(id(100), "Read secrets"), m(id(101), "Delete pod"), m(id(100), "SA token use")])
        .unwrap();
    // Recorded again (a catch-up after a restart): still one match each.
    s.record_detections(&[], &[m(id(100), "Read secrets")]).unwrap();
    assert_eq!(s.stats().unwrap().matches, 3);
    assert_eq!(find(&s, EventQuery { rule: some("Read secrets"), ..q() }), vec![id(100)]);
    assert_eq!(find(&s, EventQuery { rule: some("SA token use"), ip: some("192.0.2.7"), ..q() }), vec![id(100)]);
    assert!(find(&s, EventQuery { rule: some("Delete pod"), user: some("alice"), ..q() }).is_empty());
    assert_eq!(find(&s, EventQuery { rule: some("Delete pod"), audit_id: ev(101).audit_id, ..q() }), vec![id(101)]);
    assert!(find(&s, EventQuery { rule: some("nope"), ..q() }).is_empty());

    // Nothing is ever interpreted as SQL, and odd values are just values.
    for v in ["' OR 1=1 --", "\"; DROP TABLE events; --", "", "%", "_", "\u{0}", "é"] {
        for q in [
            EventQuery { user: some(v), ..q() },
            EventQuery { ip: some(v), ..q() },
            EventQuery { rule: some(v), ..q() },
            EventQuery { audit_id: some(v), name: some(v), ..q() },
        ] {
            assert!(find(&s, q).is_empty(), "{v:?}");
        }
    }
    assert_eq!(all_events(&s).len(), pop.len());
}

fn paging_and_limits<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let evs: Vec<Ev> = (0..230).map(|n| Ev { ips: vec!["10.1.1.1"], ..ev(n) }).collect();
    let (_, got) = put(&mut s, &evs, Origin::Webhook);
    let mut want: Vec<i64> = got.into_iter().map(Option::unwrap).collect();
    want.reverse();
    let m: Vec<MatchRow> = want
        .iter()
        .map(|&event_id| MatchRow { event_id, rule: "r".into(), priority: "Notice".into(), finding_id: None })
        .collect();
    s.record_detections(&[], &m).unwrap();
    // Each driving index pages the same way: by id, newest first.
    for base in [
        q(),
        EventQuery { user: Some("alice".into()), ..q() },
        EventQuery { ip: Some("10.1.1.1".into()), ..q() },
        EventQuery { rule: Some("r".into()), ..q() },
        EventQuery { since_ns: Some(BASE_NS), until_ns: Some(BASE_NS + 1000 * SEC), ..q() },
    ] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = s.search_events(&EventQuery { before_id: before, limit: 50, ..base.clone() }).unwrap();
            assert!(page.len() <= 50);
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            seen.extend(ids(&page));
        }
        assert_eq!(seen, want, "{base:?}");
        assert_eq!(s.search_events(&EventQuery { limit: 0, ..base.clone() }).unwrap().len(), 100, "default limit");
        assert_eq!(s.search_events(&EventQuery { limit: 7, ..base.clone() }).unwrap().len(), 7);
        assert_eq!(s.search_events(&EventQuery { limit: usize::MAX, ..base.clone() }).unwrap().len(), 230);
        for b in [0, -1, i64::MIN] {
            assert!(s.search_events(&EventQuery { before_id: Some(b), ..base.clone() }).unwrap().is_empty());
        }
        assert_eq!(
            s.search_events(&EventQuery { before_id: Some(i64::MAX), limit: 1, ..base.clone() }).unwrap().len(),
            1
        );
    }
}

fn finding(rule: &str, last: i64) -> FindingRow {
    FindingRow {
        id: None,
        rule: rule.into(),
        priority: "Warning".into(),
        rules: vec![rule.into()],
        tags: vec!["k8s".into()],
        events: 1,
        matches: 1,
        first_ns: Some(BASE_NS + last * SEC),
        last_ns: Some(BASE_NS + last * SEC),
        user: Some("alice".into()),
        namespace: Some("default".into()),
        resource: Some("secrets".into()),
        name: Some("db".into()),
        source_ip: Some("10.0.0.1".into()),
        output: format!("{rule} fired"),
        audit_ids: vec!["a-1".into()],
        lead_event: Some(1),
        open: true,
        detail: "{\"output_fields\":{}}".into(),
        cluster: None,
    }
}

/// A detector's batch in one call: new findings, matches pointing at them by index, the cursor.
fn record_batch_links_matches_to_new_findings_and_moves_the_cursor<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let texts: Vec<String> = (0..3).map(|i| ev(i).json()).collect();
    let ids = s.append_events(&rows(&texts), Origin::Webhook).unwrap().ids;
    let (e0, e1) = (ids[0].unwrap(), ids[1].unwrap());
    let old = s.record_detections(&[finding("Old", 5)], &[]).unwrap()[0];
    let m = |event_id: i64, rule: &str, finding_id: Option<i64>| MatchRow {
        event_id,
        rule: rule.into(),
        priority: "Warning".into(),
        finding_id,
    };
    let got = s
        .record_batch(
            &[finding("New A", 10), finding("New B", 11)],
            &[(m(e0, "New B", None), Some(1)), (m(e1, "Old", Some(old)), None), (m(e1, "New A", None), Some(0))],
            Some(("detector", e1)),
        )
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(s.cursor("detector").unwrap(), e1);
    let by_rule = |s: &B::S, rule: &str| {
        s.search_events(&EventQuery { rule: Some(rule.into()), limit: 10, ..EventQuery::default() }).unwrap()
    };
    assert_eq!(by_rule(&s, "New B").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e0]);
    assert_eq!(by_rule(&s, "New A").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e1]);
    // a re-evaluated batch (at least once after a crash) stores no second match
    s.record_batch(&[], &[(m(e1, "New A", Some(got[0])), None)], Some(("detector", e1))).unwrap();
    assert_eq!(by_rule(&s, "New A").len(), 1);
    assert_eq!(s.stats().unwrap().matches, 3);
}

fn findings_insert_update_search<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let a = finding("Read secrets", 10);
    let b = FindingRow {
        priority: "Critical".into(),
        user: Some("bob".into()),
        namespace: Some("prod".into()),
        ..finding("Exec into pod", 20)
    };
    let ids = s.record_detections(&[a.clone(), b.clone()], &[]).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let all = s.search_findings(&FindingQuery::default()).unwrap();
    assert_eq!(all.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(), vec![ids[1], ids[0]]);
    assert_eq!(all[1], FindingRow { id: Some(ids[0]), ..a.clone() }, "every column comes back");

    // A repeat folds in: every column is updated, the id stays.
    let a2 = FindingRow {
        id: Some(ids[0]),
        priority: "Error".into(),
        rules: vec!["Read secrets".into(), "List secrets".into()],
        tags: vec!["k8s".into(), "secrets".into()],
        events: 5,
        matches: 7,
        last_ns: Some(BASE_NS + 30 * SEC),
        output: "Read secrets fired (5 events)".into(),
        audit_ids: vec!["a-1".into(), "a-2".into()],
        open: false,
        lead_event: None,
        source_ip: None,
        ..a
    };
    let m = MatchRow { event_id: 77, rule: "List secrets".into(), priority: "Error".into(), finding_id: Some(ids[0]) };
    assert_eq!(s.record_detections(std::slice::from_ref(&a2), &[m]).unwrap(), vec![ids[0]]);
    let all = s.search_findings(&FindingQuery::default()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], a2, "newest by last seen first");
    let st = s.stats().unwrap();
    assert_eq!((st.findings, st.matches), (2, 1));

    let fq = FindingQuery::default;
    let found =
        |s: &B::S, q: FindingQuery| s.search_findings(&q).unwrap().iter().map(|f| f.id.unwrap()).collect::<Vec<_>>();
    assert_eq!(found(&s, FindingQuery { rule: Some("List secrets".into()), ..fq() }), vec![ids[0]], "a folded rule");
    assert_eq!(found(&s, FindingQuery { rule: Some("Exec into pod".into()), ..fq() }), vec![ids[1]]);
    assert_eq!(found(&s, FindingQuery { user: Some("bob".into()), ..fq() }), vec![ids[1]]);
    assert_eq!(found(&s, FindingQuery { namespace: Some("default".into()), ..fq() }), vec![ids[0]]);
    assert_eq!(found(&s, FindingQuery { min_priority: Some(Priority::Critical), ..fq() }), vec![ids[1]]);
    assert_eq!(found(&s, FindingQuery { min_priority: Some(Priority::Error), ..fq() }), vec![ids[0], ids[1]]);
    assert_eq!(found(&s, FindingQuery { min_priority: Some(Priority::Emergency), ..fq() }), Vec::<i64>::new());
    assert_eq!(found(&s, FindingQuery { since_ns: Some(BASE_NS + 25 * SEC), ..fq() }), vec![ids[0]]);
    assert_eq!(found(&s, FindingQuery { until_ns: Some(BASE_NS + 15 * SEC), ..fq() }), vec![ids[0]]);
    assert_eq!(found(&s, FindingQuery { before_id: Some(ids[1]), ..fq() }), vec![ids[0]]);
    assert_eq!(found(&s, FindingQuery { limit: 1, ..fq() }), vec![ids[0]]);
    // the open ones only, newest id first, paged exactly by id (a[0] was closed above)
    let more = s.record_detections(&[finding("Open 1", 5), finding("Open 2", 50), finding("Open 3", 1)], &[]).unwrap();
    let open = |before: Option<i64>| found(&s, FindingQuery { open_only: true, limit: 2, before_id: before, ..fq() });
    let page1 = open(None);
    assert_eq!(page1, vec![more[2], more[1]]);
    let page2 = open(page1.last().copied());
    assert_eq!(page2, vec![more[0], ids[1]]);
    assert_eq!(open(page2.last().copied()), Vec::<i64>::new());

    // Updating a finding that is not stored (removed meanwhile) stores it under its id.
    let gone = FindingRow { id: Some(1000), ..finding("Gone", 40) };
    assert_eq!(s.record_detections(&[gone], &[]).unwrap(), vec![1000]);
    assert_eq!(found(&s, FindingQuery { rule: Some("Gone".into()), ..fq() }), vec![1000]);
    assert_eq!(s.stats().unwrap().findings, 6);
}

fn alert(n: i64, ns: &str, pod: &str, rule: &str) -> AlertRow {
    let raw = json!({"time": kustody_model::time::format_rfc3339_nanos(BASE_NS + n * SEC), "rule": rule, "priority": "Warning",
        "output": format!("{rule} in {ns}/{pod}"), "output_fields": {"k8s.ns.name": ns, "k8s.pod.name": pod, "container.id": "abc123"}});
    AlertRow {
        time_ns: Some(BASE_NS + n * SEC),
        rule: rule.into(),
        priority: "Warning".into(),
        source: Some("syscall".into()),
        hostname: Some("node-1".into()),
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        container_id: Some("abc123".into()),
        output: format!("{rule} in {ns}/{pod}"),
        raw: raw.to_string(),
        cluster: None,
    }
}

fn alerts_dedup_and_search<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let a = alert(1, "shop", "cart-1", "Terminal shell in container");
    let b = alert(2, "shop", "web-1", "Read sensitive file");
    let c = alert(3, "prod", "cart-1", "Terminal shell in container");
    let first = s.append_alerts(&[a.clone(), b.clone(), a.clone()]).unwrap();
    assert_eq!((first.stored, first.duplicates), (2, 1));
    assert!(first.ids[2].is_none());
    let again = s.append_alerts(&[c.clone(), b.clone()]).unwrap();
    assert_eq!(again.ids[1], None, "a redelivered alert is stored once");
    assert_eq!(s.stats().unwrap().alerts, 3);

    let found = |q: AlertQuery| s.search_alerts(&q).unwrap();
    let all = found(AlertQuery::default());
    assert_eq!(all.iter().map(|x| x.alert.clone()).collect::<Vec<_>>(), vec![c.clone(), b.clone(), a.clone()]);
    let pod = |p: &str| Some(p.to_owned());
    assert_eq!(found(AlertQuery { pod: pod("cart-1"), ..Default::default() }).len(), 2);
    let exact = found(AlertQuery { pod: pod("cart-1"), namespace: pod("shop"), ..Default::default() });
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].alert, a);
    assert_eq!(exact[0].id, first.ids[0].unwrap());
    assert_eq!(found(AlertQuery { namespace: pod("shop"), ..Default::default() }).len(), 2);
    assert_eq!(found(AlertQuery { rule: pod("Read sensitive file"), ..Default::default() })[0].alert, b);
    assert_eq!(
        found(AlertQuery {
            since_ns: Some(BASE_NS + 2 * SEC),
            until_ns: Some(BASE_NS + 3 * SEC),
            ..Default::default()
        })[0]
            .alert,
        b
    );
    assert_eq!(found(AlertQuery { before_id: first.ids[1], ..Default::default() })[0].alert, a);
    assert_eq!(found(AlertQuery { limit: 1, ..Default::default() })[0].alert, c);
}

fn cursors_and_offsets_survive_reopen<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let off = FileOffset {
        path: "/var/log/kubernetes/audit.log".into(),
        dev: u64::MAX,
        ino: 1 << 63,
        offset: 123_456_789,
        line: 42,
    };
    {
        let mut s = B::open(dir.path());
        assert_eq!(s.cursor("detector").unwrap(), 0);
        assert_eq!(s.file_offset(&off.path).unwrap(), None);
        s.set_cursor("detector", 5).unwrap();
        s.set_cursor("detector", 77).unwrap();
        s.set_cursor("other", -3).unwrap();
        s.set_file_offset(&FileOffset { offset: 1, ..off.clone() }).unwrap();
        s.set_file_offset(&off).unwrap();
    }
    let s = B::open(dir.path());
    assert_eq!(s.cursor("detector").unwrap(), 77);
    assert_eq!(s.cursor("other").unwrap(), -3);
    assert_eq!(s.file_offset(&off.path).unwrap(), Some(off));
    assert_eq!(s.file_offset("/nope").unwrap(), None);
}

fn count_only_from<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    // 0..10 through both, 10..15 only the file, 15..17 only the webhook.
    put(&mut s, &(0..10).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    put(&mut s, &(0..15).map(ev).collect::<Vec<_>>(), Origin::File);
    put(&mut s, &(15..17).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    let before = |sec: i64| BASE_NS + sec * SEC;
    assert_eq!(s.count_only_from(Origin::File, Origin::Webhook, before(100)).unwrap(), 5);
    assert_eq!(s.count_only_from(Origin::File, Origin::Webhook, before(12)).unwrap(), 2);
    assert_eq!(s.count_only_from(Origin::File, Origin::Webhook, before(10)).unwrap(), 0);
    assert_eq!(s.count_only_from(Origin::Webhook, Origin::File, before(100)).unwrap(), 2);
    assert_eq!(s.count_only_from(Origin::Replay, Origin::File, before(100)).unwrap(), 0);
    // Replayed later: the file-only events gain a bit but still lack the webhook's.
    put(&mut s, &(10..12).map(ev).collect::<Vec<_>>(), Origin::Replay);
    assert_eq!(s.count_only_from(Origin::File, Origin::Webhook, before(100)).unwrap(), 5);
    put(&mut s, &(10..12).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    assert_eq!(s.count_only_from(Origin::File, Origin::Webhook, before(100)).unwrap(), 3);
}

fn retention_by_age<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let (_, got) = put(&mut s, &(0..100).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    let untimed = Ev { ips: vec!["10.0.0.2"], ..ev(500) };
    let text = untimed.json().replace("\"stageTimestamp\"", "\"x\"").replace("\"requestReceivedTimestamp\"", "\"y\"");
    let untimed_id = s.append_events(&rows(&[text]), Origin::Webhook).unwrap().ids[0].unwrap();
    let id = |n: usize| got[n].unwrap();
    s.record_detections(
        &[],
        &[
            MatchRow { event_id: id(10), rule: "old".into(), priority: "Notice".into(), finding_id: None },
            MatchRow { event_id: id(90), rule: "new".into(), priority: "Notice".into(), finding_id: None },
        ],
    )
    .unwrap();
    s.append_alerts(&[alert(10, "a", "p", "old"), alert(90, "a", "p", "new")]).unwrap();
    let closed_old = FindingRow { open: false, ..finding("closed old", 10) };
    let open_old = finding("open old", 10);
    let closed_new = FindingRow { open: false, ..finding("closed new", 90) };
    s.record_detections(&[closed_old, open_old, closed_new], &[]).unwrap();
    let text_before = s.stats().unwrap().event_text_bytes;

    // Keep the last 50 s before t = 100 s.
    let r = s.retain(BASE_NS + 100 * SEC, Some(50 * SEC), None).unwrap();
    assert_eq!((r.events_removed, r.alerts_removed, r.findings_removed), (50, 1, 1));
    let left = all_events(&s);
    assert_eq!(
        ids(&left),
        (50..100).map(id).chain([untimed_id]).collect::<Vec<_>>(),
        "an event without a time is kept"
    );
    assert!(s.search_events(&EventQuery { rule: Some("old".into()), ..q() }).unwrap().is_empty());
    assert_eq!(s.search_events(&EventQuery { rule: Some("new".into()), ..q() }).unwrap().len(), 1);
    assert_eq!(s.search_events(&EventQuery { ip: Some("10.0.0.2".into()), ..q() }).unwrap().len(), 1);
    assert_eq!(s.search_events(&EventQuery { ip: Some("10.0.0.1".into()), limit: 1000, ..q() }).unwrap().len(), 50);
    assert_eq!(s.search_alerts(&AlertQuery::default()).unwrap().len(), 1);
    let rules: Vec<String> = s.search_findings(&FindingQuery::default()).unwrap().into_iter().map(|f| f.rule).collect();
    assert_eq!(rules, vec!["closed new", "open old"], "open findings are kept");
    let st = s.stats().unwrap();
    assert_eq!((st.events, st.alerts, st.findings, st.matches), (51, 1, 2, 1));
    assert_eq!(st.event_text_bytes, left.iter().map(|e| e.raw.len() as u64).sum::<u64>());
    assert!(st.event_text_bytes < text_before);
    // Nothing more to remove.
    let r = s.retain(BASE_NS + 100 * SEC, Some(50 * SEC), None).unwrap();
    assert_eq!((r.events_removed, r.alerts_removed, r.findings_removed), (0, 0, 0));
    // Appends go on.
    let (_, more) = put(&mut s, &[ev(1000)], Origin::Webhook);
    assert!(more[0].unwrap() > untimed_id);
}

fn retention_by_size<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let n = 3000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(400) {
        let evs: Vec<Ev> = chunk.iter().map(|&i| Ev { pad: 1000, ..ev(i) }).collect();
        put(&mut s, &evs, Origin::Webhook);
    }
    let before = s.stats().unwrap();
    assert_eq!(before.events, 3000);
    // Nothing to do under a generous bound.
    assert_eq!(s.retain(0, None, Some(u64::MAX)).unwrap().events_removed, 0);
    let bound = before.event_text_bytes / 4;
    let r = s.retain(0, None, Some(bound)).unwrap();
    assert!(r.events_removed > 0 && r.events_removed < 3000, "{r:?}");
    let left = all_events(&s);
    assert_eq!(left.len() as u64, 3000 - r.events_removed);
    assert_eq!(left.last().unwrap().raw, Ev { pad: 1000, ..ev(n - 1) }.json(), "the newest are kept");
    assert_eq!(
        left.first().unwrap().raw,
        Ev { pad: 1000, ..ev(usize::try_from(r.events_removed).unwrap()) }.json(),
        "the oldest went first"
    );
    let after = s.stats().unwrap();
    assert_eq!(after.events, left.len() as u64);
    // under the bound now: the next pass (a minute later) removes nothing more
    assert_eq!(s.retain(0, None, Some(bound)).unwrap().events_removed, 0);
    assert_eq!(all_events(&s).len(), left.len());
    // A zero bound removes every event, and the store still works.
    s.retain(0, None, Some(0)).unwrap();
    assert!(all_events(&s).is_empty());
    assert_eq!(s.stats().unwrap().events, 0);
    assert_eq!(s.stats().unwrap().event_text_bytes, 0);
    put(&mut s, &[ev(5000)], Origin::Webhook);
    assert_eq!(all_events(&s).len(), 1);
}

fn reopen_keeps_everything<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let pop = population();
    let (texts, stats) = {
        let mut s = B::open(dir.path());
        let (texts, got) = put(&mut s, &pop, Origin::File);
        s.append_alerts(&[alert(1, "a", "b", "r")]).unwrap();
        s.record_detections(
            &[finding("f", 1)],
            &[MatchRow {
                event_id: got[0].unwrap(),
                rule: "f".into(),
                priority: "Warning".into(),
                finding_id: Some(1),
            }],
        )
        .unwrap();
        (texts, s.stats().unwrap())
    };
    let mut s = B::open(dir.path());
    let back = all_events(&s);
    assert_eq!(back.iter().map(|e| e.raw.clone()).collect::<Vec<_>>(), texts);
    assert!(back.iter().all(|e| e.origins == Origin::File.bit()));
    let again = s.stats().unwrap();
    assert_eq!(
        (again.events, again.alerts, again.findings, again.matches, again.event_text_bytes),
        (stats.events, stats.alerts, stats.findings, stats.matches, stats.event_text_bytes)
    );
    assert_eq!(s.search_events(&EventQuery { rule: Some("f".into()), ..q() }).unwrap().len(), 1);
    assert_eq!(s.search_events(&EventQuery { service_account: Some("shop/cart".into()), ..q() }).unwrap().len(), 1);
    // Still de-duplicates against what the previous run stored.
    let a = s.append_events(&rows(&texts), Origin::Webhook).unwrap();
    assert_eq!(a.duplicates, pop.len() as u64);
    assert!(all_events(&s).iter().all(|e| e.origins == 3));
}

fn reader_sees_commits_while_writer_open<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = B::open(dir.path());
    let r = B::reader(dir.path());
    assert!(all_events(&r).is_empty());
    put(&mut w, &(0..5).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    assert_eq!(all_events(&r).len(), 5);
    w.set_cursor("c", 9).unwrap();
    assert_eq!(r.cursor("c").unwrap(), 9);
    assert_eq!(r.stats().unwrap().events, 5);
    // A reader on another thread, while the writer keeps appending.
    let dir2 = dir.path().to_owned();
    let t = std::thread::spawn(move || {
        let r = B::reader(&dir2);
        let mut last = 0;
        for _ in 0..50 {
            let n = all_events(&r).len();
            assert!(n >= last, "a reader never sees fewer events");
            last = n;
        }
        last
    });
    for i in 0..20 {
        put(&mut w, &[ev(100 + i)], Origin::Webhook);
    }
    assert!(t.join().unwrap() >= 5);
    assert_eq!(all_events(&r).len(), 25);
}

fn real_events_from_fixture<B: Backend>() {
    let Some(shared) = kustody_testkit::shared("fixtures/kube-apiserver/audit.jsonl") else { return };
    let text = std::fs::read_to_string(shared.join("fixtures/kube-apiserver/audit.jsonl")).unwrap();
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let rows = rows(&lines);
    let a = s.append_events(&rows, Origin::File).unwrap();
    assert_eq!(a.stored + a.duplicates, lines.len() as u64);
    let back = all_events(&s);
    assert_eq!(back.len() as u64, a.stored);
    let stored_texts: Vec<&str> = back.iter().map(|e| e.raw.as_str()).collect();
    for (line, id) in lines.iter().zip(&a.ids) {
        if id.is_some() {
            assert!(stored_texts.contains(&line.as_str()));
        }
    }
    let sa = rows.iter().filter(|r| r.service_account.as_deref() == Some("kube-system/namespace-controller")).count();
    assert!(sa > 0);
    let found = s
        .search_events(&EventQuery {
            service_account: Some("kube-system/namespace-controller".into()),
            limit: 10_000,
            ..q()
        })
        .unwrap();
    assert_eq!(found.len(), sa);
    assert!(found.iter().all(|e| e.raw.contains("system:serviceaccount:kube-system:namespace-controller")));
    let st = s.stats().unwrap();
    assert_eq!(st.event_text_bytes, back.iter().map(|e| e.raw.len() as u64).sum::<u64>());
    assert!(st.bytes > 0);
}

fn read_only_refuses_writes<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    drop(B::open(dir.path()));
    let mut r = B::reader(dir.path());
    let texts = texts(&[ev(1)]);
    assert!(r.append_events(&rows(&texts), Origin::Webhook).is_err());
    assert!(r.set_cursor("c", 1).is_err());
    assert!(r.append_alerts(&[alert(1, "a", "b", "c")]).is_err());
    assert!(r.retain(0, Some(0), Some(0)).is_err());
    assert!(all_events(&r).is_empty());
}

/// Values no SQL text type may hold (NUL; PostgreSQL's `text` refuses it) are stored, searched
/// for and given back: an attacker's odd user name must not stop ingestion.
fn odd_values_are_stored_and_found<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let odd = Ev { user: "eve\u{0}root".into(), name: Some("x\u{0}".into()), ..ev(1) };
    // values far longer than an index entry may be (PostgreSQL's B-tree: ~2.7 KB)
    let long = "é".repeat(3000);
    let big = Ev { user: long.clone(), name: Some(long.clone()), ..ev(3) };
    let (texts, got) = put(&mut s, &[odd, ev(2), big], Origin::Webhook);
    assert!(got.iter().all(Option::is_some));
    let back = all_events(&s);
    assert_eq!(back.iter().map(|e| e.raw.clone()).collect::<Vec<_>>(), texts, "the texts come back exactly");
    assert_eq!(find(&s, EventQuery { user: Some("eve\u{0}root".into()), ..q() }), vec![got[0].unwrap()]);
    assert_eq!(find(&s, EventQuery { name: Some("x\u{0}".into()), ..q() }), vec![got[0].unwrap()]);
    assert_eq!(find(&s, EventQuery { user: Some(long.clone()), name: Some(long), ..q() }), vec![got[2].unwrap()]);
    let f = FindingRow { user: Some("eve\u{0}root".into()), output: "a\u{0}b".into(), ..finding("odd", 1) };
    s.record_detections(&[f], &[]).unwrap();
    assert_eq!(
        s.search_findings(&FindingQuery { user: Some("eve\u{0}root".into()), ..Default::default() }).unwrap().len(),
        1
    );
    let mut a = alert(1, "ns", "p\u{0}", "r");
    a.output = "o\u{0}".into();
    assert_eq!(s.append_alerts(&[a]).unwrap().stored, 1);
    assert_eq!(s.search_alerts(&AlertQuery { pod: Some("p\u{0}".into()), ..Default::default() }).unwrap().len(), 1);
}

/// Several clusters in one store: the same auditID, stage and time from two clusters are two
/// events (redelivery within a cluster is still one), and events, findings and incidents are
/// found by cluster.
fn clusters_are_kept_apart<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let texts = texts(&[ev(1), ev(2)]);
    let tagged = |c: &str| -> Vec<EventRow<'_>> {
        rows(&texts)
            .into_iter()
            .map(|mut r| {
                r.cluster = Some(c.to_owned());
                r
            })
            .collect()
    };
    let a = s.append_events(&tagged("prod-eu"), Origin::Webhook).unwrap();
    let b = s.append_events(&tagged("prod-us"), Origin::Webhook).unwrap();
    assert_eq!((a.stored, b.stored), (2, 2), "another cluster's events are not duplicates");
    let again = s.append_events(&tagged("prod-eu"), Origin::File).unwrap();
    assert_eq!(again.duplicates, 2);
    let eu = s.search_events(&EventQuery { cluster: Some("prod-eu".into()), ..q() }).unwrap();
    assert_eq!(eu.len(), 2);
    assert!(eu.iter().all(|e| e.cluster.as_deref() == Some("prod-eu") && e.origins == 3));
    let us = s.search_events(&EventQuery { cluster: Some("prod-us".into()), audit_id: ev(1).audit_id, ..q() }).unwrap();
    assert_eq!(us.len(), 1);
    assert_eq!(us[0].origins, 1);
    assert!(s.search_events(&EventQuery { cluster: Some("dev".into()), ..q() }).unwrap().is_empty());
    assert_eq!(all_events(&s).len(), 4);
    let f = FindingRow { cluster: Some("prod-us".into()), ..finding("exec", 5) };
    s.record_detections(&[f, finding("other", 6)], &[]).unwrap();
    let found = s.search_findings(&FindingQuery { cluster: Some("prod-us".into()), ..Default::default() }).unwrap();
    assert_eq!(found.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), vec!["exec"]);
    assert_eq!(found[0].cluster.as_deref(), Some("prod-us"));
    let inc = |key: &str, cluster: &str| IncidentWrite {
        row: IncidentRow { cluster: Some(cluster.into()), ..incident_row(key, "new") },
        findings: vec![],
    };
    s.commit(&Batch { incidents: &[inc("a", "prod-eu"), inc("b", "prod-us")], ..Default::default() }).unwrap();
    let list = s
        .search_incidents(&IncidentQuery { cluster: Some("prod-us".into()), limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!(list.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), vec!["b"]);
    // the same runtime alert from two clusters is two alerts; redelivered, one
    let a = |c: &str| AlertRow { cluster: Some(c.into()), ..alert(7, "shop", "web-1", "Shell") };
    assert_eq!(s.append_alerts(&[a("prod-eu"), a("prod-us"), a("prod-eu")]).unwrap().stored, 2);
    let eu = s.search_alerts(&AlertQuery { cluster: Some("prod-eu".into()), ..Default::default() }).unwrap();
    assert_eq!(eu.len(), 1);
    assert_eq!(eu[0].alert.cluster.as_deref(), Some("prod-eu"));
    assert_eq!(s.search_alerts(&AlertQuery::default()).unwrap().len(), 2);
}

/// Enough events that a backend grouping them (SQLite's index buckets of 4096 events) has to
/// search across groups: paging, limits and rare keys in the oldest group.
fn search_across_many_events<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let n = 10_000;
    let rare = |i: usize| i % 997 == 5;
    let mut got = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let evs: Vec<Ev> = chunk
            .iter()
            .map(|&i| {
                if rare(i) {
                    Ev { user: "bob".into(), ips: vec!["192.0.2.1"], name: Some("rare".into()), ..ev(i) }
                } else {
                    ev(i)
                }
            })
            .collect();
        got.extend(put(&mut s, &evs, Origin::Webhook).1.into_iter().map(Option::unwrap));
    }
    let want: Vec<i64> = (0..n).rev().filter(|&i| rare(i)).map(|i| got[i]).collect();
    assert_eq!(want.len(), 11);
    for base in [
        EventQuery { user: Some("bob".into()), ..q() },
        EventQuery { ip: Some("192.0.2.1".into()), ..q() },
        EventQuery { name: Some("rare".into()), ..q() },
        EventQuery { name: Some("rare".into()), user: Some("bob".into()), verb: Some("get".into()), ..q() },
    ] {
        assert_eq!(find(&s, base.clone()), want, "{base:?}");
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = find(&s, EventQuery { before_id: before, limit: 3, ..base.clone() });
            let Some(&last) = page.last() else { break };
            assert!(page.len() <= 3);
            before = Some(last);
            seen.extend(page);
        }
        assert_eq!(seen, want, "{base:?}");
        // Paging from an id that is no event's.
        assert_eq!(find(&s, EventQuery { before_id: Some(want[4] + 1), ..base.clone() }), want[4..].to_vec());
    }
    // The oldest event's auditID, and the newest user events across groups.
    assert_eq!(find(&s, EventQuery { audit_id: ev(0).audit_id, ..q() }), vec![got[0]]);
    assert_eq!(find(&s, EventQuery { audit_id: ev(n - 1).audit_id, ..q() }), vec![got[n - 1]]);
    let alice = find(&s, EventQuery { user: Some("alice".into()), limit: 5000, ..q() });
    assert_eq!(alice.len(), 5000);
    assert!(alice.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(alice[0], got[n - 1]);
    let page2 = find(&s, EventQuery { user: Some("alice".into()), before_id: Some(alice[4999]), limit: 10_000, ..q() });
    assert_eq!(page2.len(), n - 11 - 5000);
}

fn incident_row(key: &str, status: &str) -> IncidentRow {
    IncidentRow {
        id: None,
        key: key.into(),
        title: format!("WARNING incident: {key}"),
        severity: "Warning".into(),
        status: status.into(),
        identity: Some("alice".into()),
        namespace: Some("default".into()),
        first_ns: Some(BASE_NS),
        last_ns: Some(BASE_NS + SEC),
        updated_ns: BASE_NS,
        state: "{}".into(),
        ..Default::default()
    }
}

fn notification(sink: &str, incident: Ref) -> OutboxWrite {
    OutboxWrite {
        sink: sink.into(),
        incident,
        action: "trigger".into(),
        payload: "{\"n\":1}".into(),
        created_ns: BASE_NS,
    }
}

/// Findings, the incident holding them and its notifications: one transaction, refs by index.
fn incidents_and_outbox_commit_with_findings<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let findings = [finding("A", 1), finding("B", 2)];
    let incidents = [IncidentWrite { row: incident_row("alice|", "new"), findings: vec![Ref::New(0), Ref::New(1)] }];
    let outbox = [notification("slack", Ref::New(0)), notification("pagerduty", Ref::New(0))];
    let ids =
        s.commit(&Batch { findings: &findings, incidents: &incidents, outbox: &outbox, ..Default::default() }).unwrap();
    assert_eq!((ids.findings.len(), ids.incidents.len(), ids.outbox.len()), (2, 1, 2));
    let inc = ids.incidents[0];
    let r = B::reader(dir.path());
    let got = r.incident(inc).unwrap().unwrap();
    assert_eq!((got.key.as_str(), got.status.as_str()), ("alice|", "new"));
    let held: Vec<String> = r.incident_findings(inc).unwrap().into_iter().map(|f| f.rule).collect();
    assert_eq!(held, ["A", "B"]);
    // a responder acknowledges with a note; the update and note are one commit
    let mut row = got.clone();
    row.status = "acknowledged".into();
    row.assignee = Some("bob".into());
    let notes = [NoteRow {
        incident_id: inc,
        time_ns: BASE_NS + 5 * SEC,
        author: "bob".into(),
        text: "looking".into(),
        ..Default::default()
    }];
    let up = [IncidentWrite { row, findings: vec![] }];
    s.commit(&Batch { incidents: &up, notes: &notes, ..Default::default() }).unwrap();
    let got = r.incident(inc).unwrap().unwrap();
    assert_eq!((got.status.as_str(), got.assignee.as_deref()), ("acknowledged", Some("bob")));
    assert_eq!(r.incident_notes(inc).unwrap()[0].text, "looking");
    // searches
    let q = IncidentQuery { limit: 10, ..Default::default() };
    assert_eq!(r.search_incidents(&q).unwrap().len(), 1);
    let q = IncidentQuery { status: Some("new".into()), limit: 10, ..Default::default() };
    assert!(r.search_incidents(&q).unwrap().is_empty());
    let q = IncidentQuery { min_severity: Some(Priority::Critical), limit: 10, ..Default::default() };
    assert!(r.search_incidents(&q).unwrap().is_empty());
    let q = IncidentQuery { unresolved: true, identity: Some("alice".into()), limit: 10, ..Default::default() };
    assert_eq!(r.search_incidents(&q).unwrap().len(), 1);
    // a ref outside the batch fails the whole commit
    let bad = [notification("slack", Ref::New(3))];
    assert!(s.commit(&Batch { findings: &[finding("C", 3)], outbox: &bad, ..Default::default() }).is_err());
    assert_eq!(r.search_findings(&FindingQuery { limit: 10, ..Default::default() }).unwrap().len(), 2);
    assert_eq!(r.search_outbox(&OutboxQuery { limit: 10, ..Default::default() }).unwrap().len(), 2);
}

fn outbox_attempts_dead_letter_and_retry<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let incidents = [IncidentWrite { row: incident_row("k", "new"), findings: vec![] }];
    let outbox =
        [notification("slack", Ref::New(0)), notification("slack", Ref::New(0)), notification("mail", Ref::New(0))];
    let ids = s.commit(&Batch { incidents: &incidents, outbox: &outbox, ..Default::default() }).unwrap().outbox;
    // the second slack notification of the incident waits for the first
    let due = s.outbox_due("slack", BASE_NS, 10).unwrap();
    assert_eq!(due.iter().map(|o| o.id).collect::<Vec<_>>(), ids[..1]);
    assert!(s.outbox_due("slack", BASE_NS - 1, 10).unwrap().is_empty());
    let t = BASE_NS + SEC;
    let fail = |id, state, next| Attempt {
        outbox_id: id,
        time_ns: t,
        duration_us: 1500,
        error: Some("HTTP 503".into()),
        state,
        next_ns: next,
    };
    s.record_attempts(&[
        fail(ids[0], OutboxState::Pending, t + 2 * SEC),
        Attempt {
            outbox_id: ids[1],
            time_ns: t,
            duration_us: 900,
            error: None,
            state: OutboxState::Delivered,
            next_ns: t,
        },
        fail(ids[2], OutboxState::Dead, t),
    ])
    .unwrap();
    assert!(s.outbox_due("slack", t + SEC, 10).unwrap().is_empty());
    assert_eq!(s.outbox_next_due("slack").unwrap(), Some(t + 2 * SEC));
    assert_eq!(s.outbox_due("mail", t + SEC, 10).unwrap(), []);
    let again = s.outbox_due("slack", t + 2 * SEC, 10).unwrap();
    assert_eq!((again.len(), again[0].attempts, again[0].last_error.as_deref()), (1, 1, Some("HTTP 503")));
    s.record_attempts(&[fail(ids[0], OutboxState::Pending, t + 9 * SEC)]).unwrap();
    let hist = s.outbox_attempts(ids[0]).unwrap();
    assert_eq!(hist.iter().map(|a| a.n).collect::<Vec<_>>(), [1, 2]);
    let dead =
        s.search_outbox(&OutboxQuery { state: Some(OutboxState::Dead), limit: 10, ..Default::default() }).unwrap();
    assert_eq!((dead.len(), dead[0].sink.as_str(), dead[0].done_ns), (1, "mail", Some(t)));
    assert_eq!(s.outbox_next_due("mail").unwrap(), None);
    // retrying every dead one of a sink; a delivered one is never sent again
    assert_eq!(s.retry_outbox(&[], Some("slack"), t).unwrap(), 0);
    assert_eq!(s.retry_outbox(&[], Some("mail"), t + 20 * SEC).unwrap(), 1);
    assert_eq!(s.retry_outbox(&[ids[1]], None, t).unwrap(), 0);
    let back = s.outbox_due("mail", t + 20 * SEC, 10).unwrap();
    assert_eq!((back.len(), back[0].state, back[0].attempts), (1, OutboxState::Pending, 1));
    drop(s);
    // everything survives a reopen
    let s = B::open(dir.path());
    assert_eq!(s.search_outbox(&OutboxQuery { limit: 10, ..Default::default() }).unwrap().len(), 3);
}

fn actions_are_recorded_and_transition_once<B: Backend>() {
    use kustody_store::{ActionQuery, ActionRow};
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let row = |action: &str, state: &str| ActionRow {
        incident_id: Some(7),
        playbook: "contain".into(),
        action: action.into(),
        target: Some("shop/web-1".into()),
        state: state.into(),
        created_ns: BASE_NS,
        updated_ns: BASE_NS,
        detail: "{}".into(),
        ..Default::default()
    };
    let actions = [row("collect", "planned"), row("quarantine", "awaiting-approval")];
    let ids = s.commit(&Batch { actions: &actions, ..Default::default() }).unwrap().actions;
    assert_eq!(ids.len(), 2);
    let approved =
        ActionRow { id: Some(ids[1]), state: "planned".into(), updated_ns: BASE_NS + SEC, ..row("quarantine", "x") };
    assert!(s.transition_action(&approved, "awaiting-approval").unwrap());
    assert!(!s.transition_action(&approved, "awaiting-approval").unwrap(), "a second approval changes nothing");
    let done = ActionRow {
        id: Some(ids[0]),
        state: "applied".into(),
        detail: "{\"bundle\":\"x\"}".into(),
        ..row("collect", "x")
    };
    s.commit(&Batch { actions: std::slice::from_ref(&done), ..Default::default() }).unwrap();
    assert_eq!(s.action(ids[0]).unwrap().unwrap().state, "applied");
    let q = ActionQuery { incident_id: Some(7), limit: 10, ..Default::default() };
    let all = s.search_actions(&q).unwrap();
    assert_eq!(all.iter().map(|a| a.state.as_str()).collect::<Vec<_>>(), ["planned", "applied"]);
    let q = ActionQuery { state: Some("applied".into()), limit: 10, ..Default::default() };
    assert_eq!(s.search_actions(&q).unwrap().len(), 1);
    let q = ActionQuery { target: Some("shop/web-1".into()), limit: 10, ..Default::default() };
    assert_eq!(s.search_actions(&q).unwrap().len(), 2);
    let q = ActionQuery { target: Some("shop/web-2".into()), limit: 10, ..Default::default() };
    assert!(s.search_actions(&q).unwrap().is_empty());
}

fn ip_intervals_and_source_pods<B: Backend>() {
    use kustody_store::Interval;
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let iv = |uid: &str, name: &str, first: i64, ended: Option<i64>| Interval {
        ip: "10.1.0.7".into(),
        pod: kustody_iphistory::PodFacts {
            namespace: "shop".into(),
            name: name.into(),
            uid: uid.into(),
            ips: vec!["10.1.0.7".into()],
            node: Some("node-a".into()),
            ..Default::default()
        },
        first_ns: first,
        last_ns: first + SEC,
        ended_ns: ended,
    };
    s.save_intervals(&[
        iv("u2", "web-2", BASE_NS + 100 * SEC, None),
        iv("u1", "web-1", BASE_NS, Some(BASE_NS + 50 * SEC)),
    ])
    .unwrap();
    // an update of the same (ip, uid) replaces it
    s.save_intervals(&[iv("u2", "web-2", BASE_NS + 90 * SEC, None)]).unwrap();
    let got = s.ip_intervals("10.1.0.7").unwrap();
    assert_eq!(
        got.iter().map(|i| (i.pod.name.as_str(), i.first_ns)).collect::<Vec<_>>(),
        [("web-1", BASE_NS), ("web-2", BASE_NS + 90 * SEC)]
    );
    assert_eq!(got[0].pod.node.as_deref(), Some("node-a"));
    assert!(s.ip_intervals("10.9.9.9").unwrap().is_empty());
    assert_eq!(s.pod_intervals("shop", "web-1").unwrap().len(), 1);
    // open ones are always recent; ended ones only when last seen after the cut
    let recent = s.recent_intervals(BASE_NS + 80 * SEC, 100).unwrap();
    assert_eq!(recent.iter().map(|i| i.pod.name.as_str()).collect::<Vec<_>>(), ["web-2"]);
    assert_eq!(s.recent_intervals(0, 100).unwrap().len(), 2);
    // retention drops ended intervals, never open ones
    s.retain(BASE_NS + 10_000 * SEC, Some(SEC), None).unwrap();
    assert_eq!(s.ip_intervals("10.1.0.7").unwrap().iter().map(|i| i.pod.name.as_str()).collect::<Vec<_>>(), ["web-2"]);

    // the source pod is stored with an event and searchable
    let texts = texts(&[ev(1), ev(2)]);
    let mut rows = rows(&texts);
    rows[1].source_pod = Some("shop/web-2".into());
    let ids = s.append_events(&rows, Origin::Webhook).unwrap().ids;
    let found = s.search_events(&EventQuery { source_pod: Some("shop/web-2".into()), ..q() }).unwrap();
    assert_eq!(found.iter().map(|e| Some(e.id)).collect::<Vec<_>>(), [ids[1]]);
    assert_eq!(found[0].source_pod.as_deref(), Some("shop/web-2"));

    // named state
    assert_eq!(s.state("baseline").unwrap(), None);
    s.set_state("baseline", b"v1").unwrap();
    s.set_state("baseline", b"v2").unwrap();
    assert_eq!(s.state("baseline").unwrap().as_deref(), Some(&b"v2"[..]));
    drop(s);
    let s = B::open(dir.path());
    assert_eq!(s.ip_intervals("10.1.0.7").unwrap().len(), 1);
    assert_eq!(s.state("baseline").unwrap().as_deref(), Some(&b"v2"[..]));
}

fn counts(s: &impl Store, by: CountBy, namespace: Option<&str>, user: Option<&str>) -> Vec<(i64, String, u64)> {
    let q = CountQuery {
        since_ns: BASE_NS,
        until_ns: BASE_NS + 3600 * SEC,
        bucket_ns: 60 * SEC,
        namespace: namespace.map(str::to_owned),
        user: user.map(str::to_owned),
        by,
    };
    s.event_counts(&q).unwrap().into_iter().map(|c| ((c.start_ns - BASE_NS) / SEC, c.key, c.n)).collect()
}

fn events_are_counted_per_minute_by_namespace_and_user<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    // minute 0: 3 in default by alice, 2 in kube-system by bob; minute 1: 1 cluster-scoped by bob
    let mut evs: Vec<Ev> = (0..3).map(ev).collect();
    evs.extend((3..5).map(|n| Ev { namespace: Some("kube-system"), user: "bob".into(), ..ev(n) }));
    evs.push(Ev { namespace: None, user: "bob".into(), t: 70, ..ev(5) });
    put(&mut s, &evs, Origin::Webhook);
    // a duplicate is not counted twice
    put(&mut s, &evs[..1], Origin::File);
    assert_eq!(counts(&s, CountBy::Total, None, None), vec![(0, String::new(), 5), (60, String::new(), 1)]);
    assert_eq!(
        counts(&s, CountBy::Namespace, None, None),
        vec![(0, "default".into(), 3), (0, "kube-system".into(), 2), (60, String::new(), 1)]
    );
    assert_eq!(
        counts(&s, CountBy::User, None, None),
        vec![(0, "alice".into(), 3), (0, "bob".into(), 2), (60, "bob".into(), 1)]
    );
    assert_eq!(counts(&s, CountBy::Total, Some("kube-system"), None), vec![(0, String::new(), 2)]);
    assert_eq!(counts(&s, CountBy::Total, None, Some("bob")), vec![(0, String::new(), 2), (60, String::new(), 1)]);
    let hourly =
        CountQuery { since_ns: BASE_NS, until_ns: BASE_NS + 3600 * SEC, bucket_ns: 3600 * SEC, ..Default::default() };
    assert_eq!(s.event_counts(&hourly).unwrap().iter().map(|c| c.n).collect::<Vec<_>>(), vec![6]);
    let both = CountQuery { namespace: Some("default".into()), user: Some("alice".into()), ..hourly };
    assert!(s.event_counts(&both).is_err(), "not kept: an error, not a wrong number");
    // retention takes its events' counts with it
    s.retain(BASE_NS + 60 * SEC, Some(30 * SEC), None).unwrap();
    assert_eq!(counts(&s, CountBy::Total, None, None), vec![(60, String::new(), 1)]);
    assert_eq!(counts(&s, CountBy::User, None, None), vec![(60, "bob".into(), 1)]);
    // findings per bucket by priority
    let f = |rule: &str, t: i64, p: &str| FindingRow { priority: p.into(), ..finding(rule, t) };
    s.record_detections(&[f("a", 5, "Critical"), f("b", 10, "Warning"), f("c", 70, "Warning")], &[]).unwrap();
    let got: Vec<(i64, String, u64)> = s
        .finding_counts(BASE_NS, BASE_NS + 3600 * SEC, 60 * SEC)
        .unwrap()
        .into_iter()
        .map(|c| ((c.start_ns - BASE_NS) / SEC, c.key, c.n))
        .collect();
    assert_eq!(got, vec![(0, "Critical".into(), 1), (0, "Warning".into(), 1), (60, "Warning".into(), 1)]);
    let mut by_rule = s.rule_finding_counts().unwrap();
    by_rule.sort();
    assert_eq!(by_rule, vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
}

fn one_of_prefilters_on_stored_columns<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let evs = vec![
        Ev { verb: "get", ..ev(1) },
        Ev { verb: "delete", resource: Some("secrets"), ..ev(2) },
        Ev { verb: "delete", resource: Some("pods"), ..ev(3) },
        Ev { verb: "DELETE", resource: Some("secrets"), stage: "ResponseStarted", ..ev(4) },
    ];
    let (_, got) = put(&mut s, &evs, Origin::Webhook);
    let id = |n: usize| got[n].unwrap();
    let one =
        |column, values: &[&str], ci| OneOf { column, values: values.iter().map(|v| (*v).to_owned()).collect(), ci };
    let find_by = |one_of: Vec<OneOf>| find(&s, EventQuery { one_of, ..q() });
    assert_eq!(find_by(vec![one(KeyColumn::Verb, &["delete"], false)]), vec![id(2), id(1)]);
    assert_eq!(find_by(vec![one(KeyColumn::Verb, &["delete"], true)]), vec![id(3), id(2), id(1)], "case-insensitive");
    assert_eq!(
        find_by(vec![one(KeyColumn::Verb, &["delete"], true), one(KeyColumn::Resource, &["secrets"], false)]),
        vec![id(3), id(1)]
    );
    assert_eq!(find_by(vec![one(KeyColumn::Stage, &["ResponseStarted"], false)]), vec![id(3)]);
    assert_eq!(find_by(vec![one(KeyColumn::Subresource, &["exec"], false)]), Vec::<i64>::new(), "no column, no match");
    assert_eq!(find_by(vec![one(KeyColumn::Verb, &[], false)]), Vec::<i64>::new());
}

fn bad_records_are_kept_once_and_listed<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::open(dir.path());
    let big = vec![b'x'; kustody_store::MAX_BAD_RAW + 10];
    let mut a = kustody_store::BadRecord::new(10, "cloudwatch:r:/g", "s/1".into(), "truncated".into(), b"{\"kind\":");
    a.audit_id = Some("aid-1".into());
    a.cluster = Some("prod".into());
    let b = kustody_store::BadRecord::new(20, "cloudwatch:r:/g", "s/2".into(), "too long".into(), &big);
    let c = kustody_store::BadRecord::new(30, "file:/x.log", "line 3".into(), "not JSON".into(), b"nope");
    assert_eq!(s.append_bad_records(&[a.clone(), b.clone()]).unwrap(), 2);
    // read again after a restart: kept once
    assert_eq!(s.append_bad_records(&[a.clone(), c.clone()]).unwrap(), 1);
    let r = B::reader(dir.path());
    let all = r.bad_records(&kustody_store::BadRecordQuery { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(all.iter().map(|x| x.record.locator.as_str()).collect::<Vec<_>>(), vec!["line 3", "s/2", "s/1"]);
    assert_eq!(all[2].record, a);
    assert_eq!(all[1].record.raw.len(), kustody_store::MAX_BAD_RAW);
    assert_eq!(all[1].record.raw_len, big.len() as u64);
    let q = |source: Option<&str>, cluster: Option<&str>, since: Option<i64>, before: Option<i64>| {
        r.bad_records(&kustody_store::BadRecordQuery {
            source: source.map(str::to_owned),
            cluster: cluster.map(str::to_owned),
            since_ns: since,
            before_id: before,
            limit: 10,
        })
        .unwrap()
        .into_iter()
        .map(|x| x.record.locator)
        .collect::<Vec<_>>()
    };
    assert_eq!(q(Some("cloudwatch:r:/g"), None, None, None), vec!["s/2", "s/1"]);
    assert_eq!(q(None, Some("prod"), None, None), vec!["s/1"]);
    assert_eq!(q(None, None, Some(20), None), vec!["line 3", "s/2"]);
    assert_eq!(q(None, None, None, Some(all[1].id)), vec!["s/1"]);
    // a single writer always holds its sources' leases
    assert!(s.source_lease("eks:x", "me", std::time::Duration::from_secs(5)).unwrap().is_some());
    // retention removes old ones with the events
    s.retain(1_000, Some(975), None).unwrap();
    assert_eq!(q(None, None, None, None), vec!["line 3"]);
}

macro_rules! suite {
    ($backend:ident: $b:ty) => {
        mod $backend {
            suite!(@tests $b; append_and_dedup, ids_and_events_after, search_each_filter, paging_and_limits,
                findings_insert_update_search, record_batch_links_matches_to_new_findings_and_moves_the_cursor,
                alerts_dedup_and_search, cursors_and_offsets_survive_reopen,
                count_only_from, retention_by_age, retention_by_size, reopen_keeps_everything,
                reader_sees_commits_while_writer_open, real_events_from_fixture, read_only_refuses_writes,
                search_across_many_events, incidents_and_outbox_commit_with_findings,
                outbox_attempts_dead_letter_and_retry, actions_are_recorded_and_transition_once,
                ip_intervals_and_source_pods, events_are_counted_per_minute_by_namespace_and_user,
                one_of_prefilters_on_stored_columns, odd_values_are_stored_and_found, clusters_are_kept_apart,
                bad_records_are_kept_once_and_listed);
        }
    };
    (@tests $b:ty; $($t:ident),*) => {
        $(#[test] fn $t() {
            use super::Backend as _;
            if <$b>::available() {
                super::$t::<$b>()
            }
        })*
    };
}

suite!(sqlite: super::Sqlite);
#[cfg(feature = "postgres")]
suite!(postgres: super::pg::Pg);

// ---------------------------------------------------------------------------------------------
// EventRow.

#[test]
fn event_row_of_a_bound_service_account_token() {
    let e = Ev {
        user: "system:serviceaccount:shop:cart".into(),
        bound_pod: Some("cart-7d9f"),
        ips: vec!["10.9.9.9", "192.0.2.7"],
        ..ev(1)
    };
    let t = e.json();
    let r = EventRow::of(&Event::parse(&t).unwrap());
    assert_eq!(r.service_account.as_deref(), Some("shop/cart"));
    assert_eq!(r.pod.as_deref(), Some("shop/cart-7d9f"));
    assert_eq!(r.source_ips, vec!["10.9.9.9", "192.0.2.7"]);
    assert_eq!(r.time_ns, Some(BASE_NS + SEC));
    assert_eq!(r.code, Some(200));
    assert_eq!(r.raw, t);
    // A pod-name that is not a non-empty string names no pod.
    for bad in ["null", "7", "\"\""] {
        let t = t.replace("[\"cart-7d9f\"]", &format!("[{bad}]"));
        assert_eq!(EventRow::of(&Event::parse(&t).unwrap()).pod, None, "{bad}");
    }
    let pod = Ev { resource: Some("pods"), name: Some("web-0".into()), namespace: Some("shop"), ..ev(2) }.json();
    assert_eq!(EventRow::of(&Event::parse(&pod).unwrap()).pod.as_deref(), Some("shop/web-0"));
}

// ---------------------------------------------------------------------------------------------
// SQLite only.

#[test]
fn sqlite_schema_version_and_too_new() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().unwrap(), kustody_store::sqlite::SCHEMA_VERSION);
    drop(s);
    // Reopening applies nothing and keeps the version.
    assert_eq!(SqliteStore::open(dir.path()).unwrap().schema_version().unwrap(), kustody_store::sqlite::SCHEMA_VERSION);
    let db = dir.path().join(kustody_store::sqlite::DB_FILE);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        assert_eq!(c.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0)).unwrap(), "wal");
        assert_eq!(c.pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0)).unwrap(), 2, "incremental");
        c.pragma_update(None, "user_version", kustody_store::sqlite::SCHEMA_VERSION + 1).unwrap();
    }
    let too_new = |e: StoreError| match e {
        StoreError::TooNew { found, supported } => {
            assert_eq!(
                (found, supported),
                (kustody_store::sqlite::SCHEMA_VERSION + 1, kustody_store::sqlite::SCHEMA_VERSION)
            );
        }
        e => panic!("expected TooNew, got {e}"),
    };
    too_new(SqliteStore::open(dir.path()).unwrap_err());
    too_new(SqliteStore::open_read_only(dir.path()).unwrap_err());
}

#[test]
fn sqlite_opens_only_its_own_databases() {
    let dir = tempfile::tempdir().unwrap();
    // A reader needs an existing store.
    assert!(matches!(SqliteStore::open_read_only(dir.path()).unwrap_err(), StoreError::Open { .. }));
    // A database of something else is not taken over.
    let c = rusqlite::Connection::open(dir.path().join(kustody_store::sqlite::DB_FILE)).unwrap();
    c.execute_batch("CREATE TABLE mine (x)").unwrap();
    drop(c);
    assert!(matches!(SqliteStore::open(dir.path()).unwrap_err(), StoreError::Open { .. }));
    assert!(matches!(SqliteStore::open_read_only(dir.path()).unwrap_err(), StoreError::Open { .. }));
    // Nor a file that is no database.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(kustody_store::sqlite::DB_FILE), vec![b'x'; 8192]).unwrap();
    assert!(matches!(SqliteStore::open(other.path()).unwrap_err(), StoreError::Open { .. }));
    // A directory that cannot be made.
    let file = other.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(SqliteStore::open(&file.join("sub")).unwrap_err(), StoreError::Open { .. }));
}

#[test]
fn sqlite_older_schema_is_migrated_by_the_writer_only() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    // Pretend the database predates the last step: a reader refuses it.
    let db = dir.path().join(kustody_store::sqlite::DB_FILE);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "user_version", 0).unwrap();
    drop(c);
    assert!(matches!(SqliteStore::open_read_only(dir.path()).unwrap_err(), StoreError::Open { .. }));
}

#[test]
fn sqlite_reader_after_writer_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = SqliteStore::open(dir.path()).unwrap();
        put(&mut w, &(0..3).map(ev).collect::<Vec<_>>(), Origin::Webhook);
    }
    let r = SqliteStore::open_read_only(dir.path()).unwrap();
    assert_eq!(all_events(&r).len(), 3);
}

#[test]
fn sqlite_retention_bounds_pages_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    for chunk in (0..2000).collect::<Vec<_>>().chunks(400) {
        put(&mut s, &chunk.iter().map(|&i| Ev { pad: 1500, ..ev(i) }).collect::<Vec<_>>(), Origin::Webhook);
    }
    let used = s.used_bytes().unwrap();
    let bound = used / 3;
    s.retain(0, None, Some(bound)).unwrap();
    let now = s.used_bytes().unwrap();
    assert!(now <= bound, "{now} > {bound}");
    assert!(now > bound / 2, "deleted far more than needed: {now} of {bound}");
}

/// A real full disk: a tiny tmpfs. Appends fail with `Full`, nothing committed is lost, and
/// once space is freed appends work again.
#[test]
fn sqlite_full_disk() {
    let Some(fs) = kustody_testkit::Tmpfs::mount("1m") else { return };
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 256 << 10]).unwrap();
    let dir = fs.path().join("store");
    let mut s = SqliteStore::open(&dir).unwrap();
    let mut committed: Vec<String> = Vec::new();
    let mut n = 0;
    let err = loop {
        let evs: Vec<Ev> = (n..n + 20).map(|i| Ev { pad: 1500, ..ev(i) }).collect();
        n += 20;
        let t = texts(&evs);
        match s.append_events(&rows(&t), Origin::Webhook) {
            Ok(a) => {
                assert_eq!(a.stored, 20);
                committed.extend(t);
            }
            Err(e) => break e,
        }
        assert!(n < 100_000, "the disk never filled");
    };
    assert!(matches!(err, StoreError::Full(_)), "expected Full, got {err:?}");
    assert!(err.is_transient());
    assert!(!committed.is_empty());
    // Other writes fail the same way, or succeed; reads work.
    let check = |s: &SqliteStore, committed: &[String]| {
        let back = all_events(s);
        assert_eq!(back.iter().map(|e| e.raw.clone()).collect::<Vec<_>>(), committed);
        assert_eq!(s.stats().unwrap().events, committed.len() as u64);
    };
    check(&s, &committed);
    // Still full: still Full, still intact.
    let t = texts(&(n..n + 20).map(|i| Ev { pad: 1500, ..ev(i) }).collect::<Vec<_>>());
    n += 20;
    match s.append_events(&rows(&t), Origin::Webhook) {
        Err(StoreError::Full(_)) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    check(&s, &committed);
    // Every kind of write fails the same way, or succeeds when it fits.
    let full_or_ok = |r: Result<(), StoreError>| assert!(matches!(r, Ok(()) | Err(StoreError::Full(_))), "{r:?}");
    full_or_ok(s.set_cursor("detector", 1));
    full_or_ok(s.append_alerts(&[alert(1, "a", "b", &"x".repeat(100_000))]).map(drop));
    full_or_ok(s.record_detections(&[FindingRow { detail: "y".repeat(200_000), ..finding("f", 1) }], &[]).map(drop));
    full_or_ok(s.retain(0, None, Some(u64::MAX)).map(drop));
    check(&s, &committed);

    // Free space: appends work again, without reopening.
    std::fs::remove_file(&filler).unwrap();
    let t = texts(&(n..n + 20).map(|i| Ev { pad: 1500, ..ev(i) }).collect::<Vec<_>>());
    let a = s.append_events(&rows(&t), Origin::Webhook).unwrap();
    assert_eq!(a.stored, 20);
    committed.extend(t);
    s.set_cursor("detector", 1).unwrap();
    check(&s, &committed);
    drop(s);
    let s = SqliteStore::open(&dir).unwrap();
    check(&s, &committed);
    assert_eq!(s.cursor("detector").unwrap(), 1);
}

/// SQLite de-duplicates on the event's time too (a duplicate is the same event, so the same
/// time; the time keeps the index's writes local): the same auditID and stage at another time
/// is stored.
#[test]
fn sqlite_dedup_includes_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    let a = Ev { audit_id: Some("same".into()), ..ev(1) };
    let b = Ev { t: 2, ..a.clone() };
    let (_, ids) = put(&mut s, &[a.clone(), b, a], Origin::Webhook);
    assert!(ids[0].is_some() && ids[1].is_some() && ids[2].is_none());
    // Without a time, the same auditID and stage is a duplicate.
    let untimed = |o: Origin, s: &mut SqliteStore| {
        let t = Ev { audit_id: Some("untimed".into()), ..ev(3) }
            .json()
            .replace("\"stageTimestamp\"", "\"x\"")
            .replace("\"requestReceivedTimestamp\"", "\"y\"");
        s.append_events(&rows(&[t]), o).unwrap().ids[0]
    };
    assert!(untimed(Origin::Webhook, &mut s).is_some());
    assert!(untimed(Origin::File, &mut s).is_none());
    let e = s.search_events(&EventQuery { audit_id: Some("untimed".into()), ..q() }).unwrap();
    assert_eq!(e[0].origins, 3);
}

/// Texts compressed with a trained zstd dictionary come back exactly, after reopening and in a
/// reader; a missing dictionary is an error, not a panic.
#[test]
fn sqlite_dictionary_compression() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.dictionary(), None);
    let mut all = Vec::new();
    for chunk in (0..600).collect::<Vec<_>>().chunks(200) {
        let evs: Vec<Ev> = chunk.iter().map(|&i| Ev { user: format!("user-{}", i % 7), ..ev(i) }).collect();
        all.extend(put(&mut s, &evs, Origin::Webhook).0);
    }
    let before = s.used_bytes().unwrap();
    let id = s.train_dictionary().unwrap().expect("a dictionary from 600 events");
    assert_eq!(s.dictionary(), Some(id));
    let evs: Vec<Ev> = (600..1200).map(|i| Ev { user: format!("user-{}", i % 7), ..ev(i) }).collect();
    all.extend(put(&mut s, &evs, Origin::Webhook).0);
    let grown = s.used_bytes().unwrap() - before;
    eprintln!("600 events: {} B/event with the dictionary (before: {} B/event)", grown / 600, before / 600);
    let texts = |s: &SqliteStore| all_events(s).into_iter().map(|e| e.raw).collect::<Vec<_>>();
    assert_eq!(texts(&s), all);
    assert_eq!(s.search_events(&EventQuery { user: Some("user-3".into()), limit: 1000, ..q() }).unwrap().len(), 171);
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.dictionary(), Some(id), "the newest dictionary is used again");
    let r = SqliteStore::open_read_only(dir.path()).unwrap();
    assert_eq!(texts(&r), all);
    assert_eq!(texts(&s), all);
    drop((s, r));
    // Without its dictionary a text cannot be read: an error.
    let c = rusqlite::Connection::open(dir.path().join(kustody_store::sqlite::DB_FILE)).unwrap();
    c.execute("DELETE FROM dicts", []).unwrap();
    drop(c);
    let r = SqliteStore::open_read_only(dir.path()).unwrap();
    assert!(r.events_after(0, 10).is_ok(), "the first events predate the dictionary");
    match r.events_after(590, 100) {
        Err(StoreError::Other(m)) => assert!(m.contains("dictionary"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The writer trains its first dictionary by itself, in the background, after a few thousand
/// events, and uses it without losing a text.
#[test]
fn sqlite_dictionary_trained_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    let mut all = Vec::new();
    let start = std::time::Instant::now();
    let mut n = 0;
    while s.dictionary().is_none() {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "no dictionary after {n} events");
        let evs: Vec<Ev> = (n..n + 400).map(|i| Ev { user: format!("user-{}", i % 11), ..ev(i) }).collect();
        n += 400;
        all.extend(put(&mut s, &evs, Origin::Webhook).0);
    }
    assert!(n > 4000, "trained on the first 4000 events");
    all.extend(put(&mut s, &(n..n + 400).map(ev).collect::<Vec<_>>(), Origin::Webhook).0);
    let back: Vec<String> = all_events(&s).into_iter().map(|e| e.raw).collect();
    assert_eq!(back, all);
}

/// Real kube-apiserver events with a dictionary trained on part of them.
#[test]
fn sqlite_dictionary_on_real_events() {
    let Some(shared) = kustody_testkit::shared("fixtures/kube-apiserver/audit.jsonl") else { return };
    let text = std::fs::read_to_string(shared.join("fixtures/kube-apiserver/audit.jsonl")).unwrap();
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    s.append_events(&rows(first), Origin::File).unwrap();
    let before = s.used_bytes().unwrap();
    assert!(s.train_dictionary().unwrap().is_some());
    s.append_events(&rows(second), Origin::File).unwrap();
    eprintln!(
        "{} real events ({} B of text): {} KiB more pages with a dictionary from the {} before",
        second.len(),
        second.iter().map(String::len).sum::<usize>(),
        (s.used_bytes().unwrap() - before) >> 10,
        first.len()
    );
    let back: Vec<String> = all_events(&s).into_iter().map(|e| e.raw).collect();
    let mut want: Vec<String> = Vec::new();
    for l in &lines {
        // The fixture repeats some events (same auditID and stage): stored once.
        let ev = Event::parse(l).unwrap();
        let key = (ev.audit_id().map(str::to_owned), ev.stage().map(str::to_owned));
        if !want.iter().any(|w| {
            let e = Event::parse(w).unwrap();
            (e.audit_id().map(str::to_owned), e.stage().map(str::to_owned)) == key
        }) {
            want.push(l.clone());
        }
    }
    assert_eq!(back, want);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only.

/// A server of its own (these tests stop and restart it, or look inside the database).
#[cfg(feature = "postgres")]
fn own_postgres(db: &str) -> Option<(kustody_testkit::postgres::Postgres, kustody_store::PgConfig)> {
    let pg = kustody_testkit::postgres::Postgres::start()?;
    pg.create_db(db);
    let cfg = kustody_store::PgConfig::new(pg.url(db).into(), None).unwrap();
    Some((pg, cfg))
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_outage_is_transient_and_the_store_reconnects() {
    let Some((pg, cfg)) = own_postgres("outage") else { return };
    let mut s = kustody_store::PgStore::open(&cfg).unwrap();
    let r = kustody_store::PgStore::open_read_only(&cfg).unwrap();
    put(&mut s, &[ev(1)], Origin::Webhook);
    pg.ctl("stop");
    let e = s.append_events(&rows(&texts(&[ev(2)])), Origin::Webhook).unwrap_err();
    assert!(e.is_transient(), "a stopped server is worth retrying: {e}");
    assert!(!e.to_string().contains(pg.password()), "no password in messages: {e}");
    assert!(e.to_string().contains(cfg.target()), "the server is named: {e}");
    assert!(r.stats().unwrap_err().is_transient());
    pg.ctl("start");
    // nothing of the failed append was stored; both reconnect by themselves
    put(&mut s, &[ev(2)], Origin::Webhook);
    assert_eq!(all_events(&r).len(), 2);
    assert_eq!(r.stats().unwrap().events, 2);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_keeps_events_in_day_partitions_and_retention_drops_whole_days() {
    let Some((pg, cfg)) = own_postgres("days") else { return };
    let mut s = kustody_store::PgStore::open(&cfg).unwrap();
    let day = 86_400;
    // three days, the second twice (two batches), and an event without a time
    let evs: Vec<Ev> = [0, 10, day + 5, 2 * day + 7].iter().enumerate().map(|(i, &t)| Ev { t, ..ev(i) }).collect();
    let (_, got) = put(&mut s, &evs, Origin::Webhook);
    put(&mut s, &[Ev { t: day + 9, ..ev(10) }], Origin::File);
    let text = ev(20).json().replace("\"stageTimestamp\"", "\"x\"").replace("\"requestReceivedTimestamp\"", "\"y\"");
    s.append_events(&rows(&[text]), Origin::Webhook).unwrap();
    s.record_detections(
        &[],
        &[MatchRow { event_id: got[0].unwrap(), rule: "r".into(), priority: "Notice".into(), finding_id: None }],
    )
    .unwrap();
    let mut c = ::postgres::Client::connect(&pg.url("days"), ::postgres::NoTls).unwrap();
    let parts = |c: &mut ::postgres::Client| -> Vec<String> {
        let mut v: Vec<String> = c
            .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.sort();
        v
    };
    let first = BASE_NS / (86_400 * SEC);
    let d = |k: i64| format!("events_d{}", first + k);
    // and tomorrow's, made a day early
    let today = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / 86_400;
    let tomorrow = format!("events_d{}", today + 1);
    let mut want = vec![d(0), d(1), d(2), "events_other".to_owned(), tomorrow.clone()];
    want.sort();
    assert_eq!(parts(&mut c), want);
    let in_part = |c: &mut ::postgres::Client, p: &str| -> i64 {
        c.query_one(&format!("SELECT count(*) FROM {p}"), &[]).unwrap().get(0)
    };
    assert_eq!((in_part(&mut c, &d(0)), in_part(&mut c, &d(1)), in_part(&mut c, "events_other")), (2, 2, 1));
    // keep what is newer than day 1 + 6 s: day 0 goes whole, day 1 loses one event
    let r = s.retain(BASE_NS + (day + 6) * SEC, Some(0), None).unwrap();
    assert_eq!(r.events_removed, 3);
    let mut want = vec![d(1), d(2), "events_other".to_owned(), tomorrow];
    want.sort();
    assert_eq!(parts(&mut c), want);
    let st = s.stats().unwrap();
    assert_eq!((st.events, st.matches), (3, 0));
    let counts = s
        .event_counts(&CountQuery {
            since_ns: BASE_NS - SEC,
            until_ns: BASE_NS + 3 * day * SEC,
            bucket_ns: 86_400 * SEC,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(counts.iter().map(|c| c.n).sum::<u64>(), 2, "the per-minute counts follow the removals: {counts:?}");
    // a new day after retention
    put(&mut s, &[Ev { t: 3 * day, ..ev(30) }], Origin::Webhook);
    assert!(parts(&mut c).contains(&d(3)));
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_refuses_foreign_and_newer_databases() {
    let Some((pg, cfg)) = own_postgres("mine") else { return };
    drop(kustody_store::PgStore::open(&cfg).unwrap());
    let mut c = ::postgres::Client::connect(&pg.url("mine"), ::postgres::NoTls).unwrap();
    c.execute("UPDATE kustody_meta SET value = 99 WHERE name = 'schema_version'", &[]).unwrap();
    let e = kustody_store::PgStore::open(&cfg).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    assert!(matches!(kustody_store::PgStore::open_read_only(&cfg).unwrap_err(), StoreError::TooNew { .. }));
    // a database with someone else's `events` table
    pg.create_db("theirs");
    let mut c = ::postgres::Client::connect(&pg.url("theirs"), ::postgres::NoTls).unwrap();
    c.batch_execute("CREATE TABLE events (x int)").unwrap();
    let theirs = kustody_store::PgConfig::new(pg.url("theirs").into(), None).unwrap();
    assert!(matches!(kustody_store::PgStore::open(&theirs).unwrap_err(), StoreError::Open { .. }));
    // an empty database is no store to read
    pg.create_db("empty");
    let empty = kustody_store::PgConfig::new(pg.url("empty").into(), None).unwrap();
    assert!(matches!(kustody_store::PgStore::open_read_only(&empty).unwrap_err(), StoreError::Open { .. }));
    // a wrong password is refused without repeating it
    let wrong =
        kustody_store::PgConfig::new(pg.url("mine").replace(pg.password(), "not-the-password").into(), None).unwrap();
    let e = kustody_store::PgStore::open(&wrong).unwrap_err();
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    // without `sslmode`, TLS is required over TCP (this server has none): no silent plain text
    let url = pg.url("mine").replace("?sslmode=disable", "");
    let e = kustody_store::PgStore::open(&kustody_store::PgConfig::new(url.into(), None).unwrap()).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("tls") || e.to_string().contains("SSL"), "{e}");
    // an `@` in the password must be percent-encoded; the host is then not a piece of it
    let e = kustody_store::PgConfig::new("postgres://u:p@ss@db.example/x".to_owned().into(), None).unwrap_err();
    assert!(!e.to_string().contains("ss@") && !e.to_string().contains("p@"), "{e}");
    // not a connection string at all
    let e = kustody_store::PgConfig::new("postgres://u:secret@h:notaport/db".to_owned().into(), None).unwrap_err();
    assert!(!e.to_string().contains("secret"), "{e}");
}

/// Times from the distant past or future (a broken clock, a forged event) are stored and found
/// by time, but make no partition of their own: one batch cannot make a partition per day.
#[cfg(feature = "postgres")]
#[test]
fn postgres_partitions_only_a_window_of_days() {
    let Some((pg, cfg)) = own_postgres("window") else { return };
    let mut s = kustody_store::PgStore::open(&cfg).unwrap();
    let year = 365 * 86_400;
    let evs: Vec<Ev> = (0..50).map(|i| Ev { t: (i + 1) * 3 * year, ..ev(i as usize) }).collect();
    let old = Ev { t: -30 * year, ..ev(100) };
    let (_, got) = put(&mut s, &[evs.clone(), vec![old]].concat(), Origin::Webhook);
    let mut c = ::postgres::Client::connect(&pg.url("window"), ::postgres::NoTls).unwrap();
    let parts: i64 =
        c.query_one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass", &[]).unwrap().get(0);
    assert_eq!(parts, 2, "only events_other, and tomorrow's made a day early");
    let far = find(&s, EventQuery { since_ns: Some(BASE_NS + 100 * year * SEC), ..q() });
    assert_eq!(far.len(), 17, "events 100+ years ahead, by time");
    let before = find(&s, EventQuery { until_ns: Some(BASE_NS - 20 * year * SEC), ..q() });
    assert_eq!(before, vec![got[50].unwrap()]);
    // redelivered: still one each
    let again = s.append_events(&rows(&texts(&evs)), Origin::File).unwrap();
    assert_eq!(again.duplicates, 50);
}

/// One writer per database (the live detector numbers findings and incidents itself): a second
/// is refused, by name, until the first is gone; readers are not limited.
#[cfg(feature = "postgres")]
#[test]
fn postgres_admits_one_writer_at_a_time() {
    let Some((_pg, cfg)) = own_postgres("one") else { return };
    let first = kustody_store::PgStore::open(&cfg).unwrap();
    let e = kustody_store::PgStore::open(&cfg).unwrap_err();
    assert!(e.to_string().contains("another kustody serve is writing"), "{e}");
    let readers: Vec<_> = (0..3).map(|_| kustody_store::PgStore::open_read_only(&cfg).unwrap()).collect();
    assert!(readers.iter().all(|r| r.stats().is_ok()));
    drop(first);
    let mut second = kustody_store::PgStore::open(&cfg).unwrap();
    put(&mut second, &[ev(1)], Origin::Webhook);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_shared_writers_take_id_blocks_leases_and_find_stored_events() {
    let Some((_pg, cfg)) = own_postgres("shared") else { return };
    // a single writer first: it numbers findings itself
    {
        let mut single = kustody_store::PgStore::open(&cfg).unwrap();
        let ids = single.record_detections(&[finding("r", 1), finding("r", 2)], &[]).unwrap();
        assert_eq!(ids, vec![1, 2]);
        // shared writers are refused while it writes
        let shared = cfg.clone().shared_writers();
        let e = kustody_store::PgStore::open(&shared).unwrap_err();
        assert!(e.to_string().contains("single-writer"), "{e}");
    }
    let shared = cfg.clone().shared_writers();
    let mut a = kustody_store::PgStore::open(&shared).unwrap();
    let mut b = kustody_store::PgStore::open(&shared).unwrap();
    // and a single writer is refused while shared ones write
    let e = kustody_store::PgStore::open(&cfg).unwrap_err();
    assert!(e.to_string().contains("another kustody serve"), "{e}");

    // id blocks: above every stored id, never the same twice
    let (fa, ia, n) = a.reserve_ids().unwrap();
    let (fb, ib, _) = b.reserve_ids().unwrap();
    assert!(fa > 2 && fb > 2 && ia >= 1 && ib >= 1);
    assert!(fa.abs_diff(fb) >= n as u64 && ia.abs_diff(ib) >= n as u64, "{fa} {fb} {ia} {ib} {n}");
    let mut f = finding("r", 3);
    f.id = Some(fa);
    a.record_detections(&[f], &[]).unwrap();
    let (fc, ..) = b.reserve_ids().unwrap();
    assert!(fc > fa.max(fb), "{fc}");

    // events stored by one writer are found by their key by any reader
    let (t, stored) = put(&mut a, &[ev(1), ev(2)], Origin::Webhook);
    let mut probe = rows(&t);
    let other = texts(&[ev(3)]);
    probe.extend(rows(&other));
    let r = kustody_store::PgStore::open_read_only(&shared).unwrap();
    let found = r.stored_event_ids(&probe).unwrap();
    assert_eq!(found, vec![stored[0], stored[1], None]);
    // another cluster's event with the same auditID is another event
    let mut theirs = rows(&t);
    theirs[0].cluster = Some("other".into());
    assert_eq!(r.stored_event_ids(&theirs[..1]).unwrap(), vec![None]);

    // leases: one member takes all partitions, a second takes half once the first lets go
    let ttl = std::time::Duration::from_secs(2);
    let la = a.bus_leases("a", 8, ttl).unwrap();
    assert_eq!(la.iter().map(|l| l.0).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert!(la.iter().all(|l| l.1 == 1));
    assert!(b.bus_leases("b", 8, ttl).unwrap().is_empty(), "nothing is free yet");
    // a's next renewal sees two members and gives up its extra half
    let la = a.bus_leases("a", 8, ttl).unwrap();
    assert_eq!(la.len(), 4);
    let lb = b.bus_leases("b", 8, ttl).unwrap();
    assert_eq!(lb.len(), 4);
    assert!(lb.iter().all(|l| l.1 == 2), "a moved partition's epoch rises: {lb:?}");
    // a stops renewing (dies): after the ttl, b holds everything
    std::thread::sleep(ttl + std::time::Duration::from_millis(300));
    let lb = b.bus_leases("b", 8, ttl).unwrap();
    assert_eq!(lb.len(), 8, "{lb:?}");
    // source leases: one holder at a time, taken over after the ttl or at once on release
    assert_eq!(a.source_lease("eks:prod", "a", ttl).unwrap(), Some(1));
    assert_eq!(b.source_lease("eks:prod", "b", ttl).unwrap(), None);
    assert_eq!(a.source_lease("eks:prod", "a", ttl).unwrap(), Some(1), "renewed, same epoch");
    assert_eq!(b.source_lease("eks:other", "b", ttl).unwrap(), Some(1), "another source is free");
    std::thread::sleep(ttl + std::time::Duration::from_millis(300));
    assert_eq!(b.source_lease("eks:prod", "b", ttl).unwrap(), Some(2), "expired: b takes it, epoch rises");
    assert_eq!(a.source_lease("eks:prod", "a", ttl).unwrap(), None);
    b.release_source_lease("eks:prod", "b").unwrap();
    assert_eq!(a.source_lease("eks:prod", "a", ttl).unwrap(), Some(3));
    // a graceful release hands over at once
    b.release_leases("b", None).unwrap();
    let la = a.bus_leases("a", 8, ttl).unwrap();
    assert_eq!(la.len(), 8);
    // a commit fenced by a lease: refused once the partition changed hands (b's old epoch)
    let (p0, epoch) = la[0];
    let fenced = |owner: &'static str, epoch: i64, value: i64| Batch {
        cursor: Some(("bus.0", value)),
        lease: Some((p0, owner, epoch)),
        ..Default::default()
    };
    a.commit(&fenced("a", epoch, 10)).unwrap();
    let e = b.commit(&fenced("b", epoch - 1, 20)).unwrap_err();
    assert!(e.to_string().contains("changed hands"), "{e}");
    assert_eq!(r.cursor("bus.0").unwrap(), 10);
    // and a partition's cursor never moves back
    a.commit(&fenced("a", epoch, 5)).unwrap();
    assert_eq!(r.cursor("bus.0").unwrap(), 10);
}
