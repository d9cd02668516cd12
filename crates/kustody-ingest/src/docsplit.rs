//! Splitting pretty-printed JSON documents into records while they stream.
//!
//! A responder's `kubectl get --raw`-style export or an archived EventList is one huge JSON
//! value over many lines. Parsing it whole needs memory proportional to the file, runs on one
//! thread, and one broken byte loses everything after it. This scanner instead finds the
//! boundaries of the records inside the document — the elements of a top-level array, the
//! elements of an EventList's `items`, or each top-level object — without parsing them, so
//! they can be handed to the parallel workers one chunk at a time.
//!
//! It recovers from damage: a raw newline inside a string, or a new element starting at the
//! indentation of the current one before the current one closed, ends the current record as
//! broken (the worker reports it as a bad record) and scanning resumes with the next element.

/// One record found in the buffer: `[start, end)`, starting on `line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: u64,
    /// The record grew past the size limit; its bytes were dropped and only its size is known.
    pub oversize: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Between top-level values.
    None,
    /// Inside a top-level array: its elements are records.
    Array,
    /// Inside a top-level object: a record itself, unless it has an `items` array.
    Object,
}

/// Scanner state; survives between buffer refills.
#[derive(Debug)]
pub struct Splitter {
    pos: usize,
    line: u64,
    depth: u32,
    in_str: bool,
    esc: bool,
    at_line_start: bool,
    indent: usize,
    top: Top,
    top_start: usize,
    top_line: u64,
    /// Depth whose children are records (1 for a top-level array, 2 for `items`).
    record_parent: Option<u32>,
    /// Start, line and indentation of the record being scanned.
    record: Option<(usize, u64, usize)>,
    /// In a top-level object at depth 1: next string is a key.
    expect_key: bool,
    key_start: usize,
    key_is_items: bool,
    saw_items: bool,
    broken: bool,
    /// Bytes of the open record already dropped because it is over the size limit.
    dropped: u64,
}

impl Splitter {
    pub fn new(first_line: u64) -> Self {
        Splitter {
            pos: 0,
            line: first_line,
            depth: 0,
            in_str: false,
            esc: false,
            at_line_start: true,
            indent: 0,
            top: Top::None,
            top_start: 0,
            top_line: first_line,
            record_parent: None,
            record: None,
            expect_key: false,
            key_start: 0,
            key_is_items: false,
            saw_items: false,
            broken: false,
            dropped: 0,
        }
    }

    /// Where the oldest byte still needed is: everything before it can be cut away.
    pub fn keep_from(&self) -> usize {
        match (self.record, self.top) {
            (Some((start, ..)), _) => start,
            (None, Top::Object) if !self.saw_items => self.top_start,
            _ => self.pos,
        }
    }

    /// The current line (for reporting where input ended).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Tells the scanner that the first `n` bytes of its buffer were removed.
    pub fn shift(&mut self, n: usize) {
        self.pos -= n;
        self.top_start = self.top_start.saturating_sub(n);
        self.key_start = self.key_start.saturating_sub(n);
        if let Some((s, l, i)) = self.record {
            self.record = Some((s - n, l, i));
        }
    }

    /// Forgets the bytes `[start, pos)` of an oversized open record (the caller removes them
    /// from the buffer) and returns that range.
    pub fn drop_record_bytes(&mut self) -> Option<(usize, usize)> {
        let (start, line, indent) = self.record?;
        let range = (start, self.pos);
        self.dropped += (self.pos - start) as u64;
        self.pos = start;
        self.record = Some((start, line, indent));
        Some(range)
    }

    /// Length of the record being scanned, if any.
    pub fn open_record_len(&self) -> Option<usize> {
        self.record.map(|(s, ..)| self.pos - s)
    }

