//! Family benchmark (`cargo bench --bench fanout`): fan-out latency over 100
//! instances whose tool takes 20 ms, against one instance called directly,
//! and the size of `tools/list` for 1, 10 and 100 clusters of one family
//! (folded) versus the same servers unfolded. Everything runs on loopback:
//! this binary re-runs itself as the upstream (`--upstream`) so the
//! upstream's CPU is not the gateway's; the gateway is target/release/flotilla.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};

const INSTANCES: usize = 100;
const TOOL_DELAY: Duration = Duration::from_millis(20);
const TOOLS_PER_SERVER: usize = 20;
const RUNS: usize = 30;

// ---------- the upstream: N servers at /s/{i}/mcp, tool `work` sleeps 20 ms ----------

#[derive(Clone)]
struct Cluster {
    tools: Arc<Vec<Tool>>,
    index: usize,
}

fn object(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn tools() -> Vec<Tool> {
    let read_only = Some(ToolAnnotations::new().read_only(true));
    let mut work = Tool::new(
        "work",
        "Takes 20 ms, then reports which cluster answered.",
        object(json!({"type": "object", "properties": {}})),
    );
    work.annotations = read_only.clone();
    let mut tools = vec![work];
    for j in 1..TOOLS_PER_SERVER {
        let mut tool = Tool::new(
            format!("tool_{j}"),
            format!("Synthetic read-only tool {j}, for catalog size."),
            object(
                json!({"type": "object", "properties": {"id": {"type": "integer", "description": "Object id"}}}),
            ),
        );
        tool.annotations = read_only.clone();
        tools.push(tool);
    }
    tools
}

impl ServerHandler for Cluster {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bench-cluster", "0.1.0"))
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
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        tokio::time::sleep(TOOL_DELAY).await;
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "cluster {} done",
            self.index
        ))])
        .into())
    }
}

fn run_upstream(servers: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let tools = Arc::new(tools());
        let mut router = axum::Router::new();
        for index in 0..servers {
            let tools = tools.clone();
            let config = StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true)
                .with_sse_keep_alive(None)
                .disable_allowed_hosts();
            let service = StreamableHttpService::new(
                move || {
                    Ok(Cluster {
                        tools: tools.clone(),
                        index,
                    })
                },
                Arc::new(LocalSessionManager::default()),
                config,
            );
            router = router.nest_service(&format!("/s/{index}/mcp"), service);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        println!("READY {port}");
        let _ = std::io::stdout().flush();
        axum::serve(listener, router).await.expect("serve");
    });
}

// ---------- processes ----------

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_reading(mut cmd: Command, needle: &str) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(needle) => return (proc, line),
            Some(Ok(_)) => continue,
            _ => panic!("process exited before printing {needle:?}"),
        }
    }
}

fn gateway_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/flotilla");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "flotilla"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the gateway failed");
    }
    path
}

/// Starts the gateway over `count` servers; `family` folds them.
fn start_gateway(dir: &Path, upstream_port: u16, count: usize, family: bool) -> (Proc, u16) {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let mut manifests = String::new();
    for i in 0..count {
        let family = if family {
            format!("  family: {{name: bench, instanceArg: cluster, instance: c{i}}}\n")
        } else {
            String::new()
        };
        manifests.push_str(&format!(
            "---\napiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: c{i}-mcp-bench}}\nspec:\n  url: http://127.0.0.1:{upstream_port}/s/{i}/mcp\n  timeout: 10\n{family}"
        ));
    }
    std::fs::write(dir.join("fleet.yaml"), manifests).expect("write manifests");
    // The gateway's defaults (fanOut.maxConcurrency 100): what a user gets.
    std::fs::write(dir.join("config.yaml.txt"), "fanOut: {}\n").expect("config");
    let mut cmd = Command::new(gateway_binary());
    cmd.args(["serve", "--port", "0", "--manifests"])
        .arg(dir)
        .arg("--config")
        .arg(dir.join("config.yaml.txt"))
        .env("RUST_LOG", "warn");
    let (proc, line) = spawn_reading(cmd, "listening on");
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|s| s.trim_end_matches("/mcp").parse().ok())
        .expect("port");
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::blocking::Client::new();
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok());
        if ready.is_some_and(|r| r["ready"] == true && r["connected"] == count) {
            break;
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}

// ---------- the client: stateless 2026-07-28 JSON-RPC ----------

