//! The client x upstream matrix: for each upstream (real third-party
//! servers, over each transport they offer), each client SDK exercises
//! everything the upstream offers directly and through the gateway, and
//! the two documents must match after the gateway's documented rewrites
//! (`src/gateway/revision.rs`): tool and prompt names carry the
//! `x_<server>_` prefix (the probe strips it), an elicitation's message
//! and a log message's logger name the server, a 2025 revision's result
//! carries no `resultType`, and the fields the revisions differ in (`_meta`,
//! `resultType`, `ttlMs`, `cacheScope`) are compared only where both sides
//! spoke the same revision.
//!
//! Clients (tests/peers/probe.py, ts_probe.mjs, matrix/rmcp_probe.rs,
//! matrix/inspector.rs): the Python `mcp` SDK Client in its default mode
//! (2026-07-28 where the server has it) and forced to the 2025-11-25
//! handshake, the `fastmcp` Client, the TypeScript SDK Client
//! (`@modelcontextprotocol/client`), an rmcp client with the handshake and
//! in its `Auto` mode (2026-07-28 where the server has it; rmcp has no
//! legacy SSE client, so neither meets the SSE upstream) and the MCP
//! Inspector CLI (a one-shot client without callbacks: lists, the first
//! calls that ask nothing, a read and a prompt). Each upstream gets one
//! gateway, shared by every client of its test.
//!
//! Differences that are not the gateway's (kept out of the plans, with the
//! reason): `ping` does not exist in 2026-07-28, so it is compared only when
//! both sides spoke a handshake revision; server-everything asks for roots
//! on its own, outside any call, which the gateway's shared session answers
//! only while a call is in flight: whether it was asked is not compared,
//! whether it got the client's roots is (`get-roots-list`, for session
//! clients: a 2026-07-28 client can be asked only within a call);
//! server-everything lists the tools that ask the client something
//! ([`ASKING_TOOLS`]) only to a client that declares it can answer, and the
//! gateway's shared upstream session declares it can, so the Inspector CLI
//! sees them only through the gateway.

mod inspector;
mod rmcp_probe;

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Listed items (JSON) sorted by `key`, with `prefix` stripped from their
/// names and items without it (the gateway's own tool) left out; shared by
/// the clients whose output this file builds itself (rmcp, Inspector CLI).
fn unprefixed_sorted(mut items: Vec<Value>, key: &str, prefix: Option<&str>) -> Value {
    if let Some(prefix) = prefix {
        items.retain(|i| i[key].as_str().is_some_and(|n| n.starts_with(prefix)));
        for item in &mut items {
            let name = item[key].as_str().unwrap_or_default()[prefix.len()..].to_string();
            item[key] = name.into();
        }
    }
    items.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    Value::Array(items)
}

/// The clients of the matrix, as probe.py names them (`ts`: the
/// TypeScript SDK client, tests/peers/ts_probe.mjs; `rmcp`: an rmcp
/// client, matrix/rmcp_probe.rs, with the handshake and, `rmcp-auto`,
/// 2026-07-28 where the server has it; `inspector`: the MCP Inspector CLI,
/// matrix/inspector.rs).
const CLIENTS: &[&str] = &[
    "mcp",
    "mcp-legacy",
    "fastmcp",
    "ts",
    "rmcp",
    "rmcp-auto",
    "inspector",
];

/// Tools that server-everything lists only to a client that declares
/// elicitation, sampling or roots.
const ASKING_TOOLS: &[&str] = &[
    "trigger-elicitation-request",
    "trigger-url-elicitation",
    "trigger-sampling-request",
    "get-roots-list",
];

/// Where the probe finds an upstream directly.
enum Direct {
    Url(String),
    /// A legacy HTTP+SSE server's `/sse` URL.
    Sse(String),
    Stdio(Vec<String>),
}

