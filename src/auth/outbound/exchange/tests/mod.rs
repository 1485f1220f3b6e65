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
use crate::api::IdentitySource;

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
    /// `alg: none`, no signature, claiming `sub: forged-admin`.
    None,
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
        Signer::None => {
            let b64 = |v: serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            let forged = serde_json::json!({"iss": iss, "sub": "forged-admin", "aud": "downstream", "exp": now + 3600});
            format!(
                "{}.{}.",
                b64(serde_json::json!({"alg": "none"})),
                b64(forged)
            )
        }
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
        client: None,
        groups: Vec::new(),
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

mod behaviour;
mod checks;
