//! GKE: Cloud Logging LogEntries with an AuditLog `protoPayload`, mapped onto native Events —
//! read into borrowed fields and written straight out (`gke_fast`), or through a JSON tree for
//! anything unusual (`gke`). docs/FORMATS.md has the mapping.

use super::*;

/// gRPC status codes (google.rpc.Code) to the HTTP codes kube-apiserver would have answered.
fn http_code(grpc: i64) -> i64 {
    match grpc {
        0 => 200,
        1 => 499,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

// ---- GKE without a DOM -----------------------------------------------------------------
//
// The LogEntry is read into borrowed fields with the request/response bodies kept raw, and the
// Event is written straight out: no tree is built, and bodies are copied once. (The bodies keep
// GKE's `@type` key; rules never look at it.) Anything unusual falls back to `gke()` below.

/// A LogEntry with a `protoPayload`, read into borrowed fields and converted; `None` when `t`
/// is not one the typed reader takes.
pub(super) fn log_entry(t: &str) -> Option<Result<Unwrapped<'_>, ManagedError>> {
    let entry = serde_json::from_str::<GkeEntry<'_>>(t).ok()?;
    let p = entry.proto_payload.as_ref()?;
    Some(gke_fast(&entry, p, t.len()).map(|(text, parts)| Unwrapped::Gke(text, Box::new(parts))))
}

/// A LogEntry (no `#[serde(flatten)]`: it buffers the whole entry and halved the speed).
#[derive(serde::Deserialize)]
struct GkeEntry<'a> {
    #[serde(borrow, rename = "protoPayload")]
    proto_payload: Option<GkePayload<'a>>,
    #[serde(borrow, rename = "insertId")]
    insert_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<GkeOperation<'a>>,
    #[serde(borrow, default, deserialize_with = "label_pairs")]
    labels: Option<Pairs<'a>>,
    #[serde(borrow)]
    resource: Option<GkeResource<'a>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct GkeOperation<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct GkeResource<'a> {
    #[serde(borrow)]
    labels: Option<GkeResourceLabels<'a>>,
}

#[derive(serde::Deserialize)]
struct GkeResourceLabels<'a> {
    #[serde(borrow)]
    cluster_name: Option<Cow<'a, str>>,
}

/// Key/value pairs of strings, borrowed where the text had no escapes.
type Pairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A LogEntry's `labels` (a map of strings) as pairs sorted by key, the last of a duplicated
/// key winning: what a `BTreeMap` gives, without its allocations (labels are read for every
/// event and hold two or three entries).
fn label_pairs<'de, D>(d: D) -> Result<Option<Pairs<'de>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Pairs<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            #[derive(serde::Deserialize)]
            struct S<'a>(#[serde(borrow)] Cow<'a, str>);
            let mut out = Vec::with_capacity(4);
            while let Some((S(k), S(v))) = m.next_entry()? {
                out.push((k, v));
            }
            out.reverse();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.dedup_by(|a, b| a.0 == b.0);
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkePayload<'a> {
    #[serde(borrow, rename = "@type")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method_name: Option<Cow<'a, str>>,
    authorization_info: Option<Vec<GkeAuthz>>,
    #[serde(borrow)]
    resource_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    authentication_info: Option<GkeAuth<'a>>,
    #[serde(borrow)]
    request_metadata: Option<GkeMeta<'a>>,
    #[serde(borrow)]
    status: Option<GkeStatus<'a>>,
    #[serde(borrow)]
    request: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    response: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct GkeAuthz {
    granted: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkeAuth<'a> {
    #[serde(borrow)]
    principal_email: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkeMeta<'a> {
    #[serde(borrow)]
    caller_ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    caller_supplied_user_agent: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct GkeStatus<'a> {
    code: Option<i64>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// Writes `,"key":"value"`; `key` is one of ours and needs no escaping.
fn put_field(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    put_member(out, key, value);
}

/// Writes `key":"value"` after an opening quote the caller wrote; `key` is one of ours.
fn put_member(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str("\":");
    jscan::write_string(out, value);
}

/// A part of a borrowed-or-owned string, borrowed whenever the whole was.
fn part<'a>(whole: &Cow<'a, str>, piece: &str) -> Cow<'a, str> {
    match whole {
        Cow::Borrowed(w) => {
            // `piece` is a slice of `w`: find it by address and re-borrow it for `'a`.
            let start = (piece.as_ptr() as usize).wrapping_sub(w.as_ptr() as usize);
            match w.get(start..start + piece.len()) {
                Some(p) if p.as_ptr() == piece.as_ptr() => Cow::Borrowed(p),
                _ => Cow::Owned(piece.to_owned()),
            }
        }
        Cow::Owned(_) => Cow::Owned(piece.to_owned()),
    }
}

