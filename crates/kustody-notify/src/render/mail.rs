//! A plain-text mail: the subject is the title, the body the summary, the console link and the
//! incident JSON.

use crate::Notification;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub subject: String,
    pub body: String,
}

pub fn mail(n: &Notification) -> Mail {
    let mut body = n.summary.trim_end().to_owned();
    body.push_str("\n\n");
    if let Some(url) = &n.url {
        body.push_str(&format!("Console: {url}\n\n"));
    }
    body.push_str("-- incident (JSON) --\n");
    body.push_str(&serde_json::to_string_pretty(&n.incident).unwrap_or_default());
    body.push('\n');
    Mail { subject: super::one_line(&n.title), body }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn subject_and_body() {
        let m = mail(&sample());
        assert_eq!(m.subject, sample().title);
        assert!(m.body.starts_with("What: a shell in web-1\n"));
        assert!(m.body.contains("Console: https://kustody.example/incidents/42"));
        assert!(m.body.contains("\"steps\""));
    }
}
