//! A relayed call's SSE answer: driven by the upstream's events as the
//! client reads it (no task of its own: the client's connection polls it),
//! with the rewrites of `message` on each event; questions from the
//! upstream's standalone stream join it, a stream the upstream closes early
//! is resumed, and a client that goes away cancels the upstream request.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use sse_stream::Sse;
use tokio_util::sync::CancellationToken;

use axum::response::Response;

use super::answer::{Pending, failure, sse_response};
use super::message::{self, Message};
use super::{Asked, ClientSide, Relay, Reply, answer_response};
use crate::fleet::limits::{CallPermit, limit_response_text};
use crate::fleet::wire::{Wire, WireError, WireReply};
use crate::fleet::{ClientOffers, LineMessage, ListKind, RelayedCall, severity};
use crate::gateway::call_record::{CallRecord, outcome_of_json};
use crate::gateway::metrics::Outcome;
use crate::gateway::parking::{MAX_WAITING, WAIT};
use crate::gateway::revision::ClientRevision;

fn sse_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

/// Tells an upstream to stop working on a request (bounded wait).
pub(super) async fn cancel_upstream(wire: &Wire, upstream_id: &str, reason: &str) {
    let note = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": upstream_id, "reason": reason},
    });
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        wire.deliver(Bytes::from(note.to_string())),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!(
            upstream_id,
            "relay: the upstream did not take the cancellation"
        );
    }
}

/// One relayed call's SSE answer, read from the upstream as the client reads it.
pub(super) struct Stream {
    pub(super) relay: Arc<Relay>,
    pub(super) method: String,
    pub(super) key: (String, String),
    pub(super) wire: Arc<Wire>,
    pub(super) events: BoxStream<'static, Result<Sse, sse_stream::Error>>,
    /// The upstream's reply, while it has not come (it asked something first).
    pub(super) pending: Option<Pending>,
    /// A message for the client that came before the reply.
    pub(super) first_line: Option<LineMessage>,
    /// The call as registered on the upstream (session clients).
    pub(super) tracked: Option<RelayedCall>,
    pub(super) upstream_id: String,
    pub(super) client_id: Value,
    pub(super) client: ClientSide,
    pub(super) client_token: Option<Value>,
    /// Who a task this call creates belongs to, and its upstream.
    pub(super) task_owner: Option<(String, Arc<str>)>,
    /// Who made the call (see `tasks::owner`), for a call parked for input.
    pub(super) caller: Option<String>,
    /// Set when the call has asked a 2026-07-28 client for input (`input`).
    pub(super) waiting: Option<Waiting>,
    pub(super) upstream_token: Option<Value>,
    pub(super) label: Arc<str>,
    pub(super) log_level: Option<u8>,
    /// The time allowed between the upstream's messages.
    pub(super) timeout: Duration,
    /// When `spec.limits.callTimeout` ends the call, and that timeout.
    pub(super) deadline: Option<(tokio::time::Instant, Duration)>,
    /// `spec.limits.maxOutputBytes` for the call's result.
    pub(super) limit: OutputLimit,
    /// The server's concurrency slot, held until the call is over (a call
    /// parked for its client's input holds it too: it is open upstream).
    pub(super) _slot: Option<CallPermit>,
    pub(super) cancel: CancellationToken,
    pub(super) done: bool,
    /// Ids of requests put to the client for this call.
    pub(super) asks: Vec<String>,
    /// The last event id and retry delay the upstream gave, for resuming.
    pub(super) last_event: Option<String>,
    pub(super) retry: Option<Duration>,
    pub(super) resumed: u32,
    /// The tool call as operators see it (`tools/call` only).
    pub(super) record: Option<CallRecord>,
    /// How the call failed, when the gateway ended it (the client gets a
    /// tool error either way).
    pub(super) failed: Option<Outcome>,
    /// The upstream call's span: it ends when the stream does.
    pub(super) _span: tracing::Span,
}

/// How often a call's stream is picked up again after the upstream closed it.
const MAX_RESUMES: u32 = 3;

/// What one upstream event becomes.
enum Step {
    Send(String),
    Skip,
    Last(String),
    /// `input_required` sent; the call waits for the client's retry.
    Park(String),
}

impl Stream {
    /// The client's answer to the call: plain JSON when the answer (or a
    /// request for input) comes with nothing before it, as the transport
    /// allows (the framing is per hop); else an SSE stream.
    pub(super) async fn respond(mut self) -> Response {
        let first = self.next_event().await;
        let revision = self.client.revision;
        let json = |answer| answer_response(answer, revision);
        if self.waiting.is_some() {
            let relay = self.relay.clone();
            park(&relay, self);
            return first.map_or_else(|| sse_response(Body::empty()), json);
        }
        if self.is_over() {
            // None: cancelled by the client before anything came; nothing follows.
            return first.map_or_else(|| sse_response(Body::empty()), json);
        }
        sse_response(self.into_body(first))
    }

