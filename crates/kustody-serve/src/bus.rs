//! The bus: NATS JetStream between receivers and detectors (`kustody serve --role
//! receiver|detector|all --bus nats://…`).
//!
//! ```text
//! apiserver ─► receiver ─┐  publish, one message per partition       ┌─► detector A: partitions 0..7
//! apiserver ─► receiver ─┼─► stream KUSTODY (file, WorkQueue) ───────┤   (leases in PostgreSQL)
//! Falco ─────► receiver ─┘   kustody.events.<p>, kustody.alerts       └─► detector B: partitions 8..15
//! ```
//!
//! - **Receivers** answer a sender only once JetStream acknowledged every message of its batch
//!   (the server runs with `sync_interval: always`: acknowledged means fsync'd). An event goes
//!   to partition `hash(cluster, user) % N`, so one identity's events reach one detector at a
//!   time, in order: correlation, grouping and incidents stay whole.
//! - **Detectors** hold leases on partitions in PostgreSQL (`Store::bus_leases`), each a fair
//!   share among the live detectors; a lease unrenewed for its time-to-live goes to another.
//!   Taking a partition re-creates its durable pull consumer, so delivery starts again at the
//!   oldest unacknowledged message, in stream order.
//! - A partition's **cursor** (the stream sequence of its last evaluated message) is committed
//!   with the message's findings in one transaction; the message is acknowledged after that.
//!   A message at or below the cursor (its round was committed but not acknowledged) is
//!   acknowledged and skipped, so a finding is never recorded twice. Events are stored before
//!   they are evaluated: after a takeover the first message's events already stored by the
//!   previous holder are looked up and evaluated, so none goes unevaluated.
//! - Runtime alerts need no order: every detector pulls from one shared consumer.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, consumer::PullConsumer, Context};
use futures_util::StreamExt;
use kustody_store::{Appended, EventRow, Origin, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use tokio::runtime::Handle;

use crate::metrics::Metrics;
use crate::writer::{now_ns, DetectMsg, Job, Round, ToDetect};
use kustody_ingest::frames::{bodies, decode};

/// The stream's name.
pub const STREAM: &str = "KUSTODY";
/// Subject of runtime alerts.
pub const ALERTS: &str = "kustody.alerts";
/// The stream metadata key holding the partition count (receivers and detectors must agree).
const PARTITIONS_KEY: &str = "kustody.partitions";
/// Messages of one partition evaluated in one round (one commit of events, one of findings).
const ROUND_MESSAGES: usize = 64;
/// Bytes kept free in a message for its headers.
const HEADROOM: usize = 16 << 10;

/// The subject of partition `p`.
pub fn subject(p: u32) -> String {
    format!("kustody.events.{p}")
}

/// What `--role` says this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receive, store and detect (with a bus: publish, then consume).
    All,
    /// Receive and publish to the bus; no store.
    Receiver,
    /// Consume from the bus, store and detect; serve searches and the console.
    Detector,
}

/// How to reach the bus (`--bus*`).
#[derive(Clone)]
pub struct BusConfig {
    /// `nats://host:4222` or `tls://host:4222` (several, comma-separated).
    pub url: String,
    /// A token (`--bus-token-file`).
    pub token: Option<SecretString>,
    /// A NATS credentials file (JWT and NKey seed, `--bus-credentials`).
    pub credentials: Option<PathBuf>,
    /// CA to verify the server's certificate with; TLS is then required.
    pub ca: Option<PathBuf>,
    /// Partitions of the event subjects (fixed for a stream's life).
    pub partitions: u32,
    /// The stream's size bound: beyond it publishes are refused (receivers answer 503).
    pub max_bytes: i64,
    /// Stream replicas (1 for a single server; 3 on a three-node JetStream cluster).
    pub replicas: usize,
    /// A detector's lease time-to-live.
    pub lease_ttl: Duration,
}

