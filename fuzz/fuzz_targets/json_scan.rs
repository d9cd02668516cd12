//! The wrapper scanner (`kustody_ingest::jscan`) against serde_json on arbitrary text: it must
//! accept exactly the objects serde_json accepts, find the same members, and unescape strings
//! to the same text.
#![no_main]

use kustody_ingest::jscan;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Members: every key and the raw text of every value, read to the end.
    let ours = (|| {
        let mut m = jscan::Members::new(text)?;
        let mut out = Vec::new();
        while let Some(k) = m.key()? {
            let v = m.text()?;
            out.push((k.into_owned(), v.raw.to_owned(), v.text.map(|t| t.into_owned())));
        }
        m.finish().map(|()| out)
    })();
    let theirs = serde_json::from_str::<serde_json::Map<String, Value>>(text);
    match (&ours, &theirs) {
        (Ok(members), Ok(map)) => {
            // serde keeps the last of duplicate keys (preserve_order keeps the first position).
            for (k, raw, t) in members {
                let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("member {k} raw {raw:?}: {e}"));
                if let (Some(t), Value::String(s)) = (t, &v) {
                    assert_eq!(t, s, "unescaped {raw:?}");
                }
                if members.iter().rev().find(|m| &m.0 == k).map(|m| &m.1) == Some(raw) {
                    assert_eq!(map.get(k), Some(&v), "member {k}");
                }
            }
            assert_eq!(map.len(), members.iter().map(|m| &m.0).collect::<std::collections::BTreeSet<_>>().len());
        }
        (Err(_), Err(_)) => {}
        // serde_json limits nesting to 128 levels, as we do, but counts slightly differently.
        (Err(e), Ok(_)) if e.what == "nested too deeply" => {}
        // Grammatically valid, but serde_json's Value cannot hold it: a number too large for
        // f64, or a lone surrogate escape (`\ude00`) in a string the scanner only skips. The
        // scanner checks grammar, never converts numbers, and rejects lone surrogates only when
        // it unescapes (checked below).
        (Ok(_), Err(e))
            if e.to_string().contains("recursion limit")
                || e.to_string().contains("number out of range")
                || e.to_string().contains("surrogate") => {}
        (a, b) => panic!("scanner {:?} but serde_json {:?} on {text:?}", a.as_ref().map(|_| ()), b.as_ref().map(|_| ())),
    }
    // Strings alone.
    if text.starts_with('"') {
        let ours = jscan::string_value(text).and_then(Result::ok).map(|s| s.into_owned());
        let theirs = serde_json::from_str::<String>(text).ok();
        assert_eq!(ours, theirs, "string {text:?}");
    }
    // Arrays.
    if text.trim_start().starts_with('[') {
        let ours = jscan::elements(text);
        let theirs = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b.iter().map(|r| r.get()).collect::<Vec<_>>()),
            (Err(_), Err(_)) => {}
            (Err(e), Ok(_)) if e.what == "nested too deeply" => {}
            // A lone surrogate escape in a key: the scanner unescapes keys and refuses it (it is
            // not Unicode); serde_json's RawValue only skips strings and lets it through.
            (Err(e), Ok(_)) if e.what.contains("surrogate") => {}
            // Grammatically valid, but serde_json's Value cannot hold it: a number too large for
        // f64, or a lone surrogate escape (`\ude00`) in a string the scanner only skips. The
        // scanner checks grammar, never converts numbers, and rejects lone surrogates only when
        // it unescapes (checked below).
        (Ok(_), Err(e))
            if e.to_string().contains("recursion limit")
                || e.to_string().contains("number out of range")
                || e.to_string().contains("surrogate") => {}
            (a, b) => panic!("elements {:?} but serde_json {:?} on {text:?}", a.is_ok(), b.is_ok()),
        }
    }
});
