//! Kubernetes `Status` errors with the codes, reasons and message formats kube-apiserver uses.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One cause of a 422 Invalid.
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

fn details(rt: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name});
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d["kind"] = json!(rt.plural);
    d
}

fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_string()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(rt)),
            details: Some(details(rt, name)),
        }
    }
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(rt)),
            details: Some(details(rt, name)),
        }
    }
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(rt)
            ),
            details: Some(details(rt, name)),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!("Internal error occurred: {message}"),
            details: Some(json!({"causes": [{"message": message}]})),
        }
    }
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let joined = if parts.len() == 1 { parts.join("") } else { format!("[{}]", parts.join(", ")) };
        let causes: Vec<Value> =
            causes.into_iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {joined}"),
            details: Some(json!({"name": name, "kind": kind, "causes": causes})),
        }
    }
    /// 403 in the RBAC authorizer's words.
    pub fn forbidden_resource(
        user: &str,
        verb: &str,
        rt: &ResourceType,
        sub: Option<&str>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let resource = match sub {
            Some(s) => format!("{}/{s}", rt.plural),
            None => rt.plural.to_string(),
        };
        let scope = match ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let subject = match name {
            Some(n) => format!("{} \"{n}\"", qualified(rt)),
            None => qualified(rt),
        };
        let mut d = json!({});
        if let Some(n) = name {
            d["name"] = json!(n);
        }
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        d["kind"] = json!(rt.plural);
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                rt.group
            ),
            details: Some(d),
        }
    }
    pub fn forbidden_path(user: &str, verb: &str, path: &str) -> Self {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""),
            details: Some(json!({})),
        }
    }

    /// The `Status` object (`kind`/`apiVersion` included).
    pub fn to_status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": self.reason});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s["code"] = json!(self.code);
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
