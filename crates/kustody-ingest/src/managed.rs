//! Managed-cloud wrappers around audit events, unwrapped or normalised to native Event JSON.
//!
//! * EKS: CloudWatch Logs events `{"message": "<event JSON>", "timestamp": ...}` — as the
//!   `events` of `aws logs filter-log-events` / `get-log-events` output, as the `logEvents` of a
//!   subscription/Firehose record, or one per line; S3 exports are `<timestamp> <event JSON>` lines.
//! * AKS: diagnostic-settings records `{"category": "kube-audit", "properties": {"log": ...}}` —
//!   as the `records` of an Event Hubs / storage batch, or one per line. `log` is a JSON string
//!   or an object.
//! * GKE: Cloud Logging LogEntries with an AuditLog `protoPayload`, mapped field by field onto a
//!   native Event (docs/FORMATS.md has the mapping and what GKE cannot provide).
//!
//! Detection is by shape, per record; a wrapper that is recognised but broken is a bad record
//! with the reason, never a silent skip.

use std::borrow::Cow;

use kustody_model::SourceFormat;
use serde_json::{json, Map, Value};

use crate::jscan;

/// What one top-level record turned out to be.
pub enum Unwrapped<'a> {
    /// Not a known wrapper: the text itself is (presumably) a native Event.
    Native,
    /// The elements of a list: an EventList's `items`, or the `records` / `logEvents` /
    /// `events` of an AKS, CloudWatch subscription or `aws logs` batch.
    List(Vec<&'a str>),
    /// One native Event.
    One(Cow<'a, str>, SourceFormat),
    /// A wrapper that holds nothing to read (a CloudWatch control message, another AKS log
    /// category), with the reason it is skipped.
    Skip(String),
}

/// Whether a record opens the way the API server writes a native event; no wrapper or list does.
pub(crate) fn looks_native(text: &str) -> bool {
    text.starts_with(r#"{"kind":"Event","#)
}

/// The top-level members a wrapper is recognised by, as raw JSON text.
#[derive(Default)]
struct Envelope<'a> {
    kind: Option<&'a str>,
    items: Option<&'a str>,
    records: Option<&'a str>,
    events: Option<&'a str>,
    log_events: Option<&'a str>,
    proto_payload: bool,
    properties: bool,
    /// `properties.log`, unescaped during the scan when it is a string.
    log: Option<jscan::Member<'a>>,
    category: Option<&'a str>,
    /// `message`, unescaped during the scan when it is a string.
    message: Option<jscan::Member<'a>>,
    message_type: Option<&'a str>,
}

/// Reads the members that tell wrappers apart, in one validating pass that unescapes the event
/// text (`message`, `properties.log`) as it goes. Stops at a `protoPayload`: serde reads a
/// LogEntry whole.
fn envelope(t: &str) -> Result<Envelope<'_>, jscan::ScanError> {
    let mut env = Envelope::default();
    let mut m = jscan::Members::new(t)?;
    while let Some(key) = m.key()? {
        // serde_json keeps the last of duplicate keys; so do we.
        let slot = match key.as_ref() {
            "kind" => &mut env.kind,
            "items" => &mut env.items,
            "records" => &mut env.records,
            "events" => &mut env.events,
            "logEvents" => &mut env.log_events,
            "category" => &mut env.category,
            "messageType" => &mut env.message_type,
            "message" => {
                env.message = Some(m.text()?);
                continue;
            }
            "properties" if m.at_object() => {
                env.properties = true;
                env.log = m.object(|p| {
                    let mut log = None;
                    while let Some(k) = p.key()? {
                        if k == "log" {
                            log = Some(p.text()?);
                        } else {
                            p.raw()?;
                        }
                    }
                    Ok(log)
                })?;
                continue;
            }
            "protoPayload" => {
                env.proto_payload = true;
                return Ok(env);
            }
            _ => {
                m.raw()?;
                continue;
            }
        };
        *slot = Some(m.raw()?);
    }
    m.finish()?;
    Ok(env)
}

