//! The tasks extension of 2026-07-28 (SEP-2663, `io.modelcontextprotocol/tasks`)
//! through the gateway, compared with the same requests sent to the server
//! directly: a task handle, `tasks/get` until the result, a question the task
//! asks (`input_required`, answered with `tasks/update`), `tasks/cancel`,
//! a client that did not declare the extension, and a task id asked for by a
//! caller that did not create it.
//!
//! The upstream is rmcp's task runtime (`rmcp::task_manager`, crates.io),
//! served in this test process on 127.0.0.1:0: rmcp implements the
//! extension's lifecycle (handles, polling, input, cancellation, the
//! capability checks); this file only declares two tools. The gateway holds a
//! 2025-11-25 session with it, so the extension crosses a revision on the way.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ContentBlock, CreateTaskResult, ElicitRequest, ElicitRequestParams, GetTaskParams,
    GetTaskResult, InputRequest, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool, UpdateTaskParams,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use crate::common::Fleet;
use crate::relay::{messages, open_session_declaring, send};

/// Two tools: `sum` (a task that answers after a moment, when the client
/// can take one; else at once, or after `ms` milliseconds) and `greet` (a task that asks the user's
/// name; only as a task).
#[derive(Clone, Default)]
struct TaskServer {
    tasks: TaskManager,
}

fn tool(name: &str) -> Tool {
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}});
    Tool::new(
        name.to_string(),
        format!("{name} (runs as a task)"),
        Arc::new(schema.as_object().cloned().unwrap_or_default()),
    )
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

fn ask_name() -> InputRequest {
    InputRequest::Elicitation(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: "What is your name?".into(),
            requested_schema: serde_json::from_value(json!({"type": "object",
                "properties": {"name": {"type": "string"}}, "required": ["name"]}))
            .expect("a schema"),
        },
    ))
}

impl ServerHandler for TaskServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(vec![
            tool("sum"),
            tool("greet"),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let declared = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        let arguments = request.arguments.unwrap_or_default();
        let number = |key: &str| arguments.get(key).and_then(Value::as_i64).unwrap_or(0);
        let options = TaskOptions::new().with_poll_interval_ms(20);
        match (request.name.as_ref(), declared) {
            ("sum", false) => {
                // `ms`: hold the answer that long (for bursts of calls in flight).
                let hold = Duration::from_millis(number("ms").max(0) as u64);
                tokio::time::sleep(hold).await;
                Ok(text((number("a") + number("b")).to_string()).into())
            }
            ("sum", true) => {
                let total = number("a") + number("b");
                let task = self.tasks.spawn(options, move |ctx| {
                    Box::pin(async move {
                        tokio::select! {
                            _ = ctx.cancelled() => Err(TaskExit::Cancelled),
                            _ = tokio::time::sleep(Duration::from_millis(400)) => Ok(text(total.to_string())),
                        }
                    })
                });
                Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
            }
            ("greet", true) => {
                let task = self.tasks.spawn(options, |ctx| {
                    Box::pin(async move {
                        let answer = ctx.request_input("name", ask_name()).await?;
                        let name = answer["content"]["name"].as_str().unwrap_or("?");
                        Ok(text(format!("hello {name}")))
                    })
                });
                Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
            }
            ("greet", false) => Err(McpError::missing_required_client_capability(
                ClientCapabilities::builder().enable_tasks().build(),
            )),
            (other, _) => Err(McpError::invalid_params(format!("no tool {other}"), None)),
        }
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        Ok(GetTaskResult::new(self.tasks.get_task(&request.task_id)?))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel_task(&request.task_id)
    }
}

/// `server` behind rmcp's Streamable HTTP service (2025 sessions and
/// 2026-07-28 requests), knowing no session yet.
fn service_of<H>(server: H) -> StreamableHttpService<H, LocalSessionManager>
where
    H: ServerHandler + Clone + Send + Sync + 'static,
{
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    )
}

/// Serves `router` on 127.0.0.1, port 0; returns its task and `/mcp` URL.
async fn serve(router: axum::Router) -> (tokio::task::JoinHandle<()>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the task server");
    let url = format!("http://{}/mcp", listener.local_addr().expect("its address"));
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (serving, url)
}

/// Serves [`TaskServer`] at `http://127.0.0.1:<port 0>/mcp` (2025 sessions
/// and 2026-07-28 requests) until the returned handle is dropped.
pub(crate) async fn task_server() -> (tokio::task::JoinHandle<()>, String) {
    serve(axum::Router::new().nest_service("/mcp", service_of(TaskServer::default()))).await
}

/// [`task_server`] behind an address that stays while the server behind it
/// can be restarted: calling the returned `restart` replaces it with a
/// fresh one, which knows none of the sessions opened before (as a server
/// restarted behind a stable address does).
pub(crate) async fn task_server_that_restarts()
-> (tokio::task::JoinHandle<()>, String, impl Fn() + use<>) {
    server_that_restarts(TaskServer::default).await
}