    /// Scans `buf` from where it stopped; appends finished records to `out`.
    pub fn scan(&mut self, buf: &[u8], out: &mut Vec<Span>) {
        while let Some(&b) = buf.get(self.pos) {
            if self.in_str {
                // Jump to the next quote, backslash or newline.
                let rest = buf.get(self.pos..).unwrap_or_default();
                match memchr::memchr3(b'"', b'\\', b'\n', rest) {
                    None => {
                        self.pos = buf.len();
                        return;
                    }
                    Some(i) => self.pos += i,
                }
                let c = buf.get(self.pos).copied().unwrap_or(b'"');
                if self.esc {
                    self.esc = false;
                    if c == b'\n' {
                        self.newline(out);
                    }
                    self.pos += 1;
                    continue;
                }
                match c {
                    b'\\' => self.esc = true,
                    b'"' => {
                        self.in_str = false;
                        self.end_string(buf);
                    }
                    _ => {
                        // A raw newline cannot be inside a JSON string: the record is damaged.
                        self.in_str = false;
                        self.broken = true;
                        self.newline(out);
                    }
                }
                self.pos += 1;
                continue;
            }
            if b == b'\n' {
                self.newline(out);
                self.pos += 1;
                continue;
            }
            if self.at_line_start {
                if b == b' ' || b == b'\t' {
                    self.indent += 1;
                    self.pos += 1;
                    continue;
                }
                self.at_line_start = false;
                self.resync_if_new_sibling(b, out);
            }
            match b {
                b'"' => {
                    self.start_value_if_needed(b);
                    self.in_str = true;
                    if self.top == Top::Object && self.depth == 1 && self.expect_key {
                        self.key_start = self.pos + 1;
                    }
                }
                b'{' | b'[' => {
                    self.start_value_if_needed(b);
                    if self.depth == 0 {
                        self.top = if b == b'[' { Top::Array } else { Top::Object };
                        self.top_start = self.pos;
                        self.top_line = self.line;
                        self.saw_items = false;
                        self.record_parent = (b == b'[').then_some(1);
                    } else if self.top == Top::Object && self.depth == 1 && b == b'[' && self.key_is_items {
                        self.saw_items = true;
                        self.record_parent = Some(2);
                    }
                    self.depth = self.depth.saturating_add(1);
                    if self.top == Top::Object && self.depth == 1 {
                        self.expect_key = true;
                    }
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        self.broken = true; // stray closer
                        self.pos += 1;
                        continue;
                    }
                    self.depth -= 1;
                    if let (Some(parent), Some((start, line, _))) = (self.record_parent, self.record) {
                        if self.depth == parent {
                            self.finish(out, start, self.pos + 1, line);
                        } else if self.depth + 1 == parent {
                            // The container of the records closed (`]` of the array / items):
                            // a scalar record still open ends before it.
                            self.finish(out, start, self.pos, line);
                        }
                    }
                    if self.depth + 1 == self.record_parent.unwrap_or(0) {
                        self.record_parent = None;
                    }
                    if self.depth == 0 {
                        if self.top == Top::Object && !self.saw_items {
                            self.finish(out, self.top_start, self.pos + 1, self.top_line);
                        }
                        self.top = Top::None;
                    }
                    if self.top == Top::Object && self.depth == 1 {
                        self.expect_key = false;
                    }
                }
                b',' => {
                    if let (Some(parent), Some((start, line, _))) = (self.record_parent, self.record) {
                        if self.depth == parent {
                            self.finish(out, start, self.pos, line);
                        }
                    }
                    if self.top == Top::Object && self.depth == 1 {
                        self.expect_key = true;
                        self.key_is_items = false;
                    }
                }
                b':' => {
                    if self.top == Top::Object && self.depth == 1 {
                        self.expect_key = false;
                    }
                }
                b' ' | b'\t' | b'\r' => {}
                _ => {
                    self.start_value_if_needed(b);
                    if self.depth == 0 && self.record.is_none() {
                        // Junk between documents: a one-line bad record.
                        self.record = Some((self.pos, self.line, self.indent));
                        self.broken = true;
                    }
                }
            }
            self.pos += 1;
        }
    }

    /// Ends the input: an unfinished record or top-level object becomes a (broken) record.
    pub fn finish_input(&mut self, buf_len: usize, out: &mut Vec<Span>) {
        if let Some((start, line, _)) = self.record {
            self.finish(out, start, buf_len, line);
        } else if self.top == Top::Object && !self.saw_items && self.depth > 0 {
            out.push(Span { start: self.top_start, end: buf_len, line: self.top_line, oversize: None });
        }
    }

    fn newline(&mut self, out: &mut Vec<Span>) {
        if self.depth == 0 && self.broken {
            // A junk line between documents ends here.
            if let Some((start, line, _)) = self.record {
                self.finish(out, start, self.pos, line);
            }
        }
        self.line += 1;
        self.at_line_start = true;
        self.indent = 0;
    }

    fn end_string(&mut self, buf: &[u8]) {
        if self.top == Top::Object && self.depth == 1 && self.expect_key {
            // EventList `items`, and the batches of managed clouds: AKS `records`, CloudWatch
            // `events` (CLI output) and `logEvents` (subscriptions).
            self.key_is_items =
                matches!(buf.get(self.key_start..self.pos), Some(b"items" | b"records" | b"events" | b"logEvents"));
        }
    }

    /// A value starting where records live opens a record.
    fn start_value_if_needed(&mut self, _b: u8) {
        if self.record.is_none() && self.record_parent == Some(self.depth) {
            self.record = Some((self.pos, self.line, self.indent));
            self.broken = false;
        }
    }

    /// In a pretty document, a new element starts at the same indentation as the one before
    /// it. Seeing that while the current record is still open means the current one is broken.
    fn resync_if_new_sibling(&mut self, b: u8, out: &mut Vec<Span>) {
        let Some((start, line, indent)) = self.record else { return };
        let Some(parent) = self.record_parent else { return };
        if (b == b'{' || b == b'[') && self.indent == indent && self.depth > parent && start < self.pos {
            // End the broken record at the end of the previous line.
            let end = self.pos - self.indent;
            self.finish(out, start, end, line);
            self.depth = parent;
            self.broken = false;
        }
    }

    fn finish(&mut self, out: &mut Vec<Span>, start: usize, end: usize, line: u64) {
        let oversize = (self.dropped > 0).then(|| self.dropped + (end - start) as u64);
        out.push(Span { start, end, line, oversize });
        self.record = None;
        self.broken = false;
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<(u64, String)> {
        let mut sp = Splitter::new(1);
        let mut out = Vec::new();
        sp.scan(text.as_bytes(), &mut out);
        sp.finish_input(text.len(), &mut out);
        out.iter().map(|s| (s.line, text[s.start..s.end].trim().to_owned())).collect()
    }

    #[test]
    fn arrays_eventlists_and_objects() {
        assert_eq!(
            split("[\n  {\"a\": 1},\n  {\"b\": [1, {\"c\": \"}\"}]}\n]\n"),
            [(2, "{\"a\": 1}".into()), (3, "{\"b\": [1, {\"c\": \"}\"}]}".into())]
        );
        let list = "{\n  \"kind\": \"EventList\",\n  \"items\": [\n    {\"x\": \"items\"},\n    {\"y\": 2}\n  ],\n  \"metadata\": {}\n}\n";
        assert_eq!(split(list), [(4, "{\"x\": \"items\"}".into()), (5, "{\"y\": 2}".into())]);
        let two = "{\n  \"a\": 1\n}\n{\n  \"b\": \"[\"\n}\n";
        assert_eq!(split(two), [(1, "{\n  \"a\": 1\n}".into()), (4, "{\n  \"b\": \"[\"\n}".into())]);
        assert_eq!(split("[1, \"x\", {\"k\": 2}]"), [(1, "1".into()), (1, "\"x\"".into()), (1, "{\"k\": 2}".into())]);
    }

    #[test]
    fn recovers_from_a_truncated_element() {
        let text = "[\n  {\n    \"auditID\": \"a\",\n    \"verb\": \n  {\n    \"auditID\": \"b\"\n  },\n  {\n    \"auditID\": \"c\"\n  }\n]\n";
        let got = split(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, 2);
        assert!(got[1].1.contains("\"b\"") && got[2].1.contains("\"c\""), "{got:?}");
        // A string cut by a newline.
        let text = "[\n  {\"a\": \"unterminated\n  },\n  {\"b\": 1}\n]";
        let got = split(text);
        assert!(got.iter().any(|(_, t)| t == "{\"b\": 1}"), "{got:?}");
    }

    #[test]
    fn chunked_scanning_matches_one_pass() {
        let text = "[\n  {\"a\": \"x\\\"y\"},\n  {\"b\": 2},\n  {\"c\": 3}\n]\n";
        for cut in 1..text.len() {
            let mut sp = Splitter::new(1);
            let mut out = Vec::new();
            sp.scan(&text.as_bytes()[..cut], &mut out);
            sp.scan(text.as_bytes(), &mut out);
            sp.finish_input(text.len(), &mut out);
            let got: Vec<&str> = out.iter().map(|s| text[s.start..s.end].trim()).collect();
            assert_eq!(got, ["{\"a\": \"x\\\"y\"}", "{\"b\": 2}", "{\"c\": 3}"], "cut at {cut}");
        }
    }
}
