//! Which cluster, as whom, in which namespace: kubectl's precedence rules over kubeconfig files
//! and in-cluster service-account config, and recognition of the credential plugins managed
//! clusters use.

use std::path::{Path, PathBuf};

use kube::config::{ExecConfig, KubeConfigOptions, Kubeconfig};

use crate::error::ClusterError;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--kubeconfig`: wins over `KUBECONFIG` and `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: instead of the kubeconfig's current-context.
    pub context: Option<String>,
    /// `-n/--namespace`: instead of the context's namespace.
    pub namespace: Option<String>,
    /// `-A/--all-namespaces`.
    pub all_namespaces: bool,
    /// `--as`: impersonate this user (the `Impersonate-User` header on every request).
    pub impersonate: Option<String>,
    /// `--as-group`: impersonate these groups too (`Impersonate-Group`, one header each).
    pub impersonate_groups: Vec<String>,
    /// `--request-timeout`: give up on connecting, or on a read or write that makes no progress,
    /// after this long (zero or `None`: never, kubectl's default). This bounds streams too: an
    /// exec or log read that receives nothing for this long fails.
    pub request_timeout: Option<std::time::Duration>,
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--kubeconfig PATH`.
    Flag(PathBuf),
    /// `KUBECONFIG`, possibly several files merged.
    Env(String),
    /// `~/.kube/config`.
    Default(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
    InCluster,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(p) => write!(f, "--kubeconfig {}", p.display()),
            Source::Env(v) => write!(f, "KUBECONFIG={v}"),
            Source::Default(p) => write!(f, "{}", p.display()),
            Source::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

/// A managed-cloud credential plugin found in a kubeconfig user, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    /// `aws eks get-token --cluster-name N [--region R] [--role-arn A] [--profile P]` or
    /// `aws-iam-authenticator token -i N [-r A]`.
    Eks { cluster: String, region: Option<String>, role_arn: Option<String>, profile: Option<String> },
    /// `gke-gcloud-auth-plugin`.
    Gke,
    /// `kubelogin get-token --server-id S [--login L] [--tenant-id T] [--client-id C] ...`.
    Aks { server_id: String, login: Option<String>, tenant_id: Option<String>, client_id: Option<String> },
}

impl std::fmt::Display for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plugin::Eks { cluster, region, role_arn, .. } => {
                write!(f, "EKS token for cluster {cluster}")?;
                if let Some(r) = region {
                    write!(f, " in {r}")?;
                }
                if let Some(a) = role_arn {
                    write!(f, " as {a}")?;
                }
                Ok(())
            }
            Plugin::Gke => f.write_str("GKE access token (gke-gcloud-auth-plugin)"),
            Plugin::Aks { server_id, login, .. } => {
                write!(f, "AKS Entra ID token for {server_id}")?;
                if let Some(l) = login {
                    write!(f, " (login mode {l})")?;
                }
                Ok(())
            }
        }
    }
}

fn flag(args: &[String], names: &[&str]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for n in names {
            if a == n {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                return Some(v.to_owned());
            }
        }
    }
    None
}

fn env_value(exec: &ExecConfig, key: &str) -> Option<String> {
    exec.env.as_ref()?.iter().find(|e| e.get("name").map(String::as_str) == Some(key))?.get("value").cloned()
}

/// Recognise the credential plugins of EKS, GKE and AKS by command and arguments, as they
/// appear in kubeconfigs written by `aws eks update-kubeconfig`, `gcloud container clusters
/// get-credentials` and `kubelogin convert-kubeconfig`.
pub fn recognize(exec: &ExecConfig) -> Option<Plugin> {
    let command = exec.command.as_deref()?;
    let base = Path::new(command).file_name()?.to_str()?;
    let args = exec.args.clone().unwrap_or_default();
    match base {
        "aws" if args.iter().any(|a| a == "eks") && args.iter().any(|a| a == "get-token") => Some(Plugin::Eks {
            cluster: flag(&args, &["--cluster-name", "--cluster-id"])?,
            region: flag(&args, &["--region"]).or_else(|| env_value(exec, "AWS_REGION")),
            role_arn: flag(&args, &["--role-arn"]),
            profile: flag(&args, &["--profile"]).or_else(|| env_value(exec, "AWS_PROFILE")),
        }),
        "aws-iam-authenticator" if args.iter().any(|a| a == "token") => Some(Plugin::Eks {
            cluster: flag(&args, &["-i", "--cluster-id"])?,
            region: flag(&args, &["--region"]).or_else(|| env_value(exec, "AWS_REGION")),
            role_arn: flag(&args, &["-r", "--role"]),
            profile: env_value(exec, "AWS_PROFILE"),
        }),
        "gke-gcloud-auth-plugin" => Some(Plugin::Gke),
        "kubelogin" if args.iter().any(|a| a == "get-token") => Some(Plugin::Aks {
            server_id: flag(&args, &["--server-id"])?,
            login: flag(&args, &["--login", "-l"]),
            tenant_id: flag(&args, &["--tenant-id", "-t"]),
            client_id: flag(&args, &["--client-id"]),
        }),
        _ => None,
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    ClientCertificate,
    Token,
    TokenFile,
    /// A kubeconfig exec plugin, run by the client as a subprocess.
    ExecPlugin {
        command: String,
        recognized: Option<Plugin>,
    },
    InCluster,
    Anonymous,
    /// Minted in-process instead of running the plugin.
    Native {
        plugin: Plugin,
        credentials: String,
    },
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::ClientCertificate => f.write_str("client certificate"),
            Auth::Token => f.write_str("bearer token"),
            Auth::TokenFile => f.write_str("bearer token file"),
            Auth::ExecPlugin { command, recognized: None } => write!(f, "exec plugin `{command}`"),
            Auth::ExecPlugin { command, recognized: Some(p) } => write!(f, "exec plugin `{command}` ({p})"),
            Auth::InCluster => f.write_str("in-cluster service-account token"),
            Auth::Anonymous => f.write_str("no credentials"),
            Auth::Native { plugin, credentials } => {
                write!(f, "{plugin}, minted in-process (credentials: {credentials})")
            }
        }
    }
}

