//! Single sign-on. Inbound: the gateway is the MCP clients' OAuth
//! authorization server, fronting the central OIDC provider, and it also
//! accepts bearer JWTs from trusted issuers. Outbound: per downstream server it
//! forwards the user's token or exchanges it (RFC 8693) at that cluster's Dex,
//! through a token cache.
//!
//! Module map:
//! - who is calling ([`UserIdentity`], in `api`, the bottom floor), shared by both sides.
//! - [`settings`]: the `auth:` section of the config file.
//! - [`jwks`]: JWKS discovery, caching and JWT signature checks.
//! - [`seal`]: authenticated encryption of the gateway's own tokens.
//! - [`server`]: the authorization-server endpoints (metadata, registration,
//!   authorize, callback, token) and bearer validation for `/mcp`.
//! - [`exchange`]: the RFC 8693 exchange and its cache.
//! - [`html`]: escaping for the login flows' small HTML pages.
//! - [`outbound`]: per-user credentials for SSO servers (forward or exchange).
//! - [`status`]: the per-user auth status report (`flotilla auth status`).

pub mod exchange;
pub mod html;
pub mod jwks;
pub mod outbound;
pub mod seal;
pub mod server;
pub mod settings;
pub mod status;

pub use crate::api::{IdentitySource, UserIdentity, UserKey};
