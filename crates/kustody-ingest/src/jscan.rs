//! A validating JSON scanner for the wrappers around audit events.
//!
//! Managed-cloud records are small envelopes around one large value: an escaped event string
//! (EKS `message`, AKS `properties.log`) or a LogEntry. serde_json can find the members of an
//! envelope, but it leaves its fast path at every escape, and an event rendered as a JSON string
//! has one for every quote: finding and unescaping `message` through serde cost more than
//! parsing the event itself (BENCHMARKS.md, issue 5). This scanner walks the envelope by
//! position, checking the JSON grammar as it goes, and unescapes a string in one tight loop.
//!
//! Nothing here panics on any input: every index goes through `get`. Only results allocate: a
//! string that had escapes ([`string_at`]) and the list of [`elements`].

use std::borrow::Cow;

/// Deepest nesting accepted (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// Where and why text is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

type Scan<T> = Result<T, ScanError>;

fn err<T>(at: usize, what: &'static str) -> Scan<T> {
    Err(ScanError { at, what })
}

/// Bytes that end a run of plain string content: `"`, `\\` and control characters.
fn special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes at `i`, little-endian, if there are 8.
fn load8(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_le_bytes)
}

/// A mask whose lowest set bit is the high bit of the first special byte of `x` (SWAR: a byte
/// equal to `"` or `\\` or below 0x20 borrows; bits above the first true hit may be spurious,
/// so only the lowest one is meaningful).
fn special_mask(x: u64) -> u64 {
    let quote = x ^ (LO * u64::from(b'"'));
    let backslash = x ^ (LO * u64::from(b'\\'));
    let zero_in = |v: u64| v.wrapping_sub(LO) & !v;
    (zero_in(quote) | zero_in(backslash) | (x.wrapping_sub(LO * 0x20) & !x)) & HI
}

/// Index of the first special byte at or after `i`, or `b.len()`: eight bytes at a time.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    while let Some(x) = load8(b, i) {
        let m = special_mask(x);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if special(c) {
            break;
        }
        i += 1;
    }
    i
}

/// Appends `s` to `out` as a JSON string, quotes included. Runs that need no escaping (nearly
/// all text) are found eight bytes at a time and copied whole; nothing is allocated.
pub fn write_string(out: &mut String, s: &str) {
    let b = s.as_bytes();
    out.push('"');
    let mut i = 0;
    loop {
        let end = plain_run(b, i);
        out.push_str(s.get(i..end).unwrap_or_default());
        let Some(&c) = b.get(end) else { break };
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX.get(usize::from(c >> 4)).copied().unwrap_or(b'0')));
                out.push(char::from(HEX.get(usize::from(c & 15)).copied().unwrap_or(b'0')));
            }
        }
        i = end + 1;
    }
    out.push('"');
}

/// The string whose opening quote is at `i`: the index just past its closing quote, and
/// whether it holds any escape.
pub fn string_end(b: &[u8], i: usize) -> Scan<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return err(i, "expected a string");
    }
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = plain_run(b, j);
        match b.get(j) {
            Some(b'"') => return Ok((j + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                    Some(b'u') => {
                        if !b.get(j + 2..j + 6).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return err(j, "invalid \\u escape");
                        }
                        j += 6;
                    }
                    _ => return err(j, "invalid escape"),
                }
            }
            Some(_) => return err(j, "control character in a string"),
            None => return err(b.len(), "unterminated string"),
        }
    }
}

