//! Output templates: `%field` and `%field[arg]` replaced by the event's values, `<NA>` when a
//! field cannot be extracted, list values as `(a,b)`.

use std::sync::Arc;

use kustody_model::{Event, FieldValue};

use crate::extract::{extract, Val};
use crate::fields::{resolve, FieldRef};

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Field(FieldRef, Arc<str>),
}

/// A compiled output template.
#[derive(Debug, Clone)]
pub struct Template {
    segs: Vec<Seg>,
}

/// Characters a field name may contain after `%`.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.')
}

impl Template {
    /// Compiles `text`; every unknown field or bad argument is reported (not just the first).
    pub fn parse(text: &str) -> Result<Template, Vec<String>> {
        let b = text.as_bytes();
        let mut segs = Vec::new();
        let mut errors = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < b.len() {
            let Some(rel) = text.get(i..).and_then(|r| r.find('%')) else {
                lit.push_str(text.get(i..).unwrap_or_default());
                break;
            };
            lit.push_str(text.get(i..i + rel).unwrap_or_default());
            i += rel + 1;
            let start = i;
            while b.get(i).is_some_and(|c| name_byte(*c)) {
                i += 1;
            }
            // Trailing dots are punctuation ("...%ka.verb."), not part of the name.
            while i > start && b.get(i - 1) == Some(&b'.') && b.get(i) != Some(&b'[') {
                i -= 1;
            }
            let name = text.get(start..i).unwrap_or_default();
            if name.is_empty() || !name.contains('.') {
                lit.push('%');
                lit.push_str(name);
                continue;
            }
            let mut arg = None;
            if b.get(i) == Some(&b'[') {
                if let Some(close) = text.get(i..).and_then(|r| r.find(']')) {
                    arg = text.get(i + 1..i + close);
                    i += close + 1;
                }
            }
            match resolve(name, arg) {
                Ok(f) => {
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    }
                    let name: Arc<str> = f.display.as_str().into();
                    segs.push(Seg::Field(f, name));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        if errors.is_empty() {
            Ok(Template { segs })
        } else {
            Err(errors)
        }
    }

    /// The fields the template names, in order, without duplicates.
    pub fn fields(&self) -> Vec<&FieldRef> {
        let mut out: Vec<&FieldRef> = Vec::new();
        for s in &self.segs {
            if let Seg::Field(f, _) = s {
                if !out.iter().any(|o| o.display == f.display) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Renders the template and returns the text plus each field's value.
    pub fn render(&self, ev: &Event<'_>) -> (String, Vec<(Arc<str>, FieldValue)>) {
        let mut text = String::with_capacity(256);
        let mut fields: Vec<(Arc<str>, FieldValue)> = Vec::with_capacity(self.segs.len() / 2 + 1);
        for s in &self.segs {
            match s {
                Seg::Lit(l) => text.push_str(l),
                Seg::Field(f, name) => {
                    let v = field_value(ev, f);
                    match &v {
                        FieldValue::Str(x) => text.push_str(x),
                        other => text.push_str(&other.text()),
                    }
                    if !fields.iter().any(|(n, _)| n == name) {
                        fields.push((name.clone(), v));
                    }
                }
            }
        }
        (text.trim_end().to_owned(), fields)
    }
}

/// A field's value as it appears in alerts.
pub fn field_value(ev: &Event<'_>, f: &FieldRef) -> FieldValue {
    match extract(ev, f) {
        None => FieldValue::Missing,
        Some(Val::One(s)) => FieldValue::Str(s.into_owned()),
        Some(Val::List(items)) => FieldValue::List(items.into_iter().map(|s| s.into_owned()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_lists_and_missing() {
        let ev = Event::parse(r#"{"auditID":"x","verb":"get","user":{"username":"bob","groups":["a","b"]},"requestURI":"/api/v1/namespaces/d/pods/p/exec?command=id"}"#).unwrap();
        let t = Template::parse(
            "user=%ka.user.name groups=%ka.user.groups cmd=%ka.uri.param[command] ns=%ka.target.namespace 100% done.",
        )
        .unwrap();
        let (text, fields) = t.render(&ev);
        assert_eq!(text, "user=bob groups=(a,b) cmd=id ns=<NA> 100% done.");
        assert_eq!(fields[3], (Arc::from("ka.target.namespace"), FieldValue::Missing));
        assert_eq!(&*fields[2].0, "ka.uri.param[command]");
    }

    #[test]
    fn unknown_fields_are_all_reported() {
        let errs = Template::parse("%ka.nope %ka.verb %ka.uri.param %x.y").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }
}
