//! `kustody-gen`: write the bundled example, write benchmark corpora, run the hunt benchmark.

mod bus_bench;
mod collect_bench;
mod console_bench;
mod contain_bench;
mod exec_bench;
mod identity_bench;
mod notify_bench;
mod playbook_bench;
mod serve_bench;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kustody_gen::{example, Corpus};

#[derive(Parser)]
#[command(name = "kustody-gen", about = "Audit-log generators and the hunt benchmark (dev tooling)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the attack-chain example (deterministic) to FILE or stdout.
    Example {
        #[arg(short = 'o')]
        output: Option<PathBuf>,
    },
    /// Write a realistic corpus of about BYTES bytes of audit JSON lines.
    Corpus {
        #[arg(long, default_value_t = 100_000_000)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Gzip the output.
        #[arg(long)]
        gzip: bool,
        /// How each event is exported: native, eks, aks or gke.
        #[arg(long, default_value = "native")]
        format: kustody_gen::Wrap,
        /// Benign traffic only, with routine actions that resemble attacks (the noise test).
        #[arg(long)]
        benign: bool,
        /// The body-heavy, alert-heavy profile: a quarter of the events RequestResponse pod
        /// creates with ~2.5 KB bodies, over a third raising an upstream Falco alert.
        #[arg(long, conflicts_with = "benign")]
        body_heavy: bool,
        #[arg(short = 'o')]
        output: Option<PathBuf>,
    },
    /// Write EVENTS benign events of well-known operators installed with Helm release prefixes
    /// (the allow-list noise test's traffic).
    Operators {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Milliseconds between events (weeks of traffic: 5000).
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(short = 'o')]
        output: Option<PathBuf>,
    },
    /// Benchmark `kustody serve`: start it on a fresh data directory and post EventLists of
    /// 400 over HTTPS like the apiserver's webhook (BENCHMARKS.md "serve").
    ServeBench {
        /// Target events per second (0: as fast as the server answers).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent HTTPS connections (the apiserver sends batches concurrently).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 400)]
        batch: usize,
        /// The body-heavy, alert-heavy event profile.
        #[arg(long)]
        body_heavy: bool,
        /// Keep the store in a throwaway PostgreSQL server (Debian's binaries) instead of SQLite.
        #[arg(long)]
        postgres: bool,
        /// The kustody binary.
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark the scale-out layout: receivers and detectors on a throwaway NATS JetStream
    /// and PostgreSQL (BENCHMARKS.md "Scale-out over NATS JetStream").
    BusBench {
        #[arg(long, default_value_t = 3)]
        receivers: usize,
        #[arg(long, default_value_t = 2)]
        detectors: usize,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// Target events/s over all receivers (0: as fast as they answer).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent HTTPS connections over all receivers.
        #[arg(long, default_value_t = 6)]
        connections: usize,
        #[arg(long, default_value_t = 400)]
        batch: usize,
        /// Kill one detector (SIGKILL) this many seconds into the run.
        #[arg(long)]
        kill_detector_after: Option<u64>,
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark the web console with a day of traffic stored: page times, searches, and a
    /// live finding's way to an open incidents page (BENCHMARKS.md "The web console").
    ConsoleBench {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// One service-account exec (a finding) every this many events.
        #[arg(long, default_value_t = 100)]
        attack_every: u64,
        /// Requests timed per page.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark finding → notification: `kustody serve` with a webhook sink on 127.0.0.1, fed
    /// events that each open a new incident (BENCHMARKS.md "notifications").
    NotifyBench {
        #[arg(long, default_value_t = 300)]
        incidents: u64,
        /// Incidents per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark the IP history (`whois` over a month of a 5,000-pod cluster) and the live
    /// baseline (CPU per event, memory with many identities) (BENCHMARKS.md "Identity over
    /// IPs and baselines").
    IdentityBench {
        #[arg(long, default_value_t = 5000)]
        pods: usize,
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Mean pod lifetime.
        #[arg(long, default_value_t = 6.0)]
        pod_hours: f64,
        #[arg(long, default_value_t = 2000)]
        lookups: usize,
        /// Events for the CPU measurement.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Identities for the memory measurement, and events per identity.
        #[arg(long, default_value_t = 100_000)]
        identities: usize,
        #[arg(long, default_value_t = 20)]
        per_identity: usize,
        /// Where the interval store is written (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Benchmark finding → quarantine by a `kustody serve` playbook on a test cluster (needs
    /// root and runc; BENCHMARKS.md "playbooks").
    PlaybookBench {
        #[arg(long, default_value_t = 10)]
        n: usize,
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark exec and token minting against a test cluster (needs root and runc), next to
    /// bare `runc exec`, the Python `kubernetes` client and `aws eks get-token`.
    ExecBench {
        /// Small execs per series.
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// Parallel execs in the pool.
        #[arg(long, default_value_t = 10)]
        threads: usize,
        /// Also run the Python kubernetes client (pip install kubernetes).
        #[arg(long)]
        python: bool,
    },
    /// Benchmark `kustody quarantine` and `release` against a test cluster (needs root and runc).
    QuarantineBench {
        /// Pods to quarantine (the Deployment's replicas).
        #[arg(long, default_value_t = 20)]
        n: usize,
        /// The kustody binary.
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark `kustody collect` against a test cluster (needs root and runc): a 3-container
    /// triage, a selector sweep, and one exec per command side by side.
    CollectBench {
        /// Triage runs of the 3-container pod.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Pods in the swept Deployment.
        #[arg(long, default_value_t = 50)]
        fleet: usize,
        /// `--parallel` for the sweep.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// The kustody binary.
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
    },
    /// Benchmark `kustody hunt`: parse only, upstream Falco rules, all rules.
    Bench {
        /// Corpus size in bytes.
        #[arg(long, default_value_t = 1_000_000_000)]
        bytes: u64,
        /// The kustody binary to measure (build it with --release first).
        #[arg(long, default_value = "target/release/kustody")]
        kustody: PathBuf,
        /// Where the corpus is cached.
        #[arg(long, default_value = "bench-data")]
        dir: PathBuf,
        /// Upstream Falco rules (the shared corpus).
        #[arg(long, default_value = "../shared/upstream/falco")]
        upstream: PathBuf,
        /// Runs per case; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Worker threads passed to kustody (-j).
        #[arg(long)]
        threads: Option<usize>,
        /// Corpus profile: `default` (the issue-3 corpus: control-plane and user traffic, bodies
        /// mostly small) or `body-heavy` (a quarter of the events RequestResponse pod creates
        /// with ~2.5 KB bodies, over a third raising an upstream Falco alert).
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Cases to run, comma-separated: parse, falco, all, sigma, norm (the managed-format
        /// normalisation cases). Parse is always run: the ratios are against it.
        #[arg(long, value_delimiter = ',', default_value = "parse,falco,all,sigma,norm")]
        cases: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Example { output } => {
            let mut out = sink(output.as_deref())?;
            example(&mut out)?;
            out.flush()?;
        }
        Cmd::Corpus { bytes, seed, gzip, output, format, benign, body_heavy } => {
            let out = sink(output.as_deref())?;
            let mut corpus = if benign {
                Corpus::benign(seed)
            } else if body_heavy {
                Corpus::body_heavy(seed)
            } else {
                Corpus::new(seed)
            };
            if gzip {
                let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                corpus.write_as(bytes, format, &mut gz)?;
                gz.finish()?.flush()?;
            } else {
                let mut out = out;
                corpus.write_as(bytes, format, &mut out)?;
                out.flush()?;
            }
        }
        Cmd::Operators { events, seed, output, interval_ms } => {
            let mut out = sink(output.as_deref())?;
            kustody_gen::operators::write_operator_traffic_every(seed, events, interval_ms.max(1), &mut out)?;
            out.flush()?;
        }
        Cmd::ServeBench { rate, seconds, connections, batch, body_heavy, postgres, kustody } => serve_bench::run(
            &kustody,
            &serve_bench::Options {
                rate,
                seconds,
                connections: connections.max(1),
                batch: batch.max(1),
                profile_body_heavy: body_heavy,
                postgres,
            },
        )?,
        Cmd::BusBench {
            receivers,
            detectors,
            partitions,
            rate,
            seconds,
            connections,
            batch,
            kill_detector_after,
            kustody,
        } => bus_bench::run(
            &kustody,
            &bus_bench::BusOptions {
                receivers: receivers.max(1),
                detectors: detectors.max(1),
                partitions: partitions.max(1),
                serve: serve_bench::Options {
                    rate,
                    seconds,
                    connections: connections.max(1),
                    batch: batch.max(1),
                    profile_body_heavy: false,
                    postgres: true,
                },
                kill_detector_after,
            },
        )?,
        Cmd::ConsoleBench { events, attack_every, requests, kustody } => {
            console_bench::run(&kustody, events, attack_every, requests)?
        }
        Cmd::NotifyBench { incidents, rate, kustody } => notify_bench::run(&kustody, incidents, rate)?,
        Cmd::IdentityBench { pods, days, pod_hours, lookups, events, identities, per_identity, dir } => {
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().join("store"));
            identity_bench::whois(&dir, pods.max(1), days.max(1), pod_hours.max(0.01), lookups.max(1))?;
            identity_bench::cpu(events.max(1))?;
            identity_bench::memory(identities.max(1), per_identity.max(1))?;
        }
        Cmd::PlaybookBench { n, kustody } => playbook_bench::run(n.max(1), &kustody)?,
        Cmd::ExecBench { n, threads, python } => exec_bench::run(n, threads, python)?,
        Cmd::QuarantineBench { n, kustody } => contain_bench::run(n, &kustody)?,
        Cmd::CollectBench { runs, fleet, parallel, kustody } => collect_bench::run(runs, fleet, parallel, &kustody)?,
        Cmd::Bench { bytes, kustody, dir, upstream, runs, threads, profile, cases } => {
            bench(&BenchArgs { bytes, kustody, dir, upstream, runs, threads, profile, cases })?
        }
    }
    Ok(())
}

fn sink(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create `{}`", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// The benchmark's corpus profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Profile {
    Default,
    BodyHeavy,
}

struct BenchArgs {
    bytes: u64,
    kustody: PathBuf,
    dir: PathBuf,
    upstream: PathBuf,
    runs: u32,
    threads: Option<usize>,
    profile: Profile,
    cases: Vec<String>,
}

fn bench(a: &BenchArgs) -> Result<()> {
    let (bytes, kustody, dir, upstream, runs, threads) =
        (a.bytes, a.kustody.as_path(), a.dir.as_path(), a.upstream.as_path(), a.runs, a.threads);
    let want = |c: &str| a.cases.iter().any(|x| x == c);
    if !kustody.exists() {
        bail!("`{}` not found: run `cargo build --release -p kustody` first", kustody.display());
    }
    let main_rules = upstream.join("k8s_audit_rules.yaml");
    let gke_rules = upstream.join("k8s_audit_rules_gke.yaml");
    if !main_rules.exists() {
        bail!("upstream Falco rules not found at `{}` (pass --upstream)", main_rules.display());
    }
    std::fs::create_dir_all(dir)?;
    let corpus = match a.profile {
        Profile::Default => dir.join(format!("corpus-{bytes}.jsonl")),
        Profile::BodyHeavy => dir.join(format!("corpus-body-heavy-{bytes}.jsonl")),
    };
    if !corpus.exists() {
        eprintln!("generating {} ({} MB)...", corpus.display(), bytes / 1_000_000);
        let tmp = corpus.with_extension("tmp");
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        match a.profile {
            Profile::Default => Corpus::new(1),
            Profile::BodyHeavy => Corpus::body_heavy(1),
        }
        .write(bytes, &mut out)?;
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &corpus)?;
    }
    // Warm the page cache so the first case is not penalised.
    std::io::copy(&mut std::fs::File::open(&corpus)?, &mut std::io::sink())?;
    let size = std::fs::metadata(&corpus)?.len() as f64;
    let stats_path = dir.join("stats.json");
    let main_s = main_rules.display().to_string();
    let gke_s = gke_rules.display().to_string();
    let sigma_s = upstream.join("../sigma/kubernetes").display().to_string();
    let cases: Vec<(&str, Vec<&str>)> = [
        ("parse", "parse only", vec!["--parse-only"]),
        ("falco", "upstream Falco k8s_audit rules", vec!["--no-default-rules", "--rules", &main_s]),
        ("all", "all rules (built-in + upstream + GKE overlay)", vec!["--rules", &main_s, "--rules", &gke_s]),
        ("sigma", "upstream Sigma kubernetes/audit rules (16)", vec!["--no-default-rules", "--rules", &sigma_s]),
    ]
    .into_iter()
    .filter(|(key, _, _)| *key == "parse" || want(key))
    .map(|(_, name, args)| (name, args))
    .collect();
    // The same events as EKS, AKS and GKE export them, for the normalisation cases.
    let norm_bytes = (bytes / 10).max(1_000_000);
    let mut wrapped = Vec::new();
    let formats: &[(&str, kustody_gen::Wrap)] = if want("norm") {
        &[
            ("native", kustody_gen::Wrap::Native),
            ("eks", kustody_gen::Wrap::Eks),
            ("aks", kustody_gen::Wrap::Aks),
            ("gke", kustody_gen::Wrap::Gke),
        ]
    } else {
        &[]
    };
    for &(name, wrap) in formats {
        let path = dir.join(format!("norm-{name}-{norm_bytes}.jsonl"));
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            Corpus::new(2).write_as(norm_bytes, wrap, &mut out)?;
            out.flush()?;
            drop(out);
            std::fs::rename(&tmp, &path)?;
        }
        wrapped.push((name, path));
    }
    println!("corpus: {} ({:.0} MB)", corpus.display(), size / 1e6);
    println!(
        "{:<48} {:>8} {:>8} {:>9} {:>11} {:>7} {:>10}",
        "case", "wall s", "CPU s", "MB/s", "events/s", "RSS MB", "detections"
    );
    // Runs are interleaved (case 1, 2, 3, 1, 2, 3, ...) and the fastest of each case is kept, so
    // a slow spell on a shared machine hits every case alike instead of skewing the ratios.
    let mut best: Vec<Option<(f64, serde_json::Value)>> = vec![None; cases.len()];
    for _ in 0..runs.max(1) {
        for (i, (name, extra)) in cases.iter().enumerate() {
            let mut cmd = Command::new(kustody);
            cmd.arg("hunt")
                .arg(&corpus)
                .args(["-q", "-f", "jsonl", "--output-file", "/dev/null", "--stats-json"])
                .arg(&stats_path)
                .args(extra);
            if let Some(t) = threads {
                cmd.args(["-j", &t.to_string()]);
            }
            let t0 = Instant::now();
            let status = cmd.status()?;
            let secs = t0.elapsed().as_secs_f64();
            if !matches!(status.code(), Some(0 | 1)) {
                bail!("kustody failed on case `{name}`: {status}");
            }
            let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats_path)?)?;
            if let Some(slot) = best.get_mut(i) {
                if slot.as_ref().is_none_or(|(b, _)| secs < *b) {
                    *slot = Some((secs, stats));
                }
            }
        }
    }
    let mut parse: Option<(f64, f64)> = None;
    for ((name, _), result) in cases.iter().zip(best) {
        let Some((secs, stats)) = result else {
            continue;
        };
        let cpu = stats["cpu_seconds"].as_f64().unwrap_or(0.0);
        let events = stats["events"].as_f64().unwrap_or(0.0);
        println!(
            "{:<48} {:>8.2} {:>8.2} {:>9.1} {:>11.0} {:>7.1} {:>10}",
            name,
            secs,
            cpu,
            size / 1e6 / secs,
            events / secs,
            stats["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            stats["detections"]
        );
        match parse {
            None => parse = Some((secs, cpu)),
            Some((ps, pc)) => {
                println!("{:<48} {:>7.2}x {:>7.2}x parse-only (wall, CPU)", "", secs / ps, cpu / pc.max(0.01))
            }
        }
    }
    // Normalisation: read + unwrap/convert + parse, no rules; CPU seconds, best of `runs`. Each
    // run reads its file REPEAT times in one process, so the kernel's 10 ms CPU accounting tick
    // stays small against the total.
    const REPEAT: usize = 5;
    if wrapped.is_empty() {
        return Ok(());
    }
    println!(
        "\nnormalisation ({} MB of events read {REPEAT} times per run, --parse-only, best CPU of {runs}):",
        norm_bytes / 1_000_000
    );
    let mut native_cpu = 0.0;
    for (name, path) in &wrapped {
        let mut best = f64::MAX;
        let mut events = 0.0;
        for _ in 0..runs.max(1) {
            let status = Command::new(kustody)
                .arg("hunt")
                .args(std::iter::repeat_n(path, REPEAT))
                .args(["-q", "--parse-only", "-f", "jsonl", "--output-file", "/dev/null", "--stats-json"])
                .arg(&stats_path)
                .status()?;
            if !matches!(status.code(), Some(0 | 1)) {
                bail!("kustody failed on `{}`", path.display());
            }
            let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats_path)?)?;
            best = best.min(stats["cpu_seconds"].as_f64().unwrap_or(0.0));
            events = stats["events"].as_f64().unwrap_or(0.0);
        }
        if *name == "native" {
            native_cpu = best;
        }
        println!(
            "  {:<8} {:>10.0} events  {:>6.2} CPU s  {:>5.2}x native",
            name,
            events,
            best,
            best / native_cpu.max(0.01)
        );
    }
    Ok(())
}
