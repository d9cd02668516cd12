//! Audit payloads to store rows, through hunt's reader layer: an `audit.k8s.io/v1` EventList
//! exactly as the apiserver's webhook posts it, and everything else `hunt` reads (JSON Lines,
//! arrays, AKS/CloudWatch/GKE wrappers), so managed-cloud forwarders work in every source.

use std::borrow::Cow;
use std::sync::Arc;

use kustody_ingest::{ChunkReader, ReadOptions};
use kustody_store::EventRow;

/// One event the payload held that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// 1-based line of the payload (an EventList on one line reports line 1).
    pub line: u64,
    /// Byte offset of the record in the payload.
    pub offset: u64,
    pub reason: String,
}

/// What a payload held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<EventRow<'static>>,
    pub rejected: Vec<Rejected>,
    /// Bytes of the events' JSON text.
    pub text_bytes: usize,
}

/// Reads every event of `body`; a bad event is rejected with its reason and the others kept.
/// `body` may be shared (`Bytes`): a caller that still needs it keeps it without a copy.
pub fn parse<B: AsRef<[u8]> + Send + 'static>(name: &str, body: B, max_event_bytes: usize) -> Parsed {
    let opts = ReadOptions {
        max_record_bytes: max_event_bytes,
        max_document_bytes: body.as_ref().len().max(1),
        ..ReadOptions::default()
    };
    let mut out = Parsed::default();
    let reader = ChunkReader::from_reader(Arc::from(name), Box::new(std::io::Cursor::new(body)), opts);
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => {
            out.rejected.push(Rejected { line: 1, offset: 0, reason: format!("unreadable payload: {e}") });
            return out;
        }
    };
    while let Some(chunk) = reader.next_chunk() {
        chunk.records(|rec| match rec {
            Err(bad) => out.rejected.push(Rejected { line: bad.line, offset: bad.offset, reason: bad.reason }),
            Ok(mut rec) => match rec.event() {
                Err(e) => out.rejected.push(Rejected { line: rec.line, offset: rec.offset, reason: e.to_string() }),
                Ok(ev) => {
                    out.text_bytes += ev.raw().len();
                    out.rows.push(owned(EventRow::of(&ev)));
                }
            },
        });
    }
    out
}

/// A row that owns its text (it outlives the payload buffer).
pub fn owned(r: EventRow<'_>) -> EventRow<'static> {
    fn o(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
        c.map(|c| Cow::Owned(c.into_owned()))
    }
    EventRow {
        raw: Cow::Owned(r.raw.into_owned()),
        time_ns: r.time_ns,
        audit_id: o(r.audit_id),
        stage: o(r.stage),
        user: o(r.user),
        service_account: r.service_account,
        pod: r.pod,
        namespace: o(r.namespace),
        resource: o(r.resource),
        subresource: o(r.subresource),
        name: o(r.name),
        verb: o(r.verb),
        code: r.code,
        source_ips: r.source_ips.into_iter().map(|c| Cow::Owned(c.into_owned())).collect(),
        user_agent: o(r.user_agent),
        source_pod: r.source_pod,
        cluster: r.cluster,
    }
}

/// The records of a line-based payload (a followed log) that were rejected, as bad records to
/// keep: each one's line of `body`, located as `line N`, counting from `first_line`.
pub fn bad_lines(
    source: &str,
    body: &[u8],
    rejected: &[Rejected],
    first_line: u64,
    received_ns: i64,
) -> Vec<kustody_store::BadRecord> {
    rejected
        .iter()
        .map(|r| {
            let start = usize::try_from(r.offset).unwrap_or(usize::MAX).min(body.len());
            let rest = body.get(start..).unwrap_or_default();
            let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
            let n = (first_line + r.line).saturating_sub(1);
            let mut b = kustody_store::BadRecord::new(received_ns, source, format!("line {n}"), r.reason.clone(), line);
            b.audit_id = kustody_ingest::salvage::audit_id(&String::from_utf8_lossy(line.get(..4096).unwrap_or(line)));
            b
        })
        .collect()
}
