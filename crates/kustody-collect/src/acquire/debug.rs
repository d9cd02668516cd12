//! The ephemeral debug container, for containers without a shell (or all, with `--via debug`):
//! added with `targetContainerName` so it shares the target's PID namespace, run as the
//! target's user, and ended cleanly (exit 0, `Completed`) when collection is done. Kubernetes
//! cannot remove an ephemeral container, so it stays in the pod's spec; the manifest records
//! the exact PATCH, its effects (the kubelet rewrites the pod's `/etc/hosts` when it starts)
//! and how it ended.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kustody_cluster::exec::{self, ExecError, ExecSpec};
use kustody_cluster::ClusterError;
use serde_json::{json, Value};

use super::session::{ContainerReport, PodCtx, Session};
use crate::error::{CollectError, Result};

/// The debug container's main process: idle until kustody is done, then — on the TERM kustody
/// sends — exit 0, so the container ends `Completed` rather than killed (143, `Error`). It also
/// ends by itself, with 0, after 15 minutes if kustody never comes back.
pub const DEBUG_COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 900 & wait; exit 0"];

/// How long kustody waits for the ended debug container's status.
const END_WAIT: Duration = Duration::from_secs(10);

/// Slack between the kubelet writing `/etc/hosts` for a container and the container's
/// `startedAt` (creating the container lies between the two), in seconds.
const HOSTS_WRITE_SLACK: i64 = 5;

/// A debug container this acquisition started.
#[derive(Debug, Clone)]
pub(super) struct DebugStart {
    pub name: String,
    /// `startedAt` from its status, epoch seconds by the node's clock (the clock of file times).
    pub started: Option<i64>,
}

/// What the acquisition did to one pod: the debug containers it started, so that their side
/// effect on files every container shares (`/etc/hosts`) is told apart from drift.
#[derive(Debug, Default)]
pub(super) struct PodEffects(Mutex<Vec<DebugStart>>);

impl PodEffects {
    fn add(&self, d: DebugStart) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(d);
    }

    /// The debug container whose start explains a change of `/etc/hosts` at `changed` (epoch
    /// seconds, node clock): the kubelet wrote the file while creating it, just before its
    /// `startedAt`.
    pub fn explains_hosts_change(&self, changed: i64) -> Option<DebugStart> {
        let starts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        starts.iter().find(|d| d.started.is_some_and(|s| changed <= s && changed >= s - HOSTS_WRITE_SLACK)).cloned()
    }
}

/// A name for the debug container: `kustody-` and six random hex digits.
fn debug_name() -> String {
    format!("kustody-{}", super::run::rand_hex(3))
}

/// The debug container's securityContext: the target's user and group, so `/proc/PID/root` and
/// the target's files are readable without added capabilities; for a non-root target also what
/// the `restricted` Pod Security level demands (no privilege escalation, all capabilities
/// dropped, RuntimeDefault seccomp), so admission accepts it where the target was accepted.
pub fn debug_security_context(pod: &Value, target: Option<&Value>) -> Option<Value> {
    let pick = |k: &str| {
        target
            .and_then(|t| t.pointer(&format!("/securityContext/{k}")))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{k}")))
            .cloned()
    };
    let user = pick("runAsUser");
    let group = pick("runAsGroup");
    let non_root = pick("runAsNonRoot").and_then(|v| v.as_bool()).unwrap_or(false)
        || user.as_ref().and_then(Value::as_u64).is_some_and(|u| u != 0);
    if user.is_none() && group.is_none() && !non_root {
        return None;
    }
    let mut sc = serde_json::Map::new();
    if let Some(u) = user {
        sc.insert("runAsUser".into(), u);
    }
    if let Some(g) = group {
        sc.insert("runAsGroup".into(), g);
    }
    if non_root {
        sc.insert("runAsNonRoot".into(), json!(true));
        sc.insert("allowPrivilegeEscalation".into(), json!(false));
        sc.insert("capabilities".into(), json!({"drop": ["ALL"]}));
        sc.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
    }
    Some(Value::Object(sc))
}

