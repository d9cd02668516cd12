//! RFC 5424 syslog messages:
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [kustody@53595 incident="42" ...] MSG`.
//!
//! PRI is facility × 8 + the syslog severity of the incident's priority (Falco's priorities are
//! syslog's). MSGID is the action (`trigger`, `update`, `resolve`). The structured data carries
//! the incident id, severity, rule, status, action, cluster and dedup key, escaped as SD-PARAM
//! values require. MSG is the one-line title, optionally followed by the notification JSON.

use chrono::SecondsFormat;

use super::{one_line, rfc3339};
use crate::config::SyslogConfig;
use crate::{Notification, Priority};

/// The SD-ID of kustody's structured-data element.
pub const SD_ID: &str = "kustody@53595";

/// Syslog severity (0 emergency .. 7 debug).
pub fn severity(p: Priority) -> u8 {
    match p {
        Priority::Emergency => 0,
        Priority::Alert => 1,
        Priority::Critical => 2,
        Priority::Error => 3,
        Priority::Warning => 4,
        Priority::Notice => 5,
        Priority::Informational => 6,
        Priority::Debug => 7,
    }
}

/// PRI = facility × 8 + severity.
pub fn pri(facility: u8, p: Priority) -> u16 {
    u16::from(facility) * 8 + u16::from(severity(p))
}

/// SD-PARAM value escaping (RFC 5424 §6.3.3): `"`, `\` and `]` get a backslash.
pub fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII only, at most `max` characters, `-` when empty.
fn header_field(value: &str, max: usize) -> String {
    let s: String = value.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(max).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The whole message (no framing).
pub fn message(n: &Notification, cfg: &SyslogConfig, hostname: &str, procid: u32) -> String {
    let mut sd = format!(
        "[{SD_ID} incident=\"{}\" severity=\"{}\" rule=\"{}\" status=\"{}\" action=\"{}\"",
        n.incident_id,
        n.severity.falco_name(),
        sd_escape(&n.rule),
        sd_escape(&n.status),
        n.action.as_str()
    );
    if let Some(c) = &n.cluster {
        sd.push_str(&format!(" cluster=\"{}\"", sd_escape(c)));
    }
    sd.push_str(&format!(" dedup_key=\"{}\"]", sd_escape(&n.dedup_key)));
    let mut msg = one_line(&n.title);
    if cfg.include_json {
        msg.push(' ');
        msg.push_str(&serde_json::to_string(n).unwrap_or_default());
    }
    format!(
        "<{}>1 {} {} {} {} {} {} {}",
        pri(cfg.facility.0, n.severity),
        rfc3339(n.time_ns, SecondsFormat::Micros),
        header_field(hostname, 255),
        header_field(&cfg.app_name, 48),
        procid,
        header_field(n.action.as_str(), 32),
        sd,
        msg
    )
}

/// RFC 6587 §3.4.1 octet counting: `LEN SP MSG`.
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::config::{Facility, SyslogTransport};
    use crate::render::tests::sample;

    fn cfg() -> SyslogConfig {
        SyslogConfig {
            address: "x:1".into(),
            transport: SyslogTransport::Udp,
            app_name: "kustody".into(),
            hostname: None,
            facility: Facility(20),
            max_message: 2048,
            include_json: false,
        }
    }

    #[test]
    fn rfc5424_shape() {
        let mut n = sample();
        n.rule = r#"Shell "in" [pod\x]"#.into();
        let m = message(&n, &cfg(), "host 1", 77);
        assert!(m.starts_with("<162>1 2023-11-14T22:13:20.123456Z host_1 kustody 77 trigger [kustody@53595 incident=\"42\" severity=\"Critical\" rule=\"Shell \\\"in\\\" [pod\\\\x\\]\" status=\"new\""), "{m}");
        assert!(m.ends_with(
            "] CRITICAL incident #42: Terminal shell in container — system:serviceaccount:default:web in default/web"
        ));
        assert_eq!(pri(4, Priority::Warning), 36);
        assert_eq!(octet_counted("abc"), b"3 abc");
    }

    #[test]
    fn json_is_appended_when_asked() {
        let mut c = cfg();
        c.include_json = true;
        let m = message(&sample(), &c, "h", 1);
        let json_start = m.find(" {\"action\"").unwrap();
        let v: serde_json::Value = serde_json::from_str(&m[json_start + 1..]).unwrap();
        assert_eq!(v["incident_id"], 42);
    }
}
