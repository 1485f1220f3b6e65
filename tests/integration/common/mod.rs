//! Shared integration-test harness: installs the pinned third-party peers
//! once, starts real processes on 127.0.0.1 (each in its own process group,
//! killed with its children on drop) and connects real MCP clients.

#![allow(dead_code)]

pub mod fleet;
pub mod idp;
pub mod nginx;
pub mod sa_issuer;
pub mod sso_world;

// benches/sso.rs includes this module and does not use the builder.
#[allow(unused_imports)]
pub use fleet::Fleet;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};

/// Paths printed by tests/peers/install.sh.
pub struct Peers(HashMap<String, String>);

impl Peers {
    pub fn get(&self, key: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("install.sh did not print {key}"))
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the peers (idempotent, locked) and returns their paths.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/peers/install.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/peers/install.sh");
        assert!(out.status.success(), "tests/peers/install.sh failed");
        let text = String::from_utf8_lossy(&out.stdout);
        Peers(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    })
}

/// A port nothing listens on now, for URLs that are never served (a
/// loopback redirect URI the test reads from the browser's last hop). Never
/// for a process to bind: give it port 0 and read it back ([`listening_port`]).
pub fn unserved_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A process group that is terminated (then killed) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group; stdout lines are readable with
    /// [`Proc::wait_line`], stderr goes to a log file.
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> Proc {
        Self::spawn_with(name, cmd, log_dir, Stdio::null())
    }

    /// Like [`Proc::spawn`], with the child's stdin handed to the caller.
    pub fn spawn_with_stdin(
        name: &str,
        cmd: Command,
        log_dir: &Path,
    ) -> (Proc, std::process::ChildStdin) {
        let mut proc = Self::spawn_with(name, cmd, log_dir, Stdio::piped());
        let stdin = proc.child.stdin.take().expect("stdin");
        (proc, stdin)
    }

    fn spawn_with(name: &str, mut cmd: Command, log_dir: &Path, stdin: Stdio) -> Proc {
        // Two peers of one kind (port 0 in their names) get their own logs.
        let mut log = log_dir.join(format!("{name}.log"));
        let mut copy = 1;
        while log.exists() {
            copy += 1;
            log = log_dir.join(format!("{name}-{copy}.log"));
        }
        let log_file = std::fs::File::create(&log).expect("log file");
        cmd.process_group(0)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            name: name.to_string(),
            lines,
            log,
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "{} did not print {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                ),
            }
        }
    }

    /// The next stdout line, or `None` after `timeout` (or at end of output).
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits until the process's log (its stderr) contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM the group, wait up to 5 s, then SIGKILL it.
    pub fn stop(&mut self) {
        let pgid = self.pid();
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGKILL the whole group at once (a crash).
    pub fn kill(&mut self) {
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        } else {
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        }
    }
}

/// Polls TCP until something listens on `port`.
pub fn wait_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listened on 127.0.0.1:{port} within {timeout:?}");
}

/// `@modelcontextprotocol/server-everything` in `streamableHttp` or `sse` mode.
/// server-everything in `mode` on `port` (0: a port of the kernel's choice,
/// read back from the process); returns it and the port it listens on.
pub fn everything(mode: &str, port: u16, logs: &Path) -> (Proc, u16) {
    let p = peers();
    let mut cmd = Command::new(p.get("NODE22"));
    cmd.env("PORT", port.to_string())
        .arg("--require")
        .arg(p.get("LOOPBACK_PRELOAD"))
        .arg(p.get("EVERYTHING_JS"))
        .arg(mode);
    let proc = Proc::spawn(&format!("everything-{mode}-{port}"), cmd, logs);
    let port = listening_port(&proc, Duration::from_secs(30));
    (proc, port)
}