/// The string whose opening quote is at `i`, unescaped (borrowed when it holds no escape),
/// and the index just past its closing quote: finding the end and unescaping in one pass.
///
/// Plain bytes are copied eight at a time with one fixed-size store (whole or partial: the
/// output never runs ahead of the input, so the spare bytes are overwritten or cut off);
/// copying each short run between escapes through `memcpy` cost more than the scan.
pub fn string_at(text: &str, i: usize) -> Scan<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return err(i, "expected a string");
    }
    let start = i + 1;
    let first = plain_run(b, start);
    match b.get(first) {
        Some(b'"') => return Ok((Cow::Borrowed(text.get(start..first).unwrap_or_default()), first + 1)),
        Some(b'\\') => {}
        Some(_) => return err(first, "control character in a string"),
        None => return err(b.len(), "unterminated string"),
    }
    let mut out = vec![0u8; b.len() - start + 8];
    if let (Some(d), Some(s)) = (out.get_mut(..first - start), b.get(start..first)) {
        d.copy_from_slice(s);
    }
    let (mut i, mut o) = (first, first - start);
    loop {
        if let Some(x) = load8(b, i) {
            if let Some(d) = out.get_mut(o..o + 8) {
                d.copy_from_slice(&x.to_le_bytes());
            }
            let m = special_mask(x);
            if m == 0 {
                i += 8;
                o += 8;
                continue;
            }
            let k = (m.trailing_zeros() / 8) as usize;
            i += k;
            o += k;
        } else {
            while let Some(&c) = b.get(i).filter(|c| !special(**c)) {
                if let Some(d) = out.get_mut(o) {
                    *d = c;
                }
                i += 1;
                o += 1;
            }
        }
        let c = match (b.get(i), b.get(i + 1)) {
            (Some(b'"'), _) => break,
            (Some(b'\\'), Some(b'"')) => b'"',
            (Some(b'\\'), Some(b'\\')) => b'\\',
            (Some(b'\\'), Some(b'/')) => b'/',
            (Some(b'\\'), Some(b'n')) => b'\n',
            (Some(b'\\'), Some(b't')) => b'\t',
            (Some(b'\\'), Some(b'r')) => b'\r',
            (Some(b'\\'), Some(b'b')) => 0x08,
            (Some(b'\\'), Some(b'f')) => 0x0c,
            (Some(b'\\'), Some(b'u')) => {
                let (ch, used) = unicode_escape(b, i)?;
                let mut buf = [0u8; 4];
                let enc = ch.encode_utf8(&mut buf).as_bytes();
                if let Some(d) = out.get_mut(o..o + enc.len()) {
                    d.copy_from_slice(enc);
                }
                i += used;
                o += enc.len();
                continue;
            }
            (Some(b'\\'), _) => return err(i, "invalid escape"),
            (Some(_), _) => return err(i, "control character in a string"),
            (None, _) => return err(b.len(), "unterminated string"),
        };
        if let Some(d) = out.get_mut(o) {
            *d = c;
        }
        i += 2;
        o += 1;
    }
    out.truncate(o);
    // Every byte copied came from valid UTF-8 text and every escape wrote a whole character.
    match String::from_utf8(out) {
        Ok(s) => Ok((Cow::Owned(s), i + 1)),
        Err(_) => err(start, "invalid UTF-8 after unescaping"),
    }
}

