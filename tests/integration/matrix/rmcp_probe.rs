//! The matrix probe for an rmcp client (this crate's own MCP SDK, as a
//! client): the counterpart of tests/peers/probe.py, taking the same plan
//! and printing the same document, so `compare_clients` compares it like
//! the others.
//!
//! The client speaks the `initialize` handshake (`ServiceExt::serve`,
//! rmcp's default; `rmcp`) or, as `rmcp-auto`, begins with
//! `server/discover` at 2026-07-28 and falls back to the handshake
//! (`ClientLifecycleMode::Auto`), over streamable HTTP or a child process
//! (rmcp has no legacy HTTP+SSE client). On 2026-07-28 it asks for log
//! messages on every call (`_meta` `io.modelcontextprotocol/logLevel`),
//! as probe.py's default mode does. Its handler answers as probe.py's callbacks do:
//! elicitation accepted with `{"name": "Ada"}`, sampling answered
//! `sampled: <first message text>`, roots `file:///srv/flotilla-matrix`;
//! it records what it was asked, the progress and the log messages it got.

// rmcp marks sampling, roots and logging deprecated (SEP-2577); the
// upstreams of the matrix still use them, so the probe does too.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequestParams, ElicitResult, ElicitationAction, Implementation,
    ListRootsResult, LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
    SamplingMessage,
};
use rmcp::service::{
    ClientLifecycleMode, NotificationContext, RequestContext, RunningService, ServiceError,
    serve_client_with_lifecycle,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::Direct;

/// What the handler saw; shared with the probe, which reads and clears it.
#[derive(Clone, Default)]
struct Recorder {
    asked: Arc<Mutex<Vec<String>>>,
    progress: Arc<Mutex<Vec<Value>>>,
    logs: Arc<Mutex<Vec<Value>>>,
}

/// The text of the first message that has one, as probe.py's `first_text`.
fn first_text(params: &CreateMessageRequestParams) -> String {
    let messages = serde_json::to_value(&params.messages).unwrap_or_default();
    messages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match &m["content"] {
            Value::Array(blocks) => blocks.first().and_then(|b| b["text"].as_str()),
            block => block["text"].as_str(),
        })
        .next()
        .unwrap_or_default()
        .to_string()
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        let capabilities: ClientCapabilities = serde_json::from_value(json!({
            "elicitation": {"form": {}, "url": {}},
            "sampling": {},
            "roots": {"listChanged": true},
        }))
        .expect("client capabilities");
        ClientConfig::new(
            capabilities,
            Implementation::new("flotilla-rmcp-probe", "1"),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let request = serde_json::to_value(&request).unwrap_or_default();
        let message = request["message"].as_str().unwrap_or_default();
        self.asked
            .lock()
            .unwrap()
            .push(format!("elicit: {message}"));
        let mut result = ElicitResult::new(ElicitationAction::Accept);
        result.content = Some(json!({"name": "Ada"}));
        Ok(result)
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let text = first_text(&params);
        self.asked.lock().unwrap().push(format!("sample: {text}"));
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(format!("sampled: {text}")),
            "matrix".into(),
        ))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.asked.lock().unwrap().push("roots".into());
        Ok(serde_json::from_value(
            json!({"roots": [{"uri": "file:///srv/flotilla-matrix", "name": "matrix"}]}),
        )
        .expect("roots"))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(json!(params.progress));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.logs.lock().unwrap().push(json!({
            "level": params.level,
            "logger": params.logger,
            "data": params.data,
        }));
    }
}

type Client = RunningService<RoleClient, Recorder>;

/// An error as the document records it: a JSON-RPC error by its message
/// (as the other probes do), anything else as rmcp words it.
fn error(e: ServiceError) -> Value {
    match e {
        ServiceError::McpError(e) => json!({"error": e.message}),
        other => json!({"error": other.to_string()}),
    }
}

fn attempt<T: Serialize>(result: Result<T, ServiceError>) -> Value {
    match result {
        Ok(value) => serde_json::to_value(value).expect("a result serializes"),
        Err(e) => error(e),
    }
}

/// A listed kind sorted by `key`; named kinds have `prefix` stripped and
/// those without it (the gateway's own tool) left out.
fn listed<T: Serialize>(
    items: Result<Vec<T>, ServiceError>,
    key: &str,
    prefix: Option<&str>,
) -> Value {
    let items = match items {
        Ok(items) => items,
        Err(e) => return error(e),
    };
    let items: Vec<Value> = items
        .iter()
        .map(|i| serde_json::to_value(i).expect("a listed item serializes"))
        .collect();
    super::unprefixed_sorted(items, key, prefix)
}

fn params<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("request parameters")
}

/// Whether the client speaks 2026-07-28, which names the log level on
/// each request instead of `logging/setLevel`.
fn stateless(client: &Client) -> bool {
    client
        .peer_info()
        .is_some_and(|info| info.protocol_version == ProtocolVersion::V_2026_07_28)
}

