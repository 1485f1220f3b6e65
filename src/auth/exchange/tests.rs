//! Exchange and cache behaviour against a stand-in Dex token endpoint: a tiny
//! axum server on 127.0.0.1:0 that counts requests, records what it was sent
//! and answers as told (opaque tokens, JWTs, OAuth errors, bare statuses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;
use crate::auth::identity::IdentitySource;

const SUBJECT_SECRET: &str = "SUBJECT-TOKEN-ZX81";
const CLIENT_SECRET: &str = "CLIENT-SECRET-QV93:+/&";
const CLIENT_ID: &str = "flotilla gw";

/// A throwaway P-256 key generated for these tests only (PKCS#8 DER, base64).
const TEST_EC_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg846hc1zUPHdxhyIY\
hVEHeaef1WFetZqvsXLjaSiAwFihRANCAATP/AfPELxSmmop4qECf9KQ1id7VLhm\
v2jETrLjG5X6lyuB6Ieyf7gXb7yLuwXY13Jc1Ih+yVxuv8y1X3jGQSAq";
const TEST_KID: &str = "test-key";

/// How the stand-in answers the next exchanges.
#[derive(Clone)]
enum Reply {
    /// `xt-<n>-<subject token>`, with this `expires_in` (omitted when `None`).
    Opaque {
        expires_in: Option<u64>,
    },
    /// A JWT with this `iss`, signed as said.
    Jwt {
        iss: String,
        signer: Signer,
    },
    OAuthError {
        status: u16,
        error: &'static str,
        description: String,
    },
    Status(u16),
}

#[derive(Clone, Copy)]
enum Signer {
    /// HS256 with a secret nobody publishes.
    Hs256,
    /// ES256 with the key `/dex/keys` publishes.
    Es256,
    /// ES256, then the payload swapped, so the signature no longer matches.
    Es256Tampered,
}

struct Seen {
    form: HashMap<String, String>,
    authorization: Option<String>,
}

struct StubState {
    issuer: String,
    requests: std::sync::atomic::AtomicU64,
    reply: Mutex<Reply>,
    delay: Mutex<Duration>,
    last: Mutex<Option<Seen>>,
}

/// The stand-in Dex; stops when dropped.
struct Stub {
    base: String,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(StubState {
            issuer: format!("{base}/dex"),
            requests: Default::default(),
            reply: Mutex::new(Reply::Opaque {
                expires_in: Some(3600),
            }),
            delay: Mutex::new(Duration::ZERO),
            last: Mutex::new(None),
        });
        let app = Router::new()
            .route("/dex/token", post(token_endpoint))
            .route("/dex/.well-known/openid-configuration", get(discovery))
            .route("/dex/keys", get(keys))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base,
            state,
            server,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/dex/token", self.base)
    }

    fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Waits (a bounded while) for the request count to reach `n`, for
    /// requests made in the background; then returns the count.
    async fn requests_after_waiting_for(&self, n: u64) -> u64 {
        for _ in 0..100 {
            if self.requests() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Room for an unwanted extra request to show up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.requests()
    }

    fn reply(&self, reply: Reply) {
        *self.state.reply.lock().expect("lock") = reply;
    }

    fn delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("lock") = delay;
    }

    fn target(&self) -> ExchangeTarget {
        let spec = TokenExchangeSpec {
            enabled: true,
            dex_token_endpoint: Some(self.endpoint()),
            connector_id: Some("central".into()),
            ..Default::default()
        };
        ExchangeTarget::from_spec(&spec, Some(&client())).expect("valid target")
    }
}