/// Recognises a wrapper or a list by its top-level members, found in one validating pass (see
/// [`crate::jscan`]). Text that is not a JSON object, or not valid JSON, is `Native`: the event
/// parser then reports exactly what is wrong with it.
pub fn unwrap(text: &str) -> Result<Unwrapped<'_>, String> {
    let t = text.trim();
    if !t.starts_with('{') || looks_native(t) {
        return Ok(Unwrapped::Native);
    }
    let Ok(env) = envelope(t) else {
        return Ok(Unwrapped::Native);
    };
    let kind = env.kind.and_then(jscan::string_value).and_then(Result::ok);
    if kind.as_deref() == Some("EventList") {
        return list(env.items.unwrap_or("[]"), "items");
    }
    for (raw, field) in [(env.records, "records"), (env.log_events, "logEvents"), (env.events, "events")] {
        if let Some(raw) = raw.filter(|r| r.starts_with('[')) {
            return list(raw, field);
        }
    }
    if env.proto_payload {
        if let Ok(entry) = serde_json::from_str::<GkeEntry<'_>>(t) {
            if let Some(p) = &entry.proto_payload {
                return gke_fast(&entry, p).map(|e| Unwrapped::One(Cow::Owned(e), SourceFormat::Gke));
            }
        }
        let v: Value = serde_json::from_str(t).map_err(|e| format!("invalid JSON: {e}"))?;
        return gke(&v).map(|e| Unwrapped::One(Cow::Owned(e.to_string()), SourceFormat::Gke));
    }
    if let (true, Some(category)) = (env.properties, env.category) {
        let Some(Ok(category)) = jscan::string_value(category) else {
            return Err("AKS record whose `category` is not a string".into());
        };
        if let Some(skip) = aks_not_audit(&category) {
            return Ok(skip);
        }
        let log = env.log.ok_or("AKS record without `properties.log`")?;
        return embedded(log, "properties.log").map(|e| Unwrapped::One(e, SourceFormat::Aks));
    }
    if let Some(m) = env.message {
        match env.message_type.map(|t| jscan::string_value(t).and_then(Result::ok)) {
            None => {}
            Some(Some(t)) if t == "CONTROL_MESSAGE" => {
                return Ok(Unwrapped::Skip("CloudWatch Logs control message".into()))
            }
            // A subscription record without `logEvents` has nothing to read.
            Some(_) => return Ok(Unwrapped::Native),
        }
        // A native Event never has a top-level `message`; a CloudWatch event always does.
        let raw = m.raw;
        return match embedded(m, "message") {
            Ok(e) => Ok(Unwrapped::One(e, SourceFormat::Eks)),
            Err(_) if raw.starts_with('"') => {
                Ok(Unwrapped::Skip("CloudWatch event whose message is not a JSON object (a control message?)".into()))
            }
            Err(e) => Err(e),
        };
    }
    Ok(Unwrapped::Native)
}

/// The elements of a list member; a list member that is not an array is a bad record.
fn list<'a>(raw: &'a str, field: &str) -> Result<Unwrapped<'a>, String> {
    jscan::elements(raw).map(Unwrapped::List).map_err(|e| format!("invalid JSON in `{field}`: {e}"))
}

/// AKS diagnostic records of another log category are skipped, with the reason.
fn aks_not_audit(category: &str) -> Option<Unwrapped<'static>> {
    (category != "kube-audit" && category != "kube-audit-admin")
        .then(|| Unwrapped::Skip(format!("AKS record of category `{category}` is not an audit log")))
}

/// An event carried as a JSON string (escaped, and unescaped by the scan that found it) or as
/// an object, inside a wrapper field. Whether the event is valid JSON is left to `Event::parse`
/// (one pass, not two), whose error the caller reports with the record's format.
fn embedded<'a>(m: jscan::Member<'a>, field: &str) -> Result<Cow<'a, str>, String> {
    if m.raw.starts_with('{') {
        return Ok(Cow::Borrowed(m.raw));
    }
    let Some(s) = m.text else {
        return Err(format!("`{field}` is neither a JSON string nor an object"));
    };
    if !s.trim_start().starts_with('{') {
        return Err(format!("`{field}` does not hold a JSON object"));
    }
    Ok(trimmed(s))
}

