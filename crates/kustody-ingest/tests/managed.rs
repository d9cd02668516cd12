//! Managed-cloud formats: the shared real samples, fixtures this project writes for every EKS,
//! AKS and GKE shape, and malformed wrappers (each a clear per-record error; the run goes on).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use kustody_ingest::{ChunkReader, ReadOptions};
use kustody_model::SourceFormat;

/// (line, auditID, verb, format) of each event, and (line, reason) of each bad record.
type Read = (Vec<(u64, String, String, SourceFormat)>, Vec<(u64, String)>);

fn read(bytes: &[u8]) -> Read {
    let opts = ReadOptions { chunk_bytes: 512, ..ReadOptions::default() };
    let mut r = ChunkReader::from_reader(Arc::from("t"), Box::new(std::io::Cursor::new(bytes.to_vec())), opts).unwrap();
    let (mut evs, mut bad) = (Vec::new(), Vec::new());
    while let Some(chunk) = r.next_chunk() {
        chunk.records(|rec| match rec {
            Err(b) => bad.push((b.line, b.reason)),
            Ok(mut rec) => match rec.event() {
                Ok(e) => {
                    evs.push((rec.line, e.audit_id().unwrap_or("-").into(), e.verb().unwrap_or("-").into(), rec.format))
                }
                Err(e) => bad.push((rec.line, e.to_string())),
            },
        });
    }
    (evs, bad)
}

fn native(id: &str) -> serde_json::Value {
    serde_json::json!({"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":id,"stage":"ResponseComplete","verb":"get",
        "requestURI":"/api/v1/namespaces/d/secrets/s","user":{"username":"u"},"objectRef":{"resource":"secrets","namespace":"d","name":"s"},
        "responseStatus":{"code":200},"stageTimestamp":"2024-01-01T00:00:00Z"})
}

fn shared() -> Option<PathBuf> {
    kustody_testkit::shared("samples").map(|s| s.join("samples"))
}

#[test]
fn shared_aks_and_gke_samples() {
    let Some(dir) = shared() else { return };
    let (evs, bad) = read(&std::fs::read(dir.join("aks/event.json")).unwrap());
    assert_eq!((evs.len(), bad.len()), (22, 0), "{bad:?}");
    assert!(evs.iter().all(|e| e.3 == SourceFormat::Aks));
    assert_eq!(evs[0].1, "55ffceaa-b7c3-478e-98c6-e509cd2f0dd7");
    let (evs, bad) = read(&std::fs::read(dir.join("aks/sample_EventHubs_event.json")).unwrap());
    assert_eq!((evs.len(), bad.len()), (1, 0), "{bad:?}");
    let (evs, bad) = read(&std::fs::read(dir.join("gke/container_recorder_test_1_2.yaml")).unwrap());
    assert_eq!(bad, []);
    assert_eq!(evs, [(15, "c7842d26-11fe-446a-b985-b2b67ddbab09".into(), "patch".into(), SourceFormat::Gke)]);
    // A YAML document that is not a LogEntry: one clear error.
    let (evs, bad) = read(&std::fs::read(dir.join("gke/container_recorder_test_1_1_manifest.yaml")).unwrap());
    assert!(evs.is_empty());
    assert_eq!(bad.len(), 1);
    assert!(bad[0].1.contains("kind is `Pod`"), "{bad:?}");
}

#[test]
fn eks_cli_output_s3_exports_and_subscription_records() {
    let msg = |id: &str| native(id).to_string();
    // `aws logs filter-log-events` prints pretty JSON.
    let cli = serde_json::json!({"events": [
        {"logStreamName": "kube-apiserver-audit-1", "timestamp": 1, "message": msg("c1"), "ingestionTime": 2, "eventId": "1"},
        {"logStreamName": "kube-apiserver-audit-1", "timestamp": 1, "message": msg("c2"), "ingestionTime": 2, "eventId": "2"}
    ], "searchedLogStreams": []});
    let pretty = serde_json::to_string_pretty(&cli).unwrap();
    let (evs, bad) = read(pretty.as_bytes());
    assert_eq!(bad, [], "{}", pretty.lines().take(8).collect::<Vec<_>>().join("\n"));
    assert_eq!(
        evs.iter().map(|e| (e.1.as_str(), e.3)).collect::<Vec<_>>(),
        [("c1", SourceFormat::Eks), ("c2", SourceFormat::Eks)]
    );
    assert_eq!(evs[0].0, 3);
    // S3 export, gzipped: `<timestamp> <event>` lines.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    writeln!(gz, "2024-01-01T00:00:00.000Z {}\n2024-01-01T00:00:01.000Z {}", msg("s1"), msg("s2")).unwrap();
    let (evs, bad) = read(&gz.finish().unwrap());
    assert_eq!(bad, []);
    assert_eq!(
        evs.iter().map(|e| (e.0, e.3)).collect::<Vec<_>>(),
        [(1, SourceFormat::EksS3), (2, SourceFormat::EksS3)]
    );
    // Subscription / Firehose records, one per line, with a control message.
    let data = serde_json::json!({"messageType": "DATA_MESSAGE", "logGroup": "/aws/eks/prod/cluster", "logEvents": [
        {"id": "1", "timestamp": 1, "message": msg("f1")}, {"id": "2", "timestamp": 1, "message": msg("f2")}]});
    let control = serde_json::json!({"messageType": "CONTROL_MESSAGE", "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination"}]});
    let (evs, bad) = read(format!("{data}\n{control}\n").as_bytes());
    assert_eq!(evs.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["f1", "f2"]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].1.starts_with("skipped:"), "{bad:?}");
}

