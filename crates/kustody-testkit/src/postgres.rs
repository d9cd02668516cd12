//! A throwaway PostgreSQL server for one test process: Debian's `postgresql` binaries, a data
//! directory in a temporary directory, a free port on 127.0.0.1, password authentication
//! (SCRAM) for TCP, `fsync` on (kustody refuses to acknowledge on a server without it). The
//! server stops, and its directory is removed, when the value is dropped.
//!
//! PostgreSQL refuses to run as root: as root (CI), the server runs as the `postgres` user
//! the Debian package creates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server. See the [module documentation](self).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    as_postgres: bool,
}

/// The directory holding `initdb`, `pg_ctl` and `createdb`, if PostgreSQL is installed.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").is_file() && p.join("pg_ctl").is_file() {
            return Some(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// Starts a server, or `None` with a skip notice when PostgreSQL is not installed.
    ///
    /// # Panics
    ///
    /// When it is not installed and `CI=true` (the test script installs it), or it fails to
    /// start.
    pub fn start() -> Option<Postgres> {
        let bin = crate::installed(bindir(), "PostgreSQL", "apt-get install postgresql; scripts/test does it")?;
        let dir = tempfile::Builder::new()
            .prefix("kustody-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let as_postgres = is_root();
        let password = format!("pw-{}-{}", std::process::id(), crate::free_port());
        std::fs::write(dir.path().join("pwfile"), &password).unwrap_or_else(|e| panic!("pwfile: {e}"));
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(ok.is_ok_and(|s| s.success()), "cannot give {} to the postgres user", dir.path().display());
        }
        let pg = Postgres { dir, bin, port: crate::free_port(), password, as_postgres };
        let data = pg.dir.path().join("data");
        let mut init = pg.cmd("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "kustody",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        ]);
        init.arg(format!("--pwfile={}", pg.dir.path().join("pwfile").display()));
        let r = crate::run(&mut init);
        assert_eq!(r.code, 0, "initdb failed: {}{}", r.stdout, r.stderr);
        pg.ctl("start");
        pg.watch();
        Some(pg)
    }

    /// Stops the server when this process ends, however it ends: a server kept in a `static`
    /// (one per test binary) is never dropped, and a test killed mid-way drops nothing. A
    /// shell polls this process and stops the server once it is gone.
    fn watch(&self) {
        let data = self.dir.path().join("data");
        let ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- '{}' -D '{}' -m immediate stop", ctl.display(), data.display())
        } else {
            format!("'{}' -D '{}' -m immediate stop", ctl.display(), data.display())
        };
        let dir = self.dir.path().display();
        crate::after_this_process(
            &format!("{stop} >/dev/null 2>&1; rm -rf '{dir}'"),
            &format!("the PostgreSQL server in {dir}"),
        );
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Runs `pg_ctl start|stop|restart` and waits for it.
    ///
    /// # Panics
    ///
    /// When it fails.
    pub fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let mut c = self.cmd("pg_ctl");
        c.arg("-D").arg(&data).args(["-w", "-t", "60", "-l"]).arg(self.dir.path().join("log"));
        if action == "stop" {
            c.args(["-m", "fast"]);
        }
        c.arg("-o").arg(format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c shared_buffers=32MB -c max_connections=200",
            self.port,
            self.dir.path().display()
        ));
        c.arg(action);
        let r = crate::run(&mut c);
        assert_eq!(
            r.code,
            0,
            "pg_ctl {action} failed: {}{}\n{}",
            r.stdout,
            r.stderr,
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the `kustody` superuser.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A connection URL for database `db` over TCP with the password (no TLS).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://kustody:{}@127.0.0.1:{}/{db}?sslmode=disable", self.password, self.port)
    }

    /// Creates database `db` (a name of letters, digits and `_`).
    ///
    /// # Panics
    ///
    /// When it cannot.
    pub fn create_db(&self, db: &str) {
        let mut c = Command::new(self.bin.join("createdb"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "kustody", db])
            .env("PGPASSWORD", &self.password);
        let r = crate::run(&mut c);
        assert_eq!(r.code, 0, "createdb {db}: {}{}", r.stdout, r.stderr);
    }

    /// The server's directory (data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.cmd("pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
