//! The matrix probe for the MCP Inspector CLI (npm
//! `@modelcontextprotocol/inspector`, `--cli` mode): one node process per
//! method, their results gathered into probe.py's document shape so
//! `compare_clients` compares it like the others.
//!
//! The CLI is a one-shot client: it declares no elicitation, sampling or
//! roots and takes no callbacks, and has no progress, log or ping command
//! (its `prompts/complete` takes flags it does not define), so it gets the
//! tool, resource and prompt lists, the plan's first two calls that ask
//! nothing (`"asks": true` marks those that would ask the client), its first
//! read and prompt. Each run is a node process (0.3 s of CPU), so it takes
//! only those: eight a side, the lists at once and the read with the prompt.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::Direct;
use crate::common::peers;

/// The most calls of a plan the Inspector makes.
const CALLS: usize = 2;

/// Runs the Inspector CLI once: `{"result": ...}` or `{"error": ...}`.
fn run(target: &Direct, home: &Path, method: &[&str]) -> Value {
    let p = peers();
    let mut cmd = Command::new(p.get("NODE22"));
    cmd.arg(p.get("INSPECTOR_JS"))
        .arg("--cli")
        .args(["--method"])
        .args(method)
        .args(["--format", "json", "--quiet"])
        // Its catalog and storage go to ~/.mcp-inspector.
        .env("HOME", home);
    match target {
        Direct::Url(url) => cmd.args(["--transport", "http", url]),
        Direct::Sse(url) => cmd.args(["--transport", "sse", url]),
        // After `--` a server's own flags are not read as the CLI's.
        Direct::Stdio(argv) => cmd.args(["--transport", "stdio", "--"]).args(argv),
    };
    let out = cmd.output().expect("running the Inspector CLI");
    // A tool's `isError` result exits 5 with the result on stdout.
    if let Ok(document) = serde_json::from_slice::<Value>(&out.stdout)
        && document.get("result").is_some()
    {
        return document;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .and_then(|e| e["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("exit {}: {stderr}", out.status));
    json!({"error": error})
}

/// The result of one run, or `{"error": message}` as probe.py records it.
fn result(run: Value) -> Value {
    match run.get("result") {
        Some(result) => result.clone(),
        None => run,
    }
}

/// A listed kind (`attr` of the result) sorted by `key`, with `prefix`
/// stripped from names and names without it left out.
fn listed(run: Value, attr: &str, key: &str, prefix: Option<&str>) -> Value {
    let Some(items) = run["result"][attr].as_array() else {
        return result(run);
    };
    super::unprefixed_sorted(items.clone(), key, prefix)
}

/// What the Inspector CLI sees of `target`.
pub(super) fn probe(target: &Direct, prefix: Option<&str>, plan: &Value) -> Value {
    let home = tempfile::tempdir().expect("a home for the Inspector CLI");
    let home = home.path();
    let name = |n: &Value| format!("{}{}", prefix.unwrap_or(""), n.as_str().unwrap_or(""));
    let steps = |key: &str| plan[key].as_array().cloned().unwrap_or_default();
    // The lists change nothing: run at once.
    let [initialize, tools, resources, prompts] = std::thread::scope(|scope| {
        ["initialize", "tools/list", "resources/list", "prompts/list"]
            .map(|method| scope.spawn(move || run(target, home, &[method])))
            .map(|run| run.join().expect("an Inspector CLI run"))
    });
    if initialize.get("error").is_some() {
        panic!("Inspector CLI could not connect: {initialize}");
    }
    let mut out = json!({"protocolVersion": initialize["result"]["protocolVersion"]});
    out["tools"] = listed(tools, "tools", "name", prefix);
    out["resources"] = listed(resources, "resources", "uri", None);
    out["prompts"] = listed(prompts, "prompts", "name", prefix);
    // Calls one after the other: one may change what the next sees.
    let calls: Vec<Value> = steps("calls")
        .iter()
        .filter(|step| step["asks"] != true)
        .take(CALLS)
        .map(|step| {
            let args = step.get("args").cloned().unwrap_or(json!({})).to_string();
            let tool = name(&step["tool"]);
            let method = [
                "tools/call",
                "--tool-name",
                &tool,
                "--tool-args-json",
                &args,
            ];
            result(run(target, home, &method))
        })
        .collect();
    out["calls"] = calls.into();
    // The first read and the first prompt, at once.
    let read = steps("reads").first().map(|uri| {
        let uri = uri.as_str().expect("a URI");
        vec!["resources/read".to_string(), "--uri".into(), uri.into()]
    });
    let prompt = steps("prompts").first().map(|step| {
        let mut method = vec![
            "prompts/get".to_string(),
            "--prompt-name".into(),
            name(&step["name"]),
        ];
        if let Some(args) = step["args"].as_object().filter(|a| !a.is_empty()) {
            method.push("--prompt-args".into());
            for (key, value) in args {
                method.push(format!("{key}={}", value.as_str().unwrap_or_default()));
            }
        }
        method
    });
    let [read, prompt] = std::thread::scope(|scope| {
        [read, prompt]
            .map(|method| {
                scope.spawn(move || {
                    let method = method?;
                    let method: Vec<&str> = method.iter().map(String::as_str).collect();
                    Some(result(run(target, home, &method)))
                })
            })
            .map(|run| run.join().expect("an Inspector CLI run"))
    });
    out["reads"] = Vec::from_iter(read).into();
    out["prompt_results"] = Vec::from_iter(prompt).into();
    out
}
