//! The browser side of a login: `GET /oauth/authorize` checks the client's
//! request and sends the browser to the provider (after a consent page when
//! the client's redirect URI is not on loopback), `POST /oauth/authorize`
//! takes that consent, and `GET /oauth/callback` turns the provider's answer
//! into a sealed code for the client. Errors before the client's redirect URI
//! is trusted are plain pages; after, they go back to the client (RFC 6749
//! §4.1.2.1, with RFC 9207 `iss`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use openidconnect::{Nonce, PkceCodeChallenge};
use sha2::{Digest, Sha256};

use super::AuthServer;
use super::clients::{is_loopback, redirect_matches};
use super::errors::{bad_request_page, found, redirect_error, with_query};
use super::payloads::{ClientRequest, Code, ConsentForm, LoginState, client_digest};
use super::provider::ProviderError;
use super::token::{CODE_LIFETIME, is_pkce_string, parse_form};
use crate::auth::html::escape as html_escape;
use crate::auth::inbound::seal::{Purpose, SealError};

/// A login (provider round trip or consent page) must finish within this.
const LOGIN_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
const CONSENT_COOKIE: &str = "flotilla_consent_";
const MAX_STATE_LEN: usize = 2048;

/// Why an authorization request was refused.
enum Refusal {
    /// Before the redirect URI is trusted: shown in the browser.
    Page(String),
    /// Sent back to the client's redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl Refusal {
    fn respond(self, issuer: &str) -> Response {
        match self {
            Refusal::Page(message) => bad_request_page(&message),
            Refusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => redirect_error(&redirect_uri, issuer, state.as_deref(), error, &description),
        }
    }
}

/// Query parameters, refusing repeated ones.
fn parse_query(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    parse_form(query.unwrap_or("").as_bytes())
}

/// `GET /oauth/authorize`.
pub async fn authorize(
    State(server): State<Arc<AuthServer>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_query(query.as_deref()) {
        Ok(params) => params,
        Err(message) => return bad_request_page(&message),
    };
    let request = match check_request(&server, &params).await {
        Ok(request) => request,
        Err(refusal) => return refusal.respond(&server.urls.issuer),
    };
    if needs_consent(&request.redirect_uri) {
        consent_page(&server, request)
    } else {
        to_provider(&server, request).await
    }
}

/// Checks client, redirect URI, PKCE and resource of an authorization request.
async fn check_request(
    server: &AuthServer,
    params: &HashMap<String, String>,
) -> Result<ClientRequest, Refusal> {
    let get = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let client_id = get("client_id").ok_or_else(|| {
        Refusal::Page(
            "the authorization request has no client_id (a problem in the MCP client)".into(),
        )
    })?;
    let client = server
        .clients
        .resolve(&server.keys, client_id)
        .await
        .map_err(Refusal::Page)?;
    let redirect_uri = match get("redirect_uri") {
        Some(requested) => {
            if !client
                .redirect_uris
                .iter()
                .any(|registered| redirect_matches(registered, requested))
            {
                return Err(Refusal::Page(format!(
                    "redirect_uri {requested} is not registered for this client (registered: {})",
                    client.redirect_uris.join(", ")
                )));
            }
            requested.to_string()
        }
        None => match client.redirect_uris.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(Refusal::Page(
                    "the authorization request has no redirect_uri and the client registered several".into(),
                ));
            }
        },
    };
    // The redirect URI is registered. Errors go back to it only when it is
    // a loopback one (the user's own machine); any other one may belong to
    // whoever registered the client, and before the user has consented the
    // gateway never sends the browser there (no open redirect): the error
    // is shown on the gateway's own page.
    let state = get("state").map(str::to_string);
    let trusted = !needs_consent(&redirect_uri);
    let refuse = |error: &'static str, description: String| {
        if trusted {
            Refusal::Redirect {
                redirect_uri: redirect_uri.clone(),
                state: state.clone().filter(|s| s.len() <= MAX_STATE_LEN),
                error,
                description,
            }
        } else {
            Refusal::Page(format!(
                "the authorization request was refused ({error}): {description}"
            ))
        }
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE_LEN) {
        return Err(refuse(
            "invalid_request",
            format!("state is longer than {MAX_STATE_LEN} characters"),
        ));
    }
    match get("response_type") {
        Some("code") => {}
        Some(other) => {
            return Err(refuse(
                "unsupported_response_type",
                format!("response_type {other:?} is not supported: use code"),
            ));
        }
        None => {
            return Err(refuse(
                "invalid_request",
                "response_type=code is missing".into(),
            ));
        }
    }
    let code_challenge = get("code_challenge").ok_or_else(|| {
        refuse(
            "invalid_request",
            "code_challenge is required: this server requires PKCE with S256".into(),
        )
    })?;
    if get("code_challenge_method") != Some("S256") {
        return Err(refuse(
            "invalid_request",
            "code_challenge_method must be S256 (plain PKCE is not accepted)".into(),
        ));
    }
    if !is_pkce_string(code_challenge) {
        return Err(refuse(
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)"
                .into(),
        ));
    }
    if let Some(resource) = get("resource")
        && !server.urls.is_own_resource(resource)
    {
        return Err(refuse(
            "invalid_target",
            format!("resource must be {}", server.urls.resource),
        ));
    }
    Ok(ClientRequest {
        client_id: client_id.to_string(),
        client_name: client.name.clone(),
        redirect_uri,
        state,
        code_challenge: code_challenge.to_string(),
    })
}

