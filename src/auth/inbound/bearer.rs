//! Who is calling `/mcp`: the `Authorization: Bearer` token is either a
//! gateway access token (unsealed, expiry and audience checked) or a JWT of a
//! configured trusted issuer (verified against its JWKS). A rejection becomes
//! a 401 whose `WWW-Authenticate` points at the protected resource metadata
//! (RFC 9728 §5.1, RFC 6750 §3). Nothing here logs or echoes a token.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::payloads::{Access, identity};
use super::{AuthServer, Rejection, Urls};
use crate::api::IdentitySource;
use crate::api::SecretValue;
use crate::api::{UserIdentity, UserKey};
use crate::auth::inbound::seal::{self, Purpose, SealError};
use crate::auth::jwks::{self, JwtExpectations};

pub async fn authenticate(
    server: &AuthServer,
    headers: &HeaderMap,
) -> Result<Arc<UserIdentity>, Rejection> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Rejection::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| Rejection::Invalid("the Authorization header is not ASCII".into()))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(Rejection::Invalid(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
    };
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    if token.starts_with(seal::PREFIX) {
        gateway_token(server, token).map(Arc::new)
    } else if token.split('.').count() == 3 {
        trusted_jwt(server, token).await.map(Arc::new)
    } else {
        Err(Rejection::Invalid(
            "the bearer token is neither an access token of this gateway nor a JWT: log in through the gateway".into(),
        ))
    }
}

fn gateway_token(server: &AuthServer, token: &str) -> Result<UserIdentity, Rejection> {
    let access: Access = server
        .keys
        .unseal(Purpose::Access, token)
        .map_err(|e| match e {
            SealError::Expired => Rejection::Expired,
            SealError::UnknownKey => Rejection::Invalid(
                "the access token was sealed with a key this gateway does not have (keys rotated, or a replica without the shared auth.sealingKeyFile): log in again".into(),
            ),
            SealError::Invalid => Rejection::Invalid(
                "the access token does not verify: it is not an access token of this gateway, or it was altered".into(),
            ),
            SealError::Malformed | SealError::Payload(_) => {
                Rejection::Invalid("the access token is malformed".into())
            }
        })?;
    if access.aud != server.urls.resource {
        return Err(Rejection::Invalid(format!(
            "the access token is for {}, not {}",
            access.aud, server.urls.resource
        )));
    }
    Ok(UserIdentity {
        // The name the client registered under; its id is a sealed blob.
        client: access.client_name.clone(),
        ..identity(&access.user, &access.id_token, access.id_token_exp)
    })
}

#[derive(Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    exp: Option<i64>,
    /// One audience or several.
    #[serde(default)]
    aud: Option<serde_json::Value>,
    azp: Option<String>,
    client_id: Option<String>,
    #[serde(default, deserialize_with = "strings_or_nothing")]
    groups: Vec<String>,
    preferred_username: Option<String>,
    email: Option<String>,
    name: Option<String>,
}

async fn trusted_jwt(server: &AuthServer, token: &str) -> Result<UserIdentity, Rejection> {
    let issuer = jwks::unverified_issuer(token)
        .map_err(|e| Rejection::Invalid(format!("the bearer token is not a usable JWT: {e}")))?;
    let Some(trusted) = server.trusted_issuers.iter().find(|t| t.issuer == issuer) else {
        let shown: String = issuer.chars().take(200).collect();
        return Err(Rejection::Invalid(format!(
            "JWTs from issuer {shown:?} are not accepted here: log in through the gateway, or add the issuer to auth.trustedIssuers"
        )));
    };
    let expect = JwtExpectations {
        issuer: trusted.issuer.clone(),
        audiences: trusted.audiences.clone(),
        jwks_uri: trusted.jwks_uri.clone(),
    };
    let claims: JwtClaims = server
        .jwks
        .verify(token, &expect)
        .await
        .map_err(|e| match e {
            crate::auth::jwks::JwtError::Expired => Rejection::Expired,
            e if e.is_unreachable() => Rejection::Unavailable(format!(
                "the token cannot be checked now ({e}); retry shortly"
            )),
            e => Rejection::Invalid(format!("the JWT was rejected: {e}")),
        })?;
    if let Some((provider, client_id)) = &server.login_client
        && super::same_issuer(&claims.iss, provider)
        && issued_to(&claims, client_id)
    {
        return Err(Rejection::Invalid(format!(
            "this is an ID token issued to the gateway's own client {client_id:?}; the gateway forwards such tokens to servers and never accepts them back: log in through the gateway"
        )));
    }
    Ok(UserIdentity {
        key: UserKey {
            issuer: claims.iss,
            subject: claims.sub,
        },
        display_name: claims.preferred_username.or(claims.email).or(claims.name),
        id_token: Some(SecretValue::new(token.to_string())),
        expires_at: claims
            .exp
            .and_then(|exp| chrono::DateTime::from_timestamp(exp, 0)),
        source: IdentitySource::TrustedJwt,
        client: claims.azp.or(claims.client_id),
        groups: claims.groups,
    })
}

