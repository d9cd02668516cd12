//! Request and response bodies read without a DOM.
//!
//! Rules read several values of one body (a pod create's rules read 6–10 fields of the same
//! spec), so walking the raw text once per field costs too much; parsing the body into a
//! `serde_json::Value` allocates every key, string, map and array and frees them again (13 % of
//! the samples on a body-heavy log, issue 21). A [`Body`] is one pass over the text that
//! records where every value starts and ends and where the value after it begins, in a single
//! vector: lookups then hop over siblings without scanning, and everything they return borrows
//! from the event's text.
//!
//! The answers are those of a `serde_json::Value` built from the same text, which the
//! `audit_reader` fuzz target checks on arbitrary bodies: a duplicated key reads as its last
//! value, values nested more than 127 deep make the body unreadable (serde_json's recursion
//! limit), strings are unescaped, and values rendered as text ([`Val::text`]) are compact JSON
//! exactly as serde_json prints it.
//!
//! The text must be valid JSON (it is: the event parser checked it); on anything else the
//! parser gives up or returns some answer, never panics.

use std::borrow::Cow;

/// Deepest nesting serde_json accepts: 127 containers inside each other.
const MAX_DEPTH: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    Num,
    /// A string without escapes: its text between the quotes is its value.
    Str,
    /// A string with escapes.
    StrEsc,
    Arr,
    Obj,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Byte range of the value's text (strings: quotes included).
    start: u32,
    end: u32,
    /// Index of the node after this value and everything inside it.
    next: u32,
    kind: Kind,
}

/// A body indexed for borrowed lookups. Objects' children are key and value nodes in turn.
#[derive(Debug)]
pub struct Body<'a> {
    text: &'a str,
    nodes: Vec<Node>,
}

/// One value of a [`Body`].
#[derive(Debug, Clone, Copy)]
pub struct Val<'b, 'a> {
    body: &'b Body<'a>,
    at: usize,
}

impl<'a> Body<'a> {
    /// Indexes `text`, one JSON value. `None` when it is nested too deeply (or not JSON).
    pub fn parse(text: &'a str) -> Option<Body<'a>> {
        if text.len() >= u32::MAX as usize {
            return None;
        }
        let b = text.as_bytes();
        // About one value per 12 bytes in Kubernetes objects.
        let mut nodes: Vec<Node> = Vec::with_capacity(b.len() / 12 + 4);
        // Open containers: node index. Their `next` is set when they close.
        let mut open: Vec<usize> = Vec::with_capacity(16);
        let mut i = ws(b, 0);
        loop {
            // A value starts at `i`.
            let start = i;
            let (kind, end) = match *b.get(i)? {
                b'"' => {
                    let (end, esc) = string_end(b, i)?;
                    (if esc { Kind::StrEsc } else { Kind::Str }, end)
                }
                b'{' | b'[' => {
                    if open.len() >= MAX_DEPTH {
                        return None;
                    }
                    let kind = if b.get(i) == Some(&b'{') { Kind::Obj } else { Kind::Arr };
                    open.push(nodes.len());
                    nodes.push(Node { start: start as u32, end: 0, next: 0, kind });
                    i = ws(b, i + 1);
                    if matches!(b.get(i), Some(b'}' | b']')) {
                        // Empty: closed below by the common path.
                    } else {
                        if kind == Kind::Obj {
                            i = key(b, i, &mut nodes)?;
                        }
                        continue;
                    }
                    (kind, usize::MAX)
                }
                b't' => (Kind::True, i + 4),
                b'f' => (Kind::False, i + 5),
                b'n' => (Kind::Null, i + 4),
                _ => (Kind::Num, scalar_end(b, i)),
            };
            if end != usize::MAX {
                nodes.push(Node { start: start as u32, end: end as u32, next: nodes.len() as u32 + 1, kind });
                i = ws(b, end);
            }
            // After a value: `,` (next member or element), or close containers.
            loop {
                let Some(&top) = open.last() else {
                    return Some(Body { text, nodes });
                };
                match b.get(i) {
                    Some(b',') => {
                        i = ws(b, i + 1);
                        if nodes.get(top).is_some_and(|n| n.kind == Kind::Obj) {
                            i = key(b, i, &mut nodes)?;
                        }
                        break;
                    }
                    Some(b'}' | b']') => {
                        open.pop();
                        let next = nodes.len() as u32;
                        let n = nodes.get_mut(top)?;
                        n.end = i as u32 + 1;
                        n.next = next;
                        i = ws(b, i + 1);
                    }
                    _ => return None,
                }
            }
        }
    }

    /// The whole body.
    pub fn root(&self) -> Option<Val<'_, 'a>> {
        (!self.nodes.is_empty()).then_some(Val { body: self, at: 0 })
    }
}

/// Reads the key string at `i` and the `:` after it; the index of the value.
fn key(b: &[u8], i: usize, nodes: &mut Vec<Node>) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, esc) = string_end(b, i)?;
    let kind = if esc { Kind::StrEsc } else { Kind::Str };
    nodes.push(Node { start: i as u32, end: end as u32, next: nodes.len() as u32 + 1, kind });
    let j = ws(b, end);
    if b.get(j) != Some(&b':') {
        return None;
    }
    Some(ws(b, j + 1))
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

