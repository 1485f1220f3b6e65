//! What the gateway changes in what passes through it: the whole list of
//! rewrites between a client and an upstream, and how a result is carried
//! from the upstream's MCP revision to the client's. Anything not listed
//! here reaches the other side as it was sent.
//!
//! Rewrites on every relayed request and its answer:
//!
//! | what | client → upstream | upstream → client |
//! |---|---|---|
//! | tool / prompt name (a completion's `ref.name` for a prompt) | exposed name → upstream name | (names in lists: the catalog's `x_<server>_<tool>` or folded `x_<family>_<tool>`) |
//! | instance argument of a folded tool | removed | - |
//! | JSON-RPC request id | the gateway's own per upstream session | the client's |
//! | progress token | the gateway's own | the client's |
//! | `_meta["io.modelcontextprotocol/serverInfo"]` ([`HOP_META_KEYS`]) | - | removed (the client gets the gateway's) |
//! | `_meta` 2026-07-28 lifecycle keys ([`REQUEST_HOP_META_KEYS`]) | removed (the upstream session has its own); to an upstream spoken to in 2026-07-28, the gateway's own instead (`fleet::lifecycle`), with the client's `logLevel` | - |
//! | `Mcp-Method`, `Mcp-Name` headers (2026-07-28 upstream) | the upstream's method and name | - |
//! | elicitation `message`, log `logger` | - | name the server (or family instance) that asks or logs |
//! | request ids in `tasks/*` | - (task ids are the upstream's, unchanged) | - |
//! | `_meta["io.modelcontextprotocol/clientCapabilities"]` on `tools/call` and `tasks/*`, only for a client that declared the tasks extension (SEP-2663) to an upstream that announced it | set: the capabilities of the upstream's session plus the extension (the session was opened without it, for every client) | - |
//! | `_meta.traceparent` / `tracestate` (SEP-414), only with `tracing.otlpEndpoint` set | the gateway's span for the call (same trace; the client's span is its grandparent); also sent as HTTP headers to HTTP upstreams | - |
//! | a `tools/call` result over the server's `spec.limits.maxOutputBytes` (only when set and exceeded) | - | content cut (text at a character boundary, blocks past the limit dropped) and a text block added saying so; `structuredContent`'s strings cut, or it is removed and `isError` set when even that is not enough (`fleet::limits`); the relay decodes the result only then, any other answer passes as the bytes it was |
//!
//! Answers the gateway gives itself, in place of the upstream's: a tool
//! error (a JSON-RPC error for `resources/read` and `prompts/get`) when the
//! server is at `spec.limits.maxConcurrency` with a full queue or the
//! call's wait ran out, and when the caller is over `rateLimit`
//! (`gateway::rate_limit`), both sending nothing upstream; and when
//! `spec.limits.callTimeout` passes, which cancels the upstream request.
//!
//! Rewrites of the gateway's own answers:
//!
//! | what | change |
//! |---|---|
//! | `tools/list` | each tool as its upstream listed it (every member, `execution` included), renamed; a folded tool is built anew and keeps the members beyond rmcp's model that all its copies agree on |
//! | `initialize` capabilities | `tasks` (list, cancel, task-augmented `tools/call`) added when the caller's view has a tool whose `execution` allows tasks (rmcp's model has no member for it) |
//! | `initialize` and `server/discover` capabilities | `extensions["io.modelcontextprotocol/tasks"]` added when a server of the caller's view announced the extension |
//! | HTTP status of a relayed error answer to a 2026-07-28 request | 400 for -32021, -32022, -32020, 404 for -32601, as the revision's transport (and rmcp's endpoint) gives them; 200 otherwise and for every session client |
//! | `tasks/list` | answered by the gateway: the caller's own tasks, each as its upstream's `tasks/get` says now (`relay::tasks`) |
//! | an upstream's request to a client that did not declare it (elicitation, sampling, roots) | never sent to the client; the upstream gets -32601 saying the client did not declare it (`fleet::ClientOffers`) |
//! | `Mcp-Session-Id` (2025 sessions) | the gateway's own, sealed: it carries the session (`gateway::session`); rmcp's session ids never reach the client |
//! | ids of the gateway's requests to a client (an upstream's elicitation, sampling, roots) and SSE event ids on rmcp's streams | marked with the replica that holds them: `flotilla-ask-<n>@<replica>`, `flotilla-rmcp-n<id>@<replica>`, `<event id>#<request id>@<replica>` (`<replica>` its sealed address, when it has one; the request id, base64, only on a request's stream); the client's answers and `Last-Event-ID` are unmarked again, or passed to that replica (`gateway::replicas`, `gateway::stream_tags`) |
//! | `tools/list` under a ToolPolicy | a tool the caller may call nowhere is left out; a folded tool's instance enum lists only the instances the caller may call it on (`policy::listing`) |
//! | a fan-out's merged result under a ToolPolicy | selected instances the policy excludes are not called; a text block names them and `structuredContent.excluded` maps each to the rule |
//! | a call a policy denies or the user does not confirm | never sent upstream; a tool error naming the rule (`gateway::confirm` asks first for `confirm` rules) |
//!
//! Revision table (client revision × what the upstream's result carries):
//!
//! | field | 2025-03-26 / 2025-06-18 / 2025-11-25 client | 2026-07-28 client |
//! |---|---|---|
//! | `resultType` | never present (`"complete"` stripped) | always present: an upstream result without it is `"complete"` |
//! | `ttlMs`, `cacheScope` on `resources/read` | removed | kept; filled with `0` / `"private"` when absent |
//! | `input_required` result of a 2026-07-28 upstream | each request asked on the call's stream, the call re-sent with the answers (`gateway::input_rounds`, rmcp's path) | passed through (relayed), elicitations naming who asks |
//! | a 2025 upstream's request mid-call | relayed as a request on the call's stream | an `input_required` result with the gateway's `requestState`; the call waits parked (`relay::input`) |

