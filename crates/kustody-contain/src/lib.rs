//! Containment: `kustody quarantine` and `kustody release`.
//!
//! - [`flow`]: each action behind one call ([`quarantine`], [`release`]): read, plan, refuse,
//!   check permissions, log, send, verify, log; progress through [`flow::Progress`].
//! - [`plan`]: no I/O. From the pod and the Services, controllers and NetworkPolicies around it
//!   to the exact API requests, in an order where a failure never leaves a worse state:
//!   kustody's policies first, then other policies that must stop selecting quarantined pods,
//!   then the pod (labels, record, controller reference), then the node.
//! - [`apply`]: reads the cluster (concurrently), checks every planned request's permission
//!   with SelfSubjectAccessReview before changing anything, sends the requests; `verify.rs`
//!   reads back (EndpointSlices, owners, selecting policies, replacement, node; after a release,
//!   what happens to the pod next).
//! - [`actionlog`]: the append-only JSONL log of every action, stamped when written.
//! - [`ContainError`]: what callers match on.

pub mod actionlog;
pub mod apply;
pub mod error;
pub mod flow;
pub mod plan;
mod verify;

pub use error::ContainError;
pub use flow::{
    quarantine, release, Event, Progress, QuarantineOutcome, QuarantineStatus, ReleaseOutcome, ReleaseStatus,
    RunContext, RunOptions, Target,
};
