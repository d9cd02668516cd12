//! Noise control: on benign traffic no built-in rule fires at WARNING or above.
//!
//! The generator's benign mode (`kustody-gen corpus --benign`) writes realistic background
//! traffic where one event in ten is a routine action that resembles an attack (the kubelet
//! minting pod tokens, the DaemonSet controller starting privileged CNI pods, cert-manager
//! reading secrets, EKS/GKE add-on managers, the CSR approver, the ClusterRole aggregator).
//! The real samples in ../shared/samples are benign too. BENCHMARKS.md records the counts per
//! 100k events for a larger corpus.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::process::Command;

fn warning_or_above(path: &std::path::Path) -> (u64, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let stats_path = tmp.path().join("stats.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(["hunt", "--min-priority", "warning", "-f", "jsonl", "--stats-json"])
        .arg(&stats_path)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats_path).unwrap()).unwrap();
    let alerts = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    (stats["events"].as_u64().unwrap(), alerts)
}

#[test]
fn benign_generator_traffic_raises_nothing_at_warning_or_above_in_any_format() {
    let dir = tempfile::tempdir().unwrap();
    for (name, wrap) in [
        ("native", kustody_gen::Wrap::Native),
        ("eks", kustody_gen::Wrap::Eks),
        ("aks", kustody_gen::Wrap::Aks),
        ("gke", kustody_gen::Wrap::Gke),
    ] {
        let path = dir.path().join(format!("benign-{name}.log"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        kustody_gen::Corpus::benign(11).write_as(8_000_000, wrap, &mut f).unwrap();
        drop(f);
        let (events, alerts) = warning_or_above(&path);
        assert!(events > 5_000, "{name}: only {events} events");
        assert!(alerts.is_empty(), "{name}: {} alerts on benign traffic, first: {}", alerts.len(), alerts[0]);
    }
}

#[test]
fn shared_benign_samples_raise_nothing_at_warning_or_above() {
    let Some(shared) = kustody_testkit::shared("samples") else { return };
    let (events, alerts) = warning_or_above(&shared.join("samples"));
    assert!(events > 50, "{events} events");
    assert!(alerts.is_empty(), "{alerts:#?}");
}
