//! `kustody rules check|list|fields|doc`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use kustody_rules::{Engine, EngineOptions, Severity};

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
    let rules = engine.rules().filter(|r| !r.hidden).count() + engine.correlations().count();
    eprintln!("{rules} rules loaded, {errors} error(s), {warnings} warning(s)");
    Ok(if errors > 0 || (args.strict && warnings > 0) { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// One listed item: a rule or a correlation.
struct Item {
    name: String,
    priority: kustody_model::Priority,
    tags: Vec<String>,
    enabled: bool,
    source: String,
    desc: String,
    file: String,
    line: u32,
    correlation: bool,
}

fn items(engine: &Engine) -> Vec<Item> {
    let mut out: Vec<Item> = engine
        .rules()
        .filter(|r| !r.hidden)
        .map(|r| Item {
            name: r.name.clone(),
            priority: r.priority,
            tags: r.tags.clone(),
            enabled: r.enabled,
            source: r.source.clone(),
            desc: r.desc.clone(),
            file: r.file.to_string(),
            line: r.line,
            correlation: false,
        })
        .collect();
    out.extend(engine.correlations().map(|c| Item {
        name: c.name.clone(),
        priority: c.priority,
        tags: c.tags.clone(),
        enabled: c.enabled,
        source: "k8s_audit".into(),
        desc: c.desc.clone(),
        file: c.file.to_string(),
        line: c.line,
        correlation: true,
    }));
    out
}

/// `T1234` or `T1234.001`.
fn is_technique(tag: &str) -> bool {
    let b = tag.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    match b.len() {
        5 => b.first() == Some(&b'T') && b.get(1..).is_some_and(digits),
        9 => {
            b.first() == Some(&b'T')
                && b.get(1..5).is_some_and(digits)
                && b.get(5) == Some(&b'.')
                && b.get(6..).is_some_and(digits)
        }
        _ => false,
    }
}

/// Names of the MITRE ATT&CK (Containers matrix) techniques kustody's rules use.
fn technique_name(id: &str) -> &'static str {
    match id {
        "T1036.005" => "Masquerading: Match Legitimate Name or Location",
        "T1053.007" => "Scheduled Task/Job: Container Orchestration Job",
        "T1069" => "Permission Groups Discovery",
        "T1070" => "Indicator Removal",
        "T1078" => "Valid Accounts",
        "T1078.001" => "Valid Accounts: Default Accounts",
        "T1098" => "Account Manipulation",
        "T1133" => "External Remote Services",
        "T1204.003" => "User Execution: Malicious Image",
        "T1525" => "Implant Internal Image",
        "T1528" => "Steal Application Access Token",
        "T1546" => "Event Triggered Execution",
        "T1550.001" => "Use Alternate Authentication Material: Application Access Token",
        "T1552" => "Unsecured Credentials",
        "T1552.007" => "Unsecured Credentials: Container API",
        "T1562.001" => "Impair Defenses: Disable or Modify Tools",
        "T1572" => "Protocol Tunneling",
        "T1609" => "Container Administration Command",
        "T1610" => "Deploy Container",
        "T1611" => "Escape to Host",
        "T1613" => "Container and Resource Discovery",
        "T1649" => "Steal or Forge Authentication Certificates",
        _ => "",
    }
}

fn coverage(items: &[Item]) -> BTreeMap<String, Vec<&Item>> {
    let mut by: BTreeMap<String, Vec<&Item>> = BTreeMap::new();
    for it in items {
        for t in it.tags.iter().filter(|t| is_technique(t)) {
            by.entry(t.clone()).or_default().push(it);
        }
    }
    by
}

pub fn list(args: ListArgs) -> Result<ExitCode> {
    let (engine, diags) = ruleset::load(&args.rules.rules, !args.rules.no_default_rules, &EngineOptions::default())?;
    for d in &diags {
        eprintln!("{}", sanitize(&d.to_string()));
    }
    let items = items(&engine);
    let mut out = String::new();
    if args.mitre {
        let cov = coverage(&items);
        match args.format {
            ListFormat::Json => {
                let v: Vec<_> = cov
                    .iter()
                    .map(|(t, rules)| {
                        serde_json::json!({"technique": t, "name": technique_name(t),
                            "rules": rules.iter().map(|r| &r.name).collect::<Vec<_>>()})
                    })
                    .collect();
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
            }
            ListFormat::Table => {
                for (t, rules) in &cov {
                    let _ = writeln!(out, "{t:<10} {}", technique_name(t));
                    for r in rules {
                        let off = if r.enabled { "" } else { " (disabled)" };
                        let _ = writeln!(out, "           {} {}{off}", r.priority.upper(), sanitize(&r.name));
                    }
                }
                let uncovered = items.iter().filter(|i| !i.tags.iter().any(|t| is_technique(t))).count();
                eprintln!(
                    "{} techniques covered by {} rules; {uncovered} rules without a technique tag",
                    cov.len(),
                    items.len() - uncovered
                );
            }
        }
        return emit(&out);
    }
    match args.format {
        ListFormat::Json => {
            let rules: Vec<_> = items
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "rule": r.name, "priority": r.priority.falco_name(), "tags": r.tags,
                        "enabled": r.enabled, "source": r.source, "desc": r.desc,
                        "file": r.file, "line": r.line,
                        "kind": if r.correlation { "correlation" } else { "rule" },
                    })
                })
                .collect();
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&rules)?);
        }
        ListFormat::Table => {
            let names: Vec<String> = items
                .iter()
                .map(|r| {
                    let mut n = r.name.clone();
                    if r.correlation {
                        n.push_str(" [correlation]");
                    }
                    if !r.enabled {
                        n.push_str(" (disabled)");
                    }
                    n
                })
                .collect();
            let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(4);
            let _ = writeln!(out, "{:<9} {:<width$}  TAGS", "PRIORITY", "RULE");
            for (r, name) in items.iter().zip(&names) {
                let _ = writeln!(out, "{:<9} {:<width$}  {}", r.priority.upper(), sanitize(name), r.tags.join(","));
            }
        }
    }
    emit(&out)
}

