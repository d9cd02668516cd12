//! The `kustody` binary as a user runs it: golden outputs, exit codes, errors.
//! `UPDATE_GOLDEN=1 cargo test -p kustody --test cli` rewrites the golden files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn kustody(args: &[&str]) -> Output {
    kustody_stdin(args, None)
}

fn kustody_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(args)
        .current_dir(repo())
        .env("KUSTODY_HOSTNAME", "golden")
        .env_remove("NO_COLOR")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing golden file {}", path.display()));
    assert!(
        expected == actual,
        "{name} differs from golden (UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

const EXAMPLE: &str = "examples/attack-chain.jsonl";

fn shared() -> Option<PathBuf> {
    kustody_testkit::shared("upstream/falco/k8s_audit_rules.yaml")
}

#[test]
fn hunt_example_table_golden() {
    let out = kustody(&["hunt", EXAMPLE, "--color", "never"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in stdout.lines() {
        assert!(line.chars().count() <= 80, "line over 80 columns: {line:?}");
    }
    golden("hunt-example.table.txt", &stdout);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("events:      322"), "{stderr}");
    assert!(stderr.contains("bad records: 0"), "{stderr}");
    assert!(stderr.contains("MB/s"), "{stderr}");
}

#[test]
fn hunt_example_jsonl_golden_is_falco_alert_json() {
    let out = kustody(&["hunt", EXAMPLE, "-f", "jsonl", "-q"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    golden("hunt-example.jsonl", &stdout);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time"]);
        let of = &v["output_fields"];
        assert!(of["ka.auditid"].is_string() && of["kustody.file"] == EXAMPLE && of["kustody.line"].is_u64(), "{line}");
        assert_eq!(v["source"], "k8s_audit");
    }
    // json is the same objects in one array.
    let arr = kustody(&["hunt", EXAMPLE, "-f", "json", "-q"]);
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&arr.stdout).unwrap();
    assert_eq!(parsed.len(), stdout.lines().count());
}

#[test]
fn hunt_example_csv_golden() {
    let out = kustody(&["hunt", EXAMPLE, "-f", "csv", "-q"]);
    golden("hunt-example.csv", &text(&out.stdout));
}

#[test]
fn every_step_of_the_attack_chain_is_reported_and_the_benign_part_is_quiet() {
    let out = kustody(&["hunt", EXAMPLE, "-f", "jsonl", "-q"]);
    let alerts: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rules: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect();
    for want in [
        "kustody Service Account Token Used Interactively",
        "kustody Permission Enumeration by Service Account",
        "kustody Secrets Listed by Service Account or Cluster-wide",
        "kustody Forbidden Request by Service Account",
        "kustody Exec or Attach Into Pod",
        "kustody Privileged Container in Workload",
        "kustody Sensitive Host Path Mounted by Workload",
        "kustody Host Namespaces Shared by Workload",
        "kustody DaemonSet Created by Non-System Identity",
        "kustody Attack Chain from Enumeration to Escalation",
    ] {
        assert!(rules.contains(want), "missing {want}: {rules:?}");
    }
    // the correlated finding names every step and points at the last one's evidence
    let chain = alerts.iter().find(|a| a["rule"] == "kustody Attack Chain from Enumeration to Escalation").unwrap();
    assert_eq!(chain["priority"], "Critical");
    let steps = chain["output_fields"]["kustody.steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(steps[0].as_str().unwrap().starts_with("kustody Permission Enumeration"));
    assert!(
        chain["output_fields"]["kustody.file"].is_string()
            || chain["output_fields"]["kustody.line"].is_number()
            || chain.get("output").is_some()
    );
    for a in &alerts {
        assert_eq!(
            a["output_fields"]["ka.user.name"], "system:serviceaccount:shop:web-frontend",
            "benign event alerted: {a}"
        );
    }
}

#[test]
fn min_priority_and_time_window() {
    let out = kustody(&["hunt", EXAMPLE, "-f", "jsonl", "-q", "--min-priority", "critical"]);
    let critical: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"].as_str().unwrap().to_owned())
        .collect();
    // the chain is found although its steps (WARNING, NOTICE) are below the minimum: they are
    // evaluated for the correlation, not reported
    assert_eq!(
        critical,
        [
            "kustody Attack Chain from Enumeration to Escalation",
            "kustody Privileged Container in Workload",
            "kustody Sensitive Host Path Mounted by Workload"
        ]
    );
    let out = kustody(&[
        "hunt",
        EXAMPLE,
        "-f",
        "jsonl",
        "-q",
        "--since",
        "2026-11-20T09:11:00Z",
        "--until",
        "2026-11-20T09:11:25Z",
    ]);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    // one exec by the stolen token, seen by three rules; the chain's earlier steps are outside
    let mut rules: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"].as_str().unwrap().to_owned())
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        ["kustody Credentials Read Through Exec", "kustody Exec by Service Account", "kustody Exec or Attach Into Pod"],
        "{lines:?}"
    );
    let out = kustody(&["hunt", EXAMPLE, "-q", "--since", "2026-11-21T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(0), "no detections after the window: exit 0");
    let out = kustody(&["hunt", EXAMPLE, "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read time `yesterday`"));
}

#[test]
fn exit_codes_and_errors() {
    let out = kustody(&["hunt", "does/not/exist.log"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`does/not/exist.log` does not exist"), "{}", text(&out.stderr));
    let out = kustody(&["hunt", EXAMPLE, "--rules", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kustody(&["hunt", EXAMPLE, "--no-default-rules", "-q"]);
    assert_eq!(out.status.code(), Some(2), "no active rule is an error, not a false all-clear");
    assert!(text(&out.stderr).contains("no rule is active"));
}

#[test]
fn bad_records_are_reported_and_strict_stops_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    let mut lines: Vec<&str> = good.lines().take(20).collect();
    lines.insert(3, "{\"truncated\":");
    lines.insert(7, "[1,2");
    let path = dir.path().join("audit.log");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let p = path.to_str().unwrap();
    let out = kustody(&["hunt", p, "-f", "jsonl"]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("bad records: 2"), "{err}");
    assert!(err.contains(&format!("{p}:4: invalid JSON")), "{err}");
    assert!(err.contains(&format!("{p}:8: invalid JSON")), "{err}");
    assert!(err.contains("events:      20"), "{err}");
    let out = kustody(&["hunt", p, "--strict"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&format!("bad record at {p}:4")), "{}", text(&out.stderr));
}

#[test]
fn stdin_gzip_and_rotated_directories() {
    let example = std::fs::read(repo().join(EXAMPLE)).unwrap();
    let out = kustody_stdin(&["hunt", "-", "-f", "jsonl", "-q"], Some(&example));
    assert_eq!(out.status.code(), Some(1));
    let from_stdin = text(&out.stdout).lines().count();
    assert!(text(&out.stdout).contains("\"kustody.file\":\"<stdin>\""));

    // Split the example into rotated files: the older half gzipped with a lumberjack name.
    let dir = tempfile::tempdir().unwrap();
    let all = String::from_utf8(example).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    let (old, new) = lines.split_at(lines.len() / 2);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all((old.join("\n") + "\n").as_bytes()).unwrap();
    std::fs::write(dir.path().join("audit-2026-11-20T09-10-00.000.log.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.path().join("audit.log"), new.join("\n") + "\n").unwrap();
    let out = kustody(&["hunt", dir.path().to_str().unwrap(), "-f", "jsonl", "-q"]);
    let alerts: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(alerts.len(), from_stdin);
    let times: Vec<&str> = alerts.iter().map(|a| a["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "rotated files are read oldest first");
}

#[test]
fn rules_check_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "- rule: a\n  desc: d\n  condition: ka.verb = get and ka.nope = x\n  output: o\n  priority: WARNING\n  source: k8s_audit\n\
         - rule: b\n  desc: d\n  condition: (ka.verb = get\n  output: o\n  priority: WARNING\n  source: k8s_audit\n\
         - macro: m\n  condition: ka.verb in get\n",
    )
    .unwrap();
    let out = kustody(&["rules", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout).replace(bad.to_str().unwrap(), "bad.yaml");
    golden("rules-check-bad.txt", &stdout);
}

#[test]
fn rules_check_and_list_on_upstream_and_builtin_rules() {
    let out = kustody(&["rules", "list", "--color-never-does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kustody(&["rules", "list"]);
    assert_eq!(out.status.code(), Some(0));
    golden("rules-list-builtin.txt", &text(&out.stdout));
    let Some(shared) = shared() else { return };
    let main = shared.join("upstream/falco/k8s_audit_rules.yaml");
    let gke = shared.join("upstream/falco/k8s_audit_rules_gke.yaml");
    let out = kustody(&["rules", "check", "--strict", main.to_str().unwrap(), gke.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("48 rules loaded, 0 error(s), 0 warning(s)"));
}

#[test]
fn upstream_rules_over_the_example_and_the_recorded_audit_log() {
    let Some(shared) = shared() else { return };
    let main = shared.join("upstream/falco/k8s_audit_rules.yaml");
    let recorded = shared.join("fixtures/kube-apiserver/audit.jsonl");
    let out = kustody(&[
        "hunt",
        recorded.to_str().unwrap(),
        "--no-default-rules",
        "--rules",
        main.to_str().unwrap(),
        "-f",
        "jsonl",
        "-q",
        "--strict",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let alerts: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |r: &str| alerts.iter().filter(|a| a["rule"] == r).count();
    // WebSocket exec is audited with verb get at ResponseStarted: upstream's rule accepts get.
    assert!(count("Attach/Exec Pod") >= 20, "{}", count("Attach/Exec Pod"));
    assert!(count("Disallowed K8s User") > 0);
}

#[test]
fn rules_directories_load_in_name_order_after_the_builtin_rules() {
    let dir = tempfile::tempdir().unwrap();
    // 10-base defines a rule; 20-overlay appends to the built-in system-user list, silencing
    // the built-in rules for the attacker's service account.
    std::fs::write(
        dir.path().join("10-base.yaml"),
        "- rule: Any DaemonSet\n  desc: d\n  condition: ka.target.resource = daemonsets and ka.verb = create\n  output: ds %ka.resp.name\n  priority: ERROR\n  source: k8s_audit\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-overlay.yaml"),
        "- list: kustody_system_users\n  items: [\"system:serviceaccount:shop:web-frontend\"]\n  override: {items: append}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a rules file").unwrap();
    let out = kustody(&["hunt", EXAMPLE, "-f", "jsonl", "-q", "--rules", dir.path().to_str().unwrap()]);
    let alerts: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rules: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect();
    assert!(rules.contains("Any DaemonSet"), "{rules:?}");
    assert_eq!(
        alerts.iter().find(|a| a["rule"] == "Any DaemonSet").unwrap()["output_fields"]["ka.resp.name"],
        "node-agent"
    );
    assert!(
        !rules.contains("kustody Service Account Token Used Interactively"),
        "the overlay's allow-list applies: {rules:?}"
    );
    // An empty directory is an error, not a silent success.
    let empty = tempfile::tempdir().unwrap();
    let out = kustody(&["hunt", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no input files found"));
}

#[test]
fn timeline_of_the_compromised_pod_golden() {
    let out = kustody(&["timeline", EXAMPLE, "--pod", "shop/web-frontend-6c8d9f7b4-q2x9m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().all(|l| l.chars().count() <= 80));
    golden("timeline-pod.table.txt", &stdout);
    assert!(text(&out.stderr).contains("service account `web-frontend`"), "{}", text(&out.stderr));
    // Every step of the chain is on the pod's timeline, in time order, with its detections.
    let out = kustody(&["timeline", EXAMPLE, "--pod", "shop/web-frontend-6c8d9f7b4-q2x9m", "-f", "jsonl"]);
    let rows: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[0]["verb"], "create");
    assert_eq!(rows[0]["why"], "pod");
    assert!(rows
        .iter()
        .any(|r| r["subresource"] == "exec" && r["command"].as_str().unwrap().contains("serviceaccount/token")));
    assert!(rows.iter().any(|r| r["resource"] == "daemonsets" && !r["detections"].as_array().unwrap().is_empty()));
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
}

#[test]
fn timeline_by_user_ip_and_service_account_and_timesketch() {
    let by_ip = kustody(&["timeline", EXAMPLE, "--ip", "10.244.1.17", "-f", "jsonl"]);
    let by_sa = kustody(&["timeline", EXAMPLE, "--sa", "shop/web-frontend", "-f", "jsonl"]);
    let by_user = kustody(&["timeline", EXAMPLE, "--user", "system:serviceaccount:shop:web-frontend", "-f", "jsonl"]);
    let n = |o: &Output| text(&o.stdout).lines().count();
    assert_eq!(n(&by_ip), 10);
    assert_eq!(n(&by_sa), 10);
    assert_eq!(n(&by_user), 10);
    let alice = kustody(&["timeline", EXAMPLE, "--user", "alice@example.com", "-f", "csv"]);
    assert!(n(&alice) > 10);
    assert!(text(&alice.stdout).starts_with("time,why,user,verb"));
    let nobody = kustody(&["timeline", EXAMPLE, "--user", "nobody"]);
    assert_eq!(nobody.status.code(), Some(1));
    let bad = kustody(&["timeline", EXAMPLE, "--pod", "no-namespace"]);
    assert_eq!(bad.status.code(), Some(2));
    let none = kustody(&["timeline", EXAMPLE]);
    assert_eq!(none.status.code(), Some(2), "an identity is required");
    // Timesketch JSONL, for timelines and for hunt.
    for args in [
        vec!["timeline", EXAMPLE, "--ip", "10.244.1.17", "-f", "timesketch"],
        vec!["hunt", EXAMPLE, "-q", "-f", "timesketch"],
    ] {
        let out = kustody(&args);
        for line in text(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["message"].is_string() && v["timestamp_desc"].is_string(), "{line}");
            assert!(v["datetime"].as_str().unwrap().ends_with('Z') && v["timestamp"].is_i64(), "{line}");
            assert!(v["source_file"] == EXAMPLE && v["source_line"].is_u64(), "{line}");
        }
    }
}

#[test]
fn docs_rules_md_is_generated_from_the_rules() {
    let out = kustody(&["rules", "doc"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/RULES.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &out.stdout).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed == text(&out.stdout),
        "docs/RULES.md is stale: run `cargo run -p kustody -- rules doc > docs/RULES.md`"
    );
    assert!(!committed.contains("Example: none"), "a rule has no true-positive case");
}

#[test]
fn rules_list_mitre_maps_techniques_to_rules() {
    let out = kustody(&["rules", "list", "--mitre", "-f", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let techniques: Vec<&str> = v.iter().map(|t| t["technique"].as_str().unwrap()).collect();
    for t in [
        "T1609",
        "T1610",
        "T1611",
        "T1613",
        "T1069",
        "T1552.007",
        "T1528",
        "T1550.001",
        "T1053.007",
        "T1098",
        "T1078.001",
        "T1070",
        "T1562.001",
    ] {
        assert!(techniques.contains(&t), "{t} not covered: {techniques:?}");
    }
    let exec = v.iter().find(|t| t["technique"] == "T1609").unwrap();
    assert!(exec["rules"].as_array().unwrap().iter().any(|r| r == "kustody Exec or Attach Into Pod"));
    assert_eq!(exec["name"], "Container Administration Command");
    let table = text(&kustody(&["rules", "list", "--mitre"]).stdout);
    assert!(table.contains("T1611      Escape to Host"), "{table}");
}

#[test]
fn dash_o_is_the_output_format_as_in_kubectl_and_dash_f_still_works() {
    for (sub, formats) in [
        (vec!["hunt", EXAMPLE, "-q"], vec!["json", "jsonl", "csv", "timesketch"]),
        (vec!["timeline", EXAMPLE, "--ip", "10.244.1.17"], vec!["jsonl", "csv"]),
        (vec!["rules", "list"], vec!["json", "table"]),
    ] {
        for f in formats {
            let run = |flag: &str| {
                let mut args = sub.clone();
                args.extend([flag, f]);
                let out = kustody(&args);
                assert!(out.status.code().is_some_and(|c| c < 2), "{args:?}: {}", text(&out.stderr));
                text(&out.stdout)
            };
            let with_o = run("-o");
            assert!(!with_o.is_empty(), "{sub:?} -o {f}");
            assert_eq!(with_o, run("-f"), "{sub:?}: -o {f} and -f {f} differ");
            assert_eq!(with_o, run("--output"), "{sub:?}: -o {f} and --output {f} differ");
            assert_eq!(with_o, run("--format"), "{sub:?}: -o {f} and --format {f} differ");
        }
    }
    // a wrong format is refused, naming the choices
    let out = kustody(&["hunt", EXAMPLE, "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("possible values: table, jsonl, json, csv, timesketch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn output_file_writes_what_stdout_would_show() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("hunt.jsonl", vec!["hunt", EXAMPLE, "-q", "-o", "jsonl"]),
        ("timeline.csv", vec!["timeline", EXAMPLE, "--ip", "10.244.1.17", "-o", "csv"]),
    ] {
        let path = dir.path().join(name);
        let mut to_file = args.clone();
        to_file.extend(["--output-file", path.to_str().unwrap()]);
        let written = kustody(&to_file);
        assert!(written.status.code().is_some_and(|c| c < 2), "{}", text(&written.stderr));
        assert!(written.stdout.is_empty(), "{name}: stdout not empty");
        let shown = kustody(&args);
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.is_empty(), "{name} is empty");
        assert_eq!(file, text(&shown.stdout), "{name}");
    }
}

#[test]
fn dash_o_with_a_path_is_refused_where_there_is_no_format() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    // refused before any cluster is contacted, and nothing is written
    let out = kustody(&["collect", "pod/x", "--kubeconfig", "/nonexistent", "-o", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("-o is the output format, as in kubectl, and collect has none"), "{stderr}");
    assert!(stderr.contains(&format!("--output-file {}", bundle.display())), "{stderr}");
    assert!(!bundle.exists());
    let out = kustody(&["exec", "pod/x", "-o", "out.bin", "--", "id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("exec has none; write exec's output with --output-file out.bin"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shell_completions_name_every_command() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef kustody"), ("fish", "complete -c kustody")] {
        let out = kustody(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for cmd in ["hunt", "timeline", "quarantine", "collect", "verify", "completion"] {
            assert!(script.contains(cmd), "{shell} completion lacks `{cmd}`");
        }
        for flag in ["output-file", "request-timeout", "as-group"] {
            assert!(script.contains(flag), "{shell} completion lacks `--{flag}`");
        }
    }
    // bash accepts the script
    if Path::new("/bin/bash").exists() {
        // through a file: the script is larger than one command-line argument may be (128 KiB)
        let script = text(&kustody(&["completion", "bash"]).stdout);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kustody.bash");
        std::fs::write(&file, script).unwrap();
        let out = Command::new("/bin/bash")
            .args(["-c", &format!("source '{}'\ncomplete -p kustody", file.display())])
            .output()
            .unwrap();
        assert!(text(&out.stdout).contains("kustody"), "{}", text(&out.stderr));
    }
}

#[test]
fn man_pages_render() {
    let out = kustody(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH kustody 1"), "{page}");
    assert!(page.contains("kustody\\-hunt") || page.contains("hunt"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = kustody(&["man", "--output-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for name in
        ["kustody.1", "kustody-hunt.1", "kustody-rules-check.1", "kustody-auth-whoami.1", "kustody-completion.1"]
    {
        let p = dir.path().join(name);
        let page = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{name} not written"));
        assert!(page.contains(".TH "), "{name}");
    }
    let hunt = std::fs::read_to_string(dir.path().join("kustody-hunt.1")).unwrap();
    assert!(hunt.contains("output\\-file"), "{hunt}");
    // groff, where installed, renders it to text without warnings
    if Command::new("groff").arg("--version").output().is_ok() {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", dir.path().join("kustody-hunt.1").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rendered = text(&out.stdout);
        assert!(rendered.contains("Run detection rules"), "{rendered}");
    } else {
        eprintln!("SKIP groff rendering: groff is not installed");
    }
}

#[test]
fn runs_as_the_kubectl_plugin_kubectl_kustody() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-kustody");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kustody"), &plugin).unwrap();
    let run = |cmd: &mut Command| {
        cmd.current_dir(repo()).env("KUSTODY_HOSTNAME", "golden").stdin(Stdio::null()).output().unwrap()
    };
    let help = run(Command::new(&plugin).arg("--help"));
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("Usage: kubectl kustody"), "{}", text(&help.stdout));
    let bad = run(Command::new(&plugin).args(["hunt"]));
    assert!(text(&bad.stderr).contains("Usage: kubectl kustody hunt"), "{}", text(&bad.stderr));
    let direct = kustody(&["hunt", EXAMPLE, "-q", "-o", "jsonl"]);
    let as_plugin = run(Command::new(&plugin).args(["hunt", EXAMPLE, "-q", "-o", "jsonl"]));
    assert_eq!(as_plugin.stdout, direct.stdout);
    // the krew manifest installs the same binary under kubectl-kustody
    let manifest = std::fs::read_to_string(repo().join("deploy/krew/kustody.yaml")).unwrap();
    let docs = kustody_model::yaml::parse(&manifest).unwrap();
    assert_eq!(docs[0].get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()), Some("kustody"));
    let Some(kustody_model::yaml::Node::Seq { items, .. }) = docs[0].get("spec").and_then(|s| s.get("platforms"))
    else {
        panic!("no platforms in the krew manifest")
    };
    assert!(!items.is_empty() && items.iter().all(|p| p.get("bin").and_then(|b| b.as_str()) == Some("kustody")));
    // through kubectl itself, where it is installed: kubectl finds plugins on PATH
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok() {
        let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
        let via =
            run(Command::new("kubectl").args(["kustody", "hunt", EXAMPLE, "-q", "-o", "jsonl"]).env("PATH", path));
        assert_eq!(via.stdout, direct.stdout, "{}", text(&via.stderr));
    } else {
        eprintln!("SKIP kubectl kustody: kubectl is not installed");
    }
}
