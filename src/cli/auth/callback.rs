//! The loopback redirect target (RFC 8252 §7.3): a one-route axum server
//! on 127.0.0.1, port chosen by the OS, that waits for the browser to come
//! back to `/callback`, checks `state` (and `iss`, RFC 9207), answers the tab
//! with a short page and hands the authorization code to the login. rmcp
//! checks `state` and `iss` again at the exchange; these checks are what
//! lets the tab say what went wrong.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse as _, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::html::escape as escape_html;

pub(super) const CALLBACK_PATH: &str = "/callback";

/// How long the tab's page may take to finish once the login has its answer.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the redirect must carry to be this login's answer.
#[derive(Clone, Debug)]
pub(super) struct Expected {
    pub state: String,
    pub issuer: String,
    /// The server promised `iss` on the redirect (RFC 9207), so it must be there.
    pub issuer_required: bool,
}

/// A redirect that is this login's successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub code: String,
    /// RFC 9207 `iss`, when the redirect carries it.
    pub issuer: Option<String>,
}

/// Why a redirect is not a usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum CallbackError {
    #[error("the authorization server refused the login: {error}{}", in_parens(.description))]
    Denied {
        error: String,
        description: Option<String>,
    },
    #[error(
        "the redirect's state does not match this login (a tab left from an earlier login, or a forged redirect)"
    )]
    StateMismatch,
    #[error(
        "the redirect comes from another authorization server than the one this login started at"
    )]
    IssuerMismatch,
    #[error("the redirect carries no authorization code")]
    MissingCode,
    #[error("the loopback listener for the redirect stopped before the browser came back")]
    ListenerStopped,
}

fn in_parens(text: &Option<String>) -> String {
    text.as_deref()
        .map(|text| format!(" ({text})"))
        .unwrap_or_default()
}

/// Judges the query of a request to `/callback`: the code (and `iss`)
/// when the redirect is this login's successful answer.
pub(super) fn callback_outcome(query: &str, expected: &Expected) -> Result<Answer, CallbackError> {
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let state = params.get("state");
    if state.is_some_and(|state| *state != expected.state) {
        return Err(CallbackError::StateMismatch);
    }
    // An error answer without state still ends the login: it is what the
    // user sees in the tab, and a forged one can do no more than that.
    if let Some(error) = params.get("error") {
        return Err(CallbackError::Denied {
            error: error.clone(),
            description: params.get("error_description").cloned(),
        });
    }
    if state.is_none() {
        return Err(CallbackError::StateMismatch);
    }
    // RFC 9207 §2.4: simple string comparison, as rmcp's check at the exchange.
    match params.get("iss") {
        Some(iss) if *iss != expected.issuer => return Err(CallbackError::IssuerMismatch),
        None if expected.issuer_required => return Err(CallbackError::IssuerMismatch),
        _ => {}
    }
    let code = params
        .get("code")
        .filter(|code| !code.is_empty())
        .cloned()
        .ok_or(CallbackError::MissingCode)?;
    Ok(Answer {
        code,
        issuer: params.get("iss").cloned(),
    })
}

/// The bound listener; the redirect URI is known before the browser opens.
pub(super) struct CallbackListener {
    listener: TcpListener,
    redirect_uri: String,
}

/// What the `/callback` route needs: the login's expectations and where
/// to report the outcome.
struct Tab {
    expected: Expected,
    outcomes: mpsc::Sender<Result<Answer, CallbackError>>,
}

impl CallbackListener {
    pub async fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on 127.0.0.1 for the login's redirect")?;
        let port = listener
            .local_addr()
            .context("cannot read the redirect listener's port")?
            .port();
        Ok(Self {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
        })
    }

    /// `http://127.0.0.1:<port>/callback`.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Serves until a request reaches `/callback`, answers it, and returns
    /// its outcome. Other paths get 404 (favicons), other methods 405;
    /// connections that send nothing (browser preconnects) do not hold the
    /// others up, nor the end of the login.
    pub async fn receive(self, expected: &Expected) -> Result<Answer, CallbackError> {
        let (outcomes, mut outcome) = mpsc::channel(1);
        let tab = Arc::new(Tab {
            expected: expected.clone(),
            outcomes,
        });
        let router = Router::new()
            .route(CALLBACK_PATH, get(answer_tab))
            .with_state(tab);
        let stop = CancellationToken::new();
        let server = axum::serve(self.listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future();
        tokio::pin!(server);
        let answer = tokio::select! {
            Some(answer) = outcome.recv() => answer,
            served = &mut server => {
                // Accepting only fails for the whole listener: nothing to wait for.
                tracing::debug!(?served, "the redirect listener stopped");
                return Err(CallbackError::ListenerStopped);
            }
        };
        // Let the tab's page finish; a silent preconnect must not hold us.
        stop.cancel();
        let _ = tokio::time::timeout(FINISH_TIMEOUT, server).await;
        answer
    }
}

/// `GET /callback`: judges the redirect, tells the login, answers the tab.
async fn answer_tab(State(tab): State<Arc<Tab>>, RawQuery(query): RawQuery) -> Response {
    let outcome = callback_outcome(query.as_deref().unwrap_or(""), &tab.expected);
    let page = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Logged in, you can close this tab",
            "flotilla has your login; the terminal takes it from here.",
        ),
        Err(error) => page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            &format!("{error}. Run `flotilla auth login` again."),
        ),
    };
    // Only the first redirect counts; a second tab finds the login over.
    let _ = tab.outcomes.try_send(outcome);
    page
}

