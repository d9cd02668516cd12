//! JSON-pointer lookups on raw JSON text without building a DOM.
//!
//! Rules usually want one value deep inside a request body (`/requestObject/spec/hostPID`).
//! Parsing the whole body into a `serde_json::Value` to read it costs allocations for every
//! key and value, and freeing them again; walking the text with a key-matching visitor skips
//! everything else in place and borrows the result.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The raw JSON text at `path` below `raw`, or `None` when any step is missing or of the wrong
/// type. Segments are already unescaped (RFC 6901); a numeric segment indexes arrays. A key
/// that appears twice is read at its first occurrence, and the walk stops there: what follows
/// the value is never scanned.
///
/// `raw` must be valid JSON (the event parser checked it); on anything else the answer is some
/// value or `None`, never a panic.
pub fn pointer<'a, S: AsRef<str>>(raw: &'a str, path: &[S]) -> Option<&'a str> {
    let b = raw.as_bytes();
    let mut i = ws(b, 0);
    for seg in path {
        let seg = seg.as_ref();
        i = match b.get(i)? {
            b'{' => member(raw, i, seg)?,
            b'[' => element(b, i, seg.parse().ok()?)?,
            _ => return None,
        };
    }
    let end = skip(b, i)?;
    raw.get(i..end)
}

/// The start of member `key`'s value in the object whose `{` is at `i`.
fn member(raw: &str, i: usize, key: &str) -> Option<usize> {
    let b = raw.as_bytes();
    let mut j = ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return None;
    }
    loop {
        if b.get(j) != Some(&b'"') {
            return None;
        }
        let (end, esc) = crate::body::string_end(b, j)?;
        let hit = if esc {
            serde_json::from_str::<String>(raw.get(j..end)?).ok().is_some_and(|k| k == key)
        } else {
            raw.get(j + 1..end - 1) == Some(key)
        };
        j = ws(b, end);
        if b.get(j) != Some(&b':') {
            return None;
        }
        j = ws(b, j + 1);
        if hit {
            return Some(j);
        }
        j = ws(b, skip(b, j)?);
        match b.get(j) {
            Some(b',') => j = ws(b, j + 1),
            _ => return None,
        }
    }
}

/// The start of element `n` of the array whose `[` is at `i`.
fn element(b: &[u8], i: usize, n: usize) -> Option<usize> {
    let mut j = ws(b, i + 1);
    if b.get(j) == Some(&b']') {
        return None;
    }
    for _ in 0..n {
        j = ws(b, skip(b, j)?);
        match b.get(j) {
            Some(b',') => j = ws(b, j + 1),
            _ => return None,
        }
    }
    Some(j)
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// The index just past the value at `i` (not validated: brackets are counted, strings skipped).
fn skip(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => crate::body::string_end(b, i).map(|(e, _)| e),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = crate::body::string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b.get(j).is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The value of raw JSON text as a string: strings unescaped, anything else as its text.
pub fn text(raw: &str) -> Option<Cow<'_, str>> {
    if raw.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<&str>(raw) {
            return Some(Cow::Borrowed(s));
        }
        return serde_json::from_str::<String>(raw).ok().map(Cow::Owned);
    }
    Some(Cow::Borrowed(raw))
}

/// The old walk through serde_json's visitor (every step re-parses the value, and scans to
/// the end of each enclosing object): kept as the reference the fuzz target compares
/// [`pointer`] with.
#[doc(hidden)]
pub fn pointer_serde<'a, S: AsRef<str>>(raw: &'a str, path: &[S]) -> Option<&'a str> {
    let mut cur = raw;
    for seg in path {
        let mut de = serde_json::Deserializer::from_str(cur);
        cur = Step { key: seg.as_ref() }.deserialize(&mut de).ok()??.get();
    }
    Some(cur.trim_matches([' ', '\n', '\r', '\t']))
}

