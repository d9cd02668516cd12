//! `--since` / `--until` values: RFC 3339 timestamps or durations before now.

use anyhow::{bail, Result};
use kustody_model::time::parse_rfc3339_nanos;

/// Parses `2024-05-01T10:00:00Z`, `2024-05-01` or a duration ago (`30s`, `90m`, `12h`, `7d`)
/// into Unix nanoseconds.
pub fn parse(s: &str, now_ns: i64) -> Result<i64> {
    if let Some(ns) = parse_rfc3339_nanos(s) {
        return Ok(ns);
    }
    if s.len() == 10 {
        if let Some(ns) = parse_rfc3339_nanos(&format!("{s}T00:00:00Z")) {
            return Ok(ns);
        }
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = match num.parse() {
        Ok(n) => n,
        Err(_) => bail!("cannot read time `{s}`: use RFC 3339 (2024-05-01T10:00:00Z) or a duration like 90m, 12h, 7d"),
    };
    let per_unit: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("cannot read time `{s}`: unknown unit `{unit}` (use s, m, h, d or w)"),
    };
    n.checked_mul(per_unit)
        .and_then(|secs| secs.checked_mul(1_000_000_000))
        .and_then(|ns| now_ns.checked_sub(ns))
        .ok_or_else(|| anyhow::anyhow!("time `{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("1970-01-01T00:00:10Z", 0).unwrap(), 10_000_000_000);
        assert_eq!(parse("1970-01-02", 0).unwrap(), 86_400_000_000_000);
        assert_eq!(parse("2h", 7_200_000_000_000).unwrap(), 0);
        assert!(parse("2x", 0).is_err());
        assert!(parse("yesterday", 0).is_err());
        assert!(parse("999999999999d", 0).is_err());
    }
}
