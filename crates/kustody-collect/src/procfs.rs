//! Parsers for what the collector reads in the container: `/proc/PID/{stat,status,cmdline,
//! environ}`, `ls -l` of a process's links and fds, `/proc/net/*`, the file listing and
//! `sha256sum` output. Pure and total: malformed input gives `None`s and counts, never a panic.

use std::collections::BTreeMap;

use serde::Serialize;

/// USER_HZ: the unit of `/proc/PID/stat` start times, fixed at 100 for user space on every
/// architecture Kubernetes runs on.
pub const USER_HZ: u64 = 100;

/// One process as the collector saw it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: Option<u32>,
    /// `comm` (the kernel's 15-byte name).
    pub name: String,
    pub state: String,
    /// Real, effective, saved, filesystem.
    pub uid: Vec<u32>,
    pub gid: Vec<u32>,
    pub cmdline: Vec<String>,
    /// `/proc/PID/exe` target, without a ` (deleted)` suffix.
    pub exe: Option<String>,
    /// The executable was deleted after the process started: a classic sign of a dropper.
    pub exe_deleted: bool,
    pub cwd: Option<String>,
    /// Start time, UTC (boot time + start ticks); `None` without the boot time.
    pub started: Option<String>,
    pub start_ticks: Option<u64>,
    pub threads: Option<u32>,
    pub fds: FdSummary,
    /// Environment variable names (values are not kept unless asked for).
    pub env_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// What could not be read about this process (it exited, permission).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Open file descriptors, summarised.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FdSummary {
    pub total: u32,
    pub files: u32,
    pub sockets: u32,
    pub pipes: u32,
    pub anon: u32,
    pub other: u32,
    /// Files open but deleted (`... (deleted)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// Up to 64 open regular-file paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip)]
    pub socket_inodes: Vec<u64>,
}

/// `/proc/PID/stat`: (ppid, state, comm, start ticks, threads). `comm` may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(s: &str) -> Option<(u32, String, String, u64, u32)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), rest[17] = num_threads (20), rest[19] = starttime (22)
    let state = rest.first()?.to_string();
    let ppid = rest.get(1)?.parse().ok()?;
    let threads = rest.get(17)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((ppid, state, comm, start, threads))
}

/// `/proc/PID/status`: `Uid:`/`Gid:` lines.
pub fn parse_status_ids(s: &str) -> (Vec<u32>, Vec<u32>) {
    let ids = |key: &str| -> Vec<u32> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// NUL-separated strings (cmdline, environ), lossily decoded.
pub fn split_nul(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0).filter(|x| !x.is_empty()).map(|x| String::from_utf8_lossy(x).into_owned()).collect()
}

/// Names (and values) from `/proc/PID/environ`.
pub fn parse_environ(b: &[u8], keep_values: bool) -> (Vec<String>, Option<BTreeMap<String, String>>) {
    let mut names = Vec::new();
    let mut values = BTreeMap::new();
    for kv in split_nul(b) {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        names.push(k.to_owned());
        if keep_values {
            values.insert(k.to_owned(), v.to_owned());
        }
    }
    names.sort();
    names.dedup();
    (names, keep_values.then_some(values))
}

/// `ls -l /proc/P/exe /proc/P/cwd /proc/P/root /proc/P/fd/`: symlink targets by name.
/// Returns (exe, cwd, fd targets).
pub fn parse_links(pid: u32, ls: &str) -> (Option<String>, Option<String>, Vec<String>) {
    let prefix = format!("/proc/{pid}/");
    let mut exe = None;
    let mut cwd = None;
    let mut fds = Vec::new();
    let mut in_fd = false;
    for line in ls.lines() {
        if line.ends_with(':') && line.contains("/fd") {
            in_fd = true;
            continue;
        }
        let Some((left, target)) = line.split_once(" -> ") else { continue };
        if in_fd {
            fds.push(target.to_owned());
        } else if left.ends_with(&format!("{prefix}exe")) {
            exe = Some(target.to_owned());
        } else if left.ends_with(&format!("{prefix}cwd")) {
            cwd = Some(target.to_owned());
        }
    }
    (exe, cwd, fds)
}

