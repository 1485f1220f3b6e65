//! RFC 8693 token exchange at a downstream cluster's Dex, behind a cache:
//! [`ExchangeTarget`] (where and how, from `spec.auth.tokenExchange`),
//! [`TokenExchanger`] (the cache and its single-flight, refresh-ahead and
//! failure backoff) and [`ExchangeError`] (what a status line shows).
//!
//! - `request`: one exchange on the wire and the checks on the issued token.
//! - `cache`: cache key, entries, per-entry expiry, failure memory.
//!
//! No message or log line here contains a token or the client secret.

mod cache;
mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use moka::ops::compute::{CompResult, Op};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::cache::{CacheKey, CachedToken, Failures, UntilStale};
use crate::api::SecretValue;
use crate::api::TokenExchangeSpec;
use crate::api::{UserIdentity, UserKey};
use crate::auth::jwks::JwksCache;
use crate::auth::settings::TokenCacheSettings;
use crate::source::ClientCredentials;

/// Scopes asked for when the spec names none (Muster's default).
pub const DEFAULT_SCOPES: &str = "openid profile email groups";
/// Token type asked for when the spec names none (Dex's and Muster's default).
pub const DEFAULT_REQUESTED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A status line quotes at most this much of an error.
const STATUS_MAX_CHARS: usize = 300;

/// Where and how to exchange, from `spec.auth.tokenExchange` plus resolved
/// client credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeTarget {
    /// The downstream Dex's token endpoint (`dexTokenEndpoint`).
    pub endpoint: String,
    /// `iss` an exchanged JWT must carry, and whose JWKS verifies it.
    pub expected_issuer: String,
    /// Dex's `connector_id`: the connector on the downstream Dex that trusts
    /// the central provider. Dex requires it; sent only when set.
    pub connector_id: Option<String>,
    /// Space-separated scopes (default [`DEFAULT_SCOPES`]).
    pub scopes: String,
    /// Default [`DEFAULT_REQUESTED_TOKEN_TYPE`].
    pub requested_token_type: String,
    /// The gateway's client at the downstream Dex.
    pub client: ClientCredentials,
    /// The server the token is for: what its counts are filed under
    /// ([`ExchangeCounts`]); not part of the cache key.
    pub server: Arc<str>,
}

impl ExchangeTarget {
    /// Validates and fills defaults. `enabled` is the caller's business. The
    /// endpoint must be https, or plain http on a loopback host (tests and
    /// port-forwards): the request carries the user's ID token and the client
    /// secret. `expectedIssuer` defaults to the endpoint without a trailing
    /// `/token`.
    pub fn from_spec(
        spec: &TokenExchangeSpec,
        client: Option<&ClientCredentials>,
    ) -> Result<Self, String> {
        let endpoint = non_empty(spec.dex_token_endpoint.as_deref())
            .ok_or("tokenExchange.dexTokenEndpoint is not set")?;
        check_endpoint_url(endpoint)?;
        let client = client.ok_or(
            "tokenExchange has no client credentials \
             (clientCredentialsSecretRef is missing or could not be read)",
        )?;
        if client.client_id.trim().is_empty() {
            return Err("tokenExchange client credentials have an empty client id".into());
        }
        let expected_issuer = match non_empty(spec.expected_issuer.as_deref()) {
            Some(issuer) => issuer.to_string(),
            None => issuer_from_endpoint(endpoint),
        };
        Ok(Self {
            endpoint: endpoint.to_string(),
            expected_issuer,
            connector_id: non_empty(spec.connector_id.as_deref()).map(str::to_string),
            scopes: non_empty(spec.scopes.as_deref())
                .unwrap_or(DEFAULT_SCOPES)
                .to_string(),
            requested_token_type: non_empty(spec.requested_token_type.as_deref())
                .unwrap_or(DEFAULT_REQUESTED_TOKEN_TYPE)
                .to_string(),
            client: client.clone(),
            server: Arc::from(""),
        })
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn check_endpoint_url(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("tokenExchange.dexTokenEndpoint {endpoint:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "tokenExchange.dexTokenEndpoint {endpoint:?} must use https \
             (plain http only on a loopback host)"
        )),
    }
}

fn issuer_from_endpoint(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    trimmed
        .strip_suffix("/token")
        .unwrap_or(trimmed)
        .to_string()
}

/// Why no exchanged token could be had. Messages never contain a token or a
/// client secret; text quoted from the endpoint is scrubbed of both.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("no ID token to exchange ({0})")]
    NoIdToken(String),
    #[error("token exchange endpoint {endpoint} unreachable: {cause}")]
    Unreachable { endpoint: String, cause: String },
    /// The endpoint answered with an OAuth error (`access_denied`, `invalid_client`, ...).
    #[error(
        "exchange rejected: {error}{}",
        .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Rejected {
        error: String,
        description: Option<String>,
    },
    #[error("exchange failed: HTTP {status} from {endpoint}")]
    HttpStatus { status: u16, endpoint: String },
    #[error("exchange failed: unusable answer from {endpoint}: {reason}")]
    InvalidResponse { endpoint: String, reason: String },
    #[error("exchanged token's issuer {got} is not the expected {expected}")]
    WrongIssuer { expected: String, got: String },
    #[error("exchanged token's signature did not verify: {0}")]
    Unverified(String),
    /// An exchange for the same user and target failed moments ago; the
    /// endpoint is left alone until the window closes.
    #[error("exchange failed recently ({reason}); retrying in {retry_in_secs}s")]
    Backoff { reason: String, retry_in_secs: u64 },
}

