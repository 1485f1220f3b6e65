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
    wait_query(
        &api,
        r#"sum by (family_instance) (flotilla_tool_calls_total{tool="x_kubernetes_cluster_info",outcome="ok"})"#,
        "family_instance",
        &[("alpha", 4.0), ("beta", 1.0)],
    )
    .await;
    wait_query(
        &api,
        r#"sum by (outcome) (flotilla_tool_calls_total{server="py"})"#,
        "outcome",
        &[("ok", 2.0), ("tool_error", 1.0)],
    )
    .await;
    wait_query(
        &api,
        r#"flotilla_fanout_width_count{tool="x_kubernetes_cluster_info"}"#,
        "tool",
        &[("x_kubernetes_cluster_info", 1.0)],
    )
    .await;
    wait_query(
        &api,
        r#"flotilla_upstream_up{job="flotilla"}"#,
        "server",
        &[
            ("alpha-mcp-kubernetes", 1.0),
            ("beta-mcp-kubernetes", 1.0),
            ("py", 1.0),
        ],
    )
    .await;

    py.kill();
    wait_query(
        &api,
        r#"flotilla_upstream_up{server="py"} == 0"#,
        "server",
        &[("py", 0.0)],
    )
    .await;

    // The audit log: one line per call (3 + 1 + 2 + 1), each naming the tool,
    // its outcome and where it went; the fan-out names both instances.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
        .collect();
    assert_eq!(lines.len(), 7, "{lines:#?}");
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
    assert_eq!(py_lines.len(), 3);
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
