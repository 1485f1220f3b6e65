//! The gateway as its MCP clients' OAuth authorization server, fronting the
//! central OIDC provider, and bearer validation for `/mcp`.
//!
//! # Design
//!
//! Stateless: no database, nothing in memory that a login depends on, so
//! logins survive restarts and work on every replica without stickiness.
//! Whatever the gateway must remember travels *sealed* ([`crate::auth::inbound::seal`]:
//! AES-256-GCM, the token's purpose as AAD, keys from `sealingKeyFile`) inside
//! the very strings it hands out:
//!
//! | token | sealed content | lifetime |
//! |---|---|---|
//! | DCR `client_id` | redirect URIs, client name, issue time | until its key is rotated out |
//! | provider `state` | the client's request (client, redirect URI, state, PKCE challenge), the gateway's own PKCE verifier and nonce | 10 min |
//! | consent form | the client's request, digest of a browser cookie | 10 min |
//! | authorization code | user claims, provider ID token and refresh token, client, redirect URI, PKCE challenge | 60 s |
//! | access token | user key and name, provider ID token, audience `<public>/mcp`, client | `accessTokenLifetimeSeconds` (3600), capped by the ID token's expiry |
//! | refresh token | user key and name, provider refresh token, client | `refreshTokenLifetimeSeconds` (30 days) |
//!
//! Provider tokens live only inside sealed gateway tokens; an MCP client never
//! sees them in clear. Clients are public (PKCE S256 required, no secrets):
//! dynamically registered ones carry their registration in their `client_id`;
//! a `client_id` that is an https URL is a Client ID Metadata Document, fetched
//! and cached for 5 minutes.
//!
//! Flow: `/oauth/authorize` checks the client and its redirect URI, asks the
//! user's consent when the redirect URI is not on loopback (a proxy with one
//! static client at the provider must, or any registered client could collect
//! codes from a user with a live provider session), then redirects to the
//! provider with the gateway's own PKCE and nonce. `/oauth/callback` exchanges
//! the provider's code, verifies the ID token and redirects to the client with
//! a sealed code (and RFC 9207 `iss`). `/oauth/token` turns codes and refresh
//! tokens into sealed access/refresh token pairs. `/oauth/revoke` (RFC 7009)
//! ends a login by revoking the provider refresh token sealed in it.
//!
//! Replay: a code is single-use per replica (a short-lived set of used-code
//! digests); across replicas a replay within its 60 s also needs the PKCE
//! verifier. Refresh tokens rotate: each refresh spends the provider refresh
//! token inside at the provider, which rotates it, so replaying an old gateway
//! refresh token fails at the provider (within the provider's reuse grace,
//! e.g. Dex's 30 s `reuseInterval`, a replay still succeeds; a provider that
//! does not rotate gives no replay protection; one that detects reuse, like
//! oidc-provider, also ends the session). Revocation is at the provider (the
//! next refresh fails; `/oauth/revoke` does it for a client) or by removing
//! a sealing key (everything it sealed dies).
//!
//! Limitations: access tokens cannot be revoked before they expire; a client
//! registered dynamically becomes unknown when the key that sealed its id is
//! removed (it must register again); Client ID Metadata Documents are fetched
//! from any https host the client names (no SSRF allow-list); scopes that the
//! login adds later (`extra_login_scopes`) reach a user's tokens only at their
//! next login, not at refresh; the routes assume `public_url` has no path;
//! codes and access tokens embed the provider's ID token, so they are about
//! 1.5 KB plus the ID token's size (large `groups` claims make large tokens).
//!
//! Submodules: `metadata` (RFC 9728 / RFC 8414 documents), `clients`
//! (registration, metadata documents, redirect-URI rules), `login`
//! (authorize, consent, callback), `provider` (the central OIDC provider),
//! `token` (the token endpoint and PKCE), `payloads` (what travels
//! sealed), `bearer` (`/mcp` bearer validation and the 401), `errors`
//! (OAuth error responses).

