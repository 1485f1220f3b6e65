//! `GET /metrics`: the gateway's counters in the Prometheus text exposition
//! format (OpenMetrics, through the official `prometheus-client` crate).
//!
//! Counted as it happens (this file):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `flotilla_tool_calls_total` | counter | `tool`, `upstream_tool`, `family`, `server`, `family_instance`, `outcome` | tool calls sent to an upstream (one per instance on fan-out), by how they ended |
//! | `flotilla_tool_call_duration_seconds` | histogram | the same | time from the client's request to the upstream's answer |
//! | `flotilla_fanout_calls_total` | counter | `tool` | calls of a family tool on several instances |
//! | `flotilla_fanout_width` | histogram | `tool` | instances one fan-out call reached |
//! | `flotilla_requests_total` | counter | `method` | MCP requests received, by method (`other` for methods MCP does not define) |
//! | `flotilla_client_sessions` | gauge | | client sessions (2025 revisions) held in this replica's memory now |
//! | `flotilla_client_sessions_restored_total` | counter | | client sessions rebuilt here from their id (first use on this replica, after a restart, or after being let go) |
//! | `flotilla_client_sessions_released_total` | counter | | held client sessions let go at `limits.maxSessions` (their ids stay valid) |
//! | `flotilla_client_requests_passed_total` | counter | | client requests that belong to another replica (an answer to its question, a stream it holds), passed to it |
//! | `flotilla_connections_refused_total` | counter | `reason` | connections answered 503 and closed: `max_connections` or `per_address` |
//! | `flotilla_request_body_timeouts_total` | counter | | request bodies not received within `limits.bodyReadTimeoutSeconds` |
//! | `flotilla_audit_lines_dropped_total` | counter | | audit lines dropped because the writer fell behind |
//! | `flotilla_calls_rate_limited_total` | counter | `method` | calls refused because their caller was over `rateLimit` (`tools/call`, `resources/read`, `prompts/get`) |
//!
//! Each tool call is also counted per exposed tool in `tally` (see
//! `tool_tally.rs`), which the fleet page reads back.
//!
//! Read at each scrape from the fleet, the catalog, the token cache and the
//! Kubernetes source: see `scrape.rs`.
//!
//! `family_instance` is the family member's instance name (empty outside a
//! family); it is not called `instance` because Prometheus gives that label
//! to the scraped target. `outcome` is one of `ok`, `tool_error` (the tool ran and reported an
//! error), `protocol_error` (a JSON-RPC error), `timeout`, `unavailable`
//! (the upstream could not be reached or failed the request), `denied`,
//! `cancelled` (the client cancelled or left), `input_required` (a
//! 2026-07-28 client was asked for input; its retry counts as a call of its
//! own), `overloaded` (the server was at `spec.limits.maxConcurrency` and
//! the call could not wait; it was not sent) and, in the audit log only,
//! `rate_limited` (the caller was over `rateLimit`; such a call reaches no
//! upstream, so it is counted in `flotilla_calls_rate_limited_total`). Labels are bounded: never a user, token, address or free text; tool,
//! family, server and instance names come from the catalog.

use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::tool_tally::ToolTally;

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

/// How one tool call ended (the `outcome` label, and the audit log's).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ToolError,
    ProtocolError,
    Timeout,
    Unavailable,
    Denied,
    Cancelled,
    InputRequired,
    /// The caller was over its rate limit (`rateLimit`); nothing was sent.
    RateLimited,
    /// The server was at its concurrency limit (`spec.limits.maxConcurrency`)
    /// and the call's queue was full or its wait ran out; nothing was sent.
    Overloaded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
            Outcome::InputRequired => "input_required",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
        }
    }
}

impl Outcome {
    /// Whether the call counts as an error on the fleet page: it did not do
    /// its work for a reason on the tool's or the fleet's side. A client that
    /// cancelled, a tool that asked the client for input, and a caller over
    /// its own rate limit are calls but not errors.
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            Outcome::Ok | Outcome::Cancelled | Outcome::InputRequired | Outcome::RateLimited
        )
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Where one upstream tool call went, by the catalog's names. `family` and
/// `instance` are empty for a server outside a family.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct CallTarget {
    /// The name the client called.
    pub tool: String,
    /// The upstream's own name for it.
    pub upstream_tool: String,
    pub family: String,
    pub server: String,
    pub instance: String,
}

