//! Output formats for detections: table, Falco JSON (lines or array), CSV.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use kustody_model::time::{format_rfc3339_nanos, format_rfc3339_secs, write_rfc3339_nanos};
use kustody_model::{Detection, Event, FieldValue, Priority, SourceRef};
use kustody_rules::extract::Val;
use kustody_rules::findings::Finding;
use kustody_rules::{Alert, Engine};
use owo_colors::OwoColorize;
use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::cli::Format;

/// Formats detections into bytes. Workers render in parallel; the collector only writes.
#[derive(Clone)]
pub struct Renderer {
    format: Format,
    color: bool,
    hostname: Arc<str>,
}

/// Writes rendered detections in input order, adding the format's framing (CSV header, JSON
/// array brackets and commas).
pub struct Sink {
    out: Box<dyn Write>,
    format: Format,
    count: u64,
}

const WIDTH: usize = 80;
const CSV_HEADER: &str = "time,priority,rule,user,verb,resource,namespace,name,command,source_ip,user_agent,response_code,audit_id,file,line,output";

impl Sink {
    pub fn new(mut out: Box<dyn Write>, format: Format) -> Result<Sink> {
        match format {
            Format::Csv => writeln!(out, "{CSV_HEADER}")?,
            Format::Json => write!(out, "[")?,
            Format::Table | Format::Jsonl | Format::Timesketch | Format::Findings => {}
        }
        Ok(Sink { out, format, count: 0 })
    }

    /// Writes `items` detections rendered into `bytes` by [`Renderer::render`].
    pub fn write(&mut self, bytes: &[u8], items: u64) -> Result<()> {
        if self.format == Format::Json {
            // One object per line from the renderer; the array needs commas between them.
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                self.out.write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
                self.out.write_all(line)?;
                self.count += 1;
            }
            return Ok(());
        }
        self.out.write_all(bytes)?;
        self.count += items;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<()> {
        if self.format == Format::Json {
            writeln!(self.out, "{}]", if self.count > 0 { "\n" } else { "" })?;
        }
        self.out.flush()?;
        Ok(())
    }
}

impl Renderer {
    pub fn new(format: Format, color: bool) -> Renderer {
        Renderer { format, color, hostname: hostname().into() }
    }

    /// Appends rule `idx`'s alert for `ev` to `out`. Falco JSON is written straight from the
    /// event's borrowed values (no [`Detection`], no `String` per field); the other formats
    /// render a [`Detection`]. `text` is scratch space reused across calls.
    #[allow(clippy::too_many_arguments, reason = "the worker's per-match state, passed through")]
    pub fn render_match(
        &self,
        engine: &Engine,
        idx: u32,
        ev: &Event<'_>,
        src: SourceRef,
        with_context: bool,
        text: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match (self.format, engine.alert(idx)) {
            (Format::Jsonl | Format::Json, Some(a)) => {
                self.falco_json(&a, ev, &src, text, out);
                Ok(())
            }
            _ => match engine.detection(idx, ev, src, with_context) {
                Some(d) => self.render(&d, out),
                None => Ok(()),
            },
        }
    }

