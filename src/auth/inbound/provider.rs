//! The central OIDC provider, as the gateway's login backend: discovery
//! (lazy, cached, retried, so a provider that is down never stops the
//! gateway), the authorization redirect, the code exchange and the refresh,
//! each returning a verified ID token. Talks through the gateway's reqwest
//! client via the closure form of oauth2's `AsyncHttpClient`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreIdToken, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl,
    Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardErrorResponse, TokenResponse as _,
};

use super::payloads::{ProviderTokens, UserClaims, groups_claim};
use crate::api::SecretValue;
use crate::auth::settings::OidcConfig;
use crate::fleet::error_chain;

/// Discovery (and the key set in it) is refreshed this often.
const REDISCOVER_AFTER: Duration = Duration::from_secs(600);
/// After a failed discovery, logins fail fast for this long instead of each waiting on a dead provider.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Each request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// The RFC 7009 endpoint, which OpenID discovery documents may list
/// (RFC 8414 metadata) but openidconnect's core metadata does not model.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct RevocationMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for RevocationMetadata {}

type DiscoveredMetadata = ProviderMetadata<
    RevocationMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What went wrong at the provider. Messages never contain tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("the identity provider {issuer} is unreachable ({message}); try again shortly")]
    Unavailable { issuer: String, message: String },
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the identity provider's answer was unusable: {0}")]
    BadResponse(String),
}

/// A transport failure, for oauth2's HTTP client contract.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

struct Discovered {
    client: OidcClient,
    /// RFC 7009 revocation, when the provider lists it.
    revocation: Option<url::Url>,
}

#[derive(Default)]
struct Slot {
    current: Option<(Instant, Arc<Discovered>)>,
    failed: Option<(Instant, String)>,
}

/// The provider, discovered on first use.
pub struct Provider {
    issuer: String,
    client_id: String,
    client_secret: Option<SecretValue>,
    redirect: RedirectUrl,
    http: reqwest::Client,
    slot: tokio::sync::Mutex<Slot>,
}