    /// The SSE body: `first` (an event already read), then the rest; a
    /// call that asks a 2026-07-28 client for input is parked after it.
    fn into_body(self, first: Option<String>) -> Body {
        let first = futures::stream::iter(first);
        let rest = futures::stream::unfold(Some(self), |stream| async move {
            let mut stream = stream?;
            let event = stream.next_event().await?;
            if stream.waiting.is_some() {
                let relay = stream.relay.clone();
                park(&relay, stream);
                return Some((event, None));
            }
            Some((event, Some(stream)))
        });
        let events = first
            .chain(rest)
            .map(|event| Ok::<_, std::convert::Infallible>(sse_event(&event)));
        Body::from_stream(events)
    }

    /// Whether the call's answer has been read (nothing more follows).
    pub(super) fn is_over(&self) -> bool {
        self.done
    }

    /// The next event for the client; `None` once the call is over.
    pub(super) async fn next_event(&mut self) -> Option<String> {
        loop {
            if self.done {
                return None;
            }
            if let Some(message) = self.first_line.take()
                && let Some(json) = self.line_message(message)
            {
                return Some(json);
            }
            let step = tokio::select! {
                _ = self.cancel.cancelled() => {
                    // Cancelled by the client: no answer follows.
                    self.done = true;
                    self.end();
                    return None;
                }
                Some(message) = next_line(&mut self.tracked) => match self.line_message(message) {
                    Some(json) => Step::Send(json),
                    None => Step::Skip,
                },
                reply = next_reply(&mut self.pending) => {
                    self.pending = None;
                    self.on_reply(reply)
                }
                _ = until(self.deadline) => self.timed_out().await,
                _ = tokio::time::sleep(self.timeout), if self.pending.is_some() => self.timed_out().await,
                next = tokio::time::timeout(self.timeout, self.events.next()), if self.pending.is_none() => {
                    match next {
                        Err(_) => self.timed_out().await,
                        Ok(None) | Ok(Some(Err(_))) if self.resume().await => Step::Skip,
                        Ok(None) | Ok(Some(Err(_))) => {
                            self.failed = Some(Outcome::Unavailable);
                            let text = format!("server {:?} closed the call's stream without answering", self.label);
                            Step::Last(failure(&self.method, &self.client_id, &text, self.client.revision))
                        }
                        Ok(Some(Ok(event))) => {
                            if event.id.is_some() {
                                self.last_event = event.id;
                            }
                            if let Some(retry) = event.retry {
                                self.retry = Some(Duration::from_millis(retry.min(10_000)));
                            }
                            match event.data {
                                Some(data) if !data.is_empty() => self.step(&data).await,
                                _ => Step::Skip,
                            }
                        }
                    }
                }
            };
            match step {
                Step::Skip => continue,
                Step::Send(json) | Step::Park(json) => return Some(json),
                Step::Last(json) => {
                    let json = self.limit.apply(json);
                    self.done = true;
                    self.end();
                    if let Some(record) = self.record.take() {
                        record.finish(self.failed.take().unwrap_or_else(|| outcome_of_json(&json)));
                    }
                    if let Some((owner, server)) = &self.task_owner {
                        self.relay.tasks.note(owner, server, &json);
                    }
                    return Some(json);
                }
            }
        }
    }

    async fn step(&mut self, data: &str) -> Step {
        let Some(message) = Message::parse(data) else {
            return Step::Skip;
        };
        if message.is_response() {
            let ours = matches!(&message.id, Some(Value::String(id)) if *id == self.upstream_id);
            return match message::response_to_client(
                &message,
                &self.method,
                &self.client_id,
                (self.client.revision, &self.label),
            ) {
                Some(json) if ours => Step::Last(json),
                _ => Step::Skip,
            };
        }
        let Some(method) = message.method.as_deref() else {
            return Step::Skip;
        };
        if let Some(id) = &message.id {
            return self.ask_client(method, &message, id.clone()).await;
        }
        if let Some(kind) = ListKind::changed_by(method) {
            self.wire.list_changed(kind);
            return Step::Skip;
        }
        match method {
            "notifications/progress" => {
                let ours = message::progress_token(message.params) == self.upstream_token;
                match (&self.client_token, ours) {
                    (Some(token), true) => message::progress_to_client(message.params, token)
                        .map_or(Step::Skip, Step::Send),
                    _ => Step::Skip,
                }
            }
            "notifications/message" => {
                let level = message::log_level(message.params).map(severity);
                match (self.log_level, level) {
                    (Some(wanted), Some(level)) if level >= wanted => {
                        message::log_to_client(message.params, &self.label)
                            .map_or(Step::Skip, Step::Send)
                    }
                    _ => Step::Skip,
                }
            }
            // Names an upstream request id the client never saw.
            "notifications/cancelled" => Step::Skip,
            // Anything else the upstream tells the caller on its call's
            // stream (task status, later revisions' notifications) passes.
            _ => Step::Send(data.to_string()),
        }
    }