impl ExchangeError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::NoIdToken(_) => "no_id_token",
            ExchangeError::Unreachable { .. } => "unreachable",
            ExchangeError::Rejected { .. } => "rejected",
            ExchangeError::HttpStatus { .. } => "http_status",
            ExchangeError::InvalidResponse { .. } => "invalid_response",
            ExchangeError::WrongIssuer { .. } => "wrong_issuer",
            ExchangeError::Unverified(_) => "unverified",
            ExchangeError::Backoff { .. } => "backoff",
        }
    }
}

/// The error as a status line quotes it (`Failed [SSO: <this>]`): the
/// Display text on one line, cut at a few hundred characters.
pub fn describe_for_status(err: &ExchangeError) -> String {
    request::quote(&err.to_string(), &[], STATUS_MAX_CHARS)
}

/// Exchanged tokens per (user, target), cached until shortly before they
/// expire. See the README beside this file for the design.
pub struct TokenExchanger {
    inner: Arc<Inner>,
    /// Cancels background refreshes when the exchanger goes.
    _stop_refreshes: DropGuard,
}

/// One server's exchange-cache counts (for `/metrics`).
#[derive(Debug, Default)]
pub struct ExchangeCounts {
    /// Tokens served from the cache.
    pub hits: AtomicU64,
    /// Requests that found no token in the cache.
    pub misses: AtomicU64,
    /// Exchanges the server's Dex granted (and whose token checked out).
    pub exchanged: AtomicU64,
    /// Exchanges that failed (refused, unreachable, or an unusable token).
    pub failures: AtomicU64,
}

/// Counts per server; bounded by the servers that ever used an exchange.
#[derive(Default)]
struct CountsByServer(std::sync::Mutex<std::collections::BTreeMap<Arc<str>, Arc<ExchangeCounts>>>);

impl CountsByServer {
    fn of(&self, server: &Arc<str>) -> Arc<ExchangeCounts> {
        let Ok(mut all) = self.0.lock() else {
            return Arc::default();
        };
        all.entry(server.clone()).or_default().clone()
    }

