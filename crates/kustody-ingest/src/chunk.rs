//! Splitting chunks into records; runs on worker threads.

use std::sync::Arc;

use kustody_model::{Event, EventError, Parts, SourceFormat};

use crate::managed::Unwrapped;

/// How a file's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON value per line: an Event, an EventList or an array of Events.
    Lines,
    /// One or more (possibly pretty-printed) JSON documents: Events, EventLists or arrays.
    Document,
    /// YAML documents separated by `---`, each an Event, EventList or list of Events.
    Yaml,
}

#[derive(Debug)]
pub enum ChunkBody {
    Lines(Vec<u8>),
    /// A whole YAML input.
    Yaml(Vec<u8>),
    /// Records of a JSON document, as found by the document splitter.
    Spans(Vec<u8>, Vec<crate::docsplit::Span>),
}

/// A piece of one input holding whole records, with the position of its first byte.
#[derive(Debug)]
pub struct Chunk {
    pub file: Arc<str>,
    pub format: SourceFormat,
    pub layout: Layout,
    pub body: ChunkBody,
    /// 1-based line number of the chunk's first byte.
    pub first_line: u64,
    /// Offset of the chunk's first byte in the decompressed input.
    pub base_offset: u64,
    pub max_record_bytes: usize,
    /// The record formats accepted (`--input-format`).
    pub input_format: crate::InputFormat,
    /// Problems the reader found while cutting this chunk (oversized line, truncated stream).
    pub bad: Vec<BadRecord>,
}

/// One audit event's native JSON text, where its original record starts, and the format the
/// record was in (managed-cloud records are unwrapped or normalised to native JSON).
#[derive(Debug)]
pub struct Record<'a> {
    pub text: &'a str,
    pub line: u64,
    pub offset: u64,
    pub format: SourceFormat,
    /// The event's fields, when the converter that wrote `text` already holds them.
    pub parts: Option<Box<Parts<'a>>>,
}

impl<'a> Record<'a> {
    fn new(text: &'a str, line: u64, offset: u64, format: SourceFormat) -> Self {
        Record { text, line, offset, format, parts: None }
    }

    /// The audit event: built from the converter's fields when there are any (the first call),
    /// otherwise parsed from `text`.
    pub fn event(&mut self) -> Result<Event<'a>, EventError> {
        match self.parts.take() {
            Some(p) => Event::from_parts(self.text, *p),
            None => Event::parse(self.text),
        }
    }
}

/// A record that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub file: Arc<str>,
    pub line: u64,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

