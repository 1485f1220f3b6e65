//! Shared vocabulary at the bottom floor: who is calling (the identity the
//! inbound side proves and the outbound side acts as) and secret values.
//! Tokens and Secret values are [`SecretValue`]s, so an identity can be
//! logged (`{:?}`) without leaking them.

use std::fmt;

use chrono::{DateTime, Utc};

/// A value read from a Secret. It prints as `<redacted>` and cannot be
/// serialized, so it never reaches a log line, a status or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user as the central provider (or a trusted issuer) names them. Issuer and
/// subject together are the user's key; nothing else identifies a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    pub issuer: String,
    pub subject: String,
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.subject, self.issuer)
    }
}

/// How the caller proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A token the gateway issued after a login at the central provider.
    GatewayLogin,
    /// A JWT from a configured trusted issuer, presented directly.
    TrustedJwt,
    /// Named in headers nobody checks (`--insecure-demo-identity`, never
    /// with auth on): for trying policies without a login.
    InsecureDemo,
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct UserIdentity {
    pub key: UserKey,
    /// For people: `preferred_username`, `email` or `name`, whichever came first.
    pub display_name: Option<String>,
    /// The user's ID token from the central provider (or the trusted JWT
    /// itself): what is forwarded, and the subject token of an exchange.
    pub id_token: Option<SecretValue>,
    /// When `id_token` (and so this identity) expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub source: IdentitySource,
    /// The OAuth client the caller's token was issued to, when known (a
    /// trusted JWT's `azp` or `client_id`; the name a client registered
    /// with the gateway under).
    pub client: Option<String>,
    /// The caller's groups, when the token names them (`groups`).
    pub groups: Vec<String>,
}

impl UserIdentity {
    /// The name to show a person: display name, else the subject.
    pub fn shown_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.key.subject)
    }
}
