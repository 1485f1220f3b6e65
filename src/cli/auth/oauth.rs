//! OAuth plumbing for login and status: the HTTP clients, the authorization
//! request (PKCE S256, state, RFC 8707 resource), and the code and refresh
//! grants. The grants go through the oauth2 crate's typed client, whose HTTP
//! requests reqwest 0.13 sends; its errors are turned into messages that
//! never carry a response body (a token answer is one).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse as _, TokenUrl,
};
use url::Url;

use super::credentials::{EndpointCredentials, Token};

/// Refresh when the access token has less than this left.
pub(super) const REFRESH_MARGIN: TimeDelta = TimeDelta::seconds(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The client for the gateway and metadata requests (follows a few redirects).
pub(super) fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up an HTTP client")
}

/// The client for the token endpoint: no redirects (RFC 6749 §3.2 answers in place).
fn token_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up an HTTP client")
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

/// Tokens from a grant.
#[derive(Debug)]
pub(super) struct Tokens {
    pub access: Token,
    pub refresh: Option<Token>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// How a grant failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum GrantError {
    /// The authorization server answered with an OAuth error (`invalid_grant`, ...).
    #[error("the authorization server refused: {0}")]
    Refused(String),
    /// Could not ask, or could not read the answer.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// A prepared authorization request.
pub(super) struct AuthorizationRequest {
    pub url: Url,
    pub state: CsrfToken,
    pub verifier: PkceCodeVerifier,
}

/// The URL to send the browser to: code flow, PKCE S256, random state, the
/// resource, and the scopes when there are any.
pub(super) fn authorization_request(
    authorization_endpoint: &str,
    client_id: &str,
    redirect_uri: &str,
    resource: &str,
    scope: Option<&str>,
) -> anyhow::Result<AuthorizationRequest> {
    let client = BasicClient::new(ClientId::new(client_id.to_string()))
        .set_auth_uri(
            AuthUrl::new(authorization_endpoint.to_string()).with_context(|| {
                format!("the authorization endpoint {authorization_endpoint:?} is not a URL")
            })?,
        )
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_string()).context("the redirect URI is not a URL")?,
        );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", resource.to_string())
        .add_scopes(
            scope
                .unwrap_or_default()
                .split_whitespace()
                .map(|scope| Scope::new(scope.to_string())),
        )
        .url();
    Ok(AuthorizationRequest {
        url,
        state,
        verifier,
    })
}

/// What the code exchange needs besides the code.
pub(super) struct CodeExchange<'a> {
    pub token_endpoint: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub resource: &'a str,
}

/// Trades the authorization code for tokens (client_id, code_verifier,
/// redirect_uri and resource in the form; no client secret).
pub(super) async fn exchange_code(
    exchange: CodeExchange<'_>,
    code: String,
    verifier: PkceCodeVerifier,
) -> Result<Tokens, GrantError> {
    let client = BasicClient::new(ClientId::new(exchange.client_id.to_string()))
        .set_token_uri(token_url(exchange.token_endpoint)?)
        .set_redirect_uri(
            RedirectUrl::new(exchange.redirect_uri.to_string())
                .context("the redirect URI is not a URL")
                .map_err(GrantError::Failed)?,
        );
    let http = token_client().map_err(GrantError::Failed)?;
    let send = |request| send(http.clone(), request);
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .add_extra_param("resource", exchange.resource.to_string())
        .request_async(&send)
        .await
        .map_err(|error| grant_error(error, exchange.token_endpoint))?;
    Ok(tokens(&response, Utc::now()))
}

/// The refresh_token grant for a stored login. The answer's refresh token
/// replaces the old one when the server rotates it.
pub(super) async fn refresh(login: &EndpointCredentials) -> Result<Tokens, GrantError> {
    let Some(refresh_token) = &login.refresh_token else {
        return Err(GrantError::Refused("no refresh token was issued".into()));
    };
    let client = BasicClient::new(ClientId::new(login.client_id.clone()))
        .set_token_uri(token_url(&login.token_endpoint)?);
    let http = token_client().map_err(GrantError::Failed)?;
    let send = |request| send(http.clone(), request);
    let refresh_token = RefreshToken::new(refresh_token.expose().to_string());
    let mut request = client.exchange_refresh_token(&refresh_token);
    if let Some(resource) = &login.resource {
        request = request.add_extra_param("resource", resource.clone());
    }
    let response = request
        .request_async(&send)
        .await
        .map_err(|error| grant_error(error, &login.token_endpoint))?;
    let mut fresh = tokens(&response, Utc::now());
    if fresh.refresh.is_none() {
        fresh.refresh = login.refresh_token.clone();
    }
    Ok(fresh)
}

