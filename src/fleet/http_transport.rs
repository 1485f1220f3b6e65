//! rmcp's transport to a Streamable HTTP server, written on the relay's own
//! line (`wire::HttpLine`: the session's id, revision, headers and the
//! user's credential, on the fleet's pooled connections) instead of rmcp's
//! client transport, whose worker task and its four channels of rmcp's
//! message type cost about 70 KB per idle upstream.
//!
//! Each message rmcp sends is POSTed as a request of its own. What comes
//! back (JSON, or an SSE stream, resumed from its last event when it ends
//! before the answer) is read by that send, which rmcp runs as a task of its
//! own, into a small queue of texts that `receive` decodes. The session's
//! standalone GET stream is read by `receive` too, reopened after the
//! server's `retry` when it ends. A session the server no longer knows
//! (404; 400 or an id-less error that mentions the session, as some SDKs
//! answer) is opened again with the handshake rmcp first sent, and the
//! message sent once more; `close` ends the session with `DELETE`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{StatusCode, header};
use rmcp::RoleClient;
use rmcp::model::{ClientNotification, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Deserialize;
use serde_json::Value;
use sse_stream::Sse;
use tokio::sync::{mpsc, oneshot, watch};

use super::wire::{HttpLine, WireError};
use super::{lifecycle, sse_events};

/// Messages read but not yet taken by rmcp.
const QUEUE: usize = 64;
/// The largest JSON answer read (rmcp's own bound on a message).
const MAX_ANSWER: usize = 16 << 20;
/// Resumptions of one POST's stream that ended before its answer.
const MAX_RESUMES: usize = 3;
/// The wait before reopening the standalone stream when the server gave no
/// `retry`, and the longest `retry` honoured.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
const MAX_REOPEN_AFTER: Duration = Duration::from_secs(30);

/// What a failed send tells rmcp.
type Failure = std::io::Error;

/// The part of a message the transport looks at.
#[derive(Deserialize)]
struct Peek {
    id: Option<Value>,
    method: Option<String>,
    result: Option<PeekResult>,
    error: Option<PeekError>,
}

#[derive(Deserialize)]
struct PeekResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: Option<String>,
}

#[derive(Deserialize)]
struct PeekError {
    message: Option<String>,
}

fn peek(text: &str) -> Option<Peek> {
    serde_json::from_str(text).ok()
}

/// What the sends and `receive` share.
struct Shared {
    line: HttpLine,
    /// The revision `initialize` settled on, sent as `MCP-Protocol-Version`.
    protocol: std::sync::Mutex<Option<Arc<str>>>,
    /// `initialize` and `notifications/initialized` as rmcp first sent them.
    handshake: std::sync::Mutex<(Option<String>, Option<String>)>,
    /// Counts sessions opened (a handshake completed); the standalone
    /// stream follows it.
    sessions: watch::Sender<u64>,
    /// One re-initialization at a time.
    reopening: tokio::sync::Mutex<()>,
    queue: mpsc::Sender<String>,
    /// Set: the next `close` parks the session instead of ending it, and
    /// sends what it reads from here.
    park_on_close: std::sync::Mutex<Option<oneshot::Sender<Parked>>>,
    /// Transports resumed on this session (each one's id base).
    resumed: AtomicI64,
}

/// What the transport reads from: answers to its sends, and the session's
/// standalone stream. Kept while the session is parked; read by whoever
/// holds it then ([`Parked::next`]).
pub struct Parked {
    queue: mpsc::Receiver<String>,
    standalone: BoxStream<'static, String>,
}

impl Parked {
    /// The next message the server sends on the parked session (one
    /// message wakes it); `None` once nothing more can come.
    pub async fn next(&mut self) -> Option<String> {
        tokio::select! {
            text = self.queue.recv() => text,
            Some(text) = self.standalone.next() => Some(text),
        }
    }
}

/// rmcp's transport to one Streamable HTTP server.
pub struct HttpTransport {
    shared: Arc<Shared>,
    /// `None` once `close` parked them.
    inbound: Option<Parked>,
    /// A message read while the session was parked, received first.
    first: Option<String>,
    /// Added to the ids of rmcp's requests (0 for the first transport).
    id_base: i64,
}

