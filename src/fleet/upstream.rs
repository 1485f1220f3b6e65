//! One downstream server: its supervisor task (connect, back off, health
//! check, refresh lists on change) and the request path through its session.
//!
//! While an upstream is down its last known lists stay in the catalog, so an
//! agent's tool list does not flap; calls to it get a clear error naming the
//! server, its state and its last error.

#![allow(deprecated)] // logging (SEP-2577) is still spoken by 2025 servers and clients

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use rmcp::model::{
    CancelledNotificationParam, ClientRequest, LoggingLevel, PingRequest, Prompt,
    RequestMetaObject, Resource, ResourceTemplate, ServerResult, SetLevelRequest,
    SetLevelRequestParams, Tool,
};
use rmcp::service::{PeerRequestOptions, RequestContext, ServiceError};
use rmcp::{Peer, RoleClient, RoleServer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::client_handler::{
    ClientLine, InflightCall, InflightCalls, LineMessage, ProgressRoute, ProgressRoutes,
    ResourceSubscribers, UpstreamClient,
};
use super::connect::{Connected, FailureKind, Links, connect};
use super::credential::CredentialRef;
use super::delivery::Tally;
use super::limits::{CallGate, CallLimits, CallPermit, LIMITED_METHODS, limit_tool_result};
use super::list_changes::{self, ListChanges};
use super::listing::{ToolExtras, list_tools};
use super::parking::{Event, PeerCell, Service};
use super::raw_tools::RawTools;
use super::wire::{ListKind, Wire, WireError};
use super::{FleetSettings, UpstreamError};
use crate::api::ServerState;
use crate::source::DesiredServer;

/// The client request on whose behalf an upstream request is made.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub context: &'a RequestContext<RoleServer>,
    /// Relay the upstream's progress under the client's token. Off for
    /// fan-out, where several upstreams would interleave under one token.
    pub relay_progress: bool,
    /// The family instance being called, named in relayed requests.
    pub instance: Option<&'a str>,
    /// The least severe log level the client wants relayed (`None`: no logs).
    pub log_level: Option<LoggingLevel>,
    /// Where the upstream's requests to a client that cannot be sent any
    /// (2026-07-28) go instead (see `ClientLine::Asking`).
    pub asking: Option<&'a mpsc::Sender<LineMessage>>,
}

impl<'a> Caller<'a> {
    pub fn new(context: &'a RequestContext<RoleServer>) -> Self {
        Self {
            context,
            relay_progress: true,
            instance: None,
            log_level: None,
            asking: None,
        }
    }
}

/// What an upstream offers, as last listed.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub tools: Vec<Tool>,
    /// What rmcp's `Tool` drops or writes differently, for tools listed raw.
    pub tool_extras: ToolExtras,
    pub resources: Vec<Resource>,
    pub resource_templates: Vec<ResourceTemplate>,
    pub prompts: Vec<Prompt>,
    /// The server announced the tasks extension (SEP-2663,
    /// `io.modelcontextprotocol/tasks`) in its capabilities, on a session
    /// the relay can use (Streamable HTTP with a handshake revision).
    pub task_extension: bool,
}

/// Connection health as the supervisor last saw it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub state: ServerState,
    pub last_error: Option<String>,
    pub last_connected: Option<chrono::DateTime<chrono::Utc>>,
    pub next_retry: Option<Instant>,
    pub protocol_version: Option<String>,
    /// What the last failure was, when the state is a failure.
    pub failure: Option<FailureKind>,
    /// Sessions established since the server was added (the first, then
    /// every reconnect).
    pub connects: u64,
}

/// Whose session an upstream is, and whose call limits it takes.
pub struct SessionOwner {
    /// A user's own session to an SSO server: that user's token (`None`:
    /// the server's shared session).
    pub credential: Option<CredentialRef>,
    /// The server's call limits, shared by all its sessions.
    pub gate: Arc<CallGate>,
}

