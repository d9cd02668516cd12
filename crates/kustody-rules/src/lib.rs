//! kustody's rule engine: Falco rule files loaded, compiled and evaluated on audit events.
//!
//! The pipeline is `load → compile → evaluate`, and it does no I/O: callers hand in file
//! names and texts, and get back an [`Engine`] plus every [`Diagnostic`] found. One bad rule
//! never stops the others from loading (cedar and rust-analyzer return all errors, not the
//! first); callers decide whether diagnostics are fatal (`--strict`).
//!
//! Evaluation is a pure function of (compiled rules, event). Field names are resolved to ids
//! and value sets compiled when rules load; rules are indexed by the verb, resource,
//! subresource and stage they can match, so an event is only tested against candidates. The
//! plain evaluator in [`expr`] stays as the reference the optimised one is tested against.

pub mod allow;
pub mod cond;
pub mod correlate;
mod diag;
mod engine;
pub mod expr;
pub mod extract;
pub mod fields;
pub mod findings;
mod fnmatch;
pub mod live;
mod loader;
pub mod output;
pub mod prog;
pub mod route;
pub mod sigma;
pub mod testing;
pub use kustody_model::yaml;

pub use correlate::{CorrInput, CorrelationInfo, Correlator};
pub use diag::{Diagnostic, Severity};
pub use engine::{Alert, Engine, EngineOptions, IndexKey, RuleInfo, Scratch};
pub use fnmatch::Pattern;
pub use loader::{Loader, RuleSource, ENGINE_VERSION};