/// Loopback redirects land on the user's own machine; anything else may
/// belong to whoever registered the client, so the user confirms first.
fn needs_consent(redirect_uri: &str) -> bool {
    !url::Url::parse(redirect_uri).is_ok_and(|url| url.scheme() == "http" && is_loopback(&url))
}

/// Redirects the browser to the provider, the request sealed into `state`.
async fn to_provider(server: &AuthServer, request: ClientRequest) -> Response {
    let issuer = &server.urls.issuer;
    let Some(provider) = server.provider.as_ref() else {
        return bad_request_page("no identity provider is configured (auth.oidc)");
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = Nonce::new_random();
    let redirect_uri = request.redirect_uri.clone();
    let client_state = request.state.clone();
    let login = LoginState {
        request,
        pkce_verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
    };
    let state = server.keys.seal(
        Purpose::LoginState,
        &login,
        Some(Utc::now() + LOGIN_LIFETIME),
    );
    match provider
        .authorize_url(&server.login_scopes(), challenge, nonce, state)
        .await
    {
        Ok(url) => found(url.as_str()),
        Err(error) => {
            tracing::warn!(%error, "login could not start");
            redirect_error(
                &redirect_uri,
                issuer,
                client_state.as_deref(),
                "temporarily_unavailable",
                &error.to_string(),
            )
        }
    }
}

fn consent_page(server: &AuthServer, request: ClientRequest) -> Response {
    let browser_secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let cookie_name = format!(
        "{CONSENT_COOKIE}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 6]>())
    );
    let name = request
        .client_name
        .clone()
        .unwrap_or_else(|| "(unnamed)".into());
    let target = url::Url::parse(&request.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| request.redirect_uri.clone());
    let redirect_uri = request.redirect_uri.clone();
    let form = ConsentForm {
        request,
        browser: digest(&browser_secret),
    };
    let sealed = server
        .keys
        .seal(Purpose::Consent, &form, Some(Utc::now() + LOGIN_LIFETIME));
    let page = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Flotilla: allow access?</title>
<style>body{{font-family:system-ui,sans-serif;max-width:38em;margin:4em auto;padding:0 1em}}button{{font-size:1em;padding:.5em 1.2em;margin-right:1em}}code{{word-break:break-all}}</style></head>
<body><h1>Allow access to Flotilla?</h1>
<p>An application calling itself <strong>{name}</strong> wants to use the Flotilla MCP gateway as you.</p>
<p>After you sign in, you will be sent back to <strong>{target}</strong> (<code>{redirect_uri}</code>).</p>
<p>Continue only if you just started this from an application you trust.</p>
<form method="post" action="{action}">
<input type="hidden" name="consent" value="{sealed}">
<button type="submit" name="decision" value="allow">Continue</button>
<button type="submit" name="decision" value="deny">Cancel</button>
</form></body></html>
"#,
        name = html_escape(&name),
        target = html_escape(&target),
        redirect_uri = html_escape(&redirect_uri),
        action = html_escape(&server.urls.authorization_endpoint),
        sealed = html_escape(&sealed),
    );
    let secure = if server.urls.https { "; Secure" } else { "" };
    let cookie = format!(
        "{cookie_name}={browser_secret}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        LOGIN_LIFETIME.num_seconds()
    );
    let mut response = Html(page).into_response();
    let headers = response.headers_mut();
    if let Ok(cookie) = HeaderValue::try_from(cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    super::errors::no_store(&mut response);
    response
}

/// `POST /oauth/authorize`: the consent page's answer. Accepted only from
/// the browser that was shown the page (its cookie), so another site cannot
/// submit a consent it fetched itself.
pub async fn consent(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match parse_form(&body) {
        Ok(form) => form,
        Err(message) => return bad_request_page(&message),
    };
    let Some(sealed) = form.get("consent") else {
        return bad_request_page(
            "the consent form is incomplete; start the login again from your MCP client",
        );
    };
    let consent: ConsentForm = match unseal_or_page(
        &server,
        Purpose::Consent,
        sealed,
        "the consent page expired; start the login again from your MCP client",
        "the consent form is not valid; start the login again from your MCP client",
    ) {
        Ok(consent) => consent,
        Err(message) => return bad_request_page(message),
    };
    if !consent_cookies(&headers).any(|value| digest(value) == consent.browser) {
        return bad_request_page(
            "this consent was not given on the page the gateway showed this browser (are cookies blocked?); start the login again from your MCP client",
        );
    }
    let request = consent.request;
    if form.get("decision").map(String::as_str) != Some("allow") {
        tracing::info!(
            client.name = request.client_name.as_deref().unwrap_or("(unnamed)"),
            "the user declined a client's access"
        );
        return redirect_error(
            &request.redirect_uri,
            &server.urls.issuer,
            request.state.as_deref(),
            "access_denied",
            "the user declined the access",
        );
    }
    to_provider(&server, request).await
}

fn consent_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| name.starts_with(CONSENT_COOKIE))
        .map(|(_, value)| value)
}

