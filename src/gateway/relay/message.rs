//! The relay's message rewrites, on raw JSON: each function changes only
//! the members the rewrite list of `gateway::revision` names (ids, progress
//! tokens, names, `_meta` hop keys, `resultType`) and copies every other
//! member as the bytes it arrived as, so unknown fields pass through and no
//! number is re-typed.

#![allow(deprecated)] // log levels (SEP-2577) are still spoken by 2025 servers and clients

use std::collections::BTreeMap;

use rmcp::model::{ClientCapabilities, LoggingLevel};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::fleet::ClientOffers;
use crate::fleet::wire::TraceHeaders;
use crate::gateway::revision::{ClientRevision, HOP_META_KEYS, REQUEST_HOP_META_KEYS};

/// A JSON-RPC message as the relay reads it: the members it may rewrite
/// decoded, the rest kept raw.
#[derive(Deserialize)]
pub struct Message<'a> {
    pub id: Option<Value>,
    pub method: Option<String>,
    #[serde(borrow)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
}

impl<'a> Message<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    pub fn is_response(&self) -> bool {
        self.method.is_none() && (self.result.is_some() || self.error.is_some())
    }
}

/// What the relay reads of a request's params.
pub struct CallPeek {
    /// The tool or prompt (`tools/call`, `prompts/get`).
    pub name: Option<String>,
    /// The resource (`resources/read`).
    pub uri: Option<String>,
    /// What a `completion/complete` completes an argument of.
    pub completes: Option<Completes>,
    pub progress_token: Option<Value>,
    /// `_meta["io.modelcontextprotocol/logLevel"]` (2026-07-28).
    pub log_level: Option<String>,
    /// The `requestState` a retried 2026-07-28 request carries.
    pub request_state: Option<String>,
}

/// The prompt or resource template a completion is for (`params.ref`).
#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum Completes {
    #[serde(rename = "ref/prompt")]
    Prompt { name: String },
    #[serde(rename = "ref/resource")]
    Resource { uri: String },
}

#[derive(Deserialize)]
struct CallParams {
    name: Option<String>,
    uri: Option<String>,
    #[serde(rename = "ref", default, deserialize_with = "lenient")]
    completes: Option<Completes>,
    #[serde(rename = "taskId")]
    task_id: Option<String>,
    #[serde(rename = "requestState")]
    request_state: Option<String>,
    #[serde(rename = "_meta")]
    meta: Option<CallMeta>,
}

#[derive(Deserialize)]
struct CallMeta {
    #[serde(rename = "progressToken")]
    progress_token: Option<Value>,
    #[serde(rename = "io.modelcontextprotocol/logLevel")]
    log_level: Option<String>,
    #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<String>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<Map<String, Value>>,
}

/// A member that is left out when it does not read as `T` (a completion
/// `ref` of a kind the relay does not know is rmcp's to answer).
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

pub fn peek_call(params: Option<&RawValue>) -> Option<CallPeek> {
    let params: CallParams = serde_json::from_str(params?.get()).ok()?;
    let meta = params.meta;
    Some(CallPeek {
        name: params.name,
        uri: params.uri,
        completes: params.completes,
        progress_token: meta.as_ref().and_then(|m| m.progress_token.clone()),
        log_level: meta.and_then(|m| m.log_level),
        request_state: params.request_state,
    })
}

/// Whether a request's params carry the 2026-07-28 lifecycle `_meta` and
/// its name matches the `Mcp-Name` header.
pub fn declares_stateless(params: Option<&RawValue>, mcp_name: Option<&str>) -> bool {
    let Some(params) = params.and_then(|p| serde_json::from_str::<CallParams>(p.get()).ok()) else {
        return false;
    };
    let Some(meta) = params.meta else {
        return false;
    };
    // `Mcp-Name` names the tool, prompt or resource, or the task of a
    // `tasks/*` request (SEP-2663).
    let named = params
        .name
        .as_deref()
        .or(params.uri.as_deref())
        .or(params.task_id.as_deref());
    mcp_name == named
        && meta.protocol_version.as_deref() == Some("2026-07-28")
        && meta.client_capabilities.is_some()
}

