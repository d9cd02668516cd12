//! `kustody-gen identity-bench`: the IP history and the live baseline, measured
//! (BENCHMARKS.md "Identity over IPs and baselines").
//!
//! 1. `whois` over a month of a 5,000-pod cluster: pods replaced at random (mean life
//!    `--pod-hours`), each new pod taking the most recently freed address of a pool barely
//!    larger than the cluster (IPAM reuses quickly), stored with kustody-store's
//!    `save_intervals`; then the time of `ip_intervals(ip)` + the lookup `whois` does, for
//!    random IPs and times.
//! 2. CPU per event of what `serve` adds to ingest and detection — the IP attribution (pod
//!    bodies learnt, the source IP looked up) and the live baseline (`Live::observe` +
//!    `knows`) — next to parsing the event, on the hunt corpus.
//! 3. Memory of the live baseline with `--identities` identities (RSS before and after, the
//!    state's stored size).

use std::time::Instant;

use anyhow::Result;
use kustody_iphistory::{Interval, IpHistory, Options, PodFacts};
use kustody_model::{Event, SourceFormat, SourceRef};
use kustody_store::Store;

use kustody_gen::Rng;

const S: i64 = 1_000_000_000;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

pub fn whois(dir: &std::path::Path, pods: usize, days: i64, pod_hours: f64, lookups: usize) -> Result<()> {
    let mut rng = Rng::new(3);
    let t0 = 1_790_000_000 * S;
    let end = t0 + days * 86_400 * S;
    let pool = pods + pods / 10;
    // free addresses, most recently freed last (reused first)
    let mut free: Vec<u32> = (0..pool as u32).rev().collect();
    let ip_of = |n: u32| format!("10.{}.{}.{}", 64 + (n >> 16), (n >> 8) & 255, n & 255);
    // (ip number, started, ends)
    let mut live: Vec<(u32, i64, i64)> = Vec::with_capacity(pods);
    let life = |rng: &mut Rng| -> i64 {
        // exponential with mean pod_hours
        let u = (rng.below(1_000_000) as f64 + 0.5) / 1_000_000.0;
        (-u.ln() * pod_hours * 3600.0) as i64 * S
    };
    let mut intervals: Vec<Interval> = Vec::new();
    let mut n = 0u64;
    let pod = |ip: u32, start: i64, ended: Option<i64>, n: &mut u64| -> Interval {
        *n += 1;
        Interval {
            ip: ip_of(ip),
            pod: PodFacts {
                namespace: format!("ns-{}", *n % 50),
                name: format!("web-{}", *n),
                uid: format!("uid-{}", *n),
                ips: vec![ip_of(ip)],
                node: Some(format!("node-{}", *n % 100)),
                owner: Some(format!("ReplicaSet/web-{}", *n % 500)),
                service_account: Some("default".into()),
                ..Default::default()
            },
            first_ns: start,
            last_ns: start + 5 * S,
            ended_ns: ended,
        }
    };
    for _ in 0..pods {
        let ip = free.pop().unwrap_or(0);
        live.push((ip, t0, t0 + life(&mut rng)));
    }
    // replace pods as they end, in time order
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>> =
        live.iter().enumerate().map(|(k, p)| std::cmp::Reverse((p.2, k))).collect();
    while let Some(std::cmp::Reverse((ends, k))) = heap.pop() {
        if ends >= end {
            break;
        }
        let Some(&(ip, start, _)) = live.get(k) else { break };
        intervals.push(pod(ip, start, Some(ends), &mut n));
        free.push(ip);
        let next = free.pop().unwrap_or(0);
        let at = ends + 2 * S;
        let until = at + life(&mut rng);
        if let Some(slot) = live.get_mut(k) {
            *slot = (next, at, until);
        }
        heap.push(std::cmp::Reverse((until, k)));
    }
    for &(ip, start, _) in &live {
        intervals.push(pod(ip, start, None, &mut n));
    }
    let mut owners: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for i in &intervals {
        *owners.entry(i.ip.as_str()).or_default() += 1;
    }
    let max_owners = owners.values().max().copied().unwrap_or(0);
    let t = Instant::now();
    let mut store = kustody_store::SqliteStore::open(dir)?;
    for chunk in intervals.chunks(20_000) {
        store.save_intervals(chunk)?;
    }
    drop(store);
    println!(
        "whois: {} intervals of {} pods over {days} days ({} addresses, up to {max_owners} holders per address), stored in {:.1} s",
        intervals.len(),
        pods,
        owners.len(),
        t.elapsed().as_secs_f64()
    );
    let store = kustody_store::SqliteStore::open_read_only(dir)?;
    let ips: Vec<&str> = owners.keys().copied().collect();
    let mut lat = Vec::with_capacity(lookups);
    let mut found = 0;
    for _ in 0..lookups {
        let ip = ips.get(rng.below(ips.len() as u64) as usize).copied().unwrap_or("10.64.0.1");
        let at = t0 + rng.below((end - t0) as u64 / S as u64) as i64 * S;
        let t = Instant::now();
        let mut h = IpHistory::new(Options::default());
        for i in store.ip_intervals(ip)? {
            h.restore(i);
        }
        found += usize::from(h.lookup(ip, at).is_some());
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "whois lookups: {lookups}, answered {found}; ms p50 {:.3} p99 {:.3} max {:.3}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    if let Some(ip) = ips.first() {
        println!(
            "end to end: time target/release/kustody whois {ip} --at {} --store {}",
            kustody_model::time::format_rfc3339_secs(t0 + (end - t0) / 2),
            dir.display()
        );
    }
    Ok(())
}