    /// No word from the upstream within the call's timeout, or no answer
    /// within `spec.limits.callTimeout`: it is cancelled. With a
    /// `callTimeout`, the wait for a word is that long too, so whichever of
    /// the two ran out (both can at once), the limit was `callTimeout`.
    async fn timed_out(&mut self) -> Step {
        self.failed = Some(Outcome::Timeout);
        cancel_upstream(&self.wire, &self.upstream_id, "timed out at the gateway").await;
        let (after, setting) = match self.deadline {
            Some((_, after)) => (after, "spec.limits.callTimeout"),
            None => (self.timeout, "spec.timeout"),
        };
        let text = format!(
            "server {:?} did not answer within {}s ({setting})",
            self.label,
            after.as_secs()
        );
        Step::Last(failure(
            &self.method,
            &self.client_id,
            &text,
            self.client.revision,
        ))
    }

    /// The upstream's reply came in after it had asked something.
    fn on_reply(&mut self, reply: Result<WireReply, WireError>) -> Step {
        match reply {
            Ok(WireReply::Events(events)) => {
                self.events = events;
                Step::Skip
            }
            Ok(WireReply::Json(bytes)) => {
                let answer = std::str::from_utf8(&bytes).ok().and_then(Message::parse);
                let json = answer.and_then(|answer| {
                    message::response_to_client(
                        &answer,
                        &self.method,
                        &self.client_id,
                        (self.client.revision, &self.label),
                    )
                });
                match json {
                    Some(json) => Step::Last(json),
                    None => {
                        self.failed = Some(Outcome::Unavailable);
                        let text = format!(
                            "server {:?} sent an answer that is not JSON-RPC",
                            self.label
                        );
                        Step::Last(failure(
                            &self.method,
                            &self.client_id,
                            &text,
                            self.client.revision,
                        ))
                    }
                }
            }
            Err(error) => {
                self.failed = Some(Outcome::Unavailable);
                let text = format!("server {:?} failed the request: {error}", self.label);
                Step::Last(failure(
                    &self.method,
                    &self.client_id,
                    &text,
                    self.client.revision,
                ))
            }
        }
    }

    /// A message the upstream sent this call's client outside the call's
    /// stream (a request is answered through the relay's waiting list).
    /// `None` when it is a request the client cannot be asked (it is
    /// refused to the upstream instead).
    fn line_message(&mut self, line: LineMessage) -> Option<String> {
        let LineMessage {
            mut message,
            answer,
        } = line;
        message["jsonrpc"] = "2.0".into();
        if let Some(answer) = answer {
            let method = message["method"].as_str().unwrap_or_default();
            if let Some(missing) = self.client.offers.and_then(|o| o.missing_for(method)) {
                let _ = answer.send(Err(ClientOffers::refusal(missing)));
                return None;
            }
            let id = self.relay.ask_id();
            self.asks.push(id.clone());
            self.relay.remember_ask(
                id.clone(),
                Asked {
                    reply: Reply::Waiting(answer),
                    session: self.client.session.clone(),
                },
            );
            message["id"] = id.into();
        }
        Some(message.to_string())
    }

    /// The upstream closed the call's stream before answering: pick it up
    /// again from the last event it numbered, as the transport allows.
    async fn resume(&mut self) -> bool {
        let Some(last) = self.last_event.clone() else {
            return false;
        };
        if self.resumed >= MAX_RESUMES {
            return false;
        }
        self.resumed += 1;
        tokio::time::sleep(self.retry.unwrap_or(Duration::from_secs(1))).await;
        match self.wire.resume(&last).await {
            Ok(WireReply::Events(events)) => {
                self.events = events;
                true
            }
            Ok(WireReply::Json(_)) | Err(_) => false,
        }
    }

    /// The call is over: nothing of it stays registered, and its
    /// concurrency slot is free.
    fn end(&mut self) {
        self._slot = None;
        self.relay.finish(&self.key);
        self.relay.forget_asks(&self.asks);
    }

