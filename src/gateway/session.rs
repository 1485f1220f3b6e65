//! Client sessions (2025 revisions) that any replica serves, with nothing
//! stored: the `Mcp-Session-Id` a client gets at `initialize` is sealed
//! (AES-256-GCM, the gateway's sealing keys, the same key file as its SSO
//! tokens) and carries what a replica needs to serve the session:
//!
//! | sealed | why |
//! |---|---|
//! | what the client can be asked (elicitation, sampling, roots) | the relay puts upstream questions only to clients that offer them |
//! | the client's `initialize` params (trimmed to 4 KB) | rmcp's session is rebuilt from them where a request needs one |
//! | a hash of the caller's issuer and subject | the id works for its own caller only (not bound to a token, so a refresh keeps it) |
//! | an expiry (`limits.sessionMaxAgeSeconds`) | |
//!
//! A request on a session that is tampered with, expired, ended here
//! (`DELETE`) or another caller's gets 404, so its client initializes anew.
//!
//! `initialize` itself is answered here ([`answer_initialize`]), with
//! rmcp's own negotiation, and holds nothing. The relay and the cached
//! `tools/list` serve a session from its id alone. A request only rmcp's
//! handler serves (lists of resources and prompts, completion, a fan-out, a
//! GET stream, ...) needs rmcp's session on this replica: rmcp rebuilds it
//! from the id through [`Sessions`]' `SessionStore` (replaying the client's
//! `initialize`), and it lives in memory until unused for
//! `limits.sessionIdleTimeoutSeconds`. At most `limits.maxSessions` are held;
//! beyond that the replica lets one go (its client notices at most a GET
//! stream to reopen).
//!
//! What a session changes after `initialize` (`logging/setLevel`, resource
//! subscriptions, `DELETE`), and a `notifications/cancelled`, is applied
//! here and, with `replicaPeers` set, on every other replica too (see
//! `replicas`); without peers it stays with the replica that received it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use rmcp::ServerHandler as _;
use rmcp::model::{
    ClientCapabilities, Implementation, InitializeRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::transport::streamable_http_server::session::SessionId;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::edge::MAX_BODY;
use super::envelope::RpcMethod;
use super::held_sessions::{Busy, HeldSessions};
use super::metrics::Metrics;
use super::replicas::Replicas;
use crate::api::UserIdentity;
use crate::auth::inbound::seal::{Purpose, SealError, SealingKeys};
use crate::fleet::ClientOffers;

/// The header naming a client's session.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The most JSON of a client's `initialize` params a session id carries.
const MAX_KEPT_PARAMS: usize = 4096;
/// The longest client name or version kept.
const MAX_NAME: usize = 256;
/// Sessions remembered as ended (`DELETE`) on this replica.
const MAX_ENDED: u64 = 100_000;

/// A client's session, as its id says (put in the request's extensions).
#[derive(Clone, Debug)]
pub struct ClientSession {
    pub id: String,
    /// What the client declared it can be asked.
    pub offers: ClientOffers,
}

/// What a session id holds, sealed.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Bits: 1 elicitation, 2 sampling, 4 roots, 8 the tasks extension.
    #[serde(rename = "o")]
    offers: u8,
    /// The caller's binding (see [`binding`]).
    #[serde(rename = "c")]
    caller: String,
    /// The client's `initialize` params, trimmed.
    #[serde(rename = "i")]
    initialize: Box<RawValue>,
}

/// How long session ids last and how many sessions a replica holds.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// An id is accepted this long after its `initialize`.
    pub max_age: Duration,
    /// rmcp sessions held in memory at once.
    pub max_held: usize,
}

/// Issues and opens session ids; rebuilds rmcp's sessions from them.
pub struct Sessions {
    keys: Arc<SealingKeys>,
    limits: SessionLimits,
    /// Ids ended here with `DELETE`, until they would have expired anyway.
    ended: moka::sync::Cache<String, ()>,
    /// rmcp's sessions held on this replica.
    pub held: Arc<HeldSessions>,
    /// The other replicas, which hear of a session's changes.
    replicas: Arc<Replicas>,
    metrics: Arc<Metrics>,
}

/// What the gateway says of itself at `initialize` (and `server/discover`).
// `logging` is deprecated by the 2026 revision, and still spoken by 2025 clients.
#[allow(deprecated)]
pub fn server_info() -> ServerConfig {
    ServerConfig::new(
        ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_completions()
            .enable_logging()
            .build(),
    )
    .with_server_info(Implementation::new("flotilla", env!("CARGO_PKG_VERSION")))
    .with_instructions(
        "Flotilla gateway: tools of every server in the fleet, named x_<server>_<tool>.",
    )
}

/// rmcp's `initialize` negotiation over the gateway's own server info.
struct Negotiator;

