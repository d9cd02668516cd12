//! Assembling the rule set: built-in rules first, then the user's files in order.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kustody_rules::{Diagnostic, Engine, EngineOptions};

/// kustody's own rules, compiled into the binary.
pub const BUILTIN: &[(&str, &str)] = &[("builtin:kustody.yaml", include_str!("../rules/kustody.yaml"))];

/// kustody's catalogue of well-known operators and managed-cloud identities (allow entries).
pub const BUILTIN_ALLOW: (&str, &str) = ("builtin:allow.yaml", include_str!("../rules/allow.yaml"));

/// The built-in rules' test cases: the examples in `kustody rules doc`.
pub const BUILTIN_CASES: &str = include_str!("../rules/kustody.cases.yaml");
pub const BUILTIN_OPTIONAL_CASES: &str = include_str!("../rules/kustody-optional.cases.yaml");

/// Expands files and directories (`*.yaml`/`*.yml`, sorted, not recursive into hidden dirs).
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read rules directory `{}`", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| e.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            entries.sort();
            for e in entries {
                out.push(read(&e)?);
            }
        } else {
            out.push(read(p)?);
        }
    }
    Ok(out)
}

fn read(p: &Path) -> Result<(String, String)> {
    const LIMIT: u64 = 64 << 20;
    let meta = std::fs::metadata(p).with_context(|| format!("cannot read rules file `{}`", p.display()))?;
    if meta.len() > LIMIT {
        anyhow::bail!("rules file `{}` is over the {LIMIT} byte limit", p.display());
    }
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read rules file `{}`", p.display()))?;
    Ok((p.display().to_string(), text))
}

/// Loads built-in rules (unless disabled) and the given files.
pub fn load(extra: &[PathBuf], defaults: bool, opts: &EngineOptions) -> Result<(Engine, Vec<Diagnostic>)> {
    let mut files: Vec<(String, String)> = Vec::new();
    if defaults {
        files.extend(BUILTIN.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())));
    }
    files.extend(rule_files(extra)?);
    Ok(Engine::load(&files, opts))
}

/// Loads the built-in allow catalogue (unless disabled) and the given allow files, in order.
pub fn load_allow(extra: &[PathBuf], defaults: bool) -> Result<(kustody_rules::allow::AllowList, Vec<Diagnostic>)> {
    let mut files: Vec<(String, String)> = Vec::new();
    if defaults {
        files.push((BUILTIN_ALLOW.0.to_owned(), BUILTIN_ALLOW.1.to_owned()));
    }
    for p in extra {
        files.push(read(p)?);
    }
    Ok(kustody_rules::allow::AllowList::load(&files))
}
