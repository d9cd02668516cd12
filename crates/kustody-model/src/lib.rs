//! The vocabulary every other kustody crate speaks.
//!
//! * [`Event`] is *the* event type: one Kubernetes audit event, borrowed from the bytes it was
//!   read from, with the raw JSON kept so any field can still be reached by JSON pointer. The
//!   top-level fields rules touch on every event are deserialised eagerly into borrowed slices;
//!   `requestObject`/`responseObject` stay as raw JSON until a rule asks for them (FACTS.md §8:
//!   building a DOM for every event caps throughput near 380 MB/s before any rule runs), and
//!   are then indexed once into a [`body::Body`] (no DOM) or walked by [`rawjson::pointer`].
//! * [`SourceRef`] points back at the evidence: file, line, byte offset and source format.
//! * [`Detection`] is what a rule match becomes once rendered.
//!
//! This crate does no I/O and reads no globals.

mod alert;
pub mod body;
mod detection;
mod event;
mod priority;
pub mod rawjson;
pub mod time;
pub mod uri;
pub mod yaml;

pub use alert::RuntimeAlert;
pub use detection::{Detection, EventContext, FieldValue, OutputField};
pub use event::{Event, EventError, ObjectRef, Parts, ResponseStatus, UserInfo};
pub use priority::{Priority, PriorityParseError};

use std::sync::Arc;

/// The format a record was read in, before normalisation to a native audit Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceFormat {
    /// A native `audit.k8s.io` Event as JSON (JSON Lines, EventList, array or document).
    Native,
    /// A native Event written as YAML.
    NativeYaml,
    /// EKS: a CloudWatch Logs event whose `message` holds the Event (CLI output, subscription
    /// or Firehose records).
    Eks,
    /// EKS: an S3 export line, `<timestamp> <event JSON>`.
    EksS3,
    /// GKE: a Cloud Logging LogEntry with an AuditLog `protoPayload`, mapped to an Event.
    Gke,
    /// AKS: a diagnostic-settings record whose `properties.log` holds the Event.
    Aks,
}

impl SourceFormat {
    /// Stable name used in output and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Native => "native",
            SourceFormat::NativeYaml => "native-yaml",
            SourceFormat::Eks => "eks-cloudwatch",
            SourceFormat::EksS3 => "eks-s3",
            SourceFormat::Gke => "gke",
            SourceFormat::Aks => "aks",
        }
    }
}

/// Where a record came from, so an analyst can go back to the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// The file as given on the command line (or `-` for stdin).
    pub file: Arc<str>,
    /// 1-based line where the record starts.
    pub line: u64,
    /// Byte offset of the record in the (decompressed) stream.
    pub offset: u64,
    pub format: SourceFormat,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}
