//! The collector's output framing: sections introduced by a marker line that carries a per-run
//! random nonce, so file contents cannot be mistaken for structure unless they contain the nonce.
//!
//! ```text
//! \n@@K<nonce> <rc> <tag> [<arg>]\n<body bytes>\n@@K<nonce> <rc> <tag> ...
//! ```
//!
//! `<rc>` is the exit status of the command that produced the *previous* section's body (the
//! shell's `$?` when the marker is printed). A body is exact: the `\n` before a marker belongs to
//! the marker. Headers are reported as soon as their line is complete, bodies as they stream, so
//! a caller can react to a phase marker before the stream goes on.

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes before the first marker (a shell's banner; normally nothing).
    Preamble(Vec<u8>),
    /// A new section starts; `prev_rc` closes the previous one.
    Start { tag: String, arg: String, prev_rc: Option<i32> },
    /// Part of the current section's body.
    Data(Vec<u8>),
}

/// A header line longer than this is not a header (someone printed our marker).
const MAX_HEADER: usize = 4096;

/// Incremental parser; feed it chunks in any size.
#[derive(Debug)]
pub struct Deframer {
    /// `\n@@K<nonce> `
    marker: Vec<u8>,
    buf: Vec<u8>,
    started: bool,
    /// inside a header line (after a marker, before its `\n`)
    in_header: bool,
    /// malformed headers seen (reported, then treated as body)
    pub malformed: u64,
}

impl Deframer {
    pub fn new(nonce: &str) -> Deframer {
        Deframer {
            marker: format!("\n@@K{nonce} ").into_bytes(),
            buf: Vec::new(),
            started: false,
            in_header: false,
            malformed: 0,
        }
    }

    /// Parse what `data` completes.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        self.buf.extend_from_slice(data);
        self.drain(out, false);
    }

    /// End of stream: everything left is body.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        self.drain(out, true);
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            out.push(if self.started { Frame::Data(rest) } else { Frame::Preamble(rest) });
        }
    }

    fn emit_body(&mut self, n: usize, out: &mut Vec<Frame>) {
        if n == 0 {
            return;
        }
        let body: Vec<u8> = self.buf.drain(..n).collect();
        out.push(if self.started { Frame::Data(body) } else { Frame::Preamble(body) });
    }

    fn drain(&mut self, out: &mut Vec<Frame>, eof: bool) {
        loop {
            if self.in_header {
                let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                    if self.buf.len() > MAX_HEADER || eof {
                        self.malformed += 1;
                        self.in_header = false;
                        continue;
                    }
                    return;
                };
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(line.get(..nl).unwrap_or_default()).into_owned();
                let mut parts = text.splitn(3, ' ');
                let rc = parts.next().unwrap_or_default();
                let tag = parts.next().unwrap_or_default().to_owned();
                let arg = parts.next().unwrap_or_default().to_owned();
                if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    self.malformed += 1;
                }
                self.started = true;
                self.in_header = false;
                out.push(Frame::Start { tag, arg, prev_rc: rc.parse().ok() });
                continue;
            }
            match memchr::memmem::find(&self.buf, &self.marker) {
                Some(at) => {
                    self.emit_body(at, out);
                    self.buf.drain(..self.marker.len());
                    self.in_header = true;
                }
                None => {
                    // keep what could be the start of a marker
                    let keep = if eof { 0 } else { self.marker.len().saturating_sub(1) };
                    let n = self.buf.len().saturating_sub(keep);
                    self.emit_body(n, out);
                    return;
                }
            }
        }
    }
}

/// A complete section, assembled by [`Sections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub tag: String,
    pub arg: String,
    pub body: Vec<u8>,
    /// Body bytes beyond the cap, dropped.
    pub dropped: u64,
    /// Exit status of the command that wrote the body; `None` for the last section of a stream
    /// that ended without a closing marker.
    pub rc: Option<i32>,
}

/// Assembles frames into sections with a per-section size cap.
#[derive(Debug)]
pub struct Sections {
    pub deframer: Deframer,
    current: Option<Section>,
    cap: fn(&str) -> usize,
    pub preamble: Vec<u8>,
}

