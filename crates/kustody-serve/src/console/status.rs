//! The status page: is every event arriving and stored, is detection keeping up, are
//! notifications getting out — the numbers of `/metrics` a responder needs before trusting an
//! empty incident list, with the webhook's gaps first.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::html::{esc, page};
use super::{session, viewer};
use crate::http::AppState;

pub async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let sess = match session(&s, &headers, "/status") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let m = &s.metrics;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let gaps = n(&m.webhook_gaps);
    let healthy = s.healthy.load(Relaxed);
    let lag = n(&m.detector_lag_events);
    let mut b = String::from("<h1>Status</h1>");
    let verdict = |ok: bool, good: &str, bad: &str| {
        if ok {
            format!(r#"<span class="live">{}</span>"#, esc(good))
        } else {
            format!(r#"<span class="error">{}</span>"#, esc(bad))
        }
    };
    b.push_str(&format!(
        r#"<div class="grid"><div class="card" id="gaps"><dl><dt>Webhook gaps</dt><dd>{}</dd><dt>Store</dt><dd>{}</dd><dt>Detection</dt><dd>{}</dd><dt>Notifications</dt><dd>{}</dd></dl></div>"#,
        verdict(
            gaps == 0,
            "none: every event the apiserver's log holds also came through the webhook (or no log is followed)",
            &format!("{gaps} events reached kustody only from the followed log file: the webhook lost them (its batches were dropped, or the apiserver could not reach kustody)"),
        ),
        verdict(healthy, "accepting events", "NOT accepting events (disk full or failing): see /readyz and the log"),
        verdict(lag < 10_000, &format!("keeping up ({lag} events behind)"), &format!("{lag} events behind the store")),
        verdict(
            n(&m.notifications_dead) == 0,
            &format!("{} delivered, none dead", n(&m.notifications_delivered)),
            &format!("{} dead: `kustody serve outbox list --state dead`, then retry", n(&m.notifications_dead)),
        ),
    ));
    let rows = [
        (
            "Events received: webhook / followed file / replay",
            format!("{} / {} / {}", n(&m.received_webhook), n(&m.received_file), n(&m.received_replay)),
        ),
        (
            "Events stored / duplicates / rejected",
            format!("{} / {} / {}", n(&m.stored), n(&m.duplicates), n(&m.rejected_events)),
        ),
        (
            "Requests refused: bad / unauthenticated / forbidden / too large",
            format!("{} / {} / {} / {}", n(&m.bad_requests), n(&m.unauthenticated), n(&m.forbidden), n(&m.too_large)),
        ),
        ("Shed: 429 (queue full) / 503 (store unavailable)", format!("{} / {}", n(&m.shed_429), n(&m.unavailable_503))),
        ("Runtime alerts received / stored", format!("{} / {}", n(&m.alerts_received), n(&m.alerts_stored))),
        ("Findings opened since start", n(&m.findings_opened).to_string()),
        (
            "Store: events, bytes, errors",
            format!(
                "{} events, {:.1} MB, {} errors",
                n(&m.store_events),
                n(&m.store_bytes) as f64 / 1e6,
                n(&m.store_errors)
            ),
        ),
        ("Rule reloads / failed", format!("{} / {}", n(&m.rule_reloads), n(&m.rule_reload_failures))),
        (
            "Notifications queued / delivered / failed attempts / rate-limited",
            format!(
                "{} / {} / {} / {}",
                n(&m.notifications_queued),
                n(&m.notifications_delivered),
                n(&m.notification_failures),
                n(&m.notifications_rate_limited)
            ),
        ),
        (
            "IP history: holds / evicted; events attributed to a pod",
            format!("{} / {}; {}", n(&m.ip_intervals), n(&m.ip_intervals_evicted), n(&m.events_attributed)),
        ),
        (
            "Cluster watch: events / relists / errors",
            format!("{} / {} / {}", n(&m.watch_events), n(&m.watch_relists), n(&m.watch_errors)),
        ),
    ];
    b.push_str(r#"<div class="card"><table id="counters"><tbody>"#);
    for (k, v) in rows {
        b.push_str(&format!("<tr><td>{}</td><td class=\"mono\">{}</td></tr>", esc(k), esc(&v)));
    }
    b.push_str("</tbody></table></div></div>");
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    page(code, "Status", Some(&viewer(&sess)), &b)
}
