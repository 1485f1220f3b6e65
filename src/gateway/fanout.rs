//! Calls to folded family tools: resolve the instance argument, then call
//! one member (its own result, unchanged) or several in parallel and merge
//! their answers into one result: a text section per instance in stable
//! order, and `structuredContent` `{"instances": {name: {"result"|"error"}}}`.
//!
//! One failing or slow member never sinks the others (each has its own
//! `spec.timeout`); the merged call is an error only when every member
//! failed. A total output budget truncates members fairly.

use std::sync::Arc;

use futures::StreamExt;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
    ContentBlock, ErrorData,
};
use serde_json::{Map, Value, json};
use tracing::Instrument as _;

use super::call_record::{CallRecord, member_target, outcome_of, outcome_of_result};
use super::confirm;
use super::forward::{call_response, forward};
use super::input_wait::{WaitingCalls, forward_or_wait};
use super::metrics::Outcome;
use super::settings::FanOutSettings;
use super::trace::{self, RequestTrace};
use super::view::View;
use crate::api::UserIdentity;
use crate::catalog::FamilyTool;
use crate::catalog::family::Instance;
use crate::catalog::select::{Selection, select};
use crate::fleet::limits::{fair_cap, truncate_at_char};
use crate::fleet::{Caller, UpstreamError};
use crate::policy::{self, Verdict};

fn tool_error(text: String) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(text)]))
}

/// Who calls, as the policy and the waiting calls need it.
pub struct CallerOf<'a> {
    pub user: Option<&'a UserIdentity>,
    /// Where a one-instance call of a 2026-07-28 client waits for its input.
    pub waiting: &'a WaitingCalls,
}

/// Handles a `tools/call` of a folded tool.
#[allow(clippy::too_many_arguments)]
pub async fn call_family_tool(
    settings: &FanOutSettings,
    view: &View,
    route: &Arc<FamilyTool>,
    mut request: CallToolRequestParams,
    caller: Caller<'_>,
    who: CallerOf<'_>,
    mut record: CallRecord,
    parent: Option<&RequestTrace>,
) -> Result<CallToolResponse, ErrorData> {
    let exposed = request.name.to_string();
    let mut arguments = request.arguments.take().unwrap_or_default();
    let value = arguments.remove(&route.instance_arg);
    let selection = match select(&route.members, value.as_ref(), &route.instance_arg) {
        Ok(selection) => selection,
        Err(error) => {
            record.finish(Outcome::ToolError);
            return Ok(tool_error(error.0));
        }
    };
    request.name = route.tool.clone().into();
    request.arguments = Some(arguments);
    let verdicts = view.member_verdicts(who.user, &exposed, route);
    match selection {
        Selection::One(index) => {
            let member = &route.members[index];
            let mut record = record.to(member_target(&exposed, route, member));
            let place = policy::place(Some(&member.instance), &member.server);
            let confirm = match &verdicts[index] {
                Verdict::Allow => None,
                Verdict::Confirm { rule } => {
                    record.under_rule(rule);
                    Some(confirm::question_text(&exposed, &place, rule))
                }
                denied @ Verdict::Deny { rule, .. } => {
                    record.under_rule(rule);
                    record.finish(Outcome::Denied);
                    return Ok(tool_error(
                        denied.denial(&exposed, &place).unwrap_or_default(),
                    ));
                }
            };
            let caller = Caller {
                instance: Some(member.instance.as_str()),
                ..caller
            };
            let waits = Some((who.waiting, confirm));
            let answer = call_member(view, member, route, request, caller, parent, waits).await;
            record.finish(outcome_of(&answer));
            match answer {
                Ok(response) => Ok(response),
                Err(UpstreamError::Rejected(data)) => Err(data),
                Err(error) => Ok(tool_error(error.to_string())),
            }
        }
        Selection::Many(selected) => {
            // The policy's exclusions: silently narrowed, then named in the result.
            let mut excluded = Vec::new();
            let mut indices = Vec::new();
            for index in selected {
                match &verdicts[index] {
                    Verdict::Allow => indices.push(index),
                    Verdict::Deny { rule, .. } => {
                        excluded.push((index, format!("denied by {rule}")))
                    }
                    Verdict::Confirm { rule } => excluded.push((
                        index,
                        format!(
                            "{rule} asks the user to confirm each call; call this instance alone"
                        ),
                    )),
                }
            }
            if indices.is_empty() {
                record.finish(Outcome::Denied);
                return Ok(tool_error(format!(
                    "Denied by policy on every selected instance: {}.",
                    exclusions(route, &excluded)
                )));
            }
            if route.destructive && !settings.allow_destructive && indices.len() > 1 {
                let names: Vec<&str> = indices
                    .iter()
                    .map(|i| route.members[*i].instance.as_str())
                    .collect();
                record.finish(Outcome::Denied);
                return Ok(tool_error(format!(
                    "{} may change state (it is not annotated readOnlyHint, or is destructiveHint), so the gateway does not run it on several instances at once. Call it once per instance, naming one of: {}.",
                    route.tool,
                    names.join(", ")
                )));
            }

            record.fan_out(indices.len());
            let shared = &record;
            let exposed = exposed.as_str();
            let outcomes: Vec<(usize, Result<CallToolResult, String>)> =
                futures::stream::iter(indices.into_iter().map(|index| {
                    let member = &route.members[index];
                    let request = request.clone();
                    let caller = Caller {
                        relay_progress: false,
                        instance: Some(member.instance.as_str()),
                        ..caller
                    };
                    async move {
                        let started = std::time::Instant::now();
                        let answer =
                            call_member(view, member, route, request, caller, parent, None).await;
                        shared.target_done(
                            &member_target(exposed, route, member),
                            outcome_of(&answer),
                            started.elapsed(),
                        );
                        let outcome = match answer
                        {
                            Ok(CallToolResponse::Complete(result)) => Ok(result),
                            Ok(_) => Err(
                                "the server asked for input mid-call, which fan-out cannot relay; call this instance alone".to_string(),
                            ),
                            Err(error) => Err(error.to_string()),
                        };
                        (index, outcome)
                    }
                }))
                .buffer_unordered(settings.max_concurrency.max(1))
                .collect()
                .await;
            let mut merged = merge(route, outcomes, settings.output_budget);
            if !excluded.is_empty() {
                note_exclusions(&mut merged, route, &excluded);
            }
            let outcome = outcome_of_result(&merged);
            record.finish(outcome);
            Ok(CallToolResponse::Complete(merged))
        }
    }
}