/// What the client declares it can be asked: an `initialize` request's
/// `capabilities`, or a 2026-07-28 request's `_meta` client capabilities.
pub fn client_offers(params: Option<&RawValue>) -> Option<ClientOffers> {
    let capabilities = member::<ClientCapabilities>(params, "capabilities").or_else(|| {
        let params = serde_json::from_str::<CallParams>(params?.get()).ok()?;
        let declared = params.meta?.client_capabilities?;
        serde_json::from_value(Value::Object(declared)).ok()
    })?;
    Some(ClientOffers::of(&capabilities))
}

/// One member of a message's params, decoded.
fn member<T: serde::de::DeserializeOwned>(params: Option<&RawValue>, key: &str) -> Option<T> {
    serde_json::from_str(object(params)?.get(key)?.get()).ok()
}

/// The `requestId` a `notifications/cancelled` names.
pub fn cancelled_request(params: Option<&RawValue>) -> Option<Value> {
    member(params, "requestId")
}

/// An object's members, each kept as its raw JSON.
type RawObject<'a> = BTreeMap<String, &'a RawValue>;

fn object(raw: Option<&RawValue>) -> Option<RawObject<'_>> {
    match raw {
        None => Some(RawObject::new()),
        Some(raw) => serde_json::from_str(raw.get()).ok(),
    }
}

/// Writes `{"k":v,...}` from raw members plus replaced ones.
fn write_object(members: &RawObject<'_>, replaced: &[(&str, Option<String>)]) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut first = true;
    let mut push = |key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&Value::String(key.to_string()).to_string());
        out.push(':');
        out.push_str(value);
    };
    for (key, value) in members {
        if replaced.iter().any(|(k, _)| k == key) {
            continue;
        }
        push(key, value.get());
    }
    for (key, value) in replaced {
        if let Some(value) = value {
            push(key, value);
        }
    }
    out.push('}');
    out
}

fn envelope(id: &str, body_key: &str, body: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"{body_key}":{body}}}"#)
}

/// `_meta` with `progressToken` set to `token` (or removed) and the keys in
/// `hop` dropped, to be changed further and then [`written`].
fn meta_with(meta: Option<&RawValue>, hop: &[&str], token: Option<&Value>) -> Map<String, Value> {
    let mut meta: Map<String, Value> = meta
        .and_then(|m| serde_json::from_str(m.get()).ok())
        .unwrap_or_default();
    for key in hop {
        meta.remove(*key);
    }
    match token {
        Some(token) => {
            meta.insert("progressToken".into(), token.clone());
        }
        None => {
            meta.remove("progressToken");
        }
    }
    meta
}

/// `_meta` as written on the wire; `None` (left out) when it is empty.
fn written(meta: Map<String, Value>) -> Option<String> {
    (!meta.is_empty()).then(|| Value::Object(meta).to_string())
}

/// Sets the trace context of `trace` in `meta`.
fn set_trace(meta: &mut Map<String, Value>, trace: &TraceHeaders) {
    meta.insert("traceparent".into(), trace.traceparent.clone().into());
    match &trace.tracestate {
        Some(state) => meta.insert("tracestate".into(), state.clone().into()),
        None => meta.remove("tracestate"),
    };
}

use crate::fleet::lifecycle::{CLIENT_CAPABILITIES, LOG_LEVEL};

/// The value of one argument of a `tools/call`.
pub fn argument(params: Option<&RawValue>, key: &str) -> Option<Value> {
    let members = object(params)?;
    member(members.get("arguments").copied(), key)
}

/// A call's `arguments` object, when it has one.
pub fn arguments(params: Option<&RawValue>) -> Option<serde_json::Map<String, Value>> {
    let members = object(params)?;
    serde_json::from_str(members.get("arguments")?.get()).ok()
}

/// Where a client's request goes: the upstream's id, name and progress
/// token, and the argument that picked the instance (a folded tool's).
pub struct Outgoing<'a> {
    pub upstream_id: &'a str,
    pub name: Option<&'a str>,
    pub progress_token: Option<&'a Value>,
    pub drop_argument: Option<&'a str>,
    /// The gateway's span for the call, when traces are exported: its
    /// context replaces the client's in `_meta` (SEP-414).
    pub trace: Option<&'a TraceHeaders>,
    /// The client declared the tasks extension and the upstream announced
    /// it: the request says so in its `_meta`, as a 2026-07-28 request does
    /// (the upstream's session was opened without it, for every client).
    pub declare_tasks: bool,
    /// For an upstream spoken to in 2026-07-28: what each request says of
    /// its client there.
    pub lifecycle: Option<Lifecycle<'a>>,
}

