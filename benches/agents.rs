//! Agent benchmark (`cargo bench --bench agents`): `tools/call` through the
//! gateway to a server reached over an agent's connection (gateway →
//! WebSocket → `flotilla agent` → the server) against the same call to the
//! same kind of server the gateway reaches itself, side by side in one run,
//! plus the call sent straight to the server. The server is this binary
//! re-run with `--upstream` (the echo server of the gateway benchmark,
//! Streamable HTTP); on the agent's side it is a `streamable-http` server
//! beside the agent. Reports p50/p99 per path and the CPU the gateway (and
//! the agent) spent per call.

#[path = "support/client.rs"]
#[allow(dead_code)] // shared with the gateway bench, which uses the rest
mod client;
#[path = "../tests/integration/common/mod.rs"]
mod common;
#[path = "support/echo_child.rs"]
mod echo_child;
#[path = "support/procs.rs"]
#[allow(dead_code)] // shared with the gateway bench, which uses the rest
mod procs;
#[path = "support/upstream.rs"]
mod upstream;

use std::process::Command;
use std::time::Duration;

use client::{Request, Samples, http_client, sequential};
use common::{Gateway, Proc, http_manifest, write_manifest};

const ROUNDS: usize = 5;
const CALLS_PER_ROUND: usize = 1000;
const WARMUP: usize = 300;
const CREDENTIAL: &str = "bench-agent-credential";

fn main() {
    if echo_child::serve_if_asked() {
        return;
    }
    if let Err(error) = run() {
        eprintln!("agents bench failed: {error}");
        std::process::exit(1);
    }
}

/// Calls, and the CPU microseconds the gateway and the agent spent, per path.
struct Path {
    samples: Samples,
    gateway_us: u64,
    agent_us: u64,
}

fn run() -> Result<(), String> {
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let manifests = tempfile::tempdir().map_err(|e| e.to_string())?;
    let agent_side = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (upstream, port) = echo_child::start(logs.path())?;
    let fleet = [
        http_manifest("near", &format!("http://127.0.0.1:{port}/s/0/mcp"), ""),
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: agent\nstringData:\n  credential: {CREDENTIAL}\n---\napiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: far\nspec:\n  type: agent\n  agent:\n    name: edge\n    credentialFrom: {{secretName: agent, key: credential}}\n"
        ),
    ]
    .concat();
    write_manifest(manifests.path(), "fleet.yaml", &fleet);
    write_manifest(
        agent_side.path(),
        "far.yaml",
        &http_manifest("far", &format!("http://127.0.0.1:{port}/s/1/mcp"), ""),
    );
    let token = logs.path().join("agent-credential");
    std::fs::write(&token, CREDENTIAL).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(manifests.path(), logs.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(["agent", "--name", "edge", "--gateway"])
        .arg(format!("http://127.0.0.1:{}/", gateway.port))
        .arg("--token-file")
        .arg(&token)
        .arg("--manifests")
        .arg(agent_side.path())
        .env("RUST_LOG", "warn");
    let agent = Proc::spawn("agent", cmd, logs.path());
    for server in ["near", "far"] {
        gateway.wait_state(server, "Connected", Duration::from_secs(30));
    }
    let gateway_url = gateway.url();
    let direct_url = format!("http://127.0.0.1:{port}/s/1/mcp");
    let (gateway_pid, agent_pid) = (gateway.proc.pid(), agent.pid());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (near, far, direct) = runtime.block_on(async {
        let http = http_client();
        let near_call = Request::call(&gateway_url, "x_near_echo");
        let far_call = Request::call(&gateway_url, "x_far_echo");
        let direct_call = Request::call(&direct_url, "echo");
        for request in [&near_call, &far_call, &direct_call] {
            sequential(&http, request, WARMUP).await?;
        }
        let empty = || Path {
            samples: Samples(vec![]),
            gateway_us: 0,
            agent_us: 0,
        };
        let (mut near, mut far, mut direct) = (empty(), empty(), empty());
        // Interleaved rounds, so drift on the machine hits all three alike.
        for _ in 0..ROUNDS {
            for (path, request) in [
                (&mut near, &near_call),
                (&mut far, &far_call),
                (&mut direct, &direct_call),
            ] {
                let before = (procs::cpu_us(gateway_pid), procs::cpu_us(agent_pid));
                path.samples
                    .extend(&sequential(&http, request, CALLS_PER_ROUND).await?);
                path.gateway_us += procs::cpu_us(gateway_pid) - before.0;
                path.agent_us += procs::cpu_us(agent_pid) - before.1;
            }
        }
        Ok::<_, String>((near, far, direct))
    })?;
    println!(
        "Agent benchmark: tools/call, sequential, {} calls each",
        near.samples.len()
    );
    println!(
        "{:<52} {:>9} {:>9} {:>15} {:>15}",
        "", "p50 µs", "p99 µs", "gateway CPU", "agent CPU"
    );
    for (name, path) in [
        ("gateway → server it reaches itself", &near),
        ("gateway → agent (WebSocket) → server beside it", &far),
        ("direct to the server", &direct),
    ] {
        let per_call = |us: u64| us as f64 / path.samples.len() as f64;
        println!(
            "{name:<52} {:>9.0} {:>9.0} {:>10.0} µs/call {:>7.0} µs/call",
            path.samples.pct_us(50.0),
            path.samples.pct_us(99.0),
            per_call(path.gateway_us),
            per_call(path.agent_us)
        );
    }
    println!(
        "added by the agent hop per call (p50): {:.0} µs; through the agent / through the gateway alone (p50): {:.2}",
        far.samples.pct_us(50.0) - near.samples.pct_us(50.0),
        far.samples.pct_us(50.0) / near.samples.pct_us(50.0)
    );
    drop(agent);
    drop(gateway);
    drop(upstream);
    Ok(())
}
