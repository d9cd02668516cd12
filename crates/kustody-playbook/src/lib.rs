//! Response playbooks: when an incident matches, which actions run on which pods, and the
//! guardrails that decide whether they may.
//!
//! ```yaml
//! playbooks:
//!   - name: contain-attack-chains
//!     match:
//!       rules: [kustody Attack Chain from Enumeration to Escalation]   # any of (lead or folded)
//!       tags: [T1609]                                                  # any of
//!       min_priority: critical                                         # the incident's severity
//!       condition: 'incident.namespace != payments'                    # route syntax
//!     target: acting            # acting (the pods the identity acted from) | reached | both
//!     dry_run: false            # default true: plans are recorded, nothing is changed
//!     approval: false           # true: each action waits for a responder
//!     exclude:
//!       namespaces: [kube-system, 'monitoring-*']
//!       identities: ['system:serviceaccount:kube-system:*']
//!     limits:
//!       per_hour: 5                  # actions started by this playbook per hour
//!       per_namespace_per_hour: 2    # … per namespace
//!       pod_cooldown: 1h             # this playbook never acts on the same pod twice within this
//!       min_healthy_replicas: 1      # the workload keeps at least this many other ready pods
//!     actions:
//!       - collect: { profile: triage, paths: ['/tmp/*'] }
//!       - quarantine: { allow_dns: true, cordon: false }
//!       - label: { key: kustody.io/suspect, value: "true" }
//!       - annotate: { key: kustody.io/incident, value: '{{incident_id}}' }
//!       - notify: { sink: soc-slack }
//! ```
//!
//! A playbook runs at most once per incident, when the incident first matches it. Its actions
//! run in the order written, per target pod; a failed action stops that pod's remaining ones.
//! Dry runs count toward the limits: a dry run shows what the limits would let through.
//!
//! **Architecture Invariant:** no I/O: [`Guard::decide`] takes the time and the history; the
//! server executes the actions (through kustody-collect and kustody-contain) and records them.

use std::collections::VecDeque;
use std::path::Path;

use kustody_incident::Incident;
use kustody_model::yaml;
use kustody_model::Priority;
use kustody_rules::route::{Filter, Record};
use kustody_rules::Pattern;
use serde::{Deserialize, Serialize};

/// One action of a playbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Collect(CollectSpec),
    Quarantine(QuarantineSpec),
    Label(KeyValue),
    Annotate(KeyValue),
    Notify(NotifySpec),
    Release(ReleaseSpec),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Collect(_) => "collect",
            Action::Quarantine(_) => "quarantine",
            Action::Label(_) => "label",
            Action::Annotate(_) => "annotate",
            Action::Notify(_) => "notify",
            Action::Release(_) => "release",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSpec {
    /// `triage` (default), `full` or `minimal`, as `kustody collect --profile`.
    pub profile: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    pub container: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSpec {
    /// `NS[/key=value,…]`, as `kustody quarantine --honeypot`.
    pub honeypot: Option<String>,
    #[serde(default)]
    pub allow_dns: bool,
    #[serde(default)]
    pub cordon: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    #[serde(default)]
    pub restore_labels: bool,
    #[serde(default)]
    pub uncordon: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    /// `{{incident_id}}`, `{{playbook}}` and `{{severity}}` are replaced.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    pub sink: String,
}

/// Which pods a playbook acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The pods the incident's identity acted from (its bound token's pod).
    #[default]
    Acting,
    /// The pods it reached into (exec, attach, …).
    Reached,
    Both,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    min_priority: Option<String>,
    condition: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclude {
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_hour: Option<u32>,
    per_namespace_per_hour: Option<u32>,
    pod_cooldown: Option<String>,
    min_healthy_replicas: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    #[serde(default)]
    target: TargetKind,
    dry_run: Option<bool>,
    #[serde(default)]
    approval: bool,
    #[serde(default)]
    exclude: RawExclude,
    #[serde(default)]
    limits: RawLimits,
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    playbooks: Vec<RawPlaybook>,
}

/// Guardrail limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub per_hour: u32,
    pub per_namespace_per_hour: u32,
    pub pod_cooldown_ns: i64,
    pub min_healthy_replicas: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_hour: 10,
            per_namespace_per_hour: 3,
            pod_cooldown_ns: 3600 * 1_000_000_000,
            min_healthy_replicas: 1,
        }
    }
}

