//! MCPServer spec and status types. Field names follow Giant Swarm Muster's
//! MCPServer so its manifests migrate by changing only `apiVersion`.
//!
//! Spec types deliberately do not `deny_unknown_fields`: one object with an
//! extra field must never break a whole watch. Strictness lives in the file
//! loader, which reports unknown fields as errors with their path.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Transport used to reach a downstream MCP server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ServerType {
    /// MCP Streamable HTTP (2025-03-26 and later, including stateless 2026-07-28).
    #[default]
    #[serde(rename = "streamable-http")]
    StreamableHttp,
    /// A child process speaking MCP over stdin/stdout.
    #[serde(rename = "stdio")]
    Stdio,
    /// The legacy HTTP+SSE transport (2024-11-05).
    #[serde(rename = "sse")]
    Sse,
    /// A server beside a `flotilla agent` that dials out to the gateway
    /// (a cluster behind NAT): reached over the agent's connection (`spec.agent`).
    #[serde(rename = "agent")]
    Agent,
}

impl ServerType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerType::StreamableHttp => "streamable-http",
            ServerType::Stdio => "stdio",
            ServerType::Sse => "sse",
            ServerType::Agent => "agent",
        }
    }
}

/// Desired state of one downstream MCP server.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "MCPServer",
    plural = "mcpservers",
    singular = "mcpserver",
    shortname = "mcps",
    namespaced,
    status = "MCPServerStatus",
    doc = "One downstream MCP server the Flotilla gateway connects to and serves behind its single endpoint (spec: how to reach it; status: written by the gateway's leader).",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Family","type":"string","jsonPath":".spec.family.name"}"#,
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".status.instance"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.toolCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerSpec {
    /// Transport: `streamable-http` (default), `stdio` or `sse`.
    #[serde(rename = "type", default)]
    pub server_type: ServerType,
    /// Connect this server when the gateway starts (Muster compatibility; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_start: Option<bool>,
    /// Endpoint URL for `streamable-http` and `sse` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Executable for `stdio` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments for the `stdio` command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the `stdio` command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Static HTTP headers sent to `streamable-http` and `sse` servers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from Secrets in the server's namespace
    /// (Kubernetes source only); rotated values are picked up live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_from: Vec<HeaderFromSecret>,
    /// Prefix of exposed names: tools appear as `x_<toolPrefix>_<tool>`.
    /// Defaults to the server's name; `""` exposes names unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_prefix: Option<String>,
    /// Human-readable description of this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Timeout in seconds for connecting and for each request (default 30;
    /// `limits.callTimeout`, when set, bounds the calls instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Kubernetes knows the formats int32 and int64 only (uint64 draws a warning on every apply).
    #[schemars(extend("format" = "int64"))]
    pub timeout: Option<u64>,
    /// Membership in a family of equivalent servers (one per cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilySpec>,
    /// How the gateway authenticates to this server on behalf of users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Limits on the calls the gateway sends this server (concurrency,
    /// queueing, output size, call duration). Changing only these never
    /// reconnects the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// For `type: agent`: which agent carries this server and how that agent
    /// proves who it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

/// A server reached through a `flotilla agent` that dials out to the gateway.
/// The gateway accepts an agent only under a name some MCPServer declares
/// here, and only with the credential declared with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The agent's name (its `--name`, usually its cluster's name).
    pub name: String,
    /// The server's name in the agent's own manifests (default: this MCPServer's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A per-agent credential the agent presents as a bearer token, read from
    /// a Secret in this MCPServer's namespace (compared in constant time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_from: Option<SecretKeyRef>,
    /// Or: a Kubernetes service-account token of the agent's own cluster,
    /// verified against that cluster's service-account issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountIdentity>,
}

impl AgentSpec {
    /// The server's name on the agent's side.
    pub fn server_name<'a>(&'a self, own_name: &'a str) -> &'a str {
        self.server.as_deref().unwrap_or(own_name)
    }
}

/// One key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub secret_name: String,
    pub key: String,
}

/// The service account an agent runs as, in its own cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountIdentity {
    /// The cluster's service-account issuer (`--service-account-issuer`);
    /// its keys are found by OpenID discovery unless `jwksUri` is set.
    pub issuer: String,
    /// The expected `sub`, `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// The audience the agent's projected token is issued for (default `flotilla-agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Where the issuer's keys are, when not at its discovery document's `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

impl ServiceAccountIdentity {
    /// The default audience of agents' projected tokens.
    pub const DEFAULT_AUDIENCE: &'static str = "flotilla-agent";

    pub fn audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(Self::DEFAULT_AUDIENCE)
    }
}

