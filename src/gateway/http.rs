//! The HTTP surface: `/mcp` (the transport checks of `edge`, then rmcp's
//! Streamable HTTP service: sessions for 2025 clients, stateless for
//! 2026-07-28 ones), `/healthz`, `/readyz`,
//! `/status` and `/ui` (the fleet page), `/agent/connect` (where agents
//! behind NAT dial in, `agent_door`), and with auth on, `/auth/status` and the authorization
//! server's routes (`/.well-known/...`, `/oauth/...`). The listener sets TCP_NODELAY on every accepted socket.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::agent_door::{AgentDoor, agent_door, readmit_on_change};
use super::edge::{AllowedHosts, AllowedOrigins, Edge, Reach, edge, guard};
use super::fast_list::{FastList, fast_tools_list};
use super::handler::GatewayHandler;
use super::held_sessions::HeldSessions;
use super::input_wait::WaitingCalls;
use super::listener::HttpLimits;
use super::metrics::{self, Metrics};
use super::rate_limit::{CallerLimits, rate_limit};
use super::relay::{Relay, relay as relay_call};
use super::replicas::{ReplicaSettings, Replicas};
use super::session::{SessionLimits, Sessions, answer_initialize, open_session};
use super::state::GatewayState;
use super::status::{FleetReport, ServerReport, server_status};
use super::stream_tags::{StreamTags, tag_streams};
use super::{demo_identity, fleet_page};
use crate::api::ServerState;
use crate::auth::inbound::AuthServer;
use crate::fleet::agents::frame::AGENT_PATH;

pub fn router(
    state: Arc<GatewayState>,
    hosts: AllowedHosts,
    origins: AllowedOrigins,
    auth: Option<Arc<AuthServer>>,
    replicas: ReplicaSettings,
    limits: &HttpLimits,
    cancel: CancellationToken,
) -> Router {
    // JSON replies where a request produces nothing else first: no SSE framing on the hot path.
    let cancel_agents = cancel.child_token();
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(cancel)
        .with_json_response(true);
    config = match &hosts {
        AllowedHosts::Any => config.disable_allowed_hosts(),
        AllowedHosts::Only(hosts) => config.with_allowed_hosts(hosts.clone()),
    };
    let handler_state = state.clone();
    let waiting = Arc::new(WaitingCalls::default());
    let mut local = LocalSessionManager::default();
    local.session_config.keep_alive = Some(limits.session_idle_timeout);
    let held = Arc::new(HeldSessions::new(local));
    let keys = replicas.keys.clone();
    let replicas = Replicas::new(
        replicas.keys,
        replicas.own_url,
        state.metrics.requests_passed.clone(),
        replicas.peers,
    );
    // Session ids are sealed: rmcp rebuilds a session it does not hold from its id.
    let sessions = Sessions::new(
        keys,
        replicas.clone(),
        SessionLimits {
            max_age: limits.session_max_age,
            max_held: limits.max_sessions,
        },
        held.clone(),
        state.metrics.clone(),
    );
    config.session_store = Some(sessions.clone());
    let mcp = StreamableHttpService::new(
        move || Ok(GatewayHandler::new(handler_state.clone(), waiting.clone())),
        held.clone(),
        config,
    );
    // Owned by the gateway's cancellation: agents let in are checked again on every fleet change.
    tokio::spawn(readmit_on_change(state.clone(), cancel_agents.clone()));
    let door = AgentDoor::new(state.clone(), replicas.clone(), cancel_agents);
    let agents = Router::new()
        .route(AGENT_PATH, get(agent_door))
        .with_state(door);
    let reach = Reach {
        hosts: hosts.clone(),
        origins,
    };
    let edge_checks = Edge {
        metrics: state.metrics.clone(),
    };
    let tags = StreamTags {
        replicas: replicas.clone(),
        held: held.clone(),
    };
    let relay = Relay::new(state.clone(), replicas);
    let fast = FastList {
        state: state.clone(),
    };
    // Calls are relayed as JSON where the relay takes them; the relay sits
    // inside the bearer check (it routes by the caller's view).
    // tools/list is answered from the caller's view, also inside it.
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(tags, tag_streams))
        .layer(axum::middleware::from_fn_with_state(
            sessions.clone(),
            answer_initialize,
        ))
        .layer(axum::middleware::from_fn_with_state(relay, relay_call))
        .layer(axum::middleware::from_fn_with_state(fast, fast_tools_list));
    // Per-caller rate limits, inside the bearer check (the caller is the
    // user) and before every path that calls an upstream; absent when off.
    let mcp = match state.settings.rate_limit {
        Some(settings) => mcp.layer(axum::middleware::from_fn_with_state(
            CallerLimits::new(settings, state.calls.clone()),
            rate_limit,
        )),
        None => mcp,
    };
    // The session a request names, opened once the caller is known.
    let mcp = mcp.layer(axum::middleware::from_fn_with_state(sessions, open_session));
    let mcp = match &auth {
        Some(auth) => mcp.layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_user,
        )),
        None if state.settings.demo_identity => {
            mcp.layer(axum::middleware::from_fn(demo_identity::demo_identity))
        }
        None => mcp,
    };
    // Outermost: the transport's own checks come before any other answer.
    let mcp = mcp.layer(axum::middleware::from_fn_with_state(edge_checks, edge));
    let app_state = AppState {
        gateway: state,
        auth: auth.clone(),
    };
    let routes = Router::new()
        .nest_service("/mcp", mcp)
        .route("/status", get(status))
        .route("/ui", get(fleet_ui))
        .route("/auth/status", get(auth_status_report))
        .with_state(app_state.clone());
    let routes = match auth {
        Some(auth) => routes.merge(auth.routes()),
        None => routes,
    };
    let routes = routes.merge(agents);
    // Probes and metrics answer any Host: the kubelet and Prometheus call
    // them by the pod's address.
    let metrics = app_state.gateway.metrics.clone();
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |headers: HeaderMap| exposition(metrics.clone(), held.clone(), headers)),
        )
        .with_state(app_state);
    routes
        .layer(axum::middleware::from_fn_with_state(reach, guard))
        .merge(probes)
}