    fn all(&self) -> Vec<(Arc<str>, Arc<ExchangeCounts>)> {
        self.0
            .lock()
            .map(|all| all.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    settings: TokenCacheSettings,
    http: reqwest::Client,
    jwks: Arc<JwksCache>,
    tokens: moka::future::Cache<CacheKey, Arc<CachedToken>>,
    failures: Failures,
    sent: AtomicU64,
    counts: CountsByServer,
    stop: CancellationToken,
}

impl TokenExchanger {
    pub fn new(settings: TokenCacheSettings, http: reqwest::Client, jwks: Arc<JwksCache>) -> Self {
        let stop = CancellationToken::new();
        let tokens = moka::future::Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(UntilStale)
            .build();
        let failures = Failures::new(&settings);
        Self {
            _stop_refreshes: stop.clone().drop_guard(),
            inner: Arc::new(Inner {
                settings,
                http,
                jwks,
                tokens,
                failures,
                sent: AtomicU64::new(0),
                counts: CountsByServer::default(),
                stop,
            }),
        }
    }

    /// The exchanged token for this user at this target, from cache or by
    /// exchanging the user's ID token. Concurrent misses share one exchange;
    /// a hit close to expiry also starts one background re-exchange.
    pub async fn token(
        &self,
        user: &UserIdentity,
        target: &ExchangeTarget,
    ) -> Result<SecretValue, ExchangeError> {
        let key = CacheKey::new(&user.key, target);
        let counts = self.inner.counts.of(&target.server);
        if let Some(hit) = self.inner.tokens.get(&key).await {
            bump(&counts.hits);
            if hit.refresh_due(Instant::now()) {
                self.start_refresh(key, &hit, user, target).await;
            }
            return Ok(hit.token.clone());
        }
        bump(&counts.misses);
        let subject = subject_token(user)?;
        // Fast path out during a backoff window, before joining any waiters.
        self.inner.failures.check(&key).await?;
        self.inner
            .tokens
            .try_get_with(key, self.inner.exchange(key, &user.key, subject, target))
            .await
            .map(|entry| entry.token.clone())
            .map_err(|shared| (*shared).clone())
    }

    /// The downstream answered 401 to `rejected`: drop it (only if the cache
    /// still holds exactly that token) and exchange again. Calls for one key
    /// run one at a time, so concurrent callers with the same rejected token
    /// share one re-exchange: the first replaces it, the rest find the
    /// replacement. A token that was already replaced is not exchanged again.
    pub async fn token_after_rejection(
        &self,
        user: &UserIdentity,
        target: &ExchangeTarget,
        rejected: &SecretValue,
    ) -> Result<SecretValue, ExchangeError> {
        let key = CacheKey::new(&user.key, target);
        let inner = &self.inner;
        let mut failure = None;
        let slot = &mut failure;
        let outcome = inner
            .tokens
            .entry(key)
            .and_compute_with(|current| async move {
                if let Some(current) = &current
                    && current.value().token != *rejected
                {
                    return Op::Nop;
                }
                tracing::info!(
                    user = %user.key.subject,
                    endpoint = %target.endpoint,
                    "downstream rejected the exchanged token; exchanging again"
                );
                let result = match subject_token(user) {
                    Ok(subject) => inner.exchange(key, &user.key, subject, target).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(fresh) => Op::Put(fresh),
                    Err(e) => {
                        *slot = Some(e);
                        Op::Remove
                    }
                }
            })
            .await;
        if let Some(e) = failure {
            return Err(e);
        }
        match outcome {
            CompResult::Inserted(entry)
            | CompResult::ReplacedWith(entry)
            | CompResult::Unchanged(entry) => Ok(entry.into_value().token.clone()),
            // Only reached after a failure, which returned above.
            CompResult::Removed(_) | CompResult::StillNone(_) => self.token(user, target).await,
        }
    }

    /// How many exchange requests were sent (for tests/metrics).
    pub fn exchanges_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Each server's cache counts, by server name.
    pub fn counts(&self) -> Vec<(Arc<str>, Arc<ExchangeCounts>)> {
        self.inner.counts.all()
    }

    /// Starts one background re-exchange for `hit` unless one runs or the
    /// key is backing off. The current token keeps being served meanwhile,
    /// and after a failed refresh until it goes stale.
    async fn start_refresh(
        &self,
        key: CacheKey,
        hit: &Arc<CachedToken>,
        user: &UserIdentity,
        target: &ExchangeTarget,
    ) {
        let Ok(subject) = subject_token(user) else {
            return;
        };
        if self.inner.failures.check(&key).await.is_err() {
            return;
        }
        if hit
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        tracing::debug!(
            user = %user.key.subject,
            endpoint = %target.endpoint,
            "exchanged token near expiry; refreshing in the background"
        );
        let inner = self.inner.clone();
        let hit = hit.clone();
        let user_key = user.key.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let refresh = async {
                match inner.exchange(key, &user_key, subject, &target).await {
                    Ok(fresh) => inner.tokens.insert(key, fresh).await,
                    Err(_) => hit.refreshing.store(false, Ordering::Release),
                }
            };
            tokio::select! {
                () = inner.stop.cancelled() => {}
                () = refresh => {}
            }
        });
    }
}

impl Inner {
    /// One exchange, unless the key is backing off. Success clears the key's
    /// failures; failure widens its backoff window.
    async fn exchange(
        &self,
        key: CacheKey,
        user: &UserKey,
        subject: Subject,
        target: &ExchangeTarget,
    ) -> Result<Arc<CachedToken>, ExchangeError> {
        self.failures.check(&key).await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let counts = self.counts.of(&target.server);
        match request::exchange(&self.http, &self.jwks, user, &subject.token, target).await {
            Ok(mut issued) => {
                bump(&counts.exchanged);
                self.failures.clear(&key).await;
                issued.lifetime = subject.cap(issued.lifetime);
                tracing::debug!(
                    user = %user.subject,
                    endpoint = %target.endpoint,
                    lifetime_secs = issued.lifetime.as_secs(),
                    "token exchanged"
                );
                Ok(CachedToken::new(
                    issued.token,
                    issued.lifetime,
                    &self.settings,
                ))
            }
            Err(error) => {
                bump(&counts.failures);
                let backoff = self.failures.record(key, &error).await;
                tracing::warn!(
                    user = %user.subject,
                    endpoint = %target.endpoint,
                    %error,
                    kind = error.kind(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "token exchange failed"
                );
                Err(error)
            }
        }
    }
}

/// The token exchanged for another, and when it expires: an exchanged
/// token is cached no longer than the token it was exchanged for.
struct Subject {
    token: SecretValue,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Subject {
    /// `lifetime`, cut to what is left of the subject token's.
    fn cap(&self, lifetime: std::time::Duration) -> std::time::Duration {
        match self.expires_at {
            Some(expiry) => (expiry - chrono::Utc::now())
                .to_std()
                .map_or(lifetime, |left| lifetime.min(left)),
            None => lifetime,
        }
    }
}

fn subject_token(user: &UserIdentity) -> Result<Subject, ExchangeError> {
    let token = user.id_token.clone().ok_or_else(|| {
        ExchangeError::NoIdToken(format!("{} authenticated without one", user.shown_name()))
    })?;
    Ok(Subject {
        token,
        expires_at: user.expires_at,
    })
}

#[cfg(test)]
mod tests;
