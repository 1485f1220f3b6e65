//! `GET /metrics`: the gateway's counters in the Prometheus text exposition
//! format (OpenMetrics, through the official `prometheus-client` crate).
//!
//! So far what the limits refuse (the observability issue adds calls,
//! upstreams and the rest):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `flotilla_client_sessions` | gauge | client sessions (2025 revisions) held now |
//! | `flotilla_client_sessions_refused_total` | counter | `initialize` refused at `limits.maxSessions` |
//! | `flotilla_connections_refused_total{reason}` | counter | connections answered 503 and closed: `reason="max_connections"` or `"per_address"` |
//! | `flotilla_request_body_timeouts_total` | counter | request bodies not received within `limits.bodyReadTimeoutSeconds` |
//!
//! Labels are bounded: never a user, token, address or free text.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    MaxConnections,
    PerAddress,
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let value = match self {
            RefusalReason::MaxConnections => "max_connections",
            RefusalReason::PerAddress => "per_address",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub reason: RefusalReason,
}

/// The gateway's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub client_sessions: Gauge<i64, AtomicI64>,
    pub sessions_refused: Counter,
    pub connections_refused: Family<Refusal, Counter>,
    pub body_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let client_sessions = Gauge::<i64, AtomicI64>::default();
        let sessions_refused = Counter::default();
        let connections_refused = Family::<Refusal, Counter>::default();
        let body_timeouts = Counter::default();
        registry.register(
            "client_sessions",
            "Client sessions (2025 revisions) held now",
            client_sessions.clone(),
        );
        registry.register(
            "client_sessions_refused",
            "initialize requests refused because limits.maxSessions sessions were open",
            sessions_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed at a connection limit",
            connections_refused.clone(),
        );
        registry.register(
            "request_body_timeouts",
            "Request bodies not received within limits.bodyReadTimeoutSeconds",
            body_timeouts.clone(),
        );
        Self {
            registry,
            client_sessions,
            sessions_refused,
            connections_refused,
            body_timeouts,
        }
    }
}

impl Metrics {
    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn refused(&self, reason: RefusalReason) {
        self.connections_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_under_their_prometheus_names() {
        let metrics = Metrics::default();
        metrics.sessions_refused.inc();
        metrics.refused(RefusalReason::PerAddress);
        metrics.refused(RefusalReason::PerAddress);
        metrics.client_sessions.set(3);
        let text = metrics.encode();
        assert!(
            text.contains("flotilla_client_sessions_refused_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"flotilla_connections_refused_total{reason="per_address"} 2"#),
            "{text}"
        );
        assert!(text.contains("flotilla_client_sessions 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
