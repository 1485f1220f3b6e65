//! What operators see of the traffic: a real Prometheus (Debian's package)
//! scrapes the gateway while a client calls tools, and PromQL over its HTTP
//! API must count exactly those calls per tool, instance and outcome, and
//! see an upstream that was killed as down; `promtool check metrics`
//! accepts the exposition; the audit log has one line per call with the
//! documented fields and none of the test's secrets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::fleet::Fleet;
use crate::common::{
    Proc, call, connect, listening_port, peers, python_server, text_of, wait_tool,
};

/// `prometheus` scraping `target` (host:port) every second; returns it and
/// its API base URL.
fn prometheus(target: &str, dir: &Path) -> (Proc, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: flotilla\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(peers().get("PROMETHEUS"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0");
    let proc = Proc::spawn("prometheus", cmd, dir);
    let port = listening_port(&proc, Duration::from_secs(60));
    (proc, format!("http://127.0.0.1:{port}"))
}

/// Runs an instant PromQL query; the result vector as (labels, value).
async fn query(api: &str, promql: &str) -> Vec<(Value, f64)> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let Ok(response) = client
        .get(format!("{api}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let value = row["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN);
                    (row["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A PromQL query, the label its result is told apart by, and the samples
/// wanted (label value -> sample).
type Expectation = (&'static str, &'static str, &'static [(&'static str, f64)]);

/// Waits until `promql` yields `want` (label value of `by` -> sample).
async fn wait_query(api: &str, promql: &str, by: &str, want: &[(&str, f64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let rows = query(api, promql).await;
        let mut got: Vec<(String, f64)> = rows
            .iter()
            .map(|(labels, value)| (labels[by].as_str().unwrap_or("").to_string(), *value))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut wanted: Vec<(String, f64)> =
            want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        if got == wanted {
            return;
        }
        last = got;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{promql}: wanted {want:?}, Prometheus last said {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_counts_each_call_by_tool_instance_and_outcome_and_sees_an_upstream_die() {
    let fleet = Fleet::new();
    let (mut py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .sim("alpha-mcp-kubernetes", "alpha")
        .family_with_arg("kubernetes", "cluster")
        .sim("beta-mcp-kubernetes", "beta")
        .family_with_arg("kubernetes", "cluster")
        .http("py", &py_url)
        .connected()
        .config("audit:\n  file: audit.log\n")
        .start();
    let dir = gateway.logs().to_path_buf();
    let audit = dir.join("audit.log");

    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_kubernetes_cluster_info").await;
    wait_tool(&client, "x_py_add").await;
    for _ in 0..3 {
        let result = call(
            &client,
            "x_kubernetes_cluster_info",
            json!({"cluster": "alpha"}),
        )
        .await;
        assert_ne!(result.is_error, Some(true), "{}", text_of(&result));
    }
    let fanned = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"cluster": ["alpha", "beta"]}),
    )
    .await;
    assert!(
        text_of(&fanned).contains("2 succeeded"),
        "{}",
        text_of(&fanned)
    );
    for _ in 0..2 {
        call(&client, "x_py_add", json!({"a": 1, "b": 2})).await;
    }
    let failed = call(&client, "x_py_fail", json!({"message": "boom"})).await;
    assert_eq!(failed.is_error, Some(true));
    // With trace export off the gateway adds no trace context, and the
    // client's own (SEP-414 `_meta`) reaches the upstream untouched.
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen = call_in_trace(&client, "x_py_trace_context", json!({}), theirs).await;
    let seen: Value = serde_json::from_str(&text_of(&seen)).expect("JSON from the tool");
    assert_eq!(seen, json!({"header": null, "meta": theirs}));

    // promtool accepts the exposition as served to a plain client.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = plain
        .get(format!("http://127.0.0.1:{}/metrics", gateway.port))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let exposition = dir.join("metrics.txt");
    std::fs::write(&exposition, &body).unwrap();
    let checked = Command::new(peers().get("PROMTOOL"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&exposition).unwrap())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (_prometheus, api) = prometheus(&format!("127.0.0.1:{}", gateway.port), &dir);
    // What Prometheus scraped: PromQL, the label it groups by, the samples.
    let expected: [Expectation; 4] = [
        (
            r#"sum by (family_instance) (flotilla_tool_calls_total{tool="x_kubernetes_cluster_info",outcome="ok"})"#,
            "family_instance",
            &[("alpha", 4.0), ("beta", 1.0)],
        ),
        (
            r#"sum by (outcome) (flotilla_tool_calls_total{server="py"})"#,
            "outcome",
            &[("ok", 3.0), ("tool_error", 1.0)],
        ),
        (
            r#"flotilla_fanout_width_count{tool="x_kubernetes_cluster_info"}"#,
            "tool",
            &[("x_kubernetes_cluster_info", 1.0)],
        ),
        (
            r#"flotilla_upstream_up{job="flotilla"}"#,
            "server",
            &[
                ("alpha-mcp-kubernetes", 1.0),
                ("beta-mcp-kubernetes", 1.0),
                ("py", 1.0),
            ],
        ),
    ];
    for (promql, by, want) in expected {
        wait_query(&api, promql, by, want).await;
    }

    py.kill();
    wait_query(
        &api,
        r#"flotilla_upstream_up{server="py"} == 0"#,
        "server",
        &[("py", 0.0)],
    )
    .await;

    // The audit log: one line per call (3 + 1 + 2 + 1 + 1), each naming the tool,
    // its outcome and where it went; the fan-out names both instances.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
        .collect();
    assert_eq!(lines.len(), 8, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["kind"], "tool_call");
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert_eq!(
            line["argumentsSha256"].as_str().map(str::len),
            Some(64),
            "{line}"
        );
        assert!(
            line.get("arguments").is_none(),
            "arguments are off by default: {line}"
        );
        assert!(line["durationMs"].as_f64().is_some(), "{line}");
        assert_eq!(line["caller"], Value::Null, "no auth: no caller");
    }
    let fan_out: Vec<&Value> = lines.iter().filter(|l| l["fanOut"] == true).collect();
    assert_eq!(fan_out.len(), 1);
    let mut instances: Vec<&str> = fan_out[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["instance"].as_str().unwrap())
        .collect();
    instances.sort();
    assert_eq!(instances, ["alpha", "beta"]);
    let py_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["targets"][0]["server"] == "py")
        .collect();
    assert_eq!(py_lines.len(), 4);
    assert_eq!(
        py_lines
            .iter()
            .filter(|l| l["outcome"] == "tool_error")
            .count(),
        1
    );
    // Equal arguments hash equally: the two x_py_add calls.
    let adds: Vec<&Value> = py_lines
        .iter()
        .filter(|l| l["tool"] == "x_py_add")
        .copied()
        .collect();
    assert_eq!(adds[0]["argumentsSha256"], adds[1]["argumentsSha256"]);
}

/// The OTLP receiver (tests/peers/otlp_receiver.py, on the official
/// protobuf definitions); returns it and its base URL.
fn otlp_receiver(logs: &Path) -> (Proc, String) {
    let mut cmd = Command::new(peers().get("PY"));
    cmd.arg(peers().get("OTLP_RECEIVER"));
    let proc = Proc::spawn("otlp-receiver", cmd, logs);
    let line = proc.wait_line("READY", Duration::from_secs(30));
    let url = line.trim_start_matches("READY ").trim().to_string();
    (proc, url)
}

/// Spans the receiver printed, read until `done` holds for them (or 30 s).
fn spans_until(receiver: &Proc, seen: &mut Vec<Value>, done: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "the spans never matched; received:\n{seen:#?}"
        );
        if let Some(line) = receiver.next_line(Duration::from_millis(500))
            && let Ok(line) = serde_json::from_str::<Value>(&line)
            && let Some(span) = line.get("span")
        {
            seen.push(span.clone());
        }
    }
}

/// A client's tool call inside the client's own trace (SEP-414 `_meta`).
async fn call_in_trace(
    client: &rmcp::service::RunningService<rmcp::RoleClient, crate::common::TestClient>,
    tool: &str,
    args: Value,
    traceparent: &str,
) -> rmcp::model::CallToolResult {
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_traceparent(traceparent);
    let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    params.meta = Some(meta);
    client.call_tool(params).await.expect("tools/call")
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_continue_the_clients_and_reach_the_collector_and_the_upstream() {
    let fleet = Fleet::new();
    let (mut receiver, collector) = otlp_receiver(fleet.logs());
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .sim("alpha-mcp-kubernetes", "alpha")
        .family_with_arg("kubernetes", "cluster")
        .sim("beta-mcp-kubernetes", "beta")
        .family_with_arg("kubernetes", "cluster")
        .http("py", &py_url)
        .connected()
        .config(&format!(
            "tracing:\n  otlpEndpoint: {collector}\n  serviceName: flotilla-test\naudit:\n  file: audit.log\n"
        ))
        .start();
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_py_trace_context").await;
    wait_tool(&client, "x_kubernetes_cluster_info").await;

    // A call to an HTTP upstream, in a trace the client started.
    let trace_a = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let result = call_in_trace(
        &client,
        "x_py_trace_context",
        json!({}),
        &format!("00-{trace_a}-{client_span}-01"),
    )
    .await;
    let seen_upstream: Value = serde_json::from_str(&text_of(&result)).expect("JSON from the tool");
    let header = seen_upstream["header"]
        .as_str()
        .expect("a traceparent header upstream");
    let in_meta = seen_upstream["meta"]
        .as_str()
        .expect("a traceparent in _meta upstream");
    assert_eq!(header, in_meta);
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    assert_eq!(parts[1], trace_a, "the upstream is in the client's trace");
    assert_ne!(
        parts[2], client_span,
        "its parent is the gateway's span, not the client's"
    );

    // A fan-out in another trace: one child span per instance.
    let trace_b = "0af7651916cd43dd8448eb211c80319c";
    let fanned = call_in_trace(
        &client,
        "x_kubernetes_cluster_info",
        json!({"cluster": ["alpha", "beta"]}),
        &format!("00-{trace_b}-b7ad6b7169203331-01"),
    )
    .await;
    assert!(
        text_of(&fanned).contains("2 succeeded"),
        "{}",
        text_of(&fanned)
    );

    let mut spans = Vec::new();
    let of_trace = |spans: &[Value], trace: &str| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| s["trace_id"] == trace)
            .cloned()
            .collect()
    };
    spans_until(&receiver, &mut spans, |spans| {
        of_trace(spans, trace_a).len() >= 2 && of_trace(spans, trace_b).len() >= 3
    });

    // Trace A: the gateway's server span continues the client's; its client
    // span is the parent the upstream was told of.
    let a = of_trace(&spans, trace_a);
    let server = a
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span");
    assert_eq!(server["parent_span_id"], client_span);
    assert_eq!(server["service"], "flotilla-test");
    assert_eq!(server["attributes"]["mcp.method.name"], "tools/call");
    assert_eq!(
        server["attributes"]["gen_ai.tool.name"],
        "x_py_trace_context"
    );
    let upstream = a
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .expect("a client span");
    assert_eq!(upstream["parent_span_id"], server["span_id"]);
    assert_eq!(upstream["span_id"], parts[2]);
    assert_eq!(upstream["attributes"]["flotilla.server"], "py");
    assert_eq!(upstream["attributes"]["server.address"], "127.0.0.1");
    let py_port: u16 = py_url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the py server's port");
    assert_eq!(upstream["attributes"]["server.port"], py_port);
    assert_eq!(upstream["attributes"]["gen_ai.tool.name"], "trace_context");

    // Trace B: one client span per instance, both under the server span.
    let b = of_trace(&spans, trace_b);
    let server = b
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span");
    let mut instances: Vec<&str> = b
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .inspect(|s| assert_eq!(s["parent_span_id"], server["span_id"], "{s}"))
        .map(|s| s["attributes"]["flotilla.instance"].as_str().unwrap_or(""))
        .collect();
    instances.sort();
    assert_eq!(instances, ["alpha", "beta"]);

    // The audit log names each call's trace.
    let audit = std::fs::read_to_string(gateway.logs().join("audit.log")).unwrap();
    let traces: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["traceId"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(traces, [trace_a, trace_b]);
    receiver.stop();
}