/// A supervised downstream server.
pub struct Upstream {
    pub name: Arc<str>,
    desired: ArcSwap<DesiredServer>,
    /// rmcp's session: its peer while awake (see `parking`).
    peer: PeerCell,
    /// The relay's raw line on the live session, when it has one.
    wire: ArcSwapOption<Wire>,
    inventory: ArcSwap<Inventory>,
    health: Mutex<Health>,
    progress: ProgressRoutes,
    subscribers: ResourceSubscribers,
    inflight: InflightCalls,
    changed: Arc<watch::Sender<u64>>,
    cancel: CancellationToken,
    /// Set for a user's own session to an SSO server: that user's token.
    credential: Option<CredentialRef>,
    /// Tool lists as written, where rmcp's transport reads them (no wire).
    raw_tools: RawTools,
    /// The server's call limits (`spec.limits`), shared with every session to it.
    gate: Arc<CallGate>,
}

impl Upstream {
    /// Starts supervising `desired`; the task ends when [`Upstream::stop`] is called.
    /// `inventory` seeds the lists (a replaced server keeps its tools listed
    /// while the new session connects, so an edit does not make them flap).
    pub fn start(
        desired: DesiredServer,
        inventory: Arc<Inventory>,
        http: reqwest::Client,
        settings: FleetSettings,
        changed: Arc<watch::Sender<u64>>,
        parent: &CancellationToken,
        owner: SessionOwner,
    ) -> Arc<Self> {
        let SessionOwner { credential, gate } = owner;
        let upstream = Arc::new(Self {
            name: desired.name.as_str().into(),
            desired: ArcSwap::from_pointee(desired),
            peer: PeerCell::default(),
            wire: ArcSwapOption::empty(),
            inventory: ArcSwap::new(inventory),
            health: Mutex::new(Health::default()),
            progress: Default::default(),
            raw_tools: Default::default(),
            subscribers: Default::default(),
            inflight: Default::default(),
            changed,
            cancel: parent.child_token(),
            credential,
            gate,
        });
        let auto_start = upstream.desired().spec.auto_start.unwrap_or(true);
        let sso = upstream.desired().spec.sso_mode();
        if let (Some(mode), None) = (sso, &upstream.credential) {
            // The shared entry of an SSO server never connects: each user
            // gets their own session, with their own token.
            upstream.set_health(
                ServerState::AuthRequired,
                Some(format!(
                    "connects per user with the user's own token (SSO: {mode:?}); log in through the gateway"
                )),
                None,
            );
        } else if auto_start {
            tokio::spawn(upstream.clone().supervise(http, settings));
        } else {
            upstream.set_health(
                ServerState::Stopped,
                Some("autoStart is false".into()),
                None,
            );
        }
        upstream
    }

