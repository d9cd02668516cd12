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

mod gke;
pub use gke::gke;
use gke::log_entry;

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
