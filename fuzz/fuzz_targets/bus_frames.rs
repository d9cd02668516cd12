//! Bus messages as a detector reads them (`kustody serve --role detector`): never a panic,
//! decompression bounded, and what decodes encodes back to the same texts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(texts) = kustody_ingest::frames::decode_bounded(data, 1 << 22) {
        let body = kustody_ingest::frames::encode(texts.iter().map(String::as_str)).expect("encodes");
        assert_eq!(kustody_ingest::frames::decode(&body).expect("decodes"), texts);
    }
    // the framing alone, compressed here: arbitrary frames exercise the length parsing
    if let Ok(body) = zstd::bulk::compress(data, 1) {
        let _ = kustody_ingest::frames::decode_bounded(&body, 1 << 22);
    }
});
