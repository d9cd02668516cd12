//! `kustody-gen console-bench`: the console's numbers (issue 18) with a day of traffic stored.
//!
//! Writes EVENTS realistic events spread over the last 24 hours (the hunt corpus generator)
//! with, every ATTACK_EVERY events, an exec by one of 2,000 service accounts (each a finding;
//! an identity's repeats hours apart are separate findings in one incident), replays them into
//! `kustody serve`, then times the console's pages over one keep-alive connection (client
//! round trip on 127.0.0.1: server time plus well under a millisecond) and how long a new
//! finding takes to reach an open incidents page: event acknowledged → the page's stream
//! announces it → the page fetched again with it (the page waits 300 ms after the first
//! announcement to gather more; that wait is added to the reported total).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::serve_bench::{audit_post, client_tls, connect, start, Sender, Started, TOKEN};

fn exec_event(sa: u64, n: u64, t_ns: i64) -> String {
    let t = kustody_model::time::format_rfc3339_nanos(t_ns);
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Metadata\",\"auditID\":\"console-bench-{n:012}\",\
\"stage\":\"ResponseStarted\",\"requestURI\":\"/api/v1/namespaces/team-{ns}/pods/db-0/exec?command=sh&stdin=true&stdout=true\",\
\"verb\":\"get\",\"user\":{{\"username\":\"system:serviceaccount:team-{ns}:sa-{sa}\",\"groups\":[\"system:serviceaccounts\",\"system:authenticated\"]}},\
\"sourceIPs\":[\"10.244.{a}.{b}\"],\"userAgent\":\"kubectl/v1.30.2 (linux/amd64) kubernetes/3968350\",\
\"objectRef\":{{\"resource\":\"pods\",\"apiVersion\":\"v1\",\"namespace\":\"team-{ns}\",\"name\":\"db-0\",\"subresource\":\"exec\"}},\
\"responseStatus\":{{\"metadata\":{{}},\"code\":101}},\"requestReceivedTimestamp\":\"{t}\",\"stageTimestamp\":\"{t}\"}}",
        ns = sa % 200,
        a = sa / 250,
        b = sa % 250,
    )
}

