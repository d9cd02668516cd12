//! Bad records and source leases (schema version 6).

use postgres::{GenericClient, Transaction};

use super::error::{Fail, Res};
use crate::{BadRecord, BadRecordQuery, BadRecordRow};

pub(super) fn append(tx: &mut Transaction<'_>, records: &[BadRecord]) -> Res<u64> {
    let stmt = tx.prepare(
        "INSERT INTO bad_records (received_ns, source, locator, reason, raw_len, raw, audit_id, cluster) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (source, locator) DO NOTHING",
    )?;
    let mut new = 0u64;
    for r in records {
        let raw = zstd::bulk::compress(&r.raw, 3).map_err(|e| Fail::other(format!("compressing a bad record: {e}")))?;
        let len = i64::try_from(r.raw_len).unwrap_or(i64::MAX);
        new += tx
            .execute(&stmt, &[&r.received_ns, &r.source, &r.locator, &r.reason, &len, &raw, &r.audit_id, &r.cluster])?;
    }
    Ok(new)
}

pub(super) fn list(c: &mut impl GenericClient, q: &BadRecordQuery) -> Res<Vec<BadRecordRow>> {
    let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
    let rows = c.query(
        "SELECT id, received_ns, source, locator, reason, raw_len, raw, audit_id, cluster FROM bad_records \
         WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR cluster = $2) \
         AND ($3::bigint IS NULL OR received_ns >= $3) AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        &[&q.source, &q.cluster, &q.since_ns, &q.before_id, &limit],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let packed: Vec<u8> = r.try_get(6)?;
        let raw =
            zstd::stream::decode_all(&packed[..]).map_err(|e| Fail::other(format!("a stored bad record: {e}")))?;
        let raw_len: i64 = r.try_get(5)?;
        out.push(BadRecordRow {
            id: r.try_get(0)?,
            record: BadRecord {
                received_ns: r.try_get(1)?,
                source: r.try_get(2)?,
                locator: r.try_get(3)?,
                reason: r.try_get(4)?,
                raw,
                raw_len: u64::try_from(raw_len).unwrap_or(0),
                audit_id: r.try_get(7)?,
                cluster: r.try_get(8)?,
            },
        });
    }
    Ok(out)
}

/// Takes or renews `owner`'s lease on `name`: its epoch, or `None` while another holds it.
pub(super) fn lease(tx: &mut Transaction<'_>, name: &str, owner: &str, ttl_ms: i64) -> Res<Option<i64>> {
    let ttl = "now() + make_interval(secs => $3::bigint / 1000.0)";
    tx.execute(
        "INSERT INTO source_leases (name, owner, epoch, expires) VALUES ($1, '', 0, '-infinity') \
         ON CONFLICT (name) DO NOTHING",
        &[&name],
    )?;
    let row = tx.query_opt(
        &format!(
            "UPDATE source_leases SET epoch = CASE WHEN owner = $2 THEN epoch ELSE epoch + 1 END, owner = $2, \
             expires = {ttl} WHERE name = $1 AND (owner = $2 OR expires < now()) RETURNING epoch"
        ),
        &[&name, &owner, &ttl_ms],
    )?;
    Ok(match row {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

pub(super) fn release(tx: &mut Transaction<'_>, name: &str, owner: &str) -> Res<()> {
    tx.execute(
        "UPDATE source_leases SET owner = '', expires = '-infinity' WHERE name = $1 AND owner = $2",
        &[&name, &owner],
    )?;
    Ok(())
}
