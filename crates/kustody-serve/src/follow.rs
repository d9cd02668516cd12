//! Sources that are not HTTP: followed audit log files and `--replay` files.
//!
//! A followed file is read from the offset stored for it, whole lines at a time, and the offset
//! moves only after the writer committed those lines, so a restart resumes without losing or
//! (thanks to de-duplication on auditID and stage) doubling events. Rotation is noticed by the
//! path's device and inode changing: the old file is read to its end first. A file that shrank
//! (copytruncate) is read again from the start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kustody_store::{FileOffset, Origin, Store, StoreError};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::payload;
use crate::writer::Job;

/// Bytes read from a followed file per batch (whole lines only).
const READ_BYTES: usize = 4 << 20;

pub struct Follower {
    pub path: PathBuf,
    /// A reader: where a previous run stopped.
    pub store: Box<dyn Store>,
    /// The writer thread, which stores the read offsets (the one writer of the store).
    pub writes: SyncSender<crate::writer::Write>,
    pub jobs: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    pub max_event_bytes: usize,
    pub poll: Duration,
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
    line: u64,
}

impl Follower {
    pub fn run(mut self) {
        let key = self.path.display().to_string();
        let mut current: Option<Open> = None;
        let stored = self.store.file_offset(&key).ok().flatten();
        while !self.stop.load(Relaxed) {
            let meta = std::fs::metadata(&self.path).ok();
            match (&mut current, meta) {
                (None, Some(m)) => {
                    // First open: resume where the store says, in this file or a rotated one.
                    if let Some(s) = stored.as_ref().filter(|s| (s.dev, s.ino) != (m.dev(), m.ino())) {
                        if let Some(old) = rotated_sibling(&self.path, s.dev, s.ino) {
                            if let Ok(f) = File::open(&old) {
                                let mut o = Open { file: f, dev: s.dev, ino: s.ino, offset: s.offset, line: s.line };
                                let _ = o.file.seek(SeekFrom::Start(o.offset));
                                tracing::info!(file = %old.display(), "reading the rest of a rotated audit log");
                                self.drain(&mut o, &key);
                            }
                        }
                    }
                    if let Ok(mut f) = File::open(&self.path) {
                        let (offset, line) = match stored.as_ref() {
                            Some(s) if (s.dev, s.ino) == (m.dev(), m.ino()) && s.offset <= m.len() => {
                                (s.offset, s.line)
                            }
                            _ => (0, 1),
                        };
                        let _ = f.seek(SeekFrom::Start(offset));
                        current = Some(Open { file: f, dev: m.dev(), ino: m.ino(), offset, line });
                    }
                }
                (Some(o), Some(m)) => {
                    if (m.dev(), m.ino()) != (o.dev, o.ino) {
                        // Rotated: finish the old file, then start the new one.
                        self.drain(o, &key);
                        current = None;
                        continue;
                    }
                    if m.len() < o.offset {
                        tracing::warn!(file = %self.path.display(), "audit log shrank (truncated): reading it from the start");
                        o.offset = 0;
                        o.line = 1;
                        let _ = o.file.seek(SeekFrom::Start(0));
                    }
                    if m.len() > o.offset {
                        self.drain(o, &key);
                        continue;
                    }
                }
                (_, None) => {}
            }
            std::thread::sleep(self.poll);
        }
    }

    /// Reads whole lines to the end of the file, committing each batch before moving on.
    fn drain(&mut self, o: &mut Open, key: &str) {
        let mut carry: Vec<u8> = Vec::new();
        loop {
            if self.stop.load(Relaxed) {
                return;
            }
            let mut buf = vec![0u8; READ_BYTES];
            let n = match o.file.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            carry.extend_from_slice(&buf);
            let Some(end) = carry.iter().rposition(|b| *b == b'\n') else {
                if carry.len() > self.max_event_bytes + 1 {
                    // A line longer than any event may be: skip it, counted.
                    self.metrics.rejected_events.fetch_add(1, Relaxed);
                    o.offset += carry.len() as u64;
                    carry.clear();
                }
                continue;
            };
            let rest = carry.split_off(end + 1);
            let lines = std::mem::replace(&mut carry, rest);
            let consumed = lines.len() as u64;
            let newlines = lines.iter().filter(|b| **b == b'\n').count() as u64;
            // shared with the parser, not copied: the bad lines are cut from it below
            let lines = hyper::body::Bytes::from(lines);
            let parsed = payload::parse(key, lines.clone(), self.max_event_bytes);
            self.metrics.received_file.fetch_add(parsed.rows.len() as u64, Relaxed);
            self.metrics.rejected_events.fetch_add(parsed.rejected.len() as u64, Relaxed);
            for r in parsed.rejected.iter().take(3) {
                tracing::warn!(file = key, line = (o.line + r.line).saturating_sub(1), reason = %r.reason, "bad audit record");
            }
            // kept with the offset, in the writer's order after the events: a crash between
            // reads the lines again, and a bad record is kept once
            let bad =
                payload::bad_lines(&format!("file:{key}"), &lines, &parsed.rejected, o.line, crate::writer::now_ns());
            if !parsed.rows.is_empty() && !commit(&self.jobs, parsed.rows, Origin::File, &self.stop) {
                return;
            }
            o.offset += consumed;
            o.line += newlines;
            let off = FileOffset { path: key.to_owned(), dev: o.dev, ino: o.ino, offset: o.offset, line: o.line };
            let task: crate::writer::StoreTask = Box::new(move |s: &mut dyn Store| {
                if let Err(e) = if bad.is_empty() { Ok(0) } else { s.append_bad_records(&bad) } {
                    tracing::warn!(error = %e, file = off.path, "cannot keep the bad records; the offset stays");
                    return;
                }
                if let Err(e) = s.set_file_offset(&off) {
                    tracing::warn!(error = %e, file = off.path, "cannot store the read offset");
                }
            });
            if self.writes.send(crate::writer::Write::Run(task)).is_err() {
                return;
            }
        }
    }
}

