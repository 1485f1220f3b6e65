//! The HTTP edge: what the Streamable HTTP transport requires of a server
//! before any message is handled, enforced in front of every path (the
//! cached `tools/list`, the bearer check, rmcp's service). The `Host` and
//! `Origin` checks ([`guard`]) cover every route but the probes (`/status`,
//! `/auth/status` and the OAuth routes included); the rest ([`edge`]) is `/mcp`'s.
//!
//! | request | answer |
//! |---|---|
//! | `Host` not allowed (DNS-rebinding protection; `allowedHosts`) | 403 (on `/mcp` a JSON-RPC error without id) |
//! | `Origin` present and not allowed | 403 (the same) |
//! | POST body that is not JSON | 400, -32700 (parse error) |
//! | JSON that is not a JSON-RPC message (see `envelope`) | 400, -32600, the message's id when it has a valid one |
//! | POST body over the size limit | 413, -32600 |
//! | POST body not received in time (`limits.bodyReadTimeoutSeconds`) | 408, -32600 |
//! | `initialize` on an existing session (`Mcp-Session-Id` set) | 400, -32600 |
//! | a JSON-RPC batch where the revision allows it (2025-03-26) | each message handled, the responses as one JSON array (202 when there are none) |
//! | a batch on any later revision, an empty batch, or one holding `initialize` | 400, -32600 |
//! | `DELETE` of a live session | 204 (see `session`) |
//! | `DELETE` (or any request) of an unknown, expired or ended session, or another caller's | 404, -32001 (see `session`) |
//!
//! Allowed origins: the configured list (`allowedOrigins`, exact
//! `scheme://host[:port]`, `*` = any), else loopback origins on any port
//! plus the public URL's origin. A request without `Origin` (every
//! non-browser client) passes.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use serde_json::{Value, json};
use tracing::Instrument as _;

use super::envelope::{self, RpcId, RpcMethod};
use super::listener::body_timed_out;
use super::metrics::Metrics;
use super::trace;

/// The largest request body accepted (rmcp's own limit).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The only revision whose transport carries JSON-RPC batches.
const BATCH_REVISION: &str = "2025-03-26";

/// Which `Host` headers `/mcp` accepts (DNS-rebinding protection).
#[derive(Clone, Debug)]
pub enum AllowedHosts {
    Any,
    Only(Vec<String>),
}

/// Which browser origins may call `/mcp` (DNS-rebinding and cross-site protection).
#[derive(Clone, Debug)]
pub enum AllowedOrigins {
    Any,
    /// Loopback origins on any port, plus these exact origins.
    LoopbackAnd(Vec<String>),
    /// Exactly these origins.
    Only(Vec<String>),
}

