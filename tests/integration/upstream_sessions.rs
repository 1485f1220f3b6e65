//! Upstream session behaviour: cancellation and ids across the hop, health
//! checks, connect timeouts, crashes, idle connections given up before the
//! server closes them, and stdio children reaped on removal.

use std::time::Duration;

use crate::common::*;
use crate::task_extension::Serving;
use serde_json::json;

/// A gateway config that health-checks upstreams every second, so a dead or
/// hung one is noticed within the test's patience.
const PING_EVERY_SECOND: &str = "pingIntervalSeconds: 1\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancellation_reaches_the_upstream() {
    let gateway = Fleet::new()
        .sim("sim", "cancel-me")
        .flag("--test-tools")
        .start();
    let client = connect(&gateway.url()).await;
    cancel_and_see_it_arrive(&client, "x_sim_sleep", "x_sim_cancellations", json!({})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_with_the_same_request_ids_get_their_own_answers() {
    let gateway = Fleet::new().sim("sim", "ids").flag("--test-tools").start();
    // Every fresh rmcp client numbers its requests from the same start, so
    // these calls carry identical JSON-RPC ids into the gateway at once.
    let url = gateway.url();
    let clients = futures::future::join_all((0..4).map(|_| connect(&url))).await;
    let calls = clients.iter().enumerate().map(|(i, client)| async move {
        let seconds = 0.2 + i as f64 * 0.1;
        let result = call(client, "x_sim_sleep", json!({"seconds": seconds})).await;
        (text_of(&result), format!("slept {seconds}"))
    });
    for (got, want) in futures::future::join_all(calls).await {
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_upstream_fails_its_health_check_and_recovers_when_it_wakes() {
    let fleet = Fleet::new();
    let (py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("py", &py_url)
        .timeout(2)
        .config(PING_EVERY_SECOND)
        .start();
    gateway.wait_state("py", "Connected", Duration::from_secs(10));
    unsafe { libc::kill(-py.pid(), libc::SIGSTOP) };
    gateway.wait_state("py", "Failed", Duration::from_secs(15));
    let error = gateway.server_status("py")["status"]["lastError"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("health check failed") || error.contains("timed out"),
        "{error}"
    );
    unsafe { libc::kill(-py.pid(), libc::SIGCONT) };
    gateway.wait_state("py", "Connected", Duration::from_secs(30));
    let client = connect(&gateway.url()).await;
    assert_eq!(
        text_of(&call(&client, "x_py_echo", json!({"text": "awake"})).await),
        "awake"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_times_out_at_spec_timeout_and_others_are_unaffected() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", silent.local_addr().unwrap());
    let gateway = Fleet::new()
        .http("silent", &url)
        .timeout(1)
        .manifest(
            "crash.yaml",
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: crash}\nspec: {type: stdio, command: /bin/false}\n",
        )
        .sim("sim", "fine")
        .start();
    gateway.wait_state("silent", "Failed", Duration::from_secs(10));
    let silent_status = gateway.server_status("silent");
    let error = silent_status["status"]["lastError"].as_str().unwrap();
    assert!(error.contains("timed out after 1s"), "{error}");
    let ready = &silent_status["status"]["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    gateway.wait_state("crash", "Failed", Duration::from_secs(10));
    gateway.wait_state("sim", "Connected", Duration::from_secs(10));
    let client = connect(&gateway.url()).await;
    assert!(
        text_of(&call(&client, "x_sim_cluster_info", json!({})).await).contains("cluster: fine")
    );
    drop(silent);
}

/// Processes whose command line contains `needle` (zombies included).
fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            found.push((pid, stat));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_stdio_server_kills_and_reaps_its_process() {
    let gateway = Fleet::new().sim("keep", "keep").start();
    let cluster = format!("reap-me-{}", gateway.port);
    gateway.write_manifest("gone.yaml", &sim_manifest("gone", &cluster, ""));
    gateway.wait_state("gone", "Connected", Duration::from_secs(10));
    assert_eq!(
        processes_matching(&cluster).len(),
        1,
        "one child process serves it"
    );
    let zombies_before = zombie_children(gateway.proc.pid());
    gateway.remove_manifest("gone.yaml");
    eventually(Duration::from_secs(10), "the child to be gone", || {
        let cluster = cluster.clone();
        async move { processes_matching(&cluster).is_empty().then_some(()) }
    })
    .await;
    assert_eq!(
        zombie_children(gateway.proc.pid()),
        zombies_before,
        "the child was reaped"
    );
    gateway.wait_state("keep", "Connected", Duration::from_secs(5));
}

fn zombie_children(parent: i32) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_and_tls_failures_are_told_apart_in_status() {
    let fleet = Fleet::new();
    // kubernetes-mcp-server demanding OAuth answers 401 with a Bearer challenge.
    let config = fleet.logs().join("kmcp.toml");
    std::fs::write(
        &config,
        "require_oauth = true\noauth_audience = \"kmcp\"\nskip_jwt_verification = true\n",
    )
    .unwrap();
    let (_kube, port) =
        kubernetes_mcp_server_with(0, fleet.logs(), &["--config", config.to_str().unwrap()]);
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("locked", &format!("http://127.0.0.1:{port}/mcp"))
        // TLS spoken to a plain-HTTP server.
        .http("tls", &py_url.replace("http://", "https://"))
        .start();
    gateway.wait_state("locked", "AuthRequired", Duration::from_secs(10));
    gateway.wait_state("tls", "Failed", Duration::from_secs(10));
    let reason = |name: &str| {
        gateway.server_status(name)["status"]["conditions"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(reason("locked"), "AuthRequired");
    assert_eq!(
        reason("tls"),
        "TLSError",
        "{}",
        gateway.server_status("tls")
    );
    // The messages say what failed, never the gateway's Rust types.
    for name in ["locked", "tls"] {
        let error = gateway.server_status(name)["status"]["lastError"].to_string();
        assert!(
            !error.contains("::") && !error.contains("Transport ["),
            "{error}"
        );
    }
}

/// Kills an upstream in the middle of a 30 s call and checks what the
/// client sees: the call ends within seconds with an error naming the
/// server (never the whole 30 s, never a hang); the server is reported
/// down; once the upstream is back on its address, calls work again.
async fn a_killed_upstream_mid_call(
    gateway: &Gateway,
    name: &str,
    (slow_tool, slow_args): (&str, serde_json::Value),
    (quick_tool, quick_args): (&str, serde_json::Value),
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) {
    gateway.wait_state(name, "Connected", Duration::from_secs(20));
    let caller = connect(&gateway.url()).await;
    let started = std::time::Instant::now();
    let slow = slow_tool.to_string();
    let pending = tokio::spawn(async move { call(&caller, &slow, slow_args).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    kill();
    let cut = tokio::time::timeout(Duration::from_secs(15), pending)
        .await
        .expect("the call ends instead of hanging")
        .expect("the call returns");
    assert_eq!(cut.is_error, Some(true), "{cut:?}");
    assert!(text_of(&cut).contains(name), "{}", text_of(&cut));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not the 30 s of the call: {:?}",
        started.elapsed()
    );
    gateway.wait_state(name, "Failed", Duration::from_secs(15));
    restart();
    gateway.wait_state(name, "Connected", Duration::from_secs(40));
    let client = connect(&gateway.url()).await;
    let back = call(&client, quick_tool, quick_args).await;
    assert_ne!(back.is_error, Some(true), "{back:?}");
    assert!(
        !gateway.proc.log_text().contains("panicked"),
        "{}",
        gateway.proc.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_streamable_http_upstream_ends_its_calls_cleanly_and_recovers() {
    let fleet = Fleet::new();
    let (py, url) = python_server(0, fleet.logs());
    let port: u16 = url
        .trim_end_matches("/mcp")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the URL");
    let gateway = fleet.http("py", &url).config(PING_EVERY_SECOND).start();
    let py = std::sync::Mutex::new(py);
    let revived = std::sync::Mutex::new(None);
    a_killed_upstream_mid_call(
        &gateway,
        "py",
        ("x_py_slow", json!({"seconds": 30})),
        ("x_py_echo", json!({"text": "back"})),
        || py.lock().unwrap().kill(),
        || *revived.lock().unwrap() = Some(python_server(port, gateway.logs())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_legacy_sse_upstream_ends_its_calls_cleanly_and_recovers() {
    let fleet = Fleet::new();
    let (everything_sse, port) = everything("sse", 0, fleet.logs());
    let gateway = fleet
        .sse("legacy", &format!("http://127.0.0.1:{port}/sse"))
        .config(PING_EVERY_SECOND)
        .start();
    let upstream = std::sync::Mutex::new(everything_sse);
    let revived = std::sync::Mutex::new(None);
    a_killed_upstream_mid_call(
        &gateway,
        "legacy",
        (
            "x_legacy_trigger-long-running-operation",
            json!({"duration": 30, "steps": 30}),
        ),
        ("x_legacy_get-sum", json!({"a": 1, "b": 2})),
        || upstream.lock().unwrap().kill(),
        || *revived.lock().unwrap() = Some(everything("sse", port, gateway.logs()).0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarted_behind_its_address_is_spoken_to_again_without_a_failed_call() {
    use crate::task_extension::task_server_that_restarts;
    let (serving, url, restart) = task_server_that_restarts().await;
    let _serving = Serving(serving);
    let gateway = Fleet::new().http("tasks", &url).connected().start();
    let client = connect(&gateway.url()).await;
    let before = call(&client, "x_tasks_sum", json!({"a": 1, "b": 2})).await;
    assert_eq!(text_of(&before), "3", "{before:?}");
    // The server now knows no session: the gateway's session gets 404s.
    restart();
    for b in 0..3 {
        let after = call(&client, "x_tasks_sum", json!({"a": 10, "b": b})).await;
        assert_eq!(text_of(&after), (10 + b).to_string(), "call {b}: {after:?}");
    }
    // Opened again in place (the handshake repeated on the same session
    // line), not by closing the session and reconnecting.
    let log = gateway.proc.log_text();
    assert_eq!(log.matches("upstream connected").count(), 1, "{log}");
    assert_eq!(
        gateway.server_status("tasks")["status"]["state"],
        "Connected"
    );
}

/// An rmcp server whose `grow` tool adds a tool and, a moment after
/// answering, says so on the session's standalone stream (a notification
/// related to no request).
#[derive(Clone, Default)]
struct GrowServer {
    grown: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl rmcp::handler::server::ServerHandler for GrowServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::service::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let grown = self.grown.lock().expect("the grown tools").clone();
        let tool = |name: &str| {
            rmcp::model::Tool::new(
                name.to_string(),
                name.to_string(),
                std::sync::Arc::new(serde_json::Map::new()),
            )
        };
        let tools = std::iter::once("grow".to_string())
            .chain(grown)
            .map(|name| tool(&name))
            .collect();
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::service::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let text = |t: String| {
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(t)]).into()
        };
        if request.name != "grow" {
            return Ok(text(format!("grown {}", request.name)));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("sprout")
            .to_string();
        self.grown
            .lock()
            .expect("the grown tools")
            .push(name.clone());
        let peer = context.peer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = peer.notify_tool_list_changed().await;
        });
        Ok(text(format!("added {name}")))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_server_forgets_the_session_its_new_sessions_standalone_stream_is_read() {
    use crate::task_extension::server_that_restarts;
    let (serving, url, restart) = server_that_restarts(GrowServer::default).await;
    let _serving = Serving(serving);
    let gateway = Fleet::new().http("grow", &url).connected().start();
    let client = connect(&gateway.url()).await;
    assert_eq!(
        text_of(&call(&client, "x_grow_grow", json!({"name": "first"})).await),
        "added first"
    );
    wait_tool(&client, "x_grow_first").await;
    // The server behind the address is replaced: it knows no session, while
    // the one it replaced keeps the old session's standalone stream open.
    restart();
    let grown = call(&client, "x_grow_grow", json!({"name": "second"})).await;
    assert_eq!(text_of(&grown), "added second", "{grown:?}");
    // The new session's list change arrives on the new session's stream.
    let names = tokio::time::timeout(Duration::from_secs(8), wait_tool(&client, "x_grow_second"))
        .await
        .expect("the list change on the new session's standalone stream arrives");
    assert!(names.contains(&"x_grow_grow".to_string()), "{names:?}");
    let log = gateway.proc.log_text();
    assert_eq!(log.matches("upstream connected").count(), 1, "{log}");
}

/// How long Node's and uvicorn's HTTP servers keep an idle keep-alive
/// connection before closing it (both default to 5 s).
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A TCP hop in front of `target` that acts as a server closing idle
/// keep-alive connections after [`SERVER_KEEP_ALIVE`], at the worst moment:
/// the client has not yet seen the close when it sends its next request, so
/// the request meets a reset (what a request crossing a real server's close
/// meets). A hand-written stand-in: no real server makes that race happen
/// on demand. Returns the hop's address and how many requests it reset.
async fn keep_alive_closer(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    Serving,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the hop");
    let address = listener.local_addr().expect("the hop's address");
    let resets = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = resets.clone();
    let hop = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let resets = counted.clone();
            connections.spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
                let mut last = std::time::Instant::now();
                loop {
                    tokio::select! {
                        read = client.read(&mut up) => {
                            let Ok(n @ 1..) = read else { break };
                            if last.elapsed() >= SERVER_KEEP_ALIVE {
                                resets.fetch_add(1, Ordering::SeqCst);
                                let _ = client.set_zero_linger();
                                break;
                            }
                            last = std::time::Instant::now();
                            if server.write_all(&up[..n]).await.is_err() {
                                break;
                            }
                        }
                        read = server.read(&mut down) => {
                            let Ok(n @ 1..) = read else { break };
                            last = std::time::Instant::now();
                            if client.write_all(&down[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (address, resets, Serving(hop))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_after_a_quiet_spell_longer_than_the_servers_keep_alive_is_not_reset() {
    use crate::task_extension::task_server_that_restarts;
    let (serving, url, _restart) = task_server_that_restarts().await;
    let _serving = Serving(serving);
    let target = reqwest::Url::parse(&url).expect("the server's URL");
    let target = target.socket_addrs(|| None).expect("the server's address")[0];
    let (hop, resets, _hop) = keep_alive_closer(target).await;
    let gateway = Fleet::new()
        .http("tasks", &format!("http://{hop}/mcp"))
        .connected()
        .start();
    let client = connect(&gateway.url()).await;
    let before = call(&client, "x_tasks_sum", json!({"a": 1, "b": 2})).await;
    assert_eq!(text_of(&before), "3", "{before:?}");
    // Longer than the server keeps an idle connection: the gateway must not
    // send the next call on one it used before the quiet spell.
    tokio::time::sleep(SERVER_KEEP_ALIVE + Duration::from_millis(700)).await;
    let after = call(&client, "x_tasks_sum", json!({"a": 2, "b": 2})).await;
    assert_eq!(text_of(&after), "4", "{after:?}");
    assert_eq!(
        resets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request was sent on a connection the server had closed"
    );
}