impl Provider {
    /// Reads the client secret file (if any); contacts nobody.
    pub fn new(config: &OidcConfig, callback: &str, http: reqwest::Client) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        IssuerUrl::new(config.issuer.clone())
            .with_context(|| format!("auth.oidc.issuer {:?} is not a URL", config.issuer))?;
        let redirect = RedirectUrl::new(callback.to_string())
            .with_context(|| format!("callback URL {callback:?}"))?;
        let client_secret = match &config.client_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading auth.oidc.clientSecretFile {}", path.display())
                })?;
                let secret = text.trim();
                anyhow::ensure!(
                    !secret.is_empty(),
                    "auth.oidc.clientSecretFile {} is empty",
                    path.display()
                );
                Some(SecretValue::new(secret.to_string()))
            }
            None => None,
        };
        Ok(Self {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            redirect,
            http,
            slot: tokio::sync::Mutex::new(Slot::default()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The provider's client, from a discovery at most [`REDISCOVER_AFTER`]
    /// old (`force`: a fresh one, e.g. after an unknown signing key). A stale
    /// discovery is used while a new one fails.
    async fn discovered(&self, force: bool) -> Result<Arc<Discovered>, ProviderError> {
        let mut slot = self.slot.lock().await;
        if let Some((at, current)) = &slot.current
            && !force
            && at.elapsed() < REDISCOVER_AFTER
        {
            return Ok(current.clone());
        }
        let recent_failure = slot
            .failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_AFTER)
            .map(|(_, message)| message.clone());
        let outcome = match recent_failure {
            Some(message) => Err(message),
            None => {
                let attempt = self.discover().await;
                if let Err(message) = &attempt {
                    tracing::warn!(issuer = %self.issuer, %message, "identity provider discovery failed");
                    slot.failed = Some((Instant::now(), message.clone()));
                }
                attempt
            }
        };
        match outcome {
            Ok(discovered) => {
                let discovered = Arc::new(discovered);
                slot.current = Some((Instant::now(), discovered.clone()));
                slot.failed = None;
                Ok(discovered)
            }
            Err(message) => match &slot.current {
                Some((_, stale)) => Ok(stale.clone()),
                None => Err(ProviderError::Unavailable {
                    issuer: self.issuer.clone(),
                    message,
                }),
            },
        }
    }

    async fn discover(&self) -> Result<Discovered, String> {
        let http = oauth_http(self.http.clone());
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = DiscoveredMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| format!("discovery: {}", error_chain(&e)))?;
        let revocation = metadata
            .additional_metadata()
            .revocation_endpoint
            .as_deref()
            .and_then(|url| url::Url::parse(url).ok());
        let token_url = metadata
            .token_endpoint()
            .cloned()
            .ok_or("its discovery document has no token_endpoint")?;
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose().to_string()));
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            secret,
        )
        .set_token_uri(token_url)
        .set_redirect_uri(self.redirect.clone());
        tracing::info!(issuer = %self.issuer, "identity provider discovered");
        Ok(Discovered { client, revocation })
    }

    /// Where to send the user's browser to log in at the provider.
    pub async fn authorize_url(
        &self,
        scopes: &[String],
        challenge: PkceCodeChallenge,
        nonce: Nonce,
        state: String,
    ) -> Result<url::Url, ProviderError> {
        let discovered = self.discovered(false).await?;
        let mut request = discovered.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || nonce,
        );
        // openidconnect adds `openid` itself.
        for scope in scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.set_pkce_challenge(challenge).url();
        Ok(url)
    }

    /// Exchanges the provider's code and verifies the ID token (signature,
    /// issuer, audience, expiry, nonce).
    pub async fn exchange_code(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: String,
    ) -> Result<ProviderTokens, ProviderError> {
        let discovered = self.discovered(false).await?;
        let http = oauth_http(self.http.clone());
        let response = discovered
            .client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&http)
            .await
            .map_err(|e| self.token_error(e))?;
        let nonce = Nonce::new(nonce);
        let mut tokens = self.verified(discovered, &response, Some(&nonce)).await?;
        tokens.refresh_token = response.refresh_token().map(|t| t.secret().clone());
        Ok(tokens)
    }

    /// Spends `refresh_token` at the provider (which rotates it) for a fresh
    /// ID token of the same user.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        user: &UserClaims,
    ) -> Result<ProviderTokens, ProviderError> {
        let discovered = self.discovered(false).await?;
        let http = oauth_http(self.http.clone());
        let refresh = RefreshToken::new(refresh_token.to_string());
        let response = discovered
            .client
            .exchange_refresh_token(&refresh)
            .request_async(&http)
            .await
            .map_err(|e| self.token_error(e))?;
        let mut tokens = self.verified(discovered, &response, None).await?;
        if tokens.user.sub != user.sub || tokens.user.iss != user.iss {
            return Err(ProviderError::BadResponse(
                "the refreshed ID token names a different user".into(),
            ));
        }
        // A provider that does not rotate keeps the old refresh token valid.
        tokens.refresh_token = Some(
            response
                .refresh_token()
                .map(|t| t.secret().clone())
                .unwrap_or_else(|| refresh_token.to_string()),
        );
        Ok(tokens)
    }

    /// Revokes a refresh token at the provider (RFC 7009), ending the login
    /// it carries. `Ok(false)` when the provider offers no revocation.
    /// (openidconnect's client types revocation only when its endpoint is
    /// known at build time; the provider's is known after discovery, so
    /// this small form POST is written here.)
    pub async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<bool, ProviderError> {
        let discovered = self.discovered(false).await?;
        let Some(endpoint) = discovered.revocation.clone() else {
            return Ok(false);
        };
        let mut form = vec![
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ];
        let mut request = self.http.post(endpoint).timeout(HTTP_TIMEOUT);
        match &self.client_secret {
            Some(secret) => {
                request = request.basic_auth(
                    form_urlencode(&self.client_id),
                    Some(form_urlencode(secret.expose())),
                );
            }
            None => form.push(("client_id", &self.client_id)),
        }
        let response =
            request
                .form(&form)
                .send()
                .await
                .map_err(|e| ProviderError::Unavailable {
                    issuer: self.issuer.clone(),
                    message: error_chain(&e),
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        // The body is an OAuth error document; it never holds the token.
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let error = body["error"].as_str().unwrap_or("no error code");
        Err(ProviderError::Refused(format!(
            "revocation answered {status}: {error}"
        )))
    }

    /// The ID token of `response`, verified; on a signature failure the
    /// provider's keys are rediscovered once (they may have rotated).
    async fn verified(
        &self,
        discovered: Arc<Discovered>,
        response: &CoreTokenResponse,
        nonce: Option<&Nonce>,
    ) -> Result<ProviderTokens, ProviderError> {
        let id_token = response.id_token().ok_or_else(|| {
            ProviderError::BadResponse(
                "the token response has no ID token (is the `openid` scope allowed for the gateway's client?)"
                    .into(),
            )
        })?;
        match read_id_token(&discovered.client, id_token, nonce) {
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                let fresh = self.discovered(true).await?;
                read_id_token(&fresh.client, id_token, nonce)
            }
            other => other,
        }
        .map_err(|e| ProviderError::BadResponse(format!("ID token rejected: {e}")))
    }

    fn token_error(
        &self,
        error: RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>,
    ) -> ProviderError {
        match error {
            RequestTokenError::ServerResponse(response) => {
                let mut text = response.error().to_string();
                if let Some(description) = response.error_description() {
                    text = format!("{text}: {description}");
                }
                ProviderError::Refused(text)
            }
            RequestTokenError::Request(e) => ProviderError::Unavailable {
                issuer: self.issuer.clone(),
                message: e.to_string(),
            },
            // The body may hold tokens: report only the parse error.
            RequestTokenError::Parse(e, _body) => {
                ProviderError::BadResponse(format!("token response: {e}"))
            }
            RequestTokenError::Other(message) => ProviderError::BadResponse(message),
        }
    }
}

