//! [`Sink`]: a configured receiver with its secrets read and its client built, and
//! [`SendError`], the failure of one delivery with whether it is worth retrying.
//!
//! Receivers that take one event per request (webhooks, Slack, Teams, PagerDuty, Falco, mail)
//! get one request per notification of the batch; Splunk HEC and `_bulk` get the whole batch in
//! one request, syslog in one write.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::Request;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{ConfigError, ElasticAuth, SecretSource, SinkConfig, SinkKind, ValueOrSecret};
use crate::http::HttpClient;
use crate::render;
use crate::syslog::SyslogSender;
use crate::Notification;

/// A delivery that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Sending the same batch again may succeed (timeouts, 429, 5xx, refused connections).
    pub retryable: bool,
    /// What the receiver asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl SendError {
    pub fn retry(message: String) -> SendError {
        SendError { retryable: true, retry_after: None, message }
    }

    pub fn fatal(message: String) -> SendError {
        SendError { retryable: false, retry_after: None, message }
    }
}

/// A sink ready to send: built from a [`SinkConfig`] by [`Sink::new`].
pub struct Sink {
    cfg: SinkConfig,
    transport: Transport,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.cfg.name)
            .field("type", &self.cfg.kind.type_name())
            .finish_non_exhaustive()
    }
}

enum Transport {
    Http { client: HttpClient, target: HttpTarget },
    Syslog(SyslogSender),
    Smtp(crate::smtp::SmtpSender),
}

/// The URL is kept secret for every kind: Slack's and Teams' URLs are credentials.
struct HttpTarget {
    url: SecretString,
    headers: Vec<(HeaderName, SecretString)>,
    api: Api,
}

enum Api {
    Webhook { template: Option<Value> },
    Slack,
    Teams,
    PagerDuty { routing_key: SecretString },
    Hec { index: Option<String>, sourcetype: String, source: String, host: Option<String> },
    Elastic { index: String },
    Falco,
}

impl Sink {
    /// Reads the secrets and builds the client. Errors name the sink and the key, never a secret.
    pub fn new(cfg: &SinkConfig) -> Result<Sink, ConfigError> {
        let err = |key: &str, message: String| ConfigError::Build { sink: cfg.name.clone(), key: key.into(), message };
        let secret = |key: &str, src: &SecretSource| read_secret(src).map_err(|m| err(key, m));
        let plain = |s: &str| SecretString::from(s.to_owned());
        let (url, headers, api) = match &cfg.kind {
            SinkKind::Syslog(s) => {
                let sender = SyslogSender::new(s, cfg.timeout, cfg.ca_file.as_deref()).map_err(|m| err("syslog", m))?;
                return Ok(Sink { cfg: cfg.clone(), transport: Transport::Syslog(sender) });
            }
            SinkKind::Smtp(s) => {
                let password = s.password.as_ref().map(|p| secret("password", p)).transpose()?;
                let sender = crate::smtp::SmtpSender::new(s, password, cfg.timeout, cfg.ca_file.as_deref())
                    .map_err(|m| err("smtp", m))?;
                return Ok(Sink { cfg: cfg.clone(), transport: Transport::Smtp(sender) });
            }
            SinkKind::Webhook { url, headers, template } => {
                let url = match url {
                    ValueOrSecret::Plain(u) => plain(u),
                    ValueOrSecret::Secret(src) => secret("url", src)?,
                };
                let mut hs = Vec::new();
                for (name, value) in headers {
                    let key = format!("headers.{name}");
                    let hn =
                        HeaderName::from_bytes(name.as_bytes()).map_err(|_| err(&key, "not a header name".into()))?;
                    let v = match value {
                        ValueOrSecret::Plain(v) => plain(v),
                        ValueOrSecret::Secret(src) => secret(&key, src)?,
                    };
                    hs.push((hn, v));
                }
                (url, hs, Api::Webhook { template: template.clone() })
            }
            SinkKind::Slack { url } => (secret("url", url)?, Vec::new(), Api::Slack),
            SinkKind::Teams { url } => (secret("url", url)?, Vec::new(), Api::Teams),
            SinkKind::PagerDuty { routing_key, url } => {
                (plain(url), Vec::new(), Api::PagerDuty { routing_key: secret("routing_key", routing_key)? })
            }
            SinkKind::SplunkHec { url, token, index, sourcetype, source, host } => {
                let auth = format!("Splunk {}", secret("token", token)?.expose_secret());
                let api = Api::Hec {
                    index: index.clone(),
                    sourcetype: sourcetype.clone(),
                    source: source.clone(),
                    host: host.clone(),
                };
                (plain(url), vec![(AUTHORIZATION, SecretString::from(auth))], api)
            }
            SinkKind::Elasticsearch { url, index, auth } => {
                let headers = match auth {
                    None => Vec::new(),
                    Some(a) => vec![(AUTHORIZATION, elastic_auth(a).map_err(|m| err("auth", m))?)],
                };
                (plain(&bulk_url(url)), headers, Api::Elastic { index: index.clone() })
            }
            SinkKind::Falco { url } => (plain(url), Vec::new(), Api::Falco),
        };
        crate::http::check_url(url.expose_secret()).map_err(|m| err("url", m))?;
        for (name, value) in &headers {
            HeaderValue::from_str(value.expose_secret())
                .map_err(|_| err(name.as_str(), "not a valid header value".into()))?;
        }
        let client = HttpClient::new(cfg.ca_file.as_deref(), cfg.timeout).map_err(|m| err("ca_file", m))?;
        Ok(Sink { cfg: cfg.clone(), transport: Transport::Http { client, target: HttpTarget { url, headers, api } } })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &SinkConfig {
        &self.cfg
    }

    /// Delivers a batch (len <= config.max_batch) in as few requests as the API allows. Ok only
    /// when the receiver accepted all of it.
    pub async fn send(&self, batch: &[Notification]) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = match &self.transport {
            Transport::Syslog(s) => s.send(batch).await,
            Transport::Smtp(s) => s.send(batch).await,
            Transport::Http { client, target } => send_http(client, target, batch).await,
        };
        result.map_err(|e| SendError { message: format!("sink `{}`: {}", self.cfg.name, e.message), ..e })
    }
}

