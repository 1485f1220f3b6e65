//! `flotilla auth login`: discover the authorization server, register a
//! public client for this login's loopback redirect (RFC 7591), send the
//! user to the authorization URL (printed always, opened in a browser when
//! there is one), take the code from the redirect, exchange it, store the
//! tokens, and greet the user by the name the gateway knows them by. The
//! OAuth steps are rmcp's (see [`super::oauth`]); the listener, the browser
//! and the greeting are flotilla's.

use std::time::Duration;

use url::Url;

use super::EXIT_OK;
use super::callback::{CallbackListener, Expected};
use super::credentials::{EndpointStore, Store};
use super::oauth::{self, Discovery};
use super::status::{StatusAnswer, fetch_report};

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
    let mut server = match oauth::discover(http, endpoint).await? {
        Discovery::Open => return Ok(LoginOutcome::NotNeeded),
        Discovery::Protected(server) => server,
    };
    let listener = CallbackListener::bind().await?;
    let redirect_uri = listener.redirect_uri().to_string();
    let request = oauth::authorization_request(&mut server, &redirect_uri).await?;
    let expected = Expected {
        state: request.state.clone(),
        issuer: server.issuer.clone(),
        issuer_required: server.issuer_on_redirect(),
    };
    show(&request.url);
    tracing::debug!(%redirect_uri, "waiting for the browser");
    let answer = match tokio::time::timeout(timeout, listener.receive(&expected)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(refused)) => {
            anyhow::bail!("login to {endpoint} failed: {refused}; run `flotilla auth login` again")
        }
        Err(_) => anyhow::bail!(
            "no answer from the browser within {} s; run `flotilla auth login` again (--timeout SECS \
             waits longer), and open the URL in a browser on this machine: it returns to {redirect_uri}",
            timeout.as_secs()
        ),
    };
    // rmcp saves the tokens through this store when the exchange succeeds.
    server
        .manager
        .set_credential_store(EndpointStore::for_login(
            store,
            endpoint.as_str(),
            &server.metadata.token_endpoint,
            request.resource,
        ));
    oauth::exchange_code(
        &server,
        &answer.code,
        &request.state,
        answer.issuer.as_deref(),
    )
    .await?;
    Ok(LoginOutcome::LoggedIn)
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
