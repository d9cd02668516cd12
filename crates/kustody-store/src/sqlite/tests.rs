//! The query plans of searches: each filter is served by an index, newest first without a
//! sort where the docs promise it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;

fn plan(s: &SqliteStore, sql: &query::Sql) -> String {
    // A bucketed search's first parameter is the bucket: any integer does.
    let mut st = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text)).unwrap();
    let rows = st.query_map(rusqlite::params_from_iter(sql.args.iter()), |r| r.get::<_, String>(3)).unwrap();
    rows.collect::<Result<Vec<_>, _>>().unwrap().join(" | ")
}

#[test]
fn every_event_filter_uses_an_index_without_sorting() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let v = || Some("x".to_owned());
    let cases: Vec<(EventQuery, &str)> = vec![
        (EventQuery { user: v(), ..Default::default() }, "events_user"),
        (EventQuery { service_account: v(), ..Default::default() }, "events_user"),
        (EventQuery { service_account: Some("ns/sa".into()), ..Default::default() }, "events_user"),
        (EventQuery { pod: v(), ..Default::default() }, "events_pod"),
        (EventQuery { namespace: v(), ..Default::default() }, "events_namespace"),
        (EventQuery { resource: v(), ..Default::default() }, "events_resource"),
        (EventQuery { verb: v(), ..Default::default() }, "events_verb"),
        (EventQuery { name: v(), ..Default::default() }, "events_name"),
        (EventQuery { ip: v(), ..Default::default() }, "event_ips_ip"),
        (EventQuery { rule: v(), ..Default::default() }, "matches_rule"),
        (EventQuery { before_id: Some(5), ..Default::default() }, "INTEGER PRIMARY KEY"),
        (EventQuery { since_ns: Some(5), ..Default::default() }, "SCAN e"),
        (
            EventQuery {
                user: v(),
                verb: v(),
                namespace: v(),
                since_ns: Some(1),
                until_ns: Some(9),
                ..Default::default()
            },
            "events_user",
        ),
        (EventQuery { ip: v(), user: v(), rule: v(), before_id: Some(9), ..Default::default() }, "event_ips_ip"),
        (EventQuery { rule: v(), pod: v(), ..Default::default() }, "matches_rule"),
    ];
    for (q, index) in cases {
        let p = plan(&s, query::events(&q).sql());
        // An index is searched (seeks on its leading columns), never scanned whole.
        let searched = p.split(" | ").any(|step| step.starts_with("SEARCH") && step.contains(index));
        assert!(searched || !index.contains('_'), "{q:?}: {p}");
        assert!(p.contains(index), "{q:?}: {p}");
        assert!(!p.contains("TEMP B-TREE"), "{q:?} sorts: {p}");
    }
    let p = plan(&s, query::events(&EventQuery { audit_id: v(), ip: v(), ..Default::default() }).sql());
    assert!(p.contains("SEARCH e USING INDEX events_audit") && !p.contains("TEMP B-TREE"), "{p}");
    // A closed time window: the time index.
    let p = plan(&s, query::events(&EventQuery { since_ns: Some(1), until_ns: Some(2), ..Default::default() }).sql());
    assert!(p.contains("events_time"), "{p}");
}

#[test]
fn alert_and_finding_filters_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let v = || Some("x".to_owned());
    for (q, index) in [
        (AlertQuery { pod: v(), namespace: v(), ..Default::default() }, "alerts_pod"),
        (AlertQuery { pod: v(), ..Default::default() }, "alerts_pod_name"),
        (AlertQuery { rule: v(), ..Default::default() }, "alerts_rule"),
        (AlertQuery { since_ns: Some(1), until_ns: Some(2), ..Default::default() }, "alerts_time"),
    ] {
        let p = plan(&s, &query::alerts(&q));
        assert!(p.contains(index), "{q:?}: {p}");
    }
    for (q, index) in [
        (FindingQuery { user: v(), ..Default::default() }, "findings_user"),
        (FindingQuery { rule: v(), ..Default::default() }, "finding_rules"),
    ] {
        let p = plan(&s, &query::findings(&q));
        assert!(p.contains(index), "{q:?}: {p}");
    }
}

#[test]
fn dedup_update_and_gap_count_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let explain = |sql: &str| {
        let mut st = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join(" | ")
    };
    let p = explain(
        "UPDATE events SET origins = origins | 1 WHERE ifnull(time_ns, 0) = ifnull(5, 0) AND audit_id = 'a' \
         AND ifnull(stage, '') = ifnull('b', '') AND origins & 1 = 0",
    );
    assert!(p.contains("events_dedup"), "{p}");
    let p = explain("SELECT count(*) FROM events WHERE origins = 2 AND time_ns < 5 AND origins NOT IN (1, 3)");
    assert!(p.contains("events_lone_origins"), "{p}");
    let p = explain("SELECT count(*) FROM events WHERE origins = 3 AND time_ns < 5");
    assert!(p.contains("events_time"), "{p}");
    // The id range of a bucketed search: two seeks, no scan.
    let p = explain("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)");
    assert!(!p.contains("SCAN events"), "{p}");
    assert_eq!(p.matches("SEARCH events").count(), 2, "{p}");
    let p = explain("SELECT id, text_len FROM events WHERE time_ns < 5 ORDER BY time_ns LIMIT 10");
    assert!(p.contains("events_time"), "{p}");
}
