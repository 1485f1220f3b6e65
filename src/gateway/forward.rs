//! One request to one upstream on a client's behalf: every single-upstream
//! request (a call, a read, a prompt, a completion, a subscription) goes
//! through [`forward`], which carries the answer to the client's revision.

use rmcp::RoleServer;
use rmcp::model::{CallToolResponse, ClientRequest, ServerResult};
use rmcp::service::RequestContext;

use super::revision::{self, ClientRevision};
use crate::fleet::{Caller, Upstream, UpstreamError};

/// The revision the calling client negotiated.
pub fn client_revision(context: &RequestContext<RoleServer>) -> ClientRevision {
    match context.protocol_version() {
        Some(version) if !version.has_initialize() => ClientRevision::Stateless,
        _ => ClientRevision::Session,
    }
}

/// Sends `request` through `upstream` for the client of `caller`.
pub async fn forward(
    upstream: &Upstream,
    request: ClientRequest,
    caller: Caller<'_>,
) -> Result<ServerResult, UpstreamError> {
    let mut result = upstream.request(request, Some(caller)).await?;
    revision::to_client(&mut result, client_revision(caller.context));
    Ok(result)
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
