//! The evidence bundle: a directory (or `.tar.zst` of it) holding artifacts and `MANIFEST.json`,
//! whose SHA-256 is printed and stored beside it in `MANIFEST.json.sha256`. Every artifact is
//! hashed while it is written. See docs/EVIDENCE.md.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CollectError;
pub use crate::verify::{verify, Report};

pub const FORMAT: &str = "kustody-evidence/1";
pub const MANIFEST: &str = "MANIFEST.json";
pub const MANIFEST_SHA: &str = "MANIFEST.json.sha256";

/// How an artifact was obtained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// An API request (exact URL, as sent).
    Api { method: String, url: String },
    /// A command in a container (exact argv; `stdin` names the artifact that was sent on stdin).
    Exec {
        namespace: String,
        pod: String,
        container: String,
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<String>,
    },
    /// Parsed from the sections of another exec's output (the collector's transcript).
    Collector {
        namespace: String,
        pod: String,
        container: String,
        /// Which collector sections (`stat`, `net tcp`, `files`, ...).
        sections: Vec<String>,
    },
    /// Written by kustody itself (the collector script).
    Kustody { what: String },
}

/// One file in the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub source: Source,
    pub started: String,
    pub finished: String,
    /// What was changed from the original bytes (redactions), if anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    /// Notes: truncation, parse problems, exit status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Something that could not be collected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    /// What was wanted (`pod/ns/name/container/processes`, `cluster/node`, ...).
    pub item: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub at: String,
}

/// The manifest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    pub kustody_version: String,
    /// The identity the API server sees (SelfSubjectReview).
    pub collector: serde_json::Value,
    /// API server URL, kubeconfig context.
    pub cluster: serde_json::Value,
    /// The command line, as run.
    pub command: Vec<String>,
    pub options: serde_json::Value,
    pub started: String,
    pub finished: String,
    /// Each pod: namespace, name, uid, node, containers and how each was collected.
    pub targets: Vec<serde_json::Value>,
    pub artifacts: Vec<Artifact>,
    pub failures: Vec<Failure>,
    /// Time per step, for the slow step to be visible.
    #[serde(default)]
    pub timings: serde_json::Value,
}

/// Evidence files are readable by their owner only (0600), never overwritten.
fn new_file(p: impl AsRef<Path>) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What has been recorded so far.
#[derive(Default)]
struct Entries {
    artifacts: Vec<Artifact>,
    failures: Vec<Failure>,
}

/// A bundle being written (directory). Cheap to clone; artifacts are recorded under a lock.
///
/// Nothing recorded is ever dropped: a lock poisoned by a task that panicked while holding it
/// is taken back (pushing to a list cannot leave it half-changed) and the panic is itself
/// recorded as a failure, so [`Bundle::seal`] always writes every entry.
#[derive(Clone)]
pub struct Bundle {
    root: PathBuf,
    inner: Arc<Mutex<Entries>>,
}

/// A writer that hashes what it writes (std).
pub struct HashingFile {
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl HashingFile {
    fn new(f: std::fs::File) -> HashingFile {
        HashingFile { file: std::io::BufWriter::with_capacity(256 * 1024, f), hasher: Sha256::new(), size: 0 }
    }

    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        Ok((format!("{:x}", self.hasher.finalize()), self.size))
    }
}

/// A tokio writer that hashes what it writes (for exec and log streams).
pub struct AsyncHashingFile {
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl tokio::io::AsyncWrite for AsyncHashingFile {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.file).poll_write(cx, buf) {
            std::task::Poll::Ready(Ok(n)) => {
                this.hasher.update(buf.get(..n).unwrap_or_default());
                this.size += n as u64;
                std::task::Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncHashingFile {
    pub async fn finish(mut self) -> std::io::Result<(String, u64)> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        Ok((format!("{:x}", self.hasher.finalize()), self.size))
    }
}

/// A bundle-relative path: no absolute paths, no `..`.
pub fn safe_rel(rel: &str) -> Result<PathBuf, CollectError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CollectError::UnsafePath(rel.to_owned()));
    }
    Ok(p.to_path_buf())
}

/// A name usable as one path component (pod and container names are DNS labels already; this
/// guards against anything else).
pub fn component(s: &str) -> String {
    let c: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if c.is_empty() || c == "." || c == ".." {
        "_".into()
    } else {
        c
    }
}