/// `GET /oauth/callback`: the provider's answer.
pub async fn callback(
    State(server): State<Arc<AuthServer>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_query(query.as_deref()) {
        Ok(params) => params,
        Err(message) => return bad_request_page(&message),
    };
    let get = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let Some(state) = get("state") else {
        return bad_request_page(
            "the identity provider's answer has no state; start the login again from your MCP client",
        );
    };
    let login: LoginState = match unseal_or_page(
        &server,
        Purpose::LoginState,
        state,
        "the login took longer than 10 minutes; start it again from your MCP client",
        "the login state is not valid (was the login started at another gateway?); start it again from your MCP client",
    ) {
        Ok(login) => login,
        Err(message) => return bad_request_page(message),
    };
    let request = login.request;
    let issuer = server.urls.issuer.as_str();
    let back = |error: &str, description: String| {
        redirect_error(
            &request.redirect_uri,
            issuer,
            request.state.as_deref(),
            error,
            &description,
        )
    };
    let Some(provider) = server.provider.as_ref() else {
        return bad_request_page("no identity provider is configured (auth.oidc)");
    };
    if let Some(error) = get("error") {
        let description = get("error_description")
            .map(|d| {
                format!(
                    "the identity provider answered {error}: {}",
                    truncate(d, 300)
                )
            })
            .unwrap_or_else(|| format!("the identity provider answered {error}"));
        let forwarded = match error {
            "access_denied" => "access_denied",
            "temporarily_unavailable" => "temporarily_unavailable",
            _ => "server_error",
        };
        tracing::info!(error = %truncate(error, 100), client.name = request.client_name.as_deref().unwrap_or("(unnamed)"), "the identity provider refused a login");
        return back(forwarded, description);
    }
    if let Some(iss) = get("iss")
        && iss != provider.issuer()
    {
        return back(
            "server_error",
            format!(
                "the login answer came from issuer {}, not the configured provider",
                truncate(iss, 200)
            ),
        );
    }
    let Some(code) = get("code") else {
        return back(
            "server_error",
            "the identity provider returned neither a code nor an error".into(),
        );
    };
    let tokens = match provider
        .exchange_code(code.to_string(), login.pkce_verifier, login.nonce)
        .await
    {
        Ok(tokens) => tokens,
        Err(error) => {
            tracing::warn!(%error, "completing a login at the identity provider failed");
            let kind = match error {
                ProviderError::Unavailable { .. } => "temporarily_unavailable",
                _ => "server_error",
            };
            return back(kind, error.to_string());
        }
    };
    tracing::info!(
        user.subject = %tokens.user.sub,
        user.name = tokens.user.name.as_deref().unwrap_or(""),
        client.name = request.client_name.as_deref().unwrap_or("(unnamed)"),
        "login at the identity provider succeeded; code issued"
    );
    let sealed = Code {
        provider: tokens,
        client: client_digest(&request.client_id),
        client_name: request.client_name.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
    };
    let lifetime =
        chrono::Duration::from_std(CODE_LIFETIME).unwrap_or(chrono::Duration::seconds(60));
    let code = server
        .keys
        .seal(Purpose::Code, &sealed, Some(Utc::now() + lifetime));
    let mut params = vec![("code", code.as_str()), ("iss", issuer)];
    if let Some(state) = request.state.as_deref() {
        params.push(("state", state));
    }
    found(&with_query(&request.redirect_uri, &params))
}

