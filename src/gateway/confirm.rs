//! `confirm` policy rules: before a destructive call runs, the gateway asks
//! the user through elicitation (a form with one boolean, `confirm`) and
//! runs the call only when the user accepts with it set. A client that
//! cannot be asked (it offers no elicitation), declines or cancels gets a
//! tool error saying so; the upstream never sees the call.
//!
//! A 2025 session client is asked on the call's own stream; a 2026-07-28
//! client gets `input_required` from the waiting call (`input_wait`), whose
//! question this is, and its retry with the answer lets the call go on.

use rmcp::model::{InputRequest, InputRequiredResult};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::forward::client_revision;
use super::input_rounds::ask_client;
use super::revision::ClientRevision;
use crate::fleet::{Caller, LineMessage};

/// The key of the question in `inputRequests`.
const KEY: &str = "flotilla-confirm";

/// What the user is asked before `tool` runs on `place` under `rule`.
pub fn question_text(tool: &str, place: &str, rule: &crate::policy::RuleName) -> String {
    format!("Confirm: run {tool} on {place}? It may change or delete state; {rule} asks you first.")
}

fn question(text: &str) -> Option<InputRequest> {
    serde_json::from_value(json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": text,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "confirm": {
                        "type": "boolean",
                        "title": "Run it",
                        "description": "Set to true to run the call.",
                        "default": false
                    }
                },
                "required": ["confirm"]
            }
        }
    }))
    .ok()
}

/// Whether the client of `caller` said it can answer an elicitation.
fn can_elicit(caller: &Caller<'_>) -> bool {
    let context = caller.context;
    if client_revision(context) == ClientRevision::Stateless {
        return context
            .meta
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some());
    }
    context
        .peer
        .peer_info()
        .is_some_and(|info| info.capabilities.elicitation.is_some())
}

/// Asks the user to confirm; `Err` says why the call does not run.
pub async fn confirm(caller: &Caller<'_>, text: &str) -> Result<(), String> {
    let refused = |why: &str| format!("Not run: {why}. ({text})");
    if !can_elicit(caller) {
        return Err(refused(
            "a policy rule asks the user to confirm this call, and this client cannot be asked (it offers no elicitation)",
        ));
    }
    let request = question(text).ok_or_else(|| refused("the question could not be built"))?;
    let answer = match caller.asking {
        // A 2026-07-28 client, within a waiting call: input_required.
        Some(line) => {
            let (answer, answered) = oneshot::channel();
            let message = serde_json::to_value(&request).unwrap_or(Value::Null);
            line.send(LineMessage {
                message,
                answer: Some(answer),
            })
            .await
            .map_err(|_| refused("the call ended before the user answered"))?;
            answered
                .await
                .map_err(|_| refused("the call ended before the user answered"))?
                .map_err(|why| refused(&why))?
        }
        None if client_revision(caller.context) == ClientRevision::Stateless => {
            return Err(refused("this call cannot wait for the user's answer"));
        }
        None => {
            let asked = InputRequiredResult::new(
                Some([(KEY.to_string(), request)].into_iter().collect()),
                None,
            );
            let mut answers = ask_client(caller.context, "flotilla", &asked)
                .await
                .map_err(|error| refused(&error.to_string()))?;
            answers
                .remove(KEY)
                .and_then(|a| serde_json::to_value(a).ok())
                .unwrap_or(Value::Null)
        }
    };
    if accepted(&answer) {
        Ok(())
    } else {
        Err(refused("the user did not confirm it"))
    }
}

/// An elicitation answer that accepts with `confirm: true`.
fn accepted(answer: &Value) -> bool {
    answer.get("action").and_then(Value::as_str) == Some("accept")
        && answer.pointer("/content/confirm") == Some(&Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_acceptance_with_confirm_true_runs_the_call() {
        for (answer, runs) in [
            (
                json!({"action": "accept", "content": {"confirm": true}}),
                true,
            ),
            (
                json!({"action": "accept", "content": {"confirm": false}}),
                false,
            ),
            (json!({"action": "accept", "content": {}}), false),
            (
                json!({"action": "accept", "content": {"confirm": "true"}}),
                false,
            ),
            (json!({"action": "decline"}), false),
            (json!({"action": "cancel"}), false),
            (Value::Null, false),
        ] {
            assert_eq!(accepted(&answer), runs, "{answer}");
        }
    }

    #[test]
    fn the_question_is_a_form_elicitation() {
        let request = question("Confirm?").expect("builds");
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["method"], "elicitation/create");
        assert_eq!(value["params"]["message"], "Confirm?");
        assert_eq!(
            value["params"]["requestedSchema"]["properties"]["confirm"]["type"],
            "boolean"
        );
    }
}
