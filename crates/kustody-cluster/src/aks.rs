//! AKS (Entra ID) tokens, in-process — what `kubelogin get-token` prints for the non-interactive
//! login modes, without running kubelogin (FACTS.md §6). The scope is the AKS server id
//! (`6dae42f8-4368-4678-94ff-3960e28e3630` for AKS-managed Entra ID) + `/.default`.
//!
//! - `spn`: client credentials with a secret, or with a certificate (an RS256 client assertion
//!   whose header carries the certificate's SHA-1 thumbprint, `x5t`);
//! - `workloadidentity`: client credentials whose assertion is the federated token file
//!   (the projected service-account token AKS mounts);
//! - `msi`: the instance metadata service (IMDS), optionally for a user-assigned identity.
//!
//! Inputs are kubelogin's flags and the environment variables it and the Azure SDKs read
//! (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_CLIENT_CERTIFICATE_PATH`,
//! `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`, `AAD_SERVICE_PRINCIPAL_*`).
//! - `azurecli`: the Azure CLI's MSAL token cache (`$AZURE_CONFIG_DIR` or `~/.azure`,
//!   `msal_token_cache.json`): a cached access token for the server id when one is still valid,
//!   else the CLI's refresh token redeemed with the CLI's public client id. The cache file is
//!   read, never written.
//!
//! `devicecode`, `interactive`, `ropc` and `azd` are not minted in-process.

use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha1::Digest as _;

use crate::error::CredentialError;
use crate::oauth::{self, AccessToken};

pub const AKS_SERVER_ID: &str = "6dae42f8-4368-4678-94ff-3960e28e3630";
const AUTHORITY: &str = "https://login.microsoftonline.com";
const IMDS: &str = "http://169.254.169.254";

/// How to get the token.
#[derive(Debug, Clone)]
pub enum Credential {
    Secret { tenant: String, client_id: String, secret: SecretString, authority: String },
    Certificate { tenant: String, client_id: String, pem: SecretString, authority: String },
    Workload { tenant: String, client_id: String, token_file: std::path::PathBuf, authority: String },
    ManagedIdentity { client_id: Option<String>, endpoint: String },
    AzureCli { cache: std::path::PathBuf, tenant: Option<String>, authority: String },
}

/// The Azure CLI's public client id (its MSAL cache entries carry it).
pub const AZURE_CLI_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

impl Credential {
    pub fn describe(&self) -> String {
        match self {
            Credential::Secret { client_id, tenant, .. } => {
                format!("service principal {client_id} (secret) in tenant {tenant}")
            }
            Credential::Certificate { client_id, tenant, .. } => {
                format!("service principal {client_id} (certificate) in tenant {tenant}")
            }
            Credential::Workload { client_id, token_file, .. } => {
                format!("workload identity {client_id} (federated token {})", token_file.display())
            }
            Credential::ManagedIdentity { client_id: Some(c), .. } => format!("managed identity {c}"),
            Credential::ManagedIdentity { client_id: None, .. } => "system-assigned managed identity".into(),
            Credential::AzureCli { cache, .. } => format!("Azure CLI token cache {}", cache.display()),
        }
    }
}

/// kubelogin's flags that matter here.
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub mode: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// The `env` entries of the kubeconfig's exec plugin: what kubelogin would have seen, and
    /// so what kustody reads first when it mints the token in kubelogin's place.
    pub plugin_env: Vec<(String, SecretString)>,
}

impl Login {
    fn env(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| {
            self.plugin_env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.expose_secret().to_owned())
                .or_else(|| std::env::var(k).ok())
                .filter(|v| !v.is_empty())
        })
    }
}

