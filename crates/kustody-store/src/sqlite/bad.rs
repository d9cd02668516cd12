//! Bad records: what a source could not convert, kept with the reason (schema version 7).

use rusqlite::{params, Connection, Transaction};

use super::error::{Fail, Res};
use crate::{BadRecord, BadRecordQuery, BadRecordRow};

pub(super) fn append(tx: &Transaction<'_>, records: &[BadRecord]) -> Res<u64> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO bad_records (received_ns, source, locator, reason, raw_len, raw, audit_id, cluster) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (source, locator) DO NOTHING",
    )?;
    let mut new = 0u64;
    for r in records {
        let raw = zstd::bulk::compress(&r.raw, 3).map_err(|e| Fail::other(format!("compressing a bad record: {e}")))?;
        let len = i64::try_from(r.raw_len).unwrap_or(i64::MAX);
        new += stmt.execute(params![r.received_ns, r.source, r.locator, r.reason, len, raw, r.audit_id, r.cluster])?
            as u64;
    }
    Ok(new)
}

pub(super) fn list(conn: &Connection, q: &BadRecordQuery) -> Res<Vec<BadRecordRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, received_ns, source, locator, reason, raw_len, raw, audit_id, cluster FROM bad_records \
         WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR cluster = ?2) AND (?3 IS NULL OR received_ns >= ?3) \
         AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
    )?;
    let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![q.source, q.cluster, q.since_ns, q.before_id, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, received_ns, source, locator, reason, raw_len, packed, audit_id, cluster) = row?;
        out.push(BadRecordRow {
            id,
            record: record(received_ns, source, locator, reason, raw_len, &packed, audit_id, cluster)?,
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    received_ns: i64,
    source: String,
    locator: String,
    reason: String,
    raw_len: i64,
    packed: &[u8],
    audit_id: Option<String>,
    cluster: Option<String>,
) -> Res<BadRecord> {
    let raw = zstd::stream::decode_all(packed).map_err(|e| Fail::other(format!("a stored bad record: {e}")))?;
    Ok(BadRecord {
        received_ns,
        source,
        locator,
        reason,
        raw,
        raw_len: u64::try_from(raw_len).unwrap_or(0),
        audit_id,
        cluster,
    })
}