/// Summarise fd targets.
pub fn summarize_fds(targets: &[String]) -> FdSummary {
    let mut s = FdSummary::default();
    for t in targets {
        s.total += 1;
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
            s.sockets += 1;
            if let Ok(i) = inode.parse() {
                s.socket_inodes.push(i);
            }
        } else if t.starts_with("pipe:[") {
            s.pipes += 1;
        } else if t.starts_with("anon_inode:") {
            s.anon += 1;
        } else if t.starts_with('/') {
            s.files += 1;
            if let Some(p) = t.strip_suffix(" (deleted)") {
                s.deleted.push(p.to_owned());
            } else if s.paths.len() < 64 && !s.paths.contains(t) {
                s.paths.push(t.clone());
            }
        } else {
            s.other += 1;
        }
    }
    s
}

/// A socket from `/proc/net/*`, with the processes holding it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Socket {
    pub proto: String,
    pub local: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote: String,
    pub state: String,
    pub listening: bool,
    pub inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub pids: Vec<u32>,
}

fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        "0C" => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `0100007F:1F90` → `127.0.0.1:8080`; IPv6 as four little-endian 32-bit words.
pub fn parse_addr(s: &str) -> Option<String> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    match ip.len() {
        8 => {
            let v = u32::from_str_radix(ip, 16).ok()?;
            Some(format!("{}:{port}", std::net::Ipv4Addr::from(v.swap_bytes())))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (w, out) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(w * 8..w * 8 + 8)?, 16).ok()?;
                out.copy_from_slice(&word.swap_bytes().to_be_bytes());
            }
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// `/proc/net/{tcp,tcp6,udp,udp6}`; returns sockets and the count of lines that did not parse.
pub fn parse_net_inet(proto: &str, text: &str) -> (Vec<Socket>, u64) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            let local = parse_addr(f.get(1)?)?;
            let remote = parse_addr(f.get(2)?)?;
            let st = *f.get(3)?;
            let uid = f.get(7)?.parse().ok();
            let inode = f.get(9)?.parse().ok()?;
            let udp = proto.starts_with("udp");
            let state = if udp {
                if st == "01" {
                    "ESTABLISHED"
                } else {
                    "UNCONN"
                }
            } else {
                tcp_state(st)
            };
            let listening = if udp { st == "07" } else { st == "0A" };
            Some(Socket {
                proto: proto.to_owned(),
                local,
                remote: if listening { String::new() } else { remote },
                state: state.to_owned(),
                listening,
                inode,
                uid,
                path: String::new(),
                pids: Vec::new(),
            })
        })();
        match parsed {
            Some(s) => out.push(s),
            None if line.trim().is_empty() => {}
            None => bad += 1,
        }
    }
    (out, bad)
}

/// `/proc/net/unix`.
pub fn parse_net_unix(text: &str) -> (Vec<Socket>, u64) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let ty = *f.get(4)?;
            let st = *f.get(5)?;
            let inode = f.get(6)?.parse().ok()?;
            let path = f.get(7..).map(|p| p.join(" ")).unwrap_or_default();
            let listening = flags & 0x10000 != 0;
            Some(Socket {
                proto: match ty {
                    "0001" => "unix-stream",
                    "0002" => "unix-dgram",
                    "0005" => "unix-seqpacket",
                    _ => "unix",
                }
                .to_owned(),
                local: String::new(),
                remote: String::new(),
                state: if listening {
                    "LISTEN"
                } else {
                    match st {
                        "01" => "UNCONNECTED",
                        "03" => "CONNECTED",
                        _ => "OTHER",
                    }
                }
                .to_owned(),
                listening,
                inode,
                uid: None,
                path,
                pids: Vec::new(),
            })
        })();
        match parsed {
            Some(s) => out.push(s),
            None if line.trim().is_empty() => {}
            None => bad += 1,
        }
    }
    (out, bad)
}

