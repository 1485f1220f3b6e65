//! The MCPServer resource (`flotilla.dev/v1alpha1`): one Rust type serves the
//! manifest-directory source, the Kubernetes controller and the generated CRD.

mod identity;
mod mcp_server;
mod validate;

pub use identity::{IdentitySource, SecretValue, UserIdentity, UserKey};
pub use mcp_server::*;
pub use validate::{ValidationError, validate};