/// RFC 7009: revokes `token` (a refresh token) at `endpoint` as the public
/// client `client_id`. The error says what the server answered.
pub(super) async fn revoke(endpoint: &str, client_id: &str, token: &Token) -> anyhow::Result<()> {
    let response = token_client()?
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

fn token_url(endpoint: &str) -> Result<TokenUrl, GrantError> {
    TokenUrl::new(endpoint.to_string())
        .with_context(|| format!("the token endpoint {endpoint:?} is not a URL"))
        .map_err(GrantError::Failed)
}

fn tokens(response: &BasicTokenResponse, now: DateTime<Utc>) -> Tokens {
    Tokens {
        access: Token::new(response.access_token().secret().clone()),
        refresh: response
            .refresh_token()
            .map(|token| Token::new(token.secret().clone())),
        expires_at: response
            .expires_in()
            .and_then(|lifetime| expiry(now, lifetime)),
    }
}

/// `now + lifetime`, to the second.
pub(super) fn expiry(now: DateTime<Utc>, lifetime: Duration) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(lifetime.as_secs()).ok()?;
    DateTime::from_timestamp(now.timestamp().checked_add(seconds)?, 0)
}

/// Sends one of oauth2's requests with reqwest.
async fn send(
    http: reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let response = http.execute(reqwest::Request::try_from(request)?).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut answer = http::Response::new(response.bytes().await?.to_vec());
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

/// A message for a failed grant. Never includes the body of the answer.
fn grant_error(
    error: RequestTokenError<reqwest::Error, BasicErrorResponse>,
    endpoint: &str,
) -> GrantError {
    match error {
        RequestTokenError::ServerResponse(answer) => {
            GrantError::Refused(match answer.error_description() {
                Some(description) => format!("{} ({description})", answer.error()),
                None => answer.error().to_string(),
            })
        }
        RequestTokenError::Request(error) => GrantError::Failed(
            anyhow::Error::new(error)
                .context(format!("cannot reach the token endpoint {endpoint}")),
        ),
        RequestTokenError::Parse(error, _body) => GrantError::Failed(anyhow::anyhow!(
            "the token endpoint {endpoint} sent an answer flotilla cannot read (at `{}`)",
            error.path()
        )),
        RequestTokenError::Other(why) => GrantError::Failed(anyhow::anyhow!(
            "the token endpoint {endpoint} sent an unusable answer: {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn expiry_is_now_plus_lifetime_to_the_second() {
        let now = at("2030-01-01T12:00:00.700Z");
        assert_eq!(
            expiry(now, Duration::from_secs(3600)),
            Some(at("2030-01-01T13:00:00Z"))
        );
        assert_eq!(expiry(now, Duration::from_secs(u64::MAX)), None);
    }

    #[test]
    fn the_authorization_url_carries_pkce_state_resource_and_scope() {
        let request = authorization_request(
            "https://gw/oauth/authorize",
            "client-7",
            "http://127.0.0.1:4567/callback",
            "https://gw/mcp",
            Some("openid  profile"),
        )
        .unwrap();
        let query: std::collections::HashMap<_, _> =
            request.url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "client-7");
        assert_eq!(query["redirect_uri"], "http://127.0.0.1:4567/callback");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["resource"], "https://gw/mcp");
        assert_eq!(query["scope"], "openid profile");
        assert_eq!(&query["state"], request.state.secret());
        // The challenge is the S256 of the verifier, not the verifier.
        let expected = PkceCodeChallenge::from_code_verifier_sha256(&request.verifier);
        assert_eq!(query["code_challenge"], expected.as_str());
        assert_ne!(query["code_challenge"], request.verifier.secret().as_str());

        let no_scope = authorization_request(
            "https://gw/oauth/authorize",
            "c",
            "http://127.0.0.1:1/callback",
            "https://gw/mcp",
            None,
        )
        .unwrap();
        assert!(!no_scope.url.query_pairs().any(|(key, _)| key == "scope"));
    }
}
