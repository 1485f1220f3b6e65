//! A 2025 upstream asks a 2026-07-28 client something mid-call.
//!
//! A 2026-07-28 client is stateless: it cannot be sent a request while its
//! call runs. It is asked the 2026 way instead: its call ends with an
//! `input_required` result whose `inputRequests` carry the upstream's
//! request (elicitation, sampling, roots) and whose `requestState` is a
//! handle of the gateway's (`flotilla-input:` and 128 random bits). The
//! upstream's request stays open meanwhile: the call's stream parks itself
//! unread (`stream.rs`) in the table kept here. The client retries its
//! request with `inputResponses` and
//! that `requestState`; the answers go to the upstream under its own ids,
//! and the client's retry carries the rest of the call (more progress,
//! another question, or the result), as if it had never stopped.
//!
//! The stream waits in the relay's `parking` table, bound to its caller and
//! method, for at most 10 minutes. A `requestState` of an upstream (a
//! 2026-07-28 upstream's own) is not one of these and passes through
//! untouched.

use axum::body::Bytes;
use axum::response::Response;
use serde_json::Value;

use super::message::{self, Message};
use super::stream::Stream;
use super::{ClientSide, Relay, json_response};
use crate::gateway::parking::Parking;

/// The relay's waiting calls: their answer streams, parked unread.
pub(super) type ParkedCalls = Parking<Stream>;

/// The relay's table (states start `flotilla-input:`).
pub(super) fn parked_calls() -> ParkedCalls {
    Parking::new("flotilla-input:")
}

/// A 2026-07-28 client retries a parked call with its answers: they go to
/// the upstream, and the call goes on in this request's answer.
pub(super) async fn resume(
    relay: &Relay,
    client: &ClientSide,
    caller: Option<&str>,
    method: &str,
    message: &Message<'_>,
    handle: &str,
) -> Response {
    let client_id = message.id.clone().unwrap_or(Value::Null);
    let Some(mut stream) = relay.parked.take(handle, caller, method) else {
        let text = "requestState names no call waiting for input at this gateway (it \
                    waits 10 minutes, for the caller and method that started it): send the \
                    request again without inputResponses and requestState";
        return json_response(
            serde_json::json!({"jsonrpc": "2.0", "id": client_id,
                "error": {"code": -32602, "message": text}})
            .to_string(),
        );
    };
    let answers = message::input_responses(message.params);
    for (key, upstream_id) in stream.waiting.take().map(|w| w.asks).unwrap_or_default() {
        let body = match answers.get(&key) {
            Some(answer) => message::result_upstream(&upstream_id, answer),
            None => message::refuse_upstream(
                &upstream_id,
                "the client retried without answering this request",
            ),
        };
        if let Err(error) = stream.wire.deliver(Bytes::from(body)).await {
            tracing::warn!(server = %stream.label, %error, "relaying a client's input to its upstream failed");
        }
    }
    stream.client_id = client_id;
    stream.client = client.clone();
    stream.client_token = message::peek_call(message.params).and_then(|c| c.progress_token);
    stream.respond().await
}
