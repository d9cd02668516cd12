//! RequestInfo parsing: from method, path and query to verb, resource, subresource, namespace
//! and name, as kube-apiserver's RequestInfoFactory does.

use super::*;

/// A parsed HTTP request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Path and query as sent (for the audit log).
    pub uri: String,
    pub content_type: String,
    pub body: Bytes,
    pub websocket: bool,
}

impl Request {
    pub fn new(method: &str, uri: &str, body: Option<&Value>) -> Request {
        let (path, q) = uri.split_once('?').unwrap_or((uri, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: parse_query(q),
            uri: uri.to_string(),
            content_type: "application/json".into(),
            body: body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            websocket: false,
        }
    }
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    pub fn q_all(&self, k: &str) -> Vec<String> {
        self.query.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect()
    }
    pub fn q_bool(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1" | "True"))
    }
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    kustody_model::uri::params(&format!("?{q}")).collect()
}

/// What a request addresses (kube-apiserver's RequestInfo).
#[derive(Debug, Clone, Default)]
pub struct ReqInfo {
    pub resource_request: bool,
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub sub: String,
    pub ns: String,
    pub name: String,
    pub rt: Option<&'static ResourceType>,
    /// Path after `/proxy/` for node proxy requests.
    pub rest: String,
}

pub fn parse_info(req: &Request) -> ReqInfo {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let mut info = ReqInfo::default();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => {
            info.verb = req.method.to_lowercase();
            if info.verb == "head" {
                info.verb = "get".into();
            }
            return info;
        }
    };
    info.resource_request = true;
    info.group = group.to_string();
    info.version = version.to_string();
    let rest: Vec<&str> = rest.to_vec();
    let rest: &[&str] = &rest;
    let parts: &[&str] = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => {
            info.ns = ns.to_string();
            more
        }
        _ => rest,
    };
    if let Some(r) = parts.first() {
        info.resource = r.to_string();
    }
    if let Some(n) = parts.get(1) {
        info.name = n.to_string();
    }
    if let Some(s) = parts.get(2) {
        info.sub = s.to_string();
    }
    if parts.len() > 3 {
        info.rest = parts.get(3..).map(|p| p.join("/")).unwrap_or_default();
    }
    if info.resource == "namespaces" && info.ns.is_empty() && !info.name.is_empty() {
        info.ns = info.name.clone();
    }
    info.rt = res::find(group, version, &info.resource);
    let named = !info.name.is_empty();
    info.verb = match req.method.as_str() {
        "GET" | "HEAD" => {
            if named {
                "get"
            } else if req.q_bool("watch") {
                "watch"
            } else {
                "list"
            }
        }
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => {
            if named {
                "delete"
            } else {
                "deletecollection"
            }
        }
        _ => "",
    }
    .to_string();
    if req.websocket && info.verb == "get" && (info.sub == "exec" || info.sub == "attach" || info.sub == "portforward")
    {
        info.verb = "get".into();
    }
    info
}
