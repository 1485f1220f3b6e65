//! Dialing the gateway: one HTTP/1.1 request that reqwest sends (so its
//! proxy settings, `HTTPS_PROXY` and `NO_PROXY` among them, and its TLS
//! apply) and upgrades to a WebSocket. The handshake's key and accept value
//! are checked here; the framing is tungstenite's.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::fleet::agents::frame::{
    AGENT_HOLDS_HEADER, AGENT_NAME_HEADER, AGENT_PATH, REPLICA_HEADER, REPLICAS_HEADER,
};
use crate::fleet::agents::link::websocket;

/// The longest refusal text read from the gateway.
const MAX_REFUSAL: usize = 1024;

/// The most replicas an agent keeps connections to.
pub const MAX_REPLICAS: usize = 64;

/// The socket an upgraded connection gives.
pub type Socket = WebSocketStream<reqwest::Upgraded>;

/// A connection to one replica of the gateway.
pub struct Dialed {
    pub socket: Socket,
    /// The replica's id.
    pub replica: String,
    /// How many replicas the gateway runs.
    pub replicas: usize,
}

/// Why dialing failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The load balancer chose a replica this agent holds already.
    #[error("reached a replica this agent is connected to already")]
    AlreadyHeld { replicas: usize },
    #[error("the gateway refused this agent ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("cannot reach the gateway: {0}")]
    Unreachable(String),
    #[error("the gateway answered the upgrade wrongly: {0}")]
    Handshake(String),
    #[error("cannot read the credential file {path}: {error}")]
    Credential { path: String, error: std::io::Error },
}

/// The HTTP client agents dial with: HTTP/1.1 (the upgrade needs it), the
/// system's roots plus `ca_file` when given.
pub fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read --ca-file {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!("--ca-file {} holds no PEM certificate: {e}", path.display())
        })? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// The agent door's URL under the gateway's base URL (`ws`/`wss` are taken as `http`/`https`).
pub fn door_url(gateway: &url::Url) -> anyhow::Result<url::Url> {
    let mut url = gateway.clone();
    let scheme = match url.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        other => anyhow::bail!("--gateway must be an http(s) URL, not {other:?}"),
    };
    url.set_scheme(scheme)
        .map_err(|_| anyhow::anyhow!("--gateway {gateway} cannot be used"))?;
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}{AGENT_PATH}"));
    Ok(url)
}

/// Opens a connection as `name`, presenting the credential in `token_file`
/// (read on every dial: projected service-account tokens rotate), to a
/// replica other than those in `holds`.
pub async fn dial(
    http: &reqwest::Client,
    door: &url::Url,
    name: &str,
    token_file: &Path,
    holds: &[String],
) -> Result<Dialed, DialError> {
    let token = std::fs::read_to_string(token_file).map_err(|error| DialError::Credential {
        path: token_file.display().to_string(),
        error,
    })?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        DialError::Credential {
            path: token_file.display().to_string(),
            error: std::io::Error::other("it holds characters a header cannot carry"),
        }
    })?;
    bearer.set_sensitive(true);
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let response = http
        .get(door.clone())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::AUTHORIZATION, bearer)
        .header(AGENT_NAME_HEADER, name)
        .header(AGENT_HOLDS_HEADER, holds.join(","))
        .send()
        .await
        .map_err(|e| DialError::Unreachable(crate::fleet::error_chain(&e)))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let replica = header(REPLICA_HEADER).unwrap_or_default();
    let replicas = header(REPLICAS_HEADER)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_REPLICAS);
    if status == StatusCode::CONFLICT {
        return Err(DialError::AlreadyHeld { replicas });
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let mut message = response.text().await.unwrap_or_default();
        message.truncate(MAX_REFUSAL);
        return Err(DialError::Refused {
            status,
            message: message.trim().to_string(),
        });
    }
    let accepted = response
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if accepted.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(DialError::Handshake(
            "Sec-WebSocket-Accept does not match the key sent (is a proxy answering instead of the gateway?)".into(),
        ));
    }
    let upgraded = response
        .upgrade()
        .await
        .map_err(|e| DialError::Handshake(crate::fleet::error_chain(&e)))?;
    Ok(Dialed {
        socket: websocket(upgraded, Role::Client).await,
        replica,
        replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::door_url;

    #[test]
    fn the_door_is_under_the_gateways_base_url() {
        let at = |s: &str| door_url(&url::Url::parse(s).unwrap()).map(|u| u.to_string());
        assert_eq!(
            at("https://gw.example/").unwrap(),
            "https://gw.example/agent/connect"
        );
        assert_eq!(
            at("wss://gw.example/flotilla").unwrap(),
            "https://gw.example/flotilla/agent/connect"
        );
        assert_eq!(
            at("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/agent/connect"
        );
        assert!(at("ftp://gw.example/").is_err());
    }
}
