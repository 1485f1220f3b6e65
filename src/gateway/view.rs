//! One caller's view of the catalog: what it may see and call, and the
//! upstreams behind it (its own sessions to SSO servers, the fleet's for the
//! rest), with the tool policy in force. The `tools/list` answer is
//! filtered by the policy and serialized once per caller class (callers the
//! policy cannot tell apart share it). Built by `user_view`; read by every
//! request path. It names nothing of the gateway above it but the gateway's
//! own tool (`overview`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use serde_json::Value;

use super::overview;
use crate::api::UserIdentity;
use crate::catalog::Catalog;
use crate::catalog::FamilyTool;
use crate::fleet::credential::CredentialError;
use crate::fleet::{Fleet, Upstream};
use crate::policy::{self, CallerClass, Policy, Target, Verdict, Who};

/// The most caller classes whose listings one view keeps; more are
/// computed for each request (classes are few: one per distinct set of
/// rules a caller's identity matches).
const MAX_LISTINGS: usize = 256;

/// The user an MCP request was authenticated as (set by the `/mcp` auth
/// layer into the HTTP request's extensions, which rmcp hands through).
pub fn caller(extensions: &rmcp::model::Extensions) -> Option<Arc<UserIdentity>> {
    extensions
        .get::<http::request::Parts>()?
        .extensions
        .get::<Arc<UserIdentity>>()
        .cloned()
}

/// One caller's catalog and the upstreams behind it.
pub struct View {
    pub catalog: Arc<Catalog>,
    /// The caller's own sessions to SSO servers, by server name.
    pub own: HashMap<Arc<str>, Arc<Upstream>>,
    /// SSO servers the caller has no session to, and why.
    pub unavailable: HashMap<Arc<str>, CredentialError>,
    /// `tools/list`'s answer when no policy filters it, serialized on first use.
    pub(super) tools_json: OnceLock<Arc<ToolsJson>>,
    /// The fleet, for the servers the caller shares with everybody.
    pub(super) fleet: Fleet,
    /// The tool policy in force when the view was built.
    pub policy: Arc<Policy>,
    /// The filtered lists, by caller class.
    listings: Mutex<HashMap<CallerClass, Arc<Listing>>>,
}

/// The tools one caller class sees, and their `tools/list` JSON.
pub struct Listing {
    pub tools: Arc<Vec<rmcp::model::Tool>>,
    json: OnceLock<Arc<ToolsJson>>,
}

impl View {
    /// A view of `catalog` with no sessions of its own.
    pub fn of(catalog: Arc<Catalog>, fleet: Fleet, policy: Arc<Policy>) -> Self {
        Self::with_sessions(catalog, HashMap::new(), HashMap::new(), fleet, policy)
    }

    /// A view of `catalog` with the caller's own sessions.
    pub fn with_sessions(
        catalog: Arc<Catalog>,
        own: HashMap<Arc<str>, Arc<Upstream>>,
        unavailable: HashMap<Arc<str>, CredentialError>,
        fleet: Fleet,
        policy: Arc<Policy>,
    ) -> Self {
        Self {
            catalog,
            own,
            unavailable,
            tools_json: OnceLock::new(),
            fleet,
            policy,
            listings: Mutex::default(),
        }
    }

    /// The tools `user` sees (the gateway's own aside), as the policy lets it.
    pub fn tools_for(&self, user: Option<&UserIdentity>) -> Arc<Vec<rmcp::model::Tool>> {
        match self.listing(user) {
            Some(listing) => listing.tools.clone(),
            None => self.catalog.tools.clone(),
        }
    }

    /// `user`'s tool list as JSON, serialized once per caller class.
    pub fn tools_json_for(&self, user: Option<&UserIdentity>) -> Arc<ToolsJson> {
        match self.listing(user) {
            Some(listing) => listing
                .json
                .get_or_init(|| Arc::new(ToolsJson::of(&self.catalog, &listing.tools)))
                .clone(),
            None => self
                .tools_json
                .get_or_init(|| Arc::new(ToolsJson::of(&self.catalog, &self.catalog.tools)))
                .clone(),
        }
    }

