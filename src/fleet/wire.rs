//! The relay's own line to an upstream session: raw JSON-RPC over the
//! session rmcp opened. A relayed request is sent as the bytes the gateway
//! composed and its answer read as the bytes the upstream sent; nothing is
//! decoded into rmcp's model on the way.
//!
//! - Streamable HTTP: a POST per request on the session (its session id,
//!   negotiated revision, the server's headers and the user's credential),
//!   on the fleet's pooled keep-alive connections; the answer is JSON or an
//!   SSE stream. A server spoken to in 2026-07-28 has no session: each
//!   request carries the routing headers of that revision (`lifecycle`).
//! - Stdio, legacy SSE, an agent's tunnel: the relay's messages share the
//!   one line with rmcp's session (`message_wire`); what the server sends
//!   for a relayed request comes back as the events of a stream, as on HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Map, Value};
use sse_stream::Sse;
use tokio::sync::mpsc;

use super::credential::CredentialRef;
use super::message_wire::MessageLine;
use super::{lifecycle, sse_events};

/// Which of an upstream's lists changed (the wire reports a change the
/// upstream announced on a relayed call's stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    Prompts,
}

impl ListKind {
    /// The list a `notifications/*/list_changed` method names.
    pub fn changed_by(method: &str) -> Option<Self> {
        match method {
            "notifications/tools/list_changed" => Some(Self::Tools),
            "notifications/resources/list_changed" => Some(Self::Resources),
            "notifications/prompts/list_changed" => Some(Self::Prompts),
            _ => None,
        }
    }
}

/// W3C trace context for one request to the upstream (the gateway's span
/// for the call), sent as the `traceparent` and `tracestate` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

pub use super::http_client::SessionSlot;
use crate::api::SecretValue;

/// What an upstream answered to a relayed request.
pub enum WireReply {
    /// One JSON-RPC message.
    Json(Bytes),
    /// An SSE stream of JSON-RPC messages, the answer last.
    Events(BoxStream<'static, Result<Sse, sse_stream::Error>>),
}

/// Why a relayed message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The server never took the request (no connection, no live session,
    /// session refused): it may be sent again another way.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// The server took the request and failed it at the HTTP level.
    #[error("{0}")]
    Failed(String),
}

/// A raw channel on one upstream session.
pub struct Wire {
    /// The negotiated revision.
    pub protocol: Arc<str>,
    /// Spoken to in 2026-07-28 (Streamable HTTP only): every request says
    /// who its client is (`lifecycle`), there is no session.
    pub(super) stateless: bool,
    /// Where list changes seen on a relayed stream are reported.
    pub(super) refresh: mpsc::UnboundedSender<ListKind>,
    pub(super) line: Line,
}

/// How a wire reaches its server.
pub(super) enum Line {
    /// Streamable HTTP: each relayed request is a POST of its own.
    Http(HttpLine),
    /// A transport of whole messages shared with rmcp's session (stdio,
    /// legacy SSE, an agent's tunnel).
    Messages(MessageLine),
}

/// A Streamable HTTP session's line.
#[derive(Clone)]
pub(super) struct HttpLine {
    pub(super) url: reqwest::Url,
    pub(super) http: reqwest::Client,
    pub(super) headers: HeaderMap,
    pub(super) credential: Option<CredentialRef>,
    pub(super) session: SessionSlot,
}

