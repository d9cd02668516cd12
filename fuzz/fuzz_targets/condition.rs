//! The Falco condition parser, and lowering against an empty scope, on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kustody_rules::cond::parse(text);
        let _ = kustody_rules::output::Template::parse(text);
    }
});
