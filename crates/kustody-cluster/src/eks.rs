//! EKS bearer tokens, minted in-process: a SigV4 query-presigned STS `GetCallerIdentity` URL
//! with the signed `x-k8s-aws-id` header, base64url-encoded behind `k8s-aws-v1.` (FACTS.md §6,
//! aws-iam-authenticator's `pkg/token`). The same token `aws eks get-token` prints, without a
//! Python process.
//!
//! Credentials (this build): the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`) and static keys in the shared credentials file (`AWS_PROFILE`, the
//! plugin's `--profile`, else `default`). SSO, web identity (IRSA), EKS Pod Identity, IMDSv2 and
//! `--role-arn` are recognised and left to the plugin, which kustody then runs as before.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::error::CredentialError;

/// Static AWS credentials.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    /// Where they came from (for `-v`).
    pub source: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish()
    }
}

/// How long a presigned URL is valid, as the CLI signs it.
const PRESIGN_SECONDS: u64 = 60;
/// The ExecCredential expiry the CLI reports: the token is accepted for 15 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60);

/// A minted token.
pub struct EksToken {
    pub token: SecretString,
    pub expires: SystemTime,
    pub presigned_url: String,
}

fn sts_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("sts.{region}.amazonaws.com.cn")
    } else {
        format!("sts.{region}.amazonaws.com")
    }
}

/// SigV4-signs a request to STS (`sts` in `region`, session token included in the signature, as
/// botocore does) and returns what to add to it. `headers` are signed along.
pub(crate) fn sign_sts(
    creds: &AwsCredentials,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    region: &str,
    now: SystemTime,
    settings: aws_sigv4::http_request::SigningSettings,
) -> Result<aws_sigv4::http_request::SigningInstructions, CredentialError> {
    // botocore hashes the (empty) payload, also when presigning; only S3 uses UNSIGNED-PAYLOAD
    sigv4(creds, "sts", region, method, url, headers, &[], now, settings)
}

/// SigV4-signs a request to `service` in `region` with the AWS SDK's own signer: the payload
/// hashed, a session token included in the signature. `headers` are signed along; the answer
/// says what to add to the request (headers, or query parameters when presigning).
#[allow(clippy::too_many_arguments)]
pub fn sigv4(
    creds: &AwsCredentials,
    service: &str,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
    settings: aws_sigv4::http_request::SigningSettings,
) -> Result<aws_sigv4::http_request::SigningInstructions, CredentialError> {
    use aws_sigv4::http_request::{sign, SessionTokenMode, SignableBody, SignableRequest};
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose_secret().to_owned(),
        creds.session_token.as_ref().map(|t| t.expose_secret().to_owned()),
        None,
        "kustody",
    )
    .into();
    let mut settings = settings;
    settings.session_token_mode = SessionTokenMode::Include;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| CredentialError::Signing(format!("signing parameters: {e}")))?
        .into();
    let signable = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| CredentialError::Signing(format!("signable request: {e}")))?;
    Ok(sign(signable, &params).map_err(|e| CredentialError::Signing(e.to_string()))?.into_parts().0)
}

/// Mint a token for `cluster` in `region` at `now`.
pub fn token(
    creds: &AwsCredentials,
    cluster: &str,
    region: &str,
    now: SystemTime,
) -> Result<EksToken, CredentialError> {
    use aws_sigv4::http_request::{SignatureLocation, SigningSettings};
    let url = format!("https://{}/?Action=GetCallerIdentity&Version=2011-06-15", sts_host(region));
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(PRESIGN_SECONDS));
    let instructions = sign_sts(creds, "GET", &url, &[("x-k8s-aws-id", cluster)], region, now, settings)?;
    let mut req = http::Request::get(&url)
        .body(())
        .map_err(|e| CredentialError::BadUrl { url: url.clone(), reason: e.to_string() })?;
    instructions.apply_to_request_http1x(&mut req);
    let presigned = req.uri().to_string();
    let token = format!("k8s-aws-v1.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned.as_bytes()));
    Ok(EksToken { token: SecretString::from(token), expires: now + TOKEN_LIFETIME, presigned_url: presigned })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// `[section]` key = value pairs of an INI file.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = l.split_once('=') {
                out.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    out
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, when the first two are set.
pub fn env_credentials() -> Option<AwsCredentials> {
    let (id, secret) = (std::env::var_os("AWS_ACCESS_KEY_ID")?, std::env::var_os("AWS_SECRET_ACCESS_KEY")?);
    Some(AwsCredentials {
        access_key_id: id.to_string_lossy().into_owned(),
        secret_access_key: SecretString::from(secret.to_string_lossy().into_owned()),
        session_token: std::env::var_os("AWS_SESSION_TOKEN")
            .map(|t| SecretString::from(t.to_string_lossy().into_owned())),
        source: "environment".into(),
    })
}

/// Static credentials from the environment or the shared credentials file. `Err` says which
/// source is configured that this build does not handle natively.
pub fn static_credentials(profile: Option<&str>) -> Result<AwsCredentials, CredentialError> {
    if let Some(c) = env_credentials() {
        return Ok(c);
    }
    if std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        return Err(CredentialError::Unsupported("web identity (IRSA) credentials".into()));
    }
    if std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
    {
        return Err(CredentialError::Unsupported("container (EKS Pod Identity / ECS) credentials".into()));
    }
    let profile =
        profile.map(str::to_owned).or_else(|| std::env::var("AWS_PROFILE").ok()).unwrap_or_else(|| "default".into());
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws").join("credentials")));
    if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let kv = ini_section(&text, &profile);
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
            return Ok(AwsCredentials {
                access_key_id: id,
                secret_access_key: SecretString::from(secret),
                session_token: get("aws_session_token").map(SecretString::from),
                source: format!("shared credentials file, profile {profile}"),
            });
        }
    }
    Err(CredentialError::Unsupported(format!(
        "profile `{profile}` has no static keys (SSO, assumed roles and instance credentials are left to the plugin)"
    )))
}