fn read_id_token(
    client: &OidcClient,
    id_token: &CoreIdToken,
    nonce: Option<&Nonce>,
) -> Result<ProviderTokens, ClaimsVerificationError> {
    // Cross-client scopes (`audience:server:client_id:<aud>`) add audiences
    // the gateway asked for itself; its own client id must still be among them.
    let verifier = client
        .id_token_verifier()
        .set_other_audience_verifier_fn(|_| true);
    let claims = match nonce {
        Some(nonce) => id_token.claims(&verifier, nonce)?,
        // Refreshed ID tokens need not repeat the login's nonce.
        None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(()))?,
    };
    let name = claims
        .preferred_username()
        .map(|u| u.as_str().to_string())
        .or_else(|| claims.email().map(|e| e.as_str().to_string()))
        .or_else(|| {
            claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string())
        });
    Ok(ProviderTokens {
        user: UserClaims {
            iss: claims.issuer().as_str().to_string(),
            sub: claims.subject().as_str().to_string(),
            name,
            // Verified above; openidconnect's core claims have no `groups`.
            groups: groups_claim(&id_token.to_string()),
        },
        id_token: id_token.to_string(),
        id_token_exp: claims.expiration().timestamp(),
        refresh_token: None,
    })
}

type HttpFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>>;

/// oauth2's HTTP client contract over our reqwest client.
fn oauth_http(http: reqwest::Client) -> impl Fn(HttpRequest) -> HttpFuture {
    move |request: HttpRequest| {
        let http = http.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let target = format!("{} {}", parts.method, parts.uri);
            let response = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .timeout(HTTP_TIMEOUT)
                .send()
                .await
                .map_err(|e| HttpError(format!("{target}: {}", error_chain(&e))))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| {
                HttpError(format!("{target}: reading the body: {}", error_chain(&e)))
            })?;
            let mut out = http::Response::new(body.to_vec());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        }) as HttpFuture
    }
}

/// RFC 6749 §2.3.1: client credentials are form-encoded before Basic auth.
fn form_urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(issuer: &str) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            client_id: "flotilla".into(),
            client_secret_file: None,
            scopes: None,
        }
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_a_clear_error_and_is_retried_later() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let provider = Provider::new(
            &config("http://127.0.0.1:9/dex"),
            "http://gw/oauth/callback",
            reqwest::Client::new(),
        )
        .unwrap();
        let err = provider.discovered(false).await.err().expect("fails");
        let text = err.to_string();
        assert!(
            text.contains("http://127.0.0.1:9/dex is unreachable"),
            "{text}"
        );
        assert!(matches!(err, ProviderError::Unavailable { .. }));
        // Within RETRY_AFTER the same error comes back without a new attempt.
        let again = provider.discovered(false).await.err().expect("fails");
        assert_eq!(again.to_string(), text);
    }

    #[test]
    fn an_empty_or_missing_client_secret_file_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "\n").unwrap();
        let mut cfg = config("https://dex.example");
        cfg.client_secret_file = Some(path.clone());
        let err = Provider::new(&cfg, "http://gw/cb", reqwest::Client::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("is empty"), "{err}");
        std::fs::write(&path, "s3cret\n").unwrap();
        let provider = Provider::new(&cfg, "http://gw/cb", reqwest::Client::new()).unwrap();
        assert_eq!(
            provider.client_secret.as_ref().map(|s| s.expose()),
            Some("s3cret")
        );
        cfg.client_secret_file = Some(dir.path().join("missing"));
        assert!(Provider::new(&cfg, "http://gw/cb", reqwest::Client::new()).is_err());
    }
}
