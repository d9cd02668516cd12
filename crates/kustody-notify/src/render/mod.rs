//! Rendering: pure functions from [`Notification`]s to the request bodies each receiver
//! documents. No I/O here; the transports in [`crate::Sink`] send what these return.
//!
//! Each module follows one receiver's published schema and its size limits (Slack's 150-char
//! header and 3000-char sections, PagerDuty's 1024-char summary, syslog's field lengths), cutting
//! text at character boundaries and saying so with an ellipsis.

pub mod elastic;
pub mod falco;
pub mod hec;
pub mod mail;
pub mod pagerduty;
pub mod slack;
pub mod syslog;
pub mod teams;
pub mod webhook;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::Notification;

/// RFC 3339 UTC with nanoseconds (`2023-11-14T22:13:20.123456789Z`).
pub fn rfc3339_nanos(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// RFC 3339 UTC with `digits` of fraction: 0, 3, 6 or 9.
pub(crate) fn rfc3339(ns: i64, format: SecondsFormat) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(format, true)
}

/// At most `max` characters; a cut string ends with `…`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// At most `max` bytes, cut at a UTF-8 boundary.
pub(crate) fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Line breaks and other control characters as spaces: one line.
pub(crate) fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Splits `text` into pieces of at most `max` characters, at line breaks when it can.
pub(crate) fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0usize;
    for line in text.split_inclusive('\n') {
        let len = line.chars().count();
        if cur_len + len > max && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        if len > max {
            // one very long line: cut it
            let chars: Vec<char> = line.chars().collect();
            for piece in chars.chunks(max.max(1)) {
                out.push(piece.iter().collect());
            }
            continue;
        }
        cur.push_str(line);
        cur_len += len;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The host the notification is about, for `source`/`host` fields: the cluster, else "kustody".
pub(crate) fn source_of(n: &Notification) -> &str {
    n.cluster.as_deref().filter(|c| !c.is_empty()).unwrap_or("kustody")
}

/// The namespace of the lead detection, from the usual Falco field names.
pub(crate) fn namespace_of(n: &Notification) -> Option<&str> {
    ["ka.target.namespace", "k8s.ns.name", "ka.req.pod.namespace"]
        .iter()
        .find_map(|k| n.fields.get(*k))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    pub(crate) use crate::tests::sample;

    #[test]
    fn cutting_respects_characters() {
        assert_eq!(truncate_chars("héllo", 3), "hé…");
        assert_eq!(truncate_chars("hé", 3), "hé");
        assert_eq!(truncate_bytes("hé", 2), "h");
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let parts = split_text("aaa\nbbb\ncc\n", 8);
        assert_eq!(parts, vec!["aaa\nbbb\n", "cc\n"]);
        let parts = split_text(&"x".repeat(10), 4);
        assert_eq!(parts, vec!["xxxx", "xxxx", "xx"]);
        assert_eq!(rfc3339_nanos(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
    }
}
