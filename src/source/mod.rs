//! Where MCPServer and ToolPolicy objects come from. Every source publishes the same
//! [`DesiredFleet`] snapshots; the fleet diffs them, so a source never needs to
//! know which servers changed. MCPServerSets expand into ordinary servers
//! here (`discovery`), so nothing above this floor tells them apart.

pub mod discovery;
pub mod kubernetes;
mod manifest_dir;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use manifest_dir::{
    LastLoad, ManifestDir, load_dir, load_dir_with, load_file, parse_manifests,
};

use crate::api::{MCPServerSpec, SecretValue, ToolPolicySpec};

/// One server the fleet should run, as declared by its manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredServer {
    /// `metadata.name`: the server's identity and its default tool prefix.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub generation: Option<i64>,
    pub spec: MCPServerSpec,
    /// Header values resolved from Secrets (`spec.headersFrom`).
    pub secret_headers: BTreeMap<String, SecretValue>,
    /// Client credentials resolved from `spec.auth.tokenExchange.clientCredentialsSecretRef`.
    pub client_credentials: Option<ClientCredentials>,
    /// The credential an agent must present for this server (`spec.agent.credentialFrom`).
    pub agent_credential: Option<SecretValue>,
    /// Where it was declared, e.g. `fleet.yaml#2`, for messages.
    pub origin: String,
}

impl DesiredServer {
    /// True when `other` needs no new session: same spec (`spec.limits`
    /// aside: limits apply to calls, not to the connection), same secret values.
    pub fn same_connection(&self, other: &DesiredServer) -> bool {
        let same_spec = self.spec == other.spec
            || (self.spec.limits != other.spec.limits
                && self.spec.without_limits() == other.spec.without_limits());
        same_spec
            && self.secret_headers == other.secret_headers
            && self.client_credentials == other.client_credentials
            && self.agent_credential == other.agent_credential
    }
}

/// OAuth client credentials for token exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretValue,
}

/// A manifest that could not be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// `file#document` (documents count from 0; empty documents are not counted).
    pub origin: String,
    /// The server's name when it could be read, so status can name it.
    pub server: Option<String>,
    /// The ToolPolicy's name, for a policy's problem.
    pub policy: Option<String>,
    /// The MCPServerSet's name, for a set's problem.
    pub set: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// One ToolPolicy, as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPolicy {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    pub spec: ToolPolicySpec,
    /// Where it was declared, e.g. `policy.yaml#0`, for messages.
    pub origin: String,
}

/// The whole desired fleet at one moment, keyed by server name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredFleet {
    pub servers: BTreeMap<String, DesiredServer>,
    /// Tool policies, keyed `namespace/name`.
    pub policies: BTreeMap<String, DesiredPolicy>,
    /// MCPServerSets and what they generated, keyed `namespace/name`.
    pub sets: BTreeMap<String, DesiredSet>,
    pub problems: Vec<ManifestProblem>,
}

/// One MCPServerSet as expanded: its members (in `servers`) and its errors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredSet {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    /// Names of the MCPServers it generated that are served.
    pub members: Vec<String>,
    /// What went wrong, per generator or member; empty when all is well.
    pub errors: Vec<String>,
    /// Where it was declared, e.g. `clusters.yaml#0`, for messages.
    pub origin: String,
}

/// Snapshots of the desired fleet; the latest one is all that matters.
pub type DesiredFleetRx = tokio::sync::watch::Receiver<Arc<DesiredFleet>>;