async fn token_endpoint(
    State(stub): State<Arc<StubState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = stub.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let subject = form.get("subject_token").cloned().unwrap_or_default();
    *stub.last.lock().expect("lock") = Some(Seen {
        form,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let delay = *stub.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = stub.reply.lock().expect("lock").clone();
    match reply {
        Reply::Opaque { expires_in } => {
            let mut body = serde_json::json!({
                "access_token": format!("xt-{n}-{subject}"),
                "issued_token_type": DEFAULT_REQUESTED_TOKEN_TYPE,
                "token_type": "bearer",
            });
            if let Some(secs) = expires_in {
                body["expires_in"] = secs.into();
            }
            Json(body).into_response()
        }
        Reply::Jwt { iss, signer } => Json(serde_json::json!({
            "access_token": mint_jwt(&iss, &format!("sub-{n}"), signer),
            "issued_token_type": DEFAULT_REQUESTED_TOKEN_TYPE,
            "token_type": "bearer",
            "expires_in": 3600,
        }))
        .into_response(),
        Reply::OAuthError {
            status,
            error,
            description,
        } => (
            StatusCode::from_u16(status).expect("status"),
            Json(serde_json::json!({"error": error, "error_description": description})),
        )
            .into_response(),
        Reply::Status(status) => (
            StatusCode::from_u16(status).expect("status"),
            "upstream says no",
        )
            .into_response(),
    }
}

async fn discovery(State(stub): State<Arc<StubState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "issuer": stub.issuer,
        "jwks_uri": format!("{}/keys", stub.issuer),
    }))
}

async fn keys() -> Json<jsonwebtoken::jwk::JwkSet> {
    let key = test_ec_key();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(TEST_KID.into());
    Json(jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })
}

fn test_ec_key() -> EncodingKey {
    let der = base64::engine::general_purpose::STANDARD
        .decode(TEST_EC_KEY)
        .expect("test key is base64");
    EncodingKey::from_ec_der(&der)
}

fn mint_jwt(iss: &str, sub: &str, signer: Signer) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"iss": iss, "sub": sub, "aud": "downstream", "exp": now + 3600, "iat": now});
    match signer {
        Signer::Hs256 => jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"unpublished"),
        )
        .expect("encode"),
        Signer::Es256 | Signer::Es256Tampered => {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(TEST_KID.into());
            let key = test_ec_key();
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("encode");
            if matches!(signer, Signer::Es256) {
                return token;
            }
            let forged = serde_json::json!({"iss": iss, "sub": "admin", "aud": "downstream", "exp": now + 3600});
            let payload =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{payload}.{}", parts[0], parts[2])
        }
    }
}

fn client() -> ClientCredentials {
    ClientCredentials {
        client_id: CLIENT_ID.into(),
        client_secret: SecretValue::new(CLIENT_SECRET.into()),
    }
}

fn user(subject: &str, id_token: &str) -> UserIdentity {
    UserIdentity {
        key: UserKey {
            issuer: "https://central.example".into(),
            subject: subject.into(),
        },
        display_name: None,
        id_token: Some(SecretValue::new(id_token.into())),
        expires_at: None,
        source: IdentitySource::GatewayLogin,
    }
}

fn settings() -> TokenCacheSettings {
    TokenCacheSettings {
        max_entries: 1_000,
        safety_margin: Duration::from_secs(30),
        refresh_ahead: Duration::from_secs(60),
        failure_backoff: Duration::from_millis(300),
        failure_backoff_max: Duration::from_secs(2),
    }
}

fn exchanger(settings: TokenCacheSettings) -> Arc<TokenExchanger> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    Arc::new(TokenExchanger::new(
        settings,
        http.clone(),
        Arc::new(JwksCache::new(http)),
    ))
}

/// Every way of printing the error, for secret checks.
fn renderings(err: &ExchangeError) -> String {
    format!("{err} | {err:?} | {}", describe_for_status(err))
}

fn assert_no_secrets(text: &str) {
    assert!(
        !text.contains(SUBJECT_SECRET),
        "subject token leaked: {text}"
    );
    assert!(
        !text.contains("CLIENT-SECRET-QV93"),
        "client secret leaked: {text}"
    );
}

