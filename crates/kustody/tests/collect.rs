//! `kustody collect` and `kustody verify` end to end against the test cluster, run as a user
//! holding exactly the shipped `deploy/rbac/kustody-reader` ClusterRole: a shell pod with a
//! process whose executable was deleted, a listening socket and a file dropped after start; a
//! pod with three containers, one distroless (ephemeral debug container); exec forbidden; a pod
//! deleted mid-collection. The target containers' root filesystems are compared before and
//! after: collection writes nothing into them.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "tests fail by panicking")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod, TestCluster};
use kustody_testkit::{repo_file, run, Run};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET_VALUE: &str = "hunter2-do-not-store";

fn kustody(kubeconfig: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kustody"));
    cmd.args(args).env_remove("KUBECONFIG");
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    run(&mut cmd)
}

/// A cluster with the shipped roles and a kubeconfig for a user bound to kustody-reader.
fn setup(b: kustody_testcluster::Builder) -> Option<(TestCluster, PathBuf, tempfile::TempDir)> {
    let c = cluster(b)?;
    c.apply_yaml(&repo_file("deploy/rbac/kustody-reader.yaml")).unwrap();
    let token = c.add_user_with_cluster_role("analyst", "kustody-reader", None).unwrap();
    let kc = c.write_kubeconfig_for_token("analyst", &token).unwrap();
    Some((c, kc, tempfile::tempdir().unwrap()))
}

/// A busybox container that starts a listener from a copy of busybox and deletes the copy,
/// then drops an executable file more than a second after it started.
fn suspect(ns: &str) -> Value {
    let mut pod = Pod::new("suspect")
        .label("app", "shop")
        .command(&[
            "sh",
            "-c",
            "cp /bin/busybox /tmp/busybox-x && (/tmp/busybox-x httpd -f -p 4444 &) ; sleep 0.3; rm /tmp/busybox-x; \
             sleep 1.6; echo planted > /tmp/implant.sh; chmod 755 /tmp/implant.sh; echo ready; exec sleep 3600",
        ])
        .to_object(ns);
    pod["spec"]["containers"][0]["env"] = json!([{"name": "DB_PASSWORD", "value": SECRET_VALUE}]);
    pod
}

