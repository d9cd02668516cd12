//! PagerDuty Events API v2 (`POST /v2/enqueue`). Trigger and Update both send `trigger` with the
//! incident's dedup_key (PagerDuty updates the open alert); Resolve sends only `routing_key`,
//! `event_action` and `dedup_key`.

use chrono::SecondsFormat;
use serde_json::{json, Map, Value};

use super::{namespace_of, rfc3339, source_of, truncate_chars};
use crate::{Action, Notification, Priority};

/// PagerDuty truncates `payload.summary` at 1024 characters; cut it first.
const SUMMARY_MAX: usize = 1024;

/// PagerDuty's four severities.
pub fn severity(p: Priority) -> &'static str {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => "critical",
        Priority::Error => "error",
        Priority::Warning => "warning",
        Priority::Notice | Priority::Informational | Priority::Debug => "info",
    }
}

/// The event; `routing_key` is the integration key.
pub fn body(n: &Notification, routing_key: &str) -> Value {
    if n.action == Action::Resolve {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": n.dedup_key});
    }
    let mut payload = Map::new();
    payload.insert("summary".into(), truncate_chars(&super::one_line(&n.title), SUMMARY_MAX).into());
    payload.insert("source".into(), source_of(n).into());
    payload.insert("severity".into(), severity(n.severity).into());
    payload.insert("timestamp".into(), rfc3339(n.time_ns, SecondsFormat::Millis).into());
    if let Some(ns) = namespace_of(n) {
        payload.insert("component".into(), ns.into());
    }
    if let Some(c) = &n.cluster {
        payload.insert("group".into(), c.as_str().into());
    }
    payload.insert("class".into(), n.rule.as_str().into());
    payload.insert(
        "custom_details".into(),
        json!({
            "status": n.status,
            "summary": n.summary,
            "output": n.output,
            "tags": n.tags,
            "fields": n.fields,
            "incident": n.incident,
        }),
    );
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": n.dedup_key,
        "payload": payload,
        "client": "kustody",
    });
    if let (Some(url), Some(obj)) = (&n.url, event.as_object_mut()) {
        obj.insert("client_url".into(), url.as_str().into());
        obj.insert("links".into(), json!([{"href": url, "text": "kustody incident"}]));
    }
    event
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn trigger_update_and_resolve() {
        let mut n = sample();
        n.title = "x".repeat(2000);
        let t = body(&n, "KEY");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "kustody/prod-eu/incident/42");
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["summary"].as_str().unwrap().chars().count(), 1024);
        assert_eq!(t["payload"]["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(t["payload"]["component"], "default");
        assert_eq!(t["payload"]["custom_details"]["incident"]["id"], 42);
        assert_eq!(t["client"], "kustody");
        n.action = Action::Update;
        assert_eq!(body(&n, "KEY")["event_action"], "trigger");
        n.action = Action::Resolve;
        let r = body(&n, "KEY");
        assert_eq!(
            r,
            json!({"routing_key": "KEY", "event_action": "resolve", "dedup_key": "kustody/prod-eu/incident/42"})
        );
    }
}
