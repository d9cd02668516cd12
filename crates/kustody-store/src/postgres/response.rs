//! Incidents, notes, the outbox, actions, the IP history and named state in PostgreSQL: the
//! same statements as SQLite's, in PostgreSQL's dialect. A row inserted without an id takes
//! the table's highest id plus one, as SQLite's rowids do (the live detector allocates finding
//! and incident ids the same way, see [`crate::Store::next_ids`]).

use postgres::{GenericClient, Row, Transaction};

use super::error::{Fail, Res};
use super::query::{opt, opt_key, text};
use crate::response::{
    ActionQuery, ActionRow, Attempt, AttemptRow, IncidentQuery, IncidentRow, IncidentWrite, NoteRow, OutboxQuery,
    OutboxRow, OutboxState, OutboxWrite, Ref,
};
use crate::sqlite::query::limit;
use crate::sqlite::{rank, rank_of};
use crate::Interval;

const INCIDENT_COLUMNS: &str = "id, key, title, severity, status, assignee, identity, namespace, cluster, first_ns, \
                                last_ns, updated_ns, state";
const OUTBOX_COLUMNS: &str =
    "id, sink, incident_id, action, payload, state, attempts, created_ns, next_ns, done_ns, last_error";
const ACTION_COLUMNS: &str = "id, incident_id, playbook, action, target, state, created_ns, updated_ns, detail";

fn resolve(r: Ref, new: &[i64], what: &str) -> Res<i64> {
    match r {
        Ref::Id(id) => Ok(id),
        Ref::New(i) => new.get(i).copied().ok_or_else(|| Fail::other(format!("{what} ref {i} is not in the batch"))),
    }
}

/// Inserts or updates incidents and links their findings; returns their ids in order.
pub(super) fn write_incidents(
    tx: &mut Transaction<'_>,
    incidents: &[IncidentWrite],
    findings: &[i64],
) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(incidents.len());
    for w in incidents {
        let r = &w.row;
        let rank = rank_of(&r.severity);
        let (key, title, assignee, identity, namespace) = (
            text(&r.key),
            text(&r.title),
            opt(r.assignee.as_deref()),
            opt_key(r.identity.as_deref()),
            opt(r.namespace.as_deref()),
        );
        let cluster = opt_key(r.cluster.as_deref());
        let p: [&(dyn postgres::types::ToSql + Sync); 14] = [
            &r.id,
            &key,
            &title,
            &r.severity,
            &rank,
            &r.status,
            &assignee,
            &identity,
            &namespace,
            &cluster,
            &r.first_ns,
            &r.last_ns,
            &r.updated_ns,
            &text(&r.state),
        ];
        let updated = match r.id {
            Some(_) => tx.execute(
                "UPDATE incidents SET key = $2, title = $3, severity = $4, severity_rank = $5, status = $6, \
                 assignee = $7, identity = $8, namespace = $9, cluster = $10, first_ns = $11, last_ns = $12, \
                 updated_ns = $13, state = $14 WHERE id = $1",
                &p,
            )?,
            None => 0,
        };
        let id = if updated == 1 {
            r.id.unwrap_or_default()
        } else {
            tx.query_one(
                "INSERT INTO incidents (id, key, title, severity, severity_rank, status, assignee, identity, \
                 namespace, cluster, first_ns, last_ns, updated_ns, state) \
                 VALUES (coalesce($1, (SELECT coalesce(max(id), 0) + 1 FROM incidents)), $2, $3, $4, $5, $6, $7, \
                 $8, $9, $10, $11, $12, $13, $14) RETURNING id",
                &p,
            )?
            .try_get(0)?
        };
        for f in &w.findings {
            tx.execute(
                "INSERT INTO incident_findings (finding_id, incident_id) VALUES ($1, $2) \
                 ON CONFLICT (finding_id) DO UPDATE SET incident_id = excluded.incident_id",
                &[&resolve(*f, findings, "finding")?, &id],
            )?;
        }
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn write_notes(tx: &mut Transaction<'_>, notes: &[NoteRow]) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(notes.len());
    for n in notes {
        let row = tx.query_one(
            "INSERT INTO incident_notes (id, incident_id, time_ns, author, text) \
             VALUES ((SELECT coalesce(max(id), 0) + 1 FROM incident_notes), $1, $2, $3, $4) RETURNING id",
            &[&n.incident_id, &n.time_ns, &text(&n.author), &text(&n.text)],
        )?;
        ids.push(row.try_get(0)?);
    }
    Ok(ids)
}

pub(super) fn write_outbox(tx: &mut Transaction<'_>, rows: &[OutboxWrite], incidents: &[i64]) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for o in rows {
        let incident = resolve(o.incident, incidents, "incident")?;
        let row = tx.query_one(
            "INSERT INTO outbox (id, sink, incident_id, action, payload, state, attempts, created_ns, next_ns) \
             VALUES ((SELECT coalesce(max(id), 0) + 1 FROM outbox), $1, $2, $3, $4, 'pending', 0, $5, $5) RETURNING id",
            &[&o.sink, &incident, &o.action, &text(&o.payload), &o.created_ns],
        )?;
        ids.push(row.try_get(0)?);
    }
    Ok(ids)
}

