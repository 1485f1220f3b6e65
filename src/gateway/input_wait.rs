//! An upstream asks a 2026-07-28 client something mid-call, on the calls
//! served through rmcp's model (fan-out members, upstreams spoken to in
//! 2026-07-28, and what the relay leaves to rmcp; the relay has its own
//! way, `relay::input`).
//!
//! The upstream's request (elicitation, sampling, roots) cannot be sent to
//! a stateless client. The call runs in a task of its own, whose upstream
//! requests come to [`forward_or_wait`] instead of the client; the first
//! one ends the client's request with an `input_required` result (the
//! question under `inputRequests`, a `requestState` of the gateway's:
//! `flotilla-wait:` and 128 random bits) while the call waits here, its
//! upstream request open. The client's retry with `inputResponses` and that
//! state answers the upstream, and the retry waits for what comes next:
//! the result, or the next question.
//!
//! A waiting call stays in a `parking` table, bound to its caller and
//! method, for at most 10 minutes; one that is dropped (not picked up in
//! time, or the gateway stops) cancels its upstream request. Fan-out calls
//! do not wait: several instances could ask at once, and the upstream gets
//! an error saying the client cannot be asked.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{ClientRequest, ErrorData, InputRequest, InputRequiredResult, ServerResult};
use rmcp::service::RequestContext;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::forward::{client_revision, forward};
use super::parking::{MAX_WAITING, Parking};
use super::revision::ClientRevision;
use super::view::caller;
use crate::fleet::{Caller, LineMessage, Upstream, UpstreamError};

type Outcome = Result<ServerResult, UpstreamError>;

/// A call whose upstream asked its client something.
pub struct Waiting {
    /// The call, running on its own (its result, or its next question).
    task: tokio::task::JoinHandle<Outcome>,
    questions: mpsc::Receiver<LineMessage>,
    /// The open question: its key in `inputRequests` and where the answer goes.
    answer: Option<(String, oneshot::Sender<Result<Value, String>>)>,
    /// Cancels the call's upstream request.
    cancel: CancellationToken,
    finished: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Not picked up, or the gateway stops: the upstream stops too. The
        // task ends at once (it sends the upstream's cancellation).
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

/// The calls waiting for a 2026-07-28 client's input (states start
/// `flotilla-wait:`).
pub struct WaitingCalls(Parking<Waiting>);

impl Default for WaitingCalls {
    fn default() -> Self {
        Self(Parking::new("flotilla-wait:"))
    }
}

/// Who may pick a waiting call up: the logged-in user, if any.
fn caller_key(context: &RequestContext<RoleServer>) -> Option<String> {
    caller(&context.extensions).map(|user| format!("{}\0{}", user.key.issuer, user.key.subject))
}

/// The `requestState` and `inputResponses` a retried request carries.
fn retry_of<'r>(
    calls: &WaitingCalls,
    request: &'r ClientRequest,
) -> Option<(&'r str, Option<&'r rmcp::model::InputResponses>)> {
    let (state, answers) = match request {
        ClientRequest::CallToolRequest(r) => (&r.params.request_state, &r.params.input_responses),
        ClientRequest::GetPromptRequest(r) => (&r.params.request_state, &r.params.input_responses),
        ClientRequest::ReadResourceRequest(r) => {
            (&r.params.request_state, &r.params.input_responses)
        }
        _ => return None,
    };
    state
        .as_deref()
        .filter(|s| calls.0.is_ours(s))
        .map(|s| (s, answers.as_ref()))
}

/// [`forward`], except that a 2026-07-28 client the upstream asks
/// something gets `input_required`, and its retry goes on with the call.
/// With `confirm`, the user is asked that first (`confirm`), the same way.
pub async fn forward_or_wait(
    calls: &WaitingCalls,
    upstream: &Arc<Upstream>,
    request: ClientRequest,
    caller: Caller<'_>,
    confirm: Option<String>,
) -> Outcome {
    if client_revision(caller.context) != ClientRevision::Stateless {
        if let Some(text) = &confirm {
            super::confirm::confirm(&caller, text)
                .await
                .map_err(UpstreamError::NotConfirmed)?;
        }
        return forward(upstream, request, caller).await;
    }
    let who = caller_key(caller.context);
    let method = request.method().to_string();
    if let Some((state, answers)) = retry_of(calls, &request) {
        let Some(mut waiting) = calls.0.take(state, who.as_deref(), &method) else {
            return Err(UpstreamError::Rejected(ErrorData::invalid_params(
                "requestState names no call waiting for input at this gateway (it waits 10 \
                 minutes, for the caller that started it): send the request again without \
                 inputResponses and requestState",
                None,
            )));
        };
        if let Some((key, answer)) = waiting.answer.take() {
            let given = answers.and_then(|a| a.get(&key)).cloned();
            let _ = answer
                .send(given.ok_or_else(|| {
                    "the client retried without answering this request".to_string()
                }));
        }
        return wait(calls, waiting, who, &method).await;
    }
    let (line, questions) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    // The call outlives the client's request when it waits: it gets its own
    // cancellation, which a waiting call that is dropped fires.
    let mut context = caller.context.clone();
    context.ct = cancel.clone();
    let (upstream, instance) = (upstream.clone(), caller.instance.map(str::to_string));
    let (relay_progress, log_level) = (caller.relay_progress, caller.log_level);
    let task = tokio::spawn(async move {
        let caller = Caller {
            context: &context,
            relay_progress,
            instance: instance.as_deref(),
            log_level,
            asking: Some(&line),
        };
        if let Some(text) = &confirm {
            super::confirm::confirm(&caller, text)
                .await
                .map_err(UpstreamError::NotConfirmed)?;
        }
        forward(&upstream, request, caller).await
    });
    let waiting = Waiting {
        task,
        questions,
        answer: None,
        cancel,
        finished: false,
    };
    wait(calls, waiting, who, &method).await
}

/// Waits for the call's result, or parks it at its next question.
async fn wait(
    calls: &WaitingCalls,
    mut waiting: Waiting,
    caller: Option<String>,
    method: &str,
) -> Outcome {
    loop {
        tokio::select! {
            joined = &mut waiting.task => {
                waiting.finished = true;
                return joined.unwrap_or_else(|error| Err(UpstreamError::Transport {
                    server: "the gateway".into(),
                    message: format!("the call stopped: {error}"),
                }));
            }
            Some(question) = waiting.questions.recv() => {
                let Some(answer) = question.answer else { continue };
                let Ok(request) = serde_json::from_value::<InputRequest>(question.message) else {
                    let _ = answer.send(Err("the gateway's client cannot be asked this".into()));
                    continue;
                };
                let key = "input".to_string();
                waiting.answer = Some((key.clone(), answer));
                let state = calls.0.new_state();
                if calls.0.park(state.clone(), waiting, caller, method).is_err() {
                    // Dropped: the upstream request ends, the client is told.
                    return Err(UpstreamError::Unanswered {
                        server: "the gateway".into(),
                        message: format!("{MAX_WAITING} calls already wait for their clients' input; try again later"),
                    });
                }
                let asked = InputRequiredResult::new(
                    Some([(key, request)].into_iter().collect()),
                    Some(state),
                );
                return Ok(ServerResult::InputRequiredResult(asked));
            }
        }
    }
}
