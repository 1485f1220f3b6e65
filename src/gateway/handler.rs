//! The MCP server clients talk to. Lists come from the catalog snapshot;
//! only calls, reads, prompt gets, completions and subscriptions reach an
//! upstream, through the route the catalog recorded for the exposed name.

#![allow(deprecated)] // resources/subscribe is legacy-only but still spoken by 2025 clients

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
    CompleteRequest, CompleteRequestParams, CompleteResult, ContentBlock, ErrorCode, ErrorData,
    GetPromptRequest, GetPromptRequestParams, GetPromptResponse, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    PaginatedRequestParams, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    Reference, ServerConfig, ServerResult, SetLevelRequestParams, SubscribeRequest,
    SubscribeRequestParams, UnsubscribeRequest, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler};
use tracing::Instrument as _;

use super::call_record::{CallRecord, outcome_of, outcome_of_result, plain_target};
use super::forward::{call_response, client_revision, forward};
use super::input_wait::{WaitingCalls, forward_or_wait};
use super::metrics::Outcome;
use super::revision::ClientRevision;
use super::session::server_info;
use super::state::{GatewayState, ListChange};
use super::view::{View, caller};
use super::{auth_status, confirm, fanout, overview, trace};
use crate::fleet::{Caller, Upstream, UpstreamError};
use crate::policy::{self, Verdict};

/// Cheap-to-clone MCP handler; one per client session, all sharing state.
#[derive(Clone)]
pub struct GatewayHandler {
    state: Arc<GatewayState>,
    /// Calls waiting for a 2026-07-28 client's input, shared by every handler.
    waiting: Arc<WaitingCalls>,
    /// Distinguishes client sessions (e.g. whose subscription is whose).
    session: u64,
}

impl GatewayHandler {
    pub fn new(state: Arc<GatewayState>, waiting: Arc<WaitingCalls>) -> Self {
        static SESSIONS: AtomicU64 = AtomicU64::new(1);
        Self {
            state,
            waiting,
            session: SESSIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The upstream-side view of this request's client.
    fn caller<'a>(&self, context: &'a RequestContext<RoleServer>) -> Caller<'a> {
        Caller {
            log_level: self.wanted_log_level(context),
            ..Caller::new(context)
        }
    }

    /// Which log messages the client wants: a 2026-07-28 request names its
    /// level in `_meta` (none named: no logs); a 2025 session gets what it
    /// set with `logging/setLevel`, everything before it set one.
    fn wanted_log_level(&self, context: &RequestContext<RoleServer>) -> Option<LoggingLevel> {
        if let Some(level) = context.meta.log_level() {
            return Some(level);
        }
        match client_revision(context) {
            ClientRevision::Stateless => None,
            ClientRevision::Session => Some(
                session_id(context)
                    .and_then(|session| self.state.session_log_level(session))
                    .unwrap_or(LoggingLevel::Debug),
            ),
        }
    }

    /// What the caller of this request sees.
    async fn view(&self, extensions: &rmcp::model::Extensions) -> Arc<View> {
        self.state.view(caller(extensions).as_ref()).await
    }

    fn upstream(&self, view: &View, server: &str) -> Result<Arc<Upstream>, ErrorData> {
        view.upstream(server).ok_or_else(|| {
            ErrorData::internal_error(format!("server {server:?} was just removed"), None)
        })
    }
}

/// The gateway session id the request came with (2025 revisions).
fn session_id(context: &RequestContext<RoleServer>) -> Option<&str> {
    context
        .extensions
        .get::<http::request::Parts>()?
        .headers
        .get("mcp-session-id")?
        .to_str()
        .ok()
}

