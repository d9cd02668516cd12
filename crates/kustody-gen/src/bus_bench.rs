//! `kustody-gen bus-bench`: the scale-out layout on one machine. A throwaway nats-server
//! (JetStream, `sync_interval: always`) and PostgreSQL, `--detectors` detectors and
//! `--receivers` receivers (one simulated cluster each), EventLists of 400 posted to every
//! receiver at a target rate. Prints events/s acknowledged by the receivers and durably
//! stored by the detectors, the bus lag percentiles (receiver arrival → findings committed),
//! CPU seconds per process kind and events per CPU-second; with `--kill-detector-after`, how
//! long the others take to catch up after one is killed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::serve_bench::{client_tls, connect, drive, quantile, start, Options, Started, TOKEN};

pub struct BusOptions {
    pub receivers: usize,
    pub detectors: usize,
    pub partitions: u32,
    pub serve: Options,
    pub kill_detector_after: Option<u64>,
}

/// CPU seconds (user + system) a process and its children that were waited for used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // after the command's closing parenthesis: fields 3.. ; utime and stime are 14 and 15
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // `rest` begins with field 3 (state): field n is at index n - 3
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process whose parent is `pid`, and of `pid` itself (PostgreSQL's
/// backends are children of its postmaster).
fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut total = cpu_seconds(pid);
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.filter_map(Result::ok) {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok()));
            if ppid == Some(pid) {
                total += cpu_seconds(child);
            }
        }
    }
    total
}

