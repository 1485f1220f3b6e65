//! Idle upstream sessions parked and woken (README "Idle memory"): after
//! `parkIdleSessionsAfterSeconds` without a use, rmcp's service with a
//! Streamable HTTP server ends but the server's session does not. Health
//! checks, relayed calls and notifications the gateway sends go on the
//! session's wire and leave it parked; a call the relay does not take (a
//! fan-out member) and a message the server sends on its standalone stream
//! wake it, on the same session (no reconnect).

use std::time::Duration;

use serde_json::json;

use crate::call_limits::metric;
use crate::common::*;

/// Parks a session after one idle second; health checks every second.
const PARK_FAST: &str = "parkIdleSessionsAfterSeconds: 1\npingIntervalSeconds: 1\n";

async fn parked(gateway: &Gateway, server: &str) -> bool {
    let sample = format!("flotilla_upstream_parked{{server=\"{server}\"}}");
    metric(gateway, &sample).await == 1.0
}

async fn connects(gateway: &Gateway, server: &str) -> f64 {
    let sample = format!("flotilla_upstream_connects_total{{server=\"{server}\"}}");
    metric(gateway, &sample).await
}

async fn wait_parked(gateway: &Gateway, server: &str) {
    eventually(
        Duration::from_secs(15),
        "the idle session parked",
        || async { parked(gateway, server).await.then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_session_stays_parked_through_health_checks_relayed_calls_and_roots_changes() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet.http("py", &py_url).config(PARK_FAST).start();
    gateway.wait_state("py", "Connected", Duration::from_secs(10));
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2025-11-25");
    wait_parked(&gateway, "py").await;

    // Three health checks go by on the session's wire.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(parked(&gateway, "py").await, "health checks woke it");
    assert_eq!(gateway.server_status("py")["status"]["state"], "Connected");
    assert_eq!(connects(&gateway, "py").await, 1.0, "no reconnect");

    let client = connect(&gateway.url()).await;
    let echoed = call(&client, "x_py_echo", json!({"text": "parked"})).await;
    assert_eq!(text_of(&echoed), "parked");
    assert!(
        parked(&gateway, "py").await,
        "a relayed call does not need rmcp's service"
    );

    // A client's roots changed: the server hears it, on the wire.
    client.notify_roots_list_changed().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the server heard roots change",
        || {
            let client = &client;
            async move {
                let heard = call(client, "x_py_roots_changes", json!({})).await;
                (text_of(&heard) == "1").then_some(())
            }
        },
    )
    .await;
    assert!(parked(&gateway, "py").await, "the notification woke it");
    assert_eq!(connects(&gateway, "py").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_session_wakes_for_a_fan_out_call_and_for_a_message_from_its_server() {
    let (fleet, _servers) = Fleet::new().python_family_of_two();
    let gateway = fleet
        // The Python tools carry no readOnlyHint, so fan-out must be allowed explicitly.
        .config(&format!("{PARK_FAST}fanOut: {{allowDestructive: true}}\n"))
        .start();
    gateway.wait_state("a-mcp-py", "Connected", Duration::from_secs(10));
    gateway.wait_state("b-mcp-py", "Connected", Duration::from_secs(10));
    wait_parked(&gateway, "a-mcp-py").await;
    wait_parked(&gateway, "b-mcp-py").await;

    // Fan-out members are called through rmcp's service: both wake for it.
    let client = connect(&gateway.url()).await;
    let both = call(&client, "x_py_echo", json!({"instance": "*", "text": "up"})).await;
    assert_eq!(both.is_error, Some(false), "{}", text_of(&both));
    let instances = &both.structured_content.as_ref().unwrap()["instances"];
    for instance in ["a", "b"] {
        assert!(
            instances[instance]["result"].to_string().contains("up"),
            "{instances}"
        );
    }
    // And park again once idle.
    wait_parked(&gateway, "a-mcp-py").await;

    // `grow` announces its new tool on the session's standalone stream,
    // which the parked session reads: the message wakes it, and rmcp's
    // service refreshes the list.
    let grown = call(
        &client,
        "x_py_grow",
        json!({"instance": "a", "name": "sprout"}),
    )
    .await;
    assert_eq!(text_of(&grown), "added sprout");
    wait_tool(&client, "x_py_sprout").await;
    let sprout = call(&client, "x_py_sprout", json!({"instance": "a"})).await;
    assert_eq!(text_of(&sprout), "grown sprout");
    wait_parked(&gateway, "a-mcp-py").await;
    for server in ["a-mcp-py", "b-mcp-py"] {
        assert_eq!(
            connects(&gateway, server).await,
            1.0,
            "{server} reconnected"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_only_server_parks_while_its_list_changes_are_heard_on_the_wire() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server_with(0, fleet.logs(), &["--modern-only"]);
    // Health checks (which list tools on this revision) stay at the default
    // 20 s: the change below must come as the server's own notification.
    let gateway = fleet
        .http("py", &py_url)
        .config("parkIdleSessionsAfterSeconds: 1\n")
        .start();
    gateway.wait_state("py", "Connected", Duration::from_secs(10));
    assert_eq!(gateway.server_status("py")["protocolVersion"], "2026-07-28");
    // Its subscriptions/listen stream is open on the wire, not in rmcp's service.
    wait_parked(&gateway, "py").await;

    let client = connect(&gateway.url()).await;
    let grown = call(&client, "x_py_grow", json!({"name": "sprout"})).await;
    assert_eq!(text_of(&grown), "added sprout");
    let names = tokio::time::timeout(Duration::from_secs(8), wait_tool(&client, "x_py_sprout"))
        .await
        .expect("the list change arrives before the next health check");
    assert!(names.contains(&"x_py_add".to_string()), "{names:?}");
    assert_eq!(
        text_of(&call(&client, "x_py_sprout", json!({})).await),
        "grown sprout"
    );
    wait_parked(&gateway, "py").await;
    assert_eq!(connects(&gateway, "py").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_session_its_server_forgot_is_opened_again_in_place() {
    use crate::task_extension::{Serving, task_server_that_restarts};
    let (serving, url, restart) = task_server_that_restarts().await;
    let _serving = Serving(serving);
    let gateway = Fleet::new()
        .http("tasks", &url)
        .config(PARK_FAST)
        .connected()
        .start();
    wait_parked(&gateway, "tasks").await;
    // The server now knows no session: the wire's health checks get 404s,
    // and are made again through rmcp, whose transport opens the session
    // again with the same handshake.
    restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        gateway.server_status("tasks")["status"]["state"],
        "Connected"
    );
    let client = connect(&gateway.url()).await;
    for b in 0..3 {
        let after = call(&client, "x_tasks_sum", json!({"a": 10, "b": b})).await;
        assert_eq!(text_of(&after), (10 + b).to_string(), "call {b}: {after:?}");
    }
    assert_eq!(connects(&gateway, "tasks").await, 1.0, "no reconnect");
    wait_parked(&gateway, "tasks").await;
}

#[tokio::test(flavor = "multi_thread")]
#[allow(deprecated)] // logging (SEP-2577) is still spoken by 2025 servers and clients
async fn a_clients_log_level_reaches_a_parked_session_on_the_wire() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server_with(0, fleet.logs(), &["--logging"]);
    let gateway = fleet.http("py", &py_url).config(PARK_FAST).start();
    gateway.wait_state("py", "Connected", Duration::from_secs(10));
    wait_parked(&gateway, "py").await;
    let client = connect(&gateway.url()).await;
    let before = call(&client, "x_py_log_level", json!({})).await;
    assert_eq!(text_of(&before), "unset");
    client
        .set_level(rmcp::model::SetLevelRequestParams::new(
            rmcp::model::LoggingLevel::Warning,
        ))
        .await
        .unwrap();
    let after = call(&client, "x_py_log_level", json!({})).await;
    assert_eq!(text_of(&after), "warning", "the server got the level");
    assert!(parked(&gateway, "py").await, "setting the level woke it");
    assert_eq!(connects(&gateway, "py").await, 1.0);
}
