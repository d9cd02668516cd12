//! GKE access tokens, in-process, from Application Default Credentials — what
//! `gke-gcloud-auth-plugin` prints, without running gcloud (FACTS.md §6).
//!
//! ADC, in Google's order: the file named by `GOOGLE_APPLICATION_CREDENTIALS`; gcloud's
//! `application_default_credentials.json` (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`); the
//! metadata server (`GCE_METADATA_HOST` or `metadata.google.internal`). File types:
//! `service_account` (an RS256 JWT assertion exchanged at the key's `token_uri`),
//! `authorized_user` (a refresh-token grant), `impersonated_service_account` (the source
//! credential's token, then IAM Credentials `generateAccessToken`), `external_account`
//! (workload identity federation: a subject token from a file, a URL, an executable or AWS —
//! see [`crate::wif`] — exchanged at Google's STS, then optionally `generateAccessToken`).

use std::path::PathBuf;
use std::time::SystemTime;

use secrecy::SecretString;
use serde_json::{json, Value};

use crate::error::CredentialError;
use crate::oauth::{self, AccessToken};
pub use crate::wif::SubjectSource;

/// The scopes gke-gcloud-auth-plugin asks for.
pub const SCOPES: &str =
    "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email";
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A credential from ADC.
#[derive(Debug, Clone)]
pub enum Adc {
    ServiceAccount {
        email: String,
        key: SecretString,
        key_id: Option<String>,
        token_uri: String,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: SecretString,
        refresh_token: SecretString,
        token_uri: String,
    },
    Impersonated {
        source: Box<Adc>,
        url: String,
        delegates: Vec<String>,
    },
    External {
        audience: String,
        subject_token_type: String,
        token_url: String,
        impersonation_url: Option<String>,
        source: SubjectSource,
    },
    Metadata {
        host: String,
    },
}

impl Adc {
    /// For `-v`: what kind of credential, never its secret.
    pub fn describe(&self) -> String {
        match self {
            Adc::ServiceAccount { email, .. } => format!("service account key for {email}"),
            Adc::AuthorizedUser { .. } => "user credentials (gcloud auth application-default login)".into(),
            Adc::Impersonated { source, url, .. } => {
                let target = url.rsplit('/').next().unwrap_or_default().trim_end_matches(":generateAccessToken");
                format!("{target} impersonated by {}", source.describe())
            }
            Adc::External { audience, impersonation_url, source, .. } => {
                let pool = audience.rsplit("/providers/").next().unwrap_or(audience);
                let from = source.describe();
                match impersonation_url {
                    Some(u) => format!(
                        "workload identity federation (provider {pool}, token from {from}) impersonating {}",
                        u.rsplit('/').next().unwrap_or_default().trim_end_matches(":generateAccessToken")
                    ),
                    None => format!("workload identity federation (provider {pool}, token from {from})"),
                }
            }
            Adc::Metadata { host } => format!("metadata server {host}"),
        }
    }
}

/// A non-empty string member of a credential file.
pub(crate) fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty()).map(str::to_owned)
}

/// Parse an ADC JSON file.
pub fn parse(text: &str, origin: &str) -> Result<Adc, CredentialError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| CredentialError::field(origin, "", format!("not JSON ({e})")))?;
    let need = |k: &str| s(&v, k).ok_or_else(|| CredentialError::no_field(origin, k));
    match v.get("type").and_then(Value::as_str) {
        Some("service_account") => Ok(Adc::ServiceAccount {
            email: need("client_email")?,
            key: SecretString::from(need("private_key")?),
            key_id: s(&v, "private_key_id"),
            token_uri: s(&v, "token_uri").unwrap_or_else(|| GOOGLE_TOKEN_URI.into()),
        }),
        Some("authorized_user") => Ok(Adc::AuthorizedUser {
            client_id: need("client_id")?,
            client_secret: SecretString::from(need("client_secret")?),
            refresh_token: SecretString::from(need("refresh_token")?),
            token_uri: s(&v, "token_uri").unwrap_or_else(|| GOOGLE_TOKEN_URI.into()),
        }),
        Some("impersonated_service_account") => {
            let source =
                v.get("source_credentials").ok_or_else(|| CredentialError::no_field(origin, "source_credentials"))?;
            Ok(Adc::Impersonated {
                source: Box::new(parse(&source.to_string(), origin)?),
                url: need("service_account_impersonation_url")?,
                delegates: v
                    .get("delegates")
                    .and_then(Value::as_array)
                    .map(|d| d.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            })
        }
        Some("external_account") => {
            let cs =
                v.get("credential_source").ok_or_else(|| CredentialError::no_field(origin, "credential_source"))?;
            let source = SubjectSource::parse(cs, origin)?;
            Ok(Adc::External {
                audience: need("audience")?,
                subject_token_type: need("subject_token_type")?,
                token_url: s(&v, "token_url").unwrap_or_else(|| "https://sts.googleapis.com/v1/token".into()),
                impersonation_url: s(&v, "service_account_impersonation_url"),
                source,
            })
        }
        Some(other) => {
            Err(CredentialError::field(origin, "type", format!("credential type {other:?} is not supported")))
        }
        None => Err(CredentialError::no_field(origin, "type")),
    }
}

fn gcloud_adc_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CLOUDSDK_CONFIG") {
        return Some(PathBuf::from(d).join("application_default_credentials.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud/application_default_credentials.json"))
}

