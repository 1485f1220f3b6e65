//! The login, status and logout flows against a fake gateway that is also
//! its own authorization server (axum on 127.0.0.1:0): discovery from the
//! 401, registration, the browser round trip (a reqwest client following the
//! redirect to the loopback listener), PKCE and resource checks at the token
//! endpoint, refresh with rotation, and the not-logged-in answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::Utc;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::net::TcpListener;
use url::Url;

use super::NotLoggedIn;
use super::credentials::Store;
use super::login::{LoginOutcome, login};
use super::status::report;

#[derive(Default)]
struct Fake {
    base: String,
    auth_enabled: bool,
    /// `/authorize` answers with this error instead of a code.
    deny_with: Option<String>,
    refuse_refresh: bool,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    access: Option<String>,
    refresh: Option<String>,
    issued: u32,
    refreshes: u32,
    /// `resource` of every token request.
    token_resources: Vec<String>,
    /// The resource metadata's `resource`, when not the endpoint.
    resource: Option<String>,
    /// Replaces `code_challenge_methods_supported` (null: left out).
    pkce_methods: Option<Value>,
    /// The issuer is `base` + this (Keycloak-style `/realms/ops`), its
    /// metadata at the RFC 8414 path-inserted URL only.
    issuer_path: &'static str,
}

impl Fake {
    fn issuer(&self) -> String {
        format!("{}{}", self.base, self.issuer_path)
    }
}

type Shared = Arc<Mutex<Fake>>;

struct Gateway {
    endpoint: Url,
    fake: Shared,
    _server: tokio::task::JoinHandle<()>,
}

