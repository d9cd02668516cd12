//! `kustody auth whoami` and `kustody exec` as a user runs them, against a test cluster.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::process::Command;

use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod, TestCluster};
use sha2::Digest;

fn kustody(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kustody")).args(args).env_remove("KUBECONFIG").output().unwrap()
}

#[test]
fn whoami_and_exec_from_the_command_line() {
    let Some(c) = cluster(TestCluster::builder().namespace("cli").pod(Pod::new("shell"))) else { return };
    let kc = c.kubeconfig_path().to_str().unwrap().to_owned();

    let out = kustody(&["auth", "whoami", "--kubeconfig", &kc, "-v"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("user:    kustody-testcluster-admin"), "{stdout}");
    assert!(stdout.contains("system:masters"), "{stdout}");
    assert!(stdout.contains("auth:    client certificate"), "{stdout}");
    assert!(stderr.contains("kustody: configuration: --kubeconfig"), "{stderr}");
    assert!(stderr.contains("kustody: namespace: cli"), "{stderr}");

    let out = kustody(&["exec", "--kubeconfig", &kc, "pod/shell", "--", "sh", "-c", "echo hi; echo warn >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(out.stdout, b"hi\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("warn\n"), "{stderr}");
    let sha = format!("{:x}", sha2::Sha256::digest(b"hi\n"));
    assert!(stderr.contains(&format!("kustody: exit 4 · 3 bytes of stdout, sha256 {sha}")), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.bin");
    let out = kustody(&[
        "exec",
        "--kubeconfig",
        &kc,
        "-n",
        "cli",
        "shell",
        "--verify-size",
        "-o",
        file.to_str().unwrap(),
        "--",
        "head",
        "-c",
        "100000",
        "/dev/urandom",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 100_000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{:x}", sha2::Sha256::digest(&data))), "{stderr}");
    assert!(stderr.contains("(size verified in the container)"), "{stderr}");

    let out = kustody(&["exec", "--kubeconfig", &kc, "pod/ghost", "--", "id"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "kustody: error: pod cli/ghost not found");
    let out = kustody(&["exec", "--kubeconfig", "/nonexistent/kubeconfig", "pod/shell", "--", "id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubeconfig /nonexistent/kubeconfig"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