use rmcp::model::{ResultType, ServerResult};

/// Result `_meta` keys an upstream writes for its own client (the gateway)
/// about itself; the gateway's clients get the gateway's, never an upstream's.
pub const HOP_META_KEYS: &[&str] = &["io.modelcontextprotocol/serverInfo"];

/// Request `_meta` keys that describe the client's own hop (its 2026-07-28
/// lifecycle); an upstream session has its own, negotiated by the gateway.
pub const REQUEST_HOP_META_KEYS: &[&str] = &[
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientInfo",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/logLevel",
];

/// What the client's negotiated revision needs from a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRevision {
    /// 2025-03-26, 2025-06-18 or 2025-11-25 (the initialize handshake).
    Session,
    /// 2026-07-28: stateless, self-describing results.
    Stateless,
}

/// Carries an upstream's result to a client of `revision`.
pub fn to_client(result: &mut ServerResult, revision: ClientRevision) {
    if let Some((meta, result_type)) = relayed_parts(result) {
        if let Some(object) = meta.as_mut() {
            for key in HOP_META_KEYS {
                object.remove(*key);
            }
            if object.is_empty() {
                *meta = None;
            }
        }
        if revision == ClientRevision::Stateless && result_type.is_none() {
            *result_type = Some(ResultType::COMPLETE);
        }
    }
    if revision == ClientRevision::Session
        && let ServerResult::ReadResourceResult(read) = result
    {
        // Cache hints exist from 2026-07-28 on; older clients never see them.
        read.ttl_ms = None;
        read.cache_scope = None;
    }
}

/// The `_meta` and `resultType` of the results the gateway relays from
/// one upstream (other results are the gateway's own).
fn relayed_parts(
    result: &mut ServerResult,
) -> Option<(
    &mut Option<rmcp::model::MetaObject>,
    &mut Option<ResultType>,
)> {
    Some(match result {
        ServerResult::CallToolResult(r) => (&mut r.meta, &mut r.result_type),
        ServerResult::ReadResourceResult(r) => (&mut r.meta, &mut r.result_type),
        ServerResult::GetPromptResult(r) => (&mut r.meta, &mut r.result_type),
        ServerResult::CompleteResult(r) => (&mut r.meta, &mut r.result_type),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolResult, CompleteResult, GetPromptResult, ReadResourceResult};
    use serde_json::{Value, json};

    /// Decodes `wire` as the typed result an upstream's answer becomes.
    fn decoded<T: serde::de::DeserializeOwned>(wire: Value) -> T {
        serde_json::from_value(wire).expect("a valid result")
    }

    fn sent(result: ServerResult, revision: ClientRevision) -> Value {
        let mut result = result;
        to_client(&mut result, revision);
        serde_json::to_value(result).expect("serializes")
    }

    #[test]
    fn a_2025_result_reaching_a_2026_client_says_it_is_complete() {
        let call: CallToolResult = decoded(json!({"content": [{"type": "text", "text": "hi"}]}));
        let prompt: GetPromptResult = decoded(json!({"messages": []}));
        let read: ReadResourceResult = decoded(json!({"contents": []}));
        let complete: CompleteResult = decoded(json!({"completion": {"values": ["a"]}}));
        for result in [
            ServerResult::CallToolResult(call),
            ServerResult::GetPromptResult(prompt),
            ServerResult::ReadResourceResult(read),
            ServerResult::CompleteResult(complete),
        ] {
            let wire = sent(result, ClientRevision::Stateless);
            assert_eq!(wire["resultType"], "complete", "{wire}");
        }
    }

    #[test]
    fn cache_hints_never_reach_a_2025_client() {
        let read: ReadResourceResult = decoded(json!({
            "contents": [], "resultType": "complete", "ttlMs": 5000, "cacheScope": "public"
        }));
        let wire = sent(
            ServerResult::ReadResourceResult(read),
            ClientRevision::Session,
        );
        assert!(
            wire.get("ttlMs").is_none() && wire.get("cacheScope").is_none(),
            "{wire}"
        );
    }
}