    /// Closes the session (killing a stdio child) and ends supervision.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub fn desired(&self) -> Arc<DesiredServer> {
        self.desired.load_full()
    }

    /// Replaces metadata that needs no reconnect (labels, generation, origin).
    pub fn update_metadata(&self, desired: DesiredServer) {
        self.desired.store(Arc::new(desired));
        self.bump();
    }

    pub fn inventory(&self) -> Arc<Inventory> {
        self.inventory.load_full()
    }

    pub fn health(&self) -> Health {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The credential of a user's own session (`None` for shared sessions).
    pub fn credential(&self) -> Option<&CredentialRef> {
        self.credential.as_ref()
    }

    pub fn subscribers(&self) -> &ResourceSubscribers {
        &self.subscribers
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn set_health(&self, state: ServerState, error: Option<String>, next_retry: Option<Instant>) {
        if let Ok(mut health) = self.health.lock() {
            if state == ServerState::Connected {
                health.last_connected = Some(chrono::Utc::now());
                health.failure = None;
                health.connects += 1;
            }
            health.state = state;
            if error.is_some() || state == ServerState::Connected {
                health.last_error = error;
            }
            health.next_retry = next_retry;
            // Counted while the new state is still private: whoever sees
            // it (readiness) also sees that the catalog is not built from
            // it yet.
            self.bump();
        }
    }

    async fn supervise(self: Arc<Self>, http: reqwest::Client, settings: FleetSettings) {
        let _reported = PanicReport(self.clone());
        let mut backoff = settings.backoff();
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            self.set_health(ServerState::Connecting, None, None);
            let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
            let handler = UpstreamClient {
                server: self.name.clone(),
                progress: self.progress.clone(),
                subscribers: self.subscribers.clone(),
                inflight: self.inflight.clone(),
                refresh: refresh_tx,
                raw_tools: self.raw_tools.clone(),
            };
            let desired = self.desired();
            // An agent's server is retried as soon as its agent (re)connects.
            let mut arrival = desired
                .spec
                .agent
                .as_ref()
                .map(|agent| settings.agents.arrivals(&agent.name));
            let links = Links {
                http: &http,
                agents: &settings.agents,
            };
            // Parking builds each woken service's handler from this one.
            let handler_for_wakes = handler.clone();
            // Boxed, as are the session's other occasional steps below: the
            // supervisor's task stays the size of its idle wait (one per
            // upstream, for as long as the upstream is there).
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => break,
                attempt = Box::pin(connect(&desired, handler, links, self.credential.as_ref())) => attempt,
            };
            let started = Instant::now();
            let failure = match attempt {
                Err(error) => super::connect::error_chain(&error),
                Ok(connected) => {
                    Box::pin(self.serve(connected, handler_for_wakes, refresh_rx, &settings)).await
                }
            };
            if self.cancel.is_cancelled() {
                break;
            }
            if started.elapsed() > settings.backoff_max {
                // It held for a while: the next failure starts from a short delay again.
                backoff = settings.backoff();
            }
            let delay = backoff.next().unwrap_or(settings.backoff_max);
            let kind = FailureKind::of(&failure);
            tracing::warn!(server = %self.name, error = %failure, kind = kind.reason(), retry_in_ms = delay.as_millis() as u64, "upstream unavailable");
            if let Ok(mut health) = self.health.lock() {
                health.failure = Some(kind);
            }
            let state = match kind {
                FailureKind::AuthRequired => ServerState::AuthRequired,
                _ => ServerState::Failed,
            };
            self.set_health(state, Some(failure), Some(Instant::now() + delay));
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = agent_arrived(arrival.as_mut()) => {
                    tracing::info!(server = %self.name, "its agent connected; connecting now");
                }
            }
        }
        self.peer.set(None);
        self.wire.store(None);
        self.set_health(ServerState::Stopped, None, None);
    }

    /// Runs one connected session until it fails or supervision stops;
    /// returns why it ended.
    async fn serve(
        &self,
        connected: Connected,
        handler: UpstreamClient,
        mut refresh: mpsc::UnboundedReceiver<ListKind>,
        settings: &FleetSettings,
    ) -> String {
        let Connected {
            running,
            protocol,
            wire,
            ended,
            dock,
        } = connected;
        let peer = running.peer().clone();
        let timeout = self.desired().spec.timeout();
        let mut service = Service::new(running, dock, handler);
        match Box::pin(fetch_inventory(
            &peer,
            wire.as_ref(),
            &self.raw_tools,
            timeout,
        ))
        .await
        {
            Ok(inventory) => self.inventory.store(Arc::new(inventory)),
            Err(error) => {
                service.end().await;
                let error = super::connect::error_chain(&error);
                return format!("listing its capabilities failed: {error}");
            }
        }
        if let Ok(mut health) = self.health.lock() {
            health.protocol_version = Some(protocol.to_string());
        }
        self.peer.set(Some(peer.clone()));
        self.wire.store(wire.map(Arc::new));
        self.set_health(ServerState::Connected, None, None);
        tracing::info!(server = %self.name, protocol = %protocol, tools = self.inventory().tools.len(), "upstream connected");
        let stateless = !protocol.has_initialize();
        // 2026-07-28 has no standing stream: list changes come through a
        // subscriptions/listen request, where the server offers one.
        let mut listen = if stateless {
            let wire = self.wire.load_full();
            Box::pin(list_changes::listen(&self.name, &peer, wire.as_deref())).await
        } else {
            None
        };
        drop(peer);
        let mut health_check = tokio::time::interval(settings.ping_interval);
        health_check.tick().await;
        // rmcp's service is parked once unused for `park_after` (not while a
        // listen request of its own holds it).
        let park_after = settings
            .park_after
            .filter(|_| !matches!(listen, Some(ListChanges::Rmcp(_))));
        let mut park_check = tokio::time::interval(park_after.unwrap_or(Duration::from_secs(3600)));
        park_check.tick().await;
        let reason = loop {
            tokio::select! {
                notification = list_changes::next_change(&mut listen) => match notification {
                    Some(kind) => {
                        if let Err(error) = Box::pin(self.refresh(&mut service, &[kind], timeout)).await {
                            tracing::warn!(server = %self.name, %error, "refreshing lists failed");
                        }
                    }
                    None => listen = None,
                },
                _ = self.cancel.cancelled() => break String::new(),
                event = service.next_event(&self.peer) => match event {
                    Event::Closed(quit) => break match ended.as_ref().and_then(|e| e.get()) {
                        Some(why) => why,
                        None => format!("session closed ({})", describe_quit(quit)),
                    },
                    Event::WakeRequested => service.wake(&self.peer, None),
                    Event::Message(Some(message)) => service.wake(&self.peer, Some(message)),
                    Event::Message(None) => break "the server closed the session's streams".into(),
                },
                _ = park_check.tick(), if park_after.is_some() => {
                    if let (Some(idle), false) = (park_after, service.is_parked()) {
                        match service.park_if_idle(&self.peer, idle).await {
                            Ok(true) => settings.freed.note(),
                            Ok(false) => {}
                            Err(why) => break why,
                        }
                    }
                }
                _ = health_check.tick() => {
                    let wire = self.wire.load_full();
                    match Box::pin(self.probe(&mut service, wire.as_deref(), stateless, timeout)).await {
                        Err(error) => break format!("health check failed: {error}"),
                        // A stateless probe lists tools: a change it reveals is applied too.
                        Ok(Some((tools, extras))) if tools != self.inventory().tools => {
                            let mut next = (*self.inventory()).clone();
                            next.tools = tools;
                            next.tool_extras = extras;
                            self.inventory.store(Arc::new(next));
                            self.bump();
                        }
                        Ok(_) => {}
                    }
                }
                Some(kind) = refresh.recv() => {
                    // Coalesce a burst of list_changed into one refresh.
                    let mut kinds = vec![kind];
                    while let Ok(more) = refresh.try_recv() { kinds.push(more); }
                    if let Err(error) = Box::pin(self.refresh(&mut service, &kinds, timeout)).await {
                        tracing::warn!(server = %self.name, %error, "refreshing lists failed");
                    }
                }
            }
        };
        self.peer.set(None);
        self.wire.store(None);
        drop(listen);
        service.end().await;
        reason
    }

    /// Health probe. On a Streamable HTTP session (its wire) the probe is
    /// written on the wire, so a parked session stays parked: `ping`, or for
    /// 2026-07-28, which removed ping, a cheap `tools/list` (whose tools are
    /// returned). A session the wire finds gone is probed through rmcp,
    /// whose transport opens it again. Other transports: through rmcp.
    async fn probe(
        &self,
        service: &mut Service,
        wire: Option<&Wire>,
        stateless: bool,
        timeout: Duration,
    ) -> Result<Option<(Vec<Tool>, ToolExtras)>, String> {
        if let Some(wire) = wire.filter(|w| w.is_http()) {
            let probed = if stateless {
                list_tools(wire, timeout).await.map(Some)
            } else {
                let ping = wire.ask("ping", serde_json::json!({}), timeout).await;
                ping.map(|_| None)
            };
            match probed {
                Ok(found) => return Ok(found),
                Err(WireError::Failed(why)) => return Err(why),
                Err(WireError::NotDelivered(why)) => {
                    tracing::debug!(server = %self.name, why, "probing through rmcp's session");
                }
            }
        }
        let Some(peer) = service.peer(&self.peer) else {
            return Err("the session is gone".into());
        };
        let probed = if stateless {
            with_timeout(timeout, peer.list_all_tools())
                .await
                .map(|tools| Some((tools, ToolExtras::default())))
        } else {
            with_timeout(
                timeout,
                peer.send_request(ClientRequest::PingRequest(PingRequest::default())),
            )
            .await
            .map(|_| None)
        };
        probed.map_err(|error| super::connect::error_chain(&error))
    }

    async fn refresh(
        &self,
        service: &mut Service,
        kinds: &[ListKind],
        timeout: Duration,
    ) -> Result<(), ServiceError> {
        let Some(peer) = service.peer(&self.peer) else {
            return Err(ServiceError::TransportClosed);
        };
        let peer = &*peer;
        let mut next = (*self.inventory()).clone();
        if kinds.contains(&ListKind::Tools) {
            let wire = self.wire.load_full();
            (next.tools, next.tool_extras) =
                tools(peer, wire.as_deref(), &self.raw_tools, timeout).await?;
        }
        if kinds.contains(&ListKind::Resources) {
            next.resources = with_timeout(timeout, peer.list_all_resources()).await?;
            next.resource_templates =
                with_timeout(timeout, peer.list_all_resource_templates()).await?;
        }
        if kinds.contains(&ListKind::Prompts) {
            next.prompts = with_timeout(timeout, peer.list_all_prompts()).await?;
        }
        tracing::info!(server = %self.name, ?kinds, tools = next.tools.len(), "upstream lists refreshed");
        self.inventory.store(Arc::new(next));
        self.bump();
        Ok(())
    }

    /// Sends one request through this upstream's session on behalf of a
    /// client request: progress is relayed to that client, the client's
    /// cancellation is relayed upstream, and `spec.timeout` bounds the wait
    /// (extended while progress keeps arriving). With `spec.limits`: a call
    /// takes one of the server's concurrency slots first (waiting in its
    /// queue), `callTimeout` bounds a client's request in all, and a tool
    /// result over `maxOutputBytes` is cut with a note.
    pub async fn request(
        &self,
        request: ClientRequest,
        caller: Option<Caller<'_>>,
    ) -> Result<ServerResult, UpstreamError> {
        if !self.peer.is_live() {
            return Err(self.unavailable());
        }
        let limits = self.gate.limits();
        let _slot = match caller {
            // A client that gives up while its call waits for a slot leaves the queue.
            Some(caller) => tokio::select! {
                slot = self.admit(request.method()) => slot?,
                _ = caller.context.ct.cancelled() => return Err(UpstreamError::Cancelled),
            },
            None => None,
        };
        match (
            self.send(request, caller, limits).await?,
            limits.max_output_bytes,
        ) {
            (ServerResult::CallToolResult(result), Some(max)) => {
                Ok(ServerResult::CallToolResult(self.limit_output(result, max)))
            }
            (other, _) => Ok(other),
        }
    }

    /// A concurrency slot for a client's `method` on this server, when the
    /// method takes one (see [`LIMITED_METHODS`]) and the server has a limit.
    pub async fn admit(&self, method: &str) -> Result<Option<CallPermit>, UpstreamError> {
        if !LIMITED_METHODS.contains(&method) {
            return Ok(None);
        }
        self.gate
            .admit()
            .await
            .map(Some)
            .map_err(UpstreamError::Overloaded)
    }

    /// The server's call limits (`spec.limits`) in force.
    pub fn call_limits(&self) -> CallLimits {
        self.gate.limits()
    }

    /// Whether the session is parked now (see `parking`): connected, with
    /// rmcp's service ended until the next use.
    pub fn is_parked(&self) -> bool {
        self.peer.is_parked()
    }

    /// With a concurrency limit: (calls running, calls waiting, the limit),
    /// all of the server's sessions together.
    pub fn call_load(&self) -> Option<(usize, usize, usize)> {
        let max = self.gate.limits().max_concurrency?;
        Some((self.gate.running(), self.gate.waiting(), max))
    }

    /// `result` held to `max` bytes (see [`limit_tool_result`]).
    fn limit_output(
        &self,
        result: rmcp::model::CallToolResult,
        max: usize,
    ) -> rmcp::model::CallToolResult {
        let Ok(mut value) = serde_json::to_value(&result) else {
            return result;
        };
        if !limit_tool_result(&mut value, max, &self.name) {
            return result;
        }
        tracing::debug!(server = %self.name, max, "tool result cut at spec.limits.maxOutputBytes");
        serde_json::from_value(value).unwrap_or(result)
    }

    async fn send(
        &self,
        request: ClientRequest,
        caller: Option<Caller<'_>>,
        limits: CallLimits,
    ) -> Result<ServerResult, UpstreamError> {
        let client = caller.as_ref().map(|c| c.context);
        let Some(peer) = self.peer.acquire(self.timeout()).await else {
            return Err(self.unavailable());
        };
        let (timeout, mut options, setting) = match limits.call_timeout.filter(|_| caller.is_some())
        {
            // A client's request, in all, progress or not.
            Some(timeout) => (
                timeout,
                PeerRequestOptions::with_timeout(timeout),
                "spec.limits.callTimeout",
            ),
            None => {
                let timeout = self.desired().spec.timeout();
                let options = PeerRequestOptions::with_timeout(timeout).reset_timeout_on_progress();
                (timeout, options, "spec.timeout")
            }
        };
        // 2026-07-28 servers log only for requests that opt in, at the level named.
        if let Some(level) = caller.as_ref().and_then(|c| c.log_level)
            && speaks_stateless(&peer)
        {
            let mut meta = RequestMetaObject::new();
            meta.set_log_level(level);
            options = options.with_meta(meta);
        }
        let tally = Arc::new(Tally::default());
        // The call is registered before it is sent: a server may ask its
        // client something (on stdio, legacy SSE or a tunnel, attributed to the only
        // call in flight) before the send has returned the request's id.
        static PENDING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut inflight = caller.as_ref().map(|c| {
            let n = PENDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            InflightGuard::insert(
                &self.inflight,
                rmcp::model::RequestId::String(format!("flotilla-pending-{n}").into()),
                InflightCall {
                    client: match c.asking {
                        Some(line) => ClientLine::Asking {
                            peer: c.context.peer.clone(),
                            line: line.clone(),
                        },
                        None => ClientLine::Peer(c.context.peer.clone()),
                    },
                    client_request: c.context.id.clone(),
                    instance: c.instance.map(str::to_string),
                    log_level: c.log_level,
                    tally: tally.clone(),
                    offers: Some(offers_of(c)),
                },
            )
        });
        let handle = peer
            .send_request_with_option(request, options)
            .await
            .map_err(|e| self.service_error(e, timeout, setting))?;
        let route = caller
            .as_ref()
            .filter(|c| c.relay_progress)
            .and_then(|c| c.context.meta.get_progress_token().map(|t| (c.context, t)));
        let _route = match route {
            Some((ctx, client_token)) => {
                let (guard, early) = RouteGuard::insert(
                    &self.progress,
                    handle.progress_token.clone(),
                    ProgressRoute {
                        client: ctx.peer.clone(),
                        client_token: client_token.clone(),
                        tally: tally.clone(),
                    },
                );
                // Progress the upstream sent before the route existed.
                for mut early in early {
                    early.progress_token = client_token.clone();
                    let _ = ctx.peer.notify_progress(early).await;
                }
                Some(guard)
            }
            None => None,
        };
        let request_id = handle.id.clone();
        // Now under its id, which the messages on its own stream name.
        if let Some(guard) = inflight.as_mut() {
            guard.rekey(request_id.clone());
        }
        let cancelled = async {
            match client {
                Some(ctx) => ctx.ct.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = handle.await_response() => {
                // What the upstream sent before the response reaches the client before it.
                tally.settle().await;
                result.map_err(|e| self.service_error(e, timeout, setting))
            }
            _ = cancelled => {
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(
                        Some(request_id),
                        Some("cancelled by the client".into()),
                    ))
                    .await;
                Err(UpstreamError::Cancelled)
            }
        }
    }

    /// Registers a relayed call as in flight on this upstream, so requests
    /// and log messages the upstream sends outside the call's own stream
    /// (on its session's standalone stream) reach that call's client while
    /// it is the only call in flight. Ends when the returned value drops.
    pub fn track_relayed(
        &self,
        instance: Option<String>,
        log_level: Option<LoggingLevel>,
    ) -> RelayedCall {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = rmcp::model::RequestId::String(format!("relayed-{n}").into());
        let (line, messages) = mpsc::channel(16);
        let guard = InflightGuard::insert(
            &self.inflight,
            id.clone(),
            InflightCall {
                client: ClientLine::Relayed(line),
                client_request: id,
                instance,
                log_level,
                tally: Arc::default(),
                offers: None,
            },
        );
        RelayedCall {
            _guard: guard,
            messages,
        }
    }

    /// The raw line for relaying a request to the server, if the live
    /// session has one (see `connect::Connected::wire`).
    pub fn wire(&self) -> Option<Arc<Wire>> {
        self.wire.load_full()
    }

    /// The spec's request timeout (`spec.timeout`, between messages).
    pub fn timeout(&self) -> Duration {
        self.desired().spec.timeout()
    }

    /// Tells the upstream that the roots changed (where it has a session):
    /// on a Streamable HTTP session's wire, which leaves a parked session
    /// parked, else through rmcp.
    pub async fn notify_roots_changed(&self) {
        let outcome = match self
            .wire()
            .filter(|w| w.is_http() && w.lifecycle_meta().is_none())
        {
            Some(wire) => {
                let body = r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#;
                wire.deliver(body.into()).await.map_err(|e| e.to_string())
            }
            None => match self.peer.acquire(self.timeout()).await {
                Some(peer) => peer
                    .notify_roots_list_changed()
                    .await
                    .map_err(|e| super::connect::error_chain(&e)),
                None => Ok(()),
            },
        };
        if let Err(error) = outcome {
            tracing::debug!(server = %self.name, %error, "roots/list_changed not delivered");
        }
    }

    /// Sets the session's log level (`logging/setLevel`): on the wire of a
    /// Streamable HTTP session, which leaves a parked session parked, else
    /// (or when the server no longer knows the session) through rmcp, whose
    /// transport opens it again. See [`Upstream::takes_log_level`].
    pub async fn set_log_level(&self, level: LoggingLevel) -> Result<(), String> {
        if let Some(wire) = self.wire().filter(|w| w.is_http()) {
            let params = serde_json::json!({ "level": level });
            match wire.ask("logging/setLevel", params, self.timeout()).await {
                Ok(_) => return Ok(()),
                Err(WireError::Failed(why)) => return Err(why),
                Err(WireError::NotDelivered(_)) => {}
            }
        }
        let request =
            ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(level)));
        self.request(request, None)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// Whether this upstream's session has `logging/setLevel` (a 2025
    /// revision that announced the logging capability).
    pub fn takes_log_level(&self) -> bool {
        self.peer.info().is_some_and(|info| {
            info.protocol_version.has_initialize() && info.capabilities.logging.is_some()
        })
    }

    fn unavailable(&self) -> UpstreamError {
        let health = self.health();
        UpstreamError::Unavailable {
            server: self.name.to_string(),
            state: health.state,
            last_error: health.last_error,
            retry_in: health
                .next_retry
                .map(|at| at.saturating_duration_since(Instant::now())),
        }
    }

    fn service_error(
        &self,
        error: ServiceError,
        timeout: Duration,
        setting: &'static str,
    ) -> UpstreamError {
        match error {
            ServiceError::McpError(data) => UpstreamError::Rejected(data),
            ServiceError::Timeout { .. } => UpstreamError::Timeout {
                server: self.name.to_string(),
                after: timeout,
                setting,
            },
            ServiceError::Cancelled { .. } => UpstreamError::Cancelled,
            // rmcp names its transport by Rust type: said in words instead.
            other => UpstreamError::Transport {
                server: self.name.to_string(),
                message: super::connect::error_chain(&other),
            },
        }
    }
}

