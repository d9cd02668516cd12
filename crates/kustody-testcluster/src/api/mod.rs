//! The Kubernetes API: request parsing, authorization, audit, and the verbs over the store.
//!
//! Everything here is transport-free: [`Api::handle`] takes a parsed request and an
//! authenticated caller and returns a [`Reply`]. The HTTPS server (`server.rs`) and the in-process
//! controllers and kubelet both go through it, so controller writes are validated and audited
//! exactly like client writes.
//!
//! This file: callers, tokens, authorization, audit and dispatch. `info.rs` parses requests,
//! `read.rs` (get, list, watch), `write.rs` (create, update, patch, subresources) and
//! `delete.rs` are the verbs.

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

mod delete;
mod info;
mod read;
mod write;

pub use info::{parse_info, parse_query, ReqInfo, Request};

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
