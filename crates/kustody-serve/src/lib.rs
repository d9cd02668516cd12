//! `kustody serve`: one process that watches.
//!
//! ```text
//! apiserver webhook ─► HTTPS POST /v1/audit ─┐            (auth, size limits, bounded queue:
//! Falco http_output ─► HTTPS POST /v1/falco ─┤             429 when full, 503 when the disk is)
//! audit log files ──► follower threads ─────┼─► writer thread ─► Store (SQLite WAL, fsync'd)
//! --replay FILE ────► replay thread ────────┘     (group commit, answers after the commit)
//!                                                       │ stored events, in commit order
//!                                                       ▼
//!                       detector thread: Engine + allow list + correlator + finding grouper
//!                                                       │ findings stored, then published
//!                                                       ▼
//!                       GET /v1/findings/stream (SSE), /v1/events, /v1/findings, /metrics
//! ```
//!
//! Sources parse with hunt's reader layer ([`kustody_ingest`]); detection is
//! [`kustody_rules::live::Detector`], the engine, allow list, correlator and grouper hunt uses.

pub mod api;
pub mod auth;
pub mod bus;
pub mod client;
pub mod cloud;
pub mod console;
pub mod deliver;
pub mod detect;
pub mod execute;
pub mod follow;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod payload;
pub mod respond;
pub mod ruleset;
pub mod search;
pub mod tls;
pub mod watch;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kustody_model::Event;
use kustody_rules::allow::AllowList;
use kustody_rules::Engine;
use kustody_store::{Origin, Store};