/// The 2026-07-28 lifecycle `_meta` of a request to an upstream without a
/// session: the gateway's (`fleet::lifecycle`), and the log level the
/// client asked for on this request.
pub struct Lifecycle<'a> {
    pub meta: &'a Map<String, Value>,
    pub log_level: Option<&'a str>,
}

/// The `_meta` client capabilities a relayed request carries for a client
/// that declared the tasks extension (SEP-2663): what the gateway declared
/// in the upstream's handshake, and the extension.
fn tasks_declared() -> &'static Value {
    static DECLARED: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DECLARED.get_or_init(|| {
        let mut capabilities = crate::fleet::upstream_capabilities();
        capabilities
            .extensions
            .get_or_insert_default()
            .insert(rmcp::model::TASKS_EXTENSION_ID.into(), Default::default());
        serde_json::to_value(capabilities).unwrap_or_default()
    })
}

/// A client's request as the upstream gets it: the upstream's id, the
/// upstream's name for the tool or prompt, the gateway's progress token,
/// without the instance argument; the 2026-07-28 lifecycle `_meta` keys
/// describe the client's hop and are not carried to the upstream's session.
pub fn request_upstream(
    method: &str,
    params: Option<&RawValue>,
    out: &Outgoing<'_>,
) -> Option<String> {
    let members = object(params)?;
    let mut meta = meta_with(
        members.get("_meta").copied(),
        REQUEST_HOP_META_KEYS,
        out.progress_token,
    );
    if let Some(trace) = out.trace {
        set_trace(&mut meta, trace);
    }
    if let Some(lifecycle) = &out.lifecycle {
        meta.extend(lifecycle.meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(level) = lifecycle.log_level {
            meta.insert(LOG_LEVEL.into(), level.into());
        }
    }
    if out.declare_tasks {
        meta.insert(CLIENT_CAPABILITIES.into(), tasks_declared().clone());
    }
    let meta = written(meta);
    let name = out.name.map(|n| Value::String(n.to_string()).to_string());
    let mut replaced = vec![("_meta", meta)];
    match (method, name) {
        (_, None) => {}
        // A completion names its prompt in `ref`.
        ("completion/complete", Some(name)) => {
            let reference = object(members.get("ref").copied())?;
            replaced.push((
                "ref",
                Some(write_object(&reference, &[("name", Some(name))])),
            ));
        }
        (_, name) => replaced.push(("name", name)),
    }
    if let Some(drop) = out.drop_argument {
        let mut arguments = object(members.get("arguments").copied())?;
        arguments.remove(drop);
        replaced.push(("arguments", Some(write_object(&arguments, &[]))));
    }
    let upstream_id = out.upstream_id;
    let params = write_object(&members, &replaced);
    Some(format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":{},"params":{params}}}"#,
        Value::String(upstream_id.to_string()),
        Value::String(method.to_string())
    ))
}