    /// The upstream asks the user something mid-call.
    async fn ask_client(
        &mut self,
        method: &str,
        message: &Message<'_>,
        upstream_id: Value,
    ) -> Step {
        if method == "ping" {
            let pong = format!(r#"{{"jsonrpc":"2.0","id":{upstream_id},"result":{{}}}}"#);
            let _ = self.wire.deliver(Bytes::from(pong)).await;
            return Step::Skip;
        }
        if let Some(missing) = self.client.offers.and_then(|o| o.missing_for(method)) {
            let refusal = message::refuse_upstream(&upstream_id, &ClientOffers::refusal(missing));
            let _ = self.wire.deliver(Bytes::from(refusal)).await;
            return Step::Skip;
        }
        if self.client.revision == ClientRevision::Stateless {
            return self.ask_for_input(method, message, upstream_id).await;
        }
        let id = self.relay.ask_id();
        let Some(json) = message::request_to_client(method, message.params, &id, &self.label)
        else {
            return Step::Skip;
        };
        self.asks.push(id.clone());
        self.relay.remember_ask(
            id,
            Asked {
                reply: Reply::Upstream {
                    wire: self.wire.clone(),
                    upstream_id,
                },
                session: self.client.session.clone(),
            },
        );
        Step::Send(json)
    }
}

impl Stream {
    /// Asks a 2026-07-28 client the 2026 way: the call ends with an
    /// `input_required` result and is parked until the client retries.
    async fn ask_for_input(
        &mut self,
        method: &str,
        message: &Message<'_>,
        upstream_id: Value,
    ) -> Step {
        let Some(entry) = message::input_request(method, message.params, &self.label) else {
            return Step::Skip;
        };
        if !self.relay.parked.has_room() {
            let text = format!(
                "{MAX_WAITING} calls already wait for their clients' input at the gateway; try again later"
            );
            let refusal = message::refuse_upstream(&upstream_id, &text);
            let _ = self.wire.deliver(Bytes::from(refusal)).await;
            return Step::Skip;
        }
        let mut waiting = Waiting::new(self.relay.parked.new_state());
        let key = self.relay.next_id("input-");
        let json = message::input_required_to_client(
            &self.client_id,
            &[(key.clone(), entry)],
            &waiting.handle,
        );
        waiting.asks.push((key, upstream_id));
        tracing::debug!(server = %self.label, method, wait_secs = WAIT.as_secs(), "relay: asking a 2026-07-28 client for input");
        self.waiting = Some(waiting);
        Step::Park(json)
    }
}

/// `spec.limits.maxOutputBytes` for one relayed call: the only case where
/// the relay decodes a result and writes it anew (see `gateway::revision`).
pub(super) struct OutputLimit {
    pub server: Arc<str>,
    /// Set for a `tools/call` to a server with the limit.
    pub max_bytes: Option<usize>,
}

impl OutputLimit {
    /// `response` (to the client, as text), cut to the limit when it is
    /// over it; otherwise the same bytes.
    pub fn apply(&self, response: String) -> String {
        match self.max_bytes {
            Some(max) => limit_response_text(response, max, &self.server),
            None => response,
        }
    }
}

/// Until `deadline`, or forever without one.
pub(super) async fn until(deadline: Option<(tokio::time::Instant, Duration)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next message for the client from outside the call's stream.
async fn next_line(tracked: &mut Option<RelayedCall>) -> Option<LineMessage> {
    match tracked {
        Some(call) => call.messages.recv().await,
        None => std::future::pending().await,
    }
}

/// The upstream's reply, once it comes.
async fn next_reply(pending: &mut Option<Pending>) -> Result<WireReply, WireError> {
    match pending {
        Some(reply) => reply.await,
        None => std::future::pending().await,
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away mid-call: the upstream stops working on it.
        self.end();
        let (wire, id) = (self.wire.clone(), self.upstream_id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { cancel_upstream(&wire, &id, "the client went away").await });
        }
    }
}

/// A call's open questions to its client: `(key in inputRequests, the
/// upstream's request id)`, and the state it is parked under.
pub(super) struct Waiting {
    pub handle: String,
    pub asks: Vec<(String, Value)>,
}

impl Waiting {
    pub fn new(handle: String) -> Self {
        Self {
            handle,
            asks: Vec::new(),
        }
    }
}

/// Parks `stream`, which has just sent its client `input_required`; a
/// stream the table cannot take is dropped, which cancels its upstream
/// request.
pub(super) fn park(relay: &Relay, stream: Stream) {
    let Some(state) = stream.waiting.as_ref().map(|w| w.handle.clone()) else {
        return;
    };
    let (caller, method) = (stream.caller.clone(), stream.method.clone());
    if relay.parked.park(state, stream, caller, &method).is_err() {
        tracing::warn!("relay: no room to park a call waiting for input; it is cancelled");
    }
}