impl AllowedOrigins {
    /// From the config's list (`None`: loopback plus `public_origin`).
    pub fn from_config(list: Option<&[String]>, public_origin: Option<String>) -> Self {
        match list {
            Some(list) if list.iter().any(|o| o == "*") => Self::Any,
            Some(list) => Self::Only(list.iter().map(|o| normalize(o)).collect()),
            None => Self::LoopbackAnd(public_origin.map(|o| normalize(&o)).into_iter().collect()),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        let origin = normalize(origin);
        match self {
            Self::Any => true,
            Self::Only(list) => list.contains(&origin),
            Self::LoopbackAnd(list) => is_loopback_origin(&origin) || list.contains(&origin),
        }
    }
}

/// `scheme://host[:port]` in lower case, default ports dropped, no trailing slash.
fn normalize(origin: &str) -> String {
    match url::Url::parse(origin) {
        Ok(url) if url.host_str().is_some() => url.origin().ascii_serialization(),
        _ => origin.trim_end_matches('/').to_ascii_lowercase(),
    }
}

fn is_loopback_origin(origin: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[derive(Clone)]
pub struct Edge {
    pub metrics: Arc<Metrics>,
}

/// Whether the request's `Host` is one `/mcp` answers to.
pub fn host_allowed(hosts: &AllowedHosts, headers: &HeaderMap) -> bool {
    let AllowedHosts::Only(allowed) = hosts else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    allowed.iter().any(|a| a == host || a == name)
}

/// A JSON-RPC error as an HTTP response.
fn rpc_error(status: StatusCode, id: Value, code: i64, message: String) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn invalid_request(message: impl Into<String>) -> Response {
    rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32600, message.into())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Which hosts and browser origins may reach the gateway.
#[derive(Clone)]
pub struct Reach {
    pub hosts: AllowedHosts,
    pub origins: AllowedOrigins,
}

/// Middleware on every route but the probes (`/healthz`, `/readyz`):
/// the `Host` (DNS rebinding) and `Origin` (cross-site) checks.
pub async fn guard(State(reach): State<Reach>, request: Request, next: Next) -> Response {
    let on_mcp = request.uri().path().starts_with("/mcp");
    let refuse = |message: &str| {
        if on_mcp {
            rpc_error(StatusCode::FORBIDDEN, Value::Null, -32600, message.into())
        } else {
            (StatusCode::FORBIDDEN, message.to_string()).into_response()
        }
    };
    if !host_allowed(&reach.hosts, request.headers()) {
        tracing::warn!(host = ?request.headers().get(header::HOST), path = request.uri().path(), "refused a request for a host name that is not allowed");
        return refuse(
            "this Host may not call the gateway (add it to allowedHosts in the config file)",
        );
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| reach.origins.allows(o));
        if !allowed {
            tracing::warn!(origin = ?origin, path = request.uri().path(), "refused a request from a browser origin that is not allowed");
            return refuse(
                "this Origin may not call the gateway (add it to allowedOrigins in the config file)",
            );
        }
    }
    next.run(request).await
}

/// Middleware on `/mcp`, outermost (inside [`guard`]).
pub async fn edge(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    match *request.method() {
        Method::POST => post(&edge, request, next).await,
        _ => next.run(request).await,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

async fn post(edge: &Edge, request: Request, next: Next) -> Response {
    // Other content types get the transport's own 415.
    if !is_json(request.headers()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(error) if body_timed_out(&error) => {
            edge.metrics.body_timeouts.inc();
            return rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                Value::Null,
                -32600,
                error.to_string(),
            );
        }
        Err(_) => {
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Value::Null,
                -32600,
                format!("the request body is larger than {MAX_BODY} bytes"),
            );
        }
    };
    let (method, id, meta_trace) = match envelope::read(&bytes) {
        envelope::Body::Message(message) => (
            message.method.map(Cow::into_owned),
            message
                .id
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok()),
            trace::from_meta(message.params),
        ),
        envelope::Body::Batch => {
            // Valid UTF-8 (the envelope check parsed it): borrowed, not copied.
            let array = String::from_utf8_lossy(&bytes);
            return batch(parts, &array, next).await;
        }
        envelope::Body::NotJson(error) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                format!("parse error: the body is not valid JSON ({error})"),
            );
        }
        envelope::Body::Invalid(invalid) => {
            return rpc_error(StatusCode::BAD_REQUEST, invalid.id, -32600, invalid.message);
        }
    };
    if id.is_some()
        && let Some(method) = method.as_deref()
    {
        edge.metrics.request(method);
    }
    let initialize = method.as_deref() == Some("initialize");
    if initialize && id.is_none() {
        return invalid_request("initialize is a request: it needs an id");
    }
    let in_session = parts.headers.contains_key("mcp-session-id");
    if in_session && initialize {
        return invalid_request(
            "this session is already initialized; to start a new one, send initialize without Mcp-Session-Id",
        );
    }
    let mut parts = parts;
    if let Some(method) = &method {
        parts.extensions.insert(RpcMethod(method.clone()));
        if let Some(id) = &id {
            parts.extensions.insert(RpcId(id.clone()));
        }
    }
    let span = match (&id, method.as_deref()) {
        (Some(_), Some(method)) => {
            // The client's `_meta` first (it names the MCP request), else its header.
            let (traceparent, tracestate) = match meta_trace {
                (Some(parent), state) => (Some(parent), state),
                (None, _) => (
                    header_str(&parts.headers, "traceparent").map(str::to_string),
                    header_str(&parts.headers, "tracestate").map(str::to_string),
                ),
            };
            let session = header_str(&parts.headers, "mcp-session-id");
            let incoming = trace::Incoming {
                traceparent: traceparent.as_deref(),
                tracestate: tracestate.as_deref(),
            };
            let (span, trace) = trace::request_span(method, session, incoming);
            parts.extensions.insert(trace);
            span
        }
        _ => tracing::Span::none(),
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .instrument(span)
        .await;
    if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        // The body is JSON with a valid envelope (checked above): what the
        // transport could not read is the method's params.
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.unwrap_or(Value::Null),
            -32602,
            format!(
                "invalid params: this {} does not match the MCP schema",
                method.as_deref().unwrap_or("response")
            ),
        );
    }
    as_json_rpc(response).await
}

/// The transport's own refusals (a missing or unknown session, a wrong
/// `Accept`) come as plain text; a client reads them as JSON-RPC errors,
/// with the same status and words.
async fn as_json_rpc(response: Response) -> Response {
    let status = response.status();
    let plain = !header_str(response.headers(), header::CONTENT_TYPE.as_str())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/event-stream"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        text
    };
    // -32001: the code the SDKs use for "session not found".
    let code = if status == StatusCode::NOT_FOUND {
        -32001
    } else {
        -32600
    };
    rpc_error(status, Value::Null, code, message)
}

