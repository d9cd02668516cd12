//! The SMTP sink against aiosmtpd (`python3 -m aiosmtpd`, its Mailbox handler writing a
//! maildir), started by the test; the delivered mail is decoded with Python's `email` package.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sample;
use kustody_notify::{parse_sinks, Action, Sink};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_aiosmtpd() -> bool {
    Command::new("python3").args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success())
}

/// Subject, To and the decoded text body of a mail file, as Python's email parser reads them.
fn decode(file: &Path) -> (String, String, String) {
    let script = "import email,sys,json\nm=email.message_from_binary_file(open(sys.argv[1],'rb'))\nfrom email.header import decode_header,make_header\nprint(json.dumps([str(make_header(decode_header(m['Subject']))),m['To'],m.get_payload(decode=True).decode()]))";
    let out = Command::new("python3").args(["-c", script]).arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    (v[0].clone(), v[1].clone(), v[2].clone())
}

#[tokio::test]
async fn mail_reaches_the_maildir() {
    if !have_aiosmtpd() {
        common::skip("python3 cannot import aiosmtpd (pip install aiosmtpd)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let maildir = tmp.path().join("maildir");
    let port = common::free_port();
    let _server = Server(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let yaml = format!(
        "sinks:\n  - name: mail\n    type: smtp\n    host: 127.0.0.1\n    port: {port}\n    tls: none\n    from: kustody@example.org\n    to: [soc@example.org, oncall@example.org]\n"
    );
    let s = Sink::new(&parse_sinks(&yaml, "t.yaml").unwrap()[0]).unwrap();
    let n = sample(42, Action::Trigger);
    s.send(std::slice::from_ref(&n)).await.unwrap();
    let new = maildir.join("new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (subject, to, body) = decode(&files[0]);
    assert_eq!(subject, n.title);
    assert_eq!(to, "soc@example.org, oncall@example.org");
    assert!(body.starts_with(&n.summary), "{body}");
    assert!(body.contains("Console: https://kustody.example/incidents/42"), "{body}");
    assert!(body.contains("\"next\": ["), "{body}");
}

#[tokio::test]
async fn an_unreachable_server_is_retryable() {
    let port = common::free_port();
    let yaml = format!(
        "sinks:\n  - name: mail\n    type: smtp\n    host: 127.0.0.1\n    port: {port}\n    tls: none\n    from: kustody@example.org\n    to: [soc@example.org]\n    timeout: 2s\n"
    );
    let s = Sink::new(&parse_sinks(&yaml, "t.yaml").unwrap()[0]).unwrap();
    let e = s.send(&[sample(1, Action::Trigger)]).await.unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(e.message.starts_with("sink `mail`: smtp 127.0.0.1:"), "{e}");
}
