//! The MCPServerSet resource (`flotilla.dev/v1alpha1`): one object that
//! generates MCPServers from an inventory (OCM ManagedClusters, a directory of
//! kubeconfig files, Rancher's clusters API, or a plain list), each member
//! rendered from one template. The members' meaning (rendering, watching the
//! inventory) lives in `crate::source::discovery`.
//!
//! Like the other spec types, no `deny_unknown_fields`: the file loader is
//! the strict one.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, MCPServerSpec};

/// Members a set generates when `maxMembers` is unset.
pub const DEFAULT_MAX_MEMBERS: u32 = 100;
/// The most members any set may generate, whatever `maxMembers` says.
pub const MAX_MEMBERS_CEILING: u32 = 1000;

/// Generates MCPServers from an inventory, one per member, from a template.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "MCPServerSet",
    plural = "mcpserversets",
    singular = "mcpserverset",
    shortname = "mcpss",
    namespaced,
    status = "MCPServerSetStatus",
    doc = "Generates one MCPServer per member of an inventory (OCM ManagedClusters, a directory of kubeconfig files, Rancher clusters, or a list) from a template; members appear and disappear as the inventory changes (status: written by the gateway's leader).",
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerSetSpec {
    /// Where members come from; each entry sets exactly one generator. The
    /// members of all entries together form the set.
    #[serde(default)]
    pub generators: Vec<GeneratorSpec>,
    /// The MCPServer each member becomes. Every string may hold
    /// placeholders such as `{{name}}` or `{{labels.env}}`.
    pub template: MemberTemplate,
    /// The most members this set generates (default 100, at most 1000);
    /// beyond it members are left out, by name order, and status says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int32"))]
    pub max_members: Option<u32>,
}

impl MCPServerSetSpec {
    /// `maxMembers`, defaulted and capped.
    pub fn member_limit(&self) -> usize {
        self.max_members
            .unwrap_or(DEFAULT_MAX_MEMBERS)
            .min(MAX_MEMBERS_CEILING) as usize
    }
}

/// One source of members; exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorSpec {
    /// A fixed list of members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListGenerator>,
    /// One member per kubeconfig file (or per context) in a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_dir: Option<KubeconfigDirGenerator>,
    /// One member per Open Cluster Management `ManagedCluster`
    /// (`cluster.open-cluster-management.io/v1`); Kubernetes source only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_clusters: Option<ManagedClustersGenerator>,
    /// One member per cluster of a Rancher server (`/v3/clusters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rancher: Option<RancherGenerator>,
}

/// A fixed list of members.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListGenerator {
    #[serde(default)]
    pub elements: Vec<ListElement>,
}

/// One member of a list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListElement {
    /// The member's name (`{{name}}`).
    pub name: String,
    /// Labels the member carries (`{{labels.<key>}}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Other names its family instance answers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// More placeholders: `{{values.<key>}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

/// Kubeconfig files in a directory, which is watched.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigDirGenerator {
    /// The directory; relative paths are relative to the manifest's
    /// directory (manifest source) or to the gateway's working directory.
    pub path: String,
    /// One member per context instead of one per file (default false:
    /// a file's member uses its `current-context`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_context: bool,
    /// Labels every member of this generator carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Open Cluster Management ManagedClusters on the gateway's own API server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClustersGenerator {
    /// Label selector over the ManagedClusters' labels (`env=prod,region`,
    /// `key!=value`, `!key`); empty: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// The clusters of a Rancher server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RancherGenerator {
    /// The Rancher server, e.g. `https://rancher.example.com`.
    pub url: String,
    /// The Secret (in the set's namespace) holding the API token.
    pub token_secret_ref: TokenSecretRef,
    /// Cluster name patterns (`*` and `?` wildcards); a cluster matching
    /// any is a member. Empty: every cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Seconds between polls (default 60, at least 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub interval_seconds: Option<u64>,
}

/// A key of a Secret in the set's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    pub name: String,
    /// Key in the Secret's data (default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What each member becomes: an MCPServer's metadata and spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberTemplate {
    pub metadata: TemplateMetadata,
    pub spec: MCPServerSpec,
}

/// The generated MCPServer's name and labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Must render to a DNS-1123 name, e.g. `{{name}}-kubernetes`.
    pub name: String,
    /// Added to the inventory's labels (these win on the same key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Observed state of a set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerSetStatus {
    /// Members generated and served.
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub members: u32,
    /// The generated MCPServers' names (the first 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_names: Vec<String>,
    /// What went wrong, per generator (`generators[1]: ...`) or member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when every generator answered and every member rendered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