/// The TCP port a process listens on, from /proc: the socket inodes among
/// its open files, matched against the LISTEN rows of its /proc/net/tcp.
/// So a test lets the peer bind port 0 instead of picking a port and
/// releasing it (which another process may take in between).
pub fn listening_port(proc: &Proc, timeout: Duration) -> u16 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(port) = listening_ports(proc.pid()).first() {
            return *port;
        }
        assert!(
            Instant::now() < deadline,
            "process {} is not listening; log:\n{}",
            proc.pid(),
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rows of /proc/net/tcp{,6} that are sockets process `pid` has open
/// (their inodes among its open files), split into columns: local address
/// (column 1, ADDR:PORT in hex), remote address (2), state (3), inode (9).
fn sockets_of(pid: i32) -> Vec<Vec<String>> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let text = target.to_string_lossy().into_owned();
                    text.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            let columns: Vec<String> = row.split_whitespace().map(str::to_string).collect();
            if columns.len() > 9 && inodes.iter().any(|s| *s == columns[9]) {
                rows.push(columns);
            }
        }
    }
    rows
}

/// The port of an ADDR:PORT column of /proc/net/tcp.
fn port_of(column: &str) -> Option<u16> {
    u16::from_str_radix(column.rsplit(':').next()?, 16).ok()
}

/// Every TCP port process `pid` listens on now.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    sockets_of(pid)
        .iter()
        .filter(|columns| columns[3] == "0A") // LISTEN
        .filter_map(|columns| port_of(&columns[1]))
        .collect()
}

/// How many connections process `pid` has established to `port`.
pub fn connections_to(pid: i32, port: u16) -> usize {
    sockets_of(pid)
        .iter()
        .filter(|columns| columns[3] == "01") // ESTABLISHED
        .filter(|columns| port_of(&columns[2]) == Some(port))
        .count()
}

/// The Python `mcp` 2.x SDK server (tests/peers/py_server.py); returns it and its /mcp URL.
pub fn python_server(port: u16, logs: &Path) -> (Proc, String) {
    python_server_with(port, logs, &[])
}

/// tests/peers/py_server.py with extra flags (e.g. `--modern-only`).
pub fn python_server_with(port: u16, logs: &Path, extra: &[&str]) -> (Proc, String) {
    let p = peers();
    let mut cmd = Command::new(p.get("PY"));
    cmd.arg(p.get("PY_SERVER"))
        .arg("--port")
        .arg(port.to_string())
        .args(extra);
    let proc = Proc::spawn(&format!("py-server-{port}"), cmd, logs);
    let line = proc.wait_line("READY", Duration::from_secs(30));
    let url = line.trim_start_matches("READY ").trim().to_string();
    (proc, url)
}

/// `kubernetes-mcp-server` over HTTP with a kubeconfig pointing nowhere, on
/// `port` (0: the kernel's choice); returns it and its port.
pub fn kubernetes_mcp_server(port: u16, logs: &Path) -> (Proc, u16) {
    kubernetes_mcp_server_with(port, logs, &[])
}

/// `kubernetes-mcp-server` with extra arguments (e.g. `--config` for OAuth).
pub fn kubernetes_mcp_server_with(port: u16, logs: &Path, extra: &[&str]) -> (Proc, u16) {
    let p = peers();
    let mut cmd = Command::new(p.get("KUBERNETES_MCP_SERVER"));
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind-address")
        .arg("127.0.0.1")
        .arg("--kubeconfig")
        .arg(p.get("KUBECONFIG_FAKE"))
        .args(extra)
        .env("HOME", logs);
    let proc = Proc::spawn(&format!("kubernetes-mcp-server-{port}"), cmd, logs);
    let port = listening_port(&proc, Duration::from_secs(30));
    (proc, port)
}

/// A running gateway on a port of the kernel's choice, over a manifest
/// directory (usually built with [`Fleet`]).
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    /// Directories the gateway owns (a [`Fleet`]'s), removed after it stops.
    pub owned: Vec<tempfile::TempDir>,
}

impl Gateway {
    pub fn start(manifests: &Path, logs: &Path) -> Gateway {
        Self::start_with(manifests, logs, &[])
    }

