//! The audit reader (layout sniffing, gzip, chunking, records) and event parsing on arbitrary
//! bytes, with every field extracted through a rule set that touches them all.
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
