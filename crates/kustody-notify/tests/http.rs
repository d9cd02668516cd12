//! The HTTP sinks against local endpoints that check each receiver's documented request schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sample;
use kustody_notify::{parse_sinks, Action, Sink};
use kustody_testkit::http::{endpoint, Seen};
use serde_json::{json, Value};

fn sink(yaml: &str) -> Sink {
    let cfgs = parse_sinks(yaml, "test.yaml").unwrap();
    Sink::new(&cfgs[0]).unwrap()
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p.display().to_string()
}

fn body(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap()
}

fn raw(text: &str) -> Value {
    json!({"$raw": {"body": text}})
}

/// Each request's problems with the schema, collected by the endpoint and asserted empty.
type Problems = Arc<Mutex<Vec<String>>>;

fn check(problems: &Problems, ok: bool, what: &str) {
    if !ok {
        problems.lock().unwrap().push(what.to_owned());
    }
}

#[tokio::test]
async fn slack_gets_block_kit_at_the_secret_url() {
    let problems: Problems = Default::default();
    let p = problems.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        let b = body(s);
        check(&p, s.method == "POST" && s.target == "/services/T0/B0/XYZ", "method/path");
        check(&p, s.headers["content-type"] == "application/json", "content-type");
        check(&p, b["text"].is_string(), "text fallback");
        let blocks = b["blocks"].as_array().cloned().unwrap_or_default();
        check(
            &p,
            blocks.first().map(|h| h["type"] == "header" && h["text"]["type"] == "plain_text") == Some(true),
            "header",
        );
        check(&p, blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150, "header length");
        for s in blocks.iter().filter(|b| b["type"] == "section") {
            check(
                &p,
                s["text"]["type"] == "mrkdwn" && s["text"]["text"].as_str().unwrap().chars().count() <= 3000,
                "section",
            );
        }
        check(&p, blocks.iter().any(|b| b["type"] == "context"), "context");
        check(&p, blocks.iter().any(|b| b["type"] == "actions" && b["elements"][0]["url"].is_string()), "button");
        (200, raw("ok"))
    }));
    let dir = tempfile::tempdir().unwrap();
    let url = secret_file(&dir, "slack", &format!("{base}/services/T0/B0/XYZ"));
    let s = sink(&format!("sinks:\n  - name: slack\n    type: slack\n    url: {{file: {url}}}\n"));
    let mut n = sample(1, Action::Trigger);
    n.title = "T".repeat(400);
    n.summary = "a line of summary\n".repeat(400);
    s.send(&[n]).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
    assert!(problems.lock().unwrap().is_empty(), "{:?}", problems.lock().unwrap());
}

#[tokio::test]
async fn teams_gets_an_adaptive_card() {
    let problems: Problems = Default::default();
    let p = problems.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        let b = body(s);
        check(&p, b["type"] == "message", "type message");
        let a = &b["attachments"][0];
        check(&p, a["contentType"] == "application/vnd.microsoft.card.adaptive", "contentType");
        let c = &a["content"];
        check(&p, c["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json", "$schema");
        check(&p, c["type"] == "AdaptiveCard" && c["version"] == "1.4", "card type/version");
        let body = c["body"].as_array().cloned().unwrap_or_default();
        check(&p, body.iter().any(|e| e["type"] == "TextBlock"), "TextBlock");
        check(
            &p,
            body.iter().any(|e| e["type"] == "FactSet" && e["facts"].as_array().is_some_and(|f| !f.is_empty())),
            "FactSet",
        );
        (202, raw("1"))
    }));
    std::env::set_var("KUSTODY_NOTIFY_TEST_TEAMS_URL", format!("{base}/workflows/abc"));
    let s = sink("sinks:\n  - name: teams\n    type: teams\n    url: {env: KUSTODY_NOTIFY_TEST_TEAMS_URL}\n");
    s.send(&[sample(2, Action::Update)]).await.unwrap();
    assert_eq!(log.lock().unwrap()[0].target, "/workflows/abc");
    assert!(problems.lock().unwrap().is_empty(), "{:?}", problems.lock().unwrap());
}

