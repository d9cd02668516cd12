//! The upstream Falco rules fire the same way on the EKS, AKS and GKE renderings of an event as
//! on its native form. The events are the 83 written for the upstream rules
//! (crates/kustody-rules/tests/data/upstream-falco.cases.yaml); this test writes each one in
//! every managed format, reads it back through the reader, and compares detections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::path::PathBuf;
use std::sync::Arc;

use kustody_ingest::{ChunkReader, ReadOptions};
use kustody_model::{Event, SourceFormat};
use kustody_rules::{Engine, EngineOptions, Scratch};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn case_events() -> Vec<(String, Value)> {
    let text =
        std::fs::read_to_string(root().join("crates/kustody-rules/tests/data/upstream-falco.cases.yaml")).unwrap();
    let docs = kustody_model::yaml::parse(&text).unwrap();
    let doc = &docs[0];
    let base = kustody_model::yaml::to_json(doc.get("base").unwrap());
    let kustody_model::yaml::Node::Seq { items, .. } = doc.get("cases").unwrap() else { panic!() };
    items
        .iter()
        .map(|c| {
            let mut ev = base.clone();
            if let Some(p) = c.get("event") {
                kustody_rules::testing::merge(&mut ev, &kustody_model::yaml::to_json(p));
            }
            (c.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_owned(), ev)
        })
        .collect()
}