/// Everything about a rootfs that collection could change (content, mode, size, mtime), by path.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "proc" || rel == "sys" || rel == "dev" {
                continue;
            }
            let content =
                if m.is_file() { format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap())) } else { String::new() };
            out.insert(rel, format!("{:o} {} {} {}", m.mode(), m.len(), m.mtime(), content));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn files_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn all_bytes_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn tar_names(p: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(std::fs::File::open(p).unwrap());
    ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn shell_pod_volatile_state_drift_and_custody() {
    let ns = "ir";
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop", "namespace": ns},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}});
    let other = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "unrelated", "namespace": ns},
        "spec": {"selector": {"app": "else"}, "ports": [{"port": 80}]}});
    let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "shop-in", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "shop"}}, "policyTypes": ["Ingress"], "ingress": [{}]}});
    let Some((c, kc, dir)) =
        setup(TestCluster::builder().namespace(ns).object(suspect(ns)).object(svc).object(other).object(np))
    else {
        return;
    };
    let rootfs = c
        .wait_for(Duration::from_secs(20), || {
            let r = c.container_rootfs(ns, "suspect", "main")?;
            r.join("tmp/implant.sh").exists().then_some(r)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = snapshot(&rootfs);
    let out = dir.path().join("bundle");
    let r = kustody(
        Some(&kc),
        &[
            "collect",
            "pod/suspect",
            "-n",
            ns,
            "--output-file",
            out.to_str().unwrap(),
            "--case",
            "IR-7",
            "--paths",
            "/tmp/implant.sh",
            "/etc/host*",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(snapshot(&rootfs), before, "collection changed the container's filesystem");

    let cdir = out.join("pods/ir/suspect/containers/main");
    // the process running a deleted copy of busybox, and its listening socket
    let procs = read_json(&cdir.join("processes.json"));
    let dropper = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["exe_deleted"] == true)
        .unwrap_or_else(|| panic!("no deleted executable in {procs:#}"));
    assert_eq!(dropper["exe"], "/tmp/busybox-x");
    assert_eq!(dropper["cmdline"], json!(["/tmp/busybox-x", "httpd", "-f", "-p", "4444"]));
    assert!(dropper["started"].as_str().unwrap().starts_with("20"), "{dropper}");
    assert!(dropper["fds"]["sockets"].as_u64().unwrap() >= 1);
    let net = read_json(&cdir.join("network.json"));
    let l =
        net["listening"].as_array().unwrap().iter().find(|s| s["local"] == "0.0.0.0:4444" || s["local"] == "[::]:4444");
    let l = l.unwrap_or_else(|| panic!("no listener on 4444: {net:#}"));
    assert_eq!(l["pids"], json!([dropper["pid"]]));
    assert!(r.stdout.contains("DELETED EXECUTABLE"), "{}", r.stdout);
    // environment: names kept, values nowhere in the bundle
    let pid1 = procs.as_array().unwrap().iter().find(|p| p["pid"] == 1).unwrap();
    assert!(pid1["env_names"].as_array().unwrap().contains(&json!("DB_PASSWORD")));
    for (p, bytes) in all_bytes_under(&out) {
        assert!(!String::from_utf8_lossy(&bytes).contains(SECRET_VALUE), "{} holds the secret value", p.display());
    }
    // drift: the dropped file, hashed; busybox hashed once for all its hard links
    let files = files_jsonl(&cdir.join("files.jsonl"));
    let implant = files.iter().find(|f| f["path"] == "/tmp/implant.sh").unwrap();
    assert_eq!(implant["drift"], true);
    assert_eq!(implant["sha256"], format!("{:x}", Sha256::digest(b"planted\n")));
    let bb = files.iter().find(|f| f["path"] == "/bin/busybox").unwrap();
    assert_eq!(bb["sha256"], format!("{:x}", Sha256::digest(std::fs::read(rootfs.join("bin/busybox")).unwrap())));
    for f in files.iter().filter(|f| f["inode"] == bb["inode"]) {
        assert_eq!(f["sha256"], bb["sha256"], "hard links share the inode's hash: {f}");
    }
    assert!(
        files
            .iter()
            .filter(|f| f["type"] == "file" && f["mode"].as_str().unwrap().ends_with('5'))
            .all(|f| !f["sha256"].is_null() || f["path"].as_str().unwrap().starts_with("/var/run/secrets")),
        "every executable hashed"
    );
    let token = files.iter().find(|f| f["path"] == "/var/run/secrets/kubernetes.io/serviceaccount/token").unwrap();
    assert!(token["sha256"].is_null(), "the token is listed, never hashed");
    let drift = read_json(&cdir.join("drift.json"));
    assert!(drift.as_array().unwrap().iter().any(|f| f["path"] == "/tmp/implant.sh"));
    // copies
    let names = tar_names(&cdir.join("paths.tar"));
    assert!(names.contains(&"./tmp/implant.sh".to_owned()) && names.contains(&"./etc/hosts".to_owned()), "{names:?}");
    // name resolution, mounts, logs
    assert!(std::fs::read_to_string(cdir.join("etc/resolv.conf")).unwrap().contains("nameserver"));
    assert!(!std::fs::read(cdir.join("raw/mountinfo")).unwrap().is_empty());
    assert!(std::fs::read_to_string(cdir.join("log.txt")).unwrap().contains("ready"));
    // cluster context
    let cl = out.join("pods/ir/suspect/cluster");
    let pod = read_json(&cl.join("pod.json"));
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], "<redacted by kustody>");
    let svcs = read_json(&cl.join("services.json"));
    assert_eq!(svcs.as_array().unwrap().len(), 1);
    assert_eq!(svcs[0]["metadata"]["name"], "shop");
    assert_eq!(read_json(&cl.join("networkpolicies.json"))[0]["metadata"]["name"], "shop-in");
    assert_eq!(read_json(&cl.join("serviceaccount.json"))["metadata"]["name"], "default");
    assert!(read_json(&cl.join("rbac.json"))["serviceAccount"] == "system:serviceaccount:ir:default");
    assert_eq!(read_json(&cl.join("node.json"))["kind"], "Node");
    assert!(read_json(&cl.join("images.json"))[0]["imageID"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(read_json(&cl.join("events.json"))["kind"], "EventList");
    // the manifest: who, what, when, how
    let m = read_json(&out.join("MANIFEST.json"));
    assert_eq!(m["format"], "kustody-evidence/1");
    assert_eq!(m["case"], "IR-7");
    assert_eq!(m["collector"]["username"], "analyst");
    assert!(m["failures"].as_array().unwrap().is_empty(), "{:#}", m["failures"]);
    let arts = m["artifacts"].as_array().unwrap();
    let art = |p: &str| arts.iter().find(|a| a["path"] == p).unwrap_or_else(|| panic!("{p} not in manifest"));
    let pa = art("pods/ir/suspect/containers/main/paths.tar");
    assert_eq!(pa["source"]["kind"], "exec");
    assert_eq!(pa["source"]["command"][0], "sh");
    assert!(art("pods/ir/suspect/cluster/pod.json")["source"]["url"] == "/api/v1/namespaces/ir/pods/suspect");
    for a in arts {
        assert!(a["started"].as_str().unwrap() <= a["finished"].as_str().unwrap());
        assert_eq!(a["sha256"].as_str().unwrap().len(), 64);
    }
    let printed = r.stdout.lines().find_map(|l| l.strip_prefix("MANIFEST.json sha256: ")).unwrap().to_owned();
    assert_eq!(printed, format!("{:x}", Sha256::digest(std::fs::read(out.join("MANIFEST.json")).unwrap())));
    assert!(std::fs::read_to_string(out.join("MANIFEST.json.sha256")).unwrap().starts_with(&printed));
    assert!(m["targets"][0]["containers"][0]["collector"]["transcript_sha256"].as_str().unwrap().len() == 64);

    // verify: intact, then a one-byte change is found and named
    let v = kustody(None, &["verify", out.to_str().unwrap(), "--expect", &printed]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert!(v.stdout.contains("INTACT"));
    let target = cdir.join("network.json");
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let v = kustody(None, &["verify", out.to_str().unwrap()]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(v.stdout.contains("changed: pods/ir/suspect/containers/main/network.json"), "{}", v.stdout);
    assert!(v.stdout.contains("NOT INTACT"));
    // evidence is never overwritten
    let again = kustody(Some(&kc), &["collect", "pod/suspect", "-n", ns, "--output-file", out.to_str().unwrap()]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("never overwritten"), "{}", again.stderr);
}

#[test]
fn three_containers_one_distroless_into_an_archive() {
    let ns = "ir";
    let pod = Pod::new("trio")
        .label("app", "trio")
        .container("side", "busybox:1.36", &["sh", "-c", "echo side up; exec sleep 3600"])
        .container("app", "gcr.io/distroless/static:nonroot", &[]);
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).pod(pod)) else {
        return;
    };
    let app_root = c.container_rootfs(ns, "trio", "app").unwrap();
    let before = snapshot(&app_root);
    let out = dir.path().join("trio.tar.zst");
    let r = kustody(
        Some(&kc),
        &["collect", "trio", "-n", ns, "--output-file", out.to_str().unwrap(), "--paths", "/app", "--profile", "full"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(snapshot(&app_root), before, "the distroless container's filesystem changed");
    assert!(out.exists() && !dir.path().join("trio.tar.zst.partial").exists());
    assert!(r.stdout.contains("collected 3 container(s) in 1 pod(s)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("note: added ephemeral container kustody-") && r.stdout.contains("to read app"),
        "{}",
        r.stdout
    );
    let v = kustody(None, &["verify", out.to_str().unwrap(), "-o", "json"]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    let report: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(report["intact"], true);
    // read the archive back
    let unpacked = dir.path().join("x");
    let dec = zstd::stream::read::Decoder::new(std::fs::File::open(&out).unwrap()).unwrap();
    tar::Archive::new(dec).unpack(&unpacked).unwrap();
    let m = read_json(&unpacked.join("bundle/MANIFEST.json"));
    let cs = m["targets"][0]["containers"].as_array().unwrap();
    let by: BTreeMap<&str, &Value> = cs.iter().map(|c| (c["name"].as_str().unwrap(), c)).collect();
    assert_eq!(by["main"]["via"], "exec");
    assert_eq!(by["side"]["via"], "exec");
    assert_eq!(by["app"]["via"], "debug");
    assert!(by["app"]["debug_container"]["patch"]["url"].as_str().unwrap().ends_with("/ephemeralcontainers"));
    assert!(by["app"]["listening"][0].as_str().unwrap().contains(":8080"), "{:#}", by["app"]);
    // the debug container's own processes are not the target's
    let procs = read_json(&unpacked.join("bundle/pods/ir/trio/containers/app/processes.json"));
    assert_eq!(procs.as_array().unwrap().len(), 1, "{procs:#}");
    assert_eq!(procs[0]["cmdline"][0], "/app");
    let app_tar = unpacked.join("bundle/pods/ir/trio/containers/app/paths.tar");
    assert_eq!(tar_names(&app_tar), vec!["./app".to_owned()]);
    let files = files_jsonl(&unpacked.join("bundle/pods/ir/trio/containers/app/files.jsonl"));
    let app = files.iter().find(|f| f["path"] == "/app").unwrap();
    assert_eq!(app["sha256"], format!("{:x}", Sha256::digest(std::fs::read(app_root.join("app")).unwrap())));
    // the debug container was stopped after collection
    c.wait_for(Duration::from_secs(10), || {
        let p = c.get("pods", ns, "trio")?;
        let st = p["status"]["ephemeralContainerStatuses"].as_array()?.first()?.clone();
        st["state"].get("terminated").map(|_| ())
    })
    .unwrap();
}

#[test]
fn exec_forbidden_is_recorded_and_the_rest_collected() {
    let ns = "ir";
    let Some(c) = cluster(TestCluster::builder().namespace(ns).pod(Pod::new("p").label("app", "p"))) else {
        return;
    };
    // a reader without pods/exec
    let rules = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log", "serviceaccounts", "events", "services"], "verbs": ["get", "list"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["list"]}
    ]);
    let token = c.add_user("noexec", &[], rules, Some(ns)).unwrap();
    let kc = c.write_kubeconfig_for_token("noexec", &token).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let r = kustody(Some(&kc), &["collect", "pod/p", "-n", ns, "--output-file", out.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("pods/exec"), "{}", r.stdout);
    let m = read_json(&out.join("MANIFEST.json"));
    let failures = m["failures"].as_array().unwrap();
    let f = |item: &str| failures.iter().find(|f| f["item"].as_str().unwrap().ends_with(item));
    assert!(f("containers/main/collector").unwrap()["reason"].as_str().unwrap().contains("forbidden"));
    // cluster-scoped reads this user lacks are named, not fatal
    assert!(f("cluster/node").unwrap()["reason"].as_str().unwrap().contains("nodes"));
    assert!(out.join("pods/ir/p/cluster/pod.json").exists());
    assert!(out.join("pods/ir/p/containers/main/log.txt").exists());
    assert_eq!(kustody(None, &["verify", out.to_str().unwrap()]).code, 0);
}

#[test]
fn pod_deleted_mid_collection_leaves_a_valid_partial_bundle() {
    let ns = "ir";
    // many files make the listing take long enough to delete the pod under it
    let pod = Pod::new("doomed").command(&[
        "sh",
        "-c",
        "mkdir -p /tmp/m && cd /tmp/m && seq 1 40000 | xargs touch && echo ready; exec sleep 3600",
    ]);
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).pod(pod)) else {
        return;
    };
    c.wait_for(Duration::from_secs(60), || {
        let r = c.container_rootfs(ns, "doomed", "main")?;
        (std::fs::read_dir(r.join("tmp/m")).ok()?.count() >= 40000).then_some(())
    })
    .unwrap();
    let out = dir.path().join("b");
    let child = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args([
            "collect",
            "pod/doomed",
            "-n",
            ns,
            "--output-file",
            out.to_str().unwrap(),
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // delete as soon as the collector's exec has started
    let audit = c.audit_log_path();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let text = std::fs::read_to_string(audit).unwrap_or_default();
        if text.lines().any(|l| {
            l.contains("\"analyst\"") && l.contains("pods/doomed/exec") && l.contains("sh") && l.contains("-s")
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    c.request("DELETE", &format!("/api/v1/namespaces/{ns}/pods/doomed?gracePeriodSeconds=0"), None).unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let m = read_json(&out.join("MANIFEST.json"));
    let reasons: Vec<String> =
        m["failures"].as_array().unwrap().iter().map(|f| format!("{}: {}", f["item"], f["reason"])).collect();
    assert!(reasons.iter().any(|r| r.contains("containers/main/collector")), "{reasons:#?}");
    assert!(out.join("pods/ir/doomed/cluster/pod.json").exists());
    assert_eq!(kustody(None, &["verify", out.to_str().unwrap()]).code, 0, "the partial bundle verifies");
}

#[test]
fn selector_sweep_across_namespaces_with_owners_previous_logs_and_changed_files() {
    let ns = "shop";
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "cart", "namespace": ns},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "cart"}},
            "template": {"metadata": {"labels": {"app": "cart", "team": "red"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "busybox:1.36",
                    "command": ["sh", "-c", "sleep 1.5; echo x > /tmp/dropped; exec sleep 3600"]}]}}}});
    // in another namespace: restarts once (a previous log), and drops a file
    let flaky = Pod::new("flaky").namespace("other").label("team", "red").command(&[
        "sh",
        "-c",
        "if [ -e /state/second ]; then echo second life; sleep 1.5; echo y > /tmp/dropped; exec sleep 3600; \
         else touch /state/second; echo first life; exit 1; fi",
    ]);
    // the marker survives the restart in an emptyDir, as on a real node
    let mut flaky = flaky.to_object("other");
    flaky["spec"]["volumes"] = json!([{"name": "state", "emptyDir": {}}]);
    flaky["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "state", "mountPath": "/state"}]);
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).object(deploy).no_wait()) else {
        return;
    };
    c.create_namespace("other").unwrap();
    c.apply(Pod::new("lonely").to_object("other")).unwrap();
    c.apply(flaky).unwrap();
    // wait: 3 cart pods and flaky restarted, each with its file dropped
    c.wait_for(Duration::from_secs(30), || {
        let pods: Vec<Value> =
            c.list("pods", None).into_iter().filter(|p| p["metadata"]["labels"]["team"] == "red").collect();
        let ready = pods.iter().filter(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let pns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            let c0 = if pns == ns { "web" } else { "main" };
            c.container_rootfs(pns, name, c0).is_some_and(|r| r.join("tmp/dropped").exists())
        });
        (ready.count() == 4).then_some(())
    })
    .unwrap();
    let out = dir.path().join("sweep");
    let r = kustody(
        Some(&kc),
        &[
            "collect",
            "-l",
            "team=red",
            "-A",
            "--profile",
            "full",
            "--output-file",
            out.to_str().unwrap(),
            "--parallel",
            "2",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("collected 4 container(s) in 4 pod(s)"), "{}", r.stdout);
    assert!(r.stderr.contains("[4/4]"), "per-pod progress without a terminal: {}", r.stderr);
    let m = read_json(&out.join("MANIFEST.json"));
    let pods: Vec<String> = m["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}/{}", t["namespace"].as_str().unwrap(), t["pod"].as_str().unwrap()))
        .collect();
    assert!(pods.contains(&"other/flaky".to_owned()) && !pods.iter().any(|p| p.ends_with("/lonely")), "{pods:?}");
    // owner chain: ReplicaSet, then Deployment
    let cart = pods.iter().find(|p| p.starts_with("shop/")).unwrap();
    let owners = read_json(&out.join(format!("pods/{cart}/cluster/owners.json")));
    let kinds: Vec<&str> = owners.as_array().unwrap().iter().map(|o| o["object"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["ReplicaSet", "Deployment"]);
    // previous log of the restarted container, and the current one
    let prev = std::fs::read_to_string(out.join("pods/other/flaky/containers/main/log.previous.txt")).unwrap();
    assert!(prev.contains("first life") && !prev.contains("second life"), "{prev}");
    assert!(std::fs::read_to_string(out.join("pods/other/flaky/containers/main/log.txt"))
        .unwrap()
        .contains("second life"));
    // full profile: the changed file, archived
    let names = tar_names(&out.join(format!("pods/{cart}/containers/web/changed.tar")));
    assert!(names.contains(&"./tmp/dropped".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("serviceaccount")), "credentials never copied: {names:?}");
    assert_eq!(kustody(None, &["verify", out.to_str().unwrap()]).code, 0);
    // a selector matching nothing is an error, and writes nothing
    let none = dir.path().join("none");
    let r = kustody(Some(&kc), &["collect", "-l", "team=blue", "-n", ns, "--output-file", none.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no pod matches"), "{}", r.stderr);
    assert!(!none.exists());
}

/// `--via debug` on a container that has a shell: the target's own tools are not used (they may
/// be the attacker's); the debug container runs as the target's user.
#[test]
fn via_debug_reads_a_shell_container_with_the_debug_images_tools() {
    let ns = "ir";
    let pod = Pod::new("shelly")
        .command(&["sh", "-c", "echo hi > /tmp/mark; exec sleep 3600"])
        .spec(json!({"securityContext": {"runAsUser": 0}}));
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).pod(pod)) else {
        return;
    };
    let root = c.container_rootfs(ns, "shelly", "main").unwrap();
    let before = snapshot(&root);
    let out = dir.path().join("b");
    let r = kustody(
        Some(&kc),
        &["collect", "pod/shelly", "-n", ns, "--via", "debug", "--output-file", out.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(snapshot(&root), before);
    let m = read_json(&out.join("MANIFEST.json"));
    let cont = &m["targets"][0]["containers"][0];
    assert_eq!(cont["via"], "debug");
    assert!(cont["files"].as_u64().unwrap() > 100, "{cont:#}");
    let sc = &cont["debug_container"]["patch"]["body"]["spec"]["ephemeralContainers"][0]["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "{sc}");
    let files = files_jsonl(&out.join("pods/ir/shelly/containers/main/files.jsonl"));
    assert!(files.iter().any(|f| f["path"] == "/tmp/mark"), "the target's filesystem, not the debug image's");
    let procs = read_json(&out.join("pods/ir/shelly/containers/main/processes.json"));
    assert!(
        procs.as_array().unwrap().iter().all(|p| p["cmdline"][0] != "sleep" || p["cmdline"][1] == "3600"),
        "{procs:#}"
    );
}

#[test]
fn argument_mistakes_are_explained_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-kubeconfig");
    let r = kustody(Some(&nowhere), &["collect", "--paths", "/tmp/x", "pod/y"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("put the pod first"), "{}", r.stderr);
    let r = kustody(Some(&nowhere), &["collect", "pod/y", "--paths", "/tmp/$(reboot)"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not allowed"), "{}", r.stderr);
    let r = kustody(Some(&nowhere), &["collect"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("name a pod"), "{}", r.stderr);
    let r = kustody(None, &["verify", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no such bundle"), "{}", r.stderr);
}

/// Seen on a real v1.36 cluster: collecting a shell-less pod reported `/etc/hosts` as changed
/// since start — the kubelet rewrites the pod's `/etc/hosts` whenever a container of the pod
/// starts, here kustody's own debug container (the test cluster's kubelet does the same). That
/// change is the acquisition's: recorded as such, not as drift. Kubelet-managed files are
/// labelled. The debug container ends with exit 0 (`Completed`), not killed (143, `Error`).
#[test]
fn the_debug_containers_own_side_effects_are_not_drift_and_it_ends_completed() {
    let ns = "ir";
    let pod = Pod::new("quiet").image("gcr.io/distroless/static:nonroot");
    let Some((c, kc, dir)) = setup(TestCluster::builder().namespace(ns).pod(pod)) else {
        return;
    };
    // the debug container must start in a later second than the target did, as on a real
    // cluster where collection comes long after the start
    let started = c.get("pods", ns, "quiet").unwrap()["status"]["containerStatuses"][0]["state"]["running"]
        ["startedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = chrono::DateTime::parse_from_rfc3339(&started).unwrap();
    c.wait_for(Duration::from_secs(10), || (chrono::Utc::now().timestamp() >= started.timestamp() + 2).then_some(()))
        .unwrap();
    let out = dir.path().join("b");
    let r = kustody(Some(&kc), &["collect", "pod/quiet", "-n", ns, "--output-file", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let cdir = out.join("pods/ir/quiet/containers/main");
    let files = files_jsonl(&cdir.join("files.jsonl"));
    let entry = |p: &str| files.iter().find(|f| f["path"] == p).unwrap_or_else(|| panic!("{p} not listed")).clone();
    let hosts = entry("/etc/hosts");
    assert_eq!(hosts["managed_by"], "kubelet", "{hosts}");
    assert_eq!(hosts["drift"], false, "kustody's own side effect presented as drift: {hosts}");
    let cause = hosts["changed_by_acquisition"].as_str().unwrap_or_else(|| panic!("no cause recorded: {hosts}"));
    assert!(cause.contains("debug container kustody-"), "{cause}");
    assert_eq!(hosts["sha256"].as_str().map(str::len), Some(64), "kubelet-managed files are hashed: {hosts}");
    assert_eq!(entry("/etc/resolv.conf")["managed_by"], "kubelet");
    let drift = read_json(&cdir.join("drift.json"));
    assert!(!drift.as_array().unwrap().iter().any(|f| f["path"] == "/etc/hosts"), "{drift:#}");
    let m = read_json(&out.join("MANIFEST.json"));
    let cont = &m["targets"][0]["containers"][0];
    assert_eq!(cont["via"], "debug");
    assert_eq!(cont["changed_by_acquisition"], json!(["/etc/hosts"]), "{cont:#}");
    assert_eq!(cont["debug_container"]["ended"]["exitCode"], 0, "{cont:#}");
    assert_eq!(cont["debug_container"]["ended"]["reason"], "Completed", "{cont:#}");
    assert!(r.stdout.contains("1 by kustody's debug container: /etc/hosts"), "{}", r.stdout);
    // and the cluster says the same
    let st =
        c.get("pods", ns, "quiet").unwrap()["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"].clone();
    assert_eq!((st["exitCode"].clone(), st["reason"].clone()), (json!(0), json!("Completed")), "{st}");
}

/// The bundle on a disk too small for the file listing: the listing is a recorded failure
/// (not a silently missing artifact), what fits is collected, and the bundle verifies.
#[test]
fn a_full_disk_is_a_recorded_failure_not_a_lost_artifact() {
    let ns = "ir";
    let pod = Pod::new("many").command(&[
        "sh",
        "-c",
        "mkdir -p /tmp/m && cd /tmp/m && seq 1 6000 | xargs touch && echo ready; exec sleep 3600",
    ]);
    let Some((c, kc, _dir)) = setup(TestCluster::builder().namespace(ns).pod(pod)) else {
        return;
    };
    let Some(disk) = kustody_testkit::Tmpfs::mount("512k") else { return };
    c.wait_for(Duration::from_secs(30), || {
        let r = c.container_rootfs(ns, "many", "main")?;
        (std::fs::read_dir(r.join("tmp/m")).ok()?.count() >= 6000).then_some(())
    })
    .unwrap();
    let out = disk.path().join("b");
    let r = kustody(Some(&kc), &["collect", "pod/many", "-n", ns, "--output-file", out.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let m = read_json(&out.join("MANIFEST.json"));
    let failures = m["failures"].as_array().unwrap();
    let f = failures
        .iter()
        .find(|f| f["item"] == "pods/ir/many/containers/main/files.jsonl")
        .unwrap_or_else(|| panic!("the lost listing is not recorded: {failures:#?}"));
    assert!(f["reason"].as_str().unwrap().contains("No space left on device"), "{f}");
    assert_eq!(f["source"]["kind"], "collector", "{f}");
    assert!(!out.join("pods/ir/many/containers/main/files.jsonl").exists(), "no partial file left");
    assert!(r.stdout.contains("files.jsonl") && r.stdout.contains("No space left"), "{}", r.stdout);
    // what fitted is there, and nothing in the bundle is unaccounted for
    assert!(out.join("pods/ir/many/cluster/pod.json").exists());
    assert!(out.join("pods/ir/many/containers/main/processes.json").exists());
    let v = kustody(None, &["verify", out.to_str().unwrap()]);
    assert_eq!(v.code, 0, "{}", v.stdout);
}
