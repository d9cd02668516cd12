//! `kustody rules check|list|fields`.

use std::process::ExitCode;

use anyhow::Result;
use kustody_rules::{EngineOptions, Severity};

use crate::cli::{CheckArgs, ListArgs, ListFormat};
use crate::render::sanitize;
use crate::ruleset;

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let (engine, diags) = ruleset::load(&args.files, args.with_default_rules, &EngineOptions::default())?;
    for d in &diags {
        println!("{}", sanitize(&d.to_string()));
    }
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diags.len() - errors;
    eprintln!("{} rules loaded, {errors} error(s), {warnings} warning(s)", engine.rules().count());
    Ok(if errors > 0 || (args.strict && warnings > 0) { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

pub fn list(args: ListArgs) -> Result<ExitCode> {
    let (engine, diags) = ruleset::load(&args.rules.rules, !args.rules.no_default_rules, &EngineOptions::default())?;
    for d in &diags {
        eprintln!("{}", sanitize(&d.to_string()));
    }
    match args.format {
        ListFormat::Json => {
            let rules: Vec<_> = engine
                .rules()
                .map(|r| {
                    serde_json::json!({
                        "rule": r.name, "priority": r.priority.falco_name(), "tags": r.tags,
                        "enabled": r.enabled, "source": r.source, "desc": r.desc,
                        "file": r.file.as_ref(), "line": r.line,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rules)?);
        }
        ListFormat::Table => {
            let names: Vec<String> = engine
                .rules()
                .map(|r| if r.enabled { r.name.clone() } else { format!("{} (disabled)", r.name) })
                .collect();
            let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(4);
            println!("{:<9} {:<width$}  TAGS", "PRIORITY", "RULE");
            for (r, name) in engine.rules().zip(&names) {
                println!("{:<9} {:<width$}  {}", r.priority.upper(), name, r.tags.join(","));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fields() -> Result<ExitCode> {
    for f in kustody_rules::fields::all_names() {
        println!("{f}");
    }
    Ok(ExitCode::SUCCESS)
}
