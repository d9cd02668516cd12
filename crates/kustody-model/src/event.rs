use std::borrow::Cow;
use std::cell::OnceCell;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::body::{self, Body};
use crate::time::parse_rfc3339_nanos;

/// Why a record is not a usable audit event. Each variant names the field at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EventError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("wrong type for field `{field}`: {message}")]
    WrongType { field: String, message: String },
    #[error("not a JSON object (found {0})")]
    NotAnObject(&'static str),
    #[error("not an audit Event: kind is `{0}`")]
    WrongKind(String),
    #[error("not an audit Event: apiVersion is `{0}`")]
    WrongApiVersion(String),
    #[error("not an audit Event: none of auditID, verb, requestURI or stage is present")]
    NotAnEvent,
}

/// `user` / `impersonatedUser` of an audit event.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    #[serde(borrow, default)]
    pub username: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub uid: Option<Cow<'a, str>>,
    /// Kept raw: most rules never look at groups; see [`Event::user_groups`].
    #[serde(borrow, default)]
    pub groups: Option<&'a RawValue>,
}

/// `objectRef` of an audit event.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    #[serde(borrow, default)]
    pub resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub uid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub api_group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub resource_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub subresource: Option<Cow<'a, str>>,
}

/// `responseStatus` of an audit event (a `metav1.Status`).
#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus<'a> {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

/// The typed top-level fields of an audit event, borrowed from the record's text.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    level: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "auditID")]
    audit_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stage: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "requestURI")]
    request_uri: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    verb: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<UserInfo<'a>>,
    #[serde(borrow, default)]
    impersonated_user: Option<UserInfo<'a>>,
    #[serde(borrow, default, rename = "sourceIPs")]
    source_ips: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    object_ref: Option<ObjectRef<'a>>,
    #[serde(borrow, default)]
    response_status: Option<ResponseStatus<'a>>,
    #[serde(borrow, default)]
    request_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_received_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stage_timestamp: Option<Cow<'a, str>>,
    /// v1beta1 only.
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    annotations: Option<&'a RawValue>,
}

/// The fields of an event that a converter already holds, to build an [`Event`] from them
/// instead of parsing the text it wrote (see [`Event::from_parts`]). Absent fields are `None`
/// (or empty), exactly as [`Event::parse`] would leave them.
#[derive(Debug, Default)]
pub struct Parts<'a> {
    pub level: Option<Cow<'a, str>>,
    pub audit_id: Option<Cow<'a, str>>,
    pub stage: Option<Cow<'a, str>>,
    pub request_uri: Option<Cow<'a, str>>,
    pub verb: Option<Cow<'a, str>>,
    pub user: Option<UserInfo<'a>>,
    pub source_ips: Option<Vec<Cow<'a, str>>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub object_ref: Option<ObjectRef<'a>>,
    pub response_status: Option<ResponseStatus<'a>>,
    pub request_object: Option<&'a RawValue>,
    pub response_object: Option<&'a RawValue>,
    pub request_received_timestamp: Option<Cow<'a, str>>,
    pub stage_timestamp: Option<Cow<'a, str>>,
    /// `None` when the event has no `annotations` member; the pairs in document order.
    pub annotations: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

/// One Kubernetes audit event, borrowed from the text it was parsed from.
///
/// Accessors return `None` when the field is absent (or JSON `null`): rule evaluation treats
/// that as "cannot be extracted", which is different from an empty string.
#[derive(Debug)]
pub struct Event<'a> {
    raw: &'a str,
    f: Fields<'a>,
    time_ns: Option<i64>,
    groups: OnceCell<Option<Vec<Cow<'a, str>>>>,
    source_ips: OnceCell<Option<Vec<Cow<'a, str>>>>,
    annotations: OnceCell<Pairs<'a>>,
    request_object: OnceCell<Option<Body<'a>>>,
    whole: OnceCell<Option<Value>>,
}

impl<'a> Event<'a> {
    /// Parses one native audit event from JSON text. `raw` must be exactly one JSON value.
    pub fn parse(raw: &'a str) -> Result<Event<'a>, EventError> {
        let f: Fields<'a> = match serde_json::from_str(raw) {
            Ok(f) => f,
            Err(e) => return Err(classify_error(raw, e)),
        };
        if let Some(kind) = f.kind.as_deref() {
            if kind != "Event" {
                return Err(EventError::WrongKind(kind.to_owned()));
            }
        }
        if let Some(v) = f.api_version.as_deref() {
            if !v.starts_with("audit.k8s.io/") {
                return Err(EventError::WrongApiVersion(v.to_owned()));
            }
        }
        Self::assemble(raw, f)
    }

