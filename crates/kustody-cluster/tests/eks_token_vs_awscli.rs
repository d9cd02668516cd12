//! The EKS token kustody mints is the one `aws eks get-token` (awscli from PyPI) prints for the
//! same credentials and time: the same presigned URL, parameter for parameter, so the same
//! canonical request and the same signature.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use kustody_cluster::eks::{token, AwsCredentials};
use secrecy::{ExposeSecret, SecretString};

fn awscli() -> Option<()> {
    if Command::new("aws").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but awscli is missing (scripts/test installs it with pip)"
    );
    eprintln!("SKIP: awscli not installed (pip install awscli)");
    None
}

fn decode(token: &str) -> String {
    let b64 = token.strip_prefix("k8s-aws-v1.").unwrap();
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap()
}

fn params(url: &str) -> (String, BTreeMap<String, String>) {
    let (base, q) = url.split_once('?').unwrap();
    (
        base.to_owned(),
        q.split('&').map(|kv| kv.split_once('=').unwrap()).map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
    )
}

fn amz_date(s: &str) -> SystemTime {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").unwrap().and_utc();
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp() as u64)
}

#[test]
fn same_presigned_url_as_aws_eks_get_token() {
    let Some(()) = awscli() else { return };
    let cases = [
        ("prod-cluster", "eu-west-1", Some("FwoGZXIvYXdzEXAMPLE/token+with=chars")),
        ("analytics", "ap-southeast-2", None),
    ];
    for (cluster, region, session) in cases {
        let mut cmd = Command::new("aws");
        cmd.args(["eks", "get-token", "--cluster-name", cluster, "--region", region, "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        match session {
            Some(s) => cmd.env("AWS_SESSION_TOKEN", s),
            None => cmd.env_remove("AWS_SESSION_TOKEN"),
        };
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cred: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs = decode(cred["status"]["token"].as_str().unwrap());
        let (their_base, their_params) = params(&theirs);
        let when = amz_date(&their_params["X-Amz-Date"]);
        let creds = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: session.map(|s| SecretString::from(s.to_owned())),
            source: "test".into(),
        };
        let ours = token(&creds, cluster, region, when).unwrap();
        let (our_base, our_params) = params(&ours.presigned_url);
        assert_eq!(our_base, their_base);
        assert_eq!(our_params, their_params, "\nours:   {}\ntheirs: {theirs}", ours.presigned_url);
        assert_eq!(decode(ours.token.expose_secret()), ours.presigned_url);
    }
}
