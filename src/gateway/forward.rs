//! One request to one upstream on a client's behalf: every single-upstream
//! request (a call, a read, a prompt, a completion, a subscription) goes
//! through [`forward`], which carries the answer to the client's revision.

use rmcp::RoleServer;
use rmcp::model::{CallToolResponse, ClientRequest, ServerResult};
use rmcp::service::RequestContext;

use super::input_rounds;
use super::revision::{self, ClientRevision};
use crate::fleet::{Caller, Upstream, UpstreamError};

/// The revision the calling client negotiated.
pub fn client_revision(context: &RequestContext<RoleServer>) -> ClientRevision {
    match context.protocol_version() {
        Some(version) if !version.has_initialize() => ClientRevision::Stateless,
        _ => ClientRevision::Session,
    }
}

/// Sends `request` through `upstream` for the client of `caller`; a 2025
/// session client is asked what a 2026-07-28 upstream's `input_required`
/// result needs, and the request sent again (see `input_rounds`).
pub async fn forward(
    upstream: &Upstream,
    request: ClientRequest,
    caller: Caller<'_>,
) -> Result<ServerResult, UpstreamError> {
    let revision = client_revision(caller.context);
    let label = caller.instance.unwrap_or(&upstream.name);
    let mut request = request;
    for _ in 0..=input_rounds::MAX_ROUNDS {
        let mut result = upstream.request(request.clone(), Some(caller)).await?;
        if let (ClientRevision::Session, ServerResult::InputRequiredResult(asked)) =
            (revision, &result)
        {
            let answers = input_rounds::ask_client(caller.context, label, asked).await?;
            let state = asked.request_state.clone();
            request = input_rounds::with_answers(request, answers, state).ok_or_else(|| {
                UpstreamError::Unanswered {
                    server: label.to_string(),
                    message: "it asked for input on a request that cannot carry answers".into(),
                }
            })?;
            continue;
        }
        if let ServerResult::InputRequiredResult(asked) = &mut result {
            input_rounds::name_asker(asked, label);
        }
        revision::to_client(&mut result, revision);
        return Ok(result);
    }
    Err(UpstreamError::Unanswered {
        server: label.to_string(),
        message: format!(
            "it still asked for input after {} rounds",
            input_rounds::MAX_ROUNDS
        ),
    })
}

/// A `tools/call` answer as the client's response.
pub fn call_response(
    server: &str,
    result: ServerResult,
) -> Result<CallToolResponse, UpstreamError> {
    match result {
        ServerResult::CallToolResult(result) => Ok(CallToolResponse::Complete(result)),
        ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
        ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
        _ => Err(UpstreamError::Transport {
            server: server.to_string(),
            message: "unexpected reply to tools/call".into(),
        }),
    }
}
