//! Incidents and their notifications, inside the detector thread.
//!
//! The detector owns the [`Book`] of open incidents: every finding it stores is folded into its
//! incident in the same round, and the notifications that change calls for are written to the
//! outbox **in the same transaction** as the finding ([`kustody_store::Batch`]). Responders'
//! changes (acknowledge, resolve, assign, note) come to the detector as [`Command`]s, so one
//! thread decides an incident's state and no change is lost to a race.
//!
//! Routing: a sink gets a `trigger` when an incident it wants (severity at least its minimum,
//! its route condition true) first qualifies, an `update` when the incident's severity rises
//! after that, and a `resolve` when it is resolved — only sinks that got the trigger.
//!
//! Ids: the detector allocates finding and incident ids itself (from the store's highest at
//! start), so a notification committed with a new incident already carries the incident's id
//! (PagerDuty's `dedup_key`, the title's `#42`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::SyncSender;

use kustody_incident::render::{self, Context};
use kustody_incident::{Book, FindingInput, Incident, Status};
use kustody_model::Priority;
use kustody_notify::{Action, Notification};
use kustody_playbook::{Decision, Guard, Playbook};
use kustody_rules::route::{Filter, Record, Value};
use kustody_store::{ActionRow, FindingRow, IncidentRow, IncidentWrite, NoteRow, OutboxWrite, Ref, Store};

/// The fields a route condition may use.
pub const ROUTE_FIELDS: &[&str] = &[
    "finding.rule",
    "finding.priority",
    "finding.rules",
    "finding.tags",
    "finding.user",
    "finding.namespace",
    "finding.resource",
    "finding.name",
    "finding.source_ip",
    "finding.output",
    "incident.severity",
    "incident.status",
    "incident.identity",
    "incident.namespace",
    "incident.workload",
    "incident.cluster",
    "incident.steps",
    "incident.rules",
    "incident.pods",
];

/// Where notifications may go: a sink's name, minimum severity and route.
pub struct Route {
    pub sink: String,
    pub min: Priority,
    pub filter: Option<Filter>,
}

impl Route {
    /// Compiles a sink's route condition; the error names the sink.
    pub fn of(cfg: &kustody_notify::SinkConfig) -> Result<Route, String> {
        let filter = match &cfg.route {
            Some(src) => Some(
                Filter::compile(src, ROUTE_FIELDS)
                    .map_err(|e| format!("{}: sink `{}`: route: {e}", cfg.origin, cfg.name))?,
            ),
            None => None,
        };
        Ok(Route { sink: cfg.name.clone(), min: cfg.min_priority, filter })
    }
}

/// A responder's change to an incident.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub status: Option<Status>,
    /// `Some(None)` clears the assignee.
    pub assignee: Option<Option<String>>,
    pub note: Option<String>,
    /// Who asked (the token's name).
    pub author: String,
}

/// A change on its way to the detector thread, with where to answer.
pub struct Command {
    pub incident: i64,
    pub change: Change,
    pub reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
}

/// What one round writes besides findings and matches.
#[derive(Default)]
pub struct Writes {
    pub incidents: Vec<IncidentWrite>,
    pub notes: Vec<NoteRow>,
    pub outbox: Vec<OutboxWrite>,
    /// Incidents changed (to publish once stored).
    pub changed: Vec<serde_json::Value>,
    /// Sinks marked as notified in this round, undone when the commit fails.
    pub marked: Vec<(String, String)>,
    /// Playbook actions decided in this round (committed with the rest).
    pub actions: Vec<ActionRow>,
    /// Jobs for the executor once committed: the job and the indexes of its rows in `actions`.
    pub jobs: Vec<(crate::execute::Job, Vec<usize>)>,
    /// Playbooks marked as run in this round (incident key, playbook), undone when the commit fails.
    pub ran: Vec<(String, String)>,
}

pub struct Responder {
    pub book: Book,
    pub routes: Vec<Route>,
    pub playbooks: Vec<Playbook>,
    pub guard: Guard,
    pub ctx: Context,
    next_incident: i64,
    /// The end of the reserved block of incident ids (shared writers), `None`: unbounded.
    pub incident_ids_end: Option<i64>,
    /// Sinks' wake-up channels (delivery threads).
    pub wake: HashMap<String, SyncSender<()>>,
}

impl Responder {
    pub fn new(book: Book, routes: Vec<Route>, ctx: Context) -> Responder {
        Responder {
            book,
            routes,
            playbooks: Vec::new(),
            guard: Guard::default(),
            ctx,
            next_incident: 1,
            incident_ids_end: None,
            wake: HashMap::new(),
        }
    }

