//! `GET /agent/connect`: where `flotilla agent`s dial in. An agent names
//! itself (`X-Flotilla-Agent`) and presents a bearer credential; it is let
//! in only if MCPServers of `type: agent` declare that name, and only if its
//! credential satisfies every one of them:
//!
//! - `credentialFrom`: the Secret's value, compared in constant time;
//! - `serviceAccount`: a JWT of the agent's own cluster, checked against that
//!   cluster's issuer (signature, expiry, audience) and its `sub`.
//!
//! A cluster's credential therefore opens only the servers declared for its
//! agent. The answer to a refused agent says only that it was refused (an
//! unauthenticated caller learns nothing of the fleet); the gateway's log
//! says why. An accepted request is upgraded to a WebSocket and handed to the
//! fleet's agent hub for as long as it stays open.
//!
//! With several replicas, each needs its own connection from every agent
//! (each replica holds its own upstream sessions). Every answer names the
//! replica (`X-Flotilla-Replica`) and how many there are
//! (`X-Flotilla-Replicas`, from `replicaPeers`); an agent dials through the
//! load balancer until it holds one connection to each, and names the ones
//! it holds (`X-Flotilla-Agent-Holds`) so a replica it already holds answers
//! 409 rather than replace that connection.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::replicas::Replicas;
use super::state::GatewayState;
use crate::api::{ServerType, ServiceAccountIdentity};
use crate::auth::jwks::{JwksCache, JwtExpectations};
use crate::fleet::agents::frame::{
    AGENT_HOLDS_HEADER, AGENT_NAME_HEADER, REPLICA_HEADER, REPLICAS_HEADER,
};
use crate::fleet::agents::link::websocket;
use crate::source::DesiredServer;

/// What the door needs: the fleet (who is declared), issuers' keys, the
/// other replicas, shutdown.
#[derive(Clone)]
pub struct AgentDoor {
    pub gateway: Arc<GatewayState>,
    pub keys: Arc<JwksCache>,
    pub replicas: Arc<Replicas>,
    /// This replica's id for agents (random per process).
    pub replica: Arc<str>,
    pub shutdown: CancellationToken,
}

impl AgentDoor {
    pub fn new(
        gateway: Arc<GatewayState>,
        replicas: Arc<Replicas>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            gateway,
            keys: Arc::new(JwksCache::new(crate::fleet::http_client::build_reqwest(
                crate::fleet::http_client::IDLE_CONNECTION_TIMEOUT,
            ))),
            replicas,
            replica: format!("{:016x}", rand::random::<u64>()).into(),
            shutdown,
        }
    }

    /// Marks an answer with this replica and how many there are.
    async fn mark(&self, mut response: Response) -> Response {
        let count = 1 + self.replicas.others().await.len();
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&self.replica) {
            headers.insert(REPLICA_HEADER, id);
        }
        headers.insert(REPLICAS_HEADER, HeaderValue::from(count));
        response
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Lets an agent in, or says no; every answer names this replica.
pub async fn agent_door(State(door): State<AgentDoor>, request: Request) -> Response {
    let response = enter(&door, request).await;
    door.mark(response).await
}

