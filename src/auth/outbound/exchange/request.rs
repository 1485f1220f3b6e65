//! One RFC 8693 exchange at a Dex token endpoint: the request exactly as
//! Dex's `handleTokenExchange` reads it, the answer or OAuth error, and the
//! checks on the issued token (issuer, then signature against the issuer's
//! JWKS). Nothing here caches; [`super::TokenExchanger`] does.

use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;

use super::{ExchangeError, ExchangeTarget};
use crate::api::SecretValue;
use crate::api::UserKey;
use crate::auth::jwks::{JwksCache, JwtExpectations, unverified_claims};

pub(super) const GRANT_TYPE_TOKEN_EXCHANGE: &str =
    "urn:ietf:params:oauth:grant-type:token-exchange";
pub(super) const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// The whole exchange (connect, send, read) gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Token responses are a few kilobytes; anything bigger is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetime of a token whose response gives neither `expires_in` nor an `exp`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// No token is cached longer than this, whatever the endpoint claims.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Text taken from a response (OAuth error codes and descriptions) is cut here.
const MAX_QUOTED_CHARS: usize = 200;

/// A token the endpoint issued and the checks accepted.
pub(super) struct Issued {
    pub token: SecretValue,
    pub lifetime: Duration,
}

/// POSTs the exchange, reads the answer and checks the issued token.
pub(super) async fn exchange(
    http: &reqwest::Client,
    jwks: &JwksCache,
    user: &UserKey,
    subject_token: &SecretValue,
    target: &ExchangeTarget,
) -> Result<Issued, ExchangeError> {
    let secrets = [subject_token.expose(), target.client.client_secret.expose()];
    let mut form = vec![
        ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
        ("subject_token", subject_token.expose()),
        ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
        ("requested_token_type", target.requested_token_type.as_str()),
        ("scope", target.scopes.as_str()),
    ];
    if let Some(connector) = &target.connector_id {
        form.push(("connector_id", connector.as_str()));
    }
    let response = http
        .post(&target.endpoint)
        .timeout(REQUEST_TIMEOUT)
        .header(http::header::AUTHORIZATION, client_basic_auth(target))
        .header(http::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| transport_error(target, e, &secrets))?;
    let status = response.status();
    let body = read_capped(response)
        .await
        .map_err(|e| transport_error(target, e, &secrets))?;

    if !status.is_success() {
        return Err(error_response(status, &body, target, &secrets));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| ExchangeError::InvalidResponse {
            endpoint: target.endpoint.clone(),
            reason: "the answer is not JSON".into(),
        })?;
    let token = answer
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ExchangeError::InvalidResponse {
            endpoint: target.endpoint.clone(),
            reason: "the answer has no access_token".into(),
        })?;
    let exp = check_issued_token(token, target, jwks, user).await?;
    let lifetime = lifetime(answer.get("expires_in"), exp);
    Ok(Issued {
        token: SecretValue::new(token.to_string()),
        lifetime,
    })
}

/// `Basic base64(urlencode(client_id) ":" urlencode(client_secret))`, the
/// client authentication of RFC 6749 section 2.3.1, which Dex decodes with
/// `url.QueryUnescape`. Marked sensitive so no HTTP layer logs it.
fn client_basic_auth(target: &ExchangeTarget) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!(
        "{}:{}",
        encode(&target.client.client_id),
        encode(target.client.client_secret.expose())
    );
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    // Base64 is visible ASCII, which is always a valid header value.
    let mut header = HeaderValue::from_str(&value).expect("base64 is a valid header value");
    header.set_sensitive(true);
    header
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

fn transport_error(
    target: &ExchangeTarget,
    error: reqwest::Error,
    secrets: &[&str],
) -> ExchangeError {
    let cause = crate::fleet::error_chain(&error.without_url());
    ExchangeError::Unreachable {
        endpoint: target.endpoint.clone(),
        cause: quote(&cause, secrets, usize::MAX),
    }
}

/// An OAuth error (`{error, error_description}`) becomes [`ExchangeError::Rejected`];
/// any other non-success answer is reported by status only.
fn error_response(
    status: reqwest::StatusCode,
    body: &[u8],
    target: &ExchangeTarget,
    secrets: &[&str],
) -> ExchangeError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(|s| quote(s, secrets, MAX_QUOTED_CHARS))
            .filter(|s| !s.is_empty())
    };
    match field("error") {
        Some(error) => ExchangeError::Rejected {
            error,
            description: field("error_description"),
        },
        None => ExchangeError::HttpStatus {
            status: status.as_u16(),
            endpoint: target.endpoint.clone(),
        },
    }
}

/// Three dot-separated parts whose first is a JSON object naming an `alg`.
fn looks_like_jwt(token: &str) -> bool {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|header| header.get("alg").is_some())
}

