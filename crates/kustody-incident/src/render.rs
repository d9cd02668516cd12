//! What a responder reads: an incident's title, its plain-text summary (what happened, who,
//! where, when, the evidence and the commands to run next) and its JSON form.
//!
//! The commands are real `kustody` invocations, each argument quoted for a POSIX shell, so they
//! can be pasted as they are.

use kustody_model::time::format_rfc3339_nanos;

use crate::{Incident, Status};

/// How the commands to run next reach the data: the server's data directory and cluster
/// context, when known.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `kustody serve`'s data directory (for `timeline --store`).
    pub data_dir: Option<String>,
    /// The console's URL of this incident.
    pub url: Option<String>,
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn time(ns: Option<i64>) -> String {
    ns.map(format_rfc3339_nanos).unwrap_or_else(|| "?".to_owned())
}

/// One line: severity, id, lead rule, who and where.
pub fn title(inc: &Incident) -> String {
    let lead = inc
        .steps
        .iter()
        .min_by_key(|s| (s.priority, !s.correlation, s.first_ns))
        .map(|s| s.rule.as_str())
        .unwrap_or("incident");
    let id = inc.id.map(|i| format!(" #{i}")).unwrap_or_default();
    let who = inc.identity.as_deref().unwrap_or("no identity");
    let place = match &inc.workload {
        Some(w) => format!(" from {}", w.display()),
        None => inc.namespace().map(|n| format!(" in {n}")).unwrap_or_default(),
    };
    let more = match inc.steps.len() {
        0 | 1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    format!("{} incident{id}: {lead}{more} — {who}{place}", inc.severity.upper())
}

/// The commands to run next, as shell lines.
pub fn next_commands(inc: &Incident, ctx: &Context) -> Vec<String> {
    let q = |s: &str| shell_quote(s);
    let mut out = Vec::new();
    let since = inc.first_ns.map(|t| format_rfc3339_nanos(t.saturating_sub(300 * 1_000_000_000)));
    let window = since.map(|s| format!(" --since {}", q(&s))).unwrap_or_default();
    let store = ctx.data_dir.as_deref().map(|d| format!("--store {}", q(d))).unwrap_or_else(|| "AUDIT_LOG".to_owned());
    match inc.identity.as_deref() {
        Some(u) => {
            if let Some(sa) = u.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
                out.push(format!("kustody timeline {store} --sa {}{window}", q(&format!("{}/{}", sa.0, sa.1))));
            } else {
                out.push(format!("kustody timeline {store} --user {}{window}", q(u)));
            }
        }
        None => {
            if let Some(ip) = inc.source_ips.iter().next() {
                out.push(format!("kustody timeline {store} --ip {}{window}", q(ip)));
            }
        }
    }
    let case = inc.id.map(|i| format!(" --case {}", q(&format!("incident-{i}")))).unwrap_or_default();
    let reason = format!(
        "incident {}: {}",
        inc.id.map(|i| i.to_string()).unwrap_or_default(),
        inc.steps.first().map(|s| s.rule.as_str()).unwrap_or("suspicious activity")
    );
    // The pods it acted from: contain them (after a look at the plan) and keep their evidence.
    for pod in &inc.pods {
        let Some((ns, name)) = pod.split_once('/') else { continue };
        out.push(format!("kustody timeline {store} --pod {}{window}", q(pod)));
        out.push(format!("kustody collect -n {} {}{case}", q(ns), q(name)));
        out.push(format!("kustody quarantine -n {} {} --dry-run --reason {}", q(ns), q(name), q(&reason)));
    }
    // The pods it reached into: what ran there is evidence.
    for pod in inc.reached.iter().filter(|p| !inc.pods.contains(*p)) {
        let Some((ns, name)) = pod.split_once('/') else { continue };
        out.push(format!("kustody collect -n {} {}{case}", q(ns), q(name)));
    }
    out
}

