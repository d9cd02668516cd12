//! Who may call what: bearer tokens with roles, and client certificates (mTLS).
//!
//! Tokens live in a file, one per line: `TOKEN NAME ROLE[,ROLE…]` (`#` starts a comment). Only
//! their SHA-256 digests are kept in memory and compared in constant time; a token is never
//! logged. A client certificate signed by `--client-ca` authenticates as `cert:<CN>` with the
//! `ingest` role: what the apiserver's webhook kubeconfig presents.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// POST audit events and runtime alerts.
    Ingest,
    /// Search events, findings and alerts; subscribe to findings; read metrics.
    Read,
    /// Act on incidents: acknowledge, resolve, assign, add notes.
    Respond,
    /// Everything, including rule reloads and outbox retries.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ingest" => Some(Role::Ingest),
            "read" => Some(Role::Read),
            "respond" => Some(Role::Respond),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<Role>,
}

impl Identity {
    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

struct Entry {
    digest: [u8; 32],
    identity: Identity,
}

/// The bearer tokens the server accepts.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// Why a token file's owner and mode are unsafe, if they are. PostgreSQL's rule for its
/// `ssl_key_file`: owned by the user running kustody, at most 0600; owned by root, at most
/// 0640 (so a Kubernetes Secret volume, root-owned with the pod's `fsGroup` and mode 0440,
/// works for a non-root kustody). Never writable by the group, never any access for others.
#[cfg(unix)]
fn unsafe_mode(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o777;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let by_root = meta.uid() == 0 && me != Some(0);
    if mode & 0o007 != 0 || (by_root && mode & 0o020 != 0) || (!by_root && mode & 0o070 != 0) {
        return Some(format!(
            "mode {mode:04o} lets {} read or change it: chmod 600 it (0640 is accepted when root owns it)",
            if mode & 0o007 != 0 { "others" } else { "the group" }
        ));
    }
    None
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct TokenFileError {
    pub path: String,
    pub line: usize,
    pub reason: String,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let err = |line, reason: String| TokenFileError { path: path.display().to_string(), line, reason };
        let meta = std::fs::metadata(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
        if meta.len() > 1 << 20 {
            return Err(err(0, "over the 1 MiB limit".into()));
        }
        #[cfg(unix)]
        if let Some(reason) = unsafe_mode(&meta) {
            return Err(err(0, reason));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(|(line, reason)| err(line, reason))
    }

    /// Parses the file format; errors name the 1-based line (never the token).
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let [token, name, roles] = f.as_slice() else {
                return Err((i + 1, format!("expected `TOKEN NAME ROLES`, found {} fields", f.len())));
            };
            if token.len() < 16 {
                return Err((i + 1, "the token is shorter than 16 characters".into()));
            }
            let mut rs = Vec::new();
            for r in roles.split(',') {
                rs.push(
                    Role::parse(r)
                        .ok_or_else(|| (i + 1, format!("unknown role `{r}` (ingest, read, respond, admin)")))?,
                );
            }
            entries.push(Entry { digest: digest(token), identity: Identity { name: (*name).to_owned(), roles: rs } });
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of a presented token, comparing against every entry in constant time.
    pub fn check(&self, token: &str) -> Option<&Identity> {
        let d = digest(token);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) && found.is_none() {
                found = Some(&e.identity);
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token (32 bytes, base64url).
pub fn random_token() -> Result<String, anyhow::Error> {
    use base64::Engine as _;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail by panicking")]
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_or_the_group_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kustody-tokmode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "abcdefghijklmnopqrstuvwx alice read\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o604, false), (0o660, false), (0o640, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            // the file is ours (whoever runs the test): group read is refused too; root-owned 0640
            // for a non-root process is checked by the in-cluster deployment test
            assert_eq!(Tokens::load(&f).is_ok(), ok, "mode {mode:o}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_have_roles_and_errors_name_the_line_not_the_token() {
        let t =
            Tokens::parse("# comment\nabcdefghijklmnop0 apiserver ingest\nqrstuvwxyz0123456 soc read,admin\n").unwrap();
        assert_eq!(t.check("abcdefghijklmnop0").unwrap().name, "apiserver");
        assert!(t.check("qrstuvwxyz0123456").unwrap().may(Role::Ingest));
        assert!(!t.check("abcdefghijklmnop0").unwrap().may(Role::Read));
        assert!(t.check("nope").is_none());
        let (line, reason) = Tokens::parse("\nsecret-token-value-1 x writer\n").err().unwrap();
        assert_eq!(line, 2);
        assert!(reason.contains("writer") && !reason.contains("secret-token"), "{reason}");
        assert!(Tokens::parse("short x read").is_err());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
