//! The `auth:` section of the config file. With no `auth:` section the gateway
//! is open (the quickstart); with one, `/mcp` needs a bearer token.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::fleet::UserSessionSettings;

/// `auth:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// The central OIDC provider users log in at (Dex in production).
    pub oidc: Option<OidcConfig>,
    /// File holding the keys that seal the gateway's own tokens: one base64
    /// 32-byte key per line, the first seals, all unseal (rotation). In
    /// Kubernetes, mount it from a Secret; every replica must share it.
    pub sealing_key_file: Option<PathBuf>,
    /// Lifetime of the access tokens the gateway issues, capped by the
    /// user's ID-token expiry (default 3600).
    pub access_token_lifetime_seconds: Option<u64>,
    /// Lifetime of the gateway's refresh tokens (default 30 days).
    pub refresh_token_lifetime_seconds: Option<u64>,
    /// Issuers whose JWTs `/mcp` accepts directly as bearer tokens.
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
    /// Accept client ID metadata documents served over plain http from
    /// loopback hosts (development and tests only; default false).
    pub allow_loopback_http_client_metadata: Option<bool>,
    /// The exchanged-token cache.
    pub token_cache: Option<TokenCacheConfig>,
    /// Per-user downstream sessions.
    pub user_sessions: Option<UserSessionsConfig>,
}

/// The central OIDC provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The gateway's client at the provider.
    pub client_id: String,
    /// File holding the client secret (absent: a public client using PKCE only).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes requested at login (default `openid profile email offline_access`);
    /// `audience:server:client_id:<aud>` scopes for forwardToken servers'
    /// `requiredAudiences` are added to these.
    pub scopes: Option<Vec<String>>,
}

/// A trusted issuer of bearer JWTs (e.g. the provider itself, or the
/// Kubernetes service-account issuer for machine clients).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    /// Accepted `aud` values; at least one must match.
    pub audiences: Vec<String>,
    /// JWKS URL (default: from the issuer's discovery document).
    pub jwks_uri: Option<String>,
}

/// `tokenCache` in `auth:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Entries kept at most (default 10000).
    pub max_entries: Option<u64>,
    /// A token is treated as expired this long before its expiry (default 30).
    pub safety_margin_seconds: Option<u64>,
    /// A token is refreshed in the background this long before it is treated
    /// as expired (default 60).
    pub refresh_ahead_seconds: Option<u64>,
    /// First delay before a failed exchange is retried (default 1); doubles
    /// per consecutive failure up to `failureBackoffMaxSeconds` (default 30).
    pub failure_backoff_seconds: Option<u64>,
    pub failure_backoff_max_seconds: Option<u64>,
}

/// `userSessions` in `auth:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSessionsConfig {
    /// A user's downstream session is closed after this long unused (default 900).
    pub idle_seconds: Option<u64>,
    /// How long a first request waits for the user's sessions to open (default 5).
    pub warmup_seconds: Option<u64>,
    /// Per-user sessions kept at most, all users together (default 10000).
    pub max_sessions: Option<u64>,
}

/// Resolved token-cache settings.
#[derive(Clone, Debug)]
pub struct TokenCacheSettings {
    pub max_entries: u64,
    pub safety_margin: Duration,
    pub refresh_ahead: Duration,
    pub failure_backoff: Duration,
    pub failure_backoff_max: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            safety_margin: Duration::from_secs(30),
            refresh_ahead: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(1),
            failure_backoff_max: Duration::from_secs(30),
        }
    }
}

impl From<&TokenCacheConfig> for TokenCacheSettings {
    fn from(given: &TokenCacheConfig) -> Self {
        let d = Self::default();
        let secs =
            |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
        Self {
            max_entries: given.max_entries.unwrap_or(d.max_entries).max(1),
            safety_margin: secs(given.safety_margin_seconds, d.safety_margin),
            refresh_ahead: secs(given.refresh_ahead_seconds, d.refresh_ahead),
            failure_backoff: secs(given.failure_backoff_seconds, d.failure_backoff),
            failure_backoff_max: secs(given.failure_backoff_max_seconds, d.failure_backoff_max),
        }
    }
}

/// The config file's `userSessions`, resolved (the settings are the fleet's).
impl From<&UserSessionsConfig> for UserSessionSettings {
    fn from(given: &UserSessionsConfig) -> Self {
        let d = Self::default();
        Self {
            idle: given
                .idle_seconds
                .map(Duration::from_secs)
                .unwrap_or(d.idle),
            warmup: given
                .warmup_seconds
                .map(Duration::from_secs)
                .unwrap_or(d.warmup),
            max_sessions: given.max_sessions.unwrap_or(d.max_sessions).max(1),
        }
    }
}
