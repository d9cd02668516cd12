//! The syslog transport. UDP sends one datagram per message, cut to `max_message` bytes at a
//! UTF-8 boundary. TCP and TLS send octet-counted frames (RFC 6587 §3.4.1) over one connection
//! kept open between sends: before writing, a connection the receiver closed is noticed and
//! replaced, and a write that fails on a broken connection is tried once more on a new one.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{SyslogConfig, SyslogTransport};
use crate::render::syslog::{message, octet_counted};
use crate::render::truncate_bytes;
use crate::{Notification, SendError};

/// `host:port` or `[v6]:port`.
pub(crate) fn split_address(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// The machine's host name (Linux), or `-`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub(crate) struct SyslogSender {
    cfg: SyslogConfig,
    hostname: String,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Mutex<Option<Conn>>,
}

impl SyslogSender {
    pub fn new(cfg: &SyslogConfig, timeout: Duration, ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let (host, _) = split_address(&cfg.address).ok_or("address: expected HOST:PORT")?;
        let tls = match cfg.transport {
            SyslogTransport::Tls => {
                let config = crate::http::tls_config(ca_file)?;
                let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("address: {e}"))?;
                Some((TlsConnector::from(Arc::clone(&config)), name))
            }
            _ => None,
        };
        Ok(SyslogSender {
            cfg: cfg.clone(),
            hostname: cfg.hostname.clone().unwrap_or_else(system_hostname),
            timeout,
            tls,
            conn: Mutex::new(None),
        })
    }

    pub async fn send(&self, batch: &[Notification]) -> Result<(), SendError> {
        let pid = std::process::id();
        let messages: Vec<String> = batch.iter().map(|n| message(n, &self.cfg, &self.hostname, pid)).collect();
        let mut conn = self.conn.lock().await;
        if self.cfg.transport == SyslogTransport::Udp {
            return self.send_udp(&mut conn, &messages).await;
        }
        let frames: Vec<u8> = messages.iter().flat_map(|m| octet_counted(m)).collect();
        if let Some(c) = conn.as_mut() {
            if !still_open(c).await {
                *conn = None;
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            if conn.is_none() {
                *conn = Some(self.connect().await?);
            }
            let Some(c) = conn.as_mut() else { continue };
            match tokio::time::timeout(self.timeout, write_all(c, &frames)).await {
                Ok(Ok(())) => return Ok(()),
                // a connection broken since the check: replaced once
                Ok(Err(_)) if tries == 1 => *conn = None,
                Ok(Err(e)) => {
                    *conn = None;
                    return Err(SendError::retry(format!("syslog {}: {e}", self.cfg.address)));
                }
                Err(_) => {
                    *conn = None;
                    return Err(SendError::retry(format!("syslog {}: write timed out", self.cfg.address)));
                }
            }
        }
    }

    async fn send_udp(&self, conn: &mut Option<Conn>, messages: &[String]) -> Result<(), SendError> {
        if !matches!(conn, Some(Conn::Udp(_))) {
            *conn = Some(self.connect().await?);
        }
        let Some(Conn::Udp(sock)) = conn.as_ref() else {
            return Err(SendError::retry("syslog: no UDP socket".into()));
        };
        for m in messages {
            let datagram = truncate_bytes(m, self.cfg.max_message);
            if let Err(e) = sock.send(datagram.as_bytes()).await {
                *conn = None;
                return Err(SendError::retry(format!("syslog {}: {e}", self.cfg.address)));
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let addr = self.cfg.address.as_str();
        let fail = |what: &str, e: &dyn std::fmt::Display| SendError::retry(format!("syslog {addr}: {what}: {e}"));
        let target = {
            let (host, port) =
                split_address(addr).ok_or_else(|| SendError::fatal(format!("syslog {addr}: bad address")))?;
            let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| fail("resolve", &e))?;
            addrs.next().ok_or_else(|| SendError::retry(format!("syslog {addr}: no address")))?
        };
        if self.cfg.transport == SyslogTransport::Udp {
            let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let sock = UdpSocket::bind(local).await.map_err(|e| fail("bind", &e))?;
            sock.connect(target).await.map_err(|e| fail("connect", &e))?;
            return Ok(Conn::Udp(sock));
        }
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(target))
            .await
            .map_err(|_| SendError::retry(format!("syslog {addr}: connect timed out")))?
            .map_err(|e| fail("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SendError::retry(format!("syslog {addr}: TLS handshake timed out")))?
                    .map_err(|e| fail("TLS", &e))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }
}

async fn write_all(c: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    match c {
        Conn::Tcp(s) => {
            s.write_all(bytes).await?;
            s.flush().await
        }
        Conn::Tls(s) => {
            s.write_all(bytes).await?;
            s.flush().await
        }
        Conn::Udp(_) => Ok(()),
    }
}

/// False when the receiver has closed (or reset) the connection. Syslog receivers send nothing,
/// so a read that is ready at all means end of stream or an error; TLS reads first let rustls
/// consume protocol messages such as session tickets.
async fn still_open(c: &mut Conn) -> bool {
    let mut buf = [0u8; 64];
    let read = match c {
        Conn::Tcp(s) => tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await,
        Conn::Tls(s) => tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await,
        Conn::Udp(_) => return true,
    };
    read.is_err()
}