/// Maps a failed upstream request to the protocol error a client should see.
fn protocol_error(error: UpstreamError) -> ErrorData {
    match error {
        UpstreamError::Rejected(data) => data,
        UpstreamError::Cancelled => ErrorData::new(ErrorCode(-32800), "request cancelled", None),
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

fn unexpected(kind: &str) -> ErrorData {
    ErrorData::internal_error(format!("upstream sent an unexpected reply to {kind}"), None)
}

impl ServerHandler for GatewayHandler {
    fn get_info(&self) -> ServerConfig {
        server_info()
    }

    /// A client's roots changed: its upstreams hear it and ask again (the
    /// question reaches whichever client has a call in flight there).
    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        let view = self.view(&context.extensions).await;
        for shared in self.state.fleet.upstreams() {
            if let Some(upstream) = view.upstream(&shared.name) {
                upstream.notify_roots_changed().await;
            }
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let user = caller(&context.extensions);
        let tools = match &user {
            Some(user) => Some(self.state.view(Some(user)).await.tools_for(Some(user))),
            None => None,
        };
        self.state.clients.register(context.peer, user, tools);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let view = self.view(&context.extensions).await;
        let user = caller(&context.extensions);
        let tools = view.tools_for(user.as_deref());
        Ok(ListToolsResult::with_all_items(overview::exposed_tools(
            &tools,
        )))
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let view = self.view(&context.extensions).await;
        let catalog = &view.catalog;
        let user = caller(&context.extensions);
        let request_trace = trace::of_request(&context.extensions);
        if let Some(trace) = request_trace {
            trace.tool(&request.name);
        }
        let record = |name: &str, arguments: Option<&rmcp::model::JsonObject>| {
            CallRecord::start(&self.state.calls, name, user.as_deref(), arguments)
                .in_trace(request_trace.map(|t| t.trace_id.clone()))
        };
        if let Some(family_tool) = catalog.family_tool(&request.name) {
            let record = record(&request.name, request.arguments.as_ref());
            return fanout::call_family_tool(
                &self.state.settings.fan_out,
                &view,
                family_tool,
                request,
                self.caller(&context),
                fanout::CallerOf {
                    user: user.as_deref(),
                    waiting: &self.waiting,
                },
                record,
                request_trace,
            )
            .await;
        }
        if request.name == overview::TOOL_NAME {
            let record = record(&request.name, request.arguments.as_ref());
            let result = overview::call(
                &self.state.fleet,
                &self.state.catalog(),
                request.arguments.as_ref(),
            );
            record.finish(outcome_of_result(&result));
            return Ok(CallToolResponse::Complete(result));
        }
        let Some(route) = catalog.tool(&request.name) else {
            if let Some(why) = auth_status::unreachable_tool(&self.state, &view, &request.name) {
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(why),
                ])));
            }
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; call tools/list for the current names",
                    request.name
                ),
                None,
            ));
        };
        let mut record = record(&request.name, request.arguments.as_ref())
            .to(plain_target(&request.name, route));
        let place = policy::place(None, &route.server);
        let confirm = match view.verdict(user.as_deref(), &request.name, &route.server, &route.name)
        {
            Verdict::Allow => None,
            Verdict::Confirm { rule } => {
                record.under_rule(&rule);
                Some(confirm::question_text(&request.name, &place, &rule))
            }
            denied @ Verdict::Deny { .. } => {
                let text = denied.denial(&request.name, &place).unwrap_or_default();
                if let Verdict::Deny { rule, .. } = &denied {
                    record.under_rule(rule);
                }
                record.finish(Outcome::Denied);
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(text),
                ])));
            }
        };
        let upstream = self.upstream(&view, &route.server)?;
        request.name = route.name.clone().into();
        let span = trace::upstream_span(
            request_trace,
            &upstream,
            None,
            "tools/call",
            Some(&route.name),
        );
        if let Some(headers) = trace::outgoing(&span) {
            trace::into_meta(&mut request.meta, &headers);
        }
        let sent = ClientRequest::CallToolRequest(CallToolRequest::new(request));
        let answer = forward_or_wait(
            &self.waiting,
            &upstream,
            sent,
            self.caller(&context),
            confirm,
        )
        .instrument(span)
        .await
        .and_then(|result| call_response(&upstream.name, result));
        record.finish(outcome_of(&answer));
        match answer {
            Ok(response) => Ok(response),
            // The tool could not run: tell the agent why, in-band, so it can act on it.
            Err(
                error @ (UpstreamError::Unavailable { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Overloaded(_)
                | UpstreamError::Transport { .. }
                | UpstreamError::Unanswered { .. }
                | UpstreamError::NotConfirmed(_)),
            ) => Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                ContentBlock::text(error.to_string()),
            ]))),
            Err(error) => Err(protocol_error(error)),
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // List changes are served; per-resource updates need the legacy
        // resources/subscribe path for now.
        let mut accepted = requested.clone();
        accepted.resource_subscriptions = None;
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.state.list_changes();
        let wants = context.accepted().clone();
        // A logged-in caller's own tools change with their own sessions, which
        // the fleet-wide broadcast does not see: watch their view too.
        let user = caller(&context.request_context().extensions);
        let mut fleet = self.state.fleet.changes();
        let mut own_tools = match &user {
            Some(user) => Some(self.state.peek_view(user).await.tools_for(Some(user))),
            None => None,
        };
        loop {
            let change = tokio::select! {
                _ = context.cancelled() => return Ok(()),
                change = changes.recv() => change,
                changed = fleet.changed(), if user.is_some() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let Some(user) = &user else { continue };
                    let tools = self.state.peek_view(user).await.tools_for(Some(user));
                    if own_tools.as_ref() == Some(&tools) {
                        continue;
                    }
                    own_tools = Some(tools);
                    Ok(ListChange {
                        tools: true,
                        resources: false,
                        prompts: false,
                    })
                }
            };
            let change = match change {
                Ok(change) => change,
                // Missed some: tell the client everything may have changed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ListChange {
                    tools: true,
                    resources: true,
                    prompts: true,
                },
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            };
            let sink = context.sink();
            let sent = async {
                if change.tools && wants.tools_list_changed == Some(true) {
                    sink.notify_tool_list_changed().await?;
                }
                if change.resources && wants.resources_list_changed == Some(true) {
                    sink.notify_resource_list_changed().await?;
                }
                if change.prompts && wants.prompts_list_changed == Some(true) {
                    sink.notify_prompt_list_changed().await?;
                }
                Ok::<_, rmcp::service::SubscriptionSendError>(())
            };
            if sent.await.is_err() {
                return Ok(());
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let user = caller(&context.extensions);
        let mut resources = self
            .view(&context.extensions)
            .await
            .catalog
            .resources
            .to_vec();
        if user.is_some() {
            resources.push(auth_status::resource());
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            self.view(&context.extensions)
                .await
                .catalog
                .resource_templates
                .to_vec(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri == auth_status::URI {
            let user = caller(&context.extensions);
            let report = auth_status::report(&self.state, user.as_ref()).await;
            return Ok(ReadResourceResponse::Complete(auth_status::contents(
                &report,
            )));
        }
        let upstream = self
            .resource_owner(&context.extensions, &request.uri)
            .await?;
        let sent = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request));
        match forward_or_wait(&self.waiting, &upstream, sent, self.caller(&context), None)
            .await
            .map_err(protocol_error)?
        {
            ServerResult::ReadResourceResult(r) => Ok(ReadResourceResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(unexpected("resources/read")),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let upstream = self
            .resource_owner(&context.extensions, &request.uri)
            .await?;
        let uri = request.uri.clone();
        let sent = ClientRequest::SubscribeRequest(SubscribeRequest::new(request));
        forward(&upstream, sent, self.caller(&context))
            .await
            .map_err(protocol_error)?;
        if let Ok(mut subscribers) = upstream.subscribers().lock() {
            let peers = subscribers.entry(uri).or_default();
            if !peers.iter().any(|(s, _)| *s == self.session) {
                peers.push((self.session, context.peer.clone()));
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let upstream = self
            .resource_owner(&context.extensions, &request.uri)
            .await?;
        let last_one = {
            let Ok(mut subscribers) = upstream.subscribers().lock() else {
                return Ok(());
            };
            let peers = subscribers.entry(request.uri.clone()).or_default();
            peers.retain(|(s, p)| *s != self.session && !p.is_transport_closed());
            let empty = peers.is_empty();
            if empty {
                subscribers.remove(&request.uri);
            }
            empty
        };
        if last_one {
            let sent = ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(request));
            forward(&upstream, sent, self.caller(&context))
                .await
                .map_err(protocol_error)?;
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(
            self.view(&context.extensions)
                .await
                .catalog
                .prompts
                .to_vec(),
        ))
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let view = self.view(&context.extensions).await;
        let Some(route) = view.catalog.prompt(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown prompt {:?}", request.name),
                None,
            ));
        };
        let upstream = self.upstream(&view, &route.server)?;
        request.name = route.name.clone();
        let sent = ClientRequest::GetPromptRequest(GetPromptRequest::new(request));
        match forward_or_wait(&self.waiting, &upstream, sent, self.caller(&context), None)
            .await
            .map_err(protocol_error)?
        {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(unexpected("prompts/get")),
        }
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.apply_log_level(request, &context).await
    }

    async fn complete(
        &self,
        mut request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let view = self.view(&context.extensions).await;
        let catalog = &view.catalog;
        let upstream = match &mut request.r#ref {
            Reference::Prompt(prompt) => {
                let Some(route) = catalog.prompt(&prompt.name) else {
                    return Ok(CompleteResult::default());
                };
                prompt.name = route.name.clone();
                self.upstream(&view, &route.server)?
            }
            Reference::Resource(template) => match catalog.resource_server(&template.uri) {
                Some(server) => self.upstream(&view, server)?,
                None => return Ok(CompleteResult::default()),
            },
            _ => return Ok(CompleteResult::default()),
        };
        let sent = ClientRequest::CompleteRequest(CompleteRequest::new(request));
        match forward(&upstream, sent, self.caller(&context))
            .await
            .map_err(protocol_error)?
        {
            ServerResult::CompleteResult(r) => Ok(r),
            _ => Err(unexpected("completion/complete")),
        }
    }
}

