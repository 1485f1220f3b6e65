//! The benchmark's upstream: a minimal rmcp server in its own process
//! (`gateway --upstream --servers N --tools K`), serving N distinct MCP
//! servers at `/s/{i}/mcp` on one loopback port. Each offers `echo` (returns
//! its `text` argument) plus `tool_1..tool_{K-1}` with small schemas.
//! Streamable HTTP, stateless (2026-07-28 negotiated per request) with JSON
//! responses, no SSE keep-alive, so it is as cheap an upstream as rmcp gets.

use std::sync::Arc;

use axum::serve::ListenerExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};

#[derive(Clone)]
struct Echo {
    tools: Arc<Vec<Tool>>,
}

fn schema(value: serde_json::Value) -> Arc<JsonObject> {
    match value {
        serde_json::Value::Object(map) => Arc::new(map),
        _ => unreachable!("schemas are objects"),
    }
}

fn make_tools(server: usize, count: usize) -> Vec<Tool> {
    let mut tools = vec![Tool::new(
        "echo",
        "Return the text argument unchanged.",
        schema(serde_json::json!({
            "type": "object",
            "properties": {"text": {"type": "string", "description": "Text to return"}},
            "required": ["text"]
        })),
    )];
    let small = schema(serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer", "description": "Object id"},
            "query": {"type": "string", "description": "Free-text filter"}
        },
        "required": ["id"]
    }));
    for j in 1..count.max(1) {
        tools.push(Tool::new(
            format!("tool_{j}"),
            format!("Synthetic tool {j} of server {server}, for catalog benchmarks."),
            small.clone(),
        ));
    }
    tools
}

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bench-echo", "0.1.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items((*self.tools).clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request
            .arguments
            .as_ref()
            .and_then(|args| args.get("text"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Runs the upstream until killed; prints `READY <port>` once listening.
/// `sessions`: clients that initialize get a 2025 session (rmcp's session
/// mode); stateless 2026-07-28 requests are served either way.
pub fn run(servers: usize, tools: usize, threads: usize, sessions: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut router = axum::Router::new();
        for i in 0..servers {
            let tools = Arc::new(make_tools(i, tools));
            let config = StreamableHttpServerConfig::default()
                .with_legacy_session_mode(sessions)
                .with_json_response(true)
                .with_sse_keep_alive(None)
                .disable_allowed_hosts();
            let service = StreamableHttpService::new(
                move || {
                    Ok(Echo {
                        tools: tools.clone(),
                    })
                },
                Arc::new(LocalSessionManager::default()),
                config,
            );
            router = router.nest_service(&format!("/s/{i}/mcp"), service);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the upstream");
        let port = listener.local_addr().expect("local addr").port();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        println!("READY {port}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router).await.expect("serving");
    });
}