/// One entry of the file listing.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits, octal (`0755`), with setuid/setgid/sticky.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
    pub inode: u64,
    pub nlink: u64,
    /// Changed (ctime or mtime) after the container started, and not by this acquisition.
    pub drift: bool,
    /// Written by the kubelet, not by the image or the workload (`kubelet`; see [`crate::kubelet`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<&'static str>,
    /// The change since the start was made by this acquisition (kustody's debug container
    /// made the kubelet rewrite the file), and how; such a change is not counted as `drift`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by_acquisition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why a file that should be hashed was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_hashed: Option<String>,
}

impl FileEntry {
    pub fn executable(&self) -> bool {
        self.kind == "file" && u32::from_str_radix(&self.mode, 8).is_ok_and(|m| m & 0o111 != 0)
    }
}

fn kind_of(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o100000 => "file",
        0o040000 => "dir",
        0o120000 => "symlink",
        0o020000 => "char",
        0o060000 => "block",
        0o010000 => "fifo",
        0o140000 => "socket",
        _ => "unknown",
    }
}

/// The listing: `stat -c '%i|%h|%s|%f|%u|%g|%Y|%Z|%n'` lines from `find .` in the container's
/// root. A name containing a newline continues on the next line; such a continuation is joined
/// back (it cannot start with nine `|`-separated numbers unless crafted to). Paths are made
/// absolute (`./etc/x` → `/etc/x`). Returns the entries and the count of lines that did not parse.
pub fn parse_listing(text: &[u8], started_epoch: Option<i64>) -> (Vec<FileEntry>, u64) {
    let mut out: Vec<FileEntry> = Vec::new();
    let mut bad = 0;
    for raw in text.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(raw);
        let f: Vec<&str> = line.splitn(9, '|').collect();
        let parsed = (|| {
            let inode = f.first()?.parse().ok()?;
            let nlink = f.get(1)?.parse().ok()?;
            let size = f.get(2)?.parse().ok()?;
            let mode = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let uid = f.get(4)?.parse().ok()?;
            let gid = f.get(5)?.parse().ok()?;
            let mtime = f.get(6)?.parse().ok()?;
            let ctime = f.get(7)?.parse().ok()?;
            let name = *f.get(8)?;
            let path = match name.strip_prefix('.') {
                Some("") => "/".to_owned(),
                Some(p) if p.starts_with('/') => p.to_owned(),
                _ => name.to_owned(),
            };
            let drift = started_epoch.is_some_and(|s| mtime > s || ctime > s);
            Some(FileEntry {
                path,
                kind: kind_of(mode),
                mode: format!("{:04o}", mode & 0o7777),
                uid,
                gid,
                size,
                mtime,
                ctime,
                inode,
                nlink,
                drift,
                managed_by: None,
                changed_by_acquisition: None,
                sha256: None,
                not_hashed: None,
            })
        })();
        match parsed {
            Some(e) => out.push(e),
            None if raw.is_empty() => {}
            None => match out.last_mut() {
                Some(prev) => {
                    prev.path.push('\n');
                    prev.path.push_str(&line);
                    bad += 1;
                }
                None => bad += 1,
            },
        }
    }
    (out, bad)
}

/// `sha256sum` output: `HEX  NAME` (GNU escapes unusual names with a leading `\`; those are
/// never requested in batches).
pub fn parse_sha256sum(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((hash, name)) = line.split_once("  ") {
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(name.to_owned(), hash.to_ascii_lowercase());
            }
        }
    }
    out
}