/// Limits on the calls the gateway sends one server. Counted per gateway
/// replica; a user's own sessions to an SSO server share the server's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Calls (`tools/call`, `resources/read`, `prompts/get`) running on this
    /// server at once; more wait in a queue. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int32"))]
    pub max_concurrency: Option<u32>,
    /// Calls that may wait for a slot while `maxConcurrency` run (default
    /// 100; 0: refuse at once). Beyond it a call is refused with an error
    /// saying the server is at its concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int32"))]
    pub max_queued: Option<u32>,
    /// Seconds a call waits for a slot before it is refused (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub queue_timeout: Option<u64>,
    /// Largest tool result passed on, in bytes: the text of the content
    /// blocks (other blocks by their JSON size); `structuredContent` is held
    /// to the same size on its own. A larger result is cut, with a note
    /// saying so. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub max_output_bytes: Option<u64>,
    /// Seconds a call to this server may take in all, progress or not; then
    /// it is cancelled and the client told why. Unset: `spec.timeout` runs
    /// between the server's messages. `spec.timeout` still bounds connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub call_timeout: Option<u64>,
}

/// One HTTP header filled from a Secret key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderFromSecret {
    /// Name of the Secret, in the MCPServer's namespace.
    pub secret_name: String,
    /// Key within the Secret's data.
    pub key: String,
    /// Header to send, e.g. `Authorization`.
    pub header: String,
    /// Text put before the value, e.g. `"Bearer "`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Family membership: servers sharing `name` are folded into one set of tools.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilySpec {
    /// Family name; folded tools appear as `x_<name>_<tool>`.
    pub name: String,
    /// Name of the argument that selects the instance (default `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_arg: Option<String>,
    /// This member's instance name (default: server name minus the family suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Other names accepted for this instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl FamilySpec {
    /// The instance name the member `server` answers to: `instance`, else
    /// the server name minus `-mcp-<family>`, `-<family>` or `-mcp`.
    pub fn instance_name(&self, server: &str) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| default_instance(server, &self.name))
    }
}

/// The instance name when `family.instance` is unset: the server name minus
/// `-mcp-<family>`, `-<family>` or `-mcp`.
pub fn default_instance(server: &str, family: &str) -> String {
    for suffix in [
        format!("-mcp-{family}"),
        format!("-{family}"),
        "-mcp".to_string(),
    ] {
        if let Some(stem) = server.strip_suffix(suffix.as_str())
            && !stem.is_empty()
        {
            return stem.to_string();
        }
    }
    server.to_string()
}

/// Per-server credentials (field names as in Muster).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `none` or `oauth`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    /// Forward the user's own token to this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_token: Option<bool>,
    /// Audiences the forwarded token must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_audiences: Vec<String>,
    /// RFC 8693 token exchange at the server's own identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeSpec>,
    /// Use the server's own OAuth flow when SSO is not possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_to_own_auth: Option<bool>,
}

/// RFC 8693 token exchange settings (Dex's API).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangeSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dex_token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials_secret_ref: Option<SecretRef>,
}

/// Reference to a Kubernetes Secret holding client credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_key: Option<String>,
}

/// Connection state of a downstream server as the gateway sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServerState {
    #[default]
    Connecting,
    Connected,
    Failed,
    AuthRequired,
    Invalid,
    Stopped,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Connecting => "Connecting",
            ServerState::Connected => "Connected",
            ServerState::Failed => "Failed",
            ServerState::AuthRequired => "AuthRequired",
            ServerState::Invalid => "Invalid",
            ServerState::Stopped => "Stopped",
        }
    }
}

/// Observed state of one downstream server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerStatus {
    #[serde(default)]
    pub state: ServerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 time of the last successful connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<String>,
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub tool_count: u32,
    /// The instance name this server answers to in its family
    /// (`family.instance`, or the server name minus the family suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Kubernetes-style conditions; `Ready` summarises the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A condition as defined by the Kubernetes API conventions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition of `kind` with `status` (`True`, `False` or `Unknown`),
    /// its reason and message, for the object's `generation` (its transition
    /// time is set where the status is written).
    pub fn new(
        kind: &str,
        status: &str,
        reason: &str,
        message: String,
        generation: Option<i64>,
    ) -> Self {
        Self {
            condition_type: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: None,
            observed_generation: generation,
        }
    }

    /// The `Ready` condition (see [`Condition::new`]).
    pub fn ready(status: &str, reason: &str, message: String, generation: Option<i64>) -> Self {
        Self::new("Ready", status, reason, message, generation)
    }
}

impl MCPServerSpec {
    /// Connect timeout, and request timeout unless `limits.callTimeout` is set (default 30 s).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout.unwrap_or(30).max(1))
    }

    /// This spec with `limits` cleared: what a connection depends on.
    pub fn without_limits(&self) -> MCPServerSpec {
        MCPServerSpec {
            limits: None,
            ..self.clone()
        }
    }

    /// How users' tokens reach this server: `None` unless `spec.auth` asks
    /// for forwarding or exchange (no token passthrough by default).
    pub fn sso_mode(&self) -> Option<SsoMode> {
        let auth = self.auth.as_ref()?;
        if auth.auth_type.as_deref() == Some("none") {
            return None;
        }
        if auth.token_exchange.as_ref().is_some_and(|t| t.enabled) {
            Some(SsoMode::Exchanged)
        } else if auth.forward_token == Some(true) {
            Some(SsoMode::Forwarded)
        } else {
            None
        }
    }
}

/// How the gateway authenticates to a server for a user (`spec.auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SsoMode {
    Forwarded,
    Exchanged,
}
