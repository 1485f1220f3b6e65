//! An upstream asks a 2026-07-28 client something mid-call, on the calls
//! served through rmcp's model (stdio and legacy-SSE upstreams; the relay
//! has its own way, `relay::input`).
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
//! A waiting call belongs to its caller (the logged-in user; without auth
//! the state alone finds it), waits at most [`WAIT`], and at most
//! [`MAX_WAITING`] wait at once; one that is dropped (not picked up in
//! time, or the gateway stops) cancels its upstream request. Fan-out calls
//! do not wait: several instances could ask at once, and the upstream gets
//! an error saying the client cannot be asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::model::{ClientRequest, ErrorData, InputRequest, InputRequiredResult, ServerResult};
use rmcp::service::RequestContext;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::forward::{client_revision, forward};
use super::revision::ClientRevision;
use crate::api::UserIdentity;
use crate::fleet::{Caller, LineMessage, Upstream, UpstreamError};

/// How a `requestState` of a waiting call starts.
const PREFIX: &str = "flotilla-wait:";
/// How long a call waits for its client to come back.
const WAIT: Duration = Duration::from_secs(600);
/// How many calls may wait at once (each holds an upstream request).
const MAX_WAITING: usize = 1024;

type Outcome = Result<ServerResult, UpstreamError>;

/// A call whose upstream asked its client something.
struct Waiting {
    /// The call, running on its own (its result, or its next question).
    task: tokio::task::JoinHandle<Outcome>,
    questions: mpsc::Receiver<LineMessage>,
    /// The open question: its key in `inputRequests` and where the answer goes.
    answer: Option<(String, oneshot::Sender<Result<Value, String>>)>,
    /// Cancels the call's upstream request.
    cancel: CancellationToken,
    caller: Option<String>,
    until: Instant,
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

/// The calls waiting for a 2026-07-28 client's input, by state.
#[derive(Default)]
pub struct WaitingCalls {
    calls: Mutex<HashMap<String, Waiting>>,
}

impl WaitingCalls {
    /// Parks `waiting` under a new state; `None` when too many wait.
    fn park(&self, mut waiting: Waiting) -> Option<String> {
        let now = Instant::now();
        let mut calls = self.calls.lock().ok()?;
        // Calls not picked up in time go (their upstream requests end).
        calls.retain(|_, call| call.until > now);
        if calls.len() >= MAX_WAITING {
            return None;
        }
        let state = format!("{PREFIX}{:032x}", rand::random::<u128>());
        waiting.until = now + WAIT;
        calls.insert(state.clone(), waiting);
        Some(state)
    }

    /// The call waiting under `state`, for its own caller only.
    fn take(&self, state: &str, caller: Option<&str>) -> Option<Waiting> {
        let mut calls = self.calls.lock().ok()?;
        let call = calls.get(state)?;
        let fits = call.caller.as_deref() == caller && call.until > Instant::now();
        fits.then(|| calls.remove(state)).flatten()
    }
}

/// Who may pick a waiting call up: the logged-in user, if any.
fn caller_key(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<Arc<UserIdentity>>()
        .map(|user| format!("{}\0{}", user.key.issuer, user.key.subject))
}

/// The `requestState` and `inputResponses` a retried request carries.
fn retry_of(request: &ClientRequest) -> Option<(&str, Option<&rmcp::model::InputResponses>)> {
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
        .filter(|s| s.starts_with(PREFIX))
        .map(|s| (s, answers.as_ref()))
}

/// [`forward`], except that a 2026-07-28 client the upstream asks
/// something gets `input_required`, and its retry goes on with the call.
pub async fn forward_or_wait(
    calls: &WaitingCalls,
    upstream: &Arc<Upstream>,
    request: ClientRequest,
    caller: Caller<'_>,
) -> Outcome {
    if client_revision(caller.context) != ClientRevision::Stateless {
        return forward(upstream, request, caller).await;
    }
    let who = caller_key(caller.context);
    if let Some((state, answers)) = retry_of(&request) {
        let Some(mut waiting) = calls.take(state, who.as_deref()) else {
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
        return wait(calls, waiting).await;
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
        forward(&upstream, request, caller).await
    });
    let waiting = Waiting {
        task,
        questions,
        answer: None,
        cancel,
        caller: who,
        until: Instant::now(),
        finished: false,
    };
    wait(calls, waiting).await
}

/// Waits for the call's result, or parks it at its next question.
async fn wait(calls: &WaitingCalls, mut waiting: Waiting) -> Outcome {
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
                let Some(state) = calls.park(waiting) else {
                    // Dropped: the upstream request ends, the client is told.
                    return Err(UpstreamError::Unanswered {
                        server: "the gateway".into(),
                        message: format!("{MAX_WAITING} calls already wait for their clients' input; try again later"),
                    });
                };
                let asked = InputRequiredResult::new(
                    Some([(key, request)].into_iter().collect()),
                    Some(state),
                );
                return Ok(ServerResult::InputRequiredResult(asked));
            }
        }
    }
}
