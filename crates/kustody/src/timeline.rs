//! `kustody timeline`: the whole story of one identity — every event that touches a pod, user,
//! service account or source IP, in time order, each marked with the detections it triggered.
//!
//! A pod's story needs facts that may appear anywhere in the logs (its service account, its
//! owners, its IP), so files are read twice: a first pass learns the facts, the second selects
//! events. Standard input can only be read once: the facts are then learned as events arrive.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use kustody_ingest::{expand_inputs, InputFile, ReadOptions};
use kustody_model::time::format_rfc3339_secs;
use kustody_model::{rawjson, Event, EventContext, Priority, SourceRef};
use kustody_rules::{EngineOptions, Scratch};
use serde_json::{json, Value};

use crate::cli::{TimelineArgs, TimelineFormat};
use crate::render::{context_cells, sanitize, timesketch_fields, truncate, write_csv_row, CONTEXT_HEADER};
use crate::{ruleset, timespec};

enum Who {
    Pod { ns: String, name: String },
    User(String),
    Sa { ns: String, name: String },
    Ip(String),
}

/// What the logs say about the pod.
#[derive(Default)]
struct PodFacts {
    service_account: Option<String>,
    ip: Option<String>,
    /// Owners, transitively: replicasets/x, deployments/y, …
    owners: BTreeSet<Obj>,
    /// Every ownerReference seen on a create in the pod's namespace: object → its owners.
    refs: Vec<(Obj, Vec<Obj>)>,
}

/// (resource, name) of an object in the pod's namespace.
type Obj = (String, String);

struct Entry {
    time_ns: Option<i64>,
    seq: u64,
    why: String,
    context: EventContext,
    audit_id: Option<String>,
    source: SourceRef,
    detections: Vec<(String, Priority)>,
    /// The pod that held the request's source IP then (`namespace/name`), from the IP history.
    source_pod: Option<String>,
}

fn split_ns(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_owned(), name.to_owned())),
        _ => bail!("{what} must be NAMESPACE/NAME, not `{s}`"),
    }
}