/// Whether the session negotiated the stateless 2026-07-28 revision.
fn speaks_stateless(peer: &Peer<RoleClient>) -> bool {
    peer.peer_info()
        .is_some_and(|info| !info.protocol_version.has_initialize())
}

/// A relayed call registered as in flight (see [`Upstream::track_relayed`]):
/// what the upstream sends its client outside the call's stream.
pub struct RelayedCall {
    _guard: InflightGuard,
    pub messages: mpsc::Receiver<LineMessage>,
}

/// Removes an in-flight call when its request ends.
struct InflightGuard {
    calls: InflightCalls,
    id: rmcp::model::RequestId,
}

impl InflightGuard {
    fn insert(calls: &InflightCalls, id: rmcp::model::RequestId, call: InflightCall) -> Self {
        if let Ok(mut map) = calls.lock() {
            map.insert(id.clone(), call);
        }
        Self {
            calls: calls.clone(),
            id,
        }
    }

    /// Files the call under `id` instead, in one step (it is never absent
    /// or there twice in between).
    fn rekey(&mut self, id: rmcp::model::RequestId) {
        if let Ok(mut map) = self.calls.lock()
            && let Some(call) = map.remove(&self.id)
        {
            map.insert(id.clone(), call);
        }
        self.id = id;
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.calls.lock() {
            map.remove(&self.id);
        }
    }
}

