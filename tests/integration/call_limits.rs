//! Limits on calls (issue 13, item 3): a server's concurrency cap with its
//! queue, its maximum output and its call timeout (`spec.limits`), on the
//! relay path (the Python SDK server over Streamable HTTP) and on rmcp's
//! path (the simulated cluster over stdio), and the per-caller rate limit
//! (`rateLimit`); the audit log and the metrics name each refusal.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::common::*;

/// The audit file's lines (config `audit: {file: audit.log}`), once `count`
/// lines are there.
async fn audit_lines(gateway: &Gateway, count: usize) -> Vec<Value> {
    let path = gateway.logs().join("audit.log");
    eventually(Duration::from_secs(5), "the audit lines", || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= count).then_some(lines)
    })
    .await
}

fn outcomes(lines: &[Value], outcome: &str) -> usize {
    lines.iter().filter(|l| l["outcome"] == outcome).count()
}

/// A sample of `/metrics` (name and labels as printed).
pub(crate) async fn metric(gateway: &Gateway, sample: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", gateway.port);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            let family = sample.split('{').next().unwrap_or(sample);
            let seen: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
            panic!("no {sample} in /metrics; {family} samples: {seen:#?}")
        })
}

/// An rmcp client whose connections come from `source` (a loopback address).
async fn connect_from(url: &str, source: &str) -> Client {
    let source: IpAddr = source.parse().unwrap();
    let http = reqwest::Client::builder()
        .local_address(source)
        .build()
        .unwrap();
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(url.to_string()),
    );
    TestClient::default()
        .serve(transport)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url} from {source}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn under_load_a_relayed_server_runs_at_most_its_cap_queues_some_and_refuses_the_rest() {
    let fleet = Fleet::new();
    let (_py, url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("py", &url)
        .spec("  limits: {maxConcurrency: 2, maxQueued: 8}\n")
        .connected()
        .config("audit: {file: audit.log}\n")
        .start();
    let client = connect(&gateway.url()).await;
    let started = Instant::now();
    // 20 at once, each 1 s upstream: 2 run, 8 wait, 10 are refused.
    let calls = (0..20).map(|_| {
        let client = &client;
        async move {
            let result = call(client, "x_py_slow", json!({"seconds": 1.0})).await;
            (result, started.elapsed())
        }
    });
    let watch = async {
        // While they run: the gauges show the slots taken and the queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (
            metric(&gateway, r#"flotilla_upstream_calls_running{server="py"}"#).await,
            metric(&gateway, r#"flotilla_upstream_calls_waiting{server="py"}"#).await,
        )
    };
    let (answers, (running, waiting)) = tokio::join!(futures::future::join_all(calls), watch);
    assert_eq!((running, waiting), (2.0, 8.0));
    assert_eq!(
        metric(
            &gateway,
            r#"flotilla_upstream_max_concurrency{server="py"}"#
        )
        .await,
        2.0
    );
    let (done, refused): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|(result, _)| result.is_error != Some(true));
    assert_eq!((done.len(), refused.len()), (10, 10), "{refused:?}");
    for (result, took) in &refused {
        let text = text_of(result);
        assert!(
            text.contains("server \"py\" is at its concurrency limit: 2 call(s) running (spec.limits.maxConcurrency: 2) and 8 waiting (spec.limits.maxQueued: 8)"),
            "{text}"
        );
        assert!(text.contains("Retry in a few seconds"), "{text}");
        assert!(
            *took < Duration::from_millis(600),
            "refused at once: {took:?}"
        );
    }
    // At most 2 at once upstream: the k-th answer cannot come before
    // ceil(k / 2) rounds of 1 s (with 3 at once the third would come at 1 s).
    let mut finished: Vec<Duration> = done.iter().map(|(_, took)| *took).collect();
    finished.sort();
    for (k, took) in finished.iter().enumerate() {
        let rounds = (k / 2 + 1) as f64;
        assert!(
            took.as_secs_f64() >= rounds - 0.05,
            "answer {} came after {took:?}, before {rounds} rounds: {finished:?}",
            k + 1
        );
    }
    // Each refusal is a call of its own in the audit log and the metrics.
    let lines = audit_lines(&gateway, 20).await;
    assert_eq!(outcomes(&lines, "overloaded"), 10);
    assert_eq!(outcomes(&lines, "ok"), 10);
    let overloaded = lines.iter().find(|l| l["outcome"] == "overloaded").unwrap();
    assert_eq!(overloaded["targets"][0]["server"], "py");
    assert_eq!(overloaded["targets"][0]["outcome"], "overloaded");
    assert_eq!(
        metric(
            &gateway,
            r#"flotilla_tool_calls_total{tool="x_py_slow",upstream_tool="slow",family="",server="py",family_instance="",outcome="overloaded"}"#
        )
        .await,
        10.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_server_never_runs_more_than_its_cap_and_a_queued_call_gives_up_in_time() {
    let gateway = Fleet::new()
        .sim("sim", "cap")
        .flag("--test-tools")
        .spec("  limits: {maxConcurrency: 2, maxQueued: 20, queueTimeout: 1}\n")
        .connected()
        .start();
    let client = connect(&gateway.url()).await;
    // Measured at the server: 8 calls of 0.3 s, never more than 2 at once.
    let calls = (0..8).map(|_| {
        call(
            &client,
            "x_sim_sleep",
            json!({"seconds": 0.3, "report_concurrency": true}),
        )
    });
    let answers = futures::future::join_all(calls).await;
    for answer in &answers {
        assert_ne!(answer.is_error, Some(true), "{}", text_of(answer));
    }
    let most = answers
        .iter()
        .filter_map(|a| text_of(a).split("at most ").nth(1).map(str::to_string))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u32>().ok())
        .max();
    assert_eq!(
        most,
        Some(2),
        "the server saw at most 2 at once, and 2 did run"
    );
    // Two slow calls hold both slots; a third waits 1 s (queueTimeout) and is refused.
    let slow = (0..2).map(|_| call(&client, "x_sim_sleep", json!({"seconds": 3})));
    let slow = futures::future::join_all(slow);
    let third = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let answer = call(&client, "x_sim_cluster_info", json!({})).await;
        (answer, started.elapsed())
    };
    let (held, (answer, waited)) = tokio::join!(slow, third);
    assert!(held.iter().all(|a| a.is_error != Some(true)));
    assert_eq!(answer.is_error, Some(true));
    let text = text_of(&answer);
    assert!(
        text.contains("waited 1s for a slot (spec.limits.queueTimeout)"),
        "{text}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_over_max_output_bytes_is_cut_with_a_note_on_both_paths() {
    let fleet = Fleet::new();
    let (_py, url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("py", &url)
        .spec("  limits: {maxOutputBytes: 1000}\n")
        .connected()
        .sim("sim", "big")
        .spec("  limits: {maxOutputBytes: 300}\n")
        .connected()
        .start();
    let client = connect(&gateway.url()).await;
    // The relay: the text is cut at 1000 bytes (at a character boundary) and noted.
    let long = "é".repeat(3000);
    let cut = call(&client, "x_py_echo", json!({"text": long})).await;
    assert_ne!(cut.is_error, Some(true));
    let first = cut.content[0].as_text().unwrap().text.clone();
    assert_eq!(first, "é".repeat(500), "1000 bytes of two-byte characters");
    let note = cut.content.last().unwrap().as_text().unwrap().text.clone();
    assert!(
        note.contains(
            "server \"py\" returns at most 1000 bytes per result (spec.limits.maxOutputBytes)"
        ),
        "{note}"
    );
    assert!(
        note.contains("5000 of 6000 bytes of content omitted"),
        "{note}"
    );
    // Within the limit: untouched.
    let short = call(&client, "x_py_echo", json!({"text": "hello"})).await;
    assert_eq!(short.content.len(), 1);
    assert_eq!(text_of(&short), "hello");
    // rmcp's path: text cut at 300 bytes ...
    let events = call(&client, "x_sim_get_events", json!({})).await;
    let text = text_of(&events);
    assert!(
        events.content[0].as_text().unwrap().text.len() <= 300,
        "{text}"
    );
    assert!(text.contains("returns at most 300 bytes"), "{text}");
    // ... and a structured result too big even with its strings cut is removed: an error.
    let pods = call(&client, "x_sim_list_pods", json!({})).await;
    assert_eq!(pods.is_error, Some(true));
    assert!(pods.structured_content.is_none());
    assert!(
        text_of(&pods).contains("structuredContent"),
        "{}",
        text_of(&pods)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn call_timeout_ends_a_slow_call_and_spec_timeout_still_bounds_connecting() {
    let fleet = Fleet::new();
    let (_py, url) = python_server(0, fleet.logs());
    // An address that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/mcp", silent.local_addr().unwrap());
    let gateway = fleet
        .http("py", &url)
        .timeout(1)
        .spec("  limits: {callTimeout: 3}\n")
        .connected()
        .sim("sim", "slow")
        .flag("--test-tools")
        .timeout(1)
        .spec("  limits: {callTimeout: 2}\n")
        .connected()
        .http("silent", &silent_url)
        .timeout(1)
        .spec("  limits: {callTimeout: 60}\n")
        .start();
    let client = connect(&gateway.url()).await;
    // Longer than spec.timeout (1 s, no progress): callTimeout governs the call.
    let within = call(&client, "x_py_slow", json!({"seconds": 1.5})).await;
    assert_eq!(text_of(&within), "slept 1.5");
    let within = call(&client, "x_sim_sleep", json!({"seconds": 1.5})).await;
    assert_eq!(text_of(&within), "slept 1.5");
    // Longer than callTimeout: ended with an error saying which limit, on both paths.
    for (tool, after) in [("x_py_slow", 3), ("x_sim_sleep", 2)] {
        let started = Instant::now();
        let ended = call(&client, tool, json!({"seconds": 10})).await;
        let took = started.elapsed();
        assert_eq!(ended.is_error, Some(true), "{tool}");
        let text = text_of(&ended);
        assert!(
            text.contains(&format!(
                "did not answer within {after}s (spec.limits.callTimeout)"
            )),
            "{tool}: {text}"
        );
        assert!(
            took >= Duration::from_secs(after) && took < Duration::from_secs(after + 3),
            "{tool}: {took:?}"
        );
    }
    // Connecting still times out after spec.timeout (1 s), not callTimeout (60 s).
    gateway.wait_state("silent", "Failed", Duration::from_secs(10));
    let status = gateway.server_status("silent");
    assert!(
        status["status"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 1s (spec.timeout)")),
        "{status}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_only_limits_applies_them_without_reconnecting_the_server() {
    let fleet = Fleet::new();
    let (_py, url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &url).connected().start();
    let client = connect(&gateway.url()).await;
    let long = "x".repeat(2000);
    let whole = call(&client, "x_py_echo", json!({"text": long})).await;
    assert_eq!(text_of(&whole).len(), 2000);
    let connected = gateway.server_status("py")["status"]["lastConnected"].clone();
    assert!(connected.is_string(), "{connected}");
    gateway.write_manifest(
        "py.yaml",
        &http_manifest(
            "py",
            &url,
            "  timeout: 10\n  limits: {maxOutputBytes: 500}\n",
        ),
    );
    eventually(Duration::from_secs(10), "the new limit", || async {
        let cut = call(&client, "x_py_echo", json!({"text": long})).await;
        (cut.content[0].as_text()?.text.len() == 500).then_some(())
    })
    .await;
    assert_eq!(
        gateway.server_status("py")["status"]["lastConnected"],
        connected,
        "no new session for a limits-only change"
    );
    assert!(
        !gateway
            .proc
            .log_text()
            .contains("server spec changed; reconnecting it"),
        "not reconnected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_gets_its_burst_then_a_retry_hint_and_callers_do_not_share_a_bucket() {
    let gateway = Fleet::new()
        .sim("sim", "rated")
        .connected()
        .config("rateLimit: {callsPerMinute: 6, burst: 3}\naudit: {file: audit.log}\n")
        .start();
    let alice = connect_from(&gateway.url(), "127.0.0.1").await;
    let bob = connect_from(&gateway.url(), "127.0.0.2").await;
    for n in 0..3 {
        let ok = call(&alice, "x_sim_cluster_info", json!({})).await;
        assert_ne!(ok.is_error, Some(true), "call {n}: {}", text_of(&ok));
    }
    // The fourth: refused as a tool error that says when to retry.
    let refused = call(&alice, "x_sim_cluster_info", json!({})).await;
    assert_eq!(refused.is_error, Some(true));
    let text = text_of(&refused);
    assert!(
        text.contains("rate limit: address 127.0.0.1 may make 6 calls per minute through this gateway (bursts of 3"),
        "{text}"
    );
    let retry: f64 = text
        .split("Retry in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint in {text}"));
    assert!(retry > 0.0 && retry <= 10.0, "a call every 10 s: {retry}");
    // Other counted methods get a JSON-RPC error carrying the wait.
    let read = alice
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "cluster://rated/summary",
        ))
        .await
        .expect_err("over the limit");
    let read = read.to_string();
    assert!(read.contains("rate limit"), "{read}");
    // Lists are not counted.
    assert!(!list_tools(&alice).await.is_empty());
    // Another caller has a bucket of its own.
    for n in 0..3 {
        let ok = call(&bob, "x_sim_cluster_info", json!({})).await;
        assert_ne!(ok.is_error, Some(true), "bob's call {n}: {}", text_of(&ok));
    }
    let lines = audit_lines(&gateway, 7).await;
    assert_eq!(outcomes(&lines, "rate_limited"), 1, "{lines:?}");
    let limited = lines
        .iter()
        .find(|l| l["outcome"] == "rate_limited")
        .unwrap();
    assert_eq!(limited["tool"], "x_sim_cluster_info");
    assert_eq!(limited["targets"], json!([]), "no upstream was called");
    assert_eq!(
        metric(
            &gateway,
            r#"flotilla_calls_rate_limited_total{method="tools/call"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gateway,
            r#"flotilla_calls_rate_limited_total{method="resources/read"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_fan_out_member_takes_a_slot_of_its_own_server() {
    let gateway = Fleet::new()
        .sim("fa-k8s", "fa")
        .flag("--test-tools")
        .family("k8s")
        .spec("  limits: {maxConcurrency: 1, maxQueued: 0}\n")
        .connected()
        .sim("fb-k8s", "fb")
        .flag("--test-tools")
        .family("k8s")
        .connected()
        .config("audit: {file: audit.log}\n")
        .start();
    let client = connect(&gateway.url()).await;
    // Two fan-outs at once: fa has one slot and no queue, fb no limit.
    let everywhere = || {
        call(
            &client,
            "x_k8s_sleep",
            json!({"instance": "*", "seconds": 1.5}),
        )
    };
    let (first, second) = tokio::join!(everywhere(), everywhere());
    let mut fa_errors = Vec::new();
    for result in [&first, &second] {
        assert_ne!(
            result.is_error,
            Some(true),
            "fb answered: {}",
            text_of(result)
        );
        let instances = &result.structured_content.as_ref().unwrap()["instances"];
        assert!(instances["fb"]["result"].is_string(), "{instances}");
        if let Some(error) = instances["fa"]["error"].as_str() {
            fa_errors.push(error.to_string());
        }
    }
    assert_eq!(fa_errors.len(), 1, "one of the two found fa's slot taken");
    assert!(
        fa_errors[0].contains("server \"fa-k8s\" is at its concurrency limit"),
        "{}",
        fa_errors[0]
    );
    let lines = audit_lines(&gateway, 2).await;
    let overloaded: Vec<Value> = lines
        .iter()
        .filter_map(|l| l["targets"].as_array())
        .flatten()
        .filter(|t| t["outcome"] == "overloaded")
        .cloned()
        .collect();
    assert_eq!(overloaded.len(), 1, "{lines:?}");
    assert_eq!(overloaded[0]["instance"], "fa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sso_each_logged_in_user_has_a_bucket_of_their_own_from_one_address() {
    use crate::common::idp::gateway_login;
    use crate::common::sso_world::{Options, World, connect_as, start_gateway};

    let world = World::start(Options::default());
    // The same world's gateway config, with a rate limit: a second gateway.
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    config.push_str("rateLimit: {callsPerMinute: 6, burst: 2}\n");
    let limited = world.logs.path().join("limited.yaml");
    std::fs::write(&limited, config).unwrap();
    let gateway = start_gateway(world.manifests.path(), world.logs.path(), &limited, None);
    let base = gateway.url().trim_end_matches("/mcp").to_string();
    // Both from 127.0.0.1: with auth on, the bucket is the user's.
    let alice = connect_as(&gateway.url(), &gateway_login(&base, "alice").access_token).await;
    let bob = connect_as(&gateway.url(), &gateway_login(&base, "bob").access_token).await;
    // (/status needs a login here: wait for the tool in alice's list.)
    eventually(Duration::from_secs(20), "x_plain_echo listed", || {
        let alice = &alice;
        async move {
            let tools = list_tools(alice).await;
            tools.iter().any(|t| t.name == "x_plain_echo").then_some(())
        }
    })
    .await;
    for n in 0..2 {
        let ok = call(&alice, "x_plain_echo", json!({"text": "hi"})).await;
        assert_ne!(ok.is_error, Some(true), "call {n}: {}", text_of(&ok));
    }
    let refused = call(&alice, "x_plain_echo", json!({"text": "hi"})).await;
    assert_eq!(refused.is_error, Some(true));
    let text = text_of(&refused);
    assert!(text.contains("rate limit: user \"alice\""), "{text}");
    let bobs = call(&bob, "x_plain_echo", json!({"text": "hi"})).await;
    assert_ne!(
        bobs.is_error,
        Some(true),
        "bob's bucket is his own: {}",
        text_of(&bobs)
    );
}
