//! JWT checks against an issuer's published keys. Key sets are cached per
//! JWKS URL; a token signed with an unknown `kid` refetches the set at most
//! once per [`REFETCH_INTERVAL`], so key rotation is picked up without letting
//! forged `kid`s hammer the issuer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// Key sets are kept this long before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);
/// An unknown `kid` refetches the key set at most this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// Why a JWT was not accepted. Messages never contain the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT ({0})")]
    Malformed(String),
    #[error("issuer {got:?} is not the expected {expected:?}")]
    WrongIssuer { expected: String, got: String },
    #[error("could not fetch the signing keys of {issuer}: {message}")]
    KeysUnavailable { issuer: String, message: String },
    #[error("signed with key {kid:?}, which {issuer} does not publish")]
    UnknownKey { issuer: String, kid: String },
    #[error("the token has expired")]
    Expired,
    #[error("rejected: {0}")]
    Invalid(String),
}

impl JwtError {
    /// True when the issuer's keys could not be read (as opposed to a bad token).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, JwtError::KeysUnavailable { .. })
    }
}

/// What a token must satisfy.
#[derive(Clone, Debug)]
pub struct JwtExpectations {
    pub issuer: String,
    /// Accepted `aud` values; empty skips the audience check.
    pub audiences: Vec<String>,
    /// Where the keys are; `None` reads `jwks_uri` from the issuer's discovery document.
    pub jwks_uri: Option<String>,
}

struct CachedSet {
    keys: Arc<JwkSet>,
    fetched: Instant,
}

/// Cached key sets of any number of issuers.
pub struct JwksCache {
    http: reqwest::Client,
    sets: moka::future::Cache<String, Arc<Mutex<Option<CachedSet>>>>,
    discovered: moka::future::Cache<String, String>,
    /// The last `jwks_uri` each issuer's discovery gave: used when discovery
    /// fails after `discovered` lapsed, so a short provider outage does not
    /// refuse tokens whose keys are still cached.
    last_discovered: moka::sync::Cache<String, String>,
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            sets: moka::future::Cache::builder().max_capacity(1_000).build(),
            discovered: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(JWKS_TTL)
                .build(),
            last_discovered: moka::sync::Cache::new(1_000),
        }
    }

    /// Verifies signature, issuer, expiry and (if asked) audience, and returns the claims.
    pub async fn verify<C: DeserializeOwned>(
        &self,
        token: &str,
        expect: &JwtExpectations,
    ) -> Result<C, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        let issuer = unverified_issuer(token)?;
        if issuer != expect.issuer {
            return Err(JwtError::WrongIssuer {
                expected: expect.issuer.clone(),
                got: issuer,
            });
        }
        let jwks_uri = match &expect.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover_jwks_uri(&expect.issuer).await?,
        };
        let kid = header.kid.clone().unwrap_or_default();
        let set = self.key_set(&expect.issuer, &jwks_uri, &kid).await?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => set.find(kid),
            None => set.keys.first(),
        }
        .ok_or_else(|| JwtError::UnknownKey {
            issuer: expect.issuer.clone(),
            kid: kid.clone(),
        })?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[&expect.issuer]);
        validation.validate_nbf = true;
        if expect.audiences.is_empty() {
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.validate_aud = false;
        } else {
            // A token with no audience was meant for no one in particular:
            // where audiences are configured, it is refused.
            validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            validation.set_audience(&expect.audiences);
        }
        jsonwebtoken::decode::<C>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                _ => JwtError::Invalid(rejection_reason(&e, &expect.audiences)),
            })
    }

    /// `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    pub async fn discover_jwks_uri(&self, issuer: &str) -> Result<String, JwtError> {
        let http = self.http.clone();
        let issuer_owned = issuer.to_string();
        self.discovered
            .try_get_with(issuer.to_string(), async move {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer_owned.trim_end_matches('/')
                );
                let doc: serde_json::Value = fetch_json(&http, &url).await?;
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("{url} has no jwks_uri"))
            })
            .await
            .inspect(|uri| self.last_discovered.insert(issuer.to_string(), uri.clone()))
            .or_else(|message: Arc<String>| match self.last_discovered.get(issuer) {
                Some(uri) => {
                    tracing::warn!(%issuer, %message, "discovery failed; using the jwks_uri it gave last");
                    Ok(uri)
                }
                None => Err(JwtError::KeysUnavailable {
                    issuer: issuer.to_string(),
                    message: message.to_string(),
                }),
            })
    }

    async fn key_set(&self, issuer: &str, uri: &str, kid: &str) -> Result<Arc<JwkSet>, JwtError> {
        let slot = self
            .sets
            .get_with(uri.to_string(), async { Arc::new(Mutex::new(None)) })
            .await;
        let mut slot = slot.lock().await;
        let fresh_enough = |c: &CachedSet| c.fetched.elapsed() < JWKS_TTL;
        let knows_kid = |c: &CachedSet| kid.is_empty() || c.keys.find(kid).is_some();
        let may_refetch = |c: &CachedSet| c.fetched.elapsed() >= REFETCH_INTERVAL;
        if let Some(cached) = slot.as_ref()
            && fresh_enough(cached)
            && (knows_kid(cached) || !may_refetch(cached))
        {
            return Ok(cached.keys.clone());
        }
        match fetch_json::<JwkSet>(&self.http, uri).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *slot = Some(CachedSet {
                    keys: keys.clone(),
                    fetched: Instant::now(),
                });
                Ok(keys)
            }
            // A stale set beats none while the issuer is briefly unreachable.
            Err(message) => match slot.as_ref() {
                Some(cached) => {
                    tracing::warn!(%issuer, %message, "refreshing signing keys failed; using the cached set");
                    Ok(cached.keys.clone())
                }
                None => Err(JwtError::KeysUnavailable {
                    issuer: issuer.to_string(),
                    message,
                }),
            },
        }
    }
}

