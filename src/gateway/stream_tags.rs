//! rmcp's SSE streams to a session client, marked with this replica (see
//! `replicas`), so what a client sends back about them finds the replica
//! that holds them, wherever the proxy sends it:
//!
//! | on rmcp's stream | becomes | sent back by the client | here |
//! |---|---|---|---|
//! | a request to the client (elicitation, sampling, roots), id `7` | id `flotilla-rmcp-n7@<replica>` | its answer | ours: id `7` again, to rmcp; another replica's: passed to it |
//! | an event id `3/0` (of the answer to request `5`) | `3/0#<5, base64>@<replica>` (a GET stream's: no `#`) | `Last-Event-ID` (resuming) | ours and held: `3/0`, to rmcp; another replica's: the GET passed to it |
//!
//! A stream that cannot be resumed (its replica is gone or no longer holds
//! the session, or rmcp no longer has the events) ends cleanly: a request's
//! stream answers the request with a JSON-RPC error saying so (the client
//! may send it again), and a GET stream starts afresh (its lost events are
//! notifications). Never a hang, a 500, or an error status a client's
//! reconnection gives up on. Nothing changes
//! when the replica has no address (`replicaUrl`), nor for 2026-07-28
//! requests (rmcp puts no question on their streams).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use rmcp::transport::streamable_http_server::SessionManager as _;
use serde_json::{Value, json};

use super::edge::MAX_BODY;
use super::envelope::{RpcId, RpcMethod};
use super::held_sessions::HeldSessions;
use super::replicas::Replicas;
use super::session::ClientSession;

/// The ids this layer gives rmcp's requests to clients start with this.
const PREFIX: &str = "flotilla-rmcp-";

/// What the layer needs: this replica's mark and the sessions it holds.
#[derive(Clone)]
pub struct StreamTags {
    pub replicas: Arc<Replicas>,
    pub held: Arc<HeldSessions>,
}

/// Middleware in front of rmcp's service (see the module header).
pub async fn tag_streams(State(tags): State<StreamTags>, request: Request, next: Next) -> Response {
    let Some(session) = request.extensions().get::<Arc<ClientSession>>().cloned() else {
        return next.run(request).await;
    };
    if !tags.replicas.marks() {
        return next.run(request).await;
    }
    let resuming = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let answering = request.extensions().get::<RpcId>().map(|id| id.0.clone());
    let response = match (request.method().clone(), resuming) {
        (Method::GET, Some(last)) => resume(&tags, &session, request, &last, next).await,
        (Method::POST, _) if request.extensions().get::<RpcMethod>().is_none() => {
            answer(&tags, request, next).await
        }
        _ => next.run(request).await,
    };
    mark(&tags.replicas, answering.as_ref(), response)
}

/// A GET resuming a stream after `last` (an event id this layer marked).
async fn resume(
    tags: &StreamTags,
    session: &ClientSession,
    request: Request,
    last: &str,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let (bare, _) = Replicas::untag(last);
    let (event, answering) = match bare.split_once('#') {
        Some((event, id)) => (event.to_string(), request_id(id)),
        None => (bare.to_string(), None),
    };
    if let Some(owner) = tags.replicas.owner(last, &parts) {
        return match tags
            .replicas
            .try_forward(&owner, &parts, Bytes::new())
            .await
        {
            Some(response) => response,
            None => {
                let why = "the replica that kept its events is gone";
                lost(answering, why, Request::from_parts(parts, body), next).await
            }
        };
    }
    let held = tags
        .held
        .has_session(&session.id.as_str().into())
        .await
        .unwrap_or(false);
    if !held {
        let why = "the replica that kept its events no longer holds this session";
        return lost(answering, why, Request::from_parts(parts, body), next).await;
    }
    let Ok(value) = HeaderValue::from_str(&event) else {
        let why = "the Last-Event-ID is not one this gateway gave";
        return lost(answering, why, Request::from_parts(parts, body), next).await;
    };
    let mut request = Request::from_parts(parts, body);
    request.headers_mut().insert("last-event-id", value);
    let answering_id = request_id_of(last);
    let response = next.run(request).await;
    match (response.status().is_server_error(), answering_id) {
        (true, Some(id)) => interrupted(&id, "its events are no longer kept"),
        _ => response,
    }
}

/// A stream that cannot be resumed: the request whose answer it carried
/// gets an error; a GET stream starts afresh (its lost events were
/// notifications).
async fn lost(answering: Option<Value>, why: &str, mut request: Request, next: Next) -> Response {
    match answering {
        Some(id) => interrupted(&id, why),
        None => {
            request.headers_mut().remove("last-event-id");
            next.run(request).await
        }
    }
}

/// The request a marked event id names, if any.
fn request_id_of(last: &str) -> Option<Value> {
    let (bare, _) = Replicas::untag(last);
    request_id(bare.split_once('#')?.1)
}

/// The request id a marked event id carries (`#` and base64 JSON).
fn request_id(encoded: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The end of a request's stream that cannot be resumed: an SSE event
/// answering the request with an error that says why.
fn interrupted(id: &Value, why: &str) -> Response {
    let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message":
        format!("the answer to this request was lost: its stream cannot be resumed ({why}); send the request again")}});
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        format!("event: message\ndata: {error}\n\n"),
    )
        .into_response()
}

