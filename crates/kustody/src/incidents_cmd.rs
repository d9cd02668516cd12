//! `kustody incidents …` and `kustody serve outbox …`: the response side of what `kustody
//! serve` stored, from its data directory (reads) or through the server (reads and changes).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kustody_incident::render::Context as RenderContext;
use kustody_serve::api::{incident_detail, incident_json, outbox_json, IncidentParams, OutboxParams};
use kustody_store::{SqliteStore, Store};

use crate::cli::{
    ActionsCommand, IncidentListArgs, IncidentsAction, IncidentsArgs, ListFormat, OutboxCommand, ServerConn,
};
use crate::render::sanitize;

fn token(conn: &ServerConn) -> Result<Option<String>> {
    token_from(conn.token_file.as_deref())
}

/// The bearer token of a token file (its first field), else `$KUSTODY_TOKEN`.
pub(crate) fn token_from(file: Option<&std::path::Path>) -> Result<Option<String>> {
    match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))?;
            let t = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .find(|l| !l.is_empty())
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_owned);
            Ok(Some(t.with_context(|| format!("no token in `{}`", p.display()))?))
        }
        None => Ok(std::env::var("KUSTODY_TOKEN").ok()),
    }
}

/// GET or POST through the server; the answer's JSON, or the server's reason as the error.
fn call(conn: &ServerConn, server: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
    let t = token(conn)?;
    let (status, text) = match body {
        Some(b) => kustody_serve::client::post(server, conn.ca.as_deref(), t.as_deref(), path, &b.to_string())?,
        None => kustody_serve::client::get(server, conn.ca.as_deref(), t.as_deref(), path)?,
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !(200..300).contains(&status) {
        let reason = v.get("error").and_then(|e| e.as_str()).map(str::to_owned).unwrap_or_else(|| v.to_string());
        bail!("{server} answered {status}: {}", sanitize(&reason));
    }
    Ok(v)
}

fn local(conn: &ServerConn) -> Result<SqliteStore> {
    let Some(dir) = &conn.data_dir else {
        bail!("--data-dir DIR (or KUSTODY_DATA_DIR), or --server URL, is required");
    };
    if !dir.join(kustody_store::sqlite::DB_FILE).exists() {
        bail!("no kustody store in `{}` (kustody serve --data-dir DIR makes one)", dir.display());
    }
    Ok(SqliteStore::open_read_only(dir)?)
}

fn ctx(conn: &ServerConn) -> RenderContext {
    RenderContext { data_dir: conn.data_dir.as_ref().map(|d| d.display().to_string()), url: None }
}

pub fn run(args: IncidentsArgs) -> Result<ExitCode> {
    match args.action {
        None => list(&args.list),
        Some(IncidentsAction::List(l)) => list(&l),
        Some(IncidentsAction::Show(a)) => show(a.id, &a.conn),
        Some(IncidentsAction::Ack(a)) => {
            change(a.id, &a.conn, serde_json::json!({ "status": "acknowledged", "note": a.note }))
        }
        Some(IncidentsAction::Resolve(a)) => {
            change(a.id, &a.conn, serde_json::json!({ "status": "resolved", "note": a.note }))
        }
        Some(IncidentsAction::Assign(a)) => change(a.id, &a.conn, serde_json::json!({ "assignee": a.assignee })),
        Some(IncidentsAction::Note(a)) => change(a.id, &a.conn, serde_json::json!({ "note": a.text })),
    }
}

fn list(a: &IncidentListArgs) -> Result<ExitCode> {
    let p = IncidentParams {
        status: a.status.clone(),
        unresolved: Some(!a.all && a.status.is_none()),
        min_priority: a.min_priority.clone(),
        identity: a.identity.clone(),
        namespace: a.namespace.clone(),
        cluster: a.cluster.clone(),
        since: a.since.clone(),
        before: None,
        limit: Some(a.limit),
    };
    let items: Vec<serde_json::Value> = match &a.conn.server {
        Some(server) => {
            let q = kustody_serve::client::query(&[
                ("status", p.status.clone()),
                ("unresolved", p.unresolved.map(|u| u.to_string())),
                ("min_priority", p.min_priority.clone()),
                ("identity", p.identity.clone()),
                ("namespace", p.namespace.clone()),
                ("cluster", p.cluster.clone()),
                ("since", p.since.clone()),
                ("limit", p.limit.map(|l| l.to_string())),
            ]);
            let v = call(&a.conn, server, &format!("/v1/incidents?{q}"), None)?;
            v.get("incidents").and_then(|i| i.as_array()).cloned().unwrap_or_default()
        }
        None => {
            let store = local(&a.conn)?;
            let q = p.query().map_err(anyhow::Error::msg)?;
            let c = ctx(&a.conn);
            store.search_incidents(&q)?.iter().map(|r| incident_json(r, &c)).collect()
        }
    };
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    match a.conn.format {
        ListFormat::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({ "incidents": items }))?)?
        }
        ListFormat::Table => {
            writeln!(out, "{:<6} {:<9} {:<13} {:<20} {:<6} TITLE", "ID", "SEVERITY", "STATUS", "LAST SEEN", "STEPS")?;
            for i in &items {
                let s = |k: &str| i.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let last = s("last_seen");
                writeln!(
                    out,
                    "{:<6} {:<9} {:<13} {:<20} {:<6} {}",
                    i.get("id").and_then(|v| v.as_i64()).unwrap_or_default(),
                    s("severity").to_uppercase(),
                    s("status"),
                    last.get(..19).unwrap_or(&last),
                    i.get("steps").and_then(|v| v.as_array()).map_or(0, Vec::len),
                    sanitize(&s("title")),
                )?;
            }
        }
    }
    out.flush()?;
    Ok(if items.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn show(id: i64, conn: &ServerConn) -> Result<ExitCode> {
    let v = match &conn.server {
        Some(server) => call(conn, server, &format!("/v1/incidents/{id}"), None)?,
        None => {
            let store = local(conn)?;
            incident_detail(&store, id, &ctx(conn))
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("no incident {id}"))?
        }
    };
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    match conn.format {
        ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        ListFormat::Table => print_incident(out, &v)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The incident as a responder reads it: its summary, then notes and notifications.
fn print_incident(out: &mut dyn Write, v: &serde_json::Value) -> Result<()> {
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(sanitize).unwrap_or_default();
    for line in v.get("summary").and_then(|x| x.as_str()).unwrap_or_default().lines() {
        writeln!(out, "{}", sanitize(line))?;
    }
    let notes = v.get("notes").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    if !notes.is_empty() {
        writeln!(out, "\nNotes:")?;
        for n in &notes {
            writeln!(out, "  {} {}: {}", s(n, "time"), s(n, "author"), s(n, "text"))?;
        }
    }
    let sent = v.get("notifications").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    if !sent.is_empty() {
        writeln!(out, "\nNotifications:")?;
        for n in &sent {
            let err = n.get("last_error").and_then(|e| e.as_str()).map(|e| format!(" ({})", sanitize(e)));
            writeln!(
                out,
                "  #{} {} → {}: {} after {} attempt(s){}",
                n.get("id").and_then(|i| i.as_i64()).unwrap_or_default(),
                s(n, "action"),
                s(n, "sink"),
                s(n, "state"),
                n.get("attempts").and_then(|i| i.as_u64()).unwrap_or_default(),
                err.unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

fn change(id: i64, conn: &ServerConn, mut body: serde_json::Value) -> Result<ExitCode> {
    let Some(server) = &conn.server else {
        bail!("changing an incident goes through the running server: pass --server URL (with --ca and --token-file)");
    };
    if let Some(o) = body.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    let v = call(conn, server, &format!("/v1/incidents/{id}"), Some(body))?;
    match conn.format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        ListFormat::Table => println!(
            "incident {id}: {} (status {})",
            v.get("title").and_then(|t| t.as_str()).map(sanitize).unwrap_or_default(),
            v.get("status").and_then(|t| t.as_str()).unwrap_or("?")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kustody serve outbox …`.
pub fn outbox(cmd: OutboxCommand) -> Result<ExitCode> {
    match cmd {
        OutboxCommand::List(a) => {
            let p = OutboxParams {
                state: a.state.clone(),
                sink: a.sink.clone(),
                incident: a.incident,
                limit: Some(a.limit),
            };
            let rows: Vec<serde_json::Value> = match &a.conn.server {
                Some(server) => {
                    let q = kustody_serve::client::query(&[
                        ("state", p.state.clone()),
                        ("sink", p.sink.clone()),
                        ("incident", p.incident.map(|i| i.to_string())),
                        ("limit", p.limit.map(|l| l.to_string())),
                    ]);
                    let v = call(&a.conn, server, &format!("/v1/outbox?{q}"), None)?;
                    v.get("notifications").and_then(|n| n.as_array()).cloned().unwrap_or_default()
                }
                None => {
                    let q = p.query().map_err(anyhow::Error::msg)?;
                    local(&a.conn)?.search_outbox(&q)?.iter().map(outbox_json).collect()
                }
            };
            let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
            match a.conn.format {
                ListFormat::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({ "notifications": rows }))?)?
                }
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<7} {:<16} {:<9} {:<8} {:<10} {:<8} {:<20} ERROR",
                        "ID", "SINK", "INCIDENT", "ACTION", "STATE", "ATTEMPTS", "CREATED"
                    )?;
                    for r in &rows {
                        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(sanitize).unwrap_or_else(|| "-".into());
                        let created = s("created");
                        writeln!(
                            out,
                            "{:<7} {:<16} {:<9} {:<8} {:<10} {:<8} {:<20} {}",
                            r.get("id").and_then(|v| v.as_i64()).unwrap_or_default(),
                            s("sink"),
                            r.get("incident_id").and_then(|v| v.as_i64()).map_or("-".into(), |i| i.to_string()),
                            s("action"),
                            s("state"),
                            r.get("attempts").and_then(|v| v.as_u64()).unwrap_or_default(),
                            created.get(..19).unwrap_or(&created),
                            r.get("last_error").and_then(|v| v.as_str()).map(sanitize).unwrap_or_default(),
                        )?;
                    }
                }
            }
            out.flush()?;
            Ok(if rows.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        OutboxCommand::Show(a) => {
            let v = match &a.conn.server {
                Some(server) => call(&a.conn, server, &format!("/v1/outbox/{}", a.id), None)?,
                None => {
                    let store = local(&a.conn)?;
                    let row = store.outbox_row(a.id)?.with_context(|| format!("no notification {}", a.id))?;
                    let mut v = outbox_json(&row);
                    let hist = kustody_serve::api::attempts_json(&store.outbox_attempts(a.id)?);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("history".into(), hist);
                        o.insert("notification".into(), serde_json::from_str(&row.payload).unwrap_or_default());
                    }
                    v
                }
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Retry(a) => {
            let Some(server) = &a.conn.server else {
                bail!(
                    "a retry goes through the running server: pass --server URL (with --ca and an admin --token-file)"
                );
            };
            let v =
                call(&a.conn, server, "/v1/outbox/retry", Some(serde_json::json!({ "ids": a.ids, "sink": a.sink })))?;
            println!(
                "{} notification(s) will be sent again",
                v.get("retried").and_then(|n| n.as_u64()).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kustody actions …`.
pub fn actions(cmd: ActionsCommand) -> Result<ExitCode> {
    match cmd {
        ActionsCommand::List(a) => {
            let rows: Vec<serde_json::Value> = match &a.conn.server {
                Some(server) => {
                    let q = kustody_serve::client::query(&[
                        ("incident", a.incident.map(|i| i.to_string())),
                        ("state", a.state.clone()),
                        ("limit", Some(a.limit.to_string())),
                    ]);
                    let v = call(&a.conn, server, &format!("/v1/actions?{q}"), None)?;
                    v.get("actions").and_then(|n| n.as_array()).cloned().unwrap_or_default()
                }
                None => {
                    let q = kustody_store::ActionQuery {
                        incident_id: a.incident,
                        state: a.state.clone(),
                        since_ns: None,
                        limit: a.limit,
                        target: None,
                    };
                    local(&a.conn)?.search_actions(&q)?.iter().map(kustody_serve::api::action_json).collect()
                }
            };
            let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
            match a.conn.format {
                ListFormat::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({ "actions": rows }))?)?
                }
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<6} {:<9} {:<20} {:<11} {:<18} {:<32} NOTE",
                        "ID", "INCIDENT", "PLAYBOOK", "ACTION", "STATE", "TARGET"
                    )?;
                    for r in &rows {
                        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(sanitize).unwrap_or_else(|| "-".into());
                        let d = r.get("detail").cloned().unwrap_or_default();
                        let note = ["error", "guardrail", "bundle", "status"]
                            .iter()
                            .find_map(|k| {
                                d.get(*k)
                                    .filter(|v| !v.is_null())
                                    .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                            })
                            .map(|n| sanitize(&n))
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "{:<6} {:<9} {:<20} {:<11} {:<18} {:<32} {}",
                            r.get("id").and_then(|v| v.as_i64()).unwrap_or_default(),
                            r.get("incident_id").and_then(|v| v.as_i64()).map_or("-".into(), |i| i.to_string()),
                            s("playbook"),
                            s("action"),
                            s("state"),
                            s("target"),
                            note
                        )?;
                    }
                }
            }
            out.flush()?;
            Ok(if rows.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        ActionsCommand::Approve(a) => decide(&a, "approve"),
        ActionsCommand::Reject(a) => decide(&a, "reject"),
    }
}

fn decide(a: &crate::cli::ActionIdArgs, verb: &str) -> Result<ExitCode> {
    let Some(server) = &a.conn.server else {
        bail!("approvals go through the running server: pass --server URL (with --ca and --token-file)");
    };
    let v = call(&a.conn, server, &format!("/v1/actions/{}/{verb}", a.id), Some(serde_json::json!({})))?;
    println!(
        "action {}: {} {} on {}: {}",
        a.id,
        v.get("playbook").and_then(|x| x.as_str()).map(sanitize).unwrap_or_default(),
        v.get("action").and_then(|x| x.as_str()).unwrap_or("?"),
        v.get("target").and_then(|x| x.as_str()).map(sanitize).unwrap_or_default(),
        v.get("state").and_then(|x| x.as_str()).unwrap_or("?"),
    );
    Ok(ExitCode::SUCCESS)
}
