//! kustody's cluster access against a real TLS Kubernetes API with runc pods: kubeconfig
//! precedence, namespaces, identities, and exec (v5 and v4) with hashing, exit codes, stdin,
//! size verification, precise errors, timeouts and a bounded pool.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kustody_cluster::exec::{exec, ExecError, ExecPool, ExecSpec};
use kustody_cluster::{Cluster, ClusterOptions};
use kustody_testcluster::client::cluster;
use kustody_testcluster::{Pod as TPod, TestCluster};
use serde_json::json;
use sha2::Digest;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A client as the test cluster's admin, through its kubeconfig.
async fn admin(c: &TestCluster) -> Cluster {
    Cluster::connect(&ClusterOptions { kubeconfig: Some(c.kubeconfig_path().to_path_buf()), ..Default::default() })
        .await
        .unwrap()
}

fn spec(c: &TestCluster, pod: &str, argv: &[&str]) -> ExecSpec {
    ExecSpec {
        namespace: c.namespace.clone(),
        pod: pod.into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        timeout: Some(Duration::from_secs(20)),
        ..ExecSpec::default()
    }
}

#[test]
fn kubeconfig_flag_context_namespace_and_listing() {
    let Some(c) = cluster(TestCluster::builder().namespace("ir").pod(TPod::new("shell").label("app", "shell"))) else {
        return;
    };
    rt().block_on(async {
        let opts = ClusterOptions { kubeconfig: Some(c.kubeconfig_path().to_path_buf()), ..Default::default() };
        let k = Cluster::connect(&opts).await.unwrap();
        assert_eq!(k.namespace, "ir", "the context's namespace");
        assert_eq!(k.context.as_deref(), Some("kustody-testcluster"));
        assert_eq!(k.auth.to_string(), "client certificate");
        let pods: kube::Api<Pod> = kube::Api::namespaced(k.client.clone(), &k.namespace);
        let list = pods.list(&Default::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("shell"));
        // API errors keep the HTTP status and the Status reason: a patch with a stale
        // resourceVersion is a 409 Conflict callers can match (quarantine re-plans on it)
        let patch = serde_json::json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}});
        let e = pods
            .patch("shell", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
            .map_err(kustody_cluster::ClusterError::from)
            .unwrap_err();
        assert!(e.is_conflict(), "{e}");
        assert_eq!((e.status(), e.reason()), (Some(409), Some("Conflict")), "{e:?}");
        assert!(e.to_string().starts_with("409 Conflict: "), "{e}");
        let e = kustody_cluster::ClusterError::from(pods.get("nosuch").await.unwrap_err());
        assert!(e.is_not_found() && e.reason() == Some("NotFound"), "{e:?}");
        assert_eq!(e.to_string(), "not found: pods \"nosuch\" not found");
        // -n wins over the context
        let k2 = Cluster::connect(&ClusterOptions { namespace: Some("default".into()), ..opts.clone() }).await.unwrap();
        assert_eq!(k2.namespace, "default");
        // an unknown context is named, with the ones that exist
        let err = Cluster::connect(&ClusterOptions { context: Some("prod".into()), ..opts.clone() }).await.err().unwrap();
        assert!(err.to_string().contains("context `prod` is not in --kubeconfig"), "{err}");
        assert!(err.to_string().contains("kustody-testcluster"), "{err}");
        // a bearer-token kubeconfig for a least-privilege user
        let token = c.add_user("reader", &[], json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]), Some("ir")).unwrap();
        let kc = c.write_kubeconfig_for_token("reader", &token).unwrap();
        let kr = Cluster::connect(&ClusterOptions { kubeconfig: Some(kc), ..Default::default() }).await.unwrap();
        assert_eq!(kr.auth.to_string(), "bearer token");
        let pods: kube::Api<Pod> = kube::Api::namespaced(kr.client.clone(), "ir");
        assert!(pods.list(&Default::default()).await.is_ok());
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(kr.client.clone(), "ir");
        let e = kustody_cluster::ClusterError::from_kube(secrets.list(&Default::default()).await.err().unwrap());
        assert_eq!(
            e.to_string(),
            "forbidden: secrets is forbidden: User \"reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ir\""
        );
        assert!(e.is_forbidden() && e.reason() == Some("Forbidden"), "{e:?}");
        assert_eq!(
            e.needed_to("list the secrets").to_string(),
            "forbidden: secrets is forbidden: User \"reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ir\" (needed to list the secrets)"
        );
    });
}

