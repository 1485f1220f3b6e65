//! The CLI's OAuth client is rmcp's `AuthorizationManager` (rmcp's `auth`
//! feature): protected resource metadata (RFC 9728) and authorization server
//! metadata (RFC 8414, else OpenID Connect discovery) with their resource and
//! issuer checks, dynamic client registration (RFC 7591), the authorization
//! URL (PKCE S256, state, RFC 8707 `resource`, scope selection), the code
//! exchange with the RFC 9207 `iss` check, and the refresh grant. This file
//! sets the managers up and adds what flotilla asks on top:
//!
//! - the tokenless probe, whose 401 tells a gateway that needs a login from
//!   one that does not (rmcp falls back to guessed endpoints instead);
//! - S256 must be advertised: rmcp goes on with S256 when the metadata does
//!   not list PKCE methods at all, which the MCP authorization spec forbids;
//! - one HTTP client of flotilla's (timeouts, user agent, no redirects for
//!   token requests), without rmcp's default resolver, which refuses a
//!   gateway whose name resolves to a private address;
//! - messages: rmcp's errors become sentences that name what failed and
//!   never carry a response body (rmcp puts a refused registration's whole
//!   body in its error, and serde's messages about a token answer).

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, TimeDelta, Utc};
use http::StatusCode;
use http::header::{ACCEPT, WWW_AUTHENTICATE};
use rmcp::transport::auth::{
    AuthError, AuthorizationManager, AuthorizationMetadata, AuthorizationMetadataSource,
    ProtectedResourceMetadataInvalidReason,
};
use serde::Deserialize;
use url::Url;

use super::credentials::{EndpointCredentials, EndpointStore, Token};

/// Refresh when the access token has less than this left.
pub(super) const REFRESH_MARGIN: TimeDelta = TimeDelta::seconds(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the registration calls the client.
const CLIENT_NAME: &str = "flotilla CLI";

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
}

/// The client for the gateway's own requests (the probe, `/auth/status`);
/// follows a few redirects.
pub(super) fn http_client() -> anyhow::Result<reqwest::Client> {
    client_builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .context("cannot set up an HTTP client")
}

/// rmcp's OAuth requests: no redirects, so a token request is answered in
/// place (RFC 6749 §3.2); rmcp follows same-origin redirects of metadata
/// requests itself.
fn oauth_http_client() -> anyhow::Result<reqwest::Client> {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot set up an HTTP client")
}

/// A manager for the resource at `base`. Private addresses are allowed for
/// the metadata's hosts (a gateway at 10.0.0.5 names itself as issuer);
/// rmcp's own resolver is then replaced by flotilla's client, since its
/// filtering of what a name resolves to would refuse an internal gateway's
/// DNS name, which the user chose to log in to.
async fn manager(base: &Url) -> anyhow::Result<AuthorizationManager> {
    let mut manager = AuthorizationManager::new_allowing_private_addresses(base.clone())
        .await
        .map_err(|error| anyhow!("cannot set up the OAuth client for {base}: {error}"))?;
    manager
        .with_client(oauth_http_client()?)
        .map_err(|error| anyhow!("cannot set up the OAuth client for {base}: {error}"))?;
    Ok(manager)
}

/// True when a token expiring at `expires_at` should be refreshed before
/// use. An unknown expiry is not refreshed ahead: a 401 says when.
pub(super) fn needs_refresh(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|at| at - now < REFRESH_MARGIN)
}

