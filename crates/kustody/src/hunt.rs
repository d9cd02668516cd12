//! `kustody hunt`: read → parse → evaluate in parallel, write in input order, summarise.
//!
//! One reader thread cuts inputs into chunks (sequential I/O and gzip); N workers parse and
//! evaluate chunks; the main thread puts results back in input order and writes them. The
//! channels are bounded, so memory stays flat whatever the input size.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use kustody_ingest::{expand_inputs, BadRecord, Chunk, ReadOptions};
use kustody_model::{Event, SourceFormat, SourceRef};
use kustody_rules::{Engine, EngineOptions, Scratch, Severity};

use crate::cli::{ColorChoice, Format, HuntArgs};
use crate::render::{sanitize, Renderer, Sink};
use crate::{ruleset, timespec};

/// What one worker reports for one chunk.
#[derive(Default)]
struct ChunkResult {
    /// Detections already rendered in the output format.
    rendered: Vec<u8>,
    /// The rule of each detection, in order.
    rules: Vec<u32>,
    /// What matched rules contribute to correlations, in input order, each with the length of
    /// `rendered` after its event's own detections (where a finding it completes belongs).
    corr: Vec<(usize, kustody_rules::CorrInput)>,
    bad: Vec<BadRecord>,
    events: u64,
    skipped_by_time: u64,
    bytes: u64,
    /// Bad records beyond the ones kept in `bad` (a chunk of garbage has thousands).
    bad_not_kept: u64,
    /// Events without a parseable stageTimestamp, requestReceivedTimestamp or timestamp.
    untimed: u64,
    /// Events whose body a rule needed but could not be parsed, and where the first was.
    degraded: u64,
    degraded_at: Option<String>,
    /// Grouped output: each event's detections, unrendered (the collector folds them into
    /// findings in input order). `corr` positions then count these groups, not bytes.
    groups: Vec<Vec<kustody_model::Detection>>,
    /// Matches quieted by an allow entry: (entry index, count).
    quieted: Vec<(usize, u64)>,
    /// Matches demoted by the baseline: (rule index, count).
    demoted: Vec<(u32, u64)>,
    /// Events without a `stage`.
    stageless: u64,
    /// Grouped output: pods the chunk's events showed (with their IPs) or deleted, each with
    /// the index of the next group, for the collector's IP history (applied in input order).
    pods: Vec<(usize, kustody_iphistory::extract::Seen, i64)>,
}

/// Bad records kept with their details per chunk; the rest are only counted.
const BAD_KEPT_PER_CHUNK: usize = 16;

struct Filter {
    since: Option<i64>,
    until: Option<i64>,
    /// The output format shows who/what/where columns (table, CSV).
    with_context: bool,
    /// Detections go to the collector unrendered, to be folded into findings.
    grouped: bool,
    allow: kustody_rules::allow::AllowList,
    /// Per rule index, the allow entries that may quiet it.
    allow_index: Vec<Vec<usize>>,
    /// Learnt normal (`--baseline`).
    baseline: Option<kustody_baseline::Baseline>,
}

impl Filter {
    fn keeps(&self, ev: &Event<'_>) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        match ev.time_ns() {
            None => false,
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u),
        }
    }
}

