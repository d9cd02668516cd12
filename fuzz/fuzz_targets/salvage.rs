//! Events cut short by a provider (EKS's `[Truncated...]`, AKS's 16 KiB): what
//! `kustody_ingest::salvage` makes of any text is never a panic, and a salvaged event is a
//! Metadata-level JSON object that says it was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(id) = kustody_ingest::salvage::audit_id(text) {
        assert!(!id.is_empty() && id.len() <= 128);
    }
    if let Some(ev) = kustody_ingest::salvage::truncated_event(text, "2026-12-03T10:00:00.000Z") {
        let v: serde_json::Value = serde_json::from_str(&ev).expect("a salvaged event is JSON");
        assert_eq!(v["level"], "Metadata");
        assert_eq!(v["annotations"][kustody_ingest::salvage::TRUNCATED_ANNOTATION], "true");
        assert!(v.get("requestObject").is_none() && v.get("responseObject").is_none());
    }
});
