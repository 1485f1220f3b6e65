//! The catalog: one immutable snapshot of everything the gateway exposes
//! (tools, resources, resource templates, prompts), with a route from each
//! exposed name back to its server. Rebuilt whenever the fleet changes and
//! swapped in atomically, so listing never asks an upstream.

pub mod build;
pub mod family;
pub mod naming;
pub mod select;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

pub use build::build;
pub use family::{Divergence, FamilyTool, Instance};

/// Where an exposed tool or prompt really lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub server: Arc<str>,
    /// The upstream's own name for it.
    pub name: String,
}

/// A name two servers both wanted. The owner keeps it; the others are
/// reported and their entry is withheld.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    pub exposed: String,
    pub kind: &'static str,
    pub owner: String,
    pub loser: String,
}

impl std::fmt::Display for Collision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} of server {:?} collides with server {:?}, which keeps it; set a distinct spec.toolPrefix",
            self.kind, self.exposed, self.loser, self.owner
        )
    }
}

/// A family as a whole: its instance argument and members (sorted by server).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilySummary {
    pub instance_arg: String,
    pub members: Vec<Instance>,
}

/// A server as policies see it: its labels and, in a family, its membership.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerFacts {
    pub labels: BTreeMap<String, String>,
    /// The family's name and this member, for a family member.
    pub family: Option<(String, Instance)>,
    /// It announced the tasks extension (SEP-2663).
    pub task_extension: bool,
}

/// One consistent view of the exposed surface.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Every server the snapshot was built from, by name.
    pub servers: HashMap<Arc<str>, Arc<ServerFacts>>,
    /// Sorted by exposed name.
    pub tools: Arc<Vec<Tool>>,
    /// What each exposed tool's listing holds beyond rmcp's model (the
    /// upstream's own members, such as `execution`), by exposed name.
    pub tool_extras: HashMap<String, Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Tools served by one server.
    pub tool_routes: HashMap<String, Route>,
    /// Folded tools served by a family.
    pub family_routes: HashMap<String, Arc<FamilyTool>>,
    /// Every family and its members, for the fleet overview.
    pub families: BTreeMap<String, FamilySummary>,
    /// Member tools that could not be folded, and why.
    pub divergences: Vec<Divergence>,
    /// Sorted by URI; URIs are exposed unchanged.
    pub resources: Arc<Vec<Resource>>,
    pub resource_routes: HashMap<String, Arc<str>>,
    pub resource_templates: Arc<Vec<ResourceTemplate>>,
    /// Literal prefix of each template (up to its first `{`) and its server,
    /// longest first, to route reads of URIs that are not listed.
    pub template_routes: Vec<(String, Arc<str>)>,
    pub prompts: Arc<Vec<Prompt>>,
    pub prompt_routes: HashMap<String, Route>,
    pub collisions: Vec<Collision>,
    /// Tools each server contributes (after collisions), for status.
    pub tool_counts: BTreeMap<String, u32>,
}

impl Catalog {
    /// Whether two snapshots list the same tools, every member alike.
    pub fn same_tools(&self, other: &Catalog) -> bool {
        self.tools == other.tools && self.tool_extras == other.tool_extras
    }

    /// Whether any tool may be called as a task (so clients are offered tasks).
    pub fn has_task_tools(&self) -> bool {
        self.tool_extras
            .keys()
            .any(|name| self.supports_tasks(name))
    }

    /// Whether a server of the snapshot announced the tasks extension
    /// (SEP-2663), so clients are offered it.
    pub fn has_task_extension(&self) -> bool {
        self.servers.values().any(|facts| facts.task_extension)
    }

    /// Whether a tool may be called as a task (2025-11-25: its `execution`
    /// says `taskSupport` optional or required).
    pub fn supports_tasks(&self, exposed: &str) -> bool {
        let support = self
            .tool_extras
            .get(exposed)
            .and_then(|e| e.get("execution"))
            .and_then(|e| e.get("taskSupport"))
            .and_then(|s| s.as_str());
        matches!(support, Some("optional" | "required"))
    }

    /// The listed tool named `exposed` (the list is sorted by name).
    pub fn listed_tool(&self, exposed: &str) -> Option<&Tool> {
        self.tools
            .binary_search_by(|t| t.name.as_ref().cmp(exposed))
            .ok()
            .map(|i| &self.tools[i])
    }

    pub fn tool(&self, exposed: &str) -> Option<&Route> {
        self.tool_routes.get(exposed)
    }

    pub fn family_tool(&self, exposed: &str) -> Option<&Arc<FamilyTool>> {
        self.family_routes.get(exposed)
    }

    pub fn divergences_of<'a>(&'a self, server: &'a str) -> impl Iterator<Item = &'a Divergence> {
        self.divergences.iter().filter(move |d| d.server == server)
    }

    pub fn prompt(&self, exposed: &str) -> Option<&Route> {
        self.prompt_routes.get(exposed)
    }

    /// The server owning a resource URI: a listed resource, else the
    /// longest matching template prefix.
    pub fn resource_server(&self, uri: &str) -> Option<&Arc<str>> {
        self.resource_routes.get(uri).or_else(|| {
            self.template_routes
                .iter()
                .find(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
                .map(|(_, server)| server)
        })
    }

    pub fn collisions_of<'a>(&'a self, server: &'a str) -> impl Iterator<Item = &'a Collision> {
        self.collisions.iter().filter(move |c| c.loser == server)
    }
}