async fn fetch_json<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, String> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::fleet::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    response
        .json::<T>()
        .await
        .map_err(|e| format!("GET {url}: invalid JSON: {e}"))
}

/// The payload of a JWT, without checking anything.
pub fn unverified_claims(token: &str) -> Result<serde_json::Value, JwtError> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| JwtError::Malformed("expected three dot-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| JwtError::Malformed(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(format!("payload: {e}")))
}

/// The `iss` claim of a JWT, unverified.
pub fn unverified_issuer(token: &str) -> Result<String, JwtError> {
    unverified_claims(token)?
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| JwtError::Malformed("no iss claim".into()))
}

/// Why a JWT failed its checks, in words (not the library's names).
fn rejection_reason(error: &jsonwebtoken::errors::Error, audiences: &[String]) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ImmatureSignature => {
            "the token is not valid yet (its nbf is in the future)".into()
        }
        ErrorKind::InvalidAudience => format!(
            "its aud names none of the accepted audiences ({})",
            audiences.join(", ")
        ),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("it has no {claim:?} claim, which this issuer's tokens must carry")
        }
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::InvalidIssuer => "its iss is not the expected issuer".into(),
        _ => "it does not verify".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_claims_read_the_payload_and_reject_junk() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://dex.a","sub":"alice"}"#)
        );
        assert_eq!(unverified_issuer(&token).unwrap(), "https://dex.a");
        assert!(matches!(
            unverified_issuer("opaque-token"),
            Err(JwtError::Malformed(_))
        ));
        let no_iss = format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"x"}"#));
        assert!(unverified_issuer(&no_iss).is_err());
    }

    #[tokio::test]
    async fn a_provider_outage_is_bridged_by_the_cached_keys() {
        use base64::Engine as _;
        use jsonwebtoken::{EncodingKey, Header, encode};
        let secret = b"a-secret-for-the-outage-test-1234";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let jwks = serde_json::json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)}]});
        let discovery = serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/keys")});
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/keys",
                axum::routing::get(move || async move { axum::Json(jwks) }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let now = chrono::Utc::now().timestamp();
        let token = encode(
            &header,
            &serde_json::json!({"iss": base, "sub": "bot", "aud": "api", "exp": now + 600}),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        let cache = JwksCache::new(reqwest::Client::new());
        let expect = JwtExpectations {
            issuer: base.clone(),
            audiences: vec!["api".into()],
            jwks_uri: None,
        };
        assert!(
            cache
                .verify::<serde_json::Value>(&token, &expect)
                .await
                .is_ok()
        );
        // The provider goes away and the discovery cache lapses.
        server.abort();
        let _ = server.await;
        cache.discovered.invalidate(&base).await;
        cache
            .verify::<serde_json::Value>(&token, &expect)
            .await
            .expect("served from the cached keys");
        // With nothing cached, the outage is reported as such.
        let fresh = JwksCache::new(reqwest::Client::new());
        let error = fresh
            .verify::<serde_json::Value>(&token, &expect)
            .await
            .unwrap_err();
        assert!(error.is_unreachable(), "{error}");
    }
}
