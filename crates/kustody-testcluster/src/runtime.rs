//! Real containers: OCI bundles run by `runc`, from root filesystems the harness builds once.
//!
//! Images:
//! - `busybox`: a static busybox with every applet linked, `/etc/passwd`, `/etc/group`,
//!   `/etc/hosts`, `/tmp`. Any image reference not named below runs this.
//! - `distroless`: no shell, no busybox: one static binary `/app` (a tiny TCP server on :8080
//!   that logs each connection). Image references containing `distroless` run this.
//! - the pod sandbox: a static `/pause` holding the pod's network, IPC and UTS namespaces.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
static void done(int s) { (void)s; _exit(0); }
int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }
"#;

const APP_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void done(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGTERM, done);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(8080);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) { perror("listen"); for (;;) pause(); }
    printf("distroless app listening on :8080\n");
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        printf("connection\n");
        const char *msg = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        write(c, msg, strlen(msg));
        close(c);
    }
}
"#;

/// Which root filesystem a container image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Busybox,
    Distroless,
    /// An image a test registered (`Builder::image`), by its index.
    Custom(usize),
}

/// An image a test supplies: a root filesystem directory (say, the kustody binary with the
/// libraries `ldd` names, as a distroless/cc image holds them) and the user its Dockerfile's
/// `USER` names. Its files are hard-linked into each container, not copied.
#[derive(Debug, Clone)]
pub struct CustomImage {
    /// The exact image reference pods name.
    pub reference: String,
    pub rootfs: PathBuf,
    /// The image's default command (its ENTRYPOINT + CMD).
    pub entrypoint: Vec<String>,
    pub uid: u32,
    pub gid: u32,
}

/// The cached root filesystems.
#[derive(Debug, Clone)]
pub struct Images {
    pub busybox: PathBuf,
    pub distroless: PathBuf,
    pub sandbox: PathBuf,
    /// `sha256:...` of each image's main binary: stable image IDs.
    pub busybox_id: String,
    pub distroless_id: String,
    pub custom: Vec<(CustomImage, String)>,
}

impl Images {
    /// The root filesystem an image reference runs: a registered image by its exact reference,
    /// else references containing `distroless` run the distroless one and all others busybox.
    pub fn kind(&self, image: &str) -> ImageKind {
        if let Some(i) = self.custom.iter().position(|(c, _)| c.reference == image) {
            ImageKind::Custom(i)
        } else if image.contains("distroless") {
            ImageKind::Distroless
        } else {
            ImageKind::Busybox
        }
    }
    pub fn rootfs(&self, kind: ImageKind) -> &Path {
        match kind {
            ImageKind::Busybox => &self.busybox,
            ImageKind::Distroless => &self.distroless,
            ImageKind::Custom(i) => &self.custom[i].0.rootfs,
        }
    }
    pub fn id(&self, kind: ImageKind) -> &str {
        match kind {
            ImageKind::Busybox => &self.busybox_id,
            ImageKind::Distroless => &self.distroless_id,
            ImageKind::Custom(i) => &self.custom[i].1,
        }
    }
    /// The user (uid, gid) the image runs as when the pod does not say.
    pub fn user(&self, kind: ImageKind) -> (u32, u32) {
        match kind {
            ImageKind::Custom(i) => (self.custom[i].0.uid, self.custom[i].0.gid),
            _ => (0, 0),
        }
    }
    /// Register a test's image; its ID is the SHA-256 of its entrypoint binary's path and size.
    pub fn add(&mut self, image: CustomImage) {
        use sha2::Digest;
        let main = image.entrypoint.first().map(|e| image.rootfs.join(e.trim_start_matches('/')));
        let size = main.as_ref().and_then(|m| std::fs::metadata(m).ok()).map(|m| m.len()).unwrap_or(0);
        let id = format!("sha256:{:x}", sha2::Sha256::digest(format!("{}:{size}", image.reference)));
        self.custom.push((image, id));
    }
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Whether an ELF file has no program interpreter (is statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else { return false };
    if b.get(0..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) {
        return false;
    }
    let u64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    let u16_at = |o: usize| b.get(o..o + 2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let off = phoff as usize + i * phentsize as usize;
        b.get(off..off + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes) != Some(3)
    })
}

