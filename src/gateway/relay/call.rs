//! One relayed request (`tools/call`, `prompts/get`, `resources/read`,
//! `completion/complete`):
//! routed by the catalog to one upstream, sent on its wire, answered as
//! JSON, or as the SSE stream of `stream` when the upstream streams or asks
//! something first.

#![allow(deprecated)] // log levels (SEP-2577) are still spoken by 2025 servers and clients

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::response::Response;
use futures::StreamExt;
use rmcp::model::LoggingLevel;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::answer::{Pending, failure};
use super::message::{self, Lifecycle, Message};
use super::stream::{OutputLimit, Stream, cancel_upstream, until};
use super::{ClientSide, Relay, Running, answer_response, input, json_response, tasks};
use crate::api::UserIdentity;
use crate::catalog::Catalog;
use crate::catalog::select::{Selection, select};
use crate::fleet::wire::{WireError, WireReply};
use crate::fleet::{LineMessage, severity};
use crate::gateway::call_record::{CallRecord, member_target, outcome_of_json, plain_target};
use crate::gateway::metrics::{CallTarget, Outcome};
use crate::gateway::overview;
use crate::gateway::revision::ClientRevision;
use crate::gateway::trace::{self, RequestTrace};
use crate::policy::{self, Verdict};

/// The methods the relay forwards, each to one upstream.
pub(super) const RELAYED: &[&str] = &[
    "tools/call",
    "prompts/get",
    "resources/read",
    "completion/complete",
];

