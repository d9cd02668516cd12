//! The in-cluster deployment (`deploy/`): the Helm chart, linted and rendered by Helm's own
//! engine (helm-python-sdk: Helm v4's Go SDK, installed by scripts/test into target/helm); the
//! plain manifests it generates; both layouts applied to the test cluster with strict field
//! validation (unknown fields fail, as `kubectl apply` asks); and the single-node layout started
//! there: the kustody binary in a distroless-like image, non-root, on a read-only root file
//! system, with its store on a PersistentVolumeClaim that outlives the pod.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kustody_testcluster::runtime::CustomImage;
use kustody_testcluster::{client::cluster, yaml_documents, TestCluster};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const INGEST: &str = "deploy-ingest-token-0123456789abcdef";
const READ: &str = "deploy-read-token-0123456789abcdef0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The Python that has Helm's engine (`helm_python`), or a SKIP notice (a failure under CI).
fn helm_python() -> Option<PathBuf> {
    let py = std::env::var_os("KUSTODY_HELM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/helm/bin/python"));
    let ok = Command::new(&py).args(["-c", "import helm_python"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!("{} cannot import helm_python (scripts/test installs helm-python-sdk there)", py.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {msg}");
    eprintln!("SKIP: {msg}");
    None
}

/// The chart rendered by Helm with `values` (release `kustody` in namespace `ns`), as documents.
fn render(py: &Path, values: &Value, ns: &str) -> Vec<Value> {
    let script = r#"
import json, sys
import helm_python as helm
with helm.Chart.load(sys.argv[1]) as chart:
    out = chart.render(json.loads(sys.argv[2]), name="kustody", namespace=sys.argv[3])
for path in sorted(out):
    if path.endswith(".yaml") and out[path].strip():
        print("---\n# Source: " + path + "\n" + out[path])
"#;
    let chart = repo().join("deploy/helm/kustody");
    let o = Command::new(py).args(["-c", script, chart.to_str().unwrap(), &values.to_string(), ns]).output().unwrap();
    assert!(o.status.success(), "helm render failed: {}", String::from_utf8_lossy(&o.stderr));
    yaml_documents(&String::from_utf8(o.stdout).unwrap()).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

fn manifest(name: &str) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(repo().join("deploy/manifests").join(name)).unwrap();
    let docs = yaml_documents(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect();
    (text, docs)
}

fn with_ns(docs: &[Value], ns: &str) -> Vec<Value> {
    docs.iter()
        .map(|d| {
            let mut d = d.clone();
            if d["metadata"].get("namespace").is_some() {
                d["metadata"]["namespace"] = json!(ns);
            }
            d
        })
        .collect()
}

fn workloads(docs: &[Value]) -> Vec<&Value> {
    docs.iter().filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet"))).collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// What the chart promises for every workload: non-root, read-only root, no privilege
/// escalation, every capability dropped, RuntimeDefault seccomp, requests and limits, probes.
fn check_posture(docs: &[Value]) {
    let ws = workloads(docs);
    assert!(!ws.is_empty());
    for w in ws {
        let name = w["metadata"]["name"].as_str().unwrap();
        let spec = &w["spec"]["template"]["spec"];
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{name}");
        assert!(psc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{name}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in spec["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(sc.get("privileged").is_none_or(|p| p == false), "{name}");
            for k in ["requests", "limits"] {
                assert!(c["resources"][k]["memory"].is_string(), "{name}: resources.{k}.memory");
            }
            for p in ["readinessProbe", "livenessProbe"] {
                assert!(c[p].is_object(), "{name}: {p}");
            }
        }
        assert_ne!(spec["hostNetwork"], true);
        assert_ne!(spec["hostPID"], true);
    }
}

/// Every Service selects some workload's pods; every workload's pods are under a NetworkPolicy
/// that restricts both directions.
fn check_wiring(docs: &[Value]) {
    let ws = workloads(docs);
    for s in docs.iter().filter(|d| d["kind"] == "Service") {
        let sel = &s["spec"]["selector"];
        assert!(
            ws.iter().any(|w| labels_match(sel, &w["spec"]["template"]["metadata"]["labels"])),
            "Service {} selects no workload",
            s["metadata"]["name"]
        );
    }
    let policies: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    for w in ws {
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        let p = policies.iter().find(|p| labels_match(&p["spec"]["podSelector"]["matchLabels"], labels));
        let p = p.unwrap_or_else(|| panic!("no NetworkPolicy selects {}", w["metadata"]["name"]));
        let types = p["spec"]["policyTypes"].as_array().unwrap();
        assert!(types.contains(&json!("Ingress")) && types.contains(&json!("Egress")), "{p}");
    }
}

/// Secrets a layout's pods mount, filled as the README's commands would fill them.
fn secrets_for(docs: &[Value], ns: &str, tls: &(String, String)) -> Vec<Value> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut keys: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for w in workloads(docs) {
        let spec = &w["spec"]["template"]["spec"];
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(name) = v["secret"]["secretName"].as_str() {
                let e = keys.entry(name.to_string()).or_default();
                for it in v["secret"]["items"].as_array().into_iter().flatten() {
                    e.insert(it["key"].as_str().unwrap().to_string());
                }
            }
        }
        for c in spec["containers"].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                    keys.entry(r["name"].as_str().unwrap().to_string())
                        .or_default()
                        .insert(r["key"].as_str().unwrap().to_string());
                }
            }
        }
    }
    keys.into_iter()
        .map(|(name, ks)| {
            let data: serde_json::Map<String, Value> = ks
                .iter()
                .map(|k| {
                    let v = match k.as_str() {
                        "tokens" => format!("{INGEST} apiserver ingest\n{READ} reader read\n"),
                        "tls.crt" | "ca.crt" => tls.0.clone(),
                        "tls.key" => tls.1.clone(),
                        _ => "a-bus-or-database-secret-0123456789".to_string(),
                    };
                    (k.clone(), json!(b64(&v)))
                })
                .collect();
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data})
        })
        .collect()
}

