//! The sinks file.
//!
//! ```yaml
//! sinks:
//!   - name: soc-slack
//!     type: slack
//!     url: { file: /etc/kustody/slack-webhook-url }
//! ```
//!
//! The text is parsed with kustody-model's positioned YAML tree and each sink is deserialized
//! from its JSON form with `serde_path_to_error`, in two parts: the keys every sink has
//! ([`COMMON_KEYS`]) and the keys of its `type`. Both parts refuse unknown keys. A serde error
//! carries the path of the offending value inside the sink (`url`, `headers.X-Api-Key`), which
//! is walked back down the YAML tree to report `FILE:LINE:COL: sinks[2].url: reason`.
//!
//! Secret fields ([`SecretSource`]) are deserialized from the JSON value without ever formatting
//! it, so an inline credential written by mistake is refused without being echoed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kustody_model::yaml::{self, Node};
use kustody_model::Priority;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Default for [`SinkConfig::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
/// Default for [`SinkConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// The keys every sink accepts, whatever its type.
pub const COMMON_KEYS: [&str; 9] =
    ["name", "type", "min_priority", "route", "rate_per_minute", "max_batch", "max_attempts", "timeout", "ca_file"];

/// A configuration problem: reading the file, a YAML syntax error, a bad value (with its
/// position and key path), or a secret that cannot be read when the sink is built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{file}:{line}:{col}: {}{message}", key_prefix(key))]
    Invalid { file: String, line: u32, col: u32, key: String, message: String },
    #[error("sink `{sink}`: {key}: {message}")]
    Build { sink: String, key: String, message: String },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Where a secret comes from. The value itself is only read by [`crate::Sink::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret (a trailing newline is dropped).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// A value that may be written inline (not a credential) or read like a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum ValueOrSecret {
    Plain(String),
    Secret(SecretSource),
}

impl std::fmt::Debug for ValueOrSecret {
    // Inline header values may still be credentials someone wrote inline: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueOrSecret::Plain(_) => f.write_str("Plain(..)"),
            ValueOrSecret::Secret(s) => write!(f, "Secret({s:?})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Udp,
    Tcp,
    Tls,
}

/// A syslog facility code (0..=23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElasticAuth {
    Basic { username: String, password: SecretSource },
    ApiKey(SecretSource),
}

/// One receiver and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Webhook {
        url: ValueOrSecret,
        headers: Vec<(String, ValueOrSecret)>,
        template: Option<Value>,
    },
    Slack {
        url: SecretSource,
    },
    Teams {
        url: SecretSource,
    },
    PagerDuty {
        routing_key: SecretSource,
        url: String,
    },
    Syslog(SyslogConfig),
    SplunkHec {
        url: String,
        token: SecretSource,
        index: Option<String>,
        sourcetype: String,
        source: String,
        host: Option<String>,
    },
    Elasticsearch {
        url: String,
        index: String,
        auth: Option<ElasticAuth>,
    },
    Smtp(SmtpConfig),
    Falco {
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `host:port`.
    pub address: String,
    pub transport: SyslogTransport,
    pub app_name: String,
    /// The HOSTNAME field; the machine's host name when not set.
    pub hostname: Option<String>,
    pub facility: Facility,
    /// UDP datagrams are cut to this many bytes (at a UTF-8 boundary).
    pub max_message: usize,
    /// Append the notification JSON to the one-line title in MSG.
    pub include_json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub from: String,
    pub to: Vec<String>,
}

impl SinkKind {
    /// The `type:` spelling.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Slack { .. } => "slack",
            SinkKind::Teams { .. } => "teams",
            SinkKind::PagerDuty { .. } => "pagerduty",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::SplunkHec { .. } => "splunk_hec",
            SinkKind::Elasticsearch { .. } => "elasticsearch",
            SinkKind::Smtp(_) => "smtp",
            SinkKind::Falco { .. } => "falco",
        }
    }
}

/// One sink of the sinks file.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Least severe priority delivered (default warning).
    pub min_priority: Priority,
    /// A condition over the incident, compiled and evaluated by the server.
    pub route: Option<String>,
    pub rate_per_minute: Option<u32>,
    /// Most notifications per [`crate::Sink::send`] (default 1; 100 for splunk_hec and
    /// elasticsearch, 50 for syslog).
    pub max_batch: usize,
    pub max_attempts: u32,
    /// Per request (or per connection and write, for syslog and SMTP).
    pub timeout: Duration,
    /// PEM certificates trusted in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `FILE:LINE:COL` of the sink's entry.
    pub origin: String,
}

impl SinkConfig {
    /// True when a notification of this severity is for this sink.
    pub fn wants(&self, severity: Priority) -> bool {
        severity.at_least(self.min_priority)
    }
}

/// Reads a sinks file (YAML). Errors name the file, line, column and the offending key.
pub fn load_sinks(path: &Path) -> Result<Vec<SinkConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_sinks(&text, &path.display().to_string())
}

/// Parses the text of a sinks file; `file_name` is used in error messages.
pub fn parse_sinks(text: &str, file_name: &str) -> Result<Vec<SinkConfig>, ConfigError> {
    let ctx = Ctx { file: file_name };
    let docs = yaml::parse(text).map_err(|e| ctx.error_at(e.pos, "", e.message))?;
    let Some(root) = docs.first() else { return Ok(Vec::new()) };
    if docs.len() > 1 {
        return Err(ctx.error_at(
            docs.get(1).map(Node::pos).unwrap_or_default(),
            "",
            "one YAML document expected".into(),
        ));
    }
    let Node::Map { entries, .. } = root else {
        return Err(ctx.error(root, "", format!("a mapping with `sinks:` expected, found {}", root.kind())));
    };
    let mut sinks = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            Some("sinks") => sinks = ctx.sinks(v)?,
            other => {
                return Err(ctx.error(k, other.unwrap_or("?"), "unknown key (expected `sinks`)".into()));
            }
        }
    }
    Ok(sinks)
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn error_at(&self, pos: yaml::Pos, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_owned(), line: pos.line, col: pos.col, key: key.to_owned(), message }
    }

    fn error(&self, node: &Node, key: &str, message: String) -> ConfigError {
        self.error_at(node.pos(), key, message)
    }

    fn sinks(&self, node: &Node) -> Result<Vec<SinkConfig>, ConfigError> {
        if node.is_null() {
            return Ok(Vec::new());
        }
        let Node::Seq { items, .. } = node else {
            return Err(self.error(node, "sinks", format!("a sequence expected, found {}", node.kind())));
        };
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("sinks[{i}]");
            let sink = self.sink(item, &key)?;
            if !names.insert(sink.name.clone()) {
                let at = item.get("name").unwrap_or(item);
                return Err(self.error(at, &format!("{key}.name"), format!("duplicate sink name `{}`", sink.name)));
            }
            out.push(sink);
        }
        Ok(out)
    }

    fn sink(&self, item: &Node, key: &str) -> Result<SinkConfig, ConfigError> {
        let Value::Object(all) = yaml::to_json(item) else {
            return Err(self.error(item, key, format!("a mapping expected, found {}", item.kind())));
        };
        let (common, specific): (Map<String, Value>, Map<String, Value>) =
            all.into_iter().partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
        let common: RawCommon = self.deserialize(Value::Object(common), item, key)?;
        let kind_node = item.get("type").unwrap_or(item);
        let specific = Value::Object(specific);
        let kind = match common.kind.as_str() {
            "webhook" => self.webhook(self.deserialize(specific, item, key)?, item, key)?,
            "slack" => self.deserialize::<RawUrlSecret>(specific, item, key).map(|r| SinkKind::Slack { url: r.url })?,
            "teams" => self.deserialize::<RawUrlSecret>(specific, item, key).map(|r| SinkKind::Teams { url: r.url })?,
            "pagerduty" => self.deserialize::<RawPagerDuty>(specific, item, key)?.into_kind(),
            "syslog" => self.syslog(self.deserialize(specific, item, key)?, item, key)?,
            "splunk_hec" => self.deserialize::<RawHec>(specific, item, key)?.into_kind(),
            "elasticsearch" | "opensearch" => self.elastic(self.deserialize(specific, item, key)?, item, key)?,
            "smtp" => self.smtp(self.deserialize(specific, item, key)?, item, key)?,
            "falco" => self.deserialize::<RawFalco>(specific, item, key).map(|r| SinkKind::Falco { url: r.url })?,
            other => {
                return Err(self.error(
                    kind_node,
                    &format!("{key}.type"),
                    format!("unknown sink type `{other}` (expected webhook, slack, teams, pagerduty, syslog, splunk_hec, elasticsearch, smtp or falco)"),
                ))
            }
        };
        self.finish(common, kind, item, key)
    }

    fn finish(&self, c: RawCommon, kind: SinkKind, item: &Node, key: &str) -> Result<SinkConfig, ConfigError> {
        let at = |k: &str| item.get(k).unwrap_or(item);
        if c.name.trim().is_empty() {
            return Err(self.error(at("name"), &format!("{key}.name"), "a sink needs a name".into()));
        }
        let max_batch = c.max_batch.unwrap_or(match kind {
            SinkKind::SplunkHec { .. } | SinkKind::Elasticsearch { .. } => 100,
            SinkKind::Syslog(_) => 50,
            _ => 1,
        });
        if max_batch == 0 {
            return Err(self.error(at("max_batch"), &format!("{key}.max_batch"), "must be at least 1".into()));
        }
        if c.rate_per_minute == Some(0) {
            return Err(self.error(
                at("rate_per_minute"),
                &format!("{key}.rate_per_minute"),
                "must be at least 1 (0 would never deliver; leave it out for no limit)".into(),
            ));
        }
        if c.max_attempts == Some(0) {
            return Err(self.error(at("max_attempts"), &format!("{key}.max_attempts"), "must be at least 1".into()));
        }
        let timeout = c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout.is_zero() {
            return Err(self.error(at("timeout"), &format!("{key}.timeout"), "must be more than 0".into()));
        }
        let url = match &kind {
            SinkKind::Webhook { url: ValueOrSecret::Plain(u), .. }
            | SinkKind::PagerDuty { url: u, .. }
            | SinkKind::SplunkHec { url: u, .. }
            | SinkKind::Elasticsearch { url: u, .. }
            | SinkKind::Falco { url: u } => Some(u),
            _ => None,
        };
        if let Some(u) = url {
            self.check_url(u, item, key, "url")?;
        }
        // a block mapping's own mark is after its first key: report the first key's position
        let pos = match item {
            Node::Map { entries, .. } => entries.first().map_or(item.pos(), |(k, _)| k.pos()),
            _ => item.pos(),
        };
        Ok(SinkConfig {
            name: c.name,
            kind,
            min_priority: c.min_priority.map_or(Priority::Warning, |p| p.0),
            route: c.route,
            rate_per_minute: c.rate_per_minute,
            max_batch,
            max_attempts: c.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            timeout,
            ca_file: c.ca_file,
            origin: format!("{}:{}:{}", self.file, pos.line, pos.col),
        })
    }

    /// Deserializes `value` (the JSON of `node`), mapping a serde error back to a position.
    fn deserialize<T: DeserializeOwned>(&self, value: Value, node: &Node, key: &str) -> Result<T, ConfigError> {
        yaml::deserialize_value(value, node).map_err(|e| self.error_at(e.pos, &format!("{key}{}", e.path), e.message))
    }

    fn webhook(&self, r: RawWebhook, item: &Node, key: &str) -> Result<SinkKind, ConfigError> {
        if let Some(t) = &r.template {
            if let Some(bad) = crate::render::webhook::unknown_placeholder(t) {
                let at = item.get("template").unwrap_or(item);
                return Err(self.error(
                    at,
                    &format!("{key}.template"),
                    format!(
                        "unknown placeholder `{{{{{bad}}}}}` (expected one of {})",
                        crate::render::webhook::PLACEHOLDERS.join(", ")
                    ),
                ));
            }
        }
        Ok(SinkKind::Webhook { url: r.url, headers: r.headers.map(|h| h.0).unwrap_or_default(), template: r.template })
    }

    fn check_url(&self, url: &str, item: &Node, key: &str, field: &str) -> Result<(), ConfigError> {
        crate::http::check_url(url)
            .map_err(|m| self.error(item.get(field).unwrap_or(item), &format!("{key}.{field}"), m))
    }

    fn syslog(&self, r: RawSyslog, item: &Node, key: &str) -> Result<SinkKind, ConfigError> {
        let at = |k: &str| item.get(k).unwrap_or(item);
        if crate::syslog::split_address(&r.address).is_none() {
            return Err(self.error(at("address"), &format!("{key}.address"), "expected HOST:PORT".into()));
        }
        let facility = match r.facility.as_deref() {
            None => Facility(16),
            Some(name) => facility_code(name).map(Facility).ok_or_else(|| {
                self.error(at("facility"), &format!("{key}.facility"), format!("unknown facility `{name}` (kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, security, console, local0..local7)"))
            })?,
        };
        Ok(SinkKind::Syslog(SyslogConfig {
            address: r.address,
            transport: r.transport.unwrap_or(SyslogTransport::Udp),
            app_name: r.app_name.unwrap_or_else(|| "kustody".into()),
            hostname: r.hostname,
            facility,
            max_message: r.max_message.unwrap_or(2048).max(480),
            include_json: r.include_json.unwrap_or(false),
        }))
    }

    fn elastic(&self, r: RawElastic, item: &Node, key: &str) -> Result<SinkKind, ConfigError> {
        let auth = match (r.username, r.password, r.api_key) {
            (None, None, None) => None,
            (Some(username), Some(password), None) => Some(ElasticAuth::Basic { username, password }),
            (None, None, Some(k)) => Some(ElasticAuth::ApiKey(k)),
            _ => {
                return Err(self.error(
                    item,
                    key,
                    "elasticsearch takes `username` with `password`, or `api_key`, or neither".into(),
                ))
            }
        };
        Ok(SinkKind::Elasticsearch { url: r.url, index: r.index.unwrap_or_else(|| "kustody-incidents".into()), auth })
    }

    fn smtp(&self, r: RawSmtp, item: &Node, key: &str) -> Result<SinkKind, ConfigError> {
        let at = |k: &str| item.get(k).unwrap_or(item);
        if r.to.is_empty() {
            return Err(self.error(at("to"), &format!("{key}.to"), "at least one recipient".into()));
        }
        if r.password.is_some() && r.username.is_none() {
            return Err(self.error(at("password"), &format!("{key}.password"), "a password needs a `username`".into()));
        }
        let tls = r.tls.unwrap_or(SmtpTls::Starttls);
        Ok(SinkKind::Smtp(SmtpConfig {
            host: r.host,
            port: r.port.unwrap_or(match tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
            }),
            tls,
            username: r.username,
            password: r.password,
            from: r.from,
            to: r.to,
        }))
    }
}

fn facility_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 16] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp",
        "security", "console", "clock",
    ];
    let lower = name.to_ascii_lowercase();
    if let Some(n) = lower.strip_prefix("local") {
        return n.parse::<u8>().ok().filter(|n| *n <= 7).map(|n| 16 + n);
    }
    NAMES.iter().position(|n| *n == lower).and_then(|i| u8::try_from(i).ok())
}

// ---- the serde shapes of the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    min_priority: Option<PriorityText>,
    route: Option<String>,
    rate_per_minute: Option<u32>,
    max_batch: Option<usize>,
    max_attempts: Option<u32>,
    timeout: Option<DurationText>,
    ca_file: Option<PathBuf>,
}

struct PriorityText(Priority);

impl<'de> Deserialize<'de> for PriorityText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(PriorityText).map_err(serde::de::Error::custom)
    }
}

/// `10`, `"10s"`, `"500ms"`, `"2m"`.
struct DurationText(Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                .map(|s| DurationText(Duration::from_secs_f64(s)))
                .ok_or_else(|| D::Error::custom("a number of seconds expected")),
            Value::String(s) => parse_duration(&s)
                .map(DurationText)
                .ok_or_else(|| D::Error::custom(format!("bad duration `{s}` (expected e.g. 10s, 500ms, 2m)"))),
            _ => Err(D::Error::custom("a duration expected (e.g. 10s)")),
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    num.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(mult_ms)).map(Duration::from_millis)
}

const INLINE_SECRET: &str = "a credential is not written inline: use {file: PATH} or {env: NAME}";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a Value, so that no serde message ever formats what was written.
        secret_from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn secret_from_value(v: Value) -> Result<SecretSource, &'static str> {
    let Value::Object(m) = v else { return Err(INLINE_SECRET) };
    let mut it = m.into_iter();
    match (it.next(), it.next()) {
        (Some((k, Value::String(s))), None) if k == "file" => Ok(SecretSource::File(PathBuf::from(s))),
        (Some((k, Value::String(s))), None) if k == "env" => Ok(SecretSource::Env(s)),
        _ => Err("expected {file: PATH} or {env: NAME}"),
    }
}

impl<'de> Deserialize<'de> for ValueOrSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ValueOrSecret::Plain(s)),
            v @ Value::Object(_) => secret_from_value(v).map(ValueOrSecret::Secret).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom("expected a string, {file: PATH} or {env: NAME}")),
        }
    }
}

impl<'de> Deserialize<'de> for SyslogTransport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.to_ascii_lowercase().as_str() {
            "udp" => Ok(SyslogTransport::Udp),
            "tcp" => Ok(SyslogTransport::Tcp),
            "tls" => Ok(SyslogTransport::Tls),
            other => Err(serde::de::Error::custom(format!("unknown transport `{other}` (expected udp, tcp or tls)"))),
        }
    }
}

impl<'de> Deserialize<'de> for SmtpTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::Starttls),
            "tls" => Ok(SmtpTls::Tls),
            other => {
                Err(serde::de::Error::custom(format!("unknown tls mode `{other}` (expected none, starttls or tls)")))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: ValueOrSecret,
    headers: Option<HeaderList>,
    template: Option<Value>,
}

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, ValueOrSecret>::deserialize(d)?;
        Ok(HeaderList(m.into_iter().collect()))
    }
}

struct HeaderList(Vec<(String, ValueOrSecret)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrlSecret {
    url: SecretSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerDuty {
    routing_key: SecretSource,
    url: Option<String>,
}

impl RawPagerDuty {
    fn into_kind(self) -> SinkKind {
        SinkKind::PagerDuty { routing_key: self.routing_key, url: self.url.unwrap_or_else(|| PAGERDUTY_URL.into()) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: String,
    transport: Option<SyslogTransport>,
    app_name: Option<String>,
    hostname: Option<String>,
    facility: Option<String>,
    max_message: Option<usize>,
    include_json: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHec {
    url: String,
    token: SecretSource,
    index: Option<String>,
    sourcetype: Option<String>,
    source: Option<String>,
    host: Option<String>,
}

impl RawHec {
    fn into_kind(self) -> SinkKind {
        SinkKind::SplunkHec {
            url: self.url,
            token: self.token,
            index: self.index,
            sourcetype: self.sourcetype.unwrap_or_else(|| "kustody:incident".into()),
            source: self.source.unwrap_or_else(|| "kustody".into()),
            host: self.host,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElastic {
    url: String,
    index: Option<String>,
    username: Option<String>,
    password: Option<SecretSource>,
    api_key: Option<SecretSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password: Option<SecretSource>,
    from: String,
    to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFalco {
    url: String,
}