    /// An audit/v1 Event from fields a converter already holds, with `raw` the native JSON text
    /// it wrote for them. The caller guarantees that `raw` holds exactly these fields (GKE's
    /// converter is checked against [`Event::parse`] of its own output, field by field); this
    /// saves parsing the text again.
    pub fn from_parts(raw: &'a str, p: Parts<'a>) -> Result<Event<'a>, EventError> {
        let f = Fields {
            kind: Some(Cow::Borrowed("Event")),
            api_version: Some(Cow::Borrowed("audit.k8s.io/v1")),
            level: p.level,
            audit_id: p.audit_id,
            stage: p.stage,
            request_uri: p.request_uri,
            verb: p.verb,
            user: p.user,
            impersonated_user: None,
            source_ips: None,
            user_agent: p.user_agent,
            object_ref: p.object_ref,
            response_status: p.response_status,
            request_object: p.request_object,
            response_object: p.response_object,
            request_received_timestamp: p.request_received_timestamp,
            stage_timestamp: p.stage_timestamp,
            timestamp: None,
            annotations: None,
        };
        let ev = Self::assemble(raw, f)?;
        let _ = ev.source_ips.set(p.source_ips);
        let _ = ev.annotations.set(p.annotations.unwrap_or_default());
        Ok(ev)
    }

    fn assemble(raw: &'a str, f: Fields<'a>) -> Result<Event<'a>, EventError> {
        if f.audit_id.is_none() && f.verb.is_none() && f.request_uri.is_none() && f.stage.is_none() {
            return Err(EventError::NotAnEvent);
        }
        // The lazily parsed parts must still have the right types: check them now, cheaply,
        // so a malformed record is reported here rather than silently ignored later.
        check_lazy(&f)?;
        // Falco drops events without a parseable stageTimestamp; we keep them and fall back to
        // requestReceivedTimestamp, then to v1beta1's `timestamp`.
        let time_ns = [&f.stage_timestamp, &f.request_received_timestamp, &f.timestamp]
            .into_iter()
            .find_map(|t| t.as_deref().and_then(parse_rfc3339_nanos));
        Ok(Event {
            raw,
            f,
            time_ns,
            groups: OnceCell::new(),
            source_ips: OnceCell::new(),
            annotations: OnceCell::new(),
            request_object: OnceCell::new(),
            whole: OnceCell::new(),
        })
    }

    /// The event's JSON text, exactly as read.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
    /// Event time in Unix nanoseconds: stageTimestamp, else requestReceivedTimestamp, else
    /// v1beta1 `timestamp`.
    pub fn time_ns(&self) -> Option<i64> {
        self.time_ns
    }
    pub fn api_version(&self) -> Option<&str> {
        self.f.api_version.as_deref()
    }
    pub fn level(&self) -> Option<&str> {
        self.f.level.as_deref()
    }
    pub fn audit_id(&self) -> Option<&str> {
        self.f.audit_id.as_deref()
    }
    pub fn stage(&self) -> Option<&str> {
        self.f.stage.as_deref()
    }
    pub fn request_uri(&self) -> Option<&str> {
        self.f.request_uri.as_deref()
    }
    pub fn verb(&self) -> Option<&str> {
        self.f.verb.as_deref()
    }
    pub fn user(&self) -> Option<&UserInfo<'a>> {
        self.f.user.as_ref()
    }
    pub fn impersonated_user(&self) -> Option<&UserInfo<'a>> {
        self.f.impersonated_user.as_ref()
    }
    pub fn source_ips(&self) -> Option<&[Cow<'a, str>]> {
        self.source_ips.get_or_init(|| self.f.source_ips.and_then(|r| serde_json::from_str(r.get()).ok())).as_deref()
    }
    /// `user.groups`.
    pub fn user_groups(&self) -> Option<&[Cow<'a, str>]> {
        self.groups
            .get_or_init(|| {
                self.f.user.as_ref().and_then(|u| u.groups).and_then(|r| serde_json::from_str(r.get()).ok())
            })
            .as_deref()
    }
    pub fn user_agent(&self) -> Option<&str> {
        self.f.user_agent.as_deref()
    }
    pub fn object_ref(&self) -> Option<&ObjectRef<'a>> {
        self.f.object_ref.as_ref()
    }
    pub fn response_status(&self) -> Option<&ResponseStatus<'a>> {
        self.f.response_status.as_ref()
    }
    pub fn stage_timestamp(&self) -> Option<&str> {
        self.f.stage_timestamp.as_deref()
    }
    pub fn request_received_timestamp(&self) -> Option<&str> {
        self.f.request_received_timestamp.as_deref()
    }
    pub fn timestamp(&self) -> Option<&str> {
        self.f.timestamp.as_deref()
    }
    fn annotation_pairs(&self) -> &Pairs<'a> {
        self.annotations.get_or_init(|| {
            let Some(raw) = self.f.annotations else {
                return Vec::new();
            };
            let mut de = serde_json::Deserializer::from_str(raw.get());
            pairs(&mut de).unwrap_or_default()
        })
    }
    /// The value of annotation `key`, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotation_pairs().iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }
    pub fn annotations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.annotation_pairs().iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
    /// `requestObject` as raw JSON text, without parsing it.
    pub fn request_object_raw(&self) -> Option<&'a str> {
        self.f.request_object.map(RawValue::get).filter(|s| *s != "null")
    }
    /// `responseObject` as raw JSON text, without parsing it.
    pub fn response_object_raw(&self) -> Option<&'a str> {
        self.f.response_object.map(RawValue::get).filter(|s| *s != "null")
    }
    /// `requestObject`, indexed on first use and cached (no DOM: lookups borrow from the
    /// event's text). `None` when absent, `null`, or nested deeper than serde_json accepts.
    pub fn request_body(&self) -> Option<body::Val<'_, 'a>> {
        self.request_object.get_or_init(|| self.request_object_raw().and_then(Body::parse)).as_ref()?.root()
    }
    /// True when a rule needed `requestObject` and it could not be read (JSON nested deeper
    /// than serde_json's 128 levels): `ka.req.*` fields were then unavailable for this event,
    /// which the caller must report rather than hide.
    pub fn body_unparsed(&self) -> bool {
        matches!(self.request_object.get(), Some(None)) && self.request_object_raw().is_some()
    }
    /// The whole event as a JSON DOM, parsed on first use. Only generic JSON-pointer access
    /// to fields without a typed accessor needs it.
    pub fn whole(&self) -> Option<&Value> {
        self.whole.get_or_init(|| serde_json::from_str(self.raw).ok()).as_ref()
    }
}

