//! A Kubernetes test cluster for kustody's tests: an HTTPS server speaking the part of the
//! Kubernetes API kustody uses, with RBAC, audit logging and controllers, whose pods are real
//! `runc` containers. Not shipped in the kustody binary.
//!
//! ```no_run
//! use kustody_testcluster::{Pod, TestCluster};
//! let cluster = TestCluster::builder()
//!     .namespace("forensics")
//!     .pod(Pod::new("shell").label("app", "shell").command(&["sh", "-c", "echo booted; sleep 1d"]))
//!     .start()?;
//! println!("{}", cluster.kubeconfig_path().display());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Everything the cluster started (containers, temp dirs) is torn down when the
//! [`TestCluster`] is dropped, including while a test panics.

// serde_json `Value` indexing is how this crate reads and writes Kubernetes objects. Reading
// never panics (a missing key reads as Null). Writing panics only when indexing into a
// non-object, and every object is checked by `defaults::validate_shape` before it is stored.
#![allow(clippy::indexing_slicing, reason = "serde_json Value indexing; shapes validated before storage")]

pub mod api;
pub mod audit;
pub mod client;
pub mod controllers;
pub mod defaults;
pub mod exec;
pub mod kubelet;
pub mod patch;
pub mod pki;
pub mod rbac;
pub mod resources;
pub mod runtime;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

pub use api::Api;
pub use pki::Issued;
pub use runtime::INSTALL_HINT;

/// The identity the harness itself acts as (group `system:masters`).
pub const HARNESS_USER: &str = "kustody-testcluster-admin";

/// A pod in the compact spec.
#[derive(Debug, Clone)]
pub struct Pod {
    name: String,
    namespace: Option<String>,
    image: String,
    command: Vec<String>,
    labels: Vec<(String, String)>,
    containers: Vec<(String, String, Vec<String>)>,
    extra_spec: Value,
    service_account: Option<String>,
}

impl Pod {
    /// A busybox pod with one container `main` that sleeps.
    pub fn new(name: &str) -> Pod {
        Pod {
            name: name.to_string(),
            namespace: None,
            image: "busybox:1.36".into(),
            command: vec![],
            labels: vec![],
            containers: vec![],
            extra_spec: json!({}),
            service_account: None,
        }
    }
    /// A pod whose `main` container runs the distroless image (no shell, `/app` listening on :8080).
    pub fn distroless(name: &str) -> Pod {
        Pod { image: "kustody.test/distroless-app:1".into(), ..Pod::new(name) }
    }
    pub fn image(mut self, image: &str) -> Pod {
        self.image = image.into();
        self
    }
    pub fn command(mut self, argv: &[&str]) -> Pod {
        self.command = argv.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Pod {
        self.labels.push((k.into(), v.into()));
        self
    }
    pub fn namespace(mut self, ns: &str) -> Pod {
        self.namespace = Some(ns.into());
        self
    }
    pub fn service_account(mut self, sa: &str) -> Pod {
        self.service_account = Some(sa.into());
        self
    }
    /// An additional container.
    pub fn container(mut self, name: &str, image: &str, argv: &[&str]) -> Pod {
        self.containers.push((name.into(), image.into(), argv.iter().map(|s| s.to_string()).collect()));
        self
    }
    /// Merge extra fields into `spec` (e.g. `{"hostNetwork": true}`).
    pub fn spec(mut self, extra: Value) -> Pod {
        json_patch::merge(&mut self.extra_spec, &extra);
        self
    }

    pub fn to_object(&self, default_ns: &str) -> Value {
        let labels: serde_json::Map<String, Value> = self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut main = json!({"name": "main", "image": self.image});
        if !self.command.is_empty() {
            main["command"] = json!(self.command);
        }
        let mut containers = vec![main];
        for (n, i, argv) in &self.containers {
            let mut c = json!({"name": n, "image": i});
            if !argv.is_empty() {
                c["command"] = json!(argv);
            }
            containers.push(c);
        }
        let mut spec = json!({"containers": containers, "terminationGracePeriodSeconds": 1});
        if let Some(sa) = &self.service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        json_patch::merge(&mut spec, &self.extra_spec);
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": self.name, "namespace": self.namespace.as_deref().unwrap_or(default_ns), "labels": labels},
               "spec": spec})
    }
}