/// The upstream's answer to `method` as the client gets it: the client's
/// id, and the result carried to the client's revision; an `input_required`
/// result's elicitations name who asks (`label`).
pub fn response_to_client(
    message: &Message<'_>,
    method: &str,
    client_id: &Value,
    (revision, label): (ClientRevision, &str),
) -> Option<String> {
    let id = client_id.to_string();
    if let Some(error) = message.error {
        return Some(envelope(&id, "error", error.get()));
    }
    let members = object(message.result)?;
    let meta = written(meta_with(
        members.get("_meta").copied(),
        HOP_META_KEYS,
        None,
    ));
    let result_type = match revision {
        ClientRevision::Stateless => Some(
            members
                .get("resultType")
                .map(|r| r.get().to_string())
                .unwrap_or_else(|| r#""complete""#.to_string()),
        ),
        ClientRevision::Session => members
            .get("resultType")
            .map(|r| r.get())
            .filter(|r| *r != r#""complete""#)
            .map(str::to_string),
    };
    let asked = (result_type.as_deref() == Some(r#""input_required""#))
        .then(|| input_requests_to_client(members.get("inputRequests").copied(), label))
        .flatten();
    let mut replaced = vec![("_meta", meta), ("resultType", result_type)];
    if asked.is_some() {
        replaced.push(("inputRequests", asked));
    }
    match revision {
        // Cache hints exist from 2026-07-28 on.
        ClientRevision::Session => {
            replaced.push(("ttlMs", None));
            replaced.push(("cacheScope", None));
        }
        // ... where a read result must carry them (the most cautious values
        // when the upstream, of an older revision, gave none).
        ClientRevision::Stateless if method == "resources/read" => {
            let keep = |key: &str, default: &str| {
                Some(
                    members
                        .get(key)
                        .map_or(default.to_string(), |v| v.get().to_string()),
                )
            };
            replaced.push(("ttlMs", keep("ttlMs", "0")));
            replaced.push(("cacheScope", keep("cacheScope", r#""private""#)));
        }
        ClientRevision::Stateless => {}
    }
    Some(envelope(&id, "result", &write_object(&members, &replaced)))
}

/// A notification's params with `progressToken` replaced by the client's.
pub fn progress_to_client(params: Option<&RawValue>, client_token: &Value) -> Option<String> {
    let members = object(params)?;
    let token = client_token.to_string();
    let params = write_object(&members, &[("progressToken", Some(token))]);
    Some(format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{params}}}"#
    ))
}

/// A log message for the client, its `logger` prefixed with `label`.
pub fn log_to_client(params: Option<&RawValue>, label: &str) -> Option<String> {
    let members = object(params)?;
    let logger = match members
        .get("logger")
        .and_then(|l| serde_json::from_str::<String>(l.get()).ok())
    {
        Some(logger) => format!("{label}/{logger}"),
        None => label.to_string(),
    };
    let params = write_object(
        &members,
        &[("logger", Some(Value::String(logger).to_string()))],
    );
    Some(format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{params}}}"#
    ))
}

/// The level (`params.level`) of a log message.
pub fn log_level(params: Option<&RawValue>) -> Option<LoggingLevel> {
    member(params, "level")
}

/// A log level by its name (`None` for a name the protocol does not have).
pub fn level_named(name: &str) -> Option<LoggingLevel> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

/// The progress token of a progress notification.
pub fn progress_token(params: Option<&RawValue>) -> Option<Value> {
    member(params, "progressToken")
}

/// An upstream's request to the user as the client gets it: the gateway's
/// id for it, and for elicitation the server named in front of the message.
pub fn request_to_client(
    method: &str,
    params: Option<&RawValue>,
    id: &str,
    label: &str,
) -> Option<String> {
    let params = params_to_client(method, params, label)?;
    Some(format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":{},"params":{params}}}"#,
        Value::String(id.to_string()),
        Value::String(method.to_string())
    ))
}

/// An upstream's request to the user as one entry of a 2026-07-28
/// `inputRequests` map: `{"method", "params"}`, params as the client gets
/// them.
pub fn input_request(method: &str, params: Option<&RawValue>, label: &str) -> Option<String> {
    let params = params_to_client(method, params, label)?;
    Some(format!(
        r#"{{"method":{},"params":{params}}}"#,
        Value::String(method.to_string())
    ))
}

/// A request's params as the user sees them: an elicitation names who asks.
fn params_to_client(method: &str, params: Option<&RawValue>, label: &str) -> Option<String> {
    let members = object(params)?;
    let mut replaced = Vec::new();
    if method == "elicitation/create"
        && let Some(message) = members
            .get("message")
            .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
    {
        replaced.push((
            "message",
            Some(Value::String(format!("[{label}] {message}")).to_string()),
        ));
    }
    Some(write_object(&members, &replaced))
}

/// An upstream's `inputRequests` as the client gets them: each elicitation
/// names who asks; everything else as it came.
fn input_requests_to_client(requests: Option<&RawValue>, label: &str) -> Option<String> {
    let entries = object(requests)?;
    let mut map = String::from("{");
    for (i, (key, entry)) in entries.iter().enumerate() {
        let members = object(Some(entry))?;
        let method: String = serde_json::from_str(members.get("method")?.get()).ok()?;
        let params = params_to_client(&method, members.get("params").copied(), label)?;
        if i > 0 {
            map.push(',');
        }
        map.push_str(&Value::String(key.clone()).to_string());
        map.push(':');
        map.push_str(&write_object(&members, &[("params", Some(params))]));
    }
    map.push('}');
    Some(map)
}

