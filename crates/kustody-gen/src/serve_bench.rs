//! `kustody-gen serve-bench`: starts `kustody serve` on a fresh data directory and posts
//! real-shaped EventLists of 400 over HTTPS, like the apiserver's batching webhook, at a target
//! rate (or as fast as it answers). Prints events/s durably stored, the acknowledgement latency
//! percentiles (measured from each batch's scheduled send time, so a slow server cannot hide
//! its queueing), the arrival-to-finding latency from the server's histogram, and the server's
//! peak RSS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use kustody_gen::Corpus;

pub(crate) const TOKEN: &str = "bench-token-0123456789abcdefghij";

#[derive(Clone, Copy)]
pub struct Options {
    pub rate: u64,
    pub seconds: u64,
    pub connections: usize,
    pub batch: usize,
    pub profile_body_heavy: bool,
    /// Keep the store in a throwaway PostgreSQL server.
    pub postgres: bool,
}

/// A batch template: the EventList text and where each auditID's first 12 characters are, to be
/// overwritten with a counter so every posted event is new.
struct Template {
    text: Vec<u8>,
    id_at: Vec<usize>,
    events: usize,
}

fn templates(n: usize, batch: usize, body_heavy: bool) -> Vec<Template> {
    let mut corpus = if body_heavy { Corpus::body_heavy(11) } else { Corpus::new(11) };
    (0..n)
        .map(|_| {
            let mut text =
                b"{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{},\"items\":[".to_vec();
            let mut id_at = Vec::new();
            for i in 0..batch {
                if i > 0 {
                    text.push(b',');
                }
                let line = corpus.next_line();
                if let Some(p) = line.find("\"auditID\":\"") {
                    id_at.push(text.len() + p + 11);
                }
                text.extend_from_slice(line.as_bytes());
            }
            text.extend_from_slice(b"]}\n");
            Template { text, id_at, events: batch }
        })
        .collect()
}

/// A `kustody serve` started for a benchmark on a fresh data directory.
pub(crate) struct Started {
    pub tmp: tempfile::TempDir,
    pub data: std::path::PathBuf,
    pub child: std::process::Child,
    pub addr: String,
    pub ca: Vec<u8>,
}