/// Resolve the credential for a login mode, or say why it cannot be minted in-process.
pub fn resolve(login: &Login) -> Result<Credential, CredentialError> {
    let missing = |what: &str| CredentialError::Missing(what.to_owned());
    let env = |keys: &[&str]| login.env(keys);
    let authority = env(&["AZURE_AUTHORITY_HOST"]).unwrap_or_else(|| AUTHORITY.into()).trim_end_matches('/').to_owned();
    let tenant = || {
        login
            .tenant_id
            .clone()
            .or_else(|| env(&["AZURE_TENANT_ID"]))
            .ok_or_else(|| missing("no tenant (--tenant-id or AZURE_TENANT_ID)"))
    };
    let mode = login.mode.as_deref().unwrap_or("devicecode");
    match mode {
        "spn" => {
            let client_id = login
                .client_id
                .clone()
                .or_else(|| env(&["AZURE_CLIENT_ID", "AAD_SERVICE_PRINCIPAL_CLIENT_ID"]))
                .ok_or_else(|| {
                    missing("no client id (--client-id, AZURE_CLIENT_ID or AAD_SERVICE_PRINCIPAL_CLIENT_ID)")
                })?;
            let tenant = tenant()?;
            if let Some(secret) = env(&["AZURE_CLIENT_SECRET", "AAD_SERVICE_PRINCIPAL_CLIENT_SECRET"]) {
                return Ok(Credential::Secret { tenant, client_id, secret: SecretString::from(secret), authority });
            }
            if let Some(path) = env(&["AZURE_CLIENT_CERTIFICATE_PATH", "AAD_SERVICE_PRINCIPAL_CLIENT_CERTIFICATE"]) {
                let pem = crate::wif::read_capped(&path, 1 << 20, "1 MiB, not a client certificate")?;
                return Ok(Credential::Certificate { tenant, client_id, pem: SecretString::from(pem), authority });
            }
            Err(missing("no client secret or certificate (AZURE_CLIENT_SECRET / AZURE_CLIENT_CERTIFICATE_PATH)"))
        }
        "workloadidentity" => Ok(Credential::Workload {
            tenant: tenant()?,
            client_id: login
                .client_id
                .clone()
                .or_else(|| env(&["AZURE_CLIENT_ID"]))
                .ok_or_else(|| missing("no client id (AZURE_CLIENT_ID)"))?,
            token_file: env(&["AZURE_FEDERATED_TOKEN_FILE"])
                .ok_or_else(|| missing("no AZURE_FEDERATED_TOKEN_FILE"))?
                .into(),
            authority,
        }),
        "msi" => Ok(Credential::ManagedIdentity {
            client_id: login.client_id.clone(),
            endpoint: env(&["AZURE_POD_IDENTITY_AUTHORITY_HOST"])
                .unwrap_or_else(|| IMDS.into())
                .trim_end_matches('/')
                .to_owned(),
        }),
        "azurecli" => {
            let dir = env(&["AZURE_CONFIG_DIR"])
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".azure")))
                .ok_or_else(|| missing("no AZURE_CONFIG_DIR or HOME"))?;
            let cache = dir.join("msal_token_cache.json");
            if !cache.exists() {
                return Err(CredentialError::Missing(format!(
                    "no Azure CLI token cache at {} (run `az login`)",
                    cache.display()
                )));
            }
            Ok(Credential::AzureCli {
                cache,
                tenant: login.tenant_id.clone().or_else(|| env(&["AZURE_TENANT_ID"])),
                authority,
            })
        }
        other => Err(CredentialError::Unsupported(format!(
            "kubelogin login mode `{other}` needs a person or another tool; it is not minted in-process"
        ))),
    }
}

/// The client assertion for a certificate credential: header `x5t` = base64url(SHA-1(cert DER)).
fn certificate_assertion(
    pem: &SecretString,
    client_id: &str,
    aud: &str,
    now: SystemTime,
) -> Result<String, CredentialError> {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(pem.expose_secret().as_bytes())
        .map_err(|_| CredentialError::Key("the certificate file has no CERTIFICATE block".into()))?;
    let x5t = oauth::b64url(&sha1::Sha1::digest(cert.as_ref()));
    let iat = oauth::epoch(now);
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
        .map_err(|_| CredentialError::Signing("no randomness".into()))?;
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let claims = json!({"aud": aud, "iss": client_id, "sub": client_id, "jti": oauth::b64url(&jti), "nbf": iat, "iat": iat, "exp": iat + 600});
    oauth::jwt_rs256(&header, &claims, pem)
}

