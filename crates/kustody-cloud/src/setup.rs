//! `kustody setup eks --cluster NAME [--check]`: whether a cluster's audit log is on and
//! reaching CloudWatch Logs, what kustody is blind to otherwise, and the exact command that
//! would fix it. Read-only: the fix is printed, never applied.
//!
//! Calls: EKS DescribeCluster (`logging.clusterLogging`), CloudWatch Logs DescribeLogGroups
//! (the group and its retention), DescribeLogStreams (newest streams first: when the audit log
//! last arrived) and DescribeSubscriptionFilters (whether something else already forwards it).

use serde::Serialize;

use crate::aws::{Aws, AwsError, Kind};
use crate::cloudwatch::Group;

/// How recently the newest audit stream must have had an event to count as flowing.
pub const FLOWING_WITHIN_MS: i64 = 15 * 60 * 1000;

/// What `setup eks` found.
#[derive(Debug, Clone, Serialize)]
pub struct EksCheck {
    pub cluster: String,
    pub region: String,
    /// Control-plane log types enabled (`api`, `audit`, `authenticator`…).
    pub enabled_log_types: Vec<String>,
    pub audit_enabled: bool,
    pub authenticator_enabled: bool,
    pub log_group: String,
    pub log_group_exists: bool,
    /// The group's retention (days); `None`: kept forever.
    pub retention_days: Option<i64>,
    /// The newest audit stream and when its last event arrived (ms since the epoch).
    pub newest_audit_stream: Option<String>,
    pub last_event_ms: Option<i64>,
    pub flowing: bool,
    /// Subscription filters on the group (name → destination).
    pub subscriptions: Vec<(String, String)>,
    /// What is wrong, one line each, and what kustody is blind to because of it.
    pub problems: Vec<String>,
    /// Commands that would fix it (printed, never run).
    pub fixes: Vec<String>,
}

