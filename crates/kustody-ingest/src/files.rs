//! Expanding command-line inputs into an ordered list of files.
//!
//! Directories are walked recursively. Within a directory, rotated audit logs are put in time
//! order, oldest first, from their names alone (opening every file to peek would cost a gzip
//! decode per file before the first event is read):
//!
//! * kube-apiserver (lumberjack) backups `audit-2024-01-02T03-04-05.678.log[.gz]` sort by the
//!   embedded timestamp, and come before the live `audit.log`;
//! * logrotate backups `audit.log.N[.gz]` come before `audit.log`, higher `N` first (older);
//! * everything else sorts by path, after the groups above within its directory.

use std::path::{Path, PathBuf};

use crate::IngestError;

/// One input: a file path, or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    Path(PathBuf),
    Stdin,
}

impl InputFile {
    pub fn display(&self) -> String {
        match self {
            InputFile::Path(p) => p.display().to_string(),
            InputFile::Stdin => "<stdin>".to_owned(),
        }
    }
}

/// Expands files, directories (recursively) and `-` into the files to read, in reading order.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Inputs, IngestError> {
    let mut out = Inputs::default();
    for input in inputs {
        if input.as_os_str() == "-" {
            out.files.push(InputFile::Stdin);
            continue;
        }
        let meta = std::fs::metadata(input).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IngestError::NotFound(input.display().to_string()),
            _ => IngestError::Io { path: input.display().to_string(), source: e },
        })?;
        if meta.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.files.push(InputFile::Path(input.clone()));
        }
    }
    Ok(out)
}

/// What to read, and the files found in directories that are evidently not logs (checksums,
/// signatures, notes, images): skipped and listed, never read as bad records by the thousand.
/// Files named explicitly are always read.
#[derive(Debug, Default)]
pub struct Inputs {
    pub files: Vec<InputFile>,
    pub skipped: Vec<PathBuf>,
}

const NOT_LOGS: &[&str] =
    &[".md", ".sha256", ".sha512", ".md5", ".sig", ".asc", ".pem", ".crt", ".png", ".jpg", ".jpeg", ".pdf", ".html"];

fn walk(dir: &Path, out: &mut Inputs) -> Result<(), IngestError> {
    let io = |e| IngestError::Io { path: dir.display().to_string(), source: e };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // hidden files: editor swap files, .DS_Store
        }
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() {
            dirs.push(path);
        } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
            let lower = name.to_string_lossy().to_ascii_lowercase();
            if NOT_LOGS.iter().any(|ext| lower.ends_with(ext)) {
                out.skipped.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort_by_cached_key(|p| rotation_key(p));
    out.files.extend(files.into_iter().map(InputFile::Path));
    dirs.sort();
    for d in dirs {
        walk(&d, out)?;
    }
    Ok(())
}

/// Sort key: (base name, age rank, order within the base, name). Lower sorts first = older.
fn rotation_key(path: &Path) -> (String, u8, String, String) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    // kube-apiserver (lumberjack): <base>-YYYY-MM-DDTHH-MM-SS[.mmm][.ext]
    if let Some(pos) = find_timestamp(stem) {
        let prefix = stem.get(..pos).unwrap_or("").trim_end_matches('-');
        let mut end = pos + 19;
        let after = stem.get(end..).unwrap_or("");
        let millis = after.strip_prefix('.').filter(|m| m.len() >= 3 && m.bytes().take(3).all(|b| b.is_ascii_digit()));
        if millis.is_some() {
            end += 4;
        }
        let ext = stem.get(end..).unwrap_or("");
        return (format!("{prefix}{ext}"), 0, stem.get(pos..end).unwrap_or("").to_owned(), name.clone());
    }
    // logrotate dateext: <base>-YYYYMMDD
    if let Some((base, date)) = stem.rsplit_once('-') {
        if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) {
            return (base.to_owned(), 0, date.to_owned(), name.clone());
        }
    }
    // logrotate: <base>.N, higher N older
    if let Some((base, n)) = stem.rsplit_once('.') {
        if !n.is_empty() && n.len() < 10 && n.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = n.parse().unwrap_or(0);
            return (base.to_owned(), 0, format!("{:020}", u64::MAX - n), name.clone());
        }
    }
    (stem.to_owned(), 1, String::new(), name.clone())
}

/// Finds `YYYY-MM-DDTHH-MM-SS` in a file name.
fn find_timestamp(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let pattern = b"dddd-dd-ddTdd-dd-dd";
    (0..b.len().saturating_sub(pattern.len() - 1)).find(|&i| {
        pattern.iter().enumerate().all(|(j, &p)| match (p, b.get(i + j)) {
            (b'd', Some(c)) => c.is_ascii_digit(),
            (p, Some(&c)) => p == c,
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_sort_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "audit.log",
            "audit-2024-01-02T00-00-00.000.log.gz",
            "audit-2024-01-01T00-00-00.000.log",
            "kube.log.1",
            "kube.log.2.gz",
            "kube.log",
            ".swp",
            "api.log-20240102.gz",
            "api.log-20240101",
            "api.log",
            "audit-2023-12-31T00-00-00.000",
            "audit",
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x.log"), "").unwrap();
        std::fs::write(dir.path().join("README.md"), "").unwrap();
        let inputs = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(inputs.skipped, [dir.path().join("README.md")]);
        let files = inputs.files;
        let names: Vec<String> = files
            .iter()
            .map(|f| match f {
                InputFile::Path(p) => p.strip_prefix(dir.path()).unwrap().display().to_string(),
                InputFile::Stdin => "-".into(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "api.log-20240101",
                "api.log-20240102.gz",
                "api.log",
                "audit-2023-12-31T00-00-00.000",
                "audit",
                "audit-2024-01-01T00-00-00.000.log",
                "audit-2024-01-02T00-00-00.000.log.gz",
                "audit.log",
                "kube.log.2.gz",
                "kube.log.1",
                "kube.log",
                "sub/x.log"
            ]
        );
    }

    #[test]
    fn missing_input_is_an_error() {
        assert!(matches!(expand_inputs(&["/nonexistent/x".into()]), Err(IngestError::NotFound(_))));
    }
}