/// Runs probe.py with `sdk` against `target` (a URL, or `--stdio` argv).
fn probe(sdk: &str, target: &Direct, prefix: Option<&str>, plan: &Value) -> Value {
    match sdk {
        "rmcp" => return rmcp_probe::probe(target, prefix, plan, false),
        "rmcp-auto" => return rmcp_probe::probe(target, prefix, plan, true),
        "inspector" => return inspector::probe(target, prefix, plan),
        _ => {}
    }
    let p = peers();
    let mut cmd = match sdk {
        "ts" => {
            let mut cmd = std::process::Command::new(p.get("NODE22"));
            cmd.arg(p.get("TS_PROBE"));
            cmd
        }
        _ => {
            let mut cmd = std::process::Command::new(p.get("PY"));
            cmd.arg(p.get("PROBE")).args(["--sdk", sdk]);
            cmd
        }
    };
    match target {
        Direct::Url(url) => cmd.args(["--url", url]),
        Direct::Sse(url) => cmd.args(["--sse", url]),
        Direct::Stdio(argv) => cmd.args(["--stdio", &serde_json::to_string(argv).unwrap()]),
    };
    if let Some(prefix) = prefix {
        cmd.args(["--prefix", prefix]);
    }
    let out = cmd
        .arg(plan.to_string())
        .output()
        .expect("running probe.py");
    assert!(
        out.status.success(),
        "probe --sdk {sdk} {}: {}",
        match target {
            Direct::Url(url) | Direct::Sse(url) => url.clone(),
            Direct::Stdio(argv) => argv.join(" "),
        },
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe prints JSON")
}

/// Whether a probe's session used a handshake revision.
fn session(document: &Value) -> bool {
    document["protocolVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("2025"))
}

/// A probe document with the documented rewrites undone and the fields the
/// revisions differ in removed (kept when `same_revision`).
fn normalized(document: &Value, label: &str, same_revision: bool) -> Value {
    /// `session`: a 2025 revision's result never carries `resultType`
    /// (revision.rs: the gateway strips `"complete"`, which
    /// kubernetes-mcp-server sends to every revision).
    fn strip(value: &Value, same_revision: bool, session: bool) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(key, value)| {
                        key.as_str() != "protocolVersion"
                            && !(session && key.as_str() == "resultType" && *value == "complete")
                            && (same_revision
                                || !["_meta", "resultType", "ttlMs", "cacheScope"]
                                    .contains(&key.as_str()))
                    })
                    .map(|(key, value)| (key.clone(), strip(value, same_revision, session)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| strip(item, same_revision, session))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let mut document = strip(document, same_revision, session(document));
    strip_hop_meta(&mut document);
    // The gateway's lists are its own: an upstream without prompts (or
    // resources) contributes an empty list where, directly, the method is
    // not found.
    for list in ["resources", "templates", "prompts"] {
        if document[list]["error"] == "Method not found" {
            document[list] = json!([]);
        }
    }
    if let Some(asked) = document.get_mut("asked").and_then(Value::as_array_mut) {
        // When a server asks for roots on its own (after `initialized`, or
        // on roots/list_changed: outside any call) it asks the gateway's
        // shared session, which answers only while a call is in flight;
        // whether the server got the roots is compared by `get-roots-list`.
        asked.retain(|entry| entry != "roots");
        for entry in asked.iter_mut() {
            if let Some(text) = entry.as_str() {
                *entry = text.replacen(&format!("[{label}] "), "", 1).into();
            }
        }
    }
    // A relayed log message's logger names the server first.
    if let Some(calls) = document.get_mut("logs").and_then(Value::as_array_mut) {
        for message in calls
            .iter_mut()
            .filter_map(|call| call.get_mut("messages").and_then(Value::as_array_mut))
            .flatten()
        {
            let logger = message["logger"].as_str().map(str::to_string);
            let prefix = format!("{label}/");
            if let Some(rest) = logger.as_deref().and_then(|l| l.strip_prefix(&prefix)) {
                message["logger"] = rest.into();
            } else if logger.as_deref().is_none_or(|l| l == label) {
                // No logger (null, absent, or the label alone stands for none).
                if let Some(message) = message.as_object_mut() {
                    message.remove("logger");
                }
            }
        }
    }
    // `ping` is compared for working or not (SDKs word "method not found"
    // each their own way), and only between handshake revisions: 2026-07-28
    // has no ping.
    if let Some(object) = document.as_object_mut() {
        if !same_revision {
            object.remove("ping");
        } else if let Some(ping) = object.get_mut("ping") {
            *ping = (*ping == Value::Bool(true)).into();
        }
    }
    document
}

/// Removes `_meta["io.modelcontextprotocol/serverInfo"]` wherever it is
/// (the gateway's clients get the gateway's; a documented rewrite).
fn strip_hop_meta(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(meta)) = map.get_mut("_meta") {
                meta.remove("io.modelcontextprotocol/serverInfo");
                if meta.is_empty() {
                    map.remove("_meta");
                }
            }
            map.values_mut().for_each(strip_hop_meta);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_hop_meta),
        _ => {}
    }
}