fn digest(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// Unseals what travelled through the browser (consent form, login state);
/// a failure gives the message for the error page: `expired` or `invalid`.
fn unseal_or_page<'m, T: serde::de::DeserializeOwned>(
    server: &AuthServer,
    purpose: Purpose,
    sealed: &str,
    expired: &'m str,
    invalid: &'m str,
) -> Result<T, &'m str> {
    server.keys.unseal(purpose, sealed).map_err(|e| match e {
        SealError::Expired => expired,
        _ => invalid,
    })
}

fn truncate(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::super::payloads::RegisteredClient;
    use super::super::test_support;
    use super::*;
    use axum::http::StatusCode;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn client_id(server: &AuthServer, redirect_uris: &[&str]) -> String {
        server.keys.seal(
            Purpose::Client,
            &RegisteredClient {
                redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
                client_name: Some("Test <client>".into()),
                issued_at: 0,
            },
            None,
        )
    }

    fn authorize_url(base: &str, params: &[(&str, &str)]) -> String {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("{base}/oauth/authorize?{query}")
    }

    fn location_params(response: &reqwest::Response) -> HashMap<String, String> {
        let location = response.headers()[header::LOCATION].to_str().unwrap();
        url::Url::parse(location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    #[tokio::test]
    async fn requests_are_refused_in_the_browser_until_the_redirect_uri_is_trusted() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        let id = client_id(&server, &["http://127.0.0.1:5000/cb"]);

        for (params, expected) in [
            (vec![("response_type", "code")], "no client_id"),
            (vec![("client_id", "nope")], "unknown client_id"),
            (
                vec![
                    ("client_id", &id),
                    ("redirect_uri", "http://evil.example/cb"),
                ],
                "not registered",
            ),
        ] {
            let response = http
                .get(authorize_url(&served.base, &params))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let text = response.text().await.unwrap();
            assert!(text.contains(expected), "{text}");
        }
    }

    #[tokio::test]
    async fn errors_for_a_redirect_the_user_has_not_consented_to_stay_on_the_gateway() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        let id = client_id(&server, &["https://evil.example/cb"]);
        for extra in [
            vec![("response_type", "token")],
            vec![("response_type", "code")],
        ] {
            let mut params = vec![
                ("client_id", id.as_str()),
                ("redirect_uri", "https://evil.example/cb"),
                ("state", "st"),
            ];
            params.extend(extra);
            let response = http
                .get(authorize_url(&served.base, &params))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{params:?}");
            assert!(response.headers().get(header::LOCATION).is_none());
            let text = response.text().await.unwrap();
            assert!(!text.contains("evil.example/cb?"), "{text}");
            assert!(
                text.contains("unsupported_response_type") || text.contains("code_challenge"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn pkce_s256_and_the_resource_are_enforced_by_redirecting_errors() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        let id = client_id(&server, &["http://127.0.0.1:5000/cb"]);
        let base = [
            ("client_id", id.as_str()),
            ("redirect_uri", "http://127.0.0.1:6000/cb"),
            ("response_type", "code"),
            ("state", "st"),
        ];
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 5] = [
            (&[], "invalid_request", "code_challenge is required"),
            (
                &[
                    ("code_challenge", CHALLENGE),
                    ("code_challenge_method", "plain"),
                ],
                "invalid_request",
                "S256",
            ),
            (&[("code_challenge", CHALLENGE)], "invalid_request", "S256"),
            (
                &[
                    ("code_challenge", "short"),
                    ("code_challenge_method", "S256"),
                ],
                "invalid_request",
                "base64url",
            ),
            (
                &[
                    ("code_challenge", CHALLENGE),
                    ("code_challenge_method", "S256"),
                    ("resource", "https://other.example/mcp"),
                ],
                "invalid_target",
                "http://gw.test:8080/mcp",
            ),
        ];
        for (extra, error, hint) in cases {
            let mut params = base.to_vec();
            params.extend_from_slice(extra);
            let response = http
                .get(authorize_url(&served.base, &params))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FOUND);
            let got = location_params(&response);
            assert_eq!(got["error"], error, "{extra:?}");
            assert!(got["error_description"].contains(hint), "{got:?}");
            assert_eq!(got["state"], "st");
            assert_eq!(got["iss"], "http://gw.test:8080");
        }
    }

    #[tokio::test]
    async fn a_loopback_client_goes_to_the_provider_and_learns_when_it_is_down() {
        // The test provider's issuer is a closed port: the login fails with a
        // clear error sent back to the client instead of hanging or crashing.
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let id = client_id(&server, &["http://127.0.0.1:5000/cb"]);
        let response = test_support::http()
            .get(authorize_url(
                &served.base,
                &[
                    ("client_id", id.as_str()),
                    ("redirect_uri", "http://127.0.0.1:5000/cb"),
                    ("response_type", "code"),
                    ("code_challenge", CHALLENGE),
                    ("code_challenge_method", "S256"),
                    ("resource", "http://gw.test:8080/mcp"),
                ],
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let got = location_params(&response);
        assert_eq!(got["error"], "temporarily_unavailable");
        assert!(got["error_description"].contains("unreachable"), "{got:?}");
    }

    #[tokio::test]
    async fn other_redirects_need_consent_from_the_same_browser() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        let id = client_id(&server, &["https://app.example/cb"]);
        let response = http
            .get(authorize_url(
                &served.base,
                &[
                    ("client_id", id.as_str()),
                    ("response_type", "code"),
                    ("code_challenge", CHALLENGE),
                    ("code_challenge_method", "S256"),
                    ("state", "s1"),
                ],
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        let cookie = response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let cookie_pair = cookie.split(';').next().unwrap().to_string();
        let page = response.text().await.unwrap();
        assert!(
            page.contains("Test &lt;client&gt;") && page.contains("app.example"),
            "{page}"
        );
        let sealed = page
            .split("name=\"consent\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();

        // Without the page's cookie (another site posting the form): refused.
        let forged = http
            .post(format!("{}/oauth/authorize", served.base))
            .form(&[("consent", sealed.as_str()), ("decision", "allow")])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::BAD_REQUEST);

        // Declining goes back to the client.
        let declined = http
            .post(format!("{}/oauth/authorize", served.base))
            .header(header::COOKIE, &cookie_pair)
            .form(&[("consent", sealed.as_str()), ("decision", "deny")])
            .send()
            .await
            .unwrap();
        assert_eq!(declined.status(), StatusCode::FOUND);
        let got = location_params(&declined);
        assert_eq!(got["error"], "access_denied");
        assert_eq!(got["state"], "s1");

        // Allowing proceeds to the provider (down here, so: unavailable).
        let allowed = http
            .post(format!("{}/oauth/authorize", served.base))
            .header(header::COOKIE, format!("other=1; {cookie_pair}"))
            .form(&[("consent", sealed.as_str()), ("decision", "allow")])
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), StatusCode::FOUND);
        assert_eq!(
            location_params(&allowed)["error"],
            "temporarily_unavailable"
        );
    }

    #[tokio::test]
    async fn callbacks_without_a_valid_state_are_refused_in_the_browser() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        for query in ["code=x", "code=x&state=garbage", "state=a&state=b"] {
            let response = http
                .get(format!("{}/oauth/callback?{query}", served.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        }
        // A valid state with a provider error goes back to the client.
        let login = LoginState {
            request: ClientRequest {
                client_id: "c".into(),
                client_name: None,
                redirect_uri: "http://127.0.0.1:5000/cb".into(),
                state: Some("st".into()),
                code_challenge: CHALLENGE.into(),
            },
            pkce_verifier: "v".into(),
            nonce: "n".into(),
        };
        let state = server.keys.seal(Purpose::LoginState, &login, None);
        let response = http
            .get(format!(
                "{}/oauth/callback?error=access_denied&error_description=no&state={state}",
                served.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let got = location_params(&response);
        assert_eq!(got["error"], "access_denied");
        assert_eq!(got["state"], "st");
    }

    #[test]
    fn only_loopback_http_skips_consent() {
        assert!(!needs_consent("http://127.0.0.1:9/cb"));
        assert!(!needs_consent("http://localhost/cb"));
        assert!(needs_consent("https://app.example/cb"));
        assert!(needs_consent("com.example.app:/cb"));
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
