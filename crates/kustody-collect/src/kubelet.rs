//! Files the kubelet writes into containers itself: `/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf` (bind-mounted from the pod's directory on the node) and the container's
//! termination-message file (`/dev/termination-log` unless `terminationMessagePath` says
//! otherwise). They are labelled in the listing so that what the kubelet did is not read as an
//! intruder's change.
//!
//! The kubelet rewrites `/etc/hosts` — one file shared by every container of the pod — each time
//! a container of the pod starts, ephemeral containers included. When kustody adds its debug
//! container, `/etc/hosts` therefore changes in every container of the pod: that change is
//! kustody's own side effect, recorded as caused by the acquisition and not counted as drift.
//! Pure, no I/O.

use crate::procfs::FileEntry;

/// The file the kubelet rewrites whenever a container of the pod starts.
pub const HOSTS: &str = "/etc/hosts";

/// The termination-message file when the container spec does not name another.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// Who manages the files [`managed_paths`] lists.
pub const MANAGER: &str = "kubelet";

/// The paths the kubelet manages in a container whose spec names `termination_message_path`
/// (`None`: the default).
pub fn managed_paths(termination_message_path: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].map(String::from).to_vec();
    v.push(termination_message_path.filter(|p| p.starts_with('/')).unwrap_or(DEFAULT_TERMINATION_LOG).to_owned());
    v.sort();
    v.dedup();
    v
}

/// Mark the entries of `files` that are kubelet-managed.
pub fn label(files: &mut [FileEntry], managed: &[String]) {
    for f in files.iter_mut().filter(|f| managed.contains(&f.path)) {
        f.managed_by = Some(MANAGER);
    }
}

/// `cause` rewrote `/etc/hosts` after the container started: its change since the start is
/// the acquisition's, not drift. Returns the paths so attributed.
pub fn attribute_to_acquisition(files: &mut [FileEntry], cause: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in files.iter_mut().filter(|f| f.path == HOSTS && f.drift) {
        f.drift = false;
        f.changed_by_acquisition = Some(cause.to_owned());
        out.push(f.path.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, drift: bool) -> FileEntry {
        FileEntry { path: path.into(), kind: "file", drift, ..FileEntry::default() }
    }

    #[test]
    fn managed_files_are_labelled_and_the_hosts_rewrite_attributed() {
        assert_eq!(
            managed_paths(Some("/tmp/term")),
            vec!["/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/tmp/term"]
        );
        assert!(managed_paths(None).contains(&DEFAULT_TERMINATION_LOG.to_owned()));
        let mut files = vec![
            entry("/etc/hosts", true),
            entry("/etc/resolv.conf", true),
            entry("/tmp/x", true),
            entry("/etc", true),
        ];
        label(&mut files, &managed_paths(None));
        let managed: Vec<&str> = files.iter().filter(|f| f.managed_by.is_some()).map(|f| f.path.as_str()).collect();
        assert_eq!(managed, vec!["/etc/hosts", "/etc/resolv.conf"]);
        assert_eq!(attribute_to_acquisition(&mut files, "debug container"), vec!["/etc/hosts"]);
        // only /etc/hosts is rewritten when a container starts; resolv.conf drift stays drift
        let drift: Vec<&str> = files.iter().filter(|f| f.drift).map(|f| f.path.as_str()).collect();
        assert_eq!(drift, vec!["/etc/resolv.conf", "/tmp/x", "/etc"]);
        assert_eq!(files[0].changed_by_acquisition.as_deref(), Some("debug container"));
    }
}