/// The resolved configuration, before a client is built.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: kube::Config,
    pub source: Source,
    pub context: Option<String>,
    pub namespace: String,
    pub all_namespaces: bool,
    pub auth: Auth,
    /// What a `-v` run prints about how the connection was chosen.
    pub notes: Vec<String>,
    /// A natively minted token, kept fresh by the client's [`crate::refresh::RefreshLayer`].
    pub native: Option<crate::refresh::TokenCache>,
}

fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

fn auth_of(info: &kube::config::AuthInfo) -> Auth {
    if let Some(exec) = &info.exec {
        return Auth::ExecPlugin { command: exec.command.clone().unwrap_or_default(), recognized: recognize(exec) };
    }
    if info.client_certificate.is_some() || info.client_certificate_data.is_some() {
        Auth::ClientCertificate
    } else if info.token.is_some() {
        Auth::Token
    } else if info.token_file.is_some() {
        Auth::TokenFile
    } else {
        Auth::Anonymous
    }
}

/// Resolve the configuration with kubectl's precedence: `--kubeconfig`, then `KUBECONFIG`
/// (files merged, first wins), then `~/.kube/config`, then the in-cluster service account.
/// `--context` picks the context; `-n` wins over the context's namespace, which wins over
/// `default` (in a pod: the pod's namespace).
pub async fn resolve(opts: &ClusterOptions) -> Result<Resolved, ClusterError> {
    let kopts = KubeConfigOptions { context: opts.context.clone(), cluster: None, user: None };
    let mut notes = Vec::new();
    let file: Option<(Kubeconfig, Source)> = if let Some(p) = &opts.kubeconfig {
        let kc =
            Kubeconfig::read_from(p).map_err(|e| ClusterError::Config(format!("kubeconfig {}: {e}", p.display())))?;
        Some((kc, Source::Flag(p.clone())))
    } else if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let kc = Kubeconfig::from_env()
            .map_err(|e| ClusterError::Config(format!("KUBECONFIG={}: {e}", v.to_string_lossy())))?;
        kc.map(|k| (k, Source::Env(v.to_string_lossy().into_owned())))
    } else {
        match home_kubeconfig().filter(|p| p.is_file()) {
            Some(p) => Some((
                Kubeconfig::read_from(&p)
                    .map_err(|e| ClusterError::Config(format!("kubeconfig {}: {e}", p.display())))?,
                Source::Default(p),
            )),
            None => None,
        }
    };
    let (mut config, source, context, mut auth) = match file {
        Some((kc, source)) => {
            let context = opts.context.clone().or_else(|| kc.current_context.clone());
            if let Some(c) = &opts.context {
                if !kc.contexts.iter().any(|n| &n.name == c) {
                    let known: Vec<&str> = kc.contexts.iter().map(|n| n.name.as_str()).collect();
                    return Err(ClusterError::Config(format!(
                        "context `{c}` is not in {source} (contexts: {})",
                        known.join(", ")
                    )));
                }
            }
            let user = context
                .as_ref()
                .and_then(|c| kc.contexts.iter().find(|n| &n.name == c))
                .and_then(|n| n.context.as_ref())
                .and_then(|c| c.user.clone());
            let auth = user
                .and_then(|u| kc.auth_infos.iter().find(|a| a.name == u).and_then(|a| a.auth_info.clone()))
                .map(|a| auth_of(&a))
                .unwrap_or(Auth::Anonymous);
            let config = kube::Config::from_custom_kubeconfig(kc, &kopts)
                .await
                .map_err(|e| ClusterError::Config(format!("{source}: {e}")))?;
            (config, source, context, auth)
        }
        None => {
            let config = kube::Config::incluster().map_err(|e| {
                ClusterError::Config(format!(
                    "no kubeconfig (--kubeconfig, KUBECONFIG or {}) and not inside a pod ({e})",
                    home_kubeconfig().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.kube/config".into())
                ))
            })?;
            (config, Source::InCluster, None, Auth::InCluster)
        }
    };
    // A recognised plugin is replaced by an in-process token when this build can mint it.
    let mut native = None;
    if let Auth::ExecPlugin { command, recognized: Some(plugin) } = auth.clone() {
        let plugin_env: Vec<(String, secrecy::SecretString)> = config
            .auth_info
            .exec
            .as_ref()
            .and_then(|e| e.env.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| Some((m.get("name")?.clone(), secrecy::SecretString::from(m.get("value")?.clone()))))
            .collect();
        match native_token(&plugin, plugin_env.clone()).await {
            Ok((token, credentials, ms)) => {
                config.auth_info.exec = None;
                config.auth_info.token = None;
                let (p2, env2) = (plugin.clone(), plugin_env);
                let mint: crate::refresh::Mint = std::sync::Arc::new(move || {
                    let (p, e) = (p2.clone(), env2.clone());
                    Box::pin(async move { native_token(&p, e).await.map(|(t, _, _)| t) })
                });
                native = Some(crate::refresh::TokenCache::new(token, mint));
                notes.push(format!(
                    "recognised `{command}` ({plugin}); minted the token in-process in {ms:.2} ms instead of running it \
                     (cached; minted again {}s before expiry, or once after a 401)",
                    crate::refresh::MARGIN.as_secs()
                ));
                auth = Auth::Native { plugin, credentials };
            }
            Err(why) => notes.push(format!("recognised `{command}` ({plugin}); running it, because {why}")),
        }
    }
    notes.push(format!("configuration: {source}"));
    if let Some(c) = &context {
        notes.push(format!("context: {c}"));
    }
    notes.push(format!("server: {}", config.cluster_url));
    notes.push(format!("authentication: {auth}"));
    if let Some(user) = &opts.impersonate {
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups =
            (!opts.impersonate_groups.is_empty()).then(|| opts.impersonate_groups.clone());
        match opts.impersonate_groups.as_slice() {
            [] => notes.push(format!("impersonating: {user}")),
            groups => notes.push(format!("impersonating: {user} (groups: {})", groups.join(", "))),
        }
    }
    if let Some(t) = opts.request_timeout.filter(|t| !t.is_zero()) {
        config.connect_timeout = Some(t);
        config.read_timeout = Some(t);
        config.write_timeout = Some(t);
        // counted from each request, not from when its pooled connection went idle
        config.reset_reader_on_write = true;
        notes.push(format!("request timeout: {t:?}"));
    }
    let namespace = opts.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    config.default_namespace = namespace.clone();
    Ok(Resolved { config, source, context, namespace, all_namespaces: opts.all_namespaces, auth, notes, native })
}