#[tokio::test]
async fn exchange_sends_dex_form_parameters_and_form_encoded_basic_auth() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let token = exchanger
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect("exchanged");
    assert_eq!(token.expose(), "xt-1-idt-alice");

    let seen = stub
        .state
        .last
        .lock()
        .expect("lock")
        .take()
        .expect("a request");
    let expected: HashMap<String, String> = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", "idt-alice"),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("connector_id", "central"),
        ("scope", "openid profile email groups"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen.form, expected);
    // RFC 6749 2.3.1: each part form-urlencoded, then base64 of "id:secret".
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("flotilla+gw:CLIENT-SECRET-QV93%3A%2B%2F%26")
    );
    assert_eq!(seen.authorization.as_deref(), Some(want.as_str()));
}

#[tokio::test]
async fn connector_id_is_left_out_when_not_configured() {
    let stub = Stub::start().await;
    let mut target = stub.target();
    target.connector_id = None;
    exchanger(settings())
        .token(&user("alice", "idt-alice"), &target)
        .await
        .expect("exchanged");
    let seen = stub
        .state
        .last
        .lock()
        .expect("lock")
        .take()
        .expect("a request");
    assert!(!seen.form.contains_key("connector_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_share_one_exchange() {
    let stub = Stub::start().await;
    stub.delay(Duration::from_millis(200));
    let exchanger = exchanger(settings());
    let target = stub.target();
    let alice = user("alice", "idt-alice");
    let calls = (0..100).map(|_| {
        let (exchanger, target, alice) = (exchanger.clone(), target.clone(), alice.clone());
        tokio::spawn(async move { exchanger.token(&alice, &target).await })
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        assert_eq!(
            result.expect("task").expect("token").expose(),
            "xt-1-idt-alice"
        );
    }
    assert_eq!(stub.requests(), 1);
    assert_eq!(exchanger.exchanges_sent(), 1);
    // And later calls are plain hits.
    exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn token_shorter_lived_than_the_safety_margin_is_exchanged_again() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(5),
    });
    let exchanger = exchanger(settings()); // margin 30s > 5s
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    let second = exchanger.token(&alice, &target).await.expect("second");
    assert_eq!(first.expose(), "xt-1-idt-alice");
    assert_eq!(second.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn entry_expires_after_its_lifetime_minus_the_margin() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::from_secs(1),
        refresh_ahead: Duration::ZERO,
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    exchanger.token(&alice, &target).await.expect("first");
    exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(stub.requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = exchanger
        .token(&alice, &target)
        .await
        .expect("after expiry");
    assert_eq!(again.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn hit_near_expiry_refreshes_once_in_the_background() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        refresh_ahead: Duration::from_secs(60),
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    // Refresh starts no earlier than half-way through the 2s lifetime.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stub.delay(Duration::from_millis(200));
    for _ in 0..20 {
        let served = exchanger.token(&alice, &target).await.expect("hit");
        assert_eq!(served.expose(), first.expose(), "still-valid token served");
    }
    assert_eq!(
        stub.requests_after_waiting_for(2).await,
        2,
        "exactly one background refresh"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let fresh = exchanger.token(&alice, &target).await.expect("refreshed");
    assert_eq!(fresh.expose(), "xt-2-idt-alice");
}

#[tokio::test]
async fn failed_refresh_keeps_serving_the_current_token_until_it_expires() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(3),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        refresh_ahead: Duration::from_secs(60),
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    stub.reply(Reply::Status(503));
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(
        stub.requests_after_waiting_for(2).await,
        2,
        "the refresh was attempted"
    );
    // Within the backoff window no further refresh goes out.
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(stub.requests(), 2);
    // After the window the next hit tries again, still serving the old token.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(stub.requests_after_waiting_for(3).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rejections_share_one_re_exchange() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let rejected = exchanger.token(&alice, &target).await.expect("first");
    assert_eq!(stub.requests(), 1);
    stub.delay(Duration::from_millis(100));

    let calls = (0..50).map(|_| {
        let (exchanger, target, alice, rejected) = (
            exchanger.clone(),
            target.clone(),
            alice.clone(),
            rejected.clone(),
        );
        tokio::spawn(async move {
            exchanger
                .token_after_rejection(&alice, &target, &rejected)
                .await
        })
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(
            result.expect("task").expect("token").expose(),
            "xt-2-idt-alice"
        );
    }
    assert_eq!(stub.requests(), 2, "one re-exchange for all fifty");

    // A late rejection of the already-replaced token exchanges nothing.
    let late = exchanger
        .token_after_rejection(&alice, &target, &rejected)
        .await
        .expect("replacement");
    assert_eq!(late.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        "xt-2-idt-alice"
    );
}

#[tokio::test]
async fn rejection_with_nothing_cached_exchanges_once() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let stale = SecretValue::new("from-an-old-process".into());
    let fresh = exchanger
        .token_after_rejection(&alice, &target, &stale)
        .await
        .expect("token");
    assert_eq!(fresh.expose(), "xt-1-idt-alice");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        "xt-1-idt-alice"
    );
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn failed_re_exchange_drops_the_rejected_token() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let rejected = exchanger.token(&alice, &target).await.expect("first");
    stub.reply(Reply::Status(500));
    let err = exchanger
        .token_after_rejection(&alice, &target, &rejected)
        .await
        .expect_err("endpoint failing");
    assert!(
        matches!(err, ExchangeError::HttpStatus { status: 500, .. }),
        "{err}"
    );
    // The rejected token is not served again; the key is backing off.
    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("no token");
    assert!(matches!(err, ExchangeError::Backoff { .. }), "{err}");
}

#[tokio::test]
async fn failures_back_off_without_contacting_the_endpoint() {
    let stub = Stub::start().await;
    stub.reply(Reply::OAuthError {
        status: 401,
        error: "access_denied",
        description: "no such user".into(),
    });
    let exchanger = exchanger(settings()); // backoff 300ms doubling to 2s
    let (alice, target) = (user("alice", "idt-alice"), stub.target());

    let err = exchanger.token(&alice, &target).await.expect_err("denied");
    assert_eq!(
        err.to_string(),
        "exchange rejected: access_denied: no such user"
    );
    assert_eq!(stub.requests(), 1);

    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("backing off");
    assert_eq!(
        err.to_string(),
        "exchange failed recently (exchange rejected: access_denied: no such user); retrying in 1s"
    );
    assert_eq!(stub.requests(), 1, "no request inside the window");

    // After the window: one attempt, which fails and doubles the window.
    tokio::time::sleep(Duration::from_millis(350)).await;
    exchanger
        .token(&alice, &target)
        .await
        .expect_err("denied again");
    assert_eq!(stub.requests(), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("600ms window");
    assert!(matches!(err, ExchangeError::Backoff { .. }), "{err}");
    assert_eq!(stub.requests(), 2);

    // Success resets it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stub.reply(Reply::Opaque {
        expires_in: Some(3600),
    });
    exchanger.token(&alice, &target).await.expect("recovered");
    assert_eq!(stub.requests(), 3);
    // Other users are not held back by alice's failures.
    let bob = user("bob", "idt-bob");
    stub.reply(Reply::Status(502));
    exchanger.token(&bob, &target).await.expect_err("bob fails");
    let err = exchanger.token(&alice, &target).await;
    assert!(err.is_ok(), "alice's cached token still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_during_a_failing_exchange_share_its_error() {
    let stub = Stub::start().await;
    stub.reply(Reply::Status(503));
    stub.delay(Duration::from_millis(200));
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let calls = (0..20).map(|_| {
        let (exchanger, target, alice) = (exchanger.clone(), target.clone(), alice.clone());
        tokio::spawn(async move { exchanger.token(&alice, &target).await })
    });
    for result in futures::future::join_all(calls).await {
        assert!(result.expect("task").is_err());
    }
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn cached_token_keeps_working_while_the_endpoint_is_down() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    // Down: failing, then gone (pooled connections may outlive the listener).
    stub.reply(Reply::Status(503));
    drop(stub);
    for _ in 0..3 {
        let again = exchanger.token(&alice, &target).await.expect("cached");
        assert_eq!(again.expose(), first.expose());
    }
    // A user with nothing cached sees the outage.
    exchanger
        .token(&user("bob", "idt-bob"), &target)
        .await
        .expect_err("endpoint down");
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_with_its_url() {
    let stub = Stub::start().await;
    let mut target = stub.target();
    // Nothing listens on port 1.
    target.endpoint = "http://127.0.0.1:1/dex/token".into();
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &target)
        .await
        .expect_err("refused");
    assert!(matches!(err, ExchangeError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("token exchange endpoint http://127.0.0.1:1/dex/token unreachable: "),
        "{err}"
    );
}

#[tokio::test]
async fn two_users_never_get_each_others_token() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let target = stub.target();
    let alice = user("alice", "idt-alice");
    let bob = user("bob", "idt-bob");
    let mut mallory = user("alice", "idt-mallory");
    mallory.key.issuer = "https://other-issuer.example".into();

    let a = exchanger.token(&alice, &target).await.expect("alice");
    let b = exchanger.token(&bob, &target).await.expect("bob");
    let m = exchanger
        .token(&mallory, &target)
        .await
        .expect("same subject, other issuer");
    assert_eq!(a.expose(), "xt-1-idt-alice");
    assert_eq!(b.expose(), "xt-2-idt-bob");
    assert_eq!(m.expose(), "xt-3-idt-mallory");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        a.expose()
    );
    assert_eq!(
        exchanger.token(&bob, &target).await.expect("hit").expose(),
        b.expose()
    );
    // Bob's rejection of his token does not touch alice's.
    exchanger
        .token_after_rejection(&bob, &target, &b)
        .await
        .expect("bob again");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        a.expose()
    );
    assert_eq!(stub.requests(), 4);
}

#[tokio::test]
async fn targets_differing_in_scopes_are_cached_apart() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let alice = user("alice", "idt-alice");
    let plain = stub.target();
    let mut narrow = stub.target();
    narrow.scopes = "openid".into();
    exchanger.token(&alice, &plain).await.expect("plain");
    exchanger.token(&alice, &narrow).await.expect("narrow");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn jwt_from_the_wrong_issuer_is_rejected() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: "https://evil.example".into(),
        signer: Signer::Es256,
    });
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("wrong issuer");
    assert_eq!(
        err.to_string(),
        format!(
            "exchanged token's issuer https://evil.example is not the expected {}",
            stub.issuer()
        )
    );
}