/// A loaded playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub rules: Vec<String>,
    pub tags: Vec<String>,
    pub min_priority: Option<Priority>,
    pub condition: Option<Filter>,
    pub target: TargetKind,
    /// Plans are recorded, nothing is changed (the default).
    pub dry_run: bool,
    pub approval: bool,
    /// Glob patterns, with their text.
    pub exclude_namespaces: Vec<(String, Pattern)>,
    pub exclude_identities: Vec<(String, Pattern)>,
    pub limits: Limits,
    pub actions: Vec<Action>,
    /// `FILE:LINE:COL` of its entry.
    pub origin: String,
}

/// A playbooks file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {key}: {message}")]
pub struct PlaybookError {
    /// `FILE:LINE:COL`.
    pub at: String,
    /// `playbooks[1].limits.pod_cooldown`.
    pub key: String,
    pub message: String,
}

/// Reads a playbooks file.
pub fn load(path: &Path, route_fields: &[&str]) -> Result<Vec<Playbook>, PlaybookError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlaybookError {
        at: path.display().to_string(),
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &path.display().to_string(), route_fields)
}

/// Parses a playbooks file's text; `route_fields` are the fields conditions may use.
pub fn parse(text: &str, file: &str, route_fields: &[&str]) -> Result<Vec<Playbook>, PlaybookError> {
    let err = |pos: yaml::Pos, key: &str, message: String| PlaybookError {
        at: format!("{file}:{}:{}", pos.line, pos.col),
        key: key.to_owned(),
        message,
    };
    let docs = yaml::parse(text).map_err(|e| err(e.pos, "", e.to_string()))?;
    let Some(root) = docs.first() else { return Ok(Vec::new()) };
    let raw: RawFile = yaml::deserialize(root).map_err(|e| err(e.pos, e.path.trim_start_matches('.'), e.message))?;
    let mut out: Vec<Playbook> = Vec::new();
    for (i, r) in raw.playbooks.into_iter().enumerate() {
        let node = root.get("playbooks").and_then(|p| match p {
            yaml::Node::Seq { items, .. } => items.get(i),
            _ => None,
        });
        let pos = node.map_or(root.pos(), |n| n.pos());
        let at = |k: &str| node.and_then(|n| n.get(k)).map_or(pos, |n| n.pos());
        let key = format!("playbooks[{i}]");
        if r.name.trim().is_empty() || out.iter().any(|p| p.name == r.name) {
            return Err(err(
                at("name"),
                &format!("{key}.name"),
                format!("`{}`: a name must be given and unique", r.name),
            ));
        }
        if r.actions.is_empty() {
            return Err(err(at("actions"), &format!("{key}.actions"), "at least one action".into()));
        }
        let m = &r.matcher;
        if m.rules.is_empty() && m.tags.is_empty() && m.min_priority.is_none() && m.condition.is_none() {
            return Err(err(
                at("match"),
                &format!("{key}.match"),
                "say what it matches: rules, tags, min_priority or condition".into(),
            ));
        }
        let min_priority = m
            .min_priority
            .as_deref()
            .map(str::parse::<Priority>)
            .transpose()
            .map_err(|e| err(at("match"), &format!("{key}.match.min_priority"), e.to_string()))?;
        let condition = m
            .condition
            .as_deref()
            .map(|c| Filter::compile(c, route_fields))
            .transpose()
            .map_err(|e| err(at("match"), &format!("{key}.match.condition"), e))?;
        let cooldown = match r.limits.pod_cooldown.as_deref() {
            None => Limits::default().pod_cooldown_ns,
            Some(d) => kustody_rules::correlate::parse_window(d).ok_or_else(|| {
                err(at("limits"), &format!("{key}.limits.pod_cooldown"), format!("bad duration `{d}` (e.g. 30m, 1h)"))
            })?,
        };
        let d = Limits::default();
        for a in &r.actions {
            if let Action::Label(kv) | Action::Annotate(kv) = a {
                if kv.key.trim().is_empty() || kv.key.starts_with("kustody.io/quarantine") {
                    return Err(err(
                        at("actions"),
                        &format!("{key}.actions"),
                        format!("`{}`: not a key a playbook may set", kv.key),
                    ));
                }
            }
        }
        out.push(Playbook {
            name: r.name,
            rules: r.matcher.rules,
            tags: r.matcher.tags,
            min_priority,
            condition,
            target: r.target,
            dry_run: r.dry_run.unwrap_or(true),
            approval: r.approval,
            exclude_namespaces: r.exclude.namespaces.iter().map(|p| (p.clone(), Pattern::new(p, false))).collect(),
            exclude_identities: r.exclude.identities.iter().map(|p| (p.clone(), Pattern::new(p, false))).collect(),
            limits: Limits {
                per_hour: r.limits.per_hour.unwrap_or(d.per_hour),
                per_namespace_per_hour: r.limits.per_namespace_per_hour.unwrap_or(d.per_namespace_per_hour),
                pod_cooldown_ns: cooldown,
                min_healthy_replicas: r.limits.min_healthy_replicas.unwrap_or(d.min_healthy_replicas),
            },
            actions: r.actions,
            origin: format!("{file}:{}:{}", pos.line, pos.col),
        });
    }
    Ok(out)
}

