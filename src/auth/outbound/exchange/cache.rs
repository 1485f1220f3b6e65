//! The exchanged-token cache's parts: the key (a digest, never a token), the
//! entry with its own expiry and refresh-ahead point, moka's per-entry
//! [`Expiry`], and the per-key failure memory that backs off a failing
//! endpoint.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};

use super::{ExchangeError, ExchangeTarget};
use crate::api::SecretValue;
use crate::api::UserKey;
use crate::auth::settings::TokenCacheSettings;

/// Failure records outlive the longest backoff by this factor, so a key that
/// keeps failing keeps doubling, and one that stopped failing starts over.
const FAILURE_MEMORY_FACTOR: u32 = 4;
const MIN_FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// SHA-256 over the length-prefixed (user issuer, user subject, endpoint,
/// connector, scopes, requested token type, client id). Neither the user's
/// token nor the client secret goes in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn new(user: &UserKey, target: &ExchangeTarget) -> Self {
        let mut hasher = Sha256::new();
        let connector = target.connector_id.as_deref();
        let parts: [Option<&str>; 7] = [
            Some(&user.issuer),
            Some(&user.subject),
            Some(&target.endpoint),
            connector,
            Some(&target.scopes),
            Some(&target.requested_token_type),
            Some(&target.client.client_id),
        ];
        for part in parts {
            match part {
                // A tag keeps "no connector" apart from an empty one.
                None => hasher.update([0u8]),
                Some(text) => {
                    hasher.update([1u8]);
                    hasher.update((text.len() as u64).to_be_bytes());
                    hasher.update(text.as_bytes());
                }
            }
        }
        Self(hasher.finalize().into())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// One cached exchanged token.
pub(super) struct CachedToken {
    pub token: SecretValue,
    /// Expiry minus the safety margin: the entry leaves the cache here.
    pub stale_at: Instant,
    /// From here on a hit starts a background re-exchange.
    pub refresh_at: Instant,
    /// Set while a background re-exchange for this entry runs.
    pub refreshing: AtomicBool,
}

impl CachedToken {
    /// The refresh point is `refresh_ahead` before going stale, but never in
    /// the first half of the usable lifetime, so short-lived tokens are not
    /// re-exchanged on every hit.
    pub fn new(token: SecretValue, lifetime: Duration, settings: &TokenCacheSettings) -> Arc<Self> {
        let now = Instant::now();
        let usable = lifetime.saturating_sub(settings.safety_margin);
        let stale_at = now + usable;
        let refresh_at =
            (now + usable.saturating_sub(settings.refresh_ahead)).max(now + usable / 2);
        Arc::new(Self {
            token,
            stale_at,
            refresh_at,
            refreshing: AtomicBool::new(false),
        })
    }

    pub fn refresh_due(&self, now: Instant) -> bool {
        now >= self.refresh_at
    }
}

/// Each entry lives until its own `stale_at`.
pub(super) struct UntilStale;

impl Expiry<CacheKey, Arc<CachedToken>> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedToken>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.stale_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedToken>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.stale_at.saturating_duration_since(updated_at))
    }
}

struct Failure {
    consecutive: u32,
    retry_at: Instant,
    reason: String,
}

/// Recent exchange failures per key. While a key's window is open, callers
/// get [`ExchangeError::Backoff`] instead of a request to the endpoint.
pub(super) struct Failures {
    recent: moka::future::Cache<CacheKey, Arc<Failure>>,
    first: Duration,
    max: Duration,
}

impl Failures {
    pub fn new(settings: &TokenCacheSettings) -> Self {
        let memory = (settings.failure_backoff_max * FAILURE_MEMORY_FACTOR).max(MIN_FAILURE_MEMORY);
        Self {
            recent: moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(memory)
                .build(),
            first: settings.failure_backoff,
            max: settings.failure_backoff_max.max(settings.failure_backoff),
        }
    }

    /// `Err(Backoff)` while the key's window is open.
    pub async fn check(&self, key: &CacheKey) -> Result<(), ExchangeError> {
        let Some(failure) = self.recent.get(key).await else {
            return Ok(());
        };
        let left = failure.retry_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        Err(ExchangeError::Backoff {
            reason: failure.reason.clone(),
            retry_in_secs: left.as_millis().div_ceil(1000).max(1) as u64,
        })
    }

