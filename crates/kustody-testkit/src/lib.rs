//! Support for the workspace's integration tests. Not shipped.
//!
//! Tests that read `../shared` (upstream rule corpora, samples, recordings) fail loudly when it
//! is missing under `CI=true` and print a clear skip notice otherwise; [`shared`] does both.

use std::path::PathBuf;

/// The `../shared` directory beside the repository, when `../shared/<probe>` exists.
///
/// # Panics
///
/// When it is missing and the environment has `CI=true`: CI must run every test.
pub fn shared(probe: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    let wanted = root.join(probe);
    if wanted.exists() {
        return Some(root);
    }
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true but {} is missing", wanted.display());
    eprintln!("SKIP: {} not found (tests that need ../shared run in CI)", wanted.display());
    None
}
pub mod http;
