//! Shared by the integration tests: a sample notification, test TLS material, SKIP handling.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use kustody_notify::{Action, Notification, Priority};

pub fn sample(id: i64, action: Action) -> Notification {
    Notification {
        action,
        incident_id: id,
        dedup_key: format!("kustody/prod-eu/incident/{id}"),
        cluster: Some("prod-eu".into()),
        severity: Priority::Critical,
        status: if action == Action::Resolve { "resolved".into() } else { "new".into() },
        title: format!("CRITICAL incident #{id}: Terminal shell in container — system:serviceaccount:default:web in default/web"),
        summary: "What: a terminal shell was opened in default/web-1\nWho: system:serviceaccount:default:web\nNext: kubectl -n default logs web-1".into(),
        time_ns: 1_700_000_000_123_456_789 + id,
        first_ns: Some(1_700_000_000_000_000_000),
        last_ns: Some(1_700_000_000_123_456_789),
        rule: "Terminal shell in container".into(),
        output: "Shell spawned in default/web-1 (user=system:serviceaccount:default:web)".into(),
        tags: vec!["T1059".into(), "k8s".into()],
        fields: [("ka.target.namespace".to_owned(), "default".to_owned()), ("ka.user.name".to_owned(), "web".to_owned())]
            .into_iter()
            .collect(),
        incident: serde_json::json!({"id": id, "steps": [{"rule": "Terminal shell in container"}], "next": ["kubectl -n default logs web-1"]}),
        url: Some(format!("https://kustody.example/incidents/{id}")),
    }
}

/// A program a test needs is missing: SKIP, unless CI=true.
pub fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIP: {why}");
}

/// A CA and a server certificate for localhost / 127.0.0.1, written as PEM files in `dir`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_files(dir: &Path) -> TlsFiles {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "kustody-notify test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    p.subject_alt_names.push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    let files = TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// A free TCP port on 127.0.0.1 (and, most likely, the same UDP port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