/// Removes a progress route when the request it belongs to ends.
struct RouteGuard {
    routes: ProgressRoutes,
    token: rmcp::model::ProgressToken,
}

impl RouteGuard {
    /// Registers the route; also returns the progress that came before it.
    fn insert(
        routes: &ProgressRoutes,
        token: rmcp::model::ProgressToken,
        route: ProgressRoute,
    ) -> (Self, Vec<rmcp::model::ProgressNotificationParam>) {
        let early = routes.insert(token.clone(), route);
        let guard = Self {
            routes: routes.clone(),
            token,
        };
        (guard, early)
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.routes.remove(&self.token);
    }
}

/// Reports a supervisor that ended in a panic (a bug) as a failure, so the
/// server's status never goes on showing a session that nobody serves.
struct PanicReport(Arc<Upstream>);

impl Drop for PanicReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.peer.set(None);
            self.0.wire.store(None);
            let why = "internal error: this server's supervisor stopped; re-apply the server or restart the gateway";
            self.0
                .set_health(ServerState::Failed, Some(why.to_string()), None);
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ServiceError::Timeout { timeout })?
}

/// Lists everything the server's capabilities say it offers.
async fn fetch_inventory(
    peer: &Peer<RoleClient>,
    wire: Option<&Wire>,
    raw: &RawTools,
    timeout: Duration,
) -> Result<Inventory, ServiceError> {
    let capabilities = peer.peer_info().map(|info| info.capabilities.clone());
    let has = |f: fn(&rmcp::model::ServerCapabilities) -> bool| capabilities.as_ref().is_none_or(f);
    let mut inventory = Inventory {
        // Offered through the relay, which needs the session's wire.
        task_extension: wire.is_some() && capabilities.as_ref().is_some_and(|c| c.supports_tasks()),
        ..Inventory::default()
    };
    if has(|c| c.tools.is_some()) {
        (inventory.tools, inventory.tool_extras) = tools(peer, wire, raw, timeout).await?;
    }
    if has(|c| c.resources.is_some()) {
        inventory.resources = with_timeout(timeout, peer.list_all_resources()).await?;
        inventory.resource_templates =
            with_timeout(timeout, peer.list_all_resource_templates()).await?;
    }
    if has(|c| c.prompts.is_some()) {
        inventory.prompts = with_timeout(timeout, peer.list_all_prompts()).await?;
    }
    Ok(inventory)
}

