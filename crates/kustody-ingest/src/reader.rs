//! Sequential reading: decompression, layout sniffing and cutting into chunks.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use kustody_model::SourceFormat;

use crate::chunk::{BadRecord, Chunk, ChunkBody, Layout};
use crate::{IngestError, InputFile};

/// Chunk buffers handed back by workers for the reader to fill again. Allocating a fresh
/// megabyte per chunk made the kernel zero new pages for every chunk: a quarter of the reader
/// thread's time in the benchmark profile.
#[derive(Debug, Clone, Default)]
pub struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Keeps at most this many spare buffers.
    const MAX: usize = 32;
    /// Larger buffers are freed, not kept.
    const KEEP_MAX_BYTES: usize = 4 << 20;

    /// An empty buffer with at least `capacity` bytes reserved.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.0.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        v.clear();
        v.reserve(capacity);
        v
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        // Only ordinary chunk buffers are worth keeping; one that held a whole document or a
        // very long line would pin its memory for the rest of the run.
        if buf.capacity() > Self::KEEP_MAX_BYTES {
            return;
        }
        if let Ok(mut p) = self.0.lock() {
            if p.len() < Self::MAX && buf.capacity() > 0 {
                p.push(buf);
            }
        }
    }
}

/// The record format a user can force with `--input-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// Detect per record (the default).
    #[default]
    Auto,
    /// Native Events only: wrappers are not unwrapped (and then fail as non-Events).
    Native,
    /// EKS CloudWatch events or S3 export lines only.
    Eks,
    /// GKE LogEntries only.
    Gke,
    /// AKS diagnostic records only.
    Aks,
}

impl InputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Native => "native",
            InputFormat::Eks => "eks",
            InputFormat::Gke => "gke",
            InputFormat::Aks => "aks",
        }
    }

    /// Whether a record detected as `f` is acceptable.
    pub fn accepts(self, f: SourceFormat) -> bool {
        match self {
            InputFormat::Auto => true,
            InputFormat::Native => matches!(f, SourceFormat::Native | SourceFormat::NativeYaml),
            InputFormat::Eks => matches!(f, SourceFormat::Eks | SourceFormat::EksS3),
            InputFormat::Gke => f == SourceFormat::Gke,
            InputFormat::Aks => f == SourceFormat::Aks,
        }
    }
}

/// Reading limits and behaviour.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// A record (one line, or one event inside a document) larger than this is a bad record.
    pub max_record_bytes: usize,
    /// A whole-document file (EventList, array, pretty-printed) larger than this is refused.
    pub max_document_bytes: usize,
    /// Target size of a JSON Lines chunk handed to a worker.
    pub chunk_bytes: usize,
    /// Which record formats to accept (`--input-format`); `Auto` detects per record.
    pub input_format: InputFormat,
    /// Where chunk buffers come from; give processed chunks' buffers back with
    /// [`crate::Chunk::into_buffer`].
    pub pool: BufferPool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_record_bytes: 16 << 20,
            max_document_bytes: 1 << 30,
            chunk_bytes: 1 << 20,
            pool: BufferPool::default(),
            input_format: InputFormat::Auto,
        }
    }
}