/// A POST that is not a request or notification: maybe the client's answer
/// to a request this layer marked.
async fn answer(tags: &StreamTags, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let pass = |parts, bytes: Bytes| next.run(Request::from_parts(parts, Body::from(bytes)));
    let Ok(mut message) = serde_json::from_slice::<Value>(&bytes) else {
        return pass(parts, bytes).await;
    };
    let Some(id) = message
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| id.starts_with(PREFIX))
        .map(str::to_string)
    else {
        return pass(parts, bytes).await;
    };
    if let Some(owner) = tags.replicas.owner(&id, &parts) {
        return tags.replicas.forward(&owner, &parts, bytes).await;
    }
    match original_id(&id) {
        Some(original) => {
            message["id"] = original;
            pass(parts, Bytes::from(message.to_string())).await
        }
        None => pass(parts, bytes).await,
    }
}

/// The id rmcp gave a request, from the one this layer put on the stream.
fn original_id(marked: &str) -> Option<Value> {
    let (bare, _) = Replicas::untag(marked);
    let rest = bare.strip_prefix(PREFIX)?;
    match rest.split_at_checked(1)? {
        ("n", number) => number.parse::<i64>().ok().map(Value::from),
        ("s", text) => Some(Value::String(text.to_string())),
        _ => None,
    }
}

/// rmcp's SSE answer with its event ids and request ids marked; the event
/// ids of the answer to request `answering` also carry that id.
fn mark(replicas: &Arc<Replicas>, answering: Option<&Value>, response: Response) -> Response {
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if !sse {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let replicas = replicas.clone();
    let answering = answering
        .map(|id| format!("#{}", URL_SAFE_NO_PAD.encode(id.to_string())))
        .unwrap_or_default();
    let mut pending = String::new();
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        pending.push_str(&String::from_utf8_lossy(&chunk));
        // Whole lines only; the rest waits for the next chunk.
        let Some(end) = pending.rfind('\n') else {
            return Ok::<_, axum::Error>(Bytes::new());
        };
        let whole: String = pending.drain(..=end).collect();
        let mut out = String::with_capacity(whole.len() + 128);
        for line in whole.split_inclusive('\n') {
            out.push_str(&mark_line(&replicas, &answering, line));
        }
        Ok(Bytes::from(out))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// One SSE line, marked where it names an event (`answering`: `#` and the
/// request the stream answers, or empty) or a request.
fn mark_line(replicas: &Replicas, answering: &str, line: &str) -> String {
    let (content, ending) = match line.strip_suffix('\n') {
        Some(content) => (content.trim_end_matches('\r'), &line[content.len()..]),
        None => (line, ""),
    };
    if let Some(id) = content.strip_prefix("id:") {
        return format!(
            "id: {}{ending}",
            replicas.tag(format!("{}{answering}", id.trim()))
        );
    }
    let Some(data) = content.strip_prefix("data:") else {
        return line.to_string();
    };
    if !data.contains("\"method\"") {
        return line.to_string();
    }
    let Ok(mut message) = serde_json::from_str::<Value>(data.trim()) else {
        return line.to_string();
    };
    let marked = match message.get("id") {
        Some(Value::Number(n)) if message.get("method").is_some() => format!("{PREFIX}n{n}"),
        Some(Value::String(s)) if message.get("method").is_some() => format!("{PREFIX}s{s}"),
        _ => return line.to_string(),
    };
    message["id"] = Value::String(replicas.tag(marked));
    format!("data: {message}{ending}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::inbound::seal::SealingKeys;

    #[test]
    fn requests_and_event_ids_are_marked_and_answers_find_their_way_back() {
        let replicas = Replicas::new(
            Arc::new(SealingKeys::ephemeral()),
            Some("http://10.0.0.1:8080".into()),
            Default::default(),
            None,
        );
        let event = mark_line(&replicas, "#Mw", "id: 3/0\n");
        assert!(event.starts_with("id: 3/0#Mw@fla."), "{event}");
        assert!(event.ends_with('\n'));
        let marked = event.trim().trim_start_matches("id: ");
        assert_eq!(Replicas::untag(marked).0, "3/0#Mw");
        assert_eq!(request_id_of(marked), Some(json!(3)));
        let asked = mark_line(
            &replicas,
            "",
            "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"elicitation/create\",\"params\":{}}\n",
        );
        let message: Value = serde_json::from_str(asked.trim_start_matches("data: ")).unwrap();
        let id = message["id"].as_str().unwrap();
        assert!(id.starts_with("flotilla-rmcp-n7@"), "{id}");
        assert_eq!(original_id(id), Some(json!(7)));
        assert_eq!(message["method"], "elicitation/create");
        let named = mark_line(
            &replicas,
            "",
            "data: {\"jsonrpc\":\"2.0\",\"id\":\"a@b\",\"method\":\"roots/list\"}\n",
        );
        let message: Value = serde_json::from_str(named.trim_start_matches("data: ")).unwrap();
        assert_eq!(
            original_id(message["id"].as_str().unwrap()),
            Some(json!("a@b"))
        );
        // Answers, notifications and other lines pass as they are.
        for line in [
            "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n",
            "event: message\n",
            ": keep-alive\n",
            "\n",
        ] {
            assert_eq!(mark_line(&replicas, "", line), line);
        }
    }
}