    /// The same bytes as `falco_alert` of the match's [`Detection`], written in place.
    fn falco_json(&self, a: &Alert<'_>, ev: &Event<'_>, src: &SourceRef, text: &mut String, out: &mut Vec<u8>) {
        let values = a.template.values(ev);
        let time_ns = ev.time_ns();
        let prio = a.priority.falco_name();
        // `text` holds the time, then the output line: "<time>: <Priority> <rendered template>".
        text.clear();
        match time_ns {
            Some(t) => write_rfc3339_nanos(t, text),
            None => text.push_str("<no time>"),
        }
        let time_len = text.len();
        text.push_str(": ");
        text.push_str(prio);
        text.push(' ');
        let from = text.len();
        a.template.write_text(&values, text);
        let kept = text.get(from..).map_or(0, |t| t.trim_end().len());
        text.truncate(from + kept);

        // output_fields: the template's fields, ka.auditid, evt.time and the evidence location,
        // sorted by name (first one of a name wins, as in `falco_alert`).
        enum Slot {
            Field(usize),
            AuditId,
            Time(i64),
            File,
            Line,
        }
        let names: Vec<&str> = a.template.field_names().map(|n| &**n).collect();
        let mut slots: Vec<(&str, Slot)> = names.iter().enumerate().map(|(i, n)| (*n, Slot::Field(i))).collect();
        if !names.contains(&"ka.auditid") {
            slots.push(("ka.auditid", Slot::AuditId));
        }
        if let Some(t) = time_ns {
            slots.push(("evt.time", Slot::Time(t)));
        }
        slots.push(("kustody.file", Slot::File));
        slots.push(("kustody.line", Slot::Line));
        slots.sort_by(|x, y| x.0.cmp(y.0));
        slots.dedup_by(|x, y| x.0 == y.0);

        out.extend_from_slice(b"{\"hostname\":");
        json_str(out, &self.hostname);
        out.extend_from_slice(b",\"output\":");
        json_str(out, text);
        out.extend_from_slice(b",\"output_fields\":{");
        for (k, (name, slot)) in slots.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            json_str(out, name);
            out.push(b':');
            match slot {
                Slot::Field(i) => match values.get(*i) {
                    Some(Some(Val::One(v))) => json_str(out, v),
                    Some(Some(Val::List(items))) => {
                        out.push(b'[');
                        for (j, it) in items.iter().enumerate() {
                            if j > 0 {
                                out.push(b',');
                            }
                            json_str(out, it);
                        }
                        out.push(b']');
                    }
                    _ => out.extend_from_slice(b"null"),
                },
                Slot::AuditId => match ev.audit_id() {
                    Some(id) => json_str(out, id),
                    None => out.extend_from_slice(b"null"),
                },
                Slot::Time(t) => {
                    let _ = write!(out, "{t}");
                }
                Slot::File => json_str(out, &src.file),
                Slot::Line => {
                    let _ = write!(out, "{}", src.line);
                }
            }
        }
        out.extend_from_slice(b"},\"priority\":");
        json_str(out, prio);
        out.extend_from_slice(b",\"rule\":");
        json_str(out, a.rule);
        out.extend_from_slice(b",\"source\":");
        json_str(out, a.source);
        out.extend_from_slice(b",\"tags\":[");
        for (j, t) in a.sorted_tags.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json_str(out, t);
        }
        out.extend_from_slice(b"],\"time\":");
        match text.get(..time_len).filter(|_| time_ns.is_some()) {
            Some(t) => json_str(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }

    /// Appends one detection to `out` (JSON formats: exactly one line).
    pub fn render(&self, d: &Detection, out: &mut Vec<u8>) -> Result<()> {
        match self.format {
            Format::Jsonl | Format::Json => {
                serde_json::to_writer(&mut *out, &falco_alert(d, &self.hostname))?;
                out.push(b'\n');
            }
            Format::Csv => self.csv(d, out)?,
            Format::Timesketch => {
                let mut fields = timesketch_fields(&d.context, d.time_ns, d.audit_id.as_deref(), &d.source_ref);
                fields.insert("message".into(), json!(format!("[{}] {}", d.rule, d.output)));
                fields.insert("timestamp_desc".into(), json!("kustody detection"));
                fields.insert("rule".into(), json!(&*d.rule));
                fields.insert("priority".into(), json!(d.priority.falco_name()));
                fields.insert("tags".into(), json!(d.tags.join(",")));
                serde_json::to_writer(&mut *out, &Value::Object(fields))?;
                out.push(b'\n');
            }
            Format::Table => self.table(d, out)?,
            // one finding per match (`--no-group`)
            Format::Findings => self.render_finding(&Finding::single(d.clone()), out)?,
        }
        Ok(())
    }

    /// Appends one finding: in the table, the lead detection's lines plus what folded into it;
    /// as `findings`, one JSON object per line; other formats render the lead detection.
    pub fn render_finding(&self, f: &Finding, out: &mut Vec<u8>) -> Result<()> {
        match self.format {
            Format::Findings => {
                serde_json::to_writer(&mut *out, &finding_json(f, &self.hostname))?;
                out.push(b'\n');
            }
            Format::Table => {
                let mut lead = f.lead.clone();
                lead.priority = f.priority;
                self.table(&lead, out)?;
                let mut more = Vec::new();
                if f.events > 1 {
                    let span = match (f.first_ns, f.last_ns) {
                        (Some(a), Some(b)) if b - a >= 1_000_000_000 => format!(" over {}", human_span(b - a)),
                        _ => String::new(),
                    };
                    more.push(format!("×{} events{span}", f.events));
                }
                let others: Vec<&str> = f.rules.iter().filter(|r| **r != f.lead.rule).map(|r| &**r).collect();
                if !others.is_empty() {
                    more.push(format!("also: {}", others.join(", ")));
                }
                if !more.is_empty() {
                    let line = truncate(&more.join("; "), WIDTH - 4);
                    if self.color {
                        writeln!(out, "    {}", line.dimmed())?;
                    } else {
                        writeln!(out, "    {line}")?;
                    }
                }
            }
            _ => self.render(&f.lead, out)?,
        }
        Ok(())
    }

    fn csv(&self, d: &Detection, out: &mut Vec<u8>) -> Result<()> {
        let mut cols = vec![
            d.time_ns.map(format_rfc3339_nanos).unwrap_or_default(),
            d.priority.falco_name().to_owned(),
            d.rule.to_string(),
        ];
        cols.extend(context_cells(&d.context));
        cols.extend([
            d.audit_id.clone().unwrap_or_default(),
            d.source_ref.file.to_string(),
            d.source_ref.line.to_string(),
            d.output.clone(),
        ]);
        write_csv_row(out, &cols)
    }

    /// Three lines per detection (four for exec/attach), each at most 80 columns: time,
    /// priority, rule / who did what to which object from where / [the command] / evidence.
    fn table(&self, d: &Detection, out: &mut Vec<u8>) -> Result<()> {
        let c = &d.context;
        let time = d.time_ns.map(format_rfc3339_secs).unwrap_or_else(|| "-".repeat(20));
        let prio = format!("{:<8}", d.priority.upper());
        let head_room = WIDTH.saturating_sub(time.len() + 2 + prio.len() + 1);
        let rule = truncate(&d.rule, head_room);
        let prio_shown = if self.color { colorize(&prio, d.priority) } else { prio };
        let rule_shown = if self.color { rule.bold().to_string() } else { rule };
        writeln!(out, "{time}  {prio_shown} {rule_shown}")?;

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
        writeln!(out, "    {}", truncate(&what.join(" "), WIDTH - 4))?;
        if let Some(cmd) = &c.command {
            writeln!(out, "    $ {}", truncate(cmd, WIDTH - 6))?;
        }
        let id = d.audit_id.as_deref().unwrap_or("<no auditID>");
        let loc = format!("{}:{}", d.source_ref.file, d.source_ref.line);
        let third = format!("{} {id}", truncate_left(&loc, WIDTH - 4 - id.len().min(36) - 1));
        let third = truncate(&third, WIDTH - 4);
        if self.color {
            writeln!(out, "    {}", third.dimmed())?;
        } else {
            writeln!(out, "    {third}")?;
        }
        Ok(())
    }
}

