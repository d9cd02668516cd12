//! The collector: a POSIX shell script streamed on stdin to `sh -s` in one exec (or in the
//! debug container), in two phases over the same stream:
//!
//! 1. volatile state first — processes, sockets, mounts, name resolution — then the file
//!    listing (`find` + `stat`);
//! 2. the hashes kustody chooses from the listing (executables, once per inode; files changed
//!    since the container started), sent only after phase 1 has been read.
//!
//! Every command runs with stdin from `/dev/null` (the script itself arrives on stdin) and
//! writes nothing: output goes to the exec stream only. Only busybox/coreutils tools are used
//! (`cat`, `ls`, `find`, `stat`, `sha256sum`, `readlink`, `date`).

/// Where the collector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the target container itself.
    InContainer,
    /// In an ephemeral debug container sharing the target's PID namespace: the target's files
    /// are read through `/proc/PID/root`, and our own processes (same mount namespace as the
    /// collector) are left out of the process list.
    Debug,
}

use crate::error::CollectError;

/// The command that reads the script.
pub fn command() -> Vec<String> {
    vec!["sh".into(), "-s".into()]
}

/// Phase 1. `nonce`: hex, fresh per run.
pub fn phase1(nonce: &str, mode: Mode) -> String {
    let debug = matches!(mode, Mode::Debug);
    let mut s = String::with_capacity(4096);
    s.push_str("{\n");
    s.push_str(&format!("M='@@K{nonce}'\n"));
    s.push_str(
        r#"m() { printf '\n%s %s %s\n' "$M" "$?" "$*"; }
LC_ALL=C; export LC_ALL
m begin 1
m now; date -u +%s
m self; echo $$
m btime; grep '^btime' /proc/stat
"#,
    );
    if debug {
        s.push_str(
            r#"S=$(readlink /proc/self/ns/mnt)
T=''
for d in /proc/[0-9]*; do
  n=$(readlink $d/ns/mnt 2>/dev/null) || continue
  [ "$n" = "$S" ] && continue
  p=${d#/proc/}
  if [ -z "$T" ] || [ "$p" -lt "$T" ]; then T=$p; fi
done
R=/proc/$T/root
"#,
        );
    } else {
        s.push_str("S=''\nT=$$\nR=''\n");
    }
    s.push_str(
        r#"m target; echo "$T"
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = "$$" ] && continue
  if [ -n "$S" ]; then n=$(readlink $d/ns/mnt 2>/dev/null); [ "$n" = "$S" ] && continue; fi
  m stat $p; cat $d/stat
  m status $p; cat $d/status
  m cmdline $p; cat $d/cmdline
  m environ $p; cat $d/environ
  m links $p; ls -l $d/exe $d/cwd $d/fd/
done
m mountinfo; cat /proc/$T/mountinfo
m hosts; cat $R/etc/hosts
m resolv; cat $R/etc/resolv.conf
for n in tcp tcp6 udp udp6 unix; do m net $n; cat /proc/$T/net/$n; done
m files; cd $R/ && find . \( -path ./proc -o -path ./sys -o -path ./dev \) -prune -o -exec stat -c '%i|%h|%s|%f|%u|%g|%Y|%Z|%n' {} +
m end 1
} </dev/null
"#,
    );
    s
}

/// A path is safe to pass in a batch (one name per output line, no escaping by sha256sum).
pub fn batchable(path: &str) -> bool {
    !path.contains(['\n', '\\', '\r'])
}

/// Single-quote for sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Phase 2: hash `paths` (absolute paths in the container) from its root, in batches; then
/// end the script. Unbatchable names each get their own section (`hash1 <index>`), read from
/// stdin so the name never appears in the output.
pub fn phase2(paths: &[String]) -> String {
    let mut s = String::from("{\n");
    type Indexed<'a> = Vec<(usize, &'a String)>;
    let (plain, odd): (Indexed, Indexed) = paths.iter().enumerate().partition(|(_, p)| batchable(p));
    for batch in plain.chunks(256) {
        s.push_str("m hashes; sha256sum --");
        for (_, p) in batch {
            s.push(' ');
            s.push_str(&quote(&format!(".{p}")));
        }
        s.push('\n');
    }
    for (i, p) in odd {
        s.push_str(&format!("m hash1 {i}; sha256sum < {}\n", quote(&format!(".{p}"))));
    }
    s.push_str("m end 2\n} </dev/null\nexit 0\n");
    s
}