/// An rmcp server made by `make` (2025 sessions and 2026-07-28 requests),
/// behind an address that stays while `restart` replaces it with a fresh
/// one. The one replaced keeps the streams it had open: only new requests
/// reach the new one, which knows none of the earlier sessions.
pub(crate) async fn server_that_restarts<H, F>(
    make: F,
) -> (tokio::task::JoinHandle<()>, String, impl Fn() + use<H, F>)
where
    H: ServerHandler + Clone + Send + Sync + 'static,
    F: Fn() -> H + Send + Sync + 'static,
{
    let current = Arc::new(std::sync::Mutex::new(service_of(make())));
    let serving = current.clone();
    let handler = move |request: axum::extract::Request| {
        let service = serving.lock().expect("the current server").clone();
        async move { tower::ServiceExt::oneshot(service, request).await }
    };
    let (serving, url) =
        serve(axum::Router::new().route("/mcp", axum::routing::any(handler))).await;
    let restart = move || *current.lock().expect("the current server") = service_of(make());
    (serving, url, restart)
}

/// Stops the in-process server when the test ends, however it ends.
pub(crate) struct Serving(pub tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A 2026-07-28 client: every request describes itself; `tasks` says
/// whether it declares the extension.
struct Stateless {
    http: reqwest::Client,
    url: String,
    tasks: bool,
}

impl Stateless {
    async fn request(&self, method: &str, params: Value) -> Value {
        let (status, answer) = self.exchange(method, params).await;
        assert_eq!(status, 200, "{method}: {answer}");
        answer
    }

    /// The HTTP status and the JSON-RPC answer of one request.
    async fn exchange(&self, method: &str, params: Value) -> (u16, Value) {
        let mut capabilities = json!({"elicitation": {"form": {}}});
        if self.tasks {
            capabilities["extensions"] = json!({"io.modelcontextprotocol/tasks": {}});
        }
        let mut params = params;
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "task-tests", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": capabilities,
        });
        // Mcp-Name: the tool, or the task a tasks/* request names.
        let name = params["name"]
            .as_str()
            .or(params["taskId"].as_str())
            .map(str::to_string);
        let mut headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(name) = name.as_deref() {
            headers.push(("mcp-name", name));
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (status, _, body) = send(
            &self.http,
            reqwest::Method::POST,
            &self.url,
            &headers,
            Some(&body.to_string()),
        )
        .await;
        let answer = messages(&body).pop().unwrap_or_default();
        assert_eq!(answer["id"], 1, "{method}: {body}");
        (status, answer)
    }

    async fn call(&self, tool: &str, arguments: Value) -> Value {
        let params = json!({"name": tool, "arguments": arguments});
        self.request("tools/call", params).await
    }

    async fn task(&self, method: &str, task: &str, more: Value) -> Value {
        let mut params = json!({"taskId": task});
        for (key, value) in more.as_object().cloned().unwrap_or_default() {
            params[key] = value;
        }
        self.request(method, params).await
    }

    /// `tasks/get` until the task is in `status` (or a terminal one).
    async fn until(&self, task: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.task("tasks/get", task, json!({})).await;
            let now = got["result"]["status"].as_str().unwrap_or_default();
            if now == status || ["completed", "failed", "cancelled"].contains(&now) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task} never became {status}: {got}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a task answer says apart from the values made up per task.
fn shape(answer: &Value) -> Value {
    let mut result = answer["result"].clone();
    if let Some(object) = result.as_object_mut() {
        for key in ["taskId", "createdAt", "lastUpdatedAt", "_meta"] {
            object.remove(key);
        }
    }
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_of_the_extension_runs_through_the_gateway_as_directly() {
    let (serving, direct_url) = task_server().await;
    let _serving = Serving(serving);
    let gateway = Fleet::new().http("t", &direct_url).connected().start();
    let http = reqwest::Client::new();
    let client = |url: &str, tasks: bool| Stateless {
        http: http.clone(),
        url: url.to_string(),
        tasks,
    };
    let (direct, through) = (client(&direct_url, true), client(&gateway.url(), true));

    // The gateway offers the extension, as the server does.
    let offered = through.request("server/discover", json!({})).await;
    assert_eq!(
        offered["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"],
        json!({}),
        "{offered}"
    );
    let own = direct.request("server/discover", json!({})).await;
    assert!(
        own["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object()
    );

    // A handle, then the result, alike on both sides.
    let arguments = json!({"a": 2, "b": 3});
    let started = direct.call("sum", arguments.clone()).await;
    let relayed = through.call("x_t_sum", arguments.clone()).await;
    assert_eq!(started["result"]["resultType"], "task", "{started}");
    assert_eq!(relayed["result"]["resultType"], "task", "{relayed}");
    assert_eq!(shape(&relayed), shape(&started));
    let task = relayed["result"]["taskId"].as_str().expect("a task id");
    let done_direct = direct
        .until(started["result"]["taskId"].as_str().unwrap(), "completed")
        .await;
    let done = through.until(task, "completed").await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["result"]["content"][0]["text"], "5",
        "{done}"
    );
    assert_eq!(shape(&done), shape(&done_direct));

    // A question inside a task, answered with tasks/update.
    let relayed = through.call("x_t_greet", json!({})).await;
    let task = relayed["result"]["taskId"].as_str().expect("a task id");
    let asking = through.until(task, "input_required").await;
    assert_eq!(asking["result"]["status"], "input_required", "{asking}");
    let question = &asking["result"]["inputRequests"]["name"];
    assert_eq!(question["method"], "elicitation/create", "{asking}");
    assert_eq!(question["params"]["message"], "What is your name?");
    let answer =
        json!({"inputResponses": {"name": {"action": "accept", "content": {"name": "Ada"}}}});
    let updated = through.task("tasks/update", task, answer).await;
    assert!(updated.get("error").is_none(), "{updated}");
    let done = through.until(task, "completed").await;
    assert_eq!(
        done["result"]["result"]["content"][0]["text"], "hello Ada",
        "{done}"
    );

    // tasks/cancel reaches the task's server.
    let relayed = through.call("x_t_sum", arguments.clone()).await;
    let task = relayed["result"]["taskId"].as_str().expect("a task id");
    let cancelled = through.task("tasks/cancel", task, json!({})).await;
    assert!(cancelled.get("error").is_none(), "{cancelled}");
    let ended = through.until(task, "cancelled").await;
    assert_eq!(ended["result"]["status"], "cancelled", "{ended}");

    // A client that did not declare the extension never gets a handle: the
    // call runs to its result, or fails as the server fails it directly.
    let (plain_direct, plain) = (client(&direct_url, false), client(&gateway.url(), false));
    let now = plain.call("x_t_sum", arguments.clone()).await;
    assert_eq!(now["result"]["content"][0]["text"], "5", "{now}");
    assert_eq!(now["result"]["resultType"], "complete", "{now}");
    assert_eq!(
        now["result"],
        plain_direct.call("sum", arguments).await["result"]
    );
    let greet = |name: &str| json!({"name": name, "arguments": {}});
    let refused = plain.exchange("tools/call", greet("x_t_greet")).await;
    let refused_direct = plain_direct.exchange("tools/call", greet("greet")).await;
    assert_eq!(
        refused_direct.1["error"]["code"], -32021,
        "{refused_direct:?}"
    );
    assert_eq!(refused.1["error"], refused_direct.1["error"], "{refused:?}");
    // Under the HTTP status the server's transport gives it (400).
    assert_eq!(refused.0, refused_direct.0, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_client_that_declared_the_extension_gets_tasks_and_others_do_not_see_them() {
    let (serving, direct_url) = task_server().await;
    let _serving = Serving(serving);
    let gateway = Fleet::new().http("t", &direct_url).connected().start();
    let http = reqwest::Client::new();
    let url = gateway.url();
    let open = |extensions: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let capabilities = json!({"extensions": extensions});
            open_session_declaring(&http, &url, "2025-11-25", &capabilities).await
        }
    };
    let post = |session: String, body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let headers = [
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ];
            let (status, _, text) = send(
                &http,
                reqwest::Method::POST,
                &url,
                &headers,
                Some(&body.to_string()),
            )
            .await;
            assert_eq!(status, 200, "{text}");
            messages(&text).pop().unwrap_or_default()
        }
    };
    let (alice, welcome) = open(json!({"io.modelcontextprotocol/tasks": {}})).await;
    assert_eq!(
        welcome["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"],
        json!({}),
        "{welcome}"
    );
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "x_t_sum", "arguments": {"a": 20, "b": 22}}});
    let handle = post(alice.clone(), call.clone()).await;
    assert_eq!(handle["result"]["resultType"], "task", "{handle}");
    let task = handle["result"]["taskId"]
        .as_str()
        .expect("a task id")
        .to_string();
    let get = json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/get",
        "params": {"taskId": task}});

    // Another session does not see alice's task, and its own call, without
    // the extension declared, runs to its result.
    let (bob, _) = open(json!({})).await;
    let unknown = post(bob.clone(), get.clone()).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let now = post(bob, call).await;
    assert_eq!(now["result"]["content"][0]["text"], "42", "{now}");
    assert!(now["result"].get("resultType").is_none(), "{now}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = post(alice.clone(), get.clone()).await;
        if got["result"]["status"] == "completed" {
            assert_eq!(got["result"]["result"]["content"][0]["text"], "42", "{got}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never completed: {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
