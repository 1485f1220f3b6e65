//! Single sign-on. Inbound: the gateway is the MCP clients' OAuth
//! authorization server, fronting the central OIDC provider, and it also
//! accepts bearer JWTs from trusted issuers. Outbound: per downstream server it
//! forwards the user's token or exchanges it (RFC 8693) at that cluster's Dex,
//! through a token cache.
//!
//! Module map:
//! - who is calling ([`UserIdentity`], in `api`, the bottom floor), shared by both sides.
//! - [`inbound`]: who may call the gateway. The authorization-server
//!   endpoints (metadata, registration, authorize, callback, token,
//!   revocation), bearer validation for `/mcp`, and the sealing of the
//!   gateway's own tokens ([`inbound::seal`]).
//! - [`outbound`]: what the gateway presents downstream. Per-user credentials
//!   for SSO servers (forward or exchange), the RFC 8693 exchange and its
//!   cache ([`outbound::exchange`]).
//! - shared by both: [`settings`] (the `auth:` section of the config file),
//!   [`jwks`] (JWKS discovery, caching, JWT signature checks), [`html`]
//!   (escaping for the small HTML pages of the login flows), [`status`] (the
//!   per-user auth status report, `flotilla auth status`).

pub mod html;
pub mod inbound;
pub mod jwks;
pub mod outbound;
pub mod settings;
pub mod status;

pub use crate::api::{IdentitySource, UserIdentity, UserKey};