impl Bundle {
    /// Create the directory (it must not exist, or be empty).
    pub fn create(root: &Path) -> Result<Bundle, CollectError> {
        let io = |e| CollectError::io(root, e);
        if root.exists() && std::fs::read_dir(root).map_err(io)?.next().is_some() {
            return Err(CollectError::Exists { path: root.to_path_buf() });
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io)?;
        Ok(Bundle { root: root.to_path_buf(), inner: Arc::new(Mutex::new(Entries::default())) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, rel: &str) -> Result<PathBuf, CollectError> {
        let p = self.root.join(safe_rel(rel)?);
        if let Some(d) = p.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(|e| CollectError::io(d, e))?;
        }
        Ok(p)
    }

    /// Open `rel` for writing (create_new: nothing is overwritten).
    pub fn open(&self, rel: &str) -> Result<HashingFile, CollectError> {
        let p = self.full(rel)?;
        let f = new_file(&p).map_err(|e| CollectError::io(p, e))?;
        Ok(HashingFile::new(f))
    }

    pub async fn open_async(&self, rel: &str) -> Result<AsyncHashingFile, CollectError> {
        let p = self.full(rel)?;
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .await
            .map_err(|e| CollectError::io(p, e))?;
        Ok(AsyncHashingFile {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, f),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Remove a file that was opened but whose collection failed. A file that was never
    /// created is no error.
    pub fn discard(&self, rel: &str) -> Result<(), CollectError> {
        let p = self.root.join(safe_rel(rel)?);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CollectError::io(p, e)),
            _ => Ok(()),
        }
    }

    /// Write `bytes` as `rel` and record it. On failure the partial file is removed (and the
    /// error returned; the caller records it, or use [`Bundle::save`]).
    pub fn write(
        &self,
        rel: &str,
        bytes: &[u8],
        source: Source,
        started: String,
        notes: Vec<String>,
        redacted: Vec<String>,
    ) -> Result<(), CollectError> {
        let path = self.root.join(safe_rel(rel)?);
        let mut f = self.open(rel)?;
        let written = f.write_all(bytes).and_then(|()| f.finish());
        let (sha256, size) = match written {
            Ok(x) => x,
            Err(e) => {
                let e = CollectError::io(path, e);
                return Err(match self.discard(rel) {
                    Ok(()) => e,
                    Err(d) => CollectError::io(rel, std::io::Error::other(format!("{e}; removing it: {d}"))),
                });
            }
        };
        self.record(Artifact { path: rel.to_owned(), sha256, size, source, started, finished: now(), redacted, notes });
        Ok(())
    }

    /// [`Bundle::write`], and when that fails a [`Failure`] for `rel` with the reason: a
    /// write that fails (a full disk) is never lost silently. Returns whether it was stored.
    pub fn save(
        &self,
        rel: &str,
        bytes: &[u8],
        source: Source,
        started: String,
        notes: Vec<String>,
        redacted: Vec<String>,
    ) -> bool {
        match self.write(rel, bytes, source.clone(), started, notes, redacted) {
            Ok(()) => true,
            Err(e) => {
                self.fail(rel, format!("writing the artifact: {e}"), Some(source));
                false
            }
        }
    }

    /// The end of a streamed artifact: record it, or remove the partial file and record why.
    pub fn settle(
        &self,
        rel: &str,
        res: Result<(String, u64, Vec<String>), CollectError>,
        source: Source,
        started: String,
    ) {
        match res {
            Ok((sha256, size, notes)) => self.record(Artifact {
                path: rel.to_owned(),
                sha256,
                size,
                source,
                started,
                finished: now(),
                redacted: vec![],
                notes,
            }),
            Err(e) => {
                let reason = match self.discard(rel) {
                    Ok(()) => e.to_string(),
                    Err(d) => format!("{e} (the partial file could not be removed: {d})"),
                };
                self.fail(rel, reason, Some(source));
            }
        }
    }

    /// The recorded entries. A poisoned lock is taken back, and the panic recorded.
    fn entries(&self) -> MutexGuard<'_, Entries> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                self.inner.clear_poison();
                g.failures.push(Failure {
                    item: "bundle".into(),
                    reason: "a collection task panicked while recording an entry: the entries recorded before and \
                             after are kept, the one being recorded may be missing"
                        .into(),
                    source: None,
                    at: now(),
                });
                g
            }
        }
    }

    pub fn record(&self, a: Artifact) {
        self.entries().artifacts.push(a);
    }

    pub fn fail(&self, item: impl Into<String>, reason: impl Into<String>, source: Option<Source>) {
        self.entries().failures.push(Failure { item: item.into(), reason: reason.into(), source, at: now() });
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.entries().failures.clone()
    }

    pub fn artifacts(&self) -> Vec<Artifact> {
        self.entries().artifacts.clone()
    }

    /// Write the manifest (artifacts sorted by path) and its hash file; returns the hash.
    pub fn seal(&self, mut m: Manifest) -> Result<String, CollectError> {
        let (mut artifacts, failures) = {
            let g = self.entries();
            (g.artifacts.clone(), g.failures.clone())
        };
        artifacts.sort_by(|a, b| a.path.cmp(&b.path));
        m.format = FORMAT.into();
        m.artifacts = artifacts;
        m.failures = failures;
        let path = self.root.join(MANIFEST);
        let mut bytes = serde_json::to_vec_pretty(&m).map_err(|e| CollectError::io(&path, std::io::Error::other(e)))?;
        bytes.push(b'\n');
        let sha = format!("{:x}", Sha256::digest(&bytes));
        write_synced(&path, &bytes)?;
        write_synced(&self.root.join(MANIFEST_SHA), format!("{sha}  {MANIFEST}\n").as_bytes())?;
        Ok(sha)
    }
}

