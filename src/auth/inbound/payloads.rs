//! What travels sealed: the content of each token the authorization server
//! hands out (see the table in the module header). Fields holding provider
//! tokens are plain strings here because they must serialize into the sealed
//! blob; none of these types derives `Debug`, so they cannot reach a log.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::SecretValue;
use crate::api::{UserIdentity, UserKey};

/// A dynamically registered client: its `client_id` is this, sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisteredClient {
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub issued_at: i64,
}

/// One checked authorization request of an MCP client.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientRequest {
    pub client_id: String,
    pub client_name: Option<String>,
    pub redirect_uri: String,
    /// The client's `state`, returned to it untouched.
    pub state: Option<String>,
    /// The client's PKCE S256 challenge.
    pub code_challenge: String,
}

/// The `state` sent to the provider: the client's request plus the gateway's
/// own PKCE verifier and nonce for its login at the provider.
#[derive(Serialize, Deserialize)]
pub struct LoginState {
    pub request: ClientRequest,
    pub pkce_verifier: String,
    pub nonce: String,
}

/// The consent form: the request, bound to the browser that saw the page by
/// the digest of a cookie set with it.
#[derive(Serialize, Deserialize)]
pub struct ConsentForm {
    pub request: ClientRequest,
    pub browser: String,
}

/// The user as the provider's ID token names them.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserClaims {
    pub iss: String,
    pub sub: String,
    /// `preferred_username`, `email` or `name`, whichever came first.
    pub name: Option<String>,
    /// The ID token's `groups` claim (for tool policies); absent in tokens
    /// sealed before groups were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The most groups kept from a login (they travel sealed in every token).
pub const MAX_GROUPS: usize = 256;

/// The `groups` claim of a JWT whose signature was already verified: a
/// list of strings (or one string); anything else names no groups.
pub fn groups_claim(jwt: &str) -> Vec<String> {
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let mut groups: Vec<String> = match payload.as_ref().and_then(|p| p.get("groups")) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    groups.truncate(MAX_GROUPS);
    groups
}

impl UserClaims {
    pub fn key(&self) -> UserKey {
        UserKey {
            issuer: self.iss.clone(),
            subject: self.sub.clone(),
        }
    }
}

/// What a login at the provider yields.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProviderTokens {
    pub user: UserClaims,
    pub id_token: String,
    /// The ID token's `exp`, seconds since the epoch.
    pub id_token_exp: i64,
    pub refresh_token: Option<String>,
}

impl ProviderTokens {
    pub fn identity(&self) -> UserIdentity {
        identity(&self.user, &self.id_token, self.id_token_exp)
    }
}

/// An authorization code.
#[derive(Serialize, Deserialize)]
pub struct Code {
    pub provider: ProviderTokens,
    /// [`client_digest`] of the client it was issued to.
    pub client: String,
    pub client_name: Option<String>,
    pub redirect_uri: String,
    pub code_challenge: String,
}

/// An access token for `/mcp`.
#[derive(Serialize, Deserialize)]
pub struct Access {
    pub user: UserClaims,
    pub id_token: String,
    pub id_token_exp: i64,
    /// Always `<public>/mcp`.
    pub aud: String,
    pub client: String,
    pub client_name: Option<String>,
}

/// A refresh token.
#[derive(Serialize, Deserialize)]
pub struct Refresh {
    pub user: UserClaims,
    pub provider_refresh_token: String,
    pub client: String,
    pub client_name: Option<String>,
}

/// A short fixed-size stand-in for a `client_id` (which may be a long sealed
/// blob or a URL), to bind tokens to their client.
pub fn client_digest(client_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(client_id.as_bytes()))
}

pub fn identity(user: &UserClaims, id_token: &str, id_token_exp: i64) -> UserIdentity {
    UserIdentity {
        key: user.key(),
        display_name: user.name.clone(),
        id_token: Some(SecretValue::new(id_token.to_string())),
        expires_at: chrono::DateTime::from_timestamp(id_token_exp, 0),
        source: crate::api::IdentitySource::GatewayLogin,
        client: None,
        groups: user.groups.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> String {
        format!("h.{}.s", URL_SAFE_NO_PAD.encode(payload.to_string()))
    }

    #[test]
    fn groups_are_read_as_a_list_or_one_string_and_capped() {
        assert_eq!(
            groups_claim(&jwt(serde_json::json!({"groups": ["sre", 3, "dev"]}))),
            ["sre", "dev"]
        );
        assert_eq!(
            groups_claim(&jwt(serde_json::json!({"groups": "sre"}))),
            ["sre"]
        );
        assert!(groups_claim(&jwt(serde_json::json!({"sub": "a"}))).is_empty());
        assert!(groups_claim("not a jwt").is_empty());
        let many: Vec<String> = (0..1000).map(|i| format!("g{i}")).collect();
        assert_eq!(
            groups_claim(&jwt(serde_json::json!({"groups": many}))).len(),
            MAX_GROUPS
        );
    }
}
