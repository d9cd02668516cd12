//! Subject tokens for GKE workload identity federation (`external_account` credentials): the
//! third-party credential that Google's STS exchanges for an access token.
//!
//! Four sources, as Google's auth libraries define them:
//!
//! * a file, or a URL, holding the token (plain text, or JSON with a named field);
//! * an executable ("pluggable auth"): run only when `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`,
//!   it prints `{"version":1,"success":true,"token_type":…,"id_token"|"saml_response":…,
//!   "expiration_time":…}`; its `output_file`, when configured, is a cache read first;
//! * AWS (`environment_id` `aws1`): a SigV4-signed STS `GetCallerIdentity` request, serialised
//!   as URL-encoded JSON (`url`, `method`, `headers` including `x-goog-cloud-target-resource`),
//!   with the region and the credentials from the environment or the EC2 metadata server
//!   (IMDSv2 when a session-token URL is configured).
//!
//! No gcloud, no CLI: the executable is the one the credential file names, which is the point
//! of that source.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::error::CredentialError;
use crate::gke::s;
use crate::oauth;

/// Where a workload identity federation subject token comes from.
#[derive(Debug, Clone)]
pub enum SubjectSource {
    File {
        path: String,
        json_field: Option<String>,
    },
    Url {
        url: String,
        headers: Vec<(String, String)>,
        json_field: Option<String>,
    },
    Executable {
        command: String,
        timeout: Duration,
        output_file: Option<String>,
    },
    Aws {
        region_url: Option<String>,
        credentials_url: Option<String>,
        verification_url: String,
        imdsv2_url: Option<String>,
    },
}

/// What the STS exchange needs to know about the credential, and what an executable is told.
pub struct Request<'a> {
    pub audience: &'a str,
    pub subject_token_type: &'a str,
    pub impersonation_url: Option<&'a str>,
}

/// Largest subject token, executable output or metadata answer read.
const MAX_BYTES: u64 = 1 << 20;

impl SubjectSource {
    /// The `credential_source` of an `external_account` file.
    pub fn parse(cs: &Value, origin: &str) -> Result<SubjectSource, CredentialError> {
        let bad = |field: &str, problem: String| CredentialError::field(origin, field, problem);
        // AWS sources carry a `url` too (the metadata server's): recognise them first.
        if let Some(env) = s(cs, "environment_id") {
            if !env.starts_with("aws") {
                return Err(bad("environment_id", format!("credential source environment {env:?} is not supported")));
            }
            if env != "aws1" {
                return Err(bad(
                    "environment_id",
                    format!("AWS credential source version {env:?} is not supported (only aws1)"),
                ));
            }
            return Ok(SubjectSource::Aws {
                region_url: s(cs, "region_url"),
                credentials_url: s(cs, "url"),
                verification_url: s(cs, "regional_cred_verification_url").ok_or_else(|| {
                    bad(
                        "regional_cred_verification_url",
                        "AWS credential source without regional_cred_verification_url".into(),
                    )
                })?,
                imdsv2_url: s(cs, "imdsv2_session_token_url"),
            });
        }
        if let Some(exe) = cs.get("executable") {
            let command = s(exe, "command").ok_or_else(|| bad("command", "executable without `command`".into()))?;
            let millis = exe.get("timeout_millis").and_then(Value::as_u64).unwrap_or(30_000);
            if !(5_000..=120_000).contains(&millis) {
                return Err(bad("timeout_millis", "executable timeout_millis must be between 5000 and 120000".into()));
            }
            return Ok(SubjectSource::Executable {
                command,
                timeout: Duration::from_millis(millis),
                output_file: s(exe, "output_file"),
            });
        }
        let json_field = match cs.pointer("/format/type").and_then(Value::as_str) {
            Some("json") => Some(
                cs.pointer("/format/subject_token_field_name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad("subject_token_field_name", "json format without subject_token_field_name".into())
                    })?
                    .to_owned(),
            ),
            _ => None,
        };
        if let Some(path) = s(cs, "file") {
            return Ok(SubjectSource::File { path, json_field });
        }
        if let Some(url) = s(cs, "url") {
            let headers = cs
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
                .unwrap_or_default();
            return Ok(SubjectSource::Url { url, headers, json_field });
        }
        Err(bad("credential_source", "credential_source has none of file, url, executable or environment_id".into()))
    }

    /// For `-v`.
    pub fn describe(&self) -> &'static str {
        match self {
            SubjectSource::File { .. } => "a token file",
            SubjectSource::Url { .. } => "a token URL",
            SubjectSource::Executable { .. } => "an executable",
            SubjectSource::Aws { .. } => "AWS",
        }
    }

    /// The subject token.
    pub async fn token(&self, req: &Request<'_>, now: SystemTime) -> Result<SecretString, CredentialError> {
        match self {
            SubjectSource::File { path, json_field } => {
                let raw = read_capped(path, MAX_BYTES, "1 MiB")?;
                field(&raw, json_field.as_deref())
            }
            SubjectSource::Url { url, headers, json_field } => {
                let mut r = http::Request::get(url.as_str());
                for (k, v) in headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                let (status, body) = oauth::send(oauth::request(r, url, Vec::new())?).await?;
                if !(200..300).contains(&status) {
                    return Err(CredentialError::Endpoint {
                        url: url.clone(),
                        status,
                        message: "the subject token URL refused".into(),
                    });
                }
                field(&String::from_utf8_lossy(&body), json_field.as_deref())
            }
            SubjectSource::Executable { command, timeout, output_file } => {
                executable(command, *timeout, output_file.as_deref(), req, now).await
            }
            SubjectSource::Aws { region_url, credentials_url, verification_url, imdsv2_url } => {
                let imds = Imds { session_url: imdsv2_url.as_deref() };
                aws(&imds, region_url.as_deref(), credentials_url.as_deref(), verification_url, req.audience, now).await
            }
        }
    }
}