impl Event<'_> {
    /// Every accessor's value, one per line: two events that print the same are the same to
    /// every rule. Tests and fuzz targets compare [`Event::from_parts`] with [`Event::parse`]
    /// by it.
    #[doc(hidden)]
    pub fn accessor_dump(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        fn user(u: Option<&UserInfo<'_>>) -> Option<(Option<String>, Option<String>, Option<String>)> {
            u.map(|u| {
                let o = |c: &Option<Cow<'_, str>>| c.as_deref().map(str::to_owned);
                (o(&u.username), o(&u.uid), u.groups.map(|g| g.get().to_owned()))
            })
        }
        let _ = writeln!(
            s,
            "time {:?} api {:?} level {:?} id {:?}",
            self.time_ns(),
            self.api_version(),
            self.level(),
            self.audit_id()
        );
        let _ = writeln!(s, "stage {:?} uri {:?} verb {:?}", self.stage(), self.request_uri(), self.verb());
        let _ = writeln!(s, "user {:?} groups {:?}", user(self.user()), self.user_groups());
        let _ = writeln!(s, "impersonated {:?}", user(self.impersonated_user()));
        let _ = writeln!(s, "ips {:?} ua {:?}", self.source_ips(), self.user_agent());
        let _ = writeln!(s, "objectRef {:?}", self.object_ref());
        let _ = writeln!(s, "status {:?}", self.response_status());
        let _ = writeln!(
            s,
            "times {:?} {:?} {:?}",
            self.request_received_timestamp(),
            self.stage_timestamp(),
            self.timestamp()
        );
        let _ = writeln!(s, "annotations {:?}", self.annotations().collect::<Vec<_>>());
        let _ = writeln!(s, "bodies {:?} {:?}", self.request_object_raw(), self.response_object_raw());
        let _ = writeln!(s, "raw {}", self.raw());
        s
    }
}

