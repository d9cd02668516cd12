//! Findings instead of raw matches, allow-lists that count what they quiet, and no all-clear
//! for an input without events: `kustody hunt` as a responder runs it.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn kustody(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kustody")).args(args).current_dir(repo()).output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn event(i: usize, user: &str, verb: &str, resource: &str, name: &str, code: u16) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"id-{i}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/apps/{resource}/{name}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.9"],"userAgent":"operator/v0.70 Go-http-client/2.0","objectRef":{{"resource":"{resource}","namespace":"apps","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"code":{code}}},"stageTimestamp":"2026-01-01T00:{:02}:{:02}.000000Z"}}"#,
        i / 60,
        i % 60
    )
}

#[test]
fn the_example_attack_is_a_handful_of_findings_not_dozens_of_alerts() {
    let out = kustody(&["hunt", "examples/attack-chain.jsonl", "-o", "findings"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let findings = lines(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("findings:    {} (from 25 rule matches)", findings.len())), "{stderr}");
    assert!(findings.len() < 12, "{} findings", findings.len());
    // the privileged DaemonSet: one finding, led by a CRITICAL rule, every rule listed
    let ds: Vec<&Value> = findings.iter().filter(|f| f["context"]["resource"] == "daemonsets").collect();
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert_eq!(ds[0]["priority"], "Critical");
    assert_eq!(ds[0]["events"], 1);
    let rules: Vec<&str> = ds[0]["rules"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    for r in ["kustody Privileged Container in Workload", "kustody DaemonSet Created by Non-System Identity"] {
        assert!(rules.contains(&r), "{rules:?}");
    }
    assert_eq!(ds[0]["alert"]["rule"], ds[0]["rule"], "the lead alert is Falco JSON");
    // the stolen token's repeated kubectl requests fold, with a count and sample audit IDs
    let folded = findings.iter().find(|f| f["events"].as_u64().unwrap() > 1).expect("a folded finding");
    assert!(folded["audit_ids"].as_array().unwrap().len() > 1);
    assert!(folded["first_seen"].as_str().unwrap() <= folded["last_seen"].as_str().unwrap());
    // the attack chain is its own finding
    assert!(findings.iter().any(|f| f["rule"] == "kustody Attack Chain from Enumeration to Escalation"));

    // jsonl keeps Falco's one alert per match, for falcosidekick; --no-group does so in any format
    let raw = kustody(&["hunt", "examples/attack-chain.jsonl", "-o", "jsonl", "-q"]);
    assert_eq!(lines(&raw).len(), 25);
    let ungrouped = kustody(&["hunt", "examples/attack-chain.jsonl", "-o", "findings", "--no-group", "-q"]);
    assert_eq!(lines(&ungrouped).len(), 25);
    // a shorter window folds less
    let tight = kustody(&["hunt", "examples/attack-chain.jsonl", "-o", "findings", "--group-window", "1s", "-q"]);
    assert!(lines(&tight).len() > findings.len());
    let bad = kustody(&["hunt", "examples/attack-chain.jsonl", "--group-window", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--group-window"));
}

#[test]
fn operators_under_helm_release_names_are_quieted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let op = "system:serviceaccount:monitoring:my-release-kube-prometheus-stack-operator";
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&event(i, op, "get", "secrets", &format!("s{i}"), 200));
        text.push('\n');
    }
    // the same operator doing something it never does is still reported
    text.push_str(&event(40, op, "create", "daemonsets", "miner", 201).replace("/api/v1/", "/apis/apps/v1/"));
    text.push('\n');
    std::fs::write(&log, &text).unwrap();
    let log = log.to_str().unwrap();

    let out = kustody(&["hunt", log, "-o", "findings", "--min-priority", "warning"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let findings = lines(&out);
    assert_eq!(findings.len(), 1, "{findings:#?}\n{stderr}");
    assert_eq!(findings[0]["rule"], "kustody DaemonSet Created by Non-System Identity");
    assert!(stderr.contains("allow prometheus-operator"), "{stderr}");
    assert!(stderr.contains("quieted:     30 matches"), "{stderr}");

    // without the catalogue the reads are reported (and the burst of reads folds into one finding)
    let all = kustody(&["hunt", log, "-o", "findings", "--min-priority", "warning", "--no-allowlist", "-q"]);
    let rules: Vec<String> = lines(&all).iter().map(|f| f["rule"].as_str().unwrap().to_owned()).collect();
    assert!(rules.contains(&"kustody Secret Read by Unexpected Service Account".to_owned()), "{rules:?}");
    assert!(rules.contains(&"kustody Bulk Secret Reads by One Identity".to_owned()), "{rules:?}");

    // a user file switches the catalogue entry off, and bad entries are diagnosed with positions
    let mine = dir.path().join("allow.yaml");
    std::fs::write(&mine, "- allow: prometheus-operator\n  enabled: false\n").unwrap();
    let off =
        kustody(&["hunt", log, "-o", "findings", "--min-priority", "warning", "--allow", mine.to_str().unwrap(), "-q"]);
    assert!(lines(&off).len() > 1);
    std::fs::write(&mine, "- allow: everyone\n  identities: ['*']\n  rules: ['*']\n").unwrap();
    let bad = kustody(&["hunt", log, "--allow", mine.to_str().unwrap(), "--strict"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("allow.yaml:1:") && stderr.contains("allow everyone"), "{stderr}");
}

#[test]
fn a_run_that_read_no_event_is_not_an_all_clear() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [("empty.log", ""), ("garbage.log", "not json\n\u{1}\u{2}\n")] {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let out = kustody(&["hunt", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no audit events read"), "{name}");
        let ok = kustody(&["hunt", p.to_str().unwrap(), "--allow-empty", "-q"]);
        assert_eq!(ok.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&ok.stderr));
    }
}

#[test]
fn events_without_a_stage_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nostage.log");
    let ev = event(1, "alice", "get", "pods", "web", 200).replace(r#""stage":"ResponseComplete","#, "");
    std::fs::write(&p, format!("{ev}\n{ev}\n")).unwrap();
    let out = kustody(&["hunt", p.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no stage:    2 events"), "{stderr}");
}