    pub fn start_with(manifests: &Path, logs: &Path, extra: &[&str]) -> Gateway {
        let mut args = vec!["--manifests".to_string(), manifests.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn("gateway", &args, &[], logs, manifests)
    }

    /// `flotilla serve --kubernetes` against the API server in `kubeconfig`,
    /// as replica `pod` (its Lease identity) in namespace `flotilla-system`.
    pub fn start_kubernetes(kubeconfig: &Path, pod: &str, extra: &[&str], logs: &Path) -> Gateway {
        let mut args = vec!["--kubernetes".to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let envs = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAME", pod.to_string()),
            ("POD_NAMESPACE", "flotilla-system".to_string()),
        ];
        Self::spawn(pod, &args, &envs, logs, logs)
    }

    fn spawn(
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        logs: &Path,
        dir: &Path,
    ) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.arg("serve")
            .arg("--port")
            .arg("0")
            .args(args)
            .env("RUST_LOG", "info,rmcp=warn,flotilla=debug");
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let proc = Proc::spawn(name, cmd, logs);
        let line = proc.wait_line("listening on", Duration::from_secs(30));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|s| s.trim_end_matches("/mcp").parse().ok())
            .expect("port in the listening line");
        let gateway = Gateway {
            proc,
            port,
            dir: dir.to_path_buf(),
            owned: Vec::new(),
        };
        gateway.wait_ready(Duration::from_secs(30));
        gateway
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let body = http_get(self.port, path).1;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http_get(self.port, "/readyz").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not ready; log:\n{}", self.proc.log_text());
    }

    /// The status row of one server from `/status`.
    pub fn server_status(&self, name: &str) -> serde_json::Value {
        let status = self.get_json("/status");
        status["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls `/status` until `server` reports `state`.
    pub fn wait_state(&self, server: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.server_status(server)["status"]["state"] == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{server} did not reach {state}: {}\nlog:\n{}",
            self.server_status(server),
            self.proc.log_text()
        );
    }
}

/// Minimal blocking HTTP GET on 127.0.0.1 (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep only the JSON between the first '{' and last '}'.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    (code, body)
}

/// Writes one manifest file into `dir`.
pub fn write_manifest(dir: &Path, file: &str, yaml: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
}

pub fn http_manifest(name: &str, url: &str, extra_spec: &str) -> String {
    let timeout = if extra_spec.contains("timeout:") {
        ""
    } else {
        "  timeout: 10\n"
    };
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  type: streamable-http\n  url: {url}\n{timeout}{extra_spec}"
    )
}

pub fn sim_manifest(name: &str, cluster: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  type: stdio\n  command: {}\n  args: [sim-cluster, --cluster, {cluster}]\n  timeout: 10\n{extra_spec}",
        env!("CARGO_BIN_EXE_flotilla")
    )
}

/// A test MCP client: counts `tools/list_changed`, records progress, and
/// answers elicitation (accepting `{"name": "Ada"}`), sampling (a canned
/// reply) and roots/list (one root, `file:///srv/flotilla-test`), recording
/// what it was asked.
#[derive(Clone, Default)]
pub struct TestClient {
    pub tool_list_changes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub progress: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
    pub asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[allow(deprecated)]
impl ClientHandler for TestClient {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut capabilities = rmcp::model::ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.elicitation = Some(
            rmcp::model::ElicitationCapability::new()
                .with_form(Default::default())
                .with_url(rmcp::model::UrlElicitationCapability::new()),
        );
        let mut roots = rmcp::model::RootsCapabilities::default();
        roots.list_changed = Some(true);
        capabilities.roots = Some(roots);
        rmcp::model::ClientConfig::new(
            capabilities,
            rmcp::model::Implementation::new("flotilla-tests", "1"),
        )
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        if let rmcp::model::ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.asked
                .lock()
                .unwrap()
                .push(format!("elicit: {message}"));
        }
        let mut result = rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept);
        result.content = Some(serde_json::json!({"name": "Ada"}));
        Ok(result)
    }

    async fn list_roots(
        &self,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, rmcp::ErrorData> {
        self.asked.lock().unwrap().push("roots".into());
        let root = serde_json::json!({"uri": "file:///srv/flotilla-test", "name": "flotilla-test"});
        Ok(rmcp::model::ListRootsResult::new(vec![
            serde_json::from_value(root).expect("a root"),
        ]))
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        self.asked.lock().unwrap().push(format!(
            "sample: {}",
            params.system_prompt.unwrap_or_default()
        ));
        Ok(rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text("hello from the client"),
            "test-model".into(),
        ))
    }

    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.tool_list_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params.progress);
    }
}

