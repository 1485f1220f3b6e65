//! Flotilla gateway benchmark: `cargo bench --bench gateway`.
//!
//! Runs, in one go and on loopback only:
//! 1. tools/call latency (sequential) and closed-loop throughput (16 in
//!    flight) against the same echo upstream three ways: direct, through
//!    nginx (plain keep-alive reverse proxy) and through the gateway, with
//!    the CPU time each proxy spends per call (/proc utime+stime);
//! 2. tools/list through the gateway over 200 servers x 50 tools;
//! 3. gateway RSS per idle upstream session (once its sessions are parked)
//!    and startup time over 500 upstreams.
//!
//! The echo upstream is this very binary re-executed with `--upstream`, so
//! its CPU is not the gateway's. Every child process is stopped on exit,
//! including on panic. See benches/README.md for how to read the figures.

#[path = "support/client.rs"]
mod client;
#[path = "support/procs.rs"]
mod procs;
#[path = "support/setup.rs"]
mod setup;
#[path = "support/upstream.rs"]
mod upstream;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Request, Samples};
use procs::Proc;
use setup::{Run, locate_gateway, log, machine};

// ------------------------------------------------------------------ targets

const TARGET_ADDED_P50_MS: f64 = 0.12;
const TARGET_CPU_PER_CALL_US: f64 = 60.0;
const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
const TARGET_LIST_P50_MS: f64 = 2.0;
const TARGET_KB_PER_SESSION: f64 = 50.0;
const TARGET_STARTUP_S: f64 = 2.0;

