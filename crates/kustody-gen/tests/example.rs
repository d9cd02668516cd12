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
