//! Cluster access for kustody.
//!
//! - [`config`]: which cluster, as whom, in which namespace, with kubectl's precedence rules
//!   (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster), and recognition of the EKS, GKE
//!   and AKS credential plugins.
//! - [`exec`]: running a command in a container over the exec WebSocket protocol (v5 and v4),
//!   streaming stdout into any sink while hashing it.
//!
//! - [`error`]: [`ClusterError`] (API errors keep the HTTP status and the Kubernetes reason) and
//!   [`CredentialError`] (native tokens: the URL, file or field, never the secret).
//!
//! Clients are kube-rs clients; exec uses kube-rs's connection (TLS, authentication, upgrade)
//! and kustody's own message loop, so output goes straight to the sink without intermediate
//! pipes.

pub mod aks;
pub mod config;
pub mod eks;
pub mod error;
pub mod exec;
pub mod gke;
pub mod identity;
pub mod oauth;
pub mod refresh;
pub mod select;
pub mod wif;

pub use config::{Cluster, ClusterOptions};
pub use error::{ApiStatus, ClusterError, CredentialError};
