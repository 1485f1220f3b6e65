//! A Streamable HTTP server beside the agent, for a session the gateway
//! opens with `initialize` (the 2025 revisions): each message the gateway
//! sends is POSTed as the bytes it arrived as, and every message the server
//! answers with (a JSON body, a batch, or the events of an SSE stream) goes
//! back the same way, untouched. The server's own stream (GET) is opened just
//! before the client's `notifications/initialized` is passed on (so what the
//! server announces at once reaches it) and reopened when it drops; the session is
//! ended (DELETE) with the channel. A session the gateway opens statelessly
//! (`server/discover`, 2026-07-28) takes rmcp's client instead (`local.rs`),
//! which adds the headers that revision asks of every request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fleet::agents::frame::{Frame, MAX_FRAME};
use crate::fleet::error_chain;

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// How long ending the session (DELETE) may take.
const END_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `notifications/initialized` waits for the server's own stream to open.
const OPEN_WAIT: Duration = Duration::from_secs(2);
/// Between attempts to reopen the server's own stream.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// The members of a JSON-RPC message the session needs to read.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    result: Option<InitializeResult>,
}

#[derive(Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion", default)]
    protocol_version: Option<String>,
}

/// Whether `message` is the `initialize` request (the session is then carried raw).
pub fn is_initialize(message: &str) -> bool {
    serde_json::from_str::<Envelope>(message)
        .is_ok_and(|e| e.method.as_deref() == Some("initialize"))
}

/// Whether `message` is the client's `notifications/initialized`.
fn is_initialized(message: &str) -> bool {
    serde_json::from_str::<Envelope>(message)
        .is_ok_and(|e| e.method.as_deref() == Some("notifications/initialized"))
}

/// Where the server's messages go: one channel of the agent's connection.
#[derive(Clone)]
struct Up {
    channel: u64,
    out: mpsc::Sender<String>,
}

impl Up {
    async fn send(&self, message: String) {
        match Frame::message(self.channel, message) {
            Some(frame) => {
                let _ = self.out.send(frame.encode()).await;
            }
            None => tracing::warn!(
                channel = self.channel,
                "the server sent a message that is not JSON; dropped"
            ),
        }
    }

    /// Answers the request in `message` (if it is one) with an error, so the
    /// gateway is not left waiting for an answer that will not come.
    async fn fail(&self, message: &str, why: String) {
        let Ok(envelope) = serde_json::from_str::<Envelope>(message) else {
            return;
        };
        match (envelope.id, envelope.method) {
            (Some(id), Some(_)) => {
                let error = serde_json::json!({"code": -32603, "message": why});
                self.send(format!(
                    r#"{{"jsonrpc":"2.0","id":{},"error":{error}}}"#,
                    id.get()
                ))
                .await;
            }
            _ => {
                tracing::warn!(channel = self.channel, reason = %why, "a message to the server was not delivered")
            }
        }
    }
}

/// The session with the server, as the server named it.
struct Session {
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
    id: Mutex<Option<HeaderValue>>,
    protocol: Mutex<Option<HeaderValue>>,
    up: Up,
}

/// Carries one session until the gateway ends it, the connection drops
/// (`cancel`) or the server ends it; returns why the server's side ended it.
pub async fn run(
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
    (channel, out): (u64, mpsc::Sender<String>),
    first: String,
    mut from_gateway: mpsc::Receiver<String>,
    cancel: CancellationToken,
) -> Option<String> {
    let session = Arc::new(Session {
        http,
        url,
        headers,
        id: Mutex::default(),
        protocol: Mutex::default(),
        up: Up { channel, out },
    });
    // `initialize` first and alone: what follows carries the session it makes.
    if let Err(why) = session.post(first).await {
        return Some(why);
    }
    let mut posts = JoinSet::new();
    let mut listening = JoinSet::new();
    let why = loop {
        tokio::select! {
            _ = cancel.cancelled() => break None,
            message = from_gateway.recv() => match message {
                None => break None,
                Some(message) => {
                    if listening.is_empty() && is_initialized(&message) {
                        // The server's own stream first: what it announces as
                        // soon as it is initialized (a changed tool list) goes there.
                        let (opened, open) = tokio::sync::oneshot::channel();
                        listening.spawn(session.clone().listen(Some(opened)));
                        let _ = tokio::time::timeout(OPEN_WAIT, open).await;
                    }
                    posts.spawn(session.clone().post_owned(message));
                }
            },
            Some(done) = posts.join_next() => {
                if let Ok(Err(why)) = done {
                    break Some(why);
                }
            }
        }
    };
    posts.abort_all();
    listening.abort_all();
    session.end().await;
    why
}

