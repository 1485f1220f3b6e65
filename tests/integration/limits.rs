//! What a client can hold open at the gateway, and for how long: slow and idle
//! connections are cut off, one address cannot take every connection, and
//! client sessions are capped with an answer that says so. Each test runs its
//! own gateway with small limits in its config file.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// One sample's value from `/metrics` (`name` with its labels as printed).
/// A metric's value from the gateway's `/metrics` (panics when it is missing).
pub(crate) fn metric(gateway: &Gateway, name: &str) -> f64 {
    let response =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", gateway.port)).unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn connect(gateway: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A connection the gateway accepted and holds open. A slot of a connection
/// that just closed (the start-up readiness probe's) is freed when the
/// gateway's task for it ends, a moment later: a connection refused in that
/// moment (503, closed at once) is retried.
fn held_connection(gateway: &Gateway) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = connect(gateway);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut first = [0u8; 1];
        match stream.read(&mut first) {
            // Nothing to read: the gateway waits for our request.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                return stream;
            }
            _ => {
                assert!(Instant::now() < deadline, "no connection slot came free");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads until the peer closes; the text read and how long it took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the gateway kept the connection open: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&text).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn idle_connections_dripped_headers_and_slow_bodies_are_cut_off() {
    let gateway = Fleet::new()
        .config("limits: {headerReadTimeoutSeconds: 1, bodyReadTimeoutSeconds: 1}\n")
        .start();

    // A socket that never sends anything.
    let mut idle = connect(&gateway);
    let (_, waited) = read_until_closed(&mut idle);
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");

    // Headers dripped one line at a time, never finished.
    let mut drip = connect(&gateway);
    drip.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        if drip.write_all(b"X-Drip: 1\r\n").is_err() {
            closed = true;
            break;
        }
        drip.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = drip.read(&mut byte);
        drip.set_nonblocking(false).unwrap();
        if matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() != ErrorKind::WouldBlock) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a client dripping headers kept its connection");

    // A body that stops halfway gets 408 and a JSON-RPC error saying why.
    let mut slow = connect(&gateway);
    slow.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
    )
    .unwrap();
    let (answer, waited) = read_until_closed(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        metric(&gateway, "flotilla_request_body_timeouts_total"),
        1.0
    );

    // A client that behaves is served on a fresh connection.
    assert_eq!(http_get(gateway.port, "/healthz").0, 200);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let gateway = Fleet::new()
        .config("limits: {maxConnectionsPerIp: 3}\n")
        .start();
    let held: Vec<TcpStream> = (0..3).map(|_| held_connection(&gateway)).collect();
    let mut fourth = connect(&gateway);
    let (answer, _) = read_until_closed(&mut fourth);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(gateway.port, "/healthz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "slots are freed when connections close"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Counted (the fourth, and any probe above that came before a slot was free).
    let refused = metric(
        &gateway,
        r#"flotilla_connections_refused_total{reason="per_address"}"#,
    );
    assert!(refused >= 1.0, "{refused}");
}

fn initialize(client: &reqwest::blocking::Client, url: &str) -> reqwest::blocking::Response {
    client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "limits-test", "version": "1"}}
        }))
        .send()
        .unwrap()
}

#[test]
fn sessions_held_in_memory_are_capped_and_the_ones_let_go_carry_on() {
    let gateway = Fleet::new()
        .config("limits: {maxSessions: 2}\n")
        .sim("sim-a", "cluster-a")
        .start();
    let client = reqwest::blocking::Client::new();
    let url = gateway.url();
    let post = |session: &str, body: Value| {
        client
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
            .unwrap()
    };
    // Five sessions, each held here by a request only rmcp's handler serves.
    let sessions: Vec<String> = (0..5)
        .map(|_| {
            let response = initialize(&client, &url);
            assert_eq!(response.status(), 200);
            let id = response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_string();
            let listed = post(
                &id,
                json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}),
            );
            assert_eq!(listed.status(), 200);
            id
        })
        .collect();
    assert!(metric(&gateway, "flotilla_client_sessions") <= 2.0);
    assert!(metric(&gateway, "flotilla_client_sessions_released_total") >= 3.0);
    // Every session still works: the ones let go are rebuilt from their ids.
    for id in &sessions {
        let listed = post(
            id,
            json!({"jsonrpc": "2.0", "id": 3, "method": "resources/list"}),
        );
        assert_eq!(listed.status(), 200);
        assert!(listed.text().unwrap().contains("cluster-a"));
    }
    assert!(metric(&gateway, "flotilla_client_sessions") <= 2.0);
    // Ending a session ends it.
    let ended = client
        .delete(&url)
        .header("mcp-session-id", &sessions[0])
        .send()
        .unwrap();
    assert_eq!(ended.status(), 204);
    let after = post(
        &sessions[0],
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    );
    assert_eq!(after.status(), 404);
}

