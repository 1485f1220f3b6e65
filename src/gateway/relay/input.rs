//! A 2025 upstream asks a 2026-07-28 client something mid-call.
//!
//! A 2026-07-28 client is stateless: it cannot be sent a request while its
//! call runs. It is asked the 2026 way instead: its call ends with an
//! `input_required` result whose `inputRequests` carry the upstream's
//! request (elicitation, sampling, roots) and whose `requestState` is a
//! handle of the gateway's (`flotilla-input:` and 128 random bits). The
//! upstream's request stays open meanwhile: the call's stream is parked
//! here, unread. The client retries its request with `inputResponses` and
//! that `requestState`; the answers go to the upstream under its own ids,
//! and the client's retry carries the rest of the call (more progress,
//! another question, or the result), as if it had never stopped.
//!
//! A parked call belongs to its caller (the logged-in user; a handle alone
//! without auth) and to the method it was made with; it waits at most
//! [`WAIT`], and at most [`MAX_PARKED`] wait at once. One that is not
//! picked up in time is dropped, which cancels the upstream's request.
//! A `requestState` of an upstream (a 2026-07-28 upstream's own) is not
//! one of these and passes through untouched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::response::Response;
use serde_json::Value;

use super::message::{self, Message};
use super::stream::Stream;
use super::{ClientSide, Relay, json_response};

/// How a `requestState` minted by the gateway starts.
const PREFIX: &str = "flotilla-input:";
/// How long a parked call waits for its client to come back.
pub(super) const WAIT: Duration = Duration::from_secs(600);
/// How many calls may wait for input at once (each holds an upstream request).
pub(super) const MAX_PARKED: usize = 1024;

/// A call's open questions to its client: `(key in inputRequests, the
/// upstream's request id)`, and the handle it is parked under.
pub(super) struct Waiting {
    pub handle: String,
    pub asks: Vec<(String, Value)>,
}

impl Waiting {
    pub fn new() -> Self {
        Self {
            handle: format!("{PREFIX}{:032x}", rand::random::<u128>()),
            asks: Vec::new(),
        }
    }
}

struct Parked {
    stream: Stream,
    caller: Option<String>,
    until: Instant,
}

/// The calls waiting for a 2026-07-28 client's input, by handle.
#[derive(Default)]
pub(super) struct ParkedCalls {
    calls: Mutex<HashMap<String, Parked>>,
}

impl ParkedCalls {
    /// Whether another call may wait.
    pub fn has_room(&self) -> bool {
        let expired = self.sweep();
        drop(expired);
        self.calls
            .lock()
            .map(|calls| calls.len() < MAX_PARKED)
            .unwrap_or(false)
    }

    /// Parks `stream`, which has just sent its client `input_required`.
    pub fn park(&self, stream: Stream) {
        let Some(handle) = stream.waiting.as_ref().map(|w| w.handle.clone()) else {
            return;
        };
        let caller = stream.caller.clone();
        let parked = Parked {
            stream,
            caller,
            until: Instant::now() + WAIT,
        };
        // A poisoned map drops the call, which cancels its upstream request.
        if let Ok(mut calls) = self.calls.lock() {
            calls.insert(handle, parked);
        }
    }

    /// The call parked under `handle`, for its own caller and method only.
    fn take(&self, handle: &str, caller: Option<&str>, method: &str) -> Option<Stream> {
        let mut calls = self.calls.lock().ok()?;
        let parked = calls.get(handle)?;
        let fits = parked.caller.as_deref() == caller
            && parked.stream.method == method
            && parked.until > Instant::now();
        fits.then(|| calls.remove(handle))
            .flatten()
            .map(|parked| parked.stream)
    }

    /// Removes the calls that waited too long; dropping them (outside the
    /// lock) cancels their upstream requests.
    fn sweep(&self) -> Vec<Parked> {
        let now = Instant::now();
        let Ok(mut calls) = self.calls.lock() else {
            return Vec::new();
        };
        let expired: Vec<String> = calls
            .iter()
            .filter(|(_, parked)| parked.until <= now)
            .map(|(handle, _)| handle.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|handle| calls.remove(&handle))
            .collect()
    }
}

/// Whether `state` is a handle of the gateway's (not an upstream's).
pub(super) fn is_ours(state: &str) -> bool {
    state.starts_with(PREFIX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_the_gateways_own_and_unguessable() {
        let (a, b) = (Waiting::new(), Waiting::new());
        assert!(is_ours(&a.handle));
        assert_ne!(a.handle, b.handle);
        assert_eq!(a.handle.len(), PREFIX.len() + 32);
        assert!(!is_ours("an-upstream's-state"));
    }
}
