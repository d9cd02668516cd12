//! Native GKE and AKS tokens against token endpoints this test runs on 127.0.0.1, speaking the
//! real protocols: the JWT-bearer grant with a service-account key (signature verified with the
//! key's public half), the refresh-token grant, IAM Credentials `generateAccessToken`, the GCE
//! metadata server; Entra ID client credentials with a secret, a certificate assertion (`x5t`
//! checked against the certificate), a federated token (workload identity), and IMDS. Then a
//! kubeconfig whose user runs `gke-gcloud-auth-plugin` / `kubelogin` (neither installed) reaches
//! the test cluster with the token kustody minted itself.
//!
//! Each case runs `kustody` as a subprocess with its own environment (credentials come from the
//! environment, which tests in one process would share).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use kustody_testkit::http::endpoint;
use serde_json::{json, Value};
use sha1::Digest;

const KEY: &str = include_str!("data/cloud/test-rsa-key.pem");
const CERT: &str = include_str!("data/cloud/test-cert.pem");
const AKS_SCOPE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630/.default";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kustody(args: &[&str], env: &[(&str, &str)], home: &Path) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kustody"));
    c.args(args).env_clear().env("HOME", home).env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Writes `adc` as the credential file `name` in `home`, then runs `kustody auth token --provider
/// gke -v` with `GOOGLE_APPLICATION_CREDENTIALS` naming it, and `env`.
fn gke_token(home: &Path, name: &str, adc: &Value, env: &[(&str, &str)]) -> Out {
    let file = home.join(name);
    std::fs::write(&file, adc.to_string()).unwrap();
    let mut all = vec![("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap())];
    all.extend_from_slice(env);
    kustody(&["auth", "token", "--provider", "gke", "-v"], &all, home)
}

fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn der(pem: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body: String = pem[pem.find(&begin).unwrap() + begin.len()..pem.find(&end).unwrap()]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// Verify an RS256 JWT with the test key's public half; returns (header, claims).
fn verify_jwt(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der(KEY, "PRIVATE KEY")).unwrap();
    let public =
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, pair.public().as_ref());
    public
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &b64url_decode(parts[2]))
        .expect("signature verifies");
    (
        serde_json::from_slice(&b64url_decode(parts[0])).unwrap(),
        serde_json::from_slice(&b64url_decode(parts[1])).unwrap(),
    )
}

