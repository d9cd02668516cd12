//! `kustody baseline learn` and `hunt --baseline`: learnt normal demotes benign operators'
//! repeated behaviour, every demotion counted, while attacks still fire.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::io::{BufRead, Write};
use std::process::Command;

fn kustody(args: &[&str]) -> kustody_testkit::Run {
    kustody_testkit::run(Command::new(env!("CARGO_BIN_EXE_kustody")).args(args))
}

#[test]
fn learnt_on_the_first_half_the_second_half_of_benign_operators_is_quiet_and_attacks_still_fire() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("ops.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&all).unwrap());
    kustody_gen::operators::write_operator_traffic(11, 200_000, &mut f).unwrap();
    f.flush().unwrap();
    drop(f);
    let lines: Vec<String> =
        std::io::BufReader::new(std::fs::File::open(&all).unwrap()).lines().map(Result::unwrap).collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let (learn, hunt) = (tmp.path().join("first.jsonl"), tmp.path().join("second.jsonl"));
    std::fs::write(&learn, first.join("\n") + "\n").unwrap();
    std::fs::write(&hunt, second.join("\n") + "\n").unwrap();
    let base = tmp.path().join("baseline.json");
    let b = base.to_str().unwrap();
    // the generator's traffic spans one day: learn with a one-day learning period
    let r = kustody(&["baseline", "learn", learn.to_str().unwrap(), "-o", b, "--min-days", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("behaviours of"), "{}", r.stderr);

    // without allow-lists the operators are loud; with the baseline, quiet
    let loud = kustody(&[
        "hunt",
        hunt.to_str().unwrap(),
        "--no-allowlist",
        "--min-priority",
        "warning",
        "-o",
        "jsonl",
        "--quiet",
    ]);
    let loud_n = loud.stdout.lines().count();
    assert!(loud_n > 1000, "the benign traffic should be loud without allow-lists: {loud_n}");
    let stats = tmp.path().join("stats.json");
    let quiet = kustody(&[
        "hunt",
        hunt.to_str().unwrap(),
        "--no-allowlist",
        "--baseline",
        b,
        "--min-priority",
        "warning",
        "-o",
        "jsonl",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let n = quiet.stdout.lines().count();
    assert!(n <= second.len() / 100_000 + 1, "≤ 1 WARNING+ per 100k events, got {n}:\n{}", quiet.stdout);
    // every demotion is counted and shown
    assert!(
        quiet.stderr.contains("demoted:")
            && quiet.stderr.contains("baseline kustody Secret Read by Unexpected Service Account"),
        "{}",
        quiet.stderr
    );
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let demoted: u64 = s["demoted_by_baseline"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(demoted as usize >= loud_n, "{demoted} demoted, {loud_n} loud");

    // the attack chain still fires in full with the operators' baseline
    let chain = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let with = kustody(&["hunt", chain, "--baseline", b, "-o", "findings"]);
    let without = kustody(&["hunt", chain, "-o", "findings"]);
    assert_eq!(with.stdout.lines().count(), without.stdout.lines().count());
    assert!(with.stdout.contains("Attack Chain"), "{}", with.stdout);
}

#[test]
fn a_behaviour_is_known_only_after_enough_days_and_bad_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = |day: u32| {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a{day}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/monitoring/secrets/tls","verb":"get","user":{{"username":"system:serviceaccount:monitoring:scraper","groups":["system:serviceaccounts"]}},"sourceIPs":["10.244.1.9"],"userAgent":"scraper/1.0","objectRef":{{"resource":"secrets","namespace":"monitoring","name":"tls","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"2026-11-{day:02}T10:00:00Z","stageTimestamp":"2026-11-{day:02}T10:00:00Z"}}"#
        )
    };
    let one_day = tmp.path().join("one.jsonl");
    std::fs::write(&one_day, ev(1) + "\n").unwrap();
    let two_days = tmp.path().join("two.jsonl");
    std::fs::write(&two_days, ev(1) + "\n" + &ev(2) + "\n").unwrap();
    let probe = tmp.path().join("probe.jsonl");
    std::fs::write(&probe, ev(9) + "\n").unwrap();
    let fired = |base: &str| {
        let r = kustody(&["hunt", probe.to_str().unwrap(), "--no-allowlist", "--baseline", base, "-o", "jsonl"]);
        r.stdout.lines().count()
    };
    let b1 = tmp.path().join("b1.json");
    assert_eq!(kustody(&["baseline", "learn", one_day.to_str().unwrap(), "-o", b1.to_str().unwrap()]).code, 0);
    let b2 = tmp.path().join("b2.json");
    assert_eq!(kustody(&["baseline", "learn", two_days.to_str().unwrap(), "-o", b2.to_str().unwrap()]).code, 0);
    assert!(fired(b1.to_str().unwrap()) > 0, "seen on one day: not yet known (min 2 days)");
    assert_eq!(fired(b2.to_str().unwrap()), 0, "seen on two days: known");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 99}").unwrap();
    let r = kustody(&["hunt", probe.to_str().unwrap(), "--baseline", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("bad.json") && r.stderr.contains("version 99"), "{}", r.stderr);
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let r = kustody(&["baseline", "learn", empty.to_str().unwrap(), "-o", tmp.path().join("e.json").to_str().unwrap()]);
    assert_eq!(r.code, 2, "an empty baseline would know nothing: {}", r.stderr);
}