/// A LogEntry must hold a Kubernetes API call's AuditLog; its `methodName`. Some exports drop
/// the payload's `@type`: an entry without one is still read when its `serviceName` is
const DECISION: &str = "authorization.k8s.io/decision";

/// The HTTP code of a LogEntry's `status.code`; a call the authorizer denied without a status
/// is a 403, not the 200 an absent code otherwise means.
fn denied_code(code: Option<i64>, denied: bool) -> i64 {
    match code {
        None | Some(0) if denied => 403,
        c => http_code(c.unwrap_or(0)),
    }
}

/// Sets the authorization decision to `forbid` (a denied call's labels may say otherwise or
/// nothing).
fn set_forbid(annotations: &mut Pairs<'_>) {
    annotations.retain(|(k, _)| k != DECISION);
    annotations.push((Cow::Borrowed(DECISION), Cow::Borrowed("forbid")));
}

/// `k8s.io` or its `methodName` is a Kubernetes call (`io.k8s.*`).
fn check_audit_log<'m>(
    ty: Option<&str>,
    service: Option<&str>,
    method: Option<&'m str>,
) -> Result<&'m str, ManagedError> {
    match ty {
        Some(ty) if !ty.ends_with("google.cloud.audit.AuditLog") => {
            return Err(ManagedError::NotAuditLog(ty.to_owned()))
        }
        None if service.is_some_and(|s| s != "k8s.io") && !method.is_some_and(|m| m.starts_with("io.k8s.")) => {
            return Err(ManagedError::NotAuditLog(format!("serviceName {}", service.unwrap_or_default())))
        }
        _ => {}
    }
    let method = method.ok_or(ManagedError::NoMethodName)?;
    if !method.starts_with("io.k8s.") {
        return Err(ManagedError::NotKubernetesCall(method.to_owned()));
    }
    Ok(method)
}

/// What a GKE `resourceName` (`GROUP/VERSION[/namespaces/NS]/RESOURCE[/NAME[/SUB]]`) says
/// about the request, in native terms.
struct Target<'r> {
    /// Empty for the core group.
    group: &'r str,
    version: &'r str,
    namespace: Option<&'r str>,
    resource: Option<&'r str>,
    name: Option<&'r str>,
    sub: Option<&'r str>,
    uri: String,
    stage: &'static str,
}

fn target(resource_name: &str) -> Target<'_> {
    let mut all: Vec<&str> = resource_name.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version) = if all.len() >= 2 { (all.remove(0), all.remove(0)) } else { ("", "") };
    let group = if group == "core" { "" } else { group };
    let mut rest: &[&str] = &all;
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        namespace = rest.get(1).copied();
        rest = rest.get(2..).unwrap_or_default();
    }
    let sub = rest.get(2).copied();
    let mut uri = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    for s in &all {
        uri.push('/');
        uri.push_str(s);
    }
    Target {
        group,
        version,
        namespace,
        resource: rest.first().copied(),
        name: rest.get(1).copied(),
        sub,
        uri,
        stage: if sub.is_some_and(|s| STREAMING.contains(&s)) { "ResponseStarted" } else { "ResponseComplete" },
    }
}