pub type Client = RunningService<RoleClient, TestClient>;

/// Runs the Python SDK client (tests/peers/py_client.py) against `url`:
/// `args` are its options, then its command; returns the JSON it prints.
pub fn py_client(url: &str, args: &[&str]) -> serde_json::Value {
    let peers = peers();
    let out = std::process::Command::new(peers.get("PY"))
        .arg(peers.get("PY_CLIENT"))
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .expect("running py_client.py");
    assert!(
        out.status.success(),
        "py_client {args:?} against {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("py_client prints JSON")
}

/// Connects a real rmcp client (initialize handshake, 2025-11-25) to `url`.
pub async fn connect(url: &str) -> Client {
    connect_with(url, TestClient::default()).await
}

pub async fn connect_with(url: &str, handler: TestClient) -> Client {
    let transport = StreamableHttpClientTransport::from_uri(url.to_string());
    handler
        .serve(transport)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A stateless 2026-07-28 client listening for tools/list_changed; keep the
/// client alive as long as the subscription is read.
pub async fn tools_listener(
    transport: StreamableHttpClientTransport<reqwest::Client>,
) -> (RunningService<RoleClient, ()>, rmcp::service::Subscription) {
    let client = rmcp::service::serve_client_with_lifecycle(
        (),
        transport,
        rmcp::service::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .expect("stateless client");
    let subscription = client
        .peer()
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
        .await
        .expect("subscriptions/listen");
    (client, subscription)
}

/// The fleet's tools (the gateway's own `flotilla_*` tools left out).
pub async fn list_tools(client: &Client) -> Vec<Tool> {
    let mut tools = client.peer().list_all_tools().await.expect("tools/list");
    tools.retain(|t| !t.name.starts_with("flotilla_"));
    tools
}

pub async fn call(client: &Client, tool: &str, args: serde_json::Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("tools/call {tool}: {e}"))
}

/// The instances a fan-out result answered for, in its order.
pub fn instances_of(result: &CallToolResult) -> Vec<String> {
    result
        .structured_content
        .as_ref()
        .expect("a fan-out result")["instances"]
        .as_object()
        .expect("instances")
        .keys()
        .cloned()
        .collect()
}

/// Starts a tools/call and returns its handle (to cancel it) without waiting for the answer.
pub async fn start_call(
    client: &Client,
    tool: &str,
    args: serde_json::Value,
) -> rmcp::service::RequestHandle<RoleClient> {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    client
        .peer()
        .send_request_with_option(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params)),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap_or_else(|e| panic!("tools/call {tool}: {e}"))
}

/// Starts a simulated cluster's 30 s `sleep` tool (`sleep`, with `args`),
/// cancels it after 300 ms, and waits until its `cancellations` tool (called
/// with the same `args`) counts that one cancellation: the cancellation
/// reached the server.
pub async fn cancel_and_see_it_arrive(
    client: &Client,
    sleep: &str,
    cancellations: &str,
    args: serde_json::Value,
) {
    let mut sleeping = args.clone();
    sleeping["seconds"] = serde_json::json!(30);
    let handle = start_call(client, sleep, sleeping).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .expect("the cancellation is sent");
    eventually(
        Duration::from_secs(5),
        "the cancellation at the server",
        || {
            let args = args.clone();
            async move { (text_of(&call(client, cancellations, args).await) == "1").then_some(()) }
        },
    )
    .await;
}

/// Text of all text blocks of a result.
pub fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Retries `check` every 100 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.proc.log_text());
        }
    }
}

/// Waits until the fleet's tools satisfy `check` (up to 15 s); returns their names.
pub async fn wait_tools(
    client: &Client,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    eventually(Duration::from_secs(15), what, || async {
        let names: Vec<String> = list_tools(client)
            .await
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        check(&names).then_some(names)
    })
    .await
}

/// Waits until a tool named `name` is listed.
pub async fn wait_tool(client: &Client, name: &str) -> Vec<String> {
    wait_tools(client, &format!("tool {name}"), |names| {
        names.iter().any(|n| n == name)
    })
    .await
}