/// A `groups` claim as a list of strings; anything else names no groups.
fn strings_or_nothing<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let value = <serde_json::Value as serde::Deserialize>::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(one) => vec![one],
        _ => Vec::new(),
    })
}

/// Whether a JWT was issued to `client_id` (its audience, or the party it
/// was authorized for).
fn issued_to(claims: &JwtClaims, client_id: &str) -> bool {
    let in_audience = match &claims.aud {
        Some(serde_json::Value::String(aud)) => aud == client_id,
        Some(serde_json::Value::Array(auds)) => auds.iter().any(|a| a == client_id),
        _ => false,
    };
    in_audience || claims.azp.as_deref() == Some(client_id)
}

/// The 401 for `/mcp`.
pub fn unauthorized(urls: &Urls, scopes: &[String], rejection: &Rejection) -> Response {
    let message = rejection.to_string();
    if let Rejection::Unavailable(_) = rejection {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": "temporarily_unavailable", "error_description": message,
            })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return response;
    }
    let mut challenge = format!(r#"Bearer resource_metadata="{}""#, urls.resource_metadata);
    if !scopes.is_empty() {
        challenge.push_str(&format!(r#", scope="{}""#, header_safe(&scopes.join(" "))));
    }
    // RFC 6750 §3.1: no error code when the request carried no token at all.
    let error = match rejection {
        Rejection::Missing => "unauthorized",
        Rejection::Invalid(_) | Rejection::Expired | Rejection::Unavailable(_) => {
            challenge.push_str(&format!(
                r#", error="invalid_token", error_description="{}""#,
                header_safe(&message)
            ));
            "invalid_token"
        }
    };
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": error, "error_description": message })),
    )
        .into_response();
    // header_safe leaves only visible ASCII and spaces, so this cannot fail.
    if let Ok(value) = HeaderValue::try_from(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Only the characters RFC 6750 allows inside a quoted auth-param.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::payloads::UserClaims;
    use super::super::test_support;
    use super::*;
    use chrono::Utc;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    fn access(aud: &str) -> Access {
        Access {
            user: UserClaims {
                iss: "https://dex.example".into(),
                sub: "alice-sub".into(),
                name: Some("alice".into()),
                groups: vec!["sre".into()],
            },
            id_token: "provider.id.token".into(),
            id_token_exp: Utc::now().timestamp() + 3600,
            aud: aud.into(),
            client: "c".into(),
            client_name: None,
        }
    }

    fn invalid_message(result: Result<Arc<UserIdentity>, Rejection>) -> String {
        match result {
            Err(Rejection::Invalid(message)) => message,
            Err(other) => panic!("expected Invalid, got {other:?}"),
            Ok(identity) => panic!("expected a rejection, got {identity:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_access_token_names_the_user_and_carries_the_id_token() {
        let server = test_support::server().await;
        let token = server.keys.seal(
            Purpose::Access,
            &access("http://gw.test:8080/mcp"),
            Some(Utc::now() + chrono::Duration::minutes(5)),
        );
        let identity = server.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(identity.key.subject, "alice-sub");
        assert_eq!(identity.key.issuer, "https://dex.example");
        assert_eq!(identity.shown_name(), "alice");
        assert_eq!(identity.source, IdentitySource::GatewayLogin);
        assert_eq!(
            identity.groups,
            ["sre"],
            "the login's groups reach policies"
        );
        assert_eq!(
            identity.id_token.as_ref().map(|t| t.expose()),
            Some("provider.id.token")
        );
        assert!(identity.expires_at.is_some());
    }

    #[tokio::test]
    async fn missing_garbage_expired_and_misdirected_tokens_are_rejected() {
        let server = test_support::server().await;
        assert!(matches!(
            server.authenticate(&HeaderMap::new()).await,
            Err(Rejection::Missing)
        ));
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(invalid_message(server.authenticate(&basic).await).contains("Bearer"));
        let message = invalid_message(server.authenticate(&bearer("opaque-garbage")).await);
        assert!(!message.contains("opaque-garbage"), "{message}");

        let expired = server.keys.seal(
            Purpose::Access,
            &access("http://gw.test:8080/mcp"),
            Some(Utc::now() - chrono::Duration::seconds(1)),
        );
        assert!(matches!(
            server.authenticate(&bearer(&expired)).await,
            Err(Rejection::Expired)
        ));

        let other_audience =
            server
                .keys
                .seal(Purpose::Access, &access("https://other.example/mcp"), None);
        let message = invalid_message(server.authenticate(&bearer(&other_audience)).await);
        assert!(message.contains("other.example"), "{message}");

        // A refresh token (or code) is not an access token.
        let refresh = server
            .keys
            .seal(Purpose::Refresh, &access("http://gw.test:8080/mcp"), None);
        let message = invalid_message(server.authenticate(&bearer(&refresh)).await);
        assert!(message.contains("does not verify"), "{message}");

        // Another gateway's token.
        let foreign = crate::auth::inbound::seal::SealingKeys::ephemeral().seal(
            Purpose::Access,
            &access("http://gw.test:8080/mcp"),
            None,
        );
        let message = invalid_message(server.authenticate(&bearer(&foreign)).await);
        assert!(message.contains("log in again"), "{message}");

        // A JWT of an issuer nobody trusts.
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://stranger.example","sub":"x"}"#)
        );
        let message = invalid_message(server.authenticate(&bearer(&jwt)).await);
        assert!(message.contains("trustedIssuers"), "{message}");
    }

    #[tokio::test]
    async fn trusted_issuers_jwts_are_verified_against_their_keys() {
        let (options, _keys, sign_claims) =
            trusted_setup("https://sa.example", &["flotilla-api"]).await;
        let server = AuthServer::start(options).await.unwrap();
        let sign = |aud: &str, exp: i64| {
            sign_claims(serde_json::json!({
                "iss": "https://sa.example", "sub": "system:serviceaccount:ci:bot",
                "aud": aud, "exp": exp, "email": "bot@example.com",
            }))
        };
        let now = Utc::now().timestamp();
        let token = sign("flotilla-api", now + 600);
        let identity = server.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(identity.key.subject, "system:serviceaccount:ci:bot");
        assert_eq!(identity.display_name.as_deref(), Some("bot@example.com"));
        assert_eq!(identity.source, IdentitySource::TrustedJwt);
        assert_eq!(
            identity.id_token.as_ref().map(|t| t.expose()),
            Some(token.as_str())
        );

        let message = invalid_message(
            server
                .authenticate(&bearer(&sign("someone-else", now + 600)))
                .await,
        );
        assert!(message.contains("rejected"), "{message}");
        assert!(matches!(
            server
                .authenticate(&bearer(&sign("flotilla-api", now - 600)))
                .await,
            Err(Rejection::Expired)
        ));
    }

    #[tokio::test]
    async fn the_401_points_at_the_resource_metadata() {
        let server = test_support::server().await;
        let response = server.unauthorized(&Rejection::Missing);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert_eq!(
            challenge,
            r#"Bearer resource_metadata="http://gw.test:8080/.well-known/oauth-protected-resource/mcp", scope="openid profile email offline_access""#
        );

        let response = server.unauthorized(&Rejection::Invalid(
            "the \"token\" is bad\\ — really".into(),
        ));
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with(r#"Bearer resource_metadata="http://gw.test:8080/.well-known/oauth-protected-resource/mcp""#), "{challenge}");
        assert!(
            challenge.ends_with(
                r#", error="invalid_token", error_description="the 'token' is bad/ ? really""#
            ),
            "{challenge}"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "the \"token\" is bad\\ — really");

        let response = server.unauthorized(&Rejection::Expired);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.contains("has expired"), "{challenge}");
    }

    /// A trusted issuer at `issuer` whose HS256 key is served; returns the
    /// server's options and a signer of claims.
    async fn trusted_setup(
        issuer: &str,
        audiences: &[&str],
    ) -> (
        super::super::AuthServerOptions,
        test_support::Served,
        impl Fn(serde_json::Value) -> String,
    ) {
        use base64::Engine as _;
        use jsonwebtoken::{EncodingKey, Header, encode};
        let secret = b"another-shared-test-secret-of-length";
        let jwks = serde_json::json!({"keys": [{
            "kty": "oct", "kid": "k1", "alg": "HS256",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        }]});
        let router = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { Json(jwks) }
            }),
        );
        let keys_server = test_support::serve(router).await;
        let mut options = test_support::options(true);
        options.config.trusted_issuers = vec![crate::auth::settings::TrustedIssuerConfig {
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            jwks_uri: Some(format!("{}/keys", keys_server.base)),
        }];
        let sign = move |claims: serde_json::Value| {
            let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some("k1".into());
            encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
        };
        (options, keys_server, sign)
    }

    #[tokio::test]
    async fn a_trusted_jwt_needs_an_audience_and_to_be_valid_already() {
        let (options, _keys, sign) = trusted_setup("https://sa.example", &["flotilla-api"]).await;
        let server = AuthServer::start(options).await.unwrap();
        let now = Utc::now().timestamp();
        let claims = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({
                "iss": "https://sa.example", "sub": "bot", "exp": now + 600,
            });
            for (key, value) in extra.as_object().unwrap() {
                claims[key] = value.clone();
            }
            sign(claims)
        };
        let good = claims(serde_json::json!({"aud": "flotilla-api"}));
        assert!(server.authenticate(&bearer(&good)).await.is_ok());
        let no_audience = claims(serde_json::json!({}));
        let message = invalid_message(server.authenticate(&bearer(&no_audience)).await);
        assert!(message.contains("aud"), "{message}");
        let not_yet = claims(serde_json::json!({"aud": "flotilla-api", "nbf": now + 300}));
        let message = invalid_message(server.authenticate(&bearer(&not_yet)).await);
        assert!(message.contains("not valid yet"), "{message}");
    }

    #[tokio::test]
    async fn a_jwt_whose_issuer_keys_are_out_of_reach_gets_503_to_retry_not_401() {
        let (mut options, _keys, sign) =
            trusted_setup("https://sa.example", &["flotilla-api"]).await;
        // Nothing listens here, and no keys were ever cached.
        options.config.trusted_issuers[0].jwks_uri = Some("http://127.0.0.1:9/keys".into());
        let server = AuthServer::start(options).await.unwrap();
        let now = Utc::now().timestamp();
        let token = sign(serde_json::json!({
            "iss": "https://sa.example", "sub": "bot", "exp": now + 600, "aud": "flotilla-api",
        }));
        let rejection = server.authenticate(&bearer(&token)).await.unwrap_err();
        assert!(
            matches!(rejection, Rejection::Unavailable(_)),
            "{rejection}"
        );
        let response = server.unauthorized(&rejection);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn an_id_token_the_gateway_forwards_is_never_accepted_back() {
        // The provider itself is trusted for machine clients (audience
        // "direct") and, carelessly, for a downstream's audience too.
        let provider = "http://127.0.0.1:9/issuer";
        let (options, _keys, sign) = trusted_setup(provider, &["direct", "cluster-a"]).await;
        let server = AuthServer::start(options).await.unwrap();
        let now = Utc::now().timestamp();
        let token = |aud: serde_json::Value, azp: Option<&str>| {
            let mut claims = serde_json::json!({
                "iss": provider, "sub": "alice", "exp": now + 600, "aud": aud,
            });
            if let Some(azp) = azp {
                claims["azp"] = azp.into();
            }
            sign(claims)
        };
        // What a forwardToken server receives: the user's ID token from the
        // gateway's login, with the server's audience added.
        let forwarded = token(
            serde_json::json!(["flotilla", "cluster-a"]),
            Some("flotilla"),
        );
        let message = invalid_message(server.authenticate(&bearer(&forwarded)).await);
        assert!(message.contains("never accepts them back"), "{message}");
        let authorized_for_gateway = token(serde_json::json!("cluster-a"), Some("flotilla"));
        assert!(
            server
                .authenticate(&bearer(&authorized_for_gateway))
                .await
                .is_err()
        );
        // A machine client's own token still works.
        let machine = token(serde_json::json!("direct"), Some("direct"));
        assert!(server.authenticate(&bearer(&machine)).await.is_ok());

        // Trusting the gateway's own client as an audience is refused at start.
        let (options, _keys, _) = trusted_setup(&format!("{provider}/"), &["flotilla"]).await;
        let error = AuthServer::start(options).await.err().expect("refused");
        assert!(error.to_string().contains("forwardToken"), "{error}");
    }
}