fn rpc(http: &reqwest::blocking::Client, url: &str, method: &str, params: Value) -> (Value, usize) {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        request = request.header("mcp-name", name);
    }
    let body = request
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
        .send()
        .expect("request")
        .bytes()
        .expect("body");
    let text = String::from_utf8_lossy(&body);
    let json = text.strip_prefix("data: ").unwrap_or(&text);
    let json = json.lines().find(|l| l.starts_with('{')).unwrap_or(json);
    (
        serde_json::from_str(json).unwrap_or(Value::Null),
        body.len(),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn timed(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--upstream") {
        run_upstream(
            args.get(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(INSTANCES),
        );
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` must not run the benchmark
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream_cmd = Command::new(&args[0]);
    upstream_cmd.args(["--upstream", &INSTANCES.to_string()]);
    let (_upstream, line) = spawn_reading(upstream_cmd, "READY");
    let upstream_port: u16 = line
        .trim_start_matches("READY ")
        .trim()
        .parse()
        .expect("upstream port");
    let http = reqwest::blocking::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");

    // One instance, directly: the floor a fan-out can reach.
    let direct = format!("http://127.0.0.1:{upstream_port}/s/0/mcp");
    let (direct_p50, direct_p99) = timed(RUNS, || {
        rpc(
            &http,
            &direct,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        );
    });

    // All instances at once, directly, by this client (one thread per call):
    // what the upstream side itself costs when 100 calls land together.
    let (direct_all_p50, direct_all_p99) = timed(RUNS, || {
        std::thread::scope(|scope| {
            for i in 0..INSTANCES {
                let http = &http;
                scope.spawn(move || {
                    let url = format!("http://127.0.0.1:{upstream_port}/s/{i}/mcp");
                    rpc(
                        http,
                        &url,
                        "tools/call",
                        json!({"name": "work", "arguments": {}}),
                    );
                });
            }
        });
    });

    let (gateway, port) = start_gateway(dir.path(), upstream_port, INSTANCES, true);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (reply, _) = rpc(
        &http,
        &url,
        "tools/call",
        json!({"name": "x_bench_work", "arguments": {"cluster": "*"}}),
    );
    let answered = reply["result"]["structuredContent"]["instances"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(answered, INSTANCES, "every instance answered: {reply}");
    let (one_p50, one_p99) = timed(RUNS, || {
        rpc(
            &http,
            &url,
            "tools/call",
            json!({"name": "x_bench_work", "arguments": {"cluster": "c7"}}),
        );
    });
    let (all_p50, all_p99) = timed(RUNS, || {
        rpc(
            &http,
            &url,
            "tools/call",
            json!({"name": "x_bench_work", "arguments": {"cluster": "*"}}),
        );
    });
    drop(gateway);

    println!(
        "## Fan-out: one call over {INSTANCES} instances, each taking {} ms",
        TOOL_DELAY.as_millis()
    );
    println!();
    println!("| call | p50 | p99 | overhead over the slowest instance (p50) |");
    println!("|---|---:|---:|---:|");
    println!("| one instance, direct | {direct_p50:.2} ms | {direct_p99:.2} ms | — |");
    println!(
        "| all {INSTANCES} at once, direct (client threads) | {direct_all_p50:.2} ms | {direct_all_p99:.2} ms | {:.2} ms |",
        direct_all_p50 - direct_p50
    );
    println!(
        "| one instance, through the gateway | {one_p50:.2} ms | {one_p99:.2} ms | {:.2} ms |",
        one_p50 - direct_p50
    );
    println!(
        "| all {INSTANCES} (`\"*\"`), through the gateway | {all_p50:.2} ms | {all_p99:.2} ms | {:.2} ms |",
        all_p50 - direct_p50
    );
    println!();
    println!("## tools/list size ({TOOLS_PER_SERVER} tools per cluster)");
    println!();
    println!("| clusters | folded family (bytes) | tools | unfolded (bytes) | tools |");
    println!("|---:|---:|---:|---:|---:|");
    for count in [1, 10, 100] {
        let mut row = vec![];
        for family in [true, false] {
            let (gateway, port) = start_gateway(dir.path(), upstream_port, count, family);
            let url = format!("http://127.0.0.1:{port}/mcp");
            let (reply, bytes) = rpc(&http, &url, "tools/list", json!({}));
            assert_eq!(
                reply["result"]["tools"].as_array().map_or(0, Vec::len),
                if family {
                    TOOLS_PER_SERVER + 1
                } else {
                    count * TOOLS_PER_SERVER + 1
                },
                "ready means the catalog is complete"
            );
            let tools = reply["result"]["tools"].as_array().map_or(0, Vec::len);
            row.push((bytes, tools));
            drop(gateway);
        }
        println!(
            "| {count} | {} | {} | {} | {} |",
            row[0].0, row[0].1, row[1].0, row[1].1
        );
    }
}