/// Where two documents first differ, as a path with both values there.
fn first_difference(left: &Value, right: &Value) -> String {
    fn walk(left: &Value, right: &Value, path: String) -> Option<String> {
        match (left, right) {
            (Value::Object(l), Value::Object(r)) => l
                .keys()
                .chain(r.keys().filter(|k| !l.contains_key(*k)))
                .find_map(|k| {
                    let (lv, rv) = (l.get(k), r.get(k));
                    let (lv, rv) = (lv.unwrap_or(&Value::Null), rv.unwrap_or(&Value::Null));
                    walk(lv, rv, format!("{path}.{k}"))
                }),
            (Value::Array(l), Value::Array(r)) if l.len() == r.len() => l
                .iter()
                .zip(r)
                .enumerate()
                .find_map(|(i, (lv, rv))| walk(lv, rv, format!("{path}[{i}]"))),
            (Value::Array(l), Value::Array(r)) => {
                let (longer, shorter) = if l.len() > r.len() { (l, r) } else { (r, l) };
                let extra = longer.iter().find(|item| !shorter.contains(item));
                Some(format!(
                    "{path}: {} / {} items, only on one side: {}",
                    l.len(),
                    r.len(),
                    extra.unwrap_or(&Value::Null)
                ))
            }
            _ => (left != right).then(|| format!("{path}: {left} / {right}")),
        }
    }
    walk(left, right, String::new()).unwrap_or_default()
}

/// Every client, directly and through `gateway`, compared member by member.
fn compare_all(name: &str, gateway: &Gateway, direct: &Direct, plan: &Value, session_only: &Value) {
    compare_clients(CLIENTS, name, gateway, direct, plan, session_only);
}

/// [`compare_all`] for the `clients` that can reach the upstream directly.
fn compare_clients(
    clients: &[&str],
    name: &str,
    gateway: &Gateway,
    direct: &Direct,
    plan: &Value,
    session_only: &Value,
) {
    let via = Direct::Url(gateway.url());
    let prefix = format!("x_{name}_");
    for sdk in clients {
        if sdk.starts_with("rmcp") && matches!(direct, Direct::Sse(_)) {
            // rmcp has no legacy HTTP+SSE client: it cannot reach the
            // upstream directly.
            continue;
        }
        let direct_doc = probe(sdk, direct, None, plan);
        let through_doc = probe(sdk, &via, Some(&prefix), plan);
        let same = direct_doc["protocolVersion"] == through_doc["protocolVersion"];
        let (mut a, mut b) = (
            normalized(&direct_doc, name, same),
            normalized(&through_doc, name, same),
        );
        if *sdk == "inspector" {
            // It declares no elicitation, sampling or roots. Directly,
            // server-everything does not list the tools that ask for them
            // to such a client; the gateway's upstream session is shared
            // by every client, so it declares all three (and relays a
            // question to the client whose call asked it;
            // src/fleet/client_handler.rs), and every client sees them.
            if let (Some(through), Some(direct)) =
                (b["tools"].as_array_mut(), a["tools"].as_array())
            {
                through.retain(|tool| {
                    direct.iter().any(|d| d["name"] == tool["name"])
                        || !ASKING_TOOLS.contains(&tool["name"].as_str().unwrap_or_default())
                });
            }
        }
        // Progress: the gateway relays every step before the result; some
        // clients drop a step that arrives just before the result when
        // they talk to the server directly (the TypeScript client over
        // legacy SSE and stdio drops the last one). What comes through
        // must start with everything that came directly.
        if let (Some(direct), Some(through)) =
            (a["progress"].as_array_mut(), b["progress"].as_array())
        {
            for (d, t) in direct.iter_mut().zip(through) {
                let (ds, ts) = (d["steps"].as_array(), t["steps"].as_array());
                if let (Some(ds), Some(ts)) = (ds, ts) {
                    assert!(
                        ts.starts_with(ds),
                        "{name}, client {sdk}: progress through the gateway {ts:?}, directly {ds:?}"
                    );
                }
                d["steps"] = t["steps"].clone();
            }
        }
        for key in a.as_object().unwrap().keys() {
            assert_eq!(
                b[key],
                a[key],
                "{name}, client {sdk}: {key} differs at {} (left: through the gateway, right: \
                 directly; revisions {} / {})",
                first_difference(&b[key], &a[key]),
                through_doc["protocolVersion"],
                direct_doc["protocolVersion"]
            );
        }
        assert!(
            a["tools"].as_array().is_some_and(|t| !t.is_empty()),
            "{name}: no tools listed directly: {direct_doc}"
        );
        // What is compared is there at all (not two empty lists).
        for call in through_doc["progress"].as_array().into_iter().flatten() {
            assert!(
                call["steps"].as_array().is_some_and(|s| !s.is_empty()),
                "{name}, client {sdk}: no progress through the gateway: {call}"
            );
        }
        if session(&through_doc) {
            for call in through_doc["logs"].as_array().into_iter().flatten() {
                assert!(
                    call["messages"].as_array().is_some_and(|m| !m.is_empty()),
                    "{name}, client {sdk}: no log messages through the gateway: {call}"
                );
            }
        }
        // The session-only calls ask the client something, which the
        // Inspector CLI cannot answer.
        if session(&direct_doc)
            && session(&through_doc)
            && !session_only.is_null()
            && *sdk != "inspector"
        {
            let direct_doc = probe(sdk, direct, None, session_only);
            let through_doc = probe(sdk, &via, Some(&prefix), session_only);
            assert_eq!(
                normalized(&through_doc, name, false)["calls"],
                normalized(&direct_doc, name, false)["calls"],
                "{name}, client {sdk}: session-only calls differ"
            );
        }
    }
}

