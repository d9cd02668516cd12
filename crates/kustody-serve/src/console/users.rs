//! Local console users: `DATA_DIR/users`, one per line, `NAME ROLE ARGON2-PHC-HASH` (mode 0600).
//! Made by `kustody serve user add`. The file is read at every login, so an added or removed
//! user counts at once, without a restart. Passwords are never stored, logged or echoed.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::auth::Role;

/// File name of the users file in the data directory.
pub const USERS_FILE: &str = "users";
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
const MAX_FILE: u64 = 1 << 20;

/// A console role: what a person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRole {
    /// Read everything; change nothing.
    Viewer,
    /// Also acknowledge, resolve, note, approve and run responses.
    Responder,
    /// Everything.
    Admin,
}

impl ConsoleRole {
    pub fn parse(s: &str) -> Option<ConsoleRole> {
        match s {
            "viewer" => Some(ConsoleRole::Viewer),
            "responder" => Some(ConsoleRole::Responder),
            "admin" => Some(ConsoleRole::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Responder => "responder",
            ConsoleRole::Admin => "admin",
        }
    }

    /// The API roles it grants.
    pub fn roles(self) -> Vec<Role> {
        match self {
            ConsoleRole::Viewer => vec![Role::Read],
            ConsoleRole::Responder => vec![Role::Read, Role::Respond],
            ConsoleRole::Admin => vec![Role::Admin],
        }
    }
}

/// Why the users file or a change to it is refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}:{line}: {reason}")]
    File { path: String, line: usize, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write `{path}`: {reason}")]
    Write { path: String, reason: String },
}

struct User {
    name: String,
    role: ConsoleRole,
    hash: String,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(USERS_FILE)
}

fn read(path: &Path) -> Result<Vec<User>, UsersError> {
    let err = |line, reason: String| UsersError::File { path: path.display().to_string(), line, reason };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(0, format!("cannot read: {e}"))),
    };
    if meta.len() > MAX_FILE {
        return Err(err(0, "over the 1 MiB limit".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(0, "readable by group or others: chmod 600 it".into()));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = f.as_slice() else {
            return Err(err(i + 1, format!("expected `NAME ROLE HASH`, found {} fields", f.len())));
        };
        let role = ConsoleRole::parse(role)
            .ok_or_else(|| err(i + 1, format!("unknown role `{role}` (viewer, responder, admin)")))?;
        PasswordHash::new(hash).map_err(|_| err(i + 1, "the password hash is not an argon2 PHC string".into()))?;
        users.push(User { name: (*name).to_owned(), role, hash: (*hash).to_owned() });
    }
    Ok(users)
}

/// A user name: 1–64 of `[A-Za-z0-9._@-]` (it appears in logs, notes and the action log).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// Adds a user, or replaces its role and password; the file is rewritten atomically, 0600.
pub fn add(data_dir: &Path, name: &str, role: ConsoleRole, password: &str) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::Invalid(format!("`{name}` is not a valid user name (1–64 of A-Z a-z 0-9 . _ @ -)")));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(UsersError::Invalid(format!("the password is shorter than {MIN_PASSWORD} characters")));
    }
    let p = path(data_dir);
    let mut users = read(&p)?;
    let hash = hash(password)?;
    users.retain(|u| u.name != name);
    users.push(User { name: name.to_owned(), role, hash });
    save(data_dir, &users)
}

/// Writes the users file atomically (a temporary file created 0600, synced, renamed).
fn save(data_dir: &Path, users: &[User]) -> Result<(), UsersError> {
    let p = path(data_dir);
    let mut text = String::from("# kustody console users: NAME ROLE ARGON2-HASH (kustody serve user add)\n");
    for u in users {
        text.push_str(&format!("{} {} {}\n", u.name, u.role.name(), u.hash));
    }
    let wr = |e: std::io::Error| UsersError::Write { path: p.display().to_string(), reason: e.to_string() };
    std::fs::create_dir_all(data_dir).map_err(wr)?;
    let tmp = p.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&tmp).map_err(wr)?;
        f.write_all(text.as_bytes()).map_err(wr)?;
        f.sync_all().map_err(wr)?;
    }
    std::fs::rename(&tmp, &p).map_err(wr)?;
    Ok(())
}

/// Removes a user; returns whether it existed.
pub fn remove(data_dir: &Path, name: &str) -> Result<bool, UsersError> {
    let mut users = read(&path(data_dir))?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Ok(false);
    }
    save(data_dir, &users)?;
    Ok(true)
}

/// (name, role) of every user.
pub fn list(data_dir: &Path) -> Result<Vec<(String, ConsoleRole)>, UsersError> {
    Ok(read(&path(data_dir))?.into_iter().map(|u| (u.name, u.role)).collect())
}

fn hash(password: &str) -> Result<String, UsersError> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| UsersError::Invalid("no system randomness for the salt".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Invalid(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Invalid(format!("hashing: {e}")))
}

/// The user's role when the password is right. Slow on purpose (argon2): call it off the async
/// runtime. A missing user costs a hash too, so timing does not tell which names exist.
pub fn verify(data_dir: &Path, name: &str, password: &str) -> Result<Option<ConsoleRole>, UsersError> {
    let users = read(&path(data_dir))?;
    let user = users.iter().find(|u| u.name == name);
    // a hash made once, of the same cost, verified against for unknown users
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("an unguessable dummy password").unwrap_or_default());
    let hash = user.map_or(dummy.as_str(), |u| u.hash.as_str());
    let ok = PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
    Ok(user.filter(|_| ok).map(|u| u.role))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn users_are_added_verified_replaced_and_removed_and_passwords_never_stored() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "alice", ConsoleRole::Responder, "correct horse battery").unwrap();
        add(d.path(), "bob", ConsoleRole::Viewer, "another long password").unwrap();
        let text = std::fs::read_to_string(path(d.path())).unwrap();
        assert!(!text.contains("correct horse") && text.contains("$argon2id$"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(path(d.path())).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(verify(d.path(), "alice", "correct horse battery").unwrap(), Some(ConsoleRole::Responder));
        assert_eq!(verify(d.path(), "alice", "wrong password!!").unwrap(), None);
        assert_eq!(verify(d.path(), "nobody", "correct horse battery").unwrap(), None);
        add(d.path(), "alice", ConsoleRole::Admin, "a new long password").unwrap();
        assert_eq!(verify(d.path(), "alice", "correct horse battery").unwrap(), None);
        assert_eq!(verify(d.path(), "alice", "a new long password").unwrap(), Some(ConsoleRole::Admin));
        assert_eq!(list(d.path()).unwrap().len(), 2);
        assert!(remove(d.path(), "bob").unwrap());
        assert!(!remove(d.path(), "bob").unwrap());
        assert!(matches!(add(d.path(), "carol", ConsoleRole::Viewer, "short"), Err(UsersError::Invalid(_))));
        assert!(matches!(
            add(d.path(), "bad name", ConsoleRole::Viewer, "long enough password"),
            Err(UsersError::Invalid(_))
        ));
        std::fs::write(path(d.path()), "x admin not-a-hash\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path(d.path()), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = verify(d.path(), "x", "whatever at all").unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("argon2"), "{e}");
    }
}