/// Credentials for minting: static keys natively (fast, no I/O beyond one file), else — in a
/// build with the `aws-chain` feature — the AWS SDK's default chain (SSO, credential_process,
/// web identity/IRSA, EKS Pod Identity and ECS, IMDSv2), and `--role-arn` through STS AssumeRole.
pub async fn credentials(profile: Option<&str>, role_arn: Option<&str>) -> Result<AwsCredentials, CredentialError> {
    if role_arn.is_none() {
        match static_credentials(profile) {
            Ok(c) => return Ok(c),
            Err(why) => return chain(profile, None, why.to_string()).await,
        }
    }
    chain(profile, role_arn, String::new()).await
}

#[cfg(not(feature = "aws-chain"))]
async fn chain(_profile: Option<&str>, role_arn: Option<&str>, why: String) -> Result<AwsCredentials, CredentialError> {
    match role_arn {
        Some(_) => Err(CredentialError::Unsupported(
            "assuming a role (--role-arn) needs a kustody built with --features aws-chain".into(),
        )),
        None => Err(CredentialError::Unsupported(format!(
            "{why}; this kustody reads static keys only (build it with --features aws-chain for SSO, IRSA, Pod Identity and IMDS)"
        ))),
    }
}

#[cfg(feature = "aws-chain")]
async fn chain(profile: Option<&str>, role_arn: Option<&str>, _why: String) -> Result<AwsCredentials, CredentialError> {
    use aws_credential_types::provider::ProvideCredentials;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    let cfg = loader.load().await;
    let err = |e: aws_credential_types::provider::error::CredentialsError| {
        CredentialError::Unsupported(format!(
            "the AWS credential chain: {}",
            aws_smithy_types::error::display::DisplayErrorContext(e)
        ))
    };
    let (creds, source) = match role_arn {
        None => {
            let p = cfg
                .credentials_provider()
                .ok_or_else(|| CredentialError::Unsupported("the AWS SDK found no credentials provider".into()))?;
            (p.provide_credentials().await.map_err(err)?, "AWS SDK default chain".to_owned())
        }
        Some(arn) => {
            let p =
                aws_config::sts::AssumeRoleProvider::builder(arn).session_name("kustody").configure(&cfg).build().await;
            (p.provide_credentials().await.map_err(err)?, format!("role {arn} assumed with the AWS SDK default chain"))
        }
    };
    Ok(AwsCredentials {
        access_key_id: creds.access_key_id().to_owned(),
        secret_access_key: SecretString::from(creds.secret_access_key().to_owned()),
        session_token: creds.session_token().map(|t| SecretString::from(t.to_owned())),
        source,
    })
}

/// The region: the plugin's, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile's.
pub fn region(plugin_region: Option<&str>, profile: Option<&str>) -> Option<String> {
    if let Some(r) = plugin_region {
        return Some(r.to_owned());
    }
    if let Some(r) = std::env::var("AWS_REGION").ok().or_else(|| std::env::var("AWS_DEFAULT_REGION").ok()) {
        return Some(r);
    }
    let profile =
        profile.map(str::to_owned).or_else(|| std::env::var("AWS_PROFILE").ok()).unwrap_or_else(|| "default".into());
    let file = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws").join("config")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let section = if profile == "default" { "default".to_owned() } else { format!("profile {profile}") };
    ini_section(&text, &section).into_iter().find(|(k, _)| k == "region").map(|(_, v)| v)
}

impl EksToken {
    /// As the access token every provider hands out (cache, refresh, ExecCredential).
    pub fn access_token(self) -> crate::oauth::AccessToken {
        crate::oauth::AccessToken { token: self.token, expires_at: self.expires }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        let creds = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: None,
            source: "test".into(),
        };
        let t =
            token(&creds, "prod", "eu-west-1", SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_165_200)).unwrap();
        assert!(t
            .presigned_url
            .starts_with("https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"));
        for p in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Date=20261120T090000Z",
        ] {
            assert!(t.presigned_url.contains(p), "{p} in {}", t.presigned_url);
        }
        assert!(t.token.expose_secret().starts_with("k8s-aws-v1."));
        assert!(!t.token.expose_secret().contains('='));
        assert!(!format!("{creds:?}").contains("wJalr"), "the secret never reaches Debug output");
    }

    #[test]
    fn ini_sections() {
        let text = "[default]\naws_access_key_id = A\n[prod]\n# c\naws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(text, "prod"),
            vec![("aws_access_key_id".into(), "B".into()), ("aws_secret_access_key".into(), "S".into())]
        );
    }
}
