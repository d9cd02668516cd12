//! HTML building blocks of the console: escaping, the page layout, security headers.
//!
//! Every value from events, findings or users goes through [`esc`]; the Content-Security-Policy
//! allows only the server's own scripts and styles (no inline script, no inline style, no
//! framing), so a value that escaped escaping still could not run.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// HTML-escapes text for element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a query value.
pub fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the console's security headers.
pub fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    r
}

/// Who is looking, for the header bar (and the logout form's CSRF token).
pub struct Viewer<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
}

/// A whole page.
pub fn page(status: StatusCode, title: &str, who: Option<&Viewer<'_>>, body: &str) -> Response {
    let bar = match who {
        Some(v) => format!(
            r#"<nav><a class="brand" href="/">kustody</a><a href="/">Incidents</a><a href="/search">Search</a><a href="/charts">Charts</a><a href="/rules">Rules</a><a href="/evidence">Evidence</a><a href="/status">Status</a><span class="who">{} <small>({})</small></span><form method="post" action="/logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Log out</button></form></nav>"#,
            esc(v.name),
            esc(v.role),
            esc(v.csrf)
        ),
        None => r#"<nav><a class="brand" href="/">kustody</a></nav>"#.to_owned(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · kustody</title><link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script></head>
<body>{bar}<main>{body}</main></body></html>
"#,
        esc(title)
    );
    secure(
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], html).into_response(),
    )
}

/// A severity badge.
pub fn badge(severity: &str) -> String {
    let class = match severity.to_ascii_lowercase().as_str() {
        "emergency" | "alert" | "critical" => "sev-critical",
        "error" | "warning" => "sev-warning",
        "notice" => "sev-notice",
        _ => "sev-info",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, esc(severity))
}

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\u{fffd}[31mb");
    }
}
