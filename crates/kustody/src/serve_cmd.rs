//! `kustody serve` and `kustody search`: the binary's side (flags, rule files, output); the
//! server itself is the `kustody-serve` crate.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kustody_rules::allow::AllowList;
use kustody_rules::{Engine, EngineOptions, Severity};
use kustody_serve::{RuleSource, WhereFilter};

use crate::cli::{SearchArgs, SearchFormat, ServeAction, ServeArgs};
use crate::render::sanitize;
use crate::ruleset;

/// The rule files of `serve` and `search`, read again on every reload.
pub struct FileRules {
    pub rules: Vec<PathBuf>,
    pub defaults: bool,
    pub allow: Vec<PathBuf>,
    pub no_allowlist: bool,
    pub opts: EngineOptions,
}

impl RuleSource for FileRules {
    fn load(&self, disabled: &BTreeSet<String>) -> Result<(Engine, AllowList, Vec<String>), String> {
        let opts = EngineOptions { disabled: disabled.clone(), ..self.opts.clone() };
        let (engine, diags) = ruleset::load(&self.rules, self.defaults, &opts).map_err(|e| format!("{e:#}"))?;
        let errors: Vec<String> =
            diags.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect();
        if !errors.is_empty() {
            return Err(format!("{} error(s): {}", errors.len(), errors.join("; ")));
        }
        let mut warnings: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let allow = if self.no_allowlist {
            AllowList::default()
        } else {
            let (allow, adiags) = ruleset::load_allow(&self.allow, self.defaults).map_err(|e| format!("{e:#}"))?;
            if adiags.iter().any(|d| d.severity == Severity::Error) {
                return Err(adiags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "));
            }
            warnings.extend(adiags.iter().map(|d| d.to_string()));
            allow
        };
        Ok((engine, allow, warnings))
    }

    fn compile_where(&self, condition: &str) -> Result<WhereFilter, String> {
        compile_where(&self.rules, self.defaults, condition)
    }

    fn watched(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = ruleset::rule_files(&self.rules)
            .map(|f| f.into_iter().map(|(n, _)| PathBuf::from(n)).collect())
            .unwrap_or_default();
        files.extend(self.allow.iter().cloned());
        files
    }
}

/// The name of the synthetic rule a `--where` condition becomes.
const WHERE_RULE: &str = "kustody search --where";

/// Compiles a Falco condition (with the macros and lists of the rule files) into a filter.
pub fn compile_where(rules: &[PathBuf], defaults: bool, condition: &str) -> Result<WhereFilter, String> {
    if condition.len() > 64 << 10 {
        return Err("the condition is over 64 KiB".into());
    }
    let mut files: Vec<(String, String)> = Vec::new();
    if defaults {
        files.extend(ruleset::BUILTIN.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())));
    }
    files.extend(ruleset::rule_files(rules).map_err(|e| format!("{e:#}"))?);
    // The condition as a JSON string is a valid YAML double-quoted scalar, whatever it holds.
    let quoted = serde_json::to_string(condition).map_err(|e| e.to_string())?;
    files.push((
        "--where".to_owned(),
        format!("- rule: {WHERE_RULE}\n  desc: search filter\n  condition: {quoted}\n  output: match\n  priority: DEBUG\n  source: k8s_audit\n"),
    ));
    let (engine, diags) = Engine::load(&files, &EngineOptions::default());
    let mine: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error && d.to_string().contains("--where"))
        .map(|d| d.to_string())
        .collect();
    if !mine.is_empty() {
        return Err(mine.join("; "));
    }
    let idx = engine.rules().position(|r| r.name == WHERE_RULE && r.enabled).ok_or_else(|| {
        format!("the condition did not compile: {}", diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))
    })? as u32;
    use kustody_store::KeyColumn;
    let columns = [KeyColumn::Verb, KeyColumn::Resource, KeyColumn::Subresource, KeyColumn::Stage];
    let keys = engine
        .index_keys(idx)
        .map(|k| {
            columns
                .into_iter()
                .zip(k)
                .filter_map(|(column, c)| c.map(|(values, ci)| kustody_store::OneOf { column, values, ci }))
                .collect()
        })
        .unwrap_or_default();
    let engine = Arc::new(engine);
    Ok(WhereFilter {
        test: Arc::new(move |ev: &kustody_model::Event<'_>| {
            let mut scratch = kustody_rules::Scratch::default();
            let mut out = Vec::new();
            engine.matches(ev, &mut scratch, &mut out);
            out.contains(&idx)
        }),
        keys,
    })
}

