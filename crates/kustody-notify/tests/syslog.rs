//! The syslog sink against a real rsyslogd (UDP, TCP with octet counting, TLS with a test CA),
//! started by the test with its own configuration in a temporary directory; and the
//! reconnection of a stream whose receiver closed it, against a plain listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sample;
use kustody_notify::{parse_sinks, Action, Sink};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

struct Rsyslog {
    child: Child,
    dir: PathBuf,
    udp: u16,
    tcp: u16,
    tls: u16,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole message as received, and the fields rsyslog parsed from it, one line per message.
const TEMPLATE: &str = r#"%pri%\t%app-name%\t%msgid%\t%structured-data%\t%msg%\t%rawmsg%\n"#;

fn start_rsyslog(dir: &Path) -> Option<Rsyslog> {
    if !Path::new(RSYSLOGD).exists() {
        common::skip(&format!("{RSYSLOGD} is not installed (Debian: rsyslog, rsyslog-gnutls)"));
        return None;
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists()
        && !Path::new("/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so").exists()
    {
        common::skip("rsyslog's TLS driver lmnsd_gtls is not installed (Debian: rsyslog-gnutls)");
        return None;
    }
    let tls = common::tls_files(dir);
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let (udp, tcp, tlsp) = (common::free_port(), common::free_port(), common::free_port());
    let d = dir.display();
    let conf = format!(
        r#"global(workDirectory="{d}/work"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp")
template(name="fields" type="string" string="{TEMPLATE}")
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="fields") }}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="fields") }}
ruleset(name="tls") {{ action(type="omfile" file="{d}/tls.log" template="fields") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{tlsp}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
"#,
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Command::new(RSYSLOGD).arg("-N1").arg("-f").arg(&conf_path).output().unwrap();
    assert!(check.status.success(), "rsyslogd -N1: {}", String::from_utf8_lossy(&check.stderr));
    let child = Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Rsyslog { child, dir: dir.to_owned(), udp, tcp, tls: tlsp };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", tcp)).is_err() {
        assert!(Instant::now() < deadline, "rsyslogd did not listen on {tcp}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    Some(r)
}

/// The lines of `file` once it has `n` of them (waits up to 10 s, then a little more for extras).
fn lines(file: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().count() >= n {
            std::thread::sleep(Duration::from_millis(300));
            return std::fs::read_to_string(file).unwrap().lines().map(str::to_owned).collect();
        }
        assert!(Instant::now() < deadline, "{} has {} of {n} lines:\n{text}", file.display(), text.lines().count());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn syslog_sink(name: &str, port: u16, transport: &str, extra: &str) -> Sink {
    let yaml = format!(
        "sinks:\n  - name: {name}\n    type: syslog\n    address: 127.0.0.1:{port}\n    transport: {transport}\n    app_name: kustody\n    facility: local4\n    hostname: testhost\n{extra}"
    );
    Sink::new(&parse_sinks(&yaml, "t.yaml").unwrap()[0]).unwrap()
}

/// Each incident id arrives exactly once, with PRI 162 (local4, critical), the structured data
/// and the title; the raw message is the RFC 5424 line kustody sent.
fn assert_received(lines: &[String], ids: &[i64]) {
    assert_eq!(lines.len(), ids.len(), "{lines:#?}");
    for id in ids {
        let matching: Vec<_> = lines.iter().filter(|l| l.contains(&format!("incident=\"{id}\""))).collect();
        assert_eq!(matching.len(), 1, "incident {id}: {lines:#?}");
        let f: Vec<&str> = matching[0].split('\t').collect();
        assert_eq!(f[0], "162", "{f:?}");
        assert_eq!(f[1], "kustody");
        assert!(["trigger", "update", "resolve"].contains(&f[2]), "{f:?}");
        assert!(
            f[3].starts_with(&format!(
                "[kustody@53595 incident=\"{id}\" severity=\"Critical\" rule=\"Terminal shell in container\" status="
            )),
            "{f:?}"
        );
        assert!(f[3].contains("dedup_key=\"kustody/prod-eu/incident/"), "{f:?}");
        let title = sample(*id, Action::Trigger).title;
        assert_eq!(f[4].trim_start(), title, "{f:?}");
        assert!(f[5].starts_with("<162>1 2023-11-14T22:13:20.") && f[5].contains(" testhost kustody "), "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_udp_tcp_and_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(rs) = start_rsyslog(tmp.path()) else { return };

    let udp = syslog_sink("udp", rs.udp, "udp", "");
    assert_eq!(udp.config().max_batch, 50);
    udp.send(&[sample(1, Action::Trigger), sample(2, Action::Update)]).await.unwrap();
    assert_received(&lines(&rs.dir.join("udp.log"), 2), &[1, 2]);

    let tcp = syslog_sink("tcp", rs.tcp, "tcp", "");
    tcp.send(&[sample(3, Action::Trigger), sample(4, Action::Trigger), sample(5, Action::Resolve)]).await.unwrap();
    tcp.send(&[sample(6, Action::Update)]).await.unwrap();
    assert_received(&lines(&rs.dir.join("tcp.log"), 4), &[3, 4, 5, 6]);

    let ca = rs.dir.join("ca.pem");
    let tls = syslog_sink("tls", rs.tls, "tls", &format!("    ca_file: {}\n", ca.display()));
    tls.send(&[sample(7, Action::Trigger), sample(8, Action::Trigger)]).await.unwrap();
    tls.send(&[sample(9, Action::Trigger)]).await.unwrap();
    assert_received(&lines(&rs.dir.join("tls.log"), 3), &[7, 8, 9]);

    // without the CA, the TLS handshake fails: retryable, and nothing arrives
    let untrusted = syslog_sink("tls2", rs.tls, "tls", "");
    let e = untrusted.send(&[sample(10, Action::Trigger)]).await.unwrap_err();
    assert!(e.retryable && e.message.contains("TLS"), "{e}");
}

#[tokio::test]
async fn udp_datagrams_are_cut_at_max_message() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let s = syslog_sink("udp", port, "udp", "    include_json: true\n    max_message: 600\n");
    let mut n = sample(1, Action::Trigger);
    n.summary = "é".repeat(2000);
    s.send(&[n]).await.unwrap();
    let mut buf = [0u8; 65536];
    let len = sock.recv(&mut buf).await.unwrap();
    assert!(len <= 600 && len > 500, "{len}");
    let text = std::str::from_utf8(&buf[..len]).unwrap();
    assert!(text.starts_with("<162>1 "));
}

#[tokio::test]
async fn a_stream_closed_by_the_receiver_is_replaced() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = syslog_sink("tcp", port, "tcp", "");
    let (one, two) = ([sample(1, Action::Trigger)], [sample(2, Action::Trigger)]);
    let (first, _) = tokio::join!(s.send(&one), async {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().contains("incident=\"1\""));
        drop(c); // the receiver closes the connection
    });
    first.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (second, got) = tokio::join!(s.send(&two), async {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    second.unwrap();
    let (len, msg) = got.split_once(' ').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "octet counting: {got}");
    assert!(msg.contains("incident=\"2\""));
}
