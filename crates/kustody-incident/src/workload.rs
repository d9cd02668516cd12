//! Which workload a pod belongs to, from its name alone.
//!
//! An audit event names a pod, not its owner. Controllers name their pods in a fixed way, with
//! random parts drawn from the apiserver's "safe" alphabet (no vowels, no `0 1 3`, so a random
//! suffix never spells a word): a Deployment's pod is `NAME-<template hash>-<5>`, a ReplicaSet's,
//! DaemonSet's or Job's `NAME-<5>`, a StatefulSet's `NAME-<ordinal>`. The owner found this way is
//! marked as inferred; the live pod watch (IP history) replaces it with the real owner reference.

use serde::{Deserialize, Serialize};

/// The characters of the apiserver's random name suffixes and pod-template hashes.
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A pod's owning workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub namespace: String,
    /// `deployment`, `statefulset`, `controller` (a ReplicaSet, DaemonSet or Job: the name
    /// alone cannot tell which) or `pod` (a bare pod).
    pub kind: String,
    pub name: String,
    /// Derived from the pod's name rather than read from its owner references.
    pub inferred: bool,
}

impl Workload {
    /// `kind/name` in `namespace`, e.g. `deployment/web in default`.
    pub fn display(&self) -> String {
        format!("{}/{} in {}", self.kind, self.name, self.namespace)
    }
}

fn safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| SAFE.contains(&b))
}

/// The workload of pod `namespace/name`, guessed from the name.
pub fn of_pod(namespace: &str, pod: &str) -> Workload {
    let mk = |kind: &str, name: &str| Workload {
        namespace: namespace.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        inferred: true,
    };
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [suffix, hash, base] if suffix.len() == 5 && safe(suffix) && (6..=10).contains(&hash.len()) && safe(hash) => {
            mk("deployment", base)
        }
        [suffix, rest @ ..] if suffix.len() == 5 && safe(suffix) && !rest.is_empty() => {
            let base = pod.get(..pod.len() - 6).unwrap_or(pod);
            mk("controller", base)
        }
        [ordinal, rest @ ..]
            if !rest.is_empty()
                && !ordinal.is_empty()
                && ordinal.len() <= 5
                && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let base = pod.get(..pod.len() - ordinal.len() - 1).unwrap_or(pod);
            mk("statefulset", base)
        }
        _ => mk("pod", pod),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_are_recognised_by_their_naming() {
        let w = of_pod("default", "web-7d9f8b6c5d-x2k4p");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("deployment", "web"));
        let w = of_pod("prod", "api-server-5b8c9d7f4-qwz9t");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("deployment", "api-server"));
        let w = of_pod("kube-system", "kube-proxy-x7wz2");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("controller", "kube-proxy"));
        let w = of_pod("db", "postgres-0");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("statefulset", "postgres"));
        // vowels never appear in a random suffix: a bare pod named like a word stays a pod
        let w = of_pod("default", "attacker");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("pod", "attacker"));
        let w = of_pod("default", "my-house");
        assert_eq!(w.kind, "pod");
        let w = of_pod("default", "-");
        assert_eq!(w.kind, "pod");
        assert!(w.inferred);
    }
}
