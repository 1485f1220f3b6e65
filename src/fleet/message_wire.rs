//! The relay's wire on a transport that carries whole JSON-RPC messages one
//! at a time (a stdio server's lines, a legacy SSE session, an agent's
//! tunnel), where there is no request of its own to post a relayed message
//! on. rmcp's session and the relay share the one transport: [`Muxed`] is
//! rmcp's transport, the relay's messages go out beside rmcp's as the text
//! the gateway composed, and what the server sends for a relayed request is
//! taken out, as the text the server wrote, before rmcp decodes anything:
//!
//! - the answer to a relayed request (its id is the relay's, a string; rmcp's
//!   own ids are numbers);
//! - progress under a relayed request's progress token;
//! - a log message or a request to the user (these transports tie neither to
//!   a request) while a relayed call is the only call in flight on the
//!   session: the rule rmcp's path applies on an HTTP session's standalone
//!   stream (`client_handler::call_of`).
//!
//! Everything else reaches rmcp as before. A relayed request's messages
//! arrive in the order the server wrote them, the answer last. Each relayed
//! request holds at most [`BACKLOG`] unread messages; a full backlog holds up
//! the transport, as the pipe itself would, rather than lose a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::Stream;
use futures::future::BoxFuture;
use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::Value;
use tokio::sync::mpsc;

use super::client_handler::{ClientLine, InflightCalls};

/// Unread messages one relayed request may have waiting.
const BACKLOG: usize = 256;

/// The sending half of a message transport, shared by rmcp and the relay.
pub trait Outbox: Send + Sync + 'static {
    /// Sends one whole message.
    fn send(&self, text: String) -> BoxFuture<'static, std::io::Result<()>>;
}

/// The receiving half of a message transport.
pub trait Inbox: Send + 'static {
    /// The next message the server sent, as its text; `None` once the
    /// session ended. Cancel-safe: rmcp polls it inside a `select!`.
    fn next(&mut self) -> impl Future<Output = Option<String>> + Send;

    /// Ends the session (rmcp's `close`).
    fn close(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// One relayed request waiting for its answer.
struct Route {
    messages: mpsc::Sender<String>,
    token: Option<String>,
}

#[derive(Default)]
struct Table {
    /// The session is over: nothing more will be answered.
    ended: bool,
    by_id: HashMap<String, Route>,
    /// Progress token -> the id of the request that carries it.
    by_token: HashMap<String, String>,
}

/// Which incoming messages belong to relayed requests.
pub struct Routes {
    table: Mutex<Table>,
    /// The session's calls in flight through rmcp's path too: a message tied
    /// to no request goes to a relayed call only when nothing else runs.
    inflight: InflightCalls,
}

impl Routes {
    pub fn new(inflight: InflightCalls) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            inflight,
        })
    }

    /// Where the messages for request `id` will arrive; `None` once the
    /// session is over.
    fn open(&self, id: &str, token: Option<String>) -> Option<mpsc::Receiver<String>> {
        let (messages, receiver) = mpsc::channel(BACKLOG);
        let mut table = self.table.lock().ok()?;
        if table.ended {
            return None;
        }
        if let Some(token) = &token {
            table.by_token.insert(token.clone(), id.to_string());
        }
        table
            .by_id
            .insert(id.to_string(), Route { messages, token });
        Some(receiver)
    }

    fn close(&self, id: &str) {
        if let Ok(mut table) = self.table.lock()
            && let Some(route) = table.by_id.remove(id)
            && let Some(token) = route.token
        {
            table.by_token.remove(&token);
        }
    }

    /// The session ended: every relayed request waiting on it ends too.
    fn end(&self) {
        if let Ok(mut table) = self.table.lock() {
            *table = Table {
                ended: true,
                ..Table::default()
            };
        }
    }

    /// The relayed request `text` belongs to, if any (an answer ends its route).
    fn claim(&self, text: &str) -> Option<mpsc::Sender<String>> {
        let mut table = self.table.lock().ok()?;
        if table.by_id.is_empty() {
            return None;
        }
        let message: Value = serde_json::from_str(text).ok()?;
        let method = message.get("method").and_then(Value::as_str);
        let id = message.get("id");
        match method {
            None => {
                let id = id?.as_str()?;
                let route = table.by_id.remove(id)?;
                if let Some(token) = &route.token {
                    table.by_token.remove(token);
                }
                Some(route.messages)
            }
            Some("notifications/progress") => {
                let token = message.pointer("/params/progressToken")?.as_str()?;
                let id = table.by_token.get(token)?;
                table.by_id.get(id).map(|route| route.messages.clone())
            }
            Some(method) if id.is_some() || method == "notifications/message" => {
                if table.by_id.len() != 1 || !self.only_relayed_in_flight() {
                    return None;
                }
                table.by_id.values().next().map(|r| r.messages.clone())
            }
            Some(_) => None,
        }
    }

    fn only_relayed_in_flight(&self) -> bool {
        self.inflight.lock().is_ok_and(|calls| {
            calls
                .values()
                .all(|call| matches!(call.client, ClientLine::Relayed(_)))
        })
    }
}

/// The relay's side of a message transport.
#[derive(Clone)]
pub struct MessageLine {
    pub(super) outbox: Arc<dyn Outbox>,
    pub(super) routes: Arc<Routes>,
}