fn self_signed() -> (String, String) {
    let names = ["localhost", "kustody", "kustody.kustody", "kustody.kustody.svc", "kustody-receiver.kustody.svc"];
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

#[test]
fn the_plain_manifests_are_what_the_chart_renders_and_the_chart_lints_clean() {
    let Some(py) = helm_python() else { return };
    let o = Command::new(&py).arg(repo().join("deploy/render")).arg("--check").current_dir(repo()).output().unwrap();
    assert!(
        o.status.success(),
        "deploy/render --check: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // the chart's appVersion (the image tag it deploys) is the workspace's version
    let chart = std::fs::read_to_string(repo().join("deploy/helm/kustody/Chart.yaml")).unwrap();
    let app = chart.lines().find_map(|l| l.strip_prefix("appVersion:")).unwrap().trim().trim_matches('"').to_string();
    assert_eq!(app, env!("CARGO_PKG_VERSION"), "deploy/helm/kustody/Chart.yaml appVersion");
    let docker = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(docker.contains(&format!("ARG VERSION={app}")), "deploy/Dockerfile's VERSION");
    // a misspelt value fails the render (values.schema.json), not silently ignored
    let script = r#"
import sys, helm_python as helm
with helm.Chart.load(sys.argv[1]) as chart:
    try:
        chart.render({"watchClsuter": {"enabled": True}}, name="kustody", namespace="kustody")
    except Exception as e:
        print("refused:", e)
        sys.exit(0)
sys.exit(1)
"#;
    let o =
        Command::new(&py).args(["-c", script, repo().join("deploy/helm/kustody").to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "a misspelt value was accepted: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn both_layouts_and_every_option_apply_to_the_test_cluster_with_strict_validation() {
    let Some(py) = helm_python() else { return };
    let Some(c) = cluster(TestCluster::builder()) else { return };
    let tls = self_signed();
    for (file, ns) in [("single.yaml", "single"), ("scaleout.yaml", "scaleout")] {
        let (text, docs) = manifest(file);
        assert!(text.starts_with('#'), "{file} starts with its comment");
        let docs = with_ns(&docs, ns);
        check_posture(&docs);
        check_wiring(&docs);
        // no API access by default: kustody needs none until watching or responding is on
        for w in workloads(&docs) {
            assert_eq!(
                w["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
                "{}",
                w["metadata"]["name"]
            );
        }
        assert!(
            !docs.iter().any(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding"),
            "{file}: RBAC by default"
        );
        c.create_namespace(ns).unwrap();
        for s in secrets_for(&docs, ns, &tls) {
            c.apply_strict(s).unwrap();
        }
        for d in &docs {
            c.apply_strict(d.clone()).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        }
        // the controllers made every workload's pods, and the claims for the volumes
        for w in workloads(&docs) {
            let name = w["metadata"]["name"].as_str().unwrap();
            let want = w["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
            let labels = &w["spec"]["selector"]["matchLabels"];
            c.wait_for(Duration::from_secs(20), || {
                let n =
                    c.list("pods", Some(ns)).iter().filter(|p| labels_match(labels, &p["metadata"]["labels"])).count();
                (n >= want.min(1)).then_some(())
            })
            .unwrap_or_else(|_| panic!("{file}: no pods for {name}"));
            // each replica's claim (all at once for Parallel pod management; in order the next
            // waits for a ready pod, which these images, run on busybox here, never become)
            let parallel = w["spec"]["podManagementPolicy"] == "Parallel";
            let ordinals = if parallel { want } else { 1 };
            for t in w["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
                for i in 0..ordinals {
                    let claim = format!("{}-{name}-{i}", t["metadata"]["name"].as_str().unwrap());
                    let pvc = c
                        .wait_for(Duration::from_secs(20), || c.get("persistentvolumeclaims", ns, &claim))
                        .unwrap_or_else(|_| panic!("{claim}"));
                    assert_eq!(pvc["status"]["phase"], "Bound");
                }
            }
        }
    }
    // JetStream is told to fsync every write (what "nothing acknowledged is lost" rests on), and
    // the nats-server release the tests run accepts the rendered configuration
    let (_, docs) = manifest("scaleout.yaml");
    let conf = docs.iter().find_map(|d| d["data"]["nats.conf"].as_str()).expect("a nats.conf").to_string();
    assert!(conf.contains("sync_interval: always"), "the NATS config must set sync_interval: always");
    let nats = repo().join("target/nats/nats-server");
    if nats.exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nats.conf"), &conf).unwrap();
        let o = Command::new(&nats)
            .args(["-t", "-c"])
            .arg(dir.path().join("nats.conf"))
            .env("POD_NAME", "kustody-nats-0")
            .env("NATS_TOKEN", "tAbc123")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "nats-server -t: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Every option on, rendered by Helm: the RBAC is exactly deploy/rbac's, and it applies.
    let rules_of = |path: &str| -> Vec<Value> {
        let docs = yaml_documents(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap();
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().unwrap().clone())
            .collect()
    };
    for (mode, ns) in [("single", "all-single"), ("scaleout", "all-scaleout")] {
        let values = json!({"mode": mode, "clusterName": "prod-eu-1", "watchCluster": {"enabled": true},
            "responder": {"enabled": true}, "auth": {"generate": true},
            "tls": {"secretName": "kustody-tls"},
            "postgres": {"host": "db.example.internal", "passwordSecret": {"name": "kustody-postgres"}}});
        let docs = render(&py, &values, ns);
        check_posture(&docs);
        check_wiring(&docs);
        let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
        let all_rules: Vec<Value> = roles.iter().flat_map(|r| r["rules"].as_array().unwrap().clone()).collect();
        for (path, what) in
            [("deploy/rbac/kustody-watcher.yaml", "watcher"), ("deploy/rbac/kustody-responder.yaml", "responder")]
        {
            let want = rules_of(path);
            assert!(
                roles.iter().any(|r| r["rules"].as_array().unwrap() == &want),
                "no ClusterRole with exactly the {what} rules of {path}: {all_rules:#?}"
            );
        }
        c.create_namespace(ns).unwrap();
        for s in secrets_for(&docs, ns, &tls) {
            if c.get("secrets", ns, s["metadata"]["name"].as_str().unwrap()).is_none() {
                let generated =
                    docs.iter().any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == s["metadata"]["name"]);
                if !generated {
                    c.apply_strict(s).unwrap();
                }
            }
        }
        for d in &docs {
            c.apply_strict(d.clone()).unwrap_or_else(|e| panic!("{mode} with every option: {e:#}"));
        }
        // watching and responding need the API: the token is mounted where kustody runs
        // (receivers never use the API: kustody refuses watching and playbooks on them)
        let uses_api = |w: &&Value| {
            !matches!(w["metadata"]["labels"]["app.kubernetes.io/component"].as_str(), Some("nats" | "receiver"))
        };
        for w in workloads(&docs).into_iter().filter(uses_api) {
            assert_ne!(
                w["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
                "{}",
                w["metadata"]["name"]
            );
        }
    }

    // and strict validation is real: a misspelt field in a manifest is refused by name
    let (_, docs) = manifest("single.yaml");
    let mut bad = with_ns(&docs, "single").into_iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    bad["metadata"]["name"] = json!("misspelt");
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = json!(true);
    let e = c.apply_strict(bad).unwrap_err();
    assert!(
        format!("{e:#}")
            .contains("unknown field \"spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem\""),
        "{e:#}"
    );
}

/// A root file system like gcr.io/distroless/cc-debian12:nonroot with the kustody binary at
/// /usr/local/bin/kustody (deploy/Dockerfile): glibc and libgcc as `ldd` names them, CA
/// certificates, passwd and group with `nonroot` (65532), /tmp; nothing else, no shell.
fn kustody_image(dir: &Path, reference: &str) -> CustomImage {
    let root = dir.join("rootfs");
    let bin = Path::new(env!("CARGO_BIN_EXE_kustody"));
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    let dst = root.join("usr/local/bin/kustody");
    if std::fs::hard_link(bin, &dst).is_err() {
        std::fs::copy(bin, &dst).unwrap();
    }
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(p) = path {
            let to = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(std::fs::canonicalize(p).unwrap(), &to).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        std::fs::copy("/etc/ssl/certs/ca-certificates.crt", root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    for d in ["tmp", "home/nonroot", "proc", "sys", "dev", "var/lib"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    CustomImage {
        reference: reference.to_string(),
        rootfs: root,
        // ENTRYPOINT + CMD of deploy/Dockerfile
        entrypoint: ["/usr/local/bin/kustody", "serve", "--config", "/etc/kustody/serve.yaml"]
            .map(String::from)
            .to_vec(),
        uid: 65532,
        gid: 65532,
    }
}

struct Https {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Https {
    fn new(addr: SocketAddr, ca_pem: &str) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Https { addr, tls: Arc::new(tls) }
    }

    /// One request on its own connection: (status, body). Err when the connection fails.
    fn send(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> std::io::Result<(u16, String)> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let name = rustls_pki_types::ServerName::try_from("kustody.kustody.svc").unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: kustody.kustody.svc\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = headers.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if status == 0 {
            return Err(std::io::Error::other(format!("no HTTP answer: {text:?}")));
        }
        Ok((status, body.to_string()))
    }

    fn wait_ready(&self, what: &str, logs: &dyn Fn() -> String) {
        let t0 = Instant::now();
        loop {
            match self.send("GET", "/readyz", None, b"") {
                Ok((200, _)) => return,
                r if t0.elapsed() > Duration::from_secs(90) => {
                    panic!("{what} never became ready (last: {r:?}); its log:\n{}", logs())
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

#[test]
fn the_single_layout_runs_kustody_non_root_on_a_read_only_root_with_its_store_on_a_volume() {
    let Some(_py) = helm_python() else { return };
    let Some(shared) = kustody_testkit::shared("fixtures/kube-apiserver/audit-webhook") else { return };
    let (_, docs) = manifest("single.yaml");
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap().clone();
    let (ns, name) = (sts["metadata"]["namespace"].as_str().unwrap(), sts["metadata"]["name"].as_str().unwrap());
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let (cname, image) = (container["name"].as_str().unwrap(), container["image"].as_str().unwrap());
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(c) = cluster(TestCluster::builder().image(kustody_image(tmp.path(), image))) else { return };
    let tls = self_signed();
    c.create_namespace(ns).unwrap();
    for s in secrets_for(&docs, ns, &tls) {
        c.apply_strict(s).unwrap();
    }
    c.apply_yaml(&std::fs::read_to_string(repo().join("deploy/manifests/single.yaml")).unwrap()).unwrap();
    let pod = format!("{name}-0");
    let logs = || {
        let status = c.get("pods", ns, &format!("{name}-0")).map(|p| p["status"].clone()).unwrap_or_default();
        format!("status: {status:#}\nlog:\n{}", c.pod_logs(ns, &format!("{name}-0")))
    };
    c.wait_pod_running(ns, &pod, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let port = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "https").unwrap()["containerPort"]
        .as_u64()
        .unwrap() as u16;
    // the certificate kustody made on first start, on its volume (read through the container's
    // root, as the pod sees it): it names the Service
    let pid = c.container_pid(ns, &pod, cname).unwrap();
    let cert = |pid: u32| {
        let path = format!("/proc/{pid}/root/var/lib/kustody/tls/server.crt");
        c.wait_for(Duration::from_secs(60), || std::fs::read_to_string(&path).ok())
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()))
    };
    let ca = cert(pid);
    let https = Https::new(c.forward(ns, &pod, cname, port).unwrap(), &ca);
    https.wait_ready("kustody in the pod", &logs);

    // non-root, and the root file system is read-only
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "65532"), "{uid_line}");
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(cap_eff.ends_with("0000000000000000"), "{cap_eff}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    assert!(root.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "{root}");

    // the apiserver's recorded batch, through the Service's port: stored, searchable
    let text =
        std::fs::read_to_string(shared.join("fixtures/kube-apiserver/audit-webhook/batch-traffic.json")).unwrap();
    let rec: Value = serde_json::from_str(&text).unwrap();
    let body = format!("{}\n", serde_json::to_string(&rec["request"]["body"]).unwrap());
    let n = rec["request"]["body"]["items"].as_array().unwrap().len() as u64;
    let (code, reply) = https.send("POST", "/v1/audit", Some(INGEST), body.as_bytes()).unwrap();
    assert_eq!(code, 200, "{reply}");
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["stored"], n);
    let (code, _) = https.send("POST", "/v1/audit", Some(READ), body.as_bytes()).unwrap();
    assert_eq!(code, 403, "a read token cannot ingest");
    let count = |h: &Https| -> usize {
        let (code, reply) = h.send("GET", "/v1/events?limit=1000", Some(READ), b"").unwrap();
        assert_eq!(code, 200, "{reply}");
        serde_json::from_str::<Value>(&reply).unwrap()["items"].as_array().unwrap().len()
    };
    assert_eq!(count(&https) as u64, n);

    // the pod goes; the StatefulSet's next one has the same claim, and the store on it
    let uid = c.get("pods", ns, &pod).unwrap()["metadata"]["uid"].clone();
    c.request("DELETE", &format!("/api/v1/namespaces/{ns}/pods/{pod}"), None).unwrap();
    c.wait_for(Duration::from_secs(60), || {
        c.get("pods", ns, &pod).filter(|p| p["metadata"]["uid"] != uid && p["status"]["phase"] == "Running")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    c.wait_pod_running(ns, &pod, Duration::from_secs(60)).unwrap();
    let again_pid = c.container_pid(ns, &pod, cname).unwrap();
    assert_eq!(cert(again_pid), ca, "the certificate on the volume is kept");
    let https = Https::new(c.forward(ns, &pod, cname, port).unwrap(), &ca);
    https.wait_ready("the replacement pod", &logs);
    assert_eq!(count(&https) as u64, n, "the store did not survive the pod");
    let (_, again) = https.send("POST", "/v1/audit", Some(INGEST), body.as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["duplicates"],
        n,
        "redelivery after a restart is stored once"
    );

    // its log names no token
    let log = c.pod_logs(ns, &pod);
    assert!(!log.is_empty());
    assert!(!log.contains(INGEST) && !log.contains(READ));
}

/// The chart's `extra` values take `kustody serve` flags by name (values.schema.json lists them,
/// so a misspelt one fails the render): the lists are exactly the flags `kustody serve` has.
#[test]
fn the_charts_extra_flags_are_exactly_kustody_serves() {
    let help = Command::new(env!("CARGO_BIN_EXE_kustody")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|l| {
            let indent = l.len() - l.trim_start().len();
            let t = l.trim_start();
            // `-v, --v`: the long name after the short one
            let t = if t.get(2..4) == Some(", ") && !t.starts_with("--") { &t[4..] } else { t };
            let name = t.strip_prefix("--")?.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).next()?;
            (indent <= 6 && !name.is_empty()).then(|| name.to_owned())
        })
        .filter(|f| !["config", "help", "v"].contains(&f.as_str()))
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.len() > 40 && flags.contains(&"eks-cluster".to_owned()), "{flags:?}");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/helm/kustody/values.schema.json")).unwrap())
            .unwrap();
    for part in ["serve", "receiver", "detector"] {
        let listed: Vec<String> = schema["properties"][part]["properties"]["extra"]["propertyNames"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{part}.extra lists no flags"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, flags, "values.schema.json {part}.extra vs `kustody serve --help`");
    }
}