/// Mint a token for a recognised plugin, or say why not (the plugin then runs).
async fn native_token(
    plugin: &Plugin,
    plugin_env: Vec<(String, secrecy::SecretString)>,
) -> Result<(crate::oauth::AccessToken, String, f64), crate::error::CredentialError> {
    use crate::error::CredentialError;
    let started = std::time::Instant::now();
    let now = std::time::SystemTime::now();
    let ms = || started.elapsed().as_secs_f64() * 1000.0;
    match plugin {
        Plugin::Eks { cluster, region, role_arn, profile } => {
            let creds = crate::eks::credentials(profile.as_deref(), role_arn.as_deref())
                .await
                .map_err(|e| e.context("the AWS credentials are"))?;
            let region = crate::eks::region(region.as_deref(), profile.as_deref()).ok_or_else(|| {
                CredentialError::Missing(
                    "no AWS region is configured (--region, AWS_REGION or the profile's region)".into(),
                )
            })?;
            let t = crate::eks::token(&creds, cluster, &region, now)?;
            Ok((t.access_token(), creds.source, ms()))
        }
        Plugin::Gke => {
            let (adc, origin) = crate::gke::find()?;
            let t =
                crate::gke::access_token(&adc, now).await.map_err(|e| e.context("the Google token request failed:"))?;
            Ok((t, format!("{} from {origin}", adc.describe()), ms()))
        }
        Plugin::Aks { server_id, login, tenant_id, client_id } => {
            let cred = crate::aks::resolve(&crate::aks::Login {
                mode: login.clone(),
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                plugin_env,
            })?;
            let t = crate::aks::access_token(&cred, server_id, now)
                .await
                .map_err(|e| e.context("the Entra ID token request failed:"))?;
            Ok((t, cred.describe(), ms()))
        }
    }
}

