//! How texts are stored: zstd-compressed when that makes them smaller, else as they are.
//!
//! The storage class tells which: a BLOB is a zstd frame, a TEXT value is the text itself.
//!
//! Audit events are small (1–3 KB) and alike: one frame per event gains little alone (about
//! 2×), but a dictionary trained on earlier events gains 5–7× and compresses 3× faster (see
//! `examples/store_bench.rs`). The writer trains one from the first events it stores (in a
//! background thread) and again every [`RETRAIN_EVERY`] events; dictionaries are kept in the
//! `dicts` table under the ID zstd writes into each frame's header, so a frame names the
//! dictionary it needs and frames from before any dictionary need none.

use std::collections::HashMap;
use std::thread::JoinHandle;

use rusqlite::types::{ToSqlOutput, ValueRef};
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use super::error::{Fail, Res};

/// zstd level 1: on audit events levels 2–5 save 1–3 % more space for 25–150 % more
/// compression time, with or without a dictionary (see `examples/store_bench.rs`).
pub const LEVEL: i32 = 1;

/// Events sampled to train a dictionary, and their most bytes.
pub const TRAIN_SAMPLES: usize = 4000;
const TRAIN_BYTES: usize = 16 << 20;
/// Largest dictionary trained.
pub const DICT_BYTES: usize = 64 << 10;
/// Events stored with one dictionary before another is trained (the cluster's traffic
/// changes); the samples for it are every [`RETRAIN_STRIDE`]th event before.
pub const RETRAIN_EVERY: u64 = 2_000_000;
const RETRAIN_STRIDE: u64 = 100;
/// Events after a failed training before sampling again.
const RETRY_AFTER: u64 = 100_000;

/// The largest text a stored length may announce (a corrupted length must not make us
/// allocate without bound): 256 MiB, far above any audit event or alert.
const MAX_TEXT: usize = 256 << 20;

fn zerr(what: &str, code: usize) -> Fail {
    Fail::other(format!("{what}: zstd: {}", zstd_safe::get_error_name(code)))
}

/// A dictionary ready for use: its ID (in frames and the `dicts` table) and bytes.
pub(crate) struct Dict {
    pub id: u32,
    pub bytes: Vec<u8>,
}

impl Dict {
    /// A dictionary from its bytes, when they are one (zstd format, with an ID).
    pub(crate) fn new(bytes: Vec<u8>) -> Option<Dict> {
        let id = zstd_safe::get_dict_id_from_dict(&bytes)?.get();
        Some(Dict { id, bytes })
    }
}

/// A compressor with its output buffer and current dictionary, reused across rows; it also
/// samples the texts it compresses to train the next dictionary.
pub(crate) struct Encoder {
    cctx: CCtx<'static>,
    dict: Option<(u32, CDict<'static>)>,
    buf: Vec<u8>,
    /// Texts compressed with the current dictionary (or none).
    since_dict: u64,
    /// `since_dict` from which texts are sampled.
    sample_from: u64,
    samples: Vec<String>,
    sample_bytes: usize,
    training: Option<JoinHandle<Option<Vec<u8>>>>,
    /// Whether to train dictionaries automatically.
    pub auto_train: bool,
}

impl Encoder {
    pub(crate) fn new() -> Res<Encoder> {
        let cctx = CCtx::try_create().ok_or_else(|| Fail::other("zstd: cannot create a compression context"))?;
        Ok(Encoder {
            cctx,
            dict: None,
            buf: Vec::new(),
            since_dict: 0,
            sample_from: 0,
            samples: Vec::new(),
            sample_bytes: 0,
            training: None,
            auto_train: true,
        })
    }

    /// The current dictionary's ID.
    pub(crate) fn dict_id(&self) -> Option<u32> {
        self.dict.as_ref().map(|(id, _)| *id)
    }

    /// Compresses with `dict` from now on.
    pub(crate) fn use_dict(&mut self, dict: &Dict) -> Res<()> {
        let cdict = CDict::try_create(&dict.bytes, LEVEL).ok_or_else(|| Fail::other("zstd: unusable dictionary"))?;
        self.dict = Some((dict.id, cdict));
        self.since_dict = 0;
        self.sample_from = RETRAIN_EVERY.saturating_sub(TRAIN_SAMPLES as u64 * RETRAIN_STRIDE);
        self.samples.clear();
        self.sample_bytes = 0;
        Ok(())
    }

    /// `text` as SQLite stores it: its zstd frame (a BLOB) when shorter than the text, else
    /// the text (a TEXT value).
    pub(crate) fn encode<'t>(&'t mut self, text: &'t str) -> ToSqlOutput<'t> {
        match self.compress(text) {
            Some(frame) => ToSqlOutput::Borrowed(ValueRef::Blob(frame)),
            None => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        }
    }

    /// `text`'s zstd frame when it is shorter than the text; `None` when the text itself is
    /// as good. (A frame starts with zstd's magic number, which no UTF-8 text can: a backend
    /// storing both as bytes tells them apart by it, see [`is_frame`].)
    pub(crate) fn compress(&mut self, text: &str) -> Option<&[u8]> {
        if self.auto_train {
            self.sample(text);
        }
        self.buf.clear();
        self.buf.reserve(zstd_safe::compress_bound(text.len()));
        let r = match &self.dict {
            Some((_, cdict)) => self.cctx.compress_using_cdict(&mut self.buf, text.as_bytes(), cdict),
            None => self.cctx.compress(&mut self.buf, text.as_bytes(), LEVEL),
        };
        match r {
            Ok(n) if n < text.len() => Some(&self.buf),
            // Incompressible (or the compressor failed): the text itself is as good.
            _ => None,
        }
    }

