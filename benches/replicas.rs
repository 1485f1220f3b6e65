//! Replicas benchmark: `cargo bench --bench replicas` (issue 14, "Scale
//! figures").
//!
//! Runs, in one go and on loopback only, gateways that share one sealing key
//! file over a fleet of one echo upstream:
//! 1. memory per idle 2025-revision client session: RSS of a gateway before
//!    and after 100,000 sessions were opened (`initialize` +
//!    `notifications/initialized`, 32 in flight); then what a session *held*
//!    in memory costs (one `resources/list` on 2,000 of them rebuilds rmcp's
//!    session for each), and the `limits.maxSessions` cap holding that count
//!    (and RSS) down on a second gateway;
//! 2. relayed tools/call throughput through nginx in round-robin (no
//!    affinity) in front of 1 replica, then of 3, closed loop with 16 in
//!    flight, each worker in its own session;
//! 3. what one client session sees while a replica behind nginx is stopped
//!    (SIGTERM, then later SIGKILL) and replaced: failed calls, the longest
//!    time without a successful call, and that its session id never changed.
//!
//! The echo upstream is this very binary re-executed with `--upstream`. Every
//! child process is stopped on exit, including on panic. See
//! benches/README.md for how to read the figures.

#[path = "support/client.rs"]
#[allow(dead_code)] // shared with the gateway bench, which uses the rest
mod client;
#[path = "support/procs.rs"]
#[allow(dead_code)] // shared with the gateway bench, which uses the rest
mod procs;
#[path = "support/setup.rs"]
mod setup;
#[path = "support/upstream.rs"]
mod upstream;

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;

use client::{Request, Samples};
use procs::{NginxPool, Proc};
use setup::{Run, log, machine};

/// Memory per idle session, in bytes (2 KB).
const TARGET_BYTES_PER_SESSION: f64 = 2000.0;

/// `tools/call` of the echo tool through the gateway (its text is
/// [`client::ECHO_TEXT`], which `call_checked` looks for in the reply).
const CALL_ECHO: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x_echo_echo","arguments":{"text":"hello flotilla"}}}"#;
/// A request only rmcp's handler serves: it needs rmcp's session on the replica.
const LIST_RESOURCES: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"resources/list","params":{}}"#;

/// Sizes of the run; `FLOTILLA_BENCH_QUICK=1` shrinks them for a smoke run.
struct Config {
    /// Idle sessions opened on one gateway.
    sessions: usize,
    /// Sessions opened (and not counted) before the first RSS reading.
    warm_sessions: usize,
    /// Sessions being opened at once.
    open_in_flight: usize,
    /// Sessions that each make one `resources/list` (held in memory).
    held: usize,
    /// `limits.maxSessions` of the capped gateway.
    cap: usize,
    /// The held requests are sent in this many batches, RSS read after each.
    batches: usize,
    /// 1 vs 3 replicas: rounds of `load` per target, targets alternating.
    rounds: usize,
    load: Duration,
    warm_load: Duration,
    concurrency: usize,
    /// Restarts: calls before the first event, and after each event.
    quiet: Duration,
    after_event: Duration,
    /// Pause before an RSS reading.
    settle: Duration,
    upstream_threads: usize,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var_os("FLOTILLA_BENCH_QUICK").is_some_and(|v| v != "0");
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            sessions: if quick { 10_000 } else { 100_000 },
            warm_sessions: if quick { 500 } else { 2_000 },
            open_in_flight: 32,
            held: 2_000,
            cap: 500,
            batches: 4,
            rounds: if quick { 1 } else { 3 },
            load: Duration::from_millis(if quick { 700 } else { 2500 }),
            warm_load: Duration::from_millis(if quick { 300 } else { 700 }),
            concurrency: 16,
            quiet: Duration::from_millis(if quick { 1000 } else { 2000 }),
            after_event: Duration::from_millis(if quick { 1000 } else { 3000 }),
            settle: Duration::from_millis(if quick { 500 } else { 1500 }),
            upstream_threads: threads,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--upstream") {
        let threads = args
            .iter()
            .position(|a| a == "--threads")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        upstream::run(1, 1, threads, false);
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` must not run the benchmark
    }
    if let Err(error) = run() {
        eprintln!("\nbench failed: {error}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ setup

/// What every section shares: the gateway binary, the work directory (key
/// file, manifests, configs, logs), the echo upstream and a client.
struct World<'a> {
    cfg: &'a Config,
    rt: &'a tokio::runtime::Runtime,
    http: &'a reqwest::Client,
    bin: &'a Path,
    work: &'a Path,
    manifests: PathBuf,
    echo_pid: i32,
}

fn spawn_upstream(cfg: &Config, work: &Path) -> Result<(Proc, u16), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--upstream", "--threads", &cfg.upstream_threads.to_string()]);
    let mut proc = Proc::spawn("echo", cmd, work)?;
    let line = proc.wait_line("READY", Duration::from_secs(30))?;
    let port = line
        .trim_start_matches("READY ")
        .trim()
        .parse()
        .map_err(|_| format!("bad READY line {line:?}"))?;
    Ok((proc, port))
}

/// The key file every gateway of the run shares, and the fleet: one echo server.
fn write_fleet(work: &Path, echo_port: u16) -> Result<PathBuf, String> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    std::fs::write(work.join("sealing-key"), format!("{key}\n")).map_err(|e| e.to_string())?;
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    let yaml = format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: echo\nspec:\n  type: streamable-http\n  url: \"http://127.0.0.1:{echo_port}/s/0/mcp\"\n  timeout: 10\n"
    );
    std::fs::write(manifests.join("echo.yaml"), yaml).map_err(|e| e.to_string())?;
    Ok(manifests)
}

struct Gateway {
    proc: Proc,
    port: u16,
    /// `http://127.0.0.1:PORT`
    base: String,
    mcp: String,
}