/// The server's tools: raw on its wire where it has one (keeping what
/// rmcp's model drops), else through rmcp.
async fn tools(
    peer: &Peer<RoleClient>,
    wire: Option<&Wire>,
    raw: &RawTools,
    timeout: Duration,
) -> Result<(Vec<Tool>, ToolExtras), ServiceError> {
    if let Some(wire) = wire {
        match list_tools(wire, timeout).await {
            Ok(listed) => return Ok(listed),
            Err(error) => tracing::debug!(%error, "raw tools/list failed; listing through rmcp"),
        }
    }
    let tools = with_timeout(timeout, peer.list_all_tools()).await?;
    // Message transports (stdio, legacy SSE, tunnels) showed the raw answers to `raw`.
    let extras = raw.extras(&tools);
    Ok((tools, extras))
}

/// Resolves when the agent has connected since the receiver was made (never
/// for a server that is not an agent's).
async fn agent_arrived(arrival: Option<&mut watch::Receiver<u64>>) {
    if let Some(arrival) = arrival
        && arrival.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

fn describe_quit(quit: Result<rmcp::service::QuitReason, tokio::task::JoinError>) -> String {
    match quit {
        Ok(reason) => format!("{reason:?}"),
        Err(error) => error.to_string(),
    }
}

/// What the client of `caller` declared it can be asked: a 2026-07-28
/// request says so in its `_meta` (it is asked through `asking`), a session
/// client in its handshake.
fn offers_of(caller: &Caller<'_>) -> super::client_handler::ClientOffers {
    use super::client_handler::ClientOffers;
    let declared = if caller.asking.is_some() {
        caller.context.meta.client_capabilities()
    } else {
        caller
            .context
            .peer
            .peer_info()
            .map(|info| info.capabilities.clone())
    };
    declared.map(|c| ClientOffers::of(&c)).unwrap_or_default()
}