impl HttpTransport {
    pub(super) fn new(line: HttpLine) -> Self {
        let (queue_in, queue) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            line,
            protocol: std::sync::Mutex::default(),
            handshake: std::sync::Mutex::default(),
            sessions: watch::Sender::new(0),
            reopening: tokio::sync::Mutex::new(()),
            queue: queue_in,
            park_on_close: std::sync::Mutex::new(None),
            resumed: AtomicI64::new(0),
        });
        let standalone = standalone_stream(shared.clone());
        Self {
            shared,
            inbound: Some(Parked { queue, standalone }),
            first: None,
            id_base: 0,
        }
    }

    /// The handle that parks and resumes this transport's session.
    pub(super) fn dock(&self) -> Dock {
        Dock(self.shared.clone())
    }
}

/// Parks a session's transport and builds the next one on the same session.
#[derive(Clone)]
pub struct Dock(Arc<Shared>);

impl Dock {
    /// The next `close` of the transport keeps the session (no `DELETE`)
    /// and sends what it reads from (`None` when it cannot be parked).
    pub fn park_on_close(&self) -> Option<oneshot::Receiver<Parked>> {
        let (sender, receiver) = oneshot::channel();
        *self.0.park_on_close.lock().ok()? = Some(sender);
        Some(receiver)
    }

    /// Undoes [`Dock::park_on_close`] (the transport did not close in time).
    pub fn keep_on_close(&self) {
        if let Ok(mut slot) = self.0.park_on_close.lock() {
            *slot = None;
        }
    }

    /// Ends the parked session (`DELETE`).
    pub async fn end_session(&self) {
        self.0.delete_session().await;
    }

    /// A transport on the parked session, receiving `first` (a message read
    /// while parked) before anything else.
    pub fn resume(&self, parked: Parked, first: Option<String>) -> HttpTransport {
        let resumed = self.0.resumed.fetch_add(1, Ordering::Relaxed) + 1;
        HttpTransport {
            shared: self.0.clone(),
            inbound: Some(parked),
            first,
            // rmcp's ids are u32: each transport's ids stay apart from the others'.
            id_base: resumed << 32,
        }
    }
}

/// Moves the ids of rmcp's requests (and the id a cancellation names) by `base`.
fn shift_sent_ids(item: &mut TxJsonRpcMessage<RoleClient>, base: i64) {
    let id = match item {
        JsonRpcMessage::Request(request) => Some(&mut request.id),
        JsonRpcMessage::Notification(notification) => match &mut notification.notification {
            ClientNotification::CancelledNotification(cancelled) => {
                cancelled.params.request_id.as_mut()
            }
            _ => None,
        },
        _ => None,
    };
    if let Some(RequestId::Number(n)) = id {
        *n = n.saturating_add(base);
    }
}

/// Takes `base` off the id of an answer to one of rmcp's requests.
fn unshift_received_id(message: &mut RxJsonRpcMessage<RoleClient>, base: i64) {
    let id = match message {
        JsonRpcMessage::Response(response) => Some(&mut response.id),
        JsonRpcMessage::Error(error) => error.id.as_mut(),
        _ => None,
    };
    if let Some(RequestId::Number(n)) = id
        && *n >= base
    {
        *n -= base;
    }
}

impl Transport<RoleClient> for HttpTransport {
    type Error = Failure;