/// A compiled `where` filter (Falco condition syntax): the test of a parsed event, and the
/// values the condition needs in stored columns (its index keys), which a search applies in
/// SQL first so that events that cannot match are never decompressed or parsed.
#[derive(Clone)]
pub struct WhereFilter {
    pub test: Arc<dyn Fn(&Event<'_>) -> bool + Send + Sync>,
    pub keys: Vec<kustody_store::OneOf>,
}

/// Compiles a `where` condition (the rule files' macros and lists in scope).
pub type CompileWhere = Arc<dyn Fn(&str) -> Result<WhereFilter, String> + Send + Sync>;

/// Where the rules come from: the binary knows its built-in rules and the user's files.
pub trait RuleSource: Send + Sync {
    /// Loads the rule set and allow list, the `disabled` rules and correlations switched off
    /// (the console's switches). `Err` when anything has an error: a reload then keeps the
    /// last good set. Warnings are returned to be logged.
    fn load(&self, disabled: &std::collections::BTreeSet<String>) -> Result<(Engine, AllowList, Vec<String>), String>;
    /// Compiles a Falco condition into a filter.
    fn compile_where(&self, condition: &str) -> Result<WhereFilter, String>;
    /// Files whose change triggers a reload.
    fn watched(&self) -> Vec<PathBuf>;
}

/// Everything `kustody serve` is told.
pub struct Config {
    /// Local state: TLS material, the token file, evidence bundles, and the SQLite store
    /// unless `store` names another.
    pub data_dir: PathBuf,
    /// Where events, findings and incidents are kept (default: SQLite in `data_dir`).
    pub store: kustody_store::Location,
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Client certificates signed by this CA authenticate (as `ingest`).
    pub client_ca: Option<PathBuf>,
    /// Extra names for a generated certificate.
    pub tls_sans: Vec<String>,
    pub tokens_file: Option<PathBuf>,
    /// Audit logs to follow.
    pub follow: Vec<PathBuf>,
    /// Files fed once through the live path (a demo, an import).
    pub replay: Vec<PathBuf>,
    /// EKS clusters whose audit log is read from CloudWatch Logs (`--eks-cluster`).
    pub eks: Vec<cloud::EksConfig>,
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    /// Request bytes admitted but not yet answered; beyond it, 429.
    pub queue_bytes: usize,
    pub retention_max_age_ns: Option<i64>,
    pub retention_max_bytes: Option<u64>,
    pub group_window_ns: i64,
    /// An event only the file delivered counts as a webhook gap once it is this old.
    pub gap_grace: Duration,
    pub rules: Arc<dyn RuleSource>,
    /// Written with the listening URL once the server accepts connections (for scripts and
    /// tests that ask for port 0).
    pub ready_file: Option<PathBuf>,
    /// Stop once the replay files are stored and evaluated.
    pub exit_after_replay: bool,
    /// Notification sinks (`--sinks FILE`).
    pub sinks: Vec<kustody_notify::SinkConfig>,
    /// The cluster's name, carried by incidents and notifications.
    pub cluster: Option<String>,
    /// Findings of one identity and workload within this window are one incident.
    pub incident_window_ns: i64,
    /// The console's public URL (links in notifications).
    pub public_url: Option<String>,
    /// OpenID Connect login for the console (`--oidc-*`).
    pub oidc: Option<console::oidc::OidcConfig>,
    /// Response playbooks (`--playbooks FILE`).
    pub playbooks: Vec<kustody_playbook::Playbook>,
    /// How playbook actions and the live watch reach the cluster.
    pub connect: Option<execute::Connect>,
    /// Watch the cluster's pods, nodes and Services into the IP history (needs `connect`).
    pub watch_cluster: bool,
    /// The IP history's memory bound (intervals; the oldest are forgotten first, counted).
    pub max_ip_intervals: usize,
    /// The live baseline (new behaviour, rates, demotion of known behaviour); `None`: off.
    pub baseline: Option<kustody_baseline::live::LiveOptions>,
    /// What this process does (`--role`).
    pub role: bus::Role,
    /// NATS JetStream between receivers and detectors (`--bus`); `None`: one process.
    pub bus: Option<bus::BusConfig>,
}

impl Config {
    pub fn new(data_dir: PathBuf, rules: Arc<dyn RuleSource>) -> Config {
        Config {
            store: kustody_store::Location::Sqlite(data_dir.clone()),
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            tls_sans: Vec::new(),
            tokens_file: None,
            follow: Vec::new(),
            replay: Vec::new(),
            eks: Vec::new(),
            max_request_bytes: 16 << 20,
            max_event_bytes: 4 << 20,
            queue_bytes: 64 << 20,
            retention_max_age_ns: None,
            retention_max_bytes: None,
            group_window_ns: 600 * 1_000_000_000,
            gap_grace: Duration::from_secs(120),
            rules,
            ready_file: None,
            exit_after_replay: false,
            sinks: Vec::new(),
            cluster: None,
            incident_window_ns: 3600 * 1_000_000_000,
            public_url: None,
            oidc: None,
            playbooks: Vec::new(),
            connect: None,
            watch_cluster: false,
            max_ip_intervals: 1_000_000,
            baseline: Some(kustody_baseline::live::LiveOptions::default()),
            role: bus::Role::All,
            bus: None,
        }
    }
}

/// Which parts of the server run, from `--role` and `--bus`.
struct Plan {
    /// Sources and ingest endpoints (to the writer, or to the bus).
    receives: bool,
    /// A store, its writer and the detector.
    stores: bool,
}

impl Plan {
    fn of(config: &mut Config) -> Result<Plan> {
        use bus::Role;
        if config.bus.is_none() {
            if config.role != Role::All {
                bail!("--role receiver and --role detector work over a bus: give --bus nats://…");
            }
            return Ok(Plan { receives: true, stores: true });
        }
        let plan = Plan { receives: config.role != Role::Detector, stores: config.role != Role::Receiver };
        if plan.stores {
            config.store =
                config.store.clone().shared_writers().map_err(|e| anyhow::anyhow!("detectors on a bus: {e}"))?;
        } else {
            if !config.follow.is_empty() {
                bail!("a receiver keeps no store to remember --follow offsets in: follow files on a detector or with --role all");
            }
            if !config.eks.is_empty() {
                bail!("a receiver keeps no store to keep a cloud source's checkpoint in: read EKS with --role all");
            }
            if !config.sinks.is_empty() || !config.playbooks.is_empty() || config.watch_cluster {
                bail!("notifications, playbooks and --watch-cluster run where findings are made: on detectors");
            }
        }
        if !plan.receives && !config.eks.is_empty() {
            bail!("a detector takes its events from the bus: read EKS with --role all (the lease lets one process read it)");
        }
        if !plan.receives && (!config.follow.is_empty() || !config.replay.is_empty()) {
            bail!(
                "a detector takes its events from the bus: give --follow and --replay to a receiver or to --role all"
            );
        }
        Ok(plan)
    }
}

/// Runs `f`, which blocks (a store call), on this runtime thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The token file of a data directory made on first start when no `--tokens` is given.
pub const TOKEN_FILE: &str = "tokens";

/// Runs the server until SIGINT or SIGTERM (or the end of the replay with `exit_after_replay`).
pub fn run(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8))
        .enable_all()
        .thread_name("kustody-serve")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(mut config: Config) -> Result<()> {
    let plan = Plan::of(&mut config)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory `{}`", config.data_dir.display()))?;
    let tokens = tokens(&config)?;
    let tls = tls::server_config(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        config.client_ca.as_deref(),
        &config.data_dir.join("tls"),
        &config.tls_sans,
    )?;
    // Rules switched off from the console stay off across restarts.
    // Stores are synchronous (PostgreSQL's client runs its own small runtime): on this async
    // thread they are used only inside `blocking`.
    // The one writer of the store (PostgreSQL: it holds the database's writer lock), opened
    // first; everything else reads.
    let bus = match &config.bus {
        Some(b) => {
            let bus = bus::connect(b).await?;
            // an event must fit in one message
            let fits = bus.max_payload.saturating_sub(64 << 10);
            if plan.receives && config.max_event_bytes > fits {
                tracing::warn!(max_event_bytes = fits, "the bus server's max_payload bounds the event size");
                config.max_event_bytes = fits;
            }
            Some(bus)
        }
        None => None,
    };
    // A receiver keeps no store: it answers once the bus acknowledged.
    let writer_store: Option<Box<dyn Store>> = if plan.stores {
        Some(
            blocking(|| config.store.open())
                .map_err(|e| anyhow::anyhow!("cannot open the store ({}): {e}", config.store.describe()))?,
        )
    } else {
        None
    };
    let disabled = match &writer_store {
        Some(s) => blocking(|| ruleset::RuleState::stored_disabled(s.as_ref())),
        None => Default::default(),
    };
    let (engine, allow, warnings) = config.rules.load(&disabled).map_err(|e| anyhow::anyhow!("rules: {e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if engine.active_count() == 0 {
        bail!("no rule is active: nothing would be detected");
    }
    let open_read_only = || blocking(|| config.store.open_read_only());
    let metrics = Arc::new(metrics::Metrics::default());
    let healthy = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    // Sources hand their jobs to the writer, or with a bus to the publisher; the writer then
    // takes its jobs from the bus consumer.
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<writer::Job>(256);
    let (job_rx, publish_rx) = if bus.is_some() { (None, Some(job_rx)) } else { (Some(job_rx), None) };
    let (bus_job_tx, bus_job_rx) = std::sync::mpsc::sync_channel::<writer::Job>(16);
    let job_rx = job_rx.unwrap_or(bus_job_rx);
    let (det_tx, det_rx) = std::sync::mpsc::sync_channel::<writer::DetectMsg>(8);
    let commands = det_tx.clone();
    let (results_tx, results_rx) = std::sync::mpsc::sync_channel::<writer::Write>(4);
    let writes_for_api = results_tx.clone();
    // Sinks and their routes: any mistake stops the start, naming the sink.
    let mut routes = Vec::new();
    let mut sinks = Vec::new();
    for cfg in &config.sinks {
        routes.push(respond::Route::of(cfg).map_err(|e| anyhow::anyhow!(e))?);
        sinks.push(kustody_notify::Sink::new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let mut responder = respond::Responder::new(
        kustody_incident::Book::new(kustody_incident::Options {
            window_ns: config.incident_window_ns,
            cluster: config.cluster.clone(),
            ..Default::default()
        }),
        routes,
        kustody_incident::render::Context {
            data_dir: Some(config.data_dir.display().to_string()),
            url: config.public_url.clone(),
        },
    );
    responder.playbooks = config.playbooks.clone();
    let mut deliveries = Vec::new();
    for sink in sinks.into_iter().filter(|_| plan.stores) {
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
        responder.wake.insert(sink.name().to_owned(), wake_tx);
        let d = deliver::Delivery {
            // the store exists: it was opened for writing above
            store: open_read_only()?,
            sink,
            writes: results_tx.clone(),
            wake: wake_rx,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        deliveries.push(d);
    }
    let (publish, _) = tokio::sync::broadcast::channel::<Arc<str>>(1024);
    let pending: detect::PendingRules = Arc::new(std::sync::Mutex::new(None));
    let engine = Arc::new(engine);
    let rule_state = Arc::new(ruleset::RuleState::new(engine.clone(), disabled));

    let identity =
        Arc::new(identity::Identity::new(kustody_iphistory::Options { max_intervals: config.max_ip_intervals }));
    let writer = if let Some(store) = writer_store {
        // Who each IP was: stored holds, and the last hour of stored pod events.
        let keep = config.retention_max_age_ns.unwrap_or(30 * 24 * 3600 * 1_000_000_000);
        blocking(|| identity.restore(store.as_ref(), writer::now_ns(), keep));
        let identity = identity.clone();
        let metrics = metrics.clone();
        let healthy = healthy.clone();
        let cluster = config.cluster.clone();
        let forward = bus.is_none();
        let retention = writer::Retention {
            max_age_ns: config.retention_max_age_ns,
            max_bytes: config.retention_max_bytes,
            every: Duration::from_secs(60),
        };
        let handle = std::thread::Builder::new()
            .name("kustody-writer".into())
            .spawn(move || {
                writer::run(store, job_rx, results_rx, det_tx, metrics, retention, healthy, identity, cluster, forward)
            })
            .context("cannot start the writer")?;
        Some(handle)
    } else {
        None
    };
    // Playbook actions run on their own thread, through the writer for every record.
    let (exec_tx, exec_rx) = std::sync::mpsc::sync_channel::<execute::Job>(256);
    // Started for playbooks, and for the console's actions whenever a cluster is configured.
    let executor = if !plan.stores || (config.playbooks.is_empty() && config.connect.is_none()) {
        None
    } else {
        let e = execute::Executor {
            jobs: exec_rx,
            writes: results_tx.clone(),
            connect: config.connect.clone(),
            data_dir: config.data_dir.clone(),
            metrics: metrics.clone(),
            wake: responder.wake.clone(),
            store: open_read_only()?,
        };
        Some(std::thread::Builder::new().name("kustody-actions".into()).spawn(move || e.run())?)
    };
    let exec_for_api = executor.is_some().then(|| exec_tx.clone());
    let detector = if plan.stores {
        let thread = detect::DetectorThread {
            exec: executor.is_some().then_some(exec_tx),
            store: open_read_only()?,
            writes: results_tx,
            detector: kustody_rules::live::Detector::new(
                engine.clone(),
                Arc::new(allow),
                kustody_rules::findings::FindingOptions { window_ns: config.group_window_ns, ..Default::default() },
            ),
            others: std::collections::HashMap::new(),
            rx: det_rx,
            responder,
            metrics: metrics.clone(),
            publish: publish.clone(),
            pending: pending.clone(),
            cursor_written: std::time::Instant::now(),
            identity: identity.clone(),
            baseline: config.baseline.clone(),
            baseline_saving: Arc::default(),
            bus: bus.is_some(),
            block: 0,
            lease: None,
        };
        Some(
            std::thread::Builder::new()
                .name("kustody-detector".into())
                .spawn(move || thread.run())
                .context("cannot start the detector")?,
        )
    } else {
        None
    };
    // The bus: receivers publish what the sources hand over; detectors consume their
    // partitions into the writer and the detector.
    let mut bus_threads = Vec::new();
    if let (Some(b), Some(rx)) = (&bus, publish_rx) {
        let p = bus::Publisher {
            js: b.js.clone(),
            rt: tokio::runtime::Handle::current(),
            jobs: rx,
            partitions: b.partitions,
            max_payload: b.max_payload,
            cluster: config.cluster.clone(),
            metrics: metrics.clone(),
        };
        if plan.receives {
            bus_threads.push(std::thread::Builder::new().name("kustody-publish".into()).spawn(move || p.run())?);
        }
    }
    if let (Some(b), Some(cfg), true) = (&bus, &config.bus, plan.stores) {
        let c = bus::Consumer {
            js: b.js.clone(),
            rt: tokio::runtime::Handle::current(),
            store: blocking(|| config.store.open())
                .map_err(|e| anyhow::anyhow!("cannot open the store ({}): {e}", config.store.describe()))?,
            writer: bus_job_tx,
            detect: commands.clone(),
            partitions: b.partitions,
            ttl: cfg.lease_ttl,
            owner: bus::owner_name(),
            cluster: config.cluster.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        bus_threads.push(std::thread::Builder::new().name("kustody-consume".into()).spawn(move || c.run())?);
    } else {
        drop(bus_job_tx);
    }
    let mut senders = Vec::new();
    for d in deliveries {
        senders.push(std::thread::Builder::new().name("kustody-deliver".into()).spawn(move || d.run())?);
    }
    let mut sources = Vec::new();
    for path in &config.follow {
        let f = follow::Follower {
            path: path.clone(),
            store: open_read_only()?,
            writes: writes_for_api.clone(),
            jobs: job_tx.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            max_event_bytes: config.max_event_bytes,
            poll: Duration::from_millis(250),
        };
        sources.push(std::thread::Builder::new().name("kustody-follow".into()).spawn(move || f.run())?);
    }
    for eks in &config.eks {
        let src = cloud::EksSource {
            config: eks.clone(),
            store: open_read_only()?,
            writes: writes_for_api.clone(),
            jobs: job_tx.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            max_event_bytes: config.max_event_bytes,
            owner: bus::owner_name(),
        };
        sources.push(std::thread::Builder::new().name("kustody-eks".into()).spawn(move || src.run())?);
    }
    let (replay_done_tx, mut replay_done) = tokio::sync::oneshot::channel::<()>();
    if !config.replay.is_empty() {
        let (files, jobs, m, s, max) =
            (config.replay.clone(), job_tx.clone(), metrics.clone(), stop.clone(), config.max_event_bytes);
        sources.push(std::thread::Builder::new().name("kustody-replay".into()).spawn(move || {
            follow::replay(files, jobs, m, s, max);
            let _ = replay_done_tx.send(());
        })?);
    }
    if !config.follow.is_empty() {
        // The webhook's gaps: events only the log file delivered, once past the grace period.
        let (m, location, grace, s) = (metrics.clone(), config.store.clone(), config.gap_grace, stop.clone());
        std::thread::Builder::new().name("kustody-gaps".into()).spawn(move || {
            let mut reader = None;
            while !s.load(Relaxed) {
                if reader.is_none() {
                    reader = location.open_read_only().ok();
                }
                if let Some(store) = &reader {
                    let before = writer::now_ns() - grace.as_nanos() as i64;
                    match store.count_only_from(Origin::File, Origin::Webhook, before) {
                        Ok(n) => m.webhook_gaps.store(n, Relaxed),
                        // opened again next time
                        Err(_) => reader = None,
                    }
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        })?;
    }

    if config.watch_cluster {
        let Some(connect) = config.connect.clone() else {
            bail!("watching the cluster needs a cluster connection (--kubeconfig or in-cluster)");
        };
        let (identity, metrics) = (identity.clone(), metrics.clone());
        tokio::spawn(async move {
            // The first connection is retried: a cluster that is not reachable yet must not
            // stop the server, which keeps ingesting meanwhile.
            let mut wait = Duration::from_secs(1);
            let c = loop {
                match connect().await {
                    Ok(c) => break c,
                    Err(e) => {
                        metrics.watch_errors.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "cannot reach the cluster to watch it; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(60));
                    }
                }
            };
            tracing::info!(server = %c.server, "watching pods, nodes and Services");
            watch::run(c.client, identity, metrics).await;
        });
    }

    let oidc = match config.oidc {
        Some(cfg) => Some(Arc::new(console::oidc::Oidc::new(cfg).context("OpenID Connect")?)),
        None => None,
    };
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<()>(1);
    let rules = config.rules.clone();
    let where_rules = config.rules.clone();
    let state = Arc::new(http::AppState {
        jobs: job_tx,
        receives: plan.receives,
        queue: Arc::new(tokio::sync::Semaphore::new(config.queue_bytes)),
        queue_bytes: config.queue_bytes,
        max_request_bytes: config.max_request_bytes,
        max_event_bytes: config.max_event_bytes,
        tokens,
        metrics: metrics.clone(),
        publish,
        data_dir: config.data_dir.clone(),
        readers: Arc::new(http::Readers::new(config.store.clone())),
        healthy,
        compile_where: {
            // Compiled once per distinct condition (compiling reads every rule file), until the
            // rules are reloaded (their macros and lists may have changed).
            type Cache = (u64, std::collections::HashMap<String, WhereFilter>);
            let cache: std::sync::Mutex<Cache> = std::sync::Mutex::default();
            let rule_state = rule_state.clone();
            Arc::new(move |c: &str| {
                let generation = rule_state.generation.load(std::sync::atomic::Ordering::Acquire);
                if let Ok(mut k) = cache.lock() {
                    if k.0 != generation || k.1.len() >= 256 {
                        *k = (generation, Default::default());
                    }
                    if let Some(f) = k.1.get(c) {
                        return Ok(f.clone());
                    }
                }
                let f = where_rules.compile_where(c)?;
                if let Ok(mut k) = cache.lock() {
                    k.1.insert(c.to_owned(), f.clone());
                }
                Ok(f)
            })
        },
        reload: reload_tx.clone(),
        commands,
        writes: writes_for_api,
        public_url: config.public_url.clone(),
        exec: exec_for_api,
        connect: config.connect.clone(),
        rules: rule_state.clone(),
        oidc,
        sessions: Arc::default(),
        logins: Arc::new(tokio::sync::Semaphore::new(2)),
    });
    let app = http::router(state.clone());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let url = format!("https://{}", local);
    eprintln!(
        "kustody serve: listening on {url} (TLS certificate {} sha256 {}{}), data in {}",
        tls.cert_path.display(),
        tls.fingerprint,
        if tls.generated { ", generated" } else { "" },
        if matches!(config.store, kustody_store::Location::Sqlite(_)) {
            config.data_dir.display().to_string()
        } else {
            format!("{} (store: {})", config.data_dir.display(), config.store.describe())
        }
    );
    if let Some(p) = &config.ready_file {
        std::fs::write(p, format!("{url}\n")).with_context(|| format!("cannot write `{}`", p.display()))?;
    }

    // Rule reloads: SIGHUP, POST /v1/rules/reload, or a watched file changing; and, for detectors
    // sharing a store, a rule switched from another detector's console (the stored set read
    // every two seconds).
    {
        let pending = pending.clone();
        let metrics = metrics.clone();
        let rules = rules.clone();
        let rule_state = rule_state.clone();
        let shared = (config.bus.is_some() && plan.stores).then(|| state.readers.clone());
        tokio::spawn(async move {
            let mut last_stored: Option<Option<Vec<u8>>> = None;
            let mut stamps = stamps_of(&rules.watched());
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hup_fut = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = hup_fut => {}
                    Some(()) = reload_rx.recv() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {
                        let now = stamps_of(&rules.watched());
                        let switched = match &shared {
                            Some(readers) => {
                                let readers = readers.clone();
                                let stored = tokio::task::spawn_blocking(move || {
                                    readers.with(|st| st.state(ruleset::DISABLED).map_err(|e| e.to_string()))
                                })
                                .await;
                                // only a change of the stored set is taken (this console's own switch,
                                // made in memory before it is stored, is never undone by a read
                                // racing its write)
                                match stored {
                                    Ok(Ok(blob)) if last_stored.as_ref() != Some(&blob) => {
                                        let set: std::collections::BTreeSet<String> =
                                            blob.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
                                        last_stored = Some(blob);
                                        rule_state.adopt(set)
                                    }
                                    _ => false,
                                }
                            }
                            None => false,
                        };
                        if now == stamps && !switched { continue; }
                        if switched {
                            tracing::info!("rule switches changed in the shared store; reloading");
                        }
                        stamps = now;
                    }
                }
                let r = rules.clone();
                let disabled = rule_state.disabled();
                match tokio::task::spawn_blocking(move || r.load(&disabled)).await {
                    Ok(Ok((engine, allow, warnings))) if engine.active_count() > 0 => {
                        for w in warnings {
                            tracing::warn!("{w}");
                        }
                        let engine = Arc::new(engine);
                        if let Ok(mut p) = pending.lock() {
                            *p = Some((engine.clone(), Arc::new(allow)));
                        }
                        rule_state.installed(engine);
                        metrics.rule_reloads.fetch_add(1, Relaxed);
                        tracing::info!("rules reloaded");
                        eprintln!("kustody serve: rules reloaded");
                    }
                    Ok(Ok(_)) => {
                        metrics.rule_reload_failures.fetch_add(1, Relaxed);
                        tracing::error!("reloaded rules have no active rule; keeping the last good set");
                    }
                    Ok(Err(e)) => {
                        metrics.rule_reload_failures.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "rule reload failed; keeping the last good set");
                        eprintln!("kustody serve: rule reload failed, keeping the last good set: {e}");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(1024));
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let exit_after_replay = config.exit_after_replay && !config.replay.is_empty();
    // Connection tasks, to end those that outlive the graceful shutdown (a finding stream):
    // each holds the API's state, whose channel senders keep the detector and writer alive.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let replay_fut = async {
            if exit_after_replay {
                let _ = (&mut replay_done).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            () = replay_fut => break,
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            drop(tcp); // too many connections: the client retries
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                _ => return,
            };
            let peer = http::Peer {
                cert_name: tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(tls::client_name),
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let app = app.clone();
                async move {
                    use tower::ServiceExt;
                    app.oneshot(req.map(axum::body::Body::new)).await
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().header_read_timeout(Duration::from_secs(30)).timer(hyper_util::rt::TokioTimer::new());
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            let conn = watcher.watch(conn.into_owned());
            let _ = conn.await;
        });
    }
    eprintln!("kustody serve: stopping: finishing requests in flight");
    drop(listener);
    // Requests in flight finish (and are committed) before the writer is told to stop.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within 30 s; closing them");
    }
    conns.shutdown().await;
    stop.store(true, Relaxed);
    drop(app);
    drop(state);
    let joined = tokio::task::spawn_blocking(move || {
        for s in sources {
            let _ = s.join();
        }
        for b in bus_threads {
            let _ = b.join();
        }
        for d in senders {
            let _ = d.join();
        }
        if let Some(d) = detector {
            let _ = d.join();
        }
        if let Some(e) = executor {
            let _ = e.join();
        }
        if let Some(w) = writer {
            let _ = w.join();
        }
    })
    .await;
    if joined.is_err() {
        bail!("a server thread panicked during shutdown");
    }
    eprintln!("kustody serve: stopped; everything acknowledged is stored");
    Ok(())
}

fn tokens(config: &Config) -> Result<auth::Tokens> {
    let path = match &config.tokens_file {
        Some(p) => p.clone(),
        None => {
            let p = config.data_dir.join(TOKEN_FILE);
            if !p.exists() {
                let t = auth::random_token()?;
                tls::write_private(
                    &p,
                    format!("# TOKEN NAME ROLES (ingest, read, admin); made by kustody serve on first start\n{t} admin admin\n").as_bytes(),
                )?;
                eprintln!("kustody serve: made an admin token in {} (keep it secret)", p.display());
            }
            p
        }
    };
    let t = auth::Tokens::load(&path)?;
    if t.is_empty() && config.client_ca.is_none() {
        bail!("no token in `{}` and no --client-ca: nobody could send events", path.display());
    }
    Ok(t)
}

fn stamps_of(files: &[PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
}