impl World<'_> {
    /// Spawns `flotilla serve --port 0` with the shared key file (config
    /// `sealingKeyFile`), its audit log in a file and `extra_limits` (YAML
    /// lines under `limits:`); returns once it is listening.
    fn start_gateway(&self, name: &str, extra_limits: &str) -> Result<Gateway, String> {
        let config = format!(
            "sealingKeyFile: sealing-key\naudit:\n  file: {name}-audit.log\nlimits:\n  # Behind nginx every client has nginx's address.\n  maxConnectionsPerIp: 0\n{extra_limits}"
        );
        let config_path = self.work.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(self.bin);
        cmd.arg("serve")
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--config")
            .arg(&config_path)
            .args(["--port", "0"]);
        let mut proc = Proc::spawn(name, cmd, self.work)?;
        // "flotilla listening on http://127.0.0.1:PORT/mcp"
        let line = proc.wait_line("listening on", Duration::from_secs(30))?;
        let mcp = line
            .split_whitespace()
            .last()
            .ok_or_else(|| format!("bad listening line {line:?}"))?
            .to_string();
        let base = mcp.trim_end_matches("/mcp").to_string();
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in {line:?}"))?;
        Ok(Gateway {
            proc,
            port,
            base,
            mcp,
        })
    }

    /// [`World::start_gateway`], then waits until its echo server is connected.
    fn start_ready(&self, name: &str, extra_limits: &str) -> Result<Gateway, String> {
        let gateway = self.start_gateway(name, extra_limits)?;
        self.rt
            .block_on(wait_connected(self.http, &gateway, Duration::from_secs(30)))?;
        Ok(gateway)
    }
}

/// Polls `/readyz` until it is 200 with its one server connected.
async fn wait_connected(
    http: &reqwest::Client,
    gateway: &Gateway,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("{}/readyz", gateway.base);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(response) = http.get(&url).send().await {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<serde_json::Value>().await {
                if status == 200 && body["connected"].as_u64() == Some(1) {
                    return Ok(());
                }
                last = body.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "gateway {} not ready with its server connected within {timeout:?}; last /readyz: {last}",
        gateway.base
    ))
}

