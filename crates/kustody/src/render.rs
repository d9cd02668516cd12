//! Output formats for detections: table, Falco JSON (lines or array), CSV.

use std::io::Write;

use anyhow::Result;
use kustody_model::time::{format_rfc3339_nanos, format_rfc3339_secs};
use kustody_model::{Detection, FieldValue, Priority};
use owo_colors::OwoColorize;
use serde_json::{json, Map, Value};

use crate::cli::Format;

pub struct Writer {
    out: Box<dyn Write>,
    format: Format,
    color: bool,
    count: u64,
    hostname: String,
}

const WIDTH: usize = 80;

impl Writer {
    pub fn new(mut out: Box<dyn Write>, format: Format, color: bool) -> Result<Writer> {
        match format {
            Format::Csv => writeln!(out, "time,priority,rule,user,verb,resource,namespace,name,source_ip,user_agent,response_code,audit_id,file,line,output")?,
            Format::Json => write!(out, "[")?,
            Format::Table | Format::Jsonl => {}
        }
        Ok(Writer { out, format, color, count: 0, hostname: hostname() })
    }

    pub fn write(&mut self, d: &Detection) -> Result<()> {
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, &falco_json(d, &self.hostname))?;
                self.out.write_all(b"\n")?;
            }
            Format::Json => {
                self.out.write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut self.out, &falco_json(d, &self.hostname))?;
            }
            Format::Csv => self.csv(d)?,
            Format::Table => self.table(d)?,
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}]", if self.count > 0 { "\n" } else { "" })?,
            Format::Table if self.count == 0 => {}
            _ => {}
        }
        self.out.flush()?;
        Ok(())
    }

    fn csv(&mut self, d: &Detection) -> Result<()> {
        let c = &d.context;
        let cols = [
            d.time_ns.map(format_rfc3339_nanos).unwrap_or_default(),
            d.priority.falco_name().to_owned(),
            d.rule.clone(),
            c.user.clone().unwrap_or_default(),
            c.verb.clone().unwrap_or_default(),
            c.resource_path().unwrap_or_default(),
            c.namespace.clone().unwrap_or_default(),
            c.name.clone().unwrap_or_default(),
            c.source_ip.clone().unwrap_or_default(),
            c.user_agent.clone().unwrap_or_default(),
            c.response_code.map(|x| x.to_string()).unwrap_or_default(),
            d.audit_id.clone().unwrap_or_default(),
            d.source_ref.file.to_string(),
            d.source_ref.line.to_string(),
            d.output.clone(),
        ];
        let line: Vec<String> = cols.iter().map(|s| csv_field(s)).collect();
        writeln!(self.out, "{}", line.join(","))?;
        Ok(())
    }

    /// Three lines per detection, each at most 80 columns:
    /// time, priority, rule / who did what to which object from where / evidence location.
    fn table(&mut self, d: &Detection) -> Result<()> {
        let c = &d.context;
        let time = d.time_ns.map(format_rfc3339_secs).unwrap_or_else(|| "-".repeat(20));
        let prio = format!("{:<8}", d.priority.upper());
        let head_room = WIDTH.saturating_sub(time.len() + 2 + prio.len() + 1);
        let rule = truncate(&d.rule, head_room);
        let prio_shown = if self.color { colorize(&prio, d.priority) } else { prio };
        let rule_shown = if self.color { rule.bold().to_string() } else { rule };
        writeln!(self.out, "{time}  {prio_shown} {rule_shown}")?;

        let mut what = vec![c.user.clone().unwrap_or_else(|| "<no user>".into())];
        if let Some(imp) = &c.impersonated_user {
            what.push(format!("as {imp}"));
        }
        what.extend(c.verb.clone());
        what.extend(c.resource_path());
        what.extend(c.object());
        if let Some(code) = c.response_code {
            what.push(format!("→{code}"));
        }
        if let Some(ip) = &c.source_ip {
            what.push(format!("from {ip}"));
        }
        writeln!(self.out, "    {}", truncate(&what.join(" "), WIDTH - 4))?;
        let id = d.audit_id.as_deref().unwrap_or("<no auditID>");
        let loc = format!("{}:{}", d.source_ref.file, d.source_ref.line);
        let third = format!("{} {id}", truncate_left(&loc, WIDTH - 4 - id.len().min(36) - 1));
        let third = truncate(&third, WIDTH - 4);
        if self.color {
            writeln!(self.out, "    {}", third.dimmed())?;
        } else {
            writeln!(self.out, "    {third}")?;
        }
        Ok(())
    }
}

fn colorize(s: &str, p: Priority) -> String {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => s.red().bold().to_string(),
        Priority::Error => s.red().to_string(),
        Priority::Warning => s.yellow().to_string(),
        Priority::Notice => s.cyan().to_string(),
        Priority::Informational | Priority::Debug => s.dimmed().to_string(),
    }
}

/// Event fields are attacker-controlled: control characters (terminal escape sequences) are
/// shown as `\u{..}` escapes instead of being sent to the terminal.
fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

fn truncate(s: &str, max: usize) -> String {
    let s = sanitize(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Keeps the end of a path (the file name and line matter most).
fn truncate_left(s: &str, max: usize) -> String {
    let s = sanitize(s);
    let n = s.chars().count();
    if n <= max {
        return s;
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - max.saturating_sub(1)));
    out
}

/// RFC 4180 quoting, plus a leading `'` on values a spreadsheet would run as a formula
/// (user agents and names are attacker-controlled).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Missing => Value::Null,
        FieldValue::Str(s) => Value::String(s.clone()),
        FieldValue::List(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
    }
}

/// Falco's alert JSON: `hostname, output, output_fields, priority, rule, source, tags, time`
/// (alphabetical, as Falco writes it), with `evt.time`, `ka.auditid` and the evidence location
/// (`kustody.file`, `kustody.line`) added to `output_fields`.
pub fn falco_json(d: &Detection, hostname: &str) -> Value {
    let mut fields: Vec<(String, Value)> = d.output_fields.iter().map(|f| (f.name.clone(), field_json(&f.value))).collect();
    fields.push(("evt.time".into(), d.time_ns.map_or(Value::Null, |t| json!(t))));
    fields.push(("kustody.file".into(), json!(d.source_ref.file.as_ref())));
    fields.push(("kustody.line".into(), json!(d.source_ref.line)));
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.dedup_by(|a, b| a.0 == b.0);
    let mut of = Map::new();
    for (k, v) in fields {
        of.insert(k, v);
    }
    let mut tags = d.tags.clone();
    tags.sort();
    let time = d.time_ns.map(format_rfc3339_nanos).unwrap_or_default();
    let mut m = Map::new();
    m.insert("hostname".into(), json!(hostname));
    m.insert("output".into(), json!(format!("{time}: {} {}", d.priority.falco_name(), d.output)));
    m.insert("output_fields".into(), Value::Object(of));
    m.insert("priority".into(), json!(d.priority.falco_name()));
    m.insert("rule".into(), json!(d.rule));
    m.insert("source".into(), json!(d.source));
    m.insert("tags".into(), json!(tags));
    m.insert("time".into(), json!(time));
    Value::Object(m)
}

/// Falco reports the host it runs on; `KUSTODY_HOSTNAME` overrides it (reproducible output).
fn hostname() -> String {
    if let Ok(h) = std::env::var("KUSTODY_HOSTNAME") {
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_neutralised() {
        assert_eq!(truncate("evil\u{1b}[2Jagent", 80), "evil\\u{1b}[2Jagent");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate_left("/very/long/path.log:12", 10), "…th.log:12");
    }
}
