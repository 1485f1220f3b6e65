//! A 2026-07-28 upstream asks a 2025 session client something.
//!
//! An upstream spoken to in 2026-07-28 asks for input by answering a call
//! (`tools/call`, `prompts/get`, `resources/read`) with an `input_required`
//! result; a 2025 session client cannot read one. The gateway asks that
//! client the 2025 way instead: each of the result's `inputRequests`
//! (elicitation, sampling, roots) becomes a request to the client on the
//! call's own stream (an elicitation's message names the server or
//! instance that asks, as every relayed question does), and the call is
//! sent again with the answers as `inputResponses` and the upstream's
//! `requestState` echoed, for at most [`MAX_ROUNDS`] rounds. The client
//! sees one call that asked it something, as with a 2025 upstream.
//!
//! A client that does not offer what is asked (no `elicitation`, no
//! `sampling`, no `roots` capability) or that refuses gets an error saying
//! so, never a hang. 2026-07-28 clients get the `input_required` result
//! as it came, its elicitations naming who asks ([`name_asker`]).

use rmcp::RoleServer;
use rmcp::model::{
    ClientRequest, GetExtensions, InputRequest, InputRequiredResult, InputResponses, ServerRequest,
};
use rmcp::service::{OriginatingRequestId, RequestContext};
use serde_json::Value;

use crate::fleet::UpstreamError;

/// How many `input_required` rounds one call may take (as the reference SDKs).
pub const MAX_ROUNDS: usize = 10;

/// Puts an `input_required` result's requests to the session client of
/// `context`; their answers, keyed as the upstream keyed its requests.
pub async fn ask_client(
    context: &RequestContext<RoleServer>,
    label: &str,
    asked: &InputRequiredResult,
) -> Result<InputResponses, UpstreamError> {
    let unanswered = |message: String| UpstreamError::Unanswered {
        server: label.to_string(),
        message,
    };
    let mut answers = InputResponses::new();
    for (key, request) in asked.input_requests.iter().flatten() {
        let (what, offered) = offered(context, request);
        if !offered {
            return Err(unanswered(format!(
                "it asked for {what}, which this client does not offer"
            )));
        }
        let mut request = to_client(request, label)
            .ok_or_else(|| unanswered(format!("its {what} request could not be read")))?;
        request
            .extensions_mut()
            .insert(OriginatingRequestId(context.id.clone()));
        let answer = context.peer.send_request(request).await.map_err(|error| {
            unanswered(format!(
                "the client did not answer its {what} request: {error}"
            ))
        })?;
        // ClientResult is untagged: the value is the result itself.
        let answer = serde_json::to_value(&answer).map_err(|_| {
            unanswered(format!(
                "the client's answer to its {what} request could not be read"
            ))
        })?;
        answers.insert(key.clone(), answer);
    }
    Ok(answers)
}

/// `request` sent again with the client's answers and the upstream's state.
pub fn with_answers(
    request: ClientRequest,
    answers: InputResponses,
    state: Option<String>,
) -> Option<ClientRequest> {
    let answers = (!answers.is_empty()).then_some(answers);
    Some(match request {
        ClientRequest::CallToolRequest(mut r) => {
            r.params.input_responses = answers;
            r.params.request_state = state;
            ClientRequest::CallToolRequest(r)
        }
        ClientRequest::GetPromptRequest(mut r) => {
            r.params.input_responses = answers;
            r.params.request_state = state;
            ClientRequest::GetPromptRequest(r)
        }
        ClientRequest::ReadResourceRequest(mut r) => {
            r.params.input_responses = answers;
            r.params.request_state = state;
            ClientRequest::ReadResourceRequest(r)
        }
        _ => return None,
    })
}

/// What is asked, and whether the client declared it can answer it.
fn offered(context: &RequestContext<RoleServer>, request: &InputRequest) -> (&'static str, bool) {
    let capabilities = context
        .peer
        .peer_info()
        .map(|info| info.capabilities.clone());
    let capabilities = capabilities.unwrap_or_default();
    match request {
        InputRequest::CreateMessage(_) => ("sampling", capabilities.sampling.is_some()),
        InputRequest::Elicitation(_) => ("elicitation", capabilities.elicitation.is_some()),
        InputRequest::ListRoots(_) => ("roots", capabilities.roots.is_some()),
        _ => ("an unknown kind of input", false),
    }
}

/// An `input_required` result for a 2026-07-28 client: its elicitations
/// name who asks, as every relayed question does; nothing else changes.
pub fn name_asker(asked: &mut InputRequiredResult, label: &str) {
    for request in asked.input_requests.iter_mut().flat_map(|r| r.values_mut()) {
        if let Some(named) = to_client(request, label)
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| serde_json::from_value(v).ok())
        {
            *request = named;
        }
    }
}

/// An input request as a request to the client: an elicitation names who asks.
fn to_client(request: &InputRequest, label: &str) -> Option<ServerRequest> {
    let mut value = serde_json::to_value(request).ok()?;
    if value["method"] == "elicitation/create"
        && let Some(Value::String(message)) = value.pointer_mut("/params/message")
    {
        *message = format!("[{label}] {message}");
    }
    serde_json::from_value(value).ok()
}
