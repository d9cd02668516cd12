//! Label and field selectors: the query-string syntax and `LabelSelector` objects.

use serde_json::{Map, Value};

use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
    /// A `LabelSelector` object that selects nothing (`null` in some APIs).
    nothing: bool,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or(""));
    out
}

impl LabelSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("found '', expected: !, identifier, or 'end of string'"));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('>') {
                Req::Gt(
                    k.trim().into(),
                    v.trim().parse().map_err(|_| bad("for 'gt', 'lt' operators, the value must be an integer"))?,
                )
            } else if let Some((k, v)) = p.split_once('<') {
                Req::Lt(
                    k.trim().into(),
                    v.trim().parse().map_err(|_| bad("for 'gt', 'lt' operators, the value must be an integer"))?,
                )
            } else if let Some(i) = p.find(" notin ") {
                Req::NotIn(
                    p.get(..i).unwrap_or("").trim().into(),
                    set(p.get(i + 7..).unwrap_or("")).ok_or_else(|| bad("bad set"))?,
                )
            } else if let Some(i) = p.find(" in ") {
                Req::In(
                    p.get(..i).unwrap_or("").trim().into(),
                    set(p.get(i + 4..).unwrap_or("")).ok_or_else(|| bad("bad set"))?,
                )
            } else {
                Req::Exists(p.to_string())
            };
            let key = match &req {
                Req::Eq(k, _)
                | Req::Ne(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::NotExists(k)
                | Req::Gt(k, _)
                | Req::Lt(k, _) => k,
            };
            if !valid_key(key) {
                return Err(bad(&format!("invalid label key \"{key}\"")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs, nothing: false })
    }

    /// From a `LabelSelector` object (`matchLabels`, `matchExpressions`). `None` selects nothing.
    pub fn from_object(sel: Option<&Value>) -> Self {
        let Some(sel) = sel.filter(|s| !s.is_null()) else {
            return LabelSelector { reqs: vec![], nothing: true };
        };
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::Eq(k.clone(), v.as_str().unwrap_or("").to_string()));
            }
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or("").to_string();
            let values: Vec<String> =
                e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
            reqs.push(match e["operator"].as_str().unwrap_or("") {
                "In" => Req::In(key, values),
                "NotIn" => Req::NotIn(key, values),
                "Exists" => Req::Exists(key),
                "DoesNotExist" => Req::NotExists(key),
                _ => return LabelSelector { reqs: vec![], nothing: true },
            });
        }
        LabelSelector { reqs, nothing: false }
    }

    /// From a Service-style map selector (`spec.selector`). An absent or empty map selects nothing.
    pub fn from_map(sel: Option<&Value>) -> Self {
        match sel.and_then(Value::as_object) {
            Some(m) if !m.is_empty() => LabelSelector {
                reqs: m.iter().map(|(k, v)| Req::Eq(k.clone(), v.as_str().unwrap_or("").to_string())).collect(),
                nothing: false,
            },
            _ => LabelSelector { reqs: vec![], nothing: true },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty() && !self.nothing
    }

    pub fn matches_labels(&self, labels: Option<&Map<String, Value>>) -> bool {
        if self.nothing {
            return false;
        }
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            Req::Lt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(obj.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object))
    }
}

fn set(s: &str) -> Option<Vec<String>> {
    let s = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(s.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

/// A parsed field selector: `a=b,c!=d` over the fields a resource supports.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

/// Fields a resource can be selected by, besides metadata.name and metadata.namespace.
fn supported(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "secrets" => &["type"],
        "nodes" => &["spec.unschedulable"],
        "namespaces" => &["status.phase"],
        "replicasets" => &["status.replicas"],
        _ => &[],
    }
}

impl FieldSelector {
    pub fn parse(s: &str, plural: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, neg, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, false, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{s}'; can't understand '{part}'")));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" && !supported(plural).contains(&k) {
                return Err(ApiError::bad_request(format!("field label not supported: {k}")));
            }
            reqs.push((k.to_string(), neg, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(k, neg, v)| {
            let mut cur = obj;
            let mut found = true;
            if k == "source" {
                cur = &obj["source"]["component"];
            } else {
                for seg in k.split('.') {
                    match cur.get(seg) {
                        Some(x) => cur = x,
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
            }
            let actual = if !found || cur.is_null() {
                // Kubernetes compares unset booleans as "false" and unset strings as "".
                if k.ends_with("hostNetwork") || k.ends_with("unschedulable") {
                    "false".to_string()
                } else {
                    String::new()
                }
            } else {
                match cur {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            };
            (actual == *v) != *neg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_syntax() -> Result<(), ApiError> {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front", "n": "5"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("n>4", true),
            ("n<4", false),
            ("app in (web),tier notin (back)", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel)?.matches(&obj), want, "{sel}");
        }
        assert!(LabelSelector::parse("app=web,,x").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
        Ok(())
    }

    #[test]
    fn object_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web"}}});
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "quarantine", "operator": "DoesNotExist"}]});
        assert!(LabelSelector::from_object(Some(&sel)).matches(&obj));
        assert!(!LabelSelector::from_object(None).matches(&obj));
        assert!(LabelSelector::from_object(Some(&json!({}))).matches(&obj));
        assert!(!LabelSelector::from_map(Some(&json!({}))).matches(&obj));
    }

    #[test]
    fn field_selectors() -> Result<(), ApiError> {
        let pod = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "node-0"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("spec.nodeName=node-0,status.phase!=Failed", "pods")?.matches(&pod));
        assert!(!FieldSelector::parse("metadata.name=b", "pods")?.matches(&pod));
        assert!(FieldSelector::parse("spec.hostNetwork=false", "pods")?.matches(&pod));
        let e = FieldSelector::parse("spec.bogus=1", "pods").err().map(|e| e.message);
        assert_eq!(e.as_deref(), Some("field label not supported: spec.bogus"));
        Ok(())
    }
}