#[tokio::test]
async fn pagerduty_triggers_then_resolves_with_the_same_dedup_key() {
    let problems: Problems = Default::default();
    let p = problems.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        let b = body(s);
        check(&p, b["routing_key"] == "R0UTINGKEY00000000000000000000", "routing_key");
        let action = b["event_action"].as_str().unwrap_or_default().to_owned();
        if action == "trigger" {
            let pl = &b["payload"];
            check(&p, pl["summary"].as_str().is_some_and(|s| !s.is_empty() && s.chars().count() <= 1024), "summary");
            check(&p, pl["source"].is_string(), "source");
            check(
                &p,
                ["critical", "error", "warning", "info"].contains(&pl["severity"].as_str().unwrap_or_default()),
                "severity",
            );
            check(
                &p,
                chrono::DateTime::parse_from_rfc3339(pl["timestamp"].as_str().unwrap_or_default()).is_ok(),
                "timestamp",
            );
            check(&p, pl["custom_details"]["incident"].is_object(), "custom_details");
            check(&p, b["client"] == "kustody" && b["client_url"].is_string(), "client");
        } else {
            check(&p, action == "resolve" && b.as_object().unwrap().len() == 3, "resolve has 3 keys");
        }
        (202, json!({"status": "success", "message": "Event processed", "dedup_key": b["dedup_key"]}))
    }));
    std::env::set_var("KUSTODY_NOTIFY_TEST_PD_KEY", "R0UTINGKEY00000000000000000000");
    let s = sink(&format!(
        "sinks:\n  - name: pd\n    type: pagerduty\n    routing_key: {{env: KUSTODY_NOTIFY_TEST_PD_KEY}}\n    url: {base}/v2/enqueue\n"
    ));
    s.send(&[sample(3, Action::Trigger)]).await.unwrap();
    s.send(&[sample(3, Action::Resolve)]).await.unwrap();
    let log = log.lock().unwrap();
    let keys: Vec<_> = log.iter().map(|s| body(s)["dedup_key"].clone()).collect();
    assert_eq!(keys, [json!("kustody/prod-eu/incident/3"), json!("kustody/prod-eu/incident/3")]);
    assert_eq!(body(&log[0])["event_action"], "trigger");
    assert_eq!(body(&log[1])["event_action"], "resolve");
    assert!(problems.lock().unwrap().is_empty(), "{:?}", problems.lock().unwrap());
}