struct Step<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for Step<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = m.next_key_seed(KeyIs(self.key))? {
            if hit && found.is_none() {
                found = Some(m.next_value::<&'de RawValue>()?);
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
        let want: Option<usize> = self.key.parse().ok();
        let mut i = 0usize;
        let mut found = None;
        loop {
            if Some(i) == want {
                match s.next_element::<&'de RawValue>()? {
                    Some(v) => found = Some(v),
                    None => break,
                }
            } else if s.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Deserialises a map key and answers whether it equals the wanted key, without allocating
/// for unescaped keys.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str, path: &[&str]) -> Option<String> {
        pointer(raw, path).and_then(text).map(Cow::into_owned)
    }

    #[test]
    fn walks_objects_and_arrays() {
        let raw = r#"{"spec":{"hostPID":true,"containers":[{"name":"a","ports":[{"containerPort":80}]},{"name":"b\"q"}],"n":1.50},"a/b":"x","data":{"k":"v"}}"#;
        assert_eq!(p(raw, &["spec", "hostPID"]).as_deref(), Some("true"));
        assert_eq!(p(raw, &["spec", "containers", "1", "name"]).as_deref(), Some("b\"q"));
        assert_eq!(p(raw, &["spec", "containers", "0", "ports"]).as_deref(), Some(r#"[{"containerPort":80}]"#));
        assert_eq!(p(raw, &["spec", "n"]).as_deref(), Some("1.50"));
        assert_eq!(p(raw, &["a/b"]).as_deref(), Some("x"));
        assert_eq!(p(raw, &["data"]).as_deref(), Some(r#"{"k":"v"}"#));
        assert_eq!(p(raw, &["spec", "containers", "2"]), None);
        assert_eq!(p(raw, &["spec", "hostPID", "x"]), None);
        assert_eq!(p(raw, &["nope"]), None);
        assert_eq!(p(raw, &[]).as_deref(), Some(raw));
        assert_eq!(p("[1,2", &["0"]).as_deref(), Some("1"), "not validated: the first element is there");
        assert_eq!(p(" { \"a\" : [ 1 , { \"b\" : true } ] } ", &["a", "1", "b"]).as_deref(), Some("true"));
        assert_eq!(p(r#"{"a\u0062":1,"ab":2}"#, &["ab"]).as_deref(), Some("1"), "first occurrence, escaped key");
        for (raw, path) in [
            (raw, &["spec", "containers", "1", "name"][..]),
            (raw, &["spec", "containers", "0", "ports"][..]),
            (raw, &["data"][..]),
            (raw, &["spec", "n"][..]),
            (raw, &["nope"][..]),
            (raw, &["spec", "containers", "+1", "name"][..]),
        ] {
            assert_eq!(pointer(raw, path), pointer_serde(raw, path), "{path:?}");
        }
    }
}

/// The elements of a raw JSON array, or `None` if `raw` is not an array.
pub fn items(raw: &str) -> Option<Vec<&str>> {
    if !raw.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<&RawValue>>(raw).ok().map(|v| v.into_iter().map(RawValue::get).collect())
}

/// The keys of a raw JSON object in document order, or `None` if `raw` is not an object.
pub fn keys(raw: &str) -> Option<Vec<Cow<'_, str>>> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = m.next_key::<KeyText<'de>>()? {
                m.next_value::<IgnoredAny>()?;
                out.push(k.0);
            }
            Ok(out)
        }
    }
    struct KeyText<'a>(Cow<'a, str>);
    impl<'de> serde::Deserialize<'de> for KeyText<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = KeyText<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(KeyText(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(KeyText(Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(V)
        }
    }
    if !raw.starts_with('{') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    de.deserialize_map(Keys).ok()
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn items_and_keys() {
        assert_eq!(items(r#"[1,"a",{"b":2}]"#), Some(vec!["1", "\"a\"", r#"{"b":2}"#]));
        assert_eq!(items("{}"), None);
        assert_eq!(
            keys(r#"{"name":"x","hostPath":{"path":"/"}}"#),
            Some(vec![Cow::Borrowed("name"), Cow::Borrowed("hostPath")])
        );
        assert_eq!(keys("[]"), None);
    }
}