pub fn fields() -> Result<ExitCode> {
    let mut out = String::new();
    for f in kustody_rules::fields::all_names() {
        let _ = writeln!(out, "{f}");
    }
    emit(&out)
}

/// Write to stdout; a closed pipe (`| head`) ends the command quietly.
fn emit(text: &str) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// docs/RULES.md, generated from the built-in rules and their cases.
pub fn doc() -> Result<ExitCode> {
    emit(&render_doc()?)
}

pub fn render_doc() -> Result<String> {
    let (engine, diags) = ruleset::load(&[], true, &EngineOptions::default())?;
    if let Some(d) = diags.first() {
        anyhow::bail!("the built-in rules have diagnostics: {d}");
    }
    let mut examples = kustody_rules::testing::examples(&engine, ruleset::BUILTIN_CASES)?;
    // the rules that are off by default, enabled as a user would
    let enable: String = engine
        .rules()
        .filter(|r| !r.enabled)
        .map(|r| format!("- rule: {}\n  enabled: true\n  override: {{enabled: replace}}\n", r.name))
        .collect();
    let mut files: Vec<(String, String)> =
        ruleset::BUILTIN.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
    files.push(("enable.yaml".into(), enable));
    let (enabled_all, _) = Engine::load(&files, &EngineOptions::default());
    examples.extend(kustody_rules::testing::examples(&enabled_all, ruleset::BUILTIN_OPTIONAL_CASES)?);
    let items = items(&engine);
    let cov = coverage(&items);
    let mut s = String::new();
    let n_corr = items.iter().filter(|i| i.correlation).count();
    let _ = writeln!(s, "# kustody's built-in rules\n");
    let _ = writeln!(
        s,
        "Generated by `kustody rules doc` from `crates/kustody/rules/kustody.yaml` and its cases\n\
         (`kustody.cases.yaml`, `kustody-optional.cases.yaml`); a test fails when this file is out of date.\n\
         Each example is the rule's output on its first true-positive case.\n"
    );
    let _ = writeln!(
        s,
        "{} rules and {n_corr} correlations ({} off by default), covering {} MITRE ATT&CK techniques.\n\
         The rule format and kustody's two extensions (`kustody.podspec.*` fields, `correlation` items):\n\
         docs/RULES-FORMAT.md.\n",
        items.len() - n_corr,
        items.iter().filter(|i| !i.enabled).count(),
        cov.len()
    );
    let _ = writeln!(s, "## ATT&CK coverage\n\n| Technique | Name | Rules |\n|---|---|---|");
    for (t, rules) in &cov {
        let names: Vec<String> = rules.iter().map(|r| r.name.clone()).collect();
        let _ = writeln!(s, "| {t} | {} | {} |", technique_name(t), names.join("<br>"));
    }
    let _ = writeln!(s, "\n## Rules\n");
    for it in &items {
        let _ = writeln!(s, "### {}\n", it.name);
        let techniques: Vec<String> =
            it.tags.iter().filter(|t| is_technique(t)).map(|t| format!("{t} ({})", technique_name(t))).collect();
        let _ = writeln!(s, "- Priority: {}", it.priority.upper());
        let _ = writeln!(s, "- Techniques: {}", techniques.join(", "));
        if it.correlation {
            if let Some(c) = engine.correlations().find(|c| c.name == it.name) {
                let what = match c.count {
                    Some(n) => format!("{n} matches within {} by the same {}", c.window, c.by.join(", ")),
                    None => {
                        format!(
                            "{} steps {} within {} by the same {}",
                            c.steps.len(),
                            if c.ordered { "in order" } else { "in any order" },
                            c.window,
                            c.by.join(", ")
                        )
                    }
                };
                let _ = writeln!(s, "- Correlation: {what}");
                for (i, step) in c.steps.iter().enumerate() {
                    let _ = writeln!(s, "  {}. {}", i + 1, step.join(" | "));
                }
            }
        }
        if !it.enabled {
            let _ = writeln!(s, "- Off by default: enable it with `override: {{enabled: replace}}` in your rule file");
        }
        let _ = writeln!(s, "\n{}\n", it.desc.trim());
        match examples.iter().find(|(r, _, _)| *r == it.name) {
            Some((_, case, output)) => {
                let _ = writeln!(s, "Example (case \"{case}\"):\n\n```text\n{}\n```\n", output.trim());
            }
            None => {
                let _ = writeln!(s, "Example: none (no true-positive case)\n");
            }
        }
    }
    Ok(s)
}
