//! `POST /oauth/revoke` (RFC 7009): ends a login the gateway issued.
//!
//! The gateway's tokens are sealed, not stored, so a refresh token is
//! revoked where its life is: the identity provider's refresh token sealed
//! inside it is revoked at the provider's own revocation endpoint, and the
//! next refresh of the gateway's token fails there, on every replica.
//! Access tokens are not revocable (they expire within the access lifetime):
//! such a request gets `unsupported_token_type`, as it does when the
//! provider lists no revocation endpoint. A token that is not valid here
//! gets 200, as RFC 7009 §2.2 asks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AuthServer;
use super::errors::{OAuthError, no_store};
use super::payloads::{Access, Refresh, client_digest};
use super::provider::ProviderError;
use super::token::{basic_client_id, parse_form};
use crate::auth::inbound::seal::Purpose;

pub async fn revoke(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match revoke_token(&server, &headers, &body).await {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            no_store(&mut response);
            response
        }
        Err(error) => {
            tracing::info!(error = error.error, description = %error.description, "revocation refused");
            error.into_response()
        }
    }
}

async fn revoke_token(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), OAuthError> {
    let form = parse_form(body).map_err(OAuthError::invalid_request)?;
    let token = form
        .get("token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic_client_id(headers))
        .ok_or_else(|| {
            OAuthError::invalid_client("client_id is missing: public clients name themselves")
        })?;
    let Ok(refresh) = server.keys.unseal::<Refresh>(Purpose::Refresh, token) else {
        if server.keys.unseal::<Access>(Purpose::Access, token).is_ok() {
            return Err(unsupported(format!(
                "access tokens cannot be revoked; they expire within {} s of issue: revoke the refresh token",
                server.access_lifetime.as_secs()
            )));
        }
        // Expired, foreign or garbage: nothing to revoke (RFC 7009 §2.2).
        return Ok(());
    };
    if refresh.client != client_digest(&client_id) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the token was issued to another client_id",
        ));
    }
    let provider = server.provider.as_ref().ok_or_else(|| {
        OAuthError::server_error("no identity provider is configured (auth.oidc)")
    })?;
    match provider
        .revoke_refresh_token(&refresh.provider_refresh_token)
        .await
    {
        Ok(true) => {
            tracing::info!(subject = %refresh.user.sub, "login revoked at the identity provider");
            Ok(())
        }
        Ok(false) => Err(unsupported(
            "the identity provider lists no revocation endpoint, so this login ends only when its refresh token expires there",
        )),
        Err(e @ ProviderError::Unavailable { .. }) => Err(OAuthError::unavailable(e.to_string())),
        Err(e) => Err(OAuthError::server_error(e.to_string())),
    }
}

fn unsupported(description: impl Into<String>) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_token_type",
        description,
    )
}
