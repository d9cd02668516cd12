//! A throwaway NATS server with JetStream for one test process: a data directory in a
//! temporary directory, a free port on 127.0.0.1, token authentication, and
//! `sync_interval: always` (every message fsync'd before its acknowledgement: kustody's
//! receivers answer the apiserver only after that).
//!
//! The binary: `$KUSTODY_NATS_SERVER`, else `target/nats/nats-server` (scripts/test installs a
//! pinned release there), else `nats-server` on the PATH when it is 2.10 or newer (Debian 12's
//! 2.9 has no `sync_interval`: it fsyncs only every two minutes, so it is not used).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server. See the [module documentation](self).
pub struct Nats {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    token: String,
    child: Option<Child>,
}

/// `(major, minor)` of a `nats-server --version` line such as `nats-server: v2.15.1`.
fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The server binary to use, if one that supports `sync_interval` is installed.
pub fn binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("KUSTODY_NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/nats/nats-server"));
    candidates.push(PathBuf::from("nats-server"));
    candidates.into_iter().find(|b| version(b).is_some_and(|v| v >= (2, 10)))
}

impl Nats {
    /// Starts a server, or `None` with a skip notice when no suitable `nats-server` is
    /// installed.
    ///
    /// # Panics
    ///
    /// When none is installed and `CI=true` (the test script installs one), or it fails to
    /// start.
    pub fn start() -> Option<Nats> {
        let bin = crate::installed(binary(), "nats-server 2.10 or newer", "scripts/test installs one in target/nats")?;
        let dir = tempfile::Builder::new()
            .prefix("kustody-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let token = format!("nats-{}-{}", std::process::id(), crate::free_port());
        let mut n = Nats { dir, bin, port: crate::free_port(), token, child: None };
        let conf = format!(
            "listen: 127.0.0.1:{port}\nauthorization {{ token: \"{token}\" }}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n  max_file_store: 2GB\n  \
             max_memory_store: 64MB\n}}\n",
            port = n.port,
            token = n.token,
            store = n.dir.path().join("js").display()
        );
        std::fs::write(n.dir.path().join("nats.conf"), conf).unwrap_or_else(|e| panic!("nats.conf: {e}"));
        n.launch();
        n.watch();
        Some(n)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap_or_else(|e| panic!("nats log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("nats log: {e}"));
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        std::fs::write(self.dir.path().join("pid"), child.id().to_string()).unwrap_or_else(|e| panic!("pid: {e}"));
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "nats-server did not listen on {} in 30 s:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server when this process ends, however it ends (see
    /// [`crate::postgres::Postgres`]).
    fn watch(&self) {
        let dir = self.dir.path().display();
        crate::after_this_process(
            &format!("kill -9 $(cat '{dir}/pid') 2>/dev/null; rm -rf '{dir}'"),
            &format!("the NATS server in {dir}"),
        );
    }

    /// Kills the server (SIGKILL: what JetStream acknowledged must survive) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data (after [`Nats::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The authentication token.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (configuration, JetStream data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