/// Relays `message` if the relay takes it; `None` hands it to rmcp's
/// handler untouched.
pub(super) async fn relay_call(
    relay: &Arc<Relay>,
    client: &ClientSide,
    parts: &Parts,
    message: &Message<'_>,
) -> Option<Response> {
    let method = message.method.as_deref()?;
    if method == "tasks/list" {
        let user = parts.extensions.get::<Arc<UserIdentity>>();
        // Never every anonymous caller's tasks at once.
        let owner = tasks::owner(user, client).filter(|owner| owner != tasks::ANONYMOUS)?;
        let view = relay.state.view(user).await;
        let id = message.id.clone()?;
        return Some(list_tasks(relay, &view, &owner, &id, client.revision).await);
    }
    let call = message::peek_call(message.params)?;
    let user = parts.extensions.get::<Arc<UserIdentity>>();
    let view = relay.state.view(user).await;
    let catalog = &view.catalog;
    let owner = tasks::owner(user, client);
    if client.revision == ClientRevision::Stateless
        && let Some(state) = call.request_state.as_deref()
        && relay.parked.is_ours(state)
    {
        let caller = owner.as_deref();
        return Some(input::resume(relay, client, caller, method, message, state).await);
    }
    let owner_of_call = owner.clone();
    let target = if tasks::TASK_METHODS.contains(&method) {
        let task = tasks::task_id(message.params)?;
        let Some(server) = relay.tasks.server(owner.as_deref()?, &task) else {
            // Unknown here, or another caller's: as an upstream answers it.
            let text = format!("Task not found: no task {task:?} of this caller");
            return Some(json_response(
                serde_json::json!({"jsonrpc": "2.0", "id": message.id,
                    "error": {"code": -32602, "message": text}})
                .to_string(),
            ));
        };
        Target {
            server: server.clone(),
            instance: None,
            name: None,
            drop_argument: None,
            label: server,
            counted: None,
        }
    } else {
        target(catalog, method, &call, message)?
    };
    if let Some(counted) = &target.counted {
        let tool = target.name.unwrap_or_default();
        match view.verdict(user.map(|u| &**u), &counted.tool, &target.server, tool) {
            Verdict::Allow => {}
            // The user is asked first, on rmcp's path (`gateway::confirm`).
            Verdict::Confirm { .. } => return None,
            denied @ Verdict::Deny { .. } => {
                let place = policy::place(target.instance, &target.server);
                let text = denied.denial(&counted.tool, &place).unwrap_or_default();
                let trace_id = parts
                    .extensions
                    .get::<RequestTrace>()
                    .map(|t| t.trace_id.clone());
                let mut record = start_record(relay, counted.clone(), user, message, trace_id);
                if let Verdict::Deny { rule, .. } = &denied {
                    record.under_rule(rule);
                }
                record.finish(Outcome::Denied);
                let id = message.id.clone()?;
                return Some(json_response(failure(method, &id, &text, client.revision)));
            }
        }
    }
    // Where a task this call creates will be found again.
    let task_owner = owner
        .filter(|_| method == "tools/call")
        .map(|owner| (owner, target.server.clone()));
    let upstream = view.upstream(&target.server)?;
    // Only an upstream with a wire is relayed (checked again below, once
    // the call has its concurrency slot). One spoken to in 2026-07-28 only
    // for a 2026-07-28 client: a session client must be asked what the
    // upstream's `input_required` needs, on rmcp's path (`input_rounds`).
    let lifecycle_meta = upstream.wire()?.lifecycle_meta();
    if lifecycle_meta.is_some() && client.revision == ClientRevision::Session {
        return None;
    }
    let client_id = message.id.clone()?;
    let upstream_id = relay.next_id("flotilla-");
    let upstream_token = call
        .progress_token
        .as_ref()
        .map(|_| Value::String(relay.next_id("flotilla-progress-")));
    let outgoing = message::Outgoing {
        upstream_id: &upstream_id,
        name: target.name,
        progress_token: upstream_token.as_ref(),
        drop_argument: target.drop_argument,
        trace: None,
        // A task handle goes only to a client that can take one, from an
        // upstream that announced the extension.
        declare_tasks: client.offers.is_some_and(|offers| offers.tasks)
            && upstream.inventory().task_extension
            && (method == "tools/call" || tasks::TASK_METHODS.contains(&method)),
        lifecycle: lifecycle_meta.map(|meta| Lifecycle {
            meta,
            log_level: call.log_level.as_deref(),
        }),
    };
    let request_trace = parts.extensions.get::<RequestTrace>();
    if let (Some(trace), Some(counted)) = (request_trace, &target.counted) {
        trace.tool(&counted.tool);
    }
    let span = trace::upstream_span(
        request_trace,
        &upstream,
        target.instance,
        method,
        target.name,
    );
    let trace_headers = trace::outgoing(&span);
    let outgoing = message::Outgoing {
        trace: trace_headers.as_ref(),
        ..outgoing
    };
    let body = message::request_upstream(method, message.params, &outgoing)?;
    let label = target.label;
    let record = target.counted.map(|counted| {
        start_record(
            relay,
            counted,
            user,
            message,
            request_trace.map(|t| t.trace_id.clone()),
        )
    });
    tracing::debug!(server = %label, method, "relaying {method}");
    // The server's concurrency slot (`spec.limits`), held until the answer is in.
    let limits = upstream.call_limits();
    let slot = match upstream.admit(method).await {
        Ok(slot) => slot,
        Err(refused) => {
            tracing::info!(server = %upstream.name, method, "call refused at the server's concurrency limit");
            if let Some(record) = record {
                record.finish(Outcome::Overloaded);
            }
            let text = refused.to_string();
            return Some(json_response(failure(
                method,
                &client_id,
                &text,
                client.revision,
            )));
        }
    };
    // After a wait in the queue the session may have been replaced.
    let Some(wire) = upstream.wire() else {
        if let Some(record) = record {
            record.discard();
        }
        return None;
    };
    let limit = OutputLimit {
        server: upstream.name.clone(),
        max_bytes: limits.max_output_bytes.filter(|_| method == "tools/call"),
    };
    let deadline = limits
        .call_timeout
        .map(|after| (tokio::time::Instant::now() + after, after));
    let log_level = wanted_log_level(relay, client, call.log_level.as_deref());
    // A session client can be asked mid-call: register the call, so what the
    // upstream sends on its session's standalone stream reaches this client.
    let mut tracked = (client.revision == ClientRevision::Session)
        .then(|| upstream.track_relayed(target.instance.map(str::to_string), log_level));
    let post_wire = wire.clone();
    let body = Bytes::from(body);
    let mut post: Pending = Box::pin(
        async move { post_wire.post_in_trace(body, trace_headers.as_ref()).await }
            .instrument(span.clone()),
    );
    let first = match tracked.as_mut() {
        Some(call) => tokio::select! {
            reply = &mut post => First::Reply(reply),
            Some(message) = call.messages.recv() => First::Line(message),
            _ = until(deadline) => First::TimedOut,
        },
        None => tokio::select! {
            reply = &mut post => First::Reply(reply),
            _ = until(deadline) => First::TimedOut,
        },
    };
    let (events, pending, first_line) = match first {
        First::TimedOut => {
            if let Some(record) = record {
                record.finish(Outcome::Timeout);
            }
            cancel_upstream(&wire, &upstream_id, "timed out at the gateway").await;
            let after = deadline.map_or(0, |(_, after)| after.as_secs());
            let text = format!(
                "server {label:?} did not answer within {after}s (spec.limits.callTimeout)"
            );
            return Some(json_response(failure(
                method,
                &client_id,
                &text,
                client.revision,
            )));
        }
        First::Reply(Err(WireError::NotDelivered(why))) => {
            tracing::debug!(server = %label, why, "relay: not delivered; rmcp's path takes the call");
            // rmcp's path counts it.
            if let Some(record) = record {
                record.discard();
            }
            return None;
        }
        First::Reply(Err(WireError::Failed(why))) => {
            if let Some(record) = record {
                record.finish(Outcome::Unavailable);
            }
            let text = format!("server {label:?} failed the request: {why}");
            return Some(json_response(failure(
                method,
                &client_id,
                &text,
                client.revision,
            )));
        }
        First::Reply(Ok(WireReply::Json(bytes))) => {
            let text = std::str::from_utf8(&bytes).ok()?;
            let answer = Message::parse(text)?;
            let answer = message::response_to_client(
                &answer,
                method,
                &client_id,
                (client.revision, &label),
            )?;
            let answer = limit.apply(answer);
            if let Some((owner, server)) = &task_owner {
                relay.tasks.note(owner, server, &answer);
            }
            if let Some(record) = record {
                record.finish(outcome_of_json(&answer));
            }
            return Some(answer_response(answer, client.revision));
        }
        First::Reply(Ok(WireReply::Events(events))) => (events, None, None),
        // The upstream asks something before it answers: the client's
        // answer becomes a stream, and the upstream's reply joins it later.
        First::Line(message) => (futures::stream::empty().boxed(), Some(post), Some(message)),
    };
    let key = (
        client.session.clone().unwrap_or_default(),
        client_id.to_string(),
    );
    let cancel = CancellationToken::new();
    // A session client may cancel by notification; a 2026-07-28 request has
    // no session to tie such a notification to it, and cancels by leaving.
    if client.session.is_some() {
        relay.start(
            key.clone(),
            Running {
                wire: wire.clone(),
                upstream_id: upstream_id.clone(),
                cancel: cancel.clone(),
            },
        );
    }
    let stream = Stream {
        relay: relay.clone(),
        method: method.to_string(),
        key,
        wire,
        events,
        pending,
        first_line,
        tracked,
        upstream_id,
        client_id,
        client: client.clone(),
        client_token: call.progress_token,
        task_owner,
        caller: owner_of_call,
        waiting: None,
        upstream_token,
        label,
        log_level: log_level.map(severity),
        timeout: deadline.map_or_else(|| upstream.timeout(), |(_, after)| after),
        deadline,
        limit,
        _slot: slot,
        cancel,
        done: false,
        asks: Vec::new(),
        last_event: None,
        retry: None,
        resumed: 0,
        record,
        failed: None,
        _span: span,
    };
    Some(stream.respond().await)
}

