//! SMTP: not wired yet.

use std::time::Duration;

use secrecy::SecretString;

use crate::config::SmtpConfig;
use crate::{Notification, SendError};

pub(crate) struct SmtpSender;

impl SmtpSender {
    pub fn new(
        _cfg: &SmtpConfig,
        _password: Option<SecretString>,
        _timeout: Duration,
        _ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        Err("SMTP is not available in this build".into())
    }

    pub async fn send(&self, _batch: &[Notification]) -> Result<(), SendError> {
        Err(SendError::fatal("SMTP is not available in this build".into()))
    }
}
