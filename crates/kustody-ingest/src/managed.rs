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

use kustody_model::{ObjectRef, Parts, ResponseStatus, SourceFormat, UserInfo};
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
    /// A GKE LogEntry converted to a native Event: its text, and its fields as already known.
    Gke(String, Box<Parts<'a>>),
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

/// Why a record in a managed-cloud format cannot be read (it becomes a bad record with this
/// text).
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The record, or the event inside it, is not valid JSON.
    #[error("invalid JSON: {0}")]
    Scan(jscan::ScanError),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A list member (`items`, `records`, `logEvents`, `events`) that is not a JSON array.
    #[error("invalid JSON in `{field}`: {scan}")]
    List { field: &'static str, scan: jscan::ScanError },
    #[error("AKS record whose `category` is not a string")]
    AksCategory,
    #[error("AKS record without `properties.log`")]
    AksNoLog,
    /// The wrapper field meant to hold the event holds something else.
    #[error("`{0}` is neither a JSON string nor an object")]
    NotStringOrObject(&'static str),
    #[error("`{0}` does not hold a JSON object")]
    NotAnObject(&'static str),
    #[error("base64 record that does not decode: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("base64 record whose gzip payload is damaged: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("subscription record decompresses to more than {0} bytes")]
    TooLarge(u64),
    #[error("LogEntry without protoPayload")]
    NoProtoPayload,
    #[error("protoPayload of type `{0}` is not an AuditLog")]
    NotAuditLog(String),
    #[error("AuditLog without methodName")]
    NoMethodName,
    #[error("methodName `{0}` is not a Kubernetes API call")]
    NotKubernetesCall(String),
}

/// Recognises a JSON array (a list of its elements), or a wrapper or a list by its top-level
/// members, found in one validating pass (see [`crate::jscan`]). Text that is not a JSON object, or not valid JSON, is `Native`: the event
/// parser then reports exactly what is wrong with it.
pub fn unwrap(text: &str) -> Result<Unwrapped<'_>, ManagedError> {
    let t = text.trim();
    if t.starts_with('[') {
        return jscan::elements(t).map(Unwrapped::List).map_err(ManagedError::Scan);
    }
    if !t.starts_with('{') || looks_native(t) {
        return Ok(Unwrapped::Native);
    }
    // `gcloud logging read` writes a LogEntry's keys in alphabetical order, so one opens with
    // `insertId` (or, without one, `labels`/`logName`): go straight to the LogEntry reader.
    // Anything else it does not take is scanned like every other record.
    let gcloud_order = ["{\"insertId\":", "{\"labels\":", "{\"logName\":"].iter().any(|p| t.starts_with(p));
    if gcloud_order {
        if let Some(r) = log_entry(t) {
            return r;
        }
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
        if !gcloud_order {
            if let Some(r) = log_entry(t) {
                return r;
            }
        }
        // Not readable as a typed LogEntry (an unexpected type somewhere): the DOM mapping.
        let v: Value = serde_json::from_str(t)?;
        return gke(&v).map(|e| Unwrapped::One(Cow::Owned(e.to_string()), SourceFormat::Gke));
    }
    if let (true, Some(category)) = (env.properties, env.category) {
        let Some(Ok(category)) = jscan::string_value(category) else {
            return Err(ManagedError::AksCategory);
        };
        if let Some(skip) = aks_not_audit(&category) {
            return Ok(skip);
        }
        let log = env.log.ok_or(ManagedError::AksNoLog)?;
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

/// A LogEntry with a `protoPayload`, read into borrowed fields and converted; `None` when `t`
/// is not one the typed reader takes.
fn log_entry(t: &str) -> Option<Result<Unwrapped<'_>, ManagedError>> {
    let entry = serde_json::from_str::<GkeEntry<'_>>(t).ok()?;
    let p = entry.proto_payload.as_ref()?;
    Some(gke_fast(&entry, p, t.len()).map(|(text, parts)| Unwrapped::Gke(text, Box::new(parts))))
}

/// The elements of a list member; a list member that is not an array is a bad record.
fn list<'a>(raw: &'a str, field: &'static str) -> Result<Unwrapped<'a>, ManagedError> {
    jscan::elements(raw).map(Unwrapped::List).map_err(|scan| ManagedError::List { field, scan })
}

/// AKS diagnostic records of another log category are skipped, with the reason.
fn aks_not_audit(category: &str) -> Option<Unwrapped<'static>> {
    (category != "kube-audit" && category != "kube-audit-admin")
        .then(|| Unwrapped::Skip(format!("AKS record of category `{category}` is not an audit log")))
}

/// An event carried as a JSON string (escaped, and unescaped by the scan that found it) or as
/// an object, inside a wrapper field. Whether the event is valid JSON is left to `Event::parse`
/// (one pass, not two), whose error the caller reports with the record's format.
fn embedded<'a>(m: jscan::Member<'a>, field: &'static str) -> Result<Cow<'a, str>, ManagedError> {
    if m.raw.starts_with('{') {
        return Ok(Cow::Borrowed(m.raw));
    }
    let Some(s) = m.text else {
        return Err(ManagedError::NotStringOrObject(field));
    };
    if !s.trim_start().starts_with('{') {
        return Err(ManagedError::NotAnObject(field));
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
pub fn decode_firehose(line: &str) -> Option<Result<String, ManagedError>> {
    use base64::Engine as _;
    use std::io::Read;
    let t = line.trim();
    // Base64 of gzip always starts with "H4sI" (1f 8b 08).
    if !t.starts_with("H4sI") || !t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        return None;
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(t) {
        Ok(b) => b,
        Err(e) => return Some(Err(e.into())),
    };
    let mut json = String::new();
    let mut gz = flate2::read::MultiGzDecoder::new(bytes.as_slice()).take(MAX_FIREHOSE_JSON + 1);
    if let Err(e) = gz.read_to_string(&mut json) {
        return Some(Err(e.into()));
    }
    if json.len() as u64 > MAX_FIREHOSE_JSON {
        return Some(Err(ManagedError::TooLarge(MAX_FIREHOSE_JSON)));
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
        assert!(matches!(
            gke(&json!({"protoPayload": {"@type": "x.Other"}})),
            Err(ManagedError::NotAuditLog(t)) if t == "x.Other"
        ));
        assert!(matches!(gke(&json!({"logName": "x"})), Err(ManagedError::NoProtoPayload)));
    }

    /// The fast path's text, checked against the DOM mapping, and its parts against parsing
    /// that text.
    fn fast(entry: &Value) -> Value {
        let text = entry.to_string();
        let Ok(Unwrapped::Gke(fast, parts)) = unwrap(&text) else { panic!("not converted: {text}") };
        let parsed = kustody_model::Event::parse(&fast).unwrap_or_else(|e| panic!("{e}: {fast}"));
        let built = kustody_model::Event::from_parts(&fast, *parts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(built.accessor_dump(), parsed.accessor_dump());
        serde_json::from_str(&fast).unwrap_or_else(|e| panic!("{e}"))
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
        assert_eq!(fast(&entry), gke(&entry).unwrap());

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
        let f = fast(&entry);
        assert_eq!(f, gke(&entry).unwrap());
        assert_eq!(f["annotations"]["cluster_name"], "prod");
        assert_eq!(f["objectRef"]["namespace"], "sh\"op");

        // Sparse entries: no ids, no principal, no status, no timestamp, a bare resource name,
        // a null body, a methodName with an escape (an owned string).
        for entry in [
            json!({"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "methodName": "io.k8s.core.v1.namespaces.list"}}),
            json!({"insertId": "x", "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "methodName": "io.k8s.core.v1.nodes\t.get", "resourceName": "core/v1/nodes/n1", "request": null,
                "status": {"message": ""}}, "labels": {}, "timestamp": "not a time"}),
        ] {
            assert_eq!(fast(&entry), gke(&entry).unwrap());
        }
    }

    #[test]
    fn gke_entries_without_type_are_read_by_service_and_method() {
        // some exports drop the payload's @type; serviceName k8s.io and an io.k8s.* method say enough
        let entry = json!({"insertId": "i", "protoPayload": {"serviceName": "k8s.io",
            "methodName": "io.k8s.core.v1.secrets.get", "resourceName": "core/v1/namespaces/shop/secrets/db",
            "authenticationInfo": {"principalEmail": "alice@example.com"}}, "timestamp": "2024-01-01T00:00:00Z"});
        let f = fast(&entry);
        assert_eq!(f, gke(&entry).unwrap());
        assert_eq!(f["verb"], "get");
        assert_eq!(f["objectRef"]["resource"], "secrets");
        let no_service = json!({"protoPayload": {"methodName": "io.k8s.core.v1.pods.list"}});
        assert_eq!(fast(&no_service), gke(&no_service).unwrap());
        // another service without @type is not a Kubernetes audit entry
        let other = json!({"protoPayload": {"serviceName": "compute.googleapis.com", "methodName": "v1.compute.instances.get"}});
        assert!(matches!(gke(&other), Err(ManagedError::NotAuditLog(_))));
    }

    #[test]
    fn gke_denied_authorization_is_read_as_forbidden() {
        // granted: false with no status: a 403 and a forbid decision, whatever the labels say
        let entry = json!({"insertId": "i", "labels": {"authorization.k8s.io/decision": "allow"},
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "methodName": "io.k8s.core.v1.secrets.list", "resourceName": "core/v1/namespaces/shop/secrets",
            "authorizationInfo": [{"permission": "io.k8s.core.v1.secrets.list", "granted": false,
                                   "resource": "core/v1/namespaces/shop/secrets"}]},
            "timestamp": "2024-01-01T00:00:00Z"});
        let f = fast(&entry);
        assert_eq!(f, gke(&entry).unwrap());
        assert_eq!(f["responseStatus"]["code"], 403);
        assert_eq!(f["annotations"]["authorization.k8s.io/decision"], "forbid");
        // a status code, when there is one, is kept
        let mut with_status = entry.clone();
        with_status["protoPayload"]["status"] = json!({"code": 5});
        assert_eq!(fast(&with_status)["responseStatus"]["code"], 404);
        // granted: true changes nothing
        let mut granted = entry.clone();
        granted["protoPayload"]["authorizationInfo"][0]["granted"] = json!(true);
        let g = fast(&granted);
        assert_eq!(g["responseStatus"]["code"], 200);
        assert_eq!(g["annotations"]["authorization.k8s.io/decision"], "allow");
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
