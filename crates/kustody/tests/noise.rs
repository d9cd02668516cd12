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

#[test]
fn operators_installed_by_helm_raise_at_most_one_finding_per_100k_events() {
    // Prometheus operator, cert-manager (and cainjector), Gatekeeper, Argo CD in `argo-cd`,
    // Kyverno, external-secrets, istiod and Flux, with Helm release prefixes: what produced
    // hundreds of WARNINGs on a real benign cluster before allow-lists matched by pattern.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operators.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    kustody_gen::operators::write_operator_traffic(7, 100_000, &mut f).unwrap();
    drop(f);
    let run = |extra: &[&str], path: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_kustody"))
            .args(["hunt", "-o", "findings", "--min-priority", "warning", "-q"])
            .args(extra)
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let findings = run(&[], &path);
    let shown: Vec<String> = findings.iter().take(3).map(|f| f.chars().take(600).collect()).collect();
    assert!(
        findings.len() <= 1,
        "{} WARNING+ findings on 100k benign operator events, first: {shown:#?}",
        findings.len()
    );
    // the same traffic without the allow catalogue is exactly the noise the catalogue removes
    let small = dir.path().join("operators-10k.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&small).unwrap());
    kustody_gen::operators::write_operator_traffic(7, 10_000, &mut f).unwrap();
    drop(f);
    let noisy = run(&["--no-allowlist"], &small);
    assert!(noisy.len() > 10, "the generator no longer exercises the allow-lists: {} findings", noisy.len());
}
