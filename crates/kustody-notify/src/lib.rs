//! Notification sinks for `kustody serve`.
//!
//! The server keeps an outbox: every notification about an incident is committed to its store as
//! the JSON of a [`Notification`], and a delivery loop hands batches of them to a [`Sink`] with
//! retries, backoff and a dead letter. This crate is what that loop calls, in three layers:
//!
//! - [`config`]: the sinks file (YAML). It is parsed with kustody-model's positioned YAML tree,
//!   so every error names `FILE:LINE:COL` and the key path (`sinks[2].url`). Credentials are
//!   never written inline: a secret field takes `{file: PATH}` or `{env: NAME}`.
//! - [`render`]: pure functions from a [`Notification`] to the request each receiver documents
//!   (Slack blocks, a Teams Adaptive Card, PagerDuty Events v2, RFC 5424 syslog, Splunk HEC
//!   events, Elasticsearch `_bulk` NDJSON, Falco alert JSON, a templated webhook, a mail).
//! - [`Sink`]: the transport (HTTP(S) with rustls, syslog over UDP/TCP/TLS, SMTP). It sends a
//!   batch in as few requests as the receiver's API allows and classifies each failure as
//!   retryable or not ([`SendError`]); it keeps no queue and never retries by itself.
//!
//! Secrets are read once when a [`Sink`] is built and kept in [`secrecy::SecretString`]: no
//! error, log line or `Debug` output shows them.

pub mod config;
mod http;
pub mod render;
mod sink;
mod smtp;
mod syslog;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use config::{
    load_sinks, parse_sinks, ConfigError, ElasticAuth, Facility, SecretSource, SinkConfig, SinkKind, SmtpTls,
    SyslogTransport, ValueOrSecret,
};
pub use kustody_model::Priority;
pub use sink::{SendError, Sink};

/// What happened to the incident a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new incident.
    Trigger,
    /// An incident that changed (new evidence, a higher severity, acknowledged).
    Update,
    /// An incident that was resolved.
    Resolve,
}

impl Action {
    /// The lower-case name, as serialized (`"trigger"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Update => "update",
            Action::Resolve => "resolve",
        }
    }
}

/// One notification about one incident, as the server commits it to its outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub action: Action,
    pub incident_id: i64,
    /// Stable per incident, e.g. "kustody/prod-eu/incident/42": PagerDuty dedup_key, ES _id prefix...
    pub dedup_key: String,
    pub cluster: Option<String>,
    /// Serialized as the Falco name ("Critical"); any case is accepted when deserializing.
    #[serde(with = "severity_serde")]
    pub severity: Priority,
    /// "new" | "acknowledged" | "resolved"
    pub status: String,
    /// One line, e.g. "CRITICAL incident #42: Terminal shell in container — system:serviceaccount:default:web in default/web"
    pub title: String,
    /// Plain-text multi-line summary a responder can act on. Already rendered by the server; sinks show it.
    pub summary: String,
    /// When this notification was made (unix ns).
    pub time_ns: i64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// Lead rule and output of the finding that caused this notification.
    pub rule: String,
    pub output: String,
    pub tags: Vec<String>,
    /// The lead detection's output fields (Falco `output_fields`).
    pub fields: BTreeMap<String, String>,
    /// The whole incident as JSON; sinks that carry structured data include it.
    pub incident: serde_json::Value,
    /// Where the console shows the incident, when known.
    pub url: Option<String>,
}

/// `Priority` as its Falco name; parsed case-insensitively.
mod severity_serde {
    use kustody_model::Priority;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.falco_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    pub(crate) fn sample() -> Notification {
        Notification {
            action: Action::Trigger,
            incident_id: 42,
            dedup_key: "kustody/prod-eu/incident/42".into(),
            cluster: Some("prod-eu".into()),
            severity: Priority::Critical,
            status: "new".into(),
            title:
                "CRITICAL incident #42: Terminal shell in container — system:serviceaccount:default:web in default/web"
                    .into(),
            summary:
                "What: a shell in web-1\nWho: system:serviceaccount:default:web\nNext: kubectl -n default logs web-1"
                    .into(),
            time_ns: 1_700_000_000_123_456_789,
            first_ns: Some(1_700_000_000_000_000_000),
            last_ns: Some(1_700_000_000_123_456_789),
            rule: "Terminal shell in container".into(),
            output: "shell in default/web-1".into(),
            tags: vec!["T1059".into(), "k8s".into()],
            fields: [("ka.target.namespace".to_owned(), "default".to_owned())].into_iter().collect(),
            incident: serde_json::json!({"id": 42, "steps": [{"rule": "Terminal shell in container"}]}),
            url: Some("https://kustody.example/incidents/42".into()),
        }
    }

    #[test]
    fn severity_is_the_falco_name_and_parses_any_case() {
        let n = sample();
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["severity"], "Critical");
        assert_eq!(v["action"], "trigger");
        let mut v2 = v.clone();
        v2["severity"] = "cRiTiCaL".into();
        let back: Notification = serde_json::from_value(v2).unwrap();
        assert_eq!(back, n);
        v2 = v;
        v2["severity"] = "loud".into();
        assert!(serde_json::from_value::<Notification>(v2).is_err());
    }
}
