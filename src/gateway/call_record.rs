//! One client tool call as an operator sees it: which upstream tools it
//! reached, how long each took, how it ended. Each upstream call is counted
//! in the metrics as it ends; finishing the record writes the call's audit
//! line (and counts a fan-out). A record dropped unfinished was cancelled:
//! the client went away or cancelled, and the call is counted as such.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolResponse, CallToolResult, JsonObject};

use super::audit::{AuditCaller, AuditLine, AuditLog, AuditTarget, arguments_hash};
use super::metrics::{CallTarget, Metrics, Outcome};
use crate::api::UserIdentity;
use crate::catalog::family::Instance;
use crate::catalog::{FamilyTool, Route};
use crate::fleet::UpstreamError;

/// What every record reports to.
#[derive(Clone)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
}

/// One client tool call, open until it is finished (or dropped).
pub struct CallRecord {
    observer: Observer,
    started: Instant,
    tool: String,
    caller: Option<AuditCaller>,
    arguments_sha256: String,
    arguments: Option<serde_json::Value>,
    trace_id: Option<String>,
    /// The single upstream call still under way (a call to one upstream).
    pending: Option<CallTarget>,
    /// Upstream calls that have ended.
    done: Mutex<Vec<AuditTarget>>,
    fan_out: bool,
    /// The policy rule that denied the call or asked to confirm it.
    policy_rule: Option<String>,
    finished: bool,
}

impl CallRecord {
    /// A call of `tool` by `caller` with `arguments`, starting now.
    pub fn start(
        observer: &Observer,
        tool: &str,
        caller: Option<&UserIdentity>,
        arguments: Option<&JsonObject>,
    ) -> Self {
        let audit = &observer.audit;
        let (arguments_sha256, arguments) = if audit.enabled() {
            let kept = audit
                .include_arguments()
                .then(|| arguments.map(|a| serde_json::Value::Object(a.clone())))
                .flatten();
            (arguments_hash(arguments), kept)
        } else {
            (String::new(), None)
        };
        Self {
            observer: observer.clone(),
            started: Instant::now(),
            tool: tool.to_string(),
            caller: caller.map(audit_caller),
            arguments_sha256,
            arguments,
            trace_id: None,
            pending: None,
            done: Mutex::new(Vec::new()),
            fan_out: false,
            policy_rule: None,
            finished: false,
        }
    }

    /// The trace the call belongs to (named in its audit line).
    pub fn in_trace(mut self, trace_id: Option<String>) -> Self {
        self.trace_id = trace_id;
        self
    }

    /// The call goes to one upstream: `target`.
    pub fn to(mut self, target: CallTarget) -> Self {
        self.pending = Some(target);
        self
    }

    /// A policy rule decided the call (denied it, or had it confirmed).
    pub fn under_rule(&mut self, rule: &crate::policy::RuleName) {
        self.policy_rule = Some(format!("{}/{}", rule.policy, rule.rule));
    }

    /// The call goes to several instances (`width` of them).
    pub fn fan_out(&mut self, width: usize) {
        self.fan_out = true;
        self.observer.metrics.fanout(&self.tool, width);
    }

    /// One of the call's upstream calls ended (fan-out members).
    pub fn target_done(&self, target: &CallTarget, outcome: Outcome, took: Duration) {
        self.observer.metrics.tool_call(target, outcome, took);
        if let Ok(mut done) = self.done.lock() {
            done.push(audit_target(target, outcome, took));
        }
    }

    /// Another path serves the call and keeps its own record.
    pub fn discard(mut self) {
        self.finished = true;
    }

