//! The discovery documents: protected resource metadata (RFC 9728) for
//! `/mcp` and authorization server metadata (RFC 8414), plus the CORS
//! handling that lets browser-based MCP clients read them and call the
//! registration and token endpoints.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AuthServer, Urls};

pub async fn protected_resource(State(server): State<Arc<AuthServer>>) -> Json<Value> {
    Json(protected_resource_document(&server))
}

pub async fn authorization_server(State(server): State<Arc<AuthServer>>) -> Json<Value> {
    Json(authorization_server_document(&server.urls, &server.scopes))
}

/// RFC 9728: where to get a token for `/mcp`. With `auth.oidc` that is the
/// gateway itself; without it, the trusted issuers.
pub fn protected_resource_document(server: &AuthServer) -> Value {
    let authorization_servers: Vec<String> = if server.provider.is_some() {
        vec![server.urls.issuer.clone()]
    } else {
        server
            .trusted_issuers
            .iter()
            .map(|t| t.issuer.clone())
            .collect()
    };
    json!({
        "resource": server.urls.resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
        "scopes_supported": server.scopes,
        "resource_name": "Flotilla MCP gateway",
    })
}

/// RFC 8414, with the MCP additions (Client ID Metadata Documents, RFC 9207 `iss`).
pub fn authorization_server_document(urls: &Urls, scopes: &[String]) -> Value {
    json!({
        "issuer": urls.issuer,
        "authorization_endpoint": urls.authorization_endpoint,
        "token_endpoint": urls.token_endpoint,
        "registration_endpoint": urls.registration_endpoint,
        "revocation_endpoint": urls.revocation_endpoint,
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    })
}

/// Cross-origin access for the JSON endpoints: answers preflights and lets
/// any origin read responses (they carry no cookies and need none).
pub async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        response
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::super::test_support;
    use super::*;

    #[tokio::test]
    async fn protected_resource_metadata_points_at_the_gateway() {
        let server = test_support::server().await;
        let doc = protected_resource_document(&server);
        assert_eq!(doc["resource"], "http://gw.test:8080/mcp");
        assert_eq!(doc["authorization_servers"], json!(["http://gw.test:8080"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(
            doc["scopes_supported"],
            json!(["openid", "profile", "email", "offline_access"])
        );
    }

    #[tokio::test]
    async fn without_oidc_the_trusted_issuers_are_the_authorization_servers() {
        let mut options = test_support::options(false);
        options.config.trusted_issuers = vec![crate::auth::settings::TrustedIssuerConfig {
            issuer: "https://kubernetes.default.svc".into(),
            audiences: vec!["flotilla".into()],
            jwks_uri: None,
        }];
        let server = AuthServer::start(options).await.unwrap();
        let doc = protected_resource_document(&server);
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://kubernetes.default.svc"])
        );
        // No OAuth endpoints without a provider to front.
        let served = test_support::serve(server.routes()).await;
        let response = test_support::http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                served.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn authorization_server_metadata_advertises_pkce_public_clients_and_cimd() {
        let server = test_support::server().await;
        let doc = authorization_server_document(&server.urls, &server.scopes);
        assert_eq!(doc["issuer"], "http://gw.test:8080");
        assert_eq!(
            doc["authorization_endpoint"],
            "http://gw.test:8080/oauth/authorize"
        );
        assert_eq!(doc["token_endpoint"], "http://gw.test:8080/oauth/token");
        assert_eq!(
            doc["revocation_endpoint"],
            "http://gw.test:8080/oauth/revoke"
        );
        assert_eq!(
            doc["registration_endpoint"],
            "http://gw.test:8080/oauth/register"
        );
        assert_eq!(doc["response_types_supported"], json!(["code"]));
        assert_eq!(
            doc["grant_types_supported"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            json!(["none"])
        );
        assert_eq!(doc["client_id_metadata_document_supported"], true);
    }

    #[tokio::test]
    async fn metadata_routes_serve_json_to_any_origin() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let http = test_support::http();
        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-authorization-server",
        ] {
            let response = http
                .get(format!("{}{path}", served.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            let doc: Value = response.json().await.unwrap();
            assert!(doc.is_object(), "{path}");
        }
        let preflight = http
            .request(Method::OPTIONS, format!("{}/oauth/token", served.base))
            .header(header::ORIGIN, "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*"
        );
    }
}
