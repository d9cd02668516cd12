//! How texts are stored: zstd-compressed when that makes them smaller, else as they are.
//!
//! The storage class tells which: a BLOB is a zstd frame, a TEXT value is the text itself.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::error::{Fail, Res};

/// zstd level 1: on kube-apiserver audit events (1–3 KB of JSON) levels 2 and 3 save 2–4 %
/// more space for 25–60 % more compression time (see `examples/store_bench.rs`), and
/// compression is the largest cost of an append after the index updates.
pub const LEVEL: i32 = 1;

/// The largest text a stored length may announce (a corrupted length must not make us
/// allocate without bound): 256 MiB, far above any audit event or alert.
const MAX_TEXT: usize = 256 << 20;

/// A compressor with its output buffer, reused across rows.
pub(crate) struct Encoder {
    zc: zstd::bulk::Compressor<'static>,
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new() -> Res<Encoder> {
        let zc = zstd::bulk::Compressor::new(LEVEL).map_err(|e| Fail::other(format!("zstd: {e}")))?;
        Ok(Encoder { zc, buf: Vec::new() })
    }

    /// `text` as stored: its zstd frame when shorter than the text, else the text.
    pub(crate) fn encode<'t>(&'t mut self, text: &'t str) -> ToSqlOutput<'t> {
        self.buf.clear();
        self.buf.reserve(zstd::zstd_safe::compress_bound(text.len()));
        match self.zc.compress_to_buffer(text.as_bytes(), &mut self.buf) {
            Ok(n) if n < text.len() => ToSqlOutput::Borrowed(ValueRef::Blob(&self.buf)),
            // Incompressible (or the compressor failed): the text itself is as good.
            _ => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        }
    }
}

/// A decompressor, made on first use (most reads of one call share it).
#[derive(Default)]
pub(crate) struct Decoder {
    zd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decoder {
    /// The text stored as `v`, `len` being its recorded length.
    pub(crate) fn decode(&mut self, v: ValueRef<'_>, len: i64) -> Res<String> {
        match v {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|e| Fail::other(format!("stored text: {e}"))),
            ValueRef::Blob(b) => {
                let cap = usize::try_from(len).unwrap_or(0).min(MAX_TEXT);
                let zd = match &mut self.zd {
                    Some(zd) => zd,
                    slot @ None => {
                        slot.insert(zstd::bulk::Decompressor::new().map_err(|e| Fail::other(format!("zstd: {e}")))?)
                    }
                };
                let bytes = zd.decompress(b, cap).map_err(|e| Fail::other(format!("stored text: zstd: {e}")))?;
                String::from_utf8(bytes).map_err(|e| Fail::other(format!("stored text: {e}")))
            }
            ValueRef::Null | ValueRef::Integer(_) | ValueRef::Real(_) => Err(Fail::other("stored text: not a text")),
        }
    }
}