/// A JWT must name the expected issuer and verify against that issuer's keys
/// (no audience check: the token is for the downstream, not for us). It
/// fails closed: a JWT whose keys cannot be fetched, or whose header names
/// no usable algorithm (`alg: none`), is not used. Opaque tokens (not shaped
/// like a JWT) are accepted as they are. Returns the JWT's `exp`, if any.
async fn check_issued_token(
    token: &str,
    target: &ExchangeTarget,
    jwks: &JwksCache,
    user: &UserKey,
) -> Result<Option<i64>, ExchangeError> {
    if jsonwebtoken::decode_header(token).is_err() {
        if looks_like_jwt(token) {
            return Err(ExchangeError::Unverified(
                "the issued token is a JWT without a usable signature algorithm (alg none or unknown); it is not used".into(),
            ));
        }
        tracing::debug!(
            user = %user.subject,
            endpoint = %target.endpoint,
            "exchanged token is not a JWT; accepted without issuer and signature checks"
        );
        return Ok(None);
    }
    let claims = unverified_claims(token).map_err(|e| ExchangeError::InvalidResponse {
        endpoint: target.endpoint.clone(),
        reason: quote(
            &format!("the issued token has a JWT header but {e}"),
            &[token],
            MAX_QUOTED_CHARS,
        ),
    })?;
    let issuer = claims.get("iss").and_then(|v| v.as_str());
    if issuer != Some(target.expected_issuer.as_str()) {
        return Err(ExchangeError::WrongIssuer {
            expected: target.expected_issuer.clone(),
            got: issuer
                .map(|i| quote(i, &[token], MAX_QUOTED_CHARS))
                .unwrap_or_else(|| "(none)".into()),
        });
    }
    let expect = JwtExpectations {
        issuer: target.expected_issuer.clone(),
        audiences: Vec::new(),
        jwks_uri: None,
    };
    match jwks.verify::<serde_json::Value>(token, &expect).await {
        Ok(_) => {}
        // Fail closed: a token whose signature cannot be checked is not
        // sent downstream (it could be anyone's, `alg: none` included).
        Err(e) if e.is_unreachable() => {
            tracing::warn!(
                user = %user.subject,
                endpoint = %target.endpoint,
                issuer = %target.expected_issuer,
                error = %e,
                "cannot fetch the issuer's signing keys; the exchanged token is not used"
            );
            return Err(ExchangeError::Unverified(format!(
                "{}; the gateway sends no token it cannot verify: make the issuer's keys reachable from the gateway",
                quote(&e.to_string(), &[token], MAX_QUOTED_CHARS)
            )));
        }
        Err(e) => {
            let secrets = [token, target.client.client_secret.expose()];
            return Err(ExchangeError::Unverified(quote(
                &e.to_string(),
                &secrets,
                usize::MAX,
            )));
        }
    }
    Ok(claims.get("exp").and_then(|v| v.as_i64()))
}

/// `expires_in`, else the JWT's `exp`, else [`DEFAULT_LIFETIME`]; at most [`MAX_LIFETIME`].
fn lifetime(expires_in: Option<&serde_json::Value>, exp: Option<i64>) -> Duration {
    let from_expires_in = expires_in.and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    });
    let from_exp = || {
        let left = exp? - chrono::Utc::now().timestamp();
        u64::try_from(left).ok()
    };
    from_expires_in
        .filter(|s| *s > 0)
        .or_else(|| from_exp().filter(|s| *s > 0))
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME)
        .min(MAX_LIFETIME)
}

/// Text from outside made fit for a message: secrets replaced, one line, at
/// most `max_chars` characters.
pub(super) fn quote(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let mut cut: String = flat.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_prefers_expires_in_then_exp_then_five_minutes() {
        let now = chrono::Utc::now().timestamp();
        let v = serde_json::json!(120);
        assert_eq!(
            lifetime(Some(&v), Some(now + 999)),
            Duration::from_secs(120)
        );
        let s = serde_json::json!("90");
        assert_eq!(lifetime(Some(&s), None), Duration::from_secs(90));
        let zero = serde_json::json!(0);
        let by_exp = lifetime(Some(&zero), Some(now + 600));
        assert!(by_exp <= Duration::from_secs(600) && by_exp >= Duration::from_secs(598));
        assert_eq!(lifetime(None, Some(now - 5)), DEFAULT_LIFETIME);
        assert_eq!(lifetime(None, None), DEFAULT_LIFETIME);
        let huge = serde_json::json!(u64::MAX);
        assert_eq!(lifetime(Some(&huge), None), MAX_LIFETIME);
    }

    #[test]
    fn quote_redacts_secrets_flattens_and_truncates() {
        assert_eq!(
            quote("bad token SEKRIT\nseen", &["SEKRIT", ""], 100),
            "bad token <redacted> seen"
        );
        assert_eq!(quote("abcdef", &[], 3), "abc…");
        assert_eq!(quote("abc", &[], 3), "abc");
    }
}
