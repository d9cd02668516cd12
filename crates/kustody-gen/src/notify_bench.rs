//! `kustody-gen notify-bench`: finding → notification latency. Starts a local HTTP receiver and
//! `kustody serve` with a webhook sink pointing at it, then posts, at a steady rate, audit
//! events that each open a new incident (an exec by a service account seen for the first time).
//! Prints the time from each event's acknowledgement (its finding is detected after that) to
//! the receiver getting its notification — an upper bound of finding → notification — and the
//! server's own commit → delivery histogram.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::serve_bench::{audit_post, client_tls, connect, quantile, start, Started, TOKEN};

/// One exec by service account `sa-N`: the audit event that opens incident N.
fn event(n: u64) -> String {
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Metadata\",\"auditID\":\"bench-{n:012}\",\
\"stage\":\"ResponseStarted\",\"requestURI\":\"/api/v1/namespaces/bench/pods/db-0/exec?command=sh&stdin=true&stdout=true\",\
\"verb\":\"get\",\"user\":{{\"username\":\"system:serviceaccount:bench:sa-{n}\",\"groups\":[\"system:serviceaccounts\",\"system:authenticated\"]}},\
\"sourceIPs\":[\"10.244.1.17\"],\"userAgent\":\"kubectl/v1.30.2 (linux/amd64) kubernetes/3968350\",\
\"objectRef\":{{\"resource\":\"pods\",\"apiVersion\":\"v1\",\"namespace\":\"bench\",\"name\":\"db-0\",\"subresource\":\"exec\"}},\
\"responseStatus\":{{\"metadata\":{{}},\"code\":101}},\"requestReceivedTimestamp\":\"{t}\",\"stageTimestamp\":\"{t}\"}}",
        t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// A plain-HTTP receiver: the time each incident's first notification arrived, by identity.
async fn receiver(seen: Seen) -> Result<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let at = Instant::now();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        if let Some(who) = v.pointer("/incident/who/identity").and_then(|w| w.as_str()) {
                            if let Ok(mut m) = seen.lock() {
                                m.entry(who.to_owned()).or_insert(at);
                            }
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(url)
}

pub fn run(kustody: &Path, incidents: u64, rate: f64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
        let url = receiver(seen.clone()).await?;
        let dir = tempfile::tempdir()?;
        let sinks = dir.path().join("sinks.yaml");
        std::fs::write(
            &sinks,
            format!("sinks:\n  - name: bench\n    type: webhook\n    url: {url}/\n    min_priority: notice\n"),
        )?;
        let Started { tmp: _tmp, mut child, addr, ca, .. } =
            start(kustody, &["--sinks", sinks.to_str().unwrap_or_default()])?;
        let tls = client_tls(&ca)?;
        let mut sender = connect(&addr, tls.clone()).await?;
        let mut acked: HashMap<String, Instant> = HashMap::new();
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let mut next = Instant::now();
        for n in 0..incidents {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
            let body = format!(
                "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}",
                event(n)
            );
            let req = audit_post("/audit", body.into_bytes())?;
            if sender.ready().await.is_err() {
                sender = connect(&addr, tls.clone()).await?;
            }
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if !status.is_success() {
                bail!("event {n}: the server answered {status}");
            }
            acked.insert(format!("system:serviceaccount:bench:sa-{n}"), Instant::now());
        }
        let t0 = Instant::now();
        while seen.lock().map(|m| m.len()).unwrap_or(0) < acked.len() && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if sender.ready().await.is_err() {
            sender = connect(&addr, tls.clone()).await?;
        }
        let req = hyper::Request::get("/metrics")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))?;
        let metrics = sender.send_request(req).await?.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&metrics).into_owned();
        let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
        let got = seen.lock().map(|m| m.clone()).unwrap_or_default();
        let mut ms: Vec<f64> = acked
            .iter()
            .filter_map(|(who, a)| got.get(who).map(|g| g.saturating_duration_since(*a).as_secs_f64() * 1e3))
            .collect();
        ms.sort_by(f64::total_cmp);
        let p = |q: f64| ms.get(((ms.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
        println!("notify-bench: {incidents} incidents at {rate} per second, webhook sink on 127.0.0.1");
        println!("  notified {} of {} incidents", ms.len(), acked.len());
        println!(
            "  event acknowledged → notification received: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            p(0.5),
            p(0.9),
            p(0.99),
            p(1.0)
        );
        println!(
            "  server histogram, notification commit → delivered: p50 ≤ {}, p99 ≤ {}",
            quantile(&text, "kustody_notification_seconds", 0.5),
            quantile(&text, "kustody_notification_seconds", 0.99)
        );
        Ok(())
    })
}
