//! Falco runtime alerts (what `kustody serve` takes on `POST /v1/falco`): Falco's `http_output` JSON (one alert per POST) and falcosidekick's
//! webhook output (the same object with a `uuid`), one object, a JSON array of them, or JSON
//! Lines. Each alert is tied to its pod through `output_fields` (`k8s.ns.name`,
//! `k8s.pod.name`, `container.id`).

use serde_json::Value;

pub use kustody_model::RuntimeAlert as FalcoAlert;

/// An alert that could not be read, by its position in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAlert {
    pub item: usize,
    pub reason: String,
}

/// Reads every alert of a payload; good ones are kept even when others are bad.
pub fn parse(body: &[u8]) -> (Vec<FalcoAlert>, Vec<BadAlert>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let text = match std::str::from_utf8(body) {
        Ok(t) => t.trim(),
        Err(e) => {
            bad.push(BadAlert { item: 0, reason: format!("not UTF-8: {e}") });
            return (good, bad);
        }
    };
    let items: Vec<Result<Value, String>> = if text.starts_with('[') {
        match serde_json::from_str::<Vec<Value>>(text) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(format!("invalid JSON array: {e}"))],
        }
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![Ok(v)],
            // JSON Lines: one alert per line
            Err(_) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("invalid JSON: {e}")))
                .collect(),
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        match item.and_then(|v| alert(&v)) {
            Ok(a) => good.push(a),
            Err(reason) => bad.push(BadAlert { item: i, reason }),
        }
    }
    (good, bad)
}

fn alert(v: &Value) -> Result<FalcoAlert, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let rule = s("rule").ok_or("missing field `rule`")?;
    let priority = s("priority").ok_or("missing field `priority`")?;
    if priority.parse::<kustody_model::Priority>().is_err() {
        return Err(format!("field `priority`: unknown priority `{priority}`"));
    }
    let output = s("output").unwrap_or_default();
    let time_ns = match obj.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(
            kustody_model::time::parse_rfc3339_nanos(t)
                .ok_or_else(|| format!("field `time`: not an RFC 3339 time: `{t}`"))?,
        ),
        Some(_) => return Err("field `time`: not a string".into()),
    };
    let fields = obj.get("output_fields").and_then(Value::as_object);
    let field = |k: &str| {
        fields.and_then(|f| f.get(k)).and_then(|v| match v {
            Value::String(s) if !s.is_empty() && s != "<NA>" => Some(s.clone()),
            _ => None,
        })
    };
    Ok(FalcoAlert {
        time_ns,
        rule,
        priority,
        source: s("source"),
        hostname: s("hostname"),
        namespace: field("k8s.ns.name"),
        pod: field("k8s.pod.name"),
        container_id: field("container.id"),
        output,
        raw: v.to_string(),
        // the receiver knows it, not the alert
        cluster: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]
    use super::*;

    const ALERT: &str = r#"{"hostname":"node-1","output":"Shell spawned (user=root container=abc)","output_fields":{"container.id":"0123456789ab","k8s.ns.name":"shop","k8s.pod.name":"web-1","proc.cmdline":"sh -i"},"priority":"Notice","rule":"Terminal shell in container","source":"syscall","tags":["container","shell"],"time":"2026-12-02T03:44:21.431251797Z"}"#;

    #[test]
    fn falco_http_output_and_sidekick_batches_tie_alerts_to_pods() {
        let (good, bad) = parse(ALERT.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        let a = &good[0];
        assert_eq!((a.namespace.as_deref(), a.pod.as_deref()), (Some("shop"), Some("web-1")));
        assert_eq!(a.container_id.as_deref(), Some("0123456789ab"));
        assert_eq!(a.time_ns, Some(1_796_183_061_431_251_797));
        let lines = format!("{ALERT}\n{{\"rule\":\"x\"}}\n{ALERT}\n");
        let (good, bad) = parse(lines.as_bytes());
        assert_eq!(good.len(), 2);
        assert_eq!(bad, vec![BadAlert { item: 1, reason: "missing field `priority`".into() }]);
        let (good, _) = parse(format!("[{ALERT},{ALERT}]").as_bytes());
        assert_eq!(good.len(), 2);
        let (good, bad) = parse(b"{not json");
        assert!(good.is_empty() && bad.len() == 1);
    }
}
