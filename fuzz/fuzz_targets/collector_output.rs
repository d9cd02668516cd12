//! The collector's output comes from a container an attacker may control: the deframer and
//! every /proc and listing parser must take any bytes, in any chunking, without panicking.
#![no_main]

use kustody_collect::frame::Sections;
use kustody_collect::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let chunk = usize::from(split).max(1);
    let mut s = Sections::new("00ff", |tag| if tag == "files" { 1 << 16 } else { 4096 });
    let mut sections = Vec::new();
    for c in rest.chunks(chunk) {
        sections.extend(s.push(c).0);
    }
    sections.extend(s.finish());
    let mut procs = Vec::new();
    let mut sockets = Vec::new();
    for sec in &sections {
        let text = String::from_utf8_lossy(&sec.body);
        let _ = procfs::parse_stat(&text);
        let _ = procfs::parse_status_ids(&text);
        let _ = procfs::parse_environ(&sec.body, true);
        let (_, _, fds) = procfs::parse_links(sec.arg.parse().unwrap_or(1), &text);
        let mut p = procfs::Process::default();
        p.fds = procfs::summarize_fds(&fds);
        procs.push(p);
        sockets.extend(procfs::parse_net_inet("tcp6", &text).0);
        sockets.extend(procfs::parse_net_unix(&text).0);
        let _ = procfs::parse_listing(&sec.body, Some(1));
        let _ = procfs::parse_sha256sum(&text);
    }
    procfs::map_sockets(&mut sockets, &procs);
});