/// True when the token is past its expiry.
pub(super) fn has_expired(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// What discovery found out about an endpoint.
pub(super) enum Discovery {
    /// The gateway answered without asking for a token and publishes no
    /// protected resource metadata: it needs no login.
    Open,
    Protected(Box<Protected>),
}

/// A manager that knows the endpoint's authorization server.
pub(super) struct Protected {
    pub manager: AuthorizationManager,
    pub metadata: AuthorizationMetadata,
    /// The authorization server's issuer identifier (rmcp checked the
    /// metadata names it, RFC 8414 §3.3).
    pub issuer: String,
}

impl Protected {
    /// RFC 9207: the server promised `iss` on the redirect.
    pub fn issuer_on_redirect(&self) -> bool {
        self.metadata
            .additional_fields
            .get("authorization_response_iss_parameter_supported")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// RFC 7009, where `flotilla auth logout` ends the login.
    pub fn revocation_endpoint(&self) -> Option<&str> {
        self.metadata
            .additional_fields
            .get("revocation_endpoint")
            .and_then(serde_json::Value::as_str)
    }
}

/// Walks from the endpoint to its authorization server's metadata: the
/// tokenless request's 401 and its challenge, then rmcp's discovery.
pub(super) async fn discover(http: &reqwest::Client, endpoint: &Url) -> anyhow::Result<Discovery> {
    let probe = http
        .get(endpoint.clone())
        .header(ACCEPT, "application/json, text/event-stream")
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the gateway at {endpoint}; is it running, and is --endpoint right?"
            )
        })?;
    let asks_for_login = probe.status() == StatusCode::UNAUTHORIZED;
    // rmcp reads one header value: several join as one list (RFC 9110 §5.3).
    let challenge = asks_for_login
        .then(|| {
            probe
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|challenge| !challenge.is_empty());
    drop(probe);
    tracing::debug!(%endpoint, asks_for_login, ?challenge, "probed the gateway");

    let mut manager = manager(endpoint).await?;
    let resolution = manager
        .resolve_metadata_from_challenge(challenge.as_deref())
        .await
        .map_err(|error| discovery_error(error, endpoint))?;
    if resolution.source != AuthorizationMetadataSource::ProtectedResourceMetadata {
        anyhow::ensure!(
            !asks_for_login,
            "the gateway at {endpoint} asks for a login but publishes no protected resource metadata; is this a flotilla gateway with auth enabled?"
        );
        return Ok(Discovery::Open);
    }
    let metadata = resolution.metadata;
    let issuer = metadata.issuer.clone().with_context(|| {
        format!("the authorization server of {endpoint} publishes metadata without an issuer")
    })?;
    anyhow::ensure!(
        metadata
            .code_challenge_methods_supported
            .as_ref()
            .is_some_and(|methods| methods.iter().any(|method| method == "S256")),
        "the authorization server {issuer} does not offer PKCE with S256, which flotilla requires"
    );
    tracing::debug!(%issuer, "found the authorization server");
    manager.set_metadata(metadata.clone());
    Ok(Discovery::Protected(Box::new(Protected {
        manager,
        metadata,
        issuer,
    })))
}

/// The authorization request, prepared by rmcp (which keeps the PKCE
/// verifier for the exchange, under `state`).
pub(super) struct AuthorizationRequest {
    pub url: Url,
    pub state: String,
    /// The RFC 8707 resource the request names, stored for refreshes.
    pub resource: Option<String>,
}

