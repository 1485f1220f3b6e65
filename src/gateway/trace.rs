//! Trace context (W3C Trace Context; in MCP, SEP-414's `_meta` keys
//! `traceparent` and `tracestate`). The edge opens one span per JSON-RPC
//! request, continuing the trace the client started (its `_meta`, else its
//! `traceparent` header); each call to an upstream gets a child span, whose
//! context goes to the upstream as the `traceparent` header (HTTP
//! upstreams) and in the request's `_meta` (every transport).
//!
//! With trace export off (no `tracing.otlpEndpoint`) the spans still name
//! a trace id in log lines and the audit log: the client's, or a random
//! one; nothing is added to what goes upstream, and a client's `_meta`
//! trace keys pass through untouched.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::Rng as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::fleet::Upstream;
use crate::fleet::wire::TraceHeaders;

/// The trace one request belongs to, in its extensions for the handlers
/// (rmcp's handler runs in a task of its own, outside the request's span).
#[derive(Clone, Debug)]
pub struct RequestTrace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The request's span, parent of its upstream calls' spans.
    pub span: Span,
    /// Its spans are exported (OTLP on, and the trace sampled).
    pub exported: bool,
}

impl RequestTrace {
    /// Names the tool a request calls on its span.
    pub fn tool(&self, name: &str) {
        self.span.record("gen_ai.tool.name", name);
    }
}

/// SEP-414's trace keys in a request's `params._meta`.
pub fn from_meta(params: Option<&serde_json::value::RawValue>) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        traceparent: Option<String>,
        tracestate: Option<String>,
    }
    let meta = params
        .and_then(|p| serde_json::from_str::<Params>(p.get()).ok())
        .and_then(|p| p.meta);
    match meta {
        Some(meta) => (meta.traceparent, meta.tracestate),
        None => (None, None),
    }
}

/// What a request says about the trace it is part of.
#[derive(Default, Debug)]
pub struct Incoming<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// The span of one JSON-RPC request, and its trace.
pub fn request_span(
    method: &str,
    session: Option<&str>,
    incoming: Incoming<'_>,
) -> (Span, RequestTrace) {
    let span = tracing::info_span!(
        "mcp.request",
        otel.name = method,
        otel.kind = "server",
        mcp.method.name = method,
        mcp.session.id = session,
        gen_ai.tool.name = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = incoming.traceparent.and_then(|traceparent| {
        let mut carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        if let Some(state) = incoming.tracestate {
            carrier.insert("tracestate".into(), state.to_string());
        }
        let context = TraceContextPropagator::new().extract(&carrier);
        context.span().span_context().is_valid().then_some(context)
    });
    if let Some(parent) = &parent {
        let _ = span.set_parent(parent.clone());
    }
    let context = span.context().span().span_context().clone();
    let exported = context.is_valid() && context.is_sampled();
    let trace_id = if context.is_valid() {
        context.trace_id().to_string()
    } else if let Some(parent) = &parent {
        parent.span().span_context().trace_id().to_string()
    } else {
        random_trace_id()
    };
    span.record("trace_id", trace_id.as_str());
    let trace = RequestTrace {
        trace_id,
        span: span.clone(),
        exported,
    };
    (span, trace)
}

/// A child span of the request's for one call to `upstream`; none while
/// the request's spans are not exported (log lines inside the call carry
/// the request's span either way).
pub fn upstream_span(
    request: Option<&RequestTrace>,
    upstream: &Upstream,
    instance: Option<&str>,
    method: &str,
    tool: Option<&str>,
) -> Span {
    let Some(parent) = request.filter(|r| r.exported).map(|r| &r.span) else {
        return Span::none();
    };
    let name = match tool {
        Some(tool) => format!("{method} {tool}"),
        None => method.to_string(),
    };
    let url = upstream.desired().spec.url.clone();
    let (host, port) = url.as_deref().map(host_and_port).unwrap_or_default();
    tracing::info_span!(
        parent: parent,
        "mcp.upstream",
        otel.name = name,
        otel.kind = "client",
        mcp.method.name = method,
        gen_ai.tool.name = tool,
        server.address = host,
        server.port = port.map(i64::from),
        flotilla.server = &*upstream.name,
        flotilla.instance = instance,
    )
}

/// Host and port of an upstream URL (`server.address`, `server.port`),
/// without parsing it whole; the scheme's default port when none is given.
fn host_and_port(url: &str) -> (Option<&str>, Option<u16>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (None, None);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (v6, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port.and_then(|p| p.parse().ok()) {
        Some(port) => Some(port),
        None if scheme.eq_ignore_ascii_case("https") => Some(443),
        None if scheme.eq_ignore_ascii_case("http") => Some(80),
        None => None,
    };
    ((!host.is_empty()).then_some(host), port)
}

/// The trace context to send upstream for `span`; `None` while trace
/// export is off (the span is then not recorded anywhere).
pub fn outgoing(span: &Span) -> Option<TraceHeaders> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    Some(TraceHeaders {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// The request's trace in rmcp's extensions (the HTTP request's parts).
pub fn of_request(extensions: &rmcp::model::Extensions) -> Option<&RequestTrace> {
    extensions
        .get::<http::request::Parts>()?
        .extensions
        .get::<RequestTrace>()
}

/// Puts `trace` into a request's `_meta` (SEP-414), replacing the client's.
pub fn into_meta(meta: &mut Option<rmcp::model::RequestMetaObject>, trace: &TraceHeaders) {
    let meta = meta.get_or_insert_with(rmcp::model::RequestMetaObject::new);
    meta.set_traceparent(trace.traceparent.clone());
    match &trace.tracestate {
        Some(state) => meta.set_tracestate(state.clone()),
        None => {
            meta.remove("tracestate");
        }
    }
}

fn random_trace_id() -> String {
    let id: u128 = rand::rng().random();
    format!("{:032x}", id.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_trace_is_continued_and_a_missing_one_started() {
        let incoming = Incoming {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            tracestate: None,
        };
        let (_, trace) = request_span("tools/call", None, incoming);
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

        let (_, fresh) = request_span("tools/call", None, Incoming::default());
        assert_eq!(fresh.trace_id.len(), 32);
        assert!(fresh.trace_id.chars().all(|c| c.is_ascii_hexdigit()));
        let (_, other) = request_span("tools/call", None, Incoming::default());
        assert_ne!(fresh.trace_id, other.trace_id);

        // A malformed traceparent starts a trace of its own.
        let broken = Incoming {
            traceparent: Some("00-not-a-trace-01"),
            tracestate: None,
        };
        let (_, trace) = request_span("tools/call", None, broken);
        assert_eq!(trace.trace_id.len(), 32);
    }

    #[test]
    fn nothing_goes_upstream_while_export_is_off() {
        let span = tracing::info_span!("mcp.upstream");
        assert_eq!(outgoing(&span), None);
    }

    #[test]
    fn an_upstream_url_gives_its_host_and_port() {
        assert_eq!(
            host_and_port("http://127.0.0.1:8081/mcp"),
            (Some("127.0.0.1"), Some(8081))
        );
        assert_eq!(
            host_and_port("https://mcp.cluster-a.example/mcp?x=1"),
            (Some("mcp.cluster-a.example"), Some(443))
        );
        assert_eq!(
            host_and_port("http://user:pw@[::1]:9000/"),
            (Some("::1"), Some(9000))
        );
        assert_eq!(host_and_port("not a url"), (None, None));
    }
}
