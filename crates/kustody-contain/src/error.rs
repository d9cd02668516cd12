//! What can go wrong in a quarantine or a release, as variants callers match: an API error
//! (with its HTTP status and Kubernetes reason, through [`ClusterError`]), a refusal, missing
//! permissions, a failure part-way with what it means for the pod, an action log that cannot
//! be written (with its path).

use std::path::PathBuf;

use kustody_cluster::ClusterError;

use crate::plan::{Access, Step};

#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    /// Reading the cluster failed (the pod does not exist, a list is forbidden, …).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// `--honeypot NS[/SELECTOR]` that does not parse.
    #[error("--honeypot `{spec}`: {problem}")]
    Honeypot { spec: String, problem: String },
    /// The pod's `kustody.io/quarantine` annotation is not a kustody record.
    #[error("annotation kustody.io/quarantine is not a kustody record: {reason}")]
    BadRecord { reason: String },
    /// The plan cannot be carried out, even with `--force` (the honeypot namespace is missing).
    #[error("cannot quarantine pod/{pod}: {}", problems.join("; "))]
    Impossible { namespace: String, pod: String, problems: Vec<String> },
    /// The pod is one kustody does not quarantine without `--force`; nothing was changed.
    #[error(
        "refusing to quarantine pod/{pod} in {namespace}:\n{}\nnothing was changed; --force quarantines it anyway",
        refusals.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
    )]
    Refused { namespace: String, pod: String, refusals: Vec<String> },
    /// SelfSubjectAccessReview said no to some of the plan's writes; nothing was changed.
    #[error(
        "missing permissions: User \"{user}\" may not\n{}\nnothing was changed. The ClusterRole kustody-responder (deploy/rbac/) grants them.",
        missing.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n")
    )]
    MissingPermissions { user: String, missing: Vec<Access> },
    /// A request of the plan failed. `step` is where (policies, exclusions, the pod, the node,
    /// cleanup), `changed` whether earlier requests had changed something, and `advice` what it
    /// means for the pod and what to run.
    #[error("{error}\n{advice}")]
    Apply { error: ClusterError, step: Step, changed: bool, advice: String },
    /// The action log cannot be written: the action does not go on unlogged.
    #[error("cannot append to the action log `{}`: {source}", path.display())]
    ActionLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ContainError {
    /// The API error underneath, if any (reading, or a request that failed).
    pub fn cluster(&self) -> Option<&ClusterError> {
        match self {
            ContainError::Cluster(e) | ContainError::Apply { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The HTTP status of the API error underneath.
    pub fn status(&self) -> Option<u16> {
        self.cluster().and_then(ClusterError::status)
    }
}
