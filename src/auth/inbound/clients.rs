//! Who the MCP clients are: dynamic client registration (RFC 7591, the
//! registration sealed into the `client_id`), Client ID Metadata Documents
//! (an https `client_id` naming the client's own metadata, fetched and
//! cached), and the redirect-URI rules both obey (RFC 8252 for native apps).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use url::{Host, Url};

use super::AuthServer;
use super::errors::OAuthError;
use super::payloads::RegisteredClient;
use crate::auth::inbound::seal::{self, Purpose, SealError, SealingKeys};
use crate::fleet::error_chain;

/// Metadata documents are fetched with this timeout...
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// ...read up to this size...
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// ...and kept this long.
const DOCUMENT_TTL: Duration = Duration::from_secs(300);
/// All cached metadata documents together (what they keep, in bytes).
const MAX_CACHED_DOCUMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Limits that keep sealed client ids (and so every token) small.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_LEN: usize = 2000;
const MAX_NAME_LEN: usize = 200;
const MAX_REGISTRATION_BYTES: usize = 64 * 1024;

/// A client as the authorization endpoint sees it.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
}

impl ClientInfo {
    /// Roughly the bytes it keeps in memory.
    fn weight(&self) -> usize {
        let strings = self.name.as_ref().map_or(0, String::len)
            + self.redirect_uris.iter().map(String::len).sum::<usize>();
        std::mem::size_of::<Self>() + strings + self.redirect_uris.len() * 24
    }
}

/// Resolves `client_id`s; caches metadata documents.
pub struct ClientDirectory {
    http: reqwest::Client,
    allow_loopback_http: bool,
    documents: moka::future::Cache<String, Arc<ClientInfo>>,
}

impl ClientDirectory {
    pub fn new(http: reqwest::Client, allow_loopback_http: bool) -> Self {
        Self {
            http,
            allow_loopback_http,
            documents: moka::future::Cache::builder()
                // Weighed by what is kept, so unauthenticated callers naming
                // many large documents cannot hold more than this much memory.
                .weigher(|client_id: &String, info: &Arc<ClientInfo>| {
                    u32::try_from(client_id.len() + info.weight()).unwrap_or(u32::MAX)
                })
                .max_capacity(MAX_CACHED_DOCUMENT_BYTES)
                .time_to_live(DOCUMENT_TTL)
                .build(),
        }
    }

    /// The registered client behind `client_id`, or why there is none.
    pub async fn resolve(
        &self,
        keys: &SealingKeys,
        client_id: &str,
    ) -> Result<Arc<ClientInfo>, String> {
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            return self.metadata_document(client_id).await;
        }
        if !client_id.starts_with(seal::PREFIX) {
            return Err(
                "unknown client_id: register the client first (POST /oauth/register) or use a Client ID Metadata Document URL".into(),
            );
        }
        match keys.unseal::<RegisteredClient>(Purpose::Client, client_id) {
            Ok(registered) => Ok(Arc::new(ClientInfo {
                name: registered.client_name.as_deref().and_then(shown_name),
                redirect_uris: registered.redirect_uris,
            })),
            Err(SealError::UnknownKey) => Err(
                "this client was registered under a sealing key the gateway no longer has: register the client again".into(),
            ),
            Err(_) => Err(
                "unknown client_id (not issued by this gateway): register the client again (POST /oauth/register)".into(),
            ),
        }
    }

    async fn metadata_document(&self, client_id: &str) -> Result<Arc<ClientInfo>, String> {
        let url = self.check_document_url(client_id)?;
        let http = self.http.clone();
        let id = client_id.to_string();
        self.documents
            .try_get_with(client_id.to_string(), async move {
                fetch_document(&http, &url, &id).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<String>| format!("client metadata document {client_id}: {e}"))
    }

    fn check_document_url(&self, client_id: &str) -> Result<Url, String> {
        let url = Url::parse(client_id)
            .map_err(|e| format!("client_id {client_id:?} is not a valid URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_loopback_http && is_loopback(&url) => {}
            "http" => {
                return Err(format!(
                    "client_id {client_id}: a client metadata document must be served over https"
                ));
            }
            other => {
                return Err(format!(
                    "client_id {client_id}: scheme {other} cannot name a client metadata document"
                ));
            }
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "client_id {client_id}: a client metadata URL must not contain a fragment or credentials"
            ));
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err(format!(
                "client_id {client_id}: a client metadata URL must have a path, e.g. https://app.example/client.json"
            ));
        }
        Ok(url)
    }
}

