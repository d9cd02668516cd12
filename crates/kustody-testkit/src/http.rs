//! A plain-HTTP endpoint on 127.0.0.1 for tests of token protocols (OAuth token endpoints,
//! metadata servers): every request is logged, the handler answers with a status and JSON, or
//! with `{"$raw": {"body": TEXT, "headers": {NAME: VALUE}}}` for a text body and headers.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test support: a broken test endpoint should fail loudly"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One request the endpoint saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Seen {
    pub fn form(&self) -> BTreeMap<String, String> {
        self.body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    }
}

/// `%XX` and `+` decoded (form values, and percent-encoded text inside them).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

pub type Handler = Box<dyn Fn(&Seen) -> (u16, Value) + Send + Sync>;

/// A plain-HTTP endpoint on 127.0.0.1 answering with `handler`; returns its base URL and log.
pub fn endpoint(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let n: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; n];
            r.read_exact(&mut body).unwrap();
            let seen = Seen { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() };
            let (status, v) = handler(&seen);
            log2.lock().unwrap().push(seen);
            // `{"$raw": {"body": "...", "headers": {..}}}` answers with a text body and headers
            let (text, ctype, extra) = match v.get("$raw") {
                Some(raw) => (
                    raw.get("body").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    "text/plain",
                    raw.get("headers")
                        .and_then(Value::as_object)
                        .map(|h| {
                            h.iter().map(|(k, v)| format!("{k}: {}\r\n", v.as_str().unwrap_or_default())).collect()
                        })
                        .unwrap_or_default(),
                ),
                None => (v.to_string(), "application/json", String::new()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (base, log)
}