impl Wire {
    /// The `_meta` members a request the gateway writes on this wire must
    /// carry (for an upstream spoken to in 2026-07-28), if any.
    pub fn lifecycle_meta(&self) -> Option<&'static Map<String, Value>> {
        self.stateless.then(lifecycle::lifecycle_meta)
    }

    /// A request of the gateway's own, as this wire's revision needs it.
    pub fn own_request(&self, id: &str, method: &str, mut params: Value) -> Bytes {
        if let (Some(meta), Value::Object(params)) = (self.lifecycle_meta(), &mut params) {
            params.insert("_meta".into(), Value::Object(meta.clone()));
        }
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        Bytes::from(body.to_string())
    }

    /// POSTs `body` on the session (with the routing headers a 2026-07-28
    /// request needs).
    async fn post_http(
        &self,
        line: &HttpLine,
        body: Bytes,
        trace: Option<&TraceHeaders>,
    ) -> Result<reqwest::Response, WireError> {
        let routing = if self.stateless {
            lifecycle::routing_headers(&body)
        } else {
            Vec::new()
        };
        line.send(Some(&self.protocol), Some(body), None, (trace, &routing))
            .await
    }

    /// Whether the wire is a Streamable HTTP session's (a POST per message).
    pub fn is_http(&self) -> bool {
        matches!(self.line, Line::Http(_))
    }

    /// A list change the upstream announced on a relayed request's stream.
    pub fn list_changed(&self, kind: ListKind) {
        let _ = self.refresh.send(kind);
    }

    /// Sends a request and returns the upstream's answer as it comes.
    pub async fn post(&self, body: Bytes) -> Result<WireReply, WireError> {
        self.post_in_trace(body, None).await
    }

    /// [`Wire::post`] with the W3C trace context headers of the gateway's
    /// span for this call (HTTP only: a message transport has no headers).
    pub async fn post_in_trace(
        &self,
        body: Bytes,
        trace: Option<&TraceHeaders>,
    ) -> Result<WireReply, WireError> {
        match &self.line {
            Line::Http(line) => HttpLine::reply(self.post_http(line, body, trace).await?).await,
            Line::Messages(line) => post_message(line, &body).await,
        }
    }

    /// Picks up a request's SSE stream that the upstream closed before it
    /// answered, from the last event seen (the transport's resumption).
    pub async fn resume(&self, last_event_id: &str) -> Result<WireReply, WireError> {
        match &self.line {
            Line::Http(line) => {
                let response = line
                    .send(Some(&self.protocol), None, Some(last_event_id), (None, &[]))
                    .await?;
                HttpLine::reply(response).await
            }
            Line::Messages(_) => Err(WireError::Failed(
                "the server's transport cannot resume a request".into(),
            )),
        }
    }

    /// Sends a request of the gateway's own and reads its answer (the
    /// response with `id`), skipping whatever the upstream sends before it.
    pub async fn call(&self, body: Bytes, id: &str) -> Result<Value, WireError> {
        let broken =
            |e: &dyn std::fmt::Display| WireError::Failed(format!("unreadable answer: {e}"));
        match self.post(body).await? {
            WireReply::Json(bytes) => serde_json::from_slice(&bytes).map_err(|e| broken(&e)),
            WireReply::Events(mut events) => {
                while let Some(event) = events.next().await {
                    let event = event.map_err(|e| broken(&e))?;
                    let Some(message) = event
                        .data
                        .and_then(|data| serde_json::from_str::<Value>(&data).ok())
                    else {
                        continue;
                    };
                    let answers = message.get("method").is_none()
                        && message.get("id").and_then(Value::as_str) == Some(id);
                    if answers {
                        return Ok(message);
                    }
                }
                Err(WireError::Failed(
                    "the upstream closed the stream before it answered".into(),
                ))
            }
        }
    }

    /// Sends a request of the gateway's own and returns its result, or why
    /// there is none (an error answer, or no answer within `timeout`).
    pub async fn ask(
        &self,
        method: &str,
        params: Value,
        timeout: std::time::Duration,
    ) -> Result<Value, WireError> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let id = format!("flotilla-own-{}", IDS.fetch_add(1, Ordering::Relaxed));
        let body = self.own_request(&id, method, params);
        let answer = tokio::time::timeout(timeout, self.call(body, &id))
            .await
            .map_err(|_| WireError::Failed(format!("no answer to {method} in {timeout:?}")))??;
        let Value::Object(mut answer) = answer else {
            return Err(WireError::Failed(format!(
                "{method}: not a JSON-RPC answer"
            )));
        };
        match answer.remove("result") {
            Some(result) => Ok(result),
            None => {
                let error = answer.remove("error").unwrap_or(Value::Null);
                Err(WireError::Failed(format!("{method} failed: {error}")))
            }
        }
    }

    /// Sends a notification or a response (an HTTP upstream answers 202).
    pub async fn deliver(&self, body: Bytes) -> Result<(), WireError> {
        match &self.line {
            Line::Http(line) => {
                let response = self.post_http(line, body, None).await?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(WireError::Failed(format!("HTTP {}", response.status())))
                }
            }
            Line::Messages(line) => {
                let text = String::from_utf8(body.to_vec())
                    .map_err(|_| WireError::Failed("the message is not UTF-8".into()))?;
                line.deliver(text)
                    .await
                    .map_err(|e| WireError::NotDelivered(e.to_string()))
            }
        }
    }
}