#[tokio::test]
async fn jwt_signed_with_the_issuers_published_key_is_accepted() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: stub.issuer(),
        signer: Signer::Es256,
    });
    let token = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect("verified");
    assert_eq!(token.expose().split('.').count(), 3);
}

#[tokio::test]
async fn jwt_whose_signature_does_not_verify_is_rejected() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: stub.issuer(),
        signer: Signer::Es256Tampered,
    });
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("tampered");
    assert!(matches!(err, ExchangeError::Unverified(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("exchanged token's signature did not verify: "),
        "{err}"
    );
}

#[tokio::test]
async fn jwt_is_accepted_when_the_issuers_keys_are_unreachable() {
    let stub = Stub::start().await;
    // Nothing listens on port 1: discovery fails to connect.
    let issuer = "http://127.0.0.1:1/dex".to_string();
    stub.reply(Reply::Jwt {
        iss: issuer.clone(),
        signer: Signer::Hs256,
    });
    let mut target = stub.target();
    target.expected_issuer = issuer;
    let token = exchanger(settings())
        .token(&user("alice", "idt-alice"), &target)
        .await
        .expect("accepted with a warning");
    assert_eq!(token.expose().split('.').count(), 3);
}

#[tokio::test]
async fn http_error_without_an_oauth_body_reports_the_status() {
    let stub = Stub::start().await;
    stub.reply(Reply::Status(502));
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("502");
    assert_eq!(
        err.to_string(),
        format!("exchange failed: HTTP 502 from {}", stub.endpoint())
    );
}

#[tokio::test]
async fn user_without_an_id_token_gets_a_clear_error_and_no_request() {
    let stub = Stub::start().await;
    let mut alice = user("alice", "unused");
    alice.id_token = None;
    alice.display_name = Some("Alice".into());
    let err = exchanger(settings())
        .token(&alice, &stub.target())
        .await
        .expect_err("nothing to exchange");
    assert_eq!(
        err.to_string(),
        "no ID token to exchange (Alice authenticated without one)"
    );
    assert_eq!(stub.requests(), 0);
}

#[tokio::test]
async fn error_messages_never_contain_the_subject_token_or_client_secret() {
    let stub = Stub::start().await;
    let exchanger = exchanger(TokenCacheSettings {
        failure_backoff: Duration::ZERO,
        ..settings()
    });
    let alice = user("alice", SUBJECT_SECRET);
    let target = stub.target();
    let echo = format!("bad subject_token {SUBJECT_SECRET} for client secret {CLIENT_SECRET}");
    let replies = [
        Reply::OAuthError {
            status: 400,
            error: "invalid_request",
            description: echo.clone(),
        },
        Reply::OAuthError {
            status: 401,
            error: "invalid_client",
            description: echo,
        },
        Reply::Status(500),
        Reply::Jwt {
            iss: "https://evil.example".into(),
            signer: Signer::Hs256,
        },
        Reply::Jwt {
            iss: stub.issuer(),
            signer: Signer::Es256Tampered,
        },
    ];
    for reply in replies {
        stub.reply(reply);
        let err = exchanger.token(&alice, &target).await.expect_err("fails");
        assert_no_secrets(&renderings(&err));
        let err = exchanger
            .token_after_rejection(&alice, &target, &SecretValue::new("x".into()))
            .await
            .expect_err("fails");
        assert_no_secrets(&renderings(&err));
    }
    // Unreachable, and the backoff error quoting it.
    let mut down = target.clone();
    down.endpoint = "http://127.0.0.1:1/dex/token".into();
    let slow = self::exchanger(settings());
    let err = slow.token(&alice, &down).await.expect_err("down");
    assert_no_secrets(&renderings(&err));
    let err = slow.token(&alice, &down).await.expect_err("backoff");
    assert!(matches!(err, ExchangeError::Backoff { .. }));
    assert_no_secrets(&renderings(&err));
    // The target itself prints redacted.
    assert_no_secrets(&format!("{target:?}"));
}

#[test]
fn from_spec_fills_muster_defaults_and_derives_the_issuer() {
    let spec = TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: Some("https://dex.cluster-b.example/token".into()),
        ..Default::default()
    };
    let target = ExchangeTarget::from_spec(&spec, Some(&client())).expect("valid");
    assert_eq!(
        target,
        ExchangeTarget {
            endpoint: "https://dex.cluster-b.example/token".into(),
            expected_issuer: "https://dex.cluster-b.example".into(),
            connector_id: None,
            scopes: "openid profile email groups".into(),
            requested_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            client: client(),
        }
    );
}

