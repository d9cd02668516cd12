//! Events per minute by namespace and by user (schema v4), kept in the transaction that adds
//! or removes the events, and the counts the console's histograms and charts read.

use std::collections::HashMap;

use rusqlite::{params_from_iter, Transaction};

use super::error::Res;
use crate::{Count, CountBy, CountQuery};

pub(crate) const MINUTE_NS: i64 = 60_000_000_000;

/// Changes to the per-minute counts of one transaction (by minute and namespace, by minute
/// and user); each backend writes them in its own dialect.
#[derive(Debug, Default)]
pub(crate) struct Minutes {
    pub(crate) ns: HashMap<(i64, String), i64>,
    pub(crate) user: HashMap<(i64, String), i64>,
}

impl Minutes {
    pub(crate) fn add(&mut self, time_ns: i64, namespace: &str, user: &str, n: i64) {
        let m = time_ns.div_euclid(MINUTE_NS);
        *self.ns.entry((m, namespace.to_owned())).or_default() += n;
        *self.user.entry((m, user.to_owned())).or_default() += n;
    }

    pub(crate) fn write(&self, tx: &Transaction<'_>) -> Res<()> {
        for (table, col, map) in
            [("event_minutes_ns", "namespace", &self.ns), ("event_minutes_user", "username", &self.user)]
        {
            if map.is_empty() {
                continue;
            }
            let mut up = tx.prepare_cached(&format!(
                "INSERT INTO {table} (minute, {col}, n) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (minute, {col}) DO UPDATE SET n = n + excluded.n"
            ))?;
            let mut gone = false;
            for ((m, k), n) in map {
                if *n != 0 {
                    up.execute(rusqlite::params![m, k, n])?;
                    gone |= *n < 0;
                }
            }
            if gone {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE n <= 0"))?.execute([])?;
            }
        }
        Ok(())
    }
}

/// How a count query reads the per-minute tables (the same for every backend).
pub(crate) struct Plan<'q> {
    /// Bucket width, in minutes.
    pub bucket: i64,
    /// Minutes `lo` ≤ m < `hi`.
    pub lo: i64,
    pub hi: i64,
    pub table: &'static str,
    pub col: &'static str,
    /// The one namespace or user counted, if any.
    pub filter: Option<&'q str>,
    /// Totals only (no split by `col`).
    pub total: bool,
}

/// The plan of `q`; an error for a namespace and a user together (not kept).
pub(crate) fn plan(q: &CountQuery) -> Result<Plan<'_>, String> {
    // The user table answers user filters and splits by user; the namespace table the rest.
    let by_user = q.user.is_some() || q.by == CountBy::User;
    if by_user && (q.namespace.is_some() || q.by == CountBy::Namespace) {
        return Err("counts by namespace and user together are not kept: search the events instead".into());
    }
    let (table, col, filter) = if by_user {
        ("event_minutes_user", "username", q.user.as_deref())
    } else {
        ("event_minutes_ns", "namespace", q.namespace.as_deref())
    };
    Ok(Plan {
        bucket: (q.bucket_ns / MINUTE_NS).max(1),
        lo: q.since_ns.div_euclid(MINUTE_NS),
        hi: q.until_ns.div_euclid(MINUTE_NS) + i64::from(q.until_ns.rem_euclid(MINUTE_NS) != 0),
        table,
        col,
        filter,
        total: q.by == CountBy::Total,
    })
}

/// Events per bucket (by namespace, user, or in total) from the per-minute tables.
pub(crate) fn events(conn: &rusqlite::Connection, q: &CountQuery) -> Res<Vec<Count>> {
    let Plan { bucket, lo, hi, table, col, filter, total } = plan(q).map_err(super::error::Fail::other)?;
    let key = if total { "''" } else { col };
    let mut sql = format!("SELECT (minute / ?1) * ?1, {key}, sum(n) FROM {table} WHERE minute >= ?2 AND minute < ?3");
    let mut args: Vec<rusqlite::types::Value> = vec![bucket.into(), lo.into(), hi.into()];
    if let Some(v) = filter {
        sql.push_str(&format!(" AND {col} = ?4"));
        args.push(v.to_owned().into());
    }
    sql.push_str(" GROUP BY 1, 2 ORDER BY 1");
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(args.iter()), |r| {
        Ok(Count {
            start_ns: r.get::<_, i64>(0)?.saturating_mul(MINUTE_NS),
            key: r.get(1)?,
            n: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Findings first seen per bucket, by priority.
pub(crate) fn findings(conn: &rusqlite::Connection, since_ns: i64, until_ns: i64, bucket_ns: i64) -> Res<Vec<Count>> {
    let bucket = bucket_ns.max(1);
    let mut st = conn.prepare_cached(
        "SELECT (first_ns / ?1) * ?1, priority, count(*) FROM findings \
         WHERE first_ns >= ?2 AND first_ns < ?3 GROUP BY 1, 2 ORDER BY 1",
    )?;
    let rows = st.query_map(rusqlite::params![bucket, since_ns, until_ns], |r| {
        Ok(Count { start_ns: r.get(0)?, key: r.get(1)?, n: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0) })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stored findings per rule (each rule a finding lists).
pub(crate) fn rules(conn: &rusqlite::Connection) -> Res<Vec<(String, u64)>> {
    let mut st = conn.prepare_cached("SELECT rule, count(*) FROM finding_rules GROUP BY rule")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
