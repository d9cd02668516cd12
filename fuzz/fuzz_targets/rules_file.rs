//! A whole rules file: YAML, items, overrides, compilation; then one evaluation.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"f","stage":"ResponseComplete","verb":"create","requestURI":"/api/v1/namespaces/d/pods?x=1","user":{"username":"u","groups":["g"]},"objectRef":{"resource":"pods","namespace":"d","name":"p"},"responseStatus":{"code":201},"requestObject":{"spec":{"containers":[{"name":"c","image":"i:1","securityContext":{"privileged":true}}],"volumes":[{"name":"v","hostPath":{"path":"/"}}]}},"stageTimestamp":"2024-01-01T00:00:00Z"}"#;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (engine, _diags) = kustody_rules::Engine::load(&[("fuzz.yaml".to_owned(), text.to_owned())], &Default::default());
        if let Ok(ev) = kustody_model::Event::parse(EVENT) {
            let mut scratch = kustody_rules::Scratch::default();
            let mut out = Vec::new();
            engine.matches(&ev, &mut scratch, &mut out);
            let reference = engine.matches_reference(&ev, &mut scratch);
            assert_eq!(out, reference);
        }
    }
});
