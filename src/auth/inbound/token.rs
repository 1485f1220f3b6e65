//! `POST /oauth/token`: authorization codes and refresh tokens in, sealed
//! access/refresh token pairs out. Checks PKCE S256 (RFC 7636), binds codes
//! and refresh tokens to their client, keeps codes single-use per replica,
//! and rotates refresh tokens by spending the provider's refresh token inside.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::AuthServer;
use super::errors::{OAuthError, no_store};
use super::payloads::{Access, Code, ProviderTokens, Refresh, RegisteredClient, client_digest};
use super::provider::ProviderError;
use crate::auth::inbound::seal::{self, Purpose, SealError};

/// Codes live this long.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// Digests of codes already exchanged here, kept a little longer than codes live.
pub struct UsedCodes(moka::future::Cache<String, ()>);

impl UsedCodes {
    pub fn new() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CODE_LIFETIME * 2)
                .build(),
        )
    }

    /// True the first time `code` is seen.
    async fn first_use(&self, code: &str) -> bool {
        let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(code.as_bytes()));
        self.0.entry(digest).or_insert(()).await.is_fresh()
    }
}

/// The RFC 7636 S256 challenge of a verifier.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// 43 to 128 characters of `[A-Za-z0-9-._~]` (RFC 7636 §4.1, §4.2).
pub fn is_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Form fields, refusing repeated ones (RFC 6749 §3.1).
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut fields = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if fields.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("parameter {key} appears more than once"));
        }
    }
    Ok(fields)
}

pub async fn token(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match exchange(&server, &headers, &body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(error = error.error, description = %error.description, "token request refused");
            error.into_response()
        }
    }
}

async fn exchange(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let mut form = parse_form(body).map_err(OAuthError::invalid_request)?;
    // Public clients may still send `Authorization: Basic base64(client_id:)`.
    if !form.contains_key("client_id")
        && let Some(client_id) = basic_client_id(headers)
    {
        form.insert("client_id".into(), client_id);
    }
    let field = |name: &str| -> Result<&str, OAuthError> {
        form.get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")))
    };
    // A registration that no longer unseals (keys rotated) is unknown: the
    // client should register again.
    if let Some(client_id) = form.get("client_id")
        && client_id.starts_with(seal::PREFIX)
        && server
            .keys
            .unseal::<RegisteredClient>(Purpose::Client, client_id)
            .is_err()
    {
        return Err(OAuthError::invalid_client(
            "unknown client_id (not registered at this gateway, or registered under a key it no longer has): register the client again",
        ));
    }
    if let Some(resource) = form.get("resource")
        && !server.urls.is_own_resource(resource)
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!("resource must be {}", server.urls.resource),
        ));
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let (tokens, client, client_name) = redeem_code(
                server,
                field("code")?,
                field("redirect_uri")?,
                field("client_id")?,
                field("code_verifier")?,
            )
            .await?;
            server.issue(tokens, &client, client_name)
        }
        Some("refresh_token") => {
            let client_id = field("client_id")?;
            let refresh: Refresh = server
                .keys
                .unseal(Purpose::Refresh, field("refresh_token")?)
                .map_err(|e| match e {
                    SealError::Expired => {
                        OAuthError::invalid_grant("the refresh token has expired: log in again")
                    }
                    other => OAuthError::invalid_grant(format!(
                        "the refresh token is not valid here ({other}): log in again"
                    )),
                })?;
            if refresh.client != client_digest(client_id) {
                return Err(OAuthError::invalid_grant(
                    "the refresh token was issued to another client_id",
                ));
            }
            let provider = server.provider.as_ref().ok_or_else(|| {
                OAuthError::server_error("no identity provider is configured (auth.oidc)")
            })?;
            let tokens = provider
                .refresh(&refresh.provider_refresh_token, &refresh.user)
                .await
                .map_err(|e| match e {
                    ProviderError::Refused(reason) => OAuthError::invalid_grant(format!(
                        "the identity provider refused the refresh ({reason}); the session has ended or this refresh token was already used: log in again"
                    )),
                    ProviderError::Unavailable { .. } => OAuthError::unavailable(e.to_string()),
                    ProviderError::BadResponse(_) => OAuthError::server_error(e.to_string()),
                })?;
            server.issue(tokens, &refresh.client, refresh.client_name)
        }
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "grant_type {other:?} is not supported: use authorization_code or refresh_token"
            ),
        )),
        None => Err(OAuthError::invalid_request(
            "grant_type is missing: use authorization_code or refresh_token",
        )),
    }
}

