//! The Kubernetes API: request parsing, authorization, audit, and the verbs over the store.
//!
//! Everything here is transport-free: [`Api::handle`] takes a parsed request and an
//! authenticated caller and returns a [`Reply`]. The HTTPS server (`server.rs`) and the in-process
//! controllers and kubelet both go through it, so controller writes are validated and audited
//! exactly like client writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::audit::{AuditLog, AuditRecord, RequestFacts};
use crate::kubelet::Kubelet;
use crate::patch::{self, PatchType};
use crate::rbac::{self, Attributes, UserInfo};
use crate::resources::{self as res, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Cause};
use crate::store::{meta_str, new_uid, now_rfc3339, random_suffix, ChangeType, Store};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserInfo,
    pub impersonated: Option<UserInfo>,
    pub source_ip: String,
    pub user_agent: String,
    /// In-process components (controllers, kubelet): not authorized, still audited.
    pub internal: bool,
}

impl Caller {
    /// The identity requests are evaluated as.
    pub fn effective(&self) -> &UserInfo {
        self.impersonated.as_ref().unwrap_or(&self.user)
    }
    pub fn component(name: &str) -> Caller {
        let groups: Vec<&str> = if name.starts_with("system:node:") {
            vec!["system:nodes"]
        } else if name.starts_with("system:serviceaccount:kube-system:") {
            vec!["system:serviceaccounts", "system:serviceaccounts:kube-system"]
        } else if name == crate::HARNESS_USER {
            vec!["system:masters"]
        } else {
            vec![]
        };
        let mut user = UserInfo::new(name, &groups);
        user.groups.push("system:authenticated".into());
        let agent = match name {
            "system:kube-scheduler" => "kube-scheduler/v1.36.2 (linux/amd64) kubernetes/testcluster/scheduler",
            n if n.starts_with("system:node:") => "kubelet/v1.36.2 (linux/amd64) kubernetes/testcluster",
            crate::HARNESS_USER => "kustody-testcluster/0.1",
            _ => "kube-controller-manager/v1.36.2 (linux/amd64) kubernetes/testcluster/system:serviceaccount:kube-system:replicaset-controller",
        };
        Caller { user, impersonated: None, source_ip: "192.0.2.1".into(), user_agent: agent.into(), internal: true }
    }
}

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