#[test]
fn from_spec_keeps_given_values() {
    let spec = TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: Some("https://proxy.example/dex-b/token".into()),
        expected_issuer: Some("https://dex.cluster-b.example".into()),
        connector_id: Some("cluster-a-dex".into()),
        scopes: Some("openid groups".into()),
        requested_token_type: Some("urn:ietf:params:oauth:token-type:id_token".into()),
        client_credentials_secret_ref: None,
    };
    let target = ExchangeTarget::from_spec(&spec, Some(&client())).expect("valid");
    assert_eq!(target.expected_issuer, "https://dex.cluster-b.example");
    assert_eq!(target.connector_id.as_deref(), Some("cluster-a-dex"));
    assert_eq!(target.scopes, "openid groups");
    assert_eq!(
        target.requested_token_type,
        "urn:ietf:params:oauth:token-type:id_token"
    );
}

#[test]
fn from_spec_explains_what_is_missing_or_unsafe() {
    let with = |endpoint: Option<&str>| TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: endpoint.map(str::to_string),
        ..Default::default()
    };
    let cases: [(TokenExchangeSpec, Option<ClientCredentials>, &str); 6] = [
        (with(None), Some(client()), "dexTokenEndpoint is not set"),
        (
            with(Some("  ")),
            Some(client()),
            "dexTokenEndpoint is not set",
        ),
        (
            with(Some("https://dex.b/token")),
            None,
            "no client credentials",
        ),
        (with(Some("not a url")), Some(client()), "is not a URL"),
        (
            with(Some("http://dex.b/token")),
            Some(client()),
            "must use https",
        ),
        (
            with(Some("https://dex.b/token")),
            Some(ClientCredentials {
                client_id: " ".into(),
                client_secret: SecretValue::new("s".into()),
            }),
            "empty client id",
        ),
    ];
    for (spec, creds, want) in cases {
        let err = ExchangeTarget::from_spec(&spec, creds.as_ref()).expect_err(want);
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    for loopback in [
        "http://127.0.0.1:5556/token",
        "http://localhost/dex/token",
        "http://[::1]/token",
    ] {
        assert!(
            ExchangeTarget::from_spec(&with(Some(loopback)), Some(&client())).is_ok(),
            "{loopback}"
        );
    }
}