/// `prod-a (why), prod-b (why)`.
fn exclusions(route: &FamilyTool, excluded: &[(usize, String)]) -> String {
    let named: Vec<String> = excluded
        .iter()
        .map(|(i, why)| format!("{} ({why})", route.members[*i].instance))
        .collect();
    named.join(", ")
}

/// Says in a merged result which instances the policy left out: a text
/// block, and `excluded` (`{instance: why}`) in its structured content.
fn note_exclusions(merged: &mut CallToolResult, route: &FamilyTool, excluded: &[(usize, String)]) {
    merged.content.push(ContentBlock::text(format!(
        "Not run on {} instance(s) excluded by policy: {}.",
        excluded.len(),
        exclusions(route, excluded)
    )));
    if let Some(Value::Object(structured)) = merged.structured_content.as_mut() {
        let reasons: Map<String, Value> = excluded
            .iter()
            .map(|(i, why)| (route.members[*i].instance.clone(), json!(why)))
            .collect();
        structured.insert("excluded".into(), Value::Object(reasons));
    }
}

/// One member's call, in a span of its own under the request's. With
/// `waits` (a call to one instance), a 2026-07-28 client can be asked
/// mid-call, and first to confirm it when a policy rule says so.
async fn call_member(
    view: &View,
    member: &Instance,
    route: &FamilyTool,
    mut request: CallToolRequestParams,
    caller: Caller<'_>,
    parent: Option<&RequestTrace>,
    waits: Option<(&WaitingCalls, Option<String>)>,
) -> Result<CallToolResponse, UpstreamError> {
    let server = &*member.server;
    let Some(upstream) = view.upstream(server) else {
        return Err(UpstreamError::Transport {
            server: server.to_string(),
            message: "it was removed from the fleet".into(),
        });
    };
    let span = trace::upstream_span(
        parent,
        &upstream,
        Some(&member.instance),
        "tools/call",
        Some(&route.tool),
    );
    if let Some(headers) = trace::outgoing(&span) {
        trace::into_meta(&mut request.meta, &headers);
    }
    let sent = ClientRequest::CallToolRequest(CallToolRequest::new(request));
    let answer = match waits {
        Some((waiting, confirm)) => {
            forward_or_wait(waiting, &upstream, sent, caller, confirm)
                .instrument(span)
                .await?
        }
        None => forward(&upstream, sent, caller).instrument(span).await?,
    };
    call_response(server, answer)
}

fn text_of(result: &CallToolResult) -> (String, usize) {
    let mut text = Vec::new();
    let mut other = 0;
    for block in &result.content {
        match block.as_text() {
            Some(t) => text.push(t.text.as_str()),
            None => other += 1,
        }
    }
    (text.join("\n"), other)
}