fn field(raw: &str, json_field: Option<&str>) -> Result<SecretString, CredentialError> {
    match json_field {
        None => Ok(SecretString::from(raw.trim().to_owned())),
        Some(f) => serde_json::from_str::<Value>(raw)
            .ok()
            .and_then(|v| v.get(f).and_then(Value::as_str).map(str::to_owned))
            .map(SecretString::from)
            .ok_or_else(|| CredentialError::field("the subject token", f, format!("is not JSON with a `{f}` field"))),
    }
}

// ---- executable-sourced credentials ------------------------------------------------------

const TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
];

/// Reads an executable's response (or its output file). `Ok(None)`: a well-formed response
/// that has expired (an output file is then ignored and the executable run).
pub fn executable_response(
    text: &str,
    origin: &str,
    now: SystemTime,
    need_expiry: bool,
) -> Result<Option<SecretString>, CredentialError> {
    let bad = |field: &str, problem: String| CredentialError::field(origin, field, problem);
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| bad("", format!("is not JSON: {e}")))?;
    let version = v.get("version").and_then(Value::as_u64).ok_or_else(|| bad("version", "has no `version`".into()))?;
    if version > 1 {
        return Err(bad("version", format!("response version {version} is not supported (only 1)")));
    }
    match v.get("success").and_then(Value::as_bool) {
        Some(true) => {}
        Some(false) => {
            let code = v.get("code").map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned));
            let message = s(&v, "message");
            return match (code, message) {
                (Some(c), Some(m)) => {
                    Err(CredentialError::Executable(format!("{origin}: the executable failed: {c}: {m}")))
                }
                _ => Err(bad("code", "an unsuccessful response must have `code` and `message`".into())),
            };
        }
        None => return Err(bad("success", "has no `success`".into())),
    }
    let ty = s(&v, "token_type").ok_or_else(|| bad("token_type", "has no `token_type`".into()))?;
    if !TOKEN_TYPES.contains(&ty.as_str()) {
        return Err(bad("token_type", format!("token_type {ty:?} is not supported")));
    }
    match v.get("expiration_time").and_then(Value::as_u64) {
        Some(exp) if exp <= oauth::epoch(now) => return Ok(None),
        Some(_) => {}
        None if need_expiry => {
            return Err(bad(
                "expiration_time",
                "has no `expiration_time`, required when an output_file is configured".into(),
            ))
        }
        None => {}
    }
    let key = if ty.ends_with(":saml2") { "saml_response" } else { "id_token" };
    s(&v, key).map(|t| Some(SecretString::from(t))).ok_or_else(|| bad(key, format!("has no `{key}`")))
}

