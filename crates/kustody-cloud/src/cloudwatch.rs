//! CloudWatch Logs, where EKS writes its audit log (`/aws/eks/NAME/cluster`, streams
//! `kube-apiserver-audit-*`), read with FilterLogEvents and a cursor that loses nothing.
//!
//! Why a cursor on time alone loses events: CloudWatch filters on the event's timestamp, but
//! events arrive late (ingested seconds or minutes after their timestamp), and several share a
//! millisecond. A reader that moves its start past the newest timestamp it saw (`+ 1 ms`, as
//! Falco's k8saudit-eks did until 2025) loses late events of that millisecond; any reader of
//! `[newest, now]` loses events ingested after it passed their timestamp.
//!
//! So [`Cursor`] makes two kinds of pass, every event de-duplicated by its `eventId`:
//!
//! - a **live** pass every poll over `[live, now]`, `live` being the newest timestamp read
//!   (inclusive: the rest of that millisecond is read again, its known events dropped by id);
//! - a **settle** pass, every `settle_every`, over `[settled, now - lateness]`: events with
//!   a timestamp in it that came after the live passes went by. After it, nothing older than
//!   `now - lateness` is read again; an event ingested more than `lateness` after its
//!   timestamp would be missed, and the reader reports the largest lateness it sees
//!   (`ingestionTime - timestamp`) so the setting can be checked against reality.
//!
//! A live pass that starts at or before `settled` settles everything up to its own end minus
//! `lateness` (what a first start or a resume does): after a restart, reading resumes at the
//! stored `settled` point, and events read again fall to the store's de-duplication.
//!
//! [`Reader`] makes the calls: a token bucket per account and region (FilterLogEvents allows 5
//! calls a second per account and region, for every tool together), pages followed through
//! `nextToken` (an empty page with a token is not the end), and a smaller page when an answer
//! would be too large to read.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError, Kind};
use crate::limit::Bucket;

/// One event as FilterLogEvents returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    #[serde(default)]
    pub log_stream_name: String,
    pub timestamp: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub ingestion_time: i64,
    #[serde(default)]
    pub event_id: String,
}

/// What is stored after each committed page: where a restart resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The newest timestamp read by live passes (ms).
    pub live_ms: i64,
    /// Everything with a timestamp before it has been read (ms).
    pub settled_ms: i64,
}

/// The cursor's settings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How late an event may be ingested after its timestamp and still be read (ms).
    pub lateness_ms: i64,
    /// How often a settle pass runs (ms).
    pub settle_every_ms: i64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { lateness_ms: 120_000, settle_every_ms: 30_000 }
    }
}

/// Which pass a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Live,
    Settle,
}

/// The next FilterLogEvents call: `[start_ms, end_ms]`, both inclusive, from `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: PassKind,
    pub start_ms: i64,
    pub end_ms: i64,
    pub token: Option<String>,
}

/// What a page brought.
#[derive(Debug, Default)]
pub struct Page {
    /// Events not read before, in the page's order.
    pub new: Vec<LogEvent>,
    /// Events read before (dropped by id).
    pub repeated: usize,
    /// Events of other streams than the audit log's (dropped).
    pub other_streams: usize,
    /// Whether this page ended its pass.
    pub pass_done: Option<PassKind>,
    /// The largest `ingestionTime - timestamp` of the page (ms).
    pub max_lateness_ms: i64,
}

/// The no-I/O cursor (see the module's documentation).
#[derive(Debug)]
pub struct Cursor {
    live_ms: i64,
    settled_ms: i64,
    /// Events read, by a hash of their id, with their timestamps: those at or after
    /// `settled_ms` (a settle pass reads them again).
    seen: HashMap<u64, i64>,
    timing: Timing,
    stream_prefix: String,
    pass: Option<Request>,
    pass_max_ms: i64,
    last_settle_ms: i64,
}

fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Cursor {
    /// A cursor reading from `since_ms` (a first start).
    pub fn new(since_ms: i64, timing: Timing, stream_prefix: &str) -> Cursor {
        Cursor {
            live_ms: since_ms,
            settled_ms: since_ms,
            seen: HashMap::new(),
            timing,
            stream_prefix: stream_prefix.to_owned(),
            pass: None,
            pass_max_ms: i64::MIN,
            last_settle_ms: i64::MIN,
        }
    }

    /// A cursor resuming at a stored checkpoint: it reads again from the settled point.
    pub fn resume(cp: Checkpoint, timing: Timing, stream_prefix: &str) -> Cursor {
        Cursor::new(cp.settled_ms, timing, stream_prefix)
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint { live_ms: self.live_ms, settled_ms: self.settled_ms }
    }

    /// Events remembered for de-duplication.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Whether a settle pass is due at `now_ms`.
    fn settle_due(&self, now_ms: i64) -> bool {
        let end = now_ms - self.timing.lateness_ms;
        end > self.settled_ms && now_ms.saturating_sub(self.last_settle_ms) >= self.timing.settle_every_ms
    }

    /// The request to make at `now_ms`: the current pass's next page, else a new pass.
    pub fn next_request(&mut self, now_ms: i64) -> Request {
        if let Some(p) = &self.pass {
            return p.clone();
        }
        let req = if self.settle_due(now_ms) && self.live_ms > self.settled_ms {
            Request {
                kind: PassKind::Settle,
                start_ms: self.settled_ms,
                end_ms: now_ms - self.timing.lateness_ms,
                token: None,
            }
        } else {
            Request { kind: PassKind::Live, start_ms: self.live_ms, end_ms: now_ms.max(self.live_ms), token: None }
        };
        self.pass = Some(req.clone());
        self.pass_max_ms = i64::MIN;
        req
    }

    /// Takes a page of the current pass (`next_token`: the answer's `nextToken`).
    pub fn page(&mut self, events: Vec<LogEvent>, next_token: Option<String>) -> Page {
        let mut out = Page::default();
        for e in events {
            out.max_lateness_ms = out.max_lateness_ms.max(e.ingestion_time.saturating_sub(e.timestamp));
            if !e.log_stream_name.starts_with(&self.stream_prefix) {
                out.other_streams += 1;
                continue;
            }
            self.pass_max_ms = self.pass_max_ms.max(e.timestamp);
            let key = id_hash(if e.event_id.is_empty() { &e.message } else { &e.event_id });
            if self.seen.insert(key, e.timestamp).is_some() {
                out.repeated += 1;
                continue;
            }
            out.new.push(e);
        }
        let Some(pass) = self.pass.as_mut() else { return out };
        // a token that comes back unchanged is the end too (never loop on it)
        match next_token.filter(|t| Some(t) != pass.token.as_ref()) {
            Some(t) => pass.token = Some(t),
            None => {
                let done = pass.clone();
                self.pass = None;
                out.pass_done = Some(done.kind);
                match done.kind {
                    PassKind::Live => {
                        self.live_ms = self.live_ms.max(self.pass_max_ms);
                        if done.start_ms <= self.settled_ms {
                            self.last_settle_ms = done.end_ms;
                            self.settle_to(done.end_ms - self.timing.lateness_ms);
                        }
                    }
                    PassKind::Settle => {
                        self.last_settle_ms = done.end_ms + self.timing.lateness_ms;
                        self.settle_to(done.end_ms);
                    }
                }
            }
        }
        out
    }

    /// Forgets a pass cut short by an error that a retry of the same page cannot fix (its
    /// events read so far stay remembered; the next pass starts over).
    pub fn abandon_pass(&mut self) {
        self.pass = None;
    }

    fn settle_to(&mut self, ms: i64) {
        if ms <= self.settled_ms {
            return;
        }
        self.settled_ms = ms;
        self.live_ms = self.live_ms.max(ms);
        let floor = self.settled_ms;
        self.seen.retain(|_, ts| *ts >= floor);
    }
}

/// Where a group's audit log is read.
#[derive(Debug, Clone)]
pub struct Group {
    /// `/aws/eks/NAME/cluster`.
    pub name: String,
    /// `kube-apiserver-audit`.
    pub stream_prefix: String,
}

impl Group {
    /// The log group EKS writes a cluster's control-plane logs to.
    pub fn of_eks_cluster(cluster: &str) -> Group {
        Group { name: format!("/aws/eks/{cluster}/cluster"), stream_prefix: "kube-apiserver-audit".into() }
    }
}

/// Makes FilterLogEvents calls within the account's quota.
pub struct Reader {
    pub aws: Arc<Aws>,
    pub group: Group,
    pub bucket: Arc<Bucket>,
    /// Events asked for per page (smaller after an answer too large to read).
    pub page_limit: usize,
}

