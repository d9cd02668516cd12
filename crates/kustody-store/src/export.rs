//! Stored events as a byte stream of JSON Lines, oldest first: how `hunt --store` and
//! `timeline --store` read the store through hunt's own reader and pipeline (a retro-hunt is a
//! hunt whose input is the store).

use std::io::Read;

use crate::Store;

/// Reads stored events page by page and yields each one's JSON text and a newline.
pub struct ExportLines<S: Store> {
    store: S,
    after: i64,
    since_ns: Option<i64>,
    until_ns: Option<i64>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    /// Events yielded so far.
    pub events: u64,
}

/// Events read from the store per page.
const PAGE: usize = 4096;

impl<S: Store> ExportLines<S> {
    /// Events with a time in `[since, until)` (events without a time are kept only when no
    /// bound is given), in the order they were stored.
    pub fn new(store: S, since_ns: Option<i64>, until_ns: Option<i64>) -> Self {
        ExportLines { store, after: 0, since_ns, until_ns, buf: Vec::new(), pos: 0, done: false, events: 0 }
    }

    fn refill(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        self.pos = 0;
        while self.buf.is_empty() && !self.done {
            let page = self.store.events_after(self.after, PAGE).map_err(std::io::Error::other)?;
            if page.len() < PAGE {
                self.done = true;
            }
            for e in page {
                self.after = e.id;
                let keep = match e.time_ns {
                    None => self.since_ns.is_none() && self.until_ns.is_none(),
                    Some(t) => self.since_ns.is_none_or(|s| t >= s) && self.until_ns.is_none_or(|u| t < u),
                };
                if keep {
                    self.buf.extend_from_slice(e.raw.as_bytes());
                    self.buf.push(b'\n');
                    self.events += 1;
                }
            }
        }
        Ok(())
    }
}

impl<S: Store> Read for ExportLines<S> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}