/// The documents of a multi-document YAML text, as JSON.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).context("not YAML")?;
    Ok(docs.iter().filter(|d| !d.is_null()).map(audit::yaml_to_json).collect())
}

/// Options for [`TestCluster`].
#[derive(Debug, Clone)]
pub struct Builder {
    nodes: usize,
    node_names: Vec<String>,
    namespace: Option<String>,
    pods: Vec<Pod>,
    objects: Vec<Value>,
    audit_policy: Option<String>,
    anonymous: bool,
    port: u16,
    wait: bool,
    exec_protocols: Vec<String>,
    exec_without_runtime: bool,
    eks_users: Vec<(String, String, Vec<String>)>,
    images: Vec<runtime::CustomImage>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            nodes: 1,
            node_names: vec![],
            namespace: None,
            pods: vec![],
            objects: vec![],
            audit_policy: None,
            anonymous: false,
            port: 0,
            wait: true,
            exec_protocols: vec![],
            exec_without_runtime: false,
            eks_users: vec![],
            images: vec![],
        }
    }
}

impl Builder {
    /// Number of nodes (all run on this host). Default 1.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(1);
        self
    }
    /// Name the nodes (instead of node-0, node-1, ...).
    pub fn node_names(mut self, names: &[&str]) -> Self {
        self.node_names = names.iter().map(|n| n.to_string()).collect();
        self.nodes = self.node_names.len().max(1);
        self
    }
    /// A namespace to create; pods without one go there.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn pod(mut self, p: Pod) -> Self {
        self.pods.push(p);
        self
    }
    /// Any object to create at start (after the namespace, before the pods).
    pub fn object(mut self, o: Value) -> Self {
        self.objects.push(o);
        self
    }
    /// An audit policy (YAML) instead of [`audit::DEFAULT_POLICY`].
    pub fn audit_policy(mut self, yaml: &str) -> Self {
        self.audit_policy = Some(yaml.into());
        self
    }
    /// Accept unauthenticated requests as `system:anonymous` (off by default, as on managed clusters).
    pub fn anonymous(mut self, on: bool) -> Self {
        self.anonymous = on;
        self
    }
    /// Listen on this port instead of a random one.
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    /// Serve only these exec/attach subprotocols (e.g. `["v4.channel.k8s.io"]`, as a kubelet
    /// older than 1.30 does).
    /// Benchmarks only: answer `echo ARGS` execs in the API server itself (TLS, authentication,
    /// authorization, audit, the WebSocket upgrade and framing as usual) without starting
    /// `runc exec`, so a client's own exec overhead can be measured apart from the runtime's.
    /// Run pods naming `image.reference` on a root filesystem the test made (a kustody image,
    /// say), as the image's user.
    pub fn image(mut self, image: runtime::CustomImage) -> Self {
        self.images.push(image);
        self
    }
    pub fn exec_without_runtime(mut self) -> Self {
        self.exec_without_runtime = true;
        self
    }
    pub fn exec_protocols(mut self, protocols: &[&str]) -> Self {
        self.exec_protocols = protocols.iter().map(|p| p.to_string()).collect();
        self
    }
    /// Accept EKS tokens signed with this AWS access key ID as `user` (in `groups`).
    pub fn eks_user(mut self, access_key_id: &str, user: &str, groups: &[&str]) -> Self {
        self.eks_users.push((
            access_key_id.to_owned(),
            user.to_owned(),
            groups.iter().map(|g| g.to_string()).collect(),
        ));
        self
    }
    /// Do not wait for the spec's pods to run.
    pub fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }
    pub fn start(self) -> Result<TestCluster> {
        TestCluster::start_with(self)
    }
}