fn credential(out: &Out) -> Value {
    assert_eq!(out.code, 0, "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["kind"], "ExecCredential");
    v
}

fn expires_in(v: &Value) -> i64 {
    let t = chrono::DateTime::parse_from_rfc3339(v["status"]["expirationTimestamp"].as_str().unwrap()).unwrap();
    t.timestamp() - chrono::Utc::now().timestamp()
}

#[test]
fn gke_service_account_key_jwt_bearer() {
    let (base, log) = endpoint(Box::new(|s| {
        if s.form().get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return (400, json!({"error": "unsupported_grant_type"}));
        }
        (200, json!({"access_token": "ya29.from-sa-key", "expires_in": 3599, "token_type": "Bearer"}))
    }));
    let home = tempfile::tempdir().unwrap();
    let token_uri = format!("{base}/token");
    let out = gke_token(
        home.path(),
        "sa.json",
        &json!({"type": "service_account", "project_id": "p", "private_key_id": "kid-1", "private_key": KEY,
        "client_email": "ir@p.iam.gserviceaccount.com", "token_uri": token_uri}),
        &[],
    );
    let v = credential(&out);
    assert_eq!(v["status"]["token"], "ya29.from-sa-key");
    assert!((3500..=3600).contains(&expires_in(&v)), "{v}");
    assert!(out.stderr.contains("service account key for ir@p.iam.gserviceaccount.com"), "{}", out.stderr);
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!((seen.method.as_str(), seen.target.as_str()), ("POST", "/token"));
    let (header, claims) = verify_jwt(&seen.form()["assertion"]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "kid-1");
    assert_eq!(claims["iss"], "ir@p.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri);
    assert!(claims["scope"].as_str().unwrap().contains("https://www.googleapis.com/auth/cloud-platform"));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    assert!(!out.stderr.contains("PRIVATE KEY") && !out.stdout.contains("PRIVATE KEY"));
}

#[test]
fn gke_authorized_user_impersonation_and_metadata() {
    let (base, log) = endpoint(Box::new(|s| match s.target.as_str() {
        "/token" => {
            let f = s.form();
            if f.get("grant_type").map(String::as_str) != Some("refresh_token")
                || f.get("refresh_token").map(String::as_str) != Some("1//r")
            {
                return (
                    400,
                    json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
                );
            }
            (200, json!({"access_token": "ya29.user", "expires_in": 1800}))
        }
        t if t.ends_with(":generateAccessToken") => {
            if s.headers.get("authorization").map(String::as_str) != Some("Bearer ya29.user") {
                return (401, json!({"error": {"message": "no source token"}}));
            }
            let exp = (chrono::Utc::now() + chrono::Duration::seconds(3600))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            (200, json!({"accessToken": "ya29.impersonated", "expireTime": exp}))
        }
        "/computeMetadata/v1/instance/service-accounts/default/token" => {
            if s.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
                return (403, json!({"error": "missing Metadata-Flavor"}));
            }
            (200, json!({"access_token": "ya29.metadata", "expires_in": 3000, "token_type": "Bearer"}))
        }
        _ => (404, json!({"error": "not found"})),
    }));
    let home = tempfile::tempdir().unwrap();
    let gcloud = home.path().join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    let user = json!({"type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "cs",
        "refresh_token": "1//r", "token_uri": format!("{base}/token")});
    // gcloud's ADC file in $HOME
    std::fs::write(gcloud.join("application_default_credentials.json"), user.to_string()).unwrap();
    let v = credential(&kustody(&["auth", "token", "--provider", "gke"], &[], home.path()));
    assert_eq!(v["status"]["token"], "ya29.user");
    assert!((1700..=1800).contains(&expires_in(&v)));
    // impersonation
    let imp = json!({"type": "impersonated_service_account", "delegates": [],
        "service_account_impersonation_url": format!("{base}/v1/projects/-/serviceAccounts/target@p.iam.gserviceaccount.com:generateAccessToken"),
        "source_credentials": user});
    let f = home.path().join("imp.json");
    std::fs::write(&f, imp.to_string()).unwrap();
    let out = kustody(
        &["auth", "token", "--provider", "gke", "-v"],
        &[("GOOGLE_APPLICATION_CREDENTIALS", f.to_str().unwrap())],
        home.path(),
    );
    let v = credential(&out);
    assert_eq!(v["status"]["token"], "ya29.impersonated");
    assert!(out.stderr.contains("target@p.iam.gserviceaccount.com impersonated by"), "{}", out.stderr);
    let body: Value = serde_json::from_str(&log.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(body["lifetime"], "3600s");
    // the metadata server, when there is no ADC file
    std::fs::remove_file(gcloud.join("application_default_credentials.json")).unwrap();
    let host = base.trim_start_matches("http://");
    let v = credential(&kustody(&["auth", "token", "--provider", "gke"], &[("GCE_METADATA_HOST", host)], home.path()));
    assert_eq!(v["status"]["token"], "ya29.metadata");
    // a revoked refresh token: the endpoint's reason, exit 2, no secret echoed
    let bad = json!({"type": "authorized_user", "client_id": "c", "client_secret": "cs-secret", "refresh_token": "1//revoked",
        "token_uri": format!("{base}/token")});
    std::fs::write(&f, bad.to_string()).unwrap();
    let out = kustody(
        &["auth", "token", "--provider", "gke"],
        &[("GOOGLE_APPLICATION_CREDENTIALS", f.to_str().unwrap())],
        home.path(),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("400") && out.stderr.contains("expired or revoked"), "{}", out.stderr);
    assert!(!out.stderr.contains("cs-secret") && !out.stderr.contains("1//revoked"));
    // tokens never go to a non-loopback host in clear text
    let plain = json!({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r",
        "token_uri": "http://example.com/token"});
    std::fs::write(&f, plain.to_string()).unwrap();
    let out = kustody(
        &["auth", "token", "--provider", "gke"],
        &[("GOOGLE_APPLICATION_CREDENTIALS", f.to_str().unwrap())],
        home.path(),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("refusing to send credentials"), "{}", out.stderr);
}

#[test]
fn aks_secret_certificate_workload_identity_and_msi() {
    let cert_der = der(CERT, "CERTIFICATE");
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&cert_der));
    let (base, log) = endpoint(Box::new(move |s| {
        if s.target.starts_with("/metadata/identity/oauth2/token") {
            if s.headers.get("metadata").map(String::as_str) != Some("true") {
                return (
                    400,
                    json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
                );
            }
            return (
                200,
                json!({"access_token": "eyJ.msi", "expires_in": "3599", "resource": "6dae42f8-4368-4678-94ff-3960e28e3630"}),
            );
        }
        if s.target != "/tenant-1/oauth2/v2.0/token" {
            return (404, json!({"error": "not_found"}));
        }
        let f = s.form();
        if f.get("grant_type").map(String::as_str) != Some("client_credentials")
            || f.get("scope").map(String::as_str) != Some(AKS_SCOPE)
        {
            return (400, json!({"error": "invalid_request"}));
        }
        match (f.get("client_secret"), f.get("client_assertion")) {
            (Some(secret), None) if secret == "sp-secret" => {
                (200, json!({"access_token": "eyJ.secret", "expires_in": 3599, "token_type": "Bearer"}))
            }
            (None, Some(a)) if a == "federated.jwt.token" => {
                (200, json!({"access_token": "eyJ.workload", "expires_in": 3599}))
            }
            (None, Some(a)) => {
                let (h, c) = verify_jwt(a);
                assert_eq!(h["x5t"], x5t.as_str());
                assert_eq!(c["sub"], "app-1");
                assert!(c["aud"].as_str().unwrap().ends_with("/tenant-1/oauth2/v2.0/token"));
                (200, json!({"access_token": "eyJ.certificate", "expires_in": 3599}))
            }
            _ => (
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            ),
        }
    }));
    let home = tempfile::tempdir().unwrap();
    let common =
        [("AZURE_AUTHORITY_HOST", base.as_str()), ("AZURE_TENANT_ID", "tenant-1"), ("AZURE_CLIENT_ID", "app-1")];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&str, String)> {
        common.iter().chain(extra.iter()).map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let run = |mode: &str, env: Vec<(&str, String)>| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        kustody(&["auth", "token", "--provider", "aks", "--login", mode, "-v"], &e, home.path())
    };
    let out = run("spn", with(&[("AZURE_CLIENT_SECRET", "sp-secret")]));
    assert_eq!(credential(&out)["status"]["token"], "eyJ.secret");
    assert!(out.stderr.contains("service principal app-1 (secret)"), "{}", out.stderr);
    let both = home.path().join("sp.pem");
    std::fs::write(&both, format!("{CERT}{KEY}")).unwrap();
    let out = run("spn", with(&[("AZURE_CLIENT_CERTIFICATE_PATH", both.to_str().unwrap())]));
    assert_eq!(credential(&out)["status"]["token"], "eyJ.certificate");
    let fed = home.path().join("token");
    std::fs::write(&fed, "federated.jwt.token\n").unwrap();
    let out = run("workloadidentity", with(&[("AZURE_FEDERATED_TOKEN_FILE", fed.to_str().unwrap())]));
    assert_eq!(credential(&out)["status"]["token"], "eyJ.workload");
    let out = kustody(
        &["auth", "token", "--provider", "aks", "--login", "msi", "--client-id", "mi-1"],
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.as_str())],
        home.path(),
    );
    let v = credential(&out);
    assert_eq!(v["status"]["token"], "eyJ.msi");
    assert!((3500..=3600).contains(&expires_in(&v)));
    let msi = log.lock().unwrap().last().unwrap().clone();
    assert!(
        msi.target.contains("resource=6dae42f8-4368-4678-94ff-3960e28e3630") && msi.target.contains("client_id=mi-1"),
        "{}",
        msi.target
    );
    // a wrong secret: Entra's reason, exit 2, the secret not echoed
    let out = run("spn", with(&[("AZURE_CLIENT_SECRET", "wrong-secret")]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("AADSTS7000215"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-secret"));
    // modes that need a person are refused in-process with the reason
    let out = run("devicecode", with(&[]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not minted in-process"), "{}", out.stderr);
}

/// A kubeconfig written by `gcloud container clusters get-credentials` / `kubelogin
/// convert-kubeconfig`: the plugins are not installed, kustody mints the tokens itself and the
/// test cluster accepts them.
#[test]
fn kubeconfig_plugins_replaced_by_native_tokens_on_the_test_cluster() {
    let Some(c) = kustody_testcluster::client::cluster(kustody_testcluster::TestCluster::builder().namespace("ir"))
    else {
        return;
    };
    let rules = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]);
    let gke_token = c.add_user("gke-responder@example.com", &[], rules.clone(), Some("ir")).unwrap();
    let aks_token = c.add_user("aks-responder", &[], rules, Some("ir")).unwrap();
    // GKE: the first token minted is one the cluster refuses (revoked, say): kustody must mint
    // again after the 401 and retry. AKS: tokens that expire within the refresh margin are
    // minted again before the next request.
    let gke_mints = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gm = gke_mints.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        if s.target == "/token" {
            let first = gm.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let token = if first { "revoked".to_owned() } else { gke_token.clone() };
            (200, json!({"access_token": token, "expires_in": 3599}))
        } else if s.target == "/tenant-1/oauth2/v2.0/token"
            && s.form().get("client_secret").map(String::as_str) == Some("sp-secret")
        {
            (200, json!({"access_token": aks_token, "expires_in": 30}))
        } else {
            (401, json!({"error": "invalid_client"}))
        }
    }));
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("sa.json");
    std::fs::write(
        &key,
        json!({"type": "service_account", "private_key": KEY, "client_email": "ir@p.iam.gserviceaccount.com", "token_uri": format!("{base}/token")})
            .to_string(),
    )
    .unwrap();
    let mut kc: Value =
        serde_json::from_str(&serde_json::to_string(&serde_yaml_like(&c.kubeconfig_yaml(None, Some("ir")))).unwrap())
            .unwrap();
    kc["users"] = json!([
        {"name": "gke", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "gke-gcloud-auth-plugin",
            "installHint": "Install gke-gcloud-auth-plugin", "provideClusterInfo": true, "interactiveMode": "IfAvailable"}}},
        {"name": "aks", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
            "args": ["get-token", "--login", "spn", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630", "--tenant-id", "tenant-1",
                     "--client-id", "app-1", "--environment", "AzurePublicCloud"],
            "env": [{"name": "AAD_SERVICE_PRINCIPAL_CLIENT_SECRET", "value": "sp-secret"}], "interactiveMode": "IfAvailable"}}}
    ]);
    let cluster_name = kc["clusters"][0]["name"].clone();
    kc["contexts"] = json!([
        {"name": "gke", "context": {"cluster": cluster_name, "user": "gke", "namespace": "ir"}},
        {"name": "aks", "context": {"cluster": cluster_name, "user": "aks", "namespace": "ir"}}
    ]);
    kc["current-context"] = json!("gke");
    let kcf = home.path().join("kubeconfig");
    std::fs::write(&kcf, kc.to_string()).unwrap();
    let out = kustody(
        &["auth", "whoami", "--kubeconfig", kcf.to_str().unwrap(), "-v"],
        &[("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap())],
        home.path(),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("gke-responder@example.com"), "{}", out.stdout);
    assert!(
        out.stderr.contains("recognised `gke-gcloud-auth-plugin`")
            && out.stderr.contains("minted the token in-process"),
        "{}",
        out.stderr
    );
    assert_eq!(gke_mints.load(std::sync::atomic::Ordering::SeqCst), 2, "minted once more after the 401");
    // the secret comes from the plugin's own `env` entry, as kubelogin would have read it
    let out = kustody(
        &["auth", "whoami", "--kubeconfig", kcf.to_str().unwrap(), "--context", "aks", "-v"],
        &[("AZURE_AUTHORITY_HOST", base.as_str())],
        home.path(),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("aks-responder"), "{}", out.stdout);
    assert!(
        out.stderr.contains("recognised `kubelogin`") && out.stderr.contains("minted the token in-process"),
        "{}",
        out.stderr
    );
    let aks_mints = log.lock().unwrap().iter().filter(|s| s.target.starts_with("/tenant-1/")).count();
    assert_eq!(aks_mints, 2, "a token expiring within the margin is minted again before use");
}

/// The harness's kubeconfig is YAML; the JSON subset it uses is parsed by the test cluster's
/// own YAML reader.
fn serde_yaml_like(text: &str) -> Value {
    kustody_testcluster::yaml_documents(text).unwrap().into_iter().next().unwrap()
}

#[test]
fn gke_workload_identity_federation_from_a_file_then_impersonation() {
    let (base, log) = endpoint(Box::new(|s| match s.target.as_str() {
        "/v1/token" => {
            let f = s.form();
            let ok = f.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && f.get("subject_token").map(String::as_str) == Some("oidc-token-from-ci")
                && f.get("subject_token_type").map(String::as_str) == Some("urn:ietf:params:oauth:token-type:jwt")
                && f.get("requested_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:access_token")
                && f.get("audience").is_some_and(|a| a.contains("workloadIdentityPools/ci/providers/gh"));
            if !ok {
                return (400, json!({"error": "invalid_request", "error_description": format!("{f:?}")}));
            }
            (
                200,
                json!({"access_token": "federated", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}),
            )
        }
        t if t.ends_with(":generateAccessToken") => {
            if s.headers.get("authorization").map(String::as_str) != Some("Bearer federated") {
                return (401, json!({"error": {"message": "not the federated token"}}));
            }
            let exp = (chrono::Utc::now() + chrono::Duration::seconds(3600))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            (200, json!({"accessToken": "ya29.wif", "expireTime": exp}))
        }
        _ => (404, json!({})),
    }));
    let home = tempfile::tempdir().unwrap();
    let subject = home.path().join("oidc.json");
    std::fs::write(&subject, json!({"value": "oidc-token-from-ci"}).to_string()).unwrap();
    let out = gke_token(
        home.path(),
        "wif.json",
        &json!({"type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/gh",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": format!("{base}/v1/token"),
        "service_account_impersonation_url": format!("{base}/v1/projects/-/serviceAccounts/deployer@p.iam.gserviceaccount.com:generateAccessToken"),
        "credential_source": {"file": subject.to_str().unwrap(), "format": {"type": "json", "subject_token_field_name": "value"}}}),
        &[],
    );
    let v = credential(&out);
    assert_eq!(v["status"]["token"], "ya29.wif");
    assert!(
        out.stderr
            .contains("workload identity federation (provider gh, token from a token file) impersonating deployer@p.iam.gserviceaccount.com"),
        "{}",
        out.stderr
    );
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn aks_azure_cli_cache_cached_token_then_refresh() {
    let (base, log) = endpoint(Box::new(|s| {
        let f = s.form();
        let ok = s.target == "/tenant-9/oauth2/v2.0/token"
            && f.get("grant_type").map(String::as_str) == Some("refresh_token")
            && f.get("client_id").map(String::as_str) == Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46")
            && f.get("refresh_token").map(String::as_str) == Some("cli-refresh")
            && f.get("scope").is_some_and(|x| x.starts_with(AKS_SCOPE));
        if !ok {
            return (400, json!({"error": "invalid_grant", "error_description": format!("{} {f:?}", s.target)}));
        }
        (200, json!({"access_token": "eyJ.refreshed", "expires_in": 3599, "refresh_token": "rotated"}))
    }));
    let home = tempfile::tempdir().unwrap();
    let azure = home.path().join(".azure");
    std::fs::create_dir_all(&azure).unwrap();
    let cache_with = |expires_on: i64| {
        json!({
            "AccessToken": {"k1": {"credential_type": "AccessToken", "secret": "eyJ.cached", "home_account_id": "oid-1.tenant-9",
                "environment": "login.microsoftonline.com", "client_id": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
                "target": "6dae42f8-4368-4678-94ff-3960e28e3630/user_impersonation", "realm": "tenant-9",
                "token_type": "Bearer", "expires_on": expires_on.to_string()}},
            "RefreshToken": {"k2": {"credential_type": "RefreshToken", "secret": "cli-refresh", "home_account_id": "oid-1.tenant-9",
                "environment": "login.microsoftonline.com", "client_id": "04b07795-8ddb-461a-bbee-02f9e1bf7b46"}}
        })
        .to_string()
    };
    let now = chrono::Utc::now().timestamp();
    std::fs::write(azure.join("msal_token_cache.json"), cache_with(now + 1800)).unwrap();
    let env = [("AZURE_AUTHORITY_HOST", base.as_str())];
    let out = kustody(&["auth", "token", "--provider", "aks", "--login", "azurecli", "-v"], &env, home.path());
    assert_eq!(credential(&out)["status"]["token"], "eyJ.cached");
    assert!(log.lock().unwrap().is_empty(), "a valid cached token needs no request");
    // expired: the CLI's refresh token is redeemed with the CLI's client id, in the account's tenant
    std::fs::write(azure.join("msal_token_cache.json"), cache_with(now - 10)).unwrap();
    let before = std::fs::read(azure.join("msal_token_cache.json")).unwrap();
    let out = kustody(&["auth", "token", "--provider", "aks", "--login", "azurecli"], &env, home.path());
    assert_eq!(credential(&out)["status"]["token"], "eyJ.refreshed");
    assert_eq!(std::fs::read(azure.join("msal_token_cache.json")).unwrap(), before, "the CLI's cache is never written");
    assert!(!out.stderr.contains("cli-refresh") && !out.stdout.contains("cli-refresh"));
}

/// Google's STS for the federation tests: checks the grant and hands the subject token to
/// `check`, which answers with an error text or nothing.
fn google_sts(check: impl Fn(&str, &str) -> Option<String> + Send + Sync + 'static) -> kustody_testkit::http::Handler {
    Box::new(move |s| {
        if s.target != "/v1/token" {
            return (404, json!({}));
        }
        let f = s.form();
        if f.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:token-exchange") {
            return (400, json!({"error": "invalid_grant"}));
        }
        match check(
            f.get("subject_token").map_or("", String::as_str),
            f.get("subject_token_type").map_or("", String::as_str),
        ) {
            Some(why) => (400, json!({"error": "invalid_request", "error_description": why})),
            None => (200, json!({"access_token": "ya29.federated", "token_type": "Bearer", "expires_in": 3600})),
        }
    })
}

#[test]
fn gke_workload_identity_federation_from_an_executable() {
    let (base, _log) = endpoint(google_sts(|token, ty| {
        (token != "oidc-from-exe" || ty != "urn:ietf:params:oauth:token-type:id_token")
            .then(|| format!("unexpected subject token {token:?} of type {ty:?}"))
    }));
    let home = tempfile::tempdir().unwrap();
    let runs = home.path().join("runs");
    let cache = home.path().join("cache.json");
    let exe = home.path().join("token-helper");
    // The executable checks what Google's libraries tell it, counts its runs, and writes the
    // output file as the spec asks.
    std::fs::write(
        &exe,
        format!(
            r#"#!/bin/sh
echo run >> {runs}
[ "$GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE" = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/exe" ] || {{ echo '{{"version":1,"success":false,"code":"400","message":"wrong audience"}}'; exit 1; }}
[ "$GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE" = 0 ] || exit 3
[ "$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE" = "{cache}" ] || exit 4
[ "$1" = "--mode" ] || exit 5
exp=$(( $(date +%s) + 3600 ))
out='{{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:id_token","id_token":"oidc-from-exe","expiration_time":'$exp'}}'
echo "$out" > "$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"
echo "$out"
"#,
            runs = runs.display(),
            cache = cache.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = home.path().join("wif.json");
    let write_cfg = |audience: &str| {
        std::fs::write(
            &cfg,
            json!({"type": "external_account", "audience": audience,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token", "token_url": format!("{base}/v1/token"),
                "credential_source": {"executable": {"command": format!("{} --mode ci", exe.display()),
                    "timeout_millis": 5000, "output_file": cache.to_str().unwrap()}}})
            .to_string(),
        )
        .unwrap()
    };
    write_cfg("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/exe");
    let adc = ("GOOGLE_APPLICATION_CREDENTIALS", cfg.to_str().unwrap());
    let allow = ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1");
    // Google's safeguard: not without the opt-in, and the executable is not run.
    let out = kustody(&["auth", "token", "--provider", "gke"], &[adc], home.path());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1"), "{}", out.stderr);
    assert!(!runs.exists());
    // Run once; the second time the output file is a valid cache.
    let out = kustody(&["auth", "token", "--provider", "gke", "-v"], &[adc, allow], home.path());
    assert_eq!(credential(&out)["status"]["token"], "ya29.federated");
    assert!(out.stderr.contains("token from an executable"), "{}", out.stderr);
    let out = kustody(&["auth", "token", "--provider", "gke"], &[adc, allow], home.path());
    assert_eq!(credential(&out)["status"]["token"], "ya29.federated");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1, "the cache spared a run");
    // An expired cache is ignored; the executable's own failure is reported with its code.
    std::fs::write(&cache, r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:id_token","id_token":"old","expiration_time":1}"#).unwrap();
    write_cfg("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/other");
    let out = kustody(&["auth", "token", "--provider", "gke"], &[adc, allow], home.path());
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("400: wrong audience"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
}

/// SigV4 (AWS's signing process), written out independently of the signer kustody uses.
fn sigv4_signature(secret: &str, date: &str, region: &str, canonical_request: &str) -> String {
    use ring::hmac;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mac =
        |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes()).as_ref().to_vec();
    let day = &date[..8];
    let scope = format!("{day}/{region}/sts/aws4_request");
    let to_sign =
        format!("AWS4-HMAC-SHA256\n{date}\n{scope}\n{}", hex(&sha2::Sha256::digest(canonical_request.as_bytes())));
    let k = mac(format!("AWS4{secret}").as_bytes(), day);
    let k = mac(&k, region);
    let k = mac(&k, "sts");
    let k = mac(&k, "aws4_request");
    hex(&mac(&k, &to_sign))
}

#[test]
fn gke_workload_identity_federation_from_aws_with_imdsv2() {
    use sha2::Digest as _;
    const AUDIENCE: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws/providers/ec2";
    const VERIFY: &str = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";
    let (base, log) = endpoint(Box::new(|s| {
        let raw = |body: &str| json!({"$raw": {"body": body}});
        let session_ok = s.headers.get("x-aws-ec2-metadata-token").map(String::as_str) == Some("imds-session");
        match (s.method.as_str(), s.target.as_str()) {
            ("PUT", "/latest/api/token") if s.headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") => {
                (200, raw("imds-session"))
            }
            (_, t) if t.starts_with("/latest/meta-data/") && !session_ok => (401, raw("")),
            ("GET", "/latest/meta-data/placement/availability-zone") => (200, raw("eu-west-1b")),
            ("GET", "/latest/meta-data/iam/security-credentials") => (200, raw("ec2-role\n")),
            ("GET", "/latest/meta-data/iam/security-credentials/ec2-role") => (
                200,
                json!({"Code": "Success", "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "instance-secret", "Token": "instance-session", "Expiration": "2099-01-01T00:00:00Z"}),
            ),
            ("POST", "/v1/token") => {
                let f = s.form();
                let token = kustody_testkit::http::percent_decode(f.get("subject_token").map_or("", String::as_str));
                let check = || -> Result<(), String> {
                    if f.get("subject_token_type").map(String::as_str)
                        != Some("urn:ietf:params:aws:token-type:aws4_request")
                    {
                        return Err("subject_token_type".into());
                    }
                    let v: Value = serde_json::from_str(&token).map_err(|e| format!("{e}: {token}"))?;
                    let url = "https://sts.eu-west-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";
                    if v["url"] != url || v["method"] != "POST" {
                        return Err(format!("url/method: {v}"));
                    }
                    let h: std::collections::BTreeMap<String, String> = v["headers"]
                        .as_array()
                        .ok_or("no headers")?
                        .iter()
                        .map(|x| {
                            (x["key"].as_str().unwrap_or("").to_owned(), x["value"].as_str().unwrap_or("").to_owned())
                        })
                        .collect();
                    let want = |k: &str, val: &str| {
                        if h.get(k).map(String::as_str) == Some(val) {
                            Ok(())
                        } else {
                            Err(format!("{k}: {h:?}"))
                        }
                    };
                    want("host", "sts.eu-west-1.amazonaws.com")?;
                    want("x-goog-cloud-target-resource", AUDIENCE)?;
                    want("x-amz-security-token", "instance-session")?;
                    let date = h.get("x-amz-date").ok_or("no x-amz-date")?;
                    let auth = h.get("Authorization").ok_or("no Authorization")?;
                    let signed = "host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource";
                    let canonical = format!(
                        "POST\n/\nAction=GetCallerIdentity&Version=2011-06-15\nhost:sts.eu-west-1.amazonaws.com\nx-amz-date:{date}\nx-amz-security-token:instance-session\nx-goog-cloud-target-resource:{AUDIENCE}\n\n{signed}\n{}",
                        sha2::Sha256::digest(b"").iter().map(|x| format!("{x:02x}")).collect::<String>()
                    );
                    let sig = sigv4_signature("instance-secret", date, "eu-west-1", &canonical);
                    let expect = format!(
                        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/{}/eu-west-1/sts/aws4_request, SignedHeaders={signed}, Signature={sig}",
                        &date[..8]
                    );
                    if *auth != expect {
                        Err(format!("signature: got {auth}, want {expect}"))
                    } else {
                        Ok(())
                    }
                };
                match check() {
                    Ok(()) => {
                        (200, json!({"access_token": "ya29.from-aws", "token_type": "Bearer", "expires_in": 3600}))
                    }
                    Err(why) => (400, json!({"error": "invalid_request", "error_description": why})),
                }
            }
            _ => (404, json!({})),
        }
    }));
    let home = tempfile::tempdir().unwrap();
    let adc = json!({"type": "external_account", "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request", "token_url": format!("{base}/v1/token"),
        "credential_source": {"environment_id": "aws1",
            "region_url": format!("{base}/latest/meta-data/placement/availability-zone"),
            "url": format!("{base}/latest/meta-data/iam/security-credentials"),
            "regional_cred_verification_url": VERIFY,
            "imdsv2_session_token_url": format!("{base}/latest/api/token")}});
    let out = gke_token(home.path(), "aws.json", &adc, &[]);
    assert_eq!(credential(&out)["status"]["token"], "ya29.from-aws", "{}", out.stderr);
    assert!(!out.stderr.contains("instance-secret") && !out.stdout.contains("instance-secret"));
    let seen: Vec<String> = log.lock().unwrap().iter().map(|s| format!("{} {}", s.method, s.target)).collect();
    assert_eq!(
        seen,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/placement/availability-zone",
            "GET /latest/meta-data/iam/security-credentials",
            "GET /latest/meta-data/iam/security-credentials/ec2-role",
            "POST /v1/token",
        ]
    );
    // Keys and region in the environment: no metadata server at all.
    log.lock().unwrap().clear();
    let env = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "instance-secret"),
        ("AWS_SESSION_TOKEN", "instance-session"),
    ];
    let out = gke_token(home.path(), "aws.json", &adc, &env);
    assert_eq!(credential(&out)["status"]["token"], "ya29.from-aws", "{}", out.stderr);
    assert_eq!(log.lock().unwrap().iter().map(|s| s.target.as_str()).collect::<Vec<_>>(), ["/v1/token"]);
}