impl Reader {
    /// One page of `req`: the events and the next token.
    ///
    /// # Errors
    ///
    /// The service's error, classified (throttling included: the caller backs off).
    pub async fn fetch(&mut self, req: &Request) -> Result<(Vec<LogEvent>, Option<String>), AwsError> {
        loop {
            self.bucket.take().await;
            let mut body = serde_json::json!({
                "logGroupName": self.group.name,
                "logStreamNamePrefix": self.group.stream_prefix,
                "startTime": req.start_ms,
                "endTime": req.end_ms,
                "limit": self.page_limit,
                "interleaved": true,
            });
            if let (Some(t), Some(o)) = (&req.token, body.as_object_mut()) {
                o.insert("nextToken".into(), serde_json::Value::String(t.clone()));
            }
            match self.aws.json_call("logs", "Logs_20140328.FilterLogEvents", &body).await {
                Ok(v) => {
                    let events = match v.get("events") {
                        Some(e) => serde_json::from_value::<Vec<LogEvent>>(e.clone()).map_err(|e| AwsError {
                            kind: Kind::Transient,
                            operation: "FilterLogEvents".into(),
                            status: 200,
                            code: "BadAnswer".into(),
                            message: format!("events: {e}"),
                            retry_after: None,
                        })?,
                        None => Vec::new(),
                    };
                    let token = v.get("nextToken").and_then(|t| t.as_str()).map(str::to_owned);
                    return Ok((events, token));
                }
                Err(e) if e.code == "AnswerTooLarge" && self.page_limit > 1 => {
                    self.page_limit = (self.page_limit / 2).max(1);
                    tracing::info!(
                        page_limit = self.page_limit,
                        "FilterLogEvents answer too large: asking for fewer events"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, ts: i64, ingested: i64) -> LogEvent {
        LogEvent {
            log_stream_name: "kube-apiserver-audit-a".into(),
            timestamp: ts,
            message: format!("m{id}"),
            ingestion_time: ingested,
            event_id: id.into(),
        }
    }

    fn ids(p: &Page) -> Vec<&str> {
        p.new.iter().map(|e| e.event_id.as_str()).collect()
    }

    const T: Timing = Timing { lateness_ms: 120_000, settle_every_ms: 30_000 };

    #[test]
    fn same_millisecond_events_across_polls_are_read_once_each() {
        let mut c = Cursor::new(1_000, T.clone(), "kube-apiserver-audit");
        let r = c.next_request(10_000);
        assert_eq!((r.kind, r.start_ms, r.end_ms), (PassKind::Live, 1_000, 10_000));
        let p = c.page(vec![ev("1", 5_000, 5_010), ev("2", 9_000, 9_005)], None);
        assert_eq!(ids(&p), vec!["1", "2"]);
        // a third event of millisecond 9000 arrives after the poll: the next pass starts at 9000
        let r = c.next_request(15_000);
        assert_eq!(r.start_ms, 9_000, "inclusive");
        let p = c.page(vec![ev("2", 9_000, 9_005), ev("3", 9_000, 14_000)], None);
        assert_eq!(ids(&p), vec!["3"]);
        assert_eq!(p.repeated, 1);
    }

    #[test]
    fn a_late_event_is_read_by_the_settle_pass() {
        let mut c = Cursor::new(0, T.clone(), "kube-apiserver-audit");
        c.next_request(200_000);
        c.page(vec![ev("a", 150_000, 150_001), ev("b", 190_000, 190_001)], None);
        // the first pass started at the settled point: [0, 200000 - 120000] is settled
        assert_eq!(c.checkpoint(), Checkpoint { live_ms: 190_000, settled_ms: 80_000 });
        // "late" (ts 170000) is ingested at 230000, after the live passes went past it
        let r = c.next_request(205_000);
        assert_eq!((r.kind, r.start_ms), (PassKind::Live, 190_000));
        c.page(vec![ev("b", 190_000, 190_001)], None);
        // at 300000 a settle pass over [80000, 180000] is due
        let r = c.next_request(300_000);
        assert_eq!((r.kind, r.start_ms, r.end_ms), (PassKind::Settle, 80_000, 180_000));
        let p = c.page(vec![ev("a", 150_000, 150_001), ev("late", 170_000, 230_000)], None);
        assert_eq!(ids(&p), vec!["late"]);
        assert_eq!(p.max_lateness_ms, 60_000);
        assert_eq!(c.checkpoint().settled_ms, 180_000);
        // seen ids older than the settled point are forgotten
        assert_eq!(c.remembered(), 1, "only b (190000) is kept");
        // the next request is a live one (the settle pass just ran)
        assert_eq!(c.next_request(301_000).kind, PassKind::Live);
    }

    #[test]
    fn pages_follow_tokens_even_when_empty_and_other_streams_are_dropped() {
        let mut c = Cursor::new(0, T.clone(), "kube-apiserver-audit");
        c.next_request(10_000);
        let p = c.page(vec![], Some("t1".into()));
        assert!(p.pass_done.is_none());
        let r = c.next_request(11_000);
        assert_eq!((r.token.as_deref(), r.end_ms), (Some("t1"), 10_000), "same pass, same window");
        let mut other = ev("x", 5_000, 5_000);
        other.log_stream_name = "authenticator-1".into();
        let p = c.page(vec![other, ev("y", 6_000, 6_000)], Some("t1".into()));
        assert_eq!(ids(&p), vec!["y"]);
        assert_eq!(p.other_streams, 1);
        assert_eq!(p.pass_done, Some(PassKind::Live), "a repeated token ends the pass");
    }

    #[test]
    fn resuming_reads_again_from_the_settled_point() {
        let cp = Checkpoint { live_ms: 500_000, settled_ms: 380_000 };
        let mut c = Cursor::resume(cp, T.clone(), "kube-apiserver-audit");
        let r = c.next_request(600_000);
        assert_eq!((r.kind, r.start_ms, r.end_ms), (PassKind::Live, 380_000, 600_000));
        c.page(vec![ev("1", 390_000, 390_001)], None);
        assert_eq!(c.checkpoint().settled_ms, 480_000);
    }
}
