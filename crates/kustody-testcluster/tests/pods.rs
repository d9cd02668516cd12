//! Pods are real runc containers: exec over WebSocket (v5 and v4), logs with restarts,
//! ephemeral containers in a distroless pod, controllers releasing relabelled pods, and
//! teardown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::time::{Duration, Instant};

use kustody_testcluster::client::{cluster, rt, Client};
use kustody_testcluster::{Pod, TestCluster};
use serde_json::{json, Value};

const V5: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const V4: &[&str] = &["v4.channel.k8s.io"];

fn exec_path(ns: &str, pod: &str, container: &str, argv: &[&str], stdin: bool) -> String {
    let mut p = format!("/api/v1/namespaces/{ns}/pods/{pod}/exec?");
    for a in argv {
        p.push_str(&format!(
            "command={}&",
            a.replace('%', "%25")
                .replace(' ', "%20")
                .replace('&', "%26")
                .replace(';', "%3B")
                .replace('>', "%3E")
                .replace('|', "%7C")
                .replace('\'', "%27")
                .replace('\\', "%5C")
        ));
    }
    p.push_str(&format!("container={container}&stdout=true&stderr=true"));
    if stdin {
        p.push_str("&stdin=true");
    }
    p
}

#[test]
fn a_cluster_with_a_running_pod_starts_fast_and_cleans_up() {
    let t = Instant::now();
    let Some(c) = cluster(TestCluster::builder().namespace("fast").pod(Pod::new("one"))) else { return };
    let startup = t.elapsed();
    eprintln!("cluster + 1 running pod in {startup:?}");
    let pod = c.get("pods", "fast", "one").unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["spec"]["nodeName"], "node-0");
    assert!(pod["status"]["podIP"].as_str().unwrap().starts_with("10.244."));
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(cs["containerID"].as_str().unwrap().starts_with("runc://"));
    assert!(cs["imageID"].as_str().unwrap().starts_with("sha256:"));
    // a real process on this host
    let pid = c.container_pid("fast", "one", "main").unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with("sleep"), "{cmdline:?}");
    let dir = c.dir().to_path_buf();
    drop(c);
    assert!(!dir.exists(), "cluster dir left behind");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "container process survived teardown");
}

