//! The error type of the crate. What fails while one item is collected becomes a
//! [`Failure`](crate::bundle::Failure) in the manifest (its message is the error's text) and
//! collection goes on; what stops a whole acquisition (the output exists, the cluster cannot be
//! reached, the manifest cannot be written) is returned to the caller.

use std::path::PathBuf;

/// What went wrong, in variants callers can match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// Reading or writing a file of the bundle or of the output (`path` names it).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The output already holds something: evidence is never overwritten.
    #[error("{} exists; evidence is never overwritten", path.display())]
    Exists { path: PathBuf },
    /// A path inside the bundle that would leave it (absolute, `..`, empty).
    #[error("unsafe path in bundle: `{0}`")]
    UnsafePath(String),
    /// An option that cannot be used, with the reason.
    #[error("{option} `{value}`: {reason}")]
    InvalidOption { option: &'static str, value: String, reason: String },
    /// No pod matched the label selector.
    #[error("no pod matches `{selector}` in {scope}")]
    NoPodMatches { selector: String, scope: String },
    /// The API refused, or could not be reached (kustody-cluster's error, unchanged).
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Cluster(#[from] kustody_cluster::ClusterError),
    /// A command in a container could not run or its stream broke.
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Exec(#[from] kustody_cluster::exec::ExecError),
    /// An API answer that is not the JSON expected.
    #[error("{url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The ephemeral debug container could not be started or used.
    #[error("debug container {name} ({image}): {reason}")]
    DebugContainer { name: String, image: String, reason: String },
    /// A collection task ended by panicking (a bug); what it had recorded is kept.
    #[error("{task}: the collection task panicked ({message})")]
    TaskPanicked { task: String, message: String },
}

impl CollectError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> CollectError {
        CollectError::Io { path: path.into(), source }
    }
}

/// The result type of the crate.
pub type Result<T, E = CollectError> = std::result::Result<T, E>;