/// The sum of every series of metric `name` in the gateway's `/metrics`.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Result<f64, String> {
    let url = format!("{base}/metrics");
    let text = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    Ok(text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Tool calls a gateway counted (every outcome).
async fn tool_calls(http: &reqwest::Client, base: &str) -> Result<f64, String> {
    metric(http, base, "flotilla_tool_calls_total").await
}

/// Opens `n` sessions at `url`, `in_flight` at a time; returns the first `keep` ids.
async fn open_sessions(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    in_flight: usize,
    keep: usize,
) -> Result<Vec<String>, String> {
    let mut kept = Vec::with_capacity(keep);
    let mut opened = futures::stream::iter(0..n)
        .map(|_| client::open_session(http, url))
        .buffer_unordered(in_flight);
    while let Some(session) = opened.next().await {
        let session = session?;
        if kept.len() < keep {
            kept.push(session);
        }
    }
    Ok(kept)
}

// ------------------------------------------------- 1. memory per session

/// One reading after a batch of held requests.
struct HeldStep {
    requests: usize,
    held: f64,
    rss_kib: u64,
}

/// `held` sessions each making one `resources/list` on one gateway.
struct HeldRun {
    cap: Option<usize>,
    rss_start_kib: u64,
    held_start: f64,
    steps: Vec<HeldStep>,
    /// The most sessions `/metrics` reported held, polled every 20 ms while the requests ran.
    max_held: f64,
    peak_rss_kib: u64,
    restored: f64,
    released: f64,
    secs: f64,
    failures: Failures,
}

struct MemoryResults {
    sessions: usize,
    open_secs: f64,
    open_cpu_us: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    uncapped: HeldRun,
    capped: HeldRun,
    foreign_cores: f64,
}

fn bench_memory(w: &World) -> Result<MemoryResults, String> {
    let cfg = w.cfg;
    log(format!(
        "memory: one gateway, {} idle 2025-11-25 sessions ({} in flight)",
        cfg.sessions, cfg.open_in_flight
    ));
    let interference = procs::Interference::start();
    let gateway = w.start_ready("flotilla-sessions", "")?;
    let pid = gateway.proc.pid();
    let (open_secs, open_cpu_us, rss_before_kib, rss_after_kib, kept) = w.rt.block_on(async {
        // Warm up (connections, allocator arenas), then measure.
        open_sessions(
            w.http,
            &gateway.mcp,
            cfg.warm_sessions,
            cfg.open_in_flight,
            0,
        )
        .await?;
        tokio::time::sleep(cfg.settle).await;
        let rss_before = procs::rss_kib(pid);
        let cpu0 = procs::cpu_us(pid);
        let started = Instant::now();
        let kept = open_sessions(
            w.http,
            &gateway.mcp,
            cfg.sessions,
            cfg.open_in_flight,
            cfg.held,
        )
        .await?;
        let open_secs = started.elapsed().as_secs_f64();
        let open_cpu = procs::cpu_us(pid) - cpu0;
        tokio::time::sleep(cfg.settle).await;
        let rss_after = procs::rss_kib(pid);
        let held = metric(w.http, &gateway.base, "flotilla_client_sessions").await?;
        if held != 0.0 {
            return Err(format!(
                "{held} sessions held after initialize alone (expected none)"
            ));
        }
        Ok::<_, String>((open_secs, open_cpu, rss_before, rss_after, kept))
    })?;
    log(format!(
        "memory: {} of those sessions make one resources/list each (held), then the same on a gateway with limits.maxSessions {}",
        cfg.held, cfg.cap
    ));
    let uncapped = held_run(w, &gateway, &kept, None)?;
    drop(gateway);
    let capped_gateway =
        w.start_ready("flotilla-capped", &format!("  maxSessions: {}\n", cfg.cap))?;
    w.rt.block_on(open_sessions(
        w.http,
        &capped_gateway.mcp,
        cfg.warm_sessions,
        cfg.open_in_flight,
        0,
    ))?;
    let capped = held_run(w, &capped_gateway, &kept, Some(cfg.cap))?;
    drop(capped_gateway);
    Ok(MemoryResults {
        sessions: cfg.sessions,
        open_secs,
        open_cpu_us,
        rss_before_kib,
        rss_after_kib,
        uncapped,
        capped,
        foreign_cores: interference.finish(),
    })
}

/// Each session in `sessions` makes one `resources/list` on `gateway`
/// (32 in flight, in `cfg.batches` batches), while `/metrics` and RSS are
/// polled; the sessions were opened on another gateway with the same key.
fn held_run(
    w: &World,
    gateway: &Gateway,
    sessions: &[String],
    cap: Option<usize>,
) -> Result<HeldRun, String> {
    let cfg = w.cfg;
    let pid = gateway.proc.pid();
    let requests: Vec<Request> = sessions
        .iter()
        .map(|s| Request::in_session(&gateway.mcp, s, LIST_RESOURCES))
        .collect();
    w.rt.block_on(async {
        tokio::time::sleep(cfg.settle).await;
        let rss_start_kib = procs::rss_kib(pid);
        let held_start = metric(w.http, &gateway.base, "flotilla_client_sessions").await?;
        let restored0 = metric(
            w.http,
            &gateway.base,
            "flotilla_client_sessions_restored_total",
        )
        .await?;
        let released0 = metric(
            w.http,
            &gateway.base,
            "flotilla_client_sessions_released_total",
        )
        .await?;
        let done = Cell::new(false);
        let max_held = Cell::new(held_start);
        let peak_rss = Cell::new(rss_start_kib);
        let started = Instant::now();
        let monitor = async {
            while !done.get() {
                if let Ok(held) = metric(w.http, &gateway.base, "flotilla_client_sessions").await {
                    max_held.set(max_held.get().max(held));
                }
                peak_rss.set(peak_rss.get().max(procs::rss_kib(pid)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let work = async {
            let steps = held_batches(w, gateway, &requests).await;
            done.set(true);
            steps
        };
        let (steps, ()) = futures::future::join(work, monitor).await;
        let (steps, failures) = steps?;
        let secs = started.elapsed().as_secs_f64();
        let last_held = steps.last().map_or(0.0, |s| s.held);
        Ok(HeldRun {
            cap,
            rss_start_kib,
            held_start,
            steps,
            max_held: max_held.get().max(last_held),
            peak_rss_kib: peak_rss.get(),
            restored: metric(
                w.http,
                &gateway.base,
                "flotilla_client_sessions_restored_total",
            )
            .await?
                - restored0,
            released: metric(
                w.http,
                &gateway.base,
                "flotilla_client_sessions_released_total",
            )
            .await?
                - released0,
            secs,
            failures,
        })
    })
}

/// Held requests that failed, and the first error.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

/// The held requests in batches; one reading after each. A request that
/// fails is counted (not retried) and the run goes on.
async fn held_batches(
    w: &World<'_>,
    gateway: &Gateway,
    requests: &[Request],
) -> Result<(Vec<HeldStep>, Failures), String> {
    let cfg = w.cfg;
    let pid = gateway.proc.pid();
    let mut steps = Vec::new();
    let mut failures = Failures::default();
    let per_batch = requests.len().div_ceil(cfg.batches);
    for (i, batch) in requests.chunks(per_batch).enumerate() {
        let mut replies = futures::stream::iter(batch)
            .map(|r| r.send(w.http))
            .buffer_unordered(cfg.open_in_flight);
        while let Some(body) = replies.next().await {
            let outcome = body.and_then(|b| client::reply_json(&b)).and_then(|reply| {
                if reply.get("result").is_some() {
                    Ok(())
                } else {
                    Err(format!("resources/list failed: {reply}"))
                }
            });
            if let Err(error) = outcome {
                failures.count += 1;
                failures.first.get_or_insert(error);
            }
        }
        // Let the sessions' tasks settle before reading.
        tokio::time::sleep(Duration::from_millis(300)).await;
        steps.push(HeldStep {
            requests: i * per_batch + batch.len(),
            held: metric(w.http, &gateway.base, "flotilla_client_sessions").await?,
            rss_kib: procs::rss_kib(pid),
        });
    }
    Ok((steps, failures))
}

// ------------------------------------------------- 2. 1 vs 3 replicas

struct Spread {
    name: String,
    replicas: usize,
    nginx: NginxPool,
    /// Pids and base URLs of the replicas behind this nginx.
    gateway_pids: Vec<i32>,
    gateway_bases: Vec<String>,
    /// One request per worker, each in its own session.
    requests: Vec<Arc<Request>>,
    calls: u64,
    secs: f64,
    samples: Samples,
    gateway_cpu_us: u64,
    nginx_cpu_us: u64,
    echo_cpu_us: u64,
    client_cpu_us: u64,
    /// Tool calls each replica counted during the measured rounds.
    per_replica: Vec<f64>,
}

struct SpreadResults {
    targets: Vec<Spread>,
    foreign_cores: f64,
}

fn bench_spread(w: &World, nginx_bin: &Path) -> Result<SpreadResults, String> {
    let cfg = w.cfg;
    log("replicas: starting 3 replicas and two nginx (in front of 1, and of all 3)");
    let replicas = (1..=3)
        .map(|i| w.start_ready(&format!("flotilla-r{i}"), ""))
        .collect::<Result<Vec<_>, _>>()?;
    let mut targets = Vec::new();
    for n in [1, 3] {
        let behind = &replicas[..n];
        let ports: Vec<u16> = behind.iter().map(|g| g.port).collect();
        let nginx = NginxPool::start(nginx_bin, w.work, &format!("nginx-{n}"), &ports)?;
        let url = nginx.url();
        let sessions = w.rt.block_on(open_sessions(
            w.http,
            &url,
            cfg.concurrency,
            4,
            cfg.concurrency,
        ))?;
        targets.push(Spread {
            name: format!("nginx → {n} replica{}", if n == 1 { "" } else { "s" }),
            replicas: n,
            nginx,
            gateway_pids: behind.iter().map(|g| g.proc.pid()).collect(),
            gateway_bases: behind.iter().map(|g| g.base.clone()).collect(),
            requests: sessions
                .iter()
                .map(|s| Arc::new(Request::in_session(&url, s, CALL_ECHO)))
                .collect(),
            calls: 0,
            secs: 0.0,
            samples: Samples::default(),
            gateway_cpu_us: 0,
            nginx_cpu_us: 0,
            echo_cpu_us: 0,
            client_cpu_us: 0,
            per_replica: vec![0.0; n],
        });
    }
    w.rt.block_on(async {
        for t in &targets {
            let body = t.requests[0].send(w.http).await?;
            let reply = client::reply_json(&body)?;
            if reply["result"]["content"][0]["text"].as_str() != Some(client::ECHO_TEXT) {
                return Err(format!("{} did not echo: {reply}", t.name));
            }
        }
        log("replicas: warming up");
        for t in &targets {
            client::closed_loop_each(w.http, t.requests.clone(), cfg.warm_load).await?;
        }
        Ok::<_, String>(())
    })?;

    let mut ours: Vec<i32> = vec![std::process::id() as i32, w.echo_pid];
    ours.extend(replicas.iter().map(|g| g.proc.pid()));
    let busy0 = procs::machine_busy_us();
    let ours_cpu = |ours: &[i32], targets: &[Spread]| {
        procs::cpu_us_all(ours)
            + targets
                .iter()
                .map(|t| procs::cpu_us_all(&t.nginx.pids()))
                .sum::<u64>()
    };
    let ours0 = ours_cpu(&ours, &targets);
    let wall0 = Instant::now();
    let n = targets.len();
    for round in 0..cfg.rounds {
        log(format!("replicas: round {}/{}", round + 1, cfg.rounds));
        for k in 0..n {
            let t = &mut targets[(round + k) % n];
            w.rt.block_on(async {
                let nginx_pids = t.nginx.pids();
                let mut calls0 = Vec::new();
                for base in &t.gateway_bases {
                    calls0.push(tool_calls(w.http, base).await?);
                }
                let gw0 = procs::cpu_us_all(&t.gateway_pids);
                let ng0 = procs::cpu_us_all(&nginx_pids);
                let echo0 = procs::cpu_us(w.echo_pid);
                let client0 = procs::self_cpu_us();
                let load = client::closed_loop_each(w.http, t.requests.clone(), cfg.load).await?;
                t.gateway_cpu_us += procs::cpu_us_all(&t.gateway_pids) - gw0;
                t.nginx_cpu_us += procs::cpu_us_all(&nginx_pids).saturating_sub(ng0);
                t.echo_cpu_us += procs::cpu_us(w.echo_pid) - echo0;
                t.client_cpu_us += procs::self_cpu_us() - client0;
                t.calls += load.calls;
                t.secs += load.elapsed.as_secs_f64();
                t.samples.extend(&load.samples);
                for (i, base) in t.gateway_bases.iter().enumerate() {
                    t.per_replica[i] += tool_calls(w.http, base).await? - calls0[i];
                }
                Ok::<_, String>(())
            })?;
        }
    }
    let foreign_us = procs::machine_busy_us()
        .saturating_sub(busy0)
        .saturating_sub(ours_cpu(&ours, &targets).saturating_sub(ours0));
    let foreign_cores = foreign_us as f64 / 1e6 / wall0.elapsed().as_secs_f64();
    drop(replicas);
    Ok(SpreadResults {
        targets,
        foreign_cores,
    })
}

// ------------------------------------------------- 3. restarts

/// One call of the client's loop.
struct Call {
    /// When it ended, from the start of the loop.
    end: Duration,
    error: Option<String>,
}

/// A replica stopped and replaced, with its timeline (from the loop's start).
struct Event {
    what: &'static str,
    signal_at: Duration,
    exited_at: Duration,
    listening_at: Duration,
    ready_at: Duration,
    reloaded_at: Duration,
    window_end: Duration,
    replacement_calls: f64,
}

struct RestartResults {
    session: String,
    calls: Vec<Call>,
    baseline_end: Duration,
    events: Vec<Event>,
}

/// What the client saw between `from` and `to`.
struct Window {
    calls: usize,
    failed: usize,
    refused_404: usize,
    longest_gap: Duration,
    first_error: Option<String>,
}

fn window(calls: &[Call], from: Duration, to: Duration) -> Window {
    let mut out = Window {
        calls: 0,
        failed: 0,
        refused_404: 0,
        longest_gap: Duration::ZERO,
        first_error: None,
    };
    let mut last_ok: Option<Duration> = None;
    for call in calls {
        let inside = call.end >= from && call.end < to;
        if inside {
            out.calls += 1;
        }
        match &call.error {
            Some(error) => {
                if inside {
                    out.failed += 1;
                    if error.contains("-> 404") {
                        out.refused_404 += 1;
                    }
                    if out.first_error.is_none() {
                        out.first_error = Some(error.clone());
                    }
                }
            }
            None => {
                if inside && let Some(last) = last_ok {
                    out.longest_gap = out.longest_gap.max(call.end - last);
                }
                last_ok = Some(call.end);
            }
        }
    }
    out
}

/// The median time between two successful calls ending before `until`.
fn median_gap(calls: &[Call], until: Duration) -> Duration {
    let ends: Vec<Duration> = calls
        .iter()
        .filter(|c| c.error.is_none() && c.end < until)
        .map(|c| c.end)
        .collect();
    let mut gaps: Vec<Duration> = ends.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied().unwrap_or_default()
}

fn bench_restarts(w: &World, nginx_bin: &Path) -> Result<RestartResults, String> {
    let cfg = w.cfg;
    log("restarts: 2 replicas behind nginx, one session calling in a loop");
    let mut running = vec![
        w.start_ready("flotilla-a", "")?,
        w.start_ready("flotilla-b", "")?,
    ];
    let mut nginx = NginxPool::start(
        nginx_bin,
        w.work,
        "nginx-restarts",
        &running.iter().map(|g| g.port).collect::<Vec<_>>(),
    )?;
    let url = nginx.url();
    let session =
        w.rt.block_on(open_sessions(w.http, &url, 1, 1, 1))?
            .pop()
            .ok_or("no session")?;

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let looping = {
        let stop = stop.clone();
        let session = session.clone();
        let url = url.clone();
        std::thread::spawn(move || -> Result<Vec<Call>, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let http = client::http_client();
                let request = Request::in_session(&url, &session, CALL_ECHO);
                let mut calls = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let result = request.call_checked(&http).await;
                    calls.push(Call {
                        end: start.elapsed(),
                        error: result.err(),
                    });
                }
                Ok(calls)
            })
        })
    };
    // The orchestration runs here, on the main thread (children are spawned
    // from it, see procs.rs); stop the loop whatever happens.
    let mut retired: Vec<Gateway> = Vec::new();
    let mut events = Vec::new();
    let orchestrated = (|| {
        std::thread::sleep(cfg.quiet);
        let baseline_end = start.elapsed();
        for (what, signal, name) in [
            (
                "SIGTERM (graceful shutdown), replacement started",
                libc::SIGTERM,
                "flotilla-c",
            ),
            ("SIGKILL, replacement started", libc::SIGKILL, "flotilla-d"),
        ] {
            log(format!("restarts: {what}"));
            let mut gone = running.remove(0);
            let signal_at = start.elapsed();
            unsafe { libc::kill(gone.proc.pid(), signal) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while gone.proc.is_running() {
                if Instant::now() >= deadline {
                    return Err(format!("{} did not exit within 20 s", gone.proc.name));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let exited_at = start.elapsed();
            retired.push(gone);
            let replacement = w.start_gateway(name, "")?;
            let listening_at = start.elapsed();
            w.rt.block_on(wait_connected(
                w.http,
                &replacement,
                Duration::from_secs(30),
            ))?;
            let ready_at = start.elapsed();
            running.push(replacement);
            nginx.repoint(&running.iter().map(|g| g.port).collect::<Vec<_>>())?;
            let reloaded_at = start.elapsed();
            std::thread::sleep(cfg.after_event);
            events.push(Event {
                what,
                signal_at,
                exited_at,
                listening_at,
                ready_at,
                reloaded_at,
                window_end: start.elapsed(),
                replacement_calls: 0.0,
            });
        }
        Ok::<_, String>(baseline_end)
    })();
    stop.store(true, Ordering::Relaxed);
    let calls = looping
        .join()
        .map_err(|_| "the client loop panicked".to_string())??;
    let baseline_end = orchestrated?;
    // The two running now are the replacements, in the order they started.
    for (event, gateway) in events.iter_mut().zip(&running) {
        event.replacement_calls = w.rt.block_on(tool_calls(w.http, &gateway.base))?;
    }
    drop(nginx);
    drop(running);
    drop(retired);
    Ok(RestartResults {
        session,
        calls,
        baseline_end,
        events,
    })
}

// ------------------------------------------------------------------ report

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `text` on one line (whitespace collapsed), at most `max` characters, for a table or list.
fn one_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out.replace('`', "'")
}

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

fn report_memory(md: &mut String, cfg: &Config, m: &MemoryResults) -> f64 {
    let grown = m.rss_after_kib as f64 - m.rss_before_kib as f64;
    let per_session = grown * 1024.0 / m.sessions as f64;
    let _ = writeln!(md, "### 1. Memory per idle 2025 session\n");
    let _ = writeln!(
        md,
        "One gateway (key file, one echo server); {} sessions opened after {} warm-up ones, \
         each `initialize` (protocolVersion 2025-11-25) + `notifications/initialized` with its \
         `Mcp-Session-Id`, {} in flight.\n",
        m.sessions, cfg.warm_sessions, cfg.open_in_flight
    );
    let _ = writeln!(
        md,
        "| Sessions | RSS before | RSS after | grown | per session | opened/s | gateway CPU per session |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {} | {} | {} | {:.0} KiB | {:.1} B | {:.0} | {:.1} µs |\n",
        m.sessions,
        mib(m.rss_before_kib),
        mib(m.rss_after_kib),
        grown,
        per_session,
        m.sessions as f64 / m.open_secs,
        m.open_cpu_us as f64 / m.sessions as f64,
    );
    let _ = writeln!(
        md,
        "Held in memory: {} of those sessions each make one `resources/list` (served by rmcp's handler, \
         which rebuilds the session from its id), {} in flight, in {} batches; `held` is \
         `flotilla_client_sessions` after each batch, RSS read at the same time.\n",
        cfg.held, cfg.open_in_flight, cfg.batches
    );
    let _ = writeln!(md, "| Gateway | requests | held | RSS | RSS − start |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for run in [&m.uncapped, &m.capped] {
        let name = match run.cap {
            Some(cap) => format!("`maxSessions: {cap}`"),
            None => "default (`maxSessions: 10000`)".into(),
        };
        let _ = writeln!(
            md,
            "| {name} | 0 | {:.0} | {} | — |",
            run.held_start,
            mib(run.rss_start_kib)
        );
        for step in &run.steps {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.0} | {} | {:+.0} KiB |",
                step.requests,
                step.held,
                mib(step.rss_kib),
                step.rss_kib as f64 - run.rss_start_kib as f64,
            );
        }
    }
    let held_cost = |run: &HeldRun| {
        let last = run.steps.last().map_or(run.rss_start_kib, |s| s.rss_kib);
        let held = run.steps.last().map_or(0.0, |s| s.held) - run.held_start;
        (last as f64 - run.rss_start_kib as f64) * 1024.0 / held.max(1.0)
    };
    let _ = writeln!(md);
    let u = &m.uncapped;
    let _ = writeln!(
        md,
        "- Per held session (default limits): **{:.1} KB** ({} held; {} rebuilt in {:.2} s)",
        held_cost(u) / 1000.0,
        u.steps.last().map_or(0.0, |s| s.held),
        u.restored,
        u.secs
    );
    let c = &m.capped;
    let bounded = c.max_held <= cfg.cap as f64;
    let _ = writeln!(
        md,
        "- With `maxSessions: {}`: the most held at any time (polled every 20 ms, and after each batch) \
         was **{:.0}** ({}); {:.0} sessions rebuilt and {:.0} held at the end, so {:.0} were let go, \
         while `flotilla_client_sessions_released_total` grew by {:.0}; \
         peak RSS {} against {} at the start ({:+.0} KiB), while the default gateway grew by {:+.0} KiB \
         (peak {})\n",
        cfg.cap,
        c.max_held,
        if bounded {
            format!("≤ {}", cfg.cap)
        } else {
            format!("**over the cap of {}**", cfg.cap)
        },
        c.restored,
        c.steps.last().map_or(0.0, |s| s.held),
        c.held_start + c.restored - c.steps.last().map_or(0.0, |s| s.held),
        c.released,
        mib(c.peak_rss_kib),
        mib(c.rss_start_kib),
        c.peak_rss_kib as f64 - c.rss_start_kib as f64,
        u.peak_rss_kib as f64 - u.rss_start_kib as f64,
        mib(u.peak_rss_kib),
    );
    for run in [u, c] {
        if run.failures.count > 0 {
            let _ = writeln!(
                md,
                "- **{} of {} `resources/list` requests failed** on the gateway with {}; the first: `{}`",
                run.failures.count,
                cfg.held,
                run.cap.map_or("default limits".to_string(), |cap| format!(
                    "`maxSessions: {cap}`"
                )),
                one_line(run.failures.first.as_deref().unwrap_or_default(), 160)
            );
        }
    }
    if u.failures.count + c.failures.count > 0 {
        let _ = writeln!(md);
    }
    md.push_str(&disturbed(m.foreign_cores));
    per_session
}

fn report_spread(md: &mut String, cfg: &Config, s: &SpreadResults) -> Option<f64> {
    let _ = writeln!(
        md,
        "### 2. Relayed tools/call through 1 and 3 replicas, closed loop, {} in flight\n",
        cfg.concurrency
    );
    let _ = writeln!(
        md,
        "nginx round-robin (no affinity, keep-alive upstream) in front of the replicas; each of the \
         {} workers calls `x_echo_echo` in its own 2025-11-25 session, initialized once through nginx; \
         {} rounds of {:.1} s per target, targets alternating.\n",
        cfg.concurrency,
        cfg.rounds,
        cfg.load.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| Target | calls/s | vs 1 replica | p50 | p99 | gateway CPU/call (all replicas) | nginx CPU/call | echo CPU/call | client CPU/call | calls per replica |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let rate = |t: &Spread| t.calls as f64 / t.secs.max(1e-9);
    let one = s.targets.iter().find(|t| t.replicas == 1).map(rate);
    for t in &s.targets {
        let per = |us: u64| us as f64 / t.calls.max(1) as f64;
        let total: f64 = t.per_replica.iter().sum();
        let shares: Vec<String> = t
            .per_replica
            .iter()
            .map(|c| format!("{:.0}%", c / total.max(1.0) * 100.0))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.3} ms | {:.3} ms | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {} |",
            t.name,
            rate(t),
            one.map_or("—".into(), |o| format!("{:.2}", rate(t) / o)),
            t.samples.pct_us(50.0) / 1000.0,
            t.samples.pct_us(99.0) / 1000.0,
            per(t.gateway_cpu_us),
            per(t.nginx_cpu_us),
            per(t.echo_cpu_us),
            per(t.client_cpu_us),
            shares.join(" / "),
        );
    }
    let three = s.targets.iter().find(|t| t.replicas == 3).map(rate);
    let ratio = one.zip(three).map(|(o, t)| t / o);
    if let Some(ratio) = ratio {
        let _ = writeln!(md, "\n- 3 replicas / 1 replica: **{ratio:.2}x** calls/s");
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "- This machine has {cores} cores: the replicas, nginx, the echo upstream and this client all share \
         them, so 3 replicas compete for the same CPUs as 1. The figure shows what spreading the calls \
         over replicas costs or gains here, not horizontal scale (on separate nodes each replica would \
         bring its own CPUs).\n"
    );
    md.push_str(&disturbed(s.foreign_cores));
    ratio
}