    fn sample(&mut self, text: &str) {
        self.since_dict += 1;
        if self.training.is_some()
            || self.since_dict < self.sample_from
            || self.samples.len() >= TRAIN_SAMPLES
            || self.sample_bytes >= TRAIN_BYTES
        {
            return;
        }
        // The first dictionary from the first events; the next ones from a spread of the
        // events before they are due.
        let stride = if self.dict.is_none() { 1 } else { RETRAIN_STRIDE };
        if self.since_dict.is_multiple_of(stride) {
            self.sample_bytes += text.len();
            self.samples.push(text.to_owned());
        }
    }

    /// Starts training in the background when enough samples are in and a dictionary is
    /// due; returns a trained dictionary when one is ready (the caller stores it, then calls
    /// [`Encoder::use_dict`], or [`Encoder::training_failed`] when it cannot).
    pub(crate) fn poll_training(&mut self) -> Option<Dict> {
        if let Some(h) = &self.training {
            if !h.is_finished() {
                return None;
            }
            let trained = self.training.take().and_then(|h| h.join().ok()).flatten().and_then(Dict::new);
            if trained.is_none() {
                self.training_failed();
            }
            return trained;
        }
        let full = self.samples.len() >= TRAIN_SAMPLES || self.sample_bytes >= TRAIN_BYTES;
        let due = self.dict.is_none() || self.since_dict >= RETRAIN_EVERY;
        if self.auto_train && full && due {
            let samples = std::mem::take(&mut self.samples);
            self.sample_bytes = 0;
            // Without a thread (resource limits), no dictionary: texts are still compressed.
            self.training =
                std::thread::Builder::new().name("kustody-zdict".into()).spawn(move || train(&samples)).ok();
            if self.training.is_none() {
                self.auto_train = false;
            }
        }
        None
    }

    /// The trained dictionary could not be made or stored: sample again later.
    pub(crate) fn training_failed(&mut self) {
        self.samples.clear();
        self.sample_bytes = 0;
        self.sample_from = self.since_dict.saturating_add(RETRY_AFTER);
    }
}

/// A dictionary trained on `samples`, when zstd can make one of them.
pub(crate) fn train(samples: &[String]) -> Option<Vec<u8>> {
    if samples.len() < 16 {
        return None;
    }
    zstd::dict::from_samples(samples, DICT_BYTES).ok().filter(|d| Dict::new(d.clone()).is_some())
}

/// A decompressor with the dictionaries it has loaded.
#[derive(Default)]
pub(crate) struct Decoder {
    dctx: Option<DCtx<'static>>,
    dicts: HashMap<u32, DDict<'static>>,
}

impl Decoder {
    /// The text stored as `v`, `len` being its recorded length; `load` reads a dictionary.
    pub(crate) fn decode(
        &mut self,
        v: ValueRef<'_>,
        len: i64,
        load: &mut dyn FnMut(u32) -> Res<Option<Vec<u8>>>,
    ) -> Res<String> {
        match v {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|e| Fail::other(format!("stored text: {e}"))),
            ValueRef::Blob(b) => self.decompress(b, len, load),
            ValueRef::Null | ValueRef::Integer(_) | ValueRef::Real(_) => Err(Fail::other("stored text: not a text")),
        }
    }

    /// The text stored as bytes `b`: a zstd frame ([`is_frame`]) or the text itself.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn decode_bytes(
        &mut self,
        b: &[u8],
        len: i64,
        load: &mut dyn FnMut(u32) -> Res<Option<Vec<u8>>>,
    ) -> Res<String> {
        if is_frame(b) {
            self.decompress(b, len, load)
        } else {
            String::from_utf8(b.to_vec()).map_err(|e| Fail::other(format!("stored text: {e}")))
        }
    }

    fn decompress(&mut self, b: &[u8], len: i64, load: &mut dyn FnMut(u32) -> Res<Option<Vec<u8>>>) -> Res<String> {
        let cap = usize::try_from(len).unwrap_or(0).min(MAX_TEXT);
        let mut out: Vec<u8> = Vec::with_capacity(cap);
        let dctx = match &mut self.dctx {
            Some(d) => d,
            slot @ None => slot
                .insert(DCtx::try_create().ok_or_else(|| Fail::other("zstd: cannot create a decompression context"))?),
        };
        match zstd_safe::get_dict_id_from_frame(b) {
            None => {
                dctx.decompress(&mut out, b).map_err(|c| zerr("stored text", c))?;
            }
            Some(id) => {
                let id = id.get();
                let dd = match self.dicts.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let bytes = load(id)?
                            .ok_or_else(|| Fail::other(format!("stored text: zstd dictionary {id} is missing")))?;
                        v.insert(
                            DDict::try_create(&bytes)
                                .ok_or_else(|| Fail::other(format!("zstd dictionary {id} is unusable")))?,
                        )
                    }
                };
                dctx.decompress_using_ddict(&mut out, b, dd).map_err(|c| zerr("stored text", c))?;
            }
        }
        String::from_utf8(out).map_err(|e| Fail::other(format!("stored text: {e}")))
    }
}

/// Whether stored bytes are a zstd frame (its magic number; UTF-8 text never starts so).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn is_frame(b: &[u8]) -> bool {
    b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}
