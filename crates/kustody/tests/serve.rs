//! `kustody serve` as a user runs it: the real binary on a free port with TLS, the recorded
//! webhook POSTs of a real v1.36 apiserver, Falco alerts, search, metrics, and crashes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use serde_json::Value;

const INGEST: &str = "ingest-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdefgh";
const RESPOND: &str = "respond-token-0123456789abcd";
const ADMIN: &str = "admin-token-0123456789abcdefg";

struct Server {
    child: Child,
    client: Client,
}

#[derive(Clone)]
struct Client {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_tokens(dir: &Path) -> PathBuf {
    let p = dir.join("tokens.txt");
    std::fs::write(
        &p,
        format!("{INGEST} apiserver ingest\n{READ} soc read\n{RESPOND} alice read,respond\n{ADMIN} root admin\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    start_with_env(dir, extra, &[])
}

/// [`start`], with environment variables for the server.
fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Server {
    let tokens = write_tokens(dir.parent().unwrap());
    let ready = dir.parent().unwrap().join(format!("ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .arg("--tokens")
        .arg(&tokens)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = child;
    let t0 = Instant::now();
    let url = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if s.ends_with('\n') {
                break s.trim().to_owned();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited before it listened: {status}");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = url.trim_start_matches("https://").to_owned();
    Server { child, client: Client { addr, tls: client_tls(dir, None) } }
}

/// A TLS client trusting the server's generated certificate, optionally with a client certificate.
fn client_tls(
    dir: &Path,
    cert: Option<(rustls_pki_types::CertificateDer<'static>, rustls_pki_types::PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
    })
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Client {
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        self.request_declaring(method, path, token, body, body.len())
    }

    /// A request whose Content-Length says `declared` bytes (sending only `body`).
    fn request_declaring(&self, method: &str, path: &str, token: Option<&str>, body: &[u8], declared: usize) -> Reply {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        self.send(method, path, auth.as_slice(), "application/json", body, declared)
    }

    /// A browser's request: a cookie, a form body.
    fn browser(&self, method: &str, path: &str, cookie: Option<&str>, form: &str) -> Reply {
        let mut h: Vec<String> = cookie.map(|c| format!("Cookie: {c}")).into_iter().collect();
        h.push("Sec-Fetch-Site: same-origin".into());
        self.send(method, path, &h, "application/x-www-form-urlencoded", form.as_bytes(), form.len())
    }

    fn send(&self, method: &str, path: &str, extra: &[String], ctype: &str, body: &[u8], declared: usize) -> Reply {
        let tcp = TcpStream::connect(&self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nAccept: application/json, */*\r\nContent-Type: {ctype}\r\nConnection: close\r\n",
            self.addr,
            declared
        );
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // A server refusing the body early (413) may close before it is all sent.
        let _ = s.write_all(body).and_then(|()| s.flush());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = headers.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Reply { status, headers: headers.to_owned(), body }
    }

    fn post_audit(&self, body: &[u8]) -> Reply {
        self.request("POST", "/audit?timeout=30s", Some(INGEST), body)
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, Some(READ), b"")
    }

    /// Waits until a GET answers with at least `n` items.
    fn wait_items(&self, path: &str, n: usize) -> Value {
        let t0 = Instant::now();
        loop {
            let r = self.get(path);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            if v["items"].as_array().unwrap().len() >= n {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{path}: fewer than {n} items: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Server {
    fn stop(mut self) -> std::process::ExitStatus {
        // SIGTERM: graceful shutdown
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or(rest));
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// The recorded webhook POST bodies (compact JSON and a newline, as the apiserver sends).
fn recorded(name: &str) -> Option<(Vec<u8>, usize)> {
    let shared = kustody_testkit::shared("fixtures/kube-apiserver/audit-webhook")?;
    let text = std::fs::read_to_string(shared.join("fixtures/kube-apiserver/audit-webhook").join(name)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let body = &v["request"]["body"];
    let n = body["items"].as_array().unwrap().len();
    Some((format!("{}\n", serde_json::to_string(body).unwrap()).into_bytes(), n))
}

fn kustody(args: &[&str]) -> kustody_testkit::Run {
    kustody_testkit::run(Command::new(env!("CARGO_BIN_EXE_kustody")).args(args))
}

#[test]
fn the_recorded_webhook_batches_are_stored_once_searched_and_detected() {
    let Some((traffic, n)) = recorded("batch-traffic.json") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);

    let r = srv.post_audit(&traffic);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stored"], n as u64);
    // The apiserver re-sends the same body after a timeout: stored once.
    let again = srv.post_audit(&traffic);
    assert_eq!(again.status, 200);
    assert_eq!((again.json()["stored"].as_u64(), again.json()["duplicates"].as_u64()), (Some(0), Some(n as u64)));
    for name in [
        "batch-retry-after-500.json",
        "batch-retry-after-429.json",
        "batch-timeout-then-retry.json",
        "blocking-exec-response-started.json",
    ] {
        let (body, _) = recorded(name).unwrap();
        let r = srv.post_audit(&body);
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }

    // search by identity, over HTTP and from the CLI on the data directory
    let v = srv.wait_items("/v1/events?user=realk8s-admin&verb=create&limit=50", 1);
    let items = v["items"].as_array().unwrap();
    assert!(items.iter().all(|e| e["event"]["user"]["username"] == "realk8s-admin" && e["event"]["verb"] == "create"));
    assert!(items.iter().any(|e| e["event"]["objectRef"]["resource"] == "pods"), "{v}");
    let exec = srv.wait_items("/v1/events?resource=pods&where=ka.target.subresource%3Dexec", 1);
    assert!(exec["items"].as_array().unwrap().iter().all(|e| e["event"]["objectRef"]["subresource"] == "exec"));

    // the exec was detected live: a finding, tied to its evidence
    let f = srv.wait_items("/v1/findings", 1);
    let exec_finding =
        f["items"].as_array().unwrap().iter().find(|x| x["resource"] == "pods" && x["user"] == "realk8s-admin");
    assert!(exec_finding.is_some(), "{f}");
    let ev_id = exec_finding.unwrap()["evidence_event"].as_i64().unwrap();
    assert!(ev_id > 0);

    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("kustody_events_duplicate_total 64"), "{}", m.body);
    assert!(m.body.contains("kustody_commit_seconds_bucket"), "{}", m.body);

    let out = kustody(&[
        "search",
        "--data-dir",
        data.to_str().unwrap(),
        "--user",
        "realk8s-admin",
        "--resource",
        "secrets",
        "-o",
        "jsonl",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|e| e["objectRef"]["resource"] == "secrets"));
    // the same search against the running server, over HTTPS with a read token
    let token_file = tmp.path().join("read.token");
    std::fs::write(&token_file, format!("{READ}\n")).unwrap();
    let url = format!("https://{}", srv.addr);
    let ca = data.join("tls/server.crt");
    let remote = kustody(&[
        "search",
        "--server",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--user",
        "realk8s-admin",
        "--resource",
        "secrets",
        "-o",
        "jsonl",
    ]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let remote_lines: Vec<Value> = remote.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(remote_lines, lines);
    let remote_findings = kustody(&[
        "search",
        "--server",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--findings",
    ]);
    assert_eq!(remote_findings.code, 0, "{}", remote_findings.stderr);
    assert!(remote_findings.stdout.contains("realk8s-admin"), "{}", remote_findings.stdout);
    let refused = kustody(&["search", "--server", &url, "--ca", ca.to_str().unwrap(), "--user", "x"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let none = kustody(&["search", "--data-dir", data.to_str().unwrap(), "--user", "nobody-at-all"]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    let findings = kustody(&["search", "--data-dir", data.to_str().unwrap(), "--findings", "-o", "jsonl"]);
    assert_eq!(findings.code, 0, "{}", findings.stderr);

    // a retro-hunt: a new rule over the stored history, while the server runs
    let new_rule = tmp.path().join("new.yaml");
    std::fs::write(&new_rule, "- rule: Secret created by a person\n  desc: d\n  condition: \"ka.verb = create and ka.target.resource = secrets and not ka.user.name startswith system:\"\n  output: \"secret %ka.target.namespace/%ka.target.name created by %ka.user.name\"\n  priority: NOTICE\n  source: k8s_audit\n").unwrap();
    let hunt = kustody(&[
        "hunt",
        "--store",
        data.to_str().unwrap(),
        "--no-default-rules",
        "--rules",
        new_rule.to_str().unwrap(),
        "-o",
        "jsonl",
    ]);
    assert_eq!(hunt.code, 1, "{}", hunt.stderr);
    let alerts: Vec<Value> = hunt.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(alerts.len(), 1, "{}", hunt.stdout);
    assert_eq!(alerts[0]["output_fields"]["ka.user.name"], "realk8s-admin");
    let timeline = kustody(&["timeline", "--store", data.to_str().unwrap(), "--user", "realk8s-admin", "-o", "jsonl"]);
    assert_eq!(timeline.code, 0, "{}", timeline.stderr);
    assert!(timeline.stdout.lines().count() >= 10, "{}", timeline.stdout);

    assert!(srv.stop().success());
}

#[test]
fn senders_are_authenticated_and_bad_payloads_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("data"), &["--max-request-bytes", "200000"]);
    let good = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"Metadata","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/x/pods","verb":"list","user":{"username":"alice"},"sourceIPs":["10.0.0.7"],"objectRef":{"resource":"pods","namespace":"x"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-12-02T03:00:00.000000Z","stageTimestamp":"2026-12-02T03:00:00.100000Z"}]}"#;
    let r = srv.request("POST", "/v1/audit", None, good.as_bytes());
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.contains("www-authenticate: Bearer"), "{}", r.headers);
    let r = srv.request("POST", "/v1/audit", Some("not-a-token-at-all-xx"), good.as_bytes());
    assert_eq!(r.status, 401);
    let r = srv.request("POST", "/v1/audit", Some(READ), good.as_bytes());
    assert_eq!(r.status, 403, "{}", r.body);
    let r = srv.request("GET", "/v1/events", Some(INGEST), b"");
    assert_eq!(r.status, 403, "an ingest token cannot read");

    let r = srv.post_audit(b"{\"kind\":\"EventList\",\"items\":[");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("no audit event"), "{}", r.body);
    let r = srv.post_audit(b"{\"kind\":\"Pod\"}");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("kind is `Pod`"), "{}", r.body);
    // one bad item among good ones: the good ones are stored, the bad one reported
    let mixed = good.replace(r#"}]}"#, r#"},{"auditID":7,"stage":"ResponseComplete"}]}"#);
    let r = srv.post_audit(mixed.as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["stored"], 1);
    assert!(r.json()["rejected"][0]["reason"].as_str().unwrap().contains("auditID"), "{}", r.body);
    // refused from its Content-Length, before the body is read
    let r = srv.request_declaring("POST", "/v1/audit", Some(INGEST), b"", 300_000);
    assert_eq!(r.status, 413, "{}", r.body);

    // hunt's readers serve every source: an AKS diagnostic-settings export (`records` wrapping
    // the event as a JSON string) posted as is
    if let Some(shared) = kustody_testkit::shared("samples/aks/event.json") {
        let aks = std::fs::read(shared.join("samples/aks/event.json")).unwrap();
        let r = srv.post_audit(&aks);
        assert_eq!(r.status, 200, "{}", r.body);
        let stored = r.json()["stored"].as_u64().unwrap();
        assert!(stored > 0, "{}", r.body);
        let v = srv.wait_items("/v1/events?limit=1000", stored as usize);
        assert!(v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "Event" && e["event"]["auditID"].is_string()));
    }

    // a Falco alert, tied to its pod
    let alert = r#"{"hostname":"node-1","output":"Shell spawned","output_fields":{"container.id":"0123456789ab","k8s.ns.name":"shop","k8s.pod.name":"web-1"},"priority":"Notice","rule":"Terminal shell in container","source":"syscall","tags":["shell"],"time":"2026-12-02T03:44:21.431251797Z"}"#;
    let r = srv.request("POST", "/v1/falco", Some(INGEST), alert.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = srv.wait_items("/v1/alerts?namespace=shop&pod=web-1", 1);
    assert_eq!(v["items"][0]["container_id"], "0123456789ab");

    let m = srv.get("/metrics").body;
    assert!(m.contains("kustody_requests_rejected_total{reason=\"unauthenticated\"} 2"), "{m}");
    assert!(m.contains("kustody_requests_rejected_total{reason=\"forbidden\"} 2"), "{m}");
    assert_eq!(srv.request("GET", "/healthz", None, b"").status, 200);
    assert_eq!(srv.request("GET", "/readyz", None, b"").status, 200);
    assert!(srv.stop().success());
}

fn synthetic_batch(batch: usize, size: usize) -> (Vec<u8>, Vec<String>) {
    let mut ids = Vec::new();
    let mut items = Vec::new();
    for i in 0..size {
        let id = format!("{batch:06}-{i:04}-0000-0000-000000000000");
        items.push(format!(
            r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns{}/configmaps","verb":"list","user":{{"username":"system:serviceaccount:ns{}:app"}},"sourceIPs":["10.1.{}.{}"],"objectRef":{{"resource":"configmaps","namespace":"ns{}"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"2026-12-02T03:00:00.000000Z","stageTimestamp":"2026-12-02T03:00:00.100000Z"}}"#,
            i % 7, i % 7, batch % 250, i % 250, i % 7
        ));
        ids.push(id);
    }
    (
        format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
            items.join(",")
        )
        .into_bytes(),
        ids,
    )
}

#[test]
fn kill_9_during_ingest_loses_nothing_acknowledged_and_stores_no_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let srv = Arc::new(std::sync::Mutex::new(srv));
    let client = srv.lock().unwrap().client.clone();
    let mut senders = Vec::new();
    for t in 0..2 {
        let (acked, stop, client) = (acked.clone(), stop.clone(), client.clone());
        senders.push(std::thread::spawn(move || {
            let mut b = t * 100_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (body, ids) = synthetic_batch(b, 400);
                b += 1;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.post_audit(&body)));
                match r {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().extend(ids),
                    _ => {}
                }
            }
        }));
    }
    // let it ingest, then kill -9 in the middle
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 8_000 {
        assert!(t0.elapsed() < Duration::from_secs(120), "ingest too slow to test");
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let mut s = srv.lock().unwrap();
        s.child.kill().unwrap(); // SIGKILL
        s.child.wait().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    drop(srv);
    // restart on the same data; every acknowledged event is there exactly once
    let srv = start(&data, &[]);
    assert!(srv.stop().success());
    let conn = rusqlite_count(&data);
    let unique: std::collections::HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "a batch was acknowledged twice");
    let mut missing = 0;
    for id in &acked {
        let out = conn.get(id.as_str()).copied().unwrap_or(0);
        assert!(out <= 1, "{id} stored {out} times");
        if out == 0 {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "{missing} of {} acknowledged events lost", acked.len());
}

/// auditID → rows, read with kustody search (jsonl) page by page.
fn rusqlite_count(data: &Path) -> std::collections::HashMap<String, u32> {
    let mut counts = std::collections::HashMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut args = vec![
            "search".to_owned(),
            "--data-dir".into(),
            data.display().to_string(),
            "-o".into(),
            "json".into(),
            "--limit".into(),
            "10000".into(),
        ];
        if let Some(b) = before {
            args.push("--before".into());
            args.push(b.to_string());
        }
        let out = kustody_testkit::run(Command::new(env!("CARGO_BIN_EXE_kustody")).args(&args));
        assert!(out.code == 0 || out.code == 1, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        for e in v["items"].as_array().unwrap() {
            *counts.entry(e["event"]["auditID"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        match v["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => return counts,
        }
    }
}

fn peak_rss_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn overload_is_shed_with_429_and_retry_after_while_memory_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    // a queue of 1 MB: five batches of 400 in flight at most
    let srv = start(&tmp.path().join("data"), &["--queue-bytes", "1000000", "--max-request-bytes", "1000000"]);
    let client = srv.client.clone();
    let mut threads = Vec::new();
    for t in 0..16 {
        let client = client.clone();
        threads.push(std::thread::spawn(move || {
            let mut seen = (0u32, 0u32, false);
            for b in 0..12 {
                let (body, _) = synthetic_batch(t * 1000 + b, 400);
                let r = client.post_audit(&body);
                match r.status {
                    200 => seen.0 += 1,
                    429 => {
                        seen.1 += 1;
                        seen.2 |= r.headers.to_ascii_lowercase().contains("retry-after: 1");
                    }
                    s => panic!("unexpected {s}: {} {}", r.headers, r.body),
                }
            }
            seen
        }));
    }
    let (mut ok, mut shed, mut retry_after) = (0, 0, false);
    for t in threads {
        let (o, s, r) = t.join().unwrap();
        ok += o;
        shed += s;
        retry_after |= r;
    }
    assert!(ok > 0, "nothing was accepted");
    assert!(shed > 0, "16 senders against a 1 MB queue were never told to back off");
    assert!(retry_after, "429 without Retry-After");
    let m = srv.get("/metrics").body;
    assert!(m.contains(&format!("kustody_requests_rejected_total{{reason=\"overloaded_429\"}} {shed}")), "{m}");
    let rss = peak_rss_mb(srv.child.id());
    assert!(rss < 300, "peak RSS {rss} MB");
    assert!(srv.stop().success());
}

#[test]
fn a_full_disk_answers_503_and_ingest_resumes_when_space_is_freed() {
    let Some(fs) = kustody_testkit::Tmpfs::mount("6m") else { return };
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2 << 20]).unwrap();
    let srv = start(&fs.path().join("data"), &[]);
    let mut b = 0;
    let full = loop {
        let (body, _) = synthetic_batch(b, 400);
        b += 1;
        let r = srv.post_audit(&body);
        if r.status != 200 {
            break r;
        }
        assert!(b < 2000, "the disk never filled");
    };
    assert_eq!(full.status, 503, "{}", full.body);
    assert!(full.headers.to_ascii_lowercase().contains("retry-after: 10"), "{}", full.headers);
    assert!(full.body.contains("full"), "{}", full.body);
    assert_eq!(srv.request("GET", "/readyz", None, b"").status, 503);
    std::fs::remove_file(&filler).unwrap();
    let (body, ids) = synthetic_batch(b, 400);
    let mut r = srv.post_audit(&body);
    for _ in 0..20 {
        if r.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        r = srv.post_audit(&body);
    }
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.request("GET", "/readyz", None, b"").status, 200);
    let v = srv.wait_items(&format!("/v1/events?audit_id={}", ids[0]), 1);
    assert_eq!(v["items"][0]["event"]["auditID"], ids[0].as_str());
    assert!(srv.stop().success());
}

fn audit_line(id: &str, user: &str, verb: &str, resource: &str, sub: Option<&str>) -> String {
    let sub = sub.map_or(String::new(), |s| format!(r#","subresource":"{s}""#));
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/{resource}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.9"],"objectRef":{{"resource":"{resource}","namespace":"shop","name":"web-1"{sub}}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"2026-12-02T03:00:00.000000Z","stageTimestamp":"2026-12-02T03:00:00.100000Z"}}"#
    )
}

fn event_list(lines: &[&String]) -> Vec<u8> {
    // the webhook's items carry no kind/apiVersion
    let items: Vec<String> =
        lines.iter().map(|l| l.replace(r#""kind":"Event","apiVersion":"audit.k8s.io/v1","#, "")).collect();
    format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#, items.join(","))
        .into_bytes()
}

fn metric(srv: &Server, line_prefix: &str) -> Option<String> {
    srv.get("/metrics").body.lines().find(|l| l.starts_with(line_prefix)).map(str::to_owned)
}

/// Waits until a metric reaches at least the value in `line` (`name value`).
fn wait_metric(srv: &Server, line: &str) {
    let t0 = Instant::now();
    let (prefix, want) = line.rsplit_once(' ').unwrap();
    let want: f64 = want.parse().unwrap();
    loop {
        let got = metric(srv, prefix);
        if got
            .as_deref()
            .and_then(|g| g.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .is_some_and(|v| v >= want)
        {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "waiting for `{line}`, have {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_followed_log_fills_the_webhooks_gaps_resumes_after_restart_and_follows_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("audit.log");
    let ev: Vec<String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|i| audit_line(&format!("id-{i}"), "alice", "list", "configmaps", None))
        .collect();
    // the fourth line is cut short: kept as a bad record, never silently skipped
    let cut = &ev[3][..120];
    std::fs::write(&log, format!("{}\n{}\n{}\n{cut}\n", ev[0], ev[1], ev[2])).unwrap();
    let args = ["--follow", log.to_str().unwrap(), "--webhook-gap-grace", "0"];
    let srv = start(&data, &args);
    // the webhook delivered a and b; c reached only the file: a gap
    let r = srv.post_audit(&event_list(&[&ev[0], &ev[1]]));
    assert_eq!(r.status, 200, "{}", r.body);
    let c = srv.wait_items("/v1/events?audit_id=id-c", 1);
    assert_eq!(c["items"][0]["origins"], serde_json::json!(["file"]));
    let t0 = Instant::now();
    loop {
        let a = srv.get("/v1/events?audit_id=id-a").json();
        if a["items"][0]["origins"] == serde_json::json!(["webhook", "file"]) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{a}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_metric(&srv, "kustody_webhook_gap_events 1");
    let bad = srv.request("GET", "/v1/bad-records", Some(ADMIN), b"").json();
    let rec = &bad["items"][0];
    assert_eq!(rec["source"], format!("file:{}", log.display()), "{bad}");
    assert_eq!(rec["locator"], "line 4");
    assert_eq!(rec["auditID"], "id-d");
    assert_eq!(rec["raw"], cut);
    // the console's status page says so first
    let cookie = session_cookie(&srv.client.browser("POST", "/login", None, &format!("token={READ}")));
    let r = srv.client.browser("GET", "/status", Some(&cookie), "");
    assert_eq!(r.status, 200);
    let gaps = &r.body[r.body.find(r#"id="gaps""#).unwrap()..];
    assert!(gaps.contains("1 events reached kustody only from the followed log file"), "{}", r.body);
    assert!(srv.stop().success());

    // while it is down: d is appended, the log rotates, f starts the new file
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "{}", ev[3]).unwrap();
    drop(f);
    std::fs::rename(&log, tmp.path().join("audit.log.1")).unwrap();
    std::fs::write(&log, format!("{}\n", ev[5])).unwrap();
    let srv = start(&data, &args);
    srv.wait_items("/v1/events?audit_id=id-d", 1);
    srv.wait_items("/v1/events?audit_id=id-f", 1);
    // and after rotation while running
    std::fs::rename(&log, tmp.path().join("audit.log.2")).unwrap();
    std::fs::write(&log, format!("{}\n", ev[4])).unwrap();
    srv.wait_items("/v1/events?audit_id=id-e", 1);
    let all = srv.get("/v1/events?user=alice&limit=100").json();
    let mut ids: Vec<&str> =
        all["items"].as_array().unwrap().iter().map(|e| e["event"]["auditID"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["id-a", "id-b", "id-c", "id-d", "id-e", "id-f"], "each event stored once");
    assert_eq!(srv.get("/v1/bad-records").json()["items"].as_array().unwrap().len(), 1, "kept once across the restart");
    assert!(srv.stop().success());
}

#[test]
fn rules_reload_on_sighup_and_a_broken_set_keeps_the_last_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("mine.yaml");
    let rule = |name: &str| {
        format!("- rule: {name}\n  desc: d\n  condition: ka.verb = list and ka.target.resource = configmaps\n  output: \"%ka.user.name listed configmaps\"\n  priority: WARNING\n  source: k8s_audit\n")
    };
    std::fs::write(&rules, rule("First rule")).unwrap();
    let srv = start(&tmp.path().join("data"), &["--rules", rules.to_str().unwrap()]);
    let e1 = audit_line("r-1", "bob", "list", "configmaps", None);
    assert_eq!(srv.post_audit(&event_list(&[&e1])).status, 200);
    srv.wait_items("/v1/findings?rule=First%20rule", 1);

    std::fs::write(&rules, "- rule: Broken\n  condition: ka.verb = = list\n").unwrap();
    let _ = Command::new("kill").arg("-HUP").arg(srv.child.id().to_string()).status();
    wait_metric(&srv, "kustody_rule_reload_failures_total 1");
    let e2 = audit_line("r-2", "carol", "list", "configmaps", None);
    assert_eq!(srv.post_audit(&event_list(&[&e2])).status, 200);
    let v = srv.wait_items("/v1/findings?rule=First%20rule&user=carol", 1);
    assert_eq!(v["items"][0]["user"], "carol");

    std::fs::write(&rules, rule("Second rule")).unwrap();
    let _ = Command::new("kill").arg("-HUP").arg(srv.child.id().to_string()).status();
    wait_metric(&srv, "kustody_rule_reloads_total 1");
    let e3 = audit_line("r-3", "dave", "list", "configmaps", None);
    assert_eq!(srv.post_audit(&event_list(&[&e3])).status, 200);
    srv.wait_items("/v1/findings?rule=Second%20rule&user=dave", 1);
    assert!(srv.stop().success());
}

#[test]
fn findings_stream_to_subscribers_as_events_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("exec.yaml");
    std::fs::write(&rules, "- rule: Exec seen\n  desc: d\n  condition: ka.target.subresource = exec\n  output: \"exec by %ka.user.name\"\n  priority: WARNING\n  source: k8s_audit\n").unwrap();
    let srv = start(&tmp.path().join("data"), &["--rules", rules.to_str().unwrap()]);
    let client = srv.client.clone();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let tcp = TcpStream::connect(&client.addr).unwrap();
        let conn = rustls::ClientConnection::new(client.tls.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        write!(s, "GET /v1/findings/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\n\r\n").unwrap();
        s.flush().unwrap();
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("event: finding") && text.contains("\n\n") {
                let _ = tx.send(text.clone());
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let exec = audit_line("s-1", "mallory", "create", "pods", Some("exec"));
    assert_eq!(srv.post_audit(&event_list(&[&exec])).status, 200);
    let got = rx.recv_timeout(Duration::from_secs(20)).expect("no finding streamed");
    let data = got.lines().find(|l| l.starts_with("data: ")).unwrap();
    let v: Value = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
    assert_eq!(v["change"], "opened");
    assert_eq!(v["finding"]["user"], "mallory");
    assert!(v["finding"]["evidence_event"].as_i64().unwrap() > 0);
}

#[test]
fn the_apiserver_may_authenticate_with_a_client_certificate_which_only_ingests() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "audit CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_file = tmp.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();

    let data = tmp.path().join("data");
    let srv = start(&data, &["--client-ca", ca_file.to_str().unwrap()]);
    let with_cert = Client {
        addr: srv.addr.clone(),
        tls: client_tls(
            &data,
            Some((cert.der().clone(), rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))),
        ),
    };
    let e = audit_line("m-1", "erin", "list", "configmaps", None);
    let r = with_cert.request("POST", "/v1/audit", None, &event_list(&[&e]));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with_cert.request("GET", "/v1/events", None, b"");
    assert_eq!(r.status, 403, "a client certificate only ingests: {}", r.body);
    // without a certificate or token: 401
    assert_eq!(srv.request("POST", "/v1/audit", None, &event_list(&[&e])).status, 401);
    assert!(srv.stop().success());
}

#[test]
fn a_config_file_sets_flags_the_command_line_overrides_and_unknown_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:0\nmax-requst-bytes: 10\n").unwrap();
    let out =
        kustody(&["serve", "--data-dir", tmp.path().join("d").to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("bad.yaml:2:1: unknown key `max-requst-bytes`"), "{}", out.stderr);

    let cfg = tmp.path().join("serve.yaml");
    std::fs::write(&cfg, "max-request-bytes: 1000\nmax-event-bytes: 900\nlisten: 127.0.0.1:1\n").unwrap();
    // the command line's --listen (from start()) wins over the file's
    let srv = start(&tmp.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let r = srv.request_declaring("POST", "/v1/audit", Some(INGEST), b"", 2000);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("1000 byte limit"), "{}", r.body);
    assert!(srv.stop().success());
}

#[test]
fn print_apiserver_config_gives_the_webhook_kubeconfig_policy_and_flags() {
    let out = kustody(&[
        "serve",
        "print-apiserver-config",
        "--url",
        "https://kustody.example:8443/v1/audit",
        "--ca",
        "/etc/k/ca.crt",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for want in [
        "kind: Config",
        "server: https://kustody.example:8443/v1/audit",
        "certificate-authority: /etc/k/ca.crt",
        "kind: Policy",
        "omitStages: [\"RequestReceived\"]",
        "--audit-webhook-config-file=",
        "--audit-log-path=",
    ] {
        assert!(out.stdout.contains(want), "missing {want}:\n{}", out.stdout);
    }
    // every document parses as YAML, with the kind it says
    let docs: Vec<&str> = out.stdout.split("\n---\n").collect();
    assert_eq!(docs.len(), 3);
    let kinds: Vec<Option<String>> = docs
        .iter()
        .map(|d| {
            kustody_model::yaml::parse(d)
                .unwrap()
                .first()
                .and_then(|n| n.get("kind"))
                .and_then(|k| k.as_str().map(str::to_owned))
        })
        .collect();
    assert_eq!(kinds, vec![Some("Config".to_owned()), Some("Policy".to_owned()), None]);
}

// ---------------------------------------------------------------------------------------------
// Incidents, notifications and the outbox (issue 16).

/// Token files for the CLI's --server calls.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join(format!("{}.tok", &token[..6]));
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// The server's certificate (trusted by `--ca`).
fn ca(dir: &Path) -> String {
    dir.join("tls/server.crt").display().to_string()
}

/// A sinks file with a generic webhook sink at `url` and two sinks that must get nothing.
fn sinks_file(dir: &Path, url: &str, max_attempts: u32) -> PathBuf {
    let p = dir.join("sinks.yaml");
    std::fs::write(
        &p,
        format!(
            "sinks:
  - name: soc-hook
    type: webhook
    url: {url}/hook
    min_priority: warning
    max_attempts: {max_attempts}
  - name: never-routed
    type: webhook
    url: {url}/never
    route: 'finding.namespace = nowhere'
  - name: emergencies-only
    type: webhook
    url: {url}/never
    min_priority: emergency
"
        ),
    )
    .unwrap();
    p
}

/// Notifications the receiver accepted (answered 2xx), as JSON.
fn accepted(log: &std::sync::Mutex<Vec<kustody_testkit::http::Seen>>, path: &str) -> Vec<Value> {
    log.lock().unwrap().iter().filter(|s| s.target == path).map(|s| serde_json::from_str(&s.body).unwrap()).collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn incidents_json(args: &[&str]) -> Value {
    let r = kustody(&[&["incidents", "list", "-o", "json"], args].concat());
    assert!(r.code <= 1, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn the_replayed_attack_chain_becomes_incidents_notified_once_then_acknowledged_and_resolved() {
    let (url, log) = kustody_testkit::http::endpoint(Box::new(|_| (200, serde_json::json!({"ok": true}))));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sinks = sinks_file(tmp.path(), &url, 12);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let srv = start(&data, &["--replay", example, "--sinks", sinks.to_str().unwrap(), "--cluster", "demo"]);
    let d = data.to_str().unwrap();
    // every incident of WARNING or above reaches the webhook, once
    let mut wanted = 0;
    wait_for("the incidents' notifications", 60, || {
        let v = incidents_json(&["--data-dir", d, "--min-priority", "warning"]);
        wanted = v["incidents"].as_array().unwrap().len();
        wanted > 0 && accepted(&log, "/hook").len() >= wanted
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = accepted(&log, "/hook");
    assert_eq!(got.len(), wanted, "one trigger per incident, no duplicate: {got:#?}");
    assert!(accepted(&log, "/never").is_empty(), "the route and the minimum priority held");
    let mut keys: Vec<&str> = got.iter().map(|n| n["dedup_key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), got.len());
    // the attacker's incident: a CRITICAL chain with the story, who, where, evidence and next steps
    let chain = got
        .iter()
        .find(|n| {
            n["incident"]["rules"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("Attack Chain"))
        })
        .unwrap_or_else(|| panic!("no attack-chain incident in {got:#?}"));
    assert_eq!(chain["action"], "trigger");
    assert_eq!(chain["cluster"], "demo");
    let id = chain["incident_id"].as_i64().unwrap();
    assert_eq!(chain["dedup_key"], format!("kustody/demo/incident/{id}"));
    assert!(chain["title"].as_str().unwrap().contains(&format!("incident #{id}")), "{}", chain["title"]);
    let summary = chain["summary"].as_str().unwrap();
    for want in
        ["What happened:", "Who: ", "Where: cluster demo", "Evidence (auditIDs): ", "Next:", "kustody timeline --store"]
    {
        assert!(summary.contains(want), "{want:?} missing from\n{summary}");
    }
    assert!(chain["incident"]["steps"].as_array().unwrap().len() >= 3);

    // a reader may look but not act
    let srv_url = format!("https://{}", srv.addr);
    let reader = token_file(tmp.path(), READ);
    let responder = token_file(tmp.path(), RESPOND);
    let crt = ca(&data);
    let ids = id.to_string();
    let conn = |tok: &Path| {
        vec![
            "--server".to_owned(),
            srv_url.clone(),
            "--ca".into(),
            crt.clone(),
            "--token-file".into(),
            tok.display().to_string(),
        ]
    };
    let as_args = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join("\u{1}");
    let run = |a: &[&str], tok: &Path| {
        let mut all: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        all.extend(conn(tok));
        let joined = as_args(&all);
        kustody(&joined.split('\u{1}').collect::<Vec<_>>())
    };
    let r = run(&["incidents", "ack", &ids], &reader);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    let r = run(&["incidents", "ack", &ids, "-m", "looking at the pod"], &responder);
    assert!(r.code == 0, "{}", r.stderr);
    assert!(r.stdout.contains("status acknowledged"), "{}", r.stdout);
    let r = run(&["incidents", "assign", &ids, "bob"], &responder);
    assert!(r.code == 0, "{}", r.stderr);
    let r = run(&["incidents", "resolve", &ids, "-m", "pod quarantined, token revoked"], &responder);
    assert!(r.code == 0, "{}", r.stderr);
    // the sink that got the trigger is told it is resolved, with the same dedup_key
    wait_for("the resolve notification", 30, || accepted(&log, "/hook").iter().any(|n| n["action"] == "resolve"));
    let resolves: Vec<Value> = accepted(&log, "/hook").into_iter().filter(|n| n["action"] == "resolve").collect();
    assert_eq!(resolves.len(), 1);
    assert_eq!(resolves[0]["dedup_key"], chain["dedup_key"]);
    assert_eq!(resolves[0]["status"], "resolved");
    // the incident as stored: status, assignee, notes, notifications
    let r = kustody(&["incidents", "show", &ids, "--data-dir", d]);
    assert!(r.code == 0, "{}", r.stderr);
    for want in [
        "Status: resolved, assigned to bob",
        "alice: looking at the pod",
        "alice: pod quarantined",
        "trigger → soc-hook: delivered",
        "resolve → soc-hook: delivered",
    ] {
        assert!(r.stdout.contains(want), "{want:?} missing from\n{}", r.stdout);
    }
    // resolved incidents leave the default list
    let open = incidents_json(&["--data-dir", d]);
    assert!(open["incidents"].as_array().unwrap().iter().all(|i| i["id"] != id));
    let r = kustody(&["serve", "outbox", "list", "--data-dir", d, "--state", "delivered"]);
    assert!(r.code == 0 && r.stdout.contains("soc-hook"), "{}{}", r.stdout, r.stderr);
    let m = srv.get("/metrics").body;
    assert!(m.contains(&format!("kustody_notifications_delivered_total {}", wanted + 1)), "{m}");
    assert!(m.contains("kustody_notifications_dead_total 0"), "{m}");
}

#[test]
fn notifications_survive_a_receiver_outage_and_kill_9_and_dead_ones_can_be_retried() {
    use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
    // the receiver is down (503) at first
    let answer = Arc::new(AtomicU16::new(503));
    let a2 = answer.clone();
    let (url, log) = kustody_testkit::http::endpoint(Box::new(move |_| {
        let s = a2.load(SeqCst);
        (s, serde_json::json!({}))
    }));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sinks = sinks_file(tmp.path(), &url, 50);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let d = data.to_str().unwrap();
    let mut srv = start(&data, &["--replay", example, "--sinks", sinks.to_str().unwrap()]);
    let pending = || {
        let r = kustody(&["serve", "outbox", "list", "--data-dir", d, "--state", "pending", "-o", "json"]);
        serde_json::from_str::<Value>(&r.stdout)
            .map(|v| v["notifications"].as_array().unwrap().clone())
            .unwrap_or_default()
    };
    wait_for("failed attempts", 60, || {
        let p = pending();
        !p.is_empty() && p.iter().any(|n| n["attempts"].as_u64().unwrap() >= 1)
    });
    let committed = pending().len();
    assert!(log.lock().unwrap().iter().all(|s| s.target == "/hook"));
    // kill -9 between commit and delivery: the notifications are in the store, not delivered
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    drop(srv);
    let outbox_before = pending();
    assert!(outbox_before.len() >= committed);
    answer.store(200, SeqCst);
    let tried_before = log.lock().unwrap().len();
    let srv = start(&data, &["--sinks", sinks.to_str().unwrap()]);
    wait_for("delivery after the restart", 60, || pending().is_empty());
    // every notification reached the receiver once with a 2xx answer (those before were 503s)
    let delivered: Vec<Value> =
        log.lock().unwrap()[tried_before..].iter().map(|s| serde_json::from_str(&s.body).unwrap()).collect();
    let mut keys: Vec<String> = delivered.iter().map(|n| format!("{}/{}", n["dedup_key"], n["action"])).collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a notification was delivered twice");
    assert_eq!(n, outbox_before.len());
    let r = kustody(&["serve", "outbox", "show", &outbox_before[0]["id"].to_string(), "--data-dir", d]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let hist = v["history"].as_array().unwrap();
    assert!(hist.len() >= 2, "{v:#}");
    assert!(hist[0]["error"].as_str().unwrap().contains("503"), "{v:#}");
    assert!(hist.last().unwrap()["error"].is_null());
    assert_eq!(v["state"], "delivered");

    // a receiver refusing for good (400): dead at once, then sent again by `outbox retry`
    answer.store(400, SeqCst);
    let id = incidents_json(&["--data-dir", d])["incidents"][0]["id"].as_i64().unwrap().to_string();
    let responder = token_file(tmp.path(), RESPOND);
    let admin = token_file(tmp.path(), ADMIN);
    let srv_url = format!("https://{}", srv.addr);
    let crt = ca(&data);
    let r = kustody(&[
        "incidents",
        "resolve",
        &id,
        "--server",
        &srv_url,
        "--ca",
        &crt,
        "--token-file",
        responder.to_str().unwrap(),
    ]);
    assert!(r.code == 0, "{}", r.stderr);
    let dead = || {
        let r = kustody(&["serve", "outbox", "list", "--data-dir", d, "--state", "dead", "-o", "json"]);
        serde_json::from_str::<Value>(&r.stdout)
            .map(|v| v["notifications"].as_array().unwrap().clone())
            .unwrap_or_default()
    };
    wait_for("the dead letter", 30, || dead().len() == 1);
    assert_eq!(dead()[0]["action"], "resolve");
    assert_eq!(dead()[0]["attempts"], 1, "a 400 is not retried");
    answer.store(200, SeqCst);
    let r = kustody(&[
        "serve",
        "outbox",
        "retry",
        "--server",
        &srv_url,
        "--ca",
        &crt,
        "--token-file",
        responder.to_str().unwrap(),
    ]);
    assert!(r.code != 0 && r.stderr.contains("403"), "retry needs admin: {}", r.stderr);
    let r = kustody(&[
        "serve",
        "outbox",
        "retry",
        "--sink",
        "soc-hook",
        "--server",
        &srv_url,
        "--ca",
        &crt,
        "--token-file",
        admin.to_str().unwrap(),
    ]);
    assert!(r.code == 0 && r.stdout.contains("1 notification"), "{}{}", r.stdout, r.stderr);
    wait_for("the retried notification", 30, || dead().is_empty() && pending().is_empty());
    let last: Value = serde_json::from_str(&log.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(last["action"], "resolve");
}

// ---------------------------------------------------------------------------------------------
// Playbooks on the test cluster (issue 16): the attack replayed against a real API, its audit
// log followed by `serve`, an incident, a quarantine and an evidence bundle, within guardrails.

fn web_deployment(ns: &str) -> Value {
    serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"serviceAccountName": "web-sa", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "web", "image": "busybox:1.36"}]}}}})
}

/// A token bound to pod `ns/pod` of service account `sa`, as the kubelet's projected volume gets.
fn bound_token(c: &kustody_testcluster::TestCluster, ns: &str, sa: &str, pod: &str) -> String {
    let p = c.get("pods", ns, pod).unwrap();
    let out = c
        .request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            Some(&serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": p["metadata"]["uid"]}}})),
        )
        .unwrap();
    out["status"]["token"].as_str().unwrap().to_owned()
}

/// What a stolen pod token does: enumerate, try the secrets, exec into `exec_pod`.
fn attack(c: &kustody_testcluster::TestCluster, token: &str, ns: &str, exec_pod: &str, steps: &[&str]) {
    use kustody_testcluster::client::{rt, Client};
    let mut a = Client::token(c, token);
    a.user_agent = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350".into();
    rt().block_on(async {
        if steps.contains(&"enumerate") {
            let r = a
                .req("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                     Some(&serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}})))
                .await
                .unwrap();
            assert_eq!(r.status, 201);
        }
        if steps.contains(&"secrets") {
            assert_eq!(a.req("GET", &format!("/api/v1/namespaces/{ns}/secrets"), None).await.unwrap().status, 403);
        }
        if steps.contains(&"exec") {
            let s = a
                .ws(&format!("/api/v1/namespaces/{ns}/pods/{exec_pod}/exec?command=id&stdout=true&stderr=true"), &["v5.channel.k8s.io"], None, None)
                .await
                .unwrap();
            assert!(String::from_utf8_lossy(&s.channel(1)).contains("uid="));
        }
    });
}

fn actions_json(d: &str) -> Vec<Value> {
    let r = kustody(&["actions", "list", "--data-dir", d, "-o", "json", "--limit", "1000"]);
    serde_json::from_str::<Value>(&r.stdout).map(|v| v["actions"].as_array().unwrap().clone()).unwrap_or_default()
}

#[test]
fn an_attack_on_the_test_cluster_is_contained_by_a_playbook_within_its_guardrails() {
    use kustody_testcluster::{Pod, TestCluster};
    let Some(c) = kustody_testcluster::client::cluster(TestCluster::builder().namespace("shop")) else {
        return;
    };
    c.create_namespace("ops").unwrap();
    for (ns, sa) in [("shop", "web-sa"), ("ops", "ops-sa")] {
        c.apply(serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})).unwrap();
        c.grant(
            &serde_json::json!({"kind": "ServiceAccount", "name": sa, "namespace": ns}),
            sa,
            serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                               {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]),
            Some(ns),
        )
        .unwrap();
    }
    c.apply(web_deployment("shop")).unwrap();
    c.apply(Pod::new("tool").namespace("ops").service_account("ops-sa").to_object("ops")).unwrap();
    let pods: Vec<String> = c
        .wait_for(Duration::from_secs(30), || {
            let running: Vec<String> = c
                .list("pods", Some("shop"))
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
                .collect();
            (running.len() >= 3).then_some(running)
        })
        .unwrap();
    c.wait_pod_running("ops", "tool", Duration::from_secs(30)).unwrap();
    let (a, b) = (pods[0].clone(), pods[1].clone());

    let (url, log) = kustody_testkit::http::endpoint(Box::new(|_| (200, serde_json::json!({}))));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sinks = sinks_file(tmp.path(), &url, 12);
    let playbooks = tmp.path().join("playbooks.yaml");
    std::fs::write(
        &playbooks,
        "playbooks:
  - name: contain
    match: { rules: [kustody Attack Chain from Enumeration to Escalation] }
    dry_run: false
    exclude: { namespaces: [ops] }
    limits: { per_namespace_per_hour: 1, min_healthy_replicas: 1 }
    actions:
      - collect: { profile: triage }
      - quarantine: { allow_dns: true }
      - annotate: { key: kustody.io/incident, value: '{{incident_id}}' }
      - notify: { sink: soc-hook }
  - name: mark-suspects
    match: { min_priority: critical }
    actions:
      - label: { key: kustody.io/suspect, value: 'true' }
",
    )
    .unwrap();
    let audit = c.audit_log_path().to_str().unwrap().to_owned();
    let kc = c.kubeconfig_path().to_str().unwrap().to_owned();
    let _srv = start(
        &data,
        &[
            "--follow",
            &audit,
            "--sinks",
            sinks.to_str().unwrap(),
            "--playbooks",
            playbooks.to_str().unwrap(),
            "--kubeconfig",
            &kc,
        ],
    );
    // an operator lists the pods (audited with the pods' bodies, as a real policy records them)
    c.request("GET", "/api/v1/namespaces/shop/pods", None).unwrap();
    // pod b's token enumerates and tries the secrets; pod a's execs: one identity, one workload
    attack(&c, &bound_token(&c, "shop", "web-sa", &b), "shop", &a, &["enumerate", "secrets"]);
    attack(&c, &bound_token(&c, "shop", "web-sa", &a), "shop", &a, &["enumerate", "exec"]);
    // the same in the excluded namespace
    attack(&c, &bound_token(&c, "ops", "ops-sa", "tool"), "ops", "tool", &["enumerate", "secrets", "exec"]);

    let d = data.to_str().unwrap();
    wait_for("the playbook's actions", 120, || {
        let acts = actions_json(d);
        let done = |s: &Value| !matches!(s["state"].as_str(), Some("planned" | "running"));
        acts.iter().any(|x| x["action"] == "quarantine" && x["state"] == "applied")
            && acts.iter().any(|x| x["target"] == "ops/tool")
            && acts.iter().all(done)
    });
    let acts = actions_json(d);
    let on = |target: &str, action: &str, pb: &str| -> Value {
        acts.iter()
            .find(|x| x["target"] == target && x["action"] == action && x["playbook"] == pb)
            .cloned()
            .unwrap_or_else(|| panic!("no {pb}/{action} on {target}: {acts:#?}"))
    };
    // one of the two pods the identity acted from is contained, with its evidence
    let (done, limited) = if on(&format!("shop/{a}"), "quarantine", "contain")["state"] == "applied" {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };
    let q = on(&format!("shop/{done}"), "quarantine", "contain");
    assert_eq!(q["state"], "applied", "{q:#}");
    let collect = on(&format!("shop/{done}"), "collect", "contain");
    assert_eq!(collect["state"], "applied", "{collect:#}");
    let bundle = PathBuf::from(collect["detail"]["bundle"].as_str().unwrap());
    assert!(bundle.join("MANIFEST.json").exists(), "{}", bundle.display());
    assert!(bundle.starts_with(&data), "evidence is kept in the data directory");
    let pod = c.get("pods", "shop", &done).unwrap();
    assert_eq!(pod["metadata"]["labels"]["kustody.io/quarantined"], "true", "{}", pod["metadata"]);
    let incident = q["incident_id"].as_i64().unwrap();
    assert_eq!(pod["metadata"]["annotations"]["kustody.io/incident"], incident.to_string());
    assert_eq!(on(&format!("shop/{done}"), "notify", "contain")["state"], "applied");
    // the other: the per-namespace rate limit held
    let skipped = on(&format!("shop/{limited}"), "quarantine", "contain");
    assert_eq!(skipped["state"], "skipped");
    assert!(skipped["detail"]["guardrail"].as_str().unwrap().contains("rate limit"), "{skipped:#}");
    assert!(c.get("pods", "shop", &limited).unwrap()["metadata"]["labels"].get("kustody.io/quarantined").is_none());
    // the excluded namespace: nothing done, and why
    let ops = on("ops/tool", "quarantine", "contain");
    assert_eq!(ops["state"], "skipped");
    assert!(ops["detail"]["guardrail"].as_str().unwrap().contains("namespace ops is excluded"), "{ops:#}");
    // the dry-run playbook recorded its plan and changed nothing
    let dry = on(&format!("shop/{done}"), "label", "mark-suspects");
    assert_eq!(dry["state"], "dry-run", "{dry:#}");
    assert!(pod["metadata"]["labels"].get("kustody.io/suspect").is_none());
    // every action is in the action log, linked to its incident
    let entries: Vec<Value> = std::fs::read_to_string(data.join("actions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.iter().any(|e| e["action"] == "quarantine" && e["outcome"] == "verified"), "{entries:#?}");
    assert!(entries.iter().any(|e| e["action"] == "playbook:collect" && e["incident"] == incident));
    // the notify action's notification reached the sink
    wait_for("the playbook's notification", 30, || accepted(&log, "/hook").iter().any(|n| n["action"] == "update"));
    // the audited pod list told the IP history each pod's IP: the tokens were used from
    // 127.0.0.1, not from their pods
    let r = kustody(&["incidents", "show", &incident.to_string(), "--data-dir", d]);
    assert!(r.stdout.contains("STOLEN TOKEN? the token of pod shop/web-"), "{}", r.stdout);
    assert!(r.stdout.contains("was used from 127.0.0.1, not its pod's (10.244."), "{}", r.stdout);
}

#[test]
fn an_action_that_needs_approval_waits_for_a_responder_and_a_rejected_one_never_runs() {
    let (url, log) = kustody_testkit::http::endpoint(Box::new(|_| (200, serde_json::json!({}))));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sinks = sinks_file(tmp.path(), &url, 12);
    let playbooks = tmp.path().join("playbooks.yaml");
    // the replayed chain exec'd into shop/payments-db-0: the pod it reached
    std::fs::write(
        &playbooks,
        "playbooks:
  - name: page-the-db-team
    match: { min_priority: critical }
    target: reached
    approval: true
    dry_run: false
    actions:
      - notify: { sink: soc-hook }
      - notify: { sink: soc-hook }
",
    )
    .unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let srv = start(
        &data,
        &["--replay", example, "--sinks", sinks.to_str().unwrap(), "--playbooks", playbooks.to_str().unwrap()],
    );
    let d = data.to_str().unwrap();
    let mut waiting = Vec::new();
    wait_for("actions awaiting approval", 60, || {
        waiting = actions_json(d).into_iter().filter(|a| a["state"] == "awaiting-approval").collect();
        waiting.len() == 2
    });
    assert!(waiting.iter().all(|a| a["target"] == "shop/payments-db-0"), "{waiting:#?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(accepted(&log, "/hook").iter().all(|n| n["action"] != "update"), "nothing ran before the approval");
    let (srv_url, crt) = (format!("https://{}", srv.addr), ca(&data));
    let reader = token_file(tmp.path(), READ);
    let responder = token_file(tmp.path(), RESPOND);
    let id = |i: usize| waiting[i]["id"].as_i64().unwrap().to_string();
    let with = |verb: &str, i: usize, tok: &Path| {
        kustody(&["actions", verb, &id(i), "--server", &srv_url, "--ca", &crt, "--token-file", tok.to_str().unwrap()])
    };
    let r = with("approve", 0, &reader);
    assert!(r.code != 0 && r.stderr.contains("403"), "a reader cannot approve: {}", r.stderr);
    let r = with("approve", 0, &responder);
    assert!(r.code == 0 && r.stdout.contains("planned"), "{}{}", r.stdout, r.stderr);
    let r = with("approve", 0, &responder);
    assert!(r.code != 0 && r.stderr.contains("409"), "approved twice: {}", r.stderr);
    let r = with("reject", 1, &responder);
    assert!(r.code == 0 && r.stdout.contains("rejected"), "{}{}", r.stdout, r.stderr);
    wait_for("the approved action", 30, || {
        actions_json(d).iter().any(|a| a["id"] == waiting[0]["id"] && a["state"] == "applied")
    });
    wait_for("its notification", 30, || accepted(&log, "/hook").iter().any(|n| n["action"] == "update"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        accepted(&log, "/hook").iter().filter(|n| n["action"] == "update").count(),
        1,
        "the rejected one never ran"
    );
    let acts = actions_json(d);
    let approved = acts.iter().find(|a| a["id"] == waiting[0]["id"]).unwrap();
    assert_eq!(approved["detail"]["approved_by"], "alice");
    let rejected = acts.iter().find(|a| a["id"] == waiting[1]["id"]).unwrap();
    assert_eq!(
        (rejected["state"].as_str(), rejected["detail"]["rejected_by"].as_str()),
        (Some("rejected"), Some("alice"))
    );
}

/// `serve --watch-cluster`: the pods of the test cluster's watch tie every request's source IP
/// to the pod that held it, while three pods hold one IP in turn — one deleted under the
/// watch's eyes, one deleted while the watch was lost (its hold is closed by the relist).
#[test]
fn the_live_watch_ties_source_ips_to_pods_across_reuse_and_a_lost_watch() {
    use kustody_testcluster::TestCluster;
    let Some(c) = kustody_testcluster::client::cluster(TestCluster::builder().namespace("shop")) else {
        return;
    };
    let ip = "10.250.0.9";
    // Pods bound to a node no kubelet runs: their status (and IP) is what the test says.
    let hold = |name: &str| {
        c.apply(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
        c.request(
            "PATCH",
            &format!("/api/v1/namespaces/shop/pods/{name}/status"),
            Some(&serde_json::json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "containerStatuses": [{"name": "c", "containerID": format!("containerd://{name}0123456789abcdef")}]}})),
        )
        .unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // the server watches as a user holding exactly the shipped kustody-watcher role
    let role = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/rbac/kustody-watcher.yaml"))
        .unwrap();
    c.apply_yaml(&role).unwrap();
    let token = c.add_user_with_cluster_role("watcher", "kustody-watcher", None).unwrap();
    let kc = c.write_kubeconfig_for_token("watcher", &token).unwrap().to_str().unwrap().to_owned();
    let srv = start(&data, &["--watch-cluster", "--kubeconfig", &kc]);
    let d = data.to_str().unwrap().to_owned();
    let holders = || -> Vec<(String, bool)> {
        let r = kustody(&["whois", ip, "--store", &d, "-o", "json"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or_default();
        v["holders"]
            .as_array()
            .map(|a| a.iter().map(|h| (h["pod"].as_str().unwrap().to_owned(), !h["deleted"].is_null())).collect())
            .unwrap_or_default()
    };
    let held = |pod: &str, ended: bool| holders().contains(&(pod.to_owned(), ended));
    let mut n = 0;
    // a request from the IP, audited now
    let mut from_ip = || -> String {
        n += 1;
        let id = format!("from-ip-{n}");
        let now = kustody_model::time::format_rfc3339_nanos(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64,
        );
        let line = audit_line(&id, "system:serviceaccount:shop:web", "get", "configmaps", None)
            .replace("10.0.0.9", ip)
            .replace("2026-12-02T03:00:00.000000Z", &now)
            .replace("2026-12-02T03:00:00.100000Z", &now);
        assert_eq!(srv.client.post_audit(&event_list(&[&line])).status, 200);
        id
    };

    hold("web-a");
    wait_for("web-a in the stored IP history", 60, || held("shop/web-a", false));
    let a = from_ip();
    c.api().store.delete(&kustody_testcluster::resources::PODS, "shop", "web-a").unwrap();
    wait_for("web-a's deletion seen by the watch", 30, || held("shop/web-a", true));
    hold("web-b");
    wait_for("web-b", 30, || held("shop/web-b", false));
    let b = from_ip();
    // The watch is lost, and web-b is deleted meanwhile: no watcher sees that deletion.
    c.api().store.forget(&kustody_testcluster::resources::PODS, "shop", "web-b").unwrap();
    c.api().store.cut_watches();
    wait_for("the relist to end web-b's hold", 60, || held("shop/web-b", true));
    let nobody = from_ip();
    hold("web-c");
    wait_for("web-c", 30, || held("shop/web-c", false));
    let cc = from_ip();

    let v = srv.wait_items(&format!("/v1/events?ip={ip}"), 4);
    let by: std::collections::HashMap<String, String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["event"]["auditID"].as_str().unwrap().to_owned(), e["source_pod"].as_str().unwrap_or("-").to_owned())
        })
        .collect();
    assert_eq!(by[&a], "shop/web-a", "{by:?}");
    assert_eq!(by[&b], "shop/web-b", "{by:?}");
    assert_eq!(by[&nobody], "-", "after the relist web-b no longer holds it: {by:?}");
    assert_eq!(by[&cc], "shop/web-c", "{by:?}");
    // a finding from the address carries the pod behind it
    let now = kustody_model::time::format_rfc3339_nanos(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64,
    );
    let exec = audit_line("exec-from-ip", "system:serviceaccount:shop:web", "create", "pods", Some("exec"))
        .replace("10.0.0.9", ip)
        .replace("2026-12-02T03:00:00.000000Z", &now)
        .replace("2026-12-02T03:00:00.100000Z", &now)
        .replace(r#""code":200"#, r#""code":101"#)
        .replace("ResponseComplete", "ResponseStarted");
    assert_eq!(srv.client.post_audit(&event_list(&[&exec])).status, 200);
    let v = srv.wait_items("/v1/findings?user=system:serviceaccount:shop:web", 1);
    assert_eq!(v["items"][0]["detail"]["source_pod"]["pod"], "shop/web-c", "{}", v["items"][0]);
    let relisted = metric(&srv, "kustody_watch_closed_by_relist_total ").unwrap();
    assert_ne!(relisted, "kustody_watch_closed_by_relist_total 0");
    // a Falco alert carrying only web-c's container ID is stored on web-c
    let alert = serde_json::json!({"time": "2026-12-02T03:00:00.000000000Z", "rule": "Terminal shell in container",
        "priority": "Notice", "source": "syscall", "output": "shell", "output_fields": {"container.id": "web-c0123456"}});
    let r = srv.client.request("POST", "/v1/falco", Some(INGEST), alert.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = srv.wait_items("/v1/alerts?pod=web-c", 1);
    assert_eq!(v["items"][0]["namespace"], "shop");
}

/// One audit event by `user` at `t_ns` (the webhook's item form, without kind/apiVersion).
fn by(user: &str, verb: &str, resource: &str, sub: Option<&str>, name: &str, t_ns: i64, id: &str) -> String {
    let t = kustody_model::time::format_rfc3339_nanos(t_ns);
    let mut o = serde_json::json!({"resource": resource, "namespace": "monitoring", "name": name, "apiVersion": "v1"});
    if let Some(s) = sub {
        o["subresource"] = Value::from(s);
    }
    serde_json::json!({"level": "Metadata", "auditID": id, "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/monitoring/{resource}/{name}"), "verb": verb,
        "user": {"username": user}, "sourceIPs": ["10.244.3.3"], "userAgent": "metrics-agent/1.0",
        "objectRef": o, "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": t, "stageTimestamp": t})
    .to_string()
}

/// The live baseline: an agent reads one Secret every hour for eight days — its matches are
/// demoted once the behaviour is known (counted, by rule) — then execs into a pod for the
/// first time (a WARNING "new behaviour") and lists pods 200 times in a minute (a rate out of
/// its band). The baseline is stored and restored across a restart.
#[test]
fn the_live_baseline_demotes_known_reads_and_finds_new_behaviour_and_a_rate_spike() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);
    let agent = "system:serviceaccount:monitoring:metrics-agent";
    let day: i64 = 86_400 * 1_000_000_000;
    let hour = day / 24;
    let t0 = 1_795_000_000 * 1_000_000_000i64;
    let mut items: Vec<String> =
        (0..8 * 24).map(|h| by(agent, "get", "secrets", None, "tls", t0 + h * hour, &format!("r-{h}"))).collect();
    for chunk in items.chunks(100) {
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
            chunk.join(",")
        );
        assert_eq!(srv.client.post_audit(body.as_bytes()).status, 200);
    }
    let rule = "kustody Secret Read by Unexpected Service Account";
    wait_metric(&srv, &format!("kustody_baseline_demoted_total{{rule=\"{rule}\"}} 100"));
    let srv = {
        // the baseline is stored at shutdown and restored at the next start
        assert!(srv.stop().success());
        start(&data, &[])
    };
    let t = t0 + 8 * day + hour;
    items.clear();
    items.push(by(agent, "get", "secrets", None, "tls", t, "known-read"));
    items.push(by(agent, "create", "pods", Some("exec"), "web-0", t + 1_000_000_000, "first-exec"));
    items.extend(
        (0..200)
            .map(|i| by(agent, "list", "pods", None, "", t + 2 * 60_000_000_000 + i * 100_000_000, &format!("l-{i}"))),
    );
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    );
    assert_eq!(srv.client.post_audit(body.as_bytes()).status, 200);
    let v = srv.wait_items("/v1/findings?rule=kustody%20New%20Behaviour%20for%20Identity", 1);
    let f = &v["items"][0];
    assert_eq!(f["priority"], "Warning", "{f}");
    assert!(f["output"].as_str().unwrap().contains("create pods/exec in monitoring"), "{f}");
    let v = srv.wait_items("/v1/findings?rule=kustody%20Request%20Rate%20Out%20of%20Band", 1);
    assert!(v["items"][0]["output"].as_str().unwrap().contains("30 read requests"), "{}", v["items"][0]);
    // the known read after the restart is demoted too, not a finding
    wait_metric(&srv, &format!("kustody_baseline_demoted_total{{rule=\"{rule}\"}} 1"));
    let v = srv.get(&format!("/v1/findings?rule={}", rule.replace(' ', "%20"))).json();
    let last = v["items"].as_array().unwrap().iter().filter_map(|f| f["last_seen"].as_str()).max().unwrap().to_owned();
    assert!(last < kustody_model::time::format_rfc3339_nanos(t0 + 2 * day + hour), "no finding on known days: {last}");
    wait_metric(&srv, "kustody_new_values_total{kind=\"behaviour\"} 1");
    wait_metric(&srv, "kustody_rate_alarms_total 1");
    let m = srv.get("/metrics").body;
    assert!(
        m.contains("kustody_baseline_demoted_total{rule=\"kustody Secret Read by Unexpected Service Account\"} 1\n"),
        "only the new known read: {m}"
    );
    assert!(
        m.contains(&format!(
            "kustody_rate_requests_per_minute{{namespace=\"monitoring\",identity=\"{agent}\",class=\"read\"}}"
        )),
        "{m}"
    );
}

fn user_add(data: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kustody"))
        .args(["serve", "user", "add", name, "--role", role, "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The session cookie a login answer sets (`name=value`).
fn session_cookie(r: &Reply) -> String {
    let c = header(r, "set-cookie").unwrap_or_else(|| panic!("no cookie: {}", r.headers));
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(c.contains(attr), "cookie lacks {attr}: {c}");
    }
    c.split(';').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).unwrap_or_else(|| panic!("no CSRF field: {html}"));
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The console: local users log in (argon2), see the replayed attack's incident and its story,
/// and a responder acknowledges it, assigns it and adds a note — with the page's CSRF token
/// only; a viewer is refused, a session cannot change anything through the API without the
/// token, pages carry a strict CSP, and logging out ends the session.
#[test]
fn the_console_shows_incidents_to_logged_in_users_and_only_responders_change_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    user_add(&data, "alice", "responder", "alice's long password");
    user_add(&data, "bob", "viewer", "bob's long password!");
    let r = kustody(&["serve", "user", "list", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(r.stdout, "alice\tresponder\nbob\tviewer\n");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let srv = start(&data, &["--replay", example]);
    wait_for("the replayed attack's incident", 60, || {
        srv.get("/v1/incidents").json()["incidents"].as_array().is_some_and(|a| !a.is_empty())
    });
    let c = &srv.client;

    // not logged in: to the login page, remembering where to go back
    let r = c.browser("GET", "/", None, "");
    assert_eq!((r.status, header(&r, "location")), (303, Some("/login?next=%2F")));
    let r = c.browser("GET", "/login", None, "");
    assert_eq!(r.status, 200);
    assert!(header(&r, "content-security-policy").unwrap().contains("script-src 'self'"), "{}", r.headers);
    let r = c.browser("POST", "/login", None, "user=alice&password=wrong+password+here&next=%2F");
    assert_eq!(r.status, 401);
    assert!(header(&r, "set-cookie").is_none());
    // an open redirect is not followed
    let r = c.browser("POST", "/login", None, "user=alice&password=alice%27s+long+password&next=%2F%2Fevil.example");
    assert_eq!((r.status, header(&r, "location")), (303, Some("/")));
    let alice = session_cookie(&r);

    // the incident list and the incident's story
    let r = c.browser("GET", "/", Some(&alice), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#"id="incidents""#) && r.body.contains("/incidents/1"), "{}", r.body);
    assert!(r.body.contains("system:serviceaccount:shop:web-frontend"), "{}", r.body);
    assert!(!r.body.contains("<script>") || r.body.contains(r#"<script src="/assets/app.js""#));
    let r = c.browser("GET", "/incidents/1", Some(&alice), "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("kustody Attack Chain from Enumeration to Escalation"), "{}", r.body);
    assert!(r.body.contains(r#"id="story""#) && r.body.contains("Acknowledge"), "{}", r.body);
    let csrf = csrf_of(&r.body);
    assert_eq!(c.browser("GET", "/assets/app.js", None, "").status, 200);

    // changes need the page's token
    let r = c.browser("POST", "/incidents/1/change", Some(&alice), "status=acknowledged");
    assert_eq!(r.status, 403);
    let form = format!("csrf={csrf}&status=acknowledged");
    let r = c.browser("POST", "/incidents/1/change", Some(&alice), &form);
    assert_eq!((r.status, header(&r, "location")), (303, Some("/incidents/1")));
    let r =
        c.browser("POST", "/incidents/1/change", Some(&alice), &format!("csrf={csrf}&note=isolating+payments-db-0"));
    assert_eq!(r.status, 303);
    let v = srv.get("/v1/incidents/1").json();
    assert_eq!(v["status"], "acknowledged");
    assert_eq!(v["notes"][0]["author"], "alice");
    assert!(!v["findings"].as_array().unwrap().is_empty(), "the incident's findings are listed: {v}");
    // the API with the cookie: reads yes, changes only with X-CSRF-Token
    assert_eq!(c.browser("GET", "/v1/incidents", Some(&alice), "").status, 200);
    assert_eq!(c.browser("POST", "/v1/incidents/1", Some(&alice), r#"{"status":"resolved"}"#).status, 403);

    // entity pages: the pod exec'd into, the attacking identity, its source IP
    let r = c.browser("GET", "/pod?ns=shop&name=payments-db-0", Some(&alice), "");
    assert_eq!(r.status, 200);
    let about = &r.body[r.body.find(r#"id="about-pod""#).unwrap()..];
    assert!(about.contains("exec") && about.contains("web-frontend"), "{}", r.body);
    let r = c.browser("GET", "/identity?user=system%3Aserviceaccount%3Ashop%3Aweb-frontend", Some(&alice), "");
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("kustody Attack Chain from Enumeration to Escalation") && r.body.contains(r#"id="timeline""#)
    );
    assert!(r.body.contains(r#"href="/incidents/1""#), "its incident is linked");
    let r = c.browser("GET", "/ip?ip=10.244.1.17", Some(&alice), "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains(r#"id="from-ip""#) && r.body.contains("web-frontend"), "{}", r.body);
    assert_eq!(c.browser("GET", "/ip?ip=not-an-ip", Some(&alice), "").status, 400);
    assert_eq!(c.browser("GET", "/pod", Some(&alice), "").status, 400);
    assert_eq!(c.browser("GET", "/ip?ip=10.244.1.17", None, "").status, 303);
    // the incident page links to them
    let r = c.browser("GET", "/incidents/1", Some(&alice), "");
    assert!(r.body.contains(r#"href="/identity?user=system%3Aserviceaccount%3Ashop%3Aweb-frontend""#), "{}", r.body);
    assert!(r.body.contains(r#"href="/ip?ip=10.244.1.17""#), "{}", r.body);

    // a viewer reads but cannot change
    let r = c.browser("POST", "/login", None, "user=bob&password=bob%27s+long+password%21");
    let bob = session_cookie(&r);
    let r = c.browser("GET", "/incidents/1", Some(&bob), "");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("Acknowledge") && !r.body.contains("Add note"), "no buttons for a viewer");
    let bob_csrf = csrf_of(&r.body);
    let r = c.browser("POST", "/incidents/1/change", Some(&bob), &format!("csrf={bob_csrf}&status=resolved"));
    assert_eq!(r.status, 403);
    assert_eq!(srv.get("/v1/incidents/1").json()["status"], "acknowledged");

    // an API token logs in too
    let r = c.browser("POST", "/login", None, &format!("token={READ}"));
    assert_eq!(r.status, 303);
    let _ = session_cookie(&r);

    // logging out ends the session
    let r = c.browser("POST", "/logout", Some(&alice), &format!("csrf={csrf}"));
    assert_eq!(r.status, 303);
    assert_eq!(c.browser("GET", "/", Some(&alice), "").status, 303);
}

/// The console's search (filters, condition, histogram), charts, rules (hits, switches kept
/// across a restart, retro-hunt) and evidence list, with each role's limits.
#[test]
fn the_console_searches_charts_switches_rules_and_retro_hunts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    user_add(&data, "alice", "responder", "alice's long password");
    user_add(&data, "bob", "viewer", "bob's long password!");
    user_add(&data, "carol", "admin", "carol's long password");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let srv = start(&data, &["--replay", example]);
    wait_for("the replayed attack's incident", 60, || {
        srv.get("/v1/incidents").json()["incidents"].as_array().is_some_and(|a| !a.is_empty())
    });
    let login = |srv: &Server, user: &str, password: &str| {
        let body =
            format!("user={user}&password={}", password.replace(' ', "+").replace('\'', "%27").replace('!', "%21"));
        session_cookie(&srv.client.browser("POST", "/login", None, &body))
    };
    let (alice, bob, carol) = (
        login(&srv, "alice", "alice's long password"),
        login(&srv, "bob", "bob's long password!"),
        login(&srv, "carol", "carol's long password"),
    );
    let c = &srv.client;
    let sa = "system%3Aserviceaccount%3Ashop%3Aweb-frontend";
    let window = "since=2026-11-19T00%3A00%3A00Z&until=2026-11-21T00%3A00%3A00Z";

    // search by identity: exact per-minute counts, the timeline of its requests
    let r = c.browser("GET", &format!("/search?{window}&user={sa}"), Some(&bob), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = srv.get(&format!("/v1/events?user={sa}&limit=1000")).json()["items"].as_array().unwrap().len();
    assert!(stored > 3, "the example has the identity's requests");
    assert!(r.body.contains(r#"id="histogram""#) && r.body.contains("every match in the window"), "{}", r.body);
    assert!(r.body.contains(&format!("({stored} in all")), "the histogram counts every request: {}", r.body);
    assert_eq!(r.body.matches("<tr><td>").count(), stored, "{}", r.body);
    // a condition: binned from the matches themselves
    let r = c.browser(
        "GET",
        &format!("/search?{window}&where=ka.target.resource%3Dsecrets+and+ka.user.name%3D{sa}"),
        Some(&bob),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = &r.body[r.body.find(r#"id="results""#).unwrap()..];
    assert!(results.contains("secrets") && results.contains("web-frontend"), "{}", r.body);
    assert!(
        !results.contains("selfsubject") && !results.contains("endpointslice"),
        "only its secret requests: {}",
        r.body
    );
    let r = c.browser("GET", &format!("/search?{window}&where=ka.verb%3D"), Some(&bob), "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains(r#"id="search-error""#), "{}", r.body);
    assert_eq!(c.browser("GET", "/search?since=yesterday-ish", Some(&bob), "").status, 400);
    assert_eq!(c.browser("GET", "/search", None, "").status, 303, "logged-in users only");

    // charts: namespaces, identities, findings by priority
    let r = c.browser("GET", "/charts?since=3650d", Some(&bob), "");
    assert_eq!(r.status, 200, "{}", r.body);
    for id in ["findings-chart", "namespaces-chart", "identities-chart"] {
        assert!(r.body.contains(&format!(r#"id="{id}""#)), "{id}: {}", r.body);
    }
    assert!(r.body.contains("kube-system") && r.body.contains("system:kube-controller-manager"), "{}", r.body);
    assert!(r.body.contains("Critical"), "{}", r.body);

    // rules: listed with hits; retro-hunt finds the example's matches again
    let r = c.browser("GET", "/rules", Some(&bob), "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("kustody Attack Chain from Enumeration to Escalation"), "{}", r.body);
    assert!(!r.body.contains("Switch off"), "no switches for a viewer");
    assert_eq!(
        c.browser("GET", "/rules/hunt?since=3650d", Some(&bob), "").status,
        403,
        "retro-hunts are for responders"
    );
    let hunt = |who: &str| {
        let r = c.browser("GET", "/rules/hunt?since=3650d", Some(who), "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let before = hunt(&alice);
    let rule = "kustody Exec by Service Account";
    assert!(before.contains(rule) && before.contains(r#"id="hunt-hits""#), "{before}");
    // switching a rule off: admins only, with the page's token, kept across a restart
    let body = |who: &str, enable: u8| {
        let csrf = csrf_of(&c.browser("GET", "/rules", Some(who), "").body);
        format!("csrf={csrf}&name={}&enable={enable}", rule.replace(' ', "+"))
    };
    assert_eq!(c.browser("POST", "/rules/toggle", Some(&alice), &body(&alice, 0)).status, 403);
    assert_eq!(c.browser("POST", "/rules/toggle", Some(&carol), "name=x&enable=0").status, 403);
    let r = c.browser("POST", "/rules/toggle", Some(&carol), &body(&carol, 0));
    assert_eq!(r.status, 303, "{}", r.body);
    let r = c.browser("GET", &format!("/rules?q={}", rule.replace(' ', "+")), Some(&carol), "");
    assert!(r.body.contains("switched off") && r.body.contains("Switch on"), "{}", r.body);
    assert!(!hunt(&alice).contains(&format!("<td>{rule}</td>")), "a switched-off rule is not evaluated");
    drop(srv);
    let srv = start(&data, &[]);
    let c = &srv.client;
    let carol = login(&srv, "carol", "carol's long password");
    let r = c.browser("GET", &format!("/rules?q={}", rule.replace(' ', "+")), Some(&carol), "");
    assert!(r.body.contains("switched off"), "still off after a restart: {}", r.body);
    let csrf = csrf_of(&r.body);
    let on = format!("csrf={csrf}&name={}&enable=1", rule.replace(' ', "+"));
    assert_eq!(c.browser("POST", "/rules/toggle", Some(&carol), &on).status, 303);
    let r = c.browser("GET", "/rules/hunt?since=3650d", Some(&carol), "");
    assert!(r.body.contains(&format!("<td>{rule}</td>")), "on again: {}", r.body);

    // status: no gap without a followed log, the store accepting
    let r = c.browser("GET", "/status", Some(&carol), "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("none: every event") && r.body.contains("accepting events"), "{}", r.body);

    // evidence: none collected by this server yet; a bundle name cannot leave the directory
    let r = c.browser("GET", "/evidence", Some(&carol), "");
    assert!(r.status == 200 && r.body.contains("No bundle collected"), "{}", r.body);
    assert_eq!(c.browser("GET", "/evidence?bundle=..%2F..%2Fetc", Some(&carol), "").status, 404);
}

/// Responding from the console on the test cluster: the attack becomes an incident; a
/// responder opens the quarantine plan (the dry run of the real flow), gives a reason and
/// confirms — in Chromium when it is installed — and sees the outcome; evidence is collected,
/// listed, shown and verified; release is planned and applied; a viewer is refused each step.
#[test]
fn a_responder_quarantines_collects_and_releases_from_the_console_on_the_test_cluster() {
    use kustody_testcluster::TestCluster;
    let Some(c) = kustody_testcluster::client::cluster(TestCluster::builder().namespace("shop")) else {
        return;
    };
    c.apply(serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web-sa", "namespace": "shop"}})).unwrap();
    c.grant(
        &serde_json::json!({"kind": "ServiceAccount", "name": "web-sa", "namespace": "shop"}),
        "web-sa",
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                           {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]),
        Some("shop"),
    )
    .unwrap();
    c.apply(web_deployment("shop")).unwrap();
    let pods: Vec<String> = c
        .wait_for(Duration::from_secs(30), || {
            let running: Vec<String> = c
                .list("pods", Some("shop"))
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
                .collect();
            (running.len() >= 3).then_some(running)
        })
        .unwrap();
    let a = pods[0].clone();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    user_add(&data, "alice", "responder", "alice's long password");
    user_add(&data, "bob", "viewer", "bob's long password!");
    let audit = c.audit_log_path().to_str().unwrap().to_owned();
    let kc = c.kubeconfig_path().to_str().unwrap().to_owned();
    let srv = start(&data, &["--follow", &audit, "--kubeconfig", &kc]);
    attack(&c, &bound_token(&c, "shop", "web-sa", &a), "shop", &a, &["enumerate", "secrets", "exec"]);
    wait_for("the attack's incident", 60, || {
        srv.get("/v1/incidents").json()["incidents"].as_array().is_some_and(|x| !x.is_empty())
    });
    let id = srv.get("/v1/incidents").json()["incidents"][0]["id"].as_i64().unwrap();
    let cl = &srv.client;
    let alice = session_cookie(&cl.browser("POST", "/login", None, "user=alice&password=alice%27s+long+password"));
    let bob = session_cookie(&cl.browser("POST", "/login", None, "user=bob&password=bob%27s+long+password%21"));
    let pod = format!("shop/{a}");
    let act = |action: &str| format!("/act?action={action}&pod=shop%2F{a}&incident={id}&allow_dns=1");
    let action_state = |action: &str| -> Option<Value> {
        srv.get(&format!("/v1/actions?incident={id}")).json()["actions"]
            .as_array()
            .and_then(|x| x.iter().find(|r| r["action"] == action && r["target"] == pod.as_str()).cloned())
    };
    let settled = |action: &str| {
        wait_for(&format!("the console's {action}"), 120, || {
            action_state(action).is_some_and(|r| !matches!(r["state"].as_str(), Some("planned" | "running")))
        });
        action_state(action).unwrap()
    };

    // the incident offers its pods' actions to a responder, not to a viewer
    let r = cl.browser("GET", &format!("/incidents/{id}"), Some(&alice), "");
    assert!(r.body.contains(r#"id="respond""#) && r.body.contains(&format!("pod=shop%2F{a}")), "{}", r.body);
    assert!(!cl.browser("GET", &format!("/incidents/{id}"), Some(&bob), "").body.contains(r#"id="respond""#));
    let r = cl.browser("GET", &act("quarantine"), Some(&bob), "");
    assert_eq!(r.status, 403, "a viewer sees no plan");
    // the plan: the dry run of the real flow, nothing changed yet
    let r = cl.browser("GET", &act("quarantine"), Some(&alice), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#"id="plan""#) && r.body.contains("networkpolicies"), "{}", r.body);
    assert!(r.body.contains(r#"id="confirm""#) && r.body.contains(r#"name="reason""#), "{}", r.body);
    assert!(c.get("pods", "shop", &a).unwrap()["metadata"]["labels"].get("kustody.io/quarantined").is_none());
    let csrf = csrf_of(&r.body);
    let form = |csrf: &str, reason: &str| {
        format!("csrf={csrf}&action=quarantine&pod=shop%2F{a}&incident={id}&allow_dns=1&reason={reason}")
    };
    assert_eq!(cl.browser("POST", "/act", Some(&alice), &form(&csrf, "")).status, 400, "a reason is required");
    assert_eq!(
        cl.browser("POST", "/act", Some(&alice), &form("forged", "x")).status,
        403,
        "the page's token is required"
    );
    let bob_csrf = csrf_of(&cl.browser("GET", "/", Some(&bob), "").body);
    assert_eq!(cl.browser("POST", "/act", Some(&bob), &form(&bob_csrf, "x")).status, 403, "a viewer cannot quarantine");
    assert!(action_state("quarantine").is_none(), "nothing was planned by the refused requests");

    let t0 = Instant::now();
    if kustody_testkit::webdriver::available() {
        use kustody_testkit::webdriver::Browser;
        let long = Duration::from_secs(30);
        let b = Browser::start();
        let base = format!("https://{}", cl.addr);
        b.goto(&format!("{base}/incidents/{id}"));
        b.type_in(&b.wait("#user", long), "alice");
        b.type_in(&b.wait("#password", long), "alice's long password");
        b.click(&b.wait("form[action='/login'] button[type=submit]", long));
        b.click(&b.wait(&format!("#respond a[href*='action=quarantine'][href*='{a}']"), long));
        b.wait("#plan", long);
        assert!(b.text_of("#plan").contains("networkpolicies"), "{}", b.source());
        if let Some(dir) = std::env::var_os("KUSTODY_SCREENSHOTS") {
            b.screenshot(&PathBuf::from(dir).join("console-quarantine-plan.png")).unwrap();
        }
        b.type_in(&b.wait("#reason", long), "exec with a stolen token; containing while we collect");
        b.click(&b.wait("#confirm button[type=submit]", long));
        b.answer_dialog(true).unwrap();
        b.wait("#actions", long);
        let took = b.wait_text("applied", Duration::from_secs(120));
        eprintln!("the quarantine's outcome showed on the incident page {took:?} after confirming");
        b.goto(&format!("{base}/pod?ns=shop&name={a}"));
        b.wait("#quarantined", long);
    } else {
        eprintln!("chromium/chromedriver missing: confirming over HTTP instead of in the browser");
        let r = cl.browser("POST", "/act", Some(&alice), &form(&csrf, "exec+with+a+stolen+token"));
        assert_eq!((r.status, header(&r, "location")), (303, Some(format!("/incidents/{id}#actions").as_str())));
    }
    let q = settled("quarantine");
    eprintln!("console quarantine: confirmed → {} in {:?}", q["state"], t0.elapsed());
    assert_eq!(q["state"], "applied", "{q:#}");
    assert_eq!(q["playbook"], "console");
    assert_eq!(q["detail"]["requested_by"], "console:alice", "{q:#}");
    assert_eq!(c.get("pods", "shop", &a).unwrap()["metadata"]["labels"]["kustody.io/quarantined"], "true");
    let log = std::fs::read_to_string(data.join("actions.jsonl")).unwrap();
    assert!(
        log.lines().any(|l| l.contains(r#""action":"quarantine""#)
            && l.contains(r#""requestedBy":"console:alice""#)
            && l.contains(r#""outcome":"verified""#)),
        "the action log names the person: {log}"
    );
    let v = srv.get(&format!("/v1/incidents/{id}")).json();
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["author"] == "alice" && n["text"].as_str().unwrap().starts_with("quarantine of shop/")),
        "{v:#}"
    );
    let r = cl.browser("GET", &format!("/pod?ns=shop&name={a}"), Some(&bob), "");
    assert!(r.body.contains(r#"id="quarantined""#) && r.body.contains("console:alice"), "{}", r.body);

    // evidence from the console: collected, listed, its manifest shown, verified
    let csrf = csrf_of(&cl.browser("GET", &act("collect"), Some(&alice), "").body);
    let r = cl.browser(
        "POST",
        "/act",
        Some(&alice),
        &format!("csrf={csrf}&action=collect&pod=shop%2F{a}&incident={id}&reason=keep+it"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let col = settled("collect");
    assert_eq!(col["state"], "applied", "{col:#}");
    let bundle = PathBuf::from(col["detail"]["bundle"].as_str().unwrap());
    let name = bundle.file_name().unwrap().to_str().unwrap().to_owned();
    let r = cl.browser("GET", "/evidence", Some(&bob), "");
    assert!(r.body.contains(&name), "{}", r.body);
    let r = cl.browser("GET", &format!("/evidence?bundle={name}"), Some(&bob), "");
    assert_eq!(r.status, 200);
    if let (Some(dir), true) = (std::env::var_os("KUSTODY_SCREENSHOTS"), kustody_testkit::webdriver::available()) {
        let b = kustody_testkit::webdriver::Browser::start();
        let base = format!("https://{}", cl.addr);
        b.goto(&format!("{base}/evidence?bundle={name}"));
        b.type_in(&b.wait("#user", Duration::from_secs(30)), "bob");
        b.type_in(&b.wait("#password", Duration::from_secs(30)), "bob's long password!");
        b.click(&b.wait("form[action='/login'] button[type=submit]", Duration::from_secs(30)));
        b.wait("#artifacts", Duration::from_secs(30));
        b.screenshot(&PathBuf::from(&dir).join("console-evidence.png")).unwrap();
        b.goto(&format!("{base}/incidents/{id}"));
        b.wait("#actions", Duration::from_secs(30));
        b.screenshot(&PathBuf::from(&dir).join("console-incident-actions.png")).unwrap();
    }
    assert!(r.body.contains(r#"id="artifacts""#) && r.body.contains("requested by console:alice"), "{}", r.body);
    let manifest: Value = serde_json::from_slice(&std::fs::read(bundle.join("MANIFEST.json")).unwrap()).unwrap();
    let first = manifest["artifacts"][0]["sha256"].as_str().unwrap();
    assert!(r.body.contains(first), "artifact hashes are shown");
    let csrf = csrf_of(&r.body);
    let r = cl.browser("POST", "/evidence/verify", Some(&bob), &format!("csrf={csrf}&bundle={name}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Intact: every hash matches."), "{}", r.body);
    // a changed artifact is caught
    let art = bundle.join(manifest["artifacts"][0]["path"].as_str().unwrap());
    let mut perms = std::fs::metadata(&art).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&art, perms).unwrap();
    std::fs::write(&art, b"tampered").unwrap();
    let r = cl.browser("POST", "/evidence/verify", Some(&bob), &format!("csrf={csrf}&bundle={name}"));
    assert_eq!(r.status, 409);
    assert!(r.body.contains("NOT intact") && r.body.contains("Changed"), "{}", r.body);

    // release: planned, then applied
    let r = cl.browser("GET", &act("release"), Some(&alice), "");
    assert!(r.body.contains(r#"id="plan""#) && r.body.contains(r#"id="next""#), "{}", r.body);
    let csrf = csrf_of(&r.body);
    let r = cl.browser(
        "POST",
        "/act",
        Some(&alice),
        &format!("csrf={csrf}&action=release&pod=shop%2F{a}&incident={id}&reason=contained+and+collected"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(settled("release")["state"], "applied");
    assert!(c.get("pods", "shop", &a).unwrap()["metadata"]["labels"].get("kustody.io/quarantined").is_none());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real OpenID Connect provider: panva's oidc-provider on Node.js (scripts/test installs it
/// into target/npm), on `port`, knowing client `kustody` with `secret` and `redirect`.
fn oidc_provider(dir: &Path, port: u16, secret: &str, redirect: &str) -> Option<std::process::Child> {
    let npm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/npm");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok || !npm.join("node_modules/oidc-provider").is_dir() {
        let why = "node or oidc-provider is missing (scripts/test installs oidc-provider into target/npm)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIP: {why}");
        return None;
    }
    // ESM resolves packages from the script's own directory
    let script = npm.join(format!("kustody-idp-{}.mjs", std::process::id()));
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp/oidc-provider.mjs"), &script).unwrap();
    let log = std::fs::File::create(dir.join("idp.log")).unwrap();
    let child = Command::new("node")
        .arg(&script)
        .env("PORT", port.to_string())
        .env("CLIENT_SECRET", secret)
        .env("REDIRECT_URI", redirect)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the OpenID provider did not start: {}",
            std::fs::read_to_string(dir.join("idp.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child)
}

/// Single sign-on through a real OpenID Connect provider, in Chromium: the provider's login,
/// back to the console with the role its groups map to; a person in no mapped group, and a
/// callback this browser did not start, are refused.
#[test]
fn the_console_logs_in_through_openid_connect() {
    use kustody_testkit::webdriver::{available, Browser};
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (idp_port, port) = (free_port(), free_port());
    let public = format!("https://127.0.0.1:{port}");
    let secret = "kustody-test-client-secret-0123456789";
    let Some(mut idp) = oidc_provider(tmp.path(), idp_port, secret, &format!("{public}/login/oidc/callback")) else {
        return;
    };
    let secret_file = tmp.path().join("oidc-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let srv = start(
        &data,
        &[
            "--listen",
            &listen,
            "--public-url",
            &public,
            "--oidc-issuer",
            &issuer,
            "--oidc-client-id",
            "kustody",
            "--oidc-client-secret-file",
            secret_file.to_str().unwrap(),
            "--oidc-role",
            "sec-admins=admin",
            "--oidc-role",
            "sec-viewers=viewer",
            "--oidc-scope",
            "email",
            "--oidc-scope",
            "groups",
        ],
    );
    // a callback this browser did not start is refused
    let r = srv.client.browser("GET", "/login/oidc/callback?code=stolen&state=guessed", None, "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("state mismatch"), "{}", r.body);
    let log = std::fs::read_to_string(data.parent().unwrap().join("idp.log")).unwrap_or_default();
    assert!(!log.contains(secret), "the secret is not echoed");

    let long = Duration::from_secs(30);
    let b = Browser::start();
    let sso = |user: &str| {
        // a new person: the provider's own session (single sign-on) forgotten first
        b.goto(&format!("{issuer}/.well-known/openid-configuration"));
        b.clear_cookies().unwrap();
        b.goto(&format!("{public}/login"));
        b.click(&b.wait("#oidc-login", long));
        b.type_in(&b.wait("input[name=login]", long), user);
        b.type_in(&b.wait("input[name=password]", long), "anything");
        b.click(&b.wait("button[type=submit]", long));
    };
    sso("admin-ana");
    b.wait("#incidents", long);
    assert!(b.text_of("nav").contains("admin-ana@example.test (admin)"), "{}", b.source());
    b.goto(&format!("{public}/rules"));
    b.wait("#rules", long);
    assert!(b.source().contains("Switch off"), "an admin may switch rules");
    b.click(&b.wait("nav form[action='/logout'] button", long));
    b.wait("#user", long);
    sso("victor");
    b.wait("#incidents", long);
    assert!(b.text_of("nav").contains("victor@example.test (viewer)"), "{}", b.source());
    b.click(&b.wait("nav form[action='/logout'] button", long));
    b.wait("#user", long);
    sso("guest-gil");
    b.wait("#oidc-error", long);
    assert!(b.text_of("#oidc-error").contains("has no console role"), "{}", b.source());
    drop(srv);
    let _ = idp.kill();
    let _ = idp.wait();
}

/// The console in Debian's Chromium (headless, through chromedriver): log in, see the incident
/// of the replayed attack, open its story, acknowledge it, watch a new incident appear on the
/// open list without a reload, and a viewer finds no button to act. With
/// `KUSTODY_SCREENSHOTS=DIR` it saves the pages' screenshots there (docs/screenshots).
#[test]
fn the_console_works_in_a_real_browser() {
    use kustody_testkit::webdriver::{available, Browser};
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    user_add(&data, "alice", "responder", "alice's long password");
    user_add(&data, "bob", "viewer", "bob's long password!");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/attack-chain.jsonl");
    let srv = start(&data, &["--replay", example]);
    wait_for("the replayed attack's incident", 60, || {
        srv.get("/v1/incidents").json()["incidents"].as_array().is_some_and(|a| !a.is_empty())
    });
    let shots = std::env::var_os("KUSTODY_SCREENSHOTS").map(PathBuf::from);
    let shot = |b: &Browser, name: &str| {
        if let Some(dir) = &shots {
            std::fs::create_dir_all(dir).unwrap();
            b.screenshot(&dir.join(name)).unwrap();
        }
    };
    let base = format!("https://{}", srv.client.addr);
    let long = Duration::from_secs(20);
    let b = Browser::start();
    let login = |user: &str, password: &str| {
        b.goto(&format!("{base}/"));
        let field = b.wait("#user", long);
        b.type_in(&field, user);
        b.type_in(&b.wait("#password", long), password);
        b.click(&b.wait("form[action='/login'] button[type=submit]", long));
        b.wait("#incidents", long);
    };
    login("alice", "alice's long password");
    assert!(b.text_of("#incidents").contains("system:serviceaccount:shop:web-frontend"), "{}", b.source());
    shot(&b, "console-incidents.png");

    // the incident's story, and acknowledging it
    b.click(&b.wait("#incidents a[href='/incidents/1']", long));
    b.wait("#story", long);
    assert!(b.text_of("#story").contains("kustody Attack Chain from Enumeration to Escalation"), "{}", b.source());
    shot(&b, "console-incident.png");
    let ack = b.wait("form[action='/incidents/1/change'] input[value=acknowledged] ~ button", long);
    b.click(&ack);
    b.wait_text("acknowledged", long);
    assert_eq!(srv.get("/v1/incidents/1").json()["status"], "acknowledged");

    // from the story to the identity's page, and the pod exec'd into
    b.click(&b.wait("a[href^='/identity?user=']", long));
    b.wait("#timeline", long);
    assert!(b.text_of("#findings").contains("kustody Attack Chain from Enumeration to Escalation"));
    b.goto(&format!("{base}/pod?ns=shop&name=payments-db-0"));
    assert!(b.text_of("#about-pod").contains("exec"), "{}", b.source());
    shot(&b, "console-pod.png");

    // a search: the identity's requests, with their histogram
    b.goto(&format!("{base}/search"));
    let since = b.wait("#search-form input[name=since]", long);
    b.script("document.querySelector('#search-form input[name=since]').value = ''").unwrap();
    b.type_in(&since, "2026-11-20T00:00:00Z");
    b.type_in(&b.wait("#search-form input[name=user]", long), "system:serviceaccount:shop:web-frontend");
    b.click(&b.wait("#search-form button[type=submit]", long));
    b.wait("#histogram", long);
    assert!(b.text_of("#results").contains("secrets"), "{}", b.source());
    shot(&b, "console-search.png");
    b.goto(&format!("{base}/charts?since=30d"));
    b.wait("#namespaces-chart", long);
    shot(&b, "console-charts.png");
    b.goto(&format!("{base}/rules"));
    b.wait("#rules", long);
    shot(&b, "console-rules.png");

    // a new incident appears on the open list by itself
    b.goto(&format!("{base}/"));
    b.wait("#incidents", long);
    std::thread::sleep(Duration::from_millis(500)); // the page's stream is open
    let now = kustody_model::time::format_rfc3339_nanos(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64,
    );
    let exec = audit_line("browser-1", "system:serviceaccount:shop:intruder", "create", "pods", Some("exec"))
        .replace("2026-12-02T03:00:00.000000Z", &now)
        .replace("2026-12-02T03:00:00.100000Z", &now)
        .replace(r#""code":200"#, r#""code":101"#)
        .replace("ResponseComplete", "ResponseStarted");
    assert_eq!(srv.client.post_audit(&event_list(&[&exec])).status, 200);
    let took = b.wait_text("system:serviceaccount:shop:intruder", long);
    eprintln!("a new incident appeared on the open incidents page {took:?} after its event was posted");

    // a viewer reads, and finds nothing to press
    b.click(&b.wait("nav form[action='/logout'] button", long));
    b.wait("#user", long);
    login("bob", "bob's long password!");
    b.goto(&format!("{base}/incidents/1"));
    b.wait("#story", long);
    assert!(b.find("form[action='/incidents/1/change']").is_none(), "no action for a viewer");
}

/// `--store postgres://…` on a throwaway PostgreSQL server: the recorded webhook traffic is
/// stored once and detected, nothing lands in a local SQLite file, `kill -9` loses nothing
/// acknowledged, and while PostgreSQL is down the webhook is answered 503 with Retry-After
/// (the apiserver retries) until it is back.
#[test]
fn serve_keeps_its_store_in_postgresql_through_kill_9_and_an_outage() {
    let Some(pg) = kustody_testkit::postgres::Postgres::start() else { return };
    pg.create_db("kustody");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pw = tmp.path().join("pg.password");
    std::fs::write(&pw, format!("{}\n", pg.password())).unwrap();
    let url = format!("postgres://kustody@127.0.0.1:{}/kustody?sslmode=disable", pg.port());
    let args = ["--store", url.as_str(), "--store-password-file", pw.to_str().unwrap(), "--cluster", "prod-eu"];
    let srv = start(&data, &args);

    if let Some((traffic, n)) = recorded("batch-traffic.json") {
        let r = srv.post_audit(&traffic);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["stored"], n as u64);
        let again = srv.post_audit(&traffic);
        assert_eq!(again.json()["duplicates"], n as u64, "{}", again.body);
        let (exec, _) = recorded("blocking-exec-response-started.json").unwrap();
        assert_eq!(srv.post_audit(&exec).status, 200);
        let f = srv.wait_items("/v1/findings", 1);
        assert!(f["items"].as_array().unwrap().iter().any(|x| x["user"] == "realk8s-admin"), "{f}");
        let v = srv.wait_items("/v1/events?user=realk8s-admin&limit=5", 5);
        assert_eq!(v["items"].as_array().unwrap().len(), 5);
        // every event and finding carries the cluster, and is found by it
        let v = srv.wait_items("/v1/events?cluster=prod-eu&limit=5", 5);
        assert!(v["items"].as_array().unwrap().iter().all(|e| e["cluster"] == "prod-eu"), "{v}");
        let none = srv.request("GET", "/v1/events?cluster=prod-us", Some(READ), b"").json();
        assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
        let f = srv.wait_items("/v1/findings?cluster=prod-eu", 1);
        assert!(f["items"].as_array().unwrap().iter().all(|x| x["cluster"] == "prod-eu"), "{f}");
        let inc = srv.request("GET", "/v1/incidents?cluster=prod-eu", Some(READ), b"").json();
        assert!(!inc["incidents"].as_array().unwrap().is_empty(), "{inc}");
        let inc = srv.request("GET", "/v1/incidents?cluster=prod-us", Some(READ), b"").json();
        assert!(inc["incidents"].as_array().unwrap().is_empty(), "{inc}");
        // the console lists them from PostgreSQL too, with their cluster, and filters by it
        let cookie = session_cookie(&srv.client.browser("POST", "/login", None, &format!("token={READ}")));
        let page = srv.client.browser("GET", "/?status=all&cluster=prod-eu", Some(&cookie), "");
        assert_eq!(page.status, 200);
        assert!(page.body.contains("<td>prod-eu</td>"), "{}", page.body);
        let page = srv.client.browser("GET", "/?status=all&cluster=prod-us", Some(&cookie), "");
        assert!(page.body.contains("No incident matches."), "{}", page.body);
        let search = srv.client.browser("GET", "/search?cluster=prod-eu&user=realk8s-admin", Some(&cookie), "");
        assert_eq!(search.status, 200);
        assert!(search.body.contains("realk8s-admin"), "{}", search.body);
        // entity pages narrow to a cluster, and their links keep it
        let who = srv.client.browser("GET", "/identity?user=realk8s-admin&cluster=prod-eu", Some(&cookie), "");
        assert_eq!(who.status, 200);
        assert!(who.body.contains(r#"id="cluster">prod-eu<"#), "{}", who.body);
        assert!(who.body.contains("<th>Cluster</th>") && who.body.contains("&amp;cluster=prod-eu"), "{}", who.body);
        assert!(!who.body.contains("None stored."), "{}", who.body);
        let other = srv.client.browser("GET", "/identity?user=realk8s-admin&cluster=prod-us", Some(&cookie), "");
        assert!(other.body.contains("None stored."), "{}", other.body);
    }
    // a Falco alert carries the cluster too
    let alert = r#"{"hostname":"node-1","output":"Shell spawned","output_fields":{"container.id":"0123456789ab","k8s.ns.name":"shop","k8s.pod.name":"web-1"},"priority":"Notice","rule":"Terminal shell in container","source":"syscall","time":"2026-12-02T03:44:21.431251797Z"}"#;
    assert_eq!(srv.request("POST", "/v1/falco", Some(INGEST), alert.as_bytes()).status, 200);
    let v = srv.wait_items("/v1/alerts?cluster=prod-eu", 1);
    assert_eq!(v["items"][0]["cluster"], "prod-eu", "{v}");
    let none = srv.request("GET", "/v1/alerts?cluster=prod-us", Some(READ), b"").json();
    assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
    assert!(!data.join("kustody.db").exists(), "nothing is stored in SQLite");

    // kill -9 while a sender keeps posting
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (acked, stop, client) = (acked.clone(), stop.clone(), srv.client.clone());
        std::thread::spawn(move || {
            let mut b = 500_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (body, ids) = synthetic_batch(b, 200);
                b += 1;
                if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.post_audit(&body))) {
                    if r.status == 200 {
                        acked.lock().unwrap().extend(ids);
                    }
                }
            }
        })
    };
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 2_000 {
        assert!(t0.elapsed() < Duration::from_secs(120), "ingest too slow to test");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut srv = srv;
    srv.child.kill().unwrap(); // SIGKILL
    srv.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    drop(srv);
    let acked = acked.lock().unwrap().clone();
    let mut db = ::postgres::Client::connect(&pg.url("kustody"), ::postgres::NoTls).unwrap();
    let rows = db
        .query("SELECT audit_id, count(*) FROM events WHERE audit_id = ANY($1) GROUP BY audit_id", &[&acked])
        .unwrap();
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) == 1), "an acknowledged event is stored twice");
    assert_eq!(rows.len(), acked.len(), "{} of {} acknowledged events lost", acked.len() - rows.len(), acked.len());

    // PostgreSQL down: the webhook is told to come back later, and nothing is acknowledged
    let srv = start(&data, &args);
    pg.ctl("stop");
    let (body, ids) = synthetic_batch(900_000, 50);
    let r = srv.post_audit(&body);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.to_ascii_lowercase().contains("retry-after"), "{}", r.headers);
    assert!(!r.body.contains(pg.password()));
    pg.ctl("start");
    let t0 = Instant::now();
    loop {
        let r = srv.post_audit(&body);
        if r.status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not back after the outage: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut db = ::postgres::Client::connect(&pg.url("kustody"), ::postgres::NoTls).unwrap();
    let n: i64 = db.query_one("SELECT count(*) FROM events WHERE audit_id = ANY($1)", &[&ids]).unwrap().get(0);
    assert_eq!(n, 50);
    assert!(srv.stop().success());
}

/// A batch whose every tenth event is a secret read by a service account (a Warning rule
/// matches it): `(body, every auditID, the secret reads' auditIDs)`.
fn batch_with_secret_reads(batch: usize, size: usize) -> (Vec<u8>, Vec<String>, Vec<String>) {
    let (mut ids, mut secrets, mut items) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..size {
        let sa = format!("system:serviceaccount:ns{}:app{}", batch % 13, i % 5);
        let (id, what) = if i % 10 == 0 {
            let id = format!("secret-{batch:06}-{i:04}");
            secrets.push(id.clone());
            let what = format!(
                r#""requestURI":"/api/v1/namespaces/ns1/secrets/db-{i}","verb":"get","objectRef":{{"resource":"secrets","namespace":"ns1","name":"db-{i}"}}"#
            );
            (id, what)
        } else {
            let what = r#""requestURI":"/api/v1/namespaces/ns1/configmaps","verb":"list","objectRef":{"resource":"configmaps","namespace":"ns1"}"#.to_owned();
            (format!("cm-{batch:06}-{i:04}"), what)
        };
        items.push(format!(
            r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete",{what},"user":{{"username":"{sa}"}},"sourceIPs":["10.1.{}.{}"],"responseStatus":{{"code":200}},"requestReceivedTimestamp":"2026-12-02T03:00:00.000000Z","stageTimestamp":"2026-12-02T03:00:00.100000Z"}}"#,
            batch % 250,
            i % 250
        ));
        ids.push(id);
    }
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    );
    (body.into_bytes(), ids, secrets)
}

/// The scale-out layout on a throwaway NATS JetStream and PostgreSQL: two receivers (two
/// clusters) publish, two detectors share the partitions and one database. Under load a
/// detector is killed (its partitions resume on the other), a receiver is killed with
/// `kill -9`, nats-server is killed and restarted, and PostgreSQL is stopped for a while
/// (receivers keep accepting into JetStream; the detector catches up). In the end every
/// acknowledged event is stored exactly once, and every secret read among them has exactly
/// one match of its rule: no event went unevaluated, none was evaluated twice.
#[test]
fn serve_scales_out_over_nats_jetstream_and_postgresql() {
    let Some(mut nats) = kustody_testkit::nats::Nats::start() else { return };
    let Some(pg) = kustody_testkit::postgres::Postgres::start() else { return };
    pg.create_db("kustody");
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pg.password");
    std::fs::write(&pw, format!("{}\n", pg.password())).unwrap();
    let bus_token = tmp.path().join("bus.token");
    std::fs::write(&bus_token, nats.token()).unwrap();
    let store = format!("postgres://kustody@127.0.0.1:{}/kustody?sslmode=disable", pg.port());
    let bus = nats.url();
    let common = [
        "--bus",
        bus.as_str(),
        "--bus-token-file",
        bus_token.to_str().unwrap(),
        "--bus-partitions",
        "8",
        "--bus-lease",
        "3s",
        "--bus-max-bytes",
        "1G",
    ];
    let detector = |name: &str| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["--role", "detector", "--store", store.as_str(), "--store-password-file", pw.to_str().unwrap()]);
        start(&tmp.path().join(name).join("data"), &a)
    };
    let receiver = |name: &str, cluster: &'static str| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["--role", "receiver", "--cluster", cluster]);
        start(&tmp.path().join(name).join("data"), &a)
    };
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    std::fs::create_dir_all(tmp.path().join("eu")).unwrap();
    std::fs::create_dir_all(tmp.path().join("us")).unwrap();
    let det_a = detector("a");
    let mut det_b = detector("b");
    let eu = receiver("eu", "eu");
    let us = receiver("us", "us");

    // a detector takes no events; a receiver has no store to search
    let r = det_a.post_audit(&synthetic_batch(1, 1).0);
    assert_eq!(r.status, 421, "{}", r.body);
    let wrong = kustody(&["serve", "--data-dir", "/nonexistent", "--role", "receiver"]);
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("--bus"), "{}", wrong.stderr);

    // the recorded traffic of one apiserver, through both clusters' receivers
    if let Some((traffic, n)) = recorded("batch-traffic.json") {
        for r in [&eu, &us] {
            let a = r.post_audit(&traffic);
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.json()["stored"], n as u64);
        }
        let v = det_a.wait_items("/v1/events?cluster=eu&user=realk8s-admin&limit=5", 5);
        assert!(v["items"].as_array().unwrap().iter().all(|e| e["cluster"] == "eu"), "{v}");
        det_a.wait_items("/v1/events?cluster=us&user=realk8s-admin&limit=5", 5);
        let (exec, _) = recorded("blocking-exec-response-started.json").unwrap();
        assert_eq!(eu.post_audit(&exec).status, 200);
        let f = det_a.wait_items("/v1/findings?cluster=eu", 1);
        assert!(f["items"].as_array().unwrap().iter().all(|x| x["cluster"] == "eu"), "{f}");
    }
    // runtime alerts go through the bus too
    let alert = r#"{"hostname":"node-1","output":"Shell spawned","output_fields":{"container.id":"0123456789ab","k8s.ns.name":"shop","k8s.pod.name":"web-1"},"priority":"Notice","rule":"Terminal shell in container","source":"syscall","time":"2026-12-02T03:44:21.431251797Z"}"#;
    assert_eq!(us.request("POST", "/v1/falco", Some(INGEST), alert.as_bytes()).status, 200);
    let v = det_a.wait_items("/v1/alerts?cluster=us", 1);
    assert_eq!(v["items"][0]["cluster"], "us", "{v}");

    // senders keep posting to both receivers; what each got 200 for is remembered
    let acked = Arc::new(std::sync::Mutex::new((Vec::<String>::new(), Vec::<String>::new())));
    let stops =
        [Arc::new(std::sync::atomic::AtomicBool::new(false)), Arc::new(std::sync::atomic::AtomicBool::new(false))];
    let mut senders = Vec::new();
    let mut eu = eu;
    for (k, client) in [(0usize, eu.client.clone()), (1, us.client.clone())] {
        let (acked, stop) = (acked.clone(), stops[k].clone());
        senders.push(std::thread::spawn(move || {
            let mut b = 100_000 * (k + 1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (body, ids, secrets) = batch_with_secret_reads(b, 100);
                b += 1;
                if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.post_audit(&body))) {
                    if r.status == 200 {
                        let mut a = acked.lock().unwrap();
                        a.0.extend(ids);
                        a.1.extend(secrets);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    let wait_acked = |n: usize| {
        let t0 = Instant::now();
        while acked.lock().unwrap().0.len() < n {
            assert!(t0.elapsed() < Duration::from_secs(180), "ingest too slow to test");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acked(3_000);
    // a detector dies mid-stream: the other takes its partitions
    det_b.child.kill().unwrap();
    det_b.child.wait().unwrap();
    wait_acked(6_000);
    // a receiver dies: what it acknowledged is in JetStream already
    eu.child.kill().unwrap();
    eu.child.wait().unwrap();
    stops[0].store(true, std::sync::atomic::Ordering::Relaxed);
    wait_acked(8_000);
    // nats-server dies and comes back: receivers answer 503 meanwhile, then go on
    nats.restart();
    wait_acked(10_000);
    // PostgreSQL stops: the receiver keeps accepting into JetStream
    pg.ctl("stop");
    let before = acked.lock().unwrap().0.len();
    wait_acked(before + 1_000);
    pg.ctl("start");
    wait_acked(before + 2_000);
    stops[1].store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let (acked, secrets) = acked.lock().unwrap().clone();

    // the surviving detector catches up: every acknowledged event once, every secret read
    // matched once
    let mut db = ::postgres::Client::connect(&pg.url("kustody"), ::postgres::NoTls).unwrap();
    let t0 = Instant::now();
    loop {
        let stored: i64 =
            db.query_one("SELECT count(*) FROM events WHERE audit_id = ANY($1)", &[&acked]).unwrap().get(0);
        let matched: i64 = db
            .query_one(
                "SELECT count(DISTINCT e.audit_id) FROM matches m JOIN events e ON e.id = m.event_id \
                 WHERE e.audit_id = ANY($1)",
                &[&secrets],
            )
            .unwrap()
            .get(0);
        if stored as usize == acked.len() && matched as usize == secrets.len() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "not caught up: {stored} of {} acknowledged events stored, {matched} of {} secret reads matched",
            acked.len(),
            secrets.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let dup_events: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT audit_id FROM events WHERE audit_id = ANY($1) GROUP BY audit_id, cluster \
             HAVING count(*) > 1) d",
            &[&acked],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup_events, 0, "an event is stored twice");
    let dup_matches: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT m.event_id, m.rule FROM matches m JOIN events e ON e.id = m.event_id \
             WHERE e.audit_id = ANY($1) GROUP BY m.event_id, m.rule HAVING count(*) > 1) d",
            &[&secrets],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup_matches, 0, "an event was evaluated twice");
    let dup_ids: i64 = db.query_one("SELECT count(*) - count(DISTINCT id) FROM findings", &[]).unwrap().get(0);
    assert_eq!(dup_ids, 0);
    // a finding carries the cluster of its lead event (clusters never share a finding)
    let crossed: i64 = db
        .query_one(
            "SELECT count(*) FROM findings f JOIN events e ON e.id = f.lead_event \
             WHERE coalesce(f.cluster, '') <> coalesce(e.cluster, '')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(crossed, 0, "a finding names another cluster than its lead event");
    let (eu_findings, us_findings): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE cluster = 'eu'), count(*) FILTER (WHERE cluster = 'us') FROM findings",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(eu_findings > 0 && us_findings > 0, "{eu_findings} {us_findings}");
    // the same identity acted in both clusters: an incident in each, never one across them
    let t0 = Instant::now();
    loop {
        let r = db
            .query_one(
                "SELECT count(DISTINCT cluster), count(*) FILTER (WHERE cluster IS NULL) FROM incidents \
                 WHERE identity = 'realk8s-admin'",
                &[],
            )
            .unwrap();
        let (clusters, unnamed): (i64, i64) = (r.get(0), r.get(1));
        assert_eq!(unnamed, 0, "an incident without its cluster");
        if clusters == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "realk8s-admin's incidents are in {clusters} cluster(s), not 2"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // the dead detector's open findings were taken over and closed when their window passed
    // (these events are a day old: every window has passed)
    let t0 = Instant::now();
    loop {
        let open: i64 = db.query_one("SELECT count(*) FROM findings WHERE open", &[]).unwrap().get(0);
        if open == 0 {
            break;
        }
        if t0.elapsed() >= Duration::from_secs(30) {
            let rows = db
                .query("SELECT id, rule, username, cluster, last_ns FROM findings WHERE open ORDER BY id LIMIT 10", &[])
                .unwrap();
            let rows: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {:?} {:?} {:?}",
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, Option<String>>(2),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, Option<i64>>(4)
                    )
                })
                .collect();
            panic!("{open} findings left open: {rows:#?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // the survivor holds every partition, and says so
    let m = det_a.get("/metrics").body;
    assert!(m.contains("kustody_bus_partitions 8"), "{m}");
    // it took all 8 first, gave 4 to the second detector, took them back when it died
    let took: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("kustody_bus_takeovers_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(took >= 12, "{m}");
    // a rule switched off from another detector's console (stored as the shared state
    // `disabled_rules`) reaches this one without a restart: it reloads its rules
    let reloads = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("kustody_rule_reloads_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = reloads(&m);
    let blob = zstd::bulk::compress(br#"["Exec Into Pod"]"#, 3).unwrap();
    db.execute(
        "INSERT INTO state (name, value) VALUES ('disabled_rules', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[&blob],
    )
    .unwrap();
    let t0 = Instant::now();
    while reloads(&det_a.get("/metrics").body) <= before {
        assert!(t0.elapsed() < Duration::from_secs(20), "the detector did not take the stored rule switch");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(det_a.stop().success());
    assert!(us.stop().success());
}

// ---------------------------------------------------------------------------------------------
// EKS: the audit log in CloudWatch Logs (moto in server mode, signatures verified).

/// A loopback proxy in front of moto that answers the next `throttle` FilterLogEvents calls
/// with CloudWatch's throttling error, as AWS does past 5 calls a second, and forwards the
/// rest byte for byte (the signed Host header stays the proxy's, as the client signed it).
struct FaultProxy {
    port: u16,
    throttle: Arc<std::sync::atomic::AtomicUsize>,
    throttled: Arc<std::sync::atomic::AtomicUsize>,
    filter_calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: u16) -> FaultProxy {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let throttle = Arc::new(AtomicUsize::new(0));
        let throttled = Arc::new(AtomicUsize::new(0));
        let filter_calls = Arc::new(AtomicUsize::new(0));
        let (t, td, fc) = (throttle.clone(), throttled.clone(), filter_calls.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let (t, td, fc) = (t.clone(), td.clone(), fc.clone());
                std::thread::spawn(move || loop {
                    // one request: head, then Content-Length bytes
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        match c.read(&mut byte) {
                            Ok(1) => buf.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if c.read_exact(&mut body).is_err() {
                        return;
                    }
                    let filter = head.contains("x-amz-target: logs_20140328.filterlogevents");
                    if filter {
                        fc.fetch_add(1, SeqCst);
                    }
                    if filter && t.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
                        td.fetch_add(1, SeqCst);
                        let b = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                        let _ = write!(c, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\n\r\n{b}", b.len());
                        continue;
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let head_out = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    up.write_all(head_out.as_bytes()).unwrap();
                    up.write_all(&body).unwrap();
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    // moto closes: the client must too
                    let resp = String::from_utf8_lossy(&resp).into_owned();
                    let resp = if resp.to_ascii_lowercase().contains("\r\nconnection:") {
                        resp
                    } else {
                        resp.replacen("\r\n", "\r\nConnection: close\r\n", 1)
                    };
                    let _ = c.write_all(resp.as_bytes());
                    return;
                });
            }
        });
        FaultProxy { port, throttle, throttled, filter_calls }
    }
}

/// `kustody serve` flags reading the EKS cluster `prod` in eu-west-1 from `endpoint`, with
/// short poll and lateness settings, after `before`.
fn eks_args<'a>(endpoint: &'a str, before: &[&'a str]) -> Vec<&'a str> {
    let mut a = before.to_vec();
    a.extend([
        "--eks-cluster",
        "prod",
        "--aws-region",
        "eu-west-1",
        "--aws-endpoint",
        endpoint,
        "--eks-poll",
        "1s",
        "--eks-since",
        "10m",
        "--eks-lateness",
        "10s",
    ]);
    a
}

/// An audit event at `ms` (both timestamps), as EKS writes it to CloudWatch.
fn eks_event(id: &str, user: &str, verb: &str, resource: &str, sub: Option<&str>, ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    audit_line(id, user, verb, resource, sub)
        .replace("2026-12-02T03:00:00.000000Z", &t)
        .replace("2026-12-02T03:00:00.100000Z", &t)
}

fn put_events(m: &kustody_testkit::moto::Moto, key: &(String, String), stream: &str, events: &[(i64, String)]) {
    let evs: Vec<Value> = events.iter().map(|(ts, msg)| serde_json::json!({"timestamp": ts, "message": msg})).collect();
    let path =
        std::env::temp_dir().join(format!("kustody-put-{}-{}.json", std::process::id(), kustody_testkit::free_port()));
    std::fs::write(&path, serde_json::to_vec(&evs).unwrap()).unwrap();
    m.py(
        &key.0,
        &key.1,
        "eu-west-1",
        &format!(
            "evs = json.load(open({p:?}))\nlogs.put_log_events(logGroupName='/aws/eks/prod/cluster', logStreamName={stream:?}, logEvents=evs)\n",
            p = path.display().to_string()
        ),
    );
    let _ = std::fs::remove_file(path);
}

fn events_of(srv: &Server, q: &str) -> Vec<Value> {
    srv.get(&format!("/v1/events?limit=1000&{q}")).json()["items"].as_array().unwrap().clone()
}

fn wait_events(srv: &Server, q: &str, n: usize, secs: u64) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let got = events_of(srv, q);
        if got.len() >= n {
            return got;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{q}: {} of {n} events after {secs} s", got.len());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn eks_audit_log_is_read_from_cloudwatch_without_loss_through_throttling_key_rotation_and_restarts() {
    let Some(moto) = kustody_testkit::moto::Moto::start() else { return };
    let root = ("root".to_owned(), "root".to_owned());
    // an IAM user whose keys kustody signs with; then moto verifies every signature
    let out = moto.py(
        &root.0,
        &root.1,
        "eu-west-1",
        r#"
iam.create_user(UserName='kustody')
pol = iam.create_policy(PolicyName='read-audit', PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["logs:FilterLogEvents", "logs:Describe*", "logs:PutLogEvents", "logs:CreateLogStream", "eks:DescribeCluster", "iam:*"], "Resource": "*"}]}))
iam.attach_user_policy(UserName='kustody', PolicyArn=pol['Policy']['Arn'])
k = iam.create_access_key(UserName='kustody')['AccessKey']
logs.create_log_group(logGroupName='/aws/eks/prod/cluster')
for s in ['kube-apiserver-audit-aaa', 'kube-apiserver-audit-bbb', 'authenticator-ccc']:
    logs.create_log_stream(logGroupName='/aws/eks/prod/cluster', logStreamName=s)
print(k['AccessKeyId'], k['SecretAccessKey'])
"#,
    );
    let mut it = out.split_whitespace();
    let key1 = (it.next().unwrap().to_owned(), it.next().unwrap().to_owned());
    let r = moto.py(
        &root.0,
        &root.1,
        "eu-west-1",
        "import requests\nprint(requests.post(url + '/moto-api/reset-auth', data=b'0').text)\n",
    );
    assert!(r.contains("ok"), "{r}");
    let proxy = FaultProxy::start(moto.url().rsplit(':').next().unwrap().parse().unwrap());

    let now = chrono::Utc::now().timestamp_millis();
    // ten events, two pairs sharing a millisecond across streams, an exec (a finding), a
    // 300 KB event, an event EKS cut short, and another log's line in the group
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..10 {
        let ms = now - 60_000 + i64::from(i / 2) * 1000;
        let e = eks_event(&format!("e{i}"), "alice", "get", "pods", None, ms);
        if i % 2 == 0 {
            a.push((ms, e))
        } else {
            b.push((ms, e))
        }
    }
    let exec = eks_event("exec-1", "system:serviceaccount:shop:intruder", "create", "pods", Some("exec"), now - 50_000)
        .replace("ResponseComplete", "ResponseStarted");
    a.push((now - 50_000, exec));
    let big = eks_event("big-1", "alice", "update", "configmaps", None, now - 49_000).replace(
        r#""responseStatus""#,
        &format!(r#""requestObject":{{"data":{{"blob":"{}"}}}},"responseStatus""#, "x".repeat(300_000)),
    );
    a.push((now - 49_000, big.clone()));
    let cut_full = eks_event("cut-1", "bob", "create", "secrets", None, now - 48_000).replace(
        r#""responseStatus":{"code":200}"#,
        r#""responseStatus":{"code":201},"requestObject":{"kind":"Secret","data":{"k":"AAAA"#,
    );
    let cut = format!("{}[Truncated...]", &cut_full[..cut_full.find("AAAA").unwrap() + 2]);
    a.push((now - 48_000, cut.clone()));
    put_events(&moto, &key1, "kube-apiserver-audit-aaa", &a);
    put_events(&moto, &key1, "kube-apiserver-audit-bbb", &b);
    put_events(
        &moto,
        &key1,
        "authenticator-ccc",
        &[(now - 47_000, "time=... level=info msg=\"access granted\"".into())],
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = dir.path().join("credentials");
    std::fs::write(&creds, format!("[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n", key1.0, key1.1))
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let serve =
        |data: &Path| start_with_env(data, &eks_args(&endpoint, &[]), &[("AWS_SHARED_CREDENTIALS_FILE", &creds)]);
    let srv = serve(&data);
    let got = wait_events(&srv, "cluster=prod", 13, 60);
    assert_eq!(got.len(), 13, "10 + exec + 300 KB + the salvaged cut event; the authenticator line is not an event");
    let big_stored = srv.get("/v1/events?audit_id=big-1").json();
    assert_eq!(
        big_stored["items"][0]["event"]["requestObject"]["data"]["blob"].as_str().unwrap().len(),
        300_000,
        "never skipped, never cut"
    );
    let salvaged = srv.get("/v1/events?audit_id=cut-1").json();
    let ev = &salvaged["items"][0]["event"];
    assert_eq!(ev["level"], "Metadata");
    assert_eq!(ev["annotations"]["kustody.io/truncated"], "true");
    assert_eq!(ev["objectRef"]["resource"], "secrets");
    assert!(ev.get("requestObject").is_none());
    // the cut record itself is kept: where, why, its auditID; its text for admins only
    let bad = srv.get("/v1/bad-records").json();
    assert_eq!(bad["items"].as_array().unwrap().len(), 1, "{bad}");
    let rec = &bad["items"][0];
    assert_eq!(rec["auditID"], "cut-1");
    assert_eq!(rec["source"], "cloudwatch:eu-west-1:/aws/eks/prod/cluster");
    assert!(rec["locator"].as_str().unwrap().starts_with("kube-apiserver-audit-aaa/"), "{rec}");
    assert!(rec["reason"].as_str().unwrap().contains("[Truncated...]"), "{rec}");
    assert!(rec.get("raw").is_none(), "read role: no text");
    let full = srv.request("GET", "/v1/bad-records", Some(ADMIN), b"").json();
    assert_eq!(full["items"][0]["raw"], cut);
    // detected like any other source
    let f = srv.wait_items("/v1/findings?user=system:serviceaccount:shop:intruder", 1);
    assert_eq!(f["items"][0]["cluster"], "prod", "{f}");
    wait_metric(&srv, "kustody_source_events_total{source=\"eks:eu-west-1:prod\"} 13");
    wait_metric(&srv, "kustody_source_bad_records_total{source=\"eks:eu-west-1:prod\"} 1");
    wait_metric(&srv, "kustody_source_leader{source=\"eks:eu-west-1:prod\"} 1");

    // throttling: the next three reads are refused; the source backs off and goes on
    proxy.throttle.store(3, std::sync::atomic::Ordering::SeqCst);
    let t1 = chrono::Utc::now().timestamp_millis();
    put_events(&moto, &key1, "kube-apiserver-audit-aaa", &[(t1, eks_event("t-1", "alice", "list", "pods", None, t1))]);
    put_events(&moto, &key1, "kube-apiserver-audit-bbb", &[(t1, eks_event("t-2", "alice", "list", "pods", None, t1))]);
    wait_events(&srv, "cluster=prod", 15, 60);
    assert_eq!(proxy.throttled.load(std::sync::atomic::Ordering::SeqCst), 3);
    wait_metric(&srv, "kustody_source_throttled_total{source=\"eks:eu-west-1:prod\"} 3");

    // the key is rotated: the old one is deleted in IAM, the file holds the new one
    let out = moto.py(
        &key1.0,
        &key1.1,
        "eu-west-1",
        "k = iam.create_access_key(UserName='kustody')['AccessKey']\nprint(k['AccessKeyId'], k['SecretAccessKey'])\n",
    );
    let mut it = out.split_whitespace();
    let key2 = (it.next().unwrap().to_owned(), it.next().unwrap().to_owned());
    std::fs::write(&creds, format!("[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n", key2.0, key2.1))
        .unwrap();
    moto.py(
        &key2.0,
        &key2.1,
        "eu-west-1",
        &format!("iam.delete_access_key(UserName='kustody', AccessKeyId={:?})\n", key1.0),
    );
    let t2 = chrono::Utc::now().timestamp_millis();
    put_events(&moto, &key2, "kube-apiserver-audit-aaa", &[(t2, eks_event("r-1", "alice", "list", "pods", None, t2))]);
    wait_events(&srv, "cluster=prod", 16, 60);
    wait_metric(&srv, "kustody_source_credential_refreshes_total{source=\"eks:eu-west-1:prod\"} 1");

    // kill -9; events arrive while it is down, one of them late (its time before the newest
    // read); the restart resumes at the stored checkpoint: each stored once
    let mut srv = srv;
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    drop(srv);
    let t3 = chrono::Utc::now().timestamp_millis();
    put_events(&moto, &key2, "kube-apiserver-audit-bbb", &[(t3, eks_event("d-1", "alice", "list", "pods", None, t3))]);
    put_events(
        &moto,
        &key2,
        "kube-apiserver-audit-aaa",
        &[(t2 - 1_000, eks_event("late-1", "alice", "list", "pods", None, t2 - 1_000))],
    );
    let srv = serve(&data);
    let all = wait_events(&srv, "cluster=prod", 18, 60);
    // a late event after the restart too, behind the live reads: the settle pass finds it
    let t4 = chrono::Utc::now().timestamp_millis();
    put_events(&moto, &key2, "kube-apiserver-audit-aaa", &[(t4, eks_event("n-1", "alice", "list", "pods", None, t4))]);
    wait_events(&srv, "audit_id=n-1", 1, 30);
    // a millisecond before the newest read, arriving now (within --eks-lateness of its time)
    put_events(
        &moto,
        &key2,
        "kube-apiserver-audit-bbb",
        &[(t4 - 1, eks_event("late-2", "alice", "list", "pods", None, t4 - 1))],
    );
    wait_events(&srv, "audit_id=late-2", 1, 60);
    let all2 = events_of(&srv, "cluster=prod");
    let mut ids: Vec<String> = all2.iter().map(|e| e["event"]["auditID"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event stored twice: {ids:?}");
    assert_eq!(n, 20, "{ids:?}");
    assert!(all.len() >= 18);
    let bad = srv.get("/v1/bad-records").json();
    assert_eq!(bad["items"].as_array().unwrap().len(), 1, "the cut record, read again, is kept once");
    assert!(proxy.filter_calls.load(std::sync::atomic::Ordering::SeqCst) > 3);
}

#[test]
fn setup_eks_check_says_what_is_off_what_it_blinds_and_prints_the_fix() {
    let Some(moto) = kustody_testkit::moto::Moto::start() else { return };
    let k = ("AKIDSETUPCHECK".to_owned(), "secret".to_owned());
    moto.py(
        &k.0,
        &k.1,
        "eu-west-1",
        "eks.create_cluster(name='prod', roleArn='arn:aws:iam::123456789012:role/eks', resourcesVpcConfig={'subnetIds': ['subnet-1']})\n",
    );
    let check = |extra: &[&str]| {
        kustody_testkit::run(
            Command::new(env!("CARGO_BIN_EXE_kustody"))
                .args(["setup", "eks", "--cluster", "prod", "--aws-region", "eu-west-1", "--aws-endpoint", &moto.url()])
                .args(extra)
                .env("AWS_ACCESS_KEY_ID", &k.0)
                .env("AWS_SECRET_ACCESS_KEY", &k.1)
                .env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_PROFILE"),
        )
    };
    // a new cluster: every control-plane log is off
    let r = check(&["--check"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("audit log on:               NO"), "{}", r.stdout);
    assert!(r.stdout.contains("no secret read, exec, RBAC change"), "{}", r.stdout);
    assert!(
        r.stdout.contains(r#"aws eks update-cluster-config --region eu-west-1 --name prod --logging '{"clusterLogging":[{"types":["audit","authenticator"],"enabled":true}]}'"#),
        "{}",
        r.stdout
    );
    assert_eq!(check(&[]).code, 0, "without --check it only reports");
    // the fix applied (by the operator), and events flowing into a group kept 7 days
    let now = chrono::Utc::now().timestamp_millis();
    moto.py(
        &k.0,
        &k.1,
        "eu-west-1",
        &format!(
            "eks.update_cluster_config(name='prod', logging={{'clusterLogging': [{{'types': ['audit', 'authenticator'], 'enabled': True}}]}})\n\
             logs.create_log_group(logGroupName='/aws/eks/prod/cluster')\n\
             logs.put_retention_policy(logGroupName='/aws/eks/prod/cluster', retentionInDays=7)\n\
             logs.create_log_stream(logGroupName='/aws/eks/prod/cluster', logStreamName='kube-apiserver-audit-1')\n\
             logs.put_log_events(logGroupName='/aws/eks/prod/cluster', logStreamName='kube-apiserver-audit-1', logEvents=[{{'timestamp': {now}, 'message': '{{}}'}}])\n"
        ),
    );
    let r = check(&["--check", "-o", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert!(v["audit_enabled"].as_bool().unwrap() && v["authenticator_enabled"].as_bool().unwrap(), "{v}");
    assert_eq!(v["newest_audit_stream"], "kube-apiserver-audit-1");
    assert!(v["flowing"].as_bool().unwrap(), "{v}");
    assert_eq!(v["retention_days"], 7);
    assert_eq!(r.code, 1, "7 days of retention is a problem: {v}");
    assert!(v["fixes"][0].as_str().unwrap().contains("aws logs put-retention-policy --region eu-west-1 --log-group-name /aws/eks/prod/cluster --retention-in-days 365"), "{v}");
    moto.py(&k.0, &k.1, "eu-west-1", "logs.delete_retention_policy(logGroupName='/aws/eks/prod/cluster')\n");
    let r = check(&["--check"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("In order. Read it live with: kustody serve --eks-cluster prod --aws-region eu-west-1"),
        "{}",
        r.stdout
    );
    // no such cluster: an error naming the call, exit 2
    let r = kustody_testkit::run(
        Command::new(env!("CARGO_BIN_EXE_kustody"))
            .args(["setup", "eks", "--cluster", "nope", "--aws-region", "eu-west-1", "--aws-endpoint", &moto.url()])
            .env("AWS_ACCESS_KEY_ID", &k.0)
            .env("AWS_SECRET_ACCESS_KEY", &k.1),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("DescribeCluster") && r.stderr.contains("ResourceNotFoundException"), "{}", r.stderr);
}

#[test]
fn two_replicas_on_a_shared_store_never_read_the_same_eks_log_and_one_takes_over_from_a_dead_one() {
    let Some(moto) = kustody_testkit::moto::Moto::start() else { return };
    let Some(nats) = kustody_testkit::nats::Nats::start() else { return };
    let Some(pg) = kustody_testkit::postgres::Postgres::start() else { return };
    pg.create_db("kustody");
    let k = ("AKIDREPLICAS".to_owned(), "secret".to_owned());
    moto.py(
        &k.0,
        &k.1,
        "eu-west-1",
        "logs.create_log_group(logGroupName='/aws/eks/prod/cluster')\nlogs.create_log_stream(logGroupName='/aws/eks/prod/cluster', logStreamName='kube-apiserver-audit-1')\n",
    );
    let now = chrono::Utc::now().timestamp_millis();
    let first: Vec<(i64, String)> = (0..30)
        .map(|i| {
            (now - 30_000 + i * 100, eks_event(&format!("p{i}"), "alice", "get", "pods", None, now - 30_000 + i * 100))
        })
        .collect();
    put_events(&moto, &k, "kube-apiserver-audit-1", &first);
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pg.password");
    std::fs::write(&pw, format!("{}\n", pg.password())).unwrap();
    let bus_token = tmp.path().join("bus.token");
    std::fs::write(&bus_token, nats.token()).unwrap();
    let creds = tmp.path().join("credentials");
    std::fs::write(&creds, format!("[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n", k.0, k.1))
        .unwrap();
    let store = format!("postgres://kustody@127.0.0.1:{}/kustody?sslmode=disable", pg.port());
    let (bus, murl) = (nats.url(), moto.url());
    let replica = |name: &str| {
        std::fs::create_dir_all(tmp.path().join(name)).unwrap();
        let shared = [
            "--role",
            "all",
            "--bus",
            &bus,
            "--bus-token-file",
            bus_token.to_str().unwrap(),
            "--bus-partitions",
            "4",
            "--bus-lease",
            "3s",
            "--bus-max-bytes",
            "256M",
            "--store",
            &store,
            "--store-password-file",
            pw.to_str().unwrap(),
        ];
        start_with_env(
            &tmp.path().join(name).join("data"),
            &eks_args(&murl, &shared),
            &[("AWS_SHARED_CREDENTIALS_FILE", &creds)],
        )
    };
    let a = replica("a");
    let b = replica("b");
    let leader_of =
        |s: &Server| metric(s, "kustody_source_leader{source=\"eks:eu-west-1:prod\"}").map(|l| l.ends_with(" 1"));
    let t0 = Instant::now();
    let (lead, other) = loop {
        match (leader_of(&a), leader_of(&b)) {
            (Some(true), Some(false)) => break (a, b),
            (Some(false), Some(true)) => break (b, a),
            (x, y) => {
                assert!(x != Some(true) || y != Some(true), "both read the log");
                assert!(t0.elapsed() < Duration::from_secs(30), "no single reader: {x:?} {y:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let got = wait_events(&other, "cluster=prod", 30, 60);
    assert_eq!(got.len(), 30);
    let n_of = |s: &Server| {
        metric(s, "kustody_source_events_total{source=\"eks:eu-west-1:prod\"}")
            .and_then(|l| l.rsplit_once(' ').map(|(_, v)| v.parse::<u64>().unwrap()))
            .unwrap_or(0)
    };
    assert_eq!(n_of(&other), 0, "the replica without the lease read nothing");
    assert_eq!(n_of(&lead), 30);
    // the reader dies (kill -9: its lease is not released); the other takes over after the
    // lease's 30 s and resumes at the stored checkpoint
    let mut lead = lead;
    lead.child.kill().unwrap();
    lead.child.wait().unwrap();
    drop(lead);
    let t = chrono::Utc::now().timestamp_millis();
    put_events(&moto, &k, "kube-apiserver-audit-1", &[(t, eks_event("after-1", "alice", "get", "pods", None, t))]);
    wait_events(&other, "audit_id=after-1", 1, 90);
    assert_eq!(leader_of(&other), Some(true));
    let all = events_of(&other, "cluster=prod");
    assert_eq!(all.len(), 31, "each event once");
}