#[test]
fn kubeconfig_env_and_the_missing_config_message() {
    // This test alone touches the environment of this test binary.
    let Some(c) = cluster(TestCluster::builder().namespace("env")) else { return };
    let empty = std::env::temp_dir().join(format!("kustody-home-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    rt().block_on(async {
        std::env::set_var(
            "KUBECONFIG",
            format!("/nonexistent/ignored-because-missing:{}", c.kubeconfig_path().display()),
        );
        let r = Cluster::connect(&ClusterOptions::default()).await;
        // kubectl ignores missing files in KUBECONFIG; kube-rs reports them
        match r {
            Ok(k) => assert_eq!(k.namespace, "env"),
            Err(e) => assert!(e.to_string().contains("KUBECONFIG="), "{e}"),
        }
        std::env::set_var("KUBECONFIG", c.kubeconfig_path());
        let k = Cluster::connect(&ClusterOptions::default()).await.unwrap();
        assert!(matches!(k.source, kustody_cluster::config::Source::Env(_)));
        assert_eq!(k.namespace, "env");
        // nothing at all: no flag, no KUBECONFIG, no ~/.kube/config, not in a pod
        std::env::remove_var("KUBECONFIG");
        let home = std::env::var_os("HOME");
        std::env::set_var("HOME", &empty);
        let host = std::env::var_os("KUBERNETES_SERVICE_HOST");
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        let e = Cluster::connect(&ClusterOptions::default()).await.err().unwrap();
        assert!(e.to_string().contains("no kubeconfig (--kubeconfig, KUBECONFIG or"), "{e}");
        assert!(e.to_string().contains("not inside a pod"), "{e}");
        if let Some(h) = home {
            std::env::set_var("HOME", h);
        }
        if let Some(h) = host {
            std::env::set_var("KUBERNETES_SERVICE_HOST", h);
        }
    });
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn exec_streams_hashes_and_reports_exit_codes() {
    let Some(c) = cluster(TestCluster::builder().namespace("x").pod(TPod::new("shell"))) else { return };
    rt().block_on(async {
        let k = admin(&c).await;
        let mut out = Vec::new();
        let o = exec(&k.client, &spec(&c, "shell", &["echo", "hello from the pod"]), &mut out).await.unwrap();
        assert_eq!(out, b"hello from the pod\n");
        assert_eq!((o.exit_code, o.stdout_bytes, o.protocol), (0, 19, "v5.channel.k8s.io"));
        assert_eq!(o.stdout_sha256, format!("{:x}", sha2::Sha256::digest(b"hello from the pod\n")));

        let mut out = Vec::new();
        let o = exec(&k.client, &spec(&c, "shell", &["sh", "-c", "echo out; echo err >&2; exit 3"]), &mut out)
            .await
            .unwrap();
        assert_eq!((o.exit_code, out.as_slice(), o.stderr.as_slice()), (3, &b"out\n"[..], &b"err\n"[..]));

        // stdin with a proper end of input (v5 close frame)
        let mut s = spec(&c, "shell", &["sh", "-c", "wc -c; cat"]);
        s.stdin = Some(b"collector script\n".to_vec());
        let mut out = Vec::new();
        exec(&k.client, &s, &mut out).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim_start(), "17\n");

        // 5 MB through the sink, counted in the container too
        let mut s = spec(&c, "shell", &["sh", "-c", "head -c 5000000 /dev/urandom"]);
        s.verify_size = true;
        let mut out = Vec::new();
        let o = exec(&k.client, &s, &mut out).await.unwrap();
        assert_eq!((o.stdout_bytes, out.len(), o.size_verified), (5_000_000, 5_000_000, Some(true)));
        assert_eq!(o.stdout_sha256, format!("{:x}", sha2::Sha256::digest(&out)));
        assert!(
            o.stderr.is_empty(),
            "the size trailer is removed from stderr: {:?}",
            String::from_utf8_lossy(&o.stderr)
        );
        // the exit status survives the size-reporting wrapper
        let mut s = spec(&c, "shell", &["sh", "-c", "echo partial; exit 7"]);
        s.verify_size = true;
        let o = exec(&k.client, &s, &mut Vec::new()).await.unwrap();
        assert_eq!((o.exit_code, o.size_verified), (7, Some(true)));
    });
}

