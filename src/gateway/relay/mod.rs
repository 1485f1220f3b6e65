//! The relay: a request for one upstream (`tools/call`, `prompts/get`,
//! `resources/read`, `completion/complete`) is forwarded as JSON, not decoded into rmcp's model and
//! encoded again. The client's request goes
//! to the upstream's session on the fleet's pooled connections with only the
//! rewrites of `gateway::revision`; the upstream's answer comes back the
//! same way, as JSON or as an SSE stream whose progress, log messages and
//! requests to the user reach the client in the order the upstream sent
//! them, before the answer.
//!
//! Taken here: those requests for a catalog tool (a folded family tool when
//! it names one instance; not the gateway's own), prompt or resource whose
//! upstream has a session the relay can write on (Streamable HTTP, or the
//! one line of a stdio, legacy-SSE or agent server, shared with rmcp:
//! `fleet::message_wire`), from
//! a 2025 session client or a well-formed 2026-07-28 request. An upstream
//! spoken to in 2026-07-28 (Streamable HTTP, no session) is relayed for
//! 2026-07-28 requests only, each stamped with the gateway's lifecycle
//! `_meta` and routing headers (`fleet::lifecycle`). Everything
//! else, and any request the upstream never received (no connection, a
//! session it no longer knows), goes to rmcp's handler unchanged.
//!
//! Tasks (2025-11-25, and the 2026-07-28 extension): `tasks/get`,
//! `tasks/result`, `tasks/update` and `tasks/cancel` go to the upstream that
//! created the task, for the caller that created it (see `tasks`).
//!
//! A request an upstream sends to the user mid-call (elicitation, sampling,
//! roots) reaches a 2025 session client on the call's stream under an id of
//! the gateway's; the client's answer, POSTed back, is routed to the
//! upstream under the upstream's id. A 2026-07-28 client is asked with an
//! `input_required` result instead, the call parked until it retries with
//! its answers (see `input`).

mod answer;
mod call;
mod input;
mod message;
mod stream;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::ErrorCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::edge::MAX_BODY;
use super::replicas::Replicas;
use super::revision::ClientRevision;
use super::session::ClientSession;
use super::state::GatewayState;
use crate::api::UserIdentity;
use crate::fleet::ClientOffers;
use crate::fleet::wire::Wire;
use message::Message;

/// The revision a 2026-07-28 request declares (header and `_meta`).
const STATELESS: &str = "2026-07-28";
/// The revision of a session whose client sends no `MCP-Protocol-Version`.
const OLDEST_SESSION: &str = "2025-03-26";
/// How long rmcp's initialize answer may take to end (it is a few hundred bytes).
const INITIALIZE_READ: std::time::Duration = std::time::Duration::from_secs(10);
/// Prefix of the ids the gateway gives requests it relays to clients.
const ASK_PREFIX: &str = "flotilla-ask-";

/// The calling client, as far as the relay needs to know it.
#[derive(Clone, Debug)]
pub(crate) struct ClientSide {
    /// The gateway session id (2025 revisions); `None` for 2026-07-28.
    pub session: Option<String>,
    pub revision: ClientRevision,
    /// What the client declared it can be asked (its handshake's, or the
    /// request's `_meta`); `None` when unknown.
    pub offers: Option<ClientOffers>,
}

/// Where a client's answer to a relayed request goes.
enum Reply {
    /// Back to the upstream, on the wire, under the upstream's id (asked
    /// on the call's own stream).
    Upstream { wire: Arc<Wire>, upstream_id: Value },
    /// To rmcp's session with the upstream, which answers it (asked on the
    /// session's standalone stream).
    Waiting(oneshot::Sender<Result<Value, String>>),
}

/// An upstream request to the user, waiting for the client's answer.
struct Asked {
    reply: Reply,
    session: Option<String>,
}

/// A relayed call in flight (for the client's cancellation).
struct Running {
    wire: Arc<Wire>,
    upstream_id: String,
    cancel: CancellationToken,
}

/// The relay's shared state: what is waiting on clients and what runs.
pub struct Relay {
    pub(crate) state: Arc<GatewayState>,
    /// The other replicas: a client's answer to another replica's question goes there.
    replicas: Arc<Replicas>,
    asked: Mutex<HashMap<String, Asked>>,
    running: Mutex<HashMap<(String, String), Running>>,
    tasks: tasks::TaskOwners,
    parked: input::ParkedCalls,
    ids: AtomicU64,
}

impl Relay {
    pub fn new(state: Arc<GatewayState>, replicas: Arc<Replicas>) -> Arc<Self> {
        Arc::new(Self {
            state,
            replicas,
            asked: Mutex::default(),
            running: Mutex::default(),
            tasks: tasks::TaskOwners::default(),
            parked: input::parked_calls(),
            ids: AtomicU64::new(1),
        })
    }

    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    /// The id of a question put to a client, naming this replica.
    fn ask_id(&self) -> String {
        self.replicas.tag(self.next_id(ASK_PREFIX))
    }

