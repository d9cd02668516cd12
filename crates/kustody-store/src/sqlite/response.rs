//! Incidents, notes and the outbox in SQLite (schema version 2).

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::error::{Fail, Res};
use crate::response::{
    ActionQuery, ActionRow, Attempt, AttemptRow, IncidentQuery, IncidentRow, IncidentWrite, NoteRow, OutboxQuery,
    OutboxRow, OutboxState, OutboxWrite, Ref,
};

const INCIDENT_COLUMNS: &str = "id, key, title, severity, status, assignee, identity, namespace, cluster, first_ns, \
                                last_ns, updated_ns, state";
const OUTBOX_COLUMNS: &str =
    "id, sink, incident_id, action, payload, state, attempts, created_ns, next_ns, done_ns, last_error";

fn resolve(r: Ref, new: &[i64], what: &str) -> Res<i64> {
    match r {
        Ref::Id(id) => Ok(id),
        Ref::New(i) => new.get(i).copied().ok_or_else(|| Fail::other(format!("{what} ref {i} is not in the batch"))),
    }
}

/// Inserts or updates incidents and links their findings; returns their ids in order.
pub(super) fn write_incidents(tx: &Transaction<'_>, incidents: &[IncidentWrite], findings: &[i64]) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(incidents.len());
    let mut insert = tx.prepare_cached(
        "INSERT INTO incidents (id, key, title, severity, severity_rank, status, assignee, identity, namespace, \
         cluster, first_ns, last_ns, updated_ns, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE incidents SET key = ?2, title = ?3, severity = ?4, severity_rank = ?5, status = ?6, assignee = ?7, \
         identity = ?8, namespace = ?9, cluster = ?10, first_ns = ?11, last_ns = ?12, updated_ns = ?13, state = ?14 \
         WHERE id = ?1",
    )?;
    let mut link = tx.prepare_cached(
        "INSERT INTO incident_findings (finding_id, incident_id) VALUES (?1, ?2) \
         ON CONFLICT (finding_id) DO UPDATE SET incident_id = ?2",
    )?;
    for w in incidents {
        let r = &w.row;
        let p = params![
            r.id,
            r.key,
            r.title,
            r.severity,
            super::rank_of(&r.severity),
            r.status,
            r.assignee,
            r.identity,
            r.namespace,
            r.cluster,
            r.first_ns,
            r.last_ns,
            r.updated_ns,
            r.state
        ];
        let id = match r.id {
            Some(id) if update.execute(p)? == 1 => id,
            _ => {
                insert.execute(p)?;
                tx.last_insert_rowid()
            }
        };
        for f in &w.findings {
            link.execute(params![resolve(*f, findings, "finding")?, id])?;
        }
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn write_notes(tx: &Transaction<'_>, notes: &[NoteRow]) -> Res<Vec<i64>> {
    let mut st =
        tx.prepare_cached("INSERT INTO incident_notes (incident_id, time_ns, author, text) VALUES (?1, ?2, ?3, ?4)")?;
    let mut ids = Vec::with_capacity(notes.len());
    for n in notes {
        st.execute(params![n.incident_id, n.time_ns, n.author, n.text])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

pub(super) fn write_outbox(tx: &Transaction<'_>, rows: &[OutboxWrite], incidents: &[i64]) -> Res<Vec<i64>> {
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox (sink, incident_id, action, payload, state, attempts, created_ns, next_ns) \
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
    )?;
    let mut ids = Vec::with_capacity(rows.len());
    for o in rows {
        st.execute(params![o.sink, resolve(o.incident, incidents, "incident")?, o.action, o.payload, o.created_ns])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

pub(super) fn record_attempts(tx: &Transaction<'_>, attempts: &[Attempt]) -> Res<()> {
    let mut add = tx.prepare_cached(
        "INSERT INTO outbox_attempts (outbox_id, n, time_ns, duration_us, error) \
         VALUES (?1, (SELECT attempts + 1 FROM outbox WHERE id = ?1), ?2, ?3, ?4)",
    )?;
    let mut set = tx.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, state = ?2, next_ns = ?3, last_error = ?4, \
         done_ns = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?5 END WHERE id = ?1",
    )?;
    for a in attempts {
        add.execute(params![a.outbox_id, a.time_ns, a.duration_us, a.error])?;
        set.execute(params![a.outbox_id, a.state.as_str(), a.next_ns, a.error, a.time_ns])?;
    }
    Ok(())
}

pub(super) fn retry(tx: &Transaction<'_>, ids: &[i64], sink: Option<&str>, now_ns: i64) -> Res<u64> {
    let mut n = 0;
    if ids.is_empty() {
        n += tx.execute(
            "UPDATE outbox SET state = 'pending', next_ns = ?1, done_ns = NULL \
             WHERE state = 'dead' AND (?2 IS NULL OR sink = ?2) AND NOT (action != 'resolve' AND EXISTS \
             (SELECT 1 FROM outbox r WHERE r.incident_id = outbox.incident_id AND r.sink = outbox.sink \
              AND r.action = 'resolve' AND r.id > outbox.id))",
            params![now_ns, sink],
        )? as u64;
    } else {
        let mut st = tx.prepare_cached(
            "UPDATE outbox SET state = 'pending', next_ns = ?2, done_ns = NULL WHERE id = ?1 AND state != 'delivered' \
             AND NOT (action != 'resolve' AND EXISTS (SELECT 1 FROM outbox r WHERE r.incident_id = outbox.incident_id \
             AND r.sink = outbox.sink AND r.action = 'resolve' AND r.id > outbox.id))",
        )?;
        for id in ids {
            n += st.execute(params![id, now_ns])? as u64;
        }
    }
    Ok(n)
}

fn read_incident(r: &Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        id: Some(r.get(0)?),
        key: r.get(1)?,
        title: r.get(2)?,
        severity: r.get(3)?,
        status: r.get(4)?,
        assignee: r.get(5)?,
        identity: r.get(6)?,
        namespace: r.get(7)?,
        cluster: r.get(8)?,
        first_ns: r.get(9)?,
        last_ns: r.get(10)?,
        updated_ns: r.get(11)?,
        state: r.get(12)?,
    })
}

fn read_outbox(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let state: String = r.get(5)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        sink: r.get(1)?,
        incident_id: r.get(2)?,
        action: r.get(3)?,
        payload: r.get(4)?,
        state: OutboxState::parse(&state).unwrap_or(OutboxState::Dead),
        attempts: r.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
        created_ns: r.get(7)?,
        next_ns: r.get(8)?,
        done_ns: r.get(9)?,
        last_error: r.get(10)?,
    })
}