/// Text without surrounding whitespace, trimmed in place when it was unescaped into its own
/// buffer (copying every event once more cost ~3 % of an AKS read).
fn trimmed(event: Cow<'_, str>) -> Cow<'_, str> {
    match event {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(mut o) => {
            o.truncate(o.trim_end().len());
            let lead = o.len() - o.trim_start().len();
            o.drain(..lead);
            Cow::Owned(o)
        }
    }
}

/// An EKS S3 export line: `<RFC 3339 timestamp> <event JSON>`.
pub fn strip_s3_prefix(line: &str) -> Option<&str> {
    let (ts, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    (ts.len() >= 20 && kustody_model::time::parse_rfc3339_nanos(ts).is_some() && rest.starts_with('{')).then_some(rest)
}

/// A subscription record is this much JSON at most once decompressed (CloudWatch Logs caps a
/// subscription payload at 1 MB compressed; this leaves room without inviting a gzip bomb).
const MAX_FIREHOSE_JSON: u64 = 64 << 20;

/// A line of base64 that decodes to gzip: a CloudWatch Logs subscription record as Kinesis or
/// Firehose deliver it. `None` when the line is not base64-of-gzip.
pub fn decode_firehose(line: &str) -> Option<Result<String, String>> {
    use base64::Engine as _;
    use std::io::Read;
    let t = line.trim();
    // Base64 of gzip always starts with "H4sI" (1f 8b 08).
    if !t.starts_with("H4sI") || !t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        return None;
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(t) {
        Ok(b) => b,
        Err(e) => return Some(Err(format!("base64 record that does not decode: {e}"))),
    };
    let mut json = String::new();
    let mut gz = flate2::read::MultiGzDecoder::new(bytes.as_slice()).take(MAX_FIREHOSE_JSON + 1);
    if let Err(e) = gz.read_to_string(&mut json) {
        return Some(Err(format!("base64 record whose gzip payload is damaged: {e}")));
    }
    if json.len() as u64 > MAX_FIREHOSE_JSON {
        return Some(Err(format!("subscription record decompresses to more than {MAX_FIREHOSE_JSON} bytes")));
    }
    Some(Ok(json))
}

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

/// A LogEntry (no `#[serde(flatten)]`: it buffers the whole entry and halved the speed).
#[derive(serde::Deserialize)]
struct GkeEntry<'a> {
    #[serde(borrow, rename = "protoPayload")]
    proto_payload: Option<GkePayload<'a>>,
    #[serde(borrow, rename = "insertId")]
    insert_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<GkeOperation<'a>>,
    #[serde(borrow)]
    labels: Option<std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
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
    labels: Option<std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkePayload<'a> {
    #[serde(borrow, rename = "@type")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method_name: Option<Cow<'a, str>>,
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

/// Writes `s` as a JSON string. Text that needs no escaping (nearly all of it: borrowed
/// strings had none in the input) is copied as is; the rest goes through serde_json.
fn put_str(out: &mut String, s: &str) {
    let plain = !s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(q) = serde_json::to_string(s) {
        out.push_str(&q);
    } else {
        out.push_str("\"\"");
    }
}

/// Writes `,"key":"value"` (keys are ours or already-checked input).
fn put_field(out: &mut String, key: &str, value: &str) {
    out.push(',');
    put_member(out, key, value);
}

/// Writes `"key":"value"`.
fn put_member(out: &mut String, key: &str, value: &str) {
    put_str(out, key);
    out.push(':');
    put_str(out, value);
}

fn gke_fast(c: &GkeEntry<'_>, p: &GkePayload<'_>) -> Result<String, String> {
    let ty = p.ty.as_deref().unwrap_or("");
    if !ty.ends_with("google.cloud.audit.AuditLog") {
        return Err(format!("protoPayload of type `{ty}` is not an AuditLog"));
    }
    let method = p.method_name.as_deref().ok_or("AuditLog without methodName")?;
    if !method.starts_with("io.k8s.") {
        return Err(format!("methodName `{method}` is not a Kubernetes API call"));
    }
    let verb = method.rsplit('.').next().unwrap_or("");
    let resource_name = p.resource_name.as_deref().unwrap_or("");
    let mut segs: Vec<&str> = resource_name.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version) = if segs.len() >= 2 { (segs.remove(0), segs.remove(0)) } else { ("", "") };
    let group = if group == "core" { "" } else { group };
    let mut rest: &[&str] = &segs;
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        namespace = rest.get(1).copied();
        rest = rest.get(2..).unwrap_or_default();
    }
    let sub = rest.get(2).copied();
    let (request, response) = (p.request.map(|r| r.get()), p.response.map(|r| r.get()));
    let mut out = String::with_capacity(512 + request.map_or(0, str::len) + response.map_or(0, str::len));
    out.push_str(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"#);
    out.push_str(if request.is_some() || response.is_some() { r#""RequestResponse""# } else { r#""Metadata""# });
    if let Some(id) = c.operation.as_ref().and_then(|o| o.id.as_deref()).or(c.insert_id.as_deref()) {
        put_field(&mut out, "auditID", id);
    }
    put_field(
        &mut out,
        "stage",
        if sub.is_some_and(|s| STREAMING.contains(&s)) { "ResponseStarted" } else { "ResponseComplete" },
    );
    let mut uri = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    for s in &segs {
        uri.push('/');
        uri.push_str(s);
    }
    put_field(&mut out, "requestURI", &uri);
    put_field(&mut out, "verb", verb);
    out.push_str(r#","user":{"#);
    if let Some(u) = p.authentication_info.as_ref().and_then(|a| a.principal_email.as_deref()) {
        put_str(&mut out, "username");
        out.push(':');
        put_str(&mut out, u);
    }
    out.push('}');
    if let Some(ip) = p.request_metadata.as_ref().and_then(|m| m.caller_ip.as_deref()) {
        out.push_str(r#","sourceIPs":["#);
        put_str(&mut out, ip);
        out.push(']');
    }
    if let Some(ua) = p.request_metadata.as_ref().and_then(|m| m.caller_supplied_user_agent.as_deref()) {
        put_field(&mut out, "userAgent", ua);
    }
    out.push_str(r#","objectRef":{"#);
    let mut first = true;
    for (k, v) in [
        ("apiGroup", Some(group)),
        ("apiVersion", Some(version)),
        ("namespace", namespace),
        ("resource", rest.first().copied()),
        ("name", rest.get(1).copied()),
        ("subresource", sub),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            put_member(&mut out, k, v);
        }
    }
    out.push_str(r#"},"responseStatus":{"metadata":{},"code":"#);
    out.push_str(&http_code(p.status.as_ref().and_then(|s| s.code).unwrap_or(0)).to_string());
    if let Some(m) = p.status.as_ref().and_then(|s| s.message.as_deref()) {
        put_field(&mut out, "message", m);
    }
    out.push('}');
    if let Some(ts) = c.timestamp.as_deref() {
        put_field(&mut out, "requestReceivedTimestamp", ts);
        put_field(&mut out, "stageTimestamp", ts);
    }
    out.push_str(r#","annotations":{"#);
    let cluster = c.resource.as_ref().and_then(|r| r.labels.as_ref()).and_then(|l| l.get("cluster_name"));
    let labels = c.labels.iter().flatten().filter(|(k, _)| *k != "cluster_name" || cluster.is_none());
    let mut first = true;
    for (k, v) in labels.map(|(k, v)| (k.as_ref(), v.as_ref())).chain(cluster.map(|c| ("cluster_name", c.as_ref()))) {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        put_member(&mut out, k, v);
    }
    out.push('}');
    for (key, body) in [("requestObject", request), ("responseObject", response)] {
        if let Some(b) = body {
            out.push(',');
            put_str(&mut out, key);
            out.push(':');
            out.push_str(b);
        }
    }
    out.push('}');
    Ok(out)
}

/// Subresources that stream: their native events are reported at ResponseStarted.
const STREAMING: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Maps a GKE LogEntry with an AuditLog protoPayload onto a native audit Event.
pub fn gke(entry: &Value) -> Result<Value, String> {
    let p = entry.get("protoPayload").ok_or("LogEntry without protoPayload")?;
    let ty = p.get("@type").and_then(Value::as_str).unwrap_or("");
    if !ty.ends_with("google.cloud.audit.AuditLog") {
        return Err(format!("protoPayload of type `{ty}` is not an AuditLog"));
    }
    let method = p.get("methodName").and_then(Value::as_str).ok_or("AuditLog without methodName")?;
    if !method.starts_with("io.k8s.") {
        return Err(format!("methodName `{method}` is not a Kubernetes API call"));
    }
    let verb = method.rsplit('.').next().unwrap_or("");
    let resource_name = p.get("resourceName").and_then(Value::as_str).unwrap_or("");
    let mut segs: Vec<&str> = resource_name.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version) = if segs.len() >= 2 { (segs.remove(0), segs.remove(0)) } else { ("", "") };
    let mut object_ref = Map::new();
    let group = if group == "core" { "" } else { group };
    if !group.is_empty() {
        object_ref.insert("apiGroup".into(), json!(group));
    }
    if !version.is_empty() {
        object_ref.insert("apiVersion".into(), json!(version));
    }
    let mut rest: &[&str] = &segs;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        object_ref.insert("namespace".into(), json!(rest.get(1)));
        rest = rest.get(2..).unwrap_or_default();
    }
    if let Some(r) = rest.first() {
        object_ref.insert("resource".into(), json!(r));
    }
    if let Some(n) = rest.get(1) {
        object_ref.insert("name".into(), json!(n));
    }
    let sub = rest.get(2).copied();
    if let Some(s) = sub {
        object_ref.insert("subresource".into(), json!(s));
    }
    let uri = {
        let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        format!("{base}/{}", segs.join("/"))
    };
    let stage = if sub.is_some_and(|s| STREAMING.contains(&s)) { "ResponseStarted" } else { "ResponseComplete" };
    let code = p.get("status").and_then(|s| s.get("code")).and_then(Value::as_i64).unwrap_or(0);
    let mut status = json!({"metadata": {}, "code": http_code(code)});
    if let (Some(msg), Some(o)) = (p.get("status").and_then(|s| s.get("message")), status.as_object_mut()) {
        o.insert("message".into(), msg.clone());
    }
    let time = entry.get("timestamp").cloned().unwrap_or(Value::Null);
    let mut annotations = entry.get("labels").and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(c) = entry.get("resource").and_then(|r| r.get("labels")).and_then(|l| l.get("cluster_name")) {
        annotations.insert("cluster_name".into(), c.clone());
    }
    let strip_type = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("@type");
        }
        v
    };
    let request = p.get("request").map(strip_type);
    let response = p.get("response").map(strip_type);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gke_mapping() {
        let entry = json!({
            "insertId": "i1",
            "labels": {"authorization.k8s.io/decision": "allow"},
            "operation": {"id": "op-1"},
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "alice@example.com"},
                "methodName": "io.k8s.core.v1.pods.exec.create",
                "requestMetadata": {"callerIp": "192.0.2.1", "callerSuppliedUserAgent": "kubectl/v1.30"},
                "resourceName": "core/v1/namespaces/shop/pods/db-0/exec",
                "status": {"code": 7, "message": "denied"},
                "request": {"@type": "k8s.io/Foo", "a": 1}
            },
            "resource": {"labels": {"cluster_name": "prod"}},
            "timestamp": "2024-01-01T00:00:00Z"
        });
        let ev = gke(&entry).unwrap();
        assert_eq!(ev["verb"], "create");
        assert_eq!(
            ev["objectRef"],
            json!({"apiVersion": "v1", "namespace": "shop", "resource": "pods", "name": "db-0", "subresource": "exec"})
        );
        assert_eq!(ev["stage"], "ResponseStarted");
        assert_eq!(ev["responseStatus"]["code"], 403);
        assert_eq!(ev["user"]["username"], "alice@example.com");
        assert_eq!(ev["sourceIPs"], json!(["192.0.2.1"]));
        assert_eq!(ev["annotations"]["cluster_name"], "prod");
        assert_eq!(ev["auditID"], "op-1");
        assert_eq!(ev["requestObject"], json!({"a": 1}));
        assert_eq!(ev["requestURI"], "/api/v1/namespaces/shop/pods/db-0/exec");
        let rb = json!({"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "methodName": "io.k8s.authorization.rbac.v1.clusterrolebindings.create", "resourceName": "rbac.authorization.k8s.io/v1/clusterrolebindings/x"}});
        let ev = gke(&rb).unwrap();
        assert_eq!(ev["objectRef"]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(ev["objectRef"]["resource"], "clusterrolebindings");
        assert_eq!(ev["objectRef"].get("namespace"), None);
        let ns = json!({"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "methodName": "io.k8s.core.v1.namespaces.delete", "resourceName": "core/v1/namespaces/crypto"}});
        let ev = gke(&ns).unwrap();
        assert_eq!(ev["objectRef"]["resource"], "namespaces");
        assert_eq!(ev["objectRef"]["name"], "crypto");
        assert!(gke(&json!({"protoPayload": {"@type": "x.Other"}})).is_err());
    }

    #[test]
    fn fast_and_dom_gke_paths_agree() {
        let entry = json!({
            "insertId": "i1", "labels": {"authorization.k8s.io/decision": "allow"}, "operation": {"id": "op-1"},
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "alice@example.com"}, "methodName": "io.k8s.core.v1.pods.exec.create",
                "requestMetadata": {"callerIp": "192.0.2.1", "callerSuppliedUserAgent": "kubectl/v1.30"},
                "resourceName": "core/v1/namespaces/shop/pods/db-0/exec", "status": {"code": 7, "message": "denied"},
                "request": {"a": [1, {"b": "c"}]}},
            "resource": {"labels": {"cluster_name": "prod"}}, "timestamp": "2024-01-01T00:00:00Z"});
        let text = entry.to_string();
        let Ok(Unwrapped::One(fast, _)) = unwrap(&text) else { panic!() };
        let fast: Value = serde_json::from_str(&fast).unwrap();
        assert_eq!(fast, gke(&entry).unwrap());

        // Strings that need escaping (quotes, backslashes, control characters, non-ASCII) and a
        // cluster name in both the labels and the resource survive the hand-written output.
        let entry = json!({
            "labels": {"a\"b": "x\\y\n", "cluster_name": "from-labels"},
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "m\u{e9}l\"anie@example.com"},
                "methodName": "io.k8s.apps.v1.deployments.patch",
                "requestMetadata": {"callerIp": "2001:db8::1", "callerSuppliedUserAgent": "ua \"quoted\"\t"},
                "resourceName": "apps/v1/namespaces/sh\"op/deployments/web", "status": {"code": 0},
                "response": {"z": "\u{2028}"}},
            "resource": {"labels": {"cluster_name": "prod"}}, "timestamp": "2024-01-01T00:00:00Z"});
        let text = entry.to_string();
        let Ok(Unwrapped::One(fast, _)) = unwrap(&text) else { panic!() };
        let fast: Value = serde_json::from_str(&fast).unwrap();
        assert_eq!(fast, gke(&entry).unwrap());
        assert_eq!(fast["annotations"]["cluster_name"], "prod");
        assert_eq!(fast["objectRef"]["namespace"], "sh\"op");
    }

    #[test]
    fn native_events_are_not_unwrapped() {
        let native = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","message":"x","protoPayload":1}"#;
        assert!(matches!(unwrap(native), Ok(Unwrapped::Native)));
    }

    #[test]
    fn s3_prefix() {
        assert_eq!(strip_s3_prefix("2024-01-01T00:00:00.000Z {\"a\":1}"), Some("{\"a\":1}"));
        assert_eq!(strip_s3_prefix("{\"a\":1}"), None);
        assert_eq!(strip_s3_prefix("garbage {\"a\":1}"), None);
    }
}