/// The flags a `--config` file sets, as command-line arguments (placed before the real ones,
/// which therefore win). Errors name the file, line and key.
fn config_args(path: &std::path::Path) -> Result<Vec<std::ffi::OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let docs = kustody_model::yaml::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.pos.line, e.pos.col))?;
    let at = |n: &kustody_model::yaml::Node| format!("{}:{}:{}", path.display(), n.pos().line, n.pos().col);
    let known: Vec<String> = crate::command()
        .find_subcommand("serve")
        .map(|c| c.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    let Some(root) = docs.first() else { return Ok(out) };
    let kustody_model::yaml::Node::Map { entries, .. } = root else {
        bail!("{}: the configuration must be a mapping of flag names to values", at(root));
    };
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        if key == "config" || !known.iter().any(|n| n == key) {
            bail!("{}: unknown key `{key}` (the keys are `kustody serve` flags without `--`, e.g. listen, follow, tokens)", at(k));
        }
        let values: Vec<&kustody_model::yaml::Node> = match v {
            kustody_model::yaml::Node::Seq { items, .. } => items.iter().collect(),
            other => vec![other],
        };
        for item in values {
            let Some(val) = item.as_str() else {
                bail!("{}: `{key}` takes a value or a list of values, not {}", at(item), item.kind());
            };
            match val {
                "true" => out.push(format!("--{key}").into()),
                "false" => {}
                _ => {
                    out.push(format!("--{key}").into());
                    out.push(val.into());
                }
            }
        }
    }
    Ok(out)
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    match args.action {
        Some(ServeAction::PrintApiserverConfig(a)) => {
            print!("{}", apiserver_config(&a));
            return Ok(ExitCode::SUCCESS);
        }
        Some(ServeAction::Outbox(cmd)) => return crate::incidents_cmd::outbox(cmd),
        Some(ServeAction::User(cmd)) => return user(cmd),
        None => {}
    }
    let args = match &args.config {
        None => args,
        Some(path) => {
            // Parse again with the file's flags first: the command line's come later and win.
            let extra = config_args(path)?;
            let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
            let at = argv.iter().position(|a| a == "serve").map_or(argv.len(), |i| i + 1);
            argv.splice(at..at, extra);
            use clap::Parser;
            match crate::cli::Cli::try_parse_from(crate::cli::normalize_verbosity(argv)) {
                Ok(crate::cli::Cli { command: crate::cli::Command::Serve(a), .. }) => *a,
                Ok(_) => bail!("internal: --config re-parse"),
                Err(e) => bail!("{} (with the flags of `{}`)", e.to_string().trim(), path.display()),
            }
        }
    };
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("--data-dir is required (or KUSTODY_DATA_DIR)");
    };
    let rules = FileRules {
        rules: args.rules.rules.clone(),
        defaults: !args.rules.no_default_rules,
        allow: args.allow.clone(),
        no_allowlist: args.no_allowlist,
        opts: EngineOptions {
            min_priority: args.min_priority.unwrap_or(kustody_model::Priority::Debug),
            ..Default::default()
        },
    };
    let mut config = kustody_serve::Config::new(data_dir, Arc::new(rules));
    if let Some(store) = store_location(&args)? {
        config.store = store;
    }
    config.role = match args.role {
        crate::cli::ServeRole::All => kustody_serve::bus::Role::All,
        crate::cli::ServeRole::Receiver => kustody_serve::bus::Role::Receiver,
        crate::cli::ServeRole::Detector => kustody_serve::bus::Role::Detector,
    };
    config.bus = bus_config(&args)?;
    config.listen = args.listen;
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    config.client_ca = args.client_ca;
    config.tls_sans = args.tls_sans;
    config.tokens_file = args.tokens;
    config.follow = args.follow;
    config.replay = args.replay;
    if !args.eks_cluster.is_empty() {
        if args.eks_log_group.is_some() && args.eks_cluster.len() > 1 {
            bail!("--eks-log-group names one cluster's group: give one --eks-cluster with it");
        }
        let (endpoint, credentials) = crate::setup_cmd::aws_of(&args.aws)?;
        let dur = |flag: &str, v: &str| -> Result<std::time::Duration> {
            let ns = kustody_rules::correlate::parse_window(v)
                .with_context(|| format!("--{flag}: invalid duration `{v}` (e.g. 5s, 2m, 1h)"))?;
            Ok(std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
        };
        let poll = dur("eks-poll", &args.eks_poll)?.max(std::time::Duration::from_millis(100));
        let since = dur("eks-since", &args.eks_since)?;
        let lateness = dur("eks-lateness", &args.eks_lateness)?;
        if !(args.eks_calls_per_second > 0.0 && args.eks_calls_per_second <= 100.0) {
            bail!("--eks-calls-per-second must be above 0 and at most 100");
        }
        for name in &args.eks_cluster {
            config.eks.push(kustody_serve::cloud::EksConfig {
                cluster: name.clone(),
                label: args.cluster.clone().unwrap_or_else(|| name.clone()),
                endpoint: endpoint.clone(),
                credentials: credentials.clone(),
                poll,
                since,
                timing: kustody_cloud::cloudwatch::Timing {
                    lateness_ms: lateness.as_millis() as i64,
                    settle_every_ms: 30_000.min(lateness.as_millis() as i64).max(1_000),
                },
                max_calls_per_second: args.eks_calls_per_second,
                log_group: args.eks_log_group.clone(),
            });
        }
    }
    config.exit_after_replay = args.exit_after_replay;
    config.max_request_bytes = args.max_request_bytes;
    config.max_event_bytes = args.max_event_bytes;
    config.queue_bytes = args.queue_bytes.max(args.max_request_bytes);
    config.ready_file = args.ready_file;
    config.group_window_ns = kustody_rules::correlate::parse_window(&args.group_window)
        .with_context(|| format!("--group-window: invalid duration `{}`", args.group_window))?;
    config.retention_max_age_ns = args
        .retention
        .as_deref()
        .map(|r| {
            kustody_rules::correlate::parse_window(r)
                .with_context(|| format!("--retention: invalid duration `{r}` (e.g. 90d)"))
        })
        .transpose()?;
    config.retention_max_bytes = args.max_store_size.as_deref().map(parse_size).transpose()?;
    let grace = if args.webhook_gap_grace.trim() == "0" {
        Some(0)
    } else {
        kustody_rules::correlate::parse_window(&args.webhook_gap_grace)
    };
    config.gap_grace = std::time::Duration::from_nanos(
        grace.with_context(|| format!("--webhook-gap-grace: invalid duration `{}`", args.webhook_gap_grace))?.max(0)
            as u64,
    );
    if let Some(path) = &args.sinks {
        config.sinks = kustody_notify::load_sinks(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    config.cluster = args.cluster;
    config.public_url = args.public_url;
    if let Some(issuer) = &args.oidc_issuer {
        use kustody_serve::console::users::ConsoleRole;
        let role = |r: &str, flag: &str| {
            ConsoleRole::parse(r).with_context(|| format!("{flag}: `{r}` is not a role (viewer, responder, admin)"))
        };
        let mut role_map = Vec::new();
        for m in &args.oidc_role {
            let (v, r) = m.rsplit_once('=').with_context(|| format!("--oidc-role: `{m}` is not VALUE=ROLE"))?;
            role_map.push((v.to_owned(), role(r, "--oidc-role")?));
        }
        let default_role = args.oidc_default_role.as_deref().map(|r| role(r, "--oidc-default-role")).transpose()?;
        if role_map.is_empty() && default_role.is_none() {
            bail!("--oidc-issuer: no --oidc-role and no --oidc-default-role: nobody could log in");
        }
        let secret_file = args.oidc_client_secret_file.as_deref().context("--oidc-client-secret-file is required")?;
        let secret = std::fs::read_to_string(secret_file)
            .with_context(|| format!("cannot read `{}`", secret_file.display()))?
            .trim()
            .to_owned();
        if secret.is_empty() {
            bail!("--oidc-client-secret-file `{}` is empty", secret_file.display());
        }
        let public = config.public_url.clone().context("--oidc-issuer needs --public-url")?;
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(args.oidc_scope.iter().filter(|s| *s != "openid").cloned());
        config.oidc = Some(kustody_serve::console::oidc::OidcConfig {
            issuer: issuer.clone(),
            client_id: args.oidc_client_id.clone().context("--oidc-client-id is required")?,
            client_secret: secret.into(),
            redirect_url: format!("{}/login/oidc/callback", public.trim_end_matches('/')),
            ca_pem: args
                .oidc_ca
                .as_deref()
                .map(|p| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display())))
                .transpose()?,
            scopes,
            username_claim: args.oidc_username_claim.clone(),
            roles_claim: args.oidc_roles_claim.clone(),
            role_map,
            default_role,
        });
    }
    config.incident_window_ns = kustody_rules::correlate::parse_window(&args.incident_window)
        .with_context(|| format!("--incident-window: invalid duration `{}`", args.incident_window))?;
    if let Some(path) = &args.playbooks {
        config.playbooks = kustody_playbook::load(path, kustody_serve::respond::ROUTE_FIELDS)?;
        for pb in &config.playbooks {
            for a in &pb.actions {
                if let kustody_playbook::Action::Notify(n) = a {
                    if !config.sinks.iter().any(|s| s.name == n.sink) {
                        bail!(
                            "{}: playbook `{}` notifies sink `{}`, which --sinks does not define",
                            pb.origin,
                            pb.name,
                            n.sink
                        );
                    }
                }
            }
        }
    }
    config.baseline = if args.no_baseline {
        None
    } else {
        let dur = |flag: &str, v: &str| {
            kustody_rules::correlate::parse_window(v)
                .filter(|d| *d > 0)
                .with_context(|| format!("{flag}: invalid duration `{v}` (e.g. 7d)"))
        };
        if !(args.rate_band.is_finite() && args.rate_band > 0.0) {
            bail!("--rate-band: must be a positive number, not {}", args.rate_band);
        }
        Some(kustody_baseline::live::LiveOptions {
            learn_ns: dur("--baseline-learn", &args.baseline_learn)?,
            forget_ns: dur("--baseline-forget", &args.baseline_forget)?,
            min_days: args.baseline_min_days.max(1),
            rate_k: args.rate_band,
            rate_min_count: args.rate_min.max(1),
            ..Default::default()
        })
    };
    config.watch_cluster = args.watch_cluster;
    config.max_ip_intervals = args.max_ip_intervals.max(1);
    // Playbooks, the live watch and the console's actions reach the cluster (--kubeconfig,
    // --context, $KUBECONFIG, ~/.kube/config or in-cluster), connecting only when first needed.
    {
        let opts = kustody_cluster::config::ClusterOptions {
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
            ..Default::default()
        };
        config.connect = Some(Arc::new(move || {
            let opts = opts.clone();
            Box::pin(async move {
                let c = kustody_cluster::Cluster::connect(&opts).await.map_err(|e| e.to_string())?;
                Ok(kustody_serve::execute::Connected { client: c.client, server: c.server, context: c.context })
            })
        }));
    }
    kustody_serve::run(config)?;
    Ok(ExitCode::SUCCESS)
}