async fn request(s: &mut Sender, method: &str, path: &str, cookie: &str, body: &str) -> Result<(u16, String, f64)> {
    let mut b = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
    if !cookie.is_empty() {
        b = b.header("cookie", format!("kustody_session={cookie}"));
    } else {
        b = b.header("authorization", format!("Bearer {TOKEN}"));
    }
    if method == "POST" {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let t0 = Instant::now();
    s.ready().await?;
    let resp = s.send_request(b.body(Full::new(Bytes::from(body.to_owned())))?).await?;
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("kustody_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok((status, cookie.unwrap_or(text), ms))
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn run(kustody: &Path, events: u64, attack_every: u64, requests: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let corpus_path = dir.path().join("day.jsonl");
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let day = 86_400_000_000_000_i64;
    let attacks = events / attack_every.max(1);
    let total = events + attacks;
    let t0 = Instant::now();
    {
        let mut out = BufWriter::new(std::fs::File::create(&corpus_path)?);
        let mut c = kustody_gen::Corpus::benign(7).clock(now - day, day / total as i64);
        let mut k = 0;
        for n in 1..=events {
            writeln!(out, "{}", c.next_line())?;
            if n % attack_every.max(1) == 0 {
                k += 1;
                writeln!(out, "{}", exec_event(k % 2000, k, c.time_ns() + 1))?;
            }
        }
        out.flush()?;
    }
    let bytes = std::fs::metadata(&corpus_path)?.len();
    println!("console-bench: {events} events + {attacks} service-account execs over the last 24 h ({:.0} MB), written in {:.1} s", bytes as f64 / 1e6, t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let Started { tmp: _tmp, mut child, addr, ca, data } =
        start(kustody, &["--replay", corpus_path.to_str().unwrap_or_default()])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(async move {
        let tls = client_tls(&ca)?;
        let mut s = connect(&addr, tls.clone()).await?;
        // replayed and detected
        loop {
            let (_, text, _) = request(&mut s, "GET", "/metrics", "", "").await?;
            let stored = metric(&text, "kustody_events_stored_total") + metric(&text, "kustody_events_duplicate_total");
            let lag = metric(&text, "kustody_detector_lag_events");
            if stored >= total && lag == 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(3600) {
                bail!("the replay did not finish within an hour ({stored} of {total} stored)");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (_, text, _) = request(&mut s, "GET", "/metrics", "", "").await?;
        println!(
            "  replayed and detected in {:.1} s: {} events stored, {} findings opened, store {:.0} MB",
            t0.elapsed().as_secs_f64(),
            metric(&text, "kustody_events_stored_total"),
            metric(&text, "kustody_findings_opened_total"),
            metric(&text, "kustody_store_bytes") as f64 / 1e6
        );
        let (status, cookie, _) = request(&mut s, "POST", "/login", "", &format!("token={TOKEN}")).await?;
        if status != 303 {
            bail!("console login answered {status}");
        }
        let (_, list, _) = request(&mut s, "GET", "/v1/incidents?limit=10000", "", "").await?;
        let v: serde_json::Value = serde_json::from_str(&list).context("incidents")?;
        let ids: Vec<i64> = v["incidents"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_i64()).collect();
        println!("  {} incidents stored", ids.len());
        if ids.is_empty() {
            bail!("no incident: nothing to time");
        }
        let pages: Vec<(&str, String)> = vec![
            ("incidents page (open)", "/".into()),
            ("incidents page (all)", "/?status=all".into()),
            ("incident page", String::new()),
            ("search 24 h, no filter", "/search?since=24h".into()),
            ("search 24 h, one identity", "/search?since=24h&user=system%3Aserviceaccount%3Ateam-7%3Asa-7".into()),
            ("search 24 h, one namespace", "/search?since=24h&namespace=kube-system".into()),
            ("search 24 h, verb=delete (binned)", "/search?since=24h&verb=delete".into()),
            ("search 24 h, condition", "/search?since=24h&where=ka.verb%3Ddelete+and+ka.target.resource%3Dsecrets".into()),
            ("charts 24 h", "/charts?since=24h".into()),
            ("rules page", "/rules".into()),
        ];
        for (name, path) in &pages {
            let mut ms = Vec::new();
            for i in 0..requests {
                let p = if path.is_empty() { format!("/incidents/{}", ids[(i * 7919) % ids.len()]) } else { path.clone() };
                let (status, body, t) = request(&mut s, "GET", &p, &cookie, "").await?;
                if status != 200 {
                    bail!("{p}: {status}: {}", body.chars().take(300).collect::<String>());
                }
                ms.push(t);
            }
            println!(
                "  {name:<36} p50 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms  ({requests} requests)",
                pct(&mut ms, 0.5),
                pct(&mut ms, 0.99),
                pct(&mut ms, 1.0)
            );
        }
        // a live finding: event acknowledged → the stream the open page listens to → the page
        let mut stream = connect(&addr, tls.clone()).await?;
        let req = hyper::Request::get("/v1/findings/stream")
            .header("host", "localhost")
            .header("cookie", format!("kustody_session={cookie}"))
            .body(Full::new(Bytes::new()))?;
        let mut body = stream.send_request(req).await?.into_body();
        let mut post = connect(&addr, tls.clone()).await?;
        let (mut to_stream, mut to_page) = (Vec::new(), Vec::new());
        for n in 0..20u64 {
            let sa = 100_000 + n;
            let ev = exec_event(sa, 900_000_000 + n, chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
            let list = format!("{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{ev}]}}");
            let resp = post.send_request(audit_post("/v1/audit", list.into_bytes())?).await?;
            let ok = resp.status().is_success();
            let _ = resp.into_body().collect().await;
            if !ok {
                bail!("posting the live event failed");
            }
            let acked = Instant::now();
            let who = format!("sa-{sa}");
            let deadline = acked + Duration::from_secs(10);
            loop {
                let frame = tokio::time::timeout_at(deadline.into(), body.frame()).await;
                let Ok(Some(Ok(frame))) = frame else { bail!("no finding on the stream within 10 s") };
                if let Some(d) = frame.data_ref() {
                    if String::from_utf8_lossy(d).contains(&who) {
                        break;
                    }
                }
            }
            to_stream.push(acked.elapsed().as_secs_f64() * 1e3);
            let (_, page, t) = request(&mut s, "GET", "/", &cookie, "").await?;
            if !page.contains(&who) {
                bail!("the incidents page does not show {who} after its finding was announced");
            }
            to_page.push(acked.elapsed().as_secs_f64() * 1e3 + 300.0);
            let _ = t;
        }
        println!(
            "  live finding: acknowledged → on the page's stream p50 {:.1} ms p99 {:.1} ms; → on the refreshed page (with the page's 300 ms gathering wait) p50 {:.0} ms p99 {:.0} ms",
            pct(&mut to_stream, 0.5),
            pct(&mut to_stream, 0.99),
            pct(&mut to_page, 0.5),
            pct(&mut to_page, 0.99)
        );
        Ok(())
    });
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = data;
    r
}
