//! Where MCPServer objects come from. Every source publishes the same
//! [`DesiredFleet`] snapshots; the fleet diffs them, so a source never needs to
//! know which servers changed.

mod manifest_dir;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use manifest_dir::{ManifestDir, load_dir, parse_manifests};

use crate::api::MCPServerSpec;

/// One server the fleet should run, as declared by its manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredServer {
    /// `metadata.name`: the server's identity and its default tool prefix.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub generation: Option<i64>,
    pub spec: MCPServerSpec,
    /// Where it was declared, e.g. `fleet.yaml#2`, for messages.
    pub origin: String,
}

/// A manifest that could not be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// `file#document` (documents count from 0).
    pub origin: String,
    /// The server's name when it could be read, so status can name it.
    pub server: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// The whole desired fleet at one moment, keyed by server name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredFleet {
    pub servers: BTreeMap<String, DesiredServer>,
    pub problems: Vec<ManifestProblem>,
}

/// Snapshots of the desired fleet; the latest one is all that matters.
pub type DesiredFleetRx = tokio::sync::watch::Receiver<Arc<DesiredFleet>>;