/// Reads one input and yields [`Chunk`]s. Not thread-safe by design: one reader per file, in
/// order; the chunks go to parallel workers.
pub struct ChunkReader {
    name: Arc<str>,
    src: Box<dyn BufRead + Send>,
    opts: ReadOptions,
    layout: Option<Layout>,
    carry: Vec<u8>,
    next_line: u64,
    offset: u64,
    eof: bool,
    started: bool,
    /// Bytes at the start of `carry` known to hold no newline.
    scanned: usize,
    /// Record boundaries of a streaming JSON document.
    splitter: Option<crate::docsplit::Splitter>,
    /// Bytes read from the underlying (possibly compressed) source, for throughput reporting.
    pub compressed: bool,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Buffer of the plain-file reader: reads into the chunk buffers start at 8 KiB (and grow), so
/// every one of them bypasses it.
const DIRECT_READ: usize = 8 << 10;
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl ChunkReader {
    /// Opens a file (or stdin), detecting gzip by its magic bytes rather than its name.
    pub fn open(input: &InputFile, opts: ReadOptions) -> Result<ChunkReader, IngestError> {
        let name: Arc<str> = input.display().into();
        let raw: Box<dyn Read + Send> = match input {
            InputFile::Stdin => Box::new(std::io::stdin()),
            InputFile::Path(p) => {
                Box::new(std::fs::File::open(p).map_err(|e| IngestError::Io { path: name.to_string(), source: e })?)
            }
        };
        Self::from_reader(name, raw, opts).map_err(|e| IngestError::Io { path: input.display(), source: e })
    }

    /// Wraps any byte stream (gzip detected by magic bytes).
    pub fn from_reader(name: Arc<str>, raw: Box<dyn Read + Send>, opts: ReadOptions) -> std::io::Result<ChunkReader> {
        let mut buffered = BufReader::with_capacity(256 << 10, raw);
        let head = buffered.fill_buf()?;
        let compressed = head.starts_with(&GZIP_MAGIC);
        let mut carry = Vec::new();
        let src: Box<dyn BufRead + Send> = if compressed {
            Box::new(BufReader::with_capacity(256 << 10, flate2::bufread::MultiGzDecoder::new(buffered)))
        } else {
            // Plain input is read straight into the chunk buffers: a BufReader passes a read of
            // at least its capacity through to the file when it holds nothing, so with a small
            // one the bytes no longer go through an intermediate buffer first (a copy of every
            // byte on the reader thread). What was read to look for gzip starts the carry.
            carry.extend_from_slice(head);
            Box::new(BufReader::with_capacity(DIRECT_READ, buffered.into_inner()))
        };
        Ok(ChunkReader {
            name,
            src,
            opts,
            layout: None,
            carry,
            next_line: 1,
            offset: 0,
            eof: false,
            started: false,
            scanned: 0,
            splitter: None,
            compressed,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The next chunk, or `None` at the end of the input. I/O errors in the middle of a stream
    /// (a truncated gzip member, a read error) end the input with a final chunk carrying a
    /// [`BadRecord`] at the current line; they never abort the whole run.
    pub fn next_chunk(&mut self) -> Option<Chunk> {
        if self.eof && self.carry.is_empty() {
            return None;
        }
        if !self.started {
            self.started = true;
            // Sniff from up to 64 KiB: licence headers and comments can be long.
            if let Err(e) = self.fill(64 << 10) {
                return Some(self.io_failure(e));
            }
            if self.carry.starts_with(BOM) {
                self.carry.drain(..BOM.len());
                self.offset += BOM.len() as u64;
            }
            self.layout = Some(sniff(&self.carry));
        }
        match self.layout {
            Some(layout @ (Layout::Document | Layout::Yaml)) => self.document_chunk(layout),
            _ => self.lines_chunk(),
        }
    }

    /// Reads until `carry` holds `want` bytes or the input ends, straight into `carry`'s spare
    /// capacity (no intermediate buffer copy once the sniffing buffer is drained).
    fn fill(&mut self, want: usize) -> std::io::Result<()> {
        while !self.eof && self.carry.len() < want {
            // Grow in steps: `want` can be the 1 GiB document limit, and reserving it up front
            // would allocate (and, without overcommit, fail) before a byte is read.
            let need = (want - self.carry.len()).min(self.opts.chunk_bytes.max(64 << 10));
            self.carry.reserve(need);
            let n = (&mut self.src).take(need as u64).read_to_end(&mut self.carry)?;
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn io_failure(&mut self, e: std::io::Error) -> Chunk {
        self.eof = true;
        let reason = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "input ends early (truncated gzip stream?)".to_owned(),
            _ => format!("read error: {e}"),
        };
        // Whatever complete lines were read before the failure are still evidence; the partial
        // last line is part of the failure, reported at its own line.
        if self.layout.is_none() {
            if self.carry.starts_with(BOM) {
                self.carry.drain(..BOM.len());
                self.offset += BOM.len() as u64;
            }
            self.layout = Some(sniff(&self.carry));
        }
        if self.layout == Some(Layout::Document) {
            // Keep every complete record before the failure; the partial one is reported.
            self.eof = true;
            let line = self.splitter.as_ref().map_or(self.next_line, crate::docsplit::Splitter::line);
            let offset = self.offset;
            let mut chunk = self
                .document_chunk(Layout::Document)
                .unwrap_or_else(|| self.make_chunk(ChunkBody::Lines(Vec::new()), Layout::Lines));
            chunk.bad.push(BadRecord { file: self.name.clone(), line, offset, reason });
            return chunk;
        }
        if let Some(layout @ Layout::Yaml) = self.layout {
            // Hand the partial document to the parser: it reports where the input ends and
            // keeps every complete item before that point.
            let body = std::mem::take(&mut self.carry);
            let (line, offset) = (self.next_line, self.offset);
            let mut chunk = self.make_chunk(ChunkBody::Yaml(body), layout);
            chunk.bad.push(BadRecord { file: self.name.clone(), line, offset, reason });
            return chunk;
        }
        let mut carry = std::mem::take(&mut self.carry);
        let keep =
            if self.layout == Some(Layout::Lines) { memchr::memrchr(b'\n', &carry).map_or(0, |p| p + 1) } else { 0 };
        let dropped = carry.len() - keep;
        carry.truncate(keep);
        let mut chunk = self.make_chunk(ChunkBody::Lines(carry), Layout::Lines);
        let bad = BadRecord {
            file: self.name.clone(),
            line: self.next_line,
            offset: self.offset,
            reason: format!("{reason}; {dropped} bytes of an incomplete record dropped"),
        };
        self.offset += dropped as u64;
        chunk.bad.push(bad);
        chunk
    }

    fn make_chunk(&mut self, body: ChunkBody, layout: Layout) -> Chunk {
        let bytes = match &body {
            ChunkBody::Lines(b) | ChunkBody::Yaml(b) | ChunkBody::Spans(b, _) => b,
        };
        let lines = memchr::memchr_iter(b'\n', bytes).count() as u64;
        let len = bytes.len() as u64;
        let chunk = Chunk {
            file: self.name.clone(),
            format: SourceFormat::Native,
            layout,
            body,
            first_line: self.next_line,
            base_offset: self.offset,
            max_record_bytes: self.opts.max_record_bytes,
            input_format: self.opts.input_format,
            bad: Vec::new(),
        };
        self.next_line += lines;
        self.offset += len;
        chunk
    }

    fn lines_chunk(&mut self) -> Option<Chunk> {
        loop {
            if let Err(e) = self.fill(self.opts.chunk_bytes) {
                return Some(self.io_failure(e));
            }
            if self.eof {
                if self.carry.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut self.carry);
                return Some(self.make_chunk(ChunkBody::Lines(rest), Layout::Lines));
            }
            let from = self.scanned.min(self.carry.len());
            let found = memchr::memrchr(b'\n', self.carry.get(from..).unwrap_or_default()).map(|p| p + from);
            if let Some(pos) = found {
                self.scanned = 0;
                let mut next = self.opts.pool.take(self.opts.chunk_bytes + (64 << 10));
                next.extend_from_slice(self.carry.get(pos + 1..).unwrap_or_default());
                self.carry.truncate(pos + 1);
                let body = std::mem::replace(&mut self.carry, next);
                return Some(self.make_chunk(ChunkBody::Lines(body), Layout::Lines));
            }
            // No newline in what we have: the next pass scans only the new bytes.
            self.scanned = self.carry.len();
            if self.carry.len() > self.opts.max_record_bytes {
                self.scanned = 0;
                return Some(self.skip_oversized_line());
            }
            // A long line: read on until it ends.
            let want = self.carry.len() + self.opts.chunk_bytes;
            if let Err(e) = self.fill(want) {
                return Some(self.io_failure(e));
            }
        }
    }

    /// Drops the rest of a line that is over the size limit without buffering it.
    fn skip_oversized_line(&mut self) -> Chunk {
        let line = self.next_line;
        let offset = self.offset;
        let mut skipped = self.carry.len() as u64;
        self.carry.clear();
        loop {
            let buf = match self.src.fill_buf() {
                Ok(b) => b,
                Err(e) => return self.io_failure(e),
            };
            if buf.is_empty() {
                self.eof = true;
                break;
            }
            if let Some(pos) = memchr::memchr(b'\n', buf) {
                skipped += pos as u64 + 1;
                self.src.consume(pos + 1);
                break;
            }
            let n = buf.len();
            skipped += n as u64;
            self.src.consume(n);
        }
        self.offset += skipped;
        self.next_line += 1;
        let mut chunk = self.make_chunk(ChunkBody::Lines(Vec::new()), Layout::Lines);
        chunk.bad.push(BadRecord {
            file: self.name.clone(),
            line,
            offset,
            reason: format!("record is {skipped} bytes, over the {} byte limit", self.opts.max_record_bytes),
        });
        chunk
    }

    fn document_chunk(&mut self, layout: Layout) -> Option<Chunk> {
        if layout == Layout::Yaml {
            return self.yaml_chunk();
        }
        // JSON documents stream: the splitter finds record boundaries, whole records go to the
        // workers in chunks of about `chunk_bytes`, and memory holds one chunk plus the record
        // being read.
        let mut spans = Vec::new();
        let splitter = self.splitter.get_or_insert_with(|| crate::docsplit::Splitter::new(self.next_line));
        splitter.scan(&self.carry, &mut spans);
        loop {
            let splitter = self.splitter.get_or_insert_with(|| crate::docsplit::Splitter::new(self.next_line));
            let done_bytes = spans.last().map_or(0, |s| s.end);
            if self.eof || done_bytes >= self.opts.chunk_bytes {
                if self.eof {
                    splitter.finish_input(self.carry.len(), &mut spans);
                }
                if spans.is_empty() {
                    self.carry.clear();
                    return None;
                }
                let cut = if self.eof { self.carry.len() } else { splitter.keep_from() };
                splitter.shift(cut);
                let mut next = self.opts.pool.take(self.opts.chunk_bytes + (64 << 10));
                next.extend_from_slice(self.carry.get(cut..).unwrap_or_default());
                self.carry.truncate(cut);
                let body = std::mem::replace(&mut self.carry, next);
                let offset = self.offset;
                self.offset += cut as u64;
                return Some(Chunk {
                    file: self.name.clone(),
                    format: SourceFormat::Native,
                    layout,
                    body: ChunkBody::Spans(body, spans),
                    first_line: 0,
                    base_offset: offset,
                    max_record_bytes: self.opts.max_record_bytes,
                    input_format: self.opts.input_format,
                    bad: Vec::new(),
                });
            }
            if splitter.open_record_len().is_some_and(|n| n > self.opts.max_record_bytes) {
                // Keep scanning the oversized record to find its end, but not its bytes.
                if let Some((from, to)) = splitter.drop_record_bytes() {
                    self.carry.drain(from..to);
                }
            }
            let want = self.carry.len() + self.opts.chunk_bytes;
            if let Err(e) = self.fill(want) {
                let line = self.splitter.as_ref().map_or(self.next_line, crate::docsplit::Splitter::line);
                let mut chunk = self.io_failure(e);
                if let Some(b) = chunk.bad.last_mut() {
                    b.line = line;
                }
                return Some(chunk);
            }
            if let Some(splitter) = self.splitter.as_mut() {
                splitter.scan(&self.carry, &mut spans);
            }
        }
    }

    /// YAML documents are read whole (they are small: hand-exported events), up to the limit.
    fn yaml_chunk(&mut self) -> Option<Chunk> {
        let limit = self.opts.max_document_bytes;
        if let Err(e) = self.fill(limit.saturating_add(1)) {
            return Some(self.io_failure(e));
        }
        if self.carry.len() > limit {
            let line = self.next_line;
            let offset = self.offset;
            self.carry.clear();
            self.eof = true;
            let mut chunk = self.make_chunk(ChunkBody::Yaml(Vec::new()), Layout::Yaml);
            chunk.bad.push(BadRecord {
                file: self.name.clone(),
                line,
                offset,
                reason: format!("YAML input is over the {limit} byte limit"),
            });
            return Some(chunk);
        }
        self.eof = true;
        let body = std::mem::take(&mut self.carry);
        Some(self.make_chunk(ChunkBody::Yaml(body), Layout::Yaml))
    }
}

/// Decides between JSON Lines and a whole document from the first bytes of the input.
///
/// JSON Lines unless the first non-empty line opens a value it does not close (`{`, `[`,
/// `[{`, or a line ending in `{`/`[`/`,`) and the next line is indented: the shape of a
/// pretty-printed Event, EventList or array. A corrupt first line of a JSON Lines file therefore
/// still reads as JSON Lines, so one bad record cannot turn the rest of a file into one bad
/// document.
fn sniff(head: &[u8]) -> Layout {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.by_ref().map(trim).find(|l| !l.is_empty() && !l.starts_with(b"#"));
    let Some(first) = first else {
        return Layout::Lines;
    };
    if crate::yaml::looks_like_yaml(first) {
        return Layout::Yaml;
    }
    let opens = matches!(first, b"{" | b"[" | b"[{") || matches!(first.last(), Some(b'{' | b'[' | b','));
    // Pretty-printers indent the second line; a JSON Lines file whose first line is a broken
    // fragment goes on with an unindented `{`.
    let next_indented = lines.find(|l| !trim(l).is_empty()).is_some_and(|l| {
        matches!(l.first(), Some(b' ' | b'\t')) || matches!(trim(l), b"}" | b"]" | b"{" | b"[" | b"},")
    });
    if opens && next_indented {
        Layout::Document
    } else {
        Layout::Lines
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_layouts() {
        assert_eq!(sniff(b"{\"a\":1}\n{\"a\":2}\n"), Layout::Lines);
        assert_eq!(sniff(b"{\"a\":1\n{\"a\":2}\n"), Layout::Lines);
        assert_eq!(sniff(b"{\n  \"kind\": \"Event\"\n}\n"), Layout::Document);
        assert_eq!(sniff(b"[\n  {\"a\":1}\n]"), Layout::Document);
        assert_eq!(sniff(b"[{\"a\":1},{\"a\":2}]\n"), Layout::Lines);
        assert_eq!(sniff(b""), Layout::Lines);
        assert_eq!(sniff(b"# c\n\nkind: Event\napiVersion: audit.k8s.io/v1\n"), Layout::Yaml);
        assert_eq!(sniff(b"---\nkind: Event\n"), Layout::Yaml);
        assert_eq!(sniff(b"garbage\n{\"a\":1}\n"), Layout::Lines);
        assert_eq!(sniff(b"\"annotations\":{\"a\":\"b\"},\n{\"a\":1}\n"), Layout::Lines);
        assert_eq!(sniff(b"{\"a\":1,\n  \"b\":2}\n"), Layout::Document);
    }
}