    /// The call ended with `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.close(outcome);
    }

    fn close(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        let took = self.started.elapsed();
        if let Some(target) = self.pending.take() {
            self.target_done(&target, outcome, took);
        }
        let audit = &self.observer.audit;
        if !audit.enabled() {
            return;
        }
        let targets = self.done.lock().map(|d| d.clone()).unwrap_or_default();
        audit.write(&AuditLine {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind: "tool_call",
            fan_out: self.fan_out,
            caller: self.caller.as_ref(),
            tool: &self.tool,
            outcome: outcome.as_str(),
            duration_ms: millis(took),
            targets: &targets,
            arguments_sha256: &self.arguments_sha256,
            arguments: self.arguments.as_ref(),
            trace_id: self.trace_id.as_deref(),
            policy_rule: self.policy_rule.as_deref(),
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.close(Outcome::Cancelled);
    }
}

fn millis(took: Duration) -> f64 {
    (took.as_secs_f64() * 1e6).round() / 1e3
}

fn audit_caller(user: &UserIdentity) -> AuditCaller {
    AuditCaller {
        issuer: user.key.issuer.clone(),
        subject: user.key.subject.clone(),
        name: user.display_name.clone(),
        client: user.client.clone(),
        groups: user.groups.clone(),
    }
}

fn audit_target(target: &CallTarget, outcome: Outcome, took: Duration) -> AuditTarget {
    AuditTarget {
        server: target.server.clone(),
        family: target.family.clone(),
        instance: target.instance.clone(),
        upstream_tool: target.upstream_tool.clone(),
        outcome: outcome.as_str(),
        duration_ms: millis(took),
    }
}

/// The target of a tool the catalog routes to one server.
pub fn plain_target(tool: &str, route: &Route) -> CallTarget {
    CallTarget {
        tool: tool.to_string(),
        upstream_tool: route.name.clone(),
        family: String::new(),
        server: route.server.to_string(),
        instance: String::new(),
    }
}

/// The target of a family tool on one of its members.
pub fn member_target(tool: &str, family: &FamilyTool, member: &Instance) -> CallTarget {
    CallTarget {
        tool: tool.to_string(),
        upstream_tool: family.tool.clone(),
        family: family.family.clone(),
        server: member.server.to_string(),
        instance: member.instance.clone(),
    }
}

/// How an upstream's answer ends a call, for a tool result.
pub fn outcome_of_result(result: &CallToolResult) -> Outcome {
    if result.is_error == Some(true) {
        Outcome::ToolError
    } else {
        Outcome::Ok
    }
}

/// How a call on rmcp's path ended, before its failures become tool errors.
pub fn outcome_of(answer: &Result<CallToolResponse, UpstreamError>) -> Outcome {
    match answer {
        Ok(CallToolResponse::Complete(result)) => outcome_of_result(result),
        Ok(_) => Outcome::InputRequired,
        Err(UpstreamError::Timeout { .. }) => Outcome::Timeout,
        Err(UpstreamError::Overloaded(_)) => Outcome::Overloaded,
        Err(UpstreamError::Rejected(_)) => Outcome::ProtocolError,
        Err(UpstreamError::NotConfirmed(_)) => Outcome::Denied,
        Err(_) => Outcome::Unavailable,
    }
}

/// How a relayed JSON-RPC response (as sent to the client) ended a call.
pub fn outcome_of_json(response: &str) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Response {
        result: Option<ResultPeek>,
        error: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ResultPeek {
        is_error: Option<bool>,
        result_type: Option<String>,
    }
    match serde_json::from_str::<Response>(response) {
        Ok(Response {
            result: Some(result),
            ..
        }) => match (result.is_error, result.result_type.as_deref()) {
            (_, Some("input_required")) => Outcome::InputRequired,
            (Some(true), _) => Outcome::ToolError,
            _ => Outcome::Ok,
        },
        Ok(Response { error: Some(_), .. }) => Outcome::ProtocolError,
        _ => Outcome::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_responses_are_classified_by_their_result() {
        let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#;
        let tool_error = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#;
        let protocol = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#;
        let asking = r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required"}}"#;
        assert_eq!(outcome_of_json(ok), Outcome::Ok);
        assert_eq!(outcome_of_json(tool_error), Outcome::ToolError);
        assert_eq!(outcome_of_json(protocol), Outcome::ProtocolError);
        assert_eq!(outcome_of_json(asking), Outcome::InputRequired);
    }

    fn observer() -> Observer {
        Observer {
            metrics: Arc::new(Metrics::default()),
            audit: Arc::new(AuditLog::off()),
        }
    }

    fn target(instance: &str) -> CallTarget {
        CallTarget {
            tool: "x_k8s_pods".into(),
            upstream_tool: "pods".into(),
            family: "k8s".into(),
            server: format!("k8s-{instance}"),
            instance: instance.into(),
        }
    }

    #[test]
    fn a_dropped_record_counts_as_cancelled_and_a_finished_one_once() {
        let observer = observer();
        let record = CallRecord::start(&observer, "x_k8s_pods", None, None).to(target("a"));
        drop(record);
        CallRecord::start(&observer, "x_k8s_pods", None, None)
            .to(target("b"))
            .finish(Outcome::Ok);
        let text = observer.metrics.encode();
        assert!(
            text.contains(r#"flotilla_tool_calls_total{tool="x_k8s_pods",upstream_tool="pods",family="k8s",server="k8s-a",family_instance="a",outcome="cancelled"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"flotilla_tool_calls_total{tool="x_k8s_pods",upstream_tool="pods",family="k8s",server="k8s-b",family_instance="b",outcome="ok"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_fan_out_counts_each_instance_and_its_width() {
        let observer = observer();
        let mut record = CallRecord::start(&observer, "x_k8s_pods", None, None);
        record.fan_out(2);
        record.target_done(&target("a"), Outcome::Ok, Duration::from_millis(3));
        record.target_done(&target("b"), Outcome::Timeout, Duration::from_secs(30));
        record.finish(Outcome::Ok);
        let text = observer.metrics.encode();
        assert!(
            text.contains(r#"family_instance="b",outcome="timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"flotilla_fanout_calls_total{tool="x_k8s_pods"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"flotilla_fanout_width_sum{tool="x_k8s_pods"} 2.0"#),
            "{text}"
        );
    }
}