/// Attach owning processes to sockets by inode.
pub fn map_sockets(sockets: &mut [Socket], procs: &[Process]) {
    let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for p in procs {
        for &i in &p.fds.socket_inodes {
            by_inode.entry(i).or_default().push(p.pid);
        }
    }
    for s in sockets {
        if let Some(pids) = by_inode.get(&s.inode) {
            s.pids = pids.clone();
            s.pids.sort_unstable();
            s.pids.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let s =
            "42 (my (evil) proc) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 12345 1000 10 18446744073709551615";
        let (ppid, state, comm, start, threads) = parse_stat(s).unwrap();
        assert_eq!((ppid, state.as_str(), comm.as_str(), start, threads), (7, "S", "my (evil) proc", 12345, 3));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x").is_none());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("0100007F:1F90").unwrap(), "127.0.0.1:8080");
        assert_eq!(parse_addr("00000000000000000000000001000000:0016").unwrap(), "[::1]:22");
        assert_eq!(parse_addr("0000000000000000FFFF00000100007F:0050").unwrap(), "[::ffff:127.0.0.1]:80");
        assert!(parse_addr("zz:1").is_none());
    }

    #[test]
    fn net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n";
        let (s, bad) = parse_net_inet("tcp", tcp);
        assert_eq!(bad, 0);
        assert!(s[0].listening && s[0].local == "0.0.0.0:8080" && s[0].inode == 4242);
        assert_eq!(s[1].state, "ESTABLISHED");
        assert_eq!(s[1].remote, "127.0.0.1:8080");
        assert_eq!(s[1].uid, Some(1000));
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 5555 /run/x.sock\n";
        let (u, bad) = parse_net_unix(unix);
        assert_eq!(bad, 0);
        assert!(u[0].listening && u[0].path == "/run/x.sock" && u[0].proto == "unix-stream");
    }

    #[test]
    fn links_and_fds() {
        let ls = "lrwxrwxrwx 1 root root 0 Nov 23 18:00 /proc/9/cwd -> /tmp\nlrwxrwxrwx 1 root root 0 Nov 23 18:00 /proc/9/exe -> /tmp/evil (deleted)\n\n/proc/9/fd/:\ntotal 0\nlrwx------ 1 root root 64 Nov 23 18:00 0 -> /dev/null\nlrwx------ 1 root root 64 Nov 23 18:00 3 -> socket:[777]\nl-wx------ 1 root root 64 Nov 23 18:00 4 -> pipe:[8]\nlr-x------ 1 root root 64 Nov 23 18:00 5 -> /tmp/gone (deleted)\n";
        let (exe, cwd, fds) = parse_links(9, ls);
        assert_eq!(exe.as_deref(), Some("/tmp/evil (deleted)"));
        assert_eq!(cwd.as_deref(), Some("/tmp"));
        let s = summarize_fds(&fds);
        assert_eq!((s.total, s.files, s.sockets, s.pipes), (4, 2, 1, 1));
        assert_eq!(s.socket_inodes, vec![777]);
        assert_eq!(s.deleted, vec!["/tmp/gone".to_owned()]);
    }

    #[test]
    fn listing_and_drift() {
        let text = b"5|1|10|81ed|0|0|100|100|./bin/sh\n6|1|3|81a4|0|0|100|300|./tmp/new\nname\n7|2|0|41ed|0|0|1|1|.\n";
        let (v, bad) = parse_listing(text, Some(200));
        assert_eq!(bad, 1);
        assert_eq!(v[0].path, "/bin/sh");
        assert!(v[0].executable() && !v[0].drift);
        assert_eq!(v[1].path, "/tmp/new\nname");
        assert!(v[1].drift && !v[1].executable());
        assert_eq!(v[2].path, "/");
        assert_eq!(v[2].kind, "dir");
    }

    #[test]
    fn environ_names_only_by_default() {
        let (n, v) = parse_environ(b"PATH=/bin\0SECRET=hunter2\0EMPTY\0", false);
        assert_eq!(n, vec!["EMPTY", "PATH", "SECRET"]);
        assert!(v.is_none());
        let (_, v) = parse_environ(b"A=1=2\0", true);
        assert_eq!(v.unwrap()["A"], "1=2");
    }
}
