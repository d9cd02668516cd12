//! The acquisition as a library call — what `kustody collect` runs and what a server would run
//! — against the test cluster: progress through the callback, the outcome, and errors callers
//! can match.

#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::sync::{Arc, Mutex};

use kustody_collect::acquire::{Options, Progress, Request, Targets};
use kustody_collect::CollectError;
use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod, TestCluster};

fn request(targets: Targets, output: std::path::PathBuf) -> Request {
    Request {
        targets,
        output,
        options: Options::default(),
        parallel: 2,
        case: Some("IR-1".into()),
        command: vec!["test".into()],
        cluster: serde_json::json!({"server": "test"}),
    }
}

#[test]
fn acquire_reports_progress_returns_the_outcome_and_typed_errors() {
    let ns = "ir";
    let Some(c) = cluster(
        TestCluster::builder()
            .namespace(ns)
            .pod(Pod::new("a").label("app", "x"))
            .pod(Pod::new("b").label("app", "x"))
            .pod(Pod::new("c").label("app", "y")),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(kustody_cluster::Cluster::connect(&kustody_cluster::ClusterOptions {
            kubeconfig: Some(c.kubeconfig_path().to_path_buf()),
            ..Default::default()
        }))
        .unwrap()
        .client;
    let dir = tempfile::tempdir().unwrap();

    // a fleet by selector, into an archive
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let out = dir.path().join("x.tar.zst");
    let req = request(Targets::Selector { namespace: Some(ns.into()), selector: "app=x".into() }, out.clone());
    let outcome = rt.block_on(kustody_collect::acquire(&client, &req, move |p| seen.lock().unwrap().push(p))).unwrap();
    assert!(outcome.complete(), "{:#?}", outcome.failures);
    assert_eq!(outcome.path, out);
    assert!(outcome.archive_sha256.is_some());
    let pods: Vec<String> = outcome.pods.iter().map(|p| p.pod.clone()).collect();
    assert_eq!(pods, vec!["a", "b"]);
    assert!(outcome.pods.iter().all(|p| p.containers.len() == 1 && p.containers[0].via == "exec"));
    assert!(kustody_collect::bundle::verify(&out).clean());
    let events = events.lock().unwrap();
    assert!(matches!(&events[0], Progress::Selected { pods: 2, .. }), "{events:?}");
    let done: Vec<usize> =
        events.iter().filter_map(|e| if let Progress::PodDone { done, .. } = e { Some(*done) } else { None }).collect();
    assert_eq!(done, vec![1, 2]);
    assert!(
        matches!(events.last(), Some(Progress::Sealed { manifest_sha256 }) if *manifest_sha256 == outcome.manifest_sha256)
    );

    // errors callers can match, and nothing left behind
    let none = dir.path().join("none");
    let req = request(Targets::Selector { namespace: Some(ns.into()), selector: "app=z".into() }, none.clone());
    match rt.block_on(kustody_collect::acquire(&client, &req, |_| {})) {
        Err(CollectError::NoPodMatches { selector, scope }) => {
            assert_eq!((selector.as_str(), scope.as_str()), ("app=z", "namespace ir"));
        }
        other => panic!("expected NoPodMatches, got {other:?}"),
    }
    assert!(!none.exists());
    match rt.block_on(kustody_collect::acquire(
        &client,
        &request(Targets::Pod { namespace: ns.into(), name: "a".into() }, out.clone()),
        |_| {},
    )) {
        Err(CollectError::Exists { path }) => assert_eq!(path, out),
        other => panic!("expected Exists, got {other:?}"),
    }
    let mut bad = request(Targets::Pod { namespace: ns.into(), name: "a".into() }, dir.path().join("bad"));
    bad.options.paths = vec!["etc/passwd".into()];
    assert!(matches!(
        rt.block_on(kustody_collect::acquire(&client, &bad, |_| {})),
        Err(CollectError::InvalidOption { option: "--paths", .. })
    ));
    // a pod that does not exist: the bundle is sealed with the failure, typed API error text
    let outcome = rt
        .block_on(kustody_collect::acquire(
            &client,
            &request(Targets::Pod { namespace: ns.into(), name: "gone".into() }, dir.path().join("gone")),
            |_| {},
        ))
        .unwrap();
    assert!(!outcome.complete());
    assert!(outcome.pods[0].error.as_deref().unwrap().contains("not found"), "{:?}", outcome.pods[0]);
}