/// What to install when something the harness needs is missing.
pub const INSTALL_HINT: &str = "apt-get install -y runc busybox-static gcc libc6-dev";

/// Check the host tools: runc, a static busybox, and gcc for the static test binaries.
pub fn check_host() -> Result<(PathBuf, PathBuf)> {
    // KUSTODY_TESTCLUSTER_RUNC names another runc binary (and lets tests check this message).
    let runc = match std::env::var_os("KUSTODY_TESTCLUSTER_RUNC") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => find_in_path("runc"),
    }
    .with_context(|| format!("the test cluster needs runc, which is not installed; run: {INSTALL_HINT}"))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_static_elf(p))
        .with_context(|| {
            format!("the test cluster needs a statically linked busybox (Debian package busybox-static); run: {INSTALL_HINT}")
        })?;
    if !nix_is_root() {
        bail!("the test cluster runs runc containers and needs root (the CI machine runs as root)");
    }
    Ok((runc, busybox))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    let b = std::fs::read(p)?;
    Ok(format!("sha256:{:x}", sha2::Sha256::digest(&b)))
}

fn compile_static(src: &str, out: &Path, work: &Path) -> Result<()> {
    let c = work.join(format!("{}.c", out.file_name().and_then(|s| s.to_str()).unwrap_or("x")));
    std::fs::write(&c, src)?;
    let st =
        std::process::Command::new("gcc").args(["-static", "-Os", "-s", "-o"]).arg(out).arg(&c).status().with_context(
            || format!("the test cluster compiles two static test binaries with gcc; run: {INSTALL_HINT}"),
        )?;
    if !st.success() {
        bail!("gcc -static failed for {} (is libc6-dev installed? {INSTALL_HINT})", c.display());
    }
    Ok(())
}

fn write_base_files(root: &Path) -> Result<()> {
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "var/run", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost\n")?;
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 10.96.0.10\nsearch svc.cluster.local cluster.local\n")?;
    Ok(())
}

/// Build (once per machine) and return the cached images.
pub fn ensure_images(busybox: &Path) -> Result<Images> {
    let cache = std::env::var_os("KUSTODY_TESTCLUSTER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kustody-testcluster"));
    let dir = cache.join("images-v1");
    if !dir.join("ready").is_file() {
        std::fs::create_dir_all(&cache)?;
        let work = cache.join(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        // busybox
        let bb = work.join("busybox");
        write_base_files(&bb)?;
        for d in ["bin", "sbin", "usr/bin", "usr/sbin"] {
            std::fs::create_dir_all(bb.join(d))?;
        }
        std::fs::copy(busybox, bb.join("bin/busybox"))?;
        let out = std::process::Command::new(busybox).arg("--list-full").output()?;
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let link = bb.join(applet);
            if applet.is_empty() || applet == "bin/busybox" || link.exists() {
                continue;
            }
            let depth = applet.matches('/').count();
            let target = format!("{}bin/busybox", "../".repeat(depth));
            let _ = std::os::unix::fs::symlink(target, &link);
        }
        // distroless
        let dl = work.join("distroless");
        write_base_files(&dl)?;
        compile_static(APP_C, &dl.join("app"), &work)?;
        // sandbox
        let sb = work.join("sandbox");
        for d in ["proc", "sys", "dev"] {
            std::fs::create_dir_all(sb.join(d))?;
        }
        compile_static(PAUSE_C, &sb.join("pause"), &work)?;
        std::fs::write(work.join("ready"), "")?;
        match std::fs::rename(&work, &dir) {
            Ok(()) => {}
            Err(_) if dir.join("ready").is_file() => {
                let _ = std::fs::remove_dir_all(&work);
            }
            Err(e) => return Err(e).context("installing the image cache"),
        }
    }
    Ok(Images {
        busybox_id: sha256_file(&dir.join("busybox/bin/busybox"))?,
        distroless_id: sha256_file(&dir.join("distroless/app"))?,
        busybox: dir.join("busybox"),
        distroless: dir.join("distroless"),
        sandbox: dir.join("sandbox"),
        custom: Vec::new(),
    })
}

