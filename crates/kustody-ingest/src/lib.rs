//! Readers that turn files and streams into audit-event records.
//!
//! The reader is split in two so that parsing runs in parallel:
//!
//! * [`ChunkReader`] (one thread, sequential I/O) decompresses, sniffs the file's layout and cuts
//!   the byte stream into [`Chunk`]s of whole lines (JSON Lines) or whole documents (EventList,
//!   array, pretty-printed event). It knows line numbers and byte offsets.
//! * [`Chunk::records`] (any thread) splits a chunk into one [`Record`] per audit event — the
//!   native JSON text of the event plus where it came from — or a [`BadRecord`] naming file,
//!   line and reason.
//!
//! Managed-cloud wrappers (EKS CloudWatch, GKE LogEntry, AKS diagnostic records) slot in at the
//! second step: a [`Layout`] per wrapper that unwraps or normalises to native Event JSON, keeping
//! the pointer to the original record. Everything downstream only ever sees native events.

mod chunk;
mod docsplit;
pub mod falco;
mod files;
pub mod frames;
pub mod jscan;
mod managed;
mod reader;
pub mod salvage;
mod yaml;

pub use chunk::{BadRecord, Chunk, ChunkBody, Layout, Record};
pub use docsplit::Span;
pub use files::{expand_inputs, InputFile, Inputs};
pub use reader::{BufferPool, ChunkReader, InputFormat, ReadOptions};

/// Errors that stop reading one input (not one record).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` does not exist")]
    NotFound(String),
}
