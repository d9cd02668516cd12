//! `kustody setup eks`: the read-only coverage check (kustody_cloud::setup).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{AwsArgs, ListFormat, SetupEksArgs};

/// The AWS endpoint and credential source of `--aws-*` flags.
pub fn aws_of(a: &AwsArgs) -> Result<(kustody_cloud::aws::Endpoint, kustody_cloud::aws::CredentialSource)> {
    let region = kustody_cluster::eks::region(a.aws_region.as_deref(), a.aws_profile.as_deref())
        .context("no AWS region: give --aws-region, or set AWS_REGION (or a region in the profile of ~/.aws/config)")?;
    Ok((
        kustody_cloud::aws::Endpoint { region, url: a.aws_endpoint.clone() },
        kustody_cloud::aws::CredentialSource { profile: a.aws_profile.clone(), role_arn: a.aws_role_arn.clone() },
    ))
}

pub fn eks(args: SetupEksArgs) -> Result<ExitCode> {
    let (endpoint, creds) = aws_of(&args.aws)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let check = rt.block_on(async {
        let http = kustody_cloud::http::Client::new(8 << 20, Duration::from_secs(30))?;
        let aws = kustody_cloud::aws::Aws::new(endpoint, creds, http);
        let now_ms = chrono::Utc::now().timestamp_millis();
        kustody_cloud::setup::check_eks(&aws, &args.cluster, now_ms).await.map_err(anyhow::Error::from)
    })?;
    match args.format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&check)?),
        ListFormat::Table => print!("{}", render(&check)),
    }
    Ok(if args.check && !check.ok() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn render(c: &kustody_cloud::setup::EksCheck) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let _ = writeln!(o, "EKS cluster {} ({})", c.cluster, c.region);
    let types = if c.enabled_log_types.is_empty() { "none".to_owned() } else { c.enabled_log_types.join(", ") };
    let _ = writeln!(o, "  control-plane logs enabled: {types}");
    let _ = writeln!(o, "  audit log on:               {}", yes(c.audit_enabled));
    let _ = writeln!(o, "  authenticator log on:       {}", yes(c.authenticator_enabled));
    let _ = writeln!(o, "  log group {}: {}", c.log_group, if c.log_group_exists { "exists" } else { "missing" });
    if c.log_group_exists {
        let kept = c.retention_days.map_or("forever".to_owned(), |d| format!("{d} days"));
        let _ = writeln!(o, "  kept:                       {kept}");
    }
    match (&c.newest_audit_stream, c.last_event_ms) {
        (Some(s), Some(ms)) => {
            let at = chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
            let _ = writeln!(o, "  newest audit stream:        {s} (last event {at})");
        }
        _ => {
            let _ = writeln!(o, "  newest audit stream:        none");
        }
    }
    let _ = writeln!(o, "  flowing:                    {}", yes(c.flowing));
    for (name, dest) in &c.subscriptions {
        let _ = writeln!(o, "  subscription filter:        {name} -> {dest}");
    }
    if c.problems.is_empty() {
        let _ = writeln!(
            o,
            "\nIn order. Read it live with: kustody serve --eks-cluster {} --aws-region {}",
            c.cluster, c.region
        );
    } else {
        let _ = writeln!(o, "\nMissing, and what kustody is blind to because of it:");
        for p in &c.problems {
            let _ = writeln!(o, "  - {p}");
        }
        if !c.fixes.is_empty() {
            let _ = writeln!(o, "\nTo fix (not run by kustody; review, then run them yourself):");
            for f in &c.fixes {
                let _ = writeln!(o, "  {f}");
            }
        }
    }
    o
}