impl GatewayHandler {
    /// `logging/setLevel`: remembered for this session (relayed messages
    /// below it are dropped) and passed to each of the caller's upstreams
    /// that has a session-wide level (2025 revisions). A shared upstream
    /// session has one level, the last one set by any client; each client
    /// still gets only what it asked for.
    async fn apply_log_level(
        &self,
        request: SetLevelRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(session) = session_id(context) {
            self.state.set_session_log_level(session, request.level);
        }
        let view = self.view(&context.extensions).await;
        let upstreams: Vec<Arc<Upstream>> = self
            .state
            .fleet
            .upstreams()
            .iter()
            .filter_map(|shared| view.upstream(&shared.name))
            .filter(|upstream| upstream.takes_log_level())
            .collect();
        let sent = upstreams.iter().map(|upstream| async move {
            if let Err(error) = upstream.set_log_level(request.level).await {
                tracing::debug!(server = %upstream.name, %error, "upstream refused logging/setLevel");
            }
        });
        futures::future::join_all(sent).await;
        Ok(())
    }

    async fn resource_owner(
        &self,
        extensions: &rmcp::model::Extensions,
        uri: &str,
    ) -> Result<Arc<Upstream>, ErrorData> {
        let view = self.view(extensions).await;
        let server = view.catalog.resource_server(uri).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("no server in the fleet offers resource {uri:?}"),
                None,
            )
        })?;
        self.upstream(&view, server)
    }
}