/// The native Event for a LogEntry: its JSON text, and the same fields as [`Parts`] so the
/// text need not be parsed again. The two are written side by side from the same values;
/// `fast_path_parts_match_parsing_its_output` and the `audit_reader` fuzz target check that
/// they agree.
fn gke_fast<'a>(c: &GkeEntry<'a>, p: &GkePayload<'a>, entry_len: usize) -> Result<(String, Parts<'a>), ManagedError> {
    let m = check_audit_log(p.ty.as_deref(), p.service_name.as_deref(), p.method_name.as_deref())?;
    // `authorizationInfo[].granted: false`: the authorizer said no, whatever the labels say
    let denied = p.authorization_info.iter().flatten().any(|a| a.granted == Some(false));
    let no_name = Cow::Borrowed("");
    let verb = part(p.method_name.as_ref().unwrap_or(&no_name), m.rsplit('.').next().unwrap_or(""));
    let resource_name = p.resource_name.as_ref().unwrap_or(&no_name);
    let Target { group, version, namespace, resource, name, sub, uri, stage } = target(resource_name);
    let (request, response) = (p.request, p.response);
    let level = if request.is_some() || response.is_some() { "RequestResponse" } else { "Metadata" };
    let audit_id = c.operation.as_ref().and_then(|o| o.id.clone()).or_else(|| c.insert_id.clone());
    let username = p.authentication_info.as_ref().and_then(|a| a.principal_email.clone());
    let ip = p.request_metadata.as_ref().and_then(|m| m.caller_ip.clone());
    let user_agent = p.request_metadata.as_ref().and_then(|m| m.caller_supplied_user_agent.clone());
    let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(|v| part(resource_name, v));
    let object_ref = ObjectRef {
        api_group: nonempty(Some(group)),
        api_version: nonempty(Some(version)),
        namespace: nonempty(namespace),
        resource: nonempty(resource),
        name: nonempty(name),
        subresource: nonempty(sub),
        ..ObjectRef::default()
    };
    let code = denied_code(p.status.as_ref().and_then(|s| s.code), denied);
    let message = p.status.as_ref().and_then(|s| s.message.clone());
    let cluster = c.resource.as_ref().and_then(|r| r.labels.as_ref()).and_then(|l| l.cluster_name.as_ref());
    let annotations: Pairs<'a> = c
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| *k != "cluster_name" || cluster.is_none())
        .cloned()
        .chain(cluster.map(|c| (Cow::Borrowed("cluster_name"), c.clone())))
        .collect();
    let mut annotations = annotations;
    if denied {
        set_forbid(&mut annotations);
    }

    // The Event is about as long as the LogEntry it comes from; growing the buffer while
    // writing cost a reallocation and a copy for most events.
    let mut out = String::with_capacity(entry_len + 256);
    out.push_str(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":""#);
    out.push_str(level);
    out.push('"');
    if let Some(id) = &audit_id {
        put_field(&mut out, "auditID", id);
    }
    put_field(&mut out, "stage", stage);
    put_field(&mut out, "requestURI", &uri);
    put_field(&mut out, "verb", &verb);
    out.push_str(r#","user":{"#);
    if let Some(u) = &username {
        out.push('"');
        put_member(&mut out, "username", u);
    }
    out.push('}');
    if let Some(ip) = &ip {
        out.push_str(r#","sourceIPs":["#);
        jscan::write_string(&mut out, ip);
        out.push(']');
    }
    if let Some(ua) = &user_agent {
        put_field(&mut out, "userAgent", ua);
    }
    out.push_str(r#","objectRef":{"#);
    let mut first = true;
    for (k, v) in [
        ("apiGroup", &object_ref.api_group),
        ("apiVersion", &object_ref.api_version),
        ("namespace", &object_ref.namespace),
        ("resource", &object_ref.resource),
        ("name", &object_ref.name),
        ("subresource", &object_ref.subresource),
    ] {
        if let Some(v) = v {
            out.push_str(if std::mem::take(&mut first) { "\"" } else { ",\"" });
            put_member(&mut out, k, v);
        }
    }
    out.push_str(r#"},"responseStatus":{"metadata":{},"code":"#);
    out.push_str(&code.to_string());
    if let Some(m) = &message {
        put_field(&mut out, "message", m);
    }
    out.push('}');
    if let Some(ts) = &c.timestamp {
        put_field(&mut out, "requestReceivedTimestamp", ts);
        put_field(&mut out, "stageTimestamp", ts);
    }
    out.push_str(r#","annotations":{"#);
    for (i, (k, v)) in annotations.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        jscan::write_string(&mut out, k);
        out.push(':');
        jscan::write_string(&mut out, v);
    }
    out.push('}');
    for (key, body) in [("requestObject", request), ("responseObject", response)] {
        if let Some(b) = body {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            out.push_str(b.get());
        }
    }
    out.push('}');
    let parts = Parts {
        level: Some(Cow::Borrowed(level)),
        audit_id,
        stage: Some(Cow::Borrowed(stage)),
        request_uri: Some(Cow::Owned(uri)),
        verb: Some(verb),
        user: Some(UserInfo { username, ..UserInfo::default() }),
        source_ips: ip.map(|ip| vec![ip]),
        user_agent,
        object_ref: Some(object_ref),
        response_status: Some(ResponseStatus { code: Some(code), message, ..ResponseStatus::default() }),
        request_object: request,
        response_object: response,
        request_received_timestamp: c.timestamp.clone(),
        stage_timestamp: c.timestamp.clone(),
        annotations: Some(annotations),
    };
    Ok((out, parts))
}

/// Subresources that stream: their native events are reported at ResponseStarted.
const STREAMING: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Maps a GKE LogEntry with an AuditLog protoPayload onto a native audit Event.
pub fn gke(entry: &Value) -> Result<Value, ManagedError> {
    let p = entry.get("protoPayload").ok_or(ManagedError::NoProtoPayload)?;
    let method = check_audit_log(
        p.get("@type").map(|t| t.as_str().unwrap_or("")),
        p.get("serviceName").and_then(Value::as_str),
        p.get("methodName").and_then(Value::as_str),
    )?;
    let denied = p
        .get("authorizationInfo")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|i| i.get("granted") == Some(&Value::Bool(false))));
    let verb = method.rsplit('.').next().unwrap_or("");
    let Target { group, version, namespace, resource, name, sub, uri, stage } =
        target(p.get("resourceName").and_then(Value::as_str).unwrap_or(""));
    let mut object_ref = Map::new();
    for (k, v) in [
        ("apiGroup", Some(group)),
        ("apiVersion", Some(version)),
        ("namespace", namespace),
        ("resource", resource),
        ("name", name),
        ("subresource", sub),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            object_ref.insert(k.into(), json!(v));
        }
    }
    let code = p.get("status").and_then(|s| s.get("code")).and_then(Value::as_i64);
    let mut status = json!({"metadata": {}, "code": denied_code(code, denied)});
    if let (Some(msg), Some(o)) = (p.get("status").and_then(|s| s.get("message")), status.as_object_mut()) {
        o.insert("message".into(), msg.clone());
    }
    let time = entry.get("timestamp").cloned().unwrap_or(Value::Null);
    let mut annotations = entry.get("labels").and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(c) = entry.get("resource").and_then(|r| r.get("labels")).and_then(|l| l.get("cluster_name")) {
        annotations.insert("cluster_name".into(), c.clone());
    }
    if denied {
        annotations.insert(DECISION.into(), json!("forbid"));
    }
    let strip_type = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("@type");
        }
        v
    };
    // A null body is no body, as in the fast path.
    let request = p.get("request").filter(|v| !v.is_null()).map(strip_type);
    let response = p.get("response").filter(|v| !v.is_null()).map(strip_type);
    let level = if request.is_some() || response.is_some() { "RequestResponse" } else { "Metadata" };
    let audit_id = entry
        .get("operation")
        .and_then(|o| o.get("id"))
        .or_else(|| entry.get("insertId"))
        .cloned()
        .unwrap_or(Value::Null);
    let meta = p.get("requestMetadata");
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": audit_id,
        "stage": stage,
        "requestURI": uri,
        "verb": verb,
        "user": {"username": p.get("authenticationInfo").and_then(|a| a.get("principalEmail")).cloned().unwrap_or(Value::Null)},
        "sourceIPs": meta.and_then(|m| m.get("callerIp")).map(|ip| json!([ip])).unwrap_or(Value::Null),
        "userAgent": meta.and_then(|m| m.get("callerSuppliedUserAgent")).cloned().unwrap_or(Value::Null),
        "objectRef": Value::Object(object_ref),
        "responseStatus": status,
        "requestReceivedTimestamp": time,
        "stageTimestamp": entry.get("timestamp").cloned().unwrap_or(Value::Null),
        "annotations": Value::Object(annotations),
    });
    if let Some(o) = ev.as_object_mut() {
        // Absent, not null, like the fast path and the API server.
        o.retain(|_, v| !v.is_null());
        if let Some(u) = o.get_mut("user").and_then(Value::as_object_mut) {
            u.retain(|_, v| !v.is_null());
        }
        if let Some(r) = request {
            o.insert("requestObject".into(), r);
        }
        if let Some(r) = response {
            o.insert("responseObject".into(), r);
        }
    }
    Ok(ev)
}