/// A 2026-07-28 `input_required` result for the client: the upstream's
/// requests (`(key, entry)` from [`input_request`]) and the state that
/// finds the waiting call again.
pub fn input_required_to_client(
    client_id: &Value,
    requests: &[(String, String)],
    request_state: &str,
) -> String {
    let mut map = String::from("{");
    for (i, (key, entry)) in requests.iter().enumerate() {
        if i > 0 {
            map.push(',');
        }
        map.push_str(&Value::String(key.clone()).to_string());
        map.push(':');
        map.push_str(entry);
    }
    map.push('}');
    let result = format!(
        r#"{{"resultType":"input_required","inputRequests":{map},"requestState":{}}}"#,
        Value::String(request_state.to_string())
    );
    envelope(&client_id.to_string(), "result", &result)
}

/// The `inputResponses` of a retried 2026-07-28 request, each kept raw.
pub fn input_responses(params: Option<&RawValue>) -> BTreeMap<String, Box<RawValue>> {
    member(params, "inputResponses").unwrap_or_default()
}

/// The client's answer (a result, raw) sent to the upstream under its id.
pub fn result_upstream(upstream_id: &Value, result: &RawValue) -> String {
    envelope(&upstream_id.to_string(), "result", result.get())
}

/// The client's answer to a relayed request, sent back under the upstream's id.
pub fn answer_upstream(message: &Message<'_>, upstream_id: &Value) -> Option<String> {
    let id = upstream_id.to_string();
    match (message.result, message.error) {
        (Some(result), _) => Some(envelope(&id, "result", result.get())),
        (None, Some(error)) => Some(envelope(&id, "error", error.get())),
        _ => None,
    }
}