/// The record of a tool call to `counted` (its arguments hashed for the
/// audit log, when that is on).
fn start_record(
    relay: &Relay,
    counted: CallTarget,
    user: Option<&Arc<UserIdentity>>,
    message: &Message<'_>,
    trace_id: Option<String>,
) -> CallRecord {
    let calls = &relay.state.calls;
    let arguments = calls
        .audit
        .enabled()
        .then(|| message::arguments(message.params))
        .flatten();
    CallRecord::start(calls, &counted.tool, user.map(|u| &**u), arguments.as_ref())
        .in_trace(trace_id)
        .to(counted)
}

/// `tasks/list` for `owner`: what each task it created says now
/// (`tasks/get` at its upstream, all at once), in one answer.
async fn list_tasks(
    relay: &Relay,
    view: &crate::gateway::view::View,
    owner: &str,
    client_id: &Value,
    revision: ClientRevision,
) -> Response {
    let asks = relay
        .tasks
        .of_owner(owner, tasks::MAX_LISTED)
        .into_iter()
        .filter_map(|(task, server)| {
            let wire = view.upstream(&server)?.wire()?;
            let id = relay.next_id("flotilla-");
            let body = wire.own_request(&id, "tasks/get", serde_json::json!({"taskId": task}));
            Some(async move {
                let answer = wire.call(body, &id).await.ok()?;
                let mut task = answer.get("result")?.clone();
                if let Some(object) = task.as_object_mut() {
                    object.remove("_meta");
                }
                Some(task)
            })
        });
    let listed: Vec<Value> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut result = serde_json::json!({"tasks": listed});
    if revision == ClientRevision::Stateless {
        result["resultType"] = "complete".into();
    }
    json_response(
        serde_json::json!({"jsonrpc": "2.0", "id": client_id, "result": result}).to_string(),
    )
}

