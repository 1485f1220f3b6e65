//! Families end to end: folding, forgiving instance selection, schema
//! divergence, membership changes at run time, fan-out (partial results,
//! timeouts, output budget, destructive guard), the fleet overview tool, and
//! upstream-initiated requests relayed to the calling client.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// A simulated cluster in family `kubernetes` (instance arg `management_cluster`).
fn member(cluster: &str, aliases: &[&str], labels: &[(&str, &str)], flags: &str) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: {v}\n"))
        .collect();
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {cluster}-mcp-kubernetes\n  labels:\n    fleet: test\n{labels}spec:\n  type: stdio\n  command: {}\n  args: [sim-cluster, {flags} --cluster, {cluster}]\n  timeout: 10\n  family:\n    name: kubernetes\n    instanceArg: management_cluster\n    aliases: [{}]\n",
        env!("CARGO_BIN_EXE_flotilla"),
        aliases.join(", ")
    )
    .replace("[sim-cluster,  --cluster", "[sim-cluster, --cluster")
}

/// Three members with test tools: cluster-a (prod, eu), cluster-b (prod,
/// us) and cluster-c (staging, eu), in a.yaml, b.yaml and c.yaml.
fn standard_fleet() -> Fleet {
    Fleet::new()
        .manifest(
            "a.yaml",
            &member(
                "cluster-a",
                &["prod-eu", "production"],
                &[("env", "prod"), ("region", "eu")],
                "--test-tools,",
            ),
        )
        .manifest(
            "b.yaml",
            &member(
                "cluster-b",
                &["prod-us"],
                &[("env", "prod"), ("region", "us")],
                "--test-tools,",
            ),
        )
        .manifest(
            "c.yaml",
            &member(
                "cluster-c",
                &["staging"],
                &[("env", "staging"), ("region", "eu")],
                "--test-tools,",
            ),
        )
}

fn tool<'a>(tools: &'a [rmcp::model::Tool], name: &str) -> &'a rmcp::model::Tool {
    tools.iter().find(|t| t.name == name).unwrap_or_else(|| {
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        panic!("no tool {name} in {names:?}")
    })
}

