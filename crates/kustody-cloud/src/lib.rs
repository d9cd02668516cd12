//! Audit logs pulled from managed clouds' logging services, where no one can configure the
//! apiserver's webhook (EKS, GKE, AKS).
//!
//! What lives here is what talks to a provider: the HTTP client ([`http`]), AWS request
//! signing, error classes and credential refresh ([`aws`]), quotas ([`limit`]), CloudWatch
//! Logs' cursor (a no-I/O state machine) and its reader ([`cloudwatch`]), and the read-only
//! checks of `kustody setup eks` ([`setup`]). Converting what was read into events, storing it
//! and checkpointing belong to `kustody-serve`, which drives a source through
//! [`cloudwatch::Reader`]: read a page, store its events and bad records durably, then store
//! the cursor's checkpoint. A crash between the two only reads a page again, which the store's
//! de-duplication absorbs.

pub mod aws;
pub mod cloudwatch;
pub mod http;
pub mod limit;
pub mod setup;

/// A value as one URL path segment (percent-encoded but for RFC 3986's unreserved characters).
pub fn http_path_segment(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}
