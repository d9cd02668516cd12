//! A throwaway moto server (AWS APIs in server mode: CloudWatch Logs, EKS, IAM, STS) for one
//! test process, on a free port of 127.0.0.1, and boto3 scripts run against it to set up what a
//! test needs (log groups, events, clusters, IAM users and keys).
//!
//! The Python: `$KUSTODY_MOTO_PYTHON`, else `target/moto/bin/python` (scripts/test installs
//! moto 5.2.5 there, pinned by hash).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server. See the [module documentation](self).
pub struct Moto {
    python: PathBuf,
    port: u16,
    child: Child,
    _log: tempfile::NamedTempFile,
}

/// The Python that has moto, if installed.
pub fn python() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("KUSTODY_MOTO_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/moto/bin/python"));
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Moto {
    /// Starts a server, or `None` with a skip notice when moto is not installed.
    ///
    /// # Panics
    ///
    /// When it is not installed and `CI=true` (the test script installs it), or it fails to
    /// start.
    pub fn start() -> Option<Moto> {
        let python = crate::installed(python(), "moto", "scripts/test installs it in target/moto")?;
        let port = crate::free_port();
        let log = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("moto log: {e}"));
        let out = log.reopen().unwrap_or_else(|e| panic!("moto log: {e}"));
        let err = log.reopen().unwrap_or_else(|e| panic!("moto log: {e}"));
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
        let m = Moto { python, port, child, _log: log };
        m.watch();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not listen on {port} in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    fn watch(&self) {
        crate::after_this_process(&format!("kill -9 {} 2>/dev/null", self.child.id()), "the moto server");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a Python script with `boto3` imported, `url` (this server), `logs`, `eks`, `iam`
    /// clients signed with `key`/`secret` in `region`; returns what it printed.
    ///
    /// # Panics
    ///
    /// When the script fails (its error is in the message).
    pub fn py(&self, key: &str, secret: &str, region: &str, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, time\nurl = {url:?}\nkw = dict(endpoint_url=url, region_name={region:?}, aws_access_key_id={key:?}, aws_secret_access_key={secret:?})\nlogs = boto3.client('logs', **kw)\neks = boto3.client('eks', **kw)\niam = boto3.client('iam', **kw)\n",
            url = self.url()
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .unwrap_or_else(|e| panic!("python: {e}"));
        assert!(out.status.success(), "boto3 script failed:\n{script}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
