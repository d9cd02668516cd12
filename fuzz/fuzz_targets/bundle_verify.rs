//! `kustody verify` reads bundles someone else may have handed over: a `.tar.zst` and the
//! MANIFEST.json inside it are untrusted bytes. Any input must give a report, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("kustody-fuzz-verify-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    // the bytes as an archive, and (when they parse as JSON) as a directory's manifest
    let archive = dir.join("b.tar.zst");
    if std::fs::write(&archive, data).is_ok() {
        let _ = kustody_collect::bundle::verify(&archive);
    }
    let bundle = dir.join("d");
    let _ = std::fs::create_dir_all(&bundle);
    if std::fs::write(bundle.join("MANIFEST.json"), data).is_ok() {
        let _ = std::fs::write(bundle.join("MANIFEST.json.sha256"), b"00  MANIFEST.json\n");
        let _ = kustody_collect::bundle::verify(&bundle);
    }
});