mod bearer;
mod clients;
mod errors;
mod login;
mod metadata;
mod payloads;
mod provider;
mod revoke;
pub mod seal;
mod token;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};

use super::UserIdentity;
use super::jwks::JwksCache;
use super::settings::{AuthConfig, TrustedIssuerConfig};
use clients::ClientDirectory;
use provider::Provider;
use seal::SealingKeys;

/// Default scopes requested at the provider.
const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
const DEFAULT_ACCESS_LIFETIME: Duration = Duration::from_secs(3600);
const DEFAULT_REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// What [`AuthServer::start`] needs.
pub struct AuthServerOptions {
    /// The `auth:` section.
    pub config: AuthConfig,
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`; the MCP endpoint is `<public_url>/mcp`.
    pub public_url: url::Url,
    pub http: reqwest::Client,
    /// Scopes added to the provider scopes at each login (e.g.
    /// `audience:server:client_id:<aud>` for forwardToken servers).
    pub extra_login_scopes: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Called whenever the token endpoint issues tokens (code or refresh
    /// grant), to warm the user's downstream sessions.
    pub on_login: Arc<dyn Fn(Arc<UserIdentity>) + Send + Sync>,
    /// The gateway's sealing keys when it loaded them already (they seal
    /// its client session ids too); `None`: from `config.sealingKeyFile`.
    pub keys: Option<Arc<SealingKeys>>,
}

/// Why `/mcp` refused a request. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(
        "no bearer token: log in through your MCP client (OAuth) or send `Authorization: Bearer <token>`"
    )]
    Missing,
    #[error("{0}")]
    Invalid(String),
    #[error("the access token has expired: refresh it or log in again")]
    Expired,
    /// The token could not be checked now (its issuer's keys are out of
    /// reach and none are cached): a 503 to retry, not a 401 to log in again.
    #[error("{0}")]
    Unavailable(String),
}

/// The gateway's own URLs, derived from `public_url`.
#[derive(Clone, Debug)]
pub(crate) struct Urls {
    /// `public_url` without a trailing slash: the issuer identifier.
    pub issuer: String,
    /// `<issuer>/mcp`: the protected resource and the audience of access tokens.
    pub resource: String,
    pub resource_metadata: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub registration_endpoint: String,
    pub revocation_endpoint: String,
    pub callback: String,
    /// Cookies get `Secure` when the gateway is served over https.
    pub https: bool,
}

impl Urls {
    fn new(public_url: &url::Url) -> Self {
        let issuer = public_url.as_str().trim_end_matches('/').to_string();
        Self {
            resource: format!("{issuer}/mcp"),
            resource_metadata: format!("{issuer}/.well-known/oauth-protected-resource/mcp"),
            authorization_endpoint: format!("{issuer}/oauth/authorize"),
            token_endpoint: format!("{issuer}/oauth/token"),
            registration_endpoint: format!("{issuer}/oauth/register"),
            revocation_endpoint: format!("{issuer}/oauth/revoke"),
            callback: format!("{issuer}/oauth/callback"),
            https: public_url.scheme() == "https",
            issuer,
        }
    }

    /// True for a RFC 8707 `resource` that names this gateway.
    fn is_own_resource(&self, resource: &str) -> bool {
        let resource = resource.trim_end_matches('/');
        resource == self.resource || resource == self.issuer
    }
}

/// Whether two issuer URLs name the same issuer (a trailing `/` aside).
pub(crate) fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The authorization server and bearer validator.
pub struct AuthServer {
    urls: Urls,
    keys: Arc<SealingKeys>,
    /// `None` without `auth.oidc`: only trusted issuers' JWTs are accepted.
    provider: Option<Provider>,
    clients: ClientDirectory,
    jwks: JwksCache,
    trusted_issuers: Vec<TrustedIssuerConfig>,
    /// The provider's issuer and the gateway's client there: ID tokens
    /// issued to that client are what `forwardToken` hands downstream, and
    /// are never accepted back at `/mcp`.
    login_client: Option<(String, String)>,
    /// Scopes requested at the provider (configured or default), without the extras.
    scopes: Vec<String>,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
    used_codes: token::UsedCodes,
    extra_login_scopes: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    on_login: Arc<dyn Fn(Arc<UserIdentity>) + Send + Sync>,
}

impl AuthServer {
    /// Loads the sealing keys and prepares the provider (discovered lazily:
    /// a provider that is down now does not stop the gateway).
    pub async fn start(options: AuthServerOptions) -> anyhow::Result<Arc<Self>> {
        let config = options.config;
        let keys = match (options.keys, &config.sealing_key_file) {
            (Some(keys), _) => keys,
            (None, Some(path)) => {
                Arc::new(SealingKeys::load(path).context("loading auth.sealingKeyFile")?)
            }
            (None, None) => {
                tracing::warn!(
                    "auth.sealingKeyFile is not set: sealing tokens with a random key, so logins \
                     will not survive a restart and other replicas will not accept them"
                );
                Arc::new(SealingKeys::ephemeral())
            }
        };
        let urls = Urls::new(&options.public_url);
        let login_client = config
            .oidc
            .as_ref()
            .map(|oidc| (oidc.issuer.clone(), oidc.client_id.clone()));
        if let Some((issuer, client_id)) = &login_client
            && let Some(trusted) = config.trusted_issuers.iter().find(|t| {
                same_issuer(&t.issuer, issuer) && t.audiences.iter().any(|a| a == client_id)
            })
        {
            anyhow::bail!(
                "auth.trustedIssuers: issuer {:?} with audience {client_id:?} would accept the ID tokens the gateway itself obtains at login and forwards to servers with forwardToken, so any such server could act as the user here; give machine clients their own audience (e.g. {:?})",
                trusted.issuer,
                format!("{client_id}-api")
            );
        }
        let provider = match &config.oidc {
            Some(oidc) => Some(
                Provider::new(oidc, &urls.callback, options.http.clone())
                    .context("setting up auth.oidc")?,
            ),
            None => None,
        };
        let scopes = config
            .oidc
            .as_ref()
            .and_then(|oidc| oidc.scopes.clone())
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        let seconds = |value: Option<u64>, default: Duration| {
            value
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .unwrap_or(default)
        };
        let server = Self {
            clients: ClientDirectory::new(
                options.http.clone(),
                config.allow_loopback_http_client_metadata.unwrap_or(false),
            ),
            jwks: JwksCache::new(options.http.clone()),
            trusted_issuers: config.trusted_issuers.clone(),
            login_client,
            access_lifetime: seconds(
                config.access_token_lifetime_seconds,
                DEFAULT_ACCESS_LIFETIME,
            ),
            refresh_lifetime: seconds(
                config.refresh_token_lifetime_seconds,
                DEFAULT_REFRESH_LIFETIME,
            ),
            used_codes: token::UsedCodes::new(),
            extra_login_scopes: options.extra_login_scopes,
            on_login: options.on_login,
            scopes,
            provider,
            keys,
            urls,
        };
        if let Some(provider) = &server.provider {
            tracing::info!(
                issuer = %provider.issuer(),
                resource = %server.urls.resource,
                ephemeral_keys = server.keys.is_ephemeral(),
                "authorization server ready (provider discovered at first login)"
            );
        }
        Ok(Arc::new(server))
    }

    /// The metadata documents and, with `auth.oidc`, the OAuth endpoints.
    pub fn routes(self: &Arc<Self>) -> Router {
        // Fetched by browser-based clients too: these answer cross-origin requests.
        let mut api = Router::new()
            .route(
                "/.well-known/oauth-protected-resource",
                get(metadata::protected_resource),
            )
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(metadata::protected_resource),
            );
        // Browser navigations: no CORS.
        let mut pages = Router::new();
        if self.provider.is_some() {
            api = api
                .route(
                    "/.well-known/oauth-authorization-server",
                    get(metadata::authorization_server),
                )
                .route("/oauth/register", post(clients::register))
                .route("/oauth/token", post(token::token))
                .route("/oauth/revoke", post(revoke::revoke));
            pages = pages
                .route(
                    "/oauth/authorize",
                    get(login::authorize).post(login::consent),
                )
                .route("/oauth/callback", get(login::callback));
        }
        api.layer(axum::middleware::from_fn(metadata::cors))
            .merge(pages)
            .with_state(self.clone())
    }

    /// Who is calling `/mcp`, from its `Authorization: Bearer` header.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<UserIdentity>, Rejection> {
        bearer::authenticate(self, headers).await
    }

    /// The 401 for a rejected `/mcp` request, pointing at the resource metadata.
    pub fn unauthorized(&self, rejection: &Rejection) -> axum::response::Response {
        bearer::unauthorized(&self.urls, &self.scopes, rejection)
    }

    /// Scopes requested at the provider for one login: configured plus extras, deduplicated.
    fn login_scopes(&self) -> Vec<String> {
        let mut scopes = self.scopes.clone();
        for extra in (self.extra_login_scopes)() {
            if !scopes.contains(&extra) {
                scopes.push(extra);
            }
        }
        scopes
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A server wired to nothing real, for the unit tests of the submodules.

    use super::*;
    use crate::auth::settings::OidcConfig;

    pub fn options(oidc: bool) -> AuthServerOptions {
        AuthServerOptions {
            config: AuthConfig {
                oidc: oidc.then(|| OidcConfig {
                    // Nothing listens here; discovery is lazy and never reached by these tests.
                    issuer: "http://127.0.0.1:9/issuer".into(),
                    client_id: "flotilla".into(),
                    client_secret_file: None,
                    scopes: None,
                }),
                ..AuthConfig::default()
            },
            public_url: url::Url::parse("http://gw.test:8080").expect("a valid URL"),
            http: reqwest::Client::new(),
            extra_login_scopes: Arc::new(|| vec!["audience:server:client_id:k8s".into()]),
            on_login: Arc::new(|_| {}),
            keys: None,
        }
    }

    pub async fn server() -> Arc<AuthServer> {
        AuthServer::start(options(true))
            .await
            .expect("the test server starts")
    }

    /// A router served on 127.0.0.1:0 until dropped.
    pub struct Served {
        pub base: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn serve(router: Router) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test port");
        let addr = listener.local_addr().expect("the bound address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Served {
            base: format!("http://{addr}"),
            task,
        }
    }

    /// A client that shows redirects instead of following them.
    pub fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_succeeds_while_the_provider_is_unreachable() {
        let server = test_support::server().await;
        assert!(server.keys.is_ephemeral());
        assert_eq!(server.urls.resource, "http://gw.test:8080/mcp");
        assert_eq!(server.access_lifetime, DEFAULT_ACCESS_LIFETIME);
    }

    #[tokio::test]
    async fn start_fails_on_an_unreadable_sealing_key_file() {
        let mut options = test_support::options(true);
        options.config.sealing_key_file = Some("/nonexistent/flotilla-keys".into());
        let err = AuthServer::start(options).await.err().expect("start fails");
        assert!(format!("{err:#}").contains("sealingKeyFile"), "{err:#}");
    }

    #[tokio::test]
    async fn login_scopes_add_the_extras_once() {
        let server = test_support::server().await;
        assert_eq!(
            server.login_scopes(),
            [
                "openid",
                "profile",
                "email",
                "offline_access",
                "audience:server:client_id:k8s"
            ]
        );
    }

    #[test]
    fn own_resource_accepts_the_endpoint_and_the_base() {
        let urls = Urls::new(&url::Url::parse("https://gw.example/").unwrap());
        assert!(urls.is_own_resource("https://gw.example/mcp"));
        assert!(urls.is_own_resource("https://gw.example/mcp/"));
        assert!(urls.is_own_resource("https://gw.example"));
        assert!(!urls.is_own_resource("https://other.example/mcp"));
        assert!(urls.https);
    }
}
