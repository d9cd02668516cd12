//! Redaction of values that may be credentials in objects kustody stores: literal environment
//! variable values in pod templates (`env[].value`), also inside the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation. Names stay, so an analyst
//! sees *that* a variable was set; `--include-env-values` keeps the values.

use serde_json::Value;

pub const REDACTED: &str = "<redacted by kustody>";

/// Redact in place; returns the JSON paths redacted (for the manifest).
pub fn env_values(v: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

fn walk(v: &mut Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let p = format!("{path}.{k}");
                if k == "env" {
                    if let Value::Array(items) = child {
                        for (i, item) in items.iter_mut().enumerate() {
                            if let Some(val) = item.get_mut("value") {
                                if !val.is_null() && val.as_str() != Some("") {
                                    *val = Value::String(REDACTED.into());
                                    out.push(format!("{p}[{i}].value"));
                                }
                            }
                        }
                        continue;
                    }
                }
                if k == "kubectl.kubernetes.io/last-applied-configuration" {
                    if let Some(text) = child.as_str() {
                        if let Ok(mut inner) = serde_json::from_str::<Value>(text) {
                            let before = out.len();
                            walk(&mut inner, &format!("{p}<json>"), out);
                            if out.len() > before {
                                *child = Value::String(inner.to_string());
                            }
                        }
                    }
                    continue;
                }
                walk(child, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_values_and_last_applied_are_redacted() {
        let last = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "TOKEN", "value": "s3cret"}]}]}});
        let mut pod = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": last.to_string()}},
            "spec": {"containers": [{"name": "a", "env": [
                {"name": "TOKEN", "value": "s3cret"},
                {"name": "FROM", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {"name": "EMPTY", "value": ""}
            ]}]}
        });
        let paths = env_values(&mut pod);
        let text = pod.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert_eq!(pod["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["key"], "k");
        assert!(text.contains("TOKEN"));
    }
}