async fn metrics(s: &Started) -> Result<String> {
    let mut sender = connect(&s.addr, client_tls(&s.ca)?).await?;
    let req = hyper::Request::get("/metrics")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))?;
    let body = sender.send_request(req).await?.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn run(kustody: &Path, opts: &BusOptions) -> Result<()> {
    let nats =
        kustody_testkit::nats::Nats::start().context("no nats-server 2.10 or newer (scripts/test installs one)")?;
    let pg = kustody_testkit::postgres::Postgres::start().context("PostgreSQL is not installed")?;
    pg.create_db("bench");
    let secrets = tempfile::tempdir()?;
    let pw = secrets.path().join("pg.password");
    std::fs::write(&pw, pg.password())?;
    let token = secrets.path().join("bus.token");
    std::fs::write(&token, nats.token())?;
    let store = format!("postgres://kustody@127.0.0.1:{}/bench?sslmode=disable", pg.port());
    let parts = opts.partitions.to_string();
    let bus = nats.url();
    let common = |role: &'static str| -> Vec<String> {
        [
            "--role",
            role,
            "--bus",
            bus.as_str(),
            "--bus-token-file",
            token.to_str().unwrap_or_default(),
            "--bus-partitions",
            parts.as_str(),
            "--bus-max-bytes",
            "1G",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let mut detectors = Vec::new();
    for _ in 0..opts.detectors {
        let mut a = common("detector");
        a.extend(["--store".into(), store.clone(), "--store-password-file".into(), pw.display().to_string()]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        detectors.push(start(kustody, &a)?);
    }
    let mut receivers = Vec::new();
    for i in 0..opts.receivers {
        let mut a = common("receiver");
        a.extend(["--cluster".into(), format!("cluster-{i}")]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        receivers.push(start(kustody, &a)?);
    }
    let nats_pid = std::fs::read_to_string(nats.dir().join("pid"))?.trim().parse::<u32>()?;
    let pg_pid = std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let per = Options {
        rate: opts.serve.rate / opts.receivers.max(1) as u64,
        connections: opts.serve.connections.div_ceil(opts.receivers.max(1)),
        ..opts.serve
    };
    // the detectors share the partitions before the load starts
    let shared = Instant::now();
    loop {
        let held: Vec<u64> = detectors
            .iter()
            .map(|d| rt.block_on(metrics(d)).map(|m| value(&m, "kustody_bus_partitions")).unwrap_or(0))
            .collect();
        if held.iter().sum::<u64>() == u64::from(opts.partitions) && held.iter().all(|h| *h > 0) {
            break;
        }
        if shared.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the detectors did not share the partitions in 120 s: {held:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let t0 = Instant::now();
    // a detector killed mid-run
    let victim = opts.kill_detector_after.filter(|_| detectors.len() > 1).map(|s| {
        let pid = detectors.last().map_or(0, |d| d.child.id());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(s));
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            Instant::now()
        })
    });
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for r in &receivers {
            let (addr, ca, o) = (r.addr.clone(), r.ca.clone(), Options { ..per });
            tasks.push(tokio::spawn(async move { drive(&addr, &ca, &o).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let driven = t0.elapsed().as_secs_f64();
    let killed_at = victim.and_then(|v| v.join().ok());
    let accepted: u64 = results.iter().map(|r| r.stored).sum();
    // every detector still alive: wait until they stored everything acknowledged
    let alive: Vec<&Started> = if killed_at.is_some() {
        detectors.iter().take(detectors.len() - 1).collect()
    } else {
        detectors.iter().collect()
    };
    let stored_now = || -> u64 {
        // stored by all detectors, dead ones included: read from PostgreSQL's count instead
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "kustody", "-d", "bench", "-tAc"])
            .arg("SELECT value FROM totals WHERE name = 'events'")
            .env("PGPASSWORD", pg.password())
            .output();
        out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let mut caught_up = None;
    let wait = Instant::now();
    loop {
        if stored_now() >= accepted {
            caught_up = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if wait.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stored = stored_now();
    let mut lag = Vec::new();
    for d in &alive {
        let m = rt.block_on(metrics(d))?;
        lag.push((
            quantile(&m, "kustody_bus_lag_seconds", 0.5),
            quantile(&m, "kustody_bus_lag_seconds", 0.99),
            value(&m, "kustody_events_stored_total"),
        ));
    }
    let cpu_recv: f64 = receivers.iter().map(|r| cpu_seconds(r.child.id())).sum();
    let cpu_det: f64 = detectors.iter().map(|d| cpu_seconds(d.child.id())).sum();
    let cpu_nats = cpu_seconds(nats_pid);
    let cpu_pg = tree_cpu_seconds(pg_pid);
    let total_cpu = cpu_recv + cpu_det + cpu_nats + cpu_pg;
    println!(
        "bus-bench: {} receivers, {} detectors, {} partitions; rate target {} ev/s, {} connections, batches of {}, {} s",
        opts.receivers,
        opts.detectors,
        opts.partitions,
        if opts.serve.rate == 0 { "max".to_owned() } else { opts.serve.rate.to_string() },
        opts.serve.connections,
        opts.serve.batch,
        opts.serve.seconds
    );
    let ok: u64 = results.iter().map(|r| r.ok).sum();
    let s429: u64 = results.iter().map(|r| r.s429).sum();
    let s503: u64 = results.iter().map(|r| r.s503).sum();
    println!(
        "  acknowledged by the receivers (JetStream fsync'd): {accepted} events in {driven:.1} s = {:.0} events/s ({ok} × 200, {s429} × 429, {s503} × 503)",
        accepted as f64 / driven
    );
    let mut lat: Vec<f64> = results.iter().flat_map(|r| r.latencies_ms.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat.get(((lat.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0.0);
    println!("  ack latency (from scheduled send): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", p(0.5), p(0.99), p(1.0));
    match caught_up {
        Some(t) => println!(
            "  durably stored by the detectors: {stored} events, all caught up {:.1} s after the start = {:.0} events/s sustained",
            t,
            stored as f64 / t
        ),
        None => println!("  durably stored by the detectors: {stored} of {accepted} events (not caught up in 600 s)"),
    }
    for (i, (p50, p99, n)) in lag.iter().enumerate() {
        println!("  detector {i}: stored {n} events; bus lag (arrival → findings committed) p50 ≤ {p50}, p99 ≤ {p99}");
    }
    if let (Some(k), Some(t)) = (killed_at, caught_up) {
        let killed = k.duration_since(t0).as_secs_f64();
        println!(
            "  a detector was killed at {killed:.1} s; the others had everything stored {:.1} s later (the run's sending ended at {driven:.1} s)",
            t - killed
        );
    }
    println!(
        "  CPU seconds: receivers {cpu_recv:.1}, detectors {cpu_det:.1}, nats-server {cpu_nats:.1}, PostgreSQL {cpu_pg:.1}; {:.0} events per CPU-second overall",
        stored as f64 / total_cpu.max(0.001)
    );
    for s in receivers.iter_mut().chain(detectors.iter_mut()) {
        let _ = Command::new("kill").arg("-TERM").arg(s.child.id().to_string()).status();
        let _ = s.child.wait();
    }
    Ok(())
}