pub(super) fn record_attempts(tx: &mut Transaction<'_>, attempts: &[Attempt]) -> Res<()> {
    for a in attempts {
        tx.execute(
            "INSERT INTO outbox_attempts (outbox_id, n, time_ns, duration_us, error) \
             VALUES ($1, (SELECT attempts + 1 FROM outbox WHERE id = $1), $2, $3, $4)",
            &[&a.outbox_id, &a.time_ns, &a.duration_us, &opt(a.error.as_deref())],
        )?;
        tx.execute(
            "UPDATE outbox SET attempts = attempts + 1, state = $2, next_ns = $3, last_error = $4, \
             done_ns = CASE WHEN $2 = 'pending' THEN NULL ELSE $5::bigint END WHERE id = $1",
            &[&a.outbox_id, &a.state.as_str(), &a.next_ns, &opt(a.error.as_deref()), &a.time_ns],
        )?;
    }
    Ok(())
}

/// A trigger or update is not sent again once a resolve of its incident on the same sink was
/// queued after it.
const NOT_OVERTAKEN: &str = "NOT (o.action != 'resolve' AND EXISTS (SELECT 1 FROM outbox r \
     WHERE r.incident_id = o.incident_id AND r.sink = o.sink AND r.action = 'resolve' AND r.id > o.id))";

pub(super) fn retry(tx: &mut Transaction<'_>, ids: &[i64], sink: Option<&str>, now_ns: i64) -> Res<u64> {
    let n = if ids.is_empty() {
        tx.execute(
            &format!(
                "UPDATE outbox o SET state = 'pending', next_ns = $1, done_ns = NULL \
                 WHERE o.state = 'dead' AND ($2::text IS NULL OR o.sink = $2) AND {NOT_OVERTAKEN}"
            ),
            &[&now_ns, &sink],
        )?
    } else {
        tx.execute(
            &format!(
                "UPDATE outbox o SET state = 'pending', next_ns = $2, done_ns = NULL \
                 WHERE o.id = ANY($1) AND o.state != 'delivered' AND {NOT_OVERTAKEN}"
            ),
            &[&ids, &now_ns],
        )?
    };
    Ok(n)
}

fn read_incident(r: &Row) -> Res<IncidentRow> {
    Ok(IncidentRow {
        id: Some(r.try_get(0)?),
        key: r.try_get(1)?,
        title: r.try_get(2)?,
        severity: r.try_get(3)?,
        status: r.try_get(4)?,
        assignee: r.try_get(5)?,
        identity: r.try_get(6)?,
        namespace: r.try_get(7)?,
        cluster: r.try_get(8)?,
        first_ns: r.try_get(9)?,
        last_ns: r.try_get(10)?,
        updated_ns: r.try_get(11)?,
        state: r.try_get(12)?,
    })
}

