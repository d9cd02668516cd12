//! The audit log: `audit.k8s.io/v1` Events, one JSON line each, following an audit `Policy`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::rbac::UserInfo;

/// Audit levels, least to most detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "None" => Level::None,
            "Metadata" => Level::Metadata,
            "Request" => Level::Request,
            "RequestResponse" => Level::RequestResponse,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// The default policy: what a careful operator writes. Bodies of workload and RBAC changes and of
/// interactive access are kept; Secret, ConfigMap and token bodies never are.
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods/exec", "pods/attach", "pods/portforward", "pods/ephemeralcontainers", "pods/log"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps", "serviceaccounts/token"]
- level: None
  users: ["system:kube-scheduler", "system:kube-controller-manager", "system:apiserver"]
  verbs: ["get", "list", "watch"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods", "namespaces", "serviceaccounts", "services"]
  - group: "rbac.authorization.k8s.io"
  - group: "networking.k8s.io"
  - group: "apps"
  - group: "batch"
- level: Metadata
"#;

/// A parsed audit policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Value>,
    omit: Vec<String>,
}

/// What a request is, for policy matching and for the event.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub verb: String,
    pub resource_request: bool,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

pub(crate) fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().map(String::from).unwrap_or_else(|| format!("{k:?}")), yaml_to_json(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

fn list_has(v: &Value, want: &str) -> bool {
    v.as_array().into_iter().flatten().any(|x| x.as_str() == Some(want) || x.as_str() == Some("*"))
}

impl Policy {
    pub fn parse(text: &str) -> anyhow::Result<Policy> {
        let docs = yaml_rust2::YamlLoader::load_from_str(text)?;
        let doc = docs.first().map(yaml_to_json).unwrap_or(Value::Null);
        if doc["kind"] != "Policy" {
            anyhow::bail!("audit policy: kind must be Policy");
        }
        let rules = doc["rules"].as_array().cloned().unwrap_or_default();
        for (i, r) in rules.iter().enumerate() {
            if r["level"].as_str().and_then(Level::parse).is_none() {
                anyhow::bail!("audit policy: rules[{i}].level: unknown level {}", r["level"]);
            }
        }
        let omit =
            doc["omitStages"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect();
        Ok(Policy { rules, omit })
    }

    /// The level and omitted stages for a request.
    pub fn evaluate(&self, user: &UserInfo, f: &RequestFacts) -> (Level, Vec<String>) {
        for r in &self.rules {
            if let Some(users) = r.get("users") {
                if !list_has(users, &user.username) {
                    continue;
                }
            }
            if let Some(groups) = r.get("userGroups") {
                if !user.groups.iter().any(|g| list_has(groups, g)) {
                    continue;
                }
            }
            if let Some(verbs) = r.get("verbs") {
                if !list_has(verbs, &f.verb) {
                    continue;
                }
            }
            if let Some(nss) = r.get("namespaces") {
                if !f.resource_request || !list_has(nss, &f.namespace) {
                    continue;
                }
            }
            if let Some(urls) = r.get("nonResourceURLs") {
                if f.resource_request
                    || !urls
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .any(|u| u == f.path || (u.ends_with('*') && f.path.starts_with(u.trim_end_matches('*'))))
                {
                    continue;
                }
            }
            if let Some(res) = r.get("resources").and_then(Value::as_array) {
                if !f.resource_request {
                    continue;
                }
                let combined = if f.subresource.is_empty() {
                    f.resource.clone()
                } else {
                    format!("{}/{}", f.resource, f.subresource)
                };
                let hit = res.iter().any(|gr| {
                    if gr["group"].as_str().unwrap_or("") != f.group {
                        return false;
                    }
                    let names_ok = match gr["resourceNames"].as_array() {
                        Some(n) if !n.is_empty() => list_has(&gr["resourceNames"], &f.name),
                        _ => true,
                    };
                    let res_ok = match gr["resources"].as_array() {
                        Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).any(|x| {
                            x == "*"
                                || x == combined
                                || x == format!("{}/*", f.resource)
                                || (x.starts_with("*/") && x.get(2..) == Some(f.subresource.as_str()))
                        }),
                        _ => true,
                    };
                    names_ok && res_ok
                });
                if !hit {
                    continue;
                }
            }
            let level = r["level"].as_str().and_then(Level::parse).unwrap_or(Level::Metadata);
            let mut omit = self.omit.clone();
            omit.extend(r["omitStages"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)));
            return (level, omit);
        }
        (Level::None, vec![])
    }
}