fn rows<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    p: P,
    f: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Res<Vec<T>> {
    let mut st = conn.prepare_cached(sql)?;
    let out = st.query_map(p, f)?.collect::<rusqlite::Result<Vec<T>>>()?;
    Ok(out)
}

fn limit(n: usize) -> i64 {
    super::query::limit(n)
}

pub(super) fn search_incidents(conn: &Connection, q: &IncidentQuery) -> Res<Vec<IncidentRow>> {
    let sql = format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE (?1 IS NULL OR last_ns >= ?1) AND (?2 IS NULL OR status = ?2) \
         AND (?3 = 0 OR status != 'resolved') AND (?4 IS NULL OR severity_rank <= ?4) \
         AND (?5 IS NULL OR identity = ?5) AND (?6 IS NULL OR namespace = ?6) AND (?7 IS NULL OR id < ?7) \
         AND (?9 IS NULL OR cluster = ?9) ORDER BY last_ns DESC, id DESC LIMIT ?8"
    );
    rows(
        conn,
        &sql,
        params![
            q.since_ns,
            q.status,
            q.unresolved,
            q.min_severity.map(super::rank),
            q.identity,
            q.namespace,
            q.before_id,
            limit(q.limit),
            q.cluster
        ],
        read_incident,
    )
}

pub(super) fn incident(conn: &Connection, id: i64) -> Res<Option<IncidentRow>> {
    let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], read_incident).optional()?)
}

pub(super) fn incident_finding_ids(conn: &Connection, id: i64) -> Res<Vec<i64>> {
    rows(conn, "SELECT finding_id FROM incident_findings WHERE incident_id = ?1 ORDER BY finding_id", [id], |r| {
        r.get(0)
    })
}

pub(super) fn notes(conn: &Connection, id: i64) -> Res<Vec<NoteRow>> {
    rows(
        conn,
        "SELECT id, incident_id, time_ns, author, text FROM incident_notes WHERE incident_id = ?1 ORDER BY id",
        [id],
        |r| {
            Ok(NoteRow {
                id: Some(r.get(0)?),
                incident_id: r.get(1)?,
                time_ns: r.get(2)?,
                author: r.get(3)?,
                text: r.get(4)?,
            })
        },
    )
}

