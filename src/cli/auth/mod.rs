//! `flotilla auth`: log in to a gateway from a terminal, show what the login
//! reaches, log out. The commands, their exit codes and the endpoint choice
//! live here; each step of the flow has its own file.
//!
//! The OAuth client is rmcp's (its `auth` feature's `AuthorizationManager`):
//! discovery from the 401 challenge through protected resource metadata
//! (RFC 9728) to authorization server metadata (RFC 8414 / OpenID Connect),
//! dynamic client registration (RFC 7591), the authorization URL (PKCE S256,
//! state, RFC 8707 resource), the code exchange with the RFC 9207 issuer
//! check, and refresh. What rmcp 3.9 does not do stays here: the loopback
//! listener, when to refresh, the `status` report, and revocation at logout.
//!
//! - [`oauth`]: rmcp's manager set up for the CLI, the checks flotilla adds
//!   (a 401 decides whether a login is needed; S256 must be advertised),
//!   and rmcp's errors as readable messages; revocation (RFC 7009).
//! - [`credentials`]: the 0600 `credentials.json` store, and one endpoint's
//!   login as rmcp's `CredentialStore`.
//! - [`callback`]: the loopback redirect listener (RFC 8252).
//! - [`login`], [`status`], [`logout`]: the three commands.

mod callback;
mod credentials;
mod login;
mod logout;
mod oauth;
mod status;

#[cfg(test)]
mod flow_tests;

use std::io::Write as _;

use anyhow::Context as _;
use clap::Subcommand;
use url::Url;

use credentials::Store;

/// Success; for `status`: logged in (or no login needed) and every server Connected.
pub const EXIT_OK: i32 = 0;
/// An error: network, gateway or provider error, bad response.
pub const EXIT_ERROR: i32 = 1;
/// A usage error (clap's own exit code for bad arguments).
pub const EXIT_USAGE: i32 = 2;
/// Not logged in, or the login expired and could not be refreshed.
pub const EXIT_NOT_LOGGED_IN: i32 = 3;
/// `status`: logged in, but at least one server is not Connected.
pub const EXIT_NOT_ALL_CONNECTED: i32 = 4;

/// The exit codes, as the long help shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (status: logged in, or no login needed, and every server Connected)
  1  error: network, gateway or provider error, bad response
  2  usage error
  3  not logged in, or the login expired and could not be refreshed
     (run `flotilla auth login`)
  4  status: logged in, but at least one server is not Connected

Environment:
  FLOTILLA_ENDPOINT    default gateway MCP URL (else the last login's, else
                       http://127.0.0.1:8080/mcp)
  FLOTILLA_CONFIG_DIR  where credentials.json lives (default: the user config
                       directory's flotilla/, e.g. ~/.config/flotilla)";

/// The endpoint when neither a flag, the environment nor a past login names one.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080/mcp";

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Log in to a gateway through its OAuth authorization server, in a browser.
    ///
    /// Discovers the authorization server from the gateway's 401 answer,
    /// registers a client, prints the URL to open (and opens a browser when
    /// there is a display), waits for the redirect to a listener on
    /// 127.0.0.1, then stores the tokens in credentials.json.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Login {
        /// The gateway's MCP URL.
        #[arg(long, env = "FLOTILLA_ENDPOINT")]
        endpoint: Option<String>,
        /// Only print the URL to open; never start a browser.
        #[arg(long)]
        no_browser: bool,
        /// Seconds to wait for the browser to come back.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Show who you are logged in as and, per MCP server, whether the
    /// gateway reaches it for you (refreshing an expiring login first).
    #[command(after_long_help = EXIT_CODES_HELP)]
    Status {
        /// The gateway's MCP URL.
        #[arg(long, env = "FLOTILLA_ENDPOINT")]
        endpoint: Option<String>,
        /// Print the gateway's report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget the stored login for a gateway.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Logout {
        /// The gateway's MCP URL.
        #[arg(long, env = "FLOTILLA_ENDPOINT")]
        endpoint: Option<String>,
    },
}

/// The "run `flotilla auth login`" condition: exits with
/// [`EXIT_NOT_LOGGED_IN`] and the message, whatever context wraps it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotLoggedIn(pub String);

impl NotLoggedIn {
    fn for_endpoint(endpoint: &str, why: impl std::fmt::Display) -> Self {
        Self(format!(
            "{why}; run `flotilla auth login --endpoint {endpoint}`"
        ))
    }
}

/// Runs one `flotilla auth` command. Exits the process itself for the
/// non-zero codes other than 1; errors are returned (and exit 1).
pub async fn run(command: AuthCommand) -> anyhow::Result<()> {
    let outcome = async {
        let store = Store::from_env()?;
        match command {
            AuthCommand::Login {
                endpoint,
                no_browser,
                timeout,
            } => {
                let endpoint = resolve_endpoint(endpoint, &store)?;
                login::run(&store, &endpoint, no_browser, timeout).await
            }
            AuthCommand::Status { endpoint, json } => {
                let endpoint = resolve_endpoint(endpoint, &store)?;
                status::run(&store, &endpoint, json).await
            }
            AuthCommand::Logout { endpoint } => {
                let endpoint = resolve_endpoint(endpoint, &store)?;
                logout::run(&store, &endpoint).await
            }
        }
    }
    .await;
    let code = match outcome {
        Ok(code) => code,
        Err(error) if error.downcast_ref::<NotLoggedIn>().is_some() => {
            eprintln!("{error:#}");
            EXIT_NOT_LOGGED_IN
        }
        Err(error) => return Err(error),
    };
    if code != EXIT_OK {
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// The endpoint to use: the flag (or FLOTILLA_ENDPOINT, through clap), else
/// the last login's, else [`DEFAULT_ENDPOINT`].
fn resolve_endpoint(flag: Option<String>, store: &Store) -> anyhow::Result<Url> {
    let chosen = match flag {
        Some(endpoint) => endpoint,
        None => store
            .load()
            .ok()
            .and_then(|stored| stored.last_endpoint)
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
    };
    parse_endpoint(&chosen)
}

/// Parses an endpoint URL; only http and https make sense.
pub(crate) fn parse_endpoint(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text.trim()).with_context(|| {
        format!("{text:?} is not a URL; pass the gateway's MCP URL, e.g. {DEFAULT_ENDPOINT}")
    })?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "{text:?} is not an http(s) URL; pass the gateway's MCP URL, e.g. {DEFAULT_ENDPOINT}"
    );
    Ok(url)
}

/// `<origin>/auth/status` for an endpoint.
pub(crate) fn status_url(endpoint: &Url) -> Url {
    let mut url = endpoint.clone();
    url.set_path("/auth/status");
    url.set_query(None);
    url.set_fragment(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_url_is_at_the_endpoints_origin() {
        let endpoint = parse_endpoint("https://gw.example:8443/team/mcp?x=1").unwrap();
        assert_eq!(
            status_url(&endpoint).as_str(),
            "https://gw.example:8443/auth/status"
        );
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(parse_endpoint("http://127.0.0.1:8080/mcp").is_ok());
        assert!(parse_endpoint("127.0.0.1:8080/mcp").is_err());
        assert!(parse_endpoint("ftp://h/mcp").is_err());
    }

    #[test]
    fn exit_code_help_names_every_code() {
        for code in [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_USAGE,
            EXIT_NOT_LOGGED_IN,
            EXIT_NOT_ALL_CONNECTED,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {code}  ")), "{code}");
        }
    }
}
