//! The bearer credential a per-user upstream session presents. The fleet
//! only asks for "the token to send now" and reports "the server rejected
//! this one"; how a token is obtained (forwarded, exchanged, cached) is the
//! auth module's business.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::api::SecretValue;
use crate::api::SsoMode;
use crate::api::UserIdentity;

/// Why no token could be had for a request. The message is shown to the
/// user (status lines, tool errors) and never contains a token.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(pub String);

/// A source of bearer tokens for one (user, server) session.
pub trait UpstreamCredential: Send + Sync {
    /// How this credential reaches the server (for status lines).
    fn mode(&self) -> SsoMode;
    /// The token to send with the next request.
    fn bearer(&self) -> BoxFuture<'_, Result<SecretValue, CredentialError>>;
    /// The server answered 401 to `rejected`: a fresh token to retry with
    /// once, or an error when none can be had.
    fn after_rejection<'a>(
        &'a self,
        rejected: &'a SecretValue,
    ) -> BoxFuture<'a, Result<SecretValue, CredentialError>>;
    /// The same user presented a newer identity (a refreshed ID token).
    fn update_user(&self, user: &Arc<UserIdentity>);
}

/// Shared handle on a credential.
pub type CredentialRef = Arc<dyn UpstreamCredential>;
