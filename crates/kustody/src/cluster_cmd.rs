//! Commands that talk to a cluster: `kustody auth whoami`, `kustody exec`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kustody_cluster::exec::{exec as run_exec, ExecSpec};
use kustody_cluster::{Cluster, ClusterOptions};

use crate::cli::{ClusterArgs, ExecArgs, Provider, TokenArgs, WhoamiArgs};
use crate::render::sanitize;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")
}

pub(crate) async fn connect(args: &ClusterArgs) -> Result<Cluster> {
    let opts = ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.clone(),
        all_namespaces: false,
        impersonate: args.as_user.clone(),
        impersonate_groups: args.as_group.clone(),
        request_timeout: args.request_timeout,
    };
    let cluster = Cluster::connect(&opts).await?;
    if args.verbose {
        for n in &cluster.notes {
            eprintln!("kustody: {}", sanitize(n));
        }
        eprintln!("kustody: namespace: {}", sanitize(&cluster.namespace));
    }
    Ok(cluster)
}

pub fn whoami(args: WhoamiArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let started = Instant::now();
        let cluster = connect(&args.cluster).await?;
        let me = kustody_cluster::identity::whoami(&cluster.client).await?;
        let mut out = std::io::stdout().lock();
        if args.format == crate::cli::ReportFormat::Json {
            let review = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "SelfSubjectReview",
                "status": {"userInfo": me},
                "connection": {
                    "server": cluster.server,
                    "context": cluster.context,
                    "auth": cluster.auth.to_string(),
                },
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&review)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(out, "user:    {}", sanitize(&me.username))?;
        if !me.uid.is_empty() {
            writeln!(out, "uid:     {}", sanitize(&me.uid))?;
        }
        let groups: Vec<String> = me.groups.iter().map(|g| sanitize(g)).collect();
        writeln!(out, "groups:  {}", groups.join(", "))?;
        writeln!(out, "server:  {}", sanitize(&cluster.server))?;
        writeln!(out, "context: {}", sanitize(cluster.context.as_deref().unwrap_or("(in-cluster)")))?;
        writeln!(out, "auth:    {}", sanitize(&cluster.auth.to_string()))?;
        if args.cluster.verbose {
            eprintln!("kustody: answered in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `pod/NAME`, `pods/NAME` or `NAME`.
pub(crate) fn pod_name(target: &str) -> Result<String> {
    let pod = target.strip_prefix("pod/").or_else(|| target.strip_prefix("pods/")).unwrap_or(target);
    if pod.is_empty() || pod.contains('/') {
        anyhow::bail!("`{target}`: expected a pod (`pod/NAME` or `NAME`)");
    }
    Ok(pod.to_owned())
}

pub fn exec(args: ExecArgs) -> Result<ExitCode> {
    let pod = pod_name(&args.target)?;
    let stdin = args
        .stdin_file
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display())))
        .transpose()?;
    runtime()?.block_on(async move {
        let cluster = connect(&args.cluster).await?;
        let spec = ExecSpec {
            namespace: cluster.namespace.clone(),
            pod,
            container: args.container.clone(),
            command: args.command.clone(),
            stdin,
            timeout: Some(Duration::from_secs(args.timeout)),
            verify_size: args.verify_size,
            max_stderr: None,
        };
        let outcome = match &args.output {
            Some(p) => {
                let mut f =
                    tokio::fs::File::create(p).await.with_context(|| format!("cannot create `{}`", p.display()))?;
                run_exec(&cluster.client, &spec, &mut f).await
            }
            None => run_exec(&cluster.client, &spec, &mut tokio::io::stdout()).await,
        }?;
        std::io::stderr().write_all(&outcome.stderr)?;
        eprintln!(
            "kustody: exit {} · {} bytes of stdout, sha256 {}{} · {} · {:.1} ms",
            outcome.exit_code,
            outcome.stdout_bytes,
            outcome.stdout_sha256,
            match outcome.size_verified {
                Some(true) => " (size verified in the container)",
                Some(false) => " (size NOT verified: no report from the container)",
                None => "",
            },
            outcome.protocol,
            outcome.elapsed.as_secs_f64() * 1000.0
        );
        Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
    })
}

fn print_credential(t: &kustody_cluster::oauth::AccessToken) -> Result<()> {
    let out = serde_json::to_string_pretty(&kustody_cluster::oauth::exec_credential(t))?;
    writeln!(std::io::stdout().lock(), "{out}")?;
    Ok(())
}

pub fn token(args: TokenArgs) -> Result<ExitCode> {
    let started = Instant::now();
    match args.provider {
        Provider::Eks => {
            let cluster = args.cluster_name.as_deref().context("--cluster-name is required for --provider eks")?;
            let creds = runtime()?
                .block_on(kustody_cluster::eks::credentials(args.profile.as_deref(), args.role_arn.as_deref()))
                .map_err(|e| {
                    anyhow::anyhow!("no AWS credentials kustody can use in-process: the configured credentials are {e}")
                })?;
            let region = kustody_cluster::eks::region(args.region.as_deref(), args.profile.as_deref())
                .context("no AWS region: pass --region or set AWS_REGION")?;
            let t = kustody_cluster::eks::token(&creds, cluster, &region, std::time::SystemTime::now())
                .map_err(anyhow::Error::msg)?;
            print_credential(&t.access_token())?;
            if args.verbose {
                eprintln!(
                    "kustody: EKS token for {cluster} in {region} minted in {:.2} ms (credentials: {})",
                    started.elapsed().as_secs_f64() * 1000.0,
                    creds.source
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Provider::Gke => runtime()?.block_on(async {
            let (adc, origin) = kustody_cluster::gke::find().map_err(anyhow::Error::msg)?;
            let t = kustody_cluster::gke::access_token(&adc, std::time::SystemTime::now())
                .await
                .map_err(anyhow::Error::msg)?;
            print_credential(&t)?;
            if args.verbose {
                eprintln!(
                    "kustody: GKE access token minted in {:.2} ms ({} from {})",
                    started.elapsed().as_secs_f64() * 1000.0,
                    adc.describe(),
                    sanitize(&origin)
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        Provider::Aks => runtime()?.block_on(async {
            let cred = kustody_cluster::aks::resolve(&kustody_cluster::aks::Login {
                mode: args.login.clone(),
                tenant_id: args.tenant_id.clone(),
                client_id: args.client_id.clone(),
                plugin_env: Vec::new(),
            })
            .map_err(anyhow::Error::msg)?;
            let t = kustody_cluster::aks::access_token(&cred, &args.server_id, std::time::SystemTime::now())
                .await
                .map_err(anyhow::Error::msg)?;
            print_credential(&t)?;
            if args.verbose {
                eprintln!(
                    "kustody: AKS token for {} minted in {:.2} ms ({})",
                    sanitize(&args.server_id),
                    started.elapsed().as_secs_f64() * 1000.0,
                    sanitize(&cred.describe())
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}
