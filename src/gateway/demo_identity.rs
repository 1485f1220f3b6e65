//! The insecure demo identity (`flotilla serve --insecure-demo-identity`,
//! refused together with `auth:`): without a login every caller is
//! anonymous, so policy rules on subjects and groups could not be tried.
//! In this mode a request may name its caller in headers, which nobody
//! checks; it exists for demos and tests on loopback only:
//!
//! - `X-Flotilla-Demo-User`: the subject;
//! - `X-Flotilla-Demo-Groups`: groups, comma-separated;
//! - `X-Flotilla-Demo-Client`: the client id.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{IdentitySource, UserIdentity, UserKey};

pub const USER: &str = "x-flotilla-demo-user";
pub const GROUPS: &str = "x-flotilla-demo-groups";
pub const CLIENT: &str = "x-flotilla-demo-client";
/// The issuer every demo identity carries, so none is mistaken for a login.
pub const ISSUER: &str = "urn:flotilla:insecure-demo";
const MAX_VALUE: usize = 256;
const MAX_GROUPS: usize = 32;

/// The caller the headers name, if any; `Err` says which header is bad.
fn identity(headers: &HeaderMap) -> Result<Option<UserIdentity>, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| format!("{name} must be visible ASCII"))?
                    .trim();
                if value.is_empty() || value.len() > MAX_VALUE {
                    return Err(format!("{name} must be 1 to {MAX_VALUE} characters"));
                }
                Ok(Some(value.to_string()))
            }
        }
    };
    let Some(subject) = text(USER)? else {
        return Ok(None);
    };
    let groups: Vec<String> = text(GROUPS)?
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if groups.len() > MAX_GROUPS {
        return Err(format!("{GROUPS} names more than {MAX_GROUPS} groups"));
    }
    Ok(Some(UserIdentity {
        key: UserKey {
            issuer: ISSUER.into(),
            subject,
        },
        display_name: None,
        id_token: None,
        expires_at: None,
        source: IdentitySource::InsecureDemo,
        client: text(CLIENT)?,
        groups,
    }))
}

/// Puts the identity the demo headers name into the request.
pub async fn demo_identity(mut request: Request, next: Next) -> Response {
    match identity(request.headers()) {
        Ok(Some(user)) => {
            request.extensions_mut().insert(Arc::new(user));
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_name_subject_groups_and_client() {
        let mut headers = HeaderMap::new();
        assert!(identity(&headers).unwrap().is_none());
        headers.insert(USER, "alice".parse().unwrap());
        headers.insert(GROUPS, " sre , dev,,".parse().unwrap());
        headers.insert(CLIENT, "cli".parse().unwrap());
        let user = identity(&headers).unwrap().unwrap();
        assert_eq!(user.key.subject, "alice");
        assert_eq!(user.key.issuer, ISSUER);
        assert_eq!(user.groups, ["sre", "dev"]);
        assert_eq!(user.client.as_deref(), Some("cli"));
        headers.insert(USER, "".parse().unwrap());
        assert!(identity(&headers).unwrap_err().contains(USER));
    }
}
