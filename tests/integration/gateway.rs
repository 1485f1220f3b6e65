//! End-to-end behaviour of the gateway core against real third-party MCP
//! servers (server-everything, the Python SDK, kubernetes-mcp-server), the
//! project's simulated clusters, and real clients (rmcp, the Python SDK in
//! both modes, the MCP Inspector CLI).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_is_the_union_of_upstream_tools_under_exposed_names() {
    let fleet = Fleet::new();
    let (_everything, ev_port) = everything("streamableHttp", 0, fleet.logs());
    let (_py, py_url) = python_server(0, fleet.logs());
    let (_kube, k_port) = kubernetes_mcp_server(0, fleet.logs());
    let ev_url = format!("http://127.0.0.1:{ev_port}/mcp");
    let k_url = format!("http://127.0.0.1:{k_port}/mcp");
    let gateway = fleet
        .http("everything", &ev_url)
        .http("py", &py_url)
        .prefix("python")
        .http("kube", &k_url)
        .sim("sim-a", "cluster-a")
        .start();

    let mut expected = BTreeMap::new();
    for (url, prefix) in [
        (&ev_url, "x_everything_"),
        (&py_url, "x_python_"),
        (&k_url, "x_kube_"),
    ] {
        let direct = connect(url).await;
        for tool in list_tools(&direct).await {
            let mut exposed = serde_json::to_value(&tool).unwrap();
            exposed["name"] = json!(format!("{prefix}{}", tool.name));
            expected.insert(format!("{prefix}{}", tool.name), exposed);
        }
    }
    let client = connect(&gateway.url()).await;
    let tools = list_tools(&client).await;
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        names, sorted,
        "listing order is stable (sorted by exposed name)"
    );
    let through: BTreeMap<_, _> = tools
        .iter()
        .filter(|t| t.name.starts_with("x_") && !t.name.starts_with("x_sim-a_"))
        .map(|t| (t.name.to_string(), serde_json::to_value(t).unwrap()))
        .collect();
    assert_eq!(
        through.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "exposed names are the upstream names under their prefixes"
    );
    for (name, tool) in &expected {
        // Title, description, inputSchema, outputSchema and annotations are preserved.
        assert_eq!(
            &through[name], tool,
            "tool {name} differs from its upstream definition"
        );
    }
    assert_eq!(
        tools
            .iter()
            .filter(|t| t.name.starts_with("x_sim-a_"))
            .count(),
        4,
        "the simulated cluster's four tools are listed"
    );
    assert!(
        expected.len() > 30,
        "all three third-party servers contributed tools"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_returns_exactly_the_upstreams_result() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let (_everything, ev_port) = everything("streamableHttp", 0, fleet.logs());
    let ev_url = format!("http://127.0.0.1:{ev_port}/mcp");
    let gateway = fleet
        .http("py", &py_url)
        .http("ev", &ev_url)
        // Accept any Host so the test can send one the Python server would
        // refuse (421) if the gateway ever forwarded it.
        .config("allowedHosts: ['*']\n")
        .start();
    let direct = connect(&py_url).await;
    let client = connect(&gateway.url()).await;
    for (tool, args) in [
        ("add", json!({"a": 2, "b": 3})),
        ("fail", json!({"message": "boom"})),
    ] {
        let want = call(&direct, tool, args.clone()).await;
        let got = call(&client, &format!("x_py_{tool}"), args).await;
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&want).unwrap()
        );
    }
    let add = call(&client, "x_py_add", json!({"a": 20, "b": 22})).await;
    assert_eq!(add.structured_content, Some(json!({"result": 42})));
    let direct_ev = connect(&ev_url).await;
    let want = call(&direct_ev, "get-sum", json!({"a": 7, "b": 8})).await;
    let got = call(&client, "x_ev_get-sum", json!({"a": 7, "b": 8})).await;
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        serde_json::to_value(&want).unwrap()
    );

    // A foreign Host header reaches the gateway but never the upstream.
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", "Host: gateway.example.com", "-H", "content-type: application/json",
               "-H", "accept: application/json, text/event-stream",
               "-H", "mcp-protocol-version: 2026-07-28", "-H", "mcp-method: tools/call", "-H", "mcp-name: x_py_add",
               "-d", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x_py_add","arguments":{"a":1,"b":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"curl","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#])
        .arg(gateway.url())
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(r#""structuredContent":{"result":2}"#),
        "stateless call through the gateway: {body}"
    );

    // An unknown tool is a protocol error naming the tool.
    let params = rmcp::model::CallToolRequestParams::new("x_py_nope");
    let err = client.call_tool(params).await.expect_err("unknown tool");
    assert!(err.to_string().contains("x_py_nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_an_upstream_errors_only_its_tools_and_it_comes_back_after_restart() {
    let fleet = Fleet::new();
    let (mut ev, ev_port) = everything("streamableHttp", 0, fleet.logs());
    let ev_url = format!("http://127.0.0.1:{ev_port}/mcp");
    let gateway = fleet
        .http("ev", &ev_url)
        .timeout(5)
        .sim("sim-a", "cluster-a")
        .start();
    let client = connect(&gateway.url()).await;
    let ok = call(&client, "x_ev_echo", json!({"message": "before"})).await;
    assert_eq!(text_of(&ok), "Echo: before");

    ev.kill();
    let down = call(&client, "x_ev_echo", json!({"message": "during"})).await;
    assert_eq!(
        down.is_error,
        Some(true),
        "a dead upstream gives a tool error: {down:?}"
    );
    assert!(
        text_of(&down).contains("\"ev\""),
        "the error names the server: {}",
        text_of(&down)
    );
    let other = call(&client, "x_sim-a_cluster_info", json!({})).await;
    assert_ne!(other.is_error, Some(true), "other servers keep working");
    assert!(text_of(&other).contains("cluster: cluster-a"));
    let names: Vec<_> = list_tools(&client)
        .await
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names.contains(&"x_ev_echo".to_string()),
        "its tools stay listed while it is down"
    );

    // The restarted server has forgotten the old session; server-everything
    // answers 400 for it, and the gateway re-initializes transparently.
    let _ev = everything("streamableHttp", ev_port, gateway.logs()).0;
    let back = eventually(Duration::from_secs(30), "the upstream to come back", || {
        let client = &client;
        async move {
            let r = call(client, "x_ev_echo", json!({"message": "after"})).await;
            (r.is_error != Some(true)).then_some(r)
        }
    })
    .await;
    assert_eq!(text_of(&back), "Echo: after");
    gateway.wait_state("ev", "Connected", Duration::from_secs(10));
}