/// Sizes of the run; `FLOTILLA_BENCH_QUICK=1` shrinks them for a smoke run.
struct Config {
    rounds: usize,
    seq_calls: usize,
    load: Duration,
    concurrency: usize,
    warm_calls: usize,
    warm_load: Duration,
    list_servers: usize,
    list_tools: usize,
    list_iters: usize,
    fleet: usize,
    fleet_runs: usize,
    settle: Duration,
    upstream_threads: usize,
    /// `FLOTILLA_BENCH_UPSTREAM=sessions`: the echo upstream keeps 2025
    /// sessions (the gateway holds one), else it is stateless.
    upstream_sessions: bool,
    /// `FLOTILLA_BENCH_CLIENT=sessions` (with a session upstream): the load
    /// client calls every target in a 2025-11-25 session of its own, else in
    /// 2026-07-28 requests.
    client_sessions: bool,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var_os("FLOTILLA_BENCH_QUICK").is_some_and(|v| v != "0");
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            rounds: if quick { 1 } else { 3 },
            seq_calls: if quick { 300 } else { 1000 },
            load: Duration::from_millis(if quick { 700 } else { 2500 }),
            concurrency: 16,
            warm_calls: if quick { 100 } else { 300 },
            warm_load: Duration::from_millis(if quick { 300 } else { 700 }),
            list_servers: 200,
            list_tools: 50,
            list_iters: if quick { 50 } else { 200 },
            fleet: 500,
            fleet_runs: if quick { 1 } else { 3 },
            // Past the gateway's own settling, once its idle sessions are
            // parked (`wait_parked`): freed heap is released 2 s after the
            // fleet last changed or sessions were parked (`fleet/trim.rs`).
            settle: Duration::from_millis(if quick { 500 } else { 3000 }),
            upstream_threads: threads,
            upstream_sessions: std::env::var("FLOTILLA_BENCH_UPSTREAM")
                .is_ok_and(|v| v == "sessions"),
            // A stateless upstream opens no sessions to call in.
            client_sessions: std::env::var("FLOTILLA_BENCH_UPSTREAM")
                .is_ok_and(|v| v == "sessions")
                && std::env::var("FLOTILLA_BENCH_CLIENT").is_ok_and(|v| v == "sessions"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--upstream") {
        let get = |flag: &str, default: usize| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let sessions = args.iter().any(|a| a == "--sessions");
        upstream::run(
            get("--servers", 1),
            get("--tools", 1),
            get("--threads", 2),
            sessions,
        );
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let mode = args.get(i + 1).map_or("call", String::as_str);
        let secs = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(30);
        if let Err(error) = profile(mode, secs) {
            eprintln!("\nprofile failed: {error}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(error) = run() {
        eprintln!("\nbench failed: {error}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ helpers

fn spawn_upstream(
    cfg: &Config,
    logs: &Path,
    name: &str,
    servers: usize,
    tools: usize,
) -> Result<(Proc, u16), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--upstream",
        "--servers",
        &servers.to_string(),
        "--tools",
        &tools.to_string(),
    ])
    .args(["--threads", &cfg.upstream_threads.to_string()]);
    if cfg.upstream_sessions {
        cmd.arg("--sessions");
    }
    let mut proc = Proc::spawn(name, cmd, logs)?;
    let line = proc.wait_line("READY", Duration::from_secs(30))?;
    let port = line
        .trim_start_matches("READY ")
        .trim()
        .parse()
        .map_err(|_| format!("bad READY line {line:?}"))?;
    Ok((proc, port))
}

fn write_manifests(dir: &Path, servers: &[(String, String)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (name, url) in servers {
        let yaml = format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  type: streamable-http\n  url: \"{url}\"\n  timeout: 10\n"
        );
        std::fs::write(dir.join(format!("{name}.yaml")), yaml).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Gateway {
    proc: Proc,
    /// `http://127.0.0.1:PORT`
    base: String,
    mcp: String,
}

/// Spawns `flotilla serve --manifests DIR --port 0` and waits for its URL.
/// Its audit log goes to a file in `logs` (as a production gateway's would
/// go to a file or a log collector, not to this benchmark's pipe).
fn start_gateway(bin: &Path, manifests: &Path, logs: &Path, name: &str) -> Result<Gateway, String> {
    let config = format!("audit:\n  file: {name}-audit.log\n");
    start_gateway_with(bin, manifests, logs, name, &config)
}

/// [`start_gateway`] with a config file of `config` (YAML).
fn start_gateway_with(
    bin: &Path,
    manifests: &Path,
    logs: &Path,
    name: &str,
    config: &str,
) -> Result<Gateway, String> {
    let config_path = logs.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--manifests")
        .arg(manifests)
        .arg("--config")
        .arg(&config_path)
        .args(["--port", "0"]);
    let mut proc = Proc::spawn(name, cmd, logs)?;
    let line = proc.wait_line("listening on", Duration::from_secs(30))?;
    let mcp = line
        .split_whitespace()
        .last()
        .ok_or_else(|| format!("bad listening line {line:?}"))?
        .to_string();
    let base = mcp.trim_end_matches("/mcp").to_string();
    Ok(Gateway { proc, base, mcp })
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Polls `/readyz` until it is 200 with `servers` servers all connected.
async fn wait_connected(
    client: &reqwest::Client,
    gateway: &Gateway,
    servers: u64,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("{}/readyz", gateway.base);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = get_json(client, &url).await {
            if status == 200
                && body["servers"].as_u64() == Some(servers)
                && body["connected"].as_u64() == Some(servers)
            {
                return Ok(());
            }
            last = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "gateway not ready with {servers} connected servers within {timeout:?}; last /readyz: {}",
        last.map(|b| b.to_string()).unwrap_or_default()
    ))
}

/// Polls `/status` until the catalog holds (at least) `tools` tools.
async fn wait_tools(
    client: &reqwest::Client,
    gateway: &Gateway,
    tools: u64,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("{}/status", gateway.base);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((_, body)) = get_json(client, &url).await {
            if body["tools"].as_u64().is_some_and(|n| n >= tools) {
                return Ok(());
            }
            last = body["tools"].as_u64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "catalog did not reach {tools} tools within {timeout:?} (last: {last:?})"
    ))
}

/// Waits until `sessions` upstream sessions are parked (idle: `/metrics`'
/// `flotilla_upstream_parked`, see `fleet/parking.rs`).
async fn wait_parked(
    client: &reqwest::Client,
    gateway: &Gateway,
    sessions: usize,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("{}/metrics", gateway.base);
    let mut last = 0;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(&url).send().await
            && let Ok(text) = response.text().await
        {
            last = text
                .lines()
                .filter(|l| l.starts_with("flotilla_upstream_parked{") && l.ends_with(" 1"))
                .count();
            if last >= sessions {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{last} of {sessions} sessions parked within {timeout:?}"
    ))
}

async fn protocol_of(client: &reqwest::Client, gateway: &Gateway) -> String {
    get_json(client, &format!("{}/status", gateway.base))
        .await
        .and_then(|(_, b)| {
            b["servers"][0]["protocolVersion"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        f64::NAN
    } else {
        values[values.len() / 2]
    }
}

// ------------------------------------------------------------- tools/call

/// One way to reach the echo tool, and the processes to charge CPU to.
struct Target {
    name: &'static str,
    request: Arc<Request>,
    /// What each of the closed loop's workers sends (in a session of its
    /// own with `FLOTILLA_BENCH_CLIENT=sessions`: ids are unique per session).
    workers: Vec<Arc<Request>>,
    proxy_pids: Vec<i32>,
    acc: Acc,
}

#[derive(Default)]
struct Acc {
    seq: Samples,
    seq_proxy_us: u64,
    seq_proxy_cs: u64,
    load: Samples,
    load_calls: u64,
    load_secs: f64,
    load_proxy_us: u64,
    load_proxy_cs: u64,
    load_echo_us: u64,
    load_client_us: u64,
}

struct CpuSnap {
    proxy: u64,
    proxy_cs: u64,
    echo: u64,
    client: u64,
}

fn snap(target: &Target, echo_pid: i32) -> CpuSnap {
    CpuSnap {
        proxy: procs::cpu_us_all(&target.proxy_pids),
        proxy_cs: procs::ctx_switches_all(&target.proxy_pids),
        echo: procs::cpu_us(echo_pid),
        client: procs::self_cpu_us(),
    }
}

struct CallResults {
    targets: Vec<Target>,
    nginx_note: Option<String>,
    nginx_version: Option<String>,
    gateway_rss_after_kib: u64,
    protocol: String,
    /// CPU used by processes outside this benchmark during the tools/call
    /// rounds, in cores (0.25 = a quarter of one core).
    foreign_cores: f64,
    loadavg: String,
}

fn bench_calls(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    bin: &Path,
    work: &Path,
) -> Result<CallResults, String> {
    log("tools/call: starting echo upstream, nginx and gateway");
    let (echo, port) = spawn_upstream(cfg, work, "echo-calls", 1, 1)?;
    let direct_url = format!("http://127.0.0.1:{port}/s/0/mcp");

    let mut nginx_note = None;
    let mut nginx_version = None;
    let nginx: Option<(Proc, u16)> = match procs::find_or_install_nginx() {
        Ok(nginx_bin) => {
            nginx_version = Some(procs::nginx_version(&nginx_bin));
            match procs::start_nginx(&nginx_bin, work, port) {
                Ok(n) => Some(n),
                Err(e) => {
                    nginx_note = Some(format!("nginx target skipped: could not start nginx: {e}"));
                    None
                }
            }
        }
        Err(reason) => {
            nginx_note = Some(format!("nginx target skipped: {reason}"));
            None
        }
    };
    if let Some(note) = &nginx_note {
        log(note);
    }

    let manifests = work.join("manifests-calls");
    write_manifests(&manifests, &[("echo".into(), direct_url.clone())])?;
    let gateway = start_gateway(bin, &manifests, work, "flotilla-calls")?;
    // The same gateway without its audit log, and with traces exported
    // (to nginx, which answers OTLP exports 200): what each costs per call.
    let quiet = start_gateway_with(
        bin,
        &manifests,
        work,
        "flotilla-no-audit",
        "audit:\n  enabled: false\n",
    )?;
    let traced = match &nginx {
        Some((_, nport)) => Some(start_gateway_with(
            bin,
            &manifests,
            work,
            "flotilla-traced",
            &format!(
                "audit:\n  file: flotilla-traced-audit.log\ntracing:\n  otlpEndpoint: http://127.0.0.1:{nport}\n"
            ),
        )?),
        None => None,
    };
    rt.block_on(async {
        for g in std::iter::once(&gateway)
            .chain(std::iter::once(&quiet))
            .chain(traced.as_ref())
        {
            wait_connected(http, g, 1, Duration::from_secs(30)).await?;
            wait_tools(http, g, 1, Duration::from_secs(10)).await?;
        }
        Ok::<_, String>(())
    })?;
    let protocol = rt.block_on(protocol_of(http, &gateway));
    // The call each target gets: a 2026-07-28 request, or one in a session
    // of its own opened now.
    let call_of = |url: &str, tool: &str| -> Result<Arc<Request>, String> {
        Ok(Arc::new(if cfg.client_sessions {
            let session = rt.block_on(client::open_session(http, url))?;
            Request::call_in_session(url, tool, &session)
        } else {
            Request::call(url, tool)
        }))
    };
    // One call per closed-loop worker: the same request, or each in a
    // session of its own (a session's requests in flight need distinct ids).
    let workers_of = |url: &str, tool: &str| -> Result<Vec<Arc<Request>>, String> {
        match cfg.client_sessions {
            true => (0..cfg.concurrency).map(|_| call_of(url, tool)).collect(),
            false => {
                let shared = Arc::new(Request::call(url, tool));
                Ok(std::iter::repeat_n(shared, cfg.concurrency).collect())
            }
        }
    };

    let mut targets = vec![Target {
        name: "direct",
        request: call_of(&direct_url, "echo")?,
        workers: workers_of(&direct_url, "echo")?,
        proxy_pids: vec![],
        acc: Acc::default(),
    }];
    if let Some((proc, nport)) = &nginx {
        let mut pids = vec![proc.pid()];
        pids.extend(&proc.companions);
        targets.push(Target {
            name: "nginx",
            request: call_of(&format!("http://127.0.0.1:{nport}/s/0/mcp"), "echo")?,
            workers: workers_of(&format!("http://127.0.0.1:{nport}/s/0/mcp"), "echo")?,
            proxy_pids: pids,
            acc: Acc::default(),
        });
    }
    targets.push(Target {
        name: "flotilla",
        request: call_of(&gateway.mcp, "x_echo_echo")?,
        workers: workers_of(&gateway.mcp, "x_echo_echo")?,
        proxy_pids: vec![gateway.proc.pid()],
        acc: Acc::default(),
    });
    targets.push(Target {
        name: "flotilla, audit off",
        request: call_of(&quiet.mcp, "x_echo_echo")?,
        workers: workers_of(&quiet.mcp, "x_echo_echo")?,
        proxy_pids: vec![quiet.proc.pid()],
        acc: Acc::default(),
    });
    if let Some(traced) = &traced {
        targets.push(Target {
            name: "flotilla, traced",
            request: call_of(&traced.mcp, "x_echo_echo")?,
            workers: workers_of(&traced.mcp, "x_echo_echo")?,
            proxy_pids: vec![traced.proc.pid()],
            acc: Acc::default(),
        });
    }

    rt.block_on(async {
        // Correctness first: each target really echoes.
        for t in &targets {
            let body = t.request.send(http).await?;
            let reply = client::reply_json(&body)?;
            let text = reply["result"]["content"][0]["text"].as_str();
            if text != Some(client::ECHO_TEXT) {
                return Err(format!("{} did not echo: {reply}", t.name));
            }
        }
        log("tools/call: warming up");
        for t in &targets {
            client::sequential(http, &t.request, cfg.warm_calls).await?;
            client::closed_loop_each(http, t.workers.clone(), cfg.warm_load).await?;
        }
        Ok::<_, String>(())
    })?;

    let echo_pid = echo.pid();
    let n = targets.len();
    // Everything this run owns; the rest of the machine's CPU use is interference.
    let mut ours: Vec<i32> = vec![std::process::id() as i32, echo_pid];
    for t in &targets {
        ours.extend(&t.proxy_pids);
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let busy0 = procs::machine_busy_us();
    let ours0 = procs::cpu_us_all(&ours);
    let wall0 = Instant::now();
    for round in 0..cfg.rounds {
        log(format!("tools/call: round {}/{}", round + 1, cfg.rounds));
        // Rotate the order so no target always runs first (or last).
        for k in 0..n {
            let t = &mut targets[(round + k) % n];
            rt.block_on(async {
                let before = snap(t, echo_pid);
                let seq = client::sequential(http, &t.request, cfg.seq_calls).await?;
                let after = snap(t, echo_pid);
                t.acc.seq.extend(&seq);
                t.acc.seq_proxy_us += after.proxy - before.proxy;
                t.acc.seq_proxy_cs += after.proxy_cs - before.proxy_cs;

                let before = snap(t, echo_pid);
                let load = client::closed_loop_each(http, t.workers.clone(), cfg.load).await?;
                let after = snap(t, echo_pid);
                t.acc.load.extend(&load.samples);
                t.acc.load_calls += load.calls;
                t.acc.load_secs += load.elapsed.as_secs_f64();
                t.acc.load_proxy_us += after.proxy - before.proxy;
                t.acc.load_proxy_cs += after.proxy_cs - before.proxy_cs;
                t.acc.load_echo_us += after.echo - before.echo;
                t.acc.load_client_us += after.client - before.client;
                Ok::<_, String>(())
            })?;
        }
    }
    let foreign_us = procs::machine_busy_us()
        .saturating_sub(busy0)
        .saturating_sub(procs::cpu_us_all(&ours) - ours0);
    let foreign_cores = foreign_us as f64 / 1e6 / wall0.elapsed().as_secs_f64();
    let gateway_rss_after_kib = procs::rss_kib(gateway.proc.pid());
    drop(traced);
    drop(quiet);
    drop(gateway);
    drop(nginx);
    drop(echo);
    Ok(CallResults {
        targets,
        nginx_note,
        nginx_version,
        gateway_rss_after_kib,
        protocol,
        foreign_cores,
        loadavg,
    })
}

// ---------------------------------------------------------- observability

/// What the gateway's own bookkeeping costs per tool call, measured in
/// this process on the gateway's code (no network, nothing else running):
/// the metrics alone, then metrics and an audit line written to a file.
struct ObservabilityResults {
    calls: u32,
    metrics_us: f64,
    metrics_audit_us: f64,
    audit_lines: usize,
}

fn bench_observability(work: &Path) -> Result<ObservabilityResults, String> {
    use flotilla::gateway::audit::{AuditLog, AuditSettings};
    use flotilla::gateway::call_record::{CallRecord, Observer};
    use flotilla::gateway::metrics::{CallTarget, Metrics, Outcome};
    const CALLS: u32 = 200_000;
    const BATCH: u32 = 10_000;
    log("observability: metrics and audit cost per call, in process");
    let target = CallTarget {
        tool: "x_kubernetes_list_pods".into(),
        upstream_tool: "list_pods".into(),
        family: "kubernetes".into(),
        server: "cluster-a-mcp-kubernetes".into(),
        instance: "cluster-a".into(),
    };
    let arguments = serde_json::json!({"management_cluster": "cluster-a", "namespace": "default"});
    let arguments = arguments.as_object().cloned();
    let run = |observer: &Observer| {
        let before = procs::self_cpu_us();
        for batch in 0..CALLS / BATCH {
            for _ in 0..BATCH {
                CallRecord::start(observer, &target.tool, None, arguments.as_ref())
                    .to(target.clone())
                    .finish(Outcome::Ok);
            }
            // Let the writer keep up, so no line is dropped (and its work is counted).
            while observer.audit.queued() > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = batch;
        }
        (procs::self_cpu_us() - before) as f64 / f64::from(CALLS)
    };
    let metrics = Arc::new(Metrics::default());
    let metrics_us = run(&Observer {
        metrics: metrics.clone(),
        audit: Arc::new(AuditLog::off()),
    });
    let file = work.join("bench-audit.log");
    let audit = AuditLog::start(
        &AuditSettings {
            file: Some(file.clone()),
            ..AuditSettings::default()
        },
        metrics.audit_dropped.clone(),
    )
    .map_err(|e| e.to_string())?;
    let metrics_audit_us = run(&Observer {
        metrics,
        audit: Arc::new(audit),
    });
    std::thread::sleep(Duration::from_millis(200));
    let audit_lines = std::fs::read_to_string(&file)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    Ok(ObservabilityResults {
        calls: CALLS,
        metrics_us,
        metrics_audit_us,
        audit_lines,
    })
}

// ------------------------------------------------------------------ policy

/// What a tool policy costs per tool call, in this process on the gateway's
/// code: 100 rules (98 that do not apply to the call, after checks on every
/// kind of condition, a readOnly and a confirm that do), the caller's class
/// computed and the verdict decided, as each call does.
struct PolicyResults {
    rules: usize,
    calls: u32,
    per_call_us: f64,
}

fn bench_policy() -> Result<PolicyResults, String> {
    use flotilla::api::{IdentitySource, ToolPolicySpec, UserIdentity, UserKey};
    use flotilla::catalog::{Instance, ServerFacts};
    use flotilla::policy::{Policy, Target, Verdict, Who};
    use flotilla::source::DesiredPolicy;
    const CALLS: u32 = 200_000;
    log("policy: evaluation cost per call with 100 rules, in process");
    let mut rules = String::from("rules:\n");
    for i in 0..98 {
        let condition = match i % 7 {
            0 => format!("{{families: [family-{i}]}}"),
            1 => format!("{{servers: [\"server-{i}-*\"]}}"),
            2 => format!("{{labels: \"team=t{i},env!=dev\"}}"),
            3 => format!("{{groups: [group-{i}], tools: [\"delete_*\"]}}"),
            4 => format!("{{subjects: [\"user-{i}\"]}}"),
            5 => {
                format!("{{instances: [\"cluster-{i}\"], annotations: {{destructiveHint: true}}}}")
            }
            _ => format!("{{clients: [\"client-{i}\"]}}"),
        };
        rules.push_str(&format!(
            "- {{name: r{i}, effect: deny, match: {condition}}}\n"
        ));
    }
    rules.push_str(
        "- {name: prod-ro, effect: readOnly, match: {labels: env=prod}, except: {groups: [sre]}}\n",
    );
    rules
        .push_str("- {name: confirm, effect: confirm, match: {labels: env=prod, groups: [sre]}}\n");
    let spec: ToolPolicySpec = serde_saphyr::from_str(&rules).map_err(|e| e.to_string())?;
    let policy = Policy::compile(&[DesiredPolicy {
        name: "bench".into(),
        namespace: "default".into(),
        generation: None,
        spec,
        origin: "bench".into(),
    }]);
    let labels: std::collections::BTreeMap<String, String> =
        [("env", "prod"), ("region", "eu"), ("team", "platform")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let facts = ServerFacts {
        labels: labels.clone(),
        family: Some((
            "kubernetes".into(),
            Instance {
                server: "cluster-a-mcp-kubernetes".into(),
                instance: "cluster-a".into(),
                aliases: vec!["prod-eu".into()],
                labels,
            },
        )),
        task_extension: false,
    };
    let user = UserIdentity {
        key: UserKey {
            issuer: "https://dex.example".into(),
            subject: "alice".into(),
        },
        display_name: None,
        id_token: None,
        expires_at: None,
        source: IdentitySource::GatewayLogin,
        client: Some("claude-code".into()),
        groups: vec!["dev".into(), "payments".into(), "oncall".into()],
    };
    let annotations = rmcp::model::ToolAnnotations::new()
        .read_only(false)
        .destructive(true);
    let target = Target {
        server: "cluster-a-mcp-kubernetes",
        facts: &facts,
        tool: "delete_pod",
        annotations: Some(&annotations),
    };
    // The verdict the call gets must be the readOnly denial: every rule was walked.
    let check = policy.decide(&policy.classify(&Who::of(Some(&user))), &target);
    if !matches!(
        check,
        Verdict::Deny {
            read_only: true,
            ..
        }
    ) {
        return Err(format!("policy bench: unexpected verdict {check:?}"));
    }
    let started = Instant::now();
    for _ in 0..CALLS {
        let who = Who::of(Some(std::hint::black_box(&user)));
        let class = policy.classify(&who);
        std::hint::black_box(policy.decide(&class, std::hint::black_box(&target)));
    }
    Ok(PolicyResults {
        rules: policy.rule_count(),
        calls: CALLS,
        per_call_us: started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS),
    })
}

fn report_policy(md: &mut String, p: &PolicyResults) {
    let _ = writeln!(md, "\n### Policy evaluation per tool call\n");
    let _ = writeln!(
        md,
        "| What | time per call | target |\n|---|---:|---|\n| caller class + verdict, {} rules (in process, {} calls) | {:.3} µs | {} |\n",
        p.rules,
        p.calls,
        p.per_call_us,
        verdict_max(p.per_call_us, 2.0, "µs", |v| format!("{v:.3}")),
    );
}

// ------------------------------------------------------------- tools/list

struct ListResults {
    tools: usize,
    samples: Samples,
    body_bytes: usize,
    cpu_per_list_us: f64,
    direct_p50_us: f64,
    direct_body_bytes: usize,
    /// The same bytes as a static file from nginx: the transfer floor.
    static_p50_us: Option<f64>,
    foreign_cores: f64,
}

fn bench_list(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    bin: &Path,
    work: &Path,
) -> Result<ListResults, String> {
    let expected = cfg.list_servers * cfg.list_tools;
    log(format!(
        "tools/list: {} servers x {} tools = {expected} tools",
        cfg.list_servers, cfg.list_tools
    ));
    let interference = procs::Interference::start();
    let (echo, port) = spawn_upstream(cfg, work, "echo-list", cfg.list_servers, cfg.list_tools)?;
    let servers: Vec<(String, String)> = (0..cfg.list_servers)
        .map(|i| {
            (
                format!("echo-{i}"),
                format!("http://127.0.0.1:{port}/s/{i}/mcp"),
            )
        })
        .collect();
    let manifests = work.join("manifests-list");
    write_manifests(&manifests, &servers)?;
    let gateway = start_gateway(bin, &manifests, work, "flotilla-list")?;
    let result = rt.block_on(async {
        wait_connected(
            http,
            &gateway,
            cfg.list_servers as u64,
            Duration::from_secs(60),
        )
        .await?;
        wait_tools(http, &gateway, expected as u64, Duration::from_secs(30)).await?;
        let request = Request::list_tools(&gateway.mcp);
        let body = request.send(http).await?;
        let reply = client::reply_json(&body)?;
        let listed = reply["result"]["tools"].as_array().cloned().unwrap_or_default();
        let tools = listed.len();
        // The gateway adds its own tools (e.g. flotilla_list_fleet) to the upstreams'.
        let upstream_tools = listed
            .iter()
            .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("x_echo-")))
            .count();
        if upstream_tools != expected {
            return Err(format!(
                "tools/list returned {upstream_tools} upstream tools ({tools} in all), expected {expected}"
            ));
        }
        for _ in 0..20 {
            request.send(http).await?;
        }
        let pid = gateway.proc.pid();
        let cpu0 = procs::cpu_us(pid);
        let mut samples = Vec::with_capacity(cfg.list_iters);
        let mut body_bytes = 0;
        for _ in 0..cfg.list_iters {
            let start = Instant::now();
            body_bytes = request.send(http).await?.len();
            samples.push(start.elapsed().as_nanos() as u64);
        }
        let cpu = procs::cpu_us(pid) - cpu0;

        // Reference: one upstream's own 50-tool list, fetched directly.
        let direct = Request::list_tools(&servers[0].1);
        let mut direct_samples = Vec::new();
        let mut direct_body_bytes = 0;
        for _ in 0..cfg.list_iters {
            let start = Instant::now();
            direct_body_bytes = direct.send(http).await?.len();
            direct_samples.push(start.elapsed().as_nanos() as u64);
        }
        let results = ListResults {
            tools,
            samples: Samples(samples),
            body_bytes,
            cpu_per_list_us: cpu as f64 / cfg.list_iters as f64,
            direct_p50_us: Samples(direct_samples).pct_us(50.0),
            direct_body_bytes,
            static_p50_us: None,
            foreign_cores: 0.0,
        };
        Ok((results, body))
    });
    drop(gateway);
    drop(echo);
    let (mut results, body) = result?;

    // The floor: the very same bytes served as a static file by nginx.
    if let Ok(nginx) = procs::find_or_install_nginx() {
        let root = work.join("static");
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        std::fs::write(root.join("tools.json"), &body).map_err(|e| e.to_string())?;
        match procs::start_nginx_static(&nginx, work, &root) {
            Ok((proc, port)) => {
                let url = format!("http://127.0.0.1:{port}/tools.json");
                let samples = rt.block_on(async {
                    let mut samples = Vec::with_capacity(cfg.list_iters);
                    for i in 0..cfg.list_iters + 20 {
                        let start = Instant::now();
                        let n = client::get_len(http, &url).await?;
                        if n != body.len() {
                            return Err(format!("static file: {n} bytes, expected {}", body.len()));
                        }
                        if i >= 20 {
                            samples.push(start.elapsed().as_nanos() as u64);
                        }
                    }
                    Ok::<_, String>(samples)
                });
                drop(proc);
                match samples {
                    Ok(s) => results.static_p50_us = Some(Samples(s).pct_us(50.0)),
                    Err(e) => log(format!("static-file reference skipped: {e}")),
                }
            }
            Err(e) => log(format!("static-file reference skipped: {e}")),
        }
    }
    results.foreign_cores = interference.finish();
    Ok(results)
}

// ------------------------------------------------------------ fleet scale

struct FleetResults {
    startup_s: Vec<f64>,
    listening_s: Vec<f64>,
    startup_cpu_ms: Vec<f64>,
    rss_base_kib: Vec<f64>,
    rss_full_kib: Vec<f64>,
    foreign_cores: f64,
}

fn bench_fleet(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    bin: &Path,
    work: &Path,
) -> Result<FleetResults, String> {
    log(format!(
        "fleet: {} upstreams (startup and idle memory)",
        cfg.fleet
    ));
    let interference = procs::Interference::start();
    let (echo, port) = spawn_upstream(cfg, work, "echo-fleet", cfg.fleet, 1)?;
    let servers: Vec<(String, String)> = (0..cfg.fleet)
        .map(|i| {
            (
                format!("echo-{i}"),
                format!("http://127.0.0.1:{port}/s/{i}/mcp"),
            )
        })
        .collect();
    let one = work.join("manifests-one");
    write_manifests(&one, &servers[..1])?;
    let full = work.join("manifests-fleet");
    write_manifests(&full, &servers)?;

    let mut out = FleetResults {
        startup_s: vec![],
        listening_s: vec![],
        startup_cpu_ms: vec![],
        rss_base_kib: vec![],
        rss_full_kib: vec![],
        foreign_cores: 0.0,
    };
    for run in 0..cfg.fleet_runs {
        log(format!("fleet: run {}/{}", run + 1, cfg.fleet_runs));
        // Baseline: a gateway with one idle upstream.
        let base = start_gateway(bin, &one, work, &format!("flotilla-one-{run}"))?;
        rt.block_on(async {
            wait_connected(http, &base, 1, Duration::from_secs(30)).await?;
            wait_tools(http, &base, 1, Duration::from_secs(10)).await?;
            wait_parked(http, &base, 1, Duration::from_secs(40)).await
        })?;
        std::thread::sleep(cfg.settle);
        out.rss_base_kib
            .push(procs::rss_kib(base.proc.pid()) as f64);
        drop(base);

        // The fleet: spawn-to-ready time, then idle RSS.
        let started = Instant::now();
        let gateway = start_gateway(bin, &full, work, &format!("flotilla-fleet-{run}"))?;
        out.listening_s.push(started.elapsed().as_secs_f64());
        rt.block_on(wait_connected(
            http,
            &gateway,
            cfg.fleet as u64,
            Duration::from_secs(60),
        ))?;
        out.startup_s.push(started.elapsed().as_secs_f64());
        out.startup_cpu_ms
            .push(procs::cpu_us(gateway.proc.pid()) as f64 / 1000.0);
        rt.block_on(wait_tools(
            http,
            &gateway,
            cfg.fleet as u64,
            Duration::from_secs(30),
        ))?;
        rt.block_on(wait_parked(
            http,
            &gateway,
            cfg.fleet,
            Duration::from_secs(40),
        ))?;
        std::thread::sleep(cfg.settle);
        out.rss_full_kib
            .push(procs::rss_kib(gateway.proc.pid()) as f64);
        drop(gateway);
    }
    drop(echo);
    out.foreign_cores = interference.finish();
    Ok(out)
}

// ----------------------------------------------------------------- report

/// The note after a section whose figures other processes disturbed.
fn disturbed(cores: f64) -> String {
    if cores > 0.10 {
        format!(
            "**Other processes used {:.0}% of a core during this section: its figures are disturbed; rerun on an idle machine.**\n\n",
            cores * 100.0
        )
    } else {
        String::new()
    }
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// "pass (40% headroom)" / "miss by 0.20 ms (2.7x the target)" for an upper bound.
fn verdict_max(value: f64, goal: f64, unit: &str, fmt: impl Fn(f64) -> String) -> String {
    if value.is_nan() {
        return "n/a".into();
    }
    if value <= goal {
        format!("**pass** ({:.0}% under)", (1.0 - value / goal) * 100.0)
    } else {
        format!(
            "**miss** by {}{unit} ({:.1}x the target)",
            fmt(value - goal),
            value / goal
        )
    }
}

/// The observability section: in-process cost per call, and what the
/// audit log and trace export add to the gateway's CPU per call under load.
fn report_observability(md: &mut String, calls: &CallResults, o: &ObservabilityResults) {
    let cpu = |name: &str| {
        calls
            .targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.acc.load_proxy_us as f64 / t.acc.load_calls.max(1) as f64)
    };
    let _ = writeln!(md, "\n### Observability cost per tool call\n");
    let _ = writeln!(
        md,
        "| What | CPU per call | target |\n|---|---:|---|\n| metrics (in process, {} calls) | {:.2} µs | |\n| metrics + audit line to a file (in process; {} lines written) | {:.2} µs | {} |",
        o.calls,
        o.metrics_us,
        o.audit_lines,
        o.metrics_audit_us,
        verdict_max(o.metrics_audit_us, 5.0, "µs", |v| format!("{v:.2}")),
    );
    if let (Some(on), Some(off)) = (cpu("flotilla"), cpu("flotilla, audit off")) {
        let _ = writeln!(
            md,
            "| audit log, end to end (gateway CPU/call under load, audit on - off) | {:.1} µs | |",
            on - off
        );
    }
    if let (Some(traced), Some(plain)) = (cpu("flotilla, traced"), cpu("flotilla")) {
        let _ = writeln!(
            md,
            "| trace export over OTLP, end to end (traced - not) | {:.1} µs | |",
            traced - plain
        );
    }
    let _ = writeln!(md);
}

fn report(
    cfg: &Config,
    calls: &CallResults,
    list: &ListResults,
    fleet: &mut FleetResults,
    bin: &Path,
    provenance: &str,
) -> String {
    let mut md = String::new();
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let _ = writeln!(md, "## Flotilla gateway benchmark — {now}\n");
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(
        md,
        "- Gateway: `{}` ({provenance}); gateway↔upstream protocol: {}",
        bin.file_name().map_or(bin.display().to_string(), |n| n
            .to_string_lossy()
            .into_owned()),
        calls.protocol
    );
    let mode = match (cfg.upstream_sessions, cfg.client_sessions) {
        (true, false) => {
            "session mode: the gateway holds a 2025 session, the bench client's 2026-07-28 requests are served statelessly"
        }
        (true, true) => {
            "session mode: the gateway holds a 2025 session, and the bench client calls every target in a 2025-11-25 session of its own"
        }
        (false, _) => "stateless mode",
    };
    let _ = writeln!(
        md,
        "- Upstream: rmcp 3.9 echo server in its own process (Streamable HTTP, {mode}, JSON responses)"
    );
    match (&calls.nginx_version, &calls.nginx_note) {
        (_, Some(note)) => {
            let _ = writeln!(md, "- {note}");
        }
        (Some(v), None) => {
            let _ = writeln!(
                md,
                "- nginx {v}: `worker_processes auto`, keepalive upstream, `proxy_buffering off`"
            );
        }
        _ => {}
    }
    let _ = writeln!(
        md,
        "- tools/call: {} rounds x ({} sequential calls + {:.1} s closed loop at {} in flight) per target, targets interleaved; \
         client: reqwest, raw JSON-RPC POSTs, one thread",
        cfg.rounds,
        cfg.seq_calls,
        cfg.load.as_secs_f64(),
        cfg.concurrency
    );

    let _ = writeln!(
        md,
        "- Other processes' CPU use during the tools/call rounds: {:.0}% of a core (load average before: {}){}\n",
        calls.foreign_cores * 100.0,
        calls.loadavg,
        if calls.foreign_cores > 0.10 {
            " — **the machine was not idle: these figures are disturbed; rerun on an idle machine**"
        } else {
            ""
        }
    );
    let direct = calls
        .targets
        .iter()
        .find(|t| t.name == "direct")
        .expect("direct");
    let d50 = direct.acc.seq.pct_us(50.0);
    let d99 = direct.acc.seq.pct_us(99.0);
    let tput = |t: &Target| t.acc.load_calls as f64 / t.acc.load_secs;
    let dtput = tput(direct);

    let per = |x: u64, n: u64| x as f64 / n.max(1) as f64;
    let _ = writeln!(
        md,
        "### tools/call latency, one call at a time ({} calls per target)\n",
        direct.acc.seq.len()
    );
    let _ = writeln!(
        md,
        "| Target | p50 | p99 | added p50 | added p99 | proxy CPU/call | proxy context switches/call |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for t in &calls.targets {
        let a = &t.acc;
        let p50 = a.seq.pct_us(50.0);
        let p99 = a.seq.pct_us(99.0);
        let n = a.seq.len() as u64;
        let (added50, added99, cpu, cs) = if t.proxy_pids.is_empty() {
            ("—".into(), "—".into(), "—".into(), "—".into())
        } else {
            (
                ms(p50 - d50),
                ms(p99 - d99),
                format!("{:.1} µs", per(a.seq_proxy_us, n)),
                format!("{:.1}", per(a.seq_proxy_cs, n)),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {added50} | {added99} | {cpu} | {cs} |",
            t.name,
            ms(p50),
            ms(p99),
        );
    }
    let _ = writeln!(
        md,
        "\n### tools/call throughput, closed loop, {} in flight ({:.1} s per target)\n",
        cfg.concurrency, direct.acc.load_secs
    );
    let _ = writeln!(
        md,
        "| Target | calls/s | vs direct | p50 | p99 | proxy CPU/call | proxy context switches/call | echo CPU/call | client CPU/call |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &calls.targets {
        let a = &t.acc;
        let (cpu, cs) = if t.proxy_pids.is_empty() {
            ("—".into(), "—".into())
        } else {
            (
                format!("{:.1} µs", per(a.load_proxy_us, a.load_calls)),
                format!("{:.1}", per(a.load_proxy_cs, a.load_calls)),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {} | {} | {cpu} | {cs} | {:.1} µs | {:.1} µs |",
            t.name,
            tput(t),
            tput(t) / dtput,
            ms(a.load.pct_us(50.0)),
            ms(a.load.pct_us(99.0)),
            per(a.load_echo_us, a.load_calls),
            per(a.load_client_us, a.load_calls),
        );
    }
    let flotilla = calls
        .targets
        .iter()
        .find(|t| t.name == "flotilla")
        .expect("flotilla");
    let nginx = calls.targets.iter().find(|t| t.name == "nginx");
    let f_added50 = flotilla.acc.seq.pct_us(50.0) - d50;
    let f_cpu = flotilla.acc.load_proxy_us as f64 / flotilla.acc.load_calls as f64;
    let f_ratio = tput(flotilla) / dtput;
    let _ = writeln!(md);
    let _ = writeln!(md, "- flotilla / direct throughput: **{f_ratio:.2}**");
    if let Some(n) = nginx {
        let n_added50 = n.acc.seq.pct_us(50.0) - d50;
        let _ = writeln!(md, "- nginx / direct throughput: {:.2}", tput(n) / dtput);
        let _ = writeln!(
            md,
            "- flotilla added p50 / nginx added p50: **{:.1}x** ({} vs {})",
            f_added50 / n_added50,
            ms(f_added50),
            ms(n_added50)
        );
        let n_cpu = n.acc.load_proxy_us as f64 / n.acc.load_calls as f64;
        let _ = writeln!(
            md,
            "- flotilla CPU/call / nginx CPU/call: {:.1}x",
            f_cpu / n_cpu
        );
    }
    let _ = writeln!(
        md,
        "- gateway RSS after the tools/call runs: {:.1} MiB\n",
        calls.gateway_rss_after_kib as f64 / 1024.0
    );

    let l50 = list.samples.pct_us(50.0);
    let _ = writeln!(
        md,
        "### tools/list through the gateway ({} tools)\n",
        list.tools
    );
    let _ = writeln!(
        md,
        "| Servers x tools | p50 | p99 | response size | gateway CPU/list | same bytes as a static file from nginx, p50 | one upstream direct (50 tools) p50 |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {} x {} | {} | {} | {:.0} KiB ({} B) | {:.0} µs | {} | {} ({:.1} KiB) |\n",
        cfg.list_servers,
        cfg.list_tools,
        ms(l50),
        ms(list.samples.pct_us(99.0)),
        list.body_bytes as f64 / 1024.0,
        list.body_bytes,
        list.cpu_per_list_us,
        list.static_p50_us.map_or("—".into(), ms),
        ms(list.direct_p50_us),
        list.direct_body_bytes as f64 / 1024.0,
    );
    md.push_str(&disturbed(list.foreign_cores));

    let startup = median(&mut fleet.startup_s.clone());
    let base = median(&mut fleet.rss_base_kib.clone());
    let full = median(&mut fleet.rss_full_kib.clone());
    let per_session_kb = (full - base) * 1024.0 / 1000.0 / (cfg.fleet - 1) as f64;
    let _ = writeln!(md, "### Fleet of {} idle upstreams\n", cfg.fleet);
    let _ = writeln!(
        md,
        "| Runs | spawn → /readyz 200, all connected (median) | per run | spawn → listening | gateway CPU to ready | RSS, 1 upstream | RSS, {} upstreams | per idle session |",
        cfg.fleet
    );
    let _ = writeln!(md, "|---:|---:|---|---:|---:|---:|---:|---:|");
    let runs: Vec<String> = fleet
        .startup_s
        .iter()
        .map(|s| format!("{s:.2} s"))
        .collect();
    let _ = writeln!(
        md,
        "| {} | {startup:.2} s | {} | {:.0} ms | {:.0} ms | {:.1} MiB | {:.1} MiB | {per_session_kb:.1} KB |\n",
        fleet.startup_s.len(),
        runs.join(", "),
        median(&mut fleet.listening_s.clone()) * 1000.0,
        median(&mut fleet.startup_cpu_ms.clone()),
        base / 1024.0,
        full / 1024.0,
    );

    md.push_str(&disturbed(fleet.foreign_cores));
    let _ = writeln!(md, "### Targets\n");
    let _ = writeln!(md, "| Target | Goal | Measured | Result |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    let _ = writeln!(
        md,
        "| Added p50 latency (flotilla − direct) | ≤ {TARGET_ADDED_P50_MS:.2} ms | {} | {} |",
        ms(f_added50),
        verdict_max(f_added50 / 1000.0, TARGET_ADDED_P50_MS, " ms", |v| format!(
            "{v:.3}"
        ))
    );
    let _ = writeln!(
        md,
        "| Gateway CPU per proxied call (@{}) | ≤ {TARGET_CPU_PER_CALL_US:.0} µs | {f_cpu:.1} µs | {} |",
        cfg.concurrency,
        verdict_max(f_cpu, TARGET_CPU_PER_CALL_US, " µs", |v| format!("{v:.1}"))
    );
    let tput_verdict = if f_ratio >= TARGET_THROUGHPUT_RATIO {
        format!(
            "**pass** ({:.0}% above)",
            (f_ratio / TARGET_THROUGHPUT_RATIO - 1.0) * 100.0
        )
    } else {
        format!(
            "**miss** by {:.0} points ({:.0}% of the goal)",
            (TARGET_THROUGHPUT_RATIO - f_ratio) * 100.0,
            f_ratio / TARGET_THROUGHPUT_RATIO * 100.0
        )
    };
    let _ = writeln!(
        md,
        "| Throughput vs direct (@{}) | ≥ {:.0}% | {:.0}% ({:.0} vs {:.0} calls/s) | {tput_verdict} |",
        cfg.concurrency,
        TARGET_THROUGHPUT_RATIO * 100.0,
        f_ratio * 100.0,
        tput(flotilla),
        dtput
    );
    let _ = writeln!(
        md,
        "| tools/list of {} tools, p50 | < {TARGET_LIST_P50_MS:.0} ms | {} | {} |",
        list.tools,
        ms(l50),
        verdict_max(l50 / 1000.0, TARGET_LIST_P50_MS, " ms", |v| format!(
            "{v:.2}"
        ))
    );
    let _ = writeln!(
        md,
        "| Memory per idle upstream session | < {TARGET_KB_PER_SESSION:.0} KB | {per_session_kb:.1} KB | {} |",
        verdict_max(per_session_kb, TARGET_KB_PER_SESSION, " KB", |v| format!(
            "{v:.1}"
        ))
    );
    let _ = writeln!(
        md,
        "| {} upstreams ready | ≤ {TARGET_STARTUP_S:.0} s | {startup:.2} s | {} |",
        cfg.fleet,
        verdict_max(startup, TARGET_STARTUP_S, " s", |v| format!("{v:.2}"))
    );
    md
}

/// `gateway --profile [call|seq|list] SECS`: one benchmark setup, driven
/// for SECS seconds, with the gateway's pid printed first so it can be
/// profiled, e.g. `perf record -F 999 -g -p PID -- sleep 10`.
/// `call`: tools/call at 16 in flight; `seq`: tools/call one at a time;
/// `list`: tools/list over 200 servers x 50 tools, one at a time.
fn profile(mode: &str, secs: u64) -> Result<(), String> {
    let cfg = Config::from_env();
    let (bin, _) = locate_gateway()?;
    let work = tempfile::Builder::new()
        .prefix("flotilla-profile-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let http = rt.block_on(async { client::http_client() });
    let (servers, tools) = match mode {
        "list" => (cfg.list_servers, cfg.list_tools),
        "call" | "seq" => (1, 1),
        other => return Err(format!("unknown profile mode {other:?} (call, seq, list)")),
    };
    let (echo, port) = spawn_upstream(&cfg, work.path(), "echo-profile", servers, tools)?;
    let manifests = work.path().join("manifests-profile");
    let names: Vec<(String, String)> = if servers == 1 {
        vec![("echo".into(), format!("http://127.0.0.1:{port}/s/0/mcp"))]
    } else {
        (0..servers)
            .map(|i| {
                (
                    format!("echo-{i}"),
                    format!("http://127.0.0.1:{port}/s/{i}/mcp"),
                )
            })
            .collect()
    };
    write_manifests(&manifests, &names)?;
    let gateway = start_gateway(&bin, &manifests, work.path(), "flotilla-profile")?;
    rt.block_on(async {
        wait_connected(&http, &gateway, servers as u64, Duration::from_secs(60)).await?;
        wait_tools(
            &http,
            &gateway,
            (servers * tools) as u64,
            Duration::from_secs(30),
        )
        .await
    })?;
    let pid = gateway.proc.pid();
    println!("gateway pid {pid} echo pid {}", echo.pid());
    let cpu0 = procs::cpu_us(pid);
    let cs0 = procs::ctx_switches(pid);
    let duration = Duration::from_secs(secs);
    let (n, elapsed) = rt.block_on(async {
        let start = Instant::now();
        let n = match mode {
            "call" => {
                let request = Arc::new(Request::call(&gateway.mcp, "x_echo_echo"));
                client::closed_loop(&http, request, cfg.concurrency, duration)
                    .await?
                    .calls
            }
            "seq" => {
                let request = Request::call(&gateway.mcp, "x_echo_echo");
                let mut n = 0;
                while start.elapsed() < duration {
                    request.call_checked(&http).await?;
                    n += 1;
                }
                n
            }
            _ => {
                let request = Request::list_tools(&gateway.mcp);
                let mut n = 0;
                while start.elapsed() < duration {
                    request.send(&http).await?;
                    n += 1;
                }
                n
            }
        };
        Ok::<_, String>((n, start.elapsed()))
    })?;
    let cpu = procs::cpu_us(pid) - cpu0;
    let cs = procs::ctx_switches(pid) - cs0;
    println!(
        "{n} requests in {:.1} s: {:.0}/s, gateway CPU {:.1} µs and {:.1} context switches per request",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu as f64 / n as f64,
        cs as f64 / n as f64
    );
    Ok(())
}

fn run() -> Result<(), String> {
    let cfg = Config::from_env();
    let run = Run::start("flotilla-bench-")?;
    let (bin, provenance, work) = (&run.bin, &run.provenance, &run.work);
    let (rt, http) = (&run.rt, &run.http);
    let result = (|| {
        let calls = bench_calls(&cfg, rt, http, bin, work.path())?;
        let list = bench_list(&cfg, rt, http, bin, work.path())?;
        let mut fleet = bench_fleet(&cfg, rt, http, bin, work.path())?;
        let observability = bench_observability(work.path())?;
        let policy = bench_policy()?;
        let mut md = report(&cfg, &calls, &list, &mut fleet, bin, provenance);
        report_observability(&mut md, &calls, &observability);
        report_policy(&mut md, &policy);
        Ok::<_, String>(md)
    })();
    run.finish(result, "bench-results.md")
}