/// An error answer to an upstream request no client can take.
pub fn refuse_upstream(upstream_id: &Value, message: &str) -> String {
    let error = serde_json::json!({"code": -32601, "message": message});
    envelope(&upstream_id.to_string(), "error", &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn a_call_reaches_the_upstream_with_only_id_name_and_token_changed() {
        let params = raw(
            r#"{"name":"x_py_add","arguments":{"a":0.7,"b":1.0,"big":123456789012345678901234567890},"_meta":{"progressToken":"client-7","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"c"},"vendor/trace":"t1"},"task":{"ttl":5}}"#,
        );
        let token = json!("flotilla-p1");
        let out = Outgoing {
            upstream_id: "flotilla-1",
            name: Some("add"),
            progress_token: Some(&token),
            drop_argument: None,
            trace: None,
            declare_tasks: false,
            lifecycle: None,
        };
        let sent = request_upstream("tools/call", Some(&params), &out).unwrap();
        // Numbers stay the bytes they were.
        assert!(
            sent.contains(r#""arguments":{"a":0.7,"b":1.0,"big":123456789012345678901234567890}"#),
            "{sent}"
        );
        let sent: Value =
            serde_json::from_str(&sent.replace("123456789012345678901234567890", "0")).unwrap();
        assert_eq!(sent["id"], "flotilla-1");
        assert_eq!(sent["params"]["name"], "add");
        assert_eq!(sent["params"]["task"], json!({"ttl": 5}));
        assert_eq!(
            sent["params"]["_meta"],
            json!({"progressToken": "flotilla-p1", "vendor/trace": "t1"})
        );
    }

    #[test]
    fn a_client_that_declared_tasks_has_the_upstream_told_so_on_its_requests() {
        let params = raw(
            r#"{"name":"x_t_slow","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}},"vendor/x":1}}"#,
        );
        let out = Outgoing {
            upstream_id: "flotilla-3",
            name: Some("slow"),
            progress_token: None,
            drop_argument: None,
            trace: None,
            declare_tasks: true,
            lifecycle: None,
        };
        let sent: Value =
            serde_json::from_str(&request_upstream("tools/call", Some(&params), &out).unwrap())
                .unwrap();
        let meta = &sent["params"]["_meta"];
        assert_eq!(meta["vendor/x"], 1);
        assert_eq!(meta["io.modelcontextprotocol/protocolVersion"], Value::Null);
        let declared = &meta["io.modelcontextprotocol/clientCapabilities"];
        assert_eq!(
            declared["extensions"]["io.modelcontextprotocol/tasks"],
            json!({})
        );
        // What the upstream's session was opened with stays declared: a
        // request's capabilities stand in for the session's.
        assert!(declared["elicitation"]["form"].is_object(), "{declared}");
        assert!(declared["sampling"].is_object() && declared["roots"].is_object());
        // Without the declaration, nothing is added.
        let out = Outgoing {
            declare_tasks: false,
            lifecycle: None,
            ..out
        };
        let sent = request_upstream("tools/call", Some(&params), &out).unwrap();
        assert!(!sent.contains("clientCapabilities"), "{sent}");
    }

    #[test]
    fn a_folded_tools_instance_argument_is_not_sent_on() {
        let params = raw(
            r#"{"name":"x_k_list_pods","arguments":{"cluster":"c7","namespace":"default","limit":1.50}}"#,
        );
        assert_eq!(argument(Some(&params), "cluster"), Some(json!("c7")));
        let out = Outgoing {
            upstream_id: "flotilla-2",
            name: Some("list_pods"),
            progress_token: None,
            drop_argument: Some("cluster"),
            trace: None,
            declare_tasks: false,
            lifecycle: None,
        };
        let sent = request_upstream("tools/call", Some(&params), &out).unwrap();
        assert!(
            sent.contains(r#""arguments":{"limit":1.50,"namespace":"default"}"#),
            "{sent}"
        );
    }

    #[test]
    fn a_result_reaches_each_revision_as_it_requires_and_unknown_fields_pass() {
        let text = r#"{"jsonrpc":"2.0","id":"flotilla-1","result":{"content":[{"type":"text","text":"hi"}],"structuredContent":{"t":0.699999988079071},"x-vendor":{"k":1},"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"up"},"vendor/m":2}}}"#;
        let message = Message::parse(text).unwrap();
        let stateless = response_to_client(
            &message,
            "tools/call",
            &json!(7),
            (ClientRevision::Stateless, "srv"),
        )
        .unwrap();
        assert!(stateless.contains(r#""structuredContent":{"t":0.699999988079071}"#));
        let stateless: Value = serde_json::from_str(&stateless).unwrap();
        assert_eq!(stateless["id"], 7);
        assert_eq!(stateless["result"]["resultType"], "complete");
        assert_eq!(stateless["result"]["x-vendor"], json!({"k": 1}));
        assert_eq!(stateless["result"]["_meta"], json!({"vendor/m": 2}));

        let text = r#"{"jsonrpc":"2.0","id":"flotilla-2","result":{"contents":[],"resultType":"complete","ttlMs":5,"cacheScope":"public"}}"#;
        let message = Message::parse(text).unwrap();
        let session: Value = serde_json::from_str(
            &response_to_client(
                &message,
                "resources/read",
                &json!("a"),
                (ClientRevision::Session, "srv"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(session["result"], json!({"contents": []}));

        let text = r#"{"jsonrpc":"2.0","id":"flotilla-4","result":{"contents":[]}}"#;
        let message = Message::parse(text).unwrap();
        let stateless: Value = serde_json::from_str(
            &response_to_client(
                &message,
                "resources/read",
                &json!("b"),
                (ClientRevision::Stateless, "srv"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            stateless["result"],
            json!({"contents": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"})
        );
    }

    #[test]
    fn errors_pass_with_the_clients_id() {
        let text = r#"{"jsonrpc":"2.0","id":"flotilla-3","error":{"code":-32602,"message":"bad","data":{"x":1}}}"#;
        let message = Message::parse(text).unwrap();
        let out: Value = serde_json::from_str(
            &response_to_client(
                &message,
                "tools/call",
                &json!(9),
                (ClientRevision::Session, "srv"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"bad","data":{"x":1}}})
        );
    }

    #[test]
    fn progress_logs_and_requests_reach_the_client_in_its_terms() {
        let progress =
            raw(r#"{"progressToken":"flotilla-p1","progress":1,"total":3,"message":"step"}"#);
        let out = progress_to_client(Some(&progress), &json!(42)).unwrap();
        assert!(
            out.contains(r#""progress":1,"#) && out.contains(r#""progressToken":42"#),
            "{out}"
        );

        let log = raw(r#"{"level":"info","logger":"chatty","data":{"n":1.50}}"#);
        let out = log_to_client(Some(&log), "py").unwrap();
        assert!(
            out.contains(r#""logger":"py/chatty""#) && out.contains(r#""data":{"n":1.50}"#),
            "{out}"
        );
        assert_eq!(log_level(Some(&log)), Some(LoggingLevel::Info));
        assert_eq!(level_named("warning"), Some(LoggingLevel::Warning));
        assert_eq!(level_named("loud"), None);

        let elicit =
            raw(r#"{"mode":"form","message":"Name?","requestedSchema":{"type":"object"}}"#);
        let out: Value = serde_json::from_str(
            &request_to_client("elicitation/create", Some(&elicit), "flotilla-r1", "py").unwrap(),
        )
        .unwrap();
        assert_eq!(out["id"], "flotilla-r1");
        assert_eq!(out["params"]["message"], "[py] Name?");
        assert_eq!(out["params"]["mode"], "form");

        let sampling = raw(r#"{"messages":[],"maxTokens":10,"temperature":0.7}"#);
        let out = request_to_client(
            "sampling/createMessage",
            Some(&sampling),
            "flotilla-r2",
            "py",
        )
        .unwrap();
        assert!(out.contains(r#""temperature":0.7"#), "{out}");
    }

    #[test]
    fn the_clients_answer_returns_under_the_upstreams_id() {
        let answer = Message::parse(r#"{"jsonrpc":"2.0","id":"flotilla-r1","result":{"action":"accept","content":{"name":"Ada"}}}"#).unwrap();
        let out: Value =
            serde_json::from_str(&answer_upstream(&answer, &json!(0)).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"jsonrpc":"2.0","id":0,"result":{"action":"accept","content":{"name":"Ada"}}})
        );
    }

    #[test]
    fn an_upstreams_input_required_names_who_asks_and_keeps_the_rest() {
        let text = r#"{"jsonrpc":"2.0","id":"f-1","result":{"resultType":"input_required","requestState":"s","inputRequests":{"name":{"method":"elicitation/create","params":{"message":"Name?","requestedSchema":{"type":"object"}},"x":1},"model":{"method":"sampling/createMessage","params":{"temperature":0.7}}}}}"#;
        let message = Message::parse(text).unwrap();
        let json = response_to_client(
            &message,
            "tools/call",
            &json!(3),
            (ClientRevision::Stateless, "py"),
        )
        .unwrap();
        assert!(json.contains(r#""temperature":0.7"#), "{json}");
        let answer: Value = serde_json::from_str(&json).unwrap();
        let asked = &answer["result"]["inputRequests"];
        assert_eq!(asked["name"]["params"]["message"], "[py] Name?");
        assert_eq!(asked["name"]["x"], 1);
        assert_eq!(answer["result"]["requestState"], "s");
        assert_eq!(answer["id"], 3);
    }

    #[test]
    fn a_request_to_a_2026_upstream_says_who_its_client_is() {
        let params = raw(
            r#"{"name":"x_py_add","arguments":{"a":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"info","vendor/k":1}}"#,
        );
        let out = Outgoing {
            upstream_id: "flotilla-1",
            name: Some("add"),
            progress_token: None,
            drop_argument: None,
            trace: None,
            declare_tasks: false,
            lifecycle: Some(Lifecycle {
                meta: crate::fleet::lifecycle::lifecycle_meta(),
                log_level: Some("info"),
            }),
        };
        let body = request_upstream("tools/call", Some(&*params), &out).unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        let meta = &body["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"],
            "flotilla"
        );
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
        assert_eq!(meta["io.modelcontextprotocol/logLevel"], "info");
        assert_eq!(meta["vendor/k"], 1);
        let declared = &meta["io.modelcontextprotocol/clientCapabilities"];
        assert!(
            declared["sampling"].is_object(),
            "the gateway's, not the client's: {declared}"
        );
        assert_eq!(body["params"]["name"], "add");
    }
}
