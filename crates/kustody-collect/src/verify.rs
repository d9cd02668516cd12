//! `kustody verify`: recompute every artifact of a bundle (directory or `.tar.zst`) against
//! its manifest, and the manifest against `MANIFEST.json.sha256`. Reads untrusted input
//! (fuzz target `bundle_verify`): bounded, never panics.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bundle::{safe_rel, walk, Manifest, FORMAT, MANIFEST, MANIFEST_SHA};

/// What `kustody verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub manifest_sha256: String,
    /// `MANIFEST.json.sha256` matched the manifest.
    pub manifest_hash_ok: bool,
    pub checked: usize,
    pub ok: usize,
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    /// Problems reading the bundle itself.
    pub errors: Vec<String>,
    pub failures_recorded: usize,
    pub case: Option<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.manifest_hash_ok
            && self.changed.is_empty()
            && self.missing.is_empty()
            && self.extra.is_empty()
            && self.errors.is_empty()
    }
}

/// Largest manifest `verify` reads.
const MAX_MANIFEST: u64 = 256 << 20;

fn hash_reader(r: &mut dyn Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
    Ok((format!("{:x}", h.finalize()), n))
}

fn check_manifest(bytes: &[u8], sha_file: Option<&str>, report: &mut Report) -> Option<Manifest> {
    report.manifest_sha256 = format!("{:x}", Sha256::digest(bytes));
    match sha_file {
        Some(t) => {
            let stated = t.split_whitespace().next().unwrap_or_default();
            report.manifest_hash_ok = stated.eq_ignore_ascii_case(&report.manifest_sha256);
            if !report.manifest_hash_ok {
                report.changed.push(MANIFEST.into());
            }
        }
        None => {
            report.missing.push(MANIFEST_SHA.into());
        }
    }
    match serde_json::from_slice::<Manifest>(bytes) {
        Ok(m) if m.format == FORMAT => {
            report.failures_recorded = m.failures.len();
            report.case = m.case.clone();
            Some(m)
        }
        Ok(m) => {
            report.errors.push(format!("{MANIFEST}: format {:?}, expected {FORMAT}", m.format));
            None
        }
        Err(e) => {
            report.errors.push(format!("{MANIFEST}: {e}"));
            None
        }
    }
}

/// Recompute every artifact of a bundle directory or `.tar.zst`.
pub fn verify(path: &Path) -> Report {
    let mut report = Report::default();
    if path.is_dir() {
        verify_dir(path, &mut report);
    } else {
        if let Err(e) = verify_archive(path, &mut report) {
            report.errors.push(format!("{}: {e}", path.display()));
        }
    }
    report.changed.sort();
    report.missing.sort();
    report.extra.sort();
    report
}

fn read_limited(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(p)?.take(MAX_MANIFEST).read_to_end(&mut v)?;
    Ok(v)
}

fn verify_dir(dir: &Path, report: &mut Report) {
    let bytes = match read_limited(&dir.join(MANIFEST)) {
        Ok(b) => b,
        Err(e) => {
            report.errors.push(format!("{}: {e}", dir.join(MANIFEST).display()));
            return;
        }
    };
    let sha = std::fs::read_to_string(dir.join(MANIFEST_SHA)).ok();
    let Some(m) = check_manifest(&bytes, sha.as_deref(), report) else { return };
    let mut present = Vec::new();
    if let Err(e) = walk(dir, dir, &mut present) {
        report.errors.push(format!("{}: {e}", dir.display()));
    }
    let mut listed = std::collections::BTreeSet::new();
    for a in &m.artifacts {
        listed.insert(a.path.clone());
        report.checked += 1;
        let Ok(rel) = safe_rel(&a.path) else {
            report.errors.push(format!("{MANIFEST}: unsafe artifact path {:?}", a.path));
            continue;
        };
        match std::fs::File::open(dir.join(rel)).and_then(|mut f| hash_reader(&mut f)) {
            Ok((h, n)) if h == a.sha256 && n == a.size => report.ok += 1,
            Ok(_) => report.changed.push(a.path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.missing.push(a.path.clone()),
            Err(e) => report.errors.push(format!("{}: {e}", a.path)),
        }
    }
    for p in present {
        if p != MANIFEST && p != MANIFEST_SHA && !listed.contains(&p) {
            report.extra.push(p);
        }
    }
}

fn verify_archive(path: &Path, report: &mut Report) -> std::io::Result<()> {
    // one pass: hash every entry, then compare with the manifest found among them
    let f = std::fs::File::open(path)?;
    let dec = zstd::stream::read::Decoder::new(f)?;
    let mut ar = tar::Archive::new(dec);
    let mut seen: std::collections::BTreeMap<String, (String, u64)> = std::collections::BTreeMap::new();
    let mut manifest = None;
    let mut manifest_sha = None;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let rel = name.strip_prefix("bundle/").unwrap_or(&name).to_owned();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if rel == MANIFEST {
            let mut v = Vec::new();
            (&mut entry).take(MAX_MANIFEST).read_to_end(&mut v)?;
            manifest = Some(v);
        } else if rel == MANIFEST_SHA {
            let mut v = String::new();
            (&mut entry).take(4096).read_to_string(&mut v)?;
            manifest_sha = Some(v);
        } else {
            let h = hash_reader(&mut entry)?;
            seen.insert(rel, h);
        }
    }
    let Some(bytes) = manifest else {
        report.errors.push(format!("{}: no {MANIFEST} in the archive", path.display()));
        return Ok(());
    };
    let Some(m) = check_manifest(&bytes, manifest_sha.as_deref(), report) else { return Ok(()) };
    for a in &m.artifacts {
        report.checked += 1;
        match seen.remove(&a.path) {
            Some((h, n)) if h == a.sha256 && n == a.size => report.ok += 1,
            Some(_) => report.changed.push(a.path.clone()),
            None => report.missing.push(a.path.clone()),
        }
    }
    report.extra.extend(seen.into_keys());
    Ok(())
}