#[test]
fn the_cap_on_held_sessions_holds_under_concurrent_rebuilds_and_fails_no_request() {
    let gateway = Fleet::new()
        .config("limits: {maxSessions: 5}\n")
        .sim("sim-a", "cluster-a")
        .start();
    let url = gateway.url();
    let client = reqwest::blocking::Client::new();
    let sessions: Vec<String> = (0..60)
        .map(|_| {
            initialize(&client, &url).headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Twelve clients at once, each going over its share of the sessions
    // twice: every request needs an rmcp session, so the replica keeps
    // rebuilding and letting go.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .chunks(5)
            .map(|mine| {
                let (client, url) = (client.clone(), url.clone());
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for id in mine.iter().chain(mine.iter()) {
                        let answer = client
                            .post(&url)
                            .header("accept", "application/json, text/event-stream")
                            .header("mcp-session-id", id)
                            .header("mcp-protocol-version", "2025-06-18")
                            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}))
                            .send()
                            .unwrap();
                        let status = answer.status();
                        let body = answer.text().unwrap_or_default();
                        if status != 200 || !body.contains("cluster-a") {
                            failed.push(format!("{status}: {body}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    let held = metric(&gateway, "flotilla_client_sessions");
    assert!(held <= 5.0, "{held}");
    // Every session let go was held: what was rebuilt is what is held plus what went.
    let restored = metric(&gateway, "flotilla_client_sessions_restored_total");
    let released = metric(&gateway, "flotilla_client_sessions_released_total");
    assert_eq!(
        restored,
        released + held,
        "restored {restored}, released {released}, held {held}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_burst_of_calls_only_a_bounded_number_of_upstream_connections_stay_open() {
    // An rmcp server (hyper underneath) keeps idle connections open as long
    // as its client does, so what stays open is the gateway's choice.
    let (serving, url) = crate::task_extension::task_server().await;
    let _serving = crate::task_extension::Serving(serving);
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the server's port");
    let gateway = Fleet::new().http("t", &url).connected().start();
    // 60 calls at once (2026-07-28 requests, each on its own connection to
    // the gateway), each held by the server for a moment: the gateway opens
    // a connection to the server for each.
    let http = reqwest::Client::new();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "x_t_sum", "arguments": {"a": 1, "b": 2, "ms": 500}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "burst", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let calls: Vec<_> = (0..60)
        .map(|_| {
            let request = http
                .post(gateway.url())
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "x_t_sum")
                .body(body.clone());
            tokio::spawn(async move {
                let response = request.send().await.expect("a call");
                (
                    response.status().as_u16(),
                    response.text().await.unwrap_or_default(),
                )
            })
        })
        .collect();
    let pid = gateway.proc.pid();
    let sampling = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..40 {
            peak = peak.max(connections_to(pid, port));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        peak
    });
    for handle in calls {
        let (status, text) = handle.await.expect("a call");
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(r#""text":"3""#), "{text}");
    }
    let peak = sampling.await.expect("the sampler");
    assert!(
        peak > 40,
        "the burst never opened many connections ({peak})"
    );
    // Once answered, at most 32 stay open for the next calls (and the
    // session's own stream); the rest are closed, not kept for the pool's
    // idle timeout (90 s).
    let left = eventually(
        Duration::from_secs(3),
        "idle connections closed",
        || async {
            let open = connections_to(pid, port);
            (open <= 33).then_some(open)
        },
    )
    .await;
    assert!(left >= 1, "{left}");
}