/// What came first: the upstream's reply, or a message for the client.
enum First {
    Reply(Result<WireReply, WireError>),
    Line(LineMessage),
    /// `spec.limits.callTimeout` ran out first.
    TimedOut,
}

/// Where a relayed request goes.
struct Target<'c> {
    server: Arc<str>,
    /// The family instance, for a folded tool.
    instance: Option<&'c str>,
    /// The upstream's name for the tool or prompt.
    name: Option<&'c str>,
    /// A folded tool's instance argument, not sent on.
    drop_argument: Option<&'c str>,
    /// Who is named in relayed logs and questions: the server, or the instance.
    label: Arc<str>,
    /// Where a tool call goes, as metrics and the audit log name it.
    counted: Option<CallTarget>,
}

/// The one upstream a request is for, by the catalog; `None` for what the
/// relay does not take (the gateway's own tool, a fan-out, an unknown name).
fn target<'c>(
    catalog: &'c Catalog,
    method: &str,
    call: &message::CallPeek,
    message: &Message<'_>,
) -> Option<Target<'c>> {
    let plain = |server: &Arc<str>, name: Option<&'c str>| Target {
        server: server.clone(),
        instance: None,
        name,
        drop_argument: None,
        label: server.clone(),
        counted: None,
    };
    match method {
        "tools/call" => {
            let name = call.name.as_deref()?;
            if name == overview::TOOL_NAME {
                return None;
            }
            if let Some(family) = catalog.family_tool(name) {
                let value = message::argument(message.params, &family.instance_arg);
                let Ok(Selection::One(index)) =
                    select(&family.members, value.as_ref(), &family.instance_arg)
                else {
                    return None;
                };
                let member = family.members.get(index)?;
                return Some(Target {
                    server: member.server.clone(),
                    instance: Some(member.instance.as_str()),
                    name: Some(family.tool.as_str()),
                    drop_argument: Some(family.instance_arg.as_str()),
                    label: member.instance.as_str().into(),
                    counted: Some(member_target(name, family, member)),
                });
            }
            let route = catalog.tool(name)?;
            Some(Target {
                counted: Some(plain_target(name, route)),
                ..plain(&route.server, Some(route.name.as_str()))
            })
        }
        "prompts/get" => {
            let route = catalog.prompt(call.name.as_deref()?)?;
            Some(plain(&route.server, Some(route.name.as_str())))
        }
        "resources/read" => Some(plain(catalog.resource_server(call.uri.as_deref()?)?, None)),
        "completion/complete" => match call.completes.as_ref()? {
            message::Completes::Prompt { name } => {
                let route = catalog.prompt(name)?;
                Some(plain(&route.server, Some(route.name.as_str())))
            }
            message::Completes::Resource { uri } => {
                Some(plain(catalog.resource_server(uri)?, None))
            }
        },
        _ => None,
    }
}

/// The least severe level the client wants relayed (`None`: no logs).
fn wanted_log_level(
    relay: &Relay,
    client: &ClientSide,
    asked: Option<&str>,
) -> Option<LoggingLevel> {
    if let Some(asked) = asked {
        return message::level_named(asked);
    }
    match (&client.session, client.revision) {
        (Some(session), ClientRevision::Session) => Some(
            relay
                .state
                .session_log_level(session)
                .unwrap_or(LoggingLevel::Debug),
        ),
        _ => None,
    }
}