fn page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>flotilla: {title}</title></head>\n\
         <body style=\"font-family: sans-serif; margin: 3em\"><h1>{title}</h1><p>{}</p></body></html>\n",
        escape_html(detail),
    );
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            state: "s-123".into(),
            issuer: "http://127.0.0.1:8080".into(),
            issuer_required: false,
        }
    }

    fn answer(code: &str, issuer: Option<&str>) -> Result<Answer, CallbackError> {
        Ok(Answer {
            code: code.into(),
            issuer: issuer.map(Into::into),
        })
    }

    #[test]
    fn the_right_state_yields_the_code() {
        assert_eq!(
            callback_outcome("code=abc%2F1&state=s-123", &expected()),
            answer("abc/1", None)
        );
        assert_eq!(
            callback_outcome(
                "state=s-123&code=c&iss=http%3A%2F%2F127.0.0.1%3A8080",
                &expected()
            ),
            answer("c", Some("http://127.0.0.1:8080"))
        );
    }

    #[test]
    fn a_wrong_or_missing_state_is_refused() {
        assert_eq!(
            callback_outcome("code=abc&state=other", &expected()),
            Err(CallbackError::StateMismatch)
        );
        assert_eq!(
            callback_outcome("code=abc", &expected()),
            Err(CallbackError::StateMismatch)
        );
        assert_eq!(
            callback_outcome("error=access_denied&state=other", &expected()),
            Err(CallbackError::StateMismatch)
        );
    }

    #[test]
    fn an_error_answer_is_surfaced_with_its_description() {
        let outcome = callback_outcome(
            "error=access_denied&error_description=User+said+no&state=s-123",
            &expected(),
        );
        assert_eq!(
            outcome,
            Err(CallbackError::Denied {
                error: "access_denied".into(),
                description: Some("User said no".into()),
            })
        );
        let message = outcome.unwrap_err().to_string();
        assert_eq!(
            message,
            "the authorization server refused the login: access_denied (User said no)"
        );
        assert!(matches!(
            callback_outcome("error=server_error", &expected()),
            Err(CallbackError::Denied { .. })
        ));
    }

    #[test]
    fn a_missing_code_or_foreign_issuer_is_refused() {
        assert_eq!(
            callback_outcome("state=s-123", &expected()),
            Err(CallbackError::MissingCode)
        );
        assert_eq!(
            callback_outcome("state=s-123&code=c&iss=https%3A%2F%2Fevil", &expected()),
            Err(CallbackError::IssuerMismatch)
        );
        // Not even with a trailing slash (RFC 9207 §2.4; rmcp compares so too).
        assert_eq!(
            callback_outcome(
                "state=s-123&code=c&iss=http%3A%2F%2F127.0.0.1%3A8080%2F",
                &expected()
            ),
            Err(CallbackError::IssuerMismatch)
        );
        let strict = Expected {
            issuer_required: true,
            ..expected()
        };
        assert_eq!(
            callback_outcome("state=s-123&code=c", &strict),
            Err(CallbackError::IssuerMismatch)
        );
    }

    #[test]
    fn error_pages_escape_html() {
        assert_eq!(escape_html("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }

    async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
        let response = client.get(url).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn the_listener_answers_the_tab_and_returns_the_code() {
        let listener = CallbackListener::bind().await.unwrap();
        let redirect_uri = listener.redirect_uri().to_string();
        assert!(
            redirect_uri.starts_with("http://127.0.0.1:"),
            "{redirect_uri}"
        );
        assert!(redirect_uri.ends_with("/callback"), "{redirect_uri}");
        let waiting = tokio::spawn(async move { listener.receive(&expected()).await });

        // A preconnect that never speaks must not hold up the redirect.
        let authority = redirect_uri
            .trim_start_matches("http://")
            .trim_end_matches(CALLBACK_PATH);
        let _silent = tokio::net::TcpStream::connect(authority).await.unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let origin = redirect_uri.trim_end_matches(CALLBACK_PATH);
        assert_eq!(get(&client, format!("{origin}/favicon.ico")).await.0, 404);
        let posted = client.post(&redirect_uri).send().await.unwrap();
        assert_eq!(posted.status().as_u16(), 405);

        let (status, page) =
            get(&client, format!("{redirect_uri}?code=the-code&state=s-123")).await;
        assert_eq!(status, 200);
        assert!(page.contains("Logged in, you can close this tab"), "{page}");
        assert_eq!(waiting.await.unwrap(), answer("the-code", None));
    }

    #[tokio::test]
    async fn the_listener_shows_a_refusal_in_the_tab() {
        let listener = CallbackListener::bind().await.unwrap();
        let redirect_uri = listener.redirect_uri().to_string();
        let waiting = tokio::spawn(async move { listener.receive(&expected()).await });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let (status, page) = get(
            &client,
            format!("{redirect_uri}?error=access_denied&error_description=%3Cno%3E&state=s-123"),
        )
        .await;
        assert_eq!(status, 400);
        assert!(page.contains("access_denied (&lt;no&gt;)"), "{page}");
        assert!(page.contains("flotilla auth login"), "{page}");
        assert!(matches!(
            waiting.await.unwrap(),
            Err(CallbackError::Denied { .. })
        ));
    }
}