/// Checks a code against its redemption request; on success it is spent.
async fn redeem_code(
    server: &AuthServer,
    code: &str,
    redirect_uri: &str,
    client_id: &str,
    verifier: &str,
) -> Result<(ProviderTokens, String, Option<String>), OAuthError> {
    let sealed: Code = server.keys.unseal(Purpose::Code, code).map_err(|e| match e {
        SealError::Expired => OAuthError::invalid_grant(format!(
            "the authorization code has expired (codes are valid for {} s): start the login again",
            CODE_LIFETIME.as_secs()
        )),
        other => OAuthError::invalid_grant(format!("the authorization code is not valid here ({other})")),
    })?;
    if sealed.client != client_digest(client_id) {
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client_id",
        ));
    }
    if sealed.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the one in the authorization request",
        ));
    }
    if !is_pkce_string(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
        ));
    }
    if s256_challenge(verifier) != sealed.code_challenge {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge (S256) of the authorization request",
        ));
    }
    if !server.used_codes.first_use(code).await {
        tracing::warn!(
            user.subject = %sealed.provider.user.sub,
            client.name = sealed.client_name.as_deref().unwrap_or("(unnamed)"),
            "an authorization code was presented twice"
        );
        return Err(OAuthError::invalid_grant(
            "the authorization code was already used: start the login again",
        ));
    }
    Ok((sealed.provider, sealed.client, sealed.client_name))
}

impl AuthServer {
    /// Seals an access (and, with a provider refresh token, a refresh) token
    /// for `tokens`, answers the token request and reports the login.
    fn issue(
        &self,
        tokens: ProviderTokens,
        client: &str,
        client_name: Option<String>,
    ) -> Result<Response, OAuthError> {
        let now = Utc::now();
        let access_lifetime =
            chrono::Duration::from_std(self.access_lifetime).unwrap_or(chrono::Duration::hours(1));
        let expires = (now + access_lifetime).timestamp().min(tokens.id_token_exp);
        let expires_in = expires - now.timestamp();
        if expires_in <= 0 {
            return Err(OAuthError::server_error(
                "the identity provider issued an ID token that has already expired (check the clocks)",
            ));
        }
        let access = Access {
            user: tokens.user.clone(),
            id_token: tokens.id_token.clone(),
            id_token_exp: tokens.id_token_exp,
            aud: self.urls.resource.clone(),
            client: client.to_string(),
            client_name: client_name.clone(),
        };
        let access_token = self.keys.seal(
            Purpose::Access,
            &access,
            chrono::DateTime::from_timestamp(expires, 0),
        );
        let refresh_token = tokens.refresh_token.as_ref().map(|provider_refresh_token| {
            let lifetime = chrono::Duration::from_std(self.refresh_lifetime)
                .unwrap_or(chrono::Duration::days(30));
            let refresh = Refresh {
                user: tokens.user.clone(),
                provider_refresh_token: provider_refresh_token.clone(),
                client: client.to_string(),
                client_name: client_name.clone(),
            };
            self.keys
                .seal(Purpose::Refresh, &refresh, Some(now + lifetime))
        });
        let mut body = serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": self.scopes.join(" "),
        });
        if let Some(refresh_token) = refresh_token {
            body["refresh_token"] = serde_json::Value::String(refresh_token);
        }
        tracing::info!(
            user.subject = %tokens.user.sub,
            user.name = tokens.user.name.as_deref().unwrap_or(""),
            client.name = client_name.as_deref().unwrap_or("(unnamed)"),
            expires_in,
            "issued gateway tokens"
        );
        (self.on_login)(Arc::new(tokens.identity()));
        let mut response = (StatusCode::OK, Json(body)).into_response();
        no_store(&mut response);
        Ok(response)
    }
}