/// `family_instance`, not `instance`: Prometheus sets `instance` to the
/// scraped target and would rename ours.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolCallLabels {
    tool: String,
    upstream_tool: String,
    family: String,
    server: String,
    family_instance: String,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// The MCP methods counted by name; anything else is `other`, so a client
/// cannot grow the label set.
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "subscriptions/listen",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
];

/// A method's label: its name when MCP defines it, else `other`.
fn method_label(method: &str) -> MethodLabel {
    let method = METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other");
    MethodLabel { method }
}

/// Histogram buckets, in seconds, from a millisecond to a minute.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const WIDTH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The gateway's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub client_sessions: Gauge<i64, AtomicI64>,
    pub sessions_restored: Counter,
    pub sessions_released: Counter,
    pub requests_passed: Counter,
    pub connections_refused: Family<Refusal, Counter>,
    pub body_timeouts: Counter,
    /// Audit lines lost to a full queue (see `audit.rs`).
    pub audit_dropped: Counter,
    tool_calls: Family<ToolCallLabels, Counter>,
    tool_call_seconds: Family<ToolCallLabels, Histogram, Buckets>,
    fanout_calls: Family<ToolLabel, Counter>,
    fanout_width: Family<ToolLabel, Histogram, Buckets>,
    requests: Family<MethodLabel, Counter>,
    rate_limited: Family<MethodLabel, Counter>,
    /// The same tool calls per exposed tool, readable back (the fleet page).
    pub tally: ToolTally,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let client_sessions = Gauge::<i64, AtomicI64>::default();
        let sessions_restored = Counter::default();
        let sessions_released = Counter::default();
        let requests_passed = Counter::default();
        let connections_refused = Family::<Refusal, Counter>::default();
        let body_timeouts = Counter::default();
        let audit_dropped = Counter::default();
        let tool_calls = Family::<ToolCallLabels, Counter>::default();
        let tool_call_seconds = Family::new_with_constructor(Buckets(DURATION_BUCKETS));
        let fanout_calls = Family::<ToolLabel, Counter>::default();
        let fanout_width = Family::new_with_constructor(Buckets(WIDTH_BUCKETS));
        let requests = Family::<MethodLabel, Counter>::default();
        let rate_limited = Family::<MethodLabel, Counter>::default();
        registry.register(
            "tool_calls",
            "Tool calls sent to an upstream (one per instance on fan-out), by outcome",
            tool_calls.clone(),
        );
        registry.register_with_unit(
            "tool_call_duration",
            "Time from the client's tool call to the upstream's answer",
            prometheus_client::registry::Unit::Seconds,
            tool_call_seconds.clone(),
        );
        registry.register(
            "fanout_calls",
            "Calls of a family tool on several instances",
            fanout_calls.clone(),
        );
        registry.register(
            "fanout_width",
            "Instances one fan-out call reached",
            fanout_width.clone(),
        );
        registry.register(
            "requests",
            "MCP requests received, by method",
            requests.clone(),
        );
        registry.register(
            "calls_rate_limited",
            "Calls refused because their caller was over its rate limit (rateLimit), by method",
            rate_limited.clone(),
        );
        registry.register(
            "client_sessions",
            "Client sessions (2025 revisions) held in memory now",
            client_sessions.clone(),
        );
        registry.register(
            "client_sessions_restored",
            "Client sessions rebuilt on this replica from their session id",
            sessions_restored.clone(),
        );
        registry.register(
            "client_requests_passed",
            "Client requests that belong to another replica (an answer to its question, a stream it holds), passed to it",
            requests_passed.clone(),
        );
        registry.register(
            "client_sessions_released",
            "Held client sessions let go at limits.maxSessions (their ids stay valid)",
            sessions_released.clone(),
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
        registry.register(
            "audit_lines_dropped",
            "Audit lines dropped because the audit writer fell behind",
            audit_dropped.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            client_sessions,
            sessions_restored,
            sessions_released,
            requests_passed,
            connections_refused,
            body_timeouts,
            audit_dropped,
            tool_calls,
            tool_call_seconds,
            fanout_calls,
            fanout_width,
            requests,
            rate_limited,
            tally: ToolTally::default(),
        }
    }
}

