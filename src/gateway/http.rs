//! The HTTP surface: `/mcp` (rmcp's Streamable HTTP service: sessions for
//! 2025 clients, stateless for 2026-07-28 ones), `/healthz`, `/readyz` and
//! `/status`. The listener sets TCP_NODELAY on every accepted socket.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::fast_list::{FastList, fast_tools_list};
use super::handler::GatewayHandler;
use super::state::GatewayState;
use super::status::{FleetReport, ServerReport, server_status};
use crate::api::ServerState;

/// Which `Host` headers `/mcp` accepts (DNS-rebinding protection).
#[derive(Clone, Debug)]
pub enum AllowedHosts {
    Any,
    Only(Vec<String>),
}

pub fn router(state: Arc<GatewayState>, hosts: AllowedHosts, cancel: CancellationToken) -> Router {
    // JSON replies where a request produces nothing else first: no SSE framing on the hot path.
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(cancel)
        .with_json_response(true);
    config = match &hosts {
        AllowedHosts::Any => config.disable_allowed_hosts(),
        AllowedHosts::Only(hosts) => config.with_allowed_hosts(hosts.clone()),
    };
    let handler_state = state.clone();
    let sessions = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(
        move || Ok(GatewayHandler::new(handler_state.clone())),
        sessions.clone(),
        config,
    );
    let fast = FastList {
        state: state.clone(),
        sessions,
        hosts,
    };
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(fast, fast_tools_list));
    Router::new()
        .nest_service("/mcp", mcp)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
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

async fn status(State(state): State<Arc<GatewayState>>) -> Json<FleetReport> {
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
    Json(FleetReport {
        servers,
        invalid_manifests: problems.iter().map(|p| p.to_string()).collect(),
        tools: catalog.tools.len(),
        clients: state.clients.count(),
    })
}