pub fn cpu(events: usize) -> Result<()> {
    let mut corpus = kustody_gen::Corpus::new(11);
    let lines: Vec<String> = (0..events).map(|_| corpus.next_line()).collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    let src = SourceRef { file: std::sync::Arc::from("bench"), line: 1, offset: 0, format: SourceFormat::Native };
    let parsed: Vec<Event<'_>> = lines.iter().filter_map(|l| Event::parse(l).ok()).collect();
    // the best of three passes over the parsed events (the first warms caches)
    let time = |f: &mut dyn FnMut(&Event<'_>)| -> f64 {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                for ev in &parsed {
                    f(ev);
                }
                t.elapsed().as_secs_f64() * 1e9 / parsed.len() as f64
            })
            .fold(f64::MAX, f64::min)
    };
    let parse = (0..3)
        .map(|_| {
            let t = Instant::now();
            let n = lines.iter().filter(|l| Event::parse(l).is_ok()).count();
            t.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64
        })
        .fold(f64::MAX, f64::min);
    let mut shown = 0usize;
    let seen = time(&mut |ev| shown += kustody_iphistory::extract::seen(ev).pods.len());
    let mut h = IpHistory::new(Options::default());
    let mut attributed = 0u64;
    let ip = time(&mut |ev| {
        if ev.object_ref().and_then(|o| o.resource.as_deref()) == Some("pods") {
            h.learn(ev);
        }
        if let (Some(ip), Some(t)) = (ev.source_ips().and_then(|s| s.last().cloned()), ev.time_ns()) {
            attributed += u64::from(h.lookup(&ip, t).is_some());
        }
    });
    let mut live = kustody_baseline::live::Live::new(kustody_baseline::live::LiveOptions::default());
    let mut found = 0usize;
    let base = time(&mut |ev| {
        let _ = live.knows(ev);
        found += live.observe(ev, &src).len();
    });
    println!(
        "per event ({} events, {:.0} B each): parse {parse:.0} ns; pod bodies read (hunt's per-event share) +{seen:.0} ns ({shown} pods shown); IP attribution +{ip:.0} ns ({attributed} attributed, {} holds); live baseline +{base:.0} ns ({} identities, {} values, {} series, {found} findings)",
        lines.len(),
        bytes as f64 / lines.len() as f64,
        h.len(),
        live.identities(),
        live.values(),
        live.series()
    );
    Ok(())
}

pub fn memory(identities: usize, per_identity: usize) -> Result<()> {
    let src = SourceRef { file: std::sync::Arc::from("bench"), line: 1, offset: 0, format: SourceFormat::Native };
    let before = rss_kb();
    let mut live = kustody_baseline::live::Live::new(kustody_baseline::live::LiveOptions::default());
    let t0 = 1_790_000_000 * S;
    let verbs = ["get", "list", "watch", "create", "patch", "delete"];
    let resources = ["pods", "configmaps", "secrets", "services", "deployments", "leases", "events", "endpoints"];
    let mut n = 0u64;
    for i in 0..identities {
        for k in 0..per_identity {
            n += 1;
            let raw = format!(
                r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/x","verb":"{}","user":{{"username":"system:serviceaccount:ns-{}:sa-{i}"}},"sourceIPs":["10.{}.{}.{}"],"userAgent":"agent-{}/1.0","objectRef":{{"resource":"{}","namespace":"ns-{}"}},"responseStatus":{{"code":200}},"stageTimestamp":"{}"}}"#,
                verbs[k % verbs.len()],
                i % 500,
                64 + i / 65536 % 64,
                i / 256 % 256,
                i % 256,
                k % 3,
                resources[(k / verbs.len()) % resources.len()],
                i % 500,
                kustody_model::time::format_rfc3339_nanos(t0 + n as i64 * 1_000_000)
            );
            if let Ok(ev) = Event::parse(&raw) {
                live.observe(&ev, &src);
            }
        }
    }
    let after = rss_kb();
    let t = Instant::now();
    let json = live.to_json()?;
    let ser = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let packed = zstd::bulk::compress(json.as_bytes(), 3)?;
    let zs = t.elapsed().as_secs_f64();
    println!(
        "memory: {identities} identities × {per_identity} events: {} values, {} series, {} known behaviours; RSS +{} MB; state {} MB JSON ({ser:.2} s), {} MB stored with zstd ({zs:.2} s); {} identities evicted",
        live.values(),
        live.series(),
        live.known.behaviours.len(),
        after.saturating_sub(before) / 1024,
        json.len() / (1 << 20),
        packed.len() / (1 << 20),
        live.counts.identities_evicted
    );
    Ok(())
}