/// The status of ephemeral container `name` in `pod`.
fn ephemeral_status(pod: &Value, name: &str) -> Option<Value> {
    pod.pointer("/status/ephemeralContainerStatuses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|s| s.get("name").and_then(Value::as_str) == Some(name)).cloned())
}

impl Session {
    /// Add an ephemeral container targeting `c` and wait until it runs.
    pub(super) async fn start_debug(&self, pod: &PodCtx, c: &str, report: &mut ContainerReport) -> Result<DebugStart> {
        let t0 = Instant::now();
        let (ns, name) = (pod.ns.as_str(), pod.name.as_str());
        let dname = debug_name();
        let target = pod
            .pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|x| x.get("name").and_then(Value::as_str) == Some(c));
        let mut spec = json!({
            "name": dname, "image": self.opts.debug_image,
            "command": DEBUG_COMMAND,
            "targetContainerName": c,
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        });
        if let Some(sc) = debug_security_context(&pod.pod, target) {
            spec["securityContext"] = sc;
        }
        let body = json!({"spec": {"ephemeralContainers": [spec.clone()]}});
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}/ephemeralcontainers");
        let fail = |reason: String| CollectError::DebugContainer {
            name: dname.clone(),
            image: self.opts.debug_image.clone(),
            reason,
        };
        let req = http::Request::patch(&url)
            .header("content-type", "application/strategic-merge-patch+json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| fail(e.to_string()))?;
        self.client.request_text(req).await.map_err(|e| {
            fail(format!(
                "{} (a shell-less container needs `patch` on `pods/ephemeralcontainers`)",
                ClusterError::from_kube(e)
            ))
        })?;
        report.debug_container = Some(json!({"name": dname, "patch": {"method": "PATCH", "url": url, "body": body},
            "note": "the only change kustody makes to the pod: ephemeral containers cannot be removed and stay in its spec",
            "effects": ["when it started, the kubelet rewrote the pod's /etc/hosts (one file shared by every container of the pod); that change is listed as changed_by_acquisition, not as drift"]}));
        let started = self.wait_running(ns, name, &dname).await.map_err(|e| match e {
            CollectError::DebugContainer { reason, .. } => fail(reason),
            other => other,
        })?;
        let d = DebugStart { name: dname, started };
        pod.effects.add(d.clone());
        if let (Some(dc), Some(s)) = (report.debug_container.as_mut(), started) {
            dc["started"] =
                json!(chrono::DateTime::from_timestamp(s, 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        }
        self.time("debug container start", t0.elapsed());
        Ok(d)
    }

    /// Poll the pod until debug container `dname` runs; its `startedAt` in epoch seconds.
    async fn wait_running(&self, ns: &str, name: &str, dname: &str) -> Result<Option<i64>> {
        let fail = |reason: String| CollectError::DebugContainer {
            name: dname.to_owned(),
            image: self.opts.debug_image.clone(),
            reason,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.get(&format!("/api/v1/namespaces/{ns}/pods/{name}")).await?;
            if let Some(st) = ephemeral_status(&p, dname) {
                if let Some(r) = st.pointer("/state/running") {
                    let started = r
                        .get("startedAt")
                        .and_then(Value::as_str)
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .map(|d| d.timestamp());
                    return Ok(started);
                }
                if let Some(w) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
                    if matches!(
                        w,
                        "ErrImagePull"
                            | "ImagePullBackOff"
                            | "InvalidImageName"
                            | "CreateContainerError"
                            | "RunContainerError"
                    ) {
                        return Err(fail(w.to_owned()));
                    }
                }
                if st.pointer("/state/terminated").is_some() {
                    return Err(fail("exited before collection".into()));
                }
            }
            if Instant::now() > deadline {
                return Err(fail("did not start within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `sh -c 'exit 0'` without stdin: `CommandNotFound` when the container has no shell.
    pub(super) async fn probe_shell(&self, ns: &str, pod: &str, container: &str) -> std::result::Result<(), ExecError> {
        let spec = ExecSpec {
            namespace: ns.into(),
            pod: pod.into(),
            container: Some(container.into()),
            command: vec!["sh".into(), "-c".into(), "exit 0".into()],
            timeout: Some(Duration::from_secs(20)),
            ..ExecSpec::default()
        };
        exec::exec(&self.client, &spec, &mut tokio::io::sink()).await.map(|_| ())
    }

    /// End the debug container: TERM to its processes (its main process then exits 0), then
    /// wait for its status and record how it ended in the manifest.
    pub(super) async fn stop_debug(&self, pod: &PodCtx, d: &DebugStart, report: &mut ContainerReport) {
        let t0 = Instant::now();
        let spec = ExecSpec {
            namespace: pod.ns.clone(),
            pod: pod.name.clone(),
            container: Some(d.name.clone()),
            command: vec![
                "sh".into(),
                "-c".into(),
                "S=$(readlink /proc/self/ns/mnt); for d in /proc/[0-9]*; do p=${d#/proc/}; [ \"$p\" = \"$$\" ] && continue; \
                 [ \"$(readlink $d/ns/mnt 2>/dev/null)\" = \"$S\" ] && kill $p 2>/dev/null; done; exit 0"
                    .into(),
            ],
            timeout: Some(Duration::from_secs(10)),
            ..ExecSpec::default()
        };
        let stop = exec::exec(&self.client, &spec, &mut tokio::io::sink()).await;
        let ended = match stop {
            Ok(_) => self.wait_terminated(&pod.ns, &pod.name, &d.name).await,
            Err(e) => json!({"error": format!("could not be stopped ({e}); it ends by itself within 15 minutes")}),
        };
        if let Some(dc) = report.debug_container.as_mut() {
            dc["ended"] = ended;
        }
        self.time("debug container stop", t0.elapsed());
    }

    /// The debug container's `terminated` state once the kubelet reports it (or why not).
    async fn wait_terminated(&self, ns: &str, name: &str, dname: &str) -> Value {
        let deadline = Instant::now() + END_WAIT;
        loop {
            match self.get(&format!("/api/v1/namespaces/{ns}/pods/{name}")).await {
                Ok(p) => {
                    if let Some(t) = ephemeral_status(&p, dname).and_then(|s| s.pointer("/state/terminated").cloned()) {
                        return json!({"exitCode": t.get("exitCode"), "reason": t.get("reason"), "finishedAt": t.get("finishedAt")});
                    }
                }
                Err(e) => return json!({"error": format!("its status could not be read: {e}")}),
            }
            if Instant::now() > deadline {
                return json!({"error": format!("still running {} s after it was stopped; it ends by itself within 15 minutes", END_WAIT.as_secs())});
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_container_security_context() {
        let root = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(debug_security_context(&root, root.pointer("/spec/containers/0")).is_none());
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1001}}]}});
        let sc = debug_security_context(&pod, pod.pointer("/spec/containers/0")).unwrap();
        assert_eq!(sc["runAsUser"], 1001);
        assert_eq!(sc["runAsGroup"], 3000);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        let explicit_root = json!({"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}});
        let sc = debug_security_context(&explicit_root, None).unwrap();
        assert_eq!(sc["runAsUser"], 0);
        assert!(sc.get("capabilities").is_none(), "a root target keeps the default capabilities");
    }

    #[test]
    fn hosts_changes_are_explained_only_by_a_debug_start_just_after_them() {
        let e = PodEffects::default();
        assert!(e.explains_hosts_change(100).is_none());
        e.add(DebugStart { name: "kustody-a".into(), started: Some(100) });
        assert_eq!(e.explains_hosts_change(100).unwrap().name, "kustody-a");
        assert!(e.explains_hosts_change(97).is_some());
        assert!(e.explains_hosts_change(101).is_none(), "a change after the start is not the kubelet's");
        assert!(e.explains_hosts_change(100 - HOSTS_WRITE_SLACK - 1).is_none(), "an earlier change is drift");
    }
}