    /// Who sends `message` with `headers`, when the relay may serve it.
    fn client_side(
        headers: &HeaderMap,
        session: Option<&ClientSession>,
        message: &Message<'_>,
    ) -> Option<ClientSide> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(session) = session {
            let revision = header("mcp-protocol-version").unwrap_or(OLDEST_SESSION);
            return (revision != STATELESS).then(|| ClientSide {
                session: Some(session.id.clone()),
                revision: ClientRevision::Session,
                offers: Some(session.offers),
            });
        }
        if header("mcp-session-id").is_some() {
            return None;
        }
        // A 2026-07-28 request must say so in its headers and its _meta, as
        // rmcp's handler checks; anything less is left to rmcp's errors.
        let declared = header("mcp-protocol-version") == Some(STATELESS)
            && header("mcp-method") == message.method.as_deref()
            && message::declares_stateless(message.params, header("mcp-name"));
        declared.then(|| ClientSide {
            session: None,
            revision: ClientRevision::Stateless,
            offers: message::client_offers(message.params),
        })
    }

    fn remember_ask(&self, id: String, asked: Asked) {
        if let Ok(mut map) = self.asked.lock() {
            map.insert(id, asked);
        }
    }

    fn forget_asks(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        if let Ok(mut map) = self.asked.lock() {
            for id in ids {
                map.remove(id);
            }
        }
    }

    /// The client answered a request the relay put to it.
    async fn answer(&self, client: &ClientSide, message: &Message<'_>) -> bool {
        let Some(Value::String(id)) = &message.id else {
            return false;
        };
        let asked = match self.asked.lock() {
            Ok(mut map) => match map.get(id) {
                Some(asked) if asked.session == client.session => map.remove(id),
                _ => None,
            },
            Err(_) => None,
        };
        let Some(asked) = asked else {
            return false;
        };
        match asked.reply {
            Reply::Upstream { wire, upstream_id } => {
                if let Some(body) = message::answer_upstream(message, &upstream_id)
                    && let Err(error) = wire.deliver(Bytes::from(body)).await
                {
                    tracing::warn!(%error, "relaying a client's answer to its upstream failed");
                }
            }
            Reply::Waiting(answer) => {
                let outcome = match (message.result, message.error) {
                    (Some(result), _) => {
                        serde_json::from_str(result.get()).map_err(|e| e.to_string())
                    }
                    (None, Some(error)) => Err(format!("the client refused: {}", error.get())),
                    (None, None) => Err("the client sent no result".into()),
                };
                let _ = answer.send(outcome);
            }
        }
        true
    }

    fn start(&self, key: (String, String), running: Running) {
        if let Ok(mut map) = self.running.lock() {
            map.insert(key, running);
        }
    }

    fn finish(&self, key: &(String, String)) {
        if let Ok(mut map) = self.running.lock() {
            map.remove(key);
        }
    }

    /// The client cancelled a relayed call of its session: tell its upstream.
    async fn cancel(&self, client: &ClientSide, message: &Message<'_>) -> bool {
        let (Some(session), Some(request)) =
            (&client.session, message::cancelled_request(message.params))
        else {
            return false;
        };
        let key = (session.clone(), request.to_string());
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&key));
        let Some(running) = running else {
            return false;
        };
        running.cancel.cancel();
        stream::cancel_upstream(
            &running.wire,
            &running.upstream_id,
            "cancelled by the client",
        )
        .await;
        true
    }
}

/// Middleware on `/mcp`: serves what the relay takes, passes the rest on.
pub async fn relay(State(relay): State<Arc<Relay>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let pass = |parts, bytes: Bytes| next.run(Request::from_parts(parts, Body::from(bytes)));
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return pass(parts, bytes).await;
    };
    let Some(message) = Message::parse(text) else {
        return pass(parts, bytes).await;
    };
    if let Some(method @ ("initialize" | "server/discover")) = message.method.as_deref() {
        let user = parts.extensions.get::<Arc<UserIdentity>>().cloned();
        let handshake = method == "initialize";
        let answer = pass(parts, bytes).await;
        return offer_tasks(&relay, user.as_ref(), handshake, answer).await;
    }
    let worth_a_look = message.is_response()
        || message.method.as_deref().is_some_and(|m| {
            m == "notifications/cancelled"
                || call::RELAYED.contains(&m)
                || tasks::TASK_METHODS.contains(&m)
                || m == "tasks/list"
        });
    if !worth_a_look {
        return pass(parts, bytes).await;
    }
    let session = parts
        .extensions
        .get::<Arc<ClientSession>>()
        .map(Arc::as_ref);
    let Some(client) = Relay::client_side(&parts.headers, session, &message) else {
        return pass(parts, bytes).await;
    };
    if message.is_response() {
        let ours = matches!(&message.id, Some(Value::String(id)) if id.starts_with(ASK_PREFIX));
        if ours && relay.answer(&client, &message).await {
            return StatusCode::ACCEPTED.into_response();
        }
        let asker = match &message.id {
            Some(Value::String(id)) if ours => relay.replicas.owner(id, &parts),
            _ => None,
        };
        if let Some(asker) = asker {
            return relay.replicas.forward(&asker, &parts, bytes).await;
        }
        return pass(parts, bytes).await;
    }
    if message.method.as_deref() == Some("notifications/cancelled") {
        if relay.cancel(&client, &message).await {
            return StatusCode::ACCEPTED.into_response();
        }
        return pass(parts, bytes).await;
    }
    if !message.is_request() {
        return pass(parts, bytes).await;
    }
    match call::relay_call(&relay, &client, &parts, &message).await {
        Some(response) => response,
        None => pass(parts, bytes).await,
    }
}

