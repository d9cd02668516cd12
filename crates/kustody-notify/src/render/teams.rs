//! Microsoft Teams incoming webhook (and Power Automate "Workflows" webhooks): a `message` with
//! one Adaptive Card 1.4 attachment: the title, the summary, a FactSet (severity, status,
//! cluster, rule, incident, first and last seen) and an Action.OpenUrl to the console.

use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::{rfc3339, truncate_chars};
use crate::{Notification, Priority};

/// Teams refuses messages over about 28 KB; the summary is cut well below.
const SUMMARY_MAX: usize = 16_000;

pub fn body(n: &Notification) -> Value {
    let color = match n.severity {
        Priority::Emergency | Priority::Alert | Priority::Critical | Priority::Error => "Attention",
        Priority::Warning => "Warning",
        _ => "Default",
    };
    let mut facts = vec![
        fact("Severity", n.severity.falco_name()),
        fact("Status", &n.status),
        fact("Rule", &n.rule),
        fact("Incident", &format!("#{}", n.incident_id)),
    ];
    if let Some(c) = &n.cluster {
        facts.push(fact("Cluster", c));
    }
    if let Some(t) = n.first_ns {
        facts.push(fact("First seen", &rfc3339(t, SecondsFormat::Secs)));
    }
    if let Some(t) = n.last_ns {
        facts.push(fact("Last seen", &rfc3339(t, SecondsFormat::Secs)));
    }
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": n.title, "weight": "Bolder", "size": "Medium", "wrap": true, "color": color},
            {"type": "TextBlock", "text": truncate_chars(&n.summary, SUMMARY_MAX), "wrap": true, "fontType": "Monospace"},
            {"type": "FactSet", "facts": facts}
        ]
    });
    if let (Some(url), Some(obj)) = (&n.url, content.as_object_mut()) {
        obj.insert("actions".into(), json!([{"type": "Action.OpenUrl", "title": "Open in kustody", "url": url}]));
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": content}]
    })
}

fn fact(title: &str, value: &str) -> Value {
    json!({"title": title, "value": value})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn adaptive_card_shape() {
        let b = body(&sample());
        assert_eq!(b["type"], "message");
        let a = &b["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        let c = &a["content"];
        assert_eq!(c["type"], "AdaptiveCard");
        assert_eq!(c["version"], "1.4");
        assert_eq!(c["body"][0]["type"], "TextBlock");
        assert_eq!(c["body"][2]["type"], "FactSet");
        assert!(c["body"][2]["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["title"] == "Severity" && f["value"] == "Critical"));
        assert_eq!(c["actions"][0]["type"], "Action.OpenUrl");
    }
}