impl Session {
    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &self.url)
            .headers(self.headers.clone());
        if let Some(id) = self.id.lock().ok().and_then(|id| id.clone()) {
            request = request.header(SESSION_ID, id);
        }
        if let Some(version) = self.protocol.lock().ok().and_then(|v| v.clone()) {
            request = request.header(PROTOCOL_VERSION, version);
        }
        request
    }

    async fn post_owned(self: Arc<Self>, message: String) -> Result<(), String> {
        self.post(message).await
    }

    /// POSTs one message and passes on what the server answers with. An
    /// error is the session's end (the server no longer knows it); anything
    /// else that goes wrong answers the message's request with an error.
    async fn post(&self, message: String) -> Result<(), String> {
        let sent = self
            .request(reqwest::Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(message.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                let why = format!("the server could not be reached: {}", error_chain(&error));
                self.up.fail(&message, why).await;
                return Ok(());
            }
        };
        let status = response.status();
        let had_session = self.id.lock().is_ok_and(|id| id.is_some());
        if status == reqwest::StatusCode::NOT_FOUND && had_session {
            return Err("the server ended the session (404)".into());
        }
        if !status.is_success() {
            let why = format!("the server answered HTTP {status}");
            self.up.fail(&message, why).await;
            return Ok(());
        }
        if !had_session
            && let Some(id) = response.headers().get(SESSION_ID)
            && let Ok(mut slot) = self.id.lock()
        {
            *slot = Some(id.clone());
        }
        self.pass_on(response, Some(&message)).await;
        Ok(())
    }

    /// The server's own stream, reopened when it drops (a 405: it has
    /// none); `opened` hears when the first attempt has its answer.
    async fn listen(self: Arc<Self>, mut opened: Option<tokio::sync::oneshot::Sender<()>>) {
        loop {
            let response = self
                .request(reqwest::Method::GET)
                .header(header::ACCEPT, "text/event-stream")
                .send()
                .await;
            if let Some(opened) = opened.take() {
                let _ = opened.send(());
            }
            match response {
                Ok(response) if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                    return;
                }
                Ok(response) if response.status().is_success() => {
                    self.pass_on(response, None).await;
                }
                Ok(_) | Err(_) => {}
            }
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    }

    /// Sends every message of a response up: a JSON body (one message or a
    /// batch) or the events of an SSE stream.
    async fn pass_on(&self, response: reqwest::Response, sent: Option<&str>) {
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streaming {
            let mut events = sse_stream::SseStream::from_bytes_stream(response.bytes_stream());
            while let Some(Ok(event)) = events.next().await {
                match event.data {
                    Some(data) if data.len() <= MAX_FRAME && !data.trim().is_empty() => {
                        self.note_protocol(&data, sent);
                        self.up.send(data).await;
                    }
                    _ => {}
                }
            }
            return;
        }
        let Some(body) = bounded_body(response).await else {
            if let Some(sent) = sent {
                let why = "the server's answer was too large or broke off".to_string();
                self.up.fail(sent, why).await;
            }
            return;
        };
        if body.trim_start().starts_with('[') {
            match serde_json::from_str::<Vec<Box<RawValue>>>(&body) {
                Ok(batch) => {
                    for message in batch {
                        self.up.send(message.get().to_string()).await;
                    }
                }
                Err(_) => tracing::warn!(
                    channel = self.up.channel,
                    "the server sent a batch that is not JSON; dropped"
                ),
            }
        } else if !body.trim().is_empty() {
            self.note_protocol(&body, sent);
            self.up.send(body).await;
        }
    }

    /// Keeps the protocol version the server chose, from its answer to `initialize`.
    fn note_protocol(&self, answer: &str, sent: Option<&str>) {
        if !sent.is_some_and(is_initialize) {
            return;
        }
        let version = serde_json::from_str::<Envelope>(answer)
            .ok()
            .and_then(|e| e.result)
            .and_then(|r| r.protocol_version)
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let (Some(version), Ok(mut slot)) = (version, self.protocol.lock()) {
            *slot = Some(version);
        }
    }

    /// Ends the session at the server (best effort).
    async fn end(&self) {
        if self.id.lock().is_ok_and(|id| id.is_some()) {
            let ending = self.request(reqwest::Method::DELETE).send();
            let _ = tokio::time::timeout(END_TIMEOUT, ending).await;
        }
    }
}

/// A response body as text, at most [`MAX_FRAME`] bytes.
async fn bounded_body(response: reqwest::Response) -> Option<String> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.ok()?;
        if body.len() + chunk.len() > MAX_FRAME {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).ok()
}

#[cfg(test)]
mod tests {
    use super::is_initialize;

    #[test]
    fn only_the_initialize_request_starts_a_raw_session() {
        assert!(is_initialize(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#
        ));
        assert!(!is_initialize(
            r#"{"jsonrpc":"2.0","id":0,"method":"server/discover","params":{}}"#
        ));
        assert!(!is_initialize("not json"));
    }
}