impl Chunk {
    /// Size of the chunk's bytes.
    pub fn len(&self) -> usize {
        match &self.body {
            ChunkBody::Lines(b) | ChunkBody::Yaml(b) | ChunkBody::Spans(b, _) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk's buffer, to give back to the reader's [`crate::BufferPool`].
    pub fn into_buffer(self) -> Vec<u8> {
        match self.body {
            ChunkBody::Lines(b) | ChunkBody::Yaml(b) | ChunkBody::Spans(b, _) => b,
        }
    }

    /// Calls `on` for every record in order: `Ok` with the event's JSON text, or `Err` with a
    /// bad record. Reader-level problems come first.
    pub fn records(&self, mut on: impl FnMut(Result<Record<'_>, BadRecord>)) {
        for bad in &self.bad {
            on(Err(bad.clone()));
        }
        match (&self.body, self.layout) {
            (ChunkBody::Lines(b), _) => self.lines(b, &mut on),
            (ChunkBody::Yaml(b), _) => self.yaml(b, &mut on),
            (ChunkBody::Spans(b, spans), _) => self.spans(b, spans, &mut on),
        }
    }

    fn bad(&self, line: u64, offset: u64, reason: impl Into<String>) -> BadRecord {
        BadRecord { file: self.file.clone(), line, offset, reason: reason.into() }
    }

    fn lines(&self, bytes: &[u8], on: &mut dyn FnMut(Result<Record<'_>, BadRecord>)) {
        let mut line_no = self.first_line;
        let mut start = 0usize;
        while start < bytes.len() {
            let end = memchr::memchr(b'\n', bytes.get(start..).unwrap_or_default()).map_or(bytes.len(), |p| start + p);
            let offset = self.base_offset + start as u64;
            let mut line = bytes.get(start..end).unwrap_or_default();
            line = line.strip_suffix(b"\r").unwrap_or(line);
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                if line.len() > self.max_record_bytes {
                    on(Err(self.bad(
                        line_no,
                        offset,
                        format!("record is {} bytes, over the {} byte limit", line.len(), self.max_record_bytes),
                    )));
                } else {
                    match std::str::from_utf8(line) {
                        // EKS S3 exports prefix each event with its timestamp.
                        Ok(text) => match crate::managed::strip_s3_prefix(text)
                            .filter(|_| self.input_format.accepts(SourceFormat::EksS3))
                        {
                            Some(event) => {
                                let at = offset + (text.len() - event.len()) as u64;
                                self.emit(event, line_no, at, SourceFormat::EksS3, on)
                            }
                            None => match crate::managed::decode_firehose(text) {
                                // A Kinesis/Firehose data record as delivered: base64 of gzip
                                // of a CloudWatch Logs subscription message.
                                Some(Ok(json)) => self.value(&json, line_no, offset, on),
                                Some(Err(reason)) => on(Err(self.bad(line_no, offset, reason.to_string()))),
                                None => self.value(text, line_no, offset, on),
                            },
                        },
                        Err(e) => {
                            on(Err(self.bad(line_no, offset, format!("invalid UTF-8 at byte {}", e.valid_up_to()))))
                        }
                    }
                }
            }
            line_no += 1;
            start = end + 1;
        }
    }

    /// Records of a streamed JSON document; each is checked and parsed on its own, so a broken
    /// record costs only itself.
    fn spans(&self, bytes: &[u8], spans: &[crate::docsplit::Span], on: &mut dyn FnMut(Result<Record<'_>, BadRecord>)) {
        for span in spans {
            let offset = self.base_offset + span.start as u64;
            if let Some(size) = span.oversize {
                on(Err(self.bad(
                    span.line,
                    offset,
                    format!("record is {size} bytes, over the {} byte limit", self.max_record_bytes),
                )));
                continue;
            }
            let raw = bytes.get(span.start..span.end).unwrap_or_default();
            match std::str::from_utf8(raw) {
                Ok(text) => self.value(text.trim(), span.line, offset, on),
                Err(e) => on(Err(self.bad(
                    span.line,
                    offset,
                    format!("invalid UTF-8 at byte {} of the record", e.valid_up_to()),
                ))),
            }
        }
    }

    /// A whole document as text, or a bad record at the first invalid UTF-8 byte.
    fn document_text<'b>(&self, bytes: &'b [u8], on: &mut dyn FnMut(Result<Record<'_>, BadRecord>)) -> Option<&'b str> {
        match std::str::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = e.valid_up_to();
                let line =
                    self.first_line + memchr::memchr_iter(b'\n', bytes.get(..at).unwrap_or_default()).count() as u64;
                on(Err(self.bad(
                    line,
                    self.base_offset + at as u64,
                    format!("invalid UTF-8 at byte {at} of the document"),
                )));
                None
            }
        }
    }

    fn yaml(&self, bytes: &[u8], on: &mut dyn FnMut(Result<Record<'_>, BadRecord>)) {
        let Some(text) = self.document_text(bytes, on) else {
            return;
        };
        for doc in crate::yaml::split_documents(text) {
            let line_of = |l: u64| self.first_line + doc.start_line - 1 + l.saturating_sub(1);
            let offset = self.base_offset + doc.offset as u64;
            match crate::yaml::events(doc.text) {
                Err(e) => on(Err(self.bad(line_of(e.line), offset, format!("invalid YAML: {}", e.message)))),
                Ok(events) => {
                    for ev in events {
                        self.emit(&ev.json, line_of(ev.line), offset, SourceFormat::NativeYaml, on);
                    }
                }
            }
        }
    }

    /// One top-level JSON value: an Event, an EventList, an array, a managed-cloud batch
    /// (`records`, `events`, `logEvents`) or a single wrapped record.
    fn value(&self, text: &str, line: u64, offset: u64, on: &mut dyn FnMut(Result<Record<'_>, BadRecord>)) {
        match crate::managed::unwrap(text) {
            Ok(Unwrapped::List(items)) => {
                let mut counter = LineCounter::new(text, line);
                for item in items {
                    let off = offset_in(text, item);
                    self.emit(item, counter.line_at(off), offset + off as u64, SourceFormat::Native, on);
                }
            }
            // Nothing but lists is unwrapped when the input is declared native.
            Ok(_) if self.input_format == crate::InputFormat::Native => {
                on(Ok(Record::new(text, line, offset, SourceFormat::Native)))
            }
            shape => self.deliver(text, shape, line, offset, SourceFormat::Native, on),
        }
    }

    /// One record: a native Event as it is, or a managed-cloud record unwrapped/normalised.
    fn emit(
        &self,
        text: &str,
        line: u64,
        offset: u64,
        native: SourceFormat,
        on: &mut dyn FnMut(Result<Record<'_>, BadRecord>),
    ) {
        if self.input_format == crate::InputFormat::Native {
            return on(Ok(Record::new(text, line, offset, native)));
        }
        self.deliver(text, crate::managed::unwrap(text), line, offset, native, on)
    }

    /// Hands on a record of the shape [`crate::managed::unwrap`] found, checked against
    /// `--input-format`.
    fn deliver(
        &self,
        text: &str,
        shape: Result<Unwrapped<'_>, crate::managed::ManagedError>,
        line: u64,
        offset: u64,
        native: SourceFormat,
        on: &mut dyn FnMut(Result<Record<'_>, BadRecord>),
    ) {
        let want = self.input_format;
        let wrong = |f: SourceFormat| format!("a {} record, but --input-format is {}", f.as_str(), want.as_str());
        match shape {
            // A list inside a list is not a record format; the event parser says why.
            Ok(Unwrapped::Native | Unwrapped::List(_)) if !want.accepts(native) => {
                on(Err(self.bad(line, offset, wrong(native))))
            }
            Ok(Unwrapped::Native | Unwrapped::List(_)) => on(Ok(Record::new(text, line, offset, native))),
            Ok(Unwrapped::One(_, format)) if !want.accepts(format) => on(Err(self.bad(line, offset, wrong(format)))),
            Ok(Unwrapped::One(event, format)) => on(Ok(Record::new(&event, line, offset, format))),
            Ok(Unwrapped::Gke(_, _)) if !want.accepts(SourceFormat::Gke) => {
                on(Err(self.bad(line, offset, wrong(SourceFormat::Gke))))
            }
            Ok(Unwrapped::Gke(event, parts)) => {
                on(Ok(Record { text: &event, line, offset, format: SourceFormat::Gke, parts: Some(parts) }))
            }
            Ok(Unwrapped::Skip(reason)) => on(Err(self.bad(line, offset, format!("skipped: {reason}")))),
            Err(reason) => on(Err(self.bad(line, offset, reason.to_string()))),
        }
    }
}

/// Byte offset of `inner` inside `outer` (both borrowed from the same buffer).
fn offset_in(outer: &str, inner: &str) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize).min(outer.len())
}

/// Turns increasing byte offsets into line numbers without rescanning from the start.
struct LineCounter<'a> {
    text: &'a str,
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str, first_line: u64) -> Self {
        LineCounter { text, pos: 0, line: first_line }
    }
    fn line_at(&mut self, off: usize) -> u64 {
        if off >= self.pos {
            let seg = self.text.as_bytes().get(self.pos..off).unwrap_or_default();
            self.line += memchr::memchr_iter(b'\n', seg).count() as u64;
            self.pos = off;
        }
        self.line
    }
}