/// A client and what it is connected to.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    pub all_namespaces: bool,
    pub source: Source,
    pub context: Option<String>,
    pub server: String,
    pub auth: Auth,
    pub notes: Vec<String>,
}

impl Cluster {
    /// Resolve the configuration and build a client (no request is made yet).
    pub async fn connect(opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let r = resolve(opts).await?;
        let server = r.config.cluster_url.to_string();
        let native = r.native.clone();
        let built = match native {
            Some(cache) => kube::client::ClientBuilder::try_from(r.config)
                .map(|b| b.with_layer(&crate::refresh::RefreshLayer(cache)).build()),
            None => kube::Client::try_from(r.config),
        };
        let client = built.map_err(|e| {
            // say why a recognised plugin was run instead of minted in-process
            let why: Vec<&str> =
                r.notes.iter().filter(|n| n.contains("running it, because")).map(String::as_str).collect();
            let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) };
            ClusterError::Config(format!("client: {e}{why}"))
        })?;
        Ok(Cluster {
            client,
            namespace: r.namespace,
            all_namespaces: r.all_namespaces,
            source: r.source,
            context: r.context,
            server,
            auth: r.auth,
            notes: r.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(command: &str, args: &[&str]) -> ExecConfig {
        serde_json::from_value(serde_json::json!({"apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": command, "args": args}))
        .unwrap()
    }

    #[test]
    fn recognizes_the_managed_cloud_plugins() {
        let eks =
            exec("aws", &["--region", "eu-west-1", "eks", "get-token", "--cluster-name", "prod", "--output", "json"]);
        assert_eq!(
            recognize(&eks),
            Some(Plugin::Eks {
                cluster: "prod".into(),
                region: Some("eu-west-1".into()),
                role_arn: None,
                profile: None
            })
        );
        let eks2 = exec(
            "/usr/local/bin/aws",
            &["eks", "get-token", "--cluster-name=prod", "--role-arn", "arn:aws:iam::1:role/r"],
        );
        assert!(matches!(recognize(&eks2), Some(Plugin::Eks { role_arn: Some(_), .. })));
        let iam = exec("aws-iam-authenticator", &["token", "-i", "prod", "-r", "arn:aws:iam::1:role/r"]);
        assert!(matches!(recognize(&iam), Some(Plugin::Eks { ref cluster, .. }) if cluster == "prod"));
        assert_eq!(recognize(&exec("gke-gcloud-auth-plugin", &[])), Some(Plugin::Gke));
        let aks = exec(
            "kubelogin",
            &["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"],
        );
        assert!(
            matches!(recognize(&aks), Some(Plugin::Aks { ref server_id, ref login, .. }) if server_id.starts_with("6dae42f8") && login.as_deref() == Some("azurecli"))
        );
        assert_eq!(recognize(&exec("aws", &["s3", "ls"])), None);
        assert_eq!(recognize(&exec("my-plugin", &[])), None);
    }
}
