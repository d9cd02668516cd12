//! Errors that say what went wrong in the user's terms, and keep what callers match on: the
//! HTTP status and the Kubernetes `Status` reason of an API error, the URL, file or field of a
//! credential error. Credentials never reach any of these texts.

use std::path::PathBuf;
use std::time::Duration;

/// An error answer of the Kubernetes API: the HTTP status and the `Status` object's `reason`
/// (`Conflict`, `NotFound`, `Forbidden`, `Invalid`, …) and `message`, plus what kustody was
/// doing when it needed the call (`needed_for`, shown as "(needed to …)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStatus {
    /// HTTP status code (409, 404, …).
    pub code: u16,
    /// The `Status` reason, as the API server wrote it (may be empty).
    pub reason: String,
    /// The `Status` message.
    pub message: String,
    /// What the call was for, when the caller said so.
    pub needed_for: Option<String>,
}

impl std::fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.message;
        match self.code {
            401 => write!(f, "unauthorized: the cluster did not accept the credentials ({m})")?,
            403 => write!(f, "forbidden: {m}")?,
            404 => write!(f, "not found: {m}")?,
            400 => f.write_str(m)?,
            code => write!(f, "{code} {}: {m}", self.reason)?,
        }
        if let Some(w) = &self.needed_for {
            write!(f, " (needed to {w})")?;
        }
        Ok(())
    }
}

/// A failure to reach or use the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable configuration (kubeconfig, context, in-cluster).
    #[error("{0}")]
    Config(String),
    /// The API server answered with an error `Status`: match on [`ClusterError::status`],
    /// [`ClusterError::reason`] or the helpers (`is_conflict`, `is_not_found`, `is_forbidden`).
    #[error("{0}")]
    Api(ApiStatus),
    /// A request kustody could not even build (a bad path): a bug, never the server's answer.
    #[error("cannot build the request {what}: {reason}")]
    Request { what: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection or the answer's decoding failed.
    #[error("connection: {0}")]
    Transport(String),
}

impl ClusterError {
    /// Classify a kube-rs error.
    pub fn from_kube(e: kube::Error) -> ClusterError {
        match e {
            kube::Error::Api(s) => {
                ClusterError::Api(ApiStatus { code: s.code, reason: s.reason, message: s.message, needed_for: None })
            }
            other => ClusterError::Transport(other.to_string()),
        }
    }

    /// Say what the call was needed for (an API error then reads "… (needed to WHAT)").
    pub fn needed_to(self, what: &str) -> ClusterError {
        match self {
            ClusterError::Api(mut s) if s.needed_for.is_none() => {
                s.needed_for = Some(what.to_owned());
                ClusterError::Api(s)
            }
            other => other,
        }
    }

    /// The API error, if this is one.
    pub fn api(&self) -> Option<&ApiStatus> {
        match self {
            ClusterError::Api(s) => Some(s),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|s| s.code)
    }

    /// The Kubernetes `Status` reason of an API error (`Conflict`, `NotFound`, …).
    pub fn reason(&self) -> Option<&str> {
        self.api().map(|s| s.reason.as_str())
    }

    /// 409: the object changed since it was read (or already exists).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }
}

impl From<kube::Error> for ClusterError {
    fn from(e: kube::Error) -> ClusterError {
        ClusterError::from_kube(e)
    }
}

/// Why a native token (EKS, GKE, AKS) or a credential could not be had. The URL, file or field
/// concerned is kept; secrets never are.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not `https` (or `http` to loopback and metadata servers).
    #[error("refusing to send credentials to {url:?}: only https (or http to loopback and metadata servers)")]
    InsecureUrl { url: String },
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The endpoint could not be reached or its answer read.
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The endpoint answered with an error status; `message` is its own error text.
    #[error("{url}: {status}: {message}")]
    Endpoint { url: String, status: u16, message: String },
    /// The endpoint answered 2xx with something that is not what the protocol says.
    #[error("{url}: {problem}")]
    BadAnswer { url: String, problem: String },
    /// A file that cannot be read (credentials, token, cache).
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: larger than {limit}", path.display())]
    TooLarge { path: PathBuf, limit: &'static str },
    /// A credential file, response or output lacking a field or with a bad one. `origin`
    /// names where it came from (a file, an environment variable, an executable's output).
    #[error("{origin}: {problem}")]
    Field { origin: String, field: String, problem: String },
    /// A setting the credential needs is not configured (`no tenant`, `no AWS region`, …).
    #[error("{0}")]
    Missing(String),
    /// This credential kind is not minted in-process by this build (the plugin then runs).
    #[error("{0}")]
    Unsupported(String),
    /// The key or certificate cannot be used to sign.
    #[error("{0}")]
    Key(String),
    /// The credential executable (workload identity federation) failed.
    #[error("{0}")]
    Executable(String),
    /// Signing (SigV4, RS256) failed.
    #[error("signing: {0}")]
    Signing(String),
    /// What was being done, then why it failed ("the Google token request failed: …").
    #[error("{what} {source}")]
    Context {
        what: String,
        #[source]
        source: Box<CredentialError>,
    },
}

impl CredentialError {
    /// The field error for `origin` missing `field`: "ORIGIN: no `FIELD`".
    pub fn no_field(origin: &str, field: &str) -> CredentialError {
        CredentialError::Field { origin: origin.to_owned(), field: field.to_owned(), problem: format!("no `{field}`") }
    }

    pub fn field(origin: &str, field: &str, problem: impl Into<String>) -> CredentialError {
        CredentialError::Field { origin: origin.to_owned(), field: field.to_owned(), problem: problem.into() }
    }

    /// The HTTP status of an endpoint's error answer (also under a [`CredentialError::Context`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            CredentialError::Endpoint { status, .. } => Some(*status),
            CredentialError::Context { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The same error, with what was being done said first (`what` = "the Google token request
    /// failed:" reads "the Google token request failed: …").
    pub fn context(self, what: &str) -> CredentialError {
        CredentialError::Context { what: what.to_owned(), source: Box::new(self) }
    }
}
