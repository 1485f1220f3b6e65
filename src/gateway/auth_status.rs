//! The caller's auth status: who they are and, per server, whether they
//! reach it and how. Served as `GET /auth/status` (for `flotilla auth
//! status`) and as the `auth://status` resource (for agents).

use std::sync::Arc;

use rmcp::model::{ReadResourceResult, Resource, ResourceContents};

use super::state::GatewayState;
use crate::api::IdentitySource;
use crate::api::ServerState;
use crate::api::UserIdentity;
use crate::auth::status::{AuthStatusReport, ConnectionState, ReportUser, ServerAuthStatus};
use crate::fleet::{FailureKind, Health};

pub const URI: &str = "auth://status";

pub fn resource() -> Resource {
    Resource::new(URI, "auth-status")
        .with_description(
            "Who you are logged in as, and per MCP server whether you can reach it and how (SSO: Forwarded or Exchanged), with the reason when not.",
        )
        .with_mime_type("application/json")
}

pub fn contents(report: &AuthStatusReport) -> ReadResourceResult {
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    ReadResourceResult::new(vec![
        ResourceContents::text(text, URI).with_mime_type("application/json"),
    ])
}

/// The reason part of a failure, without transport noise around an SSO error.
fn reason_of(error: &str) -> String {
    match error.rfind("SSO: ") {
        Some(at) => error[at + 5..].trim_end_matches(')').to_string(),
        None => error.to_string(),
    }
}

fn line(
    name: &str,
    health: &Health,
    sso: Option<crate::auth::status::SsoMode>,
    tools: usize,
) -> ServerAuthStatus {
    let (state, reason) = match health.state {
        ServerState::Connected => (ConnectionState::Connected, None),
        ServerState::Connecting if health.last_error.is_none() => {
            (ConnectionState::Connecting, None)
        }
        ServerState::Stopped => (
            ConnectionState::NotReachable,
            Some("autoStart is false".into()),
        ),
        _ => {
            let state = match health.failure {
                Some(FailureKind::Unreachable | FailureKind::Timeout) => {
                    ConnectionState::NotReachable
                }
                _ => ConnectionState::Failed,
            };
            (state, health.last_error.as_deref().map(reason_of))
        }
    };
    ServerAuthStatus {
        name: name.to_string(),
        state,
        sso,
        reason,
        tools,
    }
}

/// The report for `user` (anonymous when auth is off).
pub async fn report(state: &GatewayState, user: Option<&Arc<UserIdentity>>) -> AuthStatusReport {
    let view = state.view(user).await;
    let mut servers = Vec::new();
    for shared in state.fleet.upstreams() {
        let desired = shared.desired();
        let sso = desired.spec.sso_mode();
        let name = shared.name.as_ref();
        let entry = match (sso, user) {
            (Some(_), None) => ServerAuthStatus {
                name: name.to_string(),
                state: ConnectionState::Failed,
                sso,
                reason: Some("needs a login: run `flotilla auth login`".into()),
                tools: 0,
            },
            (Some(_), Some(_)) => match (view.own.get(name), view.unavailable.get(name)) {
                (Some(own), _) => line(name, &own.health(), sso, own.inventory().tools.len()),
                (None, Some(error)) => ServerAuthStatus {
                    name: name.to_string(),
                    state: ConnectionState::Failed,
                    sso,
                    reason: Some(error.to_string()),
                    tools: 0,
                },
                (None, None) => line(name, &shared.health(), sso, 0),
            },
            (None, _) => line(name, &shared.health(), None, shared.inventory().tools.len()),
        };
        servers.push(entry);
    }
    AuthStatusReport {
        endpoint: state.settings.endpoint.clone(),
        user: user.map(|u| ReportUser {
            subject: u.key.subject.clone(),
            issuer: u.key.issuer.clone(),
            name: u.display_name.clone(),
            expires_at: u.expires_at.map(|t| t.to_rfc3339()),
            via: match u.source {
                IdentitySource::GatewayLogin => "login".into(),
                IdentitySource::TrustedJwt => "jwt".into(),
                IdentitySource::InsecureDemo => "insecure demo header".into(),
            },
        }),
        servers,
    }
}

/// For a tool name the caller's catalog lacks: when it would belong to an
/// SSO server the caller cannot reach, say which and why.
pub fn unreachable_tool(
    state: &GatewayState,
    view: &super::view::View,
    tool: &str,
) -> Option<String> {
    for shared in state.fleet.upstreams() {
        let desired = shared.desired();
        if desired.spec.sso_mode().is_none() {
            continue;
        }
        let prefix = crate::catalog::naming::exposed_name(
            desired.spec.tool_prefix.as_deref(),
            &shared.name,
            "",
        );
        if prefix.is_empty() || !tool.starts_with(&prefix) {
            continue;
        }
        let reason = match (
            view.own.get(&shared.name),
            view.unavailable.get(&shared.name),
        ) {
            (_, Some(error)) => error.to_string(),
            (Some(own), None) => match own.health() {
                health if health.state == ServerState::Connected => continue,
                health => health
                    .last_error
                    .map(|e| reason_of(&e))
                    .unwrap_or_else(|| "still connecting".into()),
            },
            (None, None) => "log in through the gateway first".into(),
        };
        return Some(format!(
            "tool {tool:?} belongs to server {:?}, which you cannot reach: {reason} (read auth://status for every server)",
            shared.name
        ));
    }
    None
}