impl rmcp::ServerHandler for Negotiator {
    fn get_info(&self) -> ServerConfig {
        server_info()
    }
}

/// Why a session id was refused (never contains the id).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Sealed(SealError),
    Ended,
    OtherCaller,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Sealed(SealError::Expired) => f.write_str("the session has expired"),
            Refused::Sealed(SealError::UnknownKey) => {
                f.write_str("the session was issued under a key this gateway no longer has")
            }
            Refused::Sealed(_) => f.write_str("no session has this id"),
            Refused::Ended => f.write_str("the session was ended"),
            Refused::OtherCaller => f.write_str("the session belongs to another caller"),
        }
    }
}

impl Sessions {
    pub fn new(
        keys: Arc<SealingKeys>,
        replicas: Arc<Replicas>,
        limits: SessionLimits,
        held: Arc<HeldSessions>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            keys,
            limits,
            ended: moka::sync::Cache::builder()
                .max_capacity(MAX_ENDED)
                .time_to_live(limits.max_age)
                .build(),
            held,
            replicas,
            metrics,
        })
    }

    /// A new session id for a client that sent `params` and agreed on `revision`.
    fn issue(&self, params: &InitializeRequestParams, user: Option<&UserIdentity>) -> String {
        let offers = ClientOffers::of(&params.capabilities);
        let sealed = Sealed {
            offers: u8::from(offers.elicitation)
                | u8::from(offers.sampling) << 1
                | u8::from(offers.roots) << 2
                | u8::from(offers.tasks) << 3,
            caller: binding(user),
            initialize: kept_params(params),
        };
        let expires = chrono::Duration::from_std(self.limits.max_age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_add_signed(age));
        self.keys.seal(Purpose::Session, &sealed, expires)
    }

    fn unseal(&self, id: &str) -> Result<Sealed, Refused> {
        if self.ended.contains_key(id) {
            return Err(Refused::Ended);
        }
        self.keys
            .unseal(Purpose::Session, id)
            .map_err(Refused::Sealed)
    }

    /// The session `id` names, when it is valid and `user`'s.
    pub fn open(&self, id: &str, user: Option<&UserIdentity>) -> Result<ClientSession, Refused> {
        let sealed = self.unseal(id)?;
        if sealed.caller != binding(user) {
            return Err(Refused::OtherCaller);
        }
        Ok(ClientSession {
            id: id.to_string(),
            offers: ClientOffers {
                elicitation: sealed.offers & 1 != 0,
                sampling: sealed.offers & 2 != 0,
                roots: sealed.offers & 4 != 0,
                tasks: sealed.offers & 8 != 0,
            },
        })
    }

    /// `DELETE`: the id is refused here from now on, its rmcp session closed.
    async fn end(&self, id: &str) {
        self.ended.insert(id.to_string(), ());
        let id: SessionId = id.into();
        if let Err(error) = rmcp::transport::streamable_http_server::SessionManager::close_session(
            self.held.as_ref(),
            &id,
        )
        .await
        {
            tracing::debug!(%error, "closing an ended client session");
        }
    }
}

/// rmcp asks for a session it does not hold: rebuilt from the id.
#[async_trait::async_trait]
impl SessionStore for Sessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Ok(sealed) = self.unseal(session_id) else {
            return Ok(None);
        };
        let Ok(params) = serde_json::from_str::<InitializeRequestParams>(sealed.initialize.get())
        else {
            return Ok(None);
        };
        let released = self.held.make_room(session_id, self.limits.max_held).await;
        if released > 0 {
            tracing::debug!(
                limit = self.limits.max_held,
                released,
                "client sessions held in memory at limits.maxSessions: let the least recently used go"
            );
            self.metrics.sessions_released.inc_by(released as u64);
        }
        self.metrics.sessions_restored.inc();
        Ok(Some(SessionState::new(params)))
    }

    async fn store(
        &self,
        _session_id: &str,
        _state: &SessionState,
    ) -> Result<(), SessionStoreError> {
        // The id is the state.
        Ok(())
    }

    async fn delete(&self, _session_id: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}