fn read_outbox(r: &Row) -> Res<OutboxRow> {
    let state: String = r.try_get(5)?;
    Ok(OutboxRow {
        id: r.try_get(0)?,
        sink: r.try_get(1)?,
        incident_id: r.try_get(2)?,
        action: r.try_get(3)?,
        payload: r.try_get(4)?,
        state: OutboxState::parse(&state).unwrap_or(OutboxState::Dead),
        attempts: r.try_get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
        created_ns: r.try_get(7)?,
        next_ns: r.try_get(8)?,
        done_ns: r.try_get(9)?,
        last_error: r.try_get(10)?,
    })
}

fn read_action(r: &Row) -> Res<ActionRow> {
    Ok(ActionRow {
        id: Some(r.try_get(0)?),
        incident_id: r.try_get(1)?,
        playbook: r.try_get(2)?,
        action: r.try_get(3)?,
        target: r.try_get(4)?,
        state: r.try_get(5)?,
        created_ns: r.try_get(6)?,
        updated_ns: r.try_get(7)?,
        detail: r.try_get(8)?,
    })
}

fn all<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Res<T>) -> Res<Vec<T>> {
    rows.iter().map(f).collect()
}

pub(super) fn search_incidents(c: &mut impl GenericClient, q: &IncidentQuery) -> Res<Vec<IncidentRow>> {
    let sql = format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE ($1::bigint IS NULL OR last_ns >= $1) \
         AND ($2::text IS NULL OR status = $2) AND (NOT $3 OR status != 'resolved') \
         AND ($4::bigint IS NULL OR severity_rank <= $4) AND ($5::text IS NULL OR identity = $5) \
         AND ($6::text IS NULL OR namespace = $6) AND ($7::bigint IS NULL OR id < $7) \
         AND ($9::text IS NULL OR cluster = $9) ORDER BY last_ns DESC NULLS LAST, id DESC LIMIT $8"
    );
    let min = q.min_severity.map(rank);
    let rows = c.query(
        &sql,
        &[
            &q.since_ns,
            &q.status,
            &q.unresolved,
            &min,
            &opt_key(q.identity.as_deref()),
            &opt(q.namespace.as_deref()),
            &q.before_id,
            &limit(q.limit),
            &opt_key(q.cluster.as_deref()),
        ],
    )?;
    all(rows, read_incident)
}

pub(super) fn incident(c: &mut impl GenericClient, id: i64) -> Res<Option<IncidentRow>> {
    let rows = c.query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"), &[&id])?;
    rows.first().map(read_incident).transpose()
}

pub(super) fn incident_finding_ids(c: &mut impl GenericClient, id: i64) -> Res<Vec<i64>> {
    let rows =
        c.query("SELECT finding_id FROM incident_findings WHERE incident_id = $1 ORDER BY finding_id", &[&id])?;
    all(rows, |r| Ok(r.try_get(0)?))
}

pub(super) fn notes(c: &mut impl GenericClient, id: i64) -> Res<Vec<NoteRow>> {
    let rows = c.query(
        "SELECT id, incident_id, time_ns, author, text FROM incident_notes WHERE incident_id = $1 ORDER BY id",
        &[&id],
    )?;
    all(rows, |r| {
        Ok(NoteRow {
            id: Some(r.try_get(0)?),
            incident_id: r.try_get(1)?,
            time_ns: r.try_get(2)?,
            author: r.try_get(3)?,
            text: r.try_get(4)?,
        })
    })
}

pub(super) fn outbox_due(c: &mut impl GenericClient, sink: &str, now_ns: i64, n: usize) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sink = $1 AND state = 'pending' AND next_ns <= $2 \
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.incident_id = outbox.incident_id AND o.sink = $1 \
                         AND o.state = 'pending' AND o.id < outbox.id) \
         ORDER BY next_ns, id LIMIT $3"
    );
    all(c.query(&sql, &[&sink, &now_ns, &limit(n)])?, read_outbox)
}

