//! Opening an upstream session over the transport its spec names: a stdio
//! child process, Streamable HTTP (stateless 2026-07-28 where the server
//! offers it, else the initialize handshake), or legacy HTTP+SSE.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use rmcp::RoleClient;
use rmcp::model::ProtocolVersion;
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, RunningService, serve_client_with_lifecycle,
};
use tokio::io::AsyncBufReadExt;

use super::agents::{EndReason, Hub};
use super::client_handler::UpstreamClient;
use super::credential::CredentialRef;
use super::delivery::Counted;
use super::http_transport::{Dock, HttpTransport};
use super::legacy_sse::LegacySseTransport;
use super::message_wire::{Inbox, Muxed, Outbox, Routes};
use super::raw_tools::RawTools;
use super::stdio::StdioInbox;
use super::wire::{HttpLine, Line, SessionSlot, Wire};
use crate::api::ServerType;
use crate::source::DesiredServer;

/// Longest stderr line of a stdio child that is logged.
const MAX_STDERR_LINE: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("spec.url is missing")]
    MissingUrl,
    /// Validation rejects it first; the URL itself is not repeated (it may
    /// carry credentials).
    #[error("spec.url is not a valid URL: {0}")]
    BadUrl(String),
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
    #[error("the server refused the initialize handshake ({0})")]
    NoHandshake(String),
    #[error("MCP handshake failed: {0}")]
    Handshake(String),
    #[error("spec.agent is missing")]
    MissingAgent,
    /// The agent is not connected, or ended the session (its reason).
    #[error("{0}")]
    Agent(String),
}

/// An error and its causes on one line (reqwest puts TLS and connection
/// details in the source chain, not in the top-level message), without the
/// Rust type names rmcp puts in its transport errors.
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
    without_type_names(&text)
}

/// rmcp names a transport by its Rust type in messages ("Send message
/// error Transport [rmcp::transport::worker::WorkerTransport<...>] error:
/// ..."); operators need the cause, not our types.
fn without_type_names(text: &str) -> String {
    const OPEN: &str = "Transport [";
    const CLOSE: &str = "] error: ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let Some(len) = rest[start..].find(CLOSE) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("transport error: ");
        rest = &rest[start + len + CLOSE.len()..];
    }
    out.push_str(rest);
    out.replace("Send message error transport error: ", "sending failed: ")
        .replace(", when send initialize request", " (initialize)")
}

