//! The AWS credential chain (feature `aws-chain`) against endpoints this test runs on
//! 127.0.0.1: EKS Pod Identity (the container credentials endpoint, with its authorization
//! token) and IMDSv2 (session token, role, credentials); then an EKS token signed with the
//! temporary credentials carries their session token. Without the feature, the error says what
//! to build. One test function: the chain reads the process environment.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

fn clear_aws_env(home: &std::path::Path) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            std::env::remove_var(k);
        }
    }
    std::env::set_var("HOME", home);
    std::env::set_var("AWS_CONFIG_FILE", home.join("config"));
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"));
    std::env::set_var("AWS_REGION", "eu-west-1");
}

#[cfg(not(feature = "aws-chain"))]
#[test]
fn without_the_feature_the_error_says_what_to_build() {
    let home = tempfile::tempdir().unwrap();
    clear_aws_env(home.path());
    std::env::set_var("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/creds");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(kustody_cluster::eks::credentials(None, None)).unwrap_err();
    assert!(e.contains("--features aws-chain") && e.contains("container"), "{e}");
    let e = rt.block_on(kustody_cluster::eks::credentials(None, Some("arn:aws:iam::1:role/r"))).unwrap_err();
    assert!(e.contains("--role-arn") && e.contains("aws-chain"), "{e}");
}

#[cfg(feature = "aws-chain")]
#[test]
fn pod_identity_and_imds_credentials_sign_eks_tokens() {
    use kustody_testkit::http::endpoint;
    use serde_json::json;
    use std::time::SystemTime;

    let home = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let exp = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    // EKS Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN
    let e2 = exp.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        if s.headers.get("authorization").map(String::as_str) != Some("pod-identity-token") {
            return (401, json!({"message": "no token"}));
        }
        (
            200,
            json!({"AccessKeyId": "ASIAPODIDENTITY", "SecretAccessKey": "pod-secret", "Token": "pod-session", "Expiration": e2}),
        )
    }));
    clear_aws_env(home.path());
    std::env::set_var("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{base}/v1/credentials"));
    std::env::set_var("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-identity-token");
    let c = rt.block_on(kustody_cluster::eks::credentials(None, None)).unwrap();
    assert_eq!(c.access_key_id, "ASIAPODIDENTITY");
    assert!(c.source.contains("AWS SDK"), "{}", c.source);
    assert_eq!(log.lock().unwrap().len(), 1);
    let t = kustody_cluster::eks::token(&c, "prod", "eu-west-1", SystemTime::now()).unwrap();
    assert!(t.presigned_url.contains("X-Amz-Credential=ASIAPODIDENTITY%2F"), "{}", t.presigned_url);
    assert!(t.presigned_url.contains("X-Amz-Security-Token=pod-session"), "{}", t.presigned_url);

    // IMDSv2: a session token first, then the role, then its credentials
    let e3 = exp.clone();
    let (base, log) = endpoint(Box::new(move |s| match (s.method.as_str(), s.target.as_str()) {
        ("PUT", "/latest/api/token") => {
            if !s.headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                return (400, json!({}));
            }
            (
                200,
                json!({"$raw": {"body": "imds-session", "headers": {"x-aws-ec2-metadata-token-ttl-seconds": "21600"}}}),
            )
        }
        _ if s.headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some("imds-session") => (401, json!({})),
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, json!({"$raw": {"body": "node-role"}})),
        ("GET", "/latest/meta-data/iam/security-credentials/node-role") => (
            200,
            json!({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAIMDS", "SecretAccessKey": "imds-secret",
                "Token": "imds-session-token", "Expiration": e3, "LastUpdated": "2026-11-23T00:00:00Z"}),
        ),
        _ => (404, json!({})),
    }));
    clear_aws_env(home.path());
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &base);
    let c = rt.block_on(kustody_cluster::eks::credentials(None, None)).unwrap();
    assert_eq!(c.access_key_id, "ASIAIMDS");
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[0].method, "PUT", "IMDSv2 starts with a session token: {seen:?}");
    assert!(seen.iter().any(|s| s.target == "/latest/meta-data/iam/security-credentials/node-role"));
}