/// A new file holding `bytes`, synced; any failure names the file.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CollectError> {
    let mut f = new_file(path).map_err(|e| CollectError::io(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| CollectError::io(path, e))
}

/// Pack a sealed bundle directory into `out` (`.tar.zst`), files in sorted order with fixed
/// metadata; returns the archive's SHA-256 (also written to `out.sha256`).
pub fn pack(dir: &Path, out: &Path) -> Result<String, CollectError> {
    pack_io(dir, out).map_err(|e| CollectError::io(out, e))
}

fn pack_io(dir: &Path, out: &Path) -> std::io::Result<String> {
    let f = new_file(out)?;
    let enc = zstd::stream::write::Encoder::new(HashingFile::new(f), 3)?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    for rel in files {
        let name = format!("bundle/{rel}");
        let mut file = std::fs::File::open(dir.join(&rel))?;
        tar.append_file(&name, &mut file)?;
    }
    let (sha, _) = tar.into_inner()?.finish()?.finish()?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut side = std::ffi::OsString::from(out.as_os_str());
    side.push(".sha256");
    let mut side = new_file(PathBuf::from(side))?;
    side.write_all(format!("{sha}  {name}\n").as_bytes())?;
    side.sync_all()?;
    Ok(sha)
}

pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else {
            let rel = e.path().strip_prefix(root).map_err(std::io::Error::other)?.to_string_lossy().replace('\\', "/");
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Bundle {
        let b = Bundle::create(dir).unwrap();
        b.write("a/one.txt", b"hello", Source::Kustody { what: "test".into() }, now(), vec![], vec![]).unwrap();
        b.write("two.json", b"{}", Source::Api { method: "GET".into(), url: "/api/v1".into() }, now(), vec![], vec![])
            .unwrap();
        b.fail("cluster/node", "forbidden", None);
        b.seal(Manifest { kustody_version: "t".into(), ..Manifest::default() }).unwrap();
        b
    }

    #[test]
    fn verify_dir_detects_one_byte_missing_and_extra() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("b");
        sample(&d);
        let r = verify(&d);
        assert!(r.clean(), "{r:?}");
        assert_eq!((r.checked, r.ok, r.failures_recorded), (2, 2, 1));
        use std::os::unix::fs::PermissionsExt;
        for (p, mode) in
            [(d.join("a/one.txt"), 0o600), (d.join(MANIFEST), 0o600), (d.join("a"), 0o700), (d.clone(), 0o700)]
        {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, mode, "{}", p.display());
        }
        std::fs::write(d.join("a/one.txt"), b"hellO").unwrap();
        std::fs::write(d.join("extra"), b"x").unwrap();
        std::fs::remove_file(d.join("two.json")).unwrap();
        let r = verify(&d);
        assert_eq!(r.changed, vec!["a/one.txt"]);
        assert_eq!(r.missing, vec!["two.json"]);
        assert_eq!(r.extra, vec!["extra"]);
        assert!(!r.clean());
    }

    #[test]
    fn manifest_edit_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("b");
        sample(&d);
        let m = std::fs::read_to_string(d.join(MANIFEST)).unwrap().replace("\"t\"", "\"u\"");
        std::fs::write(d.join(MANIFEST), m).unwrap();
        let r = verify(&d);
        assert!(!r.manifest_hash_ok && !r.clean());
    }

    #[test]
    fn archive_round_trip_and_tamper() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("b");
        sample(&d);
        let out = t.path().join("b.tar.zst");
        pack(&d, &out).unwrap();
        assert!(t.path().join("b.tar.zst.sha256").exists());
        let r = verify(&out);
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.ok, 2);
        // an archive whose artifact differs by one byte
        std::fs::write(d.join("a/one.txt"), b"hellO").unwrap();
        let out2 = t.path().join("c.tar.zst");
        pack(&d, &out2).unwrap();
        assert_eq!(verify(&out2).changed, vec!["a/one.txt"]);
        // garbage is an error, not a panic
        std::fs::write(t.path().join("g.tar.zst"), b"not zstd").unwrap();
        assert!(!verify(&t.path().join("g.tar.zst")).errors.is_empty());
    }

    use kustody_testkit::Tmpfs;

    fn enospc(reason: &str) -> bool {
        reason.contains("No space left on device")
    }

    #[test]
    fn a_full_disk_is_a_recorded_failure_and_the_bundle_still_seals() {
        let Some(fs) = Tmpfs::mount("256k") else { return };
        let d = fs.path().join("b");
        let b = Bundle::create(&d).unwrap();
        let src = || Source::Kustody { what: "test".into() };
        assert!(b.save("small.txt", b"hello", src(), now(), vec![], vec![]));
        // one artifact larger than the disk: no artifact, no partial file, a failure
        let big = vec![7u8; 1 << 20];
        assert!(!b.save("pods/ns/p/containers/c/files.jsonl", &big, src(), now(), vec![], vec![]));
        assert!(!d.join("pods/ns/p/containers/c/files.jsonl").exists(), "the partial file is removed");
        let f = b.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].item, "pods/ns/p/containers/c/files.jsonl");
        assert!(enospc(&f[0].reason) && f[0].reason.contains("files.jsonl"), "{:?}", f[0]);
        assert_eq!(f[0].source, Some(src()));
        // the same for a streamed artifact (logs, tar copies): the error surfaces at the end
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let res = rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let mut f = b.open_async("log.txt").await?;
            f.write_all(&big).await.map_err(|e| CollectError::io("log.txt", e))?;
            f.finish().await.map(|(h, n)| (h, n, vec![])).map_err(|e| CollectError::io("log.txt", e))
        });
        assert!(res.is_err(), "a write to a full disk must fail");
        b.settle("log.txt", res, src(), now());
        assert!(!d.join("log.txt").exists());
        assert!(enospc(&b.failures()[1].reason), "{:?}", b.failures());
        // the removed partial files freed the space: the manifest is written and verifies
        b.seal(Manifest::default()).unwrap();
        let r = verify(&d);
        assert!(r.clean(), "{r:?}");
        assert_eq!((r.checked, r.failures_recorded), (1, 2));
    }

    #[test]
    fn a_manifest_that_cannot_be_written_is_a_hard_error() {
        let Some(fs) = Tmpfs::mount("128k") else { return };
        let b = Bundle::create(&fs.path().join("b")).unwrap();
        b.fail("x", "forbidden", None);
        // fill the disk with something else
        let mut filler = std::fs::File::create(fs.path().join("filler")).unwrap();
        let _ = filler.write_all(&vec![0u8; 1 << 20]);
        let e = b.seal(Manifest::default()).unwrap_err();
        match &e {
            CollectError::Io { path, source } => {
                assert!(path.ends_with(MANIFEST), "{e}");
                assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {e}");
            }
            other => panic!("not an I/O error: {other}"),
        }
    }

    #[test]
    fn a_file_not_open_for_writing_fails_the_write() {
        // a descriptor that cannot be written (like a closed one): the error reaches the caller
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        let mut h = HashingFile::new(std::fs::File::open(t.path().join("f")).unwrap());
        let res = h.write_all(&[1u8; 300 * 1024]).and_then(|()| h.finish().map(|_| ()));
        assert_eq!(res.unwrap_err().raw_os_error(), Some(9), "EBADF");
    }

    #[test]
    fn a_poisoned_lock_loses_nothing_and_the_panic_is_recorded() {
        let t = tempfile::tempdir().unwrap();
        let b = Bundle::create(&t.path().join("b")).unwrap();
        b.write("a.txt", b"a", Source::Kustody { what: "t".into() }, now(), vec![], vec![]).unwrap();
        b.fail("first", "forbidden", None);
        let b2 = b.clone();
        let joined = std::thread::spawn(move || {
            let _g = b2.inner.lock().unwrap();
            panic!("a task panics while holding the lock");
        })
        .join();
        assert!(joined.is_err() && b.inner.is_poisoned());
        b.write("b.txt", b"b", Source::Kustody { what: "t".into() }, now(), vec![], vec![]).unwrap();
        b.fail("second", "forbidden", None);
        b.seal(Manifest::default()).unwrap();
        let m: Manifest = serde_json::from_slice(&std::fs::read(t.path().join("b").join(MANIFEST)).unwrap()).unwrap();
        let paths: Vec<&str> = m.artifacts.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, vec!["a.txt", "b.txt"]);
        let items: Vec<&str> = m.failures.iter().map(|f| f.item.as_str()).collect();
        assert_eq!(items, vec!["first", "bundle", "second"], "{:?}", m.failures);
        assert!(m.failures[1].reason.contains("panicked"));
        assert!(verify(&t.path().join("b")).clean());
    }

    #[test]
    fn unsafe_paths_refused() {
        assert!(safe_rel("../x").is_err());
        assert!(safe_rel("/etc/passwd").is_err());
        assert!(safe_rel("a/./b").is_ok());
        assert!(safe_rel("").is_err());
        assert_eq!(component("../x y"), ".._x_y");
        assert_eq!(component(".."), "_");
    }
}
