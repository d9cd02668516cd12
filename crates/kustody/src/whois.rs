//! `kustody whois IP [--at TIME]` and `kustody baseline learn`, the learnt context of events.
//!
//! `whois`: the pods that held an IP, from the pod bodies the audit
//! events carry (creations, patches, status updates, reads and lists recorded at Request level
//! or above) and pod deletions, over files or the store of `kustody serve`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kustody_ingest::{expand_inputs, ReadOptions};
use kustody_iphistory::{Confidence, Interval, IpHistory, Options};
use kustody_model::time::format_rfc3339_nanos;

use crate::cli::{ListFormat, WhoisArgs};
use crate::render::sanitize;

fn interval_json(i: &Interval) -> serde_json::Value {
    serde_json::json!({
        "ip": i.ip,
        "kind": i.pod.kind.as_deref().unwrap_or("Pod"),
        "pod": i.pod.qualified_name(),
        "uid": i.pod.uid,
        "node": i.pod.node,
        "owner": i.pod.owner,
        "service_account": i.pod.service_account,
        "labels": i.pod.labels,
        "first_seen": format_rfc3339_nanos(i.first_ns),
        "last_seen": format_rfc3339_nanos(i.last_ns),
        "deleted": i.ended_ns.map(format_rfc3339_nanos),
    })
}

