//! Falco alert JSON, as Falco itself posts it to falcosidekick: `output`, `priority`, `rule`,
//! `time` (RFC 3339, nanoseconds), `output_fields`, `source` (`k8s_audit`), `tags`, `hostname`.

use serde_json::{json, Value};

use super::rfc3339_nanos;
use crate::Notification;

pub fn body(n: &Notification) -> Value {
    json!({
        "output": n.output,
        "priority": n.severity.falco_name(),
        "rule": n.rule,
        "time": rfc3339_nanos(n.time_ns),
        "output_fields": n.fields,
        "source": "k8s_audit",
        "tags": n.tags,
        "hostname": "kustody",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn falco_shape() {
        let b = body(&sample());
        assert_eq!(b["priority"], "Critical");
        assert_eq!(b["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(b["output_fields"]["ka.target.namespace"], "default");
        assert_eq!(b["source"], "k8s_audit");
        assert_eq!(b.as_object().unwrap().len(), 8);
    }
}
