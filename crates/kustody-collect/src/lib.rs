//! Evidence acquisition (`kustody collect`, `kustody verify`).
//!
//! - [`script`], [`frame`], [`procfs`], [`redact`]: pure — the collector script, the framing of
//!   its output, parsers for what it reads, redaction. Fuzzed and unit-tested without I/O.
//! - [`bundle`]: the evidence bundle on disk (hashed writes, manifest, `.tar.zst`, verify).
//! - [`acquire`]: the orchestration against a cluster (API context, collector exec, debug
//!   container, logs, tar copies, fleets).

#[cfg(feature = "cluster")]
pub mod acquire;
pub mod bundle;
pub mod frame;
pub mod procfs;
pub mod redact;
pub mod script;