#[test]
fn teardown_runs_when_a_test_panics() {
    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(c) = cluster(TestCluster::builder().pod(Pod::new("doomed"))) else { return };
        seen = Some((c.dir().to_path_buf(), c.container_pid("default", "doomed", "main").unwrap()));
        panic!("test failure inside a cluster");
    }));
    let Some((dir, pid)) = seen else { return };
    assert!(r.is_err());
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn exec_speaks_the_v5_and_v4_channel_protocols() {
    let Some(c) = cluster(TestCluster::builder().namespace("x").pod(Pod::new("shell").label("app", "shell"))) else {
        return;
    };
    let cl = Client::admin(&c);
    rt().block_on(async {
        for protos in [V5, V4] {
            let s = cl
                .ws(&exec_path("x", "shell", "main", &["echo", "hello from the pod"], false), protos, None, None)
                .await
                .unwrap();
            assert_eq!(s.protocol, protos[0]);
            assert_eq!(s.frames[0], (1, vec![]), "first frame is empty on the lowest writable channel");
            assert_eq!(s.channel(1), b"hello from the pod\n");
            assert_eq!(s.status(), json!({"metadata": {}, "status": "Success"}));
            assert_eq!(s.close_code, Some(1000));

            let s = cl
                .ws(
                    &exec_path("x", "shell", "main", &["sh", "-c", "echo out; echo err >&2; exit 3"], false),
                    protos,
                    None,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(s.channel(1), b"out\n");
            assert_eq!(s.channel(2), b"err\n");
            let st = s.status();
            assert_eq!(st["reason"], "NonZeroExitCode");
            // the kubelet words it differently per protocol version (both recorded from a real one)
            let want = if protos == V5 {
                "command terminated with non-zero exit code: command terminated with exit code 3"
            } else {
                "command terminated with non-zero exit code: error executing command [sh -c echo out; echo err >&2; exit 3], exit code 3"
            };
            assert_eq!(st["message"], want);
            assert_eq!(st["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));

            let s =
                cl.ws(&exec_path("x", "shell", "main", &["no-such-binary"], false), protos, None, None).await.unwrap();
            let st = s.status();
            assert_eq!(st["reason"], "InternalError");
            assert_eq!(st["code"], 500);
            assert!(st["message"].as_str().unwrap().contains("executable file not found in $PATH"));
        }
        // stdin: v5 closes it with [255, 0] and still gets the status
        let s = cl
            .ws(&exec_path("x", "shell", "main", &["cat"], true), V5, Some(b"line one\nline two\n"), None)
            .await
            .unwrap();
        assert_eq!(s.channel(1), b"line one\nline two\n");
        assert_eq!(s.status()["status"], "Success");
        // v4 can only close stdin by closing the socket
        let s = cl
            .ws(&exec_path("x", "shell", "main", &["cat"], true), V4, Some(b"abc\n"), Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(s.protocol, "v4.channel.k8s.io");

        // bulk output arrives intact, in frames of at most 32 KiB
        let s = cl
            .ws(
                &exec_path("x", "shell", "main", &["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' 'a'"], false),
                V5,
                None,
                None,
            )
            .await
            .unwrap();
        let out = s.channel(1);
        assert_eq!(out.len(), 300_000);
        assert!(out.iter().all(|b| *b == b'a'));
        assert!(s.frames.iter().all(|(_, d)| d.len() <= 32 * 1024));

        // refused at the handshake
        let s = cl.ws(&exec_path("x", "shell", "nope", &["echo", "x"], false), V5, None, None).await.unwrap();
        assert_eq!(s.handshake_status, Some(400));
        assert_eq!(
            serde_json::from_str::<Value>(&s.handshake_body).unwrap()["message"],
            "container nope is not valid for pod shell"
        );
        let s = cl.ws(&exec_path("x", "nope", "main", &["echo", "x"], false), V5, None, None).await.unwrap();
        assert_eq!(s.handshake_status, Some(404));
        assert_eq!(serde_json::from_str::<Value>(&s.handshake_body).unwrap()["message"], "pods \"nope\" not found");
        // the container's hostname is the pod's name
        let s = cl.ws(&exec_path("x", "shell", "main", &["hostname"], false), V5, None, None).await.unwrap();
        assert_eq!(s.channel(1), b"shell\n");
    });
    // RBAC: a WebSocket exec needs get and create on pods/exec
    let getter = c
        .add_user("getter", &[], json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}]), Some("x"))
        .unwrap();
    let both = c
        .add_user(
            "execer",
            &[],
            json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]),
            Some("x"),
        )
        .unwrap();
    rt().block_on(async {
        let s = Client::token(&c, &getter)
            .ws(&exec_path("x", "shell", "main", &["id"], false), V5, None, None)
            .await
            .unwrap();
        assert_eq!(s.handshake_status, Some(403));
        assert!(s.handshake_body.contains("cannot create resource \\\"pods/exec\\\""), "{}", s.handshake_body);
        let s = Client::token(&c, &both)
            .ws(&exec_path("x", "shell", "main", &["id", "-u"], false), V5, None, None)
            .await
            .unwrap();
        assert_eq!(s.channel(1), b"0\n");
    });
    // audit: WebSocket exec is verb get on pods/exec, ResponseStarted and ResponseComplete
    let events = c.audit_events().unwrap();
    let execs: Vec<&Value> = events
        .iter()
        .filter(|e| e["objectRef"]["subresource"] == "exec" && e["responseStatus"]["code"] == 101)
        .collect();
    assert!(execs.iter().any(|e| e["stage"] == "ResponseStarted"));
    assert!(execs.iter().any(|e| e["stage"] == "ResponseComplete"));
    assert!(execs.iter().all(|e| e["verb"] == "get" && e["level"] == "RequestResponse"));
    assert!(execs.iter().any(|e| e["requestURI"].as_str().unwrap().contains("command=hostname")));
}