impl BusConfig {
    pub fn new(url: String) -> BusConfig {
        BusConfig {
            url,
            token: None,
            credentials: None,
            ca: None,
            partitions: 16,
            max_bytes: 10 << 30,
            replicas: 1,
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// A connected bus.
pub struct Bus {
    pub js: Context,
    /// The largest message the server takes.
    pub max_payload: usize,
    pub partitions: u32,
}

/// Connects and makes sure the stream exists with this partition count.
///
/// # Errors
///
/// When the server cannot be reached or refuses the credentials, has no JetStream, or holds
/// a stream with another partition count.
pub async fn connect(cfg: &BusConfig) -> Result<Bus> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("kustody")
        .connection_timeout(Duration::from_secs(10))
        .event_callback(|e| async move {
            match e {
                async_nats::Event::Connected => tracing::info!("bus connected"),
                async_nats::Event::Disconnected => tracing::warn!("bus disconnected; reconnecting"),
                other => tracing::info!(event = %other, "bus"),
            }
        });
    if let Some(t) = &cfg.token {
        opts = opts.token(t.expose_secret().to_owned());
    }
    if let Some(c) = &cfg.credentials {
        opts = opts.credentials_file(c).await.with_context(|| format!("bus credentials file `{}`", c.display()))?;
    }
    if let Some(ca) = &cfg.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client =
        opts.connect(cfg.url.as_str()).await.with_context(|| format!("cannot reach the bus at {}", cfg.url))?;
    let max_payload = client.server_info().max_payload;
    let js = jetstream::new(client);
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(PARTITIONS_KEY.to_owned(), cfg.partitions.to_string());
    let want = jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["kustody.events.*".to_owned(), ALERTS.to_owned()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        max_bytes: cfg.max_bytes,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(120),
        metadata,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(want).await.context("cannot create or open the bus stream")?;
    let info = stream.info().await.context("cannot read the bus stream")?;
    let found = info.config.metadata.get(PARTITIONS_KEY).and_then(|v| v.parse::<u32>().ok());
    if found != Some(cfg.partitions) {
        bail!(
            "the bus stream {STREAM} has {} partitions, this process was told {} (--bus-partitions must be the same \
             everywhere)",
            found.map_or_else(|| "no recorded number of".to_owned(), |n| n.to_string()),
            cfg.partitions
        );
    }
    Ok(Bus { js, max_payload, partitions: cfg.partitions })
}

/// The partition of an identity's events: FNV-1a over cluster and user, modulo `n` (stable
/// across versions and machines: receivers built at different times agree).
pub fn partition_of(cluster: Option<&str>, user: Option<&str>, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster.unwrap_or("").bytes().chain([0]).chain(user.unwrap_or("").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(h % u64::from(n.max(1))).unwrap_or(0)
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Webhook => "webhook",
        Origin::File => "file",
        Origin::Replay => "replay",
        Origin::Cloud => "cloud",
    }
}

fn origin_of(name: &str) -> Origin {
    match name {
        "file" => Origin::File,
        "replay" => Origin::Replay,
        "cloud" => Origin::Cloud,
        _ => Origin::Webhook,
    }
}

/// A receiver's publisher: takes the jobs the sources hand over (as the writer does without a
/// bus) and answers each once JetStream acknowledged all of it.
pub struct Publisher {
    pub js: Context,
    pub rt: Handle,
    pub jobs: Receiver<Job>,
    pub partitions: u32,
    pub max_payload: usize,
    /// Stamped on every message (`--cluster`).
    pub cluster: Option<String>,
    pub metrics: Arc<Metrics>,
}

type Pending = Vec<async_nats::jetstream::context::PublishAckFuture>;

impl Publisher {
    /// Runs until every job sender is gone.
    pub fn run(self) {
        while let Ok(first) = self.jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < 64 {
                match self.jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.rt.block_on(self.publish(batch));
        }
    }

    /// Sends every job's messages, then waits for their acknowledgements (pipelined), then
    /// answers each job.
    async fn publish(&self, batch: Vec<Job>) {
        let mut waiting: Vec<(Result<Pending, String>, u64, crate::writer::Reply)> = Vec::new();
        for job in batch {
            let (sent, n, reply) = match job {
                Job::Events { rows, origin, received, reply } => {
                    let n = rows.len() as u64;
                    (self.send_events(&rows, origin, received).await, n, reply)
                }
                Job::Alerts { rows, reply } => {
                    let n = rows.len() as u64;
                    let texts: Vec<&str> = rows.iter().map(|a| a.raw.as_str()).collect();
                    (self.send(ALERTS, "alerts", self.cluster.as_deref(), &texts, Instant::now()).await, n, reply)
                }
            };
            waiting.push((sent, n, reply));
        }
        for (sent, n, reply) in waiting {
            let mut result = sent;
            if let Ok(acks) = result {
                result = Ok(Vec::new());
                for a in
                    futures_util::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
                {
                    if let Err(e) = a {
                        result = Err(format!("the bus did not acknowledge: {e}"));
                    }
                }
            }
            let answer = match result {
                Ok(_) => {
                    self.metrics.bus_published.fetch_add(n, Relaxed);
                    Ok(Appended { stored: n, duplicates: 0, ids: vec![None; usize::try_from(n).unwrap_or(0)] })
                }
                Err(e) => {
                    self.metrics.bus_publish_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "publish to the bus failed: nothing of this batch was acknowledged");
                    Err(if e.contains("maximum bytes") || e.contains("insufficient resources") {
                        StoreError::Full(format!("the bus is full: {e}"))
                    } else {
                        StoreError::Busy(e)
                    })
                }
            };
            let _ = reply.send(answer);
        }
    }

    async fn send_events(
        &self,
        rows: &[EventRow<'static>],
        origin: Origin,
        received: Instant,
    ) -> Result<Pending, String> {
        // a message per partition and cluster: a message names its events' cluster (a cloud
        // source's events carry their own; the rest are this receiver's)
        let mut parts: BTreeMap<(u32, Option<&str>), Vec<&str>> = BTreeMap::new();
        for r in rows {
            let cluster = r.cluster.as_deref().or(self.cluster.as_deref());
            parts.entry((partition_of(cluster, r.user.as_deref(), self.partitions), cluster)).or_default().push(&r.raw);
        }
        let mut acks = Vec::new();
        for ((p, cluster), texts) in parts {
            acks.extend(self.send(&subject(p), origin_name(origin), cluster, &texts, received).await?);
        }
        Ok(acks)
    }

    async fn send(
        &self,
        subject: &str,
        origin: &str,
        cluster: Option<&str>,
        texts: &[&str],
        received: Instant,
    ) -> Result<Pending, String> {
        let arrived = now_ns() - i64::try_from(received.elapsed().as_nanos()).unwrap_or(0);
        let mut acks = Vec::new();
        for body in bodies(texts, self.max_payload.saturating_sub(HEADROOM).max(1024))? {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Kustody-Origin", origin);
            h.insert("Kustody-Received", arrived.to_string().as_str());
            if let Some(c) = cluster {
                h.insert("Kustody-Cluster", c);
            }
            let msg = async_nats::jetstream::message::PublishMessage::build().payload(body.into()).headers(h);
            let ack =
                self.js.send_publish(subject.to_owned(), msg).await.map_err(|e| format!("cannot publish: {e}"))?;
            acks.push(ack);
        }
        Ok(acks)
    }
}

/// A partition this detector holds.
struct Part {
    epoch: i64,
    consumer: PullConsumer,
    /// Stream sequence of the last message whose round is committed.
    cursor: i64,
    /// Look up the stored ids of events the store calls duplicates (the first message after
    /// a takeover, or one being retried): they may never have been evaluated.
    recheck: bool,
    pending: VecDeque<jetstream::Message>,
    /// The consumer sequence the next delivery must have: a gap (a delivery this process
    /// never saw: a fetch cut short, a reconnect) means the consumer is made afresh, since
    /// JetStream would send the missed message again only after the ack wait, out of order.
    next_delivery: Option<u64>,
}

/// A detector's consumer: leases, then each held partition's messages, in order.
pub struct Consumer {
    pub js: Context,
    pub rt: Handle,
    /// A writing connection of its own (leases, cursors, lookups).
    pub store: Box<dyn Store>,
    /// The writer (stores events and alerts).
    pub writer: SyncSender<Job>,
    /// The detector thread.
    pub detect: SyncSender<DetectMsg>,
    pub partitions: u32,
    pub ttl: Duration,
    /// Who this detector is in the leases table.
    pub owner: String,
    /// The cluster of messages that name none.
    pub cluster: Option<String>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
}

/// A round that failed and is tried again (the store or the bus is away).
struct Retry(String);

impl Consumer {
    pub fn run(mut self) {
        let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
        let mut renewed: Option<Instant> = None;
        let mut last_tick: Option<Instant> = None;
        // after a start or a change of hands, leases are looked at every second for a while
        // (a new detector gets its share in seconds); otherwise every fifth of the lease
        let mut changed = Instant::now();
        let mut alerts: Option<PullConsumer> = None;
        while !self.stop.load(Relaxed) {
            let every = if changed.elapsed() < self.ttl * 2 { Duration::from_secs(1) } else { self.ttl / 5 };
            if last_tick.is_none_or(|t| t.elapsed() >= every) {
                last_tick = Some(Instant::now());
                let before: Vec<(u32, i64)> = parts.iter().map(|(p, x)| (*p, x.epoch)).collect();
                self.tick(&mut parts, &mut renewed);
                if parts.iter().map(|(p, x)| (*p, x.epoch)).ne(before) {
                    changed = Instant::now();
                }
            }
            // Leases expire `ttl` after the renewal was asked for (PostgreSQL's clock, which the
            // others go by): this detector stops a sixth of it earlier.
            if renewed.is_none_or(|r| r.elapsed() >= self.ttl * 5 / 6) && !parts.is_empty() {
                // Another detector may hold them now: stop before it starts.
                tracing::warn!(partitions = parts.len(), "bus leases not renewed in time; letting go of them");
                parts.clear();
                self.metrics.bus_partitions.store(0, Relaxed);
                let _ = self.detect.send(DetectMsg::Released { held: Vec::new(), partitions: self.partitions });
            }
            let mut busy = false;
            let mut failed = None;
            for (p, part) in &mut parts {
                if renewed.is_none_or(|r| r.elapsed() >= self.ttl * 5 / 6) {
                    break; // let go (above) before evaluating more
                }
                match self.serve(*p, part) {
                    Ok(n) => busy |= n > 0,
                    Err(Retry(e)) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if alerts.is_none() {
                alerts = self.rt.block_on(self.alerts_consumer()).map_err(|e| failed = Some(e.0)).ok();
            }
            if let Some(a) = &alerts {
                match self.serve_alerts(a) {
                    Ok(n) => busy |= n > 0,
                    Err(Retry(e)) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                tracing::error!(error = %e, "bus round failed; retrying");
                std::thread::sleep(Duration::from_millis(500));
            } else if !busy {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Hand the partitions over at once rather than after the leases expire.
        if let Err(e) = self.store.release_leases(&self.owner, None) {
            tracing::warn!(error = %e, "cannot release the bus leases; they expire by themselves");
        }
    }

    /// Renews and adjusts the leases; re-creates the consumers of partitions taken.
    fn tick(&mut self, parts: &mut BTreeMap<u32, Part>, renewed: &mut Option<Instant>) {
        let asked = Instant::now();
        let held = match self.store.bus_leases(&self.owner, self.partitions, self.ttl) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the bus leases");
                return;
            }
        };
        *renewed = Some(asked);
        let before = parts.len();
        parts.retain(|p, part| held.iter().any(|(q, epoch)| q == p && *epoch == part.epoch));
        if parts.len() < before {
            let kept = parts.keys().copied().collect();
            let _ = self.detect.send(DetectMsg::Released { held: kept, partitions: self.partitions });
        }
        let mut took = false;
        for (p, epoch) in held {
            if parts.contains_key(&p) {
                continue;
            }
            match self.take(p, epoch) {
                Ok(part) => {
                    self.metrics.bus_takeovers.fetch_add(1, Relaxed);
                    parts.insert(p, part);
                    took = true;
                }
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "cannot take the bus partition; giving it back");
                    let _ = self.store.release_leases(&self.owner, Some(&[p]));
                }
            }
        }
        self.metrics.bus_partitions.store(parts.len() as u64, Relaxed);
        if took {
            tracing::info!(partitions = ?parts.keys().collect::<Vec<_>>(), "bus partitions held");
            // The incidents of identities now evaluated here, as their last holder left them.
            let held = parts.keys().copied().collect();
            let _ = self.detect.send(DetectMsg::Restore { held, partitions: self.partitions });
        }
    }

    /// Takes partition `p`: its committed cursor, and its consumer made afresh so delivery
    /// starts at the oldest unacknowledged message (its previous holder's deliveries forgotten).
    fn take(&mut self, p: u32, epoch: i64) -> Result<Part, String> {
        let cursor = self.store.cursor(&cursor_name(p)).map_err(|e| e.to_string())?;
        let name = format!("kustody-p{p}");
        let consumer = self.rt.block_on(async {
            let stream = self.js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
            match stream.delete_consumer(&name).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(format!("cannot reset consumer {name}: {e}")),
            }
            stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject(p),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // never redelivered to the holder while it retries: it keeps its own queue
                    ack_wait: Duration::from_secs(600),
                    max_ack_pending: 1024,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create consumer {name}: {e}"))
        })?;
        Ok(Part { epoch, consumer, cursor, recheck: true, pending: VecDeque::new(), next_delivery: Some(1) })
    }

    /// Makes partition `p`'s consumer afresh (delivery restarts at its oldest unacknowledged
    /// message), keeping the cursor.
    fn reset(&mut self, p: u32, part: &mut Part) -> Result<(), Retry> {
        let fresh = self.take(p, part.epoch).map_err(Retry)?;
        part.consumer = fresh.consumer;
        part.pending.clear();
        part.next_delivery = Some(1);
        part.recheck = true;
        Ok(())
    }

    async fn alerts_consumer(&self) -> Result<PullConsumer, Retry> {
        let stream = self.js.get_stream(STREAM).await.map_err(|e| Retry(e.to_string()))?;
        stream
            .get_or_create_consumer(
                "kustody-alerts",
                jetstream::consumer::pull::Config {
                    durable_name: Some("kustody-alerts".to_owned()),
                    filter_subject: ALERTS.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Retry(format!("cannot open the alerts consumer: {e}")))
    }

    /// Whatever messages are waiting, without waiting for more.
    fn fetch(&self, consumer: &PullConsumer, max: usize) -> Result<Vec<jetstream::Message>, Retry> {
        self.rt.block_on(async {
            let mut got = Vec::new();
            let fetched = tokio::time::timeout(Duration::from_secs(5), async {
                let mut batch =
                    consumer.fetch().max_messages(max).messages().await.map_err(|e| Retry(e.to_string()))?;
                while let Some(m) = batch.next().await {
                    got.push(m.map_err(|e| Retry(e.to_string()))?);
                }
                Ok::<_, Retry>(())
            })
            .await;
            match fetched {
                Ok(Ok(())) => Ok(got),
                // cut short: what was delivered but not received would come again only after
                // the ack wait, so nothing of it is used (the caller makes the consumer afresh)
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Retry("a fetch from the bus timed out".into())),
            }
        })
    }

    /// Evaluates partition `p`'s waiting messages in order, several per round; a failed round
    /// stays first in the queue.
    fn serve(&mut self, p: u32, part: &mut Part) -> Result<usize, Retry> {
        // a few at a time, so the leases are renewed between partitions' turns
        if part.pending.is_empty() {
            let got = match self.fetch(&part.consumer, ROUND_MESSAGES) {
                Ok(got) => got,
                Err(e) => {
                    part.next_delivery = None;
                    return Err(e);
                }
            };
            // every delivery in sequence, or the consumer is made afresh
            for m in &got {
                let seq = m.info().map(|i| i.consumer_sequence).ok();
                if part.next_delivery.is_some() && seq == part.next_delivery {
                    part.next_delivery = seq.map(|s| s + 1);
                } else {
                    part.next_delivery = None;
                }
            }
            if part.next_delivery.is_none() {
                tracing::warn!(partition = p, "bus deliveries out of sequence; making the consumer afresh");
                self.reset(p, part)?;
                return Ok(0);
            }
            part.pending.extend(got);
        }
        if part.pending.is_empty() {
            return Ok(0);
        }
        let n = part.pending.len();
        let msgs: Vec<jetstream::Message> = part.pending.drain(..).collect();
        if let Err(e) = self.round(p, part, &msgs) {
            part.recheck = true;
            part.pending.extend(msgs);
            return Err(e);
        }
        Ok(n)
    }

    /// Messages of one partition, in order: their events stored, evaluated with the cursor in
    /// the same commit as the findings, then the messages acknowledged.
    fn round(&self, p: u32, part: &mut Part, msgs: &[jetstream::Message]) -> Result<(), Retry> {
        let mut fresh = Vec::with_capacity(msgs.len());
        let mut last = part.cursor;
        for m in msgs {
            let seq = m
                .info()
                .map(|i| i64::try_from(i.stream_sequence).unwrap_or(i64::MAX))
                .map_err(|e| Retry(e.to_string()))?;
            if seq <= last {
                // its round was committed: only its acknowledgement was lost
                self.metrics.bus_redelivered.fetch_add(1, Relaxed);
                self.acks(&[m]);
            } else {
                last = seq;
                fresh.push(m);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        // Each message's events with its cluster, grouped by origin (one writer job each).
        let mut texts: Vec<String> = Vec::new();
        let mut rows: Vec<EventRow<'static>> = Vec::new();
        let mut origins: Vec<Origin> = Vec::new();
        let mut earliest = now_ns();
        let mut clusters: Vec<Option<String>> = Vec::new();
        for m in &fresh {
            let header = |k: &str| m.headers.as_ref().and_then(|h| h.get(k)).map(|v| v.as_str().to_owned());
            let cluster = header("Kustody-Cluster").or_else(|| self.cluster.clone());
            let origin = origin_of(header("Kustody-Origin").as_deref().unwrap_or(""));
            if let Some(t) = header("Kustody-Received").and_then(|v| v.parse::<i64>().ok()) {
                earliest = earliest.min(t);
            }
            let decoded = match decode(&m.payload) {
                Ok(t) => t,
                Err(e) => {
                    // Not a receiver's message: it can never be read; logged and counted.
                    self.metrics.rejected_events.fetch_add(1, Relaxed);
                    tracing::error!(partition = p, error = %e, "unreadable bus message; terminated");
                    self.rt.block_on(async {
                        let _ = m.ack_with(jetstream::AckKind::Term).await;
                    });
                    continue;
                }
            };
            for t in decoded {
                match kustody_model::Event::parse(&t) {
                    Ok(ev) => {
                        let mut row = crate::payload::owned(EventRow::of(&ev));
                        row.cluster.clone_from(&cluster);
                        rows.push(row);
                        origins.push(origin);
                        clusters.push(cluster.clone());
                        texts.push(t);
                    }
                    Err(e) => {
                        self.metrics.rejected_events.fetch_add(1, Relaxed);
                        tracing::error!(partition = p, error = %e, "an event on the bus is unreadable");
                    }
                }
            }
        }
        let received = Instant::now()
            .checked_sub(Duration::from_nanos(u64::try_from(now_ns() - earliest).unwrap_or(0)))
            .unwrap_or_else(Instant::now);
        let ids = self.store_rows(&rows, &origins, received, part.recheck)?;
        let mut events: Vec<(i64, String)> = Vec::with_capacity(texts.len());
        let mut event_clusters = Vec::with_capacity(texts.len());
        let mut seen = std::collections::HashSet::new();
        for ((id, t), c) in ids.into_iter().zip(texts).zip(clusters) {
            // the same event twice in a round (a sender's retry published again): once
            if let Some(id) = id.filter(|id| seen.insert(*id)) {
                events.push((id, t));
                event_clusters.push(c);
            }
        }
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let lease = (p, self.owner.clone(), part.epoch);
        let round = Round { cursor: (cursor_name(p), last), lease, done: done_tx };
        self.detect
            .send(DetectMsg::Events(ToDetect { events, clusters: event_clusters, received, round: Some(round) }))
            .map_err(|_| Retry("the detector stopped".into()))?;
        match done_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Retry(format!("findings not stored: {e}"))),
            Err(_) => return Err(Retry("the detector stopped".into())),
        }
        part.cursor = last;
        part.recheck = false;
        self.acks(&fresh);
        self.metrics.bus_consumed.fetch_add(fresh.len() as u64, Relaxed);
        self.metrics.bus_lag_seconds.observe(received.elapsed().as_secs_f64());
        Ok(())
    }

    /// Stores a round's events (one writer job per origin) and returns their ids in order;
    /// with `recheck`, events already stored are looked up (they may never have been
    /// evaluated: a previous holder died between storing and evaluating them).
    fn store_rows(
        &self,
        rows: &[EventRow<'static>],
        origins: &[Origin],
        received: Instant,
        recheck: bool,
    ) -> Result<Vec<Option<i64>>, Retry> {
        let mut ids: Vec<Option<i64>> = vec![None; rows.len()];
        let mut kinds: Vec<Origin> = Vec::new();
        for o in origins {
            if !kinds.contains(o) {
                kinds.push(*o);
            }
        }
        for origin in kinds {
            let at: Vec<usize> = (0..rows.len()).filter(|i| origins.get(*i) == Some(&origin)).collect();
            let job_rows: Vec<EventRow<'static>> = at.iter().filter_map(|i| rows.get(*i).cloned()).collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.writer
                .send(Job::Events { rows: job_rows, origin, received, reply: tx })
                .map_err(|_| Retry("the writer stopped".into()))?;
            let appended = rx
                .blocking_recv()
                .map_err(|_| Retry("the writer stopped".into()))?
                .map_err(|e| Retry(format!("events not stored: {e}")))?;
            for (i, id) in at.into_iter().zip(appended.ids) {
                if let Some(slot) = ids.get_mut(i) {
                    *slot = id;
                }
            }
        }
        if recheck && ids.iter().any(Option::is_none) {
            let found = self.store.stored_event_ids(rows).map_err(|e| Retry(e.to_string()))?;
            for (id, f) in ids.iter_mut().zip(found) {
                if id.is_none() {
                    *id = f;
                }
            }
        }
        Ok(ids)
    }

    /// Acknowledges messages (sent, then flushed once); a lost acknowledgement only means a
    /// message comes again and is skipped by the cursor.
    fn acks(&self, msgs: &[&jetstream::Message]) {
        self.rt.block_on(async {
            let sent = tokio::time::timeout(Duration::from_secs(5), async {
                for m in msgs {
                    m.ack().await?;
                }
                Ok::<_, async_nats::Error>(())
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "bus acknowledgement failed; the messages come again"),
                Err(_) => tracing::warn!("bus acknowledgement timed out; the messages come again"),
            }
        });
    }

    /// Stores waiting runtime alerts (their de-duplication makes a redelivery harmless).
    fn serve_alerts(&self, consumer: &PullConsumer) -> Result<usize, Retry> {
        let msgs = self.fetch(consumer, 64)?;
        let n = msgs.len();
        for m in msgs {
            let cluster = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Kustody-Cluster"))
                .map(|v| v.as_str().to_owned())
                .or_else(|| self.cluster.clone());
            let mut rows = Vec::new();
            match decode(&m.payload) {
                Ok(texts) => {
                    for t in texts {
                        let (good, bad) = kustody_ingest::falco::parse(t.as_bytes());
                        self.metrics.rejected_events.fetch_add(bad.len() as u64, Relaxed);
                        rows.extend(good.into_iter().map(|mut a| {
                            a.cluster.clone_from(&cluster);
                            a
                        }));
                    }
                }
                Err(e) => {
                    self.metrics.rejected_events.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "unreadable alerts message on the bus; terminated");
                    self.rt.block_on(async {
                        let _ = m.ack_with(jetstream::AckKind::Term).await;
                    });
                    continue;
                }
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.writer.send(Job::Alerts { rows, reply: tx }).map_err(|_| Retry("the writer stopped".into()))?;
            match rx.blocking_recv() {
                Ok(Ok(_)) => self.acks(&[&m]),
                // not acknowledged: it comes again after its ack wait
                Ok(Err(e)) => return Err(Retry(format!("alerts not stored: {e}"))),
                Err(_) => return Err(Retry("the writer stopped".into())),
            }
        }
        Ok(n)
    }
}

/// The store cursor of partition `p`.
pub fn cursor_name(p: u32) -> String {
    format!("bus.{p}")
}

/// This process's name in the leases table: host, process id and a random part.
pub fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut r = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!("{}-{}-{}", host.trim(), std::process::id(), u32::from_le_bytes(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of `prod\0alice` modulo 2^30, computed independently.
    const PINNED: u32 = 892_525_628;

    #[test]
    fn partitions_are_stable_and_spread() {
        // fixed values: receivers of different builds must agree
        assert_eq!(partition_of(Some("prod"), Some("alice"), 1 << 30), PINNED);
        assert_ne!(partition_of(Some("a"), Some("bc"), 1 << 30), partition_of(Some("ab"), Some("c"), 1 << 30));
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[partition_of(Some("c"), Some(&format!("system:serviceaccount:ns:sa-{i}")), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(partition_of(None, None, 0), 0);
    }
}