/// The handshake's failure in words: rmcp prints some of these with Rust's
/// debug formatting (whole message structs), which says nothing to an operator.
fn handshake_failure(error: &ClientInitializeError) -> String {
    match error {
        ClientInitializeError::ExpectedInitResponse(_) | ClientInitializeError::ExpectedInitResult(_) => {
            "the server answered initialize with something other than an initialize result (is this an MCP endpoint?)".into()
        }
        ClientInitializeError::JsonRpcError(data) => format!(
            "the server refused initialize: {} (code {})",
            data.message, data.code.0
        ),
        other => error_chain(other),
    }
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
    /// The relay's raw line to this server (every session, and Streamable
    /// HTTP spoken to in 2026-07-28).
    pub wire: Option<Wire>,
    /// For an agent's server: why the agent's side ended the session, once it has.
    pub ended: Option<EndReason>,
    /// Parks and resumes the session (Streamable HTTP: `parking`).
    pub dock: Option<Dock>,
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

/// The stateless revision, for servers that refuse the handshake.
fn discover_lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

/// Opens a session in the revision this server is best spoken to in: the
/// initialize handshake (2025-11-25, or the older one the server picks)
/// wherever the server has it, because a session keeps the server's state
/// between calls, carries its requests to the user (elicitation, sampling,
/// roots) and its connection-wide logs; the stateless 2026-07-28 revision
/// (`server/discover`) only when the server refuses the handshake.
pub async fn connect(
    desired: &DesiredServer,
    handler: UpstreamClient,
    links: Links<'_>,
    credential: Option<&CredentialRef>,
) -> Result<Connected, ConnectError> {
    let Links { http, agents } = links;
    let timeout = desired.spec.timeout();
    let session: SessionSlot = Default::default();
    let ended = EndReason::default();
    // The relay's side of the transport `open` builds.
    let relay_line: LineSlot = Default::default();
    let dock: DockSlot = Default::default();
    let refresh = handler.refresh.clone();
    let attempt = async {
        let handshake = open(
            desired,
            handler.clone(),
            Links { http, agents },
            credential,
            ClientLifecycleMode::Initialize,
            (&session, &ended, &relay_line, &dock),
        );
        match handshake.await {
            Err(ConnectError::NoHandshake(why)) if desired.spec.server_type != ServerType::Sse => {
                tracing::debug!(server = %desired.name, why, "no initialize handshake: using server/discover");
                open(
                    desired,
                    handler,
                    Links { http, agents },
                    credential,
                    discover_lifecycle(),
                    (&session, &ended, &relay_line, &dock),
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
                Some(cause) => format!("sending initialize failed: {cause}"),
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
    let line = relay_line.lock().ok().and_then(|mut line| line.take());
    // A message transport spoken to in 2026-07-28 (no session) is left to
    // rmcp; over HTTP the relay stamps each request as rmcp would.
    let stateless = !protocol.has_initialize();
    let wire = line
        .filter(|line| !stateless || matches!(line, Line::Http(_)))
        .map(|line| Wire {
            protocol: protocol.to_string().into(),
            stateless,
            refresh,
            line,
        });
    let ended = (desired.spec.server_type == ServerType::Agent).then_some(ended);
    let dock = dock.lock().ok().and_then(|mut dock| dock.take());
    Ok(Connected {
        running,
        protocol,
        wire,
        ended,
        dock,
    })
}

/// What connecting reaches servers through: HTTP, and the agents' connections.
#[derive(Clone, Copy)]
pub struct Links<'a> {
    pub http: &'a reqwest::Client,
    pub agents: &'a Hub,
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
    links: Links<'_>,
    credential: Option<&CredentialRef>,
    lifecycle: ClientLifecycleMode,
    (session, ended, relay_line, dock): (&SessionSlot, &EndReason, &LineSlot, &DockSlot),
) -> Result<Running, ConnectError> {
    let http = links.http;
    let handshaking = matches!(lifecycle, ClientLifecycleMode::Initialize);
    let result = match desired.spec.server_type {
        ServerType::Stdio => {
            let (inbox, outbox) = spawn_stdio(desired, &handler.server, handler.raw_tools.clone())?;
            let transport = shared(inbox, outbox, &handler, relay_line);
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
        ServerType::StreamableHttp => {
            let url = desired
                .spec
                .url
                .as_deref()
                .ok_or(ConnectError::MissingUrl)?;
            // Parsed once: each relayed call would otherwise parse it again.
            let url = reqwest::Url::parse(url).map_err(|e| ConnectError::BadUrl(e.to_string()))?;
            let line = HttpLine {
                url,
                http: http.clone(),
                headers: header_map(desired)?,
                credential: credential.cloned(),
                session: session.clone(),
            };
            if let Ok(mut slot) = relay_line.lock() {
                *slot = Some(Line::Http(line.clone()));
            }
            let transport = HttpTransport::new(line);
            if let Ok(mut slot) = dock.lock() {
                *slot = Some(transport.dock());
            }
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
                handler.raw_tools.clone(),
            )
            .await?;
            let outbox = Arc::new(transport.outbox());
            let transport = shared(transport, outbox, &handler, relay_line);
            serve_client_with_lifecycle(handler, transport, lifecycle).await
        }
        ServerType::Agent => {
            let agent = desired
                .spec
                .agent
                .as_ref()
                .ok_or(ConnectError::MissingAgent)?;
            let tunnel = links
                .agents
                .open(&agent.name, agent.server_name(&desired.name))
                .map_err(ConnectError::Agent)?
                .with_raw_tools(handler.raw_tools.clone())
                .with_end_reason(ended.clone());
            let outbox = Arc::new(tunnel.outbox());
            let transport = shared(tunnel, outbox, &handler, relay_line);
            let result = serve_client_with_lifecycle(handler, transport, lifecycle).await;
            if let (Err(_), Some(why)) = (&result, ended.get()) {
                // The agent's side said why (no such server there, it did not start).
                return Err(ConnectError::Agent(why));
            }
            result
        }
    };
    result.map_err(|error| match handshake_refused(&error) {
        true if handshaking => ConnectError::NoHandshake(handshake_failure(&error)),
        _ => ConnectError::Handshake(handshake_failure(&error)),
    })
}

/// Where `open` leaves the relay's side of the transport it built.
type LineSlot = std::sync::Mutex<Option<Line>>;
/// Where `open` leaves the dock of the HTTP transport it built.
type DockSlot = std::sync::Mutex<Option<Dock>>;

/// rmcp's transport over a message transport, whose relay side is left in
/// `line` for the session's wire.
fn shared<I: Inbox>(
    inbox: I,
    outbox: Arc<dyn Outbox>,
    handler: &UpstreamClient,
    line: &LineSlot,
) -> Counted<Muxed<I>> {
    let transport = Muxed::new(inbox, outbox, Routes::new(handler.inflight.clone()));
    if let Ok(mut slot) = line.lock() {
        *slot = Some(Line::Messages(transport.line()));
    }
    Counted::new(transport, handler)
}

/// Whether the server answered `initialize` without accepting it (an error,
/// or something other than an initialize result): a server that may speak
/// only the stateless revision. Transport failures are not refusals.
fn handshake_refused(error: &ClientInitializeError) -> bool {
    matches!(
        error,
        ClientInitializeError::JsonRpcError(_)
            | ClientInitializeError::ExpectedInitResult(_)
            | ClientInitializeError::ExpectedInitResponse(_)
            | ClientInitializeError::NoCompatibleProtocolVersion { .. }
    )
}

fn spawn_stdio(
    desired: &DesiredServer,
    server: &Arc<str>,
    raw: RawTools,
) -> Result<(StdioInbox, Arc<dyn Outbox>), ConnectError> {
    let program = desired
        .spec
        .command
        .as_deref()
        .ok_or(ConnectError::MissingCommand)?;
    let mut command = tokio::process::Command::new(super::stdio::program_path(program));
    command.args(&desired.spec.args).envs(&desired.spec.env);
    let (inbox, outbox, stderr) =
        super::stdio::spawn(command, raw).map_err(|source| ConnectError::Spawn {
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
    Ok((inbox, Arc::new(outbox)))
}

#[cfg(test)]
mod tests {
    use super::{
        ClientInitializeError, FailureKind, handshake_failure, handshake_refused,
        without_type_names,
    };
    use rmcp::model::{ErrorData, ProtocolVersion, ServerResult};

    #[test]
    fn only_a_refused_handshake_tries_the_stateless_revision() {
        let empty: ServerResult = serde_json::from_str("{}").expect("an empty result decodes");
        let refused = [
            ClientInitializeError::JsonRpcError(ErrorData::method_not_found::<
                rmcp::model::InitializeResultMethod,
            >()),
            ClientInitializeError::ExpectedInitResult(Some(empty)),
            ClientInitializeError::NoCompatibleProtocolVersion {
                client_supported: vec![ProtocolVersion::LATEST_WITH_INITIALIZE],
                server_supported: vec![ProtocolVersion::V_2026_07_28],
            },
        ];
        for error in &refused {
            assert!(handshake_refused(error), "{error}");
        }
        let failed = [ClientInitializeError::ConnectionClosed("eof".into())];
        for error in &failed {
            assert!(!handshake_refused(error), "{error}");
        }
    }

    #[test]
    fn messages_name_the_cause_and_never_our_types() {
        let rmcp = "Send message error Transport [flotilla::fleet::delivery::Counted<rmcp::transport::worker::WorkerTransport<rmcp::transport::streamable_http_client::StreamableHttpClientWorker<X>>>] error: Client error: connection refused, when send initialize request";
        let plain = without_type_names(rmcp);
        assert_eq!(
            plain,
            "sending failed: Client error: connection refused (initialize)"
        );
        let odd = handshake_failure(&ClientInitializeError::ExpectedInitResult(None));
        assert!(
            odd.contains("something other than an initialize result"),
            "{odd}"
        );
        assert!(!odd.contains("None") && !odd.contains("::"), "{odd}");
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

    #[test]
    fn a_failed_send_on_the_gateways_own_transport_names_no_rust_type() {
        use rmcp::RoleClient;
        use rmcp::service::ServiceError;
        use rmcp::transport::DynamicTransportError;
        type Sent = crate::fleet::delivery::Counted<crate::fleet::http_transport::HttpTransport>;
        let refused = std::io::Error::other("connection refused");
        let error =
            ServiceError::TransportSend(DynamicTransportError::new::<Sent, RoleClient>(refused));
        assert!(
            error.to_string().contains("flotilla::"),
            "rmcp names the type"
        );
        let said = super::error_chain(&error);
        assert!(
            !said.contains("::") && !said.contains("Transport ["),
            "{said}"
        );
        assert!(said.contains("connection refused"), "{said}");
    }
}