impl Sections {
    pub fn new(nonce: &str, cap: fn(&str) -> usize) -> Sections {
        Sections { deframer: Deframer::new(nonce), current: None, cap, preamble: Vec::new() }
    }

    /// Feed bytes; returns the sections they complete, and the header of a section just started
    /// (so a caller can act on phase markers at once).
    pub fn push(&mut self, data: &[u8]) -> (Vec<Section>, Vec<String>) {
        let mut frames = Vec::new();
        self.deframer.push(data, &mut frames);
        self.apply(frames)
    }

    pub fn finish(&mut self) -> Vec<Section> {
        let mut frames = Vec::new();
        self.deframer.finish(&mut frames);
        let (mut done, _) = self.apply(frames);
        if let Some(s) = self.current.take() {
            done.push(s);
        }
        done
    }

    fn apply(&mut self, frames: Vec<Frame>) -> (Vec<Section>, Vec<String>) {
        let mut done = Vec::new();
        let mut started = Vec::new();
        for f in frames {
            match f {
                Frame::Preamble(b) => {
                    let room = (64 * 1024usize).saturating_sub(self.preamble.len());
                    self.preamble.extend(b.into_iter().take(room));
                }
                Frame::Start { tag, arg, prev_rc } => {
                    if let Some(mut s) = self.current.take() {
                        s.rc = prev_rc;
                        done.push(s);
                    }
                    started.push(tag.clone());
                    self.current = Some(Section { tag, arg, body: Vec::new(), dropped: 0, rc: None });
                }
                Frame::Data(b) => {
                    if let Some(s) = self.current.as_mut() {
                        let cap = (self.cap)(&s.tag);
                        let room = cap.saturating_sub(s.body.len());
                        let take = room.min(b.len());
                        s.body.extend_from_slice(b.get(..take).unwrap_or_default());
                        s.dropped += (b.len() - take) as u64;
                    }
                }
            }
        }
        (done, started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(nonce: &str, input: &[u8], chunk: usize) -> Vec<Section> {
        let mut s = Sections::new(nonce, |_| 1 << 20);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            out.extend(s.push(c).0);
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn sections_are_exact_in_any_chunking() {
        let input =
            b"\n@@Kab 0 begin 1\n\n@@Kab 0 stat 12\n12 (sh) S 1\n\n@@Kab 0 cmdline 12\nsh\0-c\0x\n@@Kab 1 end 1\n";
        for chunk in [1, 2, 3, 7, 100] {
            let s = all("ab", input, chunk);
            assert_eq!(s.len(), 4, "chunk {chunk}");
            assert_eq!(s[1].tag, "stat");
            assert_eq!(s[1].arg, "12");
            assert_eq!(s[1].body, b"12 (sh) S 1\n");
            assert_eq!(s[1].rc, Some(0));
            assert_eq!(s[2].body, b"sh\0-c\0x");
            assert_eq!(s[2].rc, Some(1));
            assert_eq!(s[3].tag, "end");
            assert_eq!(s[3].rc, None);
        }
    }

    #[test]
    fn other_nonces_and_partial_markers_are_body() {
        let input = b"\n@@Kab 0 f x\nhello\n@@Kzz 0 fake\n@@K\n@@Ka";
        let s = all("ab", input, 3);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].body, b"hello\n@@Kzz 0 fake\n@@K\n@@Ka");
    }

    #[test]
    fn cap_drops_and_counts() {
        let mut s = Sections::new("ab", |_| 4);
        let (done, started) = s.push(b"\n@@Kab 0 f\n0123456789");
        assert!(done.is_empty());
        assert_eq!(started, vec!["f".to_owned()]);
        let v = s.finish();
        assert_eq!(v[0].body, b"0123");
        assert_eq!(v[0].dropped, 6);
    }

    #[test]
    fn preamble_and_garbage_do_not_panic() {
        let s = all("ab", b"banner\n\n@@Kab \n\n@@Kab x y z w\nq", 5);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].tag, "y");
        assert_eq!(s[1].arg, "z w");
    }
}
