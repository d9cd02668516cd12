//! Generic webhook: the notification JSON itself, or a JSON template. In a template, a string
//! that is exactly `{{name}}` becomes that field's JSON value (an object stays an object, a
//! number a number); placeholders inside longer strings are replaced by the field as text.
//! Names are the [`Notification`] fields plus `time` (RFC 3339) and `severity_lower`.

use serde_json::{Map, Value};

use crate::Notification;

/// The names a template may use.
pub const PLACEHOLDERS: [&str; 19] = [
    "action",
    "incident_id",
    "dedup_key",
    "cluster",
    "severity",
    "severity_lower",
    "status",
    "title",
    "summary",
    "time",
    "time_ns",
    "first_ns",
    "last_ns",
    "rule",
    "output",
    "tags",
    "fields",
    "incident",
    "url",
];

/// The first placeholder in `template` that is not a known name.
pub fn unknown_placeholder(template: &Value) -> Option<String> {
    match template {
        Value::String(s) => names(s).find(|n| !PLACEHOLDERS.contains(n)).map(str::to_owned),
        Value::Array(items) => items.iter().find_map(unknown_placeholder),
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            names(k).find(|n| !PLACEHOLDERS.contains(n)).map(str::to_owned).or_else(|| unknown_placeholder(v))
        }),
        _ => None,
    }
}

/// The `name`s of the `{{name}}`s in `s`.
fn names(s: &str) -> impl Iterator<Item = &str> {
    s.split("{{").skip(1).filter_map(|rest| rest.split_once("}}").map(|(n, _)| n.trim()))
}

/// The request body.
pub fn body(n: &Notification, template: Option<&Value>) -> Value {
    let fields = match serde_json::to_value(n) {
        Ok(Value::Object(mut m)) => {
            m.insert("time".into(), super::rfc3339_nanos(n.time_ns).into());
            m.insert("severity_lower".into(), n.severity.falco_name().to_ascii_lowercase().into());
            m
        }
        _ => Map::new(),
    };
    match template {
        None => serde_json::to_value(n).unwrap_or(Value::Null),
        Some(t) => fill(t, &fields),
    }
}

fn fill(t: &Value, fields: &Map<String, Value>) -> Value {
    match t {
        Value::String(s) => {
            if let Some(name) = whole_placeholder(s) {
                return fields.get(name).cloned().unwrap_or(Value::Null);
            }
            Value::String(interpolate(s, fields))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, fields)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (interpolate(k, fields), fill(v, fields))).collect()),
        other => other.clone(),
    }
}

fn whole_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then(|| inner.trim())
}

fn interpolate(s: &str, fields: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let after = after.get(2..).unwrap_or_default();
        match after.split_once("}}") {
            Some((name, tail)) => {
                match fields.get(name.trim()) {
                    Some(Value::String(v)) => out.push_str(v),
                    Some(Value::Null) | None => {}
                    Some(v) => out.push_str(&v.to_string()),
                }
                rest = tail;
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;
    use serde_json::json;

    #[test]
    fn template_values_and_text() {
        let t = json!({"text": "{{title}}", "sev": "{{ severity }}", "incident": "{{incident}}", "id": "{{incident_id}}",
                       "line": "#{{incident_id}} is {{status}} ({{severity_lower}}){{cluster}}", "keep": [1, true]});
        assert_eq!(unknown_placeholder(&t), None);
        let b = body(&sample(), Some(&t));
        assert_eq!(b["text"], sample().title);
        assert_eq!(b["sev"], "Critical");
        assert_eq!(b["incident"]["steps"][0]["rule"], "Terminal shell in container");
        assert_eq!(b["id"], 42);
        assert_eq!(b["line"], "#42 is new (critical)prod-eu");
        assert_eq!(b["keep"], json!([1, true]));
        assert_eq!(unknown_placeholder(&json!({"a": ["x {{nope}}"]})).as_deref(), Some("nope"));
        assert_eq!(body(&sample(), None), serde_json::to_value(sample()).unwrap());
    }
}
