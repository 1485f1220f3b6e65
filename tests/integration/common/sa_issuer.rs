//! A Kubernetes cluster's service-account token issuer, as far as an agent's
//! credential needs one: the API server's issuer discovery
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`) and tokens shaped
//! like a TokenRequest's (projected service-account tokens: `iss`, `sub`
//! `system:serviceaccount:<ns>:<name>`, `aud`, `exp`, `iat`, `nbf`, and the
//! `kubernetes.io` claim), signed ES256 with a key made at start.
//!
//! A hand-written stand-in: no Kubernetes API server installs from the
//! registries this project uses. It follows the documented discovery
//! document and token claims of kube-apiserver's service-account issuer.

use std::sync::Arc;

use base64::Engine;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// One cluster's issuer, served on 127.0.0.1 from its own runtime.
pub struct SaIssuer {
    pub issuer: String,
    pkcs8: Vec<u8>,
    kid: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SaIssuer {
    pub fn start() -> SaIssuer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("a P-256 key")
            .as_ref()
            .to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("the key reads back");
        // An uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let kid = b64(&point[1..9]);
        let jwks = json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let issuer = format!("http://{}", listener.local_addr().expect("address"));
        let discovery = Arc::new(json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }));
        let jwks = Arc::new(jwks);
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let discovery = discovery.clone();
                    async move { axum::Json((*discovery).clone()) }
                }),
            )
            .route(
                "/openid/v1/jwks",
                axum::routing::get(move || {
                    let jwks = jwks.clone();
                    async move { axum::Json((*jwks).clone()) }
                }),
            );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("issuer runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
        SaIssuer {
            issuer,
            pkcs8,
            kid,
            runtime: Some(runtime),
        }
    }

    /// A projected token of service account `namespace/name` for `audience`,
    /// valid for `ttl_seconds` (negative: already expired).
    pub fn token(&self, namespace: &str, name: &str, audience: &str, ttl_seconds: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let claims: Value = json!({
            "aud": [audience],
            "exp": now + ttl_seconds,
            "iat": now - 5,
            "nbf": now - 5,
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": "3b9d2f0e-0000-4000-8000-000000000001"},
            },
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8);
        jsonwebtoken::encode(&header, &claims, &key).expect("a signed token")
    }
}

impl Drop for SaIssuer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
