//! The gateway's side of one upstream session: what it announces when it
//! connects, and where the upstream's notifications go (list changes refresh
//! the catalog, progress reaches the client whose request caused it, resource
//! updates reach the clients that subscribed). Elicitation and sampling
//! requests and log messages an upstream sends while serving a call are
//! relayed to the client that made the call (named by instance on fan-out).

#![allow(deprecated)] // logging and sampling (SEP-2577) are still spoken by 2025 servers

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::raw_tools::RawTools;
use super::wire::ListKind;
use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientResult, CreateMessageRequest,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationCapability, Extensions, GetExtensions, Implementation,
    ListRootsRequest, ListRootsResult, LoggingLevel, LoggingMessageNotificationParam,
    ProgressNotificationParam, ProtocolVersion, RequestId, ResourceUpdatedNotificationParam,
    RootsCapabilities, ServerRequest, UrlElicitationCapability,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, RequestContext,
};
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer};
use tokio::sync::{mpsc, oneshot};

pub use super::delivery::{ProgressRoute, ProgressRoutes, Tally};

/// How the gateway reaches the client of an in-flight call.
#[derive(Clone)]
pub enum ClientLine {
    /// Through rmcp's server session (the call went through rmcp's handler).
    Peer(Peer<RoleServer>),
    /// Into a relayed call's answer stream (`gateway::relay`).
    Relayed(mpsc::Sender<LineMessage>),
    /// A 2026-07-28 client served through rmcp's handler: notifications
    /// through its peer; requests, which that revision cannot carry, into
    /// `line`, for the gateway to put to it as `input_required`.
    Asking {
        peer: Peer<RoleServer>,
        line: mpsc::Sender<LineMessage>,
    },
}

/// A message for a relayed call's client: a request (`method` and
/// `params`, answered through `answer`) or a notification (no `answer`).
pub struct LineMessage {
    pub message: serde_json::Value,
    pub answer: Option<oneshot::Sender<Result<serde_json::Value, String>>>,
}

/// What the gateway declares to upstreams. What an upstream may ask of a
/// user is relayed to the client whose call caused it: sampling,
/// elicitation (form and URL), roots. A session is shared, so it announces
/// what any client may answer; a client without the capability answers
/// with its own error. The tasks extension is not declared here: it is
/// declared per request, for a client that declared it (`gateway::relay`).
pub fn upstream_capabilities() -> ClientCapabilities {
    let mut capabilities = ClientCapabilities::default();
    capabilities.sampling = Some(Default::default());
    capabilities.elicitation = Some(
        ElicitationCapability::new()
            .with_form(Default::default())
            .with_url(UrlElicitationCapability::new()),
    );
    let mut roots = RootsCapabilities::default();
    roots.list_changed = Some(true);
    capabilities.roots = Some(roots);
    capabilities
}

/// What a client said it can be asked (its declared capabilities): the
/// gateway puts an upstream's request to a client only when it offers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientOffers {
    pub elicitation: bool,
    pub sampling: bool,
    pub roots: bool,
    /// The tasks extension (SEP-2663): the client can take a task handle
    /// in place of a `tools/call` result.
    pub tasks: bool,
}

impl ClientOffers {
    pub fn of(capabilities: &ClientCapabilities) -> Self {
        Self {
            elicitation: capabilities.elicitation.is_some(),
            sampling: capabilities.sampling.is_some(),
            roots: capabilities.roots.is_some(),
            tasks: capabilities.supports_tasks(),
        }
    }

    /// The capability a request with `method` needs, when the client lacks it.
    pub fn missing_for(&self, method: &str) -> Option<&'static str> {
        match method {
            "elicitation/create" if !self.elicitation => Some("elicitation"),
            "sampling/createMessage" if !self.sampling => Some("sampling"),
            "roots/list" if !self.roots => Some("roots"),
            _ => None,
        }
    }

    /// The error an upstream gets for a request its client cannot be asked
    /// (as a client without that capability would answer: method not found).
    pub fn refusal(missing: &str) -> String {
        format!("the gateway's client did not declare {missing}, so it cannot be asked")
    }
}

