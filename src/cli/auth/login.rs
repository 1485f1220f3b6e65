//! `flotilla auth login`: discover the authorization server, register a
//! public client for this login's loopback redirect (RFC 7591), send the
//! user to the authorization URL (printed always, opened in a browser when
//! there is one), take the code from the redirect, exchange it, store the
//! tokens, and greet the user by the name the gateway knows them by.

use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use url::Url;

use super::callback::{CallbackListener, Expected};
use super::credentials::{EndpointCredentials, Store};
use super::discovery::{self, Discovery};
use super::oauth::{self, CodeExchange, GrantError};
use super::status::{StatusAnswer, fetch_report};
use super::{EXIT_OK, parse_endpoint};

/// The line before the URL on stderr; scripts read the line after it.
pub(super) const URL_PROMPT: &str = "Open this URL to log in:";

/// How the login ended.
#[derive(Debug)]
pub(super) enum LoginOutcome {
    /// The gateway needs no login; nothing was stored.
    NotNeeded,
    LoggedIn,
}

pub(super) async fn run(
    store: &Store,
    endpoint: &Url,
    no_browser: bool,
    timeout_secs: u64,
) -> anyhow::Result<i32> {
    let http = oauth::http_client()?;
    let timeout = Duration::from_secs(timeout_secs);
    let show = |url: &Url| {
        eprintln!("{URL_PROMPT}\n{url}");
        if should_open_browser(no_browser) {
            open_browser(url);
        }
    };
    match login(store, &http, endpoint, timeout, show).await? {
        LoginOutcome::NotNeeded => {
            println!("{endpoint} needs no login: the gateway does not ask for one");
        }
        LoginOutcome::LoggedIn => {
            let stored = store.load()?.endpoints.remove(endpoint.as_str());
            let token = stored.as_ref().map(|login| &login.access_token);
            match fetch_report(&http, endpoint, token).await {
                Ok(StatusAnswer::Report(report)) => match report.user {
                    Some(user) => println!(
                        "Logged in to {endpoint} as {}",
                        user.name.as_deref().unwrap_or(&user.subject)
                    ),
                    None => println!("Logged in to {endpoint}"),
                },
                Ok(StatusAnswer::Unauthorized) => {
                    println!("Logged in to {endpoint}");
                    eprintln!("(but the gateway's /auth/status does not accept the new login yet)");
                }
                Err(error) => {
                    println!("Logged in to {endpoint}");
                    tracing::debug!(error = format!("{error:#}"), "auth status after login");
                }
            }
        }
    }
    Ok(EXIT_OK)
}

/// The whole flow up to stored tokens. `show` gets the authorization URL
/// once the loopback listener is up.
pub(super) async fn login(
    store: &Store,
    http: &reqwest::Client,
    endpoint: &Url,
    timeout: Duration,
    show: impl FnOnce(&Url),
) -> anyhow::Result<LoginOutcome> {
    let server = match discovery::discover(http, endpoint).await? {
        Discovery::Open => return Ok(LoginOutcome::NotNeeded),
        Discovery::Protected(server) => server,
    };
    let metadata = &server.metadata;
    let listener = CallbackListener::bind().await?;
    let redirect_uri = listener.redirect_uri().to_string();
    let registration_endpoint = metadata.registration_endpoint.as_deref().with_context(|| {
        format!(
            "the authorization server {} offers no client registration (RFC 7591), which `flotilla auth login` needs",
            metadata.issuer
        )
    })?;
    let client_id = register(
        http,
        registration_endpoint,
        &redirect_uri,
        server.scope.as_deref(),
    )
    .await?;
    let request = oauth::authorization_request(
        &metadata.authorization_endpoint,
        &client_id,
        &redirect_uri,
        &server.resource,
        server.scope.as_deref(),
    )?;
    let expected = Expected {
        state: request.state.secret().clone(),
        issuer: metadata.issuer.clone(),
        issuer_required: metadata.authorization_response_iss_parameter_supported,
    };
    show(&request.url);
    tracing::debug!(%redirect_uri, "waiting for the browser");
    let code = match tokio::time::timeout(timeout, listener.receive(&expected)).await {
        Ok(Ok(code)) => code,
        Ok(Err(refused)) => {
            anyhow::bail!("login to {endpoint} failed: {refused}; run `flotilla auth login` again")
        }
        Err(_) => anyhow::bail!(
            "no answer from the browser within {} s; run `flotilla auth login` again (--timeout SECS \
             waits longer), and open the URL in a browser on this machine: it returns to {redirect_uri}",
            timeout.as_secs()
        ),
    };
    let exchange = CodeExchange {
        token_endpoint: &metadata.token_endpoint,
        client_id: &client_id,
        redirect_uri: &redirect_uri,
        resource: &server.resource,
    };
    let tokens = oauth::exchange_code(exchange, code, request.verifier)
        .await
        .map_err(|error| match error {
            GrantError::Refused(why) => anyhow::anyhow!(
                "the authorization server {} did not accept the login ({why}); run `flotilla auth login` again",
                metadata.issuer
            ),
            GrantError::Failed(error) => error.context("the login's code exchange failed"),
        })?;
    let key = endpoint.as_str().to_string();
    let login = EndpointCredentials {
        client_id,
        token_endpoint: metadata.token_endpoint.clone(),
        access_token: tokens.access,
        refresh_token: tokens.refresh,
        expires_at: tokens.expires_at,
        issuer: metadata.issuer.clone(),
        resource: Some(server.resource.clone()),
    };
    store
        .update_async(move |credentials| {
            credentials.last_endpoint = Some(key.clone());
            credentials.endpoints.insert(key, login);
        })
        .await
        .context("logged in, but the credentials could not be stored")?;
    Ok(LoginOutcome::LoggedIn)
}

/// RFC 7591 registration of a public client for this login's redirect URI.
async fn register(
    http: &reqwest::Client,
    registration_endpoint: &str,
    redirect_uri: &str,
    scope: Option<&str>,
) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Registered {
        client_id: String,
    }
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
        error_description: Option<String>,
    }
    let url = parse_endpoint(registration_endpoint).with_context(|| {
        format!("the registration endpoint {registration_endpoint:?} is not usable")
    })?;
    let mut body = serde_json::json!({
        "client_name": "flotilla CLI",
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    if let Some(scope) = scope {
        body["scope"] = scope.into();
    }
    let response = http.post(url).json(&body).send().await.with_context(|| {
        format!("cannot reach the registration endpoint {registration_endpoint}")
    })?;
    let status = response.status();
    if !status.is_success() {
        let why = match response.json::<Refusal>().await {
            Ok(Refusal {
                error,
                error_description: Some(description),
            }) => format!("{error} ({description})"),
            Ok(Refusal { error, .. }) => error,
            Err(_) => format!("HTTP {status}"),
        };
        anyhow::bail!("the authorization server refused to register flotilla as a client: {why}");
    }
    let registered: Registered = response.json().await.with_context(|| {
        format!("the registration endpoint {registration_endpoint} answered without a client_id")
    })?;
    Ok(registered.client_id)
}

/// A browser is started unless `--no-browser`, and on Linux only with a
/// display (X11 or Wayland); macOS always has one.
fn should_open_browser(no_browser: bool) -> bool {
    if no_browser {
        return false;
    }
    if cfg!(target_os = "macos") {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Starts `open`/`xdg-open` on the URL; failure is fine, the URL is printed.
fn open_browser(url: &Url) {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = tokio::process::Command::new(program)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(error) = started {
        tracing::debug!(program, %error, "could not start a browser");
    }
}