fn instance_enum(tool: &rmcp::model::Tool, arg: &str) -> Value {
    tool.input_schema["properties"][arg]["anyOf"][0]["enum"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_family_is_folded_into_one_tool_per_name_with_an_instance_enum() {
    let fleet = standard_fleet();
    // Two instances of a third-party server join the same family with other tools.
    let (_kx, px) = kubernetes_mcp_server(0, fleet.logs());
    let (_ky, py) = kubernetes_mcp_server(0, fleet.logs());
    let gateway = fleet
        .http("kx-mcp-kubernetes", &format!("http://127.0.0.1:{px}/mcp"))
        .family_with_arg("kubernetes", "management_cluster")
        .http("ky-mcp-kubernetes", &format!("http://127.0.0.1:{py}/mcp"))
        .family_with_arg("kubernetes", "management_cluster")
        .start();
    let client = connect(&gateway.url()).await;
    let tools = list_tools(&client).await;
    let list_pods = tool(&tools, "x_kubernetes_list_pods");
    assert_eq!(
        instance_enum(list_pods, "management_cluster"),
        json!(["cluster-a", "cluster-b", "cluster-c"])
    );
    assert_eq!(list_pods.input_schema["required"][0], "management_cluster");
    let description = list_pods.input_schema["properties"]["management_cluster"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("Example: \"cluster-a\""),
        "{description}"
    );
    // A tool only some members have lists only those members.
    assert_eq!(
        instance_enum(tool(&tools, "x_kubernetes_pods_list"), "management_cluster"),
        json!(["kx", "ky"])
    );
    assert!(
        !tools.iter().any(|t| t.name.starts_with("x_cluster-a")),
        "no per-server copies of folded tools"
    );
    // Size grows with distinct tools, not with members: 6 sim tools + the kube server's.
    let kube_tools = connect(&format!("http://127.0.0.1:{px}/mcp")).await;
    assert_eq!(tools.len(), 6 + list_tools(&kube_tools).await.len());

    let info = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": "cluster-b"}),
    )
    .await;
    assert_eq!(text_of(&info).lines().next(), Some("cluster: cluster-b"));
    let pods = call(
        &client,
        "x_kubernetes_list_pods",
        json!({"management_cluster": "cluster-a"}),
    )
    .await;
    assert_eq!(
        pods.structured_content.as_ref().unwrap()["cluster"],
        "cluster-a",
        "one instance: its own result"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_names_full_names_and_aliases_work_and_unknown_names_suggest_the_closest() {
    let gateway = standard_fleet().start();
    let client = connect(&gateway.url()).await;
    for value in [
        "cluster-b",
        "cluster-b-mcp-kubernetes",
        "PROD-US",
        "prod-us",
    ] {
        let result = call(
            &client,
            "x_kubernetes_cluster_info",
            json!({"management_cluster": value}),
        )
        .await;
        assert_eq!(
            text_of(&result).lines().next(),
            Some("cluster: cluster-b"),
            "{value}"
        );
    }
    let wrong = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": "clustr-b"}),
    )
    .await;
    assert_eq!(
        wrong.is_error,
        Some(true),
        "a tool error, not a protocol error"
    );
    let text = text_of(&wrong);
    assert!(text.contains("Did you mean \"cluster-b\"?"), "{text}");
    assert!(
        text.contains("\"cluster-a\" (aliases: prod-eu, production)"),
        "{text}"
    );
    let missing = call(&client, "x_kubernetes_cluster_info", json!({})).await;
    assert!(text_of(&missing).contains("missing required argument \"management_cluster\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_divergence_is_reported_and_the_odd_member_keeps_its_own_name() {
    let gateway = standard_fleet()
        .manifest("c.yaml", &member("cluster-c", &[], &[], "--old-schema,"))
        .start();
    let client = connect(&gateway.url()).await;
    let tools = list_tools(&client).await;
    assert_eq!(
        instance_enum(tool(&tools, "x_kubernetes_list_pods"), "management_cluster"),
        json!(["cluster-a", "cluster-b"])
    );
    let odd = tool(&tools, "x_cluster-c-mcp-kubernetes_list_pods");
    assert!(odd.input_schema["properties"].get("ns").is_some());
    assert_eq!(
        instance_enum(
            tool(&tools, "x_kubernetes_cluster_info"),
            "management_cluster"
        ),
        json!(["cluster-a", "cluster-b", "cluster-c"])
    );
    let status = gateway.server_status("cluster-c-mcp-kubernetes");
    let condition = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SchemaDivergence")
        .cloned();
    assert!(
        condition.is_some_and(|c| c["message"].as_str().unwrap().contains("list_pods")),
        "{status}"
    );
    assert!(gateway.proc.log_text().contains("schema divergence"));
}

#[tokio::test(flavor = "multi_thread")]
async fn members_joining_and_leaving_update_the_enum_and_notify_clients() {
    let gateway = Fleet::new()
        .manifest("a.yaml", &member("cluster-a", &[], &[], ""))
        .manifest("b.yaml", &member("cluster-b", &[], &[], ""))
        .start();
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    let enum_now = || {
        let client = &client;
        async move {
            instance_enum(
                tool(&list_tools(client).await, "x_kubernetes_get_events"),
                "management_cluster",
            )
        }
    };
    assert_eq!(enum_now().await, json!(["cluster-a", "cluster-b"]));
    gateway.write_manifest("c.yaml", &member("cluster-c", &[], &[], ""));
    eventually(Duration::from_secs(10), "cluster-c in the enum", || async {
        (enum_now().await == json!(["cluster-a", "cluster-b", "cluster-c"])).then_some(())
    })
    .await;
    gateway.remove_manifest("a.yaml");
    eventually(
        Duration::from_secs(10),
        "cluster-a out of the enum",
        || async { (enum_now().await == json!(["cluster-b", "cluster-c"])).then_some(()) },
    )
    .await;
    assert!(
        handler
            .tool_list_changes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    let gone = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": "cluster-a"}),
    )
    .await;
    assert!(
        text_of(&gone).contains("unknown management_cluster"),
        "{}",
        text_of(&gone)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_merges_every_instance_in_order_and_selectors_pick_by_label() {
    let gateway = standard_fleet().start();
    let client = connect(&gateway.url()).await;
    let all = call(
        &client,
        "x_kubernetes_list_pods",
        json!({"management_cluster": "*"}),
    )
    .await;
    assert_eq!(all.is_error, Some(false));
    let text = text_of(&all);
    let (a, b, c) = (
        text.find("## cluster-a").unwrap(),
        text.find("## cluster-b").unwrap(),
        text.find("## cluster-c").unwrap(),
    );
    assert!(a < b && b < c, "{text}");
    let instances = &all.structured_content.as_ref().unwrap()["instances"];
    for name in ["cluster-a", "cluster-b", "cluster-c"] {
        assert_eq!(
            instances[name]["result"]["cluster"], name,
            "structured result per instance"
        );
    }
    let prod = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": "env=prod"}),
    )
    .await;
    assert_eq!(instances_of(&prod), ["cluster-a", "cluster-b"]);
    let listed = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": ["staging", "prod-eu"]}),
    )
    .await;
    assert_eq!(instances_of(&listed), ["cluster-a", "cluster-c"]);

    // The Python SDK client validates structuredContent against the advertised
    // outputSchema: both the single and the fan-out shapes must pass.
    let peers = peers();
    for value in [r#""cluster-a""#, r#""*""#] {
        let out = std::process::Command::new(peers.get("PY"))
            .arg(peers.get("PY_CLIENT"))
            .args(["--url", &gateway.url(), "call", "x_kubernetes_list_pods"])
            .arg(format!(r#"{{"management_cluster": {value}}}"#))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["isError"], false, "{result}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_with_one_instance_down_and_one_slow_returns_a_partial_result_in_time() {
    let fleet = Fleet::new();
    let (_pa, url_a) = python_server(0, fleet.logs());
    let (_pb, url_b) = python_server(0, fleet.logs());
    let (mut pc, url_c) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("a-mcp-py", &url_a)
        .timeout(10)
        .family("py")
        .connected()
        .http("b-mcp-py", &url_b)
        .timeout(1)
        .family("py")
        .connected()
        .http("c-mcp-py", &url_c)
        .timeout(10)
        .family("py")
        .connected()
        // The Python tools carry no readOnlyHint, so fan-out must be allowed explicitly.
        .config("fanOut: {allowDestructive: true}\n")
        .start();
    let client = connect(&gateway.url()).await;
    pc.kill();
    let started = Instant::now();
    let result = call(
        &client,
        "x_py_slow",
        json!({"instance": "*", "seconds": 2.5}),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        result.is_error,
        Some(false),
        "partial success is not an error: {}",
        text_of(&result)
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "bounded by the slowest healthy instance: {elapsed:?}"
    );
    let instances = &result.structured_content.as_ref().unwrap()["instances"];
    assert!(
        instances["a"]["result"].to_string().contains("slept 2.5"),
        "{instances}"
    );
    assert!(text_of(&result).contains("slept 2.5"));
    assert!(
        instances["b"]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s"),
        "{instances}"
    );
    assert!(instances["c"]["error"].as_str().is_some(), "{instances}");
    assert!(
        text_of(&result).contains("2 failed (b, c)"),
        "{}",
        text_of(&result)
    );

    let all_down = call(
        &client,
        "x_py_echo",
        json!({"instance": ["c"], "text": "x"}),
    )
    .await;
    assert_eq!(
        all_down.is_error,
        Some(true),
        "an error only when every instance failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_output_budget_truncates_each_instance_fairly_and_says_how_to_narrow() {
    let gateway = standard_fleet()
        .config("fanOut: {outputBudgetBytes: 600}\n")
        .start();
    let client = connect(&gateway.url()).await;
    let full = call(
        &client,
        "x_kubernetes_get_events",
        json!({"management_cluster": "cluster-a"}),
    )
    .await;
    assert!(
        text_of(&full).len() > 250,
        "the unbudgeted single-instance answer is larger than a fair share"
    );
    let merged = call(
        &client,
        "x_kubernetes_get_events",
        json!({"management_cluster": "*"}),
    )
    .await;
    let text = text_of(&merged);
    assert!(
        text.len() < 600 + 1200,
        "budget plus headers and notes: {}",
        text.len()
    );
    assert_eq!(text.matches("[truncated:").count(), 3, "{text}");
    assert!(text.contains("Select fewer instances"), "{text}");
    let instances = &merged.structured_content.unwrap()["instances"];
    assert_eq!(instances["cluster-b"]["truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_not_marked_read_only_are_never_fanned_out_by_default() {
    let (fleet, _servers) = Fleet::new().python_family_of_two();
    let gateway = fleet.start();
    let client = connect(&gateway.url()).await;
    let refused = call(
        &client,
        "x_py_add",
        json!({"instance": "*", "a": 1, "b": 2}),
    )
    .await;
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused).contains("not annotated readOnlyHint"),
        "{}",
        text_of(&refused)
    );
    let one = call(
        &client,
        "x_py_add",
        json!({"instance": "b", "a": 1, "b": 2}),
    )
    .await;
    assert_eq!(
        one.structured_content,
        Some(json!({"result": 3})),
        "one instance at a time is fine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_overview_tool_describes_servers_families_and_instances() {
    let gateway = standard_fleet().sim("solo", "solo").start();
    let client = connect(&gateway.url()).await;
    let overview = call(&client, "flotilla_list_fleet", json!({})).await;
    let data = overview.structured_content.unwrap();
    let servers = data["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 4);
    let a = servers
        .iter()
        .find(|s| s["name"] == "cluster-a-mcp-kubernetes")
        .unwrap();
    assert_eq!(a["instance"], "cluster-a");
    assert_eq!(a["aliases"], json!(["prod-eu", "production"]));
    assert_eq!(a["labels"]["env"], "prod");
    assert_eq!(a["state"], "Connected");
    assert_eq!(a["toolCount"], 6);
    assert_eq!(
        data["families"]["kubernetes"]["instanceArg"],
        "management_cluster"
    );
    assert_eq!(
        data["families"]["kubernetes"]["instances"],
        json!(["cluster-a", "cluster-b", "cluster-c"])
    );
    let only = call(
        &client,
        "flotilla_list_fleet",
        json!({"family": "kubernetes"}),
    )
    .await;
    assert_eq!(
        only.structured_content.unwrap()["servers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn elicitation_and_sampling_from_an_upstream_reach_the_calling_client() {
    let fleet = Fleet::new();
    let (_ea, pa) = everything("streamableHttp", 0, fleet.logs());
    let (_eb, pb) = everything("streamableHttp", 0, fleet.logs());
    let gateway = fleet
        .http("north-mcp-ev", &format!("http://127.0.0.1:{pa}/mcp"))
        .family_with_arg("ev", "site")
        .http("south-mcp-ev", &format!("http://127.0.0.1:{pb}/mcp"))
        .family_with_arg("ev", "site")
        .config("fanOut: {allowDestructive: true}\n")
        .start();
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;

    let elicited = call(
        &client,
        "x_ev_trigger-elicitation-request",
        json!({"site": "north"}),
    )
    .await;
    assert!(
        text_of(&elicited).contains("Ada"),
        "the client's answer reached the upstream: {}",
        text_of(&elicited)
    );
    let sampled = call(
        &client,
        "x_ev_trigger-sampling-request",
        json!({"site": "*", "prompt": "hi"}),
    )
    .await;
    assert_eq!(sampled.is_error, Some(false), "{}", text_of(&sampled));
    assert_eq!(
        text_of(&sampled).matches("hello from the client").count(),
        2,
        "{}",
        text_of(&sampled)
    );
    let asked = handler.asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|a| a.starts_with("elicit: [north]")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|a| a.contains("instance north"))
            && asked.iter().any(|a| a.contains("instance south")),
        "fan-out names the instance: {asked:?}"
    );
}