/// Registers a public client for `redirect_uri` (RFC 7591), then prepares
/// the authorization URL: code flow, PKCE S256, random state, the resource,
/// and the scopes the challenge or the resource metadata ask for.
pub(super) async fn authorization_request(
    server: &mut Protected,
    redirect_uri: &str,
) -> anyhow::Result<AuthorizationRequest> {
    let registration_endpoint = server.metadata.registration_endpoint.clone().with_context(|| {
        format!(
            "the authorization server {} offers no client registration (RFC 7591), which `flotilla auth login` needs",
            server.issuer
        )
    })?;
    let scopes = server.manager.select_initial_scopes(&[]).await;
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    server
        .manager
        .register_client(CLIENT_NAME, redirect_uri, &scopes)
        .await
        .map_err(|error| registration_error(error, &registration_endpoint))?;
    let url = server
        .manager
        .get_authorization_url(&scopes)
        .await
        .map_err(|error| anyhow!("cannot prepare the authorization request: {error}"))?;
    let url = Url::parse(&url).context("rmcp made an authorization URL that is not a URL")?;
    let param = |name: &str| {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let state = param("state").context("the authorization URL carries no state")?;
    let resource = param("resource");
    Ok(AuthorizationRequest {
        url,
        state,
        resource,
    })
}

/// Trades the code for tokens (rmcp checks `iss` against the metadata's
/// issuer, sends the verifier, the redirect URI and the resource), which
/// rmcp saves through the manager's credential store.
pub(super) async fn exchange_code(
    server: &Protected,
    code: &str,
    state: &str,
    iss: Option<&str>,
) -> anyhow::Result<()> {
    let token_endpoint = &server.metadata.token_endpoint;
    match server
        .manager
        .exchange_code_for_token_with_issuer(code, state, iss)
        .await
    {
        Ok(_) => Ok(()),
        Err(AuthError::TokenExchangeFailed(message)) => Err(match refusal(&message) {
            Some(why) => anyhow!(
                "the authorization server {} did not accept the login ({why}); run `flotilla auth login` again",
                server.issuer
            ),
            None => anyhow!(
                "the login's code exchange failed: {}",
                unusable_answer(&message, token_endpoint)
            ),
        }),
        Err(AuthError::CredentialStoreError(why)) => Err(anyhow!(
            "logged in, but the credentials could not be stored: {why}"
        )),
        Err(
            AuthError::AuthorizationServerMismatch { .. }
            | AuthError::AuthorizationServerMissingIssuer { .. },
        ) => Err(anyhow!(
            "the redirect comes from another authorization server than {} (RFC 9207); run `flotilla auth login` again",
            server.issuer
        )),
        Err(other) => Err(anyhow!("the login's code exchange failed: {other}")),
    }
}

/// How a refresh failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum GrantError {
    /// The authorization server answered with an OAuth error (`invalid_grant`, ...).
    #[error("the authorization server refused: {0}")]
    Refused(String),
    /// Could not ask, or could not read the answer.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// The refresh_token grant for the stored `login` to `endpoint`, through
/// rmcp with no new discovery: the stored client, token endpoint, issuer and
/// resource. rmcp keeps the old refresh token when the server does not
/// rotate it, and saves through `store`.
pub(super) async fn refresh(
    endpoint: &Url,
    login: &EndpointCredentials,
    store: EndpointStore,
) -> Result<(), GrantError> {
    if login.refresh_token.is_none() {
        return Err(GrantError::Refused("no refresh token was issued".into()));
    }
    let manager = renewal_manager(endpoint, login, store)
        .await
        .map_err(GrantError::Failed)?;
    let token_endpoint = &login.token_endpoint;
    match manager.refresh_token().await {
        Ok(_) => Ok(()),
        Err(AuthError::TokenRefreshRejected(message)) => Err(GrantError::Refused(
            refusal(&message).unwrap_or("invalid_grant").to_string(),
        )),
        Err(AuthError::TokenRefreshFailed(message)) => Err(match refusal(&message) {
            Some(why) => GrantError::Refused(why.to_string()),
            None => GrantError::Failed(anyhow!("{}", unusable_answer(&message, token_endpoint))),
        }),
        Err(AuthError::AuthorizationRequired) => {
            Err(GrantError::Refused("no refresh token was issued".into()))
        }
        Err(AuthError::CredentialStoreError(why)) => Err(GrantError::Failed(anyhow!(
            "the credential store failed: {why}"
        ))),
        Err(other) => Err(GrantError::Failed(anyhow!("{other}"))),
    }
}

/// A manager set up from a stored login. rmcp sends its base URL as the
/// RFC 8707 resource when it discovered none, so the base is the stored
/// resource (else the endpoint).
async fn renewal_manager(
    endpoint: &Url,
    login: &EndpointCredentials,
    store: EndpointStore,
) -> anyhow::Result<AuthorizationManager> {
    let base = match &login.resource {
        Some(resource) => Url::parse(resource)
            .with_context(|| format!("the stored resource {resource:?} is not a URL"))?,
        None => endpoint.clone(),
    };
    let mut manager = manager(&base).await?;
    let mut metadata = AuthorizationMetadata::default();
    metadata.token_endpoint = login.token_endpoint.clone();
    // rmcp's client wants an authorization endpoint too; a refresh never
    // builds an authorization URL, so the token endpoint stands in.
    metadata.authorization_endpoint = login.token_endpoint.clone();
    metadata.issuer = Some(login.issuer.clone());
    manager.set_metadata(metadata);
    manager.configure_client_id(&login.client_id).map_err(|error| {
        anyhow!(
            "the stored login cannot be renewed ({error}); run `flotilla auth login --endpoint {endpoint}`"
        )
    })?;
    manager.set_credential_store(store);
    Ok(manager)
}

/// The metadata of the authorization server `endpoint` names now, checked
/// to be `issuer` (a login is only ever sent back where it came from).
pub(super) async fn server_of(
    http: &reqwest::Client,
    endpoint: &Url,
    issuer: &str,
) -> anyhow::Result<Protected> {
    let server = match discover(http, endpoint).await? {
        Discovery::Protected(server) => server,
        Discovery::Open => anyhow::bail!("the gateway no longer asks for a login"),
    };
    anyhow::ensure!(
        server.issuer.trim_end_matches('/') == issuer.trim_end_matches('/'),
        "the gateway now names the authorization server {}, not {issuer}",
        server.issuer
    );
    Ok(*server)
}

/// RFC 7009: revokes `token` (a refresh token) at `endpoint` as the public
/// client `client_id`. The error says what the server answered. Ours, as
/// rmcp 3.9's auth has no revocation, and the oauth2 crate's
/// `revoke_token` refuses an endpoint that is not https (a gateway on
/// http://127.0.0.1 has one).
pub(super) async fn revoke(endpoint: &str, client_id: &str, token: &Token) -> anyhow::Result<()> {
    let response = oauth_http_client()?
        .post(endpoint)
        .form(&[
            ("token", token.expose()),
            ("token_type_hint", "refresh_token"),
            ("client_id", client_id),
        ])
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let error = body["error"].as_str().unwrap_or("no error code");
    match body["error_description"].as_str() {
        Some(description) => anyhow::bail!("{status} {error}: {description}"),
        None => anyhow::bail!("{status} {error}"),
    }
}

/// oauth2's message for an OAuth error answer, as rmcp passes it on:
/// `Server returned error response: <error>[: <description>]`.
fn refusal(message: &str) -> Option<&str> {
    message.strip_prefix("Server returned error response: ")
}

/// A failed token request that was not an OAuth error answer. Only oauth2's
/// own words for a network failure are kept; anything about the answer is
/// not shown, as a token answer's parse error could quote from it.
fn unusable_answer(message: &str, token_endpoint: &str) -> String {
    if message == "Request failed" {
        format!("cannot reach the token endpoint {token_endpoint}")
    } else {
        format!("the token endpoint {token_endpoint} sent an answer flotilla cannot read")
    }
}

/// rmcp's discovery errors, as sentences about the gateway.
fn discovery_error(error: AuthError, endpoint: &Url) -> anyhow::Error {
    match error {
        AuthError::DiscoveryRequestFailed { url, source } => {
            anyhow::Error::from_boxed(source).context(format!("cannot fetch {url}"))
        }
        AuthError::ProtectedResourceMetadataInvalid { url, reason } => match *reason {
            ProtectedResourceMetadataInvalidReason::ResourceMismatch { permitted, .. } => anyhow!(
                "the gateway's metadata is for the resource {permitted}, not {endpoint}; log in with --endpoint {permitted}"
            ),
            reason => {
                anyhow!("the gateway's protected resource metadata at {url} is unusable: {reason}")
            }
        },
        AuthError::AuthorizationServersUnavailable {
            authorization_servers,
            ..
        } => anyhow!(
            "the gateway at {endpoint} names the authorization server {}, which publishes no usable metadata",
            authorization_servers.join(", ")
        ),
        AuthError::AuthorizationServerMismatch {
            expected_issuer,
            received_issuer,
        } => anyhow!(
            "the authorization server {expected_issuer} calls itself {received_issuer} in its metadata; refusing to log in there (RFC 8414 §3.3)"
        ),
        AuthError::AuthorizationServerMissingIssuer { expected_issuer } => anyhow!(
            "the authorization server {expected_issuer} publishes metadata without an issuer; refusing to log in there (RFC 8414 §3.3)"
        ),
        other => anyhow!("cannot find the authorization server of {endpoint}: {other}"),
    }
}

/// rmcp's registration errors. A refusal's message from rmcp is
/// `HTTP <status>: <body>`; only its OAuth error code and description are
/// shown, and nothing of a success answer rmcp could not read (it carries
/// the client's credentials).
fn registration_error(error: AuthError, registration_endpoint: &str) -> anyhow::Error {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
        error_description: Option<String>,
    }
    let AuthError::RegistrationFailed(message) = &error else {
        return anyhow!("client registration at {registration_endpoint} failed: {error}");
    };
    if let Some(answer) = message.strip_prefix("HTTP ") {
        let (status, body) = answer.split_once(": ").unwrap_or((answer, ""));
        let why = match serde_json::from_str::<Refusal>(body) {
            Ok(Refusal {
                error,
                error_description: Some(description),
            }) => format!("{error} ({description})"),
            Ok(Refusal { error, .. }) => error,
            Err(_) => format!("HTTP {status}"),
        };
        return anyhow!("the authorization server refused to register flotilla as a client: {why}");
    }
    if let Some(failure) = message.strip_prefix("HTTP request error: ") {
        return anyhow!(
            "cannot reach the registration endpoint {registration_endpoint}: {failure}"
        );
    }
    anyhow!(
        "the registration endpoint {registration_endpoint} answered without a client flotilla can use"
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rmcp::transport::auth::{OAuthClientConfig, StateStore, StoredAuthorizationState};
    use sha2::Digest as _;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn tokens_are_refreshed_within_a_minute_of_expiry() {
        let now = at("2030-01-01T12:00:00Z");
        let table = [
            (None, false),
            (Some("2030-01-01T13:00:00Z"), false),
            (Some("2030-01-01T12:01:01Z"), false),
            (Some("2030-01-01T12:01:00Z"), false),
            (Some("2030-01-01T12:00:59Z"), true),
            (Some("2030-01-01T12:00:00Z"), true),
            (Some("2029-12-31T12:00:00Z"), true),
        ];
        for (expires_at, expected) in table {
            assert_eq!(
                needs_refresh(expires_at.map(at), now),
                expected,
                "{expires_at:?}"
            );
        }
        assert!(!has_expired(None, now));
        assert!(!has_expired(Some(at("2030-01-01T12:00:01Z")), now));
        assert!(has_expired(Some(at("2030-01-01T12:00:00Z")), now));
    }

    /// Keeps what rmcp stores for the exchange, to check the verifier.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<StoredAuthorizationState>>>);

    #[async_trait::async_trait]
    impl StateStore for Kept {
        async fn save(&self, _: &str, state: StoredAuthorizationState) -> Result<(), AuthError> {
            self.0.lock().unwrap().push(state);
            Ok(())
        }
        async fn load(&self, _: &str) -> Result<Option<StoredAuthorizationState>, AuthError> {
            Ok(self.0.lock().unwrap().last().cloned())
        }
        async fn delete(&self, _: &str) -> Result<(), AuthError> {
            Ok(())
        }
    }

    /// What flotilla relies on rmcp's authorization URL to carry.
    #[tokio::test]
    async fn the_authorization_url_carries_pkce_state_resource_and_scope() {
        let mut manager = manager(&Url::parse("https://gw/mcp").unwrap())
            .await
            .unwrap();
        let mut metadata = AuthorizationMetadata::default();
        metadata.authorization_endpoint = "https://gw/oauth/authorize".into();
        metadata.token_endpoint = "https://gw/oauth/token".into();
        metadata.issuer = Some("https://gw".into());
        metadata.code_challenge_methods_supported = Some(vec!["S256".into()]);
        manager.set_metadata(metadata);
        let kept = Kept::default();
        manager.set_state_store(kept.clone());
        manager
            .configure_client(OAuthClientConfig::new(
                "client-7",
                "http://127.0.0.1:4567/callback",
            ))
            .unwrap();
        let url = manager
            .get_authorization_url(&["openid", "profile"])
            .await
            .unwrap();
        let url = Url::parse(&url).unwrap();
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "client-7");
        assert_eq!(query["redirect_uri"], "http://127.0.0.1:4567/callback");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["resource"], "https://gw/mcp");
        assert_eq!(query["scope"], "openid profile");
        let state = kept.0.lock().unwrap().pop().unwrap();
        assert_eq!(query["state"], state.csrf_token);
        assert!(query["state"].len() >= 16);
        // The challenge is the S256 of the verifier, not the verifier.
        let digest = sha2::Sha256::digest(state.pkce_verifier.as_bytes());
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(query["code_challenge"], expected);
        assert_ne!(query["code_challenge"], state.pkce_verifier);
        assert_eq!(state.expected_issuer.as_deref(), Some("https://gw"));

        let no_scope = manager.get_authorization_url(&[]).await.unwrap();
        let no_scope = Url::parse(&no_scope).unwrap();
        assert!(!no_scope.query_pairs().any(|(key, _)| key == "scope"));
    }

    #[test]
    fn refused_registrations_show_the_oauth_error_and_no_body() {
        let message = |error| format!("{:#}", registration_error(error, "https://gw/register"));
        let refused = message(AuthError::RegistrationFailed(
            r#"HTTP 400 Bad Request: {"error":"invalid_redirect_uri","error_description":"not loopback","x":"secret-1"}"#.into(),
        ));
        assert!(
            refused.ends_with("invalid_redirect_uri (not loopback)"),
            "{refused}"
        );
        assert!(!refused.contains("secret-1"), "{refused}");
        let html = message(AuthError::RegistrationFailed(
            "HTTP 502 Bad Gateway: <html>secret-2</html>".into(),
        ));
        assert!(html.ends_with("HTTP 502 Bad Gateway"), "{html}");
        let unreadable = message(AuthError::RegistrationFailed(
            "analyze response error: invalid type: string \"secret-3\"".into(),
        ));
        assert!(!unreadable.contains("secret-3"), "{unreadable}");
    }

    #[test]
    fn token_request_failures_keep_the_oauth_error_and_drop_the_rest() {
        assert_eq!(
            refusal("Server returned error response: invalid_grant: expired"),
            Some("invalid_grant: expired")
        );
        assert_eq!(refusal("Failed to parse server response"), None);
        let parse = unusable_answer("invalid type: string \"at-1\"", "https://gw/token");
        assert!(!parse.contains("at-1"), "{parse}");
        assert!(unusable_answer("Request failed", "https://gw/token").starts_with("cannot reach"));
    }

    #[test]
    fn the_challenge_parameters_flotilla_relies_on_are_read() {
        use rmcp::transport::auth::WWWAuthenticateParams;
        let base = Url::parse("https://gw/mcp").unwrap();
        let parse = |header: &str| WWWAuthenticateParams::parse(header, &base);
        let quoted = parse(
            r#"Bearer resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp""#,
        );
        assert_eq!(
            quoted.resource_metadata_url.unwrap().as_str(),
            "https://gw/.well-known/oauth-protected-resource/mcp"
        );
        let mixed = parse(
            r#"Bearer realm="flotilla", error="invalid_token", Resource_Metadata=https://gw/prm, scope="openid profile""#,
        );
        assert_eq!(
            mixed.resource_metadata_url.unwrap().as_str(),
            "https://gw/prm"
        );
        assert_eq!(mixed.scope.as_deref(), Some("openid profile"));
        // Several challenges, in one header or joined from several (as `discover` does).
        for header in [
            r#"Basic realm="x", DPoP algs="ES256 PS256", bearer error="invalid_request", resource_metadata="https://gw/prm""#,
            r#"Negotiate abc+/def==, Bearer resource_metadata="https://gw/prm""#,
            r#"Basic realm="x", Bearer resource_metadata="https://gw/prm""#,
        ] {
            assert_eq!(
                parse(header)
                    .resource_metadata_url
                    .map(String::from)
                    .as_deref(),
                Some("https://gw/prm"),
                "{header}"
            );
        }
        // Relative references resolve against the endpoint; junk yields nothing.
        assert_eq!(
            parse(r#"Bearer resource_metadata="/prm""#)
                .resource_metadata_url
                .unwrap()
                .as_str(),
            "https://gw/prm"
        );
        for junk in ["", ",,,", "\"", "=== , @@@", "Bearer =", "Basic realm=x"] {
            assert!(parse(junk).resource_metadata_url.is_none(), "{junk}");
        }
    }
}
