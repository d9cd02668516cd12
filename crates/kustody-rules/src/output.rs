//! Output templates: `%field` and `%field[arg]` replaced by the event's values, `<NA>` when a
//! field cannot be extracted, list values as `(a,b)`.

use std::sync::Arc;

use kustody_model::{Event, FieldValue};

use crate::extract::{extract, Val};
use crate::fields::{resolve, FieldRef};

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    /// Index into [`Template::fields`].
    Field(usize),
}

/// A compiled output template.
#[derive(Debug, Clone)]
pub struct Template {
    segs: Vec<Seg>,
    /// The distinct fields (by name as written), in order of first use.
    fields: Vec<(FieldRef, Arc<str>)>,
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
        let mut fields: Vec<(FieldRef, Arc<str>)> = Vec::new();
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
                    let at = match fields.iter().position(|(_, n)| **n == *f.display) {
                        Some(at) => at,
                        None => {
                            let name: Arc<str> = f.display.as_str().into();
                            fields.push((f, name));
                            fields.len() - 1
                        }
                    };
                    segs.push(Seg::Field(at));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        if errors.is_empty() {
            Ok(Template { segs, fields })
        } else {
            Err(errors)
        }
    }

    /// The fields the template names, in order, without duplicates.
    pub fn fields(&self) -> Vec<&FieldRef> {
        self.fields.iter().map(|(f, _)| f).collect()
    }

    /// The names of [`Template::fields`] as written (`ka.uri.param[command]`), shared.
    pub fn field_names(&self) -> impl ExactSizeIterator<Item = &Arc<str>> {
        self.fields.iter().map(|(_, n)| n)
    }

    /// Each of [`Template::fields`] extracted once from `ev` (`None`: cannot be extracted).
    pub fn values<'e>(&self, ev: &'e Event<'_>) -> Vec<Option<Val<'e>>> {
        self.fields.iter().map(|(f, _)| extract(ev, f)).collect()
    }

    /// Appends the rendered text (not trimmed) for `values` from [`Template::values`].
    pub fn write_text(&self, values: &[Option<Val<'_>>], out: &mut String) {
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Field(i) => match values.get(*i) {
                    Some(Some(Val::One(v))) => out.push_str(v),
                    Some(Some(Val::List(items))) => {
                        out.push('(');
                        for (k, it) in items.iter().enumerate() {
                            if k > 0 {
                                out.push(',');
                            }
                            out.push_str(it);
                        }
                        out.push(')');
                    }
                    _ => out.push_str("<NA>"),
                },
            }
        }
    }

    /// Renders the template and returns the text plus each field's value.
    pub fn render(&self, ev: &Event<'_>) -> (String, Vec<(Arc<str>, FieldValue)>) {
        let values = self.values(ev);
        let mut text = String::with_capacity(256);
        self.write_text(&values, &mut text);
        let fields = self.fields.iter().zip(values).map(|((_, name), v)| (name.clone(), field_value_of(v))).collect();
        (text.trim_end().to_owned(), fields)
    }
}

fn field_value_of(v: Option<Val<'_>>) -> FieldValue {
    match v {
        None => FieldValue::Missing,
        Some(Val::One(s)) => FieldValue::Str(s.into_owned()),
        Some(Val::List(items)) => FieldValue::List(items.into_iter().map(|s| s.into_owned()).collect()),
    }
}

/// A field's value as it appears in alerts.
pub fn field_value(ev: &Event<'_>, f: &FieldRef) -> FieldValue {
    field_value_of(extract(ev, f))
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
