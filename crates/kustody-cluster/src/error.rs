//! Errors that say what went wrong in the user's terms.

/// A failure to reach or use the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable configuration (kubeconfig, context, in-cluster).
    #[error("{0}")]
    Config(String),
    /// The API refused: the message names the verb, resource and namespace, as RBAC does.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("unauthorized: the cluster did not accept the credentials ({0})")]
    Unauthorized(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Api(String),
    #[error("connection: {0}")]
    Transport(String),
}

impl ClusterError {
    /// Classify a kube-rs error.
    pub fn from_kube(e: kube::Error) -> ClusterError {
        match e {
            kube::Error::Api(s) => match s.code {
                401 => ClusterError::Unauthorized(s.message),
                403 => ClusterError::Forbidden(s.message),
                404 => ClusterError::NotFound(s.message),
                400 => ClusterError::BadRequest(s.message),
                code => ClusterError::Api(format!("{code} {}: {}", s.reason, s.message)),
            },
            other => ClusterError::Transport(other.to_string()),
        }
    }
}