#[test]
fn logs_restarts_and_previous_instances() {
    let Some(c) = cluster(TestCluster::builder().namespace("l").pod(Pod::new("ticker").command(&[
        "sh",
        "-c",
        "echo booted; i=0; while true; do i=$((i+1)); echo tick $i; echo warn $i >&2; sleep 0.05; done",
    ]))) else {
        return;
    };
    let cl = Client::admin(&c);
    std::thread::sleep(Duration::from_millis(400));
    rt().block_on(async {
        let all = cl.req("GET", "/api/v1/namespaces/l/pods/ticker/log", None).await.unwrap();
        assert_eq!(all.status, 200);
        assert_eq!(all.headers.get("content-type").unwrap(), "text/plain");
        // stdout and stderr are separate pipes, so only each stream's own order is fixed
        let text = all.text();
        let stdout: Vec<&str> = text.lines().filter(|l| !l.starts_with("warn")).collect();
        assert_eq!(stdout.get(..3), Some(&["booted", "tick 1", "tick 2"][..]), "{text}");
        assert!(text.contains("warn 1\n"));
        let tail = cl
            .req("GET", "/api/v1/namespaces/l/pods/ticker/log?tailLines=2&timestamps=true", None)
            .await
            .unwrap()
            .text();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            let (ts, _) = l.split_once(' ').unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{l}");
            assert_eq!(ts.len(), "2026-11-23T05:40:54.929426696Z".len());
        }
        let r = cl.req("GET", "/api/v1/namespaces/l/pods/ticker/log?previous=true", None).await.unwrap();
        assert_eq!(
            (r.status, r.json()["message"].as_str().unwrap()),
            (400, "previous terminated container \"main\" in pod \"ticker\" not found")
        );
        let r = cl.req("GET", "/api/v1/namespaces/l/pods/ticker/log?container=nope", None).await.unwrap();
        assert_eq!(
            (r.status, r.json()["message"].as_str().unwrap()),
            (400, "container nope is not valid for pod ticker")
        );
        // sinceTime has whole seconds: take the next one, so everything logged so far is older
        let since = (chrono::Utc::now() + chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let limited = cl.req("GET", "/api/v1/namespaces/l/pods/ticker/log?limitBytes=10", None).await.unwrap().text();
        assert_eq!(limited.len(), 10);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let recent = cl
            .req("GET", &format!("/api/v1/namespaces/l/pods/ticker/log?sinceTime={since}"), None)
            .await
            .unwrap()
            .text();
        assert!(!recent.contains("booted"), "sinceTime filtered nothing");
        // follow: new lines arrive on an open stream
        let r = cl
            .send("GET", "/api/v1/namespaces/l/pods/ticker/log?follow=true&tailLines=0", "application/json", vec![])
            .await
            .unwrap();
        use http_body_util::BodyExt;
        let mut body = r.into_body();
        let mut got = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.contains("tick") && tokio::time::Instant::now() < deadline {
            if let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(1), body.frame()).await {
                if let Some(d) = f.data_ref() {
                    got.push_str(&String::from_utf8_lossy(d));
                }
            }
        }
        assert!(got.contains("tick"), "follow delivered {got:?}");
    });
    // kill the container's process: the kubelet restarts it and keeps the previous log
    let pid = c.container_pid("l", "ticker", "main").unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    let pod = c
        .wait_for(Duration::from_secs(10), || {
            c.get("pods", "l", "ticker").filter(|p| {
                p["status"]["containerStatuses"][0]["restartCount"] == 1
                    && p["status"]["containerStatuses"][0]["ready"] == true
            })
        })
        .unwrap();
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137);
    assert_eq!(last["reason"], "Error");
    rt().block_on(async {
        let prev = cl.req("GET", "/api/v1/namespaces/l/pods/ticker/log?previous=true", None).await.unwrap();
        assert_eq!(prev.status, 200);
        assert_eq!(prev.text().lines().find(|l| !l.starts_with("warn")), Some("booted"));
        assert!(prev.text().lines().count() > 5);
    });
}