/// A relayed request on a message transport: what the server sends for it
/// comes back as the events of a stream, in order, the answer last.
async fn post_message(line: &MessageLine, body: &[u8]) -> Result<WireReply, WireError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| WireError::Failed(format!("the relayed request is not JSON: {e}")))?;
    let id = request
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| WireError::Failed("a relayed request needs the relay's id".into()))?;
    let token = request
        .pointer("/params/_meta/progressToken")
        .and_then(Value::as_str)
        .map(str::to_string);
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| WireError::Failed("the request is not UTF-8".into()))?;
    let replies = line
        .post(text, id, token)
        .await
        .map_err(|e| WireError::NotDelivered(e.to_string()))?;
    let events = replies.map(|data| {
        Ok(Sse {
            data: Some(data),
            ..Sse::default()
        })
    });
    Ok(WireReply::Events(events.boxed()))
}

/// What a request carries beyond its body: the trace context of the
/// gateway's span, and the routing headers of a 2026-07-28 request.
type Extra<'a> = (Option<&'a TraceHeaders>, &'a [(HeaderName, HeaderValue)]);

impl HttpLine {
    /// A POST of `body`, or (`body` = `None`) the GET that resumes a stream
    /// after `resume_after`.
    fn request(
        &self,
        protocol: Option<&str>,
        body: Option<Bytes>,
        resume_after: Option<&str>,
        token: Option<&SecretValue>,
        (trace, routing): Extra<'_>,
    ) -> Option<reqwest::RequestBuilder> {
        // A server that gave no session id at the handshake keeps none
        // (sessions are optional in the handshake revisions).
        let session = self.session.lock().ok()?.clone();
        let mut request = match body {
            Some(body) => self
                .http
                .post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json, text/event-stream")
                .body(body),
            None => self
                .http
                .get(self.url.clone())
                .header(header::ACCEPT, "text/event-stream"),
        }
        .headers(self.headers.clone());
        if let Some(protocol) = protocol {
            request = request.header("mcp-protocol-version", protocol);
        }
        if let Some(last) = resume_after {
            request = request.header("last-event-id", last);
        }
        if let Some(trace) = trace {
            request = request.header("traceparent", &trace.traceparent);
            if let Some(state) = &trace.tracestate {
                request = request.header("tracestate", state);
            }
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", &*session);
        }
        for (name, value) in routing {
            request = request.header(name, value);
        }
        if let Some(token) = token
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        {
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        Some(request)
    }

    /// Sends one message (or resumes a stream) with the session's
    /// credential, retried once with a fresh token after a 401.
    pub(super) async fn send(
        &self,
        protocol: Option<&str>,
        body: Option<Bytes>,
        resume_after: Option<&str>,
        extra: Extra<'_>,
    ) -> Result<reqwest::Response, WireError> {
        let token = match &self.credential {
            None => None,
            Some(credential) => Some(
                credential
                    .bearer()
                    .await
                    .map_err(|e| WireError::NotDelivered(format!("SSO: {e}")))?,
            ),
        };
        let no_session = || WireError::NotDelivered("the session is gone".into());
        let first = self
            .request(protocol, body.clone(), resume_after, token.as_ref(), extra)
            .ok_or_else(no_session)?
            .send()
            .await
            .map_err(not_delivered)?;
        match (&self.credential, token) {
            (Some(credential), Some(token)) if first.status() == StatusCode::UNAUTHORIZED => {
                let fresh = credential
                    .after_rejection(&token)
                    .await
                    .map_err(|e| WireError::NotDelivered(format!("SSO: {e}")))?;
                self.request(protocol, body, resume_after, Some(&fresh), extra)
                    .ok_or_else(no_session)?
                    .send()
                    .await
                    .map_err(not_delivered)
            }
            _ => Ok(first),
        }
    }

    async fn reply(response: reqwest::Response) -> Result<WireReply, WireError> {
        let status = response.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST {
            // An unknown session (404, or 400 from the TypeScript SDK): the
            // request did not run; rmcp's path takes it, and its transport
            // opens the session again (`http_transport`).
            let text = response.text().await.unwrap_or_default();
            return Err(WireError::NotDelivered(format!("HTTP {status}: {text}")));
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(WireError::Failed(format!("HTTP {status}: {}", text.trim())));
        }
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            return Ok(WireReply::Events(sse_events::events(
                response.bytes_stream(),
            )));
        }
        response
            .bytes()
            .await
            .map(WireReply::Json)
            .map_err(|e| WireError::Failed(e.to_string()))
    }
}

/// A failed send: only a connection that was never made is known not to
/// have delivered the request (a request may not run twice).
fn not_delivered(error: reqwest::Error) -> WireError {
    // reqwest keeps the cause (refused, reset, TLS) in the source chain.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_connect() {
        WireError::NotDelivered(text)
    } else {
        WireError::Failed(text)
    }
}