/// `90s`, `12m`, `3h5m`: a finding's span, short.
fn human_span(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The `findings` format: one object per finding, with the lead alert's Falco fields.
fn finding_json(f: &Finding, hostname: &str) -> Value {
    let t = |ns: Option<i64>| ns.map(format_rfc3339_nanos);
    json!({
        "rule": &*f.lead.rule,
        "priority": f.priority.falco_name(),
        "rules": f.rules.iter().map(|r| &**r).collect::<Vec<_>>(),
        "tags": f.tags,
        "events": f.events,
        "matches": f.matches,
        "first_seen": t(f.first_ns),
        "last_seen": t(f.last_ns),
        "audit_ids": f.audit_ids,
        "output": f.lead.output,
        "context": {
            "user": f.lead.context.user,
            "impersonated_user": f.lead.context.impersonated_user,
            "verb": f.lead.context.verb,
            "resource": f.lead.context.resource,
            "subresource": f.lead.context.subresource,
            "namespace": f.lead.context.namespace,
            "name": f.lead.context.name,
            "source_ip": f.lead.context.source_ip,
            "user_agent": f.lead.context.user_agent,
            "response_code": f.lead.context.response_code,
            "command": f.lead.context.command,
        },
        "evidence": {
            "first": {"file": &*f.lead.source_ref.file, "line": f.lead.source_ref.line},
            "last": {"file": &*f.last_ref.file, "line": f.last_ref.line},
        },
        "alert": falco_alert(&f.lead, hostname),
    })
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

/// Characters that must not reach a terminal raw: C0/C1 controls (escape sequences) and the
/// invisible format characters that reorder or hide text (bidi overrides, zero-width marks).
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Event fields, file names and bad-record reasons are attacker-controlled: hostile characters
/// are shown as `\u{..}` escapes instead of being sent to the terminal or a spreadsheet.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(is_hostile) {
        return s.to_owned();
    }
    s.chars().map(|c| if is_hostile(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// `s` made safe for a terminal and cut to `max` characters, with `…` marking a cut.
pub fn truncate(s: &str, max: usize) -> String {
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

/// The CSV columns `user,verb,resource,namespace,name,command,source_ip,user_agent,response_code`
/// shared by detections and timelines.
pub const CONTEXT_HEADER: &str = "user,verb,resource,namespace,name,command,source_ip,user_agent,response_code";

pub fn context_cells(c: &kustody_model::EventContext) -> [String; 9] {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        s(&c.user),
        s(&c.verb),
        c.resource_path().unwrap_or_default(),
        s(&c.namespace),
        s(&c.name),
        s(&c.command),
        s(&c.source_ip),
        s(&c.user_agent),
        c.response_code.map(|x| x.to_string()).unwrap_or_default(),
    ]
}

/// One CSV row, every cell quoted and formula-guarded by [`csv_field`].
pub fn write_csv_row(out: &mut dyn Write, cells: &[String]) -> Result<()> {
    writeln!(out, "{}", cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","))?;
    Ok(())
}

/// RFC 4180 quoting, plus a leading `'` on values a spreadsheet would run as a formula
/// (user agents and names are attacker-controlled).
pub fn csv_field(s: &str) -> String {
    let s = sanitize(s);
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Falco's alert JSON: `hostname, output, output_fields, priority, rule, source, tags, time`
/// (alphabetical, as Falco writes it), with `evt.time`, `ka.auditid` and the evidence location
/// (`kustody.file`, `kustody.line`) added to `output_fields`. Serialised straight from borrowed
/// data: building a `serde_json::Value` per alert cost more than evaluating the rules.
#[derive(Serialize)]
struct FalcoAlert<'a> {
    hostname: &'a str,
    output: String,
    output_fields: OutputFields<'a>,
    priority: &'static str,
    rule: &'a str,
    source: &'a str,
    tags: Vec<&'a str>,
    /// RFC 3339; `null` for an event with no usable timestamp (counted in the summary).
    time: Option<String>,
}

enum FieldOut<'a> {
    Value(&'a FieldValue),
    Int(i64),
    Str(&'a str),
    U64(u64),
}

struct OutputFields<'a>(Vec<(&'a str, FieldOut<'a>)>);

impl Serialize for OutputFields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            match v {
                FieldOut::Value(FieldValue::Missing) => m.serialize_entry(k, &())?,
                FieldOut::Value(FieldValue::Str(x)) => m.serialize_entry(k, x)?,
                FieldOut::Value(FieldValue::List(items)) => m.serialize_entry(k, items)?,
                FieldOut::Int(i) => m.serialize_entry(k, i)?,
                FieldOut::Str(x) => m.serialize_entry(k, x)?,
                FieldOut::U64(u) => m.serialize_entry(k, u)?,
            }
        }
        m.end()
    }
}