/// A client request being served through this upstream right now.
#[derive(Clone)]
pub struct InflightCall {
    pub client: ClientLine,
    /// The client's own id for the request, so relayed requests reach the
    /// client on that request's stream.
    pub client_request: RequestId,
    /// The family instance, when the call fans out (named in relayed text).
    pub instance: Option<String>,
    /// The least severe log level the client wants (`None`: no logs).
    pub log_level: Option<LoggingLevel>,
    /// The notifications relayed for this call (see `delivery`).
    pub tally: Arc<Tally>,
    /// What the client can be asked; `None` where another path checks
    /// (a relayed call's client is checked by the relay).
    pub offers: Option<ClientOffers>,
}

impl InflightCall {
    /// Whether a log message of `level` is relayed to this call's client.
    pub fn wants_log(&self, level: LoggingLevel) -> bool {
        self.log_level
            .is_some_and(|wanted| severity(level) >= severity(wanted))
    }
}

/// The client request an upstream-initiated message belongs to: the one
/// whose response stream carried it, else the only one in flight.
pub fn call_of(inflight: &InflightCalls, extensions: &Extensions) -> Option<InflightCall> {
    let calls = inflight.lock().ok()?;
    if let Some(InboundStreamOrigin::OutboundRequest(id)) = extensions.get::<InboundStreamOrigin>()
        && let Some(call) = calls.get(id)
    {
        return Some(call.clone());
    }
    match calls.len() {
        1 => calls.values().next().cloned(),
        _ => None,
    }
}

/// In-flight client requests, keyed by the gateway's upstream request id.
pub type InflightCalls = Arc<Mutex<HashMap<RequestId, InflightCall>>>;

/// Subscribed resource URIs of one upstream and the client sessions
/// (gateway session number, peer) that asked.
pub type ResourceSubscribers = Arc<Mutex<HashMap<String, Vec<(u64, Peer<RoleServer>)>>>>;

/// One upstream session's client handler.
#[derive(Clone)]
pub struct UpstreamClient {
    pub server: Arc<str>,
    pub progress: ProgressRoutes,
    pub subscribers: ResourceSubscribers,
    pub inflight: InflightCalls,
    pub refresh: mpsc::UnboundedSender<ListKind>,
    /// Tool lists as the upstream wrote them (stdio and legacy SSE).
    pub raw_tools: RawTools,
}

impl UpstreamClient {
    /// The client request an upstream-initiated message belongs to: the one
    /// whose response stream carried it, else the only one in flight.
    fn caller_of(&self, extensions: &Extensions) -> Option<InflightCall> {
        call_of(&self.inflight, extensions)
    }

    fn label(&self, call: &InflightCall) -> String {
        call.instance
            .clone()
            .unwrap_or_else(|| self.server.to_string())
    }