async fn executable(
    command: &str,
    timeout: Duration,
    output_file: Option<&str>,
    req: &Request<'_>,
    now: SystemTime,
) -> Result<SecretString, CredentialError> {
    if std::env::var("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES").as_deref() != Ok("1") {
        return Err(CredentialError::Unsupported(
            "the credential runs an executable; set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 \
             to allow it (Google's safeguard, honoured here too)"
                .into(),
        ));
    }
    if let Some(path) = output_file {
        // A cached response that is still valid spares running the executable; anything
        // unusable in the cache is ignored, as Google's libraries do.
        if let Ok(text) = read_capped(path, MAX_BYTES, "1 MiB") {
            if let Ok(Some(t)) = executable_response(&text, &format!("output file {path}"), now, true) {
                return Ok(t);
            }
        }
    }
    let mut words = command.split_whitespace();
    let program = words
        .next()
        .ok_or_else(|| CredentialError::Executable("executable credential with an empty command".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(words)
        .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", req.audience)
        .env("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", req.subject_token_type)
        .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if let Some(email) = req.impersonation_url.and_then(impersonated_email) {
        cmd.env("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", email);
    }
    if let Some(path) = output_file {
        cmd.env("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", path);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CredentialError::Executable(format!("cannot run the credential executable {program:?}: {e}")))?;
    let failed = |e: std::io::Error| CredentialError::Executable(format!("the credential executable {program:?}: {e}"));
    let run = async {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout.take(MAX_BYTES + 1).read_to_end(&mut out).await.map_err(failed)?;
        }
        let status = child.wait().await.map_err(failed)?;
        Ok::<_, CredentialError>((status, out))
    };
    let (status, out) = tokio::time::timeout(timeout, run).await.map_err(|_| {
        CredentialError::Executable(format!("the credential executable {program:?} did not finish within {timeout:?}"))
    })??;
    if out.len() as u64 > MAX_BYTES {
        return Err(CredentialError::Executable(format!(
            "the credential executable {program:?} printed more than 1 MiB"
        )));
    }
    let text = String::from_utf8_lossy(&out);
    let origin = format!("the output of {program:?}");
    match executable_response(&text, &origin, now, output_file.is_some()) {
        Ok(Some(t)) if status.success() => Ok(t),
        Ok(Some(_)) => {
            Err(CredentialError::Executable(format!("{origin}: a token, but the executable exited with {status}")))
        }
        Ok(None) => Err(CredentialError::Executable(format!("{origin}: the token it printed has already expired"))),
        Err(e) if status.success() => Err(e),
        Err(e) => {
            Err(CredentialError::Executable(format!("the credential executable {program:?} exited with {status}: {e}")))
        }
    }
}

/// The service account in an IAM Credentials `…/serviceAccounts/EMAIL:generateAccessToken` URL.
fn impersonated_email(url: &str) -> Option<&str> {
    url.rsplit_once("/serviceAccounts/")
        .map(|(_, r)| r.trim_end_matches(":generateAccessToken"))
        .filter(|e| e.contains('@'))
}

/// A credential or token file of at most `max` bytes (`limit` says it in words).
pub(crate) fn read_capped(
    path: impl AsRef<std::path::Path>,
    max: u64,
    limit: &'static str,
) -> Result<String, CredentialError> {
    let path = path.as_ref();
    let read = |source| CredentialError::Read { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > max {
        return Err(CredentialError::TooLarge { path: path.to_owned(), limit });
    }
    std::fs::read_to_string(path).map_err(read)
}

// ---- AWS -----------------------------------------------------------------------------------

/// The EC2 metadata server, with an IMDSv2 session when a token URL is configured.
struct Imds<'a> {
    session_url: Option<&'a str>,
}

impl Imds<'_> {
    async fn session(&self) -> Result<Option<SecretString>, CredentialError> {
        let Some(url) = self.session_url else { return Ok(None) };
        let r = oauth::request(
            http::Request::put(url).header("x-aws-ec2-metadata-token-ttl-seconds", "300"),
            url,
            Vec::new(),
        )?;
        let (status, body) = oauth::send(r).await?;
        if status != 200 {
            return Err(CredentialError::Endpoint {
                url: url.to_owned(),
                status,
                message: "no IMDSv2 session token".into(),
            });
        }
        Ok(Some(SecretString::from(String::from_utf8_lossy(&body).trim().to_owned())))
    }

    async fn get(&self, url: &str, session: Option<&SecretString>) -> Result<String, CredentialError> {
        let mut r = http::Request::get(url);
        if let Some(t) = session {
            r = r.header("x-aws-ec2-metadata-token", t.expose_secret());
        }
        let (status, body) = oauth::send(oauth::request(r, url, Vec::new())?).await?;
        if status != 200 {
            return Err(CredentialError::Endpoint { url: url.to_owned(), status, message: "AWS metadata".into() });
        }
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

async fn aws(
    imds: &Imds<'_>,
    region_url: Option<&str>,
    credentials_url: Option<&str>,
    verification_url: &str,
    audience: &str,
    now: SystemTime,
) -> Result<SecretString, CredentialError> {
    let from_env = crate::eks::env_credentials();
    let region_env = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
    let session = if region_env.is_none() || from_env.is_none() { imds.session().await? } else { None };
    let region = match region_env {
        Some(r) => r,
        None => {
            let url = region_url.ok_or_else(|| {
                CredentialError::Missing("no AWS_REGION and no region_url in the credential source".into())
            })?;
            // The availability zone, e.g. `us-east-1b`: the region is all but its last letter.
            let zone = imds.get(url, session.as_ref()).await?;
            let mut r = zone;
            r.pop();
            r
        }
    };
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CredentialError::Missing(format!("AWS region {region:?} is not a region name")));
    }
    let creds = match from_env {
        Some(c) => c,
        None => {
            let url = credentials_url.ok_or_else(|| {
                CredentialError::Missing(
                    "no AWS credentials in the environment and no `url` in the credential source".into(),
                )
            })?;
            let role = imds.get(url, session.as_ref()).await?;
            let role = role.lines().next().unwrap_or_default().trim();
            if role.is_empty() || role.contains('/') {
                return Err(CredentialError::BadAnswer { url: url.to_owned(), problem: "no role name".into() });
            }
            let origin = format!("AWS metadata credentials for {role}");
            let v: Value = serde_json::from_str(&imds.get(&format!("{url}/{role}"), session.as_ref()).await?)
                .map_err(|e| CredentialError::field(&origin, "", format!("not JSON ({e})")))?;
            let need = |k: &str| s(&v, k).ok_or_else(|| CredentialError::no_field(&origin, k));
            crate::eks::AwsCredentials {
                access_key_id: need("AccessKeyId")?,
                secret_access_key: SecretString::from(need("SecretAccessKey")?),
                session_token: s(&v, "Token").map(SecretString::from),
                source: format!("instance role {role}"),
            }
        }
    };
    let url = verification_url.replace("{region}", &region);
    let signed = signed_get_caller_identity(&creds, &url, &region, audience, now)?;
    Ok(SecretString::from(oauth::percent_encode(&signed)))
}