/// The character of the `\uXXXX` escape at `i` (a surrogate pair takes two escapes), and how
/// many bytes it used.
fn unicode_escape(b: &[u8], i: usize) -> Scan<(char, usize)> {
    let hex = |at: usize| -> Option<u32> {
        let h = b.get(at..at + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        u32::from_str_radix(s, 16).ok().filter(|_| h.iter().all(u8::is_ascii_hexdigit))
    };
    let Some(hi) = hex(i + 2) else {
        return err(i, "invalid \\u escape");
    };
    if (0xD800..0xDC00).contains(&hi) {
        let lo = (b.get(i + 6..i + 8) == Some(b"\\u")).then(|| hex(i + 8)).flatten();
        let Some(lo) = lo.filter(|lo| (0xDC00..0xE000).contains(lo)) else {
            return err(i, "lone leading surrogate in a \\u escape");
        };
        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        return char::from_u32(c).map(|c| (c, 12)).ok_or(ScanError { at: i, what: "invalid \\u escape" });
    }
    match char::from_u32(hi) {
        Some(c) => Ok((c, 6)),
        None => err(i, "lone trailing surrogate in a \\u escape"),
    }
}

/// The index just past the value that starts at `i`, checked against the JSON grammar.
fn skip(text: &str, i: usize, depth: usize) -> Scan<usize> {
    let b = text.as_bytes();
    match b.get(i) {
        Some(b'"') => string_end(b, i).map(|(e, _)| e),
        Some(b'{') => {
            let mut m = Members::at(text, i, depth)?;
            while m.key()?.is_some() {
                m.raw()?;
            }
            Ok(m.pos)
        }
        Some(b'[') => array(text, i, depth, |_| {}),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => number(b, i),
        Some(_) => err(i, "expected a value"),
        None => err(i, "unexpected end of input"),
    }
}

/// Walks the array whose `[` is at `i`, handing each element's raw text to `on`; the index just
/// past its `]`.
fn array<'a>(text: &'a str, i: usize, depth: usize, mut on: impl FnMut(&'a str)) -> Scan<usize> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'[') {
        return err(i, "expected an array");
    }
    if depth >= MAX_DEPTH {
        return err(i, "nested too deeply");
    }
    let mut j = ws(b, i + 1);
    if b.get(j) == Some(&b']') {
        return Ok(j + 1);
    }
    loop {
        let end = skip(text, j, depth + 1)?;
        on(text.get(j..end).unwrap_or_default());
        j = ws(b, end);
        match b.get(j) {
            Some(b',') => j = ws(b, j + 1),
            Some(b']') => return Ok(j + 1),
            _ => return err(j, "expected `,` or `]`"),
        }
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Scan<usize> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        err(i, "expected a value")
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn number(b: &[u8], mut i: usize) -> Scan<usize> {
    let digits = |mut j: usize| {
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        _ => return err(i, "invalid number"),
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(i + 1);
        if j == i + 1 {
            return err(j, "invalid number");
        }
        i = j;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(i);
        if j == i {
            return err(j, "invalid number");
        }
        i = j;
    }
    Ok(i)
}

/// A member's value: its raw JSON text, and when the caller asked for it, the unescaped text
/// of a string.
pub struct Member<'a> {
    pub raw: &'a str,
    pub text: Option<Cow<'a, str>>,
}

/// A pull scanner over the members of one object: [`Members::key`] then exactly one of the
/// value methods, until `key` answers `None`. Each value is scanned (and validated) once, the
/// way the caller wants it: skipped, unescaped, or descended into.
pub struct Members<'a> {
    text: &'a str,
    pos: usize,
    first: bool,
    /// The closing brace has been read.
    done: bool,
    depth: usize,
}

impl<'a> Members<'a> {
    /// The object whose `{` is the first non-blank byte of `text`.
    pub fn new(text: &'a str) -> Scan<Self> {
        Self::at(text, ws(text.as_bytes(), 0), 0)
    }

    fn at(text: &'a str, i: usize, depth: usize) -> Scan<Self> {
        if text.as_bytes().get(i) != Some(&b'{') {
            return err(i, "expected an object");
        }
        if depth >= MAX_DEPTH {
            return err(i, "nested too deeply");
        }
        Ok(Members { text, pos: i + 1, first: true, done: false, depth })
    }

    /// The next key (unescaped), with the scanner placed on its value; `None` after the
    /// closing brace.
    pub fn key(&mut self) -> Scan<Option<Cow<'a, str>>> {
        if self.done {
            return Ok(None);
        }
        let b = self.text.as_bytes();
        let mut j = ws(b, self.pos);
        if self.first {
            self.first = false;
            if b.get(j) == Some(&b'}') {
                self.pos = j + 1;
                self.done = true;
                return Ok(None);
            }
        } else {
            match b.get(j) {
                Some(b',') => j = ws(b, j + 1),
                Some(b'}') => {
                    self.pos = j + 1;
                    self.done = true;
                    return Ok(None);
                }
                _ => return err(j, "expected `,` or `}`"),
            }
        }
        let (k_end, k_escaped) = string_end(b, j)?;
        let key = match k_escaped {
            false => Cow::Borrowed(self.text.get(j + 1..k_end - 1).unwrap_or_default()),
            true => string_at(self.text, j)?.0,
        };
        let colon = ws(b, k_end);
        if b.get(colon) != Some(&b':') {
            return err(colon, "expected `:`");
        }
        self.pos = ws(b, colon + 1);
        Ok(Some(key))
    }

    /// Skips the current value; its raw JSON text.
    pub fn raw(&mut self) -> Scan<&'a str> {
        let start = self.pos;
        self.pos = skip(self.text, start, self.depth + 1)?;
        Ok(self.text.get(start..self.pos).unwrap_or_default())
    }

    /// The current value, with a string's text unescaped in the same pass.
    pub fn text(&mut self) -> Scan<Member<'a>> {
        let start = self.pos;
        if self.text.as_bytes().get(start) != Some(&b'"') {
            return self.raw().map(|raw| Member { raw, text: None });
        }
        let (t, end) = string_at(self.text, start)?;
        self.pos = end;
        Ok(Member { raw: self.text.get(start..end).unwrap_or_default(), text: Some(t) })
    }

    /// Whether the current value is an object.
    pub fn at_object(&self) -> bool {
        self.text.as_bytes().get(self.pos) == Some(&b'{')
    }

    /// Runs `f` on the members of the current value, an object, then skips whatever `f` left
    /// unread of it.
    pub fn object<R>(&mut self, f: impl FnOnce(&mut Members<'a>) -> Scan<R>) -> Scan<R> {
        let mut inner = Members::at(self.text, self.pos, self.depth + 1)?;
        let r = f(&mut inner)?;
        while inner.key()?.is_some() {
            inner.raw()?;
        }
        self.pos = inner.pos;
        Ok(r)
    }

    /// After the last member of a top-level object: only whitespace may follow.
    pub fn finish(self) -> Scan<()> {
        if !self.done {
            return err(self.pos, "object not read to its end");
        }
        trailing(self.text.as_bytes(), self.pos)
    }
}