    /// Incident ids left in the reserved block (`None`: no block, numbering is unbounded).
    pub fn incident_ids_left(&self) -> Option<i64> {
        self.incident_ids_end.map(|end| end - self.next_incident)
    }

    /// Numbers incidents from a new reserved block `[start, end)`.
    pub fn set_incident_ids(&mut self, start: i64, end: i64) {
        self.next_incident = start;
        self.incident_ids_end = Some(end);
    }

    /// Restores unresolved incidents active within the window, and the next incident id.
    pub fn restore(&mut self, store: &dyn Store, now_ns: i64, next_incident: i64) {
        self.next_incident = next_incident.max(1);
        let _ = self.restore_incidents(store, now_ns);
        // The guardrails remember what playbooks started recently.
        self.guard = Guard::new(&self.playbooks);
        let q = kustody_store::ActionQuery {
            since_ns: Some(now_ns.saturating_sub(24 * 3600 * 1_000_000_000)),
            limit: 10_000,
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for a in store.search_actions(&q).unwrap_or_default().into_iter().rev() {
            let counts = !matches!(a.state.as_str(), "skipped" | "rejected");
            let Some((ns, pod)) = a.target.as_deref().and_then(|t| t.split_once('/')) else { continue };
            if counts && seen.insert((a.playbook.clone(), a.target.clone(), a.incident_id)) {
                self.guard.record(kustody_playbook::Started {
                    playbook: a.playbook.clone(),
                    namespace: ns.to_owned(),
                    pod: pod.to_owned(),
                    time_ns: a.created_ns,
                });
            }
        }
    }

    /// Reads the unresolved incidents active within the window into the book (as stored:
    /// on a bus, another detector may have changed them since).
    pub fn restore_incidents(&mut self, store: &dyn Store, now_ns: i64) -> bool {
        let q = kustody_store::IncidentQuery {
            unresolved: true,
            since_ns: Some(now_ns.saturating_sub(self.book.options().window_ns)),
            limit: 10_000,
            ..Default::default()
        };
        match store.search_incidents(&q) {
            Ok(rows) => {
                let n = rows.len();
                for r in rows {
                    match serde_json::from_str::<Incident>(&r.state) {
                        Ok(inc) => self.book.restore(inc),
                        Err(e) => tracing::warn!(incident = r.id, error = %e, "cannot restore a stored incident"),
                    }
                }
                if n > 0 {
                    tracing::info!(incidents = n, "restored open incidents");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read open incidents; they start afresh");
                return false;
            }
        }
        true
    }

    /// Folds this round's stored findings into incidents.
    pub fn fold(&mut self, findings: &[(FindingRow, FindingInput)], now_ns: i64, w: &mut Writes) {
        // Per incident changed here: its findings, whether one raised it, the last one (lead).
        struct Touched {
            key: String,
            findings: Vec<i64>,
            raised: bool,
            lead: usize,
        }
        let mut touched: Vec<Touched> = Vec::new();
        for (i, (_, input)) in findings.iter().enumerate() {
            let c = self.book.observe(input);
            let raised = c.raised_from.is_some();
            match touched.iter_mut().find(|t| t.key == c.key) {
                Some(t) => {
                    t.findings.push(input.finding_id);
                    t.raised |= raised;
                    t.lead = i;
                }
                None => touched.push(Touched { key: c.key, findings: vec![input.finding_id], raised, lead: i }),
            }
        }
        for Touched { key, findings: finding_ids, raised, lead } in touched {
            let Some(row) = findings.get(lead).map(|(r, _)| r) else { continue };
            if let Some(inc) = self.book.get_mut(&key) {
                if inc.id.is_none() {
                    inc.id = Some(self.next_incident);
                    self.next_incident += 1;
                }
            }
            let Some(inc) = self.book.get(&key).cloned() else { continue };
            let resolved = inc.status == kustody_incident::Status::Resolved;
            let mut notify: Vec<(String, Action)> = Vec::new();
            let record = route_record(row, &inc);
            // a resolved incident still records its findings' last state, and tells no one
            for r in self.routes.iter().filter(|_| !resolved) {
                let wanted = inc.severity.at_least(r.min) && r.filter.as_ref().is_none_or(|f| f.matches(&record));
                if !wanted {
                    continue;
                }
                if !inc.notified.contains(&r.sink) {
                    notify.push((r.sink.clone(), Action::Trigger));
                } else if raised {
                    notify.push((r.sink.clone(), Action::Update));
                }
            }
            if let Some(inc) = self.book.get_mut(&key) {
                for (sink, action) in &notify {
                    if *action == Action::Trigger && inc.notified.insert(sink.clone()) {
                        w.marked.push((key.clone(), sink.clone()));
                    }
                }
            }
            if let Some(inc) = self.book.get(&key) {
                self.write(inc, Some(row), finding_ids, notify, now_ns, w);
            }
            if !resolved {
                self.run_playbooks(&key, row, now_ns, w);
            }
        }
    }

    /// Writes an incident (and its notifications) into `w`.
    fn write(
        &self,
        inc: &Incident,
        lead: Option<&FindingRow>,
        finding_ids: Vec<i64>,
        notify: Vec<(String, Action)>,
        now_ns: i64,
        w: &mut Writes,
    ) {
        let Some(id) = inc.id else { return };
        for (sink, action) in notify {
            let n = self.notification(inc, lead, action, now_ns);
            match serde_json::to_string(&n) {
                Ok(payload) => w.outbox.push(OutboxWrite {
                    sink,
                    incident: Ref::Id(id),
                    action: action.as_str().to_owned(),
                    payload,
                    created_ns: now_ns,
                }),
                Err(e) => tracing::error!(error = %e, "cannot encode a notification"),
            }
        }
        w.changed.push(render::to_json(inc, &self.ctx));
        w.incidents.push(IncidentWrite {
            row: incident_row(inc, now_ns),
            findings: finding_ids.into_iter().map(Ref::Id).collect(),
        });
    }

    /// Playbooks the incident now matches (each once per incident): the guardrails decide per
    /// target pod; the actions are recorded in `w` and, once committed, handed to the executor.
    fn run_playbooks(&mut self, key: &str, lead: &FindingRow, now_ns: i64, w: &mut Writes) {
        let Some(inc) = self.book.get(key).cloned() else { return };
        let record = route_record(lead, &inc);
        let due: Vec<usize> = (0..self.playbooks.len())
            .filter(|i| {
                self.playbooks.get(*i).is_some_and(|pb| !inc.playbooks.contains(&pb.name) && pb.matches(&inc, &record))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let notification = serde_json::to_string(&self.notification(&inc, Some(lead), Action::Update, now_ns)).ok();
        let mut ran = Vec::new();
        for i in due {
            let Some(pb) = self.playbooks.get(i).cloned() else { continue };
            ran.push(pb.name.clone());
            let reason = format!("incident {}: {} (playbook {})", inc.id.unwrap_or_default(), lead.rule, pb.name);
            let targets = pb.targets(&inc);
            let row = |action: &str, target: Option<String>, state: &str, detail: serde_json::Value| ActionRow {
                id: None,
                incident_id: inc.id,
                playbook: pb.name.clone(),
                action: action.to_owned(),
                target,
                state: state.to_owned(),
                created_ns: now_ns,
                updated_ns: now_ns,
                detail: detail.to_string(),
            };
            if targets.is_empty() {
                w.actions.push(row(
                    "*",
                    None,
                    "skipped",
                    serde_json::json!({ "guardrail": "no pod to act on: the identity acted from no known pod" }),
                ));
                continue;
            }
            for target in targets {
                let Some((ns, pod)) = target.split_once('/') else { continue };
                let decision = self.guard.decide(&pb, ns, pod, inc.identity.as_deref(), now_ns);
                let mut idx = Vec::new();
                for a in &pb.actions {
                    let mut d = serde_json::json!({
                        "spec": a,
                        "reason": reason,
                        "min_healthy_replicas": pb.limits.min_healthy_replicas,
                        "dry_run": pb.dry_run,
                    });
                    if let Decision::Skip(why) = &decision {
                        crate::execute::put(&mut d, "guardrail", serde_json::json!(why));
                    }
                    if matches!(a, kustody_playbook::Action::Notify(_)) {
                        crate::execute::put(&mut d, "notification", serde_json::json!(notification));
                    }
                    let state = match decision {
                        // a dry run is planned too: the executor records the plan
                        Decision::DryRun => "planned",
                        _ => decision.state(),
                    };
                    idx.push(w.actions.len());
                    w.actions.push(row(a.name(), Some(target.clone()), state, d));
                }
                if matches!(decision, Decision::Run | Decision::DryRun) {
                    let job = crate::execute::Job {
                        incident: inc.id,
                        playbook: pb.name.clone(),
                        target: target.clone(),
                        steps: pb.actions.iter().map(|a| (0, a.clone())).collect(),
                        dry_run: decision == Decision::DryRun,
                        min_healthy_replicas: pb.limits.min_healthy_replicas,
                        reason: reason.clone(),
                        notification: notification.clone(),
                        since: std::time::Instant::now(),
                        approved_by: None,
                        requested_by: None,
                    };
                    w.jobs.push((job, idx));
                }
            }
        }
        if let Some(i) = self.book.get_mut(key) {
            w.ran.extend(ran.iter().map(|r| (key.to_owned(), r.clone())));
            i.playbooks.extend(ran);
            // the incident row written this round must say so too
            if let (Some(last), Some(id)) = (w.incidents.iter_mut().rev().find(|x| x.row.id == i.id), i.id) {
                let _ = id;
                last.row = incident_row(i, now_ns);
            }
        }
    }

    /// The notification of an incident change.
    pub fn notification(&self, inc: &Incident, lead: Option<&FindingRow>, action: Action, now_ns: i64) -> Notification {
        let id = inc.id.unwrap_or_default();
        let ctx = Context {
            url: self.ctx.url.as_ref().map(|u| format!("{}/incidents/{id}", u.trim_end_matches('/'))),
            ..self.ctx.clone()
        };
        let lead_step = inc.steps.iter().min_by_key(|s| (s.priority, !s.correlation, s.first_ns));
        let fields: BTreeMap<String, String> = lead
            .and_then(|f| serde_json::from_str::<serde_json::Value>(&f.detail).ok())
            .and_then(|d| d.get("output_fields").and_then(|o| o.as_object()).cloned())
            .map(|o| {
                o.into_iter()
                    .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Notification {
            action,
            incident_id: id,
            dedup_key: format!("kustody/{}/incident/{id}", inc.cluster.as_deref().unwrap_or("default")),
            cluster: inc.cluster.clone(),
            severity: inc.severity,
            status: inc.status.as_str().to_owned(),
            title: render::title(inc),
            summary: render::summary(inc, &ctx),
            time_ns: now_ns,
            first_ns: inc.first_ns,
            last_ns: inc.last_ns,
            rule: lead.map(|f| f.rule.clone()).or_else(|| lead_step.map(|s| s.rule.clone())).unwrap_or_default(),
            output: lead.map(|f| f.output.clone()).or_else(|| lead_step.map(|s| s.output.clone())).unwrap_or_default(),
            tags: lead.map(|f| f.tags.clone()).unwrap_or_default(),
            fields,
            incident: render::to_json(inc, &ctx),
            url: ctx.url,
        }
    }

    /// Applies a responder's change to incident `id`: the open one in the book, or the stored
    /// one (resolved or idle), which is then written as changed.
    pub fn command(
        &mut self,
        id: i64,
        change: &Change,
        store: &dyn Store,
        now_ns: i64,
        w: &mut Writes,
    ) -> Result<(serde_json::Value, Option<Incident>), String> {
        // A copy is changed; the book takes it once the change is stored (`install`).
        let in_book = self.book.by_id(id).map(|i| i.clone());
        let mut copy = match in_book.clone() {
            Some(i) => i,
            None => {
                let row = store.incident(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("no incident {id}"))?;
                let mut inc: Incident =
                    serde_json::from_str(&row.state).map_err(|e| format!("incident {id} cannot be read: {e}"))?;
                inc.id = Some(id);
                inc
            }
        };
        let inc = &mut copy;
        let mut notify = Vec::new();
        if let Some(s) = change.status {
            if s == Status::Resolved && inc.status != Status::Resolved {
                notify = inc.notified.iter().map(|n| (n.clone(), Action::Resolve)).collect();
            }
            inc.status = s;
        }
        if let Some(a) = &change.assignee {
            inc.assignee = a.clone();
        }
        inc.updated_ns = Some(now_ns);
        let snapshot = inc.clone();
        if let Some(text) = &change.note {
            w.notes.push(NoteRow {
                id: None,
                incident_id: id,
                time_ns: now_ns,
                author: change.author.clone(),
                text: text.clone(),
            });
        }
        self.write(&snapshot, None, Vec::new(), notify, now_ns, w);
        Ok((render::to_json(&snapshot, &self.ctx), in_book.map(|_| snapshot)))
    }

    /// Puts a changed open incident back in the book (after its change was stored).
    pub fn install(&mut self, changed: Option<Incident>) {
        let Some(inc) = changed else { return };
        if let Some(i) = self.book.by_id(inc.id.unwrap_or_default()) {
            *i = inc;
        }
    }

    /// Undoes the "notified" marks of a round whose commit failed: the next change notifies.
    pub fn unmark(&mut self, w: &Writes) {
        for (key, sink) in &w.marked {
            if let Some(inc) = self.book.get_mut(key) {
                inc.notified.remove(sink);
            }
        }
        for (key, pb) in &w.ran {
            if let Some(inc) = self.book.get_mut(key) {
                inc.playbooks.remove(pb);
            }
        }
    }

    /// Wakes the delivery threads of sinks with new notifications.
    pub fn wake(&self, outbox: &[OutboxWrite]) {
        for o in outbox {
            if let Some(tx) = self.wake.get(&o.sink) {
                let _ = tx.try_send(());
            }
        }
    }
}

fn incident_row(inc: &Incident, now_ns: i64) -> IncidentRow {
    IncidentRow {
        id: inc.id,
        key: inc.key.clone(),
        title: render::title(inc),
        severity: inc.severity.falco_name().to_owned(),
        status: inc.status.as_str().to_owned(),
        assignee: inc.assignee.clone(),
        identity: inc.identity.clone(),
        namespace: inc.namespace().map(str::to_owned),
        cluster: inc.cluster.clone(),
        first_ns: inc.first_ns,
        last_ns: inc.last_ns,
        updated_ns: now_ns,
        state: serde_json::to_string(inc).unwrap_or_else(|_| "{}".to_owned()),
    }
}

/// The fields a route sees.
pub fn route_record(f: &FindingRow, inc: &Incident) -> Record {
    let mut r = Record::new();
    let mut put = |k: &'static str, v: Option<&String>| {
        if let Some(v) = v {
            r.insert(k, Value::Str(v.clone()));
        }
    };
    put("finding.rule", Some(&f.rule));
    put("finding.priority", Some(&f.priority));
    put("finding.user", f.user.as_ref());
    put("finding.namespace", f.namespace.as_ref());
    put("finding.resource", f.resource.as_ref());
    put("finding.name", f.name.as_ref());
    put("finding.source_ip", f.source_ip.as_ref());
    put("finding.output", Some(&f.output));
    put("incident.identity", inc.identity.as_ref());
    put("incident.cluster", inc.cluster.as_ref());
    r.insert("finding.rules", Value::List(f.rules.clone()));
    r.insert("finding.tags", Value::List(f.tags.clone()));
    r.insert("incident.severity", Value::Str(inc.severity.falco_name().to_owned()));
    r.insert("incident.status", Value::Str(inc.status.as_str().to_owned()));
    if let Some(ns) = inc.namespace() {
        r.insert("incident.namespace", Value::Str(ns.to_owned()));
    }
    if let Some(wl) = &inc.workload {
        r.insert("incident.workload", Value::Str(format!("{}/{}/{}", wl.namespace, wl.kind, wl.name)));
    }
    r.insert("incident.steps", Value::Num(inc.steps.len() as i64));
    r.insert("incident.rules", Value::List(inc.rules().into_iter().map(str::to_owned).collect()));
    r.insert("incident.pods", Value::List(inc.pods.iter().cloned().collect()));
    r
}

/// `namespace/name` of the pod whose bound service-account token made the request.
pub fn acting_pod(ev: &kustody_model::Event<'_>) -> Option<String> {
    let pod =
        kustody_model::rawjson::pointer(ev.raw(), &["user", "extra", "authentication.kubernetes.io/pod-name", "0"])
            .filter(|v| v.starts_with('"'))
            .and_then(kustody_model::rawjson::text)
            .filter(|p| !p.is_empty())?;
    let user = ev.user().and_then(|u| u.username.clone())?;
    let sa = kustody_store::service_account_of(&user)?;
    let (ns, _) = sa.split_once('/')?;
    Some(format!("{ns}/{pod}"))
}

/// The book's input for a stored finding.
pub fn finding_input(
    row: &FindingRow,
    f: &kustody_rules::findings::Finding,
    acting_pod: Option<String>,
    correlation: bool,
) -> FindingInput {
    let c = &f.lead.context;
    FindingInput {
        cluster: row.cluster.clone(),
        finding_id: row.id.unwrap_or_default(),
        rule: row.rule.clone(),
        priority: Some(f.priority),
        rules: row.rules.clone(),
        tags: row.tags.clone(),
        events: f.events,
        first_ns: f.first_ns,
        last_ns: f.last_ns,
        user: c.user.clone(),
        namespace: c.namespace.clone(),
        resource: c.resource.clone(),
        subresource: c.subresource.clone(),
        name: c.name.clone(),
        verb: c.verb.clone(),
        source_ip: c.source_ip.clone(),
        output: f.lead.output.clone(),
        audit_ids: f.audit_ids.clone(),
        command: c.command.clone(),
        acting_pod,
        correlation,
        source_pod: None,
        acting_pod_ip: None,
        peer_ip: None,
    }
}
