//! The sinks file: the documented example parses to what it says, and mistakes are reported
//! with file:line:col and the key path, never echoing a credential.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::Duration;

use kustody_notify::*;

fn err(text: &str) -> String {
    parse_sinks(text, "sinks.yaml").unwrap_err().to_string()
}

#[test]
fn documented_example_parses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sinks.yaml");
    let sinks = load_sinks(&path).unwrap();
    let names: Vec<_> = sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["soc-slack", "pagerduty", "siem", "splunk", "es", "mail", "teams", "generic", "sidekick"]);
    let slack = &sinks[0];
    assert_eq!(slack.kind, SinkKind::Slack { url: SecretSource::File("/etc/kustody/slack-webhook-url".into()) });
    assert_eq!(slack.min_priority, Priority::Warning);
    assert_eq!(slack.route.as_deref(), Some("finding.namespace in (prod, payments)"));
    assert_eq!(slack.rate_per_minute, Some(30));
    assert_eq!((slack.max_batch, slack.max_attempts, slack.timeout), (1, 12, Duration::from_secs(10)));
    assert!(slack.wants(Priority::Critical) && slack.wants(Priority::Warning) && !slack.wants(Priority::Notice));
    assert_eq!(sinks[1].min_priority, Priority::Critical);
    let SinkKind::Syslog(s) = &sinks[2].kind else { panic!() };
    assert_eq!((s.transport, s.facility, s.app_name.as_str()), (SyslogTransport::Tls, Facility(20), "kustody"));
    assert_eq!(sinks[2].max_batch, 50);
    assert_eq!(sinks[2].ca_file.as_deref(), Some(std::path::Path::new("/etc/kustody/siem-ca.pem")));
    assert_eq!(sinks[3].max_batch, 100);
    assert_eq!(sinks[4].max_batch, 100);
    let SinkKind::Elasticsearch { auth: Some(ElasticAuth::Basic { username, password }), .. } = &sinks[4].kind else {
        panic!()
    };
    assert_eq!((username.as_str(), password), ("kustody", &SecretSource::Env("ES_PASSWORD".into())));
    let SinkKind::Smtp(m) = &sinks[5].kind else { panic!() };
    assert_eq!((m.port, m.tls, m.to.clone()), (587, SmtpTls::Starttls, vec!["soc@example.org".to_owned()]));
    let SinkKind::Webhook { headers, template, .. } = &sinks[7].kind else { panic!() };
    assert_eq!(headers[0], ("X-Api-Key".to_owned(), ValueOrSecret::Secret(SecretSource::Env("HOOK_KEY".into()))));
    assert_eq!(template.as_ref().unwrap()["sev"], "{{severity}}");
    assert!(sinks[8].origin.ends_with("sinks.yaml:50:5"), "{}", sinks[8].origin);
}

#[test]
fn unknown_key_names_position_and_path() {
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: http://x/\n  - name: b\n    type: slack\n    url: {env: X}\n    urll: 1\n");
    assert!(e.starts_with("sinks.yaml:8:5: sinks[1].urll: unknown field `urll`"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: http://x/\n    colour: red\n");
    assert!(e.starts_with("sinks.yaml:5:5: sinks[0].colour: unknown field `colour`"), "{e}");
    let e = err("sinkz: []\n");
    assert!(e.starts_with("sinks.yaml:1:1: sinkz: unknown key"), "{e}");
}

#[test]
fn inline_secret_is_refused_without_echo() {
    let e = err("sinks:\n  - name: s\n    type: slack\n    url: https://hooks.slack.com/services/T0/B0/SEKRET\n");
    assert!(e.starts_with("sinks.yaml:4:10: sinks[0].url: a credential is not written inline"), "{e}");
    assert!(!e.contains("SEKRET"), "{e}");
    let e = err("sinks:\n  - name: p\n    type: pagerduty\n    routing_key: 123456789\n");
    assert!(e.starts_with("sinks.yaml:4:18: sinks[0].routing_key:"), "{e}");
    assert!(!e.contains("123456789"), "{e}");
    let e = err("sinks:\n  - name: w\n    type: webhook\n    url: http://x/\n    headers: {A: {env: X}, B: {file: 1, env: 2}}\n");
    assert!(e.contains("sinks[0].headers.B: expected {file: PATH} or {env: NAME}"), "{e}");
}

#[test]
fn bad_values_are_located() {
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: http://x/\n    min_priority: loud\n");
    assert!(e.starts_with("sinks.yaml:5:19: sinks[0].min_priority: unknown priority `loud`"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: http://x/\n    rate_per_minute: 0\n");
    assert!(e.starts_with("sinks.yaml:5:22: sinks[0].rate_per_minute: must be at least 1"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: fax\n");
    assert!(e.starts_with("sinks.yaml:3:11: sinks[0].type: unknown sink type `fax`"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: ftp://x/\n");
    assert!(e.starts_with("sinks.yaml:4:10: sinks[0].url: an http:// or https:// URL"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: syslog\n    address: nowhere\n");
    assert!(e.starts_with("sinks.yaml:4:14: sinks[0].address: expected HOST:PORT"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: smtp\n    host: h\n    from: a@b\n    to: [x@y]\n    port: 99999\n");
    assert!(e.starts_with("sinks.yaml:7:11: sinks[0].port: invalid value"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: webhook\n    url: http://x/\n    template: {a: '{{nope}}'}\n");
    assert!(e.contains("sinks[0].template: unknown placeholder `{{nope}}`"), "{e}");
    let e = err(
        "sinks:\n  - name: a\n    type: falco\n    url: http://x/\n  - name: a\n    type: falco\n    url: http://y/\n",
    );
    assert!(e.starts_with("sinks.yaml:5:11: sinks[1].name: duplicate sink name"), "{e}");
    let e = err("sinks:\n  - name: a\n    type: falco\n    url: http://x/\n    timeout: soon\n");
    assert!(e.starts_with("sinks.yaml:5:14: sinks[0].timeout: bad duration"), "{e}");
    let e = err("sinks: [\n");
    assert!(e.starts_with("sinks.yaml:"), "{e}");
    let ok = parse_sinks("sinks:\n  - {name: a, type: falco, url: 'http://x/', timeout: 500ms, max_batch: 3}\n", "f")
        .unwrap();
    assert_eq!((ok[0].timeout, ok[0].max_batch), (Duration::from_millis(500), 3));
}

#[test]
fn missing_secrets_name_the_sink_and_key_only() {
    let sinks = parse_sinks(
        "sinks:\n  - name: pd\n    type: pagerduty\n    routing_key: {env: KUSTODY_NOTIFY_TEST_UNSET}\n",
        "f",
    )
    .unwrap();
    let e = Sink::new(&sinks[0]).unwrap_err().to_string();
    assert_eq!(e, "sink `pd`: routing_key: environment variable KUSTODY_NOTIFY_TEST_UNSET is not set (or not UTF-8)");
}