/// `kustody serve user add|list|remove`.
fn user(cmd: crate::cli::UserCommand) -> Result<ExitCode> {
    use kustody_serve::console::users;
    match cmd {
        crate::cli::UserCommand::Add(a) => {
            let role = users::ConsoleRole::parse(&a.role)
                .with_context(|| format!("--role: `{}` is not viewer, responder or admin", sanitize(&a.role)))?;
            use std::io::IsTerminal as _;
            if std::io::stdin().is_terminal() {
                eprint!("Password for {} (input is shown; pipe it in to hide it): ", sanitize(&a.name));
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            users::add(&a.dir.data_dir, &a.name, role, password).map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("kustody: user {} ({}) saved in {}", a.name, role.name(), users::path(&a.dir.data_dir).display());
        }
        crate::cli::UserCommand::List(a) => {
            for (name, role) in users::list(&a.data_dir).map_err(|e| anyhow::anyhow!("{e}"))? {
                println!("{name}\t{}", role.name());
            }
        }
        crate::cli::UserCommand::Remove(a) => {
            if !users::remove(&a.dir.data_dir, &a.name).map_err(|e| anyhow::anyhow!("{e}"))? {
                bail!("no user `{}`", sanitize(&a.name));
            }
            eprintln!("kustody: user {} removed", sanitize(&a.name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `500M`, `50G`, `1T`, or bytes.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (t.get(..i), 1u64 << 10),
        Some((i, 'M' | 'm')) => (t.get(..i), 1 << 20),
        Some((i, 'G' | 'g')) => (t.get(..i), 1 << 30),
        Some((i, 'T' | 't')) => (t.get(..i), 1 << 40),
        _ => (Some(t), 1),
    };
    num.and_then(|n| n.trim().parse::<u64>().ok())
        .and_then(|n| n.checked_mul(mult))
        .with_context(|| format!("--max-store-size: `{s}` is not a size like 500M or 50G"))
}

fn apiserver_config(a: &crate::cli::ApiserverConfigArgs) -> String {
    let user = match &a.client_cert {
        Some(v) => format!(
            "    client-certificate: {}\n    client-key: {}",
            v.first().map_or("", String::as_str),
            v.get(1).map_or("", String::as_str)
        ),
        None => "    token: REPLACE-WITH-AN-INGEST-TOKEN   # a line `TOKEN apiserver ingest` in kustody's token file"
            .to_owned(),
    };
    format!(
        r#"# 1. /etc/kubernetes/kustody/webhook.kubeconfig — where the apiserver sends audit batches
apiVersion: v1
kind: Config
clusters:
- name: kustody
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: kube-apiserver
  user:
{user}
contexts:
- name: default
  context: {{cluster: kustody, user: kube-apiserver}}
current-context: default
---
# 2. /etc/kubernetes/kustody/audit-policy.yaml — what kustody's rules need, nothing more:
#    bodies of workloads, RBAC and exec/attach (to see privileged pods, role grants, commands);
#    Secrets, ConfigMaps and tokens at Metadata only (their values must never leave the cluster).
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  resources:
  - group: "coordination.k8s.io"
    resources: ["leases"]
- level: None
  users: ["system:kube-scheduler", "system:kube-controller-manager", "system:apiserver"]
  verbs: ["get", "list", "watch"]
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/metrics"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps", "serviceaccounts/token"]
  - group: "authentication.k8s.io"
    resources: ["tokenreviews"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods/exec", "pods/attach", "pods/portforward", "pods/ephemeralcontainers"]
- level: Request
  verbs: ["create", "update", "patch"]
  resources:
  - group: ""
    resources: ["pods", "services", "serviceaccounts", "namespaces", "nodes"]
  - group: "apps"
  - group: "batch"
  - group: "rbac.authorization.k8s.io"
  - group: "networking.k8s.io"
  - group: "admissionregistration.k8s.io"
- level: Metadata
---
# 3. kube-apiserver flags (static pod manifest or your distribution's config). Keep the log
#    backend as well: the webhook drops a batch after ~90 s of failed retries, and
#    `kustody serve --follow /var/log/kubernetes/audit.log` fills those gaps (and counts them).
#   --audit-policy-file=/etc/kubernetes/kustody/audit-policy.yaml
#   --audit-webhook-config-file=/etc/kubernetes/kustody/webhook.kubeconfig
#   --audit-webhook-mode=batch
#   --audit-webhook-batch-max-size=400
#   --audit-log-path=/var/log/kubernetes/audit.log
#   --audit-log-maxage=7 --audit-log-maxbackup=10 --audit-log-maxsize=200
"#,
        url = a.url,
        ca = a.ca,
    )
}

/// What a search found, from a data directory or a server.
enum Found {
    Events(kustody_serve::search::EventPage),
    Findings(Vec<kustody_store::FindingRow>),
    Alerts(Vec<kustody_store::StoredAlert>),
}

fn params(args: &SearchArgs) -> kustody_serve::http::SearchParams {
    kustody_serve::http::SearchParams {
        cluster: args.cluster.clone(),
        user: args.user.clone(),
        service_account: args.sa.clone(),
        pod: args.pod.clone(),
        ip: args.ip.clone(),
        from_pod: args.from_pod.clone(),
        namespace: args.namespace.clone(),
        verb: args.verb.clone(),
        resource: args.resource.clone(),
        name: args.name.clone(),
        audit_id: args.audit_id.clone(),
        rule: args.rule.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        where_: args.where_.clone(),
        min_priority: args.min_priority.clone(),
        limit: Some(args.limit),
        before: args.before,
    }
}

fn search_local(args: &SearchArgs, dir: &std::path::Path) -> Result<Found> {
    if !dir.join("kustody.db").exists() {
        bail!("no kustody store in `{}` (kustody serve --data-dir DIR makes one)", dir.display());
    }
    let store = kustody_store::SqliteStore::open_read_only(dir)?;
    let params = params(args);
    if args.findings {
        let q = kustody_serve::search::finding_query(&params).map_err(anyhow::Error::msg)?;
        return Ok(Found::Findings(kustody_store::Store::search_findings(&store, &q)?));
    }
    if args.alerts {
        let q = kustody_serve::search::alert_query(&params).map_err(anyhow::Error::msg)?;
        return Ok(Found::Alerts(kustody_store::Store::search_alerts(&store, &q)?));
    }
    let filter = args
        .where_
        .as_deref()
        .map(|w| compile_where(&[], true, w))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--where: {e}"))?;
    let q = kustody_serve::search::event_query(&params).map_err(anyhow::Error::msg)?;
    Ok(Found::Events(kustody_serve::search::events(&store, q, filter.as_ref())?))
}

fn search_remote(args: &SearchArgs, server: &str) -> Result<Found> {
    let token = crate::incidents_cmd::token_from(args.token_file.as_deref())?;
    let p = params(args);
    let q = kustody_serve::client::query(&[
        ("cluster", p.cluster),
        ("user", p.user),
        ("service_account", p.service_account),
        ("pod", p.pod),
        ("ip", p.ip),
        ("from_pod", p.from_pod),
        ("namespace", p.namespace),
        ("verb", p.verb),
        ("resource", p.resource),
        ("name", p.name),
        ("audit_id", p.audit_id),
        ("rule", p.rule),
        ("since", p.since),
        ("until", p.until),
        ("where", p.where_),
        ("min_priority", p.min_priority),
        ("limit", p.limit.map(|l| l.to_string())),
        ("before", p.before.map(|b| b.to_string())),
    ]);
    let what = if args.findings {
        "findings"
    } else if args.alerts {
        "alerts"
    } else {
        "events"
    };
    let (status, body) =
        kustody_serve::client::get(server, args.ca.as_deref(), token.as_deref(), &format!("/v1/{what}?{q}"))?;
    if status != 200 {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(serde_json::Value::as_str).map(str::to_owned))
            .unwrap_or(body);
        bail!("{server} answered {status}: {}", sanitize(&reason));
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("the server's answer is not JSON")?;
    Ok(if args.findings {
        Found::Findings(kustody_serve::search::findings_from_json(&v))
    } else if args.alerts {
        Found::Alerts(kustody_serve::search::alerts_from_json(&v))
    } else {
        Found::Events(kustody_serve::search::event_page_from_json(&v))
    })
}

pub fn search(args: SearchArgs) -> Result<ExitCode> {
    let found = match (&args.server, &args.data_dir) {
        (Some(server), _) => search_remote(&args, server)?,
        (None, Some(dir)) => search_local(&args, dir)?,
        (None, None) => bail!("--data-dir DIR (or KUSTODY_DATA_DIR), or --server URL, is required"),
    };
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    let found = match found {
        Found::Findings(rows) => {
            print_findings(out, &rows, args.format)?;
            !rows.is_empty()
        }
        Found::Alerts(rows) => {
            print_alerts(out, &rows, args.format)?;
            !rows.is_empty()
        }
        Found::Events(page) => {
            print_events(out, &page, args.format)?;
            !page.items.is_empty()
        }
    };
    out.flush()?;
    Ok(if found { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_findings(out: &mut dyn Write, rows: &[kustody_store::FindingRow], format: SearchFormat) -> Result<()> {
    match format {
        SearchFormat::Json => writeln!(out, "{}", kustody_serve::search::findings_json(rows))?,
        SearchFormat::Jsonl => {
            for r in rows {
                writeln!(out, "{}", kustody_serve::detect::finding_json(r))?;
            }
        }
        SearchFormat::Table => {
            writeln!(
                out,
                "{:<7} {:<20} {:<9} {:>6}  {:<40} WHO / WHAT",
                "ID", "LAST SEEN", "PRIORITY", "EVENTS", "RULE"
            )?;
            for r in rows {
                writeln!(
                    out,
                    "{:<7} {:<20} {:<9} {:>6}  {:<40} {} {}/{}",
                    r.id.unwrap_or(0),
                    r.last_ns.map(kustody_model::time::format_rfc3339_secs).unwrap_or_default(),
                    r.priority,
                    r.events,
                    sanitize(&r.rule),
                    sanitize(r.user.as_deref().unwrap_or("-")),
                    sanitize(r.namespace.as_deref().unwrap_or("-")),
                    sanitize(r.name.as_deref().or(r.resource.as_deref()).unwrap_or("-")),
                )?;
            }
        }
    }
    Ok(())
}

fn print_alerts(out: &mut dyn Write, rows: &[kustody_store::StoredAlert], format: SearchFormat) -> Result<()> {
    match format {
        SearchFormat::Json => writeln!(out, "{}", kustody_serve::search::alerts_json(rows))?,
        SearchFormat::Jsonl => {
            for r in rows {
                writeln!(out, "{}", r.alert.raw)?;
            }
        }
        SearchFormat::Table => {
            writeln!(out, "{:<7} {:<20} {:<9} {:<30} RULE", "ID", "TIME", "PRIORITY", "POD")?;
            for r in rows {
                let a = &r.alert;
                writeln!(
                    out,
                    "{:<7} {:<20} {:<9} {:<30} {}",
                    r.id,
                    a.time_ns.map(kustody_model::time::format_rfc3339_secs).unwrap_or_default(),
                    sanitize(&a.priority),
                    sanitize(&format!("{}/{}", a.namespace.as_deref().unwrap_or("-"), a.pod.as_deref().unwrap_or("-"))),
                    sanitize(&a.rule),
                )?;
            }
        }
    }
    Ok(())
}

fn print_events(out: &mut dyn Write, page: &kustody_serve::search::EventPage, format: SearchFormat) -> Result<()> {
    match format {
        SearchFormat::Json => writeln!(out, "{}", page.to_json())?,
        SearchFormat::Jsonl => {
            for e in &page.items {
                writeln!(out, "{}", e.raw)?;
            }
        }
        SearchFormat::Table => {
            writeln!(
                out,
                "{:<8} {:<20} {:<8} {:<45} {:<8} {:<40} FROM POD",
                "ID", "TIME", "CODE", "USER", "VERB", "RESOURCE"
            )?;
            for e in &page.items {
                let ev = kustody_model::Event::parse(&e.raw).ok();
                let ctx = ev.as_ref().map(kustody_model::EventContext::of).unwrap_or_default();
                writeln!(
                    out,
                    "{:<8} {:<20} {:<8} {:<45} {:<8} {:<40} {}",
                    e.id,
                    e.time_ns.map(kustody_model::time::format_rfc3339_secs).unwrap_or_default(),
                    ctx.response_code.map(|c| c.to_string()).unwrap_or_default(),
                    sanitize(ctx.user.as_deref().unwrap_or("-")),
                    sanitize(ctx.verb.as_deref().unwrap_or("-")),
                    sanitize(&ctx.resource_path().unwrap_or_else(|| "-".into())),
                    sanitize(e.source_pod.as_deref().unwrap_or("-")),
                )?;
            }
            if let Some(n) = page.next_before {
                writeln!(out, "… more: --before {n}")?;
            }
        }
    }
    Ok(())
}

/// `--bus*`: how to reach NATS JetStream.
fn bus_config(args: &crate::cli::ServeArgs) -> Result<Option<kustody_serve::bus::BusConfig>> {
    let Some(url) = args.bus.clone() else { return Ok(None) };
    if !url.split(',').all(|u| ["nats://", "tls://"].iter().any(|p| u.trim().starts_with(p))) {
        bail!("--bus: expected nats://HOST:PORT or tls://HOST:PORT (comma-separated for several)");
    }
    if url.contains('@') {
        // a password in the URL would show in every process listing
        bail!("--bus: give credentials with --bus-token-file or --bus-credentials, not in the URL");
    }
    let mut b = kustody_serve::bus::BusConfig::new(url);
    if let Some(f) = &args.bus_token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("cannot read `{}`", f.display()))?;
        let t = t.trim();
        if t.is_empty() {
            bail!("--bus-token-file `{}` is empty", f.display());
        }
        b.token = Some(t.to_owned().into());
    }
    b.credentials.clone_from(&args.bus_credentials);
    b.ca.clone_from(&args.bus_ca);
    b.partitions = args.bus_partitions;
    b.replicas = args.bus_replicas as usize;
    b.max_bytes = i64::try_from(parse_size(&args.bus_max_bytes).context("--bus-max-bytes")?).unwrap_or(i64::MAX);
    let lease = kustody_rules::correlate::parse_window(&args.bus_lease)
        .with_context(|| format!("--bus-lease: invalid duration `{}`", args.bus_lease))?;
    b.lease_ttl = std::time::Duration::from_nanos(u64::try_from(lease).unwrap_or(0));
    if b.lease_ttl < std::time::Duration::from_secs(3) {
        bail!("--bus-lease must be at least 3s (a detector lets go of its partitions when it could not renew them for five sixths of it)");
    }
    Ok(Some(b))
}

/// `--store`: SQLite in the data directory (none, or `sqlite`), or a PostgreSQL URL.
fn store_location(args: &crate::cli::ServeArgs) -> Result<Option<kustody_store::Location>> {
    let Some(store) = args.store.as_deref() else { return Ok(None) };
    if store == "sqlite" {
        if args.store_password_file.is_some() || args.store_ca.is_some() {
            bail!("--store sqlite takes no --store-password-file or --store-ca");
        }
        return Ok(None);
    }
    if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
        // the value may hold a password: it is not repeated
        bail!("--store: expected `sqlite` or a postgres:// URL");
    }
    postgres_location(store, args)
}

#[cfg(not(feature = "postgres"))]
fn postgres_location(_: &str, _: &crate::cli::ServeArgs) -> Result<Option<kustody_store::Location>> {
    bail!("--store: this kustody was built without PostgreSQL support (cargo feature `postgres`)")
}

#[cfg(feature = "postgres")]
fn postgres_location(store: &str, args: &crate::cli::ServeArgs) -> Result<Option<kustody_store::Location>> {
    let mut cfg = kustody_store::PgConfig::new(store.to_owned().into(), args.store_ca.clone())
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    if let Some(f) = &args.store_password_file {
        let pw = std::fs::read_to_string(f).with_context(|| format!("cannot read `{}`", f.display()))?;
        let pw = pw.trim_end_matches(['\n', '\r']);
        if pw.is_empty() {
            bail!("--store-password-file `{}` is empty", f.display());
        }
        cfg = cfg.with_password(pw.to_owned().into());
    }
    Ok(Some(kustody_store::Location::Postgres(cfg)))
}