fn falco_alert<'a>(d: &'a Detection, hostname: &'a str) -> FalcoAlert<'a> {
    let mut fields: Vec<(&str, FieldOut<'_>)> =
        d.output_fields.iter().map(|f| (&*f.name, FieldOut::Value(&f.value))).collect();
    if let Some(t) = d.time_ns {
        fields.push(("evt.time", FieldOut::Int(t)));
    }
    fields.push(("kustody.file", FieldOut::Str(&d.source_ref.file)));
    fields.push(("kustody.line", FieldOut::U64(d.source_ref.line)));
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields.dedup_by(|a, b| a.0 == b.0);
    let mut tags: Vec<&str> = d.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    let time = d.time_ns.map(format_rfc3339_nanos);
    FalcoAlert {
        hostname,
        output: format!("{}: {} {}", time.as_deref().unwrap_or("<no time>"), d.priority.falco_name(), d.output),
        output_fields: OutputFields(fields),
        priority: d.priority.falco_name(),
        rule: &d.rule,
        source: &d.source,
        tags,
        time,
    }
}

/// The fields Timesketch needs (`datetime`, `timestamp` in microseconds) and the event's
/// who/what/where as searchable attributes; the caller adds `message` and `timestamp_desc`.
pub fn timesketch_fields(
    c: &kustody_model::EventContext,
    time_ns: Option<i64>,
    audit_id: Option<&str>,
    src: &kustody_model::SourceRef,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("datetime".into(), json!(time_ns.map(format_rfc3339_nanos)));
    m.insert("timestamp".into(), json!(time_ns.map(|t| t / 1000)));
    for (k, v) in [
        ("user", &c.user),
        ("impersonated_user", &c.impersonated_user),
        ("verb", &c.verb),
        ("namespace", &c.namespace),
        ("name", &c.name),
        ("source_ip", &c.source_ip),
        ("user_agent", &c.user_agent),
        ("command", &c.command),
        ("request_uri", &c.request_uri),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    if let Some(r) = c.resource_path() {
        m.insert("resource".into(), json!(r));
    }
    if let Some(code) = c.response_code {
        m.insert("response_code".into(), json!(code));
    }
    m.insert("audit_id".into(), json!(audit_id));
    m.insert("source_file".into(), json!(&*src.file));
    m.insert("source_line".into(), json!(src.line));
    m.insert("source_format".into(), json!(src.format.as_str()));
    m
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it (it does the writing).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
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

    /// The in-place Falco JSON writer and the [`Detection`] rendering give the same bytes for
    /// every match of the built-in and upstream rules on the body-heavy corpus, events without a
    /// timestamp included.
    #[test]
    #[allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails by panicking")]
    fn falco_json_in_place_equals_the_detection_rendering() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![(
            "kustody.yaml".to_owned(),
            std::fs::read_to_string(root.join("rules/kustody.yaml")).expect("built-in rules"),
        )];
        if let Some(shared) = kustody_testkit::shared("upstream/falco") {
            for f in ["k8s_audit_rules.yaml", "k8s_audit_rules_gke.yaml"] {
                let path = shared.join("upstream/falco").join(f);
                files.push((f.to_owned(), std::fs::read_to_string(path).expect("upstream rules")));
            }
        }
        let (engine, _) = Engine::load(&files, &kustody_rules::EngineOptions::default());
        let mut corpus = Vec::new();
        kustody_gen::Corpus::body_heavy(9).write(1_500_000, &mut corpus).expect("corpus");
        let mut example = Vec::new();
        kustody_gen::example(&mut example).expect("example");
        corpus.extend_from_slice(&example);
        let text = String::from_utf8(corpus).expect("utf-8");
        let renderer = Renderer { format: Format::Jsonl, color: false, hostname: "host \"1\"".into() };
        let (mut scratch, mut matched, mut buf) = (kustody_rules::Scratch::default(), Vec::new(), String::new());
        let mut n = 0;
        for (k, line) in text.lines().enumerate() {
            let line = if k % 7 == 0 { line.replace("Timestamp\"", "TimestampX\"") } else { line.to_owned() };
            let ev = Event::parse(&line).expect("event");
            matched.clear();
            engine.matches(&ev, &mut scratch, &mut matched);
            for &i in &matched {
                let src = SourceRef {
                    file: "dir/audit \"x\".log".into(),
                    line: k as u64 + 1,
                    offset: 0,
                    format: kustody_model::SourceFormat::Native,
                };
                let mut fast = Vec::new();
                renderer.render_match(&engine, i, &ev, src.clone(), false, &mut buf, &mut fast).unwrap();
                let mut slow = Vec::new();
                renderer.render(&engine.detection(i, &ev, src, false).unwrap(), &mut slow).unwrap();
                assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow));
                n += 1;
            }
        }
        assert!(n > 500, "only {n} alerts compared");
    }

    #[test]
    fn hostile_text_is_neutralised() {
        assert_eq!(truncate("evil\u{1b}[2Jagent", 80), "evil\\u{1b}[2Jagent");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(sanitize("a\u{202e}b\u{9b}c"), "a\\u{202e}b\\u{9b}c");
        assert_eq!(csv_field("x\u{1b}]8;;http://e\u{7}y"), "x\\u{1b}]8;;http://e\\u{7}y");
        assert_eq!(truncate_left("/very/long/path.log:12", 10), "…th.log:12");
    }
}
