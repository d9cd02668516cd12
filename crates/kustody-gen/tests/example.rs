//! The committed example is exactly what the generator produces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

#[test]
fn committed_example_is_up_to_date() {
    let mut out = Vec::new();
    kustody_gen::example(&mut out).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &out).unwrap();
    }
    let committed = std::fs::read(path).unwrap();
    assert!(committed == out, "examples/attack-chain.jsonl is stale: run `cargo run -p kustody-gen -- example -o examples/attack-chain.jsonl`");
}

#[test]
fn corpus_is_deterministic_and_sized() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let n = kustody_gen::Corpus::new(7).write(200_000, &mut a).unwrap();
    kustody_gen::Corpus::new(7).write(200_000, &mut b).unwrap();
    assert_eq!(a, b);
    assert!((200_000..230_000).contains(&n));
    let sizes: Vec<usize> = a.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::len).collect();
    assert!(sizes.iter().any(|&s| s < 1000) && sizes.iter().any(|&s| s > 5000), "sizes should span 0.5-20 KB");
    for line in a.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let text = std::str::from_utf8(line).unwrap();
        kustody_model::Event::parse(text).unwrap();
    }
}

#[test]
fn every_wrapped_format_reads_back_as_the_same_events() {
    use std::sync::Arc;
    let mut native = Vec::new();
    kustody_gen::Corpus::new(5).write(300_000, &mut native).unwrap();
    let ids = |bytes: Vec<u8>| -> Vec<String> {
        let mut r = kustody_ingest::ChunkReader::from_reader(
            Arc::from("t"),
            Box::new(std::io::Cursor::new(bytes)),
            Default::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk() {
            c.records(|rec| {
                out.push(kustody_model::Event::parse(rec.unwrap().text).unwrap().audit_id().unwrap().to_owned())
            });
        }
        out
    };
    let want = ids(native.clone());
    assert!(want.len() > 100);
    for wrap in [kustody_gen::Wrap::Eks, kustody_gen::Wrap::Aks, kustody_gen::Wrap::Gke] {
        let mut out = Vec::new();
        kustody_gen::Corpus::new(5).write_as(300_000, wrap, &mut out).unwrap();
        assert_eq!(ids(out), want, "{wrap:?}");
    }
}