/// How long each test waits for its one upstream to be Connected.
const CONNECTED_WITHIN: Duration = Duration::from_secs(30);

/// What server-everything offers, in the probe's plan.
fn everything_plan() -> (Value, Value) {
    let plan = json!({
        "calls": [
            {"tool": "echo", "args": {"message": "hi"}},
            {"tool": "get-sum", "args": {"a": 1, "b": 2.5}},
            {"tool": "get-structured-content", "args": {"location": "New York"}},
            {"tool": "get-annotated-message", "args": {"messageType": "error", "includeImage": true}},
            {"tool": "get-resource-links", "args": {"count": 2}},
            {"tool": "get-tiny-image"},
            {"tool": "trigger-elicitation-request", "asks": true},
            {"tool": "trigger-sampling-request", "args": {"prompt": "hello"}, "asks": true},
            {"tool": "get-sum", "args": {"a": "not a number"}},
        ],
        // Dynamic resources carry the time they were made: static ones only.
        "reads": [
            "demo://resource/static/document/architecture.md",
            "demo://resource/static/document/features.md",
        ],
        "prompts": [
            {"name": "simple-prompt"},
            {"name": "args-prompt", "args": {"city": "Berlin", "state": "BE"}},
        ],
        "ping": true,
        "progress": [{"tool": "trigger-long-running-operation", "args": {"duration": 1, "steps": 4}}],
        "complete": [
            {"ref": {"type": "ref/prompt", "name": "completable-prompt"},
             "argument": {"name": "department", "value": "E"}},
        ],
    });
    let session_only = json!({"calls": [{"tool": "get-roots-list", "asks": true}]});
    (plan, session_only)
}