#[test]
fn ephemeral_container_joins_a_distroless_pods_process_namespace() {
    let Some(c) = cluster(TestCluster::builder().namespace("d").pod(Pod::distroless("app"))) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        // no shell in a distroless container
        let s = cl.ws(&exec_path("d", "app", "main", &["sh", "-c", "id"], false), V5, None, None).await.unwrap();
        assert_eq!(s.status()["reason"], "InternalError");
        let logs = cl.req("GET", "/api/v1/namespaces/d/pods/app/log", None).await.unwrap().text();
        assert_eq!(logs, "distroless app listening on :8080\n");
        // add a debugger targeting main, as kubectl debug does
        let mut pod = cl.req("GET", "/api/v1/namespaces/d/pods/app/ephemeralcontainers", None).await.unwrap().json();
        pod["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:1.36", "command": ["sleep", "3600"],
            "targetContainerName": "main", "stdin": false, "tty": false}]);
        let r = cl.req("PUT", "/api/v1/namespaces/d/pods/app/ephemeralcontainers", Some(&pod)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        // existing ephemeral containers cannot be changed
        let mut again = cl.req("GET", "/api/v1/namespaces/d/pods/app/ephemeralcontainers", None).await.unwrap().json();
        again["spec"]["ephemeralContainers"][0]["image"] = json!("other");
        let r = cl.req("PUT", "/api/v1/namespaces/d/pods/app/ephemeralcontainers", Some(&again)).await.unwrap();
        assert_eq!(r.status, 422);
    });
    c.wait_for(Duration::from_secs(10), || {
        c.get("pods", "d", "app")
            .filter(|p| p["status"]["ephemeralContainerStatuses"][0]["state"].get("running").is_some())
    })
    .unwrap();
    rt().block_on(async {
        // the debugger sees the distroless process and its listening socket
        let s =
            cl.ws(&exec_path("d", "app", "debugger", &["ps", "-o", "pid,args"], false), V5, None, None).await.unwrap();
        let ps = String::from_utf8_lossy(&s.channel(1)).to_string();
        assert!(ps.contains("/app"), "{ps}");
        let s =
            cl.ws(&exec_path("d", "app", "debugger", &["cat", "/proc/net/tcp"], false), V5, None, None).await.unwrap();
        let tcp = String::from_utf8_lossy(&s.channel(1)).to_string();
        assert!(tcp.contains(":1F90 00000000:0000 0A"), "port 8080 listening: {tcp}");
        // and the target's filesystem through /proc/1/root
        let s =
            cl.ws(&exec_path("d", "app", "debugger", &["ls", "/proc/1/root/"], false), V5, None, None).await.unwrap();
        assert!(String::from_utf8_lossy(&s.channel(1)).contains("app"));
    });
}