    /// Sends a request to the calling client on its request's stream and
    /// returns its answer, as `pick` finds it in rmcp's result (or decoded
    /// from the JSON a relayed call's client sent).
    async fn relay<T: serde::de::DeserializeOwned>(
        &self,
        call: &InflightCall,
        request: ServerRequest,
        pick: fn(ClientResult) -> Option<T>,
    ) -> Result<T, McpError> {
        let failed = |error: String| {
            McpError::internal_error(
                format!("relaying to the gateway's client failed: {error}"),
                None,
            )
        };
        let other = || McpError::internal_error("the client answered with something else", None);
        let method = match &request {
            ServerRequest::ElicitRequest(_) => "elicitation/create",
            ServerRequest::CreateMessageRequest(_) => "sampling/createMessage",
            ServerRequest::ListRootsRequest(_) => "roots/list",
            _ => "",
        };
        if let Some(missing) = call.offers.and_then(|o| o.missing_for(method)) {
            return Err(McpError::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                ClientOffers::refusal(missing),
                None,
            ));
        }
        match &call.client {
            ClientLine::Peer(peer) => {
                let mut request = request;
                request
                    .extensions_mut()
                    .insert(OriginatingRequestId(call.client_request.clone()));
                // Sent from a task of its own: in this one rmcp would mark
                // the request as belonging to the upstream's request (its
                // task-local), not to the client's call, and the client's
                // transport would put it on the standalone stream instead of
                // the call's own.
                let peer = peer.clone();
                let result = tokio::spawn(async move { peer.send_request(request).await })
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()))?;
                pick(result).ok_or_else(other)
            }
            ClientLine::Relayed(line) | ClientLine::Asking { line, .. } => {
                let message = serde_json::to_value(&request).map_err(|e| failed(e.to_string()))?;
                let (answer, answered) = oneshot::channel();
                line.send(LineMessage {
                    message,
                    answer: Some(answer),
                })
                .await
                .map_err(|_| failed("the call has ended".into()))?;
                let value = answered
                    .await
                    .map_err(|_| failed("the call has ended".into()))?
                    .map_err(failed)?;
                serde_json::from_value(value).map_err(|_| other())
            }
        }
    }

    fn no_caller(&self, what: &str) -> McpError {
        McpError::invalid_request(
            format!(
                "{what} from server {:?} matches no client request in flight",
                self.server
            ),
            None,
        )
    }
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        let capabilities = upstream_capabilities();
        // `initialize` offers the newest handshake revision (2026-07-28 has
        // no handshake; a server that speaks it is reached by server/discover).
        ClientConfig::new(
            capabilities,
            Implementation::new("flotilla", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn create_elicitation(
        &self,
        mut request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let call = self
            .caller_of(&context.extensions)
            .ok_or_else(|| self.no_caller("an elicitation request"))?;
        let label = self.label(&call);
        match &mut request {
            ElicitRequestParams::FormElicitationParams { message, .. }
            | ElicitRequestParams::UrlElicitationParams { message, .. } => {
                *message = format!("[{label}] {message}");
            }
            _ => {}
        }
        self.relay(
            &call,
            ServerRequest::ElicitRequest(ElicitRequest::new(request)),
            |result| match result {
                ClientResult::ElicitResult(result) => Some(result),
                _ => None,
            },
        )
        .await
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        let call = self
            .caller_of(&context.extensions)
            .ok_or_else(|| self.no_caller("a roots/list request"))?;
        self.relay(
            &call,
            ServerRequest::ListRootsRequest(ListRootsRequest::default()),
            |result| match result {
                ClientResult::ListRootsResult(result) => Some(result),
                _ => None,
            },
        )
        .await
    }

    async fn create_message(
        &self,
        mut params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let call = self
            .caller_of(&context.extensions)
            .ok_or_else(|| self.no_caller("a sampling request"))?;
        if call.instance.is_some() {
            let note = format!(
                "(Requested by instance {} of the fleet.)",
                self.label(&call)
            );
            params.system_prompt = Some(match params.system_prompt.take() {
                Some(prompt) => format!("{prompt}\n{note}"),
                None => note,
            });
        }
        self.relay(
            &call,
            ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params)),
            |result| match result {
                ClientResult::CreateMessageResult(result) => Some(*result),
                _ => None,
            },
        )
        .await
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // None yet: held for the route the request is about to register.
        if let Some(route) = self.progress.route_or_hold(&params) {
            let mut forwarded = params;
            forwarded.progress_token = route.client_token.clone();
            if let Err(error) = route.client.notify_progress(forwarded).await {
                tracing::debug!(server = %self.server, %error, "client went away before progress");
            }
            route.tally.handled_one();
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let peers = self
            .subscribers
            .lock()
            .ok()
            .and_then(|subs| subs.get(&params.uri).cloned())
            .unwrap_or_default();
        for (_, peer) in peers {
            let _ = peer.notify_resource_updated(params.clone()).await;
        }
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        context: NotificationContext<RoleClient>,
    ) {
        if let Some(call) = self.caller_of(&context.extensions)
            && call.wants_log(params.level)
        {
            let mut relayed = params.clone();
            let label = self.label(&call);
            relayed.logger = Some(match &params.logger {
                Some(logger) => format!("{label}/{logger}"),
                None => label,
            });
            let sent = match &call.client {
                ClientLine::Peer(peer) | ClientLine::Asking { peer, .. } => {
                    peer.notify_logging_message(relayed).await.is_ok()
                }
                ClientLine::Relayed(line) => serde_json::to_value(&relayed)
                    .ok()
                    .map(|params| LineMessage {
                        message: serde_json::json!({"method": "notifications/message", "params": params}),
                        answer: None,
                    })
                    .is_some_and(|message| line.try_send(message).is_ok()),
            };
            call.tally.handled_one();
            if sent {
                return;
            }
        }
        let logger = params.logger.as_deref().unwrap_or("");
        match params.level {
            LoggingLevel::Debug | LoggingLevel::Info | LoggingLevel::Notice => {
                tracing::debug!(server = %self.server, logger, data = %params.data, "upstream log")
            }
            _ => {
                tracing::info!(server = %self.server, logger, level = ?params.level, data = %params.data, "upstream log")
            }
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Tools);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Resources);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Prompts);
    }
}

/// RFC 5424 order, least severe first.
pub fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}