/// The gateway's child processes (its stdio upstreams).
fn children_of(pid: i32) -> Vec<i32> {
    // Each thread lists the children it forked (tokio forks on any worker).
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc");
    let mut children: Vec<i32> = tasks
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    children.sort();
    children
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_stdio_upstream_is_reported_at_once_and_respawned() {
    let gateway = Fleet::new()
        .sim("sim-a", "cluster-a")
        .flag("--test-tools")
        .connected()
        .start();
    let client = connect(&gateway.url()).await;
    let before = children_of(gateway.proc.pid());
    assert_eq!(before.len(), 1, "one sim-cluster child: {before:?}");
    // Killed mid-call: the call ends at once with an error naming the server.
    let started = std::time::Instant::now();
    let caller = connect(&gateway.url()).await;
    let pending =
        tokio::spawn(async move { call(&caller, "x_sim-a_sleep", json!({"seconds": 30})).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &before[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let cut = pending.await.expect("the call returns");
    assert_eq!(cut.is_error, Some(true), "{cut:?}");
    assert!(text_of(&cut).contains("sim-a"), "{}", text_of(&cut));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not the 30 s of the call"
    );
    // Seen at once: the server leaves Connected within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let state = gateway.server_status("sim-a")["status"]["state"].clone();
        if state != "Connected" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a killed child is still reported Connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... then respawned with backoff, and serving again.
    let back = eventually(Duration::from_secs(30), "the child to be respawned", || {
        let client = &client;
        async move {
            let r = call(client, "x_sim-a_cluster_info", json!({})).await;
            (r.is_error != Some(true)).then_some(r)
        }
    })
    .await;
    assert!(text_of(&back).contains("cluster: cluster-a"));
    let after = children_of(gateway.proc.pid());
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "a new child");
    assert!(
        !gateway.proc.log_text().contains("panicked"),
        "{}",
        gateway.proc.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_manifest_changes_tools_list_without_reconnecting_the_others() {
    let gateway = Fleet::new()
        .sim("sim-a", "cluster-a")
        .file("a.yaml")
        .sim("sim-b", "cluster-b")
        .file("b.yaml")
        .start();
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    assert_eq!(list_tools(&client).await.len(), 8);
    let a_connected = gateway.server_status("sim-a")["status"]["lastConnected"].clone();
    assert!(a_connected.is_string());

    // Change b's prefix: its tools are renamed, a is untouched.
    gateway.write_manifest(
        "b.yaml",
        &sim_manifest("sim-b", "cluster-b", "  toolPrefix: bee\n"),
    );
    let names = eventually(Duration::from_secs(10), "renamed tools", || {
        let client = &client;
        async move {
            let names: Vec<String> = list_tools(client)
                .await
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            names
                .iter()
                .any(|n| n.starts_with("x_bee_"))
                .then_some(names)
        }
    })
    .await;
    assert!(!names.iter().any(|n| n.starts_with("x_sim-b_")));
    assert_eq!(names.len(), 8);
    assert_eq!(
        gateway.server_status("sim-a")["status"]["lastConnected"],
        a_connected,
        "sim-a was not reconnected"
    );

    // Add a third server, then remove it.
    gateway.write_manifest("c.yaml", &sim_manifest("sim-c", "cluster-c", ""));
    eventually(Duration::from_secs(10), "sim-c's tools", || {
        let client = &client;
        async move { (list_tools(client).await.len() == 12).then_some(()) }
    })
    .await;
    gateway.remove_manifest("c.yaml");
    eventually(Duration::from_secs(10), "sim-c's tools to go", || {
        let client = &client;
        async move { (list_tools(client).await.len() == 8).then_some(()) }
    })
    .await;
    assert!(gateway.server_status("sim-c").is_null());
    assert!(
        handler
            .tool_list_changes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3,
        "the client was told about each change"
    );
    assert_eq!(
        gateway.server_status("sim-a")["status"]["lastConnected"],
        a_connected
    );

    // A broken edit is reported with file, document and field, and loses nothing.
    gateway.write_manifest(
        "b.yaml",
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: sim-b}\nspec: {type: stdio, comand: x}\n",
    );
    let status = eventually(Duration::from_secs(10), "the problem report", || async {
        let status = gateway.get_json("/status");
        (!status["invalidManifests"].as_array().unwrap().is_empty()).then_some(status)
    })
    .await;
    let problem = status["invalidManifests"][0].as_str().unwrap();
    assert!(problem.starts_with("b.yaml#0: spec.comand"), "{problem}");
    assert_eq!(
        list_tools(&client).await.len(),
        8,
        "sim-b keeps serving its last valid version"
    );
    let b = gateway.server_status("sim-b");
    assert!(
        b["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "InvalidSpec"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_collision_is_reported_and_never_overwrites() {
    let gateway = Fleet::new().sim("sim-a", "cluster-a").prefix("").start();
    let client = connect(&gateway.url()).await;
    assert_eq!(
        text_of(&call(&client, "cluster_info", json!({})).await)
            .lines()
            .next(),
        Some("cluster: cluster-a")
    );
    gateway.write_manifest(
        "b.yaml",
        &sim_manifest("sim-b", "cluster-b", "  toolPrefix: \"\"\n"),
    );
    let status = eventually(
        Duration::from_secs(10),
        "the collision condition",
        || async {
            let s = gateway.server_status("sim-b");
            let collides = s["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "NameCollision"));
            collides.then_some(s)
        },
    )
    .await;
    assert!(
        status.to_string().contains("sim-a"),
        "names who keeps it: {status}"
    );
    assert_eq!(list_tools(&client).await.len(), 4, "one copy of each name");
    assert_eq!(
        text_of(&call(&client, "cluster_info", json!({})).await)
            .lines()
            .next(),
        Some("cluster: cluster-a"),
        "the incumbent keeps the name"
    );
    assert!(gateway.proc.log_text().contains("name collision"));
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sse_upstreams_are_served() {
    let fleet = Fleet::new();
    let (_ev, port) = everything("sse", 0, fleet.logs());
    let url = format!("http://127.0.0.1:{port}/sse");
    let gateway = fleet.sse("legacy", &url).connected().start();
    let client = connect(&gateway.url()).await;
    let result = call(&client, "x_legacy_get-sum", json!({"a": 1, "b": 2})).await;
    assert_eq!(text_of(&result), "The sum of 1 and 2 is 3.");
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_reaches_the_calling_client() {
    let fleet = Fleet::new();
    let (_ev, port) = everything("streamableHttp", 0, fleet.logs());
    let gateway = fleet
        .http("ev", &format!("http://127.0.0.1:{port}/mcp"))
        .connected()
        .start();
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    // server-everything registers some tools once a client has initialized.
    wait_tool(&client, "x_ev_trigger-long-running-operation").await;
    // rmcp clients attach a progress token to every request.
    let result = call(
        &client,
        "x_ev_trigger-long-running-operation",
        json!({"duration": 1, "steps": 4}),
    )
    .await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    // Notifications are handled on their own tasks: allow the last one to land.
    let progress = eventually(
        Duration::from_secs(5),
        "four progress notifications",
        || async {
            let progress = handler.progress.lock().unwrap().clone();
            (progress.len() >= 4).then_some(progress)
        },
    )
    .await;
    assert_eq!(
        progress,
        [1.0, 2.0, 3.0, 4.0],
        "every progress step was relayed in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_in_default_and_legacy_modes_and_the_inspector_cli_use_the_fleet() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).sim("sim-a", "cluster-a").start();
    let peers = peers();
    for mode in [None, Some("--legacy")] {
        let mut cmd = std::process::Command::new(peers.get("PY"));
        cmd.arg(peers.get("PY_CLIENT"))
            .arg("--url")
            .arg(gateway.url());
        if let Some(flag) = mode {
            cmd.arg(flag);
        }
        let out = cmd.arg("list-tools").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<_> = listed["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            names.contains(&"x_py_add".to_string())
                && names.contains(&"x_sim-a_list_pods".to_string()),
            "{names:?}"
        );
        let expected_version = if mode.is_none() {
            "2026-07-28"
        } else {
            "2025-11-25"
        };
        assert_eq!(listed["protocolVersion"], expected_version, "mode {mode:?}");

        let mut cmd = std::process::Command::new(peers.get("PY"));
        cmd.arg(peers.get("PY_CLIENT"))
            .arg("--url")
            .arg(gateway.url());
        if let Some(flag) = mode {
            cmd.arg(flag);
        }
        let out = cmd
            .args(["call", "x_py_add", r#"{"a": 40, "b": 2}"#])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            result["structuredContent"],
            json!({"result": 42}),
            "{result}"
        );
    }

    let inspector = |args: &[&str]| {
        let out = std::process::Command::new(peers.get("NODE22"))
            .arg(peers.get("INSPECTOR_JS"))
            .arg("--cli")
            .arg(gateway.url())
            .args(["--transport", "http", "--format", "json"])
            .args(args)
            .env("HOME", gateway.logs())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inspector: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let listed = inspector(&["--method", "tools/list"]);
    assert!(listed.to_string().contains("x_sim-a_get_pod_logs"));
    let called = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "x_sim-a_cluster_info",
    ]);
    assert!(
        called.to_string().contains("cluster: cluster-a"),
        "{called}"
    );
}

#[test]
fn the_committed_crds_are_exactly_what_flotilla_crd_prints() {
    let crds = flotilla::crds().unwrap();
    assert_eq!(
        crds.iter().map(|(file, _)| *file).collect::<Vec<_>>(),
        ["mcpserver.yaml", "mcpserverset.yaml", "toolpolicy.yaml"]
    );
    for (file, printed) in crds {
        let committed = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
        assert_eq!(
            committed, printed,
            "crds/{file} is out of date; regenerate it from `flotilla crd`"
        );
        // What the API server would warn about on every apply, or show in
        // `kubectl explain mcps`.
        for unknown in ["format: uint", "Auto-generated derived type"] {
            assert!(!committed.contains(unknown), "{file} has {unknown:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_list_changes_reach_session_and_stateless_clients() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    // The default 20 s health check is far slower than this test's waits, so
    // the change must travel as the upstream's own notification (the gateway
    // holds a 2025-11-25 session with this server).
    let gateway = fleet.http("py", &py_url).start();
    gateway.wait_state("py", "Connected", Duration::from_secs(10));
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2025-11-25");
    let handler = TestClient::default();
    let session_client = connect_with(&gateway.url(), handler.clone()).await;

    // A stateless 2026-07-28 client listens for list changes.
    let (_stateless, mut subscription) = tools_listener(
        rmcp::transport::StreamableHttpClientTransport::from_uri(gateway.url()),
    )
    .await;

    let added = call(&session_client, "x_py_grow", json!({"name": "sprout"})).await;
    assert_eq!(text_of(&added), "added sprout");
    let names = eventually(Duration::from_secs(8), "the new tool", || {
        let client = &session_client;
        async move {
            let names: Vec<String> = list_tools(client)
                .await
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            names.contains(&"x_py_sprout".to_string()).then_some(names)
        }
    })
    .await;
    assert!(names.contains(&"x_py_add".to_string()));
    assert_eq!(
        text_of(&call(&session_client, "x_py_sprout", json!({})).await),
        "grown sprout"
    );
    eventually(
        Duration::from_secs(5),
        "a tools/list_changed notification",
        || async {
            (handler
                .tool_list_changes
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1)
                .then_some(())
        },
    )
    .await;
    let notification = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("the stateless client is notified")
        .expect("subscription open");
    assert!(
        matches!(
            notification,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{notification:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_templates_and_prompts_are_proxied_to_their_owner() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let (_ev, port) = everything("streamableHttp", 0, fleet.logs());
    let ev_url = format!("http://127.0.0.1:{port}/mcp");
    let gateway = fleet
        .http("py", &py_url)
        .http("ev", &ev_url)
        .sim("sim", "res-a")
        .start();
    let client = connect(&gateway.url()).await;
    let py = connect(&py_url).await;
    let ev = connect(&ev_url).await;

    let resources = client.peer().list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert!(
        uris.contains(&"py://info") && uris.contains(&"cluster://res-a/summary"),
        "{uris:?}"
    );
    let ev_resources = ev.peer().list_all_resources().await.unwrap();
    // server-everything adds session-scoped resources at run time; its static ones are stable.
    let static_ones: Vec<&str> = ev_resources
        .iter()
        .map(|r| r.uri.as_str())
        .filter(|u| u.contains("static"))
        .collect();
    assert!(!static_ones.is_empty(), "{ev_resources:?}");
    assert!(
        static_ones.iter().all(|u| uris.contains(u)),
        "every static upstream resource is listed: {static_ones:?}"
    );

    let read = |c: &Client, uri: &str| {
        let params = rmcp::model::ReadResourceRequestParams::new(uri);
        let peer = c.peer().clone();
        async move { serde_json::to_value(peer.read_resource(params).await.unwrap()).unwrap() }
    };
    assert_eq!(
        read(&client, "py://info").await,
        read(&py, "py://info").await
    );
    let summary = read(&client, "cluster://res-a/summary").await;
    assert!(summary.to_string().contains("cluster: res-a"));

    // A URI that is not listed is routed by its server's template.
    let templates = ev.peer().list_all_resource_templates().await.unwrap();
    let through = client.peer().list_all_resource_templates().await.unwrap();
    assert_eq!(through.len(), templates.len());
    if let Some(template) = templates.first() {
        let uri = template.uri_template.split('{').next().unwrap().to_string() + "1";
        // Dynamic resources embed the time they were made: compare what identifies them.
        let (got, want) = (read(&client, &uri).await, read(&ev, &uri).await);
        assert_eq!(
            got["contents"][0]["uri"], want["contents"][0]["uri"],
            "read {uri} via template"
        );
        assert_eq!(
            got["contents"][0]["mimeType"],
            want["contents"][0]["mimeType"]
        );
        assert!(
            got["contents"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("Resource 1"),
            "{got}"
        );
    }

    let prompts = client.peer().list_all_prompts().await.unwrap();
    assert!(
        prompts.iter().any(|p| p.name == "x_py_greet"),
        "{prompts:?}"
    );
    let mut args = serde_json::Map::new();
    args.insert("name".into(), json!("Ada"));
    let got = client
        .peer()
        .get_prompt(
            rmcp::model::GetPromptRequestParams::new("x_py_greet").with_arguments(args.clone()),
        )
        .await
        .unwrap();
    let want = py
        .peer()
        .get_prompt(rmcp::model::GetPromptRequestParams::new("greet").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(got).unwrap(),
        serde_json::to_value(want).unwrap()
    );

    let missing = client
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new("nope://x"))
        .await;
    assert!(missing.unwrap_err().to_string().contains("nope://x"));
}

/// POSTs one JSON-RPC message to the gateway with curl; returns (status line, body).
fn post(gateway: &Gateway, headers: &[&str], body: &str) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-i",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
    ]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd
        .args(["-d", body])
        .arg(gateway.url())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = body
        .strip_prefix("data: ")
        .unwrap_or(&body)
        .trim()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cached_tools_list_equals_what_the_mcp_handler_answers() {
    let gateway = Fleet::new()
        .sim("sim-a", "cache-a")
        .sim("sim-b", "cache-b")
        .family_with_arg("k", "cluster")
        .start();
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"curl","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}"#;
    let headers = ["mcp-protocol-version: 2026-07-28", "mcp-method: tools/list"];
    // Served from the cache:
    let (status, cached) = post(
        &gateway,
        &headers,
        &format!(r#"{{"jsonrpc":"2.0","id":"x1","method":"tools/list","params":{{{meta}}}}}"#),
    );
    assert!(status.contains("200"), "{status}");
    // A paging request goes through rmcp's handler:
    let (_, handled) = post(
        &gateway,
        &headers,
        &format!(
            r#"{{"jsonrpc":"2.0","id":"x1","method":"tools/list","params":{{"cursor":null,{meta}}}}}"#
        ),
    );
    let cached: serde_json::Value = serde_json::from_str(&cached).unwrap();
    let handled: serde_json::Value = serde_json::from_str(&handled).unwrap();
    assert_eq!(cached, handled);
    assert_eq!(
        cached["result"]["tools"].as_array().unwrap().len(),
        9,
        "overview + 4 + 4 folded"
    );
    // Requests the cache must not answer still get rmcp's errors.
    let (status, _) = post(
        &gateway,
        &[
            "mcp-session-id: no-such-session",
            "mcp-protocol-version: 2025-11-25",
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert!(status.contains("404"), "unknown session: {status}");
    let (status, body) = post(
        &gateway,
        &["mcp-protocol-version: 2026-07-28"],
        &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{meta}}}}}"#),
    );
    assert!(
        !status.contains("200") || body.contains("error"),
        "missing Mcp-Method header is rmcp's call: {status} {body}"
    );
}