#[test]
fn relabelled_deployment_pod_is_released_replaced_and_dropped_from_endpoints() {
    let Some(c) = cluster(
        TestCluster::builder()
            .namespace("q")
            .object(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "web", "image": "busybox:1.36", "ports": [{"containerPort": 8080, "name": "http"}]}]}}}}))
            .object(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})),
    ) else {
        return;
    };
    let ready_web = || {
        c.list("pods", Some("q"))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["status"]["containerStatuses"][0]["ready"] == true)
            .collect::<Vec<_>>()
    };
    let pods = c.wait_for(Duration::from_secs(10), || Some(ready_web()).filter(|p| p.len() == 2)).unwrap();
    let rs = &c.list("replicasets", Some("q"))[0];
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["uid"], rs["metadata"]["uid"]);
    let slice_targets = || -> Vec<String> {
        c.list("endpointslices", Some("q"))
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| e["targetRef"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    c.wait_for(Duration::from_secs(5), || Some(slice_targets()).filter(|t| t.len() == 2)).unwrap();
    assert_eq!(c.list("endpointslices", Some("q"))[0]["ports"][0]["port"], 8080, "named targetPort resolved");

    let cl = Client::admin(&c);
    rt().block_on(async {
        let r = cl
            .req_ct(
                "PATCH",
                &format!("/api/v1/namespaces/q/pods/{victim}"),
                "application/merge-patch+json",
                br#"{"metadata":{"labels":{"app":null,"quarantine":"true"}}}"#.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    });
    let released = c
        .wait_for(Duration::from_secs(5), || {
            c.get("pods", "q", &victim)
                .filter(|p| p["metadata"]["ownerReferences"].as_array().is_none_or(|r| r.is_empty()))
        })
        .unwrap();
    assert_eq!(released["status"]["phase"], "Running", "the released pod keeps running");
    let now = c.wait_for(Duration::from_secs(10), || Some(ready_web()).filter(|p| p.len() == 2)).unwrap();
    assert!(now.iter().all(|p| p["metadata"]["name"] != victim.as_str()), "a replacement was created");
    c.wait_for(Duration::from_secs(5), || Some(slice_targets()).filter(|t| t.len() == 2 && !t.contains(&victim)))
        .unwrap();
    let events = c.list("events", Some("q"));
    assert!(events.iter().any(|e| e["reason"] == "SuccessfulCreate" && e["involvedObject"]["kind"] == "ReplicaSet"));
    // the audit log shows the controller's release, as its service account
    let audit = c.audit_events().unwrap();
    assert!(audit.iter().any(|e| e["user"]["username"] == "system:serviceaccount:kube-system:replicaset-controller"
        && e["verb"] == "patch"
        && e["objectRef"]["name"] == victim.as_str()));
}

#[test]
fn daemonset_and_statefulset_caveats_and_cordon() {
    let tmpl = |app: &str| json!({"metadata": {"labels": {"app": app}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "busybox:1.36"}]}});
    let Some(c) = cluster(
        TestCluster::builder()
            .namespace("k")
            .object(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": tmpl("agent")}}))
            .object(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": tmpl("db")}})),
    ) else {
        return;
    };
    let by_app = |app: &str| {
        c.list("pods", Some("k")).into_iter().filter(|p| p["metadata"]["labels"]["app"] == app).collect::<Vec<_>>()
    };
    let ds_pod = c
        .wait_for(Duration::from_secs(10), || by_app("agent").into_iter().find(|p| p["status"]["phase"] == "Running"))
        .unwrap();
    let db0 = c
        .wait_for(Duration::from_secs(10), || c.get("pods", "k", "db-0").filter(|p| p["status"]["phase"] == "Running"))
        .unwrap();
    assert_eq!(db0["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], "db-0");
    let cl = Client::admin(&c);
    let relabel = br#"{"metadata":{"labels":{"app":null,"quarantine":"true"}}}"#.to_vec();
    rt().block_on(async {
        let ds_name = ds_pod["metadata"]["name"].as_str().unwrap();
        cl.req_ct(
            "PATCH",
            &format!("/api/v1/namespaces/k/pods/{ds_name}"),
            "application/merge-patch+json",
            relabel.clone(),
        )
        .await
        .unwrap();
        cl.req_ct("PATCH", "/api/v1/namespaces/k/pods/db-0", "application/merge-patch+json", relabel.clone())
            .await
            .unwrap();
    });
    // DaemonSet: the replacement lands on the same node
    let replacement = c
        .wait_for(Duration::from_secs(10), || {
            by_app("agent").into_iter().find(|p| p["metadata"]["name"] != ds_pod["metadata"]["name"])
        })
        .unwrap();
    assert_eq!(replacement["spec"]["nodeName"], ds_pod["spec"]["nodeName"]);
    // StatefulSet: db-0 is taken by the quarantined pod, so no replacement can start
    let ev = c
        .wait_for(Duration::from_secs(10), || {
            c.list("events", Some("k"))
                .into_iter()
                .find(|e| e["reason"] == "FailedCreate" && e["involvedObject"]["name"] == "db")
        })
        .unwrap();
    assert!(ev["message"].as_str().unwrap().contains("pods \"db-0\" already exists"), "{ev}");
    assert!(c.get("pods", "k", "db-0").unwrap()["metadata"]["ownerReferences"].as_array().is_none_or(|r| r.is_empty()));

    // cordon: new pods stay Pending and Unschedulable
    rt().block_on(async {
        cl.req_ct(
            "PATCH",
            "/api/v1/nodes/node-0",
            "application/strategic-merge-patch+json",
            br#"{"spec":{"unschedulable":true}}"#.to_vec(),
        )
        .await
        .unwrap();
    });
    c.apply(Pod::new("late").to_object("k")).unwrap();
    let late = c
        .wait_for(Duration::from_secs(5), || {
            c.get("pods", "k", "late").filter(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
        })
        .unwrap();
    assert_eq!(late["status"]["phase"], "Pending");
    assert!(late["spec"].get("nodeName").is_none());
}

#[test]
fn deleting_a_pod_stops_its_containers_and_removes_it() {
    let Some(c) = cluster(TestCluster::builder().namespace("del").pod(Pod::new("gone"))) else { return };
    let pid = c.container_pid("del", "gone", "main").unwrap();
    let cl = Client::admin(&c);
    let r = rt().block_on(async { cl.req("DELETE", "/api/v1/namespaces/del/pods/gone", None).await.unwrap() });
    assert_eq!(r.status, 200);
    assert!(r.json()["metadata"]["deletionTimestamp"].is_string(), "graceful deletion returns the object");
    c.wait_for(Duration::from_secs(10), || if c.get("pods", "del", "gone").is_none() { Some(()) } else { None })
        .unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // the kubelet's final delete (grace period 0) is audited as the node
    c.wait_for(Duration::from_secs(2), || {
        c.audit_events()
            .unwrap()
            .into_iter()
            .find(|e| e["verb"] == "delete" && e["user"]["username"] == "system:node:node-0")
    })
    .expect("kubelet's final delete audited");
}

#[test]
fn attach_streams_the_containers_stdio_both_ways() {
    let Some(c) = cluster(TestCluster::builder().namespace("att")) else { return };
    c.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo", "namespace": "att"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": "busybox:1.36", "stdin": true,
                 "command": ["sh", "-c", "echo ready; while read line; do echo got $line; echo err $line >&2; done"]}]}}))
        .unwrap();
    c.wait_pod_running("att", "echo", Duration::from_secs(10)).unwrap();
    let cl = Client::admin(&c);
    let s = rt()
        .block_on(cl.ws(
            "/api/v1/namespaces/att/pods/echo/attach?container=main&stdin=true&stdout=true&stderr=true",
            V5,
            Some(b"hello\n"),
            Some(Duration::from_millis(800)),
        ))
        .unwrap();
    assert_eq!(s.protocol, "v5.channel.k8s.io");
    assert_eq!(s.frames[0], (1, vec![]));
    assert_eq!(String::from_utf8_lossy(&s.channel(1)), "got hello\n");
    assert_eq!(String::from_utf8_lossy(&s.channel(2)), "err hello\n");
    // what went through attach is in the container's log too
    let log = rt().block_on(cl.req("GET", "/api/v1/namespaces/att/pods/echo/log", None)).unwrap().text();
    assert!(log.contains("ready\n") && log.contains("got hello\n"), "{log}");
    let audit = c.audit_events().unwrap();
    assert!(audit
        .iter()
        .any(|e| e["objectRef"]["subresource"] == "attach" && e["verb"] == "get" && e["stage"] == "ResponseStarted"));
}

#[test]
fn replicaset_adopts_a_matching_orphan_instead_of_creating_a_pod() {
    let Some(c) = cluster(TestCluster::builder().namespace("adopt").pod(Pod::new("orphan").label("app", "adopt")))
    else {
        return;
    };
    let rs = c
        .apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs", "namespace": "adopt"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "adopt"}},
                     "template": {"metadata": {"labels": {"app": "adopt"}}, "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}}}))
        .unwrap();
    let orphan = c
        .wait_for(Duration::from_secs(5), || {
            c.get("pods", "adopt", "orphan")
                .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"])
        })
        .unwrap();
    assert_eq!(orphan["metadata"]["ownerReferences"][0]["controller"], true);
    let status = c
        .wait_for(Duration::from_secs(5), || {
            c.get("replicasets", "adopt", "rs").filter(|r| r["status"]["replicas"] == 1)
        })
        .unwrap();
    assert_eq!(status["status"]["readyReplicas"], 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.list("pods", Some("adopt")).len(), 1, "the ReplicaSet created a pod although it adopted one");
}

#[test]
fn forward_reaches_a_port_inside_the_pods_network_namespace() {
    use std::io::{Read, Write};
    let Some(c) = cluster(TestCluster::builder().namespace("fwd")) else { return };
    c.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "srv", "namespace": "fwd"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": "busybox:1.36",
                 "command": ["sh", "-c", "while true; do nc -l -p 8080 -e sh -c 'read line; echo got $line'; done"]}]}}))
        .unwrap();
    c.wait_pod_running("fwd", "srv", Duration::from_secs(10)).unwrap();
    let addr = c.forward("fwd", "srv", "main", 8080).unwrap();
    let got = c
        .wait_for(Duration::from_secs(10), || {
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"hello\n").ok()?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            (!out.is_empty()).then_some(out)
        })
        .unwrap();
    assert_eq!(got, "got hello\n");
}