async fn gateway(auth_enabled: bool) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(Mutex::new(Fake {
        base: base.clone(),
        auth_enabled,
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/mcp", any(mcp))
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(server_metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server/realms/ops",
            get(path_server_metadata),
        )
        .route("/register", post(register))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/auth/status", get(status))
        .with_state(fake.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Gateway {
        endpoint: Url::parse(&format!("{base}/mcp")).unwrap(),
        fake,
        _server: server,
    }
}

async fn mcp(State(fake): State<Shared>) -> Response {
    let fake = fake.lock().unwrap();
    if !fake.auth_enabled {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let challenge = format!(
        r#"Bearer realm="flotilla", resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
        fake.base
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

async fn resource_metadata(State(fake): State<Shared>) -> Response {
    let fake = fake.lock().unwrap();
    if !fake.auth_enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({
        "resource": fake.resource.clone().unwrap_or(format!("{}/mcp", fake.base)),
        "authorization_servers": [fake.issuer()],
        "scopes_supported": ["openid", "profile"],
    }))
    .into_response()
}

async fn server_metadata(State(fake): State<Shared>) -> Response {
    let fake = fake.lock().unwrap();
    if !fake.issuer_path.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    server_metadata_document(&fake)
}

async fn path_server_metadata(State(fake): State<Shared>) -> Response {
    let fake = fake.lock().unwrap();
    if fake.issuer_path != "/realms/ops" {
        return StatusCode::NOT_FOUND.into_response();
    }
    server_metadata_document(&fake)
}

fn server_metadata_document(fake: &Fake) -> Response {
    let base = &fake.base;
    let mut document = json!({
        "issuer": fake.issuer(),
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    });
    match &fake.pkce_methods {
        Some(Value::Null) => {
            document
                .as_object_mut()
                .unwrap()
                .remove("code_challenge_methods_supported");
        }
        Some(methods) => document["code_challenge_methods_supported"] = methods.clone(),
        None => {}
    }
    Json(document).into_response()
}

async fn register(State(fake): State<Shared>, Json(body): Json<Value>) -> Response {
    assert_eq!(body["client_name"], "flotilla CLI");
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert_eq!(
        body["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    let redirect = body["redirect_uris"][0].as_str().unwrap().to_string();
    assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"));
    fake.lock().unwrap().redirect_uri = Some(redirect.clone());
    // RFC 7591 §3.2.1: the client's metadata comes back with its client_id
    // (rmcp reads redirect_uris from the answer).
    (
        StatusCode::CREATED,
        Json(json!({"client_id": "cli-1", "redirect_uris": [redirect]})),
    )
        .into_response()
}

async fn authorize(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Redirect {
    let mut fake = fake.lock().unwrap();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], "cli-1");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["resource"], format!("{}/mcp", fake.base));
    assert_eq!(query["scope"], "openid profile");
    assert_eq!(Some(&query["redirect_uri"]), fake.redirect_uri.as_ref());
    fake.code_challenge = Some(query["code_challenge"].clone());
    let mut back = Url::parse(&query["redirect_uri"]).unwrap();
    match &fake.deny_with {
        Some(error) => back.query_pairs_mut().append_pair("error", error),
        None => back.query_pairs_mut().append_pair("code", "code-1"),
    };
    back.query_pairs_mut()
        .append_pair("state", &query["state"])
        .append_pair("iss", &fake.issuer());
    Redirect::to(back.as_str())
}

async fn token(State(fake): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut fake = fake.lock().unwrap();
    assert_eq!(form["client_id"], "cli-1");
    fake.token_resources.push(form["resource"].clone());
    let refused =
        |error: &str| (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response();
    match form["grant_type"].as_str() {
        "authorization_code" => {
            let digest = sha2::Sha256::digest(form["code_verifier"].as_bytes());
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if form["code"] != "code-1" || Some(challenge) != fake.code_challenge {
                return refused("invalid_grant");
            }
            assert_eq!(Some(&form["redirect_uri"]), fake.redirect_uri.as_ref());
        }
        "refresh_token" => {
            fake.refreshes += 1;
            if fake.refuse_refresh || Some(&form["refresh_token"]) != fake.refresh.as_ref() {
                return refused("invalid_grant");
            }
        }
        _ => return refused("unsupported_grant_type"),
    }
    fake.issued += 1;
    let access = format!("at-{}", fake.issued);
    let refresh = format!("rt-{}", fake.issued);
    fake.access = Some(access.clone());
    fake.refresh = Some(refresh.clone());
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh,
    }))
    .into_response()
}

async fn status(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    let fake = fake.lock().unwrap();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let user = if !fake.auth_enabled {
        Value::Null
    } else if presented.is_some() && presented == fake.access.as_deref() {
        json!({"subject": "u-1", "issuer": "https://idp", "name": "alice", "via": "login"})
    } else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(json!({
        "endpoint": format!("{}/mcp", fake.base),
        "user": user,
        "servers": [{"name": "a", "state": "Connected", "sso": "Forwarded", "reason": null, "tools": 3}],
    }))
    .into_response()
}

/// Logs in, playing the browser: follows the authorization URL's redirects
/// to the loopback listener. Returns the login's outcome and the tab's page.
async fn log_in(store: &Store, gateway: &Gateway) -> (anyhow::Result<LoginOutcome>, String) {
    let (shown, url) = tokio::sync::oneshot::channel::<Url>();
    let browser = tokio::spawn(async move {
        let Ok(url) = url.await else {
            return String::new();
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        client.get(url).send().await.unwrap().text().await.unwrap()
    });
    let http = super::oauth::http_client().unwrap();
    let outcome = login(
        store,
        &http,
        &gateway.endpoint,
        Duration::from_secs(20),
        |url| {
            let _ = shown.send(url.clone());
        },
    )
    .await;
    (outcome, browser.await.unwrap())
}

fn not_logged_in(result: anyhow::Result<impl std::fmt::Debug>) -> String {
    let error = result.unwrap_err();
    assert!(error.downcast_ref::<NotLoggedIn>().is_some(), "{error:#}");
    format!("{error:#}")
}

#[tokio::test]
async fn login_discovers_registers_exchanges_and_stores_then_status_reports_the_user() {
    let gateway = gateway(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().join("flotilla"));

    let (outcome, page) = log_in(&store, &gateway).await;
    assert!(matches!(outcome.unwrap(), LoginOutcome::LoggedIn));
    assert!(page.contains("Logged in, you can close this tab"), "{page}");

    let key = gateway.endpoint.as_str();
    let stored = store.load().unwrap();
    assert_eq!(stored.last_endpoint.as_deref(), Some(key));
    let login = &stored.endpoints[key];
    assert_eq!(login.client_id, "cli-1");
    assert_eq!(login.access_token.expose(), "at-1");
    assert_eq!(login.refresh_token.as_ref().unwrap().expose(), "rt-1");
    assert_eq!(
        login.token_endpoint,
        format!("{}token", gateway.endpoint.join("/").unwrap())
    );
    assert_eq!(login.resource.as_deref(), Some(key));
    let left = login.expires_at.unwrap() - Utc::now();
    assert!(
        left.num_seconds() > 3500 && left.num_seconds() <= 3600,
        "{left}"
    );
    assert_eq!(gateway.fake.lock().unwrap().token_resources, [key]);

    let http = super::oauth::http_client().unwrap();
    let report = report(&store, &http, &gateway.endpoint).await.unwrap();
    assert!(report.all_connected());
    assert_eq!(report.user.unwrap().name.as_deref(), Some("alice"));
    assert_eq!(gateway.fake.lock().unwrap().refreshes, 0);

    super::logout::run(&store, &gateway.endpoint).await.unwrap();
    assert!(!store.path().exists());
}

#[tokio::test]
async fn status_renews_an_expiring_login_and_stores_the_rotated_tokens() {
    let gateway = gateway(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    log_in(&store, &gateway).await.0.unwrap();
    let key = gateway.endpoint.as_str().to_string();
    let soon = Utc::now() + chrono::TimeDelta::seconds(20);
    store
        .update(|creds| creds.endpoints.get_mut(&key).unwrap().expires_at = Some(soon))
        .unwrap();

    let http = super::oauth::http_client().unwrap();
    let report = report(&store, &http, &gateway.endpoint).await.unwrap();
    assert!(report.user.is_some());
    let login = store.load().unwrap().endpoints.remove(&key).unwrap();
    assert_eq!(login.access_token.expose(), "at-2");
    assert_eq!(login.refresh_token.unwrap().expose(), "rt-2");
    assert!(login.expires_at.unwrap() > soon);
    let fake = gateway.fake.lock().unwrap();
    assert_eq!(fake.refreshes, 1);
    assert_eq!(fake.token_resources, [key.clone(), key]);
}

#[tokio::test]
async fn status_renews_once_when_the_gateway_turns_the_token_away() {
    let gateway = gateway(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    log_in(&store, &gateway).await.0.unwrap();
    // The gateway forgot the token (say, it restarted), the refresh token still works.
    gateway.fake.lock().unwrap().access = Some("something-else".into());

    let http = super::oauth::http_client().unwrap();
    assert!(
        report(&store, &http, &gateway.endpoint)
            .await
            .unwrap()
            .user
            .is_some()
    );
    assert_eq!(gateway.fake.lock().unwrap().refreshes, 1);
}

#[tokio::test]
async fn an_expired_login_whose_refresh_is_refused_is_not_logged_in() {
    let gateway = gateway(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    log_in(&store, &gateway).await.0.unwrap();
    let key = gateway.endpoint.as_str().to_string();
    store
        .update(|creds| {
            creds.endpoints.get_mut(&key).unwrap().expires_at =
                Some(Utc::now() - chrono::TimeDelta::seconds(5))
        })
        .unwrap();
    gateway.fake.lock().unwrap().refuse_refresh = true;

    let http = super::oauth::http_client().unwrap();
    let message = not_logged_in(report(&store, &http, &gateway.endpoint).await);
    assert!(message.contains("invalid_grant"), "{message}");
    assert!(
        message.contains("flotilla auth login --endpoint"),
        "{message}"
    );
    assert!(
        !message.contains("rt-1") && !message.contains("at-1"),
        "{message}"
    );
}

#[tokio::test]
async fn without_a_login_status_is_not_logged_in_unless_the_gateway_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    let http = super::oauth::http_client().unwrap();

    let protected = gateway(true).await;
    let message = not_logged_in(report(&store, &http, &protected.endpoint).await);
    assert!(message.starts_with("not logged in to"), "{message}");

    let open = gateway(false).await;
    let report = report(&store, &http, &open.endpoint).await.unwrap();
    assert!(report.user.is_none());
    assert!(report.render().contains("the gateway needs no login"));
    let (outcome, _) = log_in(&store, &open).await;
    assert!(matches!(outcome.unwrap(), LoginOutcome::NotNeeded));
    assert!(!store.path().exists());
}

#[tokio::test]
async fn a_refused_login_surfaces_the_error_and_stores_nothing() {
    let gateway = gateway(true).await;
    gateway.fake.lock().unwrap().deny_with = Some("access_denied".into());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    let (outcome, page) = log_in(&store, &gateway).await;
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(message.contains("access_denied"), "{message}");
    assert!(message.contains("flotilla auth login"), "{message}");
    assert!(page.contains("access_denied"), "{page}");
    assert!(!store.path().exists());
}

#[tokio::test]
async fn a_login_nobody_completes_times_out_with_advice() {
    let gateway = gateway(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    let http = super::oauth::http_client().unwrap();
    let error = login(
        &store,
        &http,
        &gateway.endpoint,
        Duration::from_millis(300),
        |_| {},
    )
    .await
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("no answer from the browser"), "{message}");
    assert!(message.contains("--timeout"), "{message}");
}

#[tokio::test]
async fn an_issuer_with_a_path_is_found_by_rfc_8414_path_insertion() {
    let gateway = gateway(true).await;
    gateway.fake.lock().unwrap().issuer_path = "/realms/ops";
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    let (outcome, _) = log_in(&store, &gateway).await;
    assert!(matches!(outcome.unwrap(), LoginOutcome::LoggedIn));
    let stored = store.load().unwrap();
    assert_eq!(
        stored.endpoints[gateway.endpoint.as_str()].issuer,
        format!("{}realms/ops", gateway.endpoint.join("/").unwrap())
    );
}

/// RFC 9728 §3.3, RFC 8414 §3.3 and the MCP spec's PKCE rule: metadata that
/// is not for this endpoint, or a server that does not advertise S256, ends
/// the login before any browser is sent anywhere, with a message that says
/// why.
#[tokio::test]
async fn metadata_for_another_resource_or_without_s256_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().to_path_buf());
    let http = super::oauth::http_client().unwrap();
    let refused = |gateway: &Gateway| {
        let http = http.clone();
        let store = store.clone();
        let endpoint = gateway.endpoint.clone();
        async move {
            let error = login(&store, &http, &endpoint, Duration::from_secs(5), |url| {
                panic!("the browser was sent to {url}")
            })
            .await
            .unwrap_err();
            format!("{error:#}")
        }
    };

    let other_port = gateway(true).await;
    let elsewhere = "http://127.0.0.1:9/mcp".to_string();
    other_port.fake.lock().unwrap().resource = Some(elsewhere.clone());
    let message = refused(&other_port).await;
    assert!(
        message.contains(&format!("log in with --endpoint {elsewhere}")),
        "{message}"
    );

    for methods in [Value::Null, json!(["plain"])] {
        let no_s256 = gateway(true).await;
        no_s256.fake.lock().unwrap().pkce_methods = Some(methods);
        let message = refused(&no_s256).await;
        assert!(
            message.contains("does not offer PKCE with S256"),
            "{message}"
        );
    }
    assert!(!store.path().exists());
}