#[derive(Deserialize)]
struct MetadataDocument {
    client_id: String,
    client_name: Option<String>,
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
}

/// A client's name as the consent page and logs show it: trimmed, without
/// control or bidirectional-formatting characters (a right-to-left override
/// could make `evil.example` read as something else); `None` when nothing
/// is left.
fn shown_name(name: &str) -> Option<String> {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}');
    let name: String = name
        .chars()
        .filter(|&c| !c.is_control() && !bidi(c))
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

async fn fetch_document(
    http: &reqwest::Client,
    url: &Url,
    client_id: &str,
) -> Result<ClientInfo, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("fetching it failed: {}", error_chain(&e)))?;
    if response.url() != url {
        return Err("it must be served without redirects".into());
    }
    if !response.status().is_success() {
        return Err(format!("fetching it answered HTTP {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("it is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading it failed: {}", error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("it is larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
    }
    // The parser's words would echo the remote document's shape back.
    let doc: MetadataDocument = serde_json::from_slice(&body).map_err(|_| {
        "it is not a client metadata document (a JSON object with client_id and redirect_uris)"
            .to_string()
    })?;
    if doc.client_id != client_id {
        return Err(format!(
            "its client_id {:?} differs from the URL it was fetched from",
            doc.client_id
        ));
    }
    match doc.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(other) => {
            return Err(format!(
                "token_endpoint_auth_method {other:?} is not supported: this gateway only has public clients (\"none\") using PKCE"
            ));
        }
    }
    if doc.redirect_uris.is_empty() {
        return Err("it lists no redirect_uris".into());
    }
    for uri in &doc.redirect_uris {
        check_redirect_uri(uri)?;
    }
    Ok(ClientInfo {
        name: doc.client_name.as_deref().and_then(shown_name),
        redirect_uris: doc.redirect_uris,
    })
}

/// `POST /oauth/register`: RFC 7591 registration of a public client.
pub async fn register(State(server): State<Arc<AuthServer>>, body: Bytes) -> Response {
    let client = match validate_registration(&body) {
        Ok(client) => client,
        Err(error) => return error.into_response(),
    };
    let client_id = server.keys.seal(Purpose::Client, &client, None);
    tracing::info!(
        client.name = client.client_name.as_deref().unwrap_or("(unnamed)"),
        redirect_uris = client.redirect_uris.len(),
        "registered an MCP client"
    );
    let mut body = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": client.issued_at,
        "redirect_uris": client.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    if let Some(name) = &client.client_name {
        body["client_name"] = serde_json::Value::String(name.clone());
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    super::errors::no_store(&mut response);
    response
}

#[derive(Deserialize)]
struct RegistrationRequest {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
}

fn invalid_metadata(description: impl Into<String>) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_client_metadata",
        description,
    )
}

