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
        "--output-file",
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

/// A kubeconfig whose user runs `command args...` as its credential plugin.
fn exec_kubeconfig(c: &TestCluster, dir: &std::path::Path, command: &str, args: &[&str]) -> String {
    let admin = c.kubeconfig_yaml(None, Some("cli"));
    let start = admin.find("users:").unwrap();
    let end = admin.find("contexts:").unwrap();
    let args: Vec<String> = args.iter().map(|a| format!("      - \"{a}\"\n")).collect();
    let user = format!(
        "users:\n- name: kustody-testcluster-user\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {command}\n      args:\n{}      interactiveMode: Never\n",
        args.concat()
    );
    let text = format!("{}{}{}", &admin[..start], user, &admin[end..]);
    let path = dir.join(format!("kubeconfig-{}", command.rsplit('/').next().unwrap()));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn eks_plugin_is_replaced_by_an_in_process_token_and_kustody_is_a_drop_in_plugin() {
    let Some(c) =
        cluster(TestCluster::builder().namespace("cli").eks_user("AKIDEXAMPLE", "eks-admin", &["system:masters"]))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let with_creds = |cmd: &mut Command| {
        cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("KUBECONFIG");
    };
    // the kubeconfig `aws eks update-kubeconfig` writes: kustody never runs `aws`
    let kc = exec_kubeconfig(
        &c,
        dir.path(),
        "aws",
        &["--region", "eu-west-1", "eks", "get-token", "--cluster-name", "prod", "--output", "json"],
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kustody"));
    cmd.args(["auth", "whoami", "--kubeconfig", &kc, "-v"]).env("PATH", "/nonexistent");
    with_creds(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("user:    eks-admin"), "{stdout}");
    assert!(
        stdout.contains("EKS token for cluster prod in eu-west-1, minted in-process (credentials: environment)"),
        "{stdout}"
    );
    assert!(stderr.contains("minted the token in-process in"), "{stderr}");

    // kubectl-style use: `kustody auth token` as the kubeconfig's plugin (kube-rs runs it)
    let kc2 = exec_kubeconfig(
        &c,
        dir.path(),
        env!("CARGO_BIN_EXE_kustody"),
        &["auth", "token", "--provider", "eks", "--cluster-name", "prod", "--region", "eu-west-1"],
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kustody"));
    cmd.args(["auth", "whoami", "--kubeconfig", &kc2]);
    with_creds(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("user:    eks-admin"));

    // without credentials it can use, kustody says why and runs the plugin (absent here)
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kustody"));
    cmd.args(["auth", "whoami", "--kubeconfig", &kc, "-v"])
        .env("PATH", "/nonexistent")
        .env("HOME", dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("KUBECONFIG");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("running it, because the AWS credentials are profile `default` has no static keys"),
        "{stderr}"
    );
}

#[test]
fn as_impersonates_and_v6_logs_each_request_without_credentials() {
    let Some(c) = cluster(TestCluster::builder().namespace("cli")) else { return };
    let kc = c.kubeconfig_path().to_str().unwrap().to_owned();
    let out = kustody(&["auth", "whoami", "--kubeconfig", &kc, "--as", "alice", "--as-group", "devs", "-v", "6"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // the API server answered as alice: it received Impersonate-User and Impersonate-Group
    assert!(stdout.contains("user:    alice"), "{stdout}");
    assert!(stdout.contains("groups:  devs, system:authenticated"), "{stdout}");
    assert!(stderr.contains("kustody: impersonating: alice (groups: devs)"), "{stderr}");
    // -v 6: the request, with method and URL
    assert!(stderr.contains("http.method=POST"), "{stderr}");
    assert!(stderr.contains("/apis/authentication.k8s.io/v1/selfsubjectreviews"), "{stderr}");
    assert!(!stderr.to_ascii_lowercase().contains("authorization"), "{stderr}");
    // the audit log records the impersonation
    let audit = std::fs::read_to_string(c.audit_log_path()).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"impersonatedUser\"") && l.contains("\"alice\"")),
        "no impersonated event"
    );
    // -o json: kubectl's SelfSubjectReview shape
    let out = kustody(&["auth", "whoami", "--kubeconfig", &kc, "--as", "alice", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    assert_eq!(review["connection"]["auth"], "client certificate");
    // -v 1 (and a bare -v) print no request lines
    let out = kustody(&["auth", "whoami", "--kubeconfig", &kc, "-v"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kustody: configuration:") && !stderr.contains("http.method"), "{stderr}");
    // --as-group alone is refused, as kubectl does
    let out = kustody(&["auth", "whoami", "--kubeconfig", &kc, "--as-group", "devs"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn request_timeout_gives_up_on_a_server_that_never_answers() {
    // a listener that accepts connections and never says anything (no TLS handshake, no reply)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: mute\nclusters:\n- name: mute\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: not-a-secret\ncontexts:\n- name: mute\n  context: {{cluster: mute, user: u}}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(["auth", "whoami", "--kubeconfig", kc.to_str().unwrap(), "--request-timeout", "1s"])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // a hang guard, not a timing assertion: without the flag kustody would wait for ever
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > guard {
            let _ = child.kill();
            panic!("--request-timeout 1s was not honoured: still waiting after 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!held.lock().unwrap().is_empty(), "kustody never connected");
}
