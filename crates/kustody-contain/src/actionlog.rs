//! The action log: one JSON object per line, appended for every containment action (planned,
//! applied, failed, verified), so who did what, when and why survives the incident.
//! Format: docs/CONTAINMENT.md.

use std::io::Write;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

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
}