/// Starts `kustody serve` with an admin token [`TOKEN`] and `extra` flags; waits until it listens.
pub(crate) fn start(kustody: &Path, extra: &[&str]) -> Result<Started> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} bench admin\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))?;
    }
    let ready = tmp.path().join("ready");
    let mut child = Command::new(kustody)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file()?)
        .spawn()
        .with_context(|| format!("cannot start {}", kustody.display()))?;
    let t0 = Instant::now();
    let url = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if s.ends_with('\n') {
                break s.trim().to_owned();
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("kustody serve did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = url.trim_start_matches("https://").to_owned();
    let ca = std::fs::read(data.join("tls/server.crt"))?;
    Ok(Started { tmp, data, child, addr, ca })
}

/// Where a started server's stderr goes: a new file in `$KUSTODY_BENCH_LOGS` when set, else
/// nowhere.
fn log_file() -> Result<Stdio> {
    let Some(dir) = std::env::var_os("KUSTODY_BENCH_LOGS") else { return Ok(Stdio::null()) };
    std::fs::create_dir_all(&dir)?;
    let n = std::fs::read_dir(&dir)?.count();
    Ok(std::fs::File::create(Path::new(&dir).join(format!("serve-{n}.log")))?.into())
}

pub fn run(kustody: &Path, opts: &Options) -> Result<()> {
    // With --postgres: a throwaway server, the password in a file beside it.
    let pg = if opts.postgres {
        let pg = kustody_testkit::postgres::Postgres::start().context("PostgreSQL is not installed")?;
        pg.create_db("bench");
        Some(pg)
    } else {
        None
    };
    let pw_dir = tempfile::tempdir()?;
    let mut extra: Vec<String> = Vec::new();
    if let Some(pg) = &pg {
        let pw = pw_dir.path().join("pg.password");
        std::fs::write(&pw, pg.password())?;
        extra.extend([
            "--store".to_owned(),
            format!("postgres://kustody@127.0.0.1:{}/bench?sslmode=disable", pg.port()),
            "--store-password-file".to_owned(),
            pw.display().to_string(),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let Started { tmp: _tmp, data, mut child, addr, ca } = start(kustody, &extra)?;
    let pid = child.id();
    // Peak resident memory, sampled: anonymous (heap, queues, caches) and file-backed (SQLite's
    // memory-mapped database pages, which the kernel can drop at will) separately.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let (mut anon, mut file) = (0u64, 0u64);
            while sampling.load(Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kb = |k: &str| {
                        s.lines()
                            .find(|l| l.starts_with(k))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    anon = anon.max(kb("RssAnon:") * 1024);
                    file = file.max(kb("RssFile:") * 1024);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (anon, file)
        })
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(drive(&addr, &ca, opts));
    let rss = peak_rss(pid);
    sampling.store(false, Relaxed);
    let (anon, file) = sampler.join().unwrap_or((0, 0));
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = child.wait();
    let disk = match &pg {
        // the server's whole data directory: tables, indexes and WAL
        Some(pg) => tree_size(&pg.dir().join("data")),
        None => dir_size(&data.join("kustody.db")) + dir_size(&data.join("kustody.db-wal")),
    };
    let r = result?;
    println!(
        "serve-bench: store {}, rate target {} ev/s, {} connections, batches of {}, {} s",
        if opts.postgres { "PostgreSQL" } else { "SQLite" },
        if opts.rate == 0 { "max".to_owned() } else { opts.rate.to_string() },
        opts.connections,
        opts.batch,
        opts.seconds
    );
    println!(
        "  stored {} events ({} duplicates) = {:.0} events/s durably stored, {:.1} MB/s of event JSON",
        r.stored,
        r.duplicates,
        r.stored as f64 / r.elapsed,
        r.bytes as f64 / r.elapsed / 1e6
    );
    println!("  answers: {} × 200, {} × 429, {} × 503, {} other/failed", r.ok, r.s429, r.s503, r.other);
    println!(
        "  ack latency (from scheduled send): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.p(0.50),
        r.p(0.90),
        r.p(0.99),
        r.p(1.0)
    );
    println!("  arrival→finding (server histogram): p50 ≤ {} , p99 ≤ {}", r.detect_p50, r.detect_p99);
    println!(
        "  server peak RSS {:.0} MB (sampled peaks: anonymous {:.0} MB, file-backed {:.0} MB); store {:.1} MB on disk = {:.0} bytes per stored event",
        rss as f64 / 1e6,
        anon as f64 / 1e6,
        file as f64 / 1e6,
        disk as f64 / 1e6,
        disk as f64 / r.stored.max(1) as f64
    );
    Ok(())
}

pub(crate) struct Results {
    pub stored: u64,
    duplicates: u64,
    bytes: u64,
    pub ok: u64,
    pub s429: u64,
    pub s503: u64,
    other: u64,
    elapsed: f64,
    pub latencies_ms: Vec<f64>,
    detect_p50: String,
    detect_p99: String,
}

impl Results {
    fn p(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms.get(i).copied().unwrap_or(0.0)
    }
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub(crate) async fn connect(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A POST of an EventList to the webhook endpoint, with the benchmark's token.
pub(crate) fn audit_post(path: &str, body: Vec<u8>) -> Result<hyper::Request<Full<Bytes>>> {
    Ok(hyper::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body)))?)
}

/// A TLS client trusting the server's certificate.
pub(crate) fn client_tls(ca: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca) {
        roots.add(c?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

pub(crate) async fn drive(addr: &str, ca: &[u8], opts: &Options) -> Result<Results> {
    let tls = client_tls(ca)?;
    let templates = Arc::new(templates(32, opts.batch, opts.profile_body_heavy));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(opts.seconds);
    // Each connection sends its share of the rate on a fixed schedule (open loop).
    let per_conn_interval = (opts.rate > 0)
        .then(|| Duration::from_secs_f64(opts.batch as f64 * opts.connections as f64 / opts.rate as f64));
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let (tls, templates, counter, addr) = (tls.clone(), templates.clone(), counter.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, Vec::<f64>::new());
            let mut sender = connect(&addr, tls.clone()).await?;
            let mut next = start + per_conn_interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / 4.0));
            let mut k = c * 5;
            while Instant::now() < deadline {
                if per_conn_interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let scheduled = if per_conn_interval.is_some() { next } else { Instant::now() };
                if let Some(i) = per_conn_interval {
                    next += i;
                }
                let t = templates.get(k % templates.len()).ok_or_else(|| anyhow!("no template"))?;
                k += 1;
                let mut body = t.text.clone();
                for at in &t.id_at {
                    let n = counter.fetch_add(1, Relaxed);
                    let hex = format!("{n:012x}");
                    if let Some(dst) = body.get_mut(*at..*at + 12) {
                        dst.copy_from_slice(hex.as_bytes());
                    }
                }
                let len = body.len() as u64;
                let req = audit_post("/audit?timeout=30s", body)?;
                if sender.ready().await.is_err() {
                    sender = connect(&addr, tls.clone()).await?;
                }
                let resp = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(_) => {
                        out.6 += 1;
                        sender = connect(&addr, tls.clone()).await?;
                        continue;
                    }
                };
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                out.7.push(scheduled.elapsed().as_secs_f64() * 1e3);
                match status {
                    200 => {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        out.0 += v["stored"].as_u64().unwrap_or(0);
                        out.1 += v["duplicates"].as_u64().unwrap_or(0);
                        out.2 += len * v["stored"].as_u64().unwrap_or(0) / t.events.max(1) as u64;
                        out.3 += 1;
                    }
                    429 => out.4 += 1,
                    503 => out.5 += 1,
                    _ => out.6 += 1,
                }
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut r = Results {
        stored: 0,
        duplicates: 0,
        bytes: 0,
        ok: 0,
        s429: 0,
        s503: 0,
        other: 0,
        elapsed: 0.0,
        latencies_ms: Vec::new(),
        detect_p50: String::new(),
        detect_p99: String::new(),
    };
    for t in tasks {
        let o = t.await??;
        r.stored += o.0;
        r.duplicates += o.1;
        r.bytes += o.2;
        r.ok += o.3;
        r.s429 += o.4;
        r.s503 += o.5;
        r.other += o.6;
        r.latencies_ms.extend(o.7);
    }
    r.elapsed = start.elapsed().as_secs_f64();
    r.latencies_ms.sort_by(f64::total_cmp);
    // wait for the detector to drain, then read its histogram
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sender = connect(addr, tls).await?;
    let req = hyper::Request::get("/metrics")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))?;
    let metrics = sender.send_request(req).await?.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&metrics);
    (r.detect_p50, r.detect_p99) =
        (quantile(&text, "kustody_detection_seconds", 0.5), quantile(&text, "kustody_detection_seconds", 0.99));
    Ok(r)
}

/// The upper bound of the histogram bucket holding quantile `q`.
pub(crate) fn quantile(metrics: &str, name: &str, q: f64) -> String {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((le.to_owned(), n.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return "n/a".into();
    }
    buckets.iter().find(|(_, n)| *n >= q * total).map_or("n/a".into(), |(le, _)| {
        if le == "+Inf" {
            "> 10 s".into()
        } else {
            format!("{:.1} ms", le.parse::<f64>().unwrap_or(0.0) * 1e3)
        }
    })
}

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn dir_size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Bytes of the files under `p`.
fn tree_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return dir_size(p) };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}