fn scalar_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The string whose opening quote is at `i`: the index past its closing quote, and whether it
/// holds an escape. Eight bytes at a time (SWAR: a byte equal to `"` or `\` borrows).
pub(crate) fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut esc = false;
    loop {
        while let Some(x) = b.get(j..j + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_le_bytes) {
            let q = x ^ (LO * u64::from(b'"'));
            let s = x ^ (LO * u64::from(b'\\'));
            let m = ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s)) & HI;
            if m != 0 {
                j += (m.trailing_zeros() / 8) as usize;
                break;
            }
            j += 8;
        }
        match b.get(j)? {
            b'"' => return Some((j + 1, esc)),
            b'\\' => {
                esc = true;
                j += 2;
            }
            _ => j += 1,
        }
    }
}

impl<'b, 'a> Val<'b, 'a> {
    fn node(&self) -> Option<&'b Node> {
        self.body.nodes.get(self.at)
    }

    fn kind(&self) -> Option<Kind> {
        self.node().map(|n| n.kind)
    }

    /// The value's JSON text, exactly as in the body.
    pub fn raw(&self) -> &'a str {
        let text: &'a str = self.body.text;
        self.node().and_then(|n| text.get(n.start as usize..n.end as usize)).unwrap_or_default()
    }

    /// The children: an object's keys and values in turn, an array's elements.
    fn children(&self) -> impl Iterator<Item = Val<'b, 'a>> + 'b {
        let body = self.body;
        let (first, stop) = match self.node() {
            Some(n) if matches!(n.kind, Kind::Arr | Kind::Obj) => (self.at + 1, n.next as usize),
            _ => (0, 0),
        };
        let mut at = first;
        std::iter::from_fn(move || {
            if at >= stop {
                return None;
            }
            let v = Val { body, at };
            at = body.nodes.get(at).map_or(stop, |n| n.next as usize);
            Some(v)
        })
    }

    /// An object's `(key, value)` pairs in document order (duplicates included).
    fn pairs(&self) -> impl Iterator<Item = (Val<'b, 'a>, Val<'b, 'a>)> + 'b {
        let mut c = self.children();
        std::iter::from_fn(move || Some((c.next()?, c.next()?)))
    }

    /// Member `key` of an object (its last occurrence, as serde_json keeps it).
    pub fn get(&self, key: &str) -> Option<Val<'b, 'a>> {
        if self.kind()? != Kind::Obj {
            return None;
        }
        self.pairs().filter(|(k, _)| k.str_is(key)).last().map(|(_, v)| v)
    }

    /// The value at `path` of object keys.
    pub fn at(&self, path: &[&str]) -> Option<Val<'b, 'a>> {
        path.iter().try_fold(*self, |v, k| v.get(k))
    }

    fn str_is(&self, want: &str) -> bool {
        match self.kind() {
            Some(Kind::Str) => self.raw().get(1..self.raw().len().saturating_sub(1)) == Some(want),
            Some(Kind::StrEsc) => self.as_str().is_some_and(|s| s == want),
            _ => false,
        }
    }

    /// The elements of an array.
    pub fn items(&self) -> Option<impl Iterator<Item = Val<'b, 'a>> + 'b> {
        (self.kind()? == Kind::Arr).then(|| self.children())
    }

    /// Element `n` of an array.
    pub fn item(&self, n: usize) -> Option<Val<'b, 'a>> {
        self.items()?.nth(n)
    }

    /// An object's keys, unescaped, in order of first appearance, each once.
    pub fn keys(&self) -> Option<Vec<Cow<'a, str>>> {
        if self.kind()? != Kind::Obj {
            return None;
        }
        let mut out: Vec<Cow<'a, str>> = Vec::new();
        for (k, _) in self.pairs() {
            if let Some(k) = k.as_str() {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Some(out)
    }

    pub fn is_object(&self) -> bool {
        self.kind() == Some(Kind::Obj)
    }

    /// True for JSON `true`.
    pub fn is_true(&self) -> bool {
        self.kind() == Some(Kind::True)
    }

    /// A string's value, unescaped (borrowed when it has no escape); `None` for other values.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let raw = self.raw();
        match self.kind()? {
            Kind::Str => raw.get(1..raw.len().saturating_sub(1)).map(Cow::Borrowed),
            Kind::StrEsc => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
            _ => None,
        }
    }

    /// The value as the k8saudit plugin renders it: a string's value, anything else as compact
    /// JSON, byte for byte what `serde_json::Value::to_string` prints (the body's own text when
    /// that is already the same, which it is for Kubernetes' own integers and literals).
    pub fn text(&self) -> Cow<'a, str> {
        match self.kind() {
            Some(Kind::Str | Kind::StrEsc) => self.as_str().unwrap_or(Cow::Borrowed(self.raw())),
            _ => compact_text(self.raw()),
        }
    }
}