/// Checks a registration request. A requested `token_endpoint_auth_method`
/// other than `none` is replaced by `none` (RFC 7591 §3.2.1 lets the server
/// choose): every client here is public.
fn validate_registration(body: &[u8]) -> Result<RegisteredClient, OAuthError> {
    if body.len() > MAX_REGISTRATION_BYTES {
        return Err(invalid_metadata(format!(
            "the registration request is larger than {MAX_REGISTRATION_BYTES} bytes"
        )));
    }
    let request: RegistrationRequest = serde_json::from_slice(body).map_err(|e| {
        invalid_metadata(format!(
            "the body must be a JSON client metadata object: {e}"
        ))
    })?;
    let redirect_uris = request
        .redirect_uris
        .filter(|uris| !uris.is_empty())
        .ok_or_else(|| {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "redirect_uris is required: list the URIs the authorization response may be sent to",
            )
        })?;
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            format!("at most {MAX_REDIRECT_URIS} redirect_uris may be registered"),
        ));
    }
    for uri in &redirect_uris {
        check_redirect_uri(uri).map_err(|message| {
            OAuthError::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", message)
        })?;
    }
    if let Some(grants) = &request.grant_types
        && !grants.iter().any(|g| g == "authorization_code")
    {
        return Err(invalid_metadata(
            "grant_types must include authorization_code (refresh_token is also supported)",
        ));
    }
    if let Some(types) = &request.response_types
        && !types.iter().any(|t| t == "code")
    {
        return Err(invalid_metadata("response_types must include code"));
    }
    let client_name = request
        .client_name
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty());
    if client_name
        .as_ref()
        .is_some_and(|name| name.chars().count() > MAX_NAME_LEN)
    {
        return Err(invalid_metadata(format!(
            "client_name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    Ok(RegisteredClient {
        redirect_uris,
        client_name,
        issued_at: Utc::now().timestamp(),
    })
}

/// A redirect URI a client may register: https, http on a loopback host
/// (any port), or a private-use scheme (RFC 8252 §7.1); no fragment.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!(
            "a redirect_uri is longer than {MAX_URI_LEN} characters"
        ));
    }
    let url = Url::parse(uri)
        .map_err(|e| format!("redirect_uri {uri:?} is not an absolute URI ({e})"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect_uri {uri:?} must not contain a fragment"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" | "https" => Err(format!(
            "redirect_uri {uri:?} must use https, or http on a loopback host (127.0.0.1, [::1] or localhost)"
        )),
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "ftp" | "ws" | "wss" => {
            Err(format!(
                "redirect_uri {uri:?}: the {} scheme cannot receive an authorization response; use https, loopback http or a private-use scheme such as com.example.app:/callback",
                url.scheme()
            ))
        }
        _ => Ok(()),
    }
}

/// True when `requested` may be used for the registered `registered`: the
/// same string, or both http loopback URIs differing only in port (RFC 8252 §7.3).
pub fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(mut registered), Ok(mut requested)) = (Url::parse(registered), Url::parse(requested))
    else {
        return false;
    };
    let loopback_http = |url: &Url| url.scheme() == "http" && is_loopback(url);
    if !loopback_http(&registered) || !loopback_http(&requested) {
        return false;
    }
    // Both are http URLs with a host, so clearing the port cannot fail.
    let _ = registered.set_port(None);
    let _ = requested.set_port(None);
    registered == requested
}