/// rmcp's `initialize` (`handshake`) or `server/discover` answer, offering
/// tasks: the 2025-11-25 form in a handshake when the caller's view has a
/// tool that supports them, the extension (SEP-2663) when a server of the
/// view announced it.
async fn offer_tasks(
    relay: &Relay,
    user: Option<&Arc<UserIdentity>>,
    handshake: bool,
    answer: Response,
) -> Response {
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let sse = content_type.starts_with("text/event-stream");
    if answer.status() != StatusCode::OK || !(sse || content_type.starts_with("application/json")) {
        return answer;
    }
    let offer = {
        let catalog = &relay.state.view(user).await.catalog;
        tasks::Offer {
            core: handshake && catalog.has_task_tools(),
            extension: catalog.has_task_extension(),
        }
    };
    if offer == tasks::Offer::default() {
        return answer;
    }
    let (mut parts, body) = answer.into_parts();
    // rmcp ends an initialize answer's stream after the answer.
    let read = tokio::time::timeout(INITIALIZE_READ, axum::body::to_bytes(body, MAX_BODY));
    let Ok(Ok(bytes)) = read.await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the initialize answer did not end",
        )
            .into_response();
    };
    let body = tasks::offer_tasks_in(&bytes, sse, offer).map_or(bytes, Bytes::from);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// A relayed answer as one JSON body. A 2026-07-28 client gets an error
/// answer under the HTTP status its transport gives it (as rmcp's own
/// endpoint does): 400 for a missing client capability (-32021), an
/// unsupported revision (-32022) or a header that does not match the body
/// (-32020), 404 for an unknown method (-32601); a session client gets 200,
/// as its transport carries every JSON-RPC answer.
fn answer_response(body: String, revision: ClientRevision) -> Response {
    let status = match revision {
        ClientRevision::Session => StatusCode::OK,
        ClientRevision::Stateless => error_status(&body),
    };
    let mut response = json_response(body);
    *response.status_mut() = status;
    response
}

/// The 2026-07-28 transport's status for a JSON-RPC answer (see
/// [`answer_response`]).
fn error_status(body: &str) -> StatusCode {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<Code>,
    }
    #[derive(serde::Deserialize)]
    struct Code {
        code: i64,
    }
    if !body.contains("\"error\"") {
        return StatusCode::OK;
    }
    let code = serde_json::from_str::<Answer>(body)
        .ok()
        .and_then(|a| a.error)
        .and_then(|e| i32::try_from(e.code).ok())
        .map(ErrorCode);
    match code {
        Some(
            ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
            | ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
            | ErrorCode::HEADER_MISMATCH,
        ) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

fn json_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stateless_client_gets_an_error_under_its_transports_status() {
        let error = |code: i64| {
            serde_json::json!({"jsonrpc": "2.0", "id": 1,
                "error": {"code": code, "message": "m"}})
            .to_string()
        };
        let status = |body: String, revision| answer_response(body, revision).status();
        let stateless = ClientRevision::Stateless;
        assert_eq!(status(error(-32021), stateless), StatusCode::BAD_REQUEST);
        assert_eq!(status(error(-32601), stateless), StatusCode::NOT_FOUND);
        assert_eq!(status(error(-32020), stateless), StatusCode::BAD_REQUEST);
        assert_eq!(status(error(-32022), stateless), StatusCode::BAD_REQUEST);
        assert_eq!(status(error(-32602), stateless), StatusCode::OK);
        assert_eq!(
            status(error(-32021), ClientRevision::Session),
            StatusCode::OK
        );
        // A result that merely mentions "error" is a result.
        let result =
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"\"error\""}]}}"#;
        assert_eq!(status(result.to_string(), stateless), StatusCode::OK);
    }
}
