//! What a caller sees under the policy: a tool it may call nowhere is not
//! listed, and a folded tool lists only the instances it may call it on.
//! `confirm` counts as callable (the call asks first).

use std::sync::Arc;

use rmcp::model::{Tool, ToolAnnotations};

use super::{CallerClass, Policy, Target, Verdict};
use crate::catalog::family::{FamilyTool, restricted};
use crate::catalog::{Catalog, ServerFacts};

/// The facts `catalog` holds on `server` (none for a server it lacks).
pub fn facts<'c>(catalog: &'c Catalog, server: &str) -> &'c ServerFacts {
    static NONE: std::sync::OnceLock<ServerFacts> = std::sync::OnceLock::new();
    catalog
        .servers
        .get(server)
        .map(|f| &**f)
        .unwrap_or_else(|| NONE.get_or_init(ServerFacts::default))
}

/// The verdict on each member of a folded tool, in member order.
pub fn member_verdicts(
    policy: &Policy,
    class: &CallerClass,
    catalog: &Catalog,
    route: &FamilyTool,
    annotations: Option<&ToolAnnotations>,
) -> Vec<Verdict> {
    route
        .members
        .iter()
        .map(|member| {
            policy.decide(
                class,
                &Target {
                    server: &member.server,
                    facts: facts(catalog, &member.server),
                    tool: &route.tool,
                    annotations,
                },
            )
        })
        .collect()
}

/// The catalog's tools as a caller of `class` sees them.
pub fn visible_tools(policy: &Policy, class: &CallerClass, catalog: &Catalog) -> Arc<Vec<Tool>> {
    if policy.is_empty() {
        return catalog.tools.clone();
    }
    let mut shown = Vec::with_capacity(catalog.tools.len());
    for tool in catalog.tools.iter() {
        let exposed = tool.name.as_ref();
        if let Some(route) = catalog.family_tool(exposed) {
            let verdicts =
                member_verdicts(policy, class, catalog, route, tool.annotations.as_ref());
            let allowed: Vec<_> = route
                .members
                .iter()
                .zip(&verdicts)
                .filter(|(_, v)| !matches!(v, Verdict::Deny { .. }))
                .map(|(m, _)| m.clone())
                .collect();
            if allowed.len() == route.members.len() {
                shown.push(tool.clone());
            } else if !allowed.is_empty() {
                shown.push(restricted(tool, route, allowed));
            }
        } else if let Some(route) = catalog.tool(exposed) {
            let verdict = policy.decide(
                class,
                &Target {
                    server: &route.server,
                    facts: facts(catalog, &route.server),
                    tool: &route.name,
                    annotations: tool.annotations.as_ref(),
                },
            );
            if !matches!(verdict, Verdict::Deny { .. }) {
                shown.push(tool.clone());
            }
        }
    }
    Arc::new(shown)
}