pub(super) fn outbox_next_due(c: &mut impl GenericClient, sink: &str) -> Res<Option<i64>> {
    let row = c.query_one("SELECT min(next_ns) FROM outbox WHERE sink = $1 AND state = 'pending'", &[&sink])?;
    Ok(row.try_get(0)?)
}

pub(super) fn search_outbox(c: &mut impl GenericClient, q: &OutboxQuery) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR sink = $2) \
         AND ($3::bigint IS NULL OR incident_id = $3) ORDER BY id DESC LIMIT $4"
    );
    let state = q.state.map(OutboxState::as_str);
    all(c.query(&sql, &[&state, &q.sink, &q.incident_id, &limit(q.limit)])?, read_outbox)
}

pub(super) fn outbox_row(c: &mut impl GenericClient, id: i64) -> Res<Option<OutboxRow>> {
    let rows = c.query(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1"), &[&id])?;
    rows.first().map(read_outbox).transpose()
}

pub(super) fn attempts(c: &mut impl GenericClient, id: i64) -> Res<Vec<AttemptRow>> {
    let rows = c.query(
        "SELECT outbox_id, n, time_ns, duration_us, error FROM outbox_attempts WHERE outbox_id = $1 ORDER BY n",
        &[&id],
    )?;
    all(rows, |r| {
        Ok(AttemptRow {
            outbox_id: r.try_get(0)?,
            n: r.try_get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
            time_ns: r.try_get(2)?,
            duration_us: r.try_get(3)?,
            error: r.try_get(4)?,
        })
    })
}

pub(super) fn write_actions(tx: &mut Transaction<'_>, rows: &[ActionRow]) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for a in rows {
        let (target, detail) = (opt(a.target.as_deref()), text(&a.detail));
        let p: [&(dyn postgres::types::ToSql + Sync); 9] =
            [&a.id, &a.incident_id, &a.playbook, &a.action, &target, &a.state, &a.created_ns, &a.updated_ns, &detail];
        let updated = match a.id {
            Some(_) => tx.execute(
                "UPDATE actions SET incident_id = $2, playbook = $3, action = $4, target = $5, state = $6, \
                 created_ns = least(created_ns, $7), updated_ns = $8, detail = $9 WHERE id = $1",
                &p,
            )?,
            None => 0,
        };
        let id = if updated == 1 {
            a.id.unwrap_or_default()
        } else {
            tx.query_one(
                "INSERT INTO actions (id, incident_id, playbook, action, target, state, created_ns, updated_ns, detail) \
                 VALUES (coalesce($1, (SELECT coalesce(max(id), 0) + 1 FROM actions)), $2, $3, $4, $5, $6, $7, $8, $9) \
                 RETURNING id",
                &p,
            )?
            .try_get(0)?
        };
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn transition_action(tx: &mut Transaction<'_>, a: &ActionRow, from: &str) -> Res<bool> {
    let n = tx.execute(
        "UPDATE actions SET state = $2, updated_ns = $3, detail = $4 WHERE id = $1 AND state = $5",
        &[&a.id, &a.state, &a.updated_ns, &text(&a.detail), &from],
    )?;
    Ok(n == 1)
}

pub(super) fn search_actions(c: &mut impl GenericClient, q: &ActionQuery) -> Res<Vec<ActionRow>> {
    let sql = format!(
        "SELECT {ACTION_COLUMNS} FROM actions WHERE ($1::bigint IS NULL OR incident_id = $1) \
         AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR created_ns >= $3) \
         AND ($5::text IS NULL OR target = $5) ORDER BY id DESC LIMIT $4"
    );
    all(c.query(&sql, &[&q.incident_id, &q.state, &q.since_ns, &limit(q.limit), &q.target])?, read_action)
}

pub(super) fn action(c: &mut impl GenericClient, id: i64) -> Res<Option<ActionRow>> {
    let rows = c.query(&format!("SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"), &[&id])?;
    rows.first().map(read_action).transpose()
}

// ---------------------------------------------------------------------------------------------
// The IP history and named state.

const INTERVAL_COLUMNS: &str = "ip, uid, first_ns, last_ns, ended_ns, facts";

pub(super) fn save_intervals(tx: &mut Transaction<'_>, intervals: &[Interval]) -> Res<()> {
    for i in intervals {
        let facts = serde_json::to_string(&i.pod).map_err(|e| Fail::other(format!("interval facts: {e}")))?;
        tx.execute(
            "INSERT INTO ip_intervals (ip, uid, first_ns, last_ns, ended_ns, namespace, name, facts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (ip, uid) DO UPDATE SET first_ns = $3, \
             last_ns = $4, ended_ns = $5, namespace = $6, name = $7, facts = $8",
            &[&i.ip, &i.pod.uid, &i.first_ns, &i.last_ns, &i.ended_ns, &i.pod.namespace, &i.pod.name, &facts],
        )?;
    }
    Ok(())
}

fn read_interval(r: &Row) -> Res<Interval> {
    let facts: String = r.try_get(5)?;
    let pod = serde_json::from_str(&facts).map_err(|e| Fail::other(format!("stored interval facts: {e}")))?;
    Ok(Interval { ip: r.try_get(0)?, pod, first_ns: r.try_get(2)?, last_ns: r.try_get(3)?, ended_ns: r.try_get(4)? })
}

fn intervals(rows: Vec<Row>) -> Res<Vec<Interval>> {
    let mut out = all(rows, read_interval)?;
    out.sort_by_key(|i| i.first_ns);
    Ok(out)
}

pub(super) fn of_ip(c: &mut impl GenericClient, ip: &str) -> Res<Vec<Interval>> {
    intervals(c.query(&format!("SELECT {INTERVAL_COLUMNS} FROM ip_intervals WHERE ip = $1"), &[&ip])?)
}

pub(super) fn of_pod(c: &mut impl GenericClient, namespace: &str, name: &str) -> Res<Vec<Interval>> {
    intervals(c.query(
        &format!("SELECT {INTERVAL_COLUMNS} FROM ip_intervals WHERE namespace = $1 AND name = $2"),
        &[&namespace, &name],
    )?)
}

pub(super) fn recent(c: &mut impl GenericClient, since_ns: i64, limit: usize) -> Res<Vec<Interval>> {
    let n = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut v = intervals(c.query(
        &format!(
            "(SELECT {INTERVAL_COLUMNS} FROM ip_intervals WHERE ended_ns IS NULL) UNION ALL \
             (SELECT {INTERVAL_COLUMNS} FROM ip_intervals WHERE last_ns >= $1 AND ended_ns IS NOT NULL) LIMIT $2"
        ),
        &[&since_ns, &n],
    )?)?;
    v.truncate(limit);
    Ok(v)
}

/// Removes intervals that ended before `cutoff`.
pub(super) fn retain_intervals(tx: &mut Transaction<'_>, cutoff: i64) -> Res<u64> {
    Ok(tx.execute("DELETE FROM ip_intervals WHERE ended_ns IS NOT NULL AND ended_ns < $1", &[&cutoff])?)
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub(super) fn state(c: &mut impl GenericClient, name: &str) -> Res<Option<Vec<u8>>> {
    let rows = c.query("SELECT value FROM state WHERE name = $1", &[&name])?;
    let Some(r) = rows.first() else { return Ok(None) };
    let b: Vec<u8> = r.try_get(0)?;
    if b.starts_with(&ZSTD_MAGIC) {
        let out = zstd::stream::decode_all(&b[..]).map_err(|e| Fail::other(format!("stored state `{name}`: {e}")))?;
        Ok(Some(out))
    } else {
        Ok(Some(b))
    }
}

pub(super) fn set_state(tx: &mut Transaction<'_>, name: &str, value: &[u8]) -> Res<()> {
    let packed = if value.starts_with(&ZSTD_MAGIC) {
        value.to_vec()
    } else {
        zstd::bulk::compress(value, 3).map_err(|e| Fail::other(format!("compressing state `{name}`: {e}")))?
    };
    tx.execute(
        "INSERT INTO state (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[&name, &packed],
    )?;
    Ok(())
}