/// The client id of `Authorization: Basic base64(client_id:secret)`.
pub(super) fn basic_client_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, _) = text.split_once(':')?;
    let id = url::form_urlencoded::parse(format!("x={id}").as_bytes())
        .next()
        .map(|(_, v)| v.to_string())?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::super::payloads::UserClaims;
    use super::super::test_support;
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn s256_matches_the_rfc7636_appendix_b_vector() {
        assert_eq!(s256_challenge(VERIFIER), CHALLENGE);
        assert!(is_pkce_string(VERIFIER));
        assert!(!is_pkce_string("short"));
        assert!(!is_pkce_string(&"a".repeat(129)));
        assert!(!is_pkce_string(&format!("{}+", &VERIFIER[..43])));
    }

    #[test]
    fn repeated_form_fields_are_refused() {
        assert!(parse_form(b"a=1&b=2").is_ok());
        let err = parse_form(b"code=1&code=2").unwrap_err();
        assert!(err.contains("code"), "{err}");
    }

    #[test]
    fn basic_auth_carries_a_public_client_id() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                STANDARD.encode("https%3A%2F%2Fapp.example%2Fc.json:")
            )
            .parse()
            .unwrap(),
        );
        assert_eq!(
            basic_client_id(&headers).as_deref(),
            Some("https://app.example/c.json")
        );
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_client_id(&headers), None);
    }

    fn provider_tokens(id_token_exp: i64, refresh: Option<&str>) -> ProviderTokens {
        ProviderTokens {
            user: UserClaims {
                iss: "https://dex.example".into(),
                sub: "alice-sub".into(),
                name: Some("alice".into()),
                groups: vec![],
            },
            id_token: "header.payload.signature".into(),
            id_token_exp,
            refresh_token: refresh.map(str::to_string),
        }
    }

    fn code_for(server: &AuthServer, client_id: &str, exp_in: i64) -> String {
        server.keys.seal(
            Purpose::Code,
            &Code {
                provider: provider_tokens(Utc::now().timestamp() + 1800, Some("provider-rt")),
                client: client_digest(client_id),
                client_name: Some("Test".into()),
                redirect_uri: "http://127.0.0.1:5000/cb".into(),
                code_challenge: CHALLENGE.into(),
            },
            Some(Utc::now() + chrono::Duration::seconds(exp_in)),
        )
    }

    async fn post(
        served: &test_support::Served,
        form: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let response = test_support::http()
            .post(format!("{}/oauth/token", served.base))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        (status, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_code_is_exchanged_once_for_tokens_bound_to_its_client() {
        let logins = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut options = test_support::options(true);
        let seen = logins.clone();
        options.on_login = Arc::new(move |identity| seen.lock().unwrap().push(identity));
        let server = AuthServer::start(options).await.unwrap();
        let served = test_support::serve(server.routes()).await;
        let code = code_for(&server, "client-a", 60);
        let good = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:5000/cb"),
            ("client_id", "client-a"),
            ("code_verifier", VERIFIER),
            ("resource", "http://gw.test:8080/mcp"),
        ];

        let mut wrong_verifier = good;
        wrong_verifier[4].1 = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX";
        let (status, body) = post(&served, &wrong_verifier).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("code_verifier")
        );

        let mut wrong_client = good;
        wrong_client[3].1 = "client-b";
        let (_, body) = post(&served, &wrong_client).await;
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("another client_id")
        );

        let mut wrong_redirect = good;
        wrong_redirect[2].1 = "http://127.0.0.1:5001/cb";
        let (_, body) = post(&served, &wrong_redirect).await;
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("redirect_uri")
        );

        let mut wrong_resource = good;
        wrong_resource[5].1 = "https://elsewhere.example/mcp";
        let (_, body) = post(&served, &wrong_resource).await;
        assert_eq!(body["error"], "invalid_target");

        // Failed attempts do not spend the code.
        let (status, body) = post(&served, &good).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        // Capped by the ID token (30 min) rather than the default hour.
        assert!((1790..=1800).contains(&body["expires_in"].as_i64().unwrap()));
        let access = body["access_token"].as_str().unwrap();
        let refresh = body["refresh_token"].as_str().unwrap();
        assert!(!access.contains("header.payload") && !refresh.contains("provider-rt"));
        let sealed: Access = server.keys.unseal(Purpose::Access, access).unwrap();
        assert_eq!(sealed.aud, "http://gw.test:8080/mcp");
        let sealed: Refresh = server.keys.unseal(Purpose::Refresh, refresh).unwrap();
        assert_eq!(sealed.provider_refresh_token, "provider-rt");
        assert_eq!(logins.lock().unwrap().len(), 1);
        assert_eq!(logins.lock().unwrap()[0].key.subject, "alice-sub");

        let (status, body) = post(&served, &good).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("already used")
        );
        // A code is not a refresh token.
        let (_, body) = post(
            &served,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &code),
                ("client_id", "client-a"),
            ],
        )
        .await;
        assert_eq!(body["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn expired_codes_and_unknown_grants_say_what_to_do() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let code = code_for(&server, "client-a", -1);
        let (status, body) = post(
            &served,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:5000/cb"),
                ("client_id", "client-a"),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("expired")
        );

        let (_, body) = post(&served, &[("grant_type", "password")]).await;
        assert_eq!(body["error"], "unsupported_grant_type");
        let (_, body) = post(&served, &[("code", "x")]).await;
        assert_eq!(body["error"], "invalid_request");
        let (_, body) = post(&served, &[("grant_type", "authorization_code")]).await;
        assert_eq!(body["error_description"], "code is missing");
    }

    #[tokio::test]
    async fn access_tokens_expire_with_the_id_token() {
        let server = test_support::server().await;
        let soon = Utc::now().timestamp() + 120;
        let response = server
            .issue(provider_tokens(soon, None), &client_digest("c"), None)
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expires_in = body["expires_in"].as_i64().unwrap();
        assert!((118..=120).contains(&expires_in), "{expires_in}");
        // No provider refresh token, no gateway refresh token.
        assert!(body.get("refresh_token").is_none());
        let past = Utc::now().timestamp() - 1;
        assert!(
            server
                .issue(provider_tokens(past, None), "c", None)
                .is_err()
        );
    }
}