/// 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support;
    use super::*;

    #[test]
    fn redirect_uris_must_be_https_loopback_http_or_private_use() {
        for ok in [
            "https://app.example/callback",
            "http://127.0.0.1:33418/callback",
            "http://[::1]/cb",
            "http://localhost:8080/oauth/callback?x=1",
            "com.example.app:/oauth2redirect",
            "cursor://anysphere.cursor-retrieval/oauth/callback",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example/callback",
            "http://10.0.0.1/cb",
            "https://app.example/cb#frag",
            "javascript:alert(1)",
            "data:text/html,hi",
            "/relative/callback",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        let message = check_redirect_uri("http://app.example/cb").unwrap_err();
        assert!(message.contains("loopback"), "{message}");
    }

    #[test]
    fn loopback_redirects_may_change_port_and_nothing_else() {
        let registered = "http://127.0.0.1:3000/callback";
        assert!(redirect_matches(
            registered,
            "http://127.0.0.1:54321/callback"
        ));
        assert!(redirect_matches(registered, "http://127.0.0.1/callback"));
        assert!(redirect_matches(
            "http://localhost/cb",
            "http://localhost:9999/cb"
        ));
        assert!(redirect_matches("http://[::1]:1/cb", "http://[::1]:2/cb"));
        assert!(!redirect_matches(registered, "http://127.0.0.1:3000/other"));
        assert!(!redirect_matches(
            registered,
            "http://localhost:3000/callback"
        ));
        assert!(!redirect_matches(
            registered,
            "http://127.0.0.1:3000/callback?x=1"
        ));
        // Exact match only for everything else.
        assert!(redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example:8443/cb"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb/"
        ));
    }

    #[test]
    fn registration_requires_valid_redirect_uris_and_json() {
        let err = validate_registration(b"not json").unwrap_err();
        assert_eq!(err.error, "invalid_client_metadata");
        assert!(err.description.contains("JSON"), "{}", err.description);

        let err = validate_registration(br#"{"client_name":"x"}"#).unwrap_err();
        assert_eq!(err.error, "invalid_redirect_uri");

        let err =
            validate_registration(br#"{"redirect_uris":["http://evil.example/cb"]}"#).unwrap_err();
        assert_eq!(err.error, "invalid_redirect_uri");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);

        let err = validate_registration(
            br#"{"redirect_uris":["http://127.0.0.1/cb"],"grant_types":["client_credentials"]}"#,
        )
        .unwrap_err();
        assert_eq!(err.error, "invalid_client_metadata");

        let ok = validate_registration(
            br#"{"redirect_uris":["http://127.0.0.1:5173/cb","https://app.example/cb"],
                 "client_name":" Claude ","token_endpoint_auth_method":"client_secret_basic",
                 "grant_types":["authorization_code","refresh_token"],"application_type":"native"}"#,
        )
        .unwrap();
        assert_eq!(ok.client_name.as_deref(), Some("Claude"));
        assert_eq!(ok.redirect_uris.len(), 2);
    }

    #[tokio::test]
    async fn registered_client_ids_resolve_to_their_registration() {
        let server = test_support::server().await;
        let served = test_support::serve(server.routes()).await;
        let response = test_support::http()
            .post(format!("{}/oauth/register", served.base))
            .json(&serde_json::json!({
                "redirect_uris": ["http://127.0.0.1:7777/callback"],
                "client_name": "Test client",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["token_endpoint_auth_method"], "none");
        assert_eq!(body["client_name"], "Test client");
        let client_id = body["client_id"].as_str().unwrap();
        let client = server
            .clients
            .resolve(&server.keys, client_id)
            .await
            .unwrap();
        assert_eq!(client.name.as_deref(), Some("Test client"));
        assert_eq!(client.redirect_uris, ["http://127.0.0.1:7777/callback"]);
        // Another gateway's (or a forged) id is unknown.
        let other = SealingKeys::ephemeral().seal(
            Purpose::Client,
            &RegisteredClient {
                redirect_uris: vec!["https://evil.example/cb".into()],
                client_name: None,
                issued_at: 0,
            },
            None,
        );
        assert!(server.clients.resolve(&server.keys, &other).await.is_err());
        assert!(
            server
                .clients
                .resolve(&server.keys, "my-client")
                .await
                .is_err()
        );

        let bad = test_support::http()
            .post(format!("{}/oauth/register", served.base))
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = bad.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client_metadata");
    }

    /// Serves `doc(url)` at `<loopback>/client.json`; returns the URL.
    async fn serve_document(
        doc: impl Fn(&str) -> serde_json::Value,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/client.json", listener.local_addr().unwrap());
        let body = doc(&url);
        let router = axum::Router::new().route(
            "/client.json",
            axum::routing::get(move || {
                let body = body.clone();
                async move { Json(body) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (url, task)
    }

    #[tokio::test]
    async fn cached_metadata_documents_are_bounded_by_bytes_not_count() {
        // 200 documents of ~50 KB each (10 MB), as anyone could make the
        // gateway fetch by naming them, without logging in.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/c/{n}",
            axum::routing::get(
                move |axum::extract::Path(n): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap| async move {
                    let host = headers["host"].to_str().unwrap().to_string();
                    let uris: Vec<String> = (0..500)
                        .map(|i| format!("http://127.0.0.1:3000/callback/{i:0>80}"))
                        .collect();
                    Json(serde_json::json!({
                        "client_id": format!("http://{host}/c/{n}"),
                        "redirect_uris": uris,
                    }))
                },
            ),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let keys = SealingKeys::ephemeral();
        let directory = ClientDirectory::new(reqwest::Client::new(), true);
        for n in 0..200 {
            let client = directory.resolve(&keys, &format!("{base}/c/{n}")).await;
            assert_eq!(client.expect("resolves").redirect_uris.len(), 500);
        }
        directory.documents.run_pending_tasks().await;
        let one = 500 * 100;
        assert!(
            directory.documents.weighted_size() <= MAX_CACHED_DOCUMENT_BYTES,
            "{}",
            directory.documents.weighted_size()
        );
        assert!(
            directory.documents.entry_count() <= MAX_CACHED_DOCUMENT_BYTES / one + 1,
            "{} documents kept",
            directory.documents.entry_count()
        );
        server.abort();
    }

    #[tokio::test]
    async fn metadata_documents_must_name_themselves_and_list_the_redirect() {
        let keys = SealingKeys::ephemeral();
        let strict = ClientDirectory::new(reqwest::Client::new(), false);
        let lenient = ClientDirectory::new(reqwest::Client::new(), true);

        let (url, task) = serve_document(|url| {
            serde_json::json!({
                "client_id": url,
                "client_name": "Doc client",
                "redirect_uris": ["http://127.0.0.1:3000/callback"],
            })
        })
        .await;
        // Plain http only from loopback, and only when allowed.
        let err = strict.resolve(&keys, &url).await.unwrap_err();
        assert!(err.contains("https"), "{err}");
        let client = lenient.resolve(&keys, &url).await.unwrap();
        assert_eq!(client.name.as_deref(), Some("Doc client"));
        assert!(redirect_matches(
            &client.redirect_uris[0],
            "http://127.0.0.1:4000/callback"
        ));
        task.abort();

        let (url, task) = serve_document(|_| {
            serde_json::json!({
                "client_id": "https://someone-else.example/client.json",
                "redirect_uris": ["http://127.0.0.1:3000/callback"],
            })
        })
        .await;
        let err = lenient.resolve(&keys, &url).await.unwrap_err();
        assert!(err.contains("differs from the URL"), "{err}");
        task.abort();

        let (url, task) = serve_document(|url| {
            serde_json::json!({
                "client_id": url,
                "redirect_uris": ["http://127.0.0.1:3000/callback"],
                "token_endpoint_auth_method": "client_secret_basic",
            })
        })
        .await;
        let err = lenient.resolve(&keys, &url).await.unwrap_err();
        assert!(err.contains("public clients"), "{err}");
        task.abort();

        // Not metadata: a generic error, nothing of the remote's shape.
        let (url, task) =
            serve_document(|_| serde_json::json!({"secret_field": 1, "n": [1, 2]})).await;
        let err = lenient.resolve(&keys, &url).await.unwrap_err();
        assert!(err.contains("not a client metadata document"), "{err}");
        assert!(
            !err.contains("line") && !err.contains("missing field"),
            "{err}"
        );
        task.abort();

        let err = lenient
            .resolve(&keys, "https://app.example/")
            .await
            .unwrap_err();
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn client_names_lose_bidi_and_control_characters() {
        assert_eq!(
            shown_name("Good \u{202E}elpmaxe.live\u{202C} app\n").as_deref(),
            Some("Good elpmaxe.live app")
        );
        assert_eq!(shown_name("\u{2066}\u{200F} ").as_deref(), None);
        assert_eq!(shown_name("Claude").as_deref(), Some("Claude"));
    }
}