/// One merged result from every member's outcome.
fn merge(
    route: &FamilyTool,
    mut outcomes: Vec<(usize, Result<CallToolResult, String>)>,
    budget: usize,
) -> CallToolResult {
    outcomes.sort_by_key(|a| a.0);
    let bodies: Vec<(String, usize, bool)> = outcomes
        .iter()
        .map(|(_, outcome)| match outcome {
            Ok(result) if result.is_error != Some(true) => {
                let (text, other) = text_of(result);
                (text, other, true)
            }
            Ok(result) => (text_of(result).0, 0, false),
            Err(message) => (message.clone(), 0, false),
        })
        .collect();
    let cap = fair_cap(
        &bodies.iter().map(|b| b.0.len()).collect::<Vec<_>>(),
        budget,
    );
    let failed: Vec<&str> = outcomes
        .iter()
        .zip(&bodies)
        .filter(|(_, b)| !b.2)
        .map(|((i, _), _)| route.members[*i].instance.as_str())
        .collect();
    let mut sections = vec![format!(
        "{} on {} instance(s): {} succeeded{}",
        route.tool,
        outcomes.len(),
        outcomes.len() - failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed ({})", failed.len(), failed.join(", "))
        }
    )];
    let mut instances = Map::new();
    let mut any_truncated = false;
    for ((index, outcome), (body, other, ok)) in outcomes.iter().zip(&bodies) {
        let member = &route.members[*index];
        let shown = truncate_at_char(body, cap);
        let truncated = shown.len() < body.len();
        any_truncated |= truncated;
        let mut section = format!("## {} ({})\n", member.instance, member.server);
        if !ok {
            section.push_str("error: ");
        }
        section.push_str(shown);
        if truncated {
            section.push_str(&format!(
                "\n[truncated: {} of {} bytes omitted to fit the output budget]",
                body.len() - shown.len(),
                body.len()
            ));
        }
        if *other > 0 {
            section.push_str(&format!("\n[{other} non-text content block(s) omitted; call this instance alone to get them]"));
        }
        sections.push(section);
        let mut entry = Map::new();
        entry.insert("server".into(), json!(member.server.as_ref()));
        match outcome {
            Ok(result) if *ok && !truncated => {
                let value = result
                    .structured_content
                    .clone()
                    .unwrap_or_else(|| json!(body));
                entry.insert("result".into(), value);
            }
            _ if *ok => {
                entry.insert("result".into(), json!(shown));
                entry.insert("truncated".into(), json!(true));
            }
            _ => {
                entry.insert("error".into(), json!(shown));
                if truncated {
                    entry.insert("truncated".into(), json!(true));
                }
            }
        }
        instances.insert(member.instance.clone(), Value::Object(entry));
    }
    if any_truncated {
        sections.push(format!(
            "Output was truncated to about {budget} bytes in total. Select fewer instances with `{}` (a name, a list, or a label selector such as \"env=prod\") or narrow the request.",
            route.instance_arg
        ));
    }
    let mut result = CallToolResult::success(vec![ContentBlock::text(sections.join("\n\n"))]);
    result.structured_content = Some(json!({ "instances": instances }));
    result.is_error = Some(failed.len() == outcomes.len());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Instance;

    fn route() -> FamilyTool {
        let member = |name: &str| Instance {
            server: format!("{name}-mcp").into(),
            instance: name.into(),
            aliases: vec![],
            labels: Default::default(),
        };
        FamilyTool {
            family: "k8s".into(),
            tool: "get_events".into(),
            instance_arg: "cluster".into(),
            members: vec![member("a"), member("b"), member("c")],
            destructive: false,
        }
    }

    #[test]
    fn merged_results_keep_order_mark_failures_and_respect_the_budget() {
        let ok = |t: &str| Ok(CallToolResult::success(vec![ContentBlock::text(t)]));
        let outcomes = vec![
            (
                2,
                Err("server \"c-mcp\" did not answer within 1s".to_string()),
            ),
            (0, ok("short")),
            (1, ok(&"x".repeat(5000))),
        ];
        let merged = merge(&route(), outcomes, 1000);
        assert_eq!(merged.is_error, Some(false), "partial success is success");
        let text = merged.content[0].as_text().unwrap().text.clone();
        let a = text.find("## a (a-mcp)").unwrap();
        let b = text.find("## b (b-mcp)").unwrap();
        let c = text.find("## c (c-mcp)\nerror: server").unwrap();
        assert!(a < b && b < c, "stable order");
        assert!(text.contains("1 failed (c)"));
        assert!(text.contains("truncated"));
        assert!(text.len() < 1700, "budget respected: {}", text.len());
        let instances = &merged.structured_content.unwrap()["instances"];
        assert_eq!(instances["a"]["result"], "short");
        assert_eq!(instances["b"]["truncated"], true);
        assert!(
            instances["c"]["error"]
                .as_str()
                .unwrap()
                .contains("did not answer")
        );
        let all_failed = merge(&route(), vec![(0, Err("down".into()))], 1000);
        assert_eq!(all_failed.is_error, Some(true));
    }
}
