//! Opening an upstream session over the transport its spec names: a stdio
//! child process, Streamable HTTP (stateless 2026-07-28 where the server
//! offers it, else the initialize handshake), or legacy HTTP+SSE.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

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
use super::credential::CredentialRef;
use super::delivery::Counted;
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
    #[error("the server has no usable server/discover ({0})")]
    NoDiscover(String),
    #[error("MCP handshake failed: {0}")]
    Handshake(String),
}

/// An error and its causes on one line (reqwest puts TLS and connection
/// details in the source chain, not in the top-level message).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What kind of failure a connection error is, for status reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Unreachable,
    Timeout,
    Tls,
    AuthRequired,
    SpawnFailed,
    Protocol,
}

impl FailureKind {
    /// The Kubernetes condition reason for this failure.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "Unreachable",
            FailureKind::Timeout => "Timeout",
            FailureKind::Tls => "TLSError",
            FailureKind::AuthRequired => "AuthRequired",
            FailureKind::SpawnFailed => "SpawnFailed",
            FailureKind::Protocol => "ProtocolError",
        }
    }

    /// Classifies a failure from its message (and its causes).
    pub fn of(message: &str) -> Self {
        let lower = message.to_ascii_lowercase();
        let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if any(&[
            "auth required",
            "authorization required",
            "sso: ",
            "insufficient scope",
            "http 401",
            "http 403",
            "401 unauthorized",
            "403 forbidden",
        ]) {
            FailureKind::AuthRequired
        } else if any(&[
            "certificate",
            "tls",
            "ssl",
            "handshake failure",
            "invalidcontenttype",
            "corrupt message",
        ]) {
            FailureKind::Tls
        } else if any(&["timed out", "timeout"]) {
            FailureKind::Timeout
        } else if any(&["starting ", "no such file", "permission denied"]) {
            FailureKind::SpawnFailed
        } else if any(&[
            "connection refused",
            "error sending request",
            "connect",
            "dns",
            "unreachable",
            "reset by peer",
            "closed",
        ]) {
            FailureKind::Unreachable
        } else {
            FailureKind::Protocol
        }
    }
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
    credential: Option<&CredentialRef>,
) -> Result<Connected, ConnectError> {
    let timeout = desired.spec.timeout();
    let attempt = async {
        let lifecycle = match desired.spec.server_type {
            ServerType::Sse => ClientLifecycleMode::Initialize,
            _ => auto_lifecycle(),
        };
        match open(desired, handler.clone(), http, credential, lifecycle).await {
            // Some servers answer server/discover but list only handshake
            // versions (kubernetes-mcp-server does), or answer it with an
            // empty result; rmcp's Auto mode treats that as final, so fall
            // back to initialize on a fresh transport, as the reference SDKs do.
            Err(ConnectError::NoDiscover(why)) => {
                tracing::debug!(server = %desired.name, why, "no server/discover: using initialize");
                open(
                    desired,
                    handler,
                    http,
                    credential,
                    ClientLifecycleMode::Initialize,
                )
                .await
            }
            other => other,
        }
    };
    let running = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => return Err(ConnectError::Timeout(timeout.as_secs())),
        Ok(Err(ConnectError::Handshake(message))) if message.contains("error sending request") => {
            // rmcp's transport error hides the cause (refused, TLS, DNS): ask once more directly.
            let cause = match desired.spec.url.as_deref() {
                Some(url) => diagnose(http, url).await,
                None => None,
            };
            return Err(ConnectError::Handshake(match cause {
                Some(cause) => format!("{message} ({cause})"),
                None => message,
            }));
        }
        Ok(result) => result?,
    };
    let protocol = running
        .peer()
        .peer_info()
        .map(|info| info.protocol_version.clone())
        .unwrap_or(ProtocolVersion::V_2025_03_26);
    Ok(Connected { running, protocol })
}

type Running = RunningService<RoleClient, UpstreamClient>;

/// The reason a plain request to `url` fails, if it does.
async fn diagnose(http: &reqwest::Client, url: &str) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), http.get(url).send()).await {
        Ok(Err(error)) => Some(error_chain(&error)),
        _ => None,
    }
}

async fn open(
    desired: &DesiredServer,
    handler: UpstreamClient,
    http: &reqwest::Client,
    credential: Option<&CredentialRef>,
    lifecycle: ClientLifecycleMode,
) -> Result<Running, ConnectError> {
    let discovering = matches!(lifecycle, ClientLifecycleMode::Auto { .. });
    let result = match desired.spec.server_type {
        ServerType::Stdio => {
            let transport = Counted::new(spawn_stdio(desired, &handler.server)?, &handler);
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
                UpstreamHttpClient::new(http.clone(), credential.cloned()),
                config,
            );
            let transport = Counted::new(transport, &handler);
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
            let transport = Counted::new(transport, &handler);
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
    };
    result.map_err(|error| match discover_unusable(&error) {
        Some(why) if discovering => ConnectError::NoDiscover(why.into()),
        _ => ConnectError::Handshake(error_chain(&error)),
    })
}

/// Why a failed discovery should be retried with `initialize`, if it should:
/// the server listed only handshake versions, or answered with something
/// other than a discovery result (e.g. `{}`).
fn discover_unusable(error: &ClientInitializeError) -> Option<&'static str> {
    match error {
        ClientInitializeError::NoCompatibleProtocolVersion {
            server_supported, ..
        } if server_supported.iter().all(|v| v.has_initialize()) => {
            Some("it lists only handshake versions")
        }
        ClientInitializeError::ExpectedInitResult(_) => {
            Some("it answered with something other than a discovery result")
        }
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::{ClientInitializeError, FailureKind, discover_unusable};
    use rmcp::model::{ErrorData, ProtocolVersion, ServerResult};

    #[test]
    fn an_empty_or_handshake_only_discovery_falls_back_to_initialize() {
        let empty: ServerResult = serde_json::from_str("{}").expect("an empty result decodes");
        let falls_back = [
            ClientInitializeError::ExpectedInitResult(Some(empty)),
            ClientInitializeError::NoCompatibleProtocolVersion {
                client_supported: vec![ProtocolVersion::V_2026_07_28],
                server_supported: vec![ProtocolVersion::V_2025_03_26],
            },
        ];
        for error in &falls_back {
            assert!(discover_unusable(error).is_some(), "{error}");
        }
        let fails = [
            ClientInitializeError::JsonRpcError(ErrorData::internal_error("boom", None)),
            ClientInitializeError::ConnectionClosed("eof".into()),
        ];
        for error in &fails {
            assert!(discover_unusable(error).is_none(), "{error}");
        }
    }

    #[test]
    fn failures_are_classified_for_status_reasons() {
        for (message, kind) in [
            (
                "MCP handshake failed: Auth required: authorization required: Bearer realm=x",
                FailureKind::AuthRequired,
            ),
            (
                "error sending request (client error (Connect): received corrupt message of type InvalidContentType)",
                FailureKind::Tls,
            ),
            (
                "error sending request: invalid peer certificate: UnknownIssuer",
                FailureKind::Tls,
            ),
            (
                "connecting timed out after 5s (spec.timeout)",
                FailureKind::Timeout,
            ),
            (
                "starting \"/nope\" failed: No such file or directory",
                FailureKind::SpawnFailed,
            ),
            (
                "error sending request: tcp connect error: Connection refused",
                FailureKind::Unreachable,
            ),
            (
                "MCP handshake failed: expect initialized result",
                FailureKind::Protocol,
            ),
        ] {
            assert_eq!(FailureKind::of(message), kind, "{message}");
        }
    }
}