impl Playbook {
    /// Whether the incident (with the fields routes see) matches.
    pub fn matches(&self, inc: &Incident, record: &Record) -> bool {
        let rules = inc.rules();
        let rules_ok = self.rules.is_empty() || self.rules.iter().any(|r| rules.contains(&r.as_str()));
        let tags_ok = self.tags.is_empty()
            || match record.get("finding.tags") {
                Some(kustody_rules::route::Value::List(t)) => self.tags.iter().any(|x| t.contains(x)),
                _ => false,
            };
        let prio_ok = self.min_priority.is_none_or(|m| inc.severity.at_least(m));
        rules_ok && tags_ok && prio_ok && self.condition.as_ref().is_none_or(|c| c.matches(record))
    }

    /// The pods (`namespace/name`) it acts on for this incident.
    pub fn targets(&self, inc: &Incident) -> Vec<String> {
        let mut v: Vec<String> = match self.target {
            TargetKind::Acting => inc.pods.iter().cloned().collect(),
            TargetKind::Reached => inc.reached.iter().cloned().collect(),
            TargetKind::Both => inc.pods.iter().chain(&inc.reached).cloned().collect(),
        };
        v.sort();
        v.dedup();
        v
    }

    /// A label or annotation value with its placeholders filled in.
    pub fn expand(&self, value: &str, inc: &Incident) -> String {
        value
            .replace("{{incident_id}}", &inc.id.map(|i| i.to_string()).unwrap_or_default())
            .replace("{{playbook}}", &self.name)
            .replace("{{severity}}", inc.severity.falco_name())
    }
}

/// What the guardrails decided for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Act now.
    Run,
    /// Record the plan, change nothing.
    DryRun,
    /// Wait for a responder's approval.
    AwaitApproval,
    /// Not allowed: why.
    Skip(String),
}

impl Decision {
    /// The state an action is stored with.
    pub fn state(&self) -> &'static str {
        match self {
            Decision::Run => "planned",
            Decision::DryRun => "dry-run",
            Decision::AwaitApproval => "awaiting-approval",
            Decision::Skip(_) => "skipped",
        }
    }
}