/// Reads `bytes` as a file would be read; returns the one event's text and format, and the
/// rules that fired on the event as `hunt` builds it (from the converter's fields for GKE),
/// checked against the rules that fire on its parsed text.
fn read_one(engine: &Engine, bytes: &[u8]) -> (String, SourceFormat) {
    let mut r = ChunkReader::from_reader(
        Arc::from("t"),
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        ReadOptions::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk() {
        chunk.records(|rec| match rec {
            Ok(mut rec) => {
                let as_hunted = fired_on(engine, &rec.event().unwrap());
                assert_eq!(as_hunted, fired(engine, rec.text), "{:?} record built vs parsed", rec.format);
                out.push((rec.text.to_owned(), rec.format))
            }
            Err(b) => panic!("bad record: {b}"),
        });
    }
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

fn fired(engine: &Engine, text: &str) -> Vec<String> {
    fired_on(engine, &Event::parse(text).unwrap())
}

fn fired_on(engine: &Engine, ev: &Event<'_>) -> Vec<String> {
    let mut out = Vec::new();
    engine.matches(ev, &mut Scratch::default(), &mut out);
    let mut names: Vec<String> = out.iter().map(|&i| engine.rule(i).unwrap().name.clone()).collect();
    names.sort();
    names
}

const STREAMING: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// The native event as a GKE LogEntry, when GKE can express it (docs/FORMATS.md): an object
/// reference, a response code, and the stage GKE implies.
fn to_gke(ev: &Value) -> Option<Value> {
    let o = ev.get("objectRef")?.as_object()?;
    let resource = o.get("resource")?.as_str()?;
    let sub = o.get("subresource").and_then(Value::as_str);
    let expected_stage =
        if sub.is_some_and(|s| STREAMING.contains(&s)) { "ResponseStarted" } else { "ResponseComplete" };
    if ev.get("stage")?.as_str()? != expected_stage {
        return None;
    }
    let code = ev.get("responseStatus")?.get("code")?.as_i64()?;
    let grpc = match code {
        200..=299 => 0,
        403 => 7,
        404 => 5,
        409 => 6,
        _ => return None,
    };
    let group = o.get("apiGroup").and_then(Value::as_str).filter(|g| !g.is_empty()).unwrap_or("core");
    let version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
    let mut path = format!("{group}/{version}");
    if let Some(ns) = o.get("namespace").and_then(Value::as_str) {
        path.push_str(&format!("/namespaces/{ns}"));
    }
    path.push_str(&format!("/{resource}"));
    if let Some(n) = o.get("name").and_then(Value::as_str) {
        path.push_str(&format!("/{n}"));
    }
    if let Some(s) = sub {
        path.push_str(&format!("/{s}"));
    }
    let verb = ev.get("verb")?.as_str()?;
    let method =
        format!("io.k8s.{group}.{version}.{resource}{}.{verb}", sub.map(|s| format!(".{s}")).unwrap_or_default());
    let mut payload = json!({
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": ev.get("user").and_then(|u| u.get("username")).cloned().unwrap_or(Value::Null)},
        "methodName": method,
        "resourceName": path,
        "requestMetadata": {"callerIp": ev.get("sourceIPs").and_then(|s| s.get(0)).cloned().unwrap_or(Value::Null),
                            "callerSuppliedUserAgent": ev.get("userAgent").cloned().unwrap_or(Value::Null)},
        "serviceName": "k8s.io",
        "status": {"code": grpc},
    });
    if let Some(r) = ev.get("requestObject") {
        payload["request"] = r.clone();
    }
    if let Some(r) = ev.get("responseObject") {
        payload["response"] = r.clone();
    }
    Some(json!({
        "insertId": ev.get("auditID").cloned().unwrap_or(Value::Null),
        "labels": ev.get("annotations").cloned().unwrap_or(json!({})),
        "operation": {"id": ev.get("auditID").cloned().unwrap_or(Value::Null), "first": true, "last": true, "producer": "k8s.io"},
        "protoPayload": payload,
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod", "location": "europe-west1", "project_id": "p"}},
        "timestamp": ev.get("stageTimestamp").cloned().unwrap_or(Value::Null),
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
    }))
}

#[test]
fn upstream_rules_fire_the_same_on_every_format() {
    let Some(upstream) = kustody_testkit::shared("upstream/falco").map(|s| s.join("upstream/falco")) else {
        return;
    };
    let files: Vec<(String, String)> = ["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(upstream.join(f)).unwrap()))
        .collect();
    let (engine, diags) = Engine::load(&files, &EngineOptions::default());
    assert!(diags.is_empty());
    let (mut eks, mut aks, mut gke_n, mut s3) = (0, 0, 0, 0);
    let mut fired_somewhere = 0;
    for (name, ev) in case_events() {
        let native = ev.to_string();
        let want = fired(&engine, &native);
        fired_somewhere += usize::from(!want.is_empty());
        let cli = serde_json::to_string_pretty(&json!({"events": [{"logStreamName": "kube-apiserver-audit-x", "timestamp": 1, "message": native, "eventId": "1"}]})).unwrap();
        let (text, fmt) = read_one(&engine, cli.as_bytes());
        assert_eq!((fmt, fired(&engine, &text)), (SourceFormat::Eks, want.clone()), "EKS rendering of `{name}`");
        eks += 1;
        let (text, fmt) = read_one(&engine, format!("2024-01-01T00:00:00.000Z {native}\n").as_bytes());
        assert_eq!((fmt, fired(&engine, &text)), (SourceFormat::EksS3, want.clone()), "EKS S3 rendering of `{name}`");
        s3 += 1;
        let rec = json!({"records": [{"category": "kube-audit", "properties": {"log": native, "stream": "stdout", "pod": "kube-apiserver-1"}}]});
        let (text, fmt) = read_one(&engine, format!("{rec}\n").as_bytes());
        assert_eq!((fmt, fired(&engine, &text)), (SourceFormat::Aks, want.clone()), "AKS rendering of `{name}`");
        aks += 1;
        if let Some(entry) = to_gke(&ev) {
            let (text, fmt) = read_one(&engine, format!("{entry}\n").as_bytes());
            assert_eq!(
                (fmt, fired(&engine, &text)),
                (SourceFormat::Gke, want.clone()),
                "GKE rendering of `{name}`: {text}"
            );
            gke_n += 1;
        }
    }
    assert!(eks >= 80 && aks >= 80 && s3 >= 80, "{eks} {aks} {s3}");
    assert!(gke_n >= 60, "only {gke_n} cases expressible in GKE");
    assert!(fired_somewhere >= 50);
}