    fn send(
        &mut self,
        mut item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        if self.id_base != 0 {
            shift_sent_ids(&mut item, self.id_base);
        }
        let shared = self.shared.clone();
        let text = serde_json::to_string(&item);
        async move { shared.send(text.map_err(Failure::other)?).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let text = match self.first.take() {
                Some(text) => text,
                None => self.inbound.as_mut()?.next().await?,
            };
            match serde_json::from_str(&text) {
                Ok(mut message) => {
                    if self.id_base != 0 {
                        unshift_received_id(&mut message, self.id_base);
                    }
                    return Some(message);
                }
                Err(error) => tracing::debug!(%error, "skipping a message that is not JSON-RPC"),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        let parking = self
            .shared
            .park_on_close
            .lock()
            .ok()
            .and_then(|mut p| p.take());
        if let (Some(parking), Some(inbound)) = (parking, self.inbound.take()) {
            // Dropped when the parking gave up waiting: nothing is kept.
            let _ = parking.send(inbound);
            return Ok(());
        }
        self.shared.delete_session().await;
        Ok(())
    }
}

/// How one POST went.
enum Posted {
    Done,
    /// The server no longer knows the session the message was sent on.
    SessionGone,
}

impl Shared {
    fn session(&self) -> Option<Arc<str>> {
        self.line.session.lock().ok()?.clone()
    }

    fn protocol(&self) -> Option<Arc<str>> {
        self.protocol.lock().ok()?.clone()
    }

    async fn send(&self, text: String) -> Result<(), Failure> {
        let method = peek(&text).and_then(|p| p.method);
        let generation = *self.sessions.borrow();
        match method.as_deref() {
            Some("initialize") => {
                if let Ok(mut handshake) = self.handshake.lock() {
                    *handshake = (Some(text.clone()), None);
                }
                if let Ok(mut session) = self.line.session.lock() {
                    *session = None;
                }
            }
            Some("notifications/initialized") => {
                if let Ok(mut handshake) = self.handshake.lock() {
                    handshake.1 = Some(text.clone());
                }
            }
            _ => {}
        }
        match self.post(&text, true).await? {
            Posted::Done => {}
            Posted::SessionGone => {
                self.reinitialize(generation).await?;
                if let Posted::SessionGone = self.post(&text, true).await? {
                    return Err(Failure::other(
                        "the server refused the session it just opened",
                    ));
                }
            }
        }
        if method.as_deref() == Some("notifications/initialized") {
            self.sessions.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// POSTs `text` and queues what comes back for rmcp (`deliver`: false
    /// reads the answer to a re-sent handshake and drops it).
    async fn post(&self, text: &str, deliver: bool) -> Result<Posted, Failure> {
        let peeked = peek(text);
        let is_initialize = peeked.as_ref().and_then(|p| p.method.as_deref()) == Some("initialize");
        let request_id = peeked
            .as_ref()
            .and_then(|p| p.method.as_ref().and(p.id.clone()));
        let had_session = self.session().is_some();
        let protocol = self.protocol().filter(|_| !is_initialize);
        // Without a handshake (rmcp's `server/discover` lifecycle) every
        // request is a 2026-07-28 one: it names its revision and itself in
        // headers too.
        let stateless = self.handshake.lock().is_ok_and(|h| h.0.is_none());
        let routing = if stateless {
            lifecycle::routing_headers(text.as_bytes())
        } else {
            Vec::new()
        };
        let protocol = if stateless {
            Some(Arc::from(lifecycle::REVISION))
        } else {
            protocol
        };
        let body = Bytes::from(text.to_string());
        let response = self
            .line
            .send(protocol.as_deref(), Some(body), None, (None, &routing))
            .await
            .map_err(wire_failure)?;
        let status = response.status();
        if is_initialize
            && let Some(id) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            && let Ok(mut session) = self.line.session.lock()
        {
            *session = Some(id.into());
        }
        if status == StatusCode::ACCEPTED {
            return Ok(Posted::Done);
        }
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_sse {
            let events = sse_events::events(response.bytes_stream());
            return self
                .read_events(events, request_id, protocol.as_deref(), deliver)
                .await
                .map(|()| Posted::Done);
        }
        let body = bounded_text(response).await?;
        let body = body.trim();
        if had_session && session_gone(status, body) {
            return Ok(Posted::SessionGone);
        }
        // A JSON-RPC answer (also an error status's: a server refusing the
        // handshake says why in one) goes to rmcp; anything else fails the send.
        match peek(body) {
            Some(message)
                if message.method.is_some() || message.id.is_some() || message.error.is_some() =>
            {
                self.take(body.to_string(), deliver).await;
                Ok(Posted::Done)
            }
            _ if status.is_success() && body.is_empty() => Ok(Posted::Done),
            _ => Err(Failure::other(format!("HTTP {status}: {body}"))),
        }
    }

    /// Queues one message for rmcp; an `initialize` answer also settles the
    /// revision later requests declare.
    async fn take(&self, text: String, deliver: bool) {
        if text.contains("\"protocolVersion\"")
            && let Some(Peek {
                result:
                    Some(PeekResult {
                        protocol_version: Some(version),
                    }),
                ..
            }) = peek(&text)
            && let Ok(mut protocol) = self.protocol.lock()
        {
            *protocol = Some(version.into());
        }
        if deliver {
            let _ = self.queue.send(text).await;
        }
    }

    /// Reads a POST's SSE stream into the queue until it ends; one that ends
    /// before the answer to `request_id` is resumed from its last event.
    async fn read_events(
        &self,
        mut events: BoxStream<'static, Result<Sse, sse_stream::Error>>,
        request_id: Option<Value>,
        protocol: Option<&str>,
        deliver: bool,
    ) -> Result<(), Failure> {
        let mut last_event: Option<String> = None;
        let mut resumes = 0;
        loop {
            while let Some(Ok(event)) = events.next().await {
                if event.id.is_some() {
                    last_event = event.id;
                }
                let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                    continue;
                };
                let answers = request_id.is_some() && {
                    let peeked = peek(&data);
                    peeked
                        .as_ref()
                        .is_some_and(|p| p.method.is_none() && p.id == request_id)
                };
                self.take(data, deliver).await;
                if answers {
                    return Ok(());
                }
            }
            let (Some(_), Some(last)) = (&request_id, &last_event) else {
                return Ok(());
            };
            if resumes == MAX_RESUMES {
                return Err(Failure::other(
                    "the server's stream ended before it answered",
                ));
            }
            resumes += 1;
            let response = self
                .line
                .send(protocol, None, Some(last), (None, &[]))
                .await
                .map_err(wire_failure)?;
            if !response.status().is_success() {
                return Err(Failure::other(format!(
                    "resuming the server's stream failed: HTTP {}",
                    response.status()
                )));
            }
            events = sse_events::events(response.bytes_stream());
        }
    }

    /// Opens the session again with the handshake rmcp first sent (once for
    /// all sends that found it gone since session `generation`).
    async fn reinitialize(&self, generation: u64) -> Result<(), Failure> {
        let _one = self.reopening.lock().await;
        if *self.sessions.borrow() != generation {
            return Ok(());
        }
        let (initialize, initialized) =
            self.handshake.lock().map(|h| h.clone()).unwrap_or_default();
        let initialize = initialize.ok_or_else(|| Failure::other("no handshake to repeat"))?;
        tracing::debug!(url = %self.line.url, "the server forgot the session: opening it again");
        if let Ok(mut session) = self.line.session.lock() {
            *session = None;
        }
        self.post(&initialize, false).await?;
        if let Some(initialized) = initialized {
            self.post(&initialized, false).await?;
        }
        self.sessions.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn delete_session(&self) {
        let Some(session) = self.session() else {
            return;
        };
        let mut request = self
            .line
            .http
            .delete(self.line.url.clone())
            .headers(self.line.headers.clone())
            .header("mcp-session-id", &*session);
        if let Some(credential) = &self.line.credential
            && let Ok(token) = credential.bearer().await
        {
            request = request.bearer_auth(token.expose());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), request.send()).await;
    }
}

/// Whether an error answer to a request sent on a session says the server
/// no longer knows the session: 404, or (some SDKs) 400 or an id-less
/// JSON-RPC error that mentions it. An error with the request's own id is
/// the server's answer to that request.
fn session_gone(status: StatusCode, body: &str) -> bool {
    let mentions_session = |text: &str| text.to_ascii_lowercase().contains("session");
    match status {
        StatusCode::NOT_FOUND => true,
        StatusCode::BAD_REQUEST => mentions_session(body),
        _ => peek(body).is_some_and(|p| {
            p.id.is_none()
                && p.error
                    .and_then(|e| e.message)
                    .is_some_and(|m| mentions_session(&m))
        }),
    }
}

/// A JSON answer's text, refused past [`MAX_ANSWER`] bytes.
async fn bounded_text(response: reqwest::Response) -> Result<String, Failure> {
    let too_large = || {
        Failure::other(format!(
            "the server's answer is over {} MiB",
            MAX_ANSWER >> 20
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(Failure::other)?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn wire_failure(error: WireError) -> Failure {
    Failure::other(error.to_string())
}

/// The session's standalone stream, as texts: opened once a session is,
/// reopened (from its last event) after the server's `retry` when it ends,
/// and anew as soon as a new session is open (the old one's stream is
/// dropped). A server that refuses it (405, or another 4xx) is asked again
/// only for a new session.
fn standalone_stream(shared: Arc<Shared>) -> BoxStream<'static, String> {
    struct State {
        shared: Arc<Shared>,
        sessions: watch::Receiver<u64>,
        open: Option<BoxStream<'static, Result<Sse, sse_stream::Error>>>,
        last_event: Option<String>,
        retry: Duration,
        /// The session the stream (and `last_event`) belongs to.
        opened_for: u64,
        /// The session whose server refused a standalone stream.
        refused: Option<u64>,
    }
    impl State {
        /// Until `retry` has passed, or a new session is open.
        async fn pause(&mut self) {
            let _ = tokio::time::timeout(self.retry, self.sessions.changed()).await;
        }
    }
    let state = State {
        sessions: shared.sessions.subscribe(),
        shared,
        open: None,
        last_event: None,
        retry: REOPEN_AFTER,
        opened_for: 0,
        refused: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(events) = state.open.as_mut() {
                let event = tokio::select! {
                    event = events.next() => event,
                    // A new session (the server forgot this one, or another
                    // replica answered): its stream is read from now on, not
                    // one a server may keep open for a session it left.
                    changed = state.sessions.changed() => {
                        changed.ok()?;
                        state.open = None;
                        continue;
                    }
                };
                match event {
                    Some(Ok(event)) => {
                        if event.id.is_some() {
                            state.last_event = event.id;
                        }
                        if let Some(retry) = event.retry {
                            state.retry = Duration::from_millis(retry).min(MAX_REOPEN_AFTER);
                        }
                        match event.data {
                            Some(data) if !data.trim().is_empty() => return Some((data, state)),
                            _ => continue,
                        }
                    }
                    _ => {
                        state.open = None;
                        state.pause().await;
                    }
                }
                continue;
            }
            let current = *state.sessions.borrow_and_update();
            if current == 0 || state.refused == Some(current) {
                // No session yet, or no stream on this one: wait for a new one.
                state.sessions.changed().await.ok()?;
                continue;
            }
            if current != state.opened_for {
                state.last_event = None;
                state.opened_for = current;
            }
            let protocol = state.shared.protocol();
            let last_event = state.last_event.clone();
            let response = state
                .shared
                .line
                .send(
                    protocol.as_deref(),
                    None,
                    last_event.as_deref(),
                    (None, &[]),
                )
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    let events = sse_events::events(response.bytes_stream());
                    state.open = Some(events);
                }
                Ok(response) if response.status().is_client_error() => {
                    state.refused = Some(current);
                }
                _ => state.pause().await,
            }
        }
    })
    .fuse()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_transports_request_ids_never_repeat_an_earlier_ones_on_the_session() {
        let base = 1i64 << 32;
        let mut request: TxJsonRpcMessage<RoleClient> = serde_json::from_value(serde_json::json!(
            {"jsonrpc": "2.0", "id": 0, "method": "ping"}
        ))
        .unwrap();
        shift_sent_ids(&mut request, base);
        let sent = serde_json::to_value(&request).unwrap();
        assert_eq!(sent["id"], base, "{sent}");
        let mut cancel: TxJsonRpcMessage<RoleClient> = serde_json::from_value(serde_json::json!(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 0}}
        ))
        .unwrap();
        shift_sent_ids(&mut cancel, base);
        let sent = serde_json::to_value(&cancel).unwrap();
        assert_eq!(sent["params"]["requestId"], base, "{sent}");

        // The answer comes back under the shifted id; rmcp sees its own.
        let mut answer: RxJsonRpcMessage<RoleClient> = serde_json::from_value(serde_json::json!(
            {"jsonrpc": "2.0", "id": base, "result": {}}
        ))
        .unwrap();
        unshift_received_id(&mut answer, base);
        assert_eq!(serde_json::to_value(&answer).unwrap()["id"], 0);
        // A request of the server's keeps its id (rmcp answers under it).
        let mut asked: RxJsonRpcMessage<RoleClient> = serde_json::from_value(serde_json::json!(
            {"jsonrpc": "2.0", "id": 7, "method": "ping"}
        ))
        .unwrap();
        unshift_received_id(&mut asked, base);
        assert_eq!(serde_json::to_value(&asked).unwrap()["id"], 7);
    }

    #[test]
    fn only_a_404_or_an_answer_about_the_session_means_the_session_is_gone() {
        assert!(session_gone(StatusCode::NOT_FOUND, ""));
        assert!(session_gone(
            StatusCode::BAD_REQUEST,
            "Bad Request: No valid session ID provided"
        ));
        assert!(!session_gone(StatusCode::BAD_REQUEST, "invalid arguments"));
        let idless = r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Session not found"}}"#;
        assert!(session_gone(StatusCode::OK, idless));
        let answer =
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"session tool failed"}}"#;
        assert!(
            !session_gone(StatusCode::OK, answer),
            "the request's own answer"
        );
        assert!(!session_gone(StatusCode::INTERNAL_SERVER_ERROR, "boom"));
    }
}
