//! Console sessions: a random 256-bit id in a `Secure; HttpOnly; SameSite=Strict` cookie, only
//! its SHA-256 kept in memory, with a CSRF token of its own. Sessions end after 30 minutes
//! idle or 12 hours, at logout, and at a restart (they are not stored). At most
//! [`MAX_SESSIONS`]; the oldest goes first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::Identity;

pub const COOKIE: &str = "kustody_session";
pub const MAX_SESSIONS: usize = 10_000;
const IDLE: Duration = Duration::from_secs(30 * 60);
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    /// The console role's name (viewer, responder, admin, or `token`).
    pub role: String,
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session; returns its id (for the cookie) and CSRF token.
    pub fn open(&self, identity: Identity, role: &str) -> Result<(String, String), anyhow::Error> {
        let id = crate::auth::random_token()?;
        let csrf = crate::auth::random_token()?;
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, s| live(s, now));
        while m.len() >= MAX_SESSIONS {
            let Some(oldest) = m.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else { break };
            m.remove(&oldest);
        }
        m.insert(digest(&id), Session { identity, role: role.to_owned(), csrf: csrf.clone(), created: now, seen: now });
        Ok((id, csrf))
    }

    /// The live session of a cookie value (touching it).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = digest(id);
        match m.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.seen = now;
                Some(s.clone())
            }
            Some(_) => {
                m.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&digest(id));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie_named(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|kv| {
            let (k, val) = kv.trim().split_once('=')?;
            (k == name).then(|| val.to_owned())
        })
    })
}

/// Constant-time comparison of a presented CSRF token with the session's.
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    presented.is_some_and(|p| p.len() == session.csrf.len() && bool::from(p.as_bytes().ct_eq(session.csrf.as_bytes())))
}
