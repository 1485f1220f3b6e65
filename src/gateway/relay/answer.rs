//! What the client gets when the relay itself ends a call (the upstream
//! could not serve it: a tool error for a call, else a JSON-RPC error), and
//! the framing of a call's streamed answer.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::fleet::wire::{WireError, WireReply};
use crate::gateway::revision::ClientRevision;

/// The upstream's reply to a relayed request, not yet in.
pub(super) type Pending = futures::future::BoxFuture<'static, Result<WireReply, WireError>>;

/// What the client gets when the upstream could not serve `method`: a
/// tool error for a call (so an agent reads why), else a JSON-RPC error.
pub(super) fn failure(
    method: &str,
    client_id: &Value,
    text: &str,
    revision: ClientRevision,
) -> String {
    if method != "tools/call" {
        return serde_json::json!({"jsonrpc": "2.0", "id": client_id,
            "error": {"code": -32603, "message": text}})
        .to_string();
    }
    tool_error(client_id, text, revision)
}

/// A tool error result (the call could not run) for the client.
fn tool_error(client_id: &Value, text: &str, revision: ClientRevision) -> String {
    let mut result = serde_json::json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
    });
    if revision == ClientRevision::Stateless {
        result["resultType"] = "complete".into();
    }
    serde_json::json!({"jsonrpc": "2.0", "id": client_id, "result": result}).to_string()
}

pub(super) fn sse_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
