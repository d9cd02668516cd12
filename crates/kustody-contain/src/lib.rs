//! Containment: `kustody quarantine` and `kustody release`.
//!
//! - [`plan`]: no I/O. From the pod and the Services, controllers and NetworkPolicies around it
//!   to the exact API requests, in an order where a failure never leaves a worse state:
//!   kustody's policies first, then other policies that must stop selecting quarantined pods,
//!   then the pod (labels, record, controller reference), then the node.
//! - [`apply`]: reads the cluster (concurrently), checks every planned request's permission
//!   with SelfSubjectAccessReview before changing anything, sends the requests, and verifies by
//!   reading back (EndpointSlices, owners, selecting policies, replacement, node).
//! - [`actionlog`]: the append-only JSONL log of every action.

pub mod actionlog;
pub mod apply;
pub mod plan;