/// The raw JSON text of each element of the array `text` holds.
pub fn elements(text: &str) -> Scan<Vec<&str>> {
    let mut out = Vec::new();
    let end = array(text, ws(text.as_bytes(), 0), 0, |e| out.push(e))?;
    trailing(text.as_bytes(), end)?;
    Ok(out)
}

fn trailing(b: &[u8], i: usize) -> Scan<()> {
    let j = ws(b, i);
    if j < b.len() {
        return err(j, "trailing characters");
    }
    Ok(())
}

/// The unescaped value of a raw JSON string (`"..."`), or `None` when `raw` is not a string.
pub fn string_value(raw: &str) -> Option<Scan<Cow<'_, str>>> {
    if !raw.starts_with('"') {
        return None;
    }
    Some(string_at(raw, 0).and_then(|(s, end)| trailing(raw.as_bytes(), end).map(|()| s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(text: &str) {
        let ours =
            skip(text, ws(text.as_bytes(), 0), 0).ok().filter(|&e| ws(text.as_bytes(), e) == text.len()).is_some();
        let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        assert_eq!(ours, serde, "{text:?}");
    }

    #[test]
    fn grammar_agrees_with_serde_json() {
        for t in [
            "{}",
            "[]",
            "1",
            "-0",
            "-0.5e+3",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "tru",
            "true",
            "null",
            "nul",
            r#"{"a":1,"b":[true,false,null,{"c":"d\"e"}]}"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            r#""\u00e9""#,
            r#""\u00g9""#,
            r#""\x""#,
            "\"a\tb\"",
            r#"{"a":"b"} x"#,
            " { } ",
            r#"{1:2}"#,
            r#""unterminated"#,
            "[",
            "{\"a\":",
        ] {
            agree(t);
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(skip(&deep, 0, 0).is_err());
        let deep = "{\"a\":".repeat(200) + &"}".repeat(200);
        assert!(skip(&deep, 0, 0).is_err());
    }

    #[test]
    fn writes_strings_serde_json_reads_back() {
        for t in [
            "",
            "plain",
            "q\"b\\s",
            "ctl \u{1}\u{1f}\n\r\t\u{8}\u{c} end",
            "caf\u{e9} \u{2028} \u{1F600}",
            "long run of plain text then \"",
        ] {
            let mut out = String::new();
            write_string(&mut out, t);
            assert_eq!(serde_json::from_str::<String>(&out).ok().as_deref(), Some(t), "{out}");
        }
    }

    #[test]
    fn unescapes_like_serde_json() {
        for s in [
            r#"plain"#,
            r#"{\"kind\":\"Event\",\"a\":\"x\\\"y\"}"#,
            r#"tab\tnl\nslash\/bs\\ \b\f\r"#,
            r#"\u00e9\u2028 \ud83d\ude00 end"#,
            "mixed caf\u{e9} \\\"q\\\"",
        ] {
            let quoted = format!("\"{s}\"");
            let want: String = serde_json::from_str(&quoted).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(string_value(&quoted).map(|r| r.map(Cow::into_owned)), Some(Ok(want)), "{s}");
        }
        for bad in [r#""\ud83d x""#, r#""\ude00""#, r#""\q""#, r#""a"b""#, r#""\u12""#] {
            assert!(matches!(string_value(bad), Some(Err(_))), "{bad}");
        }
        assert!(string_value("{}").is_none());
    }

    /// Every member as (key, raw), reading the whole object.
    fn all(text: &str) -> Scan<Vec<(String, String)>> {
        let mut m = Members::new(text)?;
        let mut out = Vec::new();
        while let Some(k) = m.key()? {
            out.push((k.into_owned(), m.raw()?.to_owned()));
        }
        m.finish().map(|()| out)
    }

    #[test]
    fn members_and_elements() {
        let seen = all(r#" {"message":"{\"a\":1}", "n": -1.5e3, "o": {"x": [1, {"y": null}]}, "k\u0065y": "v"} "#);
        assert_eq!(
            seen.unwrap_or_else(|e| panic!("{e}")),
            [
                ("message".into(), r#""{\"a\":1}""#.into()),
                ("n".into(), "-1.5e3".into()),
                ("o".into(), r#"{"x": [1, {"y": null}]}"#.into()),
                ("key".into(), r#""v""#.into()),
            ]
        );
        for bad in [r#"{"a":1} {"b":2}"#, "[]", r#"{"a":1,}"#, r#"{"a" 1}"#, "{", r#"{"a":}"#] {
            assert!(all(bad).is_err(), "{bad}");
        }
        assert_eq!(all(" { } ").ok(), Some(vec![]));
        // Unescaping in the scan, descending into an object, and leaving part of it unread.
        let text = r#"{"a":"x\"y","p":{"log":"{\"k\":\"\u00e9\"}","z":[1]},"b":1}"#;
        let mut m = Members::new(text).unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        while let Some(k) = m.key().unwrap_or_else(|e| panic!("{e}")) {
            if k == "p" && m.at_object() {
                let log = m
                    .object(|p| {
                        let _ = p.key()?;
                        p.text()
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                got.push(log.text.map(Cow::into_owned).unwrap_or_default());
            } else {
                got.push(m.text().unwrap_or_else(|e| panic!("{e}")).text.map(Cow::into_owned).unwrap_or_default());
            }
        }
        assert!(m.finish().is_ok());
        assert_eq!(got, ["x\"y", "{\"k\":\"\u{e9}\"}", ""]);
        assert_eq!(elements(r#" [ {"a":1} , "s", 3 ] "#).ok(), Some(vec![r#"{"a":1}"#, r#""s""#, "3"]));
        assert_eq!(elements("[]").ok(), Some(vec![]));
        assert!(elements("[1,]").is_err());
    }
}