pub fn run(args: HuntArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let filter = Filter {
        since: args.since.as_deref().map(|s| timespec::parse(s, now_ns)).transpose().context("--since")?,
        until: args.until.as_deref().map(|s| timespec::parse(s, now_ns)).transpose().context("--until")?,
        with_context: matches!(args.format, Format::Table | Format::Csv | Format::Timesketch | Format::Findings),
        grouped: !args.no_group && matches!(args.format, Format::Table | Format::Findings),
        allow: kustody_rules::allow::AllowList::default(),
        allow_index: Vec::new(),
        baseline: match &args.baseline {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))?;
                Some(
                    kustody_baseline::Baseline::from_json(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                )
            }
        },
    };
    let group_window = kustody_rules::correlate::parse_window(&args.group_window).with_context(|| {
        format!("--group-window: invalid duration `{}` (a number with s, m, h or d)", args.group_window)
    })?;
    let mut filter = filter;

    let opts = EngineOptions {
        min_priority: args.min_priority.unwrap_or(kustody_model::Priority::Debug),
        ..Default::default()
    };
    let (engine, diags) = if args.parse_only {
        (Engine::load(&[], &opts).0, Vec::new())
    } else {
        ruleset::load(&args.rules.rules, !args.rules.no_default_rules, &opts)?
    };
    if engine.active_count() == 0 && !args.parse_only {
        bail!("no rule is active: nothing would be detected (check --rules, --no-default-rules, --min-priority and the diagnostics above)");
    }
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    for d in &diags {
        eprintln!("{}", sanitize(&d.to_string()));
    }
    if args.strict && !diags.is_empty() {
        bail!("{} rule diagnostic(s) with --strict", diags.len());
    }
    if errors > 0 && !args.quiet {
        eprintln!("kustody: {errors} rule(s) or item(s) failed to load and are skipped (see above; --strict makes this fatal)");
    }
    if !args.no_allowlist {
        (filter.allow, filter.allow_index) = load_allow(&args, &engine)?;
    }

    let (files, skipped) = match &args.store {
        Some(dir) => (vec![crate::source::Source::store(dir, filter.since, filter.until)?], Vec::new()),
        None => {
            let inputs = expand_inputs(&args.paths)?;
            (inputs.files.into_iter().map(crate::source::Source::File).collect(), inputs.skipped)
        }
    };
    if files.is_empty() {
        bail!(
            "no input files found in {}",
            args.paths.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
        );
    }
    let read_opts = ReadOptions {
        max_record_bytes: args.max_record_bytes,
        input_format: args.input_format.into(),
        ..ReadOptions::default()
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);

    let out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create `{}`", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            args.output.is_none()
                && args.format == Format::Table
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let mut sink = Sink::new(out, args.format)?;
    let renderer = Renderer::new(args.format, color);
    let progress = progress_bar(args.quiet);

    let engine = Arc::new(engine);
    let filter = Arc::new(filter);
    let mut stats = Stats { files: files.len(), skipped, rules_active: engine.active_count(), ..Stats::default() };
    // Every channel end lives inside the scope: when the collector stops early (`--strict`, a
    // closed stdout) its ends drop, the reader and workers see disconnected channels and stop,
    // and the scope can join them. A window of tokens bounds the chunks in flight, so the
    // reordering buffer stays bounded even when one chunk is slow.
    // The threaded pipeline (kustody-pipeline): workers parse, evaluate and render chunks; this
    // thread gets their results back in input order, correlates, folds findings and writes.
    let outcome = (|| -> Result<()> {
        let mut grouper = filter.grouped.then(|| {
            kustody_rules::findings::Grouper::new(kustody_rules::findings::FindingOptions {
                window_ns: group_window,
                ..Default::default()
            })
        });
        let mut collector = Collector {
            correlator: engine.correlator(),
            sink: &mut sink,
            engine: &engine,
            renderer: &renderer,
            stats: &mut stats,
            strict: args.strict,
            progress: &progress,
            grouper: grouper.as_mut(),
            ips: kustody_iphistory::IpHistory::new(kustody_iphistory::Options::default()),
        };
        let parse_only = args.parse_only;
        kustody_pipeline::run(
            &files,
            &read_opts,
            threads,
            || {
                let (engine, filter, renderer) = (&engine, &filter, &renderer);
                let mut scratch = Scratch::default();
                let mut matched = Vec::new();
                move |chunk: &Chunk| process(chunk, engine, filter, parse_only, &mut scratch, &mut matched, renderer)
            },
            |item| match item {
                kustody_pipeline::Item::Done(res) => collector.chunk(res),
                kustody_pipeline::Item::Unreadable(e) => collector.unreadable(e),
            },
        )?;
        drop(collector);
        if let Some(g) = grouper.as_mut() {
            let mut closed = Vec::new();
            g.finish(&mut closed);
            write_findings(&closed, &mut sink, &renderer, &mut stats)?;
        }
        Ok(())
    })();
    progress.finish_and_clear();
    // A closed pipe (`kustody hunt ... | head`) ends the run quietly, like any Unix filter.
    let closed = |e: &anyhow::Error| {
        e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
    };
    match outcome.and_then(|()| sink.finish()) {
        Err(e) if closed(&e) => return Ok(if stats.detections > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }),
        other => other?,
    }

    stats.elapsed = started.elapsed().as_secs_f64();
    stats.grouped = filter.grouped;
    stats.quieted_by = filter
        .allow
        .entries()
        .iter()
        .zip(&stats.quieted)
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| (e.name.clone(), *n))
        .collect();
    if !args.quiet {
        stats.print(&mut std::io::stderr().lock());
    }
    if let Some(p) = &args.stats_json {
        std::fs::write(p, stats.to_json()).with_context(|| format!("cannot write `{}`", p.display()))?;
    }
    if stats.events == 0 && !args.allow_empty {
        bail!(
            "no audit events read from {} ({} bad records): an empty or unreadable input is not an all-clear (--allow-empty accepts it)",
            args.paths.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", "),
            stats.bad
        );
    }
    Ok(if stats.detections > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The allow catalogue and `--allow` files, and per rule the entries that may quiet it.
fn load_allow(args: &HuntArgs, engine: &Engine) -> Result<(kustody_rules::allow::AllowList, Vec<Vec<usize>>)> {
    let (allow, diags) = ruleset::load_allow(&args.allow, !args.rules.no_default_rules)?;
    for d in &diags {
        eprintln!("{}", sanitize(&d.to_string()));
    }
    if args.strict && !diags.is_empty() {
        bail!("{} allow-list diagnostic(s) with --strict", diags.len());
    }
    let rules: Vec<kustody_rules::allow::RuleRef<'_>> =
        engine.rules().map(|r| kustody_rules::allow::RuleRef { name: &r.name, priority: r.priority }).collect();
    let index = allow.index(&rules);
    Ok((allow, index))
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {bytes} read ({bytes_per_sec}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn process(
    chunk: &Chunk,
    engine: &Engine,
    filter: &Filter,
    parse_only: bool,
    scratch: &mut Scratch,
    matched: &mut Vec<u32>,
    renderer: &Renderer,
) -> ChunkResult {
    let with_context = filter.with_context;
    let mut r = ChunkResult { bytes: chunk.len() as u64, ..ChunkResult::default() };
    // Scratch for rendering alerts, reused for every match of the chunk.
    let text = &mut String::with_capacity(512);
    chunk.records(|rec| match rec {
        Err(bad) => keep_bad(&mut r, || bad),
        Ok(mut rec) => match rec.event() {
            Err(e) => keep_bad(&mut r, || BadRecord {
                file: chunk.file.clone(),
                line: rec.line,
                offset: rec.offset,
                reason: match rec.format {
                    SourceFormat::Native | SourceFormat::NativeYaml => e.to_string(),
                    f => format!("event inside a {} record: {e}", f.as_str()),
                },
            }),
            Ok(ev) => {
                r.events += 1;
                if ev.time_ns().is_none() {
                    r.untimed += 1;
                }
                if ev.stage().is_none() {
                    r.stageless += 1;
                }
                if !filter.keeps(&ev) {
                    r.skipped_by_time += 1;
                    return;
                }
                if parse_only {
                    return;
                }
                matched.clear();
                engine.matches(&ev, scratch, matched);
                if ev.body_unparsed() {
                    r.degraded += 1;
                    if r.degraded_at.is_none() {
                        r.degraded_at = Some(format!("{}:{}", chunk.file, rec.line));
                    }
                }
                let mut corr = Vec::new();
                let mut group = Vec::new();
                if filter.grouped {
                    let seen = kustody_iphistory::extract::seen(&ev);
                    if !seen.pods.is_empty() || !seen.deleted.is_empty() {
                        r.pods.push((r.groups.len(), seen, ev.time_ns().unwrap_or_default()));
                    }
                }
                // known behaviour of this identity on this target (asked once per event)
                let known = !matched.is_empty() && filter.baseline.as_ref().is_some_and(|b| b.knows(&ev));
                for &i in matched.iter() {
                    if let Some(entries) = filter.allow_index.get(i as usize) {
                        if let Some(entry) = filter.allow.suppression_among(entries, &ev) {
                            // counted for the summary; kept out of the output and the correlations
                            match r.quieted.iter_mut().find(|(e, _)| *e == entry) {
                                Some((_, n)) => *n += u64::from(engine.emits(i)),
                                None => r.quieted.push((entry, u64::from(engine.emits(i)))),
                            }
                            continue;
                        }
                    }
                    if known {
                        // counted per rule for the summary; kept out of the output and correlations
                        match r.demoted.iter_mut().find(|(rule, _)| *rule == i) {
                            Some((_, n)) => *n += 1,
                            None => r.demoted.push((i, 1)),
                        }
                        continue;
                    }
                    let src =
                        SourceRef { file: chunk.file.clone(), line: rec.line, offset: rec.offset, format: rec.format };
                    if engine.has_correlations() {
                        engine.correlation_inputs(i, &ev, &src, &mut corr);
                    }
                    if !engine.emits(i) {
                        continue;
                    }
                    if filter.grouped {
                        if let Some(d) = engine.detection(i, &ev, src, with_context) {
                            group.push(d);
                            r.rules.push(i);
                        }
                        continue;
                    }
                    let before = r.rendered.len();
                    match renderer.render_match(engine, i, &ev, src, with_context, text, &mut r.rendered) {
                        Ok(()) if r.rendered.len() > before => r.rules.push(i),
                        Ok(()) => {}
                        Err(e) => keep_bad(&mut r, || BadRecord {
                            file: chunk.file.clone(),
                            line: rec.line,
                            offset: rec.offset,
                            reason: format!(
                                "cannot render detection of `{}`: {e}",
                                engine.rule(i).map_or("?", |ri| ri.name.as_str())
                            ),
                        }),
                    }
                }
                if !group.is_empty() {
                    r.groups.push(group);
                }
                let at = if filter.grouped { r.groups.len() } else { r.rendered.len() };
                r.corr.extend(corr.into_iter().map(|c| (at, c)));
            }
        },
    });
    r
}

fn keep_bad(r: &mut ChunkResult, bad: impl FnOnce() -> BadRecord) {
    if r.bad.len() < BAD_KEPT_PER_CHUNK {
        r.bad.push(bad());
    } else {
        r.bad_not_kept += 1;
    }
}

/// The collector's sequential state: correlation, findings, output and the summary, fed each
/// chunk's result in input order by the pipeline.
struct Collector<'a> {
    correlator: kustody_rules::Correlator,
    sink: &'a mut Sink,
    engine: &'a Engine,
    renderer: &'a Renderer,
    stats: &'a mut Stats,
    strict: bool,
    progress: &'a indicatif::ProgressBar,
    grouper: Option<&'a mut kustody_rules::findings::Grouper>,
    /// Who each IP was (grouped output): findings name the pod behind their source IP.
    ips: kustody_iphistory::IpHistory,
}

/// Adds `kustody.source_pod` (the pod that held the source IP then) to detections.
fn attribute(ips: &kustody_iphistory::IpHistory, group: &mut [kustody_model::Detection]) {
    for d in group {
        let (Some(ip), Some(t)) = (d.context.source_ip.as_deref(), d.time_ns) else { continue };
        if let Some(a) = ips.lookup(ip, t).filter(|a| a.interval.pod.is_pod()) {
            d.output_fields.push(kustody_model::OutputField {
                name: std::sync::Arc::from("kustody.source_pod"),
                value: kustody_model::FieldValue::Str(a.interval.pod.qualified_name()),
            });
        }
    }
}

impl Collector<'_> {
    fn unreadable(&mut self, e: String) -> Result<()> {
        self.stats.unreadable.push(e);
        if self.strict {
            bail!("{}", self.stats.unreadable.last().map(String::as_str).unwrap_or_default());
        }
        Ok(())
    }

    fn chunk(&mut self, res: ChunkResult) -> Result<()> {
        let Collector { correlator, sink, engine, renderer, stats, strict, progress, grouper, ips } = self;
        if *strict {
            if let Some(b) = res.bad.first() {
                bail!("bad record at {b} (--strict)");
            }
        }
        stats.events += res.events;
        stats.bytes += res.bytes;
        stats.skipped_by_time += res.skipped_by_time;
        stats.bad += res.bad.len() as u64 + res.bad_not_kept;
        stats.degraded += res.degraded;
        stats.untimed += res.untimed;
        stats.stageless += res.stageless;
        for (entry, n) in &res.quieted {
            if stats.quieted.len() <= *entry {
                stats.quieted.resize(*entry + 1, 0);
            }
            if let Some(q) = stats.quieted.get_mut(*entry) {
                *q += n;
            }
        }
        for (rule, n) in &res.demoted {
            let name = engine.rule(*rule).map_or("?", |r| r.name.as_str());
            *stats.demoted.entry(name.to_owned()).or_insert(0) += n;
        }
        if stats.first_degraded.is_none() {
            stats.first_degraded = res.degraded_at;
        }
        for b in res.bad {
            if stats.first_bad.len() < 10 {
                stats.first_bad.push(b.to_string());
            }
        }
        if let Some(g) = grouper.as_deref_mut() {
            // Grouped: each event's detections, and each correlation finding right after the
            // event that completed it, fold into findings; closed ones are written.
            let mut closed = Vec::new();
            let mut corr = res.corr.iter().peekable();
            let mut groups = res.groups.into_iter().enumerate().peekable();
            let mut pods = res.pods.into_iter().peekable();
            loop {
                // correlation inputs of events up to the next group's come before it
                let next_group = groups.peek().map_or(usize::MAX, |(i, _)| *i);
                while let Some((_, inp)) = corr.next_if(|(e, _)| *e <= next_group) {
                    if let Some(d) = correlator.observe(inp) {
                        stats.matches += 1;
                        stats.count(&d.rule);
                        g.correlation(d, &mut closed);
                    }
                }
                // what the events up to this group showed of pods and their IPs
                while let Some((_, seen, t)) = pods.next_if(|(at, ..)| *at <= next_group) {
                    for p in &seen.pods {
                        ips.observe(p, t);
                    }
                    for (ns, name, uid) in &seen.deleted {
                        ips.deleted(ns, name, uid.as_deref(), t);
                    }
                }
                let Some((_, mut group)) = groups.next() else { break };
                attribute(ips, &mut group);
                for d in &group {
                    stats.matches += 1;
                    stats.count(&d.rule);
                }
                g.event(group, &mut closed);
            }
            if progress.is_hidden() {
                write_findings(&closed, sink, renderer, stats)?;
            } else if !closed.is_empty() {
                progress.suspend(|| -> Result<()> {
                    write_findings(&closed, sink, renderer, stats)?;
                    sink.flush()
                })?;
            }
            progress.set_position(stats.bytes);
            progress.set_message(format!("{} events, {} findings", stats.events, stats.detections));
            return Ok(());
        }
        // The chunk's detections, with correlation findings placed right after the detections
        // of the event that completed them.
        let mut parts: Vec<(&[u8], u64)> = Vec::new();
        let mut findings: Vec<Vec<u8>> = Vec::new();
        let mut at = 0usize;
        for (end, inp) in &res.corr {
            if let Some(d) = correlator.observe(inp) {
                let mut buf = Vec::new();
                renderer.render(&d, &mut buf)?;
                stats.detections += 1;
                stats.matches += 1;
                stats.count(&d.rule);
                findings.push(buf);
                parts.push((res.rendered.get(at..*end).unwrap_or_default(), 0));
                parts.push((&[], findings.len() as u64));
                at = *end;
            }
        }
        parts.push((res.rendered.get(at..).unwrap_or_default(), 0));
        let write_all = |sink: &mut Sink| -> Result<()> {
            let mut counted = false;
            for (bytes, finding) in &parts {
                if *finding > 0 {
                    let f = findings.get(*finding as usize - 1).map(Vec::as_slice).unwrap_or_default();
                    sink.write(f, 1)?;
                } else if !bytes.is_empty() {
                    // the chunk's own detections are counted once, with its first part
                    let n = if counted { 0 } else { res.rules.len() as u64 };
                    counted = true;
                    sink.write(bytes, n)?;
                }
            }
            Ok(())
        };
        if progress.is_hidden() {
            write_all(sink)?;
        } else if !res.rendered.is_empty() || !findings.is_empty() {
            // Alerts reach the terminal as they are found, without tearing the spinner.
            progress.suspend(|| -> Result<()> {
                write_all(sink)?;
                sink.flush()
            })?;
        }
        stats.detections += res.rules.len() as u64;
        stats.matches += res.rules.len() as u64;
        for i in res.rules {
            let name = engine.rule(i).map_or("?", |r| r.name.as_str());
            stats.count(name);
        }
        progress.set_position(stats.bytes);
        progress.set_message(format!("{} events, {} detections", stats.events, stats.detections));
        Ok(())
    }
}
/// Renders and writes closed findings; each counts as one detection for the exit code.
fn write_findings(
    closed: &[kustody_rules::findings::Finding],
    sink: &mut Sink,
    renderer: &Renderer,
    stats: &mut Stats,
) -> Result<()> {
    for f in closed {
        let mut buf = Vec::new();
        renderer.render_finding(f, &mut buf)?;
        sink.write(&buf, 1)?;
        stats.detections += 1;
    }
    Ok(())
}

impl Stats {
    fn count(&mut self, rule: &str) {
        match self.per_rule.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                self.per_rule.insert(rule.to_owned(), 1);
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    files: usize,
    skipped: Vec<std::path::PathBuf>,
    unreadable: Vec<String>,
    events: u64,
    bytes: u64,
    skipped_by_time: u64,
    bad: u64,
    first_bad: Vec<String>,
    degraded: u64,
    first_degraded: Option<String>,
    untimed: u64,
    /// What was reported: findings when grouped, else rule matches.
    detections: u64,
    /// Rule matches (correlation findings included), whether grouped or not.
    matches: u64,
    grouped: bool,
    per_rule: BTreeMap<String, u64>,
    /// Matches quieted per allow entry (by index), then by name for the summary.
    quieted: Vec<u64>,
    quieted_by: Vec<(String, u64)>,
    /// Matches demoted by the baseline, per rule.
    demoted: BTreeMap<String, u64>,
    stageless: u64,
    rules_active: usize,
    elapsed: f64,
}

/// Peak resident set size of this process, from /proc (Linux); 0 elsewhere.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system) this process has used, from /proc (Linux); 0 elsewhere.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on every Linux ABI kustody targets.
    (ticks(11) + ticks(12)) / 100.0
}

impl Stats {
    fn print(&self, w: &mut dyn Write) {
        let secs = self.elapsed.max(1e-9);
        let mb = self.bytes as f64 / 1e6;
        let _ = writeln!(w, "── kustody hunt summary ──");
        let _ = writeln!(w, "files:       {} ({} unreadable)", self.files, self.unreadable.len());
        if let Some(first) = self.skipped.first() {
            let _ = writeln!(
                w,
                "skipped:     {} files in directories that are not logs by their names (first: {}); name them to read them",
                self.skipped.len(),
                sanitize(&first.display().to_string())
            );
        }
        for u in &self.unreadable {
            let _ = writeln!(w, "  unreadable: {}", sanitize(u));
        }
        let _ = writeln!(
            w,
            "events:      {}{}",
            self.events,
            if self.skipped_by_time > 0 {
                format!(" ({} outside --since/--until)", self.skipped_by_time)
            } else {
                String::new()
            }
        );
        let _ = writeln!(w, "bad records: {}", self.bad);
        for b in &self.first_bad {
            let _ = writeln!(w, "  {}", sanitize(b));
        }
        if self.bad > self.first_bad.len() as u64 {
            let _ = writeln!(w, "  … and {} more", self.bad - self.first_bad.len() as u64);
        }
        if self.untimed > 0 {
            let _ = writeln!(
                w,
                "no time:     {} events have no parseable timestamp (kept; their alerts carry \"time\": null)",
                self.untimed
            );
        }
        if self.degraded > 0 {
            let _ = writeln!(
                w,
                "degraded:    {} events: a rule needed a request/response body nested too deeply to parse, so its ka.req.* fields were unavailable (first at {})",
                self.degraded,
                sanitize(self.first_degraded.as_deref().unwrap_or("?"))
            );
        }
        if self.stageless > 0 {
            let _ = writeln!(
                w,
                "no stage:    {} events have no `stage`: rules that require one (most do) did not see them",
                self.stageless
            );
        }
        let _ = writeln!(w, "rules:       {} active", self.rules_active);
        if self.grouped {
            let _ = writeln!(w, "findings:    {} (from {} rule matches)", self.detections, self.matches);
        } else {
            let _ = writeln!(w, "detections:  {}", self.detections);
        }
        let quieted: u64 = self.quieted_by.iter().map(|(_, n)| n).sum();
        if quieted > 0 {
            let _ = writeln!(w, "quieted:     {quieted} matches by allow entries (--no-allowlist shows them)");
            for (name, n) in &self.quieted_by {
                let _ = writeln!(w, "  {n:>7}  allow {}", sanitize(name));
            }
        }
        let demoted: u64 = self.demoted.values().sum();
        if demoted > 0 {
            let _ = writeln!(w, "demoted:     {demoted} matches on behaviour the baseline knows (seen on enough days; without --baseline they show)");
            for (rule, n) in &self.demoted {
                let _ = writeln!(w, "  {n:>7}  baseline {}", sanitize(rule));
            }
        }
        let mut by_count: Vec<_> = self.per_rule.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (rule, n) in by_count {
            let _ = writeln!(w, "  {n:>7}  {}", sanitize(rule));
        }
        let _ = writeln!(
            w,
            "throughput:  {:.1} MB in {:.2}s = {:.1} MB/s, {:.0} events/s, peak RSS {:.0} MB",
            mb,
            secs,
            mb / secs,
            self.events as f64 / secs,
            peak_rss_bytes() as f64 / 1e6
        );
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "files": self.files,
            "events": self.events,
            "bytes": self.bytes,
            "bad_records": self.bad,
            "degraded_events": self.degraded,
            "events_without_time": self.untimed,
            "detections": self.detections,
            "matches": self.matches,
            "grouped": self.grouped,
            "quieted": self.quieted_by.iter().map(|(n, c)| (n.clone(), *c)).collect::<BTreeMap<String, u64>>(),
            "demoted_by_baseline": self.demoted,
            "events_without_stage": self.stageless,
            "per_rule": self.per_rule,
            "rules_active": self.rules_active,
            "elapsed_seconds": self.elapsed,
            "peak_rss_bytes": peak_rss_bytes(),
            "cpu_seconds": cpu_seconds(),
        })
        .to_string()
    }
}
