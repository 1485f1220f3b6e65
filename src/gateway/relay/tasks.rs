//! Tasks through the gateway: the 2025-11-25 revision's, and the tasks
//! extension of 2026-07-28 (SEP-2663, `io.modelcontextprotocol/tasks`).
//!
//! A task-augmented `tools/call` is relayed like any call: its `task` member
//! passes through, and the upstream answers with a `CreateTaskResult` whose
//! task id it made up. The relay notes which upstream owns that id and for
//! whom, so `tasks/get`, `tasks/result` and `tasks/cancel` reach that
//! upstream, and only for the caller that created the task: an upstream
//! session may be shared by every user of the gateway, and another caller's
//! id is answered as an unknown task, as the upstream would. `tasks/list`
//! is answered by the gateway: an upstream's list would hold every caller's
//! tasks, so the caller gets what `tasks/get` says now of each task it
//! created (at most [`MAX_LISTED`], newest first is not promised; a task
//! its upstream no longer knows is left out).
//!
//! A client is offered `tasks` (cancel, task-augmented `tools/call`) in its
//! `initialize` answer when its view has a tool whose `execution` allows
//! tasks; rmcp's model of capabilities has no place for it, so the member is
//! added to the JSON answer.
//!
//! The extension: a client that declares it (a 2026-07-28 request's
//! `_meta` client capabilities, or a session's `initialize`) may get a
//! task handle (`resultType: "task"`, the task's fields at the top of the
//! result) in place of a `tools/call` result, from an upstream that
//! announced the extension. The upstream's session was opened for every
//! client, without it, so each `tools/call` and `tasks/*` request of such a
//! client says so in its own `_meta` (`relay::message`); a client that did
//! not declare it never makes the upstream hand out a task. The handle is
//! noted like a 2025-11-25 task, and `tasks/get`, `tasks/update` and
//! `tasks/cancel` go to its upstream for the caller that created it; what
//! they answer (status, `inputRequests`, the result) passes unchanged. The
//! extension is offered (`capabilities.extensions`) at `initialize` and
//! `server/discover` when a server of the caller's view announced it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

use super::ClientSide;
use crate::api::UserIdentity;

/// The methods that name a task, routed to its upstream (`tasks/result`
/// is 2025-11-25's, `tasks/update` the extension's).
pub(super) const TASK_METHODS: &[&str] =
    &["tasks/get", "tasks/result", "tasks/cancel", "tasks/update"];

/// The most tasks one `tasks/list` answer holds (no cursor is given).
pub(super) const MAX_LISTED: usize = 100;

/// How long a task is remembered at most (an upstream's `ttl` may be shorter).
const REMEMBERED: Duration = Duration::from_secs(24 * 3600);

/// The owner of tasks created by 2026-07-28 clients without auth.
pub(super) const ANONYMOUS: &str = "anonymous";

/// Who may see a task: a logged-in user, or (without auth) a session. A
/// 2026-07-28 client without auth has neither: its tasks are found by id
/// alone, as on an upstream without auth (ids are the upstream's own, made
/// to be unguessable).
pub(super) fn owner(user: Option<&Arc<UserIdentity>>, client: &ClientSide) -> Option<String> {
    match (user, &client.session) {
        (Some(user), _) => Some(format!("user\0{}\0{}", user.key.issuer, user.key.subject)),
        (None, Some(session)) => Some(format!("session\0{session}")),
        (None, None) => Some(ANONYMOUS.into()),
    }
}

/// Which upstream owns each task, per owner (bounded).
pub(super) struct TaskOwners {
    servers: moka::sync::Cache<(String, String), Arc<str>>,
}

impl Default for TaskOwners {
    fn default() -> Self {
        Self {
            servers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REMEMBERED)
                .build(),
        }
    }
}

impl TaskOwners {
    /// Remembers the task a `tools/call` answer (as sent to the client) created.
    pub(super) fn note(&self, owner: &str, server: &Arc<str>, answer: &str) {
        if !answer.contains("\"taskId\"") {
            return;
        }
        let Ok(answer) = serde_json::from_str::<Value>(answer) else {
            return;
        };
        // 2025-11-25 nests the task; the extension's handle is the result
        // itself, marked `resultType: "task"`.
        let id = match answer.pointer("/result/resultType").and_then(Value::as_str) {
            Some("task") => answer.pointer("/result/taskId"),
            _ => answer.pointer("/result/task/taskId"),
        };
        if let Some(id) = id.and_then(Value::as_str) {
            self.servers
                .insert((owner.to_string(), id.to_string()), server.clone());
        }
    }

    /// The upstream that owns `task_id` for `owner`.
    pub(super) fn server(&self, owner: &str, task_id: &str) -> Option<Arc<str>> {
        self.servers.get(&(owner.to_string(), task_id.to_string()))
    }

    /// The tasks `owner` created and their upstreams, at most `limit`.
    pub(super) fn of_owner(&self, owner: &str, limit: usize) -> Vec<(String, Arc<str>)> {
        self.servers
            .iter()
            .filter(|(key, _)| key.0 == owner)
            .take(limit)
            .map(|(key, server)| (key.1.clone(), server))
            .collect()
    }
}

/// The `taskId` a tasks request names.
pub(super) fn task_id(params: Option<&RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "taskId")]
        task_id: String,
    }
    serde_json::from_str::<Named>(params?.get())
        .ok()
        .map(|n| n.task_id)
}