/// The plain-text summary.
pub fn summary(inc: &Incident, ctx: &Context) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(title(inc));
    let promoted = inc.promoted.as_deref().map(|r| format!(" (promoted: {r})")).unwrap_or_default();
    line(format!(
        "Status: {}{} · severity {}{promoted}",
        inc.status.as_str(),
        inc.assignee.as_deref().map(|a| format!(", assigned to {a}")).unwrap_or_default(),
        inc.severity.upper()
    ));
    line(format!("When: {} → {}", time(inc.first_ns), time(inc.last_ns)));
    line(String::new());
    line("What happened:".to_owned());
    for st in &inc.steps {
        let cmd = st.command.as_deref().map(|c| format!(" [command: {c}]")).unwrap_or_default();
        let n = if st.events > 1 { format!(" ×{}", st.events) } else { String::new() };
        line(format!("  {} {} {}{n}: {}{cmd}", time(st.first_ns), st.priority.upper(), st.rule, st.output));
    }
    if inc.steps_dropped > 0 {
        line(format!("  … and {} more findings (in the store)", inc.steps_dropped));
    }
    line(String::new());
    line(format!("Who: {}", inc.identity.as_deref().unwrap_or("(no identity)")));
    if !inc.source_ips.is_empty() {
        let ips: Vec<String> = inc
            .source_ips
            .iter()
            .map(|ip| match inc.ip_pods.get(ip) {
                Some(o) => format!(
                    "{ip} (pod {}{}{})",
                    o.pod,
                    o.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default(),
                    if o.observed { "" } else { ", last seen before" }
                ),
                None => ip.clone(),
            })
            .collect();
        line(format!("  from {}", ips.join(", ")));
    }
    for s in &inc.stolen_token {
        line(format!("  STOLEN TOKEN? {s}"));
    }
    if !inc.pods.is_empty() {
        line(format!("  acting from pod(s) {}", inc.pods.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    if !inc.reached.is_empty() {
        line(format!("  reached into pod(s) {}", inc.reached.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    let cluster = inc.cluster.as_deref().map(|c| format!("cluster {c}, ")).unwrap_or_default();
    let wl = inc
        .workload
        .as_ref()
        .map(|w| format!(", workload {}{}", w.display(), if w.inferred { " (from the pod name)" } else { "" }))
        .unwrap_or_default();
    let nss = if inc.namespaces.is_empty() {
        "cluster-scoped".to_owned()
    } else {
        format!("namespace(s) {}", inc.namespaces.iter().cloned().collect::<Vec<_>>().join(", "))
    };
    let nodes = if inc.nodes.is_empty() {
        String::new()
    } else {
        format!(", node(s) {}", inc.nodes.iter().cloned().collect::<Vec<_>>().join(", "))
    };
    line(format!("Where: {cluster}{nss}{wl}{nodes}"));
    if !inc.audit_ids.is_empty() {
        line(format!("Evidence (auditIDs): {}", inc.audit_ids.join(", ")));
    }
    let next = next_commands(inc, ctx);
    if !next.is_empty() {
        line(String::new());
        line("Next:".to_owned());
        for c in next {
            line(format!("  {c}"));
        }
    }
    if let Some(u) = &ctx.url {
        line(format!("Console: {u}"));
    }
    if inc.status == Status::Resolved {
        line("This incident is resolved.".to_owned());
    }
    s
}

/// The incident as JSON (API, console, sinks).
pub fn to_json(inc: &Incident, ctx: &Context) -> serde_json::Value {
    let t = |ns: Option<i64>| ns.map(format_rfc3339_nanos);
    let steps: Vec<serde_json::Value> = inc
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "finding_id": s.finding_id,
                "rule": s.rule,
                "priority": s.priority.falco_name(),
                "first_seen": t(s.first_ns),
                "last_seen": t(s.last_ns),
                "events": s.events,
                "output": s.output,
                "target": s.target,
                "verb": s.verb,
                "command": s.command,
                "correlation": s.correlation,
            })
        })
        .collect();
    serde_json::json!({
        "id": inc.id,
        "title": title(inc),
        "severity": inc.severity.falco_name(),
        "promoted": inc.promoted,
        "status": inc.status.as_str(),
        "assignee": inc.assignee,
        "cluster": inc.cluster,
        "first_seen": t(inc.first_ns),
        "last_seen": t(inc.last_ns),
        "who": {
            "identity": inc.identity,
            "source_ips": inc.source_ips,
            "pods": inc.pods,
        },
        "where": {
            "cluster": inc.cluster,
            "namespaces": inc.namespaces,
            "workload": inc.workload,
        },
        "steps": steps,
        "steps_dropped": inc.steps_dropped,
        "rules": inc.rules(),
        "evidence": { "audit_ids": inc.audit_ids },
        "next": next_commands(inc, ctx),
        "url": ctx.url,
        "summary": summary(inc, ctx),
    })
}