impl MessageLine {
    /// Sends a relayed request (`id` the relay's, `token` its progress token)
    /// and returns what the server sends for it, the answer last.
    pub(super) async fn post(
        &self,
        text: String,
        id: &str,
        token: Option<String>,
    ) -> std::io::Result<Replies> {
        let messages = self.routes.open(id, token).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "the session is over")
        })?;
        let replies = Replies {
            messages,
            id: id.to_string(),
            routes: self.routes.clone(),
        };
        self.outbox.send(text).await?;
        Ok(replies)
    }

    /// Sends a notification or a response.
    pub(super) async fn deliver(&self, text: String) -> std::io::Result<()> {
        self.outbox.send(text).await
    }
}

/// What the server sends for one relayed request; dropping it forgets the
/// request (a cancelled call whose answer never comes leaves nothing behind).
pub struct Replies {
    messages: mpsc::Receiver<String>,
    id: String,
    routes: Arc<Routes>,
}

impl Stream for Replies {
    type Item = String;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.routes.close(&self.id);
    }
}

/// rmcp's transport over a message transport it shares with the relay.
pub struct Muxed<I> {
    inbox: I,
    outbox: Arc<dyn Outbox>,
    routes: Arc<Routes>,
    /// A relayed request's message waiting for room in its backlog.
    held: Option<(mpsc::Sender<String>, String)>,
}

impl<I: Inbox> Muxed<I> {
    pub fn new(inbox: I, outbox: Arc<dyn Outbox>, routes: Arc<Routes>) -> Self {
        Self {
            inbox,
            outbox,
            routes,
            held: None,
        }
    }

    /// The relay's side of this transport.
    pub fn line(&self) -> MessageLine {
        MessageLine {
            outbox: self.outbox.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Passes on a held message once its backlog has room (or its reader is
    /// gone). The message stays held if this is cancelled.
    async fn release_held(&mut self) {
        let Some((messages, _)) = &self.held else {
            return;
        };
        let messages = messages.clone();
        let permit = messages.reserve().await;
        if let (Some((_, text)), Ok(permit)) = (self.held.take(), permit) {
            permit.send(text);
        }
    }
}

impl<I> Drop for Muxed<I> {
    fn drop(&mut self) {
        self.routes.end();
    }
}

impl<I: Inbox> Transport<RoleClient> for Muxed<I> {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let outbox = self.outbox.clone();
        let text = serde_json::to_string(&item);
        async move { outbox.send(text.map_err(std::io::Error::other)?).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            self.release_held().await;
            let Some(text) = self.inbox.next().await else {
                self.routes.end();
                return None;
            };
            if let Some(messages) = self.routes.claim(&text) {
                if let Err(mpsc::error::TrySendError::Full(text)) = messages.try_send(text) {
                    self.held = Some((messages, text));
                }
                continue;
            }
            match serde_json::from_str(&text) {
                Ok(message) => return Some(message),
                Err(error) => tracing::debug!(%error, "skipping a message that is not JSON-RPC"),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inbox.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// An outbox that keeps what was sent.
    #[derive(Default)]
    struct Kept(Arc<Mutex<Vec<String>>>);

    impl Outbox for Kept {
        fn send(&self, text: String) -> BoxFuture<'static, std::io::Result<()>> {
            if let Ok(mut sent) = self.0.lock() {
                sent.push(text);
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn line() -> MessageLine {
        MessageLine {
            outbox: Arc::new(Kept::default()),
            routes: Routes::new(InflightCalls::default()),
        }
    }

    fn claimed(line: &MessageLine, text: &str) -> bool {
        line.routes
            .claim(text)
            .is_some_and(|route| route.try_send(text.to_string()).is_ok())
    }

    #[tokio::test]
    async fn a_relayed_request_gets_its_progress_and_answer_as_written_and_rmcp_keeps_its_own() {
        let line = line();
        let mut replies = line
            .post(
                "{}".into(),
                "flotilla-7",
                Some("flotilla-progress-7".into()),
            )
            .await
            .expect("sent");
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"flotilla-progress-7","progress":1}}"#;
        let other = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":3,"progress":1}}"#;
        let rmcps = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        let answer = r#"{"jsonrpc":"2.0","id":"flotilla-7","result":{"n":0.7}}"#;
        assert!(claimed(&line, progress));
        assert!(!claimed(&line, other), "rmcp's own progress");
        assert!(!claimed(&line, rmcps), "rmcp's own answer (a number id)");
        assert!(claimed(&line, answer));
        assert!(
            !claimed(&line, answer),
            "an answer ends its request's route"
        );
        let got: Vec<String> = replies.by_ref().collect().await;
        assert_eq!(got, [progress, answer], "in order, unchanged, then the end");
    }

    #[tokio::test]
    async fn a_message_tied_to_no_request_goes_to_a_relayed_call_only_when_it_is_alone() {
        let line = line();
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        let ask = r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{"temperature":0.7}}"#;
        let changed = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        assert!(!claimed(&line, log), "no relayed call: rmcp's");
        let first = line.post("{}".into(), "a", None).await.expect("sent");
        assert!(claimed(&line, log));
        assert!(claimed(&line, ask));
        assert!(!claimed(&line, changed), "list changes are the session's");
        let second = line.post("{}".into(), "b", None).await.expect("sent");
        assert!(!claimed(&line, log), "two relayed calls: whose is unknown");
        drop(second);
        assert!(claimed(&line, log), "dropping a request forgets it");
        drop(first);
        assert!(line.routes.table.lock().expect("table").by_id.is_empty());
    }

    #[tokio::test]
    async fn once_the_session_ends_waiting_requests_end_and_new_ones_are_refused() {
        let line = line();
        let waiting = line.post("{}".into(), "a", None).await.expect("sent");
        line.routes.end();
        assert_eq!(waiting.collect::<Vec<_>>().await.len(), 0);
        let refused = line.post("{}".into(), "b", None).await;
        assert!(refused.is_err());
    }
}
