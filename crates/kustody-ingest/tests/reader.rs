//! The native reader on every layout, on compression, and on every kind of bad record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::io::Write;
use std::sync::Arc;

use kustody_ingest::{ChunkReader, ReadOptions};
use kustody_model::Event;

#[derive(Debug, PartialEq)]
enum Out {
    /// (line, auditID)
    Ev(u64, String),
    /// (line, reason contains)
    Bad(u64, String),
}

fn read_with(bytes: &[u8], opts: ReadOptions) -> Vec<Out> {
    let mut r = ChunkReader::from_reader(Arc::from("t"), Box::new(std::io::Cursor::new(bytes.to_vec())), opts).unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk() {
        chunk.records(|rec| match rec {
            Err(b) => out.push(Out::Bad(b.line, b.reason)),
            Ok(mut rec) => match rec.event() {
                Ok(ev) => out.push(Out::Ev(rec.line, ev.audit_id().unwrap_or("-").to_owned())),
                Err(e) => out.push(Out::Bad(rec.line, e.to_string())),
            },
        });
    }
    out
}

fn read(bytes: &[u8]) -> Vec<Out> {
    // Tiny chunks so records straddle chunk boundaries.
    read_with(bytes, ReadOptions { chunk_bytes: 64, max_record_bytes: 4096, ..ReadOptions::default() })
}

fn ev(id: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","stage":"ResponseComplete","verb":"get","requestReceivedTimestamp":"2024-01-01T00:00:00Z","stageTimestamp":"2024-01-01T00:00:01Z"}}"#
    )
}

fn ids(out: &[Out]) -> Vec<(u64, &str)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Ev(l, id) => Some((*l, id.as_str())),
            Out::Bad(..) => None,
        })
        .collect()
}

fn bad(out: &[Out]) -> Vec<(u64, &str)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Bad(l, r) => Some((*l, r.as_str())),
            Out::Ev(..) => None,
        })
        .collect()
}

#[test]
fn json_lines_with_crlf_blank_lines_and_bom() {
    let text = format!("\u{feff}{}\r\n\n{}\n   \n{}", ev("a"), ev("b"), ev("c"));
    assert_eq!(ids(&read(text.as_bytes())), [(1, "a"), (3, "b"), (5, "c")]);
}

#[test]
fn v1beta1_and_no_api_version_and_fallback_timestamps() {
    let lines = [
        r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1beta1","auditID":"old","stage":"ResponseComplete","verb":"get","timestamp":"2017-09-11T19:55:05Z"}"#,
        r#"{"auditID":"noapi","verb":"list","requestReceivedTimestamp":"2024-01-01T00:00:00Z"}"#,
        r#"{"auditID":"notime","verb":"list"}"#,
    ];
    let text = lines.join("\n");
    let mut r =
        ChunkReader::from_reader("t".into(), Box::new(std::io::Cursor::new(text.into_bytes())), ReadOptions::default())
            .unwrap();
    let mut times = Vec::new();
    while let Some(c) = r.next_chunk() {
        c.records(|rec| times.push(Event::parse(rec.unwrap().text).unwrap().time_ns()));
    }
    assert_eq!(times, [Some(1_505_159_705_000_000_000), Some(1_704_067_200_000_000_000), None]);
}

#[test]
fn event_list_and_arrays_on_one_line() {
    let text = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{},{}]}}\n[{},{}]\n{}",
        ev("l1"),
        ev("l2"),
        ev("a1"),
        ev("a2"),
        ev("x")
    );
    assert_eq!(ids(&read(text.as_bytes())), [(1, "l1"), (1, "l2"), (2, "a1"), (2, "a2"), (3, "x")]);
}

#[test]
fn pretty_printed_documents() {
    let pretty =
        |id: &str| serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&ev(id)).unwrap()).unwrap();
    // One document.
    let out = read(pretty("one").as_bytes());
    assert_eq!(ids(&out), [(1, "one")]);
    // Several concatenated documents keep their starting lines.
    let two = format!("{}\n{}\n", pretty("d1"), pretty("d2"));
    let lines_first = pretty("d1").lines().count() as u64;
    assert_eq!(ids(&read(two.as_bytes())), [(1, "d1"), (lines_first + 1, "d2")]);
    // A pretty EventList and a pretty array.
    let list =
        format!("{{\n  \"kind\": \"EventList\",\n  \"items\": [\n    {},\n    {}\n  ]\n}}\n", ev("p1"), ev("p2"));
    assert_eq!(ids(&read(list.as_bytes())), [(4, "p1"), (5, "p2")]);
    let arr = format!("[\n  {},\n  {}\n]\n", ev("q1"), ev("q2"));
    assert_eq!(ids(&read(arr.as_bytes())), [(2, "q1"), (3, "q2")]);
}