pub fn run(args: WhoisArgs) -> Result<ExitCode> {
    if args.ip.parse::<std::net::IpAddr>().is_err() {
        anyhow::bail!("`{}` is not an IP address", sanitize(&args.ip));
    }
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let at = args.at.as_deref().map(|s| crate::timespec::parse(s, now_ns)).transpose().context("--at")?;
    let mut h = IpHistory::new(Options::default());
    let mut events = 0u64;
    // A store of `kustody serve` keeps the IP history itself (indexed by IP): read the IP's
    // holds. A store written before it did (schema < 3) has none: its pod events are read.
    let stored = match &args.store {
        Some(dir) => {
            use kustody_store::Store as _;
            let store = kustody_store::SqliteStore::open_read_only(dir)?;
            let holds = store.ip_intervals(&args.ip)?;
            // any stored hold at all, open or ended (the first row of an index ends the read)
            let any = !holds.is_empty() || !store.recent_intervals(i64::MIN, 1)?.is_empty();
            for i in holds {
                h.restore(i);
            }
            any
        }
        None => false,
    };
    if !stored {
        let files: Vec<crate::source::Source> = match &args.store {
            Some(dir) => vec![crate::source::Source::store(dir, None, None)?],
            None => expand_inputs(&args.paths)?.files.into_iter().map(crate::source::Source::File).collect(),
        };
        let bad = crate::timeline::each_event(&files, &ReadOptions::default(), &mut |ev, _| {
            events += 1;
            h.learn(ev);
        })?;
        if bad > 0 {
            eprintln!("kustody: {bad} unreadable record(s) skipped");
        }
    }
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    let known = match at {
        Some(t) => {
            let a = h.lookup(&args.ip, t);
            match args.format {
                ListFormat::Json => {
                    let v = serde_json::json!({
                        "ip": args.ip,
                        "at": format_rfc3339_nanos(t),
                        "holder": a.as_ref().map(|a| interval_json(&a.interval)),
                        "confidence": a.as_ref().map(|a| a.confidence),
                    });
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                }
                ListFormat::Table => match &a {
                    Some(a) => {
                        let i = &a.interval;
                        writeln!(
                            out,
                            "{} at {}: {} {} (uid {}){}{}{}",
                            sanitize(&args.ip),
                            format_rfc3339_nanos(t),
                            i.pod.kind.as_deref().unwrap_or("pod").to_ascii_lowercase(),
                            sanitize(&i.pod.qualified_name()),
                            sanitize(&i.pod.uid),
                            i.pod.node.as_deref().map(|n| format!(" on node {}", sanitize(n))).unwrap_or_default(),
                            i.pod.owner.as_deref().map(|o| format!(", owned by {}", sanitize(o))).unwrap_or_default(),
                            i.pod
                                .service_account
                                .as_deref()
                                .map(|s| format!(", service account {}", sanitize(s)))
                                .unwrap_or_default(),
                        )?;
                        writeln!(
                            out,
                            "  {}: seen with this IP from {} to {}{}",
                            if a.confidence == Confidence::Observed {
                                "observed"
                            } else {
                                "extrapolated (after its last observation)"
                            },
                            format_rfc3339_nanos(i.first_ns),
                            format_rfc3339_nanos(i.last_ns),
                            i.ended_ns.map(|e| format!(", deleted {}", format_rfc3339_nanos(e))).unwrap_or_default()
                        )?;
                    }
                    None => writeln!(
                        out,
                        "{} at {}: no pod is known to have held it ({} events read; audit bodies of pods are needed)",
                        sanitize(&args.ip),
                        format_rfc3339_nanos(t),
                        events
                    )?,
                },
            }
            a.is_some()
        }
        None => {
            let all = h.intervals(&args.ip);
            match args.format {
                ListFormat::Json => {
                    let v = serde_json::json!({ "ip": args.ip, "holders": all.iter().map(interval_json).collect::<Vec<_>>() });
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                }
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<32} {:<36} {:<16} {:<32} {:<32} DELETED",
                        "POD", "UID", "NODE", "FIRST SEEN", "LAST SEEN"
                    )?;
                    for i in all {
                        writeln!(
                            out,
                            "{:<32} {:<36} {:<16} {:<32} {:<32} {}",
                            sanitize(&i.pod.qualified_name()),
                            sanitize(&i.pod.uid),
                            sanitize(i.pod.node.as_deref().unwrap_or("-")),
                            format_rfc3339_nanos(i.first_ns),
                            format_rfc3339_nanos(i.last_ns),
                            i.ended_ns.map(format_rfc3339_nanos).unwrap_or_else(|| "-".into())
                        )?;
                    }
                }
            }
            !all.is_empty()
        }
    };
    out.flush()?;
    Ok(if known { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `kustody baseline learn PATH… -o FILE`.
pub fn learn_baseline(args: crate::cli::BaselineLearnArgs) -> Result<ExitCode> {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let since = args.since.as_deref().map(|s| crate::timespec::parse(s, now_ns)).transpose().context("--since")?;
    let until = args.until.as_deref().map(|s| crate::timespec::parse(s, now_ns)).transpose().context("--until")?;
    let files: Vec<crate::source::Source> = match &args.store {
        Some(dir) => vec![crate::source::Source::store(dir, since, until)?],
        None => expand_inputs(&args.paths)?.files.into_iter().map(crate::source::Source::File).collect(),
    };
    let mut b = kustody_baseline::Baseline::new(args.min_days);
    b.forget_after_days = args.forget_after_days;
    b.max_keys = args.max_behaviours.max(1);
    let bad = crate::timeline::each_event(&files, &ReadOptions::default(), &mut |ev, _| {
        let t = ev.time_ns();
        if since.is_some_and(|s| t.is_none_or(|t| t < s)) || until.is_some_and(|u| t.is_none_or(|t| t >= u)) {
            return;
        }
        b.learn(ev);
    })?;
    let forgotten = b.forget_stale();
    let text = b.to_json().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&args.output, text).with_context(|| format!("cannot write `{}`", args.output.display()))?;
    let span = match (b.first_ns, b.last_ns) {
        (Some(f), Some(l)) => format!("{} → {}", format_rfc3339_nanos(f), format_rfc3339_nanos(l)),
        _ => "no event".to_owned(),
    };
    eprintln!(
        "kustody: learnt {} behaviours of {} identities from {} events ({span}); {} forgotten as stale, {} evicted by --max-behaviours{}; written to {}",
        b.behaviours.len(),
        b.identities(),
        b.events,
        forgotten,
        b.evicted,
        if bad > 0 { format!("; {bad} unreadable record(s) skipped") } else { String::new() },
        args.output.display()
    );
    if b.events == 0 {
        anyhow::bail!("no audit event to learn from: an empty baseline would know nothing");
    }
    Ok(ExitCode::SUCCESS)
}