#[test]
fn aks_records_with_string_or_object_logs_and_malformed_wrappers() {
    let rec = |log: serde_json::Value, cat: &str| serde_json::json!({"category": cat, "properties": {"log": log, "pod": "kube-apiserver-1"}, "time": "2024-01-01T00:00:00Z"});
    let lines = [
        rec(serde_json::Value::String(native("a1").to_string() + "\n"), "kube-audit"),
        rec(native("a2"), "kube-audit-admin"),
        rec(serde_json::Value::String("not json at all".into()), "kube-audit"),
        rec(serde_json::Value::String("{\"truncated\": ".into()), "kube-audit"),
        rec(native("x"), "cluster-autoscaler"),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (evs, bad) = read(text.as_bytes());
    assert_eq!(
        evs.iter().map(|e| (e.0, e.1.as_str(), e.3)).collect::<Vec<_>>(),
        [(1, "a1", SourceFormat::Aks), (2, "a2", SourceFormat::Aks)]
    );
    assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(bad[0].1.contains("`properties.log`"), "{bad:?}");
    assert!(bad[1].1.contains("invalid JSON"), "{bad:?}");
    assert!(bad[2].1.contains("category `cluster-autoscaler`"), "{bad:?}");
    // The same records as an Event Hubs batch.
    let batch = serde_json::json!({"records": lines});
    let (evs, bad) = read(format!("{batch}\n").as_bytes());
    assert_eq!((evs.len(), bad.len()), (2, 3));
}

#[test]
fn gke_json_lines_and_arrays() {
    let entry = |id: &str, method: &str, res: &str| {
        serde_json::json!({"insertId": id, "operation": {"id": id},
        "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "methodName": method, "resourceName": res,
            "authenticationInfo": {"principalEmail": "bob@example.com"}, "status": {}},
        "timestamp": "2024-01-01T00:00:00Z", "resource": {"labels": {"cluster_name": "c"}}})
    };
    let a = entry("g1", "io.k8s.core.v1.secrets.list", "core/v1/namespaces/d/secrets");
    let b = entry("g2", "io.k8s.apps.v1.daemonsets.create", "apps/v1/namespaces/d/daemonsets");
    let (evs, bad) = read(format!("{a}\n{b}\n").as_bytes());
    assert_eq!(bad, []);
    assert_eq!(
        evs.iter().map(|e| (e.1.as_str(), e.2.as_str(), e.3)).collect::<Vec<_>>(),
        [("g1", "list", SourceFormat::Gke), ("g2", "create", SourceFormat::Gke)]
    );
    let arr = serde_json::to_string_pretty(&serde_json::json!([a, b])).unwrap();
    let (evs, bad) = read(arr.as_bytes());
    assert_eq!((evs.len(), bad.len()), (2, 0));
    let not_audit = serde_json::json!({"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.Other"}});
    let (evs, bad) = read(format!("{not_audit}\n{a}\n").as_bytes());
    assert_eq!((evs.len(), bad.len()), (1, 1));
    assert!(bad[0].1.contains("not an AuditLog"), "{bad:?}");
}

#[test]
fn a_forced_input_format_turns_other_records_into_bad_records() {
    use kustody_ingest::InputFormat;
    let aks = serde_json::json!({"category": "kube-audit", "properties": {"log": native("a").to_string()}});
    let text = format!("{}\n{aks}\n2024-01-01T00:00:00.000Z {}\n", native("n"), native("s"));
    let read_as = |f: InputFormat| {
        let opts = ReadOptions { input_format: f, ..ReadOptions::default() };
        let mut r =
            ChunkReader::from_reader(Arc::from("t"), Box::new(std::io::Cursor::new(text.clone().into_bytes())), opts)
                .unwrap();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        while let Some(c) = r.next_chunk() {
            c.records(|rec| match rec {
                Ok(rec) => ok.push(rec.format),
                Err(b) => bad.push(b.reason),
            });
        }
        (ok, bad)
    };
    assert_eq!(read_as(InputFormat::Auto).0, [SourceFormat::Native, SourceFormat::Aks, SourceFormat::EksS3]);
    let (ok, bad) = read_as(InputFormat::Aks);
    assert_eq!(ok, [SourceFormat::Aks]);
    assert_eq!(bad.len(), 2);
    assert!(bad[0].contains("a native record, but --input-format is aks"), "{bad:?}");
    assert_eq!(read_as(InputFormat::Eks).0, [SourceFormat::EksS3]);
    // Native: nothing is unwrapped (the AKS record and the S3 line then fail as non-Events downstream).
    assert_eq!(read_as(InputFormat::Native).0.len(), 3);
}

#[test]
fn firehose_records_base64_of_gzip_one_per_line() {
    use base64::Engine as _;
    let data = serde_json::json!({"messageType": "DATA_MESSAGE", "logGroup": "/aws/eks/prod/cluster",
        "logEvents": [{"id": "1", "timestamp": 1, "message": native("k1").to_string()}, {"id": "2", "timestamp": 1, "message": native("k2").to_string()}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data.to_string().as_bytes()).unwrap();
    let line = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let broken = format!("H4sI{}", "A".repeat(40));
    let (evs, bad) = read(format!("{line}\n{broken}\n").as_bytes());
    assert_eq!(
        evs.iter().map(|e| (e.0, e.1.as_str(), e.3)).collect::<Vec<_>>(),
        [(1, "k1", SourceFormat::Eks), (1, "k2", SourceFormat::Eks)]
    );
    assert_eq!(bad.len(), 1);
    assert!(bad[0].1.contains("gzip payload is damaged") || bad[0].1.contains("does not decode"), "{bad:?}");
}
