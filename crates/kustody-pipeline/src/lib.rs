//! The threaded pipeline `hunt` runs, as a library that `hunt`, retro-hunts over the store
//! (`hunt --store`) and `kustody serve --replay` share:
//!
//! ```text
//! inputs ──► reader thread: ChunkReader (I/O, gzip, layout, line numbers) ──► chunks
//!              (takes a window token per chunk)              │ bounded channel
//!                                                            ▼
//!            N worker threads: `work(&Chunk) -> R` (parse, evaluate, render)
//!                                                            │ bounded channel, tagged with
//!                                                            ▼ the chunk's sequence number
//!            the caller's thread: `collect(R)` in input order (returns a token per chunk)
//! ```
//!
//! At most `4 × threads` chunks are between the reader and the collector, so memory stays flat
//! whatever the input size and however uneven the chunks. Every channel end lives inside the
//! thread scope: when the collector stops early (an error, `--strict`, a closed pipe) the reader
//! and workers see disconnected channels and end.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use kustody_ingest::{Chunk, ChunkReader, ReadOptions};

/// Something the reader can open: a file, stdin, the store.
pub trait Input: Sync {
    /// A reader over the input, or why it cannot be opened (reported in order, as a result).
    fn open(&self, opts: &ReadOptions) -> Result<ChunkReader, String>;
}

/// A file or stdin, opened as `hunt` opens it (gzip detected by its magic bytes).
impl Input for kustody_ingest::InputFile {
    fn open(&self, opts: &ReadOptions) -> Result<ChunkReader, String> {
        ChunkReader::open(self, opts.clone()).map_err(|e| e.to_string())
    }
}

/// What a worker hands to the collector for one chunk.
pub enum Item<R> {
    /// The worker's result.
    Done(R),
    /// An input that could not be opened.
    Unreadable(String),
}

/// Reads every input in order through `threads` workers; calls `collect` with each chunk's
/// result in input order. `worker` makes each worker's state (scratch buffers) and its function.
/// Stops early when `collect` returns an error, and returns it.
pub fn run<I, R, E, W>(
    inputs: &[I],
    opts: &ReadOptions,
    threads: usize,
    worker: impl Fn() -> W + Sync,
    mut collect: impl FnMut(Item<R>) -> Result<(), E>,
) -> Result<(), E>
where
    I: Input,
    R: Send,
    W: FnMut(&Chunk) -> R,
{
    let threads = threads.max(1);
    let window = threads * 4;
    std::thread::scope(|scope| {
        let (chunk_tx, chunk_rx) = sync_channel::<(u64, Result<Chunk, String>)>(threads * 2);
        let (res_tx, res_rx) = sync_channel::<(u64, Item<R>)>(window);
        let (token_tx, token_rx) = sync_channel::<()>(window);
        for _ in 0..window {
            let _ = token_tx.send(());
        }
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        scope.spawn(move || read_all(inputs, opts, &chunk_tx, &token_rx));
        for _ in 0..threads {
            let (rx, tx, worker, pool) = (chunk_rx.clone(), res_tx.clone(), &worker, opts.pool.clone());
            scope.spawn(move || {
                let mut work = worker();
                loop {
                    let next = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, chunk)) = next else { return };
                    let item = match chunk {
                        Err(e) => Item::Unreadable(e),
                        Ok(chunk) => {
                            let r = work(&chunk);
                            pool.give(chunk.into_buffer());
                            Item::Done(r)
                        }
                    };
                    if tx.send((seq, item)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        drop(chunk_rx);
        // Results back in input order; the reorder buffer holds at most `window` results.
        let mut pending: BTreeMap<u64, Item<R>> = BTreeMap::new();
        let mut next = 0u64;
        for (seq, item) in res_rx.iter() {
            pending.insert(seq, item);
            while let Some(item) = pending.remove(&next) {
                next += 1;
                // One chunk left the window: the reader may cut another (a failure means the
                // reader is done, which is fine).
                let _ = token_tx.try_send(());
                collect(item)?;
            }
        }
        Ok(())
    })
}

/// Cuts every input into chunks, in order, taking a token before each send.
fn read_all<I: Input>(
    inputs: &[I],
    opts: &ReadOptions,
    tx: &SyncSender<(u64, Result<Chunk, String>)>,
    tokens: &Receiver<()>,
) {
    let mut seq = 0u64;
    let mut send = |item: Result<Chunk, String>| -> bool {
        if tokens.recv().is_err() || tx.send((seq, item)).is_err() {
            return false; // the collector stopped
        }
        seq += 1;
        true
    };
    for input in inputs {
        match input.open(opts) {
            Err(e) => {
                if !send(Err(e)) {
                    return;
                }
            }
            Ok(mut reader) => {
                while let Some(chunk) = reader.next_chunk() {
                    if !send(Ok(chunk)) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]
    use super::*;

    struct Text(String);

    impl Input for Text {
        fn open(&self, opts: &ReadOptions) -> Result<ChunkReader, String> {
            if self.0 == "unreadable" {
                return Err("cannot open".into());
            }
            ChunkReader::from_reader(
                Arc::from("t"),
                Box::new(std::io::Cursor::new(self.0.clone().into_bytes())),
                opts.clone(),
            )
            .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn results_come_back_in_input_order_and_an_early_stop_ends_every_thread() {
        let lines: String =
            (0..20_000).map(|i| format!("{{\"auditID\":\"{i}\",\"stage\":\"ResponseComplete\"}}\n")).collect();
        let inputs = vec![Text(lines.clone()), Text("unreadable".into()), Text(lines)];
        let opts = ReadOptions { chunk_bytes: 4096, ..ReadOptions::default() };
        let mut ids: Vec<u64> = Vec::new();
        let mut unreadable = 0;
        let r: Result<(), ()> = run(
            &inputs,
            &opts,
            3,
            || {
                |c: &Chunk| {
                    let mut v = Vec::new();
                    c.records(|r| {
                        if let Ok(mut r) = r {
                            if let Ok(ev) = r.event() {
                                v.push(ev.audit_id().unwrap().parse::<u64>().unwrap());
                            }
                        }
                    });
                    v
                }
            },
            |item| {
                match item {
                    Item::Done(v) => ids.extend(v),
                    Item::Unreadable(_) => unreadable += 1,
                }
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(unreadable, 1);
        let expected: Vec<u64> = (0..20_000).chain(0..20_000).collect();
        assert_eq!(ids, expected);

        let mut seen = 0;
        let r = run(
            &inputs,
            &opts,
            2,
            || |c: &Chunk| c.len(),
            |_| {
                seen += 1;
                if seen == 3 {
                    Err("stop")
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r, Err("stop"));
    }
}
