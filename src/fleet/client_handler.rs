//! The gateway's side of one upstream session: what it announces when it
//! connects, and where the upstream's notifications go (list changes refresh
//! the catalog, progress reaches the client whose request caused it, resource
//! updates reach the clients that subscribed). Elicitation and sampling
//! requests and log messages an upstream sends while serving a call are
//! relayed to the client that made the call (named by instance on fan-out).

#![allow(deprecated)] // logging and sampling (SEP-2577) are still spoken by 2025 servers

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientResult, CreateMessageRequest,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, Extensions, GetExtensions, Implementation, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, RequestId,
    ResourceUpdatedNotificationParam, ServerRequest,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, RequestContext,
};
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer};
use tokio::sync::mpsc;

pub use super::delivery::{ProgressRoute, ProgressRoutes, Tally};

/// Which of an upstream's lists changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    Prompts,
}

/// A client request being served through this upstream right now.
#[derive(Clone)]
pub struct InflightCall {
    pub client: Peer<RoleServer>,
    /// The client's own id for the request, so relayed requests reach the
    /// client on that request's stream.
    pub client_request: RequestId,
    /// The family instance, when the call fans out (named in relayed text).
    pub instance: Option<String>,
    /// The least severe log level the client wants (`None`: no logs).
    pub log_level: Option<LoggingLevel>,
    /// The notifications relayed for this call (see `delivery`).
    pub tally: Arc<Tally>,
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

    /// Sends a request to the calling client on its request's stream.
    async fn relay(
        &self,
        call: &InflightCall,
        request: ServerRequest,
    ) -> Result<ClientResult, McpError> {
        let mut request = request;
        request
            .extensions_mut()
            .insert(OriginatingRequestId(call.client_request.clone()));
        call.client.send_request(request).await.map_err(|error| {
            McpError::internal_error(
                format!("relaying to the gateway's client failed: {error}"),
                None,
            )
        })
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
        // Sampling and elicitation are relayed to the client whose call caused them.
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.elicitation = Some(Default::default());
        ClientConfig::new(
            capabilities,
            Implementation::new("flotilla", env!("CARGO_PKG_VERSION")),
        )
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
        match self
            .relay(
                &call,
                ServerRequest::ElicitRequest(ElicitRequest::new(request)),
            )
            .await?
        {
            ClientResult::ElicitResult(result) => Ok(result),
            _ => Err(McpError::internal_error(
                "the client answered elicitation with something else",
                None,
            )),
        }
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
        match self
            .relay(
                &call,
                ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params)),
            )
            .await?
        {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            _ => Err(McpError::internal_error(
                "the client answered sampling with something else",
                None,
            )),
        }
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let route = self
            .progress
            .lock()
            .ok()
            .and_then(|routes| routes.get(&params.progress_token).cloned());
        if let Some(route) = route {
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
            let sent = call.client.notify_logging_message(relayed).await;
            call.tally.handled_one();
            if sent.is_ok() {
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