async fn enter(door: &AgentDoor, mut request: Request) -> Response {
    let Some(name) = agent_name(request.headers()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "name the agent in the X-Flotilla-Agent header ([A-Za-z0-9._-])",
        );
    };
    let Some(token) = bearer(request.headers()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "present the agent's credential as a bearer token",
        );
    };
    let Some(key) = websocket_key(request.headers()) else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "the agent door speaks WebSocket (version 13) only",
        );
    };
    let declared: Vec<Arc<DesiredServer>> = door
        .gateway
        .fleet
        .upstreams()
        .iter()
        .map(|u| u.desired())
        .filter(|d| d.spec.server_type == ServerType::Agent)
        .filter(|d| d.spec.agent.as_ref().is_some_and(|a| a.name == name))
        .collect();
    if declared.is_empty() {
        tracing::warn!(agent = %name, "agent refused: no MCPServer of type agent declares it");
        return refuse(StatusCode::FORBIDDEN, "this agent is not accepted");
    }
    for server in &declared {
        if let Err(why) = door.check(server, &token).await {
            tracing::warn!(agent = %name, server = %server.name, reason = %why, "agent refused");
            return refuse(StatusCode::FORBIDDEN, "this agent is not accepted");
        }
    }
    let admission = admission(&declared);
    let holds = request
        .headers()
        .get(AGENT_HOLDS_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if holds.split(',').any(|id| id.trim() == &*door.replica) {
        return refuse(
            StatusCode::CONFLICT,
            "this agent holds a connection to this replica already",
        );
    }
    let Some(upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 with Upgrade: websocket is needed)",
        );
    };
    let hub = door.gateway.fleet.agents().clone();
    let heartbeat = door.gateway.settings.agent_heartbeat;
    let shutdown = door.shutdown.clone();
    // Owned by the connection: it ends when the socket closes or the gateway shuts down.
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = websocket(TokioIo::new(upgraded), Role::Server).await;
                hub.serve(&name, admission, socket, heartbeat, shutdown)
                    .await;
            }
            Err(error) => tracing::warn!(agent = %name, %error, "agent's upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

impl AgentDoor {
    /// Whether `token` is the credential `server` declares for its agent.
    async fn check(&self, server: &DesiredServer, token: &str) -> Result<(), String> {
        let Some(agent) = &server.spec.agent else {
            return Err("declares no agent".into());
        };
        match (&agent.service_account, &server.agent_credential) {
            (Some(account), _) => self.check_service_account(account, token).await,
            (None, Some(expected)) => {
                let same: bool = expected.expose().as_bytes().ct_eq(token.as_bytes()).into();
                same.then_some(())
                    .ok_or_else(|| "the credential does not match spec.agent.credentialFrom".into())
            }
            (None, None) => Err("its credential Secret was not read".into()),
        }
    }

    async fn check_service_account(
        &self,
        account: &ServiceAccountIdentity,
        token: &str,
    ) -> Result<(), String> {
        let expect = JwtExpectations {
            issuer: account.issuer.clone(),
            audiences: vec![account.audience().to_string()],
            jwks_uri: account.jwks_uri.clone(),
        };
        let claims: Claims = self
            .keys
            .verify(token, &expect)
            .await
            .map_err(|e| format!("service-account token: {e}"))?;
        if claims.sub != account.subject {
            return Err(format!(
                "service-account token is for {:?}, not the declared {:?}",
                claims.sub, account.subject
            ));
        }
        Ok(())
    }
}

/// A digest of what admits an agent: the servers declaring it and the
/// credential each expects (the Secret's value only as a hash).
fn admission(declared: &[Arc<DesiredServer>]) -> String {
    use sha2::{Digest, Sha256};
    let mut lines: Vec<String> = declared
        .iter()
        .map(|server| {
            let agent = server.spec.agent.as_ref();
            let account = agent.and_then(|a| a.service_account.as_ref());
            let expects = match (account, &server.agent_credential) {
                (Some(a), _) => format!(
                    "sa {} {} {} {}",
                    a.issuer,
                    a.subject,
                    a.audience(),
                    a.jwks_uri.as_deref().unwrap_or_default()
                ),
                (None, Some(secret)) => {
                    format!("secret {:x}", Sha256::digest(secret.expose().as_bytes()))
                }
                (None, None) => "none".into(),
            };
            format!("{} {expects}", server.name)
        })
        .collect();
    lines.sort();
    format!("{:x}", Sha256::digest(lines.join("\n").as_bytes()))
}

/// Whenever the fleet changes, closes the connection of every agent whose
/// declarations or credentials changed since it was let in (a rotated
/// Secret, a removed MCPServer, another issuer): it must be admitted again,
/// with what is declared now. Ends with `shutdown`.
pub async fn readmit_on_change(gateway: Arc<GatewayState>, shutdown: CancellationToken) {
    let mut changes = gateway.fleet.changes();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let hub = gateway.fleet.agents();
        let admissions = hub.admissions();
        if admissions.is_empty() {
            continue;
        }
        let servers: Vec<Arc<DesiredServer>> = gateway
            .fleet
            .upstreams()
            .iter()
            .map(|u| u.desired())
            .filter(|d| d.spec.server_type == ServerType::Agent)
            .collect();
        for (agent, admitted) in admissions {
            let declared: Vec<Arc<DesiredServer>> = servers
                .iter()
                .filter(|d| d.spec.agent.as_ref().is_some_and(|a| a.name == agent))
                .cloned()
                .collect();
            if declared.is_empty() {
                hub.disconnect(&agent, "no MCPServer declares it any more");
            } else if admission(&declared) != admitted {
                hub.disconnect(
                    &agent,
                    "what its MCPServers declare changed; it is admitted again",
                );
            }
        }
    }
}

fn agent_name(headers: &HeaderMap) -> Option<String> {
    let name = headers.get(AGENT_NAME_HEADER)?.to_str().ok()?;
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then(|| name.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The client's `Sec-WebSocket-Key`, when the request is a WebSocket upgrade.
fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    let upgrading = has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && has(header::SEC_WEBSOCKET_VERSION, "13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    upgrading.then(|| key.to_string())
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, format!("{message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn only_a_websocket_upgrade_has_a_key() {
        let upgrade = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            websocket_key(&headers(&upgrade)).as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert!(websocket_key(&headers(&upgrade[1..])).is_none());
        let old_version = [
            upgrade[0],
            upgrade[1],
            ("sec-websocket-version", "8"),
            upgrade[3],
        ];
        assert!(websocket_key(&headers(&old_version)).is_none());
    }

    #[test]
    fn names_and_bearers_are_read_strictly() {
        assert_eq!(
            agent_name(&headers(&[("x-flotilla-agent", "cluster-a")])).as_deref(),
            Some("cluster-a")
        );
        assert!(agent_name(&headers(&[("x-flotilla-agent", "a/b")])).is_none());
        assert!(agent_name(&headers(&[])).is_none());
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer  s3cret ")])).as_deref(),
            Some("s3cret")
        );
        assert!(bearer(&headers(&[("authorization", "Basic abc")])).is_none());
        assert!(bearer(&headers(&[("authorization", "Bearer ")])).is_none());
    }
}
