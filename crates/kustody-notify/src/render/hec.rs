//! Splunk HTTP Event Collector (`/services/collector/event`): one request carries the batch as
//! concatenated JSON event objects `{"time", "host", "source", "sourcetype", "index"?, "event"}`;
//! `event` is the whole notification. Success is HTTP 200 with `"code": 0`.

use serde_json::{json, Value};

use crate::Notification;

/// Where events are filed.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub host: Option<&'a str>,
    pub source: &'a str,
    pub sourcetype: &'a str,
    pub index: Option<&'a str>,
}

/// Epoch seconds with a millisecond fraction.
pub fn epoch_seconds(ns: i64) -> f64 {
    // milliseconds are exact in an f64 for any realistic date
    #[allow(clippy::cast_precision_loss, reason = "milliseconds since 1970 fit in 53 bits")]
    let ms = ns.div_euclid(1_000_000) as f64;
    ms / 1000.0
}

pub fn event(n: &Notification, meta: Meta<'_>) -> Value {
    let mut e = json!({
        "time": epoch_seconds(n.time_ns),
        "host": meta.host.unwrap_or_else(|| super::source_of(n)),
        "source": meta.source,
        "sourcetype": meta.sourcetype,
        "event": n,
    });
    if let (Some(index), Some(obj)) = (meta.index, e.as_object_mut()) {
        obj.insert("index".into(), index.into());
    }
    e
}

/// The request body: the events one after the other (newline separated, which HEC accepts).
pub fn body(batch: &[Notification], meta: Meta<'_>) -> String {
    batch.iter().map(|n| event(n, meta).to_string()).collect::<Vec<_>>().join("\n")
}

/// `Ok` when the response says `"code": 0`; otherwise HEC's text and code.
pub fn check_response(body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "HEC answered 200 without a JSON body".to_owned())?;
    match v.get("code").and_then(Value::as_i64) {
        Some(0) => Ok(()),
        code => Err(format!(
            "HEC answered code {} ({})",
            code.map_or_else(|| "none".into(), |c| c.to_string()),
            v.get("text").and_then(Value::as_str).unwrap_or("no text")
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn events_are_concatenated_objects() {
        let meta = Meta { host: None, source: "kustody", sourcetype: "kustody:incident", index: Some("k8s") };
        let b = body(&[sample(), sample()], meta);
        let events: Vec<Value> = serde_json::Deserializer::from_str(&b).into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["time"], 1_700_000_000.123);
        assert_eq!(events[0]["host"], "prod-eu");
        assert_eq!(events[0]["index"], "k8s");
        assert_eq!(events[0]["event"]["incident_id"], 42);
        assert!(check_response(br#"{"text":"Success","code":0}"#).is_ok());
        assert!(check_response(br#"{"text":"Invalid token","code":4}"#).unwrap_err().contains("Invalid token"));
    }
}