/// Get a token for `server_id` (`<server_id>/.default`).
pub async fn access_token(cred: &Credential, server_id: &str, now: SystemTime) -> Result<AccessToken, CredentialError> {
    let scope = format!("{server_id}/.default");
    let endpoint = |authority: &str, tenant: &str| format!("{authority}/{tenant}/oauth2/v2.0/token");
    match cred {
        Credential::Secret { tenant, client_id, secret, authority } => {
            let url = endpoint(authority, tenant);
            let v = oauth::post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret.expose_secret()),
                    ("scope", &scope),
                ],
                None,
            )
            .await?;
            oauth::token_of(&v, now)
        }
        Credential::Certificate { tenant, client_id, pem, authority } => {
            let url = endpoint(authority, tenant);
            let assertion = certificate_assertion(pem, client_id, &url, now)?;
            client_assertion(&url, client_id, &assertion, &scope, now).await
        }
        Credential::Workload { tenant, client_id, token_file, authority } => {
            let url = endpoint(authority, tenant);
            let assertion = crate::wif::read_capped(token_file, 64 * 1024, "64 KiB, not a token")?;
            client_assertion(&url, client_id, assertion.trim(), &scope, now).await
        }
        Credential::AzureCli { cache, tenant, authority } => {
            azure_cli(cache, tenant.as_deref(), authority, server_id, now).await
        }
        Credential::ManagedIdentity { client_id, endpoint } => {
            let mut url =
                format!("{endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={server_id}");
            if let Some(c) = client_id {
                url.push_str(&format!("&client_id={c}"));
            }
            let req = oauth::request(http::Request::get(url.as_str()).header("metadata", "true"), &url, Vec::new())?;
            let v = oauth::json_answer(&url, oauth::send(req).await?)?;
            oauth::token_of(&v, now)
        }
    }
}

/// From the Azure CLI's MSAL cache: a valid cached access token for `server_id`, else a refresh.
async fn azure_cli(
    cache: &std::path::Path,
    tenant: Option<&str>,
    authority: &str,
    server_id: &str,
    now: SystemTime,
) -> Result<AccessToken, CredentialError> {
    let origin = cache.display().to_string();
    let text = crate::wif::read_capped(cache, 16 << 20, "16 MiB")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CredentialError::field(&origin, "", format!("not JSON ({e})")))?;
    let entries = |kind: &str| -> Vec<serde_json::Value> {
        v.get(kind).and_then(|m| m.as_object()).map(|m| m.values().cloned().collect()).unwrap_or_default()
    };
    let field = |e: &serde_json::Value, k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
    let tenant_ok = |e: &serde_json::Value| {
        tenant.is_none_or(|t| field(e, "realm") == t || field(e, "home_account_id").ends_with(&format!(".{t}")))
    };
    let margin = oauth::epoch(now + crate::refresh::MARGIN);
    for at in entries("AccessToken") {
        let target = field(&at, "target").to_ascii_lowercase();
        let expires: u64 = field(&at, "expires_on").parse().unwrap_or(0);
        if field(&at, "client_id") == AZURE_CLI_CLIENT_ID
            && target.split(' ').any(|t| t.starts_with(&format!("{}/", server_id.to_ascii_lowercase())))
            && tenant_ok(&at)
            && expires > margin
        {
            return Ok(AccessToken {
                token: SecretString::from(field(&at, "secret")),
                expires_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires),
            });
        }
    }
    let rt = entries("RefreshToken")
        .into_iter()
        .find(|r| field(r, "client_id") == AZURE_CLI_CLIENT_ID && tenant_ok(r))
        .ok_or_else(|| {
            CredentialError::field(
                &origin,
                "RefreshToken",
                format!(
                    "no Azure CLI refresh token{} (run `az login`)",
                    tenant.map(|t| format!(" for tenant {t}")).unwrap_or_default()
                ),
            )
        })?;
    let tenant = tenant
        .map(str::to_owned)
        .or_else(|| field(&rt, "home_account_id").rsplit('.').next().map(str::to_owned).filter(|t| !t.is_empty()))
        .unwrap_or_else(|| "organizations".into());
    let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
    let secret = SecretString::from(field(&rt, "secret"));
    let v = oauth::post_form(
        &url,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", AZURE_CLI_CLIENT_ID),
            ("refresh_token", secret.expose_secret()),
            ("scope", &format!("{server_id}/.default offline_access openid profile")),
        ],
        None,
    )
    .await?;
    oauth::token_of(&v, now)
}

async fn client_assertion(
    url: &str,
    client_id: &str,
    assertion: &str,
    scope: &str,
    now: SystemTime,
) -> Result<AccessToken, CredentialError> {
    let v = oauth::post_form(
        url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
            ("scope", scope),
        ],
        None,
    )
    .await?;
    oauth::token_of(&v, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_modes_are_not_minted() {
        for m in [None, Some("devicecode"), Some("interactive"), Some("ropc")] {
            let e = resolve(&Login { mode: m.map(String::from), ..Login::default() }).unwrap_err();
            assert!(matches!(e, CredentialError::Unsupported(_)), "{e}");
            assert!(e.to_string().contains("not minted in-process"), "{e}");
        }
        let msi =
            resolve(&Login { mode: Some("msi".into()), client_id: Some("c".into()), ..Login::default() }).unwrap();
        assert_eq!(msi.describe(), "managed identity c");
    }
}
