//! What a request to an upstream spoken to in 2026-07-28 says about its
//! client, since no handshake said it once for the session: the lifecycle
//! `_meta` (the gateway's revision, name and capabilities, as rmcp's client
//! stamps them) and the revision's routing headers (`Mcp-Method` and
//! `Mcp-Name`, SEP-2243), for requests the gateway writes itself (the
//! relay's, the raw tool listing).

use std::sync::OnceLock;

use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client_handler::upstream_capabilities;

/// The stateless revision.
pub const REVISION: &str = "2026-07-28";

/// `_meta` key of a request's client capabilities.
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the least severe log level a request wants.
pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

/// The `_meta` members every 2026-07-28 request of the gateway carries.
pub fn lifecycle_meta() -> &'static Map<String, Value> {
    static META: OnceLock<Map<String, Value>> = OnceLock::new();
    META.get_or_init(|| {
        let mut meta = Map::new();
        meta.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            REVISION.into(),
        );
        meta.insert(
            "io.modelcontextprotocol/clientInfo".into(),
            json!({"name": "flotilla", "version": env!("CARGO_PKG_VERSION")}),
        );
        meta.insert(
            CLIENT_CAPABILITIES.into(),
            serde_json::to_value(upstream_capabilities()).unwrap_or_default(),
        );
        meta
    })
}

#[derive(Deserialize)]
struct Routed {
    method: Option<String>,
    params: Option<RoutedParams>,
}

#[derive(Deserialize)]
struct RoutedParams {
    name: Option<String>,
    uri: Option<String>,
    #[serde(rename = "taskId")]
    task_id: Option<String>,
}

/// `Mcp-Method` and, where the method names something, `Mcp-Name` for the
/// request in `body` (none for a body that is not a request).
pub fn routing_headers(body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    let Ok(Routed {
        method: Some(method),
        params,
    }) = serde_json::from_slice::<Routed>(body)
    else {
        return Vec::new();
    };
    let named = params.and_then(|p| match method.as_str() {
        "tools/call" | "prompts/get" => p.name,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri,
        "tasks/get" | "tasks/update" | "tasks/cancel" => p.task_id,
        _ => None,
    });
    let mut headers = Vec::with_capacity(2);
    if let Ok(value) = HeaderValue::from_str(&method) {
        headers.push((HeaderName::from_static("mcp-method"), value));
    }
    if let Some(value) = named.and_then(|n| HeaderValue::from_str(&header_text(&n)).ok()) {
        headers.push((HeaderName::from_static("mcp-name"), value));
    }
    headers
}

/// A value as a header carries it: as it is when it is plain visible
/// ASCII, else `=?base64?<UTF-8, base64>?=` (SEP-2243).
fn header_text(value: &str) -> String {
    let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let plain = value.chars().all(|c| (' '..='~').contains(&c));
    let looks_encoded = value.starts_with("=?base64?") && value.ends_with("?=");
    if plain && !padded && !looks_encoded {
        return value.to_string();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    format!("=?base64?{encoded}?=")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(body: serde_json::Value) -> Vec<(String, String)> {
        routing_headers(body.to_string().as_bytes())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect()
    }

    #[test]
    fn a_request_names_its_method_and_what_it_is_for() {
        let call = json!({"method": "tools/call", "params": {"name": "add"}});
        assert_eq!(
            headers(call),
            [
                ("mcp-method".into(), "tools/call".into()),
                ("mcp-name".into(), "add".into())
            ]
        );
        let read = json!({"method": "resources/read", "params": {"uri": "py://info"}});
        assert_eq!(headers(read)[1].1, "py://info");
        let list = json!({"method": "tools/list", "params": {}});
        assert_eq!(headers(list).len(), 1, "nothing to name");
        assert!(headers(json!({"id": 1, "result": {}})).is_empty());
    }

    #[test]
    fn a_name_a_header_cannot_carry_is_base64_encoded() {
        let call = json!({"method": "prompts/get", "params": {"name": "grüße"}});
        assert_eq!(headers(call)[1].1, "=?base64?Z3LDvMOfZQ==?=");
        assert_eq!(header_text(" padded"), "=?base64?IHBhZGRlZA==?=");
    }

    #[test]
    fn the_lifecycle_meta_names_the_revision_the_gateway_and_what_it_can_be_asked() {
        let meta = lifecycle_meta();
        assert_eq!(meta["io.modelcontextprotocol/protocolVersion"], REVISION);
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"],
            "flotilla"
        );
        assert!(meta[CLIENT_CAPABILITIES]["elicitation"].is_object());
    }
}