/// Copy a directory tree, keeping symlinks and modes.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    tree(from, to, false)
}

/// Hard-link a directory tree (symlinks and directories recreated, modes kept): a test's image
/// of several hundred MB starts without a copy. Falls back to copying across file systems.
pub fn link_tree(from: &Path, to: &Path) -> Result<()> {
    tree(from, to, true)
}

fn tree(from: &Path, to: &Path, link: bool) -> Result<()> {
    std::fs::create_dir_all(to)?;
    if link {
        std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    }
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dst = to.join(e.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
        } else if ft.is_dir() {
            tree(&e.path(), &dst, link)?;
        } else if !link || std::fs::hard_link(e.path(), &dst).is_err() {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

/// A bind mount into a container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Namespaces a container joins (paths under /proc) or creates (`None`).
#[derive(Debug, Clone, Default)]
pub struct Join {
    /// `Some(None)`: share the host's (hostNetwork).
    pub net: Option<Option<PathBuf>>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub id: String,
    pub rootfs_from: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub binds: Vec<Bind>,
    pub join: Join,
    pub privileged: bool,
    /// Hard-link the root filesystem instead of copying it (test images).
    pub link_rootfs: bool,
    /// The process's user: uid, gid and supplementary groups (fsGroup, supplementalGroups).
    pub user: (u32, u32, Vec<u32>),
    /// `readOnlyRootFilesystem`.
    pub readonly_root: bool,
    /// Capabilities dropped (`ALL` drops every one) and added, from the container's
    /// securityContext.
    pub drop_caps: Vec<String>,
    pub add_caps: Vec<String>,
    /// `allowPrivilegeEscalation: false` (no_new_privs is also set for every unprivileged one).
    pub no_new_privileges: bool,
}

/// Docker's default capability set; privileged containers get these plus `PRIVILEGED_EXTRA`.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];
const PRIVILEGED_EXTRA: &[&str] = &["CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"];

fn caps(c: &ContainerConfig) -> Value {
    let mut list: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    if c.privileged {
        list.extend(PRIVILEGED_EXTRA.iter().map(|s| s.to_string()));
    }
    let name = |s: &str| if s.starts_with("CAP_") { s.to_string() } else { format!("CAP_{s}") };
    if c.drop_caps.iter().any(|d| d == "ALL") {
        list.clear();
    } else {
        list.retain(|l| !c.drop_caps.iter().any(|d| name(d) == *l));
    }
    for a in &c.add_caps {
        if !list.contains(&name(a)) {
            list.push(name(a));
        }
    }
    // a non-root process keeps only what ambient rules give it: none here, as in runc's default
    if c.user.0 != 0 {
        return json!({"bounding": list, "effective": [], "permitted": []});
    }
    json!({"bounding": list, "effective": list, "permitted": list})
}

fn oci_config(c: &ContainerConfig) -> Value {
    let mut ns = vec![json!({"type": "mount"})];
    match &c.join.pid {
        Some(p) => ns.push(json!({"type": "pid", "path": p})),
        None => ns.push(json!({"type": "pid"})),
    }
    match &c.join.net {
        Some(Some(p)) => ns.push(json!({"type": "network", "path": p})),
        Some(None) => {}
        None => ns.push(json!({"type": "network"})),
    }
    match &c.join.ipc {
        Some(p) => ns.push(json!({"type": "ipc", "path": p})),
        None => ns.push(json!({"type": "ipc"})),
    }
    match &c.join.uts {
        Some(p) => ns.push(json!({"type": "uts", "path": p})),
        None => ns.push(json!({"type": "uts"})),
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for b in &c.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if b.read_only {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": opts}));
    }
    let uts_shared = c.join.uts.is_some();
    let mut cfg = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": c.user.0, "gid": c.user.1, "additionalGids": c.user.2},
                    "args": c.args, "env": c.env,
                    "cwd": if c.cwd.is_empty() { "/" } else { &c.cwd }, "capabilities": caps(c),
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": !c.privileged || c.no_new_privileges},
        "root": {"path": "rootfs", "readonly": c.readonly_root},
        "mounts": mounts,
        "linux": {"namespaces": ns, "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                  "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                  "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]}
    });
    if !uts_shared {
        cfg["hostname"] = json!(c.hostname);
    }
    cfg
}

/// A started container: its `runc run` process stays our child until the container exits.
pub struct Started {
    pub child: Child,
    pub pid: u32,
    pub bundle: PathBuf,
}

/// runc, rooted in one cluster's state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    pub bin: PathBuf,
    pub root: PathBuf,
}

impl Runc {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c.kill_on_drop(true);
        c
    }

    /// Create a bundle (copying the rootfs) and start the container. stdout and stderr are
    /// piped to the caller; stdin is piped when `stdin` is set.
    pub async fn start(&self, c: &ContainerConfig, bundles: &Path, stdin: bool) -> Result<Started> {
        let bundle = bundles.join(&c.id);
        let rootfs = bundle.join("rootfs");
        let from = c.rootfs_from.clone();
        let rootfs2 = rootfs.clone();
        let link = c.link_rootfs;
        tokio::task::spawn_blocking(move || if link { link_tree(&from, &rootfs2) } else { copy_tree(&from, &rootfs2) })
            .await??;
        for b in &c.binds {
            let dst = rootfs.join(b.destination.trim_start_matches('/'));
            if b.source.is_dir() {
                std::fs::create_dir_all(&dst)?;
            } else {
                if let Some(p) = dst.parent() {
                    std::fs::create_dir_all(p)?;
                }
                // a new mount point, never a write through a hard-linked image file
                let _ = std::fs::remove_file(&dst);
                std::fs::write(&dst, b"")?;
            }
        }
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&oci_config(c))?)?;
        let pidfile = bundle.join("pid");
        let mut cmd = self.cmd();
        cmd.arg("run").arg("--bundle").arg(&bundle).arg("--pid-file").arg(&pidfile).arg(&c.id);
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting runc")?;
        for _ in 0..5000 {
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                if let Ok(pid) = s.trim().parse::<u32>() {
                    return Ok(Started { child, pid, bundle });
                }
            }
            if let Some(st) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                bail!("runc run {} exited with {st} before the container started: {}", c.id, err.trim());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bail!("runc run {}: no pid after 5 s", c.id)
    }

    /// `runc exec` with piped stdio.
    pub fn exec(&self, id: &str, argv: &[String], stdin: bool) -> Result<Child> {
        let mut cmd = self.cmd();
        cmd.arg("exec").arg(id).args(argv);
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().context("starting runc exec")
    }

    pub async fn kill(&self, id: &str, signal: &str) {
        let _ = self.cmd().arg("kill").arg(id).arg(signal).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    }

    pub async fn delete(&self, id: &str) {
        let _ =
            self.cmd().arg("delete").arg("--force").arg(id).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    }

    /// Blocking teardown of every container under this root (for Drop).
    pub fn delete_all_blocking(&self) {
        let Ok(out) = std::process::Command::new(&self.bin).arg("--root").arg(&self.root).args(["list", "-q"]).output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
            let _ = std::process::Command::new(&self.bin)
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Resolve `cmd` against `$PATH` inside a rootfs, following symlinks inside it, the way the
/// runtime would before exec. Returns whether it names an executable.
pub fn resolve_in_rootfs(rootfs: &Path, cmd: &str) -> bool {
    let exists = |p: &str| -> bool {
        let mut path = p.to_string();
        for _ in 0..16 {
            let host = rootfs.join(path.trim_start_matches('/'));
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let Ok(t) = std::fs::read_link(&host) else { return false };
                    let t = t.to_string_lossy().to_string();
                    path = if t.starts_with('/') {
                        t
                    } else {
                        let parent =
                            Path::new(&path).parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
                        format!("{parent}/{t}")
                    };
                }
                Ok(m) => return m.is_file(),
                Err(_) => return false,
            }
        }
        false
    };
    if cmd.contains('/') {
        return exists(cmd);
    }
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| exists(&format!("{d}/{cmd}")))
}
