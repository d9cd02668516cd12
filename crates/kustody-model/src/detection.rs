use std::sync::Arc;

use crate::{Priority, SourceRef};

/// One `%field` of a rule's output template with the value it had on the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputField {
    /// The field as written in the template (`ka.uri.param[command]`); shared, not copied.
    pub name: Arc<str>,
    pub value: FieldValue,
}

/// An extracted value as it appears in alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// The field could not be extracted: `<NA>` in text, `null` in JSON.
    Missing,
    Str(String),
    /// A list field: `(a,b)` in text, an array of strings in JSON.
    List(Vec<String>),
}

impl FieldValue {
    /// Text form, as in Falco's rendered output.
    pub fn text(&self) -> String {
        match self {
            FieldValue::Missing => "<NA>".to_owned(),
            FieldValue::Str(s) => s.clone(),
            FieldValue::List(items) => format!("({})", items.join(",")),
        }
    }
}

/// A rule that matched an event, rendered and ready for output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub rule: Arc<str>,
    pub priority: Priority,
    /// Falco's event source name (`k8s_audit`).
    pub source: Arc<str>,
    pub tags: Arc<[String]>,
    /// Event time (Unix nanoseconds), when the event had one.
    pub time_ns: Option<i64>,
    /// The rendered output template.
    pub output: String,
    /// The template's fields plus `ka.auditid` and the evidence location.
    pub output_fields: Vec<OutputField>,
    pub audit_id: Option<String>,
    pub source_ref: SourceRef,
    /// Who did what to which object, from where: the columns of tables and CSV.
    pub context: EventContext,
}

/// The identity, action, target and origin of an event, independent of any rule's template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventContext {
    pub user: Option<String>,
    pub impersonated_user: Option<String>,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub response_code: Option<i64>,
    pub request_uri: Option<String>,
    /// For exec and attach: the command's argv, joined with spaces.
    pub command: Option<String>,
}

impl EventContext {
    pub fn of(ev: &crate::Event<'_>) -> Self {
        let o = ev.object_ref();
        let s = |v: Option<&str>| v.map(str::to_owned);
        // Creates carry no name in objectRef: the object's own metadata has it.
        let body_name = |raw: Option<&str>| {
            raw.and_then(|r| crate::rawjson::pointer(r, &["metadata", "name"]))
                .and_then(crate::rawjson::text)
                .map(|c| c.into_owned())
        };
        let name = s(o.and_then(|o| o.name.as_deref()))
            .or_else(|| body_name(ev.response_object_raw()))
            .or_else(|| body_name(ev.request_object_raw()));
        let command = match o.and_then(|o| o.subresource.as_deref()) {
            Some("exec" | "attach") => {
                let argv = ev.request_uri().map(|u| crate::uri::all(u, "command")).unwrap_or_default();
                (!argv.is_empty()).then(|| argv.join(" "))
            }
            _ => None,
        };
        EventContext {
            user: s(ev.user().and_then(|u| u.username.as_deref())),
            impersonated_user: s(ev.impersonated_user().and_then(|u| u.username.as_deref())),
            verb: s(ev.verb()),
            resource: s(o.and_then(|o| o.resource.as_deref())),
            subresource: s(o.and_then(|o| o.subresource.as_deref())),
            namespace: s(o.and_then(|o| o.namespace.as_deref())),
            name,
            source_ip: s(ev.source_ips().and_then(|ips| ips.first()).map(|c| c.as_ref())),
            user_agent: s(ev.user_agent()),
            response_code: ev.response_status().and_then(|r| r.code),
            request_uri: s(ev.request_uri()),
            command,
        }
    }

    /// `pods/exec` style resource with subresource.
    pub fn resource_path(&self) -> Option<String> {
        match (&self.resource, &self.subresource) {
            (Some(r), Some(s)) if !s.is_empty() => Some(format!("{r}/{s}")),
            (Some(r), _) => Some(r.clone()),
            _ => None,
        }
    }

    /// `namespace/name`, `name`, or `namespace/`.
    pub fn object(&self) -> Option<String> {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            (Some(ns), None) => Some(format!("{ns}/*")),
            (None, None) => None,
        }
    }
}