#[test]
fn exec_errors_are_precise() {
    let Some(c) = cluster(TestCluster::builder().namespace("e").pod(TPod::new("shell")).pod(TPod::distroless("app")))
    else {
        return;
    };
    let only_get = c
        .add_user("getter", &[], json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}]), Some("e"))
        .unwrap();
    let kc = c.write_kubeconfig_for_token("getter", &only_get).unwrap();
    rt().block_on(async {
        let k = admin(&c).await;
        let e = exec(&k.client, &spec(&c, "nope", &["id"]), &mut Vec::new()).await.err().unwrap();
        assert_eq!(e.to_string(), "pod e/nope not found");
        let mut s = spec(&c, "shell", &["id"]);
        s.container = Some("sidecar".into());
        let e = exec(&k.client, &s, &mut Vec::new()).await.err().unwrap();
        assert!(matches!(e, ExecError::BadContainer { .. }), "{e}");
        assert_eq!(e.to_string(), "container sidecar is not valid for pod shell");
        let e = exec(&k.client, &spec(&c, "shell", &["no-such-binary"]), &mut Vec::new()).await.err().unwrap();
        assert!(matches!(e, ExecError::CommandNotFound { .. }), "{e}");
        assert!(e.to_string().starts_with("command `no-such-binary` not found in the container's image"));
        // a distroless container has no shell
        let e = exec(&k.client, &spec(&c, "app", &["sh", "-c", "id"]), &mut Vec::new()).await.err().unwrap();
        assert!(matches!(e, ExecError::CommandNotFound { .. }), "{e}");
        // timeouts
        let mut s = spec(&c, "shell", &["sleep", "10"]);
        s.timeout = Some(Duration::from_millis(500));
        let e = exec(&k.client, &s, &mut Vec::new()).await.err().unwrap();
        assert_eq!(e.to_string(), "timed out after 500ms");
        // RBAC: get alone is not enough for a WebSocket exec since 1.35
        let kg = Cluster::connect(&ClusterOptions { kubeconfig: Some(kc), ..Default::default() }).await.unwrap();
        let e = exec(&kg.client, &spec(&c, "shell", &["id"]), &mut Vec::new()).await.err().unwrap();
        assert!(matches!(e, ExecError::Forbidden { .. }), "{e}");
        assert!(e.to_string().contains("cannot create resource \"pods/exec\""), "{e}");
        assert!(e.to_string().contains("exec needs `get` and `create` on `pods/exec` in namespace e"), "{e}");
    });
}

#[test]
fn exec_over_v4_and_through_a_bounded_pool() {
    let Some(c) =
        cluster(TestCluster::builder().namespace("v4").exec_protocols(&["v4.channel.k8s.io"]).pod(TPod::new("shell")))
    else {
        return;
    };
    rt().block_on(async {
        let k = admin(&c).await;
        let mut out = Vec::new();
        let o = exec(&k.client, &spec(&c, "shell", &["sh", "-c", "echo four; exit 2"]), &mut out).await.unwrap();
        assert_eq!((o.protocol, o.exit_code, out.as_slice()), ("v4.channel.k8s.io", 2, &b"four\n"[..]));
        // v4 ends stdin only by closing the socket: a command that reads a known length
        // delivers everything; one that waits for end of input gets it after a quiet grace
        let mut s = spec(&c, "shell", &["head", "-c", "6"]);
        s.stdin = Some(b"abcdef".to_vec());
        let mut out = Vec::new();
        let o = exec(&k.client, &s, &mut out).await.unwrap();
        assert_eq!((o.exit_code, out.as_slice()), (0, &b"abcdef"[..]));
        let mut s = spec(&c, "shell", &["cat"]);
        s.stdin = Some(b"until eof".to_vec());
        let mut out = Vec::new();
        let r = exec(&k.client, &s, &mut out).await;
        assert_eq!(out, b"until eof", "{r:?}");
        // 24 execs, 6 at a time, one client
        let pool = ExecPool::new(k.client.clone(), 6);
        let jobs = (0..24).map(|i| {
            let pool = pool.clone();
            let s = spec(&c, "shell", &["echo", &format!("job {i}")]);
            async move { pool.run(s).await }
        });
        let results = futures::future::join_all(jobs).await;
        for (i, r) in results.into_iter().enumerate() {
            let (o, out) = r.unwrap();
            assert_eq!((o.exit_code, String::from_utf8(out).unwrap()), (0, format!("job {i}\n")));
        }
    });
}

/// The benchmark's runtime-free mode: `echo` is answered by the API server (authorised and
/// audited as any exec), anything else still runs in the container.
#[test]
fn exec_without_runtime_answers_echo_only() {
    let Some(c) = cluster(TestCluster::builder().namespace("b").pod(TPod::new("shell")).exec_without_runtime()) else {
        return;
    };
    rt().block_on(async {
        let k = admin(&c).await;
        let mut out = Vec::new();
        let o = exec(&k.client, &spec(&c, "shell", &["echo", "no", "runc"]), &mut out).await.unwrap();
        assert_eq!((o.exit_code, out.as_slice()), (0, &b"no runc\n"[..]));
        let mut out = Vec::new();
        exec(&k.client, &spec(&c, "shell", &["cat", "/proc/1/cmdline"]), &mut out).await.unwrap();
        assert!(out.starts_with(b"sleep"), "{out:?}");
    });
    let audited = c.audit_events().unwrap();
    assert!(
        audited
            .iter()
            .any(|e| e["objectRef"]["subresource"] == "exec"
                && e["requestURI"].as_str().unwrap().contains("command=runc"))
    );
}