#[test]
fn yaml_lists_and_errors_have_their_own_lines() {
    let text = "# c\nkind: EventList\nitems:\n- auditID: i1\n  verb: get\n- auditID: i2\n  verb: list\n---\n# c\n# c\nkind: Event\nauditID: [unclosed\n---\n- auditID: s1\n  verb: get\n";
    let out = read(text.as_bytes());
    assert_eq!(ids(&out), [(4, "i1"), (6, "i2"), (14, "s1")]);
    let b = bad(&out);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!((12..=13).contains(&b[0].0), "{b:?}");
    // A billion-laughs document is one bad record, not an out-of-memory abort.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs
            .push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let out = read(laughs.as_bytes());
    assert_eq!(bad(&out).len(), 1);
    let deep = format!("x:\n{}y\n", (0..5000).map(|i| format!("{}- \n", "  ".repeat(i))).collect::<String>());
    let out = read_with(deep.as_bytes(), ReadOptions::default());
    assert_eq!(ids(&out).len(), 0);
}

#[test]
fn yaml_documents() {
    let text = "# a comment\nkind: Event\napiVersion: audit.k8s.io/v1\nauditID: y1\nverb: get\n---\nkind: Event\nauditID: y2\nverb: list\n";
    assert_eq!(ids(&read(text.as_bytes())), [(2, "y1"), (7, "y2")]);
}

#[test]
fn gzip_and_concatenated_gzip_members() {
    let mut bytes = Vec::new();
    for part in [format!("{}\n", ev("g1")), format!("{}\n", ev("g2"))] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(part.as_bytes()).unwrap();
        bytes.extend(gz.finish().unwrap());
    }
    assert_eq!(ids(&read(&bytes)), [(1, "g1"), (2, "g2")]);
}

#[test]
fn truncated_gzip_keeps_what_was_read_and_reports() {
    let body: String = (0..200).map(|i| format!("{}\n", ev(&format!("e{i}")))).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let full = gz.finish().unwrap();
    let cut = full.get(..full.len() / 2).unwrap();
    let out = read(cut);
    let good = ids(&out);
    assert!(!good.is_empty() && good.len() < 200, "{}", good.len());
    let b = bad(&out);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].1.contains("truncated") || b[0].1.contains("read error"), "{b:?}");
}

#[test]
fn bad_records_are_counted_with_line_and_reason_and_the_run_goes_on() {
    let long = format!(r#"{{"auditID":"long","verb":"get","x":"{}"}}"#, "a".repeat(5000));
    let mut text: Vec<u8> = Vec::new();
    text.extend(format!("{}\n", ev("ok1")).bytes()); // 1
    text.extend(b"{\"auditID\":\"trunc\",\"verb\":\"g\n"); // 2 truncated JSON
    text.extend(b"42\n"); // 3 not an object
    text.extend(b"{\"auditID\":\"wt\",\"verb\":\"get\",\"objectRef\":{\"name\":7}}\n"); // 4 wrong type
    text.extend(b"{\"auditID\":\"utf\",\"verb\":\"g\xff\xfet\"}\n"); // 5 invalid UTF-8
    text.extend(format!("{long}\n").bytes()); // 6 over the size limit
    text.extend(b"{\"kind\":\"Pod\",\"apiVersion\":\"v1\"}\n"); // 7 another kind
    text.extend(format!("{}\n", ev("ok2")).bytes()); // 8
    let out = read(&text);
    assert_eq!(ids(&out), [(1, "ok1"), (8, "ok2")]);
    let b = bad(&out);
    let lines: Vec<u64> = b.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7], "{b:?}");
    assert!(b[0].1.contains("invalid JSON"), "{b:?}");
    assert!(b[1].1.contains("not a JSON object"), "{b:?}");
    assert!(b[2].1.contains("`objectRef.name`"), "{b:?}");
    assert!(b[3].1.contains("invalid UTF-8"), "{b:?}");
    assert!(b[4].1.contains("over the 4096 byte limit"), "{b:?}");
    assert!(b[5].1.contains("kind is `Pod`"), "{b:?}");
}

#[test]
fn a_line_over_the_limit_is_skipped_without_buffering_it() {
    // The line is far larger than the reader's buffer target: it must be skipped in streaming.
    let huge = format!("{{\"auditID\":\"h\",\"x\":\"{}\"}}", "y".repeat(300_000));
    let text = format!("{}\n{huge}\n{}\n", ev("before"), ev("after"));
    let out = read_with(
        text.as_bytes(),
        ReadOptions { chunk_bytes: 1024, max_record_bytes: 10_000, ..ReadOptions::default() },
    );
    assert_eq!(ids(&out), [(1, "before"), (3, "after")]);
    assert_eq!(bad(&out).len(), 1);
    assert_eq!(bad(&out)[0].0, 2);
}