fn read_secret(src: &SecretSource) -> Result<SecretString, String> {
    let value = match src {
        SecretSource::File(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        SecretSource::Env(name) => {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))?
        }
    };
    if value.is_empty() {
        return Err(format!("the secret from {} is empty", describe(src)));
    }
    Ok(SecretString::from(value))
}

fn describe(src: &SecretSource) -> String {
    match src {
        SecretSource::File(p) => format!("file {}", p.display()),
        SecretSource::Env(n) => format!("environment variable {n}"),
    }
}

fn elastic_auth(auth: &ElasticAuth) -> Result<SecretString, String> {
    use base64::Engine;
    Ok(SecretString::from(match auth {
        ElasticAuth::ApiKey(src) => format!("ApiKey {}", read_secret(src)?.expose_secret()),
        ElasticAuth::Basic { username, password } => {
            let pair = format!("{username}:{}", read_secret(password)?.expose_secret());
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        }
    }))
}

fn bulk_url(base: &str) -> String {
    format!("{}/_bulk?filter_path=errors,items.*._id,items.*.status,items.*.error", base.trim_end_matches('/'))
}

async fn send_http(client: &HttpClient, target: &HttpTarget, batch: &[Notification]) -> Result<(), SendError> {
    match &target.api {
        Api::Hec { index, sourcetype, source, host } => {
            let meta = render::hec::Meta { host: host.as_deref(), source, sourcetype, index: index.as_deref() };
            let reply = client.send(request(target, "application/json", render::hec::body(batch, meta))?).await?;
            render::hec::check_response(&reply.body).map_err(SendError::fatal)
        }
        Api::Elastic { index } => {
            let reply =
                client.send(request(target, "application/x-ndjson", render::elastic::body(batch, index))?).await?;
            render::elastic::check_response(&reply.body).map_err(|f| SendError {
                retryable: f.retryable,
                retry_after: None,
                message: format!("_bulk: {}", f.message),
            })
        }
        _ => {
            for n in batch {
                let body = one_body(&target.api, n);
                client.send(request(target, "application/json", body.to_string())?).await?;
            }
            Ok(())
        }
    }
}

fn one_body(api: &Api, n: &Notification) -> Value {
    match api {
        Api::Webhook { template } => render::webhook::body(n, template.as_ref()),
        Api::Slack => render::slack::body(n),
        Api::Teams => render::teams::body(n),
        Api::PagerDuty { routing_key } => render::pagerduty::body(n, routing_key.expose_secret()),
        Api::Falco => render::falco::body(n),
        // sent as batches above
        Api::Hec { .. } | Api::Elastic { .. } => serde_json::to_value(n).unwrap_or(Value::Null),
    }
}

fn request(target: &HttpTarget, content_type: &str, body: String) -> Result<Request<Full<Bytes>>, SendError> {
    let mut builder = Request::post(target.url.expose_secret())
        .header(CONTENT_TYPE, content_type)
        .header(hyper::header::USER_AGENT, concat!("kustody/", env!("CARGO_PKG_VERSION")));
    for (name, value) in &target.headers {
        let mut v = HeaderValue::from_str(value.expose_secret())
            .map_err(|_| SendError::fatal(format!("header {name}: not a valid value")))?;
        v.set_sensitive(true);
        builder = builder.header(name, v);
    }
    // The message of a request-building error could quote the URL: not repeated.
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| SendError::fatal("the URL is not a valid request target".into()))
}