fn report_restarts(md: &mut String, cfg: &Config, r: &RestartResults) {
    let _ = writeln!(md, "### 3. One session while replicas restart\n");
    let _ = writeln!(
        md,
        "2 replicas behind nginx round-robin; one client session (initialized once) calls `x_echo_echo` \
         one call after another. After {:.1} s one replica gets a signal; once it exited a replacement \
         is started, and once that is ready nginx is repointed (config rewritten, SIGHUP), as a Service \
         updates its endpoints; {:.1} s later the next event. A window runs from the signal to {:.1} s \
         after the reload.\n",
        cfg.quiet.as_secs_f64(),
        cfg.after_event.as_secs_f64(),
        cfg.after_event.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| Window | calls | failed | longest gap between two successful calls | exited after | replacement listening / ready after | nginx reloaded after | calls the replacement served (to the end of the run) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let base = window(&r.calls, Duration::ZERO, r.baseline_end);
    let _ = writeln!(
        md,
        "| before any event ({:.1} s) | {} | {} | {} | — | — | — | — |",
        r.baseline_end.as_secs_f64(),
        base.calls,
        base.failed,
        ms(base.longest_gap),
    );
    let mut errors = Vec::new();
    let mut refused = base.refused_404;
    for e in &r.events {
        let win = window(&r.calls, e.signal_at, e.window_end);
        refused += win.refused_404;
        if let Some(error) = &win.first_error {
            errors.push(format!("{}: {error}", e.what));
        }
        let _ = writeln!(
            md,
            "| {} | {} | **{}** | **{}** | {} | {} / {} | {} | {:.0} |",
            e.what,
            win.calls,
            win.failed,
            ms(win.longest_gap),
            ms(e.exited_at - e.signal_at),
            ms(e.listening_at - e.signal_at),
            ms(e.ready_at - e.signal_at),
            ms(e.reloaded_at - e.signal_at),
            e.replacement_calls,
        );
    }
    let all = window(&r.calls, Duration::ZERO, Duration::MAX);
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- Session id: the same one (`{}…`, {} chars) on all {} calls; `initialize` was sent once, before \
         the loop, and never again; calls refused with 404 (unknown session): {refused}",
        &r.session[..r.session.len().min(12)],
        r.session.len(),
        all.calls,
    );
    let _ = writeln!(
        md,
        "- Failed calls in all: {}{}",
        all.failed,
        if errors.is_empty() {
            String::new()
        } else {
            format!(
                "; first error per event: {}",
                errors
                    .iter()
                    .map(|e| format!("`{}`", one_line(e, 160)))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    let _ = writeln!(
        md,
        "- Longest gap over the whole run: {}; a call took {} (median) before any event\n",
        ms(all.longest_gap),
        ms(median_gap(&r.calls, r.baseline_end))
    );
}

// ---------------------------------------------------------- session ids

/// What opening a session id costs each request that carries one, in this
/// process on the gateway's sealing code: an id of the gateway's shape
/// (what the client offers, its caller's binding, its `initialize` params;
/// `gateway/session.rs`), unsealed (AES-256-GCM), its JSON read, and the
/// caller's binding hashed and compared.
struct OpenResults {
    id_len: usize,
    opens: u32,
    per_open_us: f64,
}

fn bench_session_open() -> Result<OpenResults, String> {
    use flotilla::auth::inbound::seal::{Purpose, SealingKeys};
    use serde_json::value::RawValue;
    use sha2::{Digest, Sha256};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Sealed {
        o: u8,
        c: String,
        i: Box<RawValue>,
    }
    const OPENS: u32 = 200_000;
    log("session ids: opening one per request, in process");
    let binding = |issuer: &str, subject: &str| {
        let digest = Sha256::new()
            .chain_update(b"flotilla session caller\0")
            .chain_update(issuer.as_bytes())
            .chain_update(b"\0")
            .chain_update(subject.as_bytes())
            .finalize();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    };
    let keys = SealingKeys::ephemeral();
    let params = serde_json::json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {"listChanged": true}},
        "clientInfo": {"name": "claude-code", "version": "2.0.14"},
    });
    let sealed = Sealed {
        o: 7,
        c: binding("https://dex.example.com", "alice"),
        i: serde_json::value::to_raw_value(&params).map_err(|e| e.to_string())?,
    };
    let id = keys.seal(
        Purpose::Session,
        &sealed,
        Some(chrono::Utc::now() + chrono::Duration::days(1)),
    );
    let started = Instant::now();
    for _ in 0..OPENS {
        let opened: Sealed = keys
            .unseal(Purpose::Session, std::hint::black_box(&id))
            .map_err(|e| e.to_string())?;
        let caller = binding("https://dex.example.com", "alice");
        std::hint::black_box(opened.c == caller);
    }
    Ok(OpenResults {
        id_len: id.len(),
        opens: OPENS,
        per_open_us: started.elapsed().as_secs_f64() * 1e6 / f64::from(OPENS),
    })
}

