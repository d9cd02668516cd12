//! The action log: one JSON object per line, appended for every containment action (planned,
//! applied, failed, verified), so who did what, when and why survives the incident.
//! Format: docs/CONTAINMENT.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, SubsecRound, Utc};

use crate::error::ContainError;

/// `$KUSTODY_ACTION_LOG`, else `$XDG_STATE_HOME/kustody/actions.jsonl`, else
/// `~/.local/state/kustody/actions.jsonl`, else `./kustody-actions.jsonl`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUSTODY_ACTION_LOG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("kustody/actions.jsonl");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(h).join(".local/state/kustody/actions.jsonl");
    }
    PathBuf::from("kustody-actions.jsonl")
}

/// Append one entry and flush it to disk before returning.
pub fn append(path: &Path, entry: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&line)?;
    f.sync_data()
}

/// An action log for one run: every entry gets its `time` when it is written, never earlier
/// than the entry before it (the wall clock can step back; the log's order cannot).
#[derive(Debug)]
pub struct ActionLog {
    path: PathBuf,
    last: Mutex<Option<DateTime<Utc>>>,
}

impl ActionLog {
    pub fn new(path: PathBuf) -> ActionLog {
        ActionLog { path, last: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stamp `time` and append (fsynced). An entry that cannot be written is an error: the
    /// action does not go on unlogged.
    pub fn write(&self, entry: &mut serde_json::Value) -> Result<(), ContainError> {
        self.write_at(entry, Utc::now())
    }

    fn write_at(&self, entry: &mut serde_json::Value, now: DateTime<Utc>) -> Result<(), ContainError> {
        let now = now.trunc_subsecs(3);
        let t = {
            // a poisoned lock only means another writer panicked; the last time is still valid
            let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = last.map_or(now, |l| l.max(now));
            *last = Some(t);
            t
        };
        if let Some(o) = entry.as_object_mut() {
            o.insert("time".into(), serde_json::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        }
        append(&self.path, entry).map_err(|source| ContainError::ActionLog { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    #[test]
    fn appends_lines() {
        let dir = std::env::temp_dir().join(format!("kustody-actionlog-{}", std::process::id()));
        let p = dir.join("sub/actions.jsonl");
        super::append(&p, &serde_json::json!({"a": 1})).unwrap();
        super::append(&p, &serde_json::json!({"a": 2})).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn times_are_stamped_on_write_and_never_go_back() {
        let dir = tempfile_dir("mono");
        let log = super::ActionLog::new(dir.join("a.jsonl"));
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let mut a = serde_json::json!({"outcome": "applying", "time": "stale"});
        log.write_at(&mut a, t("2026-01-01T10:00:00.500Z")).unwrap();
        let mut b = serde_json::json!({"outcome": "verified"});
        // the clock stepped back between the two entries
        log.write_at(&mut b, t("2026-01-01T09:59:59.000Z")).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("a.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["time"], "2026-01-01T10:00:00.500Z");
        assert_eq!(lines[1]["time"], "2026-01-01T10:00:00.500Z");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_log_is_an_error_naming_the_path() {
        let dir = tempfile_dir("ro");
        // a directory where the file should be
        let p = dir.join("log");
        std::fs::create_dir_all(&p).unwrap();
        let log = super::ActionLog::new(p.clone());
        let e = log.write(&mut serde_json::json!({})).unwrap_err();
        assert!(matches!(&e, crate::ContainError::ActionLog { path, .. } if *path == p), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kustody-actionlog-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
