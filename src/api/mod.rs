//! The resources (`flotilla.dev/v1alpha1`): MCPServer, MCPServerSet and ToolPolicy, each
//! one Rust type serving the manifest-directory source, the Kubernetes
//! controller and the generated CRD; plus the vocabulary every floor shares
//! (who is calling, secret values, label selectors).

mod identity;
mod mcp_server;
mod mcp_server_set;
mod policy;
mod selector;
mod validate;
mod validate_policy;

pub use identity::{IdentitySource, SecretValue, UserIdentity, UserKey};
pub use mcp_server::*;
pub use mcp_server_set::*;
pub use policy::*;
pub use selector::{LabelSelector, is_selector};
pub use validate::{ValidationError, validate};
pub use validate_policy::{MAX_RULES, validate_policy};