#[test]
fn issuer_is_the_endpoint_without_a_trailing_token_path() {
    let cases = [
        ("https://dex.b/token", "https://dex.b"),
        ("https://dex.b/dex/token/", "https://dex.b/dex"),
        (
            "https://dex.b/oauth2/exchange",
            "https://dex.b/oauth2/exchange",
        ),
    ];
    for (endpoint, issuer) in cases {
        assert_eq!(issuer_from_endpoint(endpoint), issuer, "{endpoint}");
    }
}

#[test]
fn rejected_error_renders_code_and_optional_description() {
    let with = ExchangeError::Rejected {
        error: "access_denied".into(),
        description: Some("user not in group".into()),
    };
    let without = ExchangeError::Rejected {
        error: "invalid_client".into(),
        description: None,
    };
    assert_eq!(
        with.to_string(),
        "exchange rejected: access_denied: user not in group"
    );
    assert_eq!(without.to_string(), "exchange rejected: invalid_client");
    assert_eq!(with.kind(), "rejected");
}

#[test]
fn status_description_is_one_bounded_line() {
    let err = ExchangeError::Rejected {
        error: "server_error".into(),
        description: Some(format!("line one\nline two {}", "x".repeat(1000))),
    };
    let line = describe_for_status(&err);
    assert!(line.starts_with("exchange rejected: server_error: line one line two x"));
    assert!(!line.contains('\n'));
    assert!(line.chars().count() <= STATUS_MAX_CHARS + 1);
}

#[tokio::test]
async fn dropping_the_exchanger_stops_its_background_refreshes() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    exchanger.token(&alice, &target).await.expect("first");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stub.delay(Duration::from_millis(300));
    exchanger
        .token(&alice, &target)
        .await
        .expect("hit starts a refresh");
    let inner = Arc::downgrade(&exchanger.inner);
    drop(exchanger);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        inner.upgrade().is_none(),
        "refresh task let go of the exchanger"
    );
}
