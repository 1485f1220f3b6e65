//! `flotilla auth logout`: revoke one gateway's login where the gateway
//! offers revocation (RFC 7009: the refresh token, which ends the session at
//! the identity provider too), then forget the stored tokens. Forgetting
//! happens whether or not revocation worked; the output says which.
//! rmcp has no revocation: the revocation endpoint comes from rmcp's
//! discovery, the request itself is flotilla's ([`oauth::revoke`]).

use url::Url;

use super::EXIT_OK;
use super::credentials::{EndpointCredentials, Store};
use super::oauth;

pub(super) async fn run(store: &Store, endpoint: &Url) -> anyhow::Result<i32> {
    let key = endpoint.as_str().to_string();
    let path = store.path();
    let Some(login) = store.load()?.endpoints.get(&key).cloned() else {
        println!("No stored login for {key}; nothing to do.");
        return Ok(EXIT_OK);
    };
    match revoke(endpoint, &login).await {
        Ok(()) => println!(
            "Revoked the login at {} (the refresh token, and the identity provider's session behind it).",
            login.issuer
        ),
        Err(why) => eprintln!(
            "Could not revoke the login at {}: {why}. The stored tokens are removed; what was issued stays valid until it expires.",
            login.issuer
        ),
    }
    let forget = key.clone();
    let left = store
        .update_async(move |credentials| {
            credentials.endpoints.remove(&forget);
            if credentials.last_endpoint.as_deref() == Some(forget.as_str()) {
                credentials.last_endpoint = credentials.endpoints.keys().next().cloned();
            }
            credentials.endpoints.len()
        })
        .await?;
    if left == 0 {
        println!(
            "Logged out of {key}: removed {} (no logins left).",
            path.display()
        );
    } else {
        println!(
            "Logged out of {key}: removed its tokens from {}.",
            path.display()
        );
    }
    Ok(EXIT_OK)
}

async fn revoke(endpoint: &Url, login: &EndpointCredentials) -> anyhow::Result<()> {
    let Some(refresh) = &login.refresh_token else {
        anyhow::bail!("no refresh token was issued, so there is nothing to revoke");
    };
    let http = oauth::http_client()?;
    let server = oauth::server_of(&http, endpoint, &login.issuer).await?;
    let Some(revocation) = server.revocation_endpoint() else {
        anyhow::bail!("the gateway offers no revocation endpoint");
    };
    oauth::revoke(revocation, &login.client_id, refresh).await
}