/// The serialised, signed `POST` to STS `GetCallerIdentity` that Google's STS verifies: JSON
/// with `headers` (sorted by name), `method` and `url`, in that order.
pub fn signed_get_caller_identity(
    creds: &crate::eks::AwsCredentials,
    url: &str,
    region: &str,
    audience: &str,
    now: SystemTime,
) -> Result<String, CredentialError> {
    let bad = |reason: String| CredentialError::BadUrl { url: url.to_owned(), reason };
    let uri: http::Uri = url.parse().map_err(|e| bad(format!("regional_cred_verification_url: {e}")))?;
    let host = uri.authority().map(|a| a.as_str().to_owned()).ok_or_else(|| bad("no host".into()))?;
    let headers = [("host", host.as_str()), ("x-goog-cloud-target-resource", audience)];
    let instructions = crate::eks::sign_sts(creds, "POST", url, &headers, region, now, Default::default())?;
    let mut r = http::Request::post(url)
        .header("host", host.as_str())
        .header("x-goog-cloud-target-resource", audience)
        .body(())
        .map_err(|e| bad(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut r);
    let mut list: Vec<(String, String)> = r
        .headers()
        .iter()
        .map(|(k, v)| {
            let k = if k == http::header::AUTHORIZATION { "Authorization".to_owned() } else { k.as_str().to_owned() };
            (k, String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .collect();
    list.sort();
    let headers: Vec<Value> = list.into_iter().map(|(key, value)| json!({"key": key, "value": value})).collect();
    Ok(json!({"headers": headers, "method": "POST", "url": url}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(epoch)
    }

    #[test]
    fn executable_responses() {
        let now = at(1_000);
        let ok = |t: &str, need: bool| {
            executable_response(t, "r", now, need)
                .map(|o| o.map(|s| s.expose_secret().to_owned()))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            ok(
                r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:id_token","id_token":"h.p.s","expiration_time":2000}"#,
                true
            ),
            Ok(Some("h.p.s".into()))
        );
        assert_eq!(
            ok(
                r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:saml2","saml_response":"PHNhbWw+"}"#,
                false
            ),
            Ok(Some("PHNhbWw+".into()))
        );
        // Expired: no token (an output file is then ignored).
        assert_eq!(
            ok(
                r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"x","expiration_time":999}"#,
                true
            ),
            Ok(None)
        );
        for (bad, why) in [
            (
                r#"{"version":1,"success":false,"code":"401","message":"Caller not authorized."}"#,
                "401: Caller not authorized.",
            ),
            (r#"{"version":1,"success":false}"#, "must have `code` and `message`"),
            (r#"{"version":2,"success":true}"#, "version 2"),
            (r#"{"version":1,"success":true,"token_type":"urn:x","id_token":"x"}"#, "not supported"),
            (
                r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"x"}"#,
                "expiration_time",
            ),
            (
                r#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","expiration_time":2000}"#,
                "no `id_token`",
            ),
            ("not json", "not JSON"),
        ] {
            let e = ok(bad, true).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn credential_sources() {
        let p = |v: Value| SubjectSource::parse(&v, "f");
        assert!(matches!(
            p(
                json!({"environment_id": "aws1", "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"})
            ),
            Ok(SubjectSource::Aws { .. })
        ));
        assert!(p(json!({"environment_id": "aws2", "regional_cred_verification_url": "x"}))
            .unwrap_err()
            .to_string()
            .contains("aws2"));
        let e = p(json!({"environment_id": "azure1"})).unwrap_err();
        assert!(matches!(&e, CredentialError::Field { field, .. } if field == "environment_id"), "{e}");
        assert!(e.to_string().contains("not supported"));
        assert!(matches!(
            p(json!({"executable": {"command": "/bin/tok --x", "output_file": "/tmp/o"}})),
            Ok(SubjectSource::Executable { timeout, .. }) if timeout == Duration::from_secs(30)
        ));
        assert!(p(json!({"executable": {"command": "x", "timeout_millis": 1000}}))
            .unwrap_err()
            .to_string()
            .contains("between"));
        assert!(p(json!({})).unwrap_err().to_string().contains("none of"));
        assert_eq!(
            impersonated_email("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken"),
            Some("sa@p.iam.gserviceaccount.com")
        );
    }
}
