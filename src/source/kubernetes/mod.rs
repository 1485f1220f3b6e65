//! The Kubernetes source: MCPServer, MCPServerSet and ToolPolicy custom resources (all
//! namespaces or the listed ones) and the Secrets MCPServers reference, watched through the API and
//! turned into the same [`DesiredFleet`] snapshots the manifest directory
//! produces. Status goes back through the status subresource, written by the
//! Lease holder only.

mod controller;
mod desired;
mod desired_sets;
mod lease;
mod managed_clusters;
mod policy_status;
mod set_status;
mod status_writer;

pub use controller::{KubernetesSource, SourceConfig};
pub(crate) use desired::secret_key;
pub use desired::{
    SecretLookup, desired_fleet, desired_policies, origin_of, policy_origin_of, resolve_secret_refs,
};
pub use desired_sets::set_origin_of;
pub use lease::{LeaderElection, LeaseConfig};
pub use policy_status::desired_policy_status;
pub use set_status::desired_set_status;
pub use status_writer::{LiveStatus, StatusWriteCounts, StatusWriter, desired_status};
