//! Support for the workspace's integration tests. Not shipped.
//!
//! Tests that read `../shared` (upstream rule corpora, samples, recordings) fail loudly when it
//! is missing under `CI=true` and print a clear skip notice otherwise; [`shared`] does both.

#![allow(clippy::panic, reason = "test support fails loudly")]

use std::path::PathBuf;
use std::process::Command;

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

/// `found`, or `None` after a skip notice naming what is missing and how to get it.
///
/// # Panics
///
/// When it is missing and `CI=true`: the test script installs every tool the tests use.
pub fn installed<T>(found: Option<T>, what: &str, how: &str) -> Option<T> {
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {what} is not installed ({how})");
        eprintln!("SKIP: {what} is not installed ({how})");
    }
    found
}

/// Runs the shell command `cleanup` once this test process has ended, however it ends (a
/// `static` server is never dropped; a panicking test may not drop its own): the servers a
/// test starts never outlive it. `what` names them in the warning when no watchdog can start.
pub fn after_this_process(cleanup: &str, what: &str) {
    let script = format!("while kill -0 {} 2>/dev/null; do sleep 1; done; {cleanup}", std::process::id());
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("warning: no watchdog for {what}: {e}");
    }
}

/// A file of this repository, as text (deploy manifests, fixtures).
///
/// # Panics
///
/// When it cannot be read: the test names a file that must exist.
pub fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to completion.
///
/// # Panics
///
/// When it cannot be started.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub mod http;
pub mod moto;
pub mod nats;
pub mod postgres;
pub mod webdriver;

/// A tmpfs of `size` (`256k`, `1m`) mounted for one test: a real full disk. Needs root (CI runs
/// the tests as root); elsewhere [`Tmpfs::mount`] prints a skip notice, and fails loudly under
/// `CI=true`. Unmounted (lazily) when dropped, also when the test fails.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// # Panics
    ///
    /// When no temporary directory can be made, or the mount fails with `CI=true`.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(d.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "mounting a tmpfs needs root (CI runs as root)");
            eprintln!("SKIP: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(Tmpfs(d))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A TCP port free on 127.0.0.1 right now.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