/// A JSON-RPC batch: only 2025-03-26 has them. Each message goes through
/// the same path as a single one; the responses come back as one array.
async fn batch(parts: axum::http::request::Parts, array: &str, next: Next) -> Response {
    let revision = header_str(&parts.headers, "mcp-protocol-version").unwrap_or(BATCH_REVISION);
    if revision != BATCH_REVISION {
        return invalid_request(format!(
            "JSON-RPC batches are not part of MCP revision {revision}; send one message per request"
        ));
    }
    let messages: Vec<&serde_json::value::RawValue> = match serde_json::from_str(array) {
        Ok(messages) => messages,
        Err(error) => return invalid_request(format!("invalid batch: {error}")),
    };
    if messages.is_empty() {
        return invalid_request("an empty batch holds nothing to do");
    }
    let checked: Vec<_> = messages.iter().map(|m| envelope::check(m)).collect();
    if checked.iter().any(|c| {
        c.as_ref()
            .is_ok_and(|m| m.method.as_deref() == Some("initialize"))
    }) {
        return invalid_request("initialize must not be part of a batch");
    }
    let calls = messages.iter().zip(checked).map(|(message, checked)| {
        // A member that is not JSON-RPC gets its error in the reply array.
        let method = checked
            .as_ref()
            .ok()
            .and_then(|m| m.method.as_deref().map(str::to_string));
        let refused = checked.err().map(|invalid| {
            json!({"jsonrpc": "2.0", "id": invalid.id,
                   "error": {"code": -32600, "message": invalid.message}})
        });
        let mut request = Request::new(Body::from(message.get().to_string()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        *request.extensions_mut() = parts.extensions.clone();
        if let Some(method) = method {
            request.extensions_mut().insert(RpcMethod(method));
        }
        let next = next.clone();
        async move {
            match refused {
                Some(error) => vec![error],
                None => responses_of(next.run(request).await).await,
            }
        }
    });
    let replies: Vec<Value> = futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    if replies.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Value::Array(replies).to_string(),
    )
        .into_response()
}

/// The JSON-RPC responses in one answer (a JSON body, or the SSE stream's
/// response events). Notifications sent on a batched request's stream are
/// not carried into the batch reply.
async fn responses_of(response: Response) -> Vec<Value> {
    let is_sse = header_str(response.headers(), header::CONTENT_TYPE.as_str())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let status = response.status();
    let Ok(body) = axum::body::to_bytes(response.into_body(), usize::MAX).await else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&body);
    let candidates: Vec<Value> = if is_sse {
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str(data.trim()).ok())
            .collect()
    } else if status == StatusCode::ACCEPTED || body.is_empty() {
        Vec::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => vec![value],
            Err(_) => vec![json!({"jsonrpc": "2.0", "id": null, "error": {
                "code": -32603, "message": format!("HTTP {status}: {}", text.trim())
            }})],
        }
    };
    candidates
        .into_iter()
        .filter(|m| {
            m.get("id").is_some() && (m.get("result").is_some() || m.get("error").is_some())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_with_or_without_port() {
        let hosts = AllowedHosts::Only(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]);
        let with = |h: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, h.parse().unwrap());
            host_allowed(&hosts, &map)
        };
        assert!(with("127.0.0.1:8080"));
        assert!(with("localhost"));
        assert!(with("[::1]:80"));
        assert!(!with("evil.example:8080"));
        assert!(!host_allowed(&hosts, &HeaderMap::new()));
    }

    #[test]
    fn loopback_origins_pass_by_default_and_others_do_not() {
        let origins = AllowedOrigins::from_config(None, Some("https://mcp.example.com/".into()));
        for ok in [
            "http://localhost:6274",
            "http://127.0.0.1",
            "http://[::1]:3000",
            "https://localhost",
            "https://mcp.example.com",
            "https://MCP.example.com:443",
        ] {
            assert!(origins.allows(ok), "{ok}");
        }
        for refused in [
            "http://evil.example",
            "null",
            "http://localhost.evil.example",
            "https://mcp.example.com:8443",
            "file://localhost",
        ] {
            assert!(!origins.allows(refused), "{refused}");
        }
    }

    #[test]
    fn a_configured_list_replaces_the_default_and_star_allows_all() {
        let only = AllowedOrigins::from_config(Some(&["https://app.example".into()]), None);
        assert!(only.allows("https://app.example"));
        assert!(!only.allows("http://localhost:1"));
        let any = AllowedOrigins::from_config(Some(&["*".into()]), None);
        assert!(any.allows("http://evil.example"));
    }
}