async fn call(client: &Client, name: &str, step: &Value) -> Value {
    let mut request = json!({
        "name": name,
        "arguments": step.get("args").cloned().unwrap_or(json!({})),
    });
    if stateless(client) {
        request["_meta"] = json!({"io.modelcontextprotocol/logLevel": "debug"});
    }
    attempt(client.call_tool(params(request)).await)
}

/// Connects with the handshake, or with `server/discover` first (`auto`).
async fn serve<T, E, A>(recorder: Recorder, transport: T, auto: bool) -> Result<Client, String>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let client = if auto {
        let mode = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: None,
        };
        serve_client_with_lifecycle(recorder, transport, mode).await
    } else {
        recorder.serve(transport).await
    };
    client.map_err(|e| e.to_string())
}

async fn connect(target: &Direct, recorder: Recorder, auto: bool) -> Client {
    match target {
        Direct::Url(url) => serve(
            recorder,
            StreamableHttpClientTransport::from_uri(url.clone()),
            auto,
        )
        .await
        .unwrap_or_else(|e| panic!("rmcp client connecting to {url}: {e}")),
        Direct::Stdio(argv) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).kill_on_drop(true);
            let (transport, _stderr) = TokioChildProcess::builder(cmd)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawning the stdio server");
            serve(recorder, transport, auto)
                .await
                .unwrap_or_else(|e| panic!("rmcp client connecting to {argv:?}: {e}"))
        }
        Direct::Sse(url) => panic!("rmcp has no legacy HTTP+SSE client ({url})"),
    }
}

async fn run(target: &Direct, prefix: Option<&str>, plan: &Value, auto: bool) -> Value {
    let recorder = Recorder::default();
    let client = connect(target, recorder.clone(), auto).await;
    let name = |n: &Value| format!("{}{}", prefix.unwrap_or(""), n.as_str().unwrap_or(""));
    let steps = |key: &str| plan[key].as_array().cloned().unwrap_or_default();
    let version = client.peer_info().map(|info| json!(info.protocol_version));
    let mut out = json!({"protocolVersion": version});
    out["tools"] = listed(client.list_all_tools().await, "name", prefix);
    out["resources"] = listed(client.list_all_resources().await, "uri", None);
    out["templates"] = listed(
        client.list_all_resource_templates().await,
        "uriTemplate",
        None,
    );
    out["prompts"] = listed(client.list_all_prompts().await, "name", prefix);
    let mut calls = vec![];
    for step in steps("calls") {
        calls.push(call(&client, &name(&step["tool"]), &step).await);
    }
    out["calls"] = calls.into();
    let mut reads = vec![];
    for uri in steps("reads") {
        reads.push(attempt(
            client.read_resource(params(json!({"uri": uri}))).await,
        ));
    }
    out["reads"] = reads.into();
    let mut prompts = vec![];
    for step in steps("prompts") {
        let request = json!({"name": name(&step["name"]), "arguments": step.get("args").cloned().unwrap_or(json!({}))});
        prompts.push(attempt(client.get_prompt(params(request)).await));
    }
    out["prompt_results"] = prompts.into();
    if plan["ping"] == true {
        let ping = client
            .send_request(ClientRequest::PingRequest(Default::default()))
            .await;
        out["ping"] = match ping {
            Ok(_) => true.into(),
            Err(e) => error(e),
        };
    }
    let mut progress = vec![];
    for step in steps("progress") {
        recorder.progress.lock().unwrap().clear();
        let result = call(&client, &name(&step["tool"]), &step).await;
        let steps = std::mem::take(&mut *recorder.progress.lock().unwrap());
        progress.push(json!({"result": result, "steps": steps}));
    }
    out["progress"] = progress.into();
    let session = version
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("2025"));
    if !steps("logged").is_empty() && session {
        // A server without logging/setLevel refuses; its logs are compared all the same.
        let _ = client.set_level(params(json!({"level": "debug"}))).await;
    }
    let mut logs = vec![];
    for step in steps("logged") {
        recorder.logs.lock().unwrap().clear();
        let result = call(&client, &name(&step["tool"]), &step).await;
        let messages = std::mem::take(&mut *recorder.logs.lock().unwrap());
        logs.push(json!({"result": result, "messages": messages}));
    }
    out["logs"] = logs.into();
    let mut completions = vec![];
    for step in steps("complete") {
        let mut reference = step["ref"].clone();
        if reference["type"] == "ref/prompt" {
            reference["name"] = name(&reference["name"]).into();
        }
        let request = json!({"ref": reference, "argument": step["argument"]});
        completions.push(attempt(client.complete(params(request)).await));
    }
    out["completions"] = completions.into();
    out["asked"] = json!(*recorder.asked.lock().unwrap());
    let _ = client.cancel().await;
    out
}

/// Runs the rmcp client against `target` on a runtime of its own (the
/// matrix's comparisons are synchronous) and returns its document; `auto`:
/// `server/discover` first.
pub(super) fn probe(target: &Direct, prefix: Option<&str>, plan: &Value, auto: bool) -> Value {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the rmcp probe");
                runtime.block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(80),
                        run(target, prefix, plan, auto),
                    )
                    .await
                    .expect("the rmcp probe finished within 80 s")
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
