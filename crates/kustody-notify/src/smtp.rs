//! SMTP through lettre (tokio, rustls with ring): one plain-text mail per notification (subject
//! = title; body = summary, console link, incident JSON) to every `to` address, over a plain,
//! STARTTLS or implicit-TLS connection, with AUTH when a username is configured.
//!
//! lettre's errors are classified by the SMTP reply: 4xx (transient), timeouts and connection
//! failures are retryable; 5xx (permanent) is not.

use std::path::Path;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{SmtpConfig, SmtpTls};
use crate::render::mail::mail;
use crate::{Notification, SendError};

pub(crate) struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    host: String,
}

impl SmtpSender {
    pub fn new(
        cfg: &SmtpConfig,
        password: Option<SecretString>,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("from: {e}"))?;
        let to = cfg
            .to
            .iter()
            .map(|t| t.parse::<Mailbox>().map_err(|e| format!("to: {t}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host).port(cfg.port).timeout(Some(timeout));
        builder = match cfg.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters(&cfg.host, ca_file)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls_parameters(&cfg.host, ca_file)?)),
        };
        if let Some(user) = &cfg.username {
            let pass = password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), pass));
        }
        Ok(SmtpSender { transport: builder.build(), from, to, host: format!("{}:{}", cfg.host, cfg.port) })
    }

    pub async fn send(&self, batch: &[Notification]) -> Result<(), SendError> {
        for n in batch {
            let m = mail(n);
            let mut b = Message::builder().from(self.from.clone()).subject(m.subject).header(ContentType::TEXT_PLAIN);
            for t in &self.to {
                b = b.to(t.clone());
            }
            let message = b.body(m.body).map_err(|e| SendError::fatal(format!("mail: {e}")))?;
            self.transport.send(message).await.map_err(|e| classify(&e, &self.host))?;
        }
        Ok(())
    }
}

fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(host.to_owned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls().map_err(|e| format!("TLS setup: {e}"))
}

fn classify(e: &lettre::transport::smtp::Error, host: &str) -> SendError {
    let mut message = format!("smtp {host}: {e}");
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        message.push_str(&format!(": {s}"));
        cur = s.source();
    }
    SendError { retryable: !e.is_permanent(), retry_after: None, message }
}
