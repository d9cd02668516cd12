//! What the response side stores: incidents (with the findings they hold and responders'
//! notes) and the notification outbox (with every delivery attempt).
//!
//! A notification is written in the same transaction as the finding or incident change that
//! caused it ([`Batch`]), so a crash can never lose a notification for a stored finding; it is
//! then delivered at least once, and marked delivered or dead with each attempt recorded.

/// Points at a row: one already stored (its id), or one inserted by the same [`Batch`] (its
/// index in the batch's list of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Id(i64),
    New(usize),
}

/// An incident as stored. `state` is the incident's full JSON (what a restart restores); the
/// other columns are what searches filter and sort on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentRow {
    /// `None` to insert; the row id to update.
    pub id: Option<i64>,
    pub key: String,
    pub title: String,
    /// Falco priority name.
    pub severity: String,
    /// `new`, `acknowledged` or `resolved`.
    pub status: String,
    pub assignee: Option<String>,
    pub identity: Option<String>,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// When this row was last written.
    pub updated_ns: i64,
    pub state: String,
}

/// An incident to insert or update, and the findings it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentWrite {
    pub row: IncidentRow,
    /// Findings linked to it (a finding belongs to one incident; linking it again moves it).
    pub findings: Vec<Ref>,
}

/// A responder's note on an incident.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoteRow {
    pub id: Option<i64>,
    pub incident_id: i64,
    pub time_ns: i64,
    pub author: String,
    pub text: String,
}

/// A notification to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxWrite {
    pub sink: String,
    pub incident: Ref,
    /// `trigger`, `update` or `resolve`.
    pub action: String,
    /// The notification as JSON (what the sink renders).
    pub payload: String,
    pub created_ns: i64,
}

/// Where a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Delivered,
    /// Given up: the attempt limit was reached or the receiver refused it for good.
    Dead,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        match s {
            "pending" => Some(OutboxState::Pending),
            "delivered" => Some(OutboxState::Delivered),
            "dead" => Some(OutboxState::Dead),
            _ => None,
        }
    }
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub sink: String,
    pub incident_id: Option<i64>,
    pub action: String,
    pub payload: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub created_ns: i64,
    /// When the next attempt is due (pending).
    pub next_ns: i64,
    /// When it was delivered or declared dead.
    pub done_ns: Option<i64>,
    pub last_error: Option<String>,
}

/// The outcome of one delivery attempt and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outbox_id: i64,
    pub time_ns: i64,
    pub duration_us: i64,
    /// `None`: delivered.
    pub error: Option<String>,
    /// The state after this attempt (pending with `next_ns` to retry).
    pub state: OutboxState,
    pub next_ns: i64,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub outbox_id: i64,
    /// 1, 2, … per notification.
    pub n: u32,
    pub time_ns: i64,
    pub duration_us: i64,
    pub error: Option<String>,
}

/// Filters of an incident search, newest activity first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentQuery {
    pub since_ns: Option<i64>,
    pub status: Option<String>,
    /// Only incidents not resolved.
    pub unresolved: bool,
    pub min_severity: Option<kustody_model::Priority>,
    pub identity: Option<String>,
    pub namespace: Option<String>,
    pub before_id: Option<i64>,
    pub limit: usize,
    pub cluster: Option<String>,
}

/// Filters of an outbox listing, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxQuery {
    pub state: Option<OutboxState>,
    pub sink: Option<String>,
    pub incident_id: Option<i64>,
    pub limit: usize,
}

/// A response action (a playbook's, or a responder's) and its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionRow {
    /// `None` to insert; the row id to update.
    pub id: Option<i64>,
    pub incident_id: Option<i64>,
    pub playbook: String,
    /// `collect`, `quarantine`, `label`, `annotate`, `notify`, `release`.
    pub action: String,
    /// `namespace/pod`.
    pub target: Option<String>,
    /// `planned`, `awaiting-approval`, `running`, `applied`, `dry-run`, `failed`, `skipped`,
    /// `rejected`, `interrupted`.
    pub state: String,
    pub created_ns: i64,
    pub updated_ns: i64,
    /// JSON: the action's parameters, the guardrails' reason, the outcome (plan, bundle, checks).
    pub detail: String,
}

/// Filters of an action listing, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionQuery {
    pub incident_id: Option<i64>,
    /// `namespace/pod`.
    pub target: Option<String>,
    pub state: Option<String>,
    pub since_ns: Option<i64>,
    pub limit: usize,
}

/// Everything a detector round or a responder's change writes, in **one** transaction.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub findings: &'a [crate::FindingRow],
    /// Matches, each pointing at a finding by id or by its index in `findings`.
    pub matches: &'a [(crate::MatchRow, Option<usize>)],
    /// Finding refs in `incidents[i].findings` index `findings`.
    pub incidents: &'a [IncidentWrite],
    pub notes: &'a [NoteRow],
    /// Incident refs index `incidents`.
    pub outbox: &'a [OutboxWrite],
    /// Response actions, inserted or updated.
    pub actions: &'a [ActionRow],
    pub cursor: Option<(&'a str, i64)>,
    /// Commit only while this owner holds this bus partition's lease at this epoch
    /// `(partition, owner, epoch)`: a detector that lost its lease unnoticed commits nothing
    /// (shared writers only).
    pub lease: Option<(u32, &'a str, i64)>,
}

/// The ids a [`Batch`] stored, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchIds {
    pub findings: Vec<i64>,
    pub incidents: Vec<i64>,
    pub notes: Vec<i64>,
    pub outbox: Vec<i64>,
    pub actions: Vec<i64>,
}
