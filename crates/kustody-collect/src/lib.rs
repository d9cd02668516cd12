//! Evidence acquisition (`kustody collect`, `kustody verify`).
//!
//! - [`script`], [`frame`], [`procfs`], [`redact`]: pure — the collector script, the framing of
//!   its output, parsers for what it reads, redaction. Fuzzed and unit-tested without I/O.
//! - [`bundle`]: the evidence bundle on disk (hashed writes, manifest, `.tar.zst`); [`verify`]
//!   checks one.
//! - [`kubelet`]: the files the kubelet manages in containers, told apart from drift.
//! - [`acquire()`] (feature `cluster`): the whole acquisition against a cluster behind one call,
//!   [`acquire()`] (API context, collector exec, debug container, logs, tar copies, fleets),
//!   with progress reported through a callback.
//! - [`error`]: [`CollectError`], the crate's error type.

#[cfg(feature = "cluster")]
pub mod acquire;
pub mod bundle;
pub mod error;
pub mod frame;
pub mod kubelet;
pub mod procfs;
pub mod redact;
pub mod script;
pub mod verify;

#[cfg(feature = "cluster")]
pub use acquire::{acquire, BundleOutcome, Options, Progress, Request, Targets};
pub use error::CollectError;
