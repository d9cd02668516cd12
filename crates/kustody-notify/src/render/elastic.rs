//! Elasticsearch / OpenSearch `_bulk`: NDJSON pairs of
//! `{"index":{"_index":INDEX,"_id":"<dedup_key>-<action>-<time_ns>"}}` and the document (the
//! notification with an `@timestamp`), each line ending in a newline. The id makes a redelivery
//! overwrite the same document instead of adding a copy.
//!
//! The response lists every item; when `errors` is true, items with status 429 or 5xx can be
//! sent again, any other item error cannot.

use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::rfc3339;
use crate::Notification;

/// The document id of a notification.
pub fn doc_id(n: &Notification) -> String {
    format!("{}-{}-{}", n.dedup_key, n.action.as_str(), n.time_ns)
}

pub fn body(batch: &[Notification], index: &str) -> String {
    let mut out = String::new();
    for n in batch {
        out.push_str(&json!({"index": {"_index": index, "_id": doc_id(n)}}).to_string());
        out.push('\n');
        let mut doc = serde_json::to_value(n).unwrap_or(Value::Null);
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("@timestamp".into(), rfc3339(n.time_ns, SecondsFormat::Millis).into());
        }
        out.push_str(&doc.to_string());
        out.push('\n');
    }
    out
}

/// A `_bulk` response that was not all success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkFailure {
    /// Every failed item may be sent again.
    pub retryable: bool,
    pub message: String,
}

/// Reads a 2xx `_bulk` response.
pub fn check_response(body: &[u8]) -> Result<(), BulkFailure> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| BulkFailure { retryable: true, message: "_bulk answered without a JSON body".into() })?;
    if v.get("errors").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let mut retry = Vec::new();
    let mut fatal = Vec::new();
    for item in v.get("items").and_then(Value::as_array).into_iter().flatten() {
        let Some(op) = item.as_object().and_then(|o| o.values().next()) else { continue };
        let status = op.get("status").and_then(Value::as_u64).unwrap_or(0);
        if (200..300).contains(&status) {
            continue;
        }
        let id = op.get("_id").and_then(Value::as_str).unwrap_or("?");
        let reason = op
            .get("error")
            .map(|e| match (e.get("type").and_then(Value::as_str), e.get("reason").and_then(Value::as_str)) {
                (Some(t), Some(r)) => format!("{t}: {r}"),
                (Some(t), None) => t.to_owned(),
                _ => e.to_string(),
            })
            .unwrap_or_default();
        let line = format!("{id}: {status} {reason}");
        if status == 429 || status >= 500 {
            retry.push(line);
        } else {
            fatal.push(line);
        }
    }
    let retryable = fatal.is_empty();
    let mut parts = Vec::new();
    if !fatal.is_empty() {
        parts.push(format!("{} item(s) refused: {}", fatal.len(), fatal.join("; ")));
    }
    if !retry.is_empty() {
        parts.push(format!("{} item(s) to retry: {}", retry.len(), retry.join("; ")));
    }
    if parts.is_empty() {
        parts.push("_bulk reported errors without failed items".into());
    }
    Err(BulkFailure { retryable, message: parts.join("; ") })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn ndjson_pairs() {
        let b = body(&[sample()], "kustody-incidents");
        assert!(b.ends_with('\n'));
        let lines: Vec<Value> = b.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["index"]["_index"], "kustody-incidents");
        assert_eq!(lines[0]["index"]["_id"], "kustody/prod-eu/incident/42-trigger-1700000000123456789");
        assert_eq!(lines[1]["@timestamp"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn item_errors_are_classified() {
        assert!(check_response(br#"{"errors":false,"items":[{"index":{"status":201}}]}"#).is_ok());
        let r = br#"{"errors":true,"items":[{"index":{"_id":"a","status":201}},{"index":{"_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}]}"#;
        let f = check_response(r).unwrap_err();
        assert!(f.retryable);
        assert!(f.message.contains("b: 429 es_rejected_execution_exception"), "{}", f.message);
        let r = br#"{"errors":true,"items":[{"index":{"_id":"b","status":429}},{"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#;
        let f = check_response(r).unwrap_err();
        assert!(!f.retryable);
        assert!(f.message.contains("c: 400 mapper_parsing_exception: bad"), "{}", f.message);
    }
}
