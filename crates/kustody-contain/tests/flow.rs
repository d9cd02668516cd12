//! The quarantine flow as a library call against the test cluster: progress events in order,
//! the typed 409 re-plan when the pod changes between reading and patching, and typed errors
//! callers match (a missing pod is a 404 `NotFound`, a refusal is `Refused`).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use kustody_cluster::{Cluster, ClusterOptions};
use kustody_contain::actionlog::ActionLog;
use kustody_contain::flow::{Event, Progress};
use kustody_contain::plan::Options;
use kustody_contain::{ContainError, QuarantineStatus, RunContext, RunOptions, Target};
use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod, TestCluster};
use serde_json::json;

/// Changes the pod once, right after the plan is made (a controller or a person relabelling it
/// while kustody works), and records what the flow reports.
struct Meddler<'a> {
    c: &'a TestCluster,
    path: String,
    touched: bool,
    seen: Vec<String>,
}

impl Progress for Meddler<'_> {
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Planned { .. } => {
                self.seen.push("planned".into());
                if !self.touched {
                    self.touched = true;
                    self.c
                        .request("PATCH", &self.path, Some(&json!({"metadata": {"labels": {"touched": "yes"}}})))
                        .unwrap();
                }
            }
            Event::Replanned { after, .. } => {
                self.seen.push(format!("replanned after {:?} {:?}", after.status(), after.reason()))
            }
            Event::Sent(s) => self.seen.push(format!("sent {} {}", s.request.method, s.ok)),
            Event::Verifying => self.seen.push("verifying".into()),
            Event::ReleasePlanned { .. } => self.seen.push("release planned".into()),
        }
    }
}

#[test]
fn a_pod_changed_while_planning_is_replanned_once_on_the_typed_conflict() {
    let Some(c) = cluster(TestCluster::builder().namespace("q").pod(Pod::new("p").label("app", "p"))) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kustody-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = ActionLog::new(dir.join("a.jsonl"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let k = Cluster::connect(&ClusterOptions {
            kubeconfig: Some(c.kubeconfig_path().to_path_buf()),
            ..Default::default()
        })
        .await
        .unwrap();
        let target = Target { namespace: "q".into(), pod: "p".into() };
        let ctx = RunContext {
            server: k.server.clone(),
            context: k.context.clone(),
            version: "test".into(),
            requested_by: None,
        };
        let mut m = Meddler { c: &c, path: "/api/v1/namespaces/q/pods/p".into(), touched: false, seen: Vec::new() };
        let o = kustody_contain::quarantine(
            &k.client,
            &target,
            &Options::default(),
            &RunOptions::default(),
            &ctx,
            &log,
            &mut m,
        )
        .await
        .unwrap();
        assert_eq!(o.status, QuarantineStatus::Verified, "{:#?}", o.checks);
        assert!(
            m.seen.contains(&"replanned after Some(409) Some(\"Conflict\")".to_owned()),
            "the pod patch met the change and was re-planned: {:?}",
            m.seen
        );
        assert_eq!(m.seen.first().map(String::as_str), Some("planned"));
        assert_eq!(m.seen.last().map(String::as_str), Some("verifying"));
        assert!(o.sent.iter().any(|s| !s.ok) && o.sent.last().unwrap().ok, "{:#?}", o.sent);
        // the re-planned patch keeps the change it met, and the record knows the label
        assert_eq!(c.get("pods", "q", "p").unwrap()["metadata"]["labels"]["touched"], "yes");
        assert_eq!(o.plan.record.original_labels.get("touched").map(String::as_str), Some("yes"));

        // typed errors: a missing pod is a 404 NotFound, a kube-system pod a refusal
        let gone = Target { namespace: "q".into(), pod: "nosuch".into() };
        let e = kustody_contain::quarantine(
            &k.client,
            &gone,
            &Options::default(),
            &RunOptions::default(),
            &ctx,
            &log,
            &mut (),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        assert!(matches!(&e, ContainError::Cluster(c) if c.reason() == Some("NotFound")), "{e:?}");
    });
    std::fs::remove_dir_all(dir).unwrap();
}
