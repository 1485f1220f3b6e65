//! `flotilla auth status`: the gateway's `GET /auth/status` report for the
//! stored login, renewing the access token first when it is about to expire
//! (or when the gateway turns it away), and saving the rotated tokens. When
//! to renew is decided here; the refresh grant is rmcp's.

use anyhow::Context as _;
use chrono::Utc;
use http::StatusCode;
use http::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use url::Url;

use std::sync::Arc;

use super::credentials::{EndpointCredentials, EndpointStore, Store, Token};
use super::oauth::{self, GrantError, has_expired, needs_refresh};
use super::{EXIT_NOT_ALL_CONNECTED, EXIT_OK, NotLoggedIn, status_url};
use crate::auth::status::AuthStatusReport;

/// What `/auth/status` said.
#[derive(Debug)]
pub(super) enum StatusAnswer {
    Report(AuthStatusReport),
    /// 401: the token is missing, expired or unknown to the gateway.
    Unauthorized,
}

pub(super) async fn run(store: &Store, endpoint: &Url, json: bool) -> anyhow::Result<i32> {
    let http = oauth::http_client()?;
    let report = report(store, &http, endpoint).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(if report.all_connected() {
        EXIT_OK
    } else {
        EXIT_NOT_ALL_CONNECTED
    })
}

/// The report for the stored login, or for nobody when the gateway needs
/// no login. Not being logged in is a [`NotLoggedIn`] error.
pub(super) async fn report(
    store: &Store,
    http: &reqwest::Client,
    endpoint: &Url,
) -> anyhow::Result<AuthStatusReport> {
    let key = endpoint.as_str();
    let Some(login) = store.load()?.endpoints.remove(key) else {
        // No login stored: fine if the gateway needs none.
        return match fetch_report(http, endpoint, None).await {
            Ok(StatusAnswer::Report(report)) if report.user.is_none() => Ok(report),
            Ok(_) => Err(NotLoggedIn::for_endpoint(key, format!("not logged in to {key}")).into()),
            Err(error) => Err(NotLoggedIn::for_endpoint(
                key,
                format!(
                    "not logged in to {key} (and the gateway did not answer: {})",
                    error.root_cause()
                ),
            )
            .into()),
        };
    };
    authorized_report(store, http, endpoint, login).await
}

async fn authorized_report(
    store: &Store,
    http: &reqwest::Client,
    endpoint: &Url,
    mut login: EndpointCredentials,
) -> anyhow::Result<AuthStatusReport> {
    let key = endpoint.as_str();
    let now = Utc::now();
    let mut renewed = false;
    if needs_refresh(login.expires_at, now) {
        if login.refresh_token.is_some() {
            login = renew(store, endpoint, &login).await?;
            renewed = true;
        } else if has_expired(login.expires_at, now) {
            return Err(NotLoggedIn::for_endpoint(
                key,
                format!("the login to {key} has expired (and came without a refresh token)"),
            )
            .into());
        }
    }
    if let StatusAnswer::Report(report) =
        fetch_report(http, endpoint, Some(&login.access_token)).await?
    {
        return Ok(report);
    }
    if renewed || login.refresh_token.is_none() {
        return Err(rejected(key));
    }
    // The gateway turned the token away before its time (restarted with a
    // new key, revoked): one renewal, one more try.
    login = renew(store, endpoint, &login).await?;
    match fetch_report(http, endpoint, Some(&login.access_token)).await? {
        StatusAnswer::Report(report) => Ok(report),
        StatusAnswer::Unauthorized => Err(rejected(key)),
    }
}

fn rejected(key: &str) -> anyhow::Error {
    NotLoggedIn::for_endpoint(
        key,
        format!("the gateway at {key} no longer accepts the stored login"),
    )
    .into()
}

/// Renews the login with its refresh token, under the store's lock so that
/// concurrent commands do not spend a rotating refresh token twice: if
/// another process renewed it meanwhile, its result is used.
async fn renew(
    store: &Store,
    endpoint: &Url,
    stale: &EndpointCredentials,
) -> anyhow::Result<EndpointCredentials> {
    let key = endpoint.as_str();
    let lock = Arc::new(store.lock_async().await?);
    let Some(current) = lock.load()?.endpoints.remove(key) else {
        return Err(
            NotLoggedIn::for_endpoint(key, format!("logged out of {key} meanwhile")).into(),
        );
    };
    if current.access_token != stale.access_token && !needs_refresh(current.expires_at, Utc::now())
    {
        return Ok(current);
    }
    tracing::debug!(endpoint = key, "renewing the access token");
    let renewal = EndpointStore::for_renewal(lock.clone(), key, &current);
    match oauth::refresh(endpoint, &current, renewal).await {
        Ok(()) => {}
        Err(GrantError::Refused(why)) => {
            return Err(NotLoggedIn::for_endpoint(
                key,
                format!("the login to {key} has expired and could not be renewed: {why}"),
            )
            .into());
        }
        Err(GrantError::Failed(error)) => {
            return Err(error.context(format!("cannot renew the login to {key}")));
        }
    }
    lock.load()?
        .endpoints
        .remove(key)
        .with_context(|| format!("renewed the login to {key}, but it is no longer stored"))
}

/// `GET <origin>/auth/status`, with the token when there is one.
pub(super) async fn fetch_report(
    http: &reqwest::Client,
    endpoint: &Url,
    token: Option<&Token>,
) -> anyhow::Result<StatusAnswer> {
    let url = status_url(endpoint);
    let mut request = http.get(url.clone()).header(ACCEPT, "application/json");
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .context("the stored access token cannot be sent in a header; log in again")?;
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return Ok(StatusAnswer::Unauthorized);
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let excerpt: String = body.trim().chars().take(200).collect();
        anyhow::bail!("the gateway's {url} answered {status}: {excerpt}");
    }
    let report = response.json().await.with_context(|| {
        format!("the gateway's {url} did not answer with an auth status report")
    })?;
    Ok(StatusAnswer::Report(report))
}