impl Metrics {
    /// The exposition text in OpenMetrics (what Prometheus asks for).
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }

    /// The exposition text in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = match format {
                Format::OpenMetrics => {
                    prometheus_client::encoding::text::encode(&mut text, &registry)
                }
                Format::PrometheusText => {
                    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
                }
            };
        }
        text
    }

    /// Adds metrics read at each scrape (see `scrape.rs`).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(collector);
        }
    }

    pub fn refused(&self, reason: RefusalReason) {
        self.connections_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }

    /// One MCP request received.
    pub fn request(&self, method: &str) {
        self.requests.get_or_create(&method_label(method)).inc();
    }

    /// One call refused at its caller's rate limit.
    pub fn rate_limited(&self, method: &str) {
        self.rate_limited.get_or_create(&method_label(method)).inc();
    }

    /// One upstream tool call ended.
    pub fn tool_call(&self, target: &CallTarget, outcome: Outcome, took: Duration) {
        let labels = ToolCallLabels {
            tool: target.tool.clone(),
            upstream_tool: target.upstream_tool.clone(),
            family: target.family.clone(),
            server: target.server.clone(),
            family_instance: target.instance.clone(),
            outcome,
        };
        self.tool_calls.get_or_create(&labels).inc();
        self.tool_call_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.tally.record(&target.tool, outcome.is_error(), took);
    }

    /// One fan-out call of `tool` reached `width` instances.
    pub fn fanout(&self, tool: &str, width: usize) {
        let label = ToolLabel {
            tool: tool.to_string(),
        };
        self.fanout_calls.get_or_create(&label).inc();
        self.fanout_width
            .get_or_create(&label)
            .observe(width as f64);
    }
}

/// The two exposition formats: OpenMetrics for scrapers that ask for it
/// (Prometheus does), the classic text format (0.0.4) for everyone else
/// (`curl`, `promtool check metrics`, older scrapers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// What an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_under_their_prometheus_names() {
        let metrics = Metrics::default();
        metrics.sessions_released.inc();
        metrics.refused(RefusalReason::PerAddress);
        metrics.refused(RefusalReason::PerAddress);
        metrics.client_sessions.set(3);
        let text = metrics.encode();
        assert!(
            text.contains("flotilla_client_sessions_released_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"flotilla_connections_refused_total{reason="per_address"} 2"#),
            "{text}"
        );
        assert!(text.contains("flotilla_client_sessions 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn errors_are_outcomes_other_than_ok_cancelled_and_input_required() {
        for (outcome, error) in [
            (Outcome::Ok, false),
            (Outcome::Cancelled, false),
            (Outcome::InputRequired, false),
            (Outcome::ToolError, true),
            (Outcome::ProtocolError, true),
            (Outcome::Timeout, true),
            (Outcome::Unavailable, true),
            (Outcome::Denied, true),
        ] {
            assert_eq!(outcome.is_error(), error, "{outcome:?}");
        }
    }

    #[test]
    fn tool_calls_reach_the_per_tool_tally() {
        let metrics = Metrics::default();
        let target = CallTarget {
            tool: "x_a".into(),
            ..CallTarget::default()
        };
        metrics.tool_call(&target, Outcome::Ok, Duration::from_millis(1));
        metrics.tool_call(&target, Outcome::Timeout, Duration::from_millis(3));
        metrics.tool_call(&target, Outcome::Cancelled, Duration::from_millis(2));
        let snapshot = metrics.tally.snapshot();
        assert_eq!(snapshot.tools.len(), 1);
        let counts = snapshot.tools[0].total;
        assert_eq!((counts.calls, counts.errors), (3, 1));
    }
}