/// Who a session belongs to: a hash of the caller's issuer and subject
/// (empty for anonymous callers).
fn binding(user: Option<&UserIdentity>) -> String {
    let Some(user) = user else {
        return String::new();
    };
    let digest = Sha256::new()
        .chain_update(b"flotilla session caller\0")
        .chain_update(user.key.issuer.as_bytes())
        .chain_update(b"\0")
        .chain_update(user.key.subject.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The `initialize` params a session id carries: the revision asked for,
/// the capabilities and the client's name and version (at most
/// [`MAX_KEPT_PARAMS`] of JSON: the capabilities' contents go first,
/// then their names).
fn kept_params(params: &InitializeRequestParams) -> Box<RawValue> {
    let clip = |s: &str| s.chars().take(MAX_NAME).collect::<String>();
    let client = json!({
        "name": clip(&params.client_info.name),
        "version": clip(&params.client_info.version),
    });
    let capabilities = serde_json::to_value(&params.capabilities).unwrap_or_else(|_| json!({}));
    let build = |capabilities: Value| {
        json!({
            "protocolVersion": params.protocol_version,
            "capabilities": capabilities,
            "clientInfo": client,
        })
    };
    let mut kept = build(capabilities.clone());
    if kept.to_string().len() > MAX_KEPT_PARAMS {
        let names: Map<String, Value> = capabilities
            .as_object()
            .map(|o| o.keys().map(|k| (k.clone(), json!({}))).collect())
            .unwrap_or_default();
        kept = build(Value::Object(names));
    }
    if kept.to_string().len() > MAX_KEPT_PARAMS {
        kept = build(serde_json::to_value(ClientCapabilities::default()).unwrap_or_default());
    }
    serde_json::value::to_raw_value(&kept)
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON"))
}

/// A request on an unusable session: 404 (the SDKs then initialize anew).
fn refused(why: &Refused) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {
        "code": -32001,
        "message": format!("{why}: initialize a new session"),
    }});
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Middleware on `/mcp`, inside the bearer check: a request naming a
/// session carries it ([`ClientSession`] in its extensions) or is refused
/// with 404; `DELETE` ends the session here.
pub async fn open_session(
    State(sessions): State<Arc<Sessions>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(id) = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return next.run(request).await;
    };
    let user = request.extensions().get::<Arc<UserIdentity>>();
    let session = match sessions.open(id, user.map(Arc::as_ref)) {
        Ok(session) => session,
        Err(why) => {
            tracing::debug!(reason = %why, "refused a client session id");
            return refused(&why);
        }
    };
    if request.method() == Method::DELETE {
        sessions.end(id).await;
        let (parts, _) = request.into_parts();
        sessions.replicas.mirror(&parts, Bytes::new()).await;
        return StatusCode::NO_CONTENT.into_response();
    }
    request.extensions_mut().insert(Arc::new(session));
    let changes_session = request
        .extensions()
        .get::<RpcMethod>()
        .is_some_and(|m| SESSION_CHANGES.contains(&m.0.as_str()));
    if !changes_session {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let copy = copy_parts(&parts);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    if response.status().is_success() {
        sessions.replicas.mirror(&copy, bytes).await;
    }
    response
}

/// What a client sends that changes its session on the replica it reaches
/// (or, for a cancellation, may concern another): mirrored to the others.
const SESSION_CHANGES: &[&str] = &[
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "notifications/cancelled",
];

/// A request head's copy (method, URI, headers, and the original URI).
fn copy_parts(parts: &axum::http::request::Parts) -> axum::http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.headers_mut() = parts.headers.clone();
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        copy.extensions_mut().insert(original.clone());
    }
    copy.into_parts().0
}

/// An `initialize` request, as far as answering it needs.
#[derive(Deserialize)]
struct Initialize {
    id: Value,
    params: InitializeRequestParams,
}

/// Middleware on `/mcp`, in front of rmcp's service: answers `initialize`
/// (a new session id, nothing held) and a session's
/// `notifications/initialized` (already replayed wherever rmcp rebuilt
/// the session).
pub async fn answer_initialize(
    State(sessions): State<Arc<Sessions>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request
        .extensions()
        .get::<RpcMethod>()
        .map(|m| m.0.as_str());
    let in_session = request.extensions().get::<Arc<ClientSession>>().is_some();
    let session = request.extensions().get::<Arc<ClientSession>>().cloned();
    match method {
        Some("notifications/initialized") if in_session => StatusCode::ACCEPTED.into_response(),
        Some("initialize") if !in_session => initialize(&sessions, request, next).await,
        _ => match session {
            // rmcp may rebuild the session for this request: one at a time.
            Some(session) => {
                // A POST keeps its session from being let go until its answer ends.
                let busy =
                    (request.method() == Method::POST).then(|| sessions.held.busy(&session.id));
                let first = sessions.held.first_use(&session.id).await;
                let response = next.run(request).await;
                drop(first);
                match busy {
                    Some(busy) => held_until_answered(response, busy),
                    None => response,
                }
            }
            None => next.run(request).await,
        },
    }
}