/// What the API answers.
pub enum Reply {
    Json(u16, Value),
    /// A streamed body (watch, log follow). The audit record is completed when it ends.
    Stream(u16, &'static str, mpsc::Receiver<Bytes>),
    Text(u16, &'static str, Bytes),
}

struct TokenEntry {
    user: UserInfo,
    expires: Option<Instant>,
}

/// The API server state.
pub struct Api {
    pub store: Arc<Store>,
    tokens: Mutex<HashMap<String, TokenEntry>>,
    pub audit: AuditLog,
    pub kubelet: Kubelet,
    pub server_address: Mutex<String>,
    pub ca_pem: String,
    pub anonymous: bool,
    /// The exec/attach subprotocols served, most preferred first (older kubelets lack v5).
    pub exec_protocols: Mutex<Vec<String>>,
    /// Benchmarks only: `echo` execs answered by the server itself, without the container
    /// runtime (see `Builder::exec_without_runtime`).
    pub exec_echo_only: std::sync::atomic::AtomicBool,
    /// EKS-style tokens (`k8s-aws-v1.` + presigned STS URL) accepted for these access key IDs,
    /// as the users given: the way aws-iam-authenticator maps IAM identities. The signature is
    /// not checked (there is no STS here).
    pub eks_users: Mutex<HashMap<String, UserInfo>>,
}

fn strip_kind(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

fn status_success(rt: &ResourceType, obj: &Value) -> Value {
    let mut d = json!({"name": meta_str(obj, "name")});
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d["kind"] = json!(rt.plural);
    d["uid"] = json!(meta_str(obj, "uid"));
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

fn labels_of(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object)
}

impl Api {
    pub fn new(store: Arc<Store>, audit: AuditLog, kubelet: Kubelet, ca_pem: String, anonymous: bool) -> Api {
        Api {
            store,
            tokens: Mutex::new(HashMap::new()),
            audit,
            kubelet,
            server_address: Mutex::new(String::new()),
            ca_pem,
            anonymous,
            exec_protocols: Mutex::new(Vec::new()),
            exec_echo_only: std::sync::atomic::AtomicBool::new(false),
            eks_users: Mutex::new(HashMap::new()),
        }
    }

    // ---- identities --------------------------------------------------------------------

    /// Register a bearer token for a user.
    pub fn add_token(&self, token: &str, user: UserInfo, ttl: Option<Duration>) {
        let mut t = match self.tokens.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        t.insert(token.to_string(), TokenEntry { user, expires: ttl.map(|d| Instant::now() + d) });
    }

    /// The user a bearer token stands for, unless unknown or expired.
    pub fn user_for_token(&self, token: &str) -> Option<UserInfo> {
        if let Some(b64) = token.strip_prefix("k8s-aws-v1.") {
            use base64::Engine;
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).ok()?;
            let url = String::from_utf8(url).ok()?;
            let (_, q) = url.split_once('?')?;
            let cred = parse_query(q).into_iter().find(|(k, _)| k == "X-Amz-Credential")?.1;
            let akid = cred.split('/').next()?.to_owned();
            let users = self.eks_users.lock().ok()?;
            return users.get(&akid).cloned();
        }
        let t = match self.tokens.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let e = t.get(token)?;
        if e.expires.is_some_and(|x| x < Instant::now()) {
            return None;
        }
        Some(e.user.clone())
    }

    /// Mint a token for a service account (TokenRequest, projected pod tokens).
    pub fn mint_sa_token(&self, ns: &str, sa: &str, pod: Option<(&str, &str)>, ttl: Duration) -> String {
        use base64::Engine;
        let raw: [u8; 32] = rand::random();
        let token = format!("kustody-tc.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
        let mut user = UserInfo::new(
            &format!("system:serviceaccount:{ns}:{sa}"),
            &["system:serviceaccounts", &format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        );
        if let Some(sa_obj) = self.store.get(&res::SERVICEACCOUNTS, ns, sa) {
            user.uid = meta_str(&sa_obj, "uid").to_string();
        }
        user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", new_uid())]);
        if let Some((name, uid)) = pod {
            user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![name.to_string()]);
            user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![uid.to_string()]);
        }
        self.add_token(&token, user, Some(ttl));
        token
    }

    // ---- in-process calls ---------------------------------------------------------------

    /// A request from an in-process component, audited like any other.
    pub async fn call(
        self: &Arc<Self>,
        who: &str,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let caller = Caller::component(who);
        let mut req = Request::new(method, uri, body);
        if method == "PATCH" {
            req.content_type = "application/strategic-merge-patch+json".into();
        }
        let reply = self.handle(&caller, &req).await;
        if std::env::var_os("KUSTODY_TESTCLUSTER_DEBUG").is_some() {
            if let Reply::Json(code, v) = &reply {
                if *code >= 300 {
                    eprintln!("testcluster: {who} {method} {uri}: {code} {}", v["message"]);
                }
            }
        }
        match reply {
            Reply::Json(code, v) if code < 300 => Ok(v),
            Reply::Json(code, v) => Err(ApiError {
                code,
                reason: match v["reason"].as_str() {
                    Some("AlreadyExists") => "AlreadyExists",
                    Some("Conflict") => "Conflict",
                    Some("NotFound") => "NotFound",
                    Some("Invalid") => "Invalid",
                    _ => "InternalError",
                },
                message: v["message"].as_str().unwrap_or("").to_string(),
                details: None,
            }),
            _ => Err(ApiError::internal("unexpected streaming reply to an in-process call")),
        }
    }

    /// Update the status of an object from an in-process component, audited as a status patch.
    pub fn update_status(
        &self,
        who: &str,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Arc<Value>> {
        let mut patch_obj = Value::Null;
        let out = self.store.update_with(rt, ns, name, |old| {
            let mut new = old.clone();
            f(&mut new);
            patch_obj = json!({"status": new.get("status").cloned().unwrap_or(Value::Null)});
            Ok(new)
        });
        let out = out.ok()?;
        let caller = Caller::component(who);
        let facts = RequestFacts {
            verb: "patch".into(),
            resource_request: true,
            group: rt.group.into(),
            version: rt.version.into(),
            resource: rt.plural.into(),
            subresource: "status".into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        };
        let uri = if rt.namespaced {
            format!("{}/namespaces/{ns}/{}/{name}/status", prefix(rt), rt.plural)
        } else {
            format!("{}/{}/{name}/status", prefix(rt), rt.plural)
        };
        let mut rec = self.audit_record(&caller, &uri, facts);
        rec.request_object = Some(patch_obj);
        rec.response_object = Some((*out).clone());
        rec.code = 200;
        rec.decision = Some((true, String::new()));
        self.audit.write(&rec, "ResponseComplete");
        Some(out)
    }

    pub fn audit_record(&self, caller: &Caller, uri: &str, facts: RequestFacts) -> AuditRecord {
        let (level, omit) = self.audit.policy.evaluate(caller.effective(), &facts);
        AuditRecord {
            id: new_uid(),
            level,
            omit,
            uri: uri.to_string(),
            facts,
            user: caller.user.clone(),
            impersonated: caller.impersonated.clone(),
            source_ip: caller.source_ip.clone(),
            user_agent: caller.user_agent.clone(),
            received: crate::audit::micro_now(),
            decision: None,
            request_object: None,
            response_object: None,
            code: 0,
            status: None,
        }
    }

    pub fn facts(info: &ReqInfo, req: &Request) -> RequestFacts {
        RequestFacts {
            verb: info.verb.clone(),
            resource_request: info.resource_request,
            group: info.group.clone(),
            version: info.version.clone(),
            resource: info.resource.clone(),
            subresource: info.sub.clone(),
            namespace: info.ns.clone(),
            name: info.name.clone(),
            path: req.path.clone(),
        }
    }

    /// Authorize `info` for `caller`. `Err` is the 403.
    pub fn authorize(&self, caller: &Caller, info: &ReqInfo, req: &Request, verb: &str) -> Result<String, ApiError> {
        if caller.internal {
            return Ok(String::new());
        }
        let user = caller.effective();
        let attrs = Attributes {
            verb: verb.to_string(),
            resource_request: info.resource_request,
            group: info.group.clone(),
            resource: info.resource.clone(),
            subresource: info.sub.clone(),
            namespace: info.ns.clone(),
            name: info.name.clone(),
            path: req.path.clone(),
        };
        let (ok, reason) = rbac::authorize(&self.store, user, &attrs);
        if ok {
            return Ok(reason);
        }
        Err(if info.resource_request {
            let rt_for_msg = info.rt.unwrap_or(&res::PODS);
            let mut e = ApiError::forbidden_resource(
                &user.username,
                verb,
                rt_for_msg,
                (!info.sub.is_empty()).then_some(info.sub.as_str()),
                (!info.ns.is_empty() && info.resource != "namespaces").then_some(info.ns.as_str()),
                (!info.name.is_empty()).then_some(info.name.as_str()),
            );
            if info.rt.is_none() {
                e.message = e.message.replace("pods", &info.resource);
            }
            e
        } else {
            ApiError::forbidden_path(&user.username, verb, &req.path)
        })
    }

    // ---- the request path -----------------------------------------------------------------

    /// Handle one non-upgrade request: audit, authorize, dispatch.
    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: &Request) -> Reply {
        let info = parse_info(req);
        let mut facts = Self::facts(&info, req);
        // Creates of a collection name the object in the body.
        if info.verb == "create" && info.name.is_empty() {
            if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
                facts.name = meta_str(&v, "name").to_string();
            }
        }
        let mut rec = self.audit_record(caller, &req.uri, facts);
        if matches!(info.verb.as_str(), "create" | "update" | "patch")
            || (info.verb == "delete" && !req.body.is_empty())
        {
            rec.request_object = serde_json::from_slice::<Value>(&req.body).ok();
        }
        self.audit.write(&rec, "RequestReceived");
        match self.authorize(caller, &info, req, &info.verb) {
            Ok(reason) => rec.decision = Some((true, reason)),
            Err(e) => {
                rec.decision = Some((false, String::new()));
                return self.finish(rec, Err(e));
            }
        }
        let result = self.dispatch(caller, &info, req).await;
        self.finish(rec, result)
    }

    fn finish(self: &Arc<Self>, mut rec: AuditRecord, result: Result<Reply, ApiError>) -> Reply {
        match result {
            Err(e) => {
                rec.code = e.code;
                rec.status = Some(e.to_status());
                rec.response_object = Some(e.to_status());
                self.audit.write(&rec, "ResponseComplete");
                Reply::Json(e.code, e.to_status())
            }
            Ok(Reply::Json(code, v)) => {
                rec.code = code;
                if v["kind"] == "Status" {
                    rec.status = Some(v.clone());
                }
                rec.response_object = Some(v.clone());
                self.audit.write(&rec, "ResponseComplete");
                Reply::Json(code, v)
            }
            Ok(Reply::Text(code, ct, b)) => {
                rec.code = code;
                self.audit.write(&rec, "ResponseComplete");
                Reply::Text(code, ct, b)
            }
            Ok(Reply::Stream(code, ct, mut inner)) => {
                rec.code = code;
                self.audit.write(&rec, "ResponseStarted");
                let (tx, rx) = mpsc::channel::<Bytes>(64);
                let api = self.clone();
                tokio::spawn(async move {
                    while let Some(b) = inner.recv().await {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                    api.audit.write(&rec, "ResponseComplete");
                });
                Reply::Stream(code, ct, rx)
            }
        }
    }

    async fn dispatch(self: &Arc<Self>, caller: &Caller, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        if !info.resource_request {
            return self.non_resource(req);
        }
        let Some(rt) = info.rt else {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: Some(json!({})),
            });
        };
        if !info.sub.is_empty() && !rt.subresources.contains(&info.sub.as_str()) {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: Some(json!({})),
            });
        }
        if rt.create_only && info.verb != "create" {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                rt.plural
            )));
        }
        if !rt.namespaced && !info.ns.is_empty() && rt.plural != "namespaces" {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
        match (info.verb.as_str(), info.sub.as_str()) {
            ("get", "") => self.get(rt, info).map(|v| Reply::Json(200, v)),
            ("list", "") => self.list(rt, info, req).map(|v| Reply::Json(200, v)),
            ("watch", "") => self.watch(rt, info, req),
            ("create", "") => self.create(caller, rt, info, req).await,
            ("create", "token") => self.token_request(info, req).map(|v| Reply::Json(201, v)),
            ("create", "binding") => self.bind(info, req),
            ("create", "proxy") | ("get", "proxy") => Ok(self.node_proxy(info)?),
            ("update", _) | ("patch", _) => self.update(rt, info, req).map(|v| Reply::Json(200, v)),
            ("get", "status" | "ephemeralcontainers") => self.get(rt, info).map(|v| Reply::Json(200, v)),
            ("get", "scale") => self.get(rt, info).map(|v| Reply::Json(200, scale_of(rt, &v))),
            ("get", "log") => self.kubelet.log(self, info, req).await,
            ("get" | "create", "exec" | "attach") => Err(ApiError::bad_request(
                "Upgrade request required: this test cluster speaks exec/attach over WebSocket only",
            )),
            ("delete", "") => self.delete(rt, info, req),
            ("deletecollection", "") => self.delete_collection(rt, info, req),
            _ => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({} {})",
                info.verb, info.sub
            ))),
        }
    }

    fn non_resource(&self, req: &Request) -> Result<Reply, ApiError> {
        if req.method != "GET" && req.method != "HEAD" {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let addr = self.server_address.lock().map(|a| a.clone()).unwrap_or_default();
        let v = match segs.as_slice() {
            ["version"] => res::version(),
            ["api"] => res::api_versions(&addr),
            ["apis"] => res::api_group_list(),
            ["api", v] => res::api_resource_list("", v).ok_or_else(not_found_path)?,
            ["apis", g] => res::api_group(g).ok_or_else(not_found_path)?,
            ["apis", g, v] => res::api_resource_list(g, v).ok_or_else(not_found_path)?,
            ["healthz" | "livez" | "readyz"] => {
                return Ok(Reply::Text(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok")))
            }
            _ => return Ok(Reply::Text(404, "text/plain; charset=utf-8", Bytes::from_static(b"404 page not found\n"))),
        };
        Ok(Reply::Json(200, v))
    }

    // ---- verbs ----------------------------------------------------------------------------

    fn get(&self, rt: &'static ResourceType, info: &ReqInfo) -> Result<Value, ApiError> {
        self.store
            .get(rt, &info.ns, &info.name)
            .map(|v| (*v).clone())
            .ok_or_else(|| ApiError::not_found(rt, &info.name))
    }

    fn selectors(rt: &ResourceType, req: &Request) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))?;
        let fs = FieldSelector::parse(req.q("fieldSelector").unwrap_or(""), rt.plural)?;
        Ok((ls, fs))
    }

    fn list(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        use base64::Engine;
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = (!info.ns.is_empty()).then_some(info.ns.as_str());
        let (rv, items) = self.store.list(rt, ns);
        let mut items: Vec<Arc<Value>> = items.into_iter().filter(|o| ls.matches(o) && fs.matches(o)).collect();
        // continue: resume after the key the token names
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(tok) = req.q("continue").filter(|t| !t.is_empty()) {
            let decoded = b64
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
            let start = decoded["start"].as_str().unwrap_or("").to_string();
            items.retain(|o| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name")) > start);
        }
        let limit: usize = req.q("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if items.len() > limit {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                let start = format!("{}/{}", meta_str(last, "namespace"), meta_str(last, "name"));
                let tok = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
                meta["continue"] = json!(b64.encode(tok.to_string()));
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        let items: Vec<Value> = items.iter().map(|o| strip_kind(o)).collect();
        Ok(json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": items}))
    }

    fn watch(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = info.ns.clone();
        let bookmarks = req.q_bool("allowWatchBookmarks");
        let timeout = req.q("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800);
        let from: Option<u64> = req
            .q("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version \"{v}\""))))
            .transpose()?;
        let matches = {
            let ns = ns.clone();
            move |o: &Value| (ns.is_empty() || meta_str(o, "namespace") == ns) && ls.matches(o) && fs.matches(o)
        };
        let (initial, start_rv) = match from {
            Some(rv) => (Vec::new(), rv),
            None => {
                let (rv, items) = self.store.list(rt, (!ns.is_empty()).then_some(ns.as_str()));
                (items.into_iter().filter(|o| matches(o)).collect::<Vec<_>>(), rv)
            }
        };
        let (backlog, mut rx) = self.store.watch_from(start_rv)?;
        let (tx, out) = mpsc::channel::<Bytes>(256);
        let kind = rt.kind;
        let api_version = rt.api_version();
        tokio::spawn(async move {
            let line = |typ: &str, obj: &Value| Bytes::from(format!("{}\n", json!({"type": typ, "object": obj})));
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            let key = |o: &Value| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"));
            for o in &initial {
                seen.insert(key(o));
                if tx.send(line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            let mut last_rv = start_rv;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut pending: std::collections::VecDeque<Arc<crate::store::Change>> = backlog.into();
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            tick.tick().await;
            loop {
                let change = if let Some(c) = pending.pop_front() {
                    c
                } else {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Ok(c) => c,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let st = ApiError::gone("watch fell behind; relist").to_status();
                                let _ = tx.send(line("ERROR", &st)).await;
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = tick.tick() => {
                            if bookmarks {
                                let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                                if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                            } else if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(deadline) => return,
                    }
                };
                if change.rv <= last_rv {
                    continue;
                }
                last_rv = change.rv;
                if !std::ptr::eq(change.rt, rt) {
                    continue;
                }
                let k = key(&change.obj);
                let now_matches = matches(&change.obj);
                let was = seen.contains(&k) || (from.is_some() && change.typ != ChangeType::Added && now_matches);
                let typ = match (change.typ, now_matches, was) {
                    (ChangeType::Deleted, _, true) | (ChangeType::Deleted, true, _) => {
                        seen.remove(&k);
                        "DELETED"
                    }
                    (ChangeType::Deleted, false, false) => continue,
                    (_, true, false) => {
                        seen.insert(k);
                        "ADDED"
                    }
                    (_, true, true) => {
                        seen.insert(k);
                        "MODIFIED"
                    }
                    (_, false, true) => {
                        seen.remove(&k);
                        "DELETED"
                    }
                    (_, false, false) => continue,
                };
                if tx.send(line(typ, &change.obj)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Reply::Stream(200, "application/json", out))
    }

    fn parse_body(req: &Request) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        Ok(v)
    }

    fn namespace_ok(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.store.get(&res::NAMESPACES, "", ns) {
            None => Err(ApiError::not_found(&res::NAMESPACES, ns)),
            Some(n) if n["status"]["phase"] == "Terminating" => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    rt.plural
                ),
                details: Some(json!({"kind": rt.plural})),
            }),
            Some(_) => Ok(()),
        }
    }

    async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        rt: &'static ResourceType,
        info: &ReqInfo,
        req: &Request,
    ) -> Result<Reply, ApiError> {
        let mut obj = Self::parse_body(req)?;
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                obj["apiVersion"].as_str().unwrap_or(""),
                rt.api_version()
            )));
        }
        if rt.create_only {
            return self.review(caller, rt, obj).map(|v| Reply::Json(201, v));
        }
        obj["kind"] = json!(rt.kind);
        obj["apiVersion"] = json!(rt.api_version());
        if obj.get("metadata").is_none_or(Value::is_null) {
            obj["metadata"] = json!({});
        }
        crate::defaults::validate_shape(rt.kind, &obj)?;
        if rt.namespaced {
            let body_ns = meta_str(&obj, "namespace").to_string();
            if !body_ns.is_empty() && body_ns != info.ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(info.ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if meta_str(&obj, "name").is_empty() {
            let gen = meta_str(&obj, "generateName").to_string();
            if gen.is_empty() {
                return Err(ApiError::invalid(
                    rt.kind,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
            obj["metadata"]["name"] = json!(format!("{gen}{}", random_suffix(5)));
        }
        for f in ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"] {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove(f);
            }
        }
        self.namespace_ok(rt, &info.ns)?;
        crate::defaults::default_object(self, rt, &mut obj);
        crate::defaults::validate(rt, &obj, None)?;
        if std::ptr::eq(rt, &res::PODS) {
            let sa = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string();
            if self.store.get(&res::SERVICEACCOUNTS, &info.ns, &sa).is_none() {
                return Err(ApiError {
                    code: 403,
                    reason: "Forbidden",
                    message: format!(
                        "pods \"{}\" is forbidden: error looking up service account {}/{sa}: serviceaccount \"{sa}\" not found",
                        meta_str(&obj, "name"),
                        info.ns
                    ),
                    details: Some(json!({"name": meta_str(&obj, "name"), "kind": "pods"})),
                });
            }
        }
        if req.q("dryRun") == Some("All") {
            return Ok(Reply::Json(201, obj));
        }
        let stored = self.store.create(rt, obj)?;
        if std::ptr::eq(rt, &res::NAMESPACES) {
            for (crt, child) in crate::defaults::namespace_children(meta_str(&stored, "name"), &self.ca_pem) {
                let _ = self.store.create(crt, child);
            }
        }
        Ok(Reply::Json(201, (*stored).clone()))
    }

    fn review(&self, caller: &Caller, rt: &'static ResourceType, obj: Value) -> Result<Value, ApiError> {
        let user = caller.effective();
        let mut out = obj.clone();
        out["kind"] = json!(rt.kind);
        out["apiVersion"] = json!(rt.api_version());
        out["metadata"] = json!({});
        match rt.plural {
            "selfsubjectreviews" => {
                out["status"] = json!({"userInfo": user.to_json()});
            }
            "selfsubjectrulesreviews" => {
                let ns = obj["spec"]["namespace"].as_str().unwrap_or("");
                out["spec"] = json!({});
                out["status"] = rbac::rules_review(&self.store, user, ns);
            }
            _ => {
                let ra = &obj["spec"]["resourceAttributes"];
                let nra = &obj["spec"]["nonResourceAttributes"];
                let attrs = if ra.is_object() {
                    Attributes {
                        verb: ra["verb"].as_str().unwrap_or("").into(),
                        resource_request: true,
                        group: ra["group"].as_str().unwrap_or("").into(),
                        resource: ra["resource"].as_str().unwrap_or("").into(),
                        subresource: ra["subresource"].as_str().unwrap_or("").into(),
                        namespace: ra["namespace"].as_str().unwrap_or("").into(),
                        name: ra["name"].as_str().unwrap_or("").into(),
                        path: String::new(),
                    }
                } else if nra.is_object() {
                    Attributes {
                        verb: nra["verb"].as_str().unwrap_or("").into(),
                        resource_request: false,
                        path: nra["path"].as_str().unwrap_or("").into(),
                        ..Default::default()
                    }
                } else {
                    return Err(ApiError::invalid(
                        rt.kind,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired",
                            message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                            field: "spec.resourceAttributes".into(),
                        }],
                    ));
                };
                let (allowed, reason) = rbac::authorize(&self.store, user, &attrs);
                out["status"] = match (allowed, reason.is_empty()) {
                    (true, false) => json!({"allowed": true, "reason": reason}),
                    (true, true) => json!({"allowed": true}),
                    _ => json!({"allowed": false}),
                };
            }
        }
        Ok(out)
    }

    fn token_request(&self, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        let sa = self
            .store
            .get(&res::SERVICEACCOUNTS, &info.ns, &info.name)
            .ok_or_else(|| ApiError::not_found(&res::SERVICEACCOUNTS, &info.name))?;
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_else(|_| json!({}));
        let secs = body["spec"]["expirationSeconds"].as_u64().unwrap_or(3600).clamp(600, 86400 * 2);
        let token = self.mint_sa_token(&info.ns, &info.name, None, Duration::from_secs(secs));
        let exp = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
        Ok(json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": info.name, "namespace": info.ns, "uid": meta_str(&sa, "uid"), "creationTimestamp": now_rfc3339()},
            "spec": {"audiences": body["spec"]["audiences"].as_array().cloned().unwrap_or_else(|| vec![json!("https://kubernetes.default.svc.cluster.local")]),
                     "expirationSeconds": secs, "boundObjectRef": body["spec"].get("boundObjectRef").cloned().unwrap_or(Value::Null)},
            "status": {"token": token, "expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()}}))
    }

    fn bind(&self, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let body = Self::parse_body(req)?;
        let node = body["target"]["name"].as_str().unwrap_or("").to_string();
        self.store.update_with(&res::PODS, &info.ns, &info.name, |old| {
            if !old["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
                return Err(ApiError::conflict(&res::PODS, &info.name));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            Ok(new)
        })?;
        Ok(Reply::Json(
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    fn node_proxy(&self, info: &ReqInfo) -> Result<Reply, ApiError> {
        if self.store.get(&res::NODES, "", &info.name).is_none() {
            return Err(ApiError::not_found(&res::NODES, &info.name));
        }
        if info.rest == "healthz" {
            return Ok(Reply::Text(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok")));
        }
        if let Some(target) = info.rest.strip_prefix("checkpoint/") {
            // what a kubelet whose runtime lacks CheckpointContainer answers (text, not a Status)
            let msg = format!("checkpointing of {target} failed (rpc error: code = Unimplemented desc = method CheckpointContainer not implemented)");
            return Ok(Reply::Text(500, "text/plain; charset=utf-8", Bytes::from(msg)));
        }
        Ok(Reply::Text(404, "text/plain; charset=utf-8", Bytes::from_static(b"404 page not found\n")))
    }

    fn update(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        let is_patch = info.verb == "patch";
        let pt = if is_patch {
            Some(PatchType::from_content_type(&req.content_type).ok_or_else(|| ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {})", req.content_type),
                details: None,
            })?)
        } else {
            None
        };
        let body = if is_patch { None } else { Some(Self::parse_body(req)?) };
        if let Some(b) = &body {
            let n = meta_str(b, "name");
            if !n.is_empty() && n != info.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    info.name
                )));
            }
        }
        let sub = info.sub.as_str();
        let dry = req.q("dryRun") == Some("All");
        let mut dry_result = None;
        let stored = self.store.update_with(rt, &info.ns, &info.name, |old| {
            let current = if sub == "scale" { scale_of(rt, old) } else { old.clone() };
            let mut incoming = match (&pt, &body) {
                (Some(pt), _) => patch::apply(&current, pt, &req.body)?,
                (None, Some(b)) => b.clone(),
                _ => current.clone(),
            };
            let want_rv = meta_str(&incoming, "resourceVersion").to_string();
            if !want_rv.is_empty() && want_rv != meta_str(old, "resourceVersion") {
                return Err(ApiError::conflict(rt, &info.name));
            }
            let mut new = old.clone();
            match sub {
                "status" => new["status"] = incoming.get("status").cloned().unwrap_or(Value::Null),
                "ephemeralcontainers" => {
                    let eph = incoming["spec"].get("ephemeralContainers").cloned().unwrap_or(json!([]));
                    let mut eph = json!({"ephemeralContainers": eph});
                    crate::defaults::default_pod_spec(&mut eph);
                    new["spec"]["ephemeralContainers"] = eph["ephemeralContainers"].take();
                }
                "scale" => {
                    new["spec"]["replicas"] = incoming["spec"]["replicas"].clone();
                }
                "finalize" => new["spec"] = incoming.get("spec").cloned().unwrap_or(Value::Null),
                _ => {
                    incoming["kind"] = json!(rt.kind);
                    incoming["apiVersion"] = json!(rt.api_version());
                    if rt.has_status() {
                        match old.get("status") {
                            Some(s) => incoming["status"] = s.clone(),
                            None => {
                                if let Some(m) = incoming.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                    }
                    new = incoming;
                }
            }
            crate::defaults::validate(rt, &new, Some(old))?;
            if dry {
                dry_result = Some(new);
                return Ok(old.clone());
            }
            Ok(new)
        })?;
        if let Some(d) = dry_result {
            return Ok(d);
        }
        Ok(if sub == "scale" { scale_of(rt, &stored) } else { (*stored).clone() })
    }

    fn delete(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let opts: Value = serde_json::from_slice(&req.body).unwrap_or_else(|_| json!({}));
        let grace = req
            .q("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64());
        let policy = req
            .q("propagationPolicy")
            .map(String::from)
            .or_else(|| opts["propagationPolicy"].as_str().map(String::from));
        let current = self.store.get(rt, &info.ns, &info.name).ok_or_else(|| ApiError::not_found(rt, &info.name))?;
        if let Some(uid) = opts["preconditions"]["uid"].as_str() {
            if uid != meta_str(&current, "uid") {
                return Err(ApiError::conflict(rt, &info.name));
            }
        }
        if req.q("dryRun") == Some("All") {
            return Ok(Reply::Json(200, (*current).clone()));
        }
        if policy.as_deref() == Some("Orphan") {
            self.orphan_dependents(meta_str(&current, "uid"));
        }
        let graceful_pod = std::ptr::eq(rt, &res::PODS)
            && !current["spec"]["nodeName"].as_str().unwrap_or("").is_empty()
            && grace != Some(0)
            && current["status"]["phase"] != "Succeeded"
            && current["status"]["phase"] != "Failed";
        let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let is_ns = std::ptr::eq(rt, &res::NAMESPACES);
        if graceful_pod || has_finalizers || is_ns {
            let grace =
                grace.unwrap_or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30));
            let updated = self.store.update_with(rt, &info.ns, &info.name, |old| {
                let mut new = old.clone();
                if new["metadata"].get("deletionTimestamp").is_none() {
                    new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    if graceful_pod {
                        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    }
                }
                if is_ns {
                    new["status"]["phase"] = json!("Terminating");
                }
                Ok(new)
            })?;
            return Ok(Reply::Json(200, (*updated).clone()));
        }
        let gone = self.store.delete(rt, &info.ns, &info.name)?;
        if std::ptr::eq(rt, &res::PODS) {
            return Ok(Reply::Json(200, (*gone).clone()));
        }
        Ok(Reply::Json(200, status_success(rt, &gone)))
    }

    fn orphan_dependents(&self, uid: &str) {
        for rt in res::ALL.iter().copied().filter(|r| !r.create_only) {
            let (_, items) = self.store.list(rt, None);
            for o in items {
                let refs = o["metadata"]["ownerReferences"].as_array();
                if refs.is_some_and(|r| r.iter().any(|x| x["uid"] == uid)) {
                    let _ = self.store.update_with(rt, meta_str(&o, "namespace"), meta_str(&o, "name"), |old| {
                        let mut new = old.clone();
                        if let Some(r) = new["metadata"]["ownerReferences"].as_array_mut() {
                            r.retain(|x| x["uid"] != uid);
                        }
                        Ok(new)
                    });
                }
            }
        }
    }

    fn delete_collection(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = (!info.ns.is_empty()).then_some(info.ns.as_str());
        let (_, items) = self.store.list(rt, ns);
        let mut deleted = Vec::new();
        for o in items.into_iter().filter(|o| ls.matches(o) && fs.matches(o)) {
            let sub = ReqInfo {
                name: meta_str(&o, "name").to_string(),
                ns: meta_str(&o, "namespace").to_string(),
                ..info.clone()
            };
            let empty = Request { body: Bytes::new(), ..req.clone() };
            if let Ok(Reply::Json(_, v)) = self.delete(rt, &sub, &empty) {
                deleted.push(strip_kind(&v));
            }
        }
        Ok(Reply::Json(
            200,
            json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": self.store.current_rv().to_string()}, "items": deleted}),
        ))
    }

    /// Objects of `rt` in `ns` whose labels match `sel`.
    pub fn select(&self, rt: &'static ResourceType, ns: &str, sel: &LabelSelector) -> Vec<Arc<Value>> {
        let (_, items) = self.store.list(rt, Some(ns));
        items.into_iter().filter(|o| sel.matches_labels(labels_of(o))).collect()
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

pub fn prefix(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    }
}

/// The URI of a namespaced or cluster-scoped object (collection when `name` is empty).
pub fn uri(rt: &ResourceType, ns: &str, name: &str) -> String {
    let mut u = prefix(rt);
    if rt.namespaced && !ns.is_empty() {
        u.push_str(&format!("/namespaces/{ns}"));
    }
    u.push('/');
    u.push_str(rt.plural);
    if !name.is_empty() {
        u.push('/');
        u.push_str(name);
    }
    u
}

fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta_str(obj, "name"), "namespace": meta_str(obj, "namespace"), "uid": meta_str(obj, "uid"),
                     "resourceVersion": meta_str(obj, "resourceVersion"), "creationTimestamp": meta_str(obj, "creationTimestamp")},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(if rt.plural == "daemonsets" { 0 } else { 1 })},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)}})
}