/// Type-checks the raw parts without keeping the result: first byte tells the JSON type.
fn check_lazy(f: &Fields<'_>) -> Result<(), EventError> {
    let want = |raw: Option<&RawValue>, open: u8, field: &str, what: &str| -> Result<(), EventError> {
        match raw.map(|r| r.get().as_bytes().first().copied()) {
            None | Some(Some(b'n')) => Ok(()),
            Some(Some(c)) if c == open => Ok(()),
            Some(_) => Err(EventError::WrongType { field: field.to_owned(), message: format!("expected {what}") }),
        }
    };
    want(f.source_ips, b'[', "sourceIPs", "a list of strings")?;
    want(f.annotations, b'{', "annotations", "a map of strings")?;
    want(f.user.as_ref().and_then(|u| u.groups), b'[', "user.groups", "a list of strings")?;
    want(f.impersonated_user.as_ref().and_then(|u| u.groups), b'[', "impersonatedUser.groups", "a list of strings")?;
    Ok(())
}

fn classify_error(raw: &str, e: serde_json::Error) -> EventError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            // Find which field had the wrong type: re-run the (cold) path-tracking deserialiser.
            let trimmed = raw.trim_start();
            match trimmed.as_bytes().first() {
                Some(b'{') | None => {}
                Some(b'[') => return EventError::NotAnObject("an array"),
                Some(b'"') => return EventError::NotAnObject("a string"),
                Some(b't' | b'f') => return EventError::NotAnObject("a boolean"),
                Some(b'n') => return EventError::NotAnObject("null"),
                Some(_) => return EventError::NotAnObject("a number"),
            }
            let de = &mut serde_json::Deserializer::from_str(raw);
            match serde_path_to_error::deserialize::<_, Fields<'_>>(de) {
                Err(pe) => EventError::WrongType {
                    field: pe.path().to_string(),
                    message: strip_position(&pe.inner().to_string()),
                },
                Ok(_) => EventError::Json(strip_position(&e.to_string())),
            }
        }
        _ => EventError::Json(strip_position(&e.to_string())),
    }
}

/// serde_json appends " at line L column C"; the reader reports positions itself.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg.get(..i).unwrap_or(msg).to_owned(),
        None => msg.to_owned(),
    }
}

type Pairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Deserialises a JSON object of strings into a vector of pairs (annotations have a handful of
/// entries; a vector beats a map here). `null` gives an empty vector.
fn pairs<'de, D>(d: D) -> Result<Pairs<'de>, D::Error>
where
    D: Deserializer<'de>,
{
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Pairs<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(m.size_hint().unwrap_or(2));
            while let Some((k, v)) = m.next_entry::<BorrowedStr<'de>, BorrowedStr<'de>>()? {
                out.push((k.0, v.0));
            }
            Ok(out)
        }
    }
    d.deserialize_option(V)
}

struct BorrowedStr<'a>(Cow<'a, str>);
impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct W<'a>(#[serde(borrow)] Cow<'a, str>);
        W::deserialize(d).map(|w| BorrowedStr(w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_event_and_keeps_missing_fields_missing() {
        let ev = Event::parse(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","verb":"get","stage":"ResponseComplete","requestReceivedTimestamp":"2024-01-01T00:00:00Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#).unwrap();
        assert_eq!(ev.verb(), Some("get"));
        assert_eq!(ev.object_ref().map(|o| o.resource.is_none()), None);
        assert_eq!(ev.time_ns(), Some(1_704_067_200_000_000_000));
        assert_eq!(ev.annotation("authorization.k8s.io/decision"), Some("allow"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = Event::parse(r#"{"auditID":"a","verb":"get","objectRef":{"resource":5}}"#).unwrap_err();
        match err {
            EventError::WrongType { field, .. } => assert_eq!(field, "objectRef.resource"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_objects_and_other_kinds_are_rejected() {
        assert_eq!(Event::parse("5").unwrap_err(), EventError::NotAnObject("a number"));
        assert_eq!(Event::parse("[1]").unwrap_err(), EventError::NotAnObject("an array"));
        assert_eq!(Event::parse(r#"{"kind":"Pod","verb":"x"}"#).unwrap_err(), EventError::WrongKind("Pod".into()));
        assert_eq!(Event::parse("{}").unwrap_err(), EventError::NotAnEvent);
        assert!(matches!(Event::parse(r#"{"verb":"get""#).unwrap_err(), EventError::Json(_)));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let ev = Event::parse(r#"{"verb":"g\u0065t","annotations":null}"#).unwrap();
        assert_eq!(ev.verb(), Some("get"));
    }
}
