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
    assert!(matches!(e, kustody_cluster::error::CredentialError::Unsupported(_)), "{e}");
    let e = e.to_string();
    assert!(e.contains("--features aws-chain") && e.contains("container"), "{e}");
    let e =
        rt.block_on(kustody_cluster::eks::credentials(None, Some("arn:aws:iam::1:role/r"))).unwrap_err().to_string();
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

    // --role-arn: AssumeRole at STS (AWS_ENDPOINT_URL_STS), signed with the base credentials
    let sts_xml = |action: &str, key: &str| {
        format!(
            "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result><Credentials>\
             <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>role-secret</SecretAccessKey><SessionToken>role-session</SessionToken>\
             <Expiration>2099-01-01T00:00:00Z</Expiration></Credentials><AssumedRoleUser><Arn>arn:aws:sts::111122223333:assumed-role/ir/kustody</Arn>\
             <AssumedRoleId>AROAEXAMPLE:kustody</AssumedRoleId></AssumedRoleUser></{action}Result>\
             <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
        )
    };
    let (x1, x2) = (sts_xml("AssumeRole", "ASIAROLE"), sts_xml("AssumeRoleWithWebIdentity", "ASIAWEBID"));
    let (base, log) = endpoint(Box::new(move |s| {
        if s.body.contains("Action=AssumeRoleWithWebIdentity") && s.body.contains("WebIdentityToken=projected-sa-token")
        {
            return (200, json!({"$raw": {"body": x2, "headers": {"content-type": "text/xml"}}}));
        }
        let signed =
            s.headers.get("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIABASE/"));
        if signed && s.body.contains("Action=AssumeRole") && s.body.contains("RoleSessionName=kustody") {
            return (200, json!({"$raw": {"body": x1, "headers": {"content-type": "text/xml"}}}));
        }
        (403, json!({"$raw": {"body": "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"}}))
    }));
    clear_aws_env(home.path());
    std::env::set_var("AWS_ENDPOINT_URL_STS", &base);
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIABASE");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "base-secret");
    let c = rt.block_on(kustody_cluster::eks::credentials(None, Some("arn:aws:iam::111122223333:role/ir"))).unwrap();
    assert_eq!(c.access_key_id, "ASIAROLE");
    assert!(c.source.contains("role arn:aws:iam::111122223333:role/ir"), "{}", c.source);
    assert!(log.lock().unwrap()[0].body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fir"));
    // IRSA: AssumeRoleWithWebIdentity with the projected token
    clear_aws_env(home.path());
    let token = home.path().join("token");
    std::fs::write(&token, "projected-sa-token").unwrap();
    std::env::set_var("AWS_ENDPOINT_URL_STS", &base);
    std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", &token);
    std::env::set_var("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/irsa");
    let c = rt.block_on(kustody_cluster::eks::credentials(None, None)).unwrap();
    assert_eq!(c.access_key_id, "ASIAWEBID");

    // SSO (legacy profile): the cached SSO access token, then GetRoleCredentials
    let (base, log) = endpoint(Box::new(|s| {
        if s.target.starts_with("/federation/credentials")
            && s.target.contains("account_id=111122223333")
            && s.target.contains("role_name=Responder")
            && s.headers.get("x-amz-sso_bearer_token").map(String::as_str) == Some("sso-access")
        {
            return (
                200,
                json!({"roleCredentials": {"accessKeyId": "ASIASSO", "secretAccessKey": "sso-secret",
                "sessionToken": "sso-session", "expiration": 4_070_908_800_000_u64}}),
            );
        }
        (401, json!({"message": "no"}))
    }));
    clear_aws_env(home.path());
    let start = "https://example.awsapps.com/start";
    std::fs::write(
        home.path().join("config"),
        format!("[profile ir]\nsso_start_url = {start}\nsso_region = eu-west-1\nsso_account_id = 111122223333\nsso_role_name = Responder\nregion = eu-west-1\n"),
    )
    .unwrap();
    let cache = home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let name = {
        use sha1::Digest;
        format!("{:x}", sha1::Sha1::digest(start.as_bytes()))
    };
    std::fs::write(
        cache.join(format!("{name}.json")),
        json!({"startUrl": start, "region": "eu-west-1", "accessToken": "sso-access", "expiresAt": "2099-01-01T00:00:00Z"}).to_string(),
    )
    .unwrap();
    std::env::set_var("AWS_ENDPOINT_URL_SSO", &base);
    let c = rt.block_on(kustody_cluster::eks::credentials(Some("ir"), None)).unwrap();
    assert_eq!(c.access_key_id, "ASIASSO");
    assert_eq!(log.lock().unwrap().len(), 1);
}