/// A running test cluster. Dropping it stops every container and removes its files.
pub struct TestCluster {
    rt: Option<tokio::runtime::Runtime>,
    api: Arc<Api>,
    dir: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    audit_path: PathBuf,
    admin: Issued,
    pki: Arc<pki::Pki>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub namespace: String,
}

fn base_dir() -> PathBuf {
    std::env::temp_dir().join("kustody-testcluster")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove what clusters of dead processes left behind (a test killed by a signal cannot run
/// its destructors).
fn reap_stale(runc_bin: &Path) {
    let Ok(rd) = std::fs::read_dir(base_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("c-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        runtime::Runc { bin: runc_bin.to_path_buf(), root: e.path().join("runc") }.delete_all_blocking();
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// Run a future to completion on `rt` from any context (also inside another runtime).
fn block_on<F: std::future::Future + Send>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    })
}

impl TestCluster {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A cluster with one node and no pods.
    pub fn start() -> Result<TestCluster> {
        Builder::default().start()
    }

    pub fn start_with(b: Builder) -> Result<TestCluster> {
        let (runc_bin, busybox) = runtime::check_host()?;
        reap_stale(&runc_bin);
        let mut images = runtime::ensure_images(&busybox)?;
        for i in &b.images {
            images.add(i.clone());
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = base_dir().join(format!("c-{}-{seq}-{}", std::process::id(), store::random_suffix(4)));
        std::fs::create_dir_all(dir.join("runc"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("testcluster")
            .build()?;
        let pki = Arc::new(pki::Pki::new()?);
        let serving = pki.server()?;
        let admin = pki.client(HARNESS_USER, &["system:masters"])?;
        let policy =
            audit::Policy::parse(b.audit_policy.as_deref().unwrap_or(audit::DEFAULT_POLICY)).context("audit policy")?;
        let audit_path = dir.join("audit.log");
        let audit = audit::AuditLog::create(&audit_path, policy)?;
        let nodes: Vec<String> = if b.node_names.is_empty() {
            (0..b.nodes).map(|i| format!("node-{i}")).collect()
        } else {
            b.node_names.clone()
        };
        let runc = runtime::Runc { bin: runc_bin, root: dir.join("runc") };
        let kubelet = kubelet::Kubelet::new(runc, images, dir.clone(), nodes.clone());
        let store = Arc::new(store::Store::new());
        let api = Arc::new(Api::new(store.clone(), audit, kubelet, pki.ca_pem.clone(), b.anonymous));
        // bootstrap objects
        for (rtp, o) in rbac::bootstrap_objects() {
            store.create(rtp, o).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for n in controllers::node_objects(&nodes) {
            store.create(&resources::NODES, n).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let acceptor = server::tls_acceptor(&pki.ca_der, &serving)?;
        let port = b.port;
        let (listener, url) = block_on(&rt, async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let addr = l.local_addr()?;
            Ok::<_, anyhow::Error>((l, format!("https://{addr}")))
        })?;
        if let Ok(mut m) = api.eks_users.lock() {
            for (akid, user, groups) in &b.eks_users {
                let mut u = rbac::UserInfo::new(user, &groups.iter().map(String::as_str).collect::<Vec<_>>());
                u.groups.push("system:authenticated".into());
                m.insert(akid.clone(), u);
            }
        }
        api.exec_echo_only.store(b.exec_without_runtime, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut p) = api.exec_protocols.lock() {
            p.clone_from(&b.exec_protocols);
        }
        if let Ok(mut a) = api.server_address.lock() {
            *a = url.trim_start_matches("https://").to_string();
        }
        let _guard = rt.enter();
        let mut tasks = vec![rt.spawn(server::serve(api.clone(), listener, acceptor))];
        tasks.push(rt.spawn(controllers::run(api.clone(), Arc::new(controllers::State::default()))));
        drop(_guard);
        let namespace = b.namespace.clone().unwrap_or_else(|| "default".into());
        let cluster = TestCluster {
            rt: Some(rt),
            api,
            kubeconfig: dir.join("kubeconfig"),
            dir,
            url,
            audit_path,
            admin,
            pki,
            tasks,
            namespace: namespace.clone(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            cluster.create_namespace(ns)?;
        }
        if namespace != "default" {
            cluster.create_namespace(&namespace)?;
        }
        std::fs::write(&cluster.kubeconfig, cluster.kubeconfig_yaml(None, Some(&namespace)))?;
        for o in &b.objects {
            cluster.apply(o.clone())?;
        }
        let mut names = Vec::new();
        for p in &b.pods {
            let obj = p.to_object(&namespace);
            let created = cluster.apply(obj)?;
            names.push((
                store::meta_str(&created, "namespace").to_string(),
                store::meta_str(&created, "name").to_string(),
            ));
        }
        if b.wait {
            for (ns, name) in names {
                cluster.wait_pod_running(&ns, &name, Duration::from_secs(20))?;
            }
        }
        Ok(cluster)
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_path
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_pem(&self) -> &str {
        &self.api.ca_pem
    }
    /// The harness's own client certificate (group `system:masters`).
    pub fn admin_cert(&self) -> &Issued {
        &self.admin
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt.as_ref().context("cluster stopped")
    }

    /// A request as the harness admin (in-process; audited as `kustody-testcluster-admin`).
    pub fn request(&self, method: &str, uri: &str, body: Option<&Value>) -> Result<Value> {
        let api = self.api.clone();
        let (m, u, b) = (method.to_string(), uri.to_string(), body.cloned());
        block_on(self.rt()?, async move { api.call(HARNESS_USER, &m, &u, b.as_ref()).await })
            .map_err(|e| anyhow::anyhow!("{method} {uri}: {e}"))
    }

    /// Create any object (its kind and apiVersion pick the resource).
    pub fn apply(&self, obj: Value) -> Result<Value> {
        self.create(obj, "")
    }

    /// POST an object to its resource's collection, with `query` (`?…` or empty).
    fn create(&self, obj: Value, query: &str) -> Result<Value> {
        let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
        let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let rt = resources::by_kind(group, kind)
            .with_context(|| format!("the test cluster does not serve {api_version} {kind}"))?;
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or(&self.namespace).to_string();
        self.request("POST", &format!("{}{query}", api::uri(rt, &ns, "")), Some(&obj))
    }

    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let rt = resources::ALL.iter().find(|r| r.plural == plural)?;
        self.api.store.get(rt, ns, name).map(|v| (*v).clone())
    }

    pub fn list(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        match resources::ALL.iter().find(|r| r.plural == plural) {
            Some(rt) => self.api.store.list(rt, ns).1.iter().map(|v| (**v).clone()).collect(),
            None => vec![],
        }
    }

    pub fn create_namespace(&self, name: &str) -> Result<Value> {
        let v = self.request(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
        )?;
        for (rtp, o) in defaults::namespace_children(name, &self.api.ca_pem) {
            let _ = self.api.store.create(rtp, o);
        }
        Ok(v)
    }

    /// Wait until a pod is Running with all containers ready.
    pub fn wait_pod_running(&self, ns: &str, name: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(timeout, || {
            self.get("pods", ns, name).filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"]
                        .as_array()
                        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
            })
        })
        .with_context(|| {
            format!(
                "pod {ns}/{name} did not become ready: {}",
                self.get("pods", ns, name).map(|p| p["status"].to_string()).unwrap_or_else(|| "gone".into())
            )
        })
    }

    /// Poll `f` every 10 ms until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(&self, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() > until {
                bail!("timed out after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Create every object of a multi-document YAML manifest (a file the repository ships, say),
    /// with strict field validation as `kubectl apply` asks for it: an unknown field fails.
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<Value>> {
        yaml_documents(text)?.into_iter().map(|d| self.apply_strict(d)).collect()
    }

    /// Create an object with `fieldValidation=Strict`.
    pub fn apply_strict(&self, obj: Value) -> Result<Value> {
        let what = format!(
            "{} {}/{}",
            obj["kind"].as_str().unwrap_or(""),
            obj["metadata"]["namespace"].as_str().unwrap_or(&self.namespace),
            obj["metadata"]["name"].as_str().unwrap_or("")
        );
        self.create(obj, "?fieldValidation=Strict").with_context(|| what)
    }

    /// Forward connections to a returned 127.0.0.1 address to `127.0.0.1:port` inside a pod's
    /// network namespace (that of `container`'s current process), as `kubectl port-forward`
    /// reaches a pod. Pods have no network the host can route to; this is the harness's way in.
    /// The forwarder stops when the cluster does.
    pub fn forward(&self, ns: &str, pod: &str, container: &str, port: u16) -> Result<std::net::SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let api = Arc::downgrade(&self.api);
        let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
        std::thread::spawn(move || loop {
            let Some(api) = api.upgrade() else { return };
            match listener.accept() {
                Ok((client, _)) => {
                    let pid = api.store.get(&resources::PODS, &ns, &pod).and_then(|p| {
                        api.kubelet.running_container(p["metadata"]["uid"].as_str()?, &container).map(|t| t.pid)
                    });
                    drop(api);
                    if let Some(pid) = pid {
                        let _ = client.set_nonblocking(false);
                        std::thread::spawn(move || forward_into_netns(client, pid, port));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drop(api);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return,
            }
        });
        Ok(addr)
    }

    /// A user with a bearer token bound to an existing ClusterRole, in one namespace
    /// (RoleBinding) or cluster-wide (`namespace: None`, ClusterRoleBinding).
    pub fn add_user_with_cluster_role(
        &self,
        name: &str,
        cluster_role: &str,
        namespace: Option<&str>,
    ) -> Result<String> {
        let token = format!("tc-user.{}", store::random_suffix(24));
        let mut user = rbac::UserInfo::new(name, &[]);
        user.groups.push("system:authenticated".into());
        self.api.add_token(&token, user, None);
        let subject = json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name});
        let role_ref = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role});
        let binding = format!("tc-{name}-{cluster_role}").replace(':', "-");
        match namespace {
            Some(ns) => self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": binding, "namespace": ns}, "roleRef": role_ref, "subjects": [subject]}))?,
            None => self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": binding}, "roleRef": role_ref, "subjects": [subject]}))?,
        };
        Ok(token)
    }

    /// A user with a bearer token and the given RBAC rules, cluster-wide (`namespace: None`, a
    /// ClusterRole and ClusterRoleBinding) or in one namespace (a Role and RoleBinding).
    pub fn add_user(&self, name: &str, groups: &[&str], rules: Value, namespace: Option<&str>) -> Result<String> {
        let token = format!("tc-user.{}", store::random_suffix(24));
        let mut user = rbac::UserInfo::new(name, groups);
        user.groups.push("system:authenticated".into());
        user.extra
            .insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", store::new_uid())]);
        self.api.add_token(&token, user, None);
        self.grant(
            &json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}),
            name,
            rules,
            namespace,
        )?;
        Ok(token)
    }

    /// Bind RBAC rules to a subject (User, Group or ServiceAccount object).
    pub fn grant(&self, subject: &Value, role_name: &str, rules: Value, namespace: Option<&str>) -> Result<()> {
        let role_name = format!("tc-{}", role_name.replace(':', "-"));
        match namespace {
            Some(ns) => {
                self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": role_name, "namespace": ns}, "rules": rules}))?;
                self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": role_name, "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name}, "subjects": [subject]}))?;
            }
            None => {
                self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role_name}, "rules": rules}))?;
                self.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role_name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name}, "subjects": [subject]}))?;
            }
        }
        Ok(())
    }

    /// A client certificate for a user (CN = name, O = groups).
    pub fn user_cert(&self, name: &str, groups: &[&str]) -> Result<Issued> {
        self.pki.client(name, groups)
    }

    /// A token for a service account ("a pod's identity"), creating the account if needed.
    pub fn service_account_token(&self, ns: &str, sa: &str) -> Result<String> {
        if self.get("serviceaccounts", ns, sa).is_none() {
            self.apply(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}),
            )?;
        }
        let out = self.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})),
        )?;
        out["status"]["token"].as_str().map(String::from).context("no token in TokenRequest")
    }

    /// A kubeconfig for this cluster: the admin certificate, or a bearer token.
    pub fn kubeconfig_yaml(&self, token: Option<&str>, namespace: Option<&str>) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let user = match token {
            Some(t) => format!("    token: {t}\n"),
            None => format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&self.admin.cert_pem),
                b64(&self.admin.key_pem)
            ),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kustody-testcluster\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: kustody-testcluster-user\n  user:\n{user}contexts:\n- name: kustody-testcluster\n  context:\n    cluster: kustody-testcluster\n    user: kustody-testcluster-user\n    namespace: {}\ncurrent-context: kustody-testcluster\npreferences: {{}}\n",
            self.url,
            b64(&self.api.ca_pem),
            namespace.unwrap_or("default")
        )
    }

    /// Write a kubeconfig for a bearer token next to the cluster's files.
    pub fn write_kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        let p = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&p, self.kubeconfig_yaml(Some(token), Some(&self.namespace)))?;
        Ok(p)
    }

    /// The audit events written so far.
    pub fn audit_events(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.audit_path)?;
        text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).context("audit line")).collect()
    }

    /// Run a future on the cluster's runtime.
    pub fn block_on<F: std::future::Future + Send>(&self, f: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        Ok(block_on(self.rt()?, f))
    }

    /// The rootfs of a container's current instance (for before/after comparisons).
    pub fn container_rootfs(&self, ns: &str, pod: &str, container: &str) -> Option<PathBuf> {
        let p = self.get("pods", ns, pod)?;
        self.api.kubelet.running_container(p["metadata"]["uid"].as_str()?, container).map(|t| t.rootfs)
    }

    /// Everything a pod's containers wrote (every start, oldest first), for a failing test's
    /// message.
    pub fn pod_logs(&self, ns: &str, pod: &str) -> String {
        let Some(dir) =
            self.get("pods", ns, pod).and_then(|p| self.api.kubelet.log_dir(p["metadata"]["uid"].as_str()?))
        else {
            return String::new();
        };
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect::<Vec<_>>().join("")
    }

    /// The host pid of a container's main process.
    pub fn container_pid(&self, ns: &str, pod: &str, container: &str) -> Option<u32> {
        let p = self.get("pods", ns, pod)?;
        self.api.kubelet.running_container(p["metadata"]["uid"].as_str()?, container).map(|t| t.pid)
    }

    /// Stop the cluster now (dropping does the same).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.api.kubelet.shutdown_blocking();
        if let Some(rt) = self.rt.take() {
            // wait for blocking tasks (a container's rootfs copy, a log writer) so none of
            // them writes into the directory after it is removed; not possible from inside
            // another runtime, where blocking is not allowed
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(3));
            }
        }
        self.api.kubelet.shutdown_blocking();
        // a late writer can still recreate a path: remove until it stays removed
        for _ in 0..40 {
            let _ = std::fs::remove_dir_all(&self.dir);
            if !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connect to 127.0.0.1:port in the network namespace of process `pid` from a thread that
/// enters it (a socket stays in the namespace it was made in), then copy bytes both ways.
fn forward_into_netns(client: std::net::TcpStream, pid: u32, port: u16) {
    let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else { return };
    let upstream = std::thread::spawn(move || {
        use std::os::fd::AsFd;
        rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
            .map_err(std::io::Error::from)?;
        std::net::TcpStream::connect(("127.0.0.1", port))
    })
    .join();
    let Ok(Ok(upstream)) = upstream else { return };
    let (Ok(mut client_r), Ok(mut up_w)) = (client.try_clone(), upstream.try_clone()) else { return };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut up_r, mut client_w) = (upstream, client);
    let _ = std::io::copy(&mut up_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}