impl<'a> Val<'_, 'a> {
    /// The value as compact JSON (strings quoted), byte for byte what
    /// `serde_json::Value::to_string` prints.
    pub fn json(&self) -> Cow<'a, str> {
        match self.kind() {
            Some(Kind::Str) => Cow::Borrowed(self.raw()),
            Some(Kind::StrEsc) => self
                .as_str()
                .and_then(|s| serde_json::to_string(&*s).ok())
                .map_or(Cow::Borrowed(self.raw()), Cow::Owned),
            _ => compact_text(self.raw()),
        }
    }
}

/// JSON text as the k8saudit plugin renders a value: a string's value, anything else compact
/// JSON as `serde_json::Value::to_string` prints it. Borrowed for strings without escapes,
/// literals and plain integers; anything else goes through serde_json.
pub fn compact_text(raw: &str) -> Cow<'_, str> {
    match raw.as_bytes().first() {
        Some(b'"') => match string_end(raw.as_bytes(), 0) {
            Some((end, false)) if end == raw.len() => Cow::Borrowed(raw.get(1..end - 1).unwrap_or_default()),
            _ => serde_json::from_str::<String>(raw).map_or(Cow::Borrowed(raw), Cow::Owned),
        },
        _ if matches!(raw, "true" | "false" | "null") || canonical_integer(raw) => Cow::Borrowed(raw),
        _ => serde_json::from_str::<serde_json::Value>(raw).map_or(Cow::Borrowed(raw), |v| match v {
            serde_json::Value::String(s) => Cow::Owned(s),
            other => Cow::Owned(other.to_string()),
        }),
    }
}

/// An integer serde_json prints back unchanged: no leading zero, no `-0`, within `i64`/`u64`.
fn canonical_integer(s: &str) -> bool {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return false;
    }
    if neg {
        digits != "0" && digits.parse::<u64>().is_ok_and(|v| v <= 1u64 << 63)
    } else {
        digits.parse::<u64>().is_ok()
    }
}

