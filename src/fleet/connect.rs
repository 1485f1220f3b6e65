//! Opening an upstream session over the transport its spec names: a stdio
//! child process, Streamable HTTP (stateless 2026-07-28 where the server
//! offers it, else the initialize handshake), or legacy HTTP+SSE.

use std::process::Stdio;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use rmcp::RoleClient;
use rmcp::model::ProtocolVersion;
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, RunningService, serve_client_with_lifecycle,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use tokio::io::AsyncBufReadExt;

use super::client_handler::UpstreamClient;
use super::http_client::UpstreamHttpClient;
use super::legacy_sse::LegacySseTransport;
use crate::api::ServerType;
use crate::source::DesiredServer;

/// Longest stderr line of a stdio child that is logged.
const MAX_STDERR_LINE: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("spec.url is missing")]
    MissingUrl,
    #[error("spec.command is missing")]
    MissingCommand,
    #[error("starting {command:?} failed: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("invalid header {0}")]
    Header(String),
    #[error("connecting timed out after {0}s (spec.timeout)")]
    Timeout(u64),
    #[error("{0}")]
    Legacy(#[from] super::legacy_sse::LegacySseError),
    #[error("the server offers only handshake protocol versions")]
    OnlyHandshakeVersions,
    #[error("MCP handshake failed: {0}")]
    Handshake(String),
}

/// A live session and the protocol version it speaks.
pub struct Connected {
    pub running: RunningService<RoleClient, UpstreamClient>,
    pub protocol: ProtocolVersion,
}

fn header_map(desired: &DesiredServer) -> Result<HeaderMap, ConnectError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &desired.spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError::Header(name.clone()))?;
        let mut value =
            HeaderValue::from_str(value).map_err(|_| ConnectError::Header(name.to_string()))?;
        if name == http::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        headers.insert(name, value);
    }
    for (name, value) in &desired.secret_headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError::Header(name.clone()))?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|_| ConnectError::Header(format!("{name} (value from a Secret)")))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Prefers the stateless 2026-07-28 revision; falls back to the newest
/// handshake revision when the server does not offer it.
fn auto_lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}

pub async fn connect(
    desired: &DesiredServer,
    handler: UpstreamClient,
    http: &reqwest::Client,
) -> Result<Connected, ConnectError> {
    let timeout = desired.spec.timeout();
    let attempt = async {
        let lifecycle = match desired.spec.server_type {
            ServerType::Sse => ClientLifecycleMode::Initialize,
            _ => auto_lifecycle(),
        };
        match open(desired, handler.clone(), http, lifecycle).await {
            // Some servers answer server/discover but list only handshake
            // versions (kubernetes-mcp-server does); rmcp's Auto mode treats
            // that as final, so fall back to initialize on a fresh transport.
            Err(ConnectError::OnlyHandshakeVersions) => {
                open(desired, handler, http, ClientLifecycleMode::Initialize).await
            }
            other => other,
        }
    };
    let running = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(timeout.as_secs()))??;
    let protocol = running
        .peer()
        .peer_info()
        .map(|info| info.protocol_version.clone())
        .unwrap_or(ProtocolVersion::V_2025_03_26);
    Ok(Connected { running, protocol })
}

type Running = RunningService<RoleClient, UpstreamClient>;

async fn open(
    desired: &DesiredServer,
    handler: UpstreamClient,
    http: &reqwest::Client,
    lifecycle: ClientLifecycleMode,
) -> Result<Running, ConnectError> {
    let result = match desired.spec.server_type {
        ServerType::Stdio => {
            let transport = spawn_stdio(desired, &handler.server)?;
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
        ServerType::StreamableHttp => {
            let url = desired
                .spec
                .url
                .as_deref()
                .ok_or(ConnectError::MissingUrl)?;
            let headers = header_map(desired)?;
            let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(
                headers
                    .into_iter()
                    .filter_map(|(k, v)| Some((k?, v)))
                    .collect(),
            );
            let transport = StreamableHttpClientTransport::with_client(
                UpstreamHttpClient::new(http.clone()),
                config,
            );
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
        ServerType::Sse => {
            let url = desired
                .spec
                .url
                .as_deref()
                .ok_or(ConnectError::MissingUrl)?;
            let transport = LegacySseTransport::connect(
                http.clone(),
                url,
                header_map(desired)?,
                desired.spec.timeout(),
            )
            .await?;
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
    };
    result.map_err(|error| match error {
        ClientInitializeError::NoCompatibleProtocolVersion {
            server_supported, ..
        } if server_supported.iter().all(|v| v.has_initialize()) => {
            ConnectError::OnlyHandshakeVersions
        }
        other => ConnectError::Handshake(other.to_string()),
    })
}

fn spawn_stdio(
    desired: &DesiredServer,
    server: &Arc<str>,
) -> Result<TokioChildProcess, ConnectError> {
    let program = desired
        .spec
        .command
        .as_deref()
        .ok_or(ConnectError::MissingCommand)?;
    // `command: flotilla` runs this very binary (its `sim-cluster` subcommand
    // serves the quickstart's simulated clusters), wherever it was installed.
    let program_path = match program {
        "flotilla" => std::env::current_exe().unwrap_or_else(|_| program.into()),
        other => other.into(),
    };
    let mut command = tokio::process::Command::new(program_path);
    command.args(&desired.spec.args).envs(&desired.spec.env);
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ConnectError::Spawn {
            command: program.to_string(),
            source,
        })?;
    if let Some(stderr) = stderr {
        let server = server.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(mut line)) = lines.next_line().await {
                if line.len() > MAX_STDERR_LINE {
                    let mut end = MAX_STDERR_LINE;
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    line.truncate(end);
                }
                tracing::info!(server = %server, "stderr: {line}");
            }
        });
    }
    Ok(transport)
}
