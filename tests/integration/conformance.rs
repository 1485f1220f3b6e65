//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`)
//! in its client mode, with the gateway as the client under test: for each
//! scenario the suite starts its own server, `tests/peers/via_gateway.sh`
//! puts a gateway in front of it and drives the gateway with the Python SDK
//! client, and the suite judges what reaches its server. The same client
//! run directly against the suite is the baseline: the gateway passes the
//! scenarios the Python SDK client passes. (The suite's OAuth scenarios test
//! a client's login to its server; the gateway's upstream auth is per-server
//! configuration and is not in this list.)

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::peers;

/// Runs the suite for `scenario` with `client` as the client under test;
/// returns whether it passed and what it printed.
fn suite(scenario: &str, client: &str, logs: &Path) -> (bool, String) {
    let p = peers();
    let out = logs.join(format!("{scenario}.out"));
    let file = std::fs::File::create(&out).expect("output file");
    let mut child = Command::new(p.get("NODE22"))
        // The suite's scenario servers listen without naming a host: keep them on loopback.
        .arg("--require")
        .arg(p.get("LOOPBACK_PRELOAD"))
        .arg(p.get("CONFORMANCE_JS"))
        .args(["client", "--scenario", scenario, "--timeout", "30000"])
        .args(["--command", client])
        .env("FLOTILLA", env!("CARGO_BIN_EXE_flotilla"))
        .env("HOME", logs)
        .current_dir(logs)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("output file"))
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("starting the conformance suite");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the suite") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the suite left behind in its group goes too.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (status.is_some_and(|s| s.success()), text)
}

fn passes_directly_and_through_the_gateway(scenario: &str) {
    let logs = tempfile::tempdir().unwrap();
    let p = peers();
    let direct = format!("{} {}", p.get("PY"), p.get("CONFORMANCE_CLIENT"));
    let (ok, text) = suite(scenario, &direct, logs.path());
    assert!(ok, "the Python SDK client itself fails {scenario}:\n{text}");
    let through = format!("bash {}", p.get("VIA_GATEWAY"));
    let (ok, text) = suite(scenario, &through, logs.path());
    assert!(ok, "through the gateway, {scenario} fails:\n{text}");
    assert!(text.contains("OVERALL: PASSED"), "{text}");
}

#[test]
fn conformance_initialize_through_the_gateway() {
    passes_directly_and_through_the_gateway("initialize");
}

#[test]
fn conformance_tools_call_through_the_gateway() {
    passes_directly_and_through_the_gateway("tools_call");
}

#[test]
fn conformance_elicitation_with_defaults_through_the_gateway() {
    passes_directly_and_through_the_gateway("elicitation-sep1034-client-defaults");
}

#[test]
fn conformance_sse_retry_through_the_gateway() {
    passes_directly_and_through_the_gateway("sse-retry");
}
