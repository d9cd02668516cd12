//! The collector's exec conversation: phase 1 is sent on stdin of `sh -s`, its output is read
//! as it streams and cut into sections; once phase 1 ends, what to hash is chosen from the
//! listing and phase 2 is sent on the same stdin.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kustody_cluster::exec::{self, ExecError, ExecSpec};
use tokio::io::AsyncReadExt;

use super::context::under;
use super::session::{ms, Session};
use crate::frame::{Section, Sections};
use crate::procfs::{self, FileEntry};
use crate::script::{self, Mode};

/// Per-section caps on what the collector may send.
fn cap(tag: &str) -> usize {
    match tag {
        "files" => 512 << 20,
        "hashes" | "hash1" => 64 << 20,
        "net" => 64 << 20,
        "links" | "mountinfo" => 8 << 20,
        _ => 1 << 20,
    }
}

pub(super) fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::getrandom(&mut b).is_err() {
        // never expected on Linux; fall back to time-derived bytes rather than fail collection
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The collector's output, before it is written.
pub(super) struct CollectorRun {
    pub phase1: String,
    pub phase2: Option<String>,
    pub sections: Vec<Section>,
    pub files: Vec<FileEntry>,
    pub to_hash: Vec<String>,
    pub outcome: Option<exec::ExecOutcome>,
    pub error: Option<ExecError>,
    pub malformed: u64,
    pub preamble: Vec<u8>,
    pub target_pid: Option<u32>,
    pub include_env_values: bool,
    pub started_at: Option<i64>,
    pub excluded: Vec<String>,
    pub elapsed: Duration,
}

/// Which files to hash: executables once per inode, changed and kubelet-managed files, within
/// the size limit, never under credential mounts.
pub(super) fn choose_hashes(files: &mut [FileEntry], excluded: &[String], max: u64) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in files.iter_mut() {
        if f.kind != "file" || !(f.executable() || f.drift || f.managed_by.is_some()) {
            continue;
        }
        if under(&f.path, excluded) {
            f.not_hashed = Some("credential volume (listed only)".into());
            continue;
        }
        if f.size > max {
            f.not_hashed = Some(format!("larger than --max-hash-bytes ({max})"));
            continue;
        }
        if seen.insert(f.inode) {
            out.push(f.path.clone());
        }
    }
    out
}

impl Session {
    /// The two-phase collector over one exec. `managed`: the kubelet-managed paths, labelled
    /// in the listing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_collector(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        mode: Mode,
        started_at: Option<i64>,
        excluded: &[String],
        managed: &[String],
    ) -> CollectorRun {
        let t0 = Instant::now();
        let nonce = rand_hex(16);
        let p1 = script::phase1(&nonce, mode);
        let spec = ExecSpec {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: Some(container.to_owned()),
            command: script::command(),
            stdin: None,
            timeout: Some(self.opts.timeout),
            verify_size: false,
            max_stderr: Some(1 << 20),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        // the receiver is alive (held below until the exec task takes it): this cannot fail
        let _ = tx.send(p1.clone().into_bytes()).await;
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        let client = self.client.clone();
        let exec_task = tokio::spawn(async move {
            let res = exec::exec_interactive(&client, &spec, rx, &mut w).await;
            drop(w);
            res
        });
        let mut sections = Sections::new(&nonce, cap);
        let mut done: Vec<Section> = Vec::new();
        let mut tx = Some(tx);
        let mut phase1_ms = None;
        let mut p2 = None;
        let mut to_hash: Vec<String> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut files: Vec<FileEntry> = Vec::new();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (complete, started) = sections.push(buf.get(..n).unwrap_or_default());
            done.extend(complete);
            if started.iter().any(|t| t == "end") && p2.is_none() {
                phase1_ms = Some(ms(t0.elapsed()));
                // phase 1 is complete: choose what to hash from the listing
                let listing = done.iter().find(|s| s.tag == "files");
                let (f, _) = listing.map(|s| procfs::parse_listing(&s.body, started_at)).unwrap_or_default();
                files = f;
                crate::kubelet::label(&mut files, managed);
                to_hash = choose_hashes(&mut files, excluded, self.opts.max_hash_bytes);
                let text = script::phase2(&to_hash);
                if let Some(tx) = tx.take() {
                    // a send fails only when the exec ended: the missing `end 2` is then recorded
                    let _ = tx.send(text.clone().into_bytes()).await;
                }
                p2 = Some(text);
            }
        }
        drop(tx);
        done.extend(sections.finish());
        let outcome = exec_task.await.map_err(|e| ExecError::Failed { message: e.to_string() }).and_then(|r| r);
        self.time(
            "collector phase 1 (processes, network, listing)",
            Duration::from_secs_f64(phase1_ms.unwrap_or(ms(t0.elapsed())) / 1000.0),
        );
        if let Some(p1ms) = phase1_ms {
            self.time(
                "collector phase 2 (hashes)",
                Duration::from_secs_f64((ms(t0.elapsed()) - p1ms).max(0.0) / 1000.0),
            );
        }
        let (outcome, error) = match outcome {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(e)),
        };
        CollectorRun {
            phase1: p1,
            phase2: p2,
            sections: done,
            files,
            to_hash,
            outcome,
            error,
            malformed: sections.deframer.malformed,
            preamble: sections.preamble,
            target_pid: None,
            include_env_values: self.opts.include_env_values,
            started_at,
            excluded: excluded.to_vec(),
            elapsed: t0.elapsed(),
        }
    }
}
