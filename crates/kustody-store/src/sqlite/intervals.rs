//! The IP history and named state in SQLite (schema version 3).

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::error::{Fail, Res};
use crate::Interval;

const COLUMNS: &str = "ip, uid, first_ns, last_ns, ended_ns, facts";

pub(super) fn save(tx: &Transaction<'_>, intervals: &[Interval]) -> Res<()> {
    let mut put = tx.prepare_cached(
        "INSERT INTO ip_intervals (ip, uid, first_ns, last_ns, ended_ns, namespace, name, facts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (ip, uid) DO UPDATE SET first_ns = ?3, last_ns = ?4, \
         ended_ns = ?5, namespace = ?6, name = ?7, facts = ?8",
    )?;
    for i in intervals {
        let facts = serde_json::to_string(&i.pod).map_err(|e| Fail::other(format!("interval facts: {e}")))?;
        put.execute(params![i.ip, i.pod.uid, i.first_ns, i.last_ns, i.ended_ns, i.pod.namespace, i.pod.name, facts])?;
    }
    Ok(())
}

fn read(r: &Row<'_>) -> Res<Interval> {
    let facts: String = r.get(5)?;
    let pod = serde_json::from_str(&facts).map_err(|e| Fail::other(format!("stored interval facts: {e}")))?;
    Ok(Interval { ip: r.get(0)?, pod, first_ns: r.get(2)?, last_ns: r.get(3)?, ended_ns: r.get(4)? })
}

fn rows<P: rusqlite::Params>(conn: &Connection, sql: &str, p: P) -> Res<Vec<Interval>> {
    let mut st = conn.prepare_cached(sql)?;
    let mut out = Vec::new();
    let mut q = st.query(p)?;
    while let Some(r) = q.next()? {
        out.push(read(r)?);
    }
    out.sort_by_key(|i| i.first_ns);
    Ok(out)
}

pub(super) fn of_ip(conn: &Connection, ip: &str) -> Res<Vec<Interval>> {
    rows(conn, &format!("SELECT {COLUMNS} FROM ip_intervals WHERE ip = ?1"), [ip])
}

pub(super) fn of_pod(conn: &Connection, namespace: &str, name: &str) -> Res<Vec<Interval>> {
    rows(conn, &format!("SELECT {COLUMNS} FROM ip_intervals WHERE namespace = ?1 AND name = ?2"), [namespace, name])
}

pub(super) fn recent(conn: &Connection, since_ns: i64, limit: usize) -> Res<Vec<Interval>> {
    // Two disjoint halves (open; ended and seen since): UNION ALL stops at the limit, where a
    // plain UNION would read everything to remove duplicates.
    let mut v = rows(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM ip_intervals WHERE ended_ns IS NULL \
             UNION ALL SELECT {COLUMNS} FROM ip_intervals WHERE last_ns >= ?1 AND ended_ns IS NOT NULL LIMIT ?2"
        ),
        params![since_ns, i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    v.truncate(limit);
    Ok(v)
}

/// Removes intervals that ended before `cutoff` (open ones are kept: their pod still holds
/// the IP). Returns how many.
pub(super) fn retain(tx: &Transaction<'_>, cutoff: i64) -> Res<u64> {
    let n = tx.execute("DELETE FROM ip_intervals WHERE ended_ns IS NOT NULL AND ended_ns < ?1", [cutoff])?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A zstd frame's magic number: stored state is compressed (a live baseline's JSON shrinks
/// about tenfold).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub(super) fn state(conn: &Connection, name: &str) -> Res<Option<Vec<u8>>> {
    let v: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM state WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    match v {
        Some(b) if b.starts_with(&ZSTD_MAGIC) => {
            Ok(Some(zstd::stream::decode_all(&b[..]).map_err(|e| Fail::other(format!("stored state `{name}`: {e}")))?))
        }
        other => Ok(other),
    }
}

pub(super) fn set_state(tx: &Transaction<'_>, name: &str, value: &[u8]) -> Res<()> {
    // compressed already (by `crate::compress_state`, off the writer thread), or here
    let packed = if value.starts_with(&ZSTD_MAGIC) {
        value.to_vec()
    } else {
        zstd::bulk::compress(value, 3).map_err(|e| Fail::other(format!("compressing state `{name}`: {e}")))?
    };
    tx.execute(
        "INSERT INTO state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2",
        params![name, packed],
    )?;
    Ok(())
}