/// `response`, with `busy` held until its body has ended (or was dropped).
fn held_until_answered(response: Response, busy: Busy) -> Response {
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &busy;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn initialize(sessions: &Sessions, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let Ok(init) = serde_json::from_slice::<Initialize>(&bytes) else {
        // rmcp's own answer to a malformed initialize.
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    let header_version = parts
        .headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().unwrap_or_default());
    let asked = init.params.protocol_version.to_string();
    if let Some(header_version) = header_version
        && header_version != asked
    {
        let body = json!({"jsonrpc": "2.0", "id": init.id, "error": {"code": -32600, "message":
            format!("Invalid Request: MCP-Protocol-Version header ({header_version}) does not match initialize params.protocolVersion ({asked})")}});
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let answer = match Negotiator.negotiate_initialize(&init.params) {
        Ok(result) => result,
        Err(error) => {
            let body = json!({"jsonrpc": "2.0", "id": init.id, "error": error});
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    let user = parts.extensions.get::<Arc<UserIdentity>>();
    let id = sessions.issue(&init.params, user.map(Arc::as_ref));
    let body = json!({"jsonrpc": "2.0", "id": init.id, "result": answer});
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    match HeaderValue::from_str(&id) {
        Ok(value) => {
            response.headers_mut().insert(SESSION_HEADER, value);
            response
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IdentitySource, UserKey};

    fn sessions(max_age: Duration) -> Arc<Sessions> {
        let metrics = Arc::new(Metrics::default());
        let keys = Arc::new(SealingKeys::ephemeral());
        Sessions::new(
            keys.clone(),
            Replicas::new(keys, None, Default::default(), None),
            SessionLimits {
                max_age,
                max_held: 10,
            },
            Arc::new(HeldSessions::new(Default::default())),
            metrics,
        )
    }

    fn user(subject: &str) -> UserIdentity {
        UserIdentity {
            key: UserKey {
                issuer: "https://idp.example".into(),
                subject: subject.into(),
            },
            display_name: None,
            id_token: None,
            expires_at: None,
            source: IdentitySource::GatewayLogin,
            client: None,
            groups: Vec::new(),
        }
    }

    fn params(capabilities: Value) -> InitializeRequestParams {
        serde_json::from_value(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": capabilities,
            "clientInfo": {"name": "test-client", "version": "1.0", "icons": [{"src": "x"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_session_id_opens_for_its_own_caller_only() {
        let sessions = sessions(Duration::from_secs(60));
        let alice = user("alice");
        let id = sessions.issue(
            &params(json!({"elicitation": {}, "roots": {},
                "extensions": {"io.modelcontextprotocol/tasks": {}}})),
            Some(&alice),
        );
        let session = sessions.open(&id, Some(&alice)).unwrap();
        assert_eq!(
            session.offers,
            ClientOffers {
                elicitation: true,
                sampling: false,
                roots: true,
                tasks: true,
            }
        );
        assert_eq!(
            sessions.open(&id, Some(&user("bob"))).unwrap_err(),
            Refused::OtherCaller
        );
        assert_eq!(sessions.open(&id, None).unwrap_err(), Refused::OtherCaller);
        // Another replica with the same keys opens it; one with other keys does not.
        let other = self::sessions(Duration::from_secs(60));
        assert!(matches!(
            other.open(&id, Some(&alice)),
            Err(Refused::Sealed(SealError::UnknownKey))
        ));
    }

    #[test]
    fn a_tampered_or_ended_id_is_refused() {
        let sessions = sessions(Duration::from_secs(60));
        let id = sessions.issue(&params(json!({})), None);
        let mut tampered = id.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(sessions.open(&tampered, None).is_err());
        assert!(sessions.open(&id, None).is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(sessions.end(&id));
        assert_eq!(sessions.open(&id, None).unwrap_err(), Refused::Ended);
    }

    #[test]
    fn an_expired_id_is_refused() {
        let sessions = sessions(Duration::from_secs(0));
        let id = sessions.issue(&params(json!({})), None);
        assert_eq!(
            sessions.open(&id, None).unwrap_err(),
            Refused::Sealed(SealError::Expired)
        );
    }

    #[test]
    fn the_kept_params_rebuild_the_clients_initialize_within_the_bound() {
        let small = kept_params(&params(
            json!({"sampling": {}, "elicitation": {"form": {}}}),
        ));
        let back: InitializeRequestParams = serde_json::from_str(small.get()).unwrap();
        assert_eq!(back.client_info.name, "test-client");
        assert!(back.capabilities.sampling.is_some());
        assert!(back.capabilities.elicitation.is_some());
        let huge: Map<String, Value> = (0..500)
            .map(|i| (format!("x{i}"), json!({"padding": "p".repeat(40)})))
            .collect();
        let big = kept_params(&params(
            json!({"experimental": huge, "roots": {"listChanged": true}}),
        ));
        assert!(big.get().len() <= MAX_KEPT_PARAMS, "{}", big.get().len());
        let back: InitializeRequestParams = serde_json::from_str(big.get()).unwrap();
        assert!(back.capabilities.roots.is_some());
    }
}