#[tokio::test(flavor = "multi_thread")]
async fn server_everything_over_streamable_http() {
    let fleet = Fleet::new();
    let (_everything, port) = everything("streamableHttp", 0, fleet.logs());
    let url = format!("http://127.0.0.1:{port}/mcp");
    let gateway = fleet
        .http("everything", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    let (plan, session_only) = everything_plan();
    compare_all(
        "everything",
        &gateway,
        &Direct::Url(url),
        &plan,
        &session_only,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_everything_over_legacy_sse() {
    let fleet = Fleet::new();
    let (_everything, port) = everything("sse", 0, fleet.logs());
    let url = format!("http://127.0.0.1:{port}/sse");
    let gateway = fleet
        .sse("everything", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    let (plan, session_only) = everything_plan();
    compare_all(
        "everything",
        &gateway,
        &Direct::Sse(url),
        &plan,
        &session_only,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_mcp_server_over_streamable_http() {
    let fleet = Fleet::new();
    let (_kmcp, port) = kubernetes_mcp_server(0, fleet.logs());
    let url = format!("http://127.0.0.1:{port}/mcp");
    let gateway = fleet
        .http("kube", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    // Its kubeconfig points at no cluster: what works offline, and errors.
    let plan = json!({
        "calls": [
            {"tool": "configuration_view", "args": {"minified": true}},
            {"tool": "namespaces_list"},
            {"tool": "pods_get", "args": {"name": "missing"}},
        ],
        "ping": true,
    });
    // rmcp's `Auto` lifecycle gives up, directly, when `server/discover`
    // is answered with no revision it prefers (this server lists its 2025
    // ones) instead of falling back to `initialize`: a client quirk.
    let clients: Vec<&str> = CLIENTS
        .iter()
        .copied()
        .filter(|sdk| *sdk != "rmcp-auto")
        .collect();
    compare_clients(
        &clients,
        "kube",
        &gateway,
        &Direct::Url(url),
        &plan,
        &Value::Null,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_everything_over_stdio() {
    let p = peers();
    let argv = vec![
        p.get("NODE22").to_string(),
        p.get("EVERYTHING_JS").to_string(),
        "stdio".to_string(),
    ];
    let gateway = Fleet::new()
        .stdio("everything", &argv[0], &[&argv[1], "stdio"])
        .connected_within(CONNECTED_WITHIN)
        .start();
    let (plan, session_only) = everything_plan();
    compare_all(
        "everything",
        &gateway,
        &Direct::Stdio(argv),
        &plan,
        &session_only,
    );
}

/// What the Python SDK server (tests/peers/py_server.py) offers, and what
/// of it is compared for session clients only.
fn python_plan() -> (Value, Value) {
    let plan = json!({
        "calls": [
            {"tool": "add", "args": {"a": 2, "b": 3}},
            {"tool": "echo", "args": {"text": "0.7 and 1.0"}},
            {"tool": "fail", "args": {"message": "no"}},
        ],
        "reads": ["py://info"],
        "prompts": [{"name": "greet", "args": {"name": "Bo"}}],
        "ping": true,
        "logged": [{"tool": "chatty"}],
    });
    // Directly, this server can ask only a session client (`ctx.elicit`
    // has no back-channel on 2026-07-28); through the gateway every client
    // can answer it (`relay`), so it is compared for session clients.
    let session_only = json!({"calls": [{"tool": "ask", "asks": true}]});
    (plan, session_only)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_sdk_server_over_streamable_http() {
    let fleet = Fleet::new();
    let (_py, url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("py", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    let (plan, session_only) = python_plan();
    compare_all("py", &gateway, &Direct::Url(url), &plan, &session_only);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_sdk_server_over_stdio() {
    let p = peers();
    let argv = vec![
        p.get("PY").to_string(),
        p.get("PY_SERVER").to_string(),
        "--stdio".to_string(),
    ];
    let gateway = Fleet::new()
        .stdio("py", &argv[0], &[&argv[1], &argv[2]])
        .connected_within(CONNECTED_WITHIN)
        .start();
    let (plan, session_only) = python_plan();
    compare_all("py", &gateway, &Direct::Stdio(argv), &plan, &session_only);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_sdk_server_that_speaks_only_2026_07_28() {
    let fleet = Fleet::new();
    let (_py, url) = python_server_with(0, fleet.logs(), &["--modern-only"]);
    let gateway = fleet
        .http("py", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    let plan = json!({
        "calls": [
            {"tool": "add", "args": {"a": 2, "b": 3}},
            {"tool": "echo", "args": {"text": "0.7 and 1.0"}},
            {"tool": "fail", "args": {"message": "no"}},
            {"tool": "ask_round_trip", "asks": true},
        ],
        "reads": ["py://info"],
        "prompts": [{"name": "greet", "args": {"name": "Bo"}}],
    });
    // Clients that begin with the handshake (the Python client forced to
    // it, the TypeScript client, which tries `initialize` first, the rmcp
    // client and the Inspector CLI, which speak only the handshake by
    // default) cannot reach this server directly; through the gateway they
    // can (`relay`). The Inspector, which cannot answer the server's
    // question, is left out.
    let clients = ["mcp", "fastmcp", "rmcp-auto"];
    compare_clients(
        &clients,
        "py",
        &gateway,
        &Direct::Url(url),
        &plan,
        &Value::Null,
    );
    for sdk in ["ts", "rmcp"] {
        let through = probe(sdk, &Direct::Url(gateway.url()), Some("x_py_"), &plan);
        assert_eq!(through["protocolVersion"], "2025-11-25", "{sdk}");
        assert_eq!(
            through["calls"][3]["content"][0]["text"], "hello Ada (state round-1)",
            "{sdk}: {through}"
        );
        assert_eq!(
            through["asked"],
            json!(["elicit: [py] What is your name?"]),
            "{sdk}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fastmcp_server_over_streamable_http() {
    let fleet = Fleet::new();
    let p = peers();
    let mut cmd = std::process::Command::new(p.get("PY"));
    cmd.arg(p.get("FASTMCP_SERVER"));
    let server = Proc::spawn("fastmcp-server", cmd, fleet.logs());
    let line = server.wait_line("READY", Duration::from_secs(30));
    let url = line.trim_start_matches("READY ").trim().to_string();
    let gateway = fleet
        .http("fast", &url)
        .connected_within(CONNECTED_WITHIN)
        .start();
    let plan = json!({
        "calls": [
            {"tool": "echo", "args": {"text": "hi"}},
            {"tool": "add", "args": {"a": 1, "b": 0.7}},
            {"tool": "fail"},
        ],
        "progress": [{"tool": "steps", "args": {"n": 3}}],
        "logged": [{"tool": "steps", "args": {"n": 2}}],
        "reads": ["fast://info"],
        "prompts": [{"name": "greet", "args": {"name": "Bo"}}],
        "ping": true,
    });
    // As with the Python SDK server: asking needs a session directly.
    let session_only = json!({"calls": [{"tool": "ask", "asks": true}]});
    compare_all("fast", &gateway, &Direct::Url(url), &plan, &session_only);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_memory_over_stdio() {
    let fleet = Fleet::new();
    let p = peers();
    // Each side gets its own graph file, so both start empty.
    let direct_file = fleet.logs().join("direct.jsonl");
    let gateway_file = fleet.logs().join("gateway.jsonl");
    let gateway = fleet
        .stdio("memory", &p.get("NODE22"), &[&p.get("MEMORY_JS")])
        .env("MEMORY_FILE_PATH", &gateway_file.display().to_string())
        .connected_within(CONNECTED_WITHIN)
        .start();
    // The probe's child inherits the environment: a wrapper sets the file.
    let argv = vec![
        "env".to_string(),
        format!("MEMORY_FILE_PATH={}", direct_file.display()),
        p.get("NODE22").to_string(),
        p.get("MEMORY_JS").to_string(),
    ];
    let plan = json!({
        "calls": [
            {"tool": "create_entities", "args": {"entities": [
                {"name": "berlin", "entityType": "cluster", "observations": ["runs kubernetes"]}]}},
            {"tool": "add_observations", "args": {"observations": [
                {"entityName": "berlin", "contents": ["has 3 nodes"]}]}},
            {"tool": "search_nodes", "args": {"query": "berlin"}},
            {"tool": "delete_entities", "args": {"entityNames": ["berlin"]}},
            {"tool": "read_graph"},
        ],
        "ping": true,
    });
    compare_all(
        "memory",
        &gateway,
        &Direct::Stdio(argv),
        &plan,
        &Value::Null,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_server_time_over_stdio() {
    let p = peers();
    let argv = vec![
        p.get("MCP_SERVER_TIME").to_string(),
        "--local-timezone".to_string(),
        "Europe/Berlin".to_string(),
    ];
    let gateway = Fleet::new()
        .stdio("time", &argv[0], &[&argv[1], &argv[2]])
        .connected_within(CONNECTED_WITHIN)
        .start();
    let plan = json!({
        "calls": [
            {"tool": "convert_time", "args": {"source_timezone": "Europe/Berlin", "time": "12:30",
                "target_timezone": "Asia/Tokyo"}},
            {"tool": "convert_time", "args": {"source_timezone": "Nowhere/City", "time": "12:30",
                "target_timezone": "Asia/Tokyo"}},
        ],
        "ping": true,
    });
    compare_all("time", &gateway, &Direct::Stdio(argv), &plan, &Value::Null);
}
