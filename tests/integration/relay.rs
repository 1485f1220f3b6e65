//! The relay core, seen from outside: what a client gets through the gateway
//! against what it gets from the upstream directly (after the documented
//! rewrites of `src/gateway/revision.rs`), across MCP revisions, and the
//! HTTP behaviour the Streamable HTTP transport requires of `/mcp`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// server-everything over Streamable HTTP on a port it picked; returns it and its URL.
fn everything_http(logs: &Path) -> (Proc, String) {
    let p = peers();
    let mut cmd = std::process::Command::new(p.get("NODE22"));
    cmd.env("PORT", "0")
        .arg("--require")
        .arg(p.get("LOOPBACK_PRELOAD"))
        .arg(p.get("EVERYTHING_JS"))
        .arg("streamableHttp");
    let proc = Proc::spawn("everything-relay", cmd, logs);
    // The preload prints `LISTENING <host>:<port>` on stderr (the log) once bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(address) = proc
            .log_text()
            .lines()
            .find_map(|l| l.strip_prefix("LISTENING "))
        {
            return (proc, format!("http://{}/mcp", address.trim()));
        }
        assert!(
            Instant::now() < deadline,
            "server-everything did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a result says apart from the fields the revisions differ in.
fn payload(mut result: Value) -> Value {
    if let Some(object) = result.as_object_mut() {
        for key in [
            "protocolVersion",
            "resultType",
            "ttlMs",
            "cacheScope",
            "_meta",
        ] {
            object.remove(key);
        }
    }
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_client_calls_reads_prompts_and_completes_a_2025_typescript_server_as_directly() {
    let fleet = Fleet::new();
    let (_everything, url) = everything_http(fleet.logs());
    let gateway = fleet.http("everything", &url).connected().start();
    let via = gateway.url();
    let resource = "demo://resource/static/document/architecture.md";
    let argument = r#"{"name": "department", "value": "E"}"#;
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["call", "echo", r#"{"message": "hi"}"#],
            &["call", "x_everything_echo", r#"{"message": "hi"}"#],
        ),
        (&["read", resource], &["read", resource]),
        (
            &["prompt", "simple-prompt", "{}"],
            &["prompt", "x_everything_simple-prompt", "{}"],
        ),
        (
            &[
                "complete",
                r#"{"type": "ref/prompt", "name": "completable-prompt"}"#,
                argument,
            ],
            &[
                "complete",
                r#"{"type": "ref/prompt", "name": "x_everything_completable-prompt"}"#,
                argument,
            ],
        ),
    ];
    for (direct_args, gateway_args) in cases {
        let direct = py_client(&url, direct_args);
        assert_eq!(direct["protocolVersion"], "2025-11-25");
        // The Python SDK refuses a 2026-07-28 result without resultType.
        let through = py_client(&via, gateway_args);
        assert_eq!(through["protocolVersion"], "2026-07-28", "{through}");
        assert_eq!(through["resultType"], "complete", "{through}");
        assert_eq!(payload(through), payload(direct), "{gateway_args:?}");
    }
    let log = gateway.proc.log_text();
    for method in [
        "tools/call",
        "resources/read",
        "prompts/get",
        "completion/complete",
    ] {
        assert!(
            log.contains(&format!("relaying {method}")),
            "{method} was relayed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_messages_reach_the_client_at_the_level_it_asked_for_naming_the_server() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).connected().start();
    let data = |result: &Value| -> Vec<String> {
        result["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .map(|l| format!("{} {} {}", l["level"], l["logger"], l["data"]))
            .collect()
    };
    // Directly, a 2026-07-28 client asking for info gets info and warning.
    let direct = py_client(&py_url, &["--log-level", "info", "call", "chatty"]);
    assert_eq!(data(&direct).len(), 2, "{direct}");
    // A 2025 session that sets info with logging/setLevel, through the gateway.
    let legacy = py_client(
        &gateway.url(),
        &["--legacy", "--log-level", "info", "call", "x_py_chatty"],
    );
    assert_eq!(
        data(&legacy),
        vec![
            r#""info" "py/chatty" "chatty info""#,
            r#""warning" "py/chatty" "chatty warning""#
        ],
        "{legacy}"
    );
    // A 2026-07-28 client asking for warnings only.
    let stateless = py_client(
        &gateway.url(),
        &["--log-level", "warning", "call", "x_py_chatty"],
    );
    assert_eq!(
        data(&stateless),
        vec![r#""warning" "py/chatty" "chatty warning""#],
        "{stateless}"
    );
}

/// One raw HTTP exchange with `/mcp`.
pub(crate) async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut request = client
        .request(method, url)
        .header("accept", "application/json, text/event-stream");
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("request to /mcp");
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, session, response.text().await.unwrap_or_default())
}

fn initialize(version: &str, capabilities: &Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": capabilities,
        "clientInfo": {"name": "relay-tests", "version": "1"}}})
    .to_string()
}

/// The JSON-RPC messages of a JSON or SSE body.
pub(crate) fn messages(body: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(value) => vec![value],
        Err(_) => body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect(),
    }
}

/// Opens a session of `version`: initialize, then notifications/initialized.
async fn open_session(client: &reqwest::Client, url: &str, version: &str) -> String {
    open_session_declaring(client, url, version, &json!({}))
        .await
        .0
}

/// Opens a session of `version` whose client declares `capabilities`;
/// returns its id and the answer to `initialize`.
pub(crate) async fn open_session_declaring(
    client: &reqwest::Client,
    url: &str,
    version: &str,
    capabilities: &Value,
) -> (String, Value) {
    let (status, session, body) = send(
        client,
        reqwest::Method::POST,
        url,
        &[],
        Some(&initialize(version, capabilities)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = messages(&body).pop().unwrap_or_default();
    let session = session.expect("a session id");
    let mut headers = vec![("mcp-session-id", session.as_str())];
    if version != "2025-03-26" {
        headers.push(("mcp-protocol-version", version));
    }
    let (status, _, _) = send(
        client,
        reqwest::Method::POST,
        url,
        &headers,
        Some(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
    )
    .await;
    assert_eq!(status, 202);
    (session, answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_endpoint_answers_http_as_the_transport_spec_requires() {
    let gateway = Fleet::new().sim("sim-a", "edge-a").start();
    let url = gateway.url();
    let http = reqwest::Client::new();
    let post = reqwest::Method::POST;

    // A Host the gateway does not answer to (DNS rebinding) is refused on
    // every path, the relayed calls included.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "x_sim-a_cluster_info", "arguments": {}}})
    .to_string();
    let (status, _, body) = send(
        &http,
        post.clone(),
        &url,
        &[("host", "rebind.evil.example")],
        Some(&call),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowedHosts"), "{body}");
    // So are the other routes (the fleet's status names servers and errors);
    // the probes answer any Host, as the kubelet calls them by address.
    let base = url.trim_end_matches("/mcp");
    let get = reqwest::Method::GET;
    for (path, want) in [("/status", 403), ("/healthz", 200), ("/readyz", 200)] {
        let (status, _, body) = send(
            &http,
            get.clone(),
            &format!("{base}{path}"),
            &[("host", "rebind.evil.example")],
            None,
        )
        .await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, _, _) = send(
        &http,
        get.clone(),
        &format!("{base}/status"),
        &[("origin", "http://evil.example")],
        None,
    )
    .await;
    assert_eq!(status, 403, "a foreign Origin is refused on /status too");

    // Origin: a foreign one is refused before anything else, loopback passes.
    let (status, _, body) = send(
        &http,
        post.clone(),
        &url,
        &[("origin", "http://evil.example")],
        Some(&initialize("2025-11-25", &json!({}))),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowedOrigins"), "{body}");
    let (status, _, body) = send(
        &http,
        post.clone(),
        &url,
        &[("origin", "http://localhost:6274")],
        Some(&initialize("2025-11-25", &json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A body that is not JSON: 400 with a parse error.
    let (status, _, body) = send(&http, post.clone(), &url, &[], Some("{\"jsonrpc\": ")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(messages(&body)[0]["error"]["code"], -32700, "{body}");

    // initialize again on a live session: 400; the session still works.
    let session = open_session(&http, &url, "2025-11-25").await;
    let on_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) = send(
        &http,
        post.clone(),
        &url,
        &on_session,
        Some(&initialize("2025-11-25", &json!({}))),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(messages(&body)[0]["error"]["code"], -32600, "{body}");
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    let (status, _, body) = send(&http, post.clone(), &url, &on_session, Some(ping)).await;
    assert_eq!(status, 200, "{body}");

    // Batches are refused on 2025-11-25 ...
    let batch = r#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","id":"b","method":"tools/list"}]"#;
    let (status, _, body) = send(&http, post.clone(), &url, &on_session, Some(batch)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("2025-11-25"), "{body}");

    // ... and answered as one array on 2025-03-26.
    let old = open_session(&http, &url, "2025-03-26").await;
    let (status, _, body) = send(
        &http,
        post.clone(),
        &url,
        &[("mcp-session-id", old.as_str())],
        Some(batch),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut replies = messages(&body);
    replies.sort_by_key(|r| r["id"].as_str().unwrap_or("").to_string());
    assert_eq!(replies.len(), 2, "{body}");
    assert_eq!(replies[0]["id"], "a");
    assert_eq!(replies[0]["result"], json!({}));
    let tools = replies[1]["result"]["tools"].as_array().expect("tools");
    assert!(
        tools.iter().any(|t| t["name"] == "x_sim-a_list_pods"),
        "{body}"
    );
    // A batch of notifications only: 202.
    let (status, _, _) = send(
        &http,
        post.clone(),
        &url,
        &[("mcp-session-id", old.as_str())],
        Some(r#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#),
    )
    .await;
    assert_eq!(status, 202);

    // DELETE: 204 for the live session, then 404 for it and for a made-up one.
    let (status, _, body) = send(&http, reqwest::Method::DELETE, &url, &on_session, None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _, _) = send(&http, reqwest::Method::DELETE, &url, &on_session, None).await;
    assert_eq!(status, 404);
    let (status, _, _) = send(&http, post, &url, &on_session, Some(ping)).await;
    assert_eq!(status, 404, "a deleted session is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_progress_notification_of_every_call_reaches_the_client() {
    let fleet = Fleet::new();
    let (_everything, url) = everything_http(fleet.logs());
    let gateway = fleet.http("everything", &url).connected().start();
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    for round in 1..=20 {
        // rmcp clients attach a progress token to every request.
        let result = call(
            &client,
            "x_everything_trigger-long-running-operation",
            json!({"duration": 0.1, "steps": 3}),
        )
        .await;
        assert_ne!(result.is_error, Some(true), "{result:?}");
        // The client handles notifications on their own tasks: let them land.
        let seen = eventually(Duration::from_secs(2), "this call's progress", || async {
            let seen = handler.progress.lock().unwrap().len();
            (seen >= 3 * round).then_some(seen)
        })
        .await;
        assert_eq!(seen, 3 * round, "call {round} got every step, no more");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_session_client_gets_every_progress_step_of_twenty_calls() {
    let fleet = Fleet::new();
    let (_everything, url) = everything_http(fleet.logs());
    let gateway = fleet.http("everything", &url).connected().start();
    let args = r#"{"duration": 0.1, "steps": 3}"#;
    for (mode, target, tool) in [
        ("--legacy", url.as_str(), "trigger-long-running-operation"),
        (
            "--legacy",
            gateway.url().as_str(),
            "x_everything_trigger-long-running-operation",
        ),
        (
            "--progress-calls=20",
            gateway.url().as_str(),
            "x_everything_trigger-long-running-operation",
        ),
    ] {
        let mut flags = vec!["--progress-calls=20"];
        if mode == "--legacy" {
            flags.push(mode);
        }
        flags.extend(["call", tool, args]);
        let result = py_client(target, &flags);
        let progress = result["progress"].as_array().expect("progress").clone();
        assert_eq!(progress.len(), 20);
        for (i, steps) in progress.iter().enumerate() {
            let steps: Vec<f64> = steps
                .as_array()
                .expect("steps")
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            assert_eq!(
                steps,
                [1.0, 2.0, 3.0],
                "call {i} of {flags:?} against {target}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_sdk_server_can_ask_the_user_through_the_gateway() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).connected().start();
    // The gateway holds a session with this server (it has the handshake),
    // so the server has a channel to ask on.
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2025-11-25");
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    let result = call(&client, "x_py_ask", json!({})).await;
    assert_eq!(text_of(&result), "hello Ada", "{result:?}");
    assert_eq!(
        handler.asked.lock().unwrap().clone(),
        ["elicit: [py] What is your name?"]
    );
    // The call, its question and the answer went through the relay.
    assert!(gateway.proc.log_text().contains("relaying tools/call"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_client_answers_a_2025_servers_question_as_input_required() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let (_everything, everything_url) = everything_http(fleet.logs());
    let gateway = fleet
        .http("py", &py_url)
        .connected()
        .http("everything", &everything_url)
        .connected()
        .start();
    let via = gateway.url();
    let answer = ["--elicit-answer", r#"{"name": "Ada"}"#];
    // Directly, the Python server can put its question (`ctx.elicit`) only
    // to a session client: a 2026-07-28 client gets "no back-channel". The
    // gateway holds a 2025 session with it and turns the question into an
    // input_required result, so the 2026-07-28 client gets what a session
    // client gets directly.
    let legacy = ["--legacy", "--elicit-answer", r#"{"name": "Ada"}"#];
    let direct = py_client(&py_url, &[&legacy[..], &["call", "ask"]].concat());
    let through = py_client(&via, &[&answer[..], &["call", "x_py_ask"]].concat());
    assert_eq!(direct["protocolVersion"], "2025-11-25");
    assert_eq!(through["protocolVersion"], "2026-07-28", "{through}");
    assert_eq!(payload(through.clone()), {
        let mut expected = payload(direct.clone());
        expected["asked"] = json!(["[py] What is your name?"]);
        expected
    });
    assert_eq!(through["content"][0]["text"], "hello Ada", "{through}");
    // A TypeScript server speaks only 2025 sessions: directly this client
    // falls back to one, through the gateway it stays on 2026-07-28.
    let direct = py_client(
        &everything_url,
        &[&answer[..], &["call", "trigger-elicitation-request"]].concat(),
    );
    let through = py_client(
        &via,
        &[
            &answer[..],
            &["call", "x_everything_trigger-elicitation-request"],
        ]
        .concat(),
    );
    assert_ne!(direct["protocolVersion"], "2026-07-28");
    assert_eq!(through["protocolVersion"], "2026-07-28", "{through}");
    assert_eq!(
        through["asked"],
        json!(["[everything] Please provide inputs for the following fields:"])
    );
    // The same answer, after the one documented rewrite (who asks).
    let mut expected = payload(direct);
    expected["asked"] = through["asked"].clone();
    assert_eq!(payload(through), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2025_client_answers_a_2026_only_servers_input_required() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server_with(0, fleet.logs(), &["--modern-only"]);
    let gateway = fleet.http("py", &py_url).connected().start();
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2026-07-28");
    let via = gateway.url();
    let answer = ["--elicit-answer", r#"{"name": "Ada"}"#];
    let direct = py_client(
        &py_url,
        &[&answer[..], &["call", "ask_round_trip"]].concat(),
    );
    assert_eq!(
        direct["content"][0]["text"], "hello Ada (state round-1)",
        "{direct}"
    );
    // A 2025 session client cannot read input_required: the gateway asks it
    // on the call's stream and sends the call again with its answer.
    let session = py_client(
        &via,
        &[&["--legacy"], &answer[..], &["call", "x_py_ask_round_trip"]].concat(),
    );
    assert_eq!(session["protocolVersion"], "2025-11-25");
    // A 2026-07-28 client gets the input_required result and retries itself.
    let stateless = py_client(
        &via,
        &[&answer[..], &["call", "x_py_ask_round_trip"]].concat(),
    );
    assert_eq!(stateless["protocolVersion"], "2026-07-28");
    let mut expected = payload(direct);
    expected["asked"] = json!(["[py] What is your name?"]);
    assert_eq!(payload(session), expected);
    assert_eq!(payload(stateless), expected);
    // A client that cannot answer gets a tool error that says why.
    let unable = py_client(&via, &["--legacy", "call", "x_py_ask_round_trip"]);
    assert_eq!(unable["isError"], true, "{unable}");
    assert_eq!(
        unable["content"][0]["text"],
        "server \"py\" needed input from the client: it asked for elicitation, which this client does not offer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_state_is_honoured_only_for_its_own_call() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).connected().start();
    let client = reqwest::Client::new();
    let call = |tool: &str, extra: Value| {
        let mut params = json!({"name": tool, "arguments": {}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        }});
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            params[key] = value;
        }
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
    };
    let post = |body: Value, name: &str| {
        client
            .post(gateway.url())
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", name.to_string())
            .json(&body)
            .send()
    };
    let first = post(call("x_py_ask", json!({})), "x_py_ask").await.unwrap();
    let first: Value = messages(&first.text().await.unwrap()).pop().unwrap();
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let state = result["requestState"].as_str().unwrap().to_string();
    let (key, request) = result["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(request["params"]["message"], "[py] What is your name?");
    // A made-up state is refused with a message saying what to do.
    let forged = call(
        "x_py_ask",
        json!({"requestState": "flotilla-input:00000000000000000000000000000000", "inputResponses": {}}),
    );
    let refused: Value = post(forged, "x_py_ask")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without inputResponses")
    );
    // The real state with the answer finishes the call, once.
    let answers = json!({ key.clone(): {"action": "accept", "content": {"name": "Grace"}} });
    let retry = call(
        "x_py_ask",
        json!({"requestState": state, "inputResponses": answers}),
    );
    let done = post(retry.clone(), "x_py_ask").await.unwrap();
    let done: Value = messages(&done.text().await.unwrap()).pop().unwrap();
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(done["result"]["content"][0]["text"], "hello Grace");
    let again: Value = post(retry, "x_py_ask").await.unwrap().json().await.unwrap();
    assert_eq!(again["error"]["code"], -32602, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_and_fields_reach_the_client_as_the_upstream_wrote_them() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).connected().start();
    let http = reqwest::Client::new();
    // Python integers have no size limit; a JSON number this large is not
    // an i64, u64 or f64, so a re-encoding gateway would change it.
    let call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": name, "arguments": {"a": 1, "b": 1}}})
        .to_string()
        .replace(r#""a":1"#, r#""a":123456789012345678901234567890"#)
    };
    let mut answers = Vec::new();
    for (url, name) in [
        (py_url.as_str(), "add"),
        (gateway.url().as_str(), "x_py_add"),
    ] {
        let session = open_session(&http, url, "2025-11-25").await;
        let headers = [
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        let (status, _, body) = send(
            &http,
            reqwest::Method::POST,
            url,
            &headers,
            Some(&call(name)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let answer = body
            .lines()
            .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
            .find(|l| l.contains("\"result\""))
            .unwrap_or_else(|| panic!("no result in {body}"))
            .to_string();
        answers.push(answer);
    }
    let [direct, through] = &answers[..] else {
        unreachable!()
    };
    assert!(
        direct.contains("123456789012345678901234567891"),
        "{direct}"
    );
    assert!(
        through.contains(r#""structuredContent":{"result":123456789012345678901234567891}"#),
        "{through}"
    );
    let direct: Value =
        serde_json::from_str(&direct.replace("123456789012345678901234567891", "0")).unwrap();
    let through: Value =
        serde_json::from_str(&through.replace("123456789012345678901234567891", "0")).unwrap();
    assert_eq!(through, direct, "the same answer, the same id");
    assert!(gateway.proc.log_text().contains("relaying tools/call"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_client_gets_a_2026_only_servers_answer_as_the_server_wrote_it() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server_with(0, fleet.logs(), &["--modern-only"]);
    let gateway = fleet.http("py", &py_url).connected().start();
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2026-07-28");
    let http = reqwest::Client::new();
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    });
    let mut answers = Vec::new();
    for (url, name) in [
        (py_url.as_str(), "add"),
        (gateway.url().as_str(), "x_py_add"),
    ] {
        // Too large for an i64, u64 or f64: a re-encoding gateway changes it.
        let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": name, "arguments": {"a": 1, "b": 1}, "_meta": meta}})
        .to_string()
        .replace(r#""a":1"#, r#""a":123456789012345678901234567890"#);
        let headers = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ];
        let (status, _, text) =
            send(&http, reqwest::Method::POST, url, &headers, Some(&body)).await;
        assert_eq!(status, 200, "{text}");
        let answer = text
            .lines()
            .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
            .find(|l| l.contains("\"result\""))
            .unwrap_or_else(|| panic!("no result in {text}"))
            .to_string();
        answers.push(answer);
    }
    let [direct, through] = &answers[..] else {
        unreachable!()
    };
    let sum = "123456789012345678901234567891";
    assert!(direct.contains(sum), "{direct}");
    assert!(through.contains(sum), "{through}");
    let parse = |text: &str| -> Value { serde_json::from_str(&text.replace(sum, "0")).unwrap() };
    assert_eq!(
        payload(parse(through)["result"].clone()),
        payload(parse(direct)["result"].clone())
    );
    assert_eq!(parse(through)["result"]["resultType"], "complete");
    assert_eq!(parse(through)["id"], 5);
    assert!(gateway.proc.log_text().contains("relaying tools/call"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_relayed_call_ends_at_once_without_an_answer() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).connected().start();
    let http = reqwest::Client::new();
    let url = gateway.url();
    let session = open_session(&http, &url, "2025-11-25").await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let slow = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "x_py_slow", "arguments": {"seconds": 5}}})
    .to_string();
    let started = Instant::now();
    let call = {
        let (http, url, headers) = (http.clone(), url.clone(), headers);
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            send(&http, reqwest::Method::POST, &url, &headers, Some(&slow)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 11, "reason": "changed my mind"}})
    .to_string();
    let (status, _, _) = send(&http, reqwest::Method::POST, &url, &headers, Some(&cancel)).await;
    assert_eq!(status, 202);
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("the cancelled call ends well before the tool would")
        .expect("call task");
    assert_eq!(status, 200);
    assert!(
        !body.contains("slept"),
        "no answer after cancellation: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The session and the upstream still serve the next call.
    let add = json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
        "params": {"name": "x_py_add", "arguments": {"a": 2, "b": 3}}})
    .to_string();
    let (_, _, body) = send(&http, reqwest::Method::POST, &url, &headers, Some(&add)).await;
    assert!(body.contains(r#""result":5"#), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_instance_of_a_folded_tool_is_relayed_without_the_instance_argument() {
    let (fleet, _servers) = Fleet::new().python_family_of_two();
    let gateway = fleet.connected().start();
    let http = reqwest::Client::new();
    let url = gateway.url();
    let session = open_session(&http, &url, "2025-11-25").await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    // Exact digits: relayed, not re-encoded (the instance argument is taken
    // out on the way: see the relay's message tests).
    let add = r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"x_py_add","arguments":{"instance":"b","a":123456789012345678901234567890,"b":1}}}"#;
    let (status, _, body) = send(&http, reqwest::Method::POST, &url, &headers, Some(add)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""structuredContent":{"result":123456789012345678901234567891}"#),
        "{body}"
    );
    // Log messages name the instance.
    let chatty = py_client(
        &url,
        &[
            "--legacy",
            "--log-level",
            "warning",
            "call",
            "x_py_chatty",
            r#"{"instance": "a"}"#,
        ],
    );
    assert_eq!(chatty["logs"][0]["logger"], "a/chatty", "{chatty}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_asks_the_calling_client_for_its_roots_as_it_would_directly() {
    let fleet = Fleet::new();
    let (_everything, url) = everything_http(fleet.logs());
    let gateway = fleet.http("everything", &url).connected().start();
    let mut answers = Vec::new();
    for (target, tool) in [
        (url.as_str(), "get-roots-list"),
        (gateway.url().as_str(), "x_everything_get-roots-list"),
    ] {
        let handler = TestClient::default();
        let client = connect_with(target, handler.clone()).await;
        // server-everything offers this tool only to clients that have roots.
        let result = call(&client, tool, json!({})).await;
        assert_ne!(result.is_error, Some(true), "{result:?}");
        // (Through the gateway, the roots request server-everything makes of
        // its session at start may reach this client too, if its call is the
        // only one in flight then.)
        assert!(
            handler.asked.lock().unwrap().iter().all(|a| a == "roots")
                && !handler.asked.lock().unwrap().is_empty(),
            "the client was asked for its roots, and nothing else"
        );
        answers.push(text_of(&result));
    }
    assert!(
        answers[1].contains("file:///srv/flotilla-test"),
        "{}",
        answers[1]
    );
    assert_eq!(
        answers[0], answers[1],
        "the same answer through the gateway"
    );
}

/// Runs tests/peers/ts_client.mjs (TypeScript SDK v2 client) with `args`.
fn ts_client(url: &str, args: &[&str]) -> Value {
    let peers = peers();
    let out = std::process::Command::new(peers.get("NODE22"))
        .arg(peers.get("TS_CLIENT"))
        .arg(url)
        .args(args)
        .output()
        .expect("running ts_client.mjs");
    assert!(
        out.status.success(),
        "ts_client {args:?} against {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ts_client prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_client_gets_through_the_gateway_what_it_gets_directly() {
    let fleet = Fleet::new();
    let (_everything, ev_url) = everything_http(fleet.logs());
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("everything", &ev_url)
        .connected()
        .http("py", &py_url)
        .connected()
        .start();
    let via = gateway.url();
    let cases: [(&str, &str, &str, &str); 4] = [
        (&ev_url, "echo", "x_everything_echo", r#"{"message": "hi"}"#),
        (
            &ev_url,
            "trigger-long-running-operation",
            "x_everything_trigger-long-running-operation",
            r#"{"duration": 0.2, "steps": 4}"#,
        ),
        (
            &ev_url,
            "get-roots-list",
            "x_everything_get-roots-list",
            "{}",
        ),
        (&py_url, "ask", "x_py_ask", "{}"),
    ];
    let mut roots_asked = false;
    for (direct_url, tool, exposed, args) in cases {
        let direct = ts_client(direct_url, &["call", tool, args]);
        let through = ts_client(&via, &["call", exposed, args]);
        assert_eq!(through["protocolVersion"], direct["protocolVersion"]);
        assert_eq!(through["result"], direct["result"], "{tool}");
        assert_eq!(
            through["progress"], direct["progress"],
            "{tool}: every step"
        );
        // Questions name the server that asks; otherwise the same. Roots are
        // compared apart: server-everything asks each session for them 350 ms
        // after it starts, and through the gateway that standalone request
        // reaches whichever client has the only call in flight then.
        let asked = |v: &Value| {
            v["asked"]
                .as_array()
                .expect("asked")
                .iter()
                .map(|a| a.as_str().unwrap_or("").replace("[py] ", ""))
                .filter(|a| a != "roots")
                .collect::<Vec<_>>()
        };
        assert_eq!(asked(&through), asked(&direct), "{tool}");
        roots_asked |= through["asked"].to_string().contains("roots");
    }
    // The client was asked for its roots during one of its calls (which
    // one depends on timing), and get-roots-list returned them (above).
    assert!(roots_asked, "the client was never asked for its roots");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_clients_of_every_revision_use_a_typescript_stdio_server() {
    let fleet = Fleet::new();
    let p = peers();
    let memory = fleet.logs().join("memory.jsonl");
    let gateway = fleet
        .stdio("memory", &p.get("NODE22"), &[&p.get("MEMORY_JS")])
        .env("MEMORY_FILE_PATH", &memory.display().to_string())
        .connected()
        .start();
    let url = gateway.url();
    let entity = r#"{"entities": [{"name": "berlin", "entityType": "cluster", "observations": ["runs kubernetes"]}]}"#;
    // The default (2026-07-28) client needs resultType on every result.
    let created = py_client(&url, &["call", "x_memory_create_entities", entity]);
    assert_eq!(created["protocolVersion"], "2026-07-28");
    assert_eq!(created["resultType"], "complete", "{created}");
    assert_ne!(created["isError"], true, "{created}");
    for mode in [None, Some("--legacy")] {
        let mut args: Vec<&str> = mode.into_iter().collect();
        args.extend(["call", "x_memory_read_graph", "{}"]);
        let graph = py_client(&url, &args);
        assert_eq!(
            graph["structuredContent"]["entities"][0]["name"], "berlin",
            "{mode:?}: {graph}"
        );
    }
}

fn ts_tasks(url: &str, tool: &str, args: &str) -> Value {
    let peers = peers();
    let out = std::process::Command::new(peers.get("NODE22"))
        .arg(peers.get("TS_TASKS"))
        .args([url, tool, args])
        .output()
        .expect("running ts_tasks.mjs");
    assert!(
        out.status.success(),
        "ts_tasks {tool} against {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ts_tasks prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_through_the_gateway_as_directly_and_stays_with_its_caller() {
    let fleet = Fleet::new();
    let (_everything, ev_url) = everything_http(fleet.logs());
    let gateway = fleet.http("everything", &ev_url).connected().start();
    let args = r#"{"topic": "rust", "ambiguous": true}"#;
    let direct = tokio::task::spawn_blocking({
        let ev_url = ev_url.clone();
        move || ts_tasks(&ev_url, "simulate-research-query", args)
    });
    let through = ts_tasks(&gateway.url(), "x_everything_simulate-research-query", args);
    let direct = direct.await.unwrap();
    // The tool is listed with its execution; the gateway offers tasks.
    assert_eq!(direct["execution"], json!({"taskSupport": "required"}));
    assert_eq!(through["execution"], direct["execution"], "{through}");
    assert_eq!(
        through["tasks"]["requests"]["tools"]["call"],
        json!({}),
        "{through}"
    );
    // Created, polled through input_required (the question reached the
    // client on tasks/result), and the report came back the same.
    assert_eq!(through["kinds"][0], "taskCreated", "{through}");
    assert_eq!(
        through["kinds"].as_array().unwrap().last(),
        Some(&json!("result"))
    );
    assert!(
        through["statuses"].to_string().contains("input_required"),
        "{through}"
    );
    // The question names the server that asks (a documented rewrite).
    assert_eq!(
        through["asked"].to_string().replace("[everything] ", ""),
        direct["asked"].to_string()
    );
    assert_eq!(
        through["result"]["content"], direct["result"]["content"],
        "{through}"
    );
    assert!(
        through["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"].is_string(),
        "{through}"
    );
    // Another session cannot read the task, directly or through the gateway.
    assert!(
        direct["otherSession"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not found"),
        "{direct}"
    );
    let refused = through["otherSession"]["error"].as_str().unwrap_or("");
    assert!(
        refused.contains("-32602") && refused.contains("not found"),
        "{through}"
    );
    // tasks/list: the caller's own task is listed; another session's list
    // (one upstream session serves both) does not show it.
    assert_eq!(through["tasks"]["list"], json!({}), "{through}");
    assert_eq!(through["listed"], true, "{through}");
    assert_eq!(through["otherListed"], false, "{through}");
}

/// A client that declares nothing it could be asked (rmcp's unit handler
/// answers any request with an error of its own).
async fn connect_bare(url: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt as _;
    ().serve(rmcp::transport::StreamableHttpClientTransport::from_uri(
        url.to_string(),
    ))
    .await
    .expect("a bare client connects")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_is_never_asked_what_it_did_not_declare() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let p = peers();
    let gateway = fleet
        .http("py", &py_url)
        .connected()
        .stdio(
            "everything",
            &p.get("NODE22"),
            &[&p.get("EVERYTHING_JS"), "stdio"],
        )
        .connected_within(crate::common::fleet::CONNECTED_WITHIN)
        .start();
    let bare = connect_bare(&gateway.url()).await;
    let call = |tool: &str| {
        let params = rmcp::model::CallToolRequestParams::new(tool.to_string()).with_arguments(
            json!({"prompt": "say hi", "maxTokens": 10})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let peer = bare.peer().clone();
        async move { peer.call_tool(params).await }
    };
    // The relay (an HTTP upstream): the gateway answers the upstream's
    // elicitation itself; the Python SDK server reports the refusal.
    // (The Python SDK server passes the refusal on as the call's error.)
    let relayed = call("x_py_ask").await;
    let text = match &relayed {
        Ok(result) => text_of(result),
        Err(error) => error.to_string(),
    };
    assert!(text.contains("did not declare elicitation"), "{relayed:?}");
    // A stdio upstream (the relay on its pipes): the same for sampling.
    let sampled = call("x_everything_trigger-sampling-request").await;
    let text = match &sampled {
        Ok(result) => text_of(result),
        Err(error) => error.to_string(),
    };
    assert!(text.contains("did not declare sampling"), "{sampled:?}");
    // A client that declares them is asked (the relay's own tests cover
    // the answers; here only that the gate opens).
    let asking = connect(&gateway.url()).await;
    let asked = crate::common::call(&asking, "x_py_ask", json!({})).await;
    assert_eq!(text_of(&asked), "hello Ada", "{asked:?}");
}

/// Reads an SSE body event by event, POSTing `answer(request)` for each
/// request the gateway puts to the client, until the response to `id`;
/// returns every event's data as the gateway wrote it.
async fn read_answering(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    response: reqwest::Response,
    answer: impl Fn(&Value) -> Value,
) -> Vec<String> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream goes on"),
        ));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            events.push(data.to_string());
            let message: Value = serde_json::from_str(data).expect("each event is JSON");
            if message.get("method").is_some() && message.get("id").is_some() {
                let reply =
                    json!({"jsonrpc": "2.0", "id": message["id"], "result": answer(&message)});
                let (status, _, text) = send(
                    http,
                    reqwest::Method::POST,
                    url,
                    headers,
                    Some(&reply.to_string()),
                )
                .await;
                assert_eq!(status, 202, "{text}");
            } else if message.get("method").is_none() {
                return events;
            }
        }
    }
    panic!("the stream ended before the answer: {events:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_or_legacy_sse_servers_messages_reach_the_client_as_it_wrote_them() {
    let p = peers();
    let fleet = Fleet::new();
    let (_sse, port) = everything("sse", 0, fleet.logs());
    let gateway = fleet
        .stdio(
            "stdio",
            &p.get("NODE22"),
            &[&p.get("EVERYTHING_JS"), "stdio"],
        )
        .connected_within(crate::common::fleet::CONNECTED_WITHIN)
        .sse("sse", &format!("http://127.0.0.1:{port}/sse"))
        .connected_within(crate::common::fleet::CONNECTED_WITHIN)
        .start();
    for server in ["stdio", "sse"] {
        messages_as_written(&gateway, server).await;
    }
    assert!(gateway.proc.log_text().contains("relaying tools/call"));
}

/// Progress and a sampling request of server-everything (as `server`)
/// reach a raw 2025-11-25 session client exactly as the server wrote them.
pub(crate) async fn messages_as_written(gateway: &Gateway, server: &str) {
    let url = gateway.url();
    let http = reqwest::Client::new();
    let sampling = json!({"sampling": {}});
    let (session, _) = open_session_declaring(&http, &url, "2025-11-25", &sampling).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = |id: u32, tool: &str, arguments: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": format!("x_{server}_{tool}"), "arguments": arguments,
            "_meta": {"progressToken": "mine"}}});
        let mut request = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };

    // Progress: the server writes whole numbers, and the client's own token.
    let response = call(
        2,
        "trigger-long-running-operation",
        json!({"duration": 0.2, "steps": 2}),
    )
    .await
    .expect("the call is sent");
    let events = read_answering(&http, &url, &headers, response, |_| json!({})).await;
    let progress: Vec<&String> = events.iter().filter(|e| e.contains("progress\"")).collect();
    assert_eq!(progress.len(), 2, "{server}: {events:?}");
    assert!(
        progress[0].contains(r#""progress":1,"#)
            && progress[0].contains(r#""progressToken":"mine""#),
        "{server}: the number and the token as the server and the client wrote them: {}",
        progress[0]
    );

    // Sampling: the server asks with temperature 0.7, which a relay that
    // decodes it into a 32-bit float would pass on as 0.699999988079071.
    let response = call(
        3,
        "trigger-sampling-request",
        json!({"prompt": "say hi", "maxTokens": 10}),
    )
    .await
    .expect("the call is sent");
    let events = read_answering(&http, &url, &headers, response, |request| {
        assert_eq!(request["method"], "sampling/createMessage", "{request}");
        json!({"role": "assistant", "content": {"type": "text", "text": "hi from the client"},
               "model": "test-model", "stopReason": "endTurn"})
    })
    .await;
    let asked = events
        .iter()
        .find(|e| e.contains("sampling/createMessage"))
        .expect("the client was asked");
    assert!(asked.contains(r#""temperature":0.7"#), "{server}: {asked}");
    let answer = events.last().expect("an answer");
    assert!(answer.contains("hi from the client"), "{server}: {answer}");
}
