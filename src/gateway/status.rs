//! Status of each server as operators see it (`/status`, and later the
//! Kubernetes status subresource): fleet health joined with what the
//! catalog and the manifest source found, as Kubernetes-style conditions.

use serde::Serialize;

use crate::api::{Condition, MCPServerStatus, ServerState};
use crate::catalog::Catalog;
use crate::fleet::Upstream;
use crate::policy::Policy;
use crate::source::ManifestProblem;

/// The status of one running server.
pub fn server_status(
    upstream: &Upstream,
    catalog: &Catalog,
    problems: &[ManifestProblem],
) -> MCPServerStatus {
    let desired = upstream.desired();
    let health = upstream.health();
    let generation = desired.generation;
    let (reason, message) = match health.state {
        ServerState::Connected => ("Connected", "serving its tools".to_string()),
        ServerState::Connecting => ("Connecting", "first connection attempt in progress".into()),
        ServerState::Stopped => ("Stopped", health.last_error.clone().unwrap_or_default()),
        _ => (
            health.failure.map(|f| f.reason()).unwrap_or("Unreachable"),
            health.last_error.clone().unwrap_or_default(),
        ),
    };
    let ready = match health.state {
        ServerState::Connected => "True",
        _ => "False",
    };
    let mut conditions = vec![Condition::ready(ready, reason, message, generation)];
    let collisions: Vec<String> = catalog
        .collisions_of(&upstream.name)
        .map(|c| c.to_string())
        .collect();
    if !collisions.is_empty() {
        conditions.push(Condition::new(
            "NameCollision",
            "True",
            "NameCollision",
            collisions.join("; "),
            generation,
        ));
    }
    let divergences: Vec<String> = catalog
        .divergences_of(&upstream.name)
        .map(|d| d.to_string())
        .collect();
    if !divergences.is_empty() {
        conditions.push(Condition::new(
            "SchemaDivergence",
            "True",
            "SchemaDivergence",
            format!(
                "{} (exposed under the server's own name instead)",
                divergences.join("; ")
            ),
            generation,
        ));
    }
    let own_problems: Vec<String> = problems
        .iter()
        .filter(|p| p.server.as_deref() == Some(&*upstream.name))
        .map(|p| p.to_string())
        .collect();
    if !own_problems.is_empty() {
        conditions.push(Condition::new(
            "InvalidSpec",
            "True",
            "InvalidSpec",
            format!(
                "{} (still serving the last valid version)",
                own_problems.join("; ")
            ),
            generation,
        ));
    }
    MCPServerStatus {
        state: health.state,
        last_error: health.last_error,
        last_connected: health.last_connected.map(|t| t.to_rfc3339()),
        tool_count: catalog
            .tool_counts
            .get(&*upstream.name)
            .copied()
            .unwrap_or(0),
        observed_generation: generation,
        instance: desired
            .spec
            .family
            .as_ref()
            .map(|family| family.instance_name(&upstream.name)),
        conditions,
    }
}

/// One row of the `/status` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReport {
    pub name: String,
    #[serde(rename = "type")]
    pub server_type: &'static str,
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    pub status: MCPServerStatus,
}

/// The whole `/status` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetReport {
    pub servers: Vec<ServerReport>,
    pub invalid_manifests: Vec<String>,
    pub tools: usize,
    pub clients: usize,
    /// Open per-user sessions to SSO servers, all users together.
    pub user_sessions: u64,
    /// Tool policies: those in force, and those that could not be used.
    pub policies: Vec<PolicyReport>,
    /// Agents connected to this replica now.
    pub agents: Vec<AgentReport>,
}

/// One connected agent in the `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub name: String,
    /// The servers its manifests declare (as it said when it connected).
    pub servers: Vec<String>,
    /// Sessions the gateway holds through it now.
    pub sessions: usize,
}

/// One tool policy in the `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub name: String,
    pub origin: String,
    /// Rules in force (the last good ones, for a policy that broke since).
    pub rules: usize,
    /// `Active` (its rules apply) or `Invalid` (none of it applies).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Every policy in force or named by a problem, by name.
pub fn policy_reports(policy: &Policy, problems: &[ManifestProblem]) -> Vec<PolicyReport> {
    let problem_of = |name: &str| {
        problems
            .iter()
            .find(|p| p.policy.as_deref() == Some(name))
            .map(|p| p.to_string())
    };
    let mut reports: Vec<PolicyReport> = policy
        .sources
        .iter()
        .map(|(name, origin, rules)| PolicyReport {
            name: name.clone(),
            origin: origin.clone(),
            rules: *rules,
            state: "Active",
            last_error: problem_of(name),
        })
        .collect();
    for problem in problems {
        let Some(name) = &problem.policy else {
            continue;
        };
        if !reports.iter().any(|r| &r.name == name) {
            reports.push(PolicyReport {
                name: name.clone(),
                origin: problem.origin.clone(),
                rules: 0,
                state: "Invalid",
                last_error: Some(problem.to_string()),
            });
        }
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}