impl EksCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `cluster` at `now_ms`.
///
/// # Errors
///
/// When DescribeCluster fails (a missing cluster, no permission, no credentials).
pub async fn check_eks(aws: &Aws, cluster: &str, now_ms: i64) -> Result<EksCheck, AwsError> {
    let region = aws.endpoint.region.clone();
    let name = crate::http_path_segment(cluster);
    let c = aws.rest_get("eks", "DescribeCluster", &format!("/clusters/{name}")).await?;
    let mut enabled = Vec::new();
    for entry in c.pointer("/cluster/logging/clusterLogging").and_then(|v| v.as_array()).into_iter().flatten() {
        if entry.get("enabled").and_then(serde_json::Value::as_bool) == Some(true) {
            for t in entry.get("types").and_then(|t| t.as_array()).into_iter().flatten() {
                if let Some(t) = t.as_str() {
                    enabled.push(t.to_owned());
                }
            }
        }
    }
    enabled.sort();
    enabled.dedup();
    let group = Group::of_eks_cluster(cluster);
    let mut check = EksCheck {
        cluster: cluster.to_owned(),
        region: region.clone(),
        audit_enabled: enabled.iter().any(|t| t == "audit"),
        authenticator_enabled: enabled.iter().any(|t| t == "authenticator"),
        enabled_log_types: enabled,
        log_group: group.name.clone(),
        log_group_exists: false,
        retention_days: None,
        newest_audit_stream: None,
        last_event_ms: None,
        flowing: false,
        subscriptions: Vec::new(),
        problems: Vec::new(),
        fixes: Vec::new(),
    };
    let groups = aws
        .json_call("logs", "Logs_20140328.DescribeLogGroups", &serde_json::json!({ "logGroupNamePrefix": group.name }))
        .await?;
    if let Some(g) = groups
        .get("logGroups")
        .and_then(|g| g.as_array())
        .into_iter()
        .flatten()
        .find(|g| g.get("logGroupName").and_then(|n| n.as_str()) == Some(group.name.as_str()))
    {
        check.log_group_exists = true;
        check.retention_days = g.get("retentionInDays").and_then(serde_json::Value::as_i64);
    }
    if check.log_group_exists {
        // newest streams first (a name prefix cannot be combined with this order)
        let streams = aws
            .json_call(
                "logs",
                "Logs_20140328.DescribeLogStreams",
                &serde_json::json!({ "logGroupName": group.name, "orderBy": "LastEventTime", "descending": true, "limit": 50 }),
            )
            .await?;
        let newest = streams
            .get("logStreams")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .filter(|s| {
                s.get("logStreamName").and_then(|n| n.as_str()).is_some_and(|n| n.starts_with(&group.stream_prefix))
            })
            .filter_map(|s| {
                let name = s.get("logStreamName")?.as_str()?.to_owned();
                let last = s
                    .get("lastIngestionTime")
                    .or_else(|| s.get("lastEventTimestamp"))
                    .and_then(serde_json::Value::as_i64)?;
                Some((name, last))
            })
            .max_by_key(|(_, last)| *last);
        if let Some((name, last)) = newest {
            check.flowing = now_ms - last <= FLOWING_WITHIN_MS;
            check.newest_audit_stream = Some(name);
            check.last_event_ms = Some(last);
        }
        match aws
            .json_call(
                "logs",
                "Logs_20140328.DescribeSubscriptionFilters",
                &serde_json::json!({ "logGroupName": group.name }),
            )
            .await
        {
            Ok(v) => {
                for f in v.get("subscriptionFilters").and_then(|s| s.as_array()).into_iter().flatten() {
                    let s = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                    check.subscriptions.push((s("filterName"), s("destinationArn")));
                }
            }
            // not needed for the verdict
            Err(e) if e.kind == Kind::Denied || e.kind == Kind::Invalid => {}
            Err(e) => return Err(e),
        }
    }
    let fix_logging = |types: &str| {
        format!(
            "aws eks update-cluster-config --region {region} --name {cluster} --logging '{{\"clusterLogging\":[{{\"types\":[{types}],\"enabled\":true}}]}}'"
        )
    };
    if !check.audit_enabled {
        check.problems.push(
            "the audit log is off: kustody sees no API request of this cluster (no secret read, exec, RBAC change, \
             workload change or anonymous access); only Falco's runtime alerts would reach it"
                .into(),
        );
        let types = if check.authenticator_enabled { "\"audit\"" } else { "\"audit\",\"authenticator\"" };
        check.fixes.push(fix_logging(types));
    } else if !check.log_group_exists {
        check.problems.push(format!(
            "audit logging is on but the log group {} does not exist yet (EKS creates it with the first event; \
             check the IAM permissions of the cluster's logging if it never appears)",
            group.name
        ));
    } else if !check.flowing {
        check.problems.push(match check.last_event_ms {
            Some(ms) => format!(
                "no audit event reached {} in the last {} minutes (the newest arrived {} minutes ago): kustody would see nothing new",
                group.name,
                FLOWING_WITHIN_MS / 60_000,
                (now_ms - ms) / 60_000
            ),
            None => format!("{} has no {}* stream: no audit event has arrived", group.name, group.stream_prefix),
        });
    }
    if check.audit_enabled && !check.authenticator_enabled {
        check.problems.push(
            "the authenticator log is off: which IAM role or user stood behind a Kubernetes user name (aws-iam-authenticator's \
             mapping) is not recorded"
                .into(),
        );
        check.fixes.push(fix_logging("\"authenticator\""));
    }
    if let Some(days) = check.retention_days.filter(|d| *d < 90) {
        check.problems.push(format!(
            "{} keeps events {days} days: an investigation that starts later finds nothing (90 days or more is usual)",
            group.name
        ));
        check.fixes.push(format!(
            "aws logs put-retention-policy --region {region} --log-group-name {} --retention-in-days 365",
            group.name
        ));
    }
    Ok(check)
}
