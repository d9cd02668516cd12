//! Kubernetes label-selector semantics (apimachinery `LabelSelectorAsSelector` and Service
//! selectors), for deciding which Services, controllers and NetworkPolicies select a pod.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Does a `LabelSelector` select these labels? An empty selector selects everything (as a
/// NetworkPolicy `podSelector: {}`); an unknown operator selects nothing.
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok =
        sel.match_labels.as_ref().is_none_or(|m| m.iter().all(|(k, v)| labels.get(k).is_some_and(|x| x == v)));
    labels_ok && sel.match_expressions.as_ref().is_none_or(|e| e.iter().all(|r| requirement(r, labels)))
}

/// A workload's selector: absent selects nothing (`LabelSelectorAsSelector(nil)`).
pub fn matches_opt(sel: Option<&LabelSelector>, labels: &Labels) -> bool {
    sel.is_some_and(|s| matches(s, labels))
}

/// A Service's selector: absent or empty selects no pods (endpoints are then managed by hand).
pub fn service_matches(sel: Option<&BTreeMap<String, String>>, labels: &Labels) -> bool {
    sel.is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k).is_some_and(|x| x == v)))
}

fn requirement(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => labels.get(&r.key).is_some_and(|v| values.contains(v)),
        "NotIn" => labels.get(&r.key).is_none_or(|v| !values.contains(v)),
        "Exists" => labels.contains_key(&r.key),
        "DoesNotExist" => !labels.contains_key(&r.key),
        _ => false,
    }
}

/// The label keys a selector needs to be present (matchLabels, `In`, `Exists`): removing any
/// one of them from matching labels makes the selector stop matching. Empty when the selector
/// can only be escaped some other way (`{}`, or only `NotIn`/`DoesNotExist`).
pub fn required_keys(sel: &LabelSelector) -> Vec<String> {
    let mut keys: Vec<String> = sel.match_labels.iter().flat_map(|m| m.keys().cloned()).collect();
    for r in sel.match_expressions.iter().flatten() {
        if matches!(r.operator.as_str(), "In" | "Exists") {
            keys.push(r.key.clone());
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A selector text that is not `key=value[,key=value...]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{part}` in selector `{selector}`: {problem}")]
pub struct SelectorError {
    /// The whole selector text.
    pub selector: String,
    /// The `key=value` part that is wrong.
    pub part: String,
    pub problem: &'static str,
}

/// `key=value[,key=value...]` (equality only) as matchLabels; `None` for an empty string.
pub fn parse_equality(s: &str) -> Result<Option<BTreeMap<String, String>>, SelectorError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for part in s.split(',') {
        let (k, v) = part.split_once("==").or_else(|| part.split_once('=')).ok_or_else(|| SelectorError {
            selector: s.into(),
            part: part.into(),
            problem: "expected key=value",
        })?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !valid_label_key(k) || !valid_label_value(v) {
            return Err(SelectorError {
                selector: s.into(),
                part: part.into(),
                problem: "not a valid label key=value",
            });
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(out))
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
    prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253) && !name.is_empty() && valid_label_value(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn semantics() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&sel(serde_json::json!({})), &l), "empty selects all");
        assert!(matches(&sel(serde_json::json!({"matchLabels": {"app": "web"}})), &l));
        assert!(!matches(&sel(serde_json::json!({"matchLabels": {"app": "db"}})), &l));
        let e = |op: &str, vals: &[&str]| {
            sel(serde_json::json!({"matchExpressions": [{"key": "app", "operator": op, "values": vals}]}))
        };
        assert!(matches(&e("In", &["web", "x"]), &l));
        assert!(!matches(&e("NotIn", &["web"]), &l));
        assert!(matches(&e("NotIn", &["web"]), &labels(&[])), "NotIn matches a missing key");
        assert!(matches(&e("Exists", &[]), &l));
        assert!(!matches(&e("DoesNotExist", &[]), &l));
        assert!(!matches(&e("Bogus", &[]), &l));
        assert!(!matches_opt(None, &l));
        assert!(!service_matches(Some(&BTreeMap::new()), &l), "a Service without selector selects nothing");
        assert!(service_matches(Some(&labels(&[("app", "web")])), &l));
    }

    #[test]
    fn required_keys_and_parse() {
        let s = sel(serde_json::json!({"matchLabels": {"b": "1"}, "matchExpressions": [
            {"key": "a", "operator": "Exists"}, {"key": "c", "operator": "NotIn", "values": ["x"]}]}));
        assert_eq!(required_keys(&s), vec!["a", "b"]);
        assert!(required_keys(&sel(serde_json::json!({}))).is_empty());
        assert_eq!(
            parse_equality("app=honeypot, tier==trap").unwrap().unwrap(),
            labels(&[("app", "honeypot"), ("tier", "trap")])
        );
        assert_eq!(parse_equality(" ").unwrap(), None);
        assert_eq!(parse_equality("app").unwrap_err().to_string(), "`app` in selector `app`: expected key=value");
        assert!(parse_equality("app=bad value").is_err());
    }
}