pub(super) fn outbox_due(conn: &Connection, sink: &str, now_ns: i64, n: usize) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sink = ?1 AND state = 'pending' AND next_ns <= ?2 \
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.incident_id = outbox.incident_id AND o.sink = ?1 \
                         AND o.state = 'pending' AND o.id < outbox.id) \
         ORDER BY next_ns, id LIMIT ?3"
    );
    rows(conn, &sql, params![sink, now_ns, limit(n)], read_outbox)
}

pub(super) fn outbox_next_due(conn: &Connection, sink: &str) -> Res<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT min(next_ns) FROM outbox WHERE sink = ?1 AND state = 'pending'")?
        .query_row([sink], |r| r.get(0))?)
}

pub(super) fn search_outbox(conn: &Connection, q: &OutboxQuery) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR sink = ?2) \
         AND (?3 IS NULL OR incident_id = ?3) ORDER BY id DESC LIMIT ?4"
    );
    rows(conn, &sql, params![q.state.map(OutboxState::as_str), q.sink, q.incident_id, limit(q.limit)], read_outbox)
}

pub(super) fn outbox_row(conn: &Connection, id: i64) -> Res<Option<OutboxRow>> {
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], read_outbox).optional()?)
}

pub(super) fn attempts(conn: &Connection, id: i64) -> Res<Vec<AttemptRow>> {
    rows(
        conn,
        "SELECT outbox_id, n, time_ns, duration_us, error FROM outbox_attempts WHERE outbox_id = ?1 ORDER BY n",
        [id],
        |r| {
            Ok(AttemptRow {
                outbox_id: r.get(0)?,
                n: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
                time_ns: r.get(2)?,
                duration_us: r.get(3)?,
                error: r.get(4)?,
            })
        },
    )
}

const ACTION_COLUMNS: &str = "id, incident_id, playbook, action, target, state, created_ns, updated_ns, detail";

pub(super) fn write_actions(tx: &Transaction<'_>, rows: &[ActionRow]) -> Res<Vec<i64>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO actions (id, incident_id, playbook, action, target, state, created_ns, updated_ns, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE actions SET incident_id = ?2, playbook = ?3, action = ?4, target = ?5, state = ?6, \
         created_ns = min(created_ns, ?7), updated_ns = ?8, detail = ?9 WHERE id = ?1",
    )?;
    let mut ids = Vec::with_capacity(rows.len());
    for a in rows {
        let p =
            params![a.id, a.incident_id, a.playbook, a.action, a.target, a.state, a.created_ns, a.updated_ns, a.detail];
        let id = match a.id {
            Some(id) if update.execute(p)? == 1 => id,
            _ => {
                insert.execute(p)?;
                tx.last_insert_rowid()
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn transition_action(tx: &Transaction<'_>, a: &ActionRow, from: &str) -> Res<bool> {
    let n = tx.execute(
        "UPDATE actions SET state = ?2, updated_ns = ?3, detail = ?4 WHERE id = ?1 AND state = ?5",
        params![a.id, a.state, a.updated_ns, a.detail, from],
    )?;
    Ok(n == 1)
}

fn read_action(r: &Row<'_>) -> rusqlite::Result<ActionRow> {
    Ok(ActionRow {
        id: Some(r.get(0)?),
        incident_id: r.get(1)?,
        playbook: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        state: r.get(5)?,
        created_ns: r.get(6)?,
        updated_ns: r.get(7)?,
        detail: r.get(8)?,
    })
}

pub(super) fn search_actions(conn: &Connection, q: &ActionQuery) -> Res<Vec<ActionRow>> {
    let sql = format!(
        "SELECT {ACTION_COLUMNS} FROM actions WHERE (?1 IS NULL OR incident_id = ?1) AND (?2 IS NULL OR state = ?2) \
         AND (?3 IS NULL OR created_ns >= ?3) AND (?5 IS NULL OR target = ?5) ORDER BY id DESC LIMIT ?4"
    );
    rows(conn, &sql, params![q.incident_id, q.state, q.since_ns, limit(q.limit), q.target], read_action)
}

pub(super) fn action(conn: &Connection, id: i64) -> Res<Option<ActionRow>> {
    let sql = format!("SELECT {ACTION_COLUMNS} FROM actions WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], read_action).optional()?)
}