    /// The policy's verdict on `user` calling `tool` (the upstream's name)
    /// on `server`, listed as `exposed`.
    pub fn verdict(
        &self,
        user: Option<&UserIdentity>,
        exposed: &str,
        server: &str,
        tool: &str,
    ) -> Verdict {
        if self.policy.is_empty() {
            return Verdict::Allow;
        }
        let class = self.policy.classify(&Who::of(user));
        let annotations = self
            .catalog
            .listed_tool(exposed)
            .and_then(|t| t.annotations.as_ref());
        self.policy.decide(
            &class,
            &Target {
                server,
                facts: policy::listing::facts(&self.catalog, server),
                tool,
                annotations,
            },
        )
    }

    /// The policy's verdict on each member of the folded tool `exposed`.
    pub fn member_verdicts(
        &self,
        user: Option<&UserIdentity>,
        exposed: &str,
        route: &FamilyTool,
    ) -> Vec<Verdict> {
        if self.policy.is_empty() {
            return vec![Verdict::Allow; route.members.len()];
        }
        let class = self.policy.classify(&Who::of(user));
        // A tool not listed has no annotations: the rules see MCP's
        // defaults (not read-only, destructive), never an allow by omission.
        let annotations = self
            .catalog
            .listed_tool(exposed)
            .and_then(|t| t.annotations.as_ref());
        policy::listing::member_verdicts(&self.policy, &class, &self.catalog, route, annotations)
    }

    /// The policy's listing for `user`; `None` when no policy filters.
    fn listing(&self, user: Option<&UserIdentity>) -> Option<Arc<Listing>> {
        if self.policy.is_empty() {
            return None;
        }
        let class = self.policy.classify(&Who::of(user));
        if let Some(found) = self.listings.lock().ok()?.get(&class) {
            return Some(found.clone());
        }
        let listing = Arc::new(Listing {
            tools: policy::listing::visible_tools(&self.policy, &class, &self.catalog),
            json: OnceLock::new(),
        });
        if let Ok(mut listings) = self.listings.lock()
            && listings.len() < MAX_LISTINGS
        {
            listings.insert(class, listing.clone());
        }
        Some(listing)
    }

    /// The upstream serving `server` for this caller.
    pub fn upstream(&self, server: &str) -> Option<Arc<Upstream>> {
        self.own
            .get(server)
            .cloned()
            .or_else(|| self.fleet.get(server))
    }
}

/// A user's cached view and the fleet version it was built at.
pub(super) struct CachedView {
    pub version: u64,
    pub view: Arc<View>,
}

/// The serialized tool list of one catalog snapshot.
pub struct ToolsJson {
    /// `[...]`: every tool, as JSON.
    pub array: Bytes,
}

impl ToolsJson {
    /// The gateway's own tool, then `tools` (of `catalog`), each with the
    /// members its upstream listed beyond rmcp's model.
    pub fn of(catalog: &Catalog, tools: &[rmcp::model::Tool]) -> Self {
        let exposed = overview::exposed_tools(tools);
        let mut tools = Vec::with_capacity(exposed.len());
        for tool in &exposed {
            let mut value = serde_json::to_value(tool).unwrap_or(Value::Null);
            if let (Value::Object(object), Some(extras)) =
                (&mut value, catalog.tool_extras.get(tool.name.as_ref()))
            {
                for (key, member) in extras.iter() {
                    if key != "name" {
                        object.insert(key.clone(), member.clone());
                    }
                }
            }
            tools.push(value);
        }
        let array = serde_json::to_vec(&tools).unwrap_or_else(|_| b"[]".to_vec());
        Self {
            array: Bytes::from(array),
        }
    }
}
