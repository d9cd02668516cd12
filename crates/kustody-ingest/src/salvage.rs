//! What can still be read from an audit event that a provider cut short.
//!
//! EKS cuts audit lines too long for CloudWatch and appends `[Truncated...]` (the JSON is then
//! unreadable); AKS cuts `properties.log` at 16 KiB in its storage exports. The apiserver
//! writes an Event's fields in a fixed order — kind, apiVersion, level, auditID, stage,
//! requestURI, verb, user, impersonatedUser, sourceIPs, userAgent, objectRef, responseStatus,
//! requestObject, responseObject, requestReceivedTimestamp, stageTimestamp, annotations — so a
//! cut event usually still holds everything before its request and response bodies: who did
//! what to which object, and how it ended. [`truncated_event`] closes that prefix into a
//! Metadata-level event: the time comes from the provider's record, and the annotation
//! `kustody.io/truncated: "true"` says what happened. Rules that need a body do not match it;
//! the rest do. The cut original is kept as a bad record by the caller.

/// The marker EKS appends to a line it cut.
pub const EKS_TRUNCATED: &str = "[Truncated...]";

/// The annotation a salvaged event carries.
pub const TRUNCATED_ANNOTATION: &str = "kustody.io/truncated";

/// A readable Metadata-level event from the fields before the bodies of a cut event, with
/// `time` (RFC 3339) as both timestamps; `None` when the text is no cut audit Event or too
/// little of it is left (no auditID, verb or user).
pub fn truncated_event(text: &str, time: &str) -> Option<String> {
    let text = text.trim_start();
    if !text.starts_with('{') || !text.get(..200.min(text.len()))?.contains("\"kind\":\"Event\"") {
        return None;
    }
    // the first body or timestamp field ends the readable prefix
    let cut = [",\"requestObject\":", ",\"responseObject\":", ",\"requestReceivedTimestamp\":"]
        .iter()
        .filter_map(|k| text.find(k))
        .min()?;
    let prefix = text.get(..cut)?;
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!("{prefix}}}")).ok()?;
    for needed in ["auditID", "verb", "user"] {
        v.get(needed)?;
    }
    v.insert("level".into(), "Metadata".into());
    v.insert("requestReceivedTimestamp".into(), time.into());
    v.insert("stageTimestamp".into(), time.into());
    let mut notes = serde_json::Map::new();
    notes.insert(TRUNCATED_ANNOTATION.into(), "true".into());
    v.insert("annotations".into(), serde_json::Value::Object(notes));
    serde_json::to_string(&v).ok()
}

/// The auditID written near the start of a (possibly cut) event's text.
pub fn audit_id(text: &str) -> Option<String> {
    let head = text.get(..text.len().min(4096)).unwrap_or(text);
    let at = head.find("\"auditID\":\"")? + "\"auditID\":\"".len();
    let rest = head.get(at..)?;
    let end = rest.find('"')?;
    let id = rest.get(..end)?;
    (!id.is_empty() && id.len() <= 128).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/secrets","verb":"create","user":{"username":"alice","groups":["dev"]},"sourceIPs":["10.0.0.9"],"userAgent":"kubectl/v1.36.0","objectRef":{"resource":"secrets","namespace":"shop","name":"db","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"Secret","data":{"k":"dmVyeS1sb25n"#;

    #[test]
    fn a_cut_event_keeps_its_metadata() {
        let cut = format!("{FULL}{EKS_TRUNCATED}");
        let s = truncated_event(&cut, "2026-12-03T10:00:00.123Z").unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["auditID"], "a-1");
        assert_eq!(v["level"], "Metadata");
        assert_eq!(v["verb"], "create");
        assert_eq!(v["objectRef"]["name"], "db");
        assert_eq!(v["responseStatus"]["code"], 201);
        assert_eq!(v["stageTimestamp"], "2026-12-03T10:00:00.123Z");
        assert_eq!(v["annotations"][TRUNCATED_ANNOTATION], "true");
        assert!(v.get("requestObject").is_none(), "no part of the body is kept");
        assert_eq!(audit_id(&cut).as_deref(), Some("a-1"));
    }

    #[test]
    fn too_little_left_or_not_an_event_is_nothing() {
        assert_eq!(
            truncated_event(
                r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"x","sta"#,
                "t"
            ),
            None
        );
        assert_eq!(truncated_event("not json at all", "t"), None);
        assert_eq!(truncated_event(r#"{"kind":"Other","requestObject":{}}"#, "t"), None);
        // a cut inside the user, before any body
        assert_eq!(truncated_event(&FULL[..200], "t"), None);
        assert_eq!(audit_id("{\"auditID\":\"\"}"), None);
    }
}
