//! Bounded fuzzing of `/mcp`: JSON-RPC-shaped noise (known and unknown
//! methods, odd ids and params, batches, wrong versions, stray session ids,
//! plain garbage) sent to a running gateway with a real upstream behind it.
//! Every answer must be an HTTP answer a client can read (a JSON-RPC error
//! for what it cannot use), the gateway must stay healthy and log no panic,
//! and a well-formed call must still work afterwards. Manifests are fuzzed
//! in `source::manifest_dir`'s unit tests.

use std::time::Duration;

use crate::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

const METHODS: &[&str] = &[
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/cancel",
    "tasks/list",
    "server/discover",
    "notifications/cancelled",
    "notifications/progress",
    "sampling/createMessage",
    "no/such/method",
    "",
];

const TOOLS: &[&str] = &[
    "x_sim_cluster_info",
    "x_sim_list_pods",
    "flotilla_fleet_overview",
    "x_missing",
    "",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(TOOLS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(
                    &[
                        "name",
                        "arguments",
                        "uri",
                        "cursor",
                        "_meta",
                        "task",
                        "level",
                        "x"
                    ][..]
                )
                .prop_map(str::to_string),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|n| Some(json!(n))),
        any::<String>().prop_map(|s| Some(json!(s))),
        Just(Some(Value::Null)),
        Just(Some(json!({"not": "an id"}))),
    ];
    let version = prop_oneof![8 => Just(Some("2.0")), 1 => Just(Some("1.0")), 1 => Just(None)];
    let params = prop_oneof![
        Just(None),
        json_value().prop_map(Some),
        (prop::sample::select(TOOLS), json_value())
            .prop_map(|(name, arguments)| Some(json!({"name": name, "arguments": arguments}))),
    ];
    (prop::sample::select(METHODS), id, version, params).prop_map(
        |(method, id, version, params)| {
            let mut message = serde_json::Map::new();
            if let Some(version) = version {
                message.insert("jsonrpc".into(), json!(version));
            }
            message.insert("method".into(), json!(method));
            if let Some(id) = id {
                message.insert("id".into(), id);
            }
            if let Some(params) = params {
                message.insert("params".into(), params);
            }
            Value::Object(message)
        },
    )
}

/// A request body: one message, a batch, or bytes that are not JSON.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => message().prop_map(|m| m.to_string().into_bytes()),
        2 => prop::collection::vec(message(), 0..4).prop_map(|b| Value::Array(b).to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => message().prop_map(|m| {
            let bytes = m.to_string().into_bytes();
            bytes[..bytes.len() / 2].to_vec()
        }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    body: Vec<u8>,
    /// 0: none, 1: the live session, 2: garbage.
    session: u8,
    version: Option<&'static str>,
    json_content_type: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        body(),
        0u8..3,
        prop::sample::select(
            &[
                None,
                Some("2025-11-25"),
                Some("2025-03-26"),
                Some("2026-07-28"),
                Some("1999-01-01"),
            ][..],
        ),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(body, session, version, json_content_type)| Case {
            body,
            session,
            version,
            json_content_type,
        })
}

#[test]
fn fuzzed_json_rpc_gets_readable_answers_and_harms_nothing() {
    let gateway = Fleet::new().sim("sim", "fuzz").connected().start();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = gateway.url();
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "fuzz", "version": "1"}}});
    let session = http
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .unwrap()
        .headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();

    let cases: u32 = std::env::var("FLOTILLA_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let outcome = runner.run(&case(), |case| {
        let mut request = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .body(case.body.clone());
        if case.json_content_type {
            request = request.header("content-type", "application/json");
        }
        match case.session {
            1 => request = request.header("mcp-session-id", &session),
            2 => request = request.header("mcp-session-id", "no-such-session"),
            _ => {}
        }
        if let Some(version) = case.version {
            request = request.header("mcp-protocol-version", version);
        }
        let response = request
            .send()
            .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        prop_assert!(
            matches!(status, 200 | 202 | 400 | 404 | 406 | 413 | 415 | 422),
            "status {}",
            status
        );
        prop_assert!(status != 500, "an internal error");
        // JSON that is not JSON-RPC is a bad request (400), not a media type problem.
        prop_assert!(
            !(case.json_content_type && status == 415),
            "415 for an application/json body"
        );
        if case.json_content_type && status == 400 {
            prop_assert!(
                kind.starts_with("application/json") || case.session != 0 || case.version.is_some(),
                "a 400 without a JSON-RPC error: {}",
                kind
            );
        }
        let text = response.text().unwrap_or_default();
        let messages = messages_of(&kind, &text)
            .map_err(|e| TestCaseError::fail(format!("unreadable answer: {e}: {text}")))?;
        for message in messages {
            prop_assert_eq!(&message["jsonrpc"], "2.0", "{}", text);
            prop_assert!(
                message.get("result").is_some()
                    || message.get("error").is_some()
                    || message.get("method").is_some(),
                "neither a response nor a message: {}",
                text
            );
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}\ngateway log:\n{}", gateway.proc.log_text());
    }

    let statuses = statuses.into_inner().unwrap();
    eprintln!("answers by status: {statuses:?}");
    assert_eq!(statuses.values().sum::<u32>(), cases, "every case was sent");
    assert!(
        statuses.contains_key(&200),
        "some cases reach a handler: {statuses:?}"
    );
    // Unharmed: healthy, no panic, and the session still calls a tool.
    assert_eq!(http_get(gateway.port, "/healthz").0, 200);
    let log = gateway.proc.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "x_sim_cluster_info", "arguments": {}}});
    let response = http
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&call)
        .send()
        .unwrap();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().unwrap();
    let answer = messages_of(&kind, &body)
        .unwrap_or_default()
        .into_iter()
        .find(|m| m["id"] == 9)
        .unwrap_or_else(|| panic!("no answer to the call: {body}"));
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("cluster: fuzz"), "{answer}");
}

/// The JSON-RPC messages of an answer: a JSON body (one message or a
/// batch), or the `data:` lines of an SSE stream that hold JSON.
fn messages_of(content_type: &str, text: &str) -> Result<Vec<Value>, serde_json::Error> {
    if content_type.starts_with("application/json") && !text.is_empty() {
        return Ok(match serde_json::from_str(text)? {
            Value::Array(items) => items,
            other => vec![other],
        });
    }
    if content_type.starts_with("text/event-stream") {
        return text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim)
            .filter(|data| !data.is_empty())
            .map(serde_json::from_str)
            .collect();
    }
    Ok(Vec::new())
}