/// One past (or approved) start, for the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub playbook: String,
    pub namespace: String,
    pub pod: String,
    pub time_ns: i64,
}

/// The limits' memory: starts within the last hour (and the longest cooldown).
#[derive(Debug, Default)]
pub struct Guard {
    history: VecDeque<Started>,
    /// How far back starts are kept.
    keep_ns: i64,
}

const HOUR_NS: i64 = 3600 * 1_000_000_000;

impl Guard {
    pub fn new(playbooks: &[Playbook]) -> Guard {
        let keep_ns = playbooks.iter().map(|p| p.limits.pod_cooldown_ns).max().unwrap_or(0).max(HOUR_NS);
        Guard { history: VecDeque::new(), keep_ns }
    }

    /// Remembers a start (also to restore the history after a restart).
    pub fn record(&mut self, s: Started) {
        let at = self.history.partition_point(|h| h.time_ns <= s.time_ns);
        self.history.insert(at, s);
    }

    fn forget_before(&mut self, now_ns: i64) {
        while self.history.front().is_some_and(|h| now_ns.saturating_sub(h.time_ns) > self.keep_ns) {
            self.history.pop_front();
        }
    }

    /// Whether `pb` may act on pod `namespace/pod` of an incident by `identity` at `now_ns`.
    /// The workload's health (`min_healthy_replicas`) needs the cluster and is checked by the
    /// executor before it changes anything.
    pub fn decide(
        &mut self,
        pb: &Playbook,
        namespace: &str,
        pod: &str,
        identity: Option<&str>,
        now_ns: i64,
    ) -> Decision {
        self.forget_before(now_ns);
        if let Some((text, _)) = pb.exclude_namespaces.iter().find(|(_, p)| p.matches(namespace)) {
            return Decision::Skip(format!("namespace {namespace} is excluded ({text})"));
        }
        if let Some(id) = identity {
            if let Some((text, _)) = pb.exclude_identities.iter().find(|(_, p)| p.matches(id)) {
                return Decision::Skip(format!("identity {id} is excluded ({text})"));
            }
        }
        let recent = |h: &&Started| now_ns.saturating_sub(h.time_ns) <= HOUR_NS;
        if let Some(h) = self.history.iter().find(|h| {
            h.playbook == pb.name
                && h.namespace == namespace
                && h.pod == pod
                && now_ns.saturating_sub(h.time_ns) <= pb.limits.pod_cooldown_ns
        }) {
            return Decision::Skip(format!(
                "pod {namespace}/{pod} was acted on {} s ago by this playbook (cooldown {} s)",
                now_ns.saturating_sub(h.time_ns) / 1_000_000_000,
                pb.limits.pod_cooldown_ns / 1_000_000_000
            ));
        }
        let mine = self.history.iter().filter(recent).filter(|h| h.playbook == pb.name).count();
        if mine >= pb.limits.per_hour as usize {
            return Decision::Skip(format!(
                "rate limit: playbook {} acted {mine} times in the last hour (per_hour {})",
                pb.name, pb.limits.per_hour
            ));
        }
        let in_ns =
            self.history.iter().filter(recent).filter(|h| h.playbook == pb.name && h.namespace == namespace).count();
        if in_ns >= pb.limits.per_namespace_per_hour as usize {
            return Decision::Skip(format!(
                "rate limit: playbook {} acted {in_ns} times in namespace {namespace} in the last hour (per_namespace_per_hour {})",
                pb.name, pb.limits.per_namespace_per_hour
            ));
        }
        self.record(Started {
            playbook: pb.name.clone(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            time_ns: now_ns,
        });
        if pb.approval {
            Decision::AwaitApproval
        } else if pb.dry_run {
            Decision::DryRun
        } else {
            Decision::Run
        }
    }
}

#[cfg(test)]
mod tests;