#[test]
fn a_broken_pretty_document_is_reported_line_by_line() {
    let text = "{\n  \"auditID\": \"x\",\n  \"verb\": \n";
    let out = read(text.as_bytes());
    assert_eq!(ids(&out).len(), 0);
    assert!(!bad(&out).is_empty(), "{out:?}");
    // A second document after a complete first one: the first is kept.
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&ev("ok")).unwrap()).unwrap();
    let text = format!("{pretty}\n{{\n  \"auditID\": \"x\",\n");
    let out = read(text.as_bytes());
    assert_eq!(ids(&out), [(1, "ok")]);
    assert_eq!(bad(&out).len(), 1, "{out:?}");
}

#[test]
fn a_broken_first_line_does_not_hide_a_json_lines_file() {
    let mut text = String::from("\"annotations\":{\"a\":\"b\"},\n");
    for i in 0..50 {
        text.push_str(&ev(&format!("e{i}")));
        text.push('\n');
    }
    let out = read_with(text.as_bytes(), ReadOptions::default());
    assert_eq!(ids(&out).len(), 50);
    assert_eq!(bad(&out).len(), 1);
}

#[test]
fn a_small_truncated_gzip_keeps_its_complete_records() {
    let body: String = (0..100).map(|i| format!("{}\n", ev(&format!("e{i}")))).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let full = gz.finish().unwrap();
    let out = read_with(full.get(..full.len() - 20).unwrap(), ReadOptions::default());
    assert!(ids(&out).len() >= 90, "{}", ids(&out).len());
    assert_eq!(bad(&out).len(), 1);
}

#[test]
fn shared_native_samples_read_without_bad_records() {
    let Some(dir) = kustody_testkit::shared("samples/native").map(|s| s.join("samples/native")) else { return };
    let expect = [("audit2rbac-demo.log", 37), ("khi-oss-event.yaml", 1), ("openshift-single-event.json", 1)];
    for (name, n) in expect {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let out = read_with(&bytes, ReadOptions::default());
        assert_eq!(bad(&out), Vec::<(u64, &str)>::new(), "{name}");
        assert_eq!(ids(&out).len(), n, "{name}");
    }
    let aks = dir.join("../aks/sample_KubeAuditLog_event.json");
    let out = read_with(&std::fs::read(aks).unwrap(), ReadOptions::default());
    assert_eq!(ids(&out).len(), 1, "{out:?}");
}

#[test]
fn damage_inside_a_pretty_document_costs_only_the_damaged_events() {
    let pretty = |id: &str| {
        let v: serde_json::Value = serde_json::from_str(&ev(id)).unwrap();
        serde_json::to_string_pretty(&v).unwrap().lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    };
    let items: Vec<String> = (0..40).map(|i| pretty(&format!("e{i}"))).collect();
    // The 4th event is cut short in the middle.
    let mut broken = items.clone();
    let cut = broken[3].find("\"verb\"").unwrap();
    broken[3].truncate(cut + 8);
    let text = format!("[\n{}\n]\n", broken.join(",\n"));
    let out = read(text.as_bytes());
    assert_eq!(ids(&out).len(), 39, "{:?}", bad(&out));
    assert_eq!(bad(&out).len(), 1, "{:?}", bad(&out));
    // One invalid byte in one event of an EventList.
    let mut bytes =
        format!("{{\n \"kind\": \"EventList\",\n \"items\": [\n{}\n ]\n}}\n", items.join(",\n")).into_bytes();
    let at = bytes.windows(4).position(|w| w == b"e17\"").unwrap();
    bytes[at + 1] = 0xff;
    let out = read(&bytes);
    assert_eq!(ids(&out).len(), 39);
    assert_eq!(bad(&out).len(), 1);
    assert!(bad(&out)[0].1.contains("invalid UTF-8"), "{:?}", bad(&out));
    // A truncated EventList keeps everything before the cut.
    let full = format!("{{\n \"kind\": \"EventList\",\n \"items\": [\n{}\n ]\n}}\n", items.join(",\n"));
    let out = read(full.get(..full.len() / 2).unwrap().as_bytes());
    assert!(ids(&out).len() >= 18, "{}", ids(&out).len());
    assert_eq!(bad(&out).len(), 1, "{:?}", bad(&out));
}

#[test]
fn an_oversized_event_in_a_document_is_skipped_while_streaming() {
    let big = format!(r#"{{"auditID":"big","verb":"get","x":"{}"}}"#, "y".repeat(300_000));
    let text = format!("[\n  {},\n  {},\n  {}\n]\n", ev("a"), big, ev("b"));
    let out = read_with(
        text.as_bytes(),
        ReadOptions { chunk_bytes: 1024, max_record_bytes: 10_000, ..ReadOptions::default() },
    );
    assert_eq!(ids(&out), [(2, "a"), (4, "b")]);
    assert_eq!(bad(&out).len(), 1);
    assert!(bad(&out)[0].1.contains("over the 10000 byte limit"), "{:?}", bad(&out));
}