/// Which tasks an `initialize` or `server/discover` answer offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Offer {
    /// 2025-11-25's `tasks` capability.
    pub core: bool,
    /// The extension, `extensions["io.modelcontextprotocol/tasks"]`.
    pub extension: bool,
}

/// An `initialize` or `server/discover` answer, as JSON or as the SSE
/// events rmcp frames it in, offering tasks.
pub(super) fn offer_tasks_in(body: &[u8], sse: bool, offer: Offer) -> Option<Vec<u8>> {
    if !sse {
        return offer_tasks(body, offer);
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let offered = line
            .strip_prefix("data:")
            .filter(|data| data.contains("\"capabilities\""))
            .and_then(|data| offer_tasks(data.trim().as_bytes(), offer))
            .and_then(|json| String::from_utf8(json).ok());
        match offered {
            Some(json) => {
                out.push_str("data: ");
                out.push_str(&json);
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    Some(out.into_bytes())
}

/// An answer with capabilities offering tasks; `None` when it is not one.
fn offer_tasks(answer: &[u8], offer: Offer) -> Option<Vec<u8>> {
    let mut answer: Value = serde_json::from_slice(answer).ok()?;
    let capabilities = answer
        .pointer_mut("/result/capabilities")?
        .as_object_mut()?;
    if offer.core {
        capabilities.insert(
            "tasks".into(),
            serde_json::json!({"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}),
        );
    }
    if offer.extension {
        let extensions = capabilities
            .entry("extensions")
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()?;
        extensions.insert(
            rmcp::model::TASKS_EXTENSION_ID.into(),
            Value::Object(Default::default()),
        );
    }
    serde_json::to_vec(&answer).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_found_only_by_the_owner_that_created_it() {
        let owners = TaskOwners::default();
        let server: Arc<str> = "everything".into();
        let created =
            r#"{"jsonrpc":"2.0","id":3,"result":{"task":{"taskId":"t-1","status":"working"}}}"#;
        owners.note("alice", &server, created);
        owners.note(
            "alice",
            &server,
            r#"{"jsonrpc":"2.0","id":4,"result":{"content":[]}}"#,
        );
        // The extension's handle (SEP-2663), as a 2026-07-28 client gets it.
        owners.note(
            "alice",
            &server,
            r#"{"jsonrpc":"2.0","id":5,"result":{"resultType":"task","taskId":"t-9","status":"working"}}"#,
        );
        assert_eq!(owners.server("alice", "t-9").as_deref(), Some("everything"));
        // A task's own answer names it too, and creates nothing.
        owners.note(
            "alice",
            &server,
            r#"{"jsonrpc":"2.0","id":6,"result":{"resultType":"complete","taskId":"t-10","status":"completed"}}"#,
        );
        assert_eq!(owners.server("alice", "t-10"), None);
        assert_eq!(owners.server("alice", "t-1").as_deref(), Some("everything"));
        assert_eq!(owners.server("bob", "t-1"), None);
        assert_eq!(owners.server("alice", "t-2"), None);
        let mut listed = owners.of_owner("alice", MAX_LISTED);
        listed.sort();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].0, "t-1");
        assert!(owners.of_owner("bob", MAX_LISTED).is_empty());
    }

    #[test]
    fn tasks_are_offered_in_an_initialize_answer_and_nothing_else_changes() {
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{"listChanged":true}},"serverInfo":{"name":"flotilla","version":"1"}}}"#;
        let core = Offer {
            core: true,
            extension: false,
        };
        let offered: Value = serde_json::from_slice(&offer_tasks(answer, core).unwrap()).unwrap();
        assert_eq!(
            offered["result"]["capabilities"]["tasks"]["requests"]["tools"]["call"],
            serde_json::json!({})
        );
        assert_eq!(
            offered["result"]["capabilities"]["tools"]["listChanged"],
            true
        );
        assert_eq!(offered["result"]["serverInfo"]["name"], "flotilla");
        assert!(
            offer_tasks(
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
                core
            )
            .is_none()
        );
        // rmcp frames a session's initialize answer as SSE, after a priming event.
        let sse = format!(
            "data: \nid: 0\nretry: 3000\n\ndata: {}\n\n",
            std::str::from_utf8(answer).unwrap()
        );
        let offered =
            String::from_utf8(offer_tasks_in(sse.as_bytes(), true, core).unwrap()).unwrap();
        assert!(
            offered.starts_with("data: \nid: 0\nretry: 3000\n\ndata: {"),
            "{offered}"
        );
        assert!(
            offered.contains(r#""tasks":{"#) && offered.ends_with("}\n\n"),
            "{offered}"
        );
        assert!(!offered.contains("extensions"), "{offered}");
    }

    #[test]
    fn the_extension_is_offered_beside_what_the_answer_already_has() {
        let discover = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","supportedVersions":["2026-07-28"],"capabilities":{"tools":{},"extensions":{"vendor/x":{"a":1}}},"serverInfo":{"name":"flotilla","version":"1"}}}"#;
        let extension = Offer {
            core: false,
            extension: true,
        };
        let offered: Value =
            serde_json::from_slice(&offer_tasks(discover, extension).unwrap()).unwrap();
        let capabilities = &offered["result"]["capabilities"];
        assert_eq!(
            capabilities["extensions"],
            serde_json::json!({"vendor/x": {"a": 1}, "io.modelcontextprotocol/tasks": {}})
        );
        assert_eq!(capabilities["tasks"], Value::Null);
        assert_eq!(offered["result"]["supportedVersions"][0], "2026-07-28");
    }
}