/// Hands rows to the writer and waits for the commit, retrying while the store is full.
/// `false` when the server is stopping.
pub fn commit(
    jobs: &SyncSender<Job>,
    rows: Vec<kustody_store::EventRow<'static>>,
    origin: Origin,
    stop: &AtomicBool,
) -> bool {
    let mut rows = Some(rows);
    let mut wait = Duration::from_millis(200);
    loop {
        let Some(batch) = rows.take() else { return true };
        let (tx, rx) = oneshot::channel();
        let keep = batch.clone();
        if jobs.send(Job::Events { rows: batch, origin, received: Instant::now(), reply: tx }).is_err() {
            return false;
        }
        match rx.blocking_recv() {
            Ok(Ok(_)) => return true,
            Ok(Err(StoreError::Full(_) | StoreError::Busy(_))) | Err(_) => {
                if stop.load(Relaxed) {
                    return false;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
                rows = Some(keep);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot store events from a file; retrying");
                std::thread::sleep(Duration::from_secs(5));
                rows = Some(keep);
            }
        }
    }
}

/// A file next to `path` (same directory, name starting with its name) with this device and
/// inode: where the log we were reading went when it was rotated.
fn rotated_sibling(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = path.file_name()?.to_string_lossy().into_owned();
    let prefix = stem.rsplit_once('.').map_or(stem.as_str(), |(s, _)| s).to_owned();
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            && std::fs::metadata(p).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// Feeds files through the live path once (`--replay`): hunt's pipeline parses them in
/// parallel, and the rows reach the writer in file order, in batches of 400 like the webhook's.
pub fn replay(
    files: Vec<PathBuf>,
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    max_event_bytes: usize,
) {
    let inputs: Vec<kustody_ingest::InputFile> =
        files.iter().map(|p| kustody_ingest::InputFile::Path(p.clone())).collect();
    let opts = kustody_ingest::ReadOptions { max_record_bytes: max_event_bytes, ..Default::default() };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let (mut total, mut bad) = (0u64, 0u64);
    let mut rows: Vec<kustody_store::EventRow<'static>> = Vec::with_capacity(800);
    let result = kustody_pipeline::run(
        &inputs,
        &opts,
        threads,
        || {
            |chunk: &kustody_ingest::Chunk| {
                let (mut rows, mut bad) = (Vec::new(), 0u64);
                chunk.records(|rec| match rec {
                    Err(_) => bad += 1,
                    Ok(mut rec) => match rec.event() {
                        Err(_) => bad += 1,
                        Ok(ev) => rows.push(payload::owned(kustody_store::EventRow::of(&ev))),
                    },
                });
                (rows, bad)
            }
        },
        |item| {
            match item {
                kustody_pipeline::Item::Unreadable(e) => tracing::error!(error = %e, "cannot replay"),
                kustody_pipeline::Item::Done((more, b)) => {
                    bad += b;
                    rows.extend(more);
                    while rows.len() >= 400 {
                        let rest = rows.split_off(400);
                        let batch = std::mem::replace(&mut rows, rest);
                        total += batch.len() as u64;
                        metrics.received_replay.fetch_add(batch.len() as u64, Relaxed);
                        if !commit(&jobs, batch, Origin::Replay, &stop) {
                            return Err(());
                        }
                    }
                }
            }
            Ok(())
        },
    );
    if result.is_err() {
        return;
    }
    if !rows.is_empty() {
        total += rows.len() as u64;
        metrics.received_replay.fetch_add(rows.len() as u64, Relaxed);
        if !commit(&jobs, rows, Origin::Replay, &stop) {
            return;
        }
    }
    metrics.rejected_events.fetch_add(bad, Relaxed);
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    tracing::info!(files = %names.join(", "), events = total, bad_records = bad, "replay finished");
    eprintln!("kustody serve: replayed {} ({total} events, {bad} bad records)", names.join(", "));
}
