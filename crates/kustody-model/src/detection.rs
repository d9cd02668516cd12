use crate::{Priority, SourceRef};

/// One `%field` of a rule's output template with the value it had on the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputField {
    pub name: String,
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
    pub rule: String,
    pub priority: Priority,
    /// Falco's event source name (`k8s_audit`).
    pub source: String,
    pub tags: Vec<String>,
    /// Event time (Unix nanoseconds), when the event had one.
    pub time_ns: Option<i64>,
    /// The rendered output template.
    pub output: String,
    /// The template's fields plus `ka.auditid` and the evidence location.
    pub output_fields: Vec<OutputField>,
    pub audit_id: Option<String>,
    pub source_ref: SourceRef,
}
