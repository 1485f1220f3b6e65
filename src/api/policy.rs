//! The ToolPolicy resource (`flotilla.dev/v1alpha1`): who may call which
//! tools on which servers and instances. One type serves the manifest
//! directory, the Kubernetes controller and the generated CRD; the rules'
//! meaning (and their evaluation) lives in `crate::policy`.
//!
//! A rule applies to a call when everything its `match` names holds and its
//! `except` (if any) does not. Lists within a field are alternatives (any
//! one may match); fields are all required. An empty `match` matches every
//! call.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Rules over the tools the gateway exposes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "ToolPolicy",
    plural = "toolpolicies",
    singular = "toolpolicy",
    shortname = "tpol",
    namespaced,
    status = "ToolPolicyStatus",
    doc = "Rules on who may call which tools of the Flotilla gateway's servers: allow, deny, readOnly (only tools annotated readOnlyHint) or confirm (the gateway asks the user before a destructive call). Deny wins; with no policy every call is allowed.",
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.ruleCount"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ToolPolicySpec {
    /// The rules, in any order: their effects combine by precedence (deny,
    /// then allow, then readOnly, then confirm), not by position.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// One rule: what it matches and what it does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Named in denials, the audit log and status (default `<policy>#<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `allow`, `deny`, `readOnly` or `confirm`.
    pub effect: PolicyEffect,
    /// The calls this rule applies to (empty: every call).
    #[serde(rename = "match", default)]
    pub matches: PolicyMatch,
    /// Calls this rule does not apply to, even when `match` holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<PolicyMatch>,
    /// Shown to the caller (an agent) when this rule denies a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a rule does to the calls it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyEffect {
    /// Lifts `readOnly` and `confirm` (never a `deny`).
    #[default]
    Allow,
    /// Refuses the call; wins over every other effect.
    Deny,
    /// Only tools annotated `readOnlyHint: true` may be called.
    ReadOnly,
    /// A destructive tool (not `readOnlyHint`, and `destructiveHint` not
    /// false) runs only after the user confirms it through elicitation.
    Confirm,
}

impl PolicyEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyEffect::Allow => "allow",
            PolicyEffect::Deny => "deny",
            PolicyEffect::ReadOnly => "readOnly",
            PolicyEffect::Confirm => "confirm",
        }
    }
}

/// Conditions on the caller and the call's target. Patterns may use `*`
/// (any run of characters) and `?` (one character).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// The caller's subject (`sub` claim), as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Groups the caller belongs to (`groups` claim); any one suffices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The OAuth client the caller's token was issued to, as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// `true`: only callers without a login (auth off); `false`: only logged-in ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
    /// Family names (`spec.family.name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<String>,
    /// Server names (`metadata.name`), as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Family instance names or aliases, as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// A label selector over the server's labels, as fan-out takes it
    /// (`env=prod,region!=us`, `tier`, `!canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// The upstream's own tool names, as patterns (`delete_*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// MCP tool annotations, with the spec's defaults for absent ones
    /// (readOnlyHint false, destructiveHint true, idempotentHint false,
    /// openWorldHint true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<AnnotationMatch>,
}

/// Required values of a tool's annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world_hint: Option<bool>,
}

/// Observed state of a policy, written by the gateway's leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolPolicyStatus {
    /// `Active` (its rules apply) or `Invalid` (see `lastError`; a policy
    /// that was active keeps its last good rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub rule_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