/// A `--paths` glob, checked so it can be expanded by the shell unquoted without injecting
/// anything: absolute, and only characters that occur in ordinary paths and globs.
pub fn check_glob(g: &str) -> Result<(), CollectError> {
    let bad = |reason: String| CollectError::InvalidOption { option: "--paths", value: g.to_owned(), reason };
    if !g.starts_with('/') {
        return Err(bad("must be an absolute path or glob (--paths takes every value after it: put the pod first, \
             `kustody collect pod/NAME --paths /GLOB...`)"
            .into()));
    }
    if g.split('/').any(|c| c == "..") {
        return Err(bad("`..` is not allowed".into()));
    }
    if let Some(c) = g.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._-+@,:=~*?[]!".contains(*c))) {
        return Err(bad(format!("character {c:?} is not allowed (use a glob `?` for it)")));
    }
    Ok(())
}

/// Every spelling under which `exclude` may be reached (`/var/run` is often a link to `/run`).
fn exclusions(exclude: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for e in exclude {
        let e = e.trim_end_matches('/');
        v.push(format!(".{e}"));
        if let Some(rest) = e.strip_prefix("/var/run/") {
            v.push(format!("./run/{rest}"));
        }
    }
    v
}

/// The find expression that skips `exclude`, then prints.
fn prune(exclude: &[String]) -> String {
    let ex = exclusions(exclude);
    if ex.is_empty() {
        return "-print".into();
    }
    let alts: Vec<String> = ex.iter().map(|e| format!("-path {}", quote(e))).collect();
    format!("\\( {} \\) -prune -o -print", alts.join(" -o "))
}

/// The command that streams a tar of `globs` (checked with [`check_glob`]) relative to the
/// container's root `root` (`/` or `/proc/PID/root/`), leaving out `exclude` (credential
/// volumes). Paths are expanded by `find` (tar's own `--exclude` is missing from many busybox
/// builds) and archived with `--no-recursion`. Nothing is written in the container.
pub fn tar_command(root: &str, globs: &[String], exclude: &[String]) -> Vec<String> {
    let mut script = format!("cd {} || exit 1; set --", quote(root));
    for g in globs {
        script.push_str(" .");
        script.push_str(g);
    }
    script.push_str(&format!(
        "; set -f; IFS='
'; set -- $(find \"$@\" {}); [ $# -gt 0 ] || {{ echo 'nothing matched' >&2; exit 1; }}; exec tar c --no-recursion -f - -- \"$@\"",
        prune(exclude)
    ));
    vec!["sh".into(), "-c".into(), script]
}

/// The command that streams a tar of the files named on stdin (one per line, relative to
/// `root`).
pub fn tar_list_command(root: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "cd {} || exit 1; set --; while IFS= read -r f; do set -- \"$@\" \"$f\"; done; exec tar c --no-recursion -f - -- \"$@\"",
            quote(root)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_checked() {
        assert!(check_glob("/etc/*.conf").is_ok());
        assert!(check_glob("/tmp/[a-z]?").is_ok());
        assert!(check_glob("etc").is_err());
        assert!(check_glob("/tmp/$(reboot)").is_err());
        assert!(check_glob("/a b").is_err());
        assert!(check_glob("/../x").is_err());
    }

    #[test]
    fn phase2_quotes_and_splits() {
        let s = phase2(&["/bin/it's".into(), "/odd\nname".into()]);
        assert!(s.contains(r#"sha256sum -- './bin/it'\''s'"#), "{s}");
        assert!(s.contains("m hash1 1; sha256sum < './odd\nname'"), "{s}");
        assert!(s.ends_with("exit 0\n"));
    }

    #[test]
    fn tar_command_shape() {
        let c = tar_command("/", &["/etc/*.conf".into()], &["/var/run/secrets/kubernetes.io/serviceaccount".into()]);
        assert!(c[2].starts_with("cd '/' || exit 1; set -- ./etc/*.conf; set -f;"), "{}", c[2]);
        assert!(c[2].contains("-path './var/run/secrets/kubernetes.io/serviceaccount' -o -path './run/secrets/kubernetes.io/serviceaccount'"), "{}", c[2]);
        assert!(c[2].ends_with("exec tar c --no-recursion -f - -- \"$@\""), "{}", c[2]);
    }
}