fn report_session_open(md: &mut String, o: &OpenResults) {
    let _ = writeln!(
        md,
        "### 4. Opening a session id, per request
"
    );
    let _ = writeln!(
        md,
        "An id of the gateway's shape ({} characters) unsealed (AES-256-GCM), its JSON read and the caller's binding hashed and compared, in this process on the gateway's sealing code ({} times; what `gateway/session.rs` does for each request that names a session).\n",
        o.id_len, o.opens
    );
    let _ = writeln!(
        md,
        "| What | time per request |\n|---|---:|\n| opening a session id | {:.2} µs |\n",
        o.per_open_us
    );
}

fn verdict_bytes(value: f64, goal: f64) -> String {
    if value <= goal {
        format!("**pass** ({:.1}% under)", (1.0 - value / goal) * 100.0)
    } else {
        format!(
            "**miss** by {:.0} B ({:.1}x the target)",
            value - goal,
            value / goal
        )
    }
}

fn run() -> Result<(), String> {
    let cfg = Config::from_env();
    let nginx = procs::find_or_install_nginx();
    let run = Run::start("flotilla-bench-replicas-")?;
    let (bin, provenance, work) = (&run.bin, &run.provenance, &run.work);
    let (rt, http) = (&run.rt, &run.http);
    let result = (|| {
        if !std::str::from_utf8(CALL_ECHO).is_ok_and(|b| b.contains(client::ECHO_TEXT)) {
            return Err("CALL_ECHO must send client::ECHO_TEXT".to_string());
        }
        let (echo, echo_port) = spawn_upstream(&cfg, work.path())?;
        let world = World {
            cfg: &cfg,
            rt,
            http,
            bin,
            work: work.path(),
            manifests: write_fleet(work.path(), echo_port)?,
            echo_pid: echo.pid(),
        };
        let memory = bench_memory(&world)?;
        let opening = bench_session_open()?;
        let (spread, restarts) = match &nginx {
            Ok(nginx_bin) => (
                Some(bench_spread(&world, nginx_bin)?),
                Some(bench_restarts(&world, nginx_bin)?),
            ),
            Err(reason) => {
                log(format!("sections 2 and 3 skipped: {reason}"));
                (None, None)
            }
        };
        drop(echo);

        let mut md = String::new();
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
        let _ = writeln!(md, "## Flotilla replicas benchmark — {now}\n");
        let _ = writeln!(md, "- Machine: {}", machine());
        let _ = writeln!(
            md,
            "- Gateway: `{}` ({provenance}); every gateway shares one `sealingKeyFile`, audit log to a file, `maxConnectionsPerIp: 0`",
            bin.file_name().map_or(bin.display().to_string(), |n| n
                .to_string_lossy()
                .into_owned())
        );
        let _ = writeln!(
            md,
            "- Upstream: rmcp 3.9 echo server in its own process (Streamable HTTP, stateless mode, JSON responses)"
        );
        match &nginx {
            Ok(nginx_bin) => {
                let _ = writeln!(
                    md,
                    "- nginx {}: `worker_processes auto`, round-robin upstream with `keepalive 64`, default `proxy_next_upstream error timeout`, `proxy_buffering off`",
                    procs::nginx_version(nginx_bin)
                );
            }
            Err(reason) => {
                let _ = writeln!(md, "- sections 2 and 3 skipped: {reason}");
            }
        }
        let _ = writeln!(
            md,
            "- Client: reqwest, raw JSON-RPC POSTs in 2025-11-25 sessions (`Mcp-Session-Id`, `MCP-Protocol-Version`), one thread\n"
        );
        let per_session = report_memory(&mut md, &cfg, &memory);
        let ratio = spread
            .as_ref()
            .and_then(|s| report_spread(&mut md, &cfg, s));
        if let Some(r) = &restarts {
            report_restarts(&mut md, &cfg, r);
        }
        report_session_open(&mut md, &opening);
        let _ = writeln!(md, "### Targets\n");
        let _ = writeln!(md, "| Target | Goal | Measured | Result |");
        let _ = writeln!(md, "|---|---:|---:|---|");
        let _ = writeln!(
            md,
            "| Memory per idle 2025 session | < 2 KB ({TARGET_BYTES_PER_SESSION:.0} B) | {per_session:.1} B | {} |",
            verdict_bytes(per_session, TARGET_BYTES_PER_SESSION)
        );
        let capped = &memory.capped;
        let _ = writeln!(
            md,
            "| Sessions held with `maxSessions: {}` | ≤ {} | {:.0} at most | {} |",
            cfg.cap,
            cfg.cap,
            capped.max_held,
            if capped.max_held <= cfg.cap as f64 {
                "**pass**"
            } else {
                "**miss**"
            }
        );
        let failed = memory.uncapped.failures.count + capped.failures.count;
        let _ = writeln!(
            md,
            "| Requests answered while sessions are held and let go (README: a client notices at most a GET stream to reopen) | all {} | {} failed | {} |",
            2 * cfg.held,
            failed,
            if failed == 0 { "**pass**" } else { "**miss**" }
        );
        if let Some(ratio) = ratio {
            let _ = writeln!(
                md,
                "| calls/s, 3 replicas vs 1 (same 2 cores) | for information | {ratio:.2}x | — |"
            );
        }
        if let Some(r) = &restarts {
            for e in &r.events {
                let win = window(&r.calls, e.signal_at, e.window_end);
                let _ = writeln!(
                    md,
                    "| {} | for information | {} failed, longest gap {} | — |",
                    e.what,
                    win.failed,
                    ms(win.longest_gap)
                );
            }
        }
        Ok::<_, String>(md)
    })();
    run.finish(result, "bench-results-replicas.md")
}