#[derive(Clone)]
struct AppState {
    gateway: Arc<GatewayState>,
    auth: Option<Arc<AuthServer>>,
}

impl axum::extract::FromRef<AppState> for Arc<GatewayState> {
    fn from_ref(state: &AppState) -> Self {
        state.gateway.clone()
    }
}

/// `/mcp` with auth on: the bearer token must prove a user, who is handed
/// to the MCP handler through the request's extensions.
async fn require_user(
    State(auth): State<Arc<AuthServer>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authenticate(request.headers()).await {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(rejection) => auth.unauthorized(&rejection),
    }
}

/// `GET /auth/status`: the caller's identity and per-server reachability.
async fn auth_status_report(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let user = match &app.auth {
        None => None,
        Some(auth) => match auth.authenticate(&headers).await {
            Ok(user) => Some(user),
            Err(rejection) => return auth.unauthorized(&rejection),
        },
    };
    Json(super::auth_status::report(&app.gateway, user.as_ref()).await).into_response()
}

/// Ready once every server that should start has finished its first
/// connection attempt (connected or failed), so the catalog is as complete
/// as it will be without waiting on a dead upstream.
async fn readyz(State(state): State<Arc<GatewayState>>) -> impl IntoResponse {
    let upstreams = state.fleet.upstreams();
    let healths: Vec<_> = upstreams.iter().map(|u| (u, u.health())).collect();
    let pending: Vec<String> = healths
        .iter()
        .filter(|(_, h)| {
            h.state == ServerState::Connecting
                && h.last_error.is_none()
                && h.last_connected.is_none()
        })
        .map(|(u, _)| u.name.to_string())
        .collect();
    let connected = healths
        .iter()
        .filter(|(_, h)| h.state == ServerState::Connected)
        .count();
    // Readiness is about start-up: once the first complete catalog is served
    // it stays ready, so a flapping upstream never pulls the pod out of its Service.
    let ready = state.ready_latched()
        || (pending.is_empty() && state.source_ready() && state.catalog_current());
    if ready {
        state.latch_ready();
    }
    let body = serde_json::json!({
        "ready": ready,
        "sourceListed": state.source_ready(),
        "servers": upstreams.len(),
        "connected": connected,
        "pending": pending,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `GET /metrics`: the Prometheus exposition (see `metrics`).
async fn exposition(
    metrics: Arc<Metrics>,
    held: Arc<HeldSessions>,
    headers: HeaderMap,
) -> Response {
    let open = held.count().await;
    metrics
        .client_sessions
        .set(i64::try_from(open).unwrap_or(i64::MAX));
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        metrics.encode_as(format),
    )
        .into_response()
}

/// `GET /status`: the fleet as the gateway sees it; with auth on, for
/// logged-in callers only (it names servers, manifests and errors).
async fn status(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(auth) = &app.auth
        && let Err(rejection) = auth.authenticate(&headers).await
    {
        return auth.unauthorized(&rejection);
    }
    Json(fleet_report(&app.gateway)).into_response()
}

/// What the fleet page may do in a browser: show itself with its own inline
/// styles, nothing else (no script, no image, no frame, no form).
const PAGE_HEADERS: [(&str, &str); 6] = [
    ("content-type", "text/html; charset=utf-8"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// `GET /ui`: the fleet page (`fleet_page.rs`), for the same callers as
/// `/status` and answered as `/status` answers anyone else.
async fn fleet_ui(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(auth) = &app.auth
        && let Err(rejection) = auth.authenticate(&headers).await
    {
        return auth.unauthorized(&rejection);
    }
    let html = fleet_page::render(&fleet_page::collect(&app.gateway));
    (PAGE_HEADERS, html).into_response()
}

fn fleet_report(state: &GatewayState) -> FleetReport {
    let catalog = state.catalog();
    let problems = state.fleet.problems();
    let servers = state
        .fleet
        .upstreams()
        .iter()
        .map(|u| {
            let desired = u.desired();
            ServerReport {
                name: u.name.to_string(),
                server_type: desired.spec.server_type.as_str(),
                origin: desired.origin.clone(),
                protocol_version: u.health().protocol_version,
                status: server_status(u, &catalog, &problems),
            }
        })
        .collect();
    FleetReport {
        servers,
        invalid_manifests: problems.iter().map(|p| p.to_string()).collect(),
        tools: catalog.tools.len(),
        clients: state.clients.count(),
        user_sessions: state.fleet.user_sessions().map_or(0, |s| s.count()),
        policies: super::status::policy_reports(&state.policy(), &problems),
        agents: state
            .fleet
            .agents()
            .connected()
            .into_iter()
            .map(|a| super::status::AgentReport {
                name: a.name,
                servers: a.servers,
                sessions: a.sessions,
            })
            .collect(),
    }
}