/// The audit log writer.
pub struct AuditLog {
    out: Mutex<BufWriter<File>>,
    pub policy: Policy,
}

pub fn micro_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One request's audit record, written once per stage.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: String,
    pub level: Level,
    pub omit: Vec<String>,
    pub uri: String,
    pub facts: RequestFacts,
    pub user: UserInfo,
    pub impersonated: Option<UserInfo>,
    pub source_ip: String,
    pub user_agent: String,
    pub received: String,
    pub decision: Option<(bool, String)>,
    pub request_object: Option<Value>,
    pub response_object: Option<Value>,
    pub code: u16,
    pub status: Option<Value>,
}

impl AuditLog {
    pub fn create(path: &Path, policy: Policy) -> anyhow::Result<AuditLog> {
        let f = File::create(path)?;
        Ok(AuditLog { out: Mutex::new(BufWriter::new(f)), policy })
    }

    pub fn write(&self, rec: &AuditRecord, stage: &str) {
        if rec.level == Level::None || rec.omit.iter().any(|s| s == stage) {
            return;
        }
        let mut e = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": rec.level.as_str(),
            "auditID": rec.id, "stage": stage, "requestURI": rec.uri, "verb": rec.facts.verb,
            "user": rec.user.to_json()});
        if let Some(i) = &rec.impersonated {
            e["impersonatedUser"] = i.to_json();
        }
        e["sourceIPs"] = json!([rec.source_ip]);
        if !rec.user_agent.is_empty() {
            e["userAgent"] = json!(rec.user_agent);
        }
        if rec.facts.resource_request {
            let f = &rec.facts;
            let mut o = json!({"resource": f.resource});
            if !f.namespace.is_empty() {
                o["namespace"] = json!(f.namespace);
            }
            if !f.name.is_empty() {
                o["name"] = json!(f.name);
            }
            if !f.group.is_empty() {
                o["apiGroup"] = json!(f.group);
            }
            o["apiVersion"] = json!(f.version);
            // the request object's identity, when the level logs the request object
            if rec.level >= Level::Request && matches!(f.verb.as_str(), "update" | "patch") {
                if let Some(m) = rec.request_object.as_ref().and_then(|r| r.get("metadata")) {
                    for k in ["uid", "resourceVersion"] {
                        if let Some(v) = m.get(k).filter(|v| v.is_string()) {
                            o[k] = v.clone();
                        }
                    }
                }
            }
            if !f.subresource.is_empty() {
                o["subresource"] = json!(f.subresource);
            }
            e["objectRef"] = o;
        }
        if stage != "RequestReceived" {
            let mut rs = match &rec.status {
                Some(s) => {
                    let mut s = s.clone();
                    if let Some(m) = s.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    s
                }
                None => json!({"metadata": {}}),
            };
            rs["code"] = json!(rec.code);
            e["responseStatus"] = rs;
        }
        if rec.level >= Level::Request {
            if let Some(o) = &rec.request_object {
                e["requestObject"] = o.clone();
            }
        }
        if rec.level >= Level::RequestResponse {
            if let Some(o) = &rec.response_object {
                e["responseObject"] = o.clone();
            }
        }
        e["requestReceivedTimestamp"] = json!(rec.received);
        e["stageTimestamp"] = json!(micro_now());
        if let Some((allowed, reason)) = &rec.decision {
            e["annotations"] = json!({"authorization.k8s.io/decision": if *allowed { "allow" } else { "forbid" },
                                      "authorization.k8s.io/reason": reason});
        }
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = serde_json::to_writer(&mut *out, &e);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_levels() -> anyhow::Result<()> {
        let p = Policy::parse(DEFAULT_POLICY)?;
        let admin = UserInfo::new("admin", &["system:masters"]);
        let facts = |verb: &str, group: &str, res: &str, sub: &str| RequestFacts {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: res.into(),
            subresource: sub.into(),
            ..Default::default()
        };
        assert_eq!(p.evaluate(&admin, &facts("get", "", "pods", "exec")).0, Level::RequestResponse);
        assert_eq!(p.evaluate(&admin, &facts("get", "", "secrets", "")).0, Level::Metadata);
        assert_eq!(p.evaluate(&admin, &facts("create", "apps", "deployments", "")).0, Level::RequestResponse);
        let kcm = UserInfo::new("system:kube-controller-manager", &[]);
        assert_eq!(p.evaluate(&kcm, &facts("list", "", "pods", "")).0, Level::None);
        assert_eq!(p.evaluate(&admin, &facts("get", "", "pods", "")).1, vec!["RequestReceived".to_string()]);
        Ok(())
    }
}