fn kind_to_resource(kind: &str) -> String {
    match kind {
        "ReplicaSet" => "replicasets".into(),
        "Deployment" => "deployments".into(),
        "StatefulSet" => "statefulsets".into(),
        "DaemonSet" => "daemonsets".into(),
        "Job" => "jobs".into(),
        "CronJob" => "cronjobs".into(),
        "ReplicationController" => "replicationcontrollers".into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

/// The object's name from objectRef, or from the body of a create.
fn object_name(ev: &Event<'_>) -> Option<String> {
    if let Some(n) = ev.object_ref().and_then(|o| o.name.as_deref()) {
        return Some(n.to_owned());
    }
    fn body(raw: Option<&str>) -> Option<String> {
        raw.and_then(|r| rawjson::pointer(r, &["metadata", "name"])).and_then(rawjson::text).map(|c| c.into_owned())
    }
    body(ev.response_object_raw()).or_else(|| body(ev.request_object_raw()))
}

fn owner_refs(ev: &Event<'_>) -> Vec<Obj> {
    let from = |raw: Option<&str>| -> Vec<Obj> {
        let Some(list) =
            raw.and_then(|r| rawjson::pointer(r, &["metadata", "ownerReferences"])).and_then(rawjson::items)
        else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|o| {
                let kind = rawjson::pointer(o, &["kind"]).and_then(rawjson::text)?;
                let name = rawjson::pointer(o, &["name"]).and_then(rawjson::text)?;
                Some((kind_to_resource(&kind), name.into_owned()))
            })
            .collect()
    };
    let r = from(ev.response_object_raw());
    if r.is_empty() {
        from(ev.request_object_raw())
    } else {
        r
    }
}

impl PodFacts {
    fn learn(&mut self, ns: &str, name: &str, ev: &Event<'_>) {
        let Some(o) = ev.object_ref() else { return };
        if o.namespace.as_deref() != Some(ns) {
            return;
        }
        let resource = o.resource.as_deref().unwrap_or("");
        let obj = object_name(ev);
        if ev.verb() == Some("create") && o.subresource.is_none() {
            if let Some(n) = &obj {
                let refs = owner_refs(ev);
                if !refs.is_empty() {
                    self.refs.push(((resource.to_owned(), n.clone()), refs));
                }
            }
        }
        if resource != "pods" || obj.as_deref() != Some(name) {
            return;
        }
        for raw in [ev.request_object_raw(), ev.response_object_raw()].into_iter().flatten() {
            if self.service_account.is_none() {
                self.service_account = rawjson::pointer(raw, &["spec", "serviceAccountName"])
                    .and_then(rawjson::text)
                    .map(|c| c.into_owned());
            }
            if let Some(ip) = rawjson::pointer(raw, &["status", "podIP"]).and_then(rawjson::text) {
                self.ip = Some(ip.into_owned());
            }
        }
    }

    /// Resolves the owner chain from the pod's own references.
    fn resolve_owners(&mut self, name: &str) {
        let mut frontier = vec![("pods".to_owned(), name.to_owned())];
        while let Some(obj) = frontier.pop() {
            for (child, parents) in &self.refs {
                if *child == obj {
                    for p in parents {
                        if self.owners.insert(p.clone()) {
                            frontier.push(p.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Why an event belongs to the timeline, or `None`.
/// The pod that held the event's peer address (the last source IP) at its time.
fn source_pod(ips: &kustody_iphistory::IpHistory, ev: &Event<'_>) -> Option<String> {
    let ip = ev.source_ips()?.last()?.clone();
    let a = ips.lookup(&ip, ev.time_ns()?)?;
    a.interval.pod.is_pod().then(|| a.interval.pod.qualified_name())
}

fn select(who: &Who, facts: &PodFacts, ev: &Event<'_>, from: Option<&str>) -> Option<String> {
    let user = ev.user().and_then(|u| u.username.as_deref());
    let o = ev.object_ref();
    let ns = o.and_then(|o| o.namespace.as_deref());
    let resource = o.and_then(|o| o.resource.as_deref());
    match who {
        Who::User(u) => {
            if user == Some(u) {
                Some("user".into())
            } else if ev.impersonated_user().and_then(|i| i.username.as_deref()) == Some(u) {
                Some("impersonated".into())
            } else {
                None
            }
        }
        Who::Ip(ip) => ev.source_ips().is_some_and(|ips| ips.iter().any(|i| i == ip)).then(|| "source IP".into()),
        Who::Sa { ns: sns, name } => {
            if user == Some(format!("system:serviceaccount:{sns}:{name}").as_str()) {
                Some("its token".into())
            } else if ns == Some(sns) && resource == Some("serviceaccounts") && object_name(ev).as_deref() == Some(name)
            {
                Some("the service account".into())
            } else {
                None
            }
        }
        Who::Pod { ns: pns, name } => {
            let obj = object_name(ev);
            if ns == Some(pns) && resource == Some("pods") && obj.as_deref() == Some(name) {
                return Some(match o.and_then(|o| o.subresource.as_deref()) {
                    Some(sub) => format!("pod/{sub}"),
                    None => "pod".into(),
                });
            }
            if ns == Some(pns) && matches!(ev.verb(), Some("create" | "update" | "patch" | "delete")) {
                if let (Some(r), Some(n)) = (resource, obj.as_deref()) {
                    if facts.owners.contains(&(r.to_owned(), n.to_owned())) {
                        return Some(format!("owner {r}/{n}"));
                    }
                }
            }
            // the pod that held the request's address then, when the logs tell
            let ours = from.map(|p| p.split_once('/') == Some((pns.as_str(), name.as_str())));
            if let Some(sa) = &facts.service_account {
                if user == Some(format!("system:serviceaccount:{pns}:{sa}").as_str()) {
                    return match ours {
                        Some(true) => Some("SA token, from its IP".into()),
                        // another pod of the same service account made it
                        Some(false) => None,
                        // who held the address is unknown: its IP as last seen, or just the SA
                        None => {
                            let from_pod = facts
                                .ip
                                .as_deref()
                                .is_some_and(|ip| ev.source_ips().is_some_and(|s| s.iter().any(|i| i == ip)));
                            Some(if from_pod { "SA token, pod IP".into() } else { "SA token".into() })
                        }
                    };
                }
            }
            // anyone's request from the address the pod held then (a token used from the pod)
            if ours == Some(true) {
                return Some("from its IP".into());
            }
            None
        }
    }
}

/// Calls `f` for every event of every input, in order.
pub(crate) fn each_event(
    files: &[crate::source::Source],
    opts: &ReadOptions,
    f: &mut dyn FnMut(&Event<'_>, SourceRef),
) -> Result<u64> {
    let mut bad = 0u64;
    for file in files {
        let mut reader = file.open(opts)?;
        while let Some(chunk) = reader.next_chunk() {
            chunk.records(|rec| match rec {
                Err(_) => bad += 1,
                Ok(mut rec) => match rec.event() {
                    Err(_) => bad += 1,
                    Ok(ev) => {
                        let src = SourceRef {
                            file: Arc::clone(&chunk.file),
                            line: rec.line,
                            offset: rec.offset,
                            format: rec.format,
                        };
                        f(&ev, src);
                    }
                },
            });
        }
    }
    Ok(bad)
}

pub fn run(args: TimelineArgs) -> Result<ExitCode> {
    let who = match (&args.pod, &args.user, &args.sa, &args.ip) {
        (Some(p), ..) => {
            let (ns, name) = split_ns(p, "--pod")?;
            Who::Pod { ns, name }
        }
        (_, Some(u), ..) => Who::User(u.clone()),
        (_, _, Some(s), _) => {
            let (ns, name) = split_ns(s, "--sa")?;
            Who::Sa { ns, name }
        }
        (.., Some(ip)) => Who::Ip(ip.clone()),
        _ => bail!("name one of --pod, --user, --sa or --ip"),
    };
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let since = args.since.as_deref().map(|s| timespec::parse(s, now_ns)).transpose().context("--since")?;
    let until = args.until.as_deref().map(|s| timespec::parse(s, now_ns)).transpose().context("--until")?;
    let (engine, diags) = ruleset::load(&args.rules.rules, !args.rules.no_default_rules, &EngineOptions::default())?;
    for d in &diags {
        eprintln!("{}", sanitize(&d.to_string()));
    }
    let files: Vec<crate::source::Source> = match &args.store {
        Some(dir) => vec![crate::source::Source::store(dir, since, until)?],
        None => expand_inputs(&args.paths)?.files.into_iter().map(crate::source::Source::File).collect(),
    };
    let opts = ReadOptions { input_format: args.input_format.into(), ..ReadOptions::default() };
    let mut facts = PodFacts::default();
    // Who each IP was: from the pod bodies and deletions in the same logs.
    let mut ips = kustody_iphistory::IpHistory::new(kustody_iphistory::Options::default());
    let reread = !files.iter().any(|f| matches!(f, crate::source::Source::File(InputFile::Stdin)));
    if reread {
        each_event(&files, &opts, &mut |ev, _| {
            ips.learn(ev);
            if let Who::Pod { ns, name } = &who {
                facts.learn(ns, name, ev);
            }
        })?;
        if let Who::Pod { name, .. } = &who {
            facts.resolve_owners(name);
        }
    }
    let mut entries = Vec::new();
    let mut scratch = Scratch::default();
    let mut matched = Vec::new();
    let mut seq = 0u64;
    let bad = each_event(&files, &opts, &mut |ev, src| {
        seq += 1;
        if !reread {
            ips.learn(ev);
            if let Who::Pod { ns, name } = &who {
                facts.learn(ns, name, ev);
                facts.resolve_owners(name);
            }
        }
        let from = source_pod(&ips, ev);
        let Some(why) = select(&who, &facts, ev, from.as_deref()) else { return };
        if let Some(t) = ev.time_ns() {
            if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                return;
            }
        } else if since.is_some() || until.is_some() {
            return;
        }
        matched.clear();
        engine.matches(ev, &mut scratch, &mut matched);
        let detections = matched.iter().filter_map(|&i| engine.rule(i)).map(|r| (r.name.clone(), r.priority)).collect();
        entries.push(Entry {
            time_ns: ev.time_ns(),
            seq,
            why,
            context: EventContext::of(ev),
            audit_id: ev.audit_id().map(str::to_owned),
            source: src,
            detections,
            source_pod: from,
        });
    })?;
    entries.sort_by_key(|e| (e.time_ns.unwrap_or(i64::MAX), e.seq));

    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create `{}`", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if args.format == TimelineFormat::Csv {
        writeln!(out, "time,why,{CONTEXT_HEADER},audit_id,file,line,detections,source_pod")?;
    }
    for e in &entries {
        write_entry(&mut out, e, args.format)?;
    }
    out.flush()?;
    let detections: usize = entries.iter().map(|e| e.detections.len()).sum();
    eprintln!("timeline: {} events, {detections} detections on them, {bad} bad records skipped", entries.len());
    if let (Who::Pod { .. }, Some(sa)) = (&who, &facts.service_account) {
        eprintln!(
            "  pod facts: service account `{sa}`, IP {}, owners {:?}",
            facts.ip.as_deref().unwrap_or("unknown"),
            facts.owners
        );
    }
    Ok(if entries.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn write_entry(out: &mut dyn Write, e: &Entry, format: TimelineFormat) -> Result<()> {
    let c = &e.context;
    let rules: Vec<String> = e.detections.iter().map(|(r, _)| r.clone()).collect();
    match format {
        TimelineFormat::Table => {
            let time = e.time_ns.map(format_rfc3339_secs).unwrap_or_else(|| "-".repeat(20));
            let mut what = vec![c.verb.clone().unwrap_or_default()];
            what.extend(c.resource_path());
            what.extend(c.object());
            if let Some(code) = c.response_code {
                what.push(format!("→{code}"));
            }
            writeln!(out, "{}", truncate(&format!("{time}  {}  [{}]", what.join(" "), e.why), 80))?;
            let mut who = vec![c.user.clone().unwrap_or_else(|| "<no user>".into())];
            if let Some(ip) = &c.source_ip {
                who.push(format!("from {ip}"));
            }
            if let Some(p) = &e.source_pod {
                who.push(format!("(pod {p})"));
            }
            writeln!(out, "    {}", truncate(&who.join(" "), 76))?;
            if let Some(cmd) = &c.command {
                writeln!(out, "    $ {}", truncate(cmd, 74))?;
            }
            if !rules.is_empty() {
                writeln!(out, "    ! {}", truncate(&rules.join(", "), 74))?;
            }
        }
        TimelineFormat::Jsonl => {
            let v = json!({
                "time": e.time_ns.map(kustody_model::time::format_rfc3339_nanos),
                "why": e.why, "user": c.user, "impersonated_user": c.impersonated_user, "verb": c.verb,
                "resource": c.resource, "subresource": c.subresource, "namespace": c.namespace, "name": c.name,
                "command": c.command, "response_code": c.response_code, "source_ip": c.source_ip,
                "source_pod": e.source_pod,
                "user_agent": c.user_agent, "audit_id": e.audit_id, "file": &*e.source.file, "line": e.source.line,
                "format": e.source.format.as_str(),
                "detections": e.detections.iter().map(|(r, p)| json!({"rule": r, "priority": p.falco_name()})).collect::<Vec<_>>(),
            });
            serde_json::to_writer(&mut *out, &v)?;
            out.write_all(b"\n")?;
        }
        TimelineFormat::Csv => {
            let mut cols =
                vec![e.time_ns.map(kustody_model::time::format_rfc3339_nanos).unwrap_or_default(), e.why.clone()];
            cols.extend(context_cells(c));
            cols.extend([
                e.audit_id.clone().unwrap_or_default(),
                e.source.file.to_string(),
                e.source.line.to_string(),
                rules.join("; "),
                e.source_pod.clone().unwrap_or_default(),
            ]);
            write_csv_row(out, &cols)?;
        }
        TimelineFormat::Timesketch => {
            let mut m = timesketch_fields(c, e.time_ns, e.audit_id.as_deref(), &e.source);
            let msg = format!(
                "{} {} {} {}{}",
                c.user.as_deref().unwrap_or("<no user>"),
                c.verb.as_deref().unwrap_or(""),
                c.resource_path().unwrap_or_default(),
                c.object().unwrap_or_default(),
                c.response_code.map(|x| format!(" → {x}")).unwrap_or_default()
            );
            m.insert("message".into(), json!(msg));
            m.insert("timestamp_desc".into(), json!("Kubernetes API request"));
            m.insert("why".into(), json!(e.why));
            if let Some(p) = &e.source_pod {
                m.insert("source_pod".into(), json!(p));
            }
            m.insert("detections".into(), json!(rules.join(", ")));
            serde_json::to_writer(&mut *out, &Value::Object(m))?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
