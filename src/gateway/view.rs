//! One caller's view of the catalog: what it may see and call, and the
//! upstreams behind it (its own sessions to SSO servers, the fleet's for the
//! rest), with the `tools/list` answer serialized once per view. Built by
//! `user_view`; read by every request path. It names nothing of the gateway
//! above it but the gateway's own tool (`overview`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use serde_json::Value;

use super::overview;
use crate::api::UserIdentity;
use crate::catalog::Catalog;
use crate::fleet::credential::CredentialError;
use crate::fleet::{Fleet, Upstream};

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
#[derive(Clone)]
pub struct View {
    pub catalog: Arc<Catalog>,
    /// The caller's own sessions to SSO servers, by server name.
    pub own: HashMap<Arc<str>, Arc<Upstream>>,
    /// SSO servers the caller has no session to, and why.
    pub unavailable: HashMap<Arc<str>, CredentialError>,
    /// `tools/list`'s answer, serialized on first use.
    pub(super) tools_json: OnceLock<Arc<ToolsJson>>,
    /// The fleet, for the servers the caller shares with everybody.
    pub(super) fleet: Fleet,
}

impl View {
    /// A view of `catalog` with no sessions of its own.
    pub fn of(catalog: Arc<Catalog>, fleet: Fleet) -> Self {
        Self {
            catalog,
            own: HashMap::new(),
            unavailable: HashMap::new(),
            tools_json: OnceLock::new(),
            fleet,
        }
    }

    /// The view's tool list as JSON, serialized once.
    pub fn tools_json(&self) -> Arc<ToolsJson> {
        self.tools_json
            .get_or_init(|| Arc::new(ToolsJson::of(&self.catalog)))
            .clone()
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
    /// The gateway's own tool, then the catalog's, each with the members
    /// its upstream listed beyond rmcp's model.
    pub fn of(catalog: &Catalog) -> Self {
        let exposed = overview::exposed_tools(catalog);
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