/// Every lookup of `text` through a [`Body`] and through a `serde_json::Value`, for the fuzz
/// target and tests: `Err` describes the first difference.
#[doc(hidden)]
pub fn check_against_serde(text: &str) -> Result<(), String> {
    let dom: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let body = Body::parse(text);
    let Some(dom) = dom else {
        return Ok(()); // serde_json refuses it: nothing to compare with
    };
    let Some(body) = body else {
        return Err(format!("serde_json reads it, the body index does not: {text}"));
    };
    let root = body.root().ok_or("no root")?;
    compare(&root, &dom, 0)
}

fn compare(v: &Val<'_, '_>, d: &serde_json::Value, depth: usize) -> Result<(), String> {
    use serde_json::Value as J;
    let json_text = |d: &J| match d {
        J::String(s) => s.clone(),
        other => other.to_string(),
    };
    if v.text() != json_text(d) {
        return Err(format!("text {:?} vs {:?}", v.text(), json_text(d)));
    }
    if v.json() != d.to_string() {
        return Err(format!("json {:?} vs {:?}", v.json(), d.to_string()));
    }
    if v.as_str().as_deref() != d.as_str() || v.is_true() != (d == &J::Bool(true)) || v.is_object() != d.is_object() {
        return Err(format!("type differs at {}", v.raw()));
    }
    if depth > 200 {
        return Ok(());
    }
    match d {
        J::Object(m) => {
            let keys: Vec<String> = v.keys().unwrap_or_default().into_iter().map(Cow::into_owned).collect();
            let want: Vec<String> = m.keys().cloned().collect();
            if keys != want {
                return Err(format!("keys {keys:?} vs {want:?}"));
            }
            for (k, dv) in m {
                let bv = v.get(k).ok_or_else(|| format!("missing key {k:?}"))?;
                compare(&bv, dv, depth + 1)?;
            }
        }
        J::Array(a) => {
            let n = v.items().map_or(0, Iterator::count);
            if n != a.len() {
                return Err(format!("{n} elements vs {}", a.len()));
            }
            for (i, dv) in a.iter().enumerate() {
                let bv = v.item(i).ok_or("missing element")?;
                compare(&bv, dv, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_match_serde_json() {
        for text in [
            r#"{"spec":{"hostPID":true,"containers":[{"name":"a","ports":[{"containerPort":80}]},{"name":"b\"q"}],"n":1.50},"a/b":"x","data":{"k":"v"}}"#,
            r#"{"a":1,"a":{"b":2},"c":[],"d":{},"e":"\u00e9\/","f":-0,"g":1e3,"h":18446744073709551616,"i":-9223372036854775808,"j":null,"k":false}"#,
            " { \"x\" : [ 1 , 2 , { \"y\" : \"z\" } ] , \"w\" : { } } ",
            "[]",
            "\"s\"",
            "12",
            r#"{"d":{"a":1,"b":2,"a":3}}"#,
        ] {
            check_against_serde(text).unwrap();
        }
    }

    #[test]
    fn nesting_limit_is_serde_jsons() {
        let ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(serde_json::from_str::<serde_json::Value>(&ok).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        assert!(Body::parse(&ok).is_some());
        assert!(Body::parse(&deep).is_none());
    }

    #[test]
    fn borrowed_lookups() {
        let b =
            Body::parse(r#"{"spec":{"containers":[{"image":"x","securityContext":{"privileged":true}}]},"k":"a\nb"}"#)
                .unwrap();
        let root = b.root().unwrap();
        let c = root.at(&["spec", "containers"]).unwrap().item(0).unwrap();
        assert!(matches!(c.get("image").unwrap().as_str(), Some(Cow::Borrowed("x"))));
        assert!(c.at(&["securityContext", "privileged"]).unwrap().is_true());
        assert_eq!(root.get("k").unwrap().as_str().as_deref(), Some("a\nb"));
        assert!(root.get("nope").is_none());
        assert!(Body::parse("{\"a\":").is_none());
        assert!(Body::parse("").is_none());
    }
}