/// Find ADC; `Err` says why nothing usable was found.
pub fn find() -> Result<(Adc, String), CredentialError> {
    let read = |p: &PathBuf| crate::wif::read_capped(p, 1 << 20, "1 MiB, not a credentials file");
    if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        let p = PathBuf::from(p);
        let origin = format!("GOOGLE_APPLICATION_CREDENTIALS={}", p.display());
        return Ok((parse(&read(&p)?, &origin)?, origin));
    }
    if let Some(p) = gcloud_adc_path().filter(|p| p.exists()) {
        let origin = p.display().to_string();
        return Ok((parse(&read(&p)?, &origin)?, origin));
    }
    let host = std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| "metadata.google.internal".into());
    Ok((Adc::Metadata { host: host.clone() }, format!("metadata server {host}")))
}

/// Exchange the credential for an access token.
pub async fn access_token(adc: &Adc, now: SystemTime) -> Result<AccessToken, CredentialError> {
    match adc {
        Adc::ServiceAccount { email, key, key_id, token_uri } => {
            let iat = oauth::epoch(now);
            let header = match key_id {
                Some(k) => json!({"alg": "RS256", "typ": "JWT", "kid": k}),
                None => json!({"alg": "RS256", "typ": "JWT"}),
            };
            let claims = json!({"iss": email, "scope": SCOPES, "aud": token_uri, "iat": iat, "exp": iat + 3600});
            let assertion = oauth::jwt_rs256(&header, &claims, key)?;
            let v = oauth::post_form(
                token_uri,
                &[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)],
                None,
            )
            .await?;
            oauth::token_of(&v, now)
        }
        Adc::AuthorizedUser { client_id, client_secret, refresh_token, token_uri } => {
            use secrecy::ExposeSecret;
            let v = oauth::post_form(
                token_uri,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                    ("refresh_token", refresh_token.expose_secret()),
                ],
                None,
            )
            .await?;
            oauth::token_of(&v, now)
        }
        Adc::Impersonated { source, url, delegates } => {
            let src = Box::pin(access_token(source, now)).await?;
            impersonate(&src, url, delegates, now).await
        }
        Adc::External { audience, subject_token_type, token_url, impersonation_url, source } => {
            use secrecy::ExposeSecret;
            let req =
                crate::wif::Request { audience, subject_token_type, impersonation_url: impersonation_url.as_deref() };
            let subject = source.token(&req, now).await?;
            let scope =
                if impersonation_url.is_some() { "https://www.googleapis.com/auth/cloud-platform" } else { SCOPES };
            let v = oauth::post_form(
                token_url,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                    ("audience", audience),
                    ("scope", scope),
                    ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                    ("subject_token_type", subject_token_type),
                    ("subject_token", subject.expose_secret()),
                ],
                None,
            )
            .await?;
            let federated = oauth::token_of(&v, now)?;
            match impersonation_url {
                Some(url) => impersonate(&federated, url, &[], now).await,
                None => Ok(federated),
            }
        }
        Adc::Metadata { host } => {
            let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
            let req =
                oauth::request(http::Request::get(url.as_str()).header("metadata-flavor", "Google"), &url, Vec::new())?;
            let v = oauth::json_answer(&url, oauth::send(req).await?)?;
            oauth::token_of(&v, now)
        }
    }
}

/// IAM Credentials `generateAccessToken` for the target in `url`, authorised by `source`.
async fn impersonate(
    source: &AccessToken,
    url: &str,
    delegates: &[String],
    now: SystemTime,
) -> Result<AccessToken, CredentialError> {
    use secrecy::ExposeSecret;
    let body = json!({"scope": SCOPES.split(' ').collect::<Vec<_>>(), "delegates": delegates, "lifetime": "3600s"});
    let req = oauth::request(
        http::Request::post(url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", source.token.expose_secret())),
        url,
        body.to_string().into_bytes(),
    )?;
    let v = oauth::json_answer(url, oauth::send(req).await?)?;
    oauth::token_of(&v, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adc_files() {
        let sa = r#"{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n","private_key_id":"k1"}"#;
        match parse(sa, "f").unwrap() {
            Adc::ServiceAccount { token_uri, key_id, .. } => {
                assert_eq!(token_uri, GOOGLE_TOKEN_URI);
                assert_eq!(key_id.as_deref(), Some("k1"));
            }
            other => panic!("{other:?}"),
        }
        let imp = r#"{"type":"impersonated_service_account","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/t@p.iam.gserviceaccount.com:generateAccessToken","source_credentials":{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}}"#;
        let a = parse(imp, "f").unwrap();
        assert_eq!(
            a.describe(),
            "t@p.iam.gserviceaccount.com impersonated by user credentials (gcloud auth application-default login)"
        );
        assert!(!format!("{a:?}").contains("\"s\""), "secrets stay out of Debug");
        let e = parse(r#"{"type":"external_account","credential_source":{"executable":{"command":"x"}}}"#, "f")
            .unwrap_err();
        assert!(matches!(&e, CredentialError::Field { field, .. } if field == "audience"), "{e}");
        let e = parse(r#"{"type":"service_account"}"#, "f").unwrap_err();
        assert_eq!(e.to_string(), "f: no `client_email`");
        assert!(parse("nope", "f").unwrap_err().to_string().starts_with("f: not JSON"));
    }
}