    /// Opens (or widens) the key's window; returns how long it is.
    pub async fn record(&self, key: CacheKey, error: &ExchangeError) -> Duration {
        let reason = error.to_string();
        let (first, max) = (self.first, self.max);
        let entry = self
            .recent
            .entry(key)
            .and_upsert_with(|previous| {
                let consecutive = previous
                    .map(|p| p.into_value().consecutive.saturating_add(1))
                    .unwrap_or(1);
                let delay = backoff(first, max, consecutive);
                std::future::ready(Arc::new(Failure {
                    consecutive,
                    retry_at: Instant::now() + delay,
                    reason,
                }))
            })
            .await;
        backoff(first, max, entry.into_value().consecutive)
    }

    pub async fn clear(&self, key: &CacheKey) {
        self.recent.invalidate(key).await;
    }
}

/// `first`, doubled per further consecutive failure, at most `max`.
fn backoff(first: Duration, max: Duration, consecutive: u32) -> Duration {
    let doublings = consecutive.saturating_sub(1).min(30);
    first.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ClientCredentials;

    fn target(endpoint: &str, connector: Option<&str>) -> ExchangeTarget {
        ExchangeTarget {
            endpoint: endpoint.into(),
            expected_issuer: "https://dex.b".into(),
            connector_id: connector.map(str::to_string),
            scopes: "openid".into(),
            requested_token_type: "t".into(),
            client: ClientCredentials {
                client_id: "c".into(),
                client_secret: SecretValue::new("s".into()),
            },
            server: "".into(),
        }
    }

    fn user(issuer: &str, subject: &str) -> UserKey {
        UserKey {
            issuer: issuer.into(),
            subject: subject.into(),
        }
    }

    #[test]
    fn keys_differ_by_every_part_and_ignore_the_client_secret() {
        let base = CacheKey::new(&user("i", "alice"), &target("https://e/token", None));
        let same = CacheKey::new(&user("i", "alice"), &target("https://e/token", None));
        assert_eq!(base, same);
        assert_ne!(
            base,
            CacheKey::new(&user("i", "bob"), &target("https://e/token", None))
        );
        assert_ne!(
            base,
            CacheKey::new(&user("j", "alice"), &target("https://e/token", None))
        );
        assert_ne!(
            base,
            CacheKey::new(&user("i", "alice"), &target("https://f/token", None))
        );
        assert_ne!(
            base,
            CacheKey::new(&user("i", "alice"), &target("https://e/token", Some("")))
        );
        // Length prefixes: moving a character between parts changes the key.
        assert_ne!(
            CacheKey::new(&user("ia", "lice"), &target("https://e/token", None)),
            CacheKey::new(&user("i", "alice"), &target("https://e/token", None))
        );
        let mut other_secret = target("https://e/token", None);
        other_secret.client.client_secret = SecretValue::new("rotated".into());
        assert_eq!(base, CacheKey::new(&user("i", "alice"), &other_secret));
        let mut other_client = target("https://e/token", None);
        other_client.client.client_id = "d".into();
        assert_ne!(base, CacheKey::new(&user("i", "alice"), &other_client));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let got: Vec<u64> = (1..=7).map(|n| backoff(first, max, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(first, max, u32::MAX), max);
    }

    #[test]
    fn entries_go_stale_a_margin_early_and_refresh_in_the_second_half() {
        let settings = TokenCacheSettings {
            safety_margin: Duration::from_secs(30),
            refresh_ahead: Duration::from_secs(60),
            ..TokenCacheSettings::default()
        };
        let before = Instant::now();
        let long = CachedToken::new(
            SecretValue::new("t".into()),
            Duration::from_secs(3600),
            &settings,
        );
        let stale_in = long.stale_at - before;
        assert!(stale_in >= Duration::from_secs(3570) && stale_in < Duration::from_secs(3571));
        assert!(long.stale_at - long.refresh_at == Duration::from_secs(60));
        let short = CachedToken::new(
            SecretValue::new("t".into()),
            Duration::from_secs(50),
            &settings,
        );
        // 20s usable: refresh no earlier than half of it.
        assert!(short.refresh_at - before >= Duration::from_secs(10));
        let gone = CachedToken::new(
            SecretValue::new("t".into()),
            Duration::from_secs(5),
            &settings,
        );
        assert!(gone.stale_at <= Instant::now());
    }
}