#[tokio::test]
async fn splunk_hec_gets_the_batch_in_one_request() {
    let (base, log) = endpoint(Box::new(|s| {
        if s.headers.get("authorization").map(String::as_str) != Some("Splunk 11111111-2222-3333-4444-555555555555") {
            return (401, json!({"text": "Invalid authorization", "code": 3}));
        }
        let events: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(&s.body).into_iter().collect();
        let ok = events.is_ok_and(|ev| {
            ev.len() == 3
                && ev.iter().all(|e| {
                    e["time"].is_f64()
                        && e["host"] == "prod-eu"
                        && e["source"] == "kustody"
                        && e["sourcetype"] == "kustody:incident"
                        && e["index"] == "k8s"
                        && e["event"]["incident_id"].is_i64()
                        && e["event"]["incident"].is_object()
                })
        });
        if ok {
            (200, json!({"text": "Success", "code": 0}))
        } else {
            (400, json!({"text": "Invalid data format", "code": 6}))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(&dir, "hec", "11111111-2222-3333-4444-555555555555");
    let yaml = format!("sinks:\n  - name: splunk\n    type: splunk_hec\n    url: {base}/services/collector/event\n    token: {{file: {token}}}\n    index: k8s\n");
    let s = sink(&yaml);
    assert_eq!(s.config().max_batch, 100);
    s.send(&[sample(4, Action::Trigger), sample(5, Action::Update), sample(6, Action::Resolve)]).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(log.lock().unwrap()[0].target, "/services/collector/event");
    // a wrong token: 401, not retryable, and the token is not in the message
    let bad = secret_file(&dir, "hec2", "99999999-0000-0000-0000-000000000000");
    let s = sink(&yaml.replace(&token, &bad));
    let e = s.send(&[sample(4, Action::Trigger)]).await.unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(e.message.contains("HTTP 401") && !e.message.contains("99999999"), "{e}");
}

#[tokio::test]
async fn splunk_hec_code_other_than_zero_is_a_failure() {
    let (base, _log) = endpoint(Box::new(|_| (200, json!({"text": "Server is busy", "code": 9}))));
    std::env::set_var("KUSTODY_NOTIFY_TEST_HEC", "t");
    let s = sink(&format!("sinks:\n  - name: splunk\n    type: splunk_hec\n    url: {base}/services/collector/event\n    token: {{env: KUSTODY_NOTIFY_TEST_HEC}}\n"));
    let e = s.send(&[sample(4, Action::Trigger)]).await.unwrap_err();
    assert!(e.message.contains("code 9 (Server is busy)"), "{e}");
}

#[tokio::test]
async fn elasticsearch_bulk_ndjson_and_item_errors() {
    let problems: Problems = Default::default();
    let p = problems.clone();
    let (base, log) = endpoint(Box::new(move |s| {
        check(&p, s.target.starts_with("/_bulk"), "path");
        check(&p, s.headers["content-type"] == "application/x-ndjson", "content-type");
        check(&p, s.headers.get("authorization").map(String::as_str) == Some("ApiKey ZXNrZXk="), "auth");
        check(&p, s.body.ends_with('\n'), "trailing newline");
        let lines: Vec<Value> = s.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        check(&p, lines.len() == 4, "two pairs");
        let mut items = Vec::new();
        for pair in lines.chunks(2) {
            let meta = &pair[0]["index"];
            check(&p, meta["_index"] == "kustody-incidents", "_index");
            let id = meta["_id"].as_str().unwrap_or_default();
            check(
                &p,
                id == format!(
                    "{}-{}-{}",
                    pair[1]["dedup_key"].as_str().unwrap(),
                    pair[1]["action"].as_str().unwrap(),
                    pair[1]["time_ns"]
                ),
                "_id",
            );
            check(&p, pair[1]["@timestamp"].is_string(), "@timestamp");
            items.push(id.to_owned());
        }
        let second_status = if items.len() == 2 && items[1].ends_with(&format!("{}", 1_700_000_000_123_456_789i64 + 8))
        {
            429
        } else {
            201
        };
        (
            200,
            json!({"errors": second_status != 201, "items": [
                {"index": {"_id": items[0], "status": 201}},
                {"index": {"_id": items[1], "status": second_status, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}}}
            ]}),
        )
    }));
    std::env::set_var("KUSTODY_NOTIFY_TEST_ES_KEY", "ZXNrZXk=");
    let s = sink(&format!("sinks:\n  - name: es\n    type: elasticsearch\n    url: {base}/\n    index: kustody-incidents\n    api_key: {{env: KUSTODY_NOTIFY_TEST_ES_KEY}}\n"));
    s.send(&[sample(7, Action::Trigger), sample(7, Action::Update)]).await.unwrap();
    let e = s.send(&[sample(7, Action::Trigger), sample(8, Action::Trigger)]).await.unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(
        e.message.contains("1 item(s) to retry") && e.message.contains("kustody/prod-eu/incident/8-trigger"),
        "{e}"
    );
    assert_eq!(log.lock().unwrap().len(), 2);
    assert!(problems.lock().unwrap().is_empty(), "{:?}", problems.lock().unwrap());
}

#[tokio::test]
async fn falco_alert_json_for_falcosidekick() {
    let (base, log) = endpoint(Box::new(|_| (200, raw(""))));
    let s = sink(&format!("sinks:\n  - name: sidekick\n    type: falco\n    url: {base}/\n"));
    s.send(&[sample(9, Action::Trigger)]).await.unwrap();
    let b = body(&log.lock().unwrap()[0]);
    let keys: Vec<_> = b.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["output", "priority", "rule", "time", "output_fields", "source", "tags", "hostname"]);
    assert_eq!(b["priority"], "Critical");
    assert_eq!(b["source"], "k8s_audit");
    assert_eq!(b["hostname"], "kustody");
    assert_eq!(b["time"], "2023-11-14T22:13:20.123456798Z");
    assert_eq!(b["output_fields"]["ka.user.name"], "web");
}

#[tokio::test]
async fn webhook_template_and_secret_header() {
    let (base, log) = endpoint(Box::new(|_| (204, raw(""))));
    std::env::set_var("KUSTODY_NOTIFY_TEST_HOOK_KEY", "hook-key-1");
    let s = sink(&format!(
        "sinks:\n  - name: generic\n    type: webhook\n    url: {base}/kustody\n    headers: {{ X-Api-Key: {{ env: KUSTODY_NOTIFY_TEST_HOOK_KEY }}, X-Team: soc }}\n    template: {{ \"text\": \"{{{{title}}}}\", \"sev\": \"{{{{severity}}}}\", \"incident\": \"{{{{incident}}}}\", \"id\": \"{{{{incident_id}}}}\", \"line\": \"#{{{{incident_id}}}} {{{{status}}}}\" }}\n"
    ));
    s.send(&[sample(10, Action::Trigger)]).await.unwrap();
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["x-api-key"], "hook-key-1");
    assert_eq!(seen.headers["x-team"], "soc");
    let b = body(&seen);
    assert_eq!(
        b,
        json!({"text": sample(10, Action::Trigger).title, "sev": "Critical", "incident": sample(10, Action::Trigger).incident, "id": 10, "line": "#10 new"})
    );
    // no template: the notification itself
    let s = sink(&format!("sinks:\n  - name: plain\n    type: webhook\n    url: {base}/plain\n"));
    s.send(&[sample(11, Action::Resolve)]).await.unwrap();
    let b = body(&log.lock().unwrap()[1]);
    assert_eq!(serde_json::from_value::<kustody_notify::Notification>(b).unwrap(), sample(11, Action::Resolve));
}

#[tokio::test]
async fn status_codes_decide_retries() {
    let (base, _log) = endpoint(Box::new(|s| match s.target.as_str() {
        "/500" => (500, raw("upstream broke")),
        "/400" => (400, json!({"status": "invalid event", "errors": ["Event object is invalid"]})),
        "/429" => (429, json!({"$raw": {"body": "slow down", "headers": {"Retry-After": "7"}}})),
        _ => (503, json!({"$raw": {"body": "", "headers": {"Retry-After": "2"}}})),
    }));
    for (path, retryable, after) in
        [("500", true, None), ("400", false, None), ("429", true, Some(7)), ("503", true, Some(2))]
    {
        let s = sink(&format!("sinks:\n  - name: s{path}\n    type: falco\n    url: {base}/{path}\n"));
        let e = s.send(&[sample(12, Action::Trigger)]).await.unwrap_err();
        assert_eq!(e.retryable, retryable, "{path}: {e}");
        assert_eq!(e.retry_after, after.map(Duration::from_secs), "{path}");
        assert!(e.message.starts_with(&format!("sink `s{path}`: HTTP {path}")), "{e}");
    }
}

#[tokio::test]
async fn refused_connections_and_timeouts_are_retryable() {
    let port = common::free_port();
    let s = sink(&format!("sinks:\n  - name: gone\n    type: falco\n    url: http://127.0.0.1:{port}/\n"));
    let e = s.send(&[sample(13, Action::Trigger)]).await.unwrap_err();
    assert!(e.retryable, "{e}");
    // a listener that never answers
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let s = sink(&format!("sinks:\n  - name: mute\n    type: falco\n    url: {url}\n    timeout: 300ms\n"));
    let e = s.send(&[sample(13, Action::Trigger)]).await.unwrap_err();
    assert!(e.retryable && e.message.contains("no answer within"), "{e}");
    drop(l);
}

#[tokio::test]
async fn secrets_stay_out_of_errors_and_debug() {
    let (base, _log) = endpoint(Box::new(|_| (500, raw("internal error"))));
    let dir = tempfile::tempdir().unwrap();
    let url = secret_file(&dir, "slack", &format!("{base}/services/T0/B0/SEKRETPATH"));
    let yaml = format!("sinks:\n  - name: slack\n    type: slack\n    url: {{file: {url}}}\n");
    let cfg = &parse_sinks(&yaml, "t.yaml").unwrap()[0];
    let s = Sink::new(cfg).unwrap();
    let e = s.send(&[sample(14, Action::Trigger)]).await.unwrap_err();
    for shown in [e.to_string(), format!("{e:?}"), format!("{s:?}"), format!("{cfg:?}")] {
        assert!(!shown.contains("SEKRETPATH"), "{shown}");
    }
    // unreachable: the transport error does not quote the URL either
    let port = common::free_port();
    std::fs::write(&url, format!("http://127.0.0.1:{port}/services/T0/B0/SEKRETPATH")).unwrap();
    let s = Sink::new(cfg).unwrap();
    let e = s.send(&[sample(14, Action::Trigger)]).await.unwrap_err();
    assert!(!format!("{e} {e:?}").contains("SEKRETPATH"), "{e}");
    // a secret that is not a URL: the message says so without quoting it
    std::fs::write(&url, "SEKRETPATH not a url").unwrap();
    let e = Sink::new(cfg).unwrap_err().to_string();
    assert!(!e.contains("SEKRETPATH") && e.contains("sink `slack`: url:"), "{e}");
    // tokens
    std::env::set_var("KUSTODY_NOTIFY_TEST_PD_SECRET", "PDSEKRETKEY");
    let yaml = format!("sinks:\n  - name: pd\n    type: pagerduty\n    routing_key: {{env: KUSTODY_NOTIFY_TEST_PD_SECRET}}\n    url: {base}/\n");
    let cfg = &parse_sinks(&yaml, "t.yaml").unwrap()[0];
    let s = Sink::new(cfg).unwrap();
    let e = s.send(&[sample(14, Action::Trigger)]).await.unwrap_err();
    for shown in [e.to_string(), format!("{e:?}"), format!("{s:?}"), format!("{cfg:?}")] {
        assert!(!shown.contains("PDSEKRETKEY"), "{shown}");
    }
}

/// An HTTPS endpoint with a certificate from a test CA: answers 200 to one request at a time.
async fn https_endpoint(tls: &common::TlsFiles) -> (String, Arc<Mutex<Vec<String>>>) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&tls.cert).unwrap().map(Result::unwrap).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let done = |b: &[u8]| {
                let text = String::from_utf8_lossy(b);
                let Some(end) = text.find("\r\n\r\n") else { return false };
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                b.len() >= end + 4 + len
            };
            while !done(&buf) {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            log2.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
            let _ = s.shutdown().await;
        }
    });
    (base, log)
}

#[tokio::test]
async fn https_with_a_test_ca_in_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = common::tls_files(dir.path());
    let (base, log) = https_endpoint(&tls).await;
    let yaml = format!("sinks:\n  - name: tls\n    type: falco\n    url: {base}/\n    ca_file: {}\n", tls.ca.display());
    sink(&yaml).send(&[sample(15, Action::Trigger)]).await.unwrap();
    assert!(log.lock().unwrap()[0].starts_with("POST / HTTP/1.1"));
    // without the CA the certificate is not trusted
    let s = sink(&format!("sinks:\n  - name: tls\n    type: falco\n    url: {base}/\n"));
    let e = s.send(&[sample(15, Action::Trigger)]).await.unwrap_err();
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 1);
}
