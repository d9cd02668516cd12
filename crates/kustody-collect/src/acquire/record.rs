//! The collector's sections parsed and written: the scripts, the transcript's record,
//! `processes.json`, `network.json` and the raw tables, `etc/`, `files.jsonl` and
//! `drift.json`. Every write that fails is a recorded failure (`Bundle::save`).

use std::collections::BTreeMap;

use kustody_cluster::exec::ExecError;
use serde_json::{json, Value};

use super::run::CollectorRun;
use super::session::{ms, pretty, source_exec, ContainerReport, PodCtx, Session};
use crate::bundle::{component, now, Bundle, Source};
use crate::frame::Section;
use crate::procfs::{self, FileEntry, Process, Socket};
use crate::script;

/// Where one container's artifacts go and where they came from.
struct Out<'a> {
    b: &'a Bundle,
    ns: &'a str,
    pod: &'a str,
    exec_container: &'a str,
    cdir: &'a str,
    started: String,
}

impl Out<'_> {
    /// Parsed from these sections of the collector's output.
    fn csrc(&self, sections: &[&str]) -> Source {
        Source::Collector {
            namespace: self.ns.into(),
            pod: self.pod.into(),
            container: self.exec_container.into(),
            sections: sections.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn save(&self, rel: &str, bytes: &[u8], source: Source, notes: Vec<String>, redacted: Vec<String>) {
        self.b.save(&format!("{}/{rel}", self.cdir), bytes, source, self.started.clone(), notes, redacted);
    }
}

fn text(s: &Section) -> String {
    String::from_utf8_lossy(&s.body).into_owned()
}

/// The section's command exited non-zero and printed nothing.
fn unreadable(s: &Section) -> bool {
    s.rc.is_some_and(|rc| rc != 0) && s.body.is_empty()
}

impl CollectorRun {
    fn one(&self, tag: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.tag == tag)
    }

    /// Parse the sections and write the artifacts.
    pub(super) fn finish(
        &mut self,
        session: &Session,
        pod: &PodCtx,
        exec_container: &str,
        cdir: &str,
        report: &mut ContainerReport,
    ) {
        let out = Out { b: &session.bundle, ns: &pod.ns, pod: &pod.name, exec_container, cdir, started: now() };
        self.scripts(&out);
        let transcript = self.transcript(&out);
        if self.one("begin").is_none() {
            report.collector = Some(transcript);
            return;
        }
        self.target_pid = self.one("target").and_then(|s| text(s).trim().parse().ok());
        let procs = self.processes(&out, report);
        self.network(&out, &procs, report);
        self.etc(&out);
        if let Some(listing) = self.one("files").map(|s| (s.dropped, s.rc)) {
            self.listing(&out, listing, pod, report);
        } else if self.error.is_none() {
            out.b.fail(format!("{cdir}/files.jsonl"), "the collector sent no file listing", None);
        }
        report.collector = Some(transcript);
    }

    /// The exact scripts sent on stdin.
    fn scripts(&self, out: &Out) {
        out.save(
            "collector/phase1.sh",
            self.phase1.as_bytes(),
            Source::Kustody {
                what: format!("collector script, phase 1, sent on stdin to `sh -s` in {}", out.exec_container),
            },
            vec![],
            vec![],
        );
        if let Some(p2) = &self.phase2 {
            out.save(
                "collector/phase2.sh",
                p2.as_bytes(),
                Source::Kustody { what: "collector script, phase 2 (hashes chosen from the listing)".into() },
                vec![],
                vec![],
            );
        }
    }

    /// The manifest's record of the exec (and its stderr, stored); a collector that stopped
    /// early is a failure.
    fn transcript(&self, out: &Out) -> Value {
        let mut transcript = json!({
            "command": script::command(), "container": out.exec_container,
            "elapsed_ms": ms(self.elapsed),
            "sections": self.sections.len(),
        });
        if let Some(o) = &self.outcome {
            transcript["exit_code"] = json!(o.exit_code);
            transcript["protocol"] = json!(o.protocol);
            // the raw stream holds environment values, so it is hashed, not stored
            transcript["transcript_sha256"] = json!(o.stdout_sha256);
            transcript["transcript_bytes"] = json!(o.stdout_bytes);
            if !o.stderr.is_empty() {
                let notes = if o.stderr_dropped > 0 {
                    vec![format!("{} more bytes dropped", o.stderr_dropped)]
                } else {
                    vec![]
                };
                let src = source_exec(out.ns, out.pod, out.exec_container, script::command(), None);
                out.save("collector/stderr.txt", &o.stderr, src, notes, vec![]);
            }
        }
        if self.malformed > 0 {
            transcript["malformed_markers"] = json!(self.malformed);
        }
        if !self.preamble.is_empty() {
            transcript["preamble"] = json!(String::from_utf8_lossy(&self.preamble));
        }
        if let Some(reason) = self.stopped() {
            transcript["error"] = json!(reason);
            let stdin = Some(format!("{}/collector/phase1.sh", out.cdir));
            let source = source_exec(out.ns, out.pod, out.exec_container, script::command(), stdin);
            out.b.fail(format!("{}/collector", out.cdir), reason, Some(source));
        }
        transcript
    }

    /// Why the collector did not run to its end, if it did not.
    fn stopped(&self) -> Option<String> {
        let ended = |phase: &str| self.sections.iter().any(|s| s.tag == "end" && s.arg == phase);
        match &self.error {
            Some(ExecError::Transport(m)) => {
                Some(format!("the collector's stream ended early (pod or container gone?): {m}"))
            }
            Some(other) => Some(other.to_string()),
            None if !(ended("1") && ended("2")) => {
                let code = self.outcome.as_ref().map_or(-1, |o| o.exit_code);
                Some(format!(
                    "the collector stopped before {} (exit code {code}{}): was the pod or container deleted, or the shell killed?",
                    if ended("1") { "hashing finished" } else { "reading processes, sockets and files finished" },
                    if code == 137 { ", SIGKILL" } else { "" }
                ))
            }
            None => None,
        }
    }

    /// `processes.json` from the per-pid sections.
    fn processes(&self, out: &Out, report: &mut ContainerReport) -> Vec<Process> {
        let btime: Option<u64> =
            self.one("btime").and_then(|s| text(s).split_whitespace().nth(1).and_then(|x| x.parse().ok()));
        let mut procs: BTreeMap<u32, Process> = BTreeMap::new();
        for s in &self.sections {
            let Ok(pid) = s.arg.parse::<u32>() else { continue };
            if !matches!(s.tag.as_str(), "stat" | "status" | "cmdline" | "environ" | "links") {
                continue;
            }
            let p = procs.entry(pid).or_insert_with(|| Process { pid, ..Process::default() });
            if unreadable(s) {
                p.unreadable.push(s.tag.clone());
                continue;
            }
            self.process_section(p, s, btime);
        }
        // a pid listed but gone before its stat could be read
        procs.retain(|_, p| !(p.name.is_empty() && p.unreadable.iter().any(|u| u == "stat")));
        let procs: Vec<Process> = procs.into_values().collect();
        report.processes = procs.len();
        report.deleted_executables = procs.iter().filter(|p| p.exe_deleted).map(|p| p.pid).collect();
        let mut redacted = Vec::new();
        if !self.include_env_values {
            redacted.push("environment variable values (names kept; --include-env-values keeps values)".into());
        }
        out.save(
            "processes.json",
            &pretty(&serde_json::to_value(&procs).unwrap_or_default()),
            out.csrc(&["stat", "status", "cmdline", "environ", "links"]),
            vec![format!("start times: boot time + ticks / {} (USER_HZ)", procfs::USER_HZ)],
            redacted,
        );
        procs
    }

    /// One `/proc/PID/*` section into `p`.
    fn process_section(&self, p: &mut Process, s: &Section, btime: Option<u64>) {
        match s.tag.as_str() {
            "stat" => {
                if let Some((ppid, state, comm, start, threads)) = procfs::parse_stat(&text(s)) {
                    p.ppid = Some(ppid);
                    p.state = state;
                    p.name = comm;
                    p.start_ticks = Some(start);
                    p.threads = Some(threads);
                    p.started = btime.and_then(|bt| {
                        chrono::DateTime::from_timestamp(
                            (bt + start / procfs::USER_HZ) as i64,
                            ((start % procfs::USER_HZ) * 10_000_000) as u32,
                        )
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    });
                } else {
                    p.unreadable.push("stat (unparsed)".into());
                }
            }
            "status" => {
                let (u, g) = procfs::parse_status_ids(&text(s));
                p.uid = u;
                p.gid = g;
            }
            "cmdline" => p.cmdline = procfs::split_nul(&s.body),
            "environ" => {
                let (names, values) = procfs::parse_environ(&s.body, self.include_env_values);
                p.env_names = names;
                p.env = values;
            }
            "links" => {
                let (exe, cwd, fds) = procfs::parse_links(p.pid, &text(s));
                if let Some(e) = exe {
                    p.exe_deleted = e.ends_with(" (deleted)");
                    p.exe = Some(e.trim_end_matches(" (deleted)").to_owned());
                }
                p.cwd = cwd;
                p.fds = procfs::summarize_fds(&fds);
            }
            _ => {}
        }
    }

    /// `network.json` and the raw `/proc/net/*` tables.
    fn network(&self, out: &Out, procs: &[Process], report: &mut ContainerReport) {
        let mut sockets: Vec<Socket> = Vec::new();
        let mut bad = 0;
        for s in self.sections.iter().filter(|s| s.tag == "net") {
            let body = text(s);
            let (mut v, n) =
                if s.arg == "unix" { procfs::parse_net_unix(&body) } else { procfs::parse_net_inet(&s.arg, &body) };
            sockets.append(&mut v);
            bad += n;
            out.save(
                &format!("raw/proc-net-{}", component(&s.arg)),
                &s.body,
                out.csrc(&["net"]),
                vec![format!("/proc/net/{}", s.arg)],
                vec![],
            );
        }
        procfs::map_sockets(&mut sockets, procs);
        report.sockets = sockets.len();
        report.listening = sockets
            .iter()
            .filter(|s| s.listening && !s.proto.starts_with("unix"))
            .map(|s| {
                format!(
                    "{} {}{}",
                    s.proto,
                    s.local,
                    if s.pids.is_empty() { String::new() } else { format!(" (pid {:?})", s.pids) }
                )
            })
            .collect();
        let net = json!({"listening": sockets.iter().filter(|s| s.listening).collect::<Vec<_>>(), "sockets": sockets});
        out.save(
            "network.json",
            &pretty(&net),
            out.csrc(&["net tcp", "net tcp6", "net udp", "net udp6", "net unix", "links"]),
            if bad > 0 { vec![format!("{bad} lines did not parse (kept in raw/)")] } else { vec![] },
            vec![],
        );
    }

    /// `raw/mountinfo`, `etc/hosts`, `etc/resolv.conf` as read.
    fn etc(&self, out: &Out) {
        for (tag, rel) in [("mountinfo", "raw/mountinfo"), ("hosts", "etc/hosts"), ("resolv", "etc/resolv.conf")] {
            let Some(s) = self.one(tag) else { continue };
            if unreadable(s) {
                out.b.fail(
                    format!("{}/{rel}", out.cdir),
                    format!("not readable in the container (exit {})", s.rc.unwrap_or(-1)),
                    None,
                );
            } else {
                let notes = if tag == "mountinfo" {
                    vec![]
                } else {
                    vec!["managed by the kubelet (bind-mounted from the pod's directory on the node)".into()]
                };
                out.save(rel, &s.body, out.csrc(&[tag]), notes, vec![]);
            }
        }
    }

    /// Hashes into the listing, the acquisition's own changes told apart from drift, then
    /// `files.jsonl` and `drift.json`.
    /// `listing`: the listing section's dropped bytes and exit status.
    fn listing(&mut self, out: &Out, listing: (u64, Option<i32>), pod: &PodCtx, report: &mut ContainerReport) {
        let (dropped, rc) = listing;
        self.apply_hashes();
        // kustody's debug container made the kubelet rewrite /etc/hosts: not drift
        if let Some(hosts) = self.files.iter().find(|f| f.path == crate::kubelet::HOSTS && f.drift) {
            if let Some(d) = pod.effects.explains_hosts_change(hosts.mtime.max(hosts.ctime)) {
                let cause = format!(
                    "the kubelet rewrote it when kustody's debug container {} started in this pod (this acquisition)",
                    d.name
                );
                report.changed_by_acquisition = crate::kubelet::attribute_to_acquisition(&mut self.files, &cause);
            }
        }
        report.files = self.files.len();
        report.drift = self.files.iter().filter(|f| f.drift).count();
        report.hashed = self.files.iter().filter(|f| f.sha256.is_some()).count();
        let mut lines = Vec::with_capacity(self.files.len() * 160);
        for f in &self.files {
            if let Ok(line) = serde_json::to_vec(f) {
                lines.extend_from_slice(&line);
                lines.push(b'\n');
            }
        }
        let mut notes = vec![match self.started_at {
            Some(s) => format!("drift: ctime or mtime after the container started ({s}, whole seconds)"),
            None => "drift unknown: the container's start time is not in its status".into(),
        }];
        notes.push("managed_by: files the kubelet writes (/etc/hosts, /etc/hostname, /etc/resolv.conf, the termination-message file); changed_by_acquisition: changes this acquisition caused, not counted as drift".into());
        if dropped > 0 {
            notes.push(format!("listing truncated: {dropped} bytes beyond the limit dropped"));
        }
        if rc.is_some_and(|rc| rc != 0) {
            notes.push(format!(
                "find/stat exited {} (some paths unreadable; see collector/stderr.txt)",
                rc.unwrap_or(-1)
            ));
        }
        if self.files.is_empty() {
            out.b.fail(
                format!("{}/files.jsonl", out.cdir),
                format!(
                    "no file listing: find/stat exited {} in the container (missing tools?); --via debug lists it with the debug image's",
                    rc.unwrap_or(-1)
                ),
                None,
            );
        }
        notes.push(format!("credential volumes listed but never hashed or copied: {}", self.excluded.join(", ")));
        out.save("files.jsonl", &lines, out.csrc(&["files", "hashes", "hash1"]), notes, vec![]);
        let drift: Vec<&FileEntry> = self.files.iter().filter(|f| f.drift).collect();
        out.save(
            "drift.json",
            &pretty(&serde_json::to_value(&drift).unwrap_or_default()),
            out.csrc(&["files", "hashes"]),
            vec!["files changed since the container started (subset of files.jsonl), not counting the acquisition's own changes".into()],
            vec![],
        );
    }

    /// The phase-2 hashes into the listing (hard links share their inode's hash).
    fn apply_hashes(&mut self) {
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        for s in self.sections.iter().filter(|s| s.tag == "hashes") {
            for (name, h) in procfs::parse_sha256sum(&text(s)) {
                hashes.insert(name.strip_prefix('.').unwrap_or(&name).to_owned(), h);
            }
        }
        for s in self.sections.iter().filter(|s| s.tag == "hash1") {
            if let (Ok(i), Some((h, _))) = (s.arg.parse::<usize>(), text(s).split_once(' ')) {
                if let Some(p) = self.to_hash.get(i) {
                    hashes.insert(p.clone(), h.to_owned());
                }
            }
        }
        let by_inode: BTreeMap<u64, String> =
            self.files.iter().filter_map(|f| hashes.get(&f.path).map(|h| (f.inode, h.clone()))).collect();
        let phase2_done = self.sections.iter().any(|s| s.tag == "end" && s.arg == "2");
        for f in &mut self.files {
            if f.kind == "file" && (f.executable() || f.drift || f.managed_by.is_some()) && f.not_hashed.is_none() {
                f.sha256 = by_inode.get(&f.inode).cloned();
                if f.sha256.is_none() {
                    f.not_hashed = Some(if phase2_done {
                        "unreadable in the container".into()
                    } else {
                        "collection ended before hashing".into()
                    });
                }
            }
        }
    }
}
