//! The audit reader (layout sniffing, gzip, chunking, records) and event parsing on arbitrary
//! bytes, with every field extracted through a rule set that touches them all. The input as
//! JSON, and every event's request and response body, also go through the DOM-free body reader
//! and the pointer walk, which must answer what serde_json answers.
#![no_main]

use std::sync::{Arc, OnceLock};

use kustody_ingest::{ChunkReader, ReadOptions};
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static kustody_rules::Engine {
    static E: OnceLock<kustody_rules::Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut text = String::new();
        for (i, f) in kustody_rules::fields::all_names().iter().enumerate() {
            let arg = match f.as_str() {
                "ka.uri.param" | "ka.req.binding.subject.has_name" | "ka.req.volume.hostpath" => "[x]",
                "jevt.value" | "json.value" => "[/requestObject/spec/containers/0]",
                _ => "",
            };
            text.push_str(&format!(
                "- rule: r{i}\n  desc: d\n  condition: {f}{arg} exists\n  output: \"%{f}{arg}\"\n  priority: INFO\n  source: k8s_audit\n"
            ));
        }
        kustody_rules::Engine::load(&[("all-fields.yaml".to_owned(), text)], &Default::default()).0
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_body(text);
    }
    let opts = ReadOptions { chunk_bytes: 256, max_record_bytes: 1 << 16, max_document_bytes: 1 << 20, ..ReadOptions::default() };
    let Ok(mut reader) = ChunkReader::from_reader(Arc::from("fuzz"), Box::new(std::io::Cursor::new(data.to_vec())), opts) else { return };
    let engine = engine();
    let mut scratch = kustody_rules::Scratch::default();
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk() {
        chunk.records(|rec| {
            if let Ok(mut rec) = rec {
                // GKE records are written by us, not passed through: they must be valid JSON,
                // and the fields the converter hands over must be what parsing its text gives.
                let parsed = (rec.format == kustody_model::SourceFormat::Gke).then(|| {
                    assert!(serde_json::from_str::<serde_json::Value>(rec.text).is_ok(), "invalid GKE output: {}", rec.text);
                    kustody_model::Event::parse(rec.text).map(|e| e.accessor_dump()).map_err(|e| e.to_string())
                });
                let ev = rec.event();
                if let Some(parsed) = parsed {
                    let built = ev.as_ref().map(|e| e.accessor_dump()).map_err(|e| e.to_string());
                    assert_eq!(built, parsed, "GKE parts differ from parsing {}", rec.text);
                }
                if let Ok(ev) = ev {
                    for body in [ev.request_object_raw(), ev.response_object_raw()].into_iter().flatten() {
                        check_body(body);
                    }
                    out.clear();
                    engine.matches(&ev, &mut scratch, &mut out);
                    for &i in &out {
                        let src = kustody_model::SourceRef { file: Arc::from("f"), line: rec.line, offset: rec.offset, format: kustody_model::SourceFormat::Native };
                        let _ = engine.detection(i, &ev, src, true);
                    }
                }
            }
        });
    }
});

/// The lazy body reader against serde_json on arbitrary JSON: every value's text, JSON,
/// string, key list and element reached through a `Body` equals what a `serde_json::Value`
/// of the same text gives; and the early-exit pointer walk equals the serde visitor walk.
fn check_body(text: &str) {
    if let Err(e) = kustody_model::body::check_against_serde(text) {
        panic!("body index differs from serde_json: {e}");
    }
    if serde_json::from_str::<Box<serde_json::value::RawValue>>(text).is_err() {
        return; // the pointer walk is only defined on valid JSON (the event parser's output)
    }
    for path in POINTERS {
        assert_eq!(
            kustody_model::rawjson::pointer(text, path),
            kustody_model::rawjson::pointer_serde(text, path),
            "pointer {path:?} on {text}"
        );
    }
}

const POINTERS: &[&[&str]] = &[
    &[],
    &["metadata", "name"],
    &["spec", "containers", "0", "image"],
    &["a"],
    &["a", "0"],
    &["a", "1", "b"],
    &["0"],
    &["1", "a"],
    &["data"],
];
