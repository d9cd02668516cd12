//! Slack incoming webhook: `text` (the notification fallback) and Block Kit `blocks`: a header
//! (plain_text, at most 150 characters), the summary in mrkdwn sections of at most 3000
//! characters each, a context line (severity, status, cluster, rule) and, when the console URL
//! is known, a button to it.

use serde_json::{json, Value};

use super::{split_text, truncate_chars};
use crate::Notification;

/// Slack refuses a header over 150 characters and a section text over 3000.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
/// A message has at most 50 blocks; the summary gets at most this many sections.
const MAX_SECTIONS: usize = 20;

/// `&`, `<` and `>` are Slack mrkdwn control characters.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn body(n: &Notification) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate_chars(&super::one_line(&n.title), HEADER_MAX), "emoji": false}
    })];
    let summary = escape(&n.summary);
    let mut sections = split_text(&summary, SECTION_MAX - 8);
    if sections.len() > MAX_SECTIONS {
        sections.truncate(MAX_SECTIONS);
        if let Some(last) = sections.last_mut() {
            last.push_str("\n…");
        }
    }
    for part in sections {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{part}```")}}));
    }
    let mut context = format!(
        "*Severity:* {} · *Status:* {} · *Rule:* {} · *Incident:* #{}",
        n.severity.falco_name(),
        escape(&n.status),
        escape(&n.rule),
        n.incident_id
    );
    if let Some(c) = &n.cluster {
        context.push_str(&format!(" · *Cluster:* {}", escape(c)));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate_chars(&context, SECTION_MAX)}]}),
    );
    if let Some(url) = &n.url {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in kustody"},
                "url": url,
                "action_id": "kustody-open"
            }]
        }));
    }
    json!({"text": n.title, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn blocks_follow_slack_limits() {
        let mut n = sample();
        n.title = "T".repeat(300);
        n.summary = "line <b> & more\n".repeat(500);
        let b = body(&n);
        assert_eq!(b["text"], n.title);
        let blocks = b["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
        let sections: Vec<_> = blocks.iter().filter(|b| b["type"] == "section").collect();
        assert!(sections.len() >= 3);
        for s in &sections {
            let t = s["text"]["text"].as_str().unwrap();
            assert!(t.chars().count() <= 3000, "{}", t.len());
            assert!(!t.contains('<'));
        }
        assert!(blocks.len() <= 50);
        assert_eq!(blocks.last().unwrap()["type"], "actions");
        assert_eq!(blocks.last().unwrap()["elements"][0]["url"], "https://kustody.example/incidents/42");
    }

    #[test]
    fn no_button_without_url() {
        let mut n = sample();
        n.url = None;
        let b = body(&n);
        assert!(b["blocks"].as_array().unwrap().iter().all(|b| b["type"] != "actions"));
    }
}
