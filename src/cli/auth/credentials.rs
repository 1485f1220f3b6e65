//! The credential store: `credentials.json` in the flotilla config directory
//! (FLOTILLA_CONFIG_DIR, else the user config dir's `flotilla/`), holding per
//! endpoint the OAuth client and tokens. The file is 0600 in a 0700
//! directory, replaced atomically (0600 temp file + rename), and every
//! read-modify-write holds an advisory lock on `credentials.lock`, so two
//! logins to different gateways at once both survive.
//!
//! [`EndpointStore`] is one endpoint's login seen as rmcp's
//! `CredentialStore`, through which rmcp's `AuthorizationManager` saves what
//! the code exchange and a refresh return. The file keeps its format (an
//! expiry instant rather than rmcp's "received at" plus "expires in"), so
//! files written before the switch to rmcp read as they are.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, TokenResponse as _};
use rmcp::transport::auth::{
    AuthError, CredentialRefreshGuard, CredentialStore, OAuthTokenResponse, StoredCredentials,
    VendorExtraTokenFields,
};
use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "credentials.json";
const LOCK_NAME: &str = "credentials.lock";

/// What `credentials.json` holds:
///
/// ```json
/// {
///   "last_endpoint": "http://127.0.0.1:8080/mcp",
///   "endpoints": {
///     "http://127.0.0.1:8080/mcp": {
///       "client_id": "...",
///       "token_endpoint": "http://127.0.0.1:8080/oauth/token",
///       "access_token": "...",
///       "refresh_token": "...",
///       "expires_at": "2030-01-02T03:04:05Z",
///       "issuer": "http://127.0.0.1:8080",
///       "resource": "http://127.0.0.1:8080/mcp"
///     }
///   }
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Credentials {
    /// The endpoint of the last login: the default for the next command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_endpoint: Option<String>,
    /// Endpoint (the gateway's MCP URL) → its login.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointCredentials>,
}

/// One gateway's login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct EndpointCredentials {
    /// The client the CLI registered at the authorization server (public, no secret).
    pub client_id: String,
    pub token_endpoint: String,
    pub access_token: Token,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Token>,
    /// When the access token expires (RFC 3339); unknown when the server did
    /// not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The authorization server's issuer identifier.
    pub issuer: String,
    /// The RFC 8707 resource the tokens are for (sent again on refresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// A token as stored: serialized as the plain string, but `{:?}` prints
/// `<redacted>`, so a credential can be debug-printed or logged safely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Token(String);

impl Token {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the credentials live.
#[derive(Clone, Debug)]
pub(super) struct Store {
    dir: PathBuf,
}

/// Holds the store's lock until dropped (closing the file releases it).
pub(super) struct StoreLock {
    store: Store,
    _file: File,
}

impl Store {
    /// FLOTILLA_CONFIG_DIR if set, else `<config dir>/flotilla`.
    pub fn from_env() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("FLOTILLA_CONFIG_DIR").filter(|d| !d.is_empty()) {
            return Ok(Self::at(PathBuf::from(dir)));
        }
        let base = dirs::config_dir().context(
            "cannot tell where your config directory is; set FLOTILLA_CONFIG_DIR to a directory for flotilla's credentials",
        )?;
        Ok(Self::at(base.join("flotilla")))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the credentials without locking (the file is only ever replaced
    /// whole, so a read sees one version). No file reads as empty.
    pub fn load(&self) -> anyhow::Result<Credentials> {
        read_file(&self.path())
    }

    /// Takes the store's exclusive lock, creating the directory (0700) first.
    /// Blocks while another flotilla process holds it.
    pub fn lock(&self) -> anyhow::Result<StoreLock> {
        ensure_private_dir(&self.dir)?;
        let path = self.dir.join(LOCK_NAME);
        let file = private_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(StoreLock {
            store: self.clone(),
            _file: file,
        })
    }

    /// [`Store::lock`] off the async runtime's threads.
    pub async fn lock_async(&self) -> anyhow::Result<StoreLock> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.lock())
            .await
            .context("the credential lock task failed")?
    }

    /// Locked read-modify-write: applies `change` to the current contents
    /// and saves the result.
    pub fn update<T>(&self, change: impl FnOnce(&mut Credentials) -> T) -> anyhow::Result<T> {
        let lock = self.lock()?;
        let mut credentials = lock.load()?;
        let answer = change(&mut credentials);
        lock.save(&credentials)?;
        Ok(answer)
    }

    /// [`Store::update`] off the async runtime's threads.
    pub async fn update_async<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Credentials) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.update(change))
            .await
            .context("the credential update task failed")?
    }
}

impl StoreLock {
    pub fn load(&self) -> anyhow::Result<Credentials> {
        self.store.load()
    }

    /// Replaces the file with `credentials`, or removes it when no endpoint is left.
    pub fn save(&self, credentials: &Credentials) -> anyhow::Result<()> {
        let path = self.store.path();
        if credentials.endpoints.is_empty() {
            return match fs::remove_file(&path) {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    Err(error).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        let text = serde_json::to_vec_pretty(credentials).context("cannot encode credentials")?;
        write_atomically(&self.store.dir, &path, &text)
    }
}

/// One endpoint's login as rmcp's credential store. What rmcp does not
/// carry (the token endpoint and the resource, needed to refresh without a
/// new discovery) comes from here.
pub(super) struct EndpointStore {
    store: Store,
    endpoint: String,
    token_endpoint: String,
    resource: Option<String>,
    /// A login makes its endpoint the default for the next command; a
    /// refresh does not.
    make_default: bool,
    /// The store's lock when the caller holds it (a renewal, which checks
    /// under it whether another process renewed first): rmcp's load, its
    /// refresh and its save then all happen under that one lock.
    held: Option<Arc<StoreLock>>,
}

impl EndpointStore {
    /// For a login to `endpoint`: saving the tokens makes it the default.
    pub fn for_login(
        store: &Store,
        endpoint: &str,
        token_endpoint: &str,
        resource: Option<String>,
    ) -> Self {
        Self {
            store: store.clone(),
            endpoint: endpoint.to_string(),
            token_endpoint: token_endpoint.to_string(),
            resource,
            make_default: true,
            held: None,
        }
    }

    /// For renewing `login` while the caller holds `lock`.
    pub fn for_renewal(lock: Arc<StoreLock>, endpoint: &str, login: &EndpointCredentials) -> Self {
        Self {
            store: lock.store.clone(),
            endpoint: endpoint.to_string(),
            token_endpoint: login.token_endpoint.clone(),
            resource: login.resource.clone(),
            make_default: false,
            held: Some(lock),
        }
    }

    /// Applies `change` to the whole file, under the held lock or a new one.
    async fn change(
        &self,
        change: impl FnOnce(&mut Credentials) + Send + 'static,
    ) -> anyhow::Result<()> {
        match &self.held {
            Some(lock) => {
                let mut credentials = lock.load()?;
                change(&mut credentials);
                lock.save(&credentials)
            }
            None => self.store.update_async(change).await,
        }
    }
}

fn store_error(error: anyhow::Error) -> AuthError {
    AuthError::CredentialStoreError(format!("{error:#}"))
}

#[async_trait::async_trait]
impl CredentialStore for EndpointStore {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        let credentials = match &self.held {
            Some(lock) => lock.load(),
            None => self.store.load(),
        }
        .map_err(store_error)?;
        Ok(credentials
            .endpoints
            .get(&self.endpoint)
            .map(|login| to_rmcp(login, Utc::now())))
    }

    async fn save(&self, stored: StoredCredentials) -> Result<(), AuthError> {
        let Some(login) = from_rmcp(&stored, &self.token_endpoint, &self.resource, Utc::now())
        else {
            // rmcp saves no tokens only to drop them (another issuer).
            return self.clear().await;
        };
        let key = self.endpoint.clone();
        let make_default = self.make_default;
        self.change(move |credentials| {
            if make_default {
                credentials.last_endpoint = Some(key.clone());
            }
            credentials.endpoints.insert(key, login);
        })
        .await
        .map_err(store_error)
    }

    async fn clear(&self) -> Result<(), AuthError> {
        let key = self.endpoint.clone();
        self.change(move |credentials| {
            credentials.endpoints.remove(&key);
        })
        .await
        .map_err(store_error)
    }

    async fn acquire_refresh_guard(&self) -> Result<Option<CredentialRefreshGuard>, AuthError> {
        if self.held.is_some() {
            // The caller holds the lock; taking it again would wait for ever.
            return Ok(None);
        }
        let lock = self.store.lock_async().await.map_err(store_error)?;
        Ok(Some(CredentialRefreshGuard::new(lock)))
    }
}

/// A stored login as rmcp's credentials: received now, expiring in what is
/// left of its lifetime (none left: zero).
fn to_rmcp(login: &EndpointCredentials, now: DateTime<Utc>) -> StoredCredentials {
    let mut tokens = OAuthTokenResponse::new(
        AccessToken::new(login.access_token.expose().to_string()),
        BasicTokenType::Bearer,
        VendorExtraTokenFields::default(),
    );
    tokens.set_refresh_token(
        login
            .refresh_token
            .as_ref()
            .map(|token| RefreshToken::new(token.expose().to_string())),
    );
    let left = login
        .expires_at
        .map(|at| (at - now).to_std().unwrap_or_default());
    tokens.set_expires_in(left.as_ref());
    let received_at = u64::try_from(now.timestamp()).ok();
    StoredCredentials::new(
        login.client_id.clone(),
        Some(tokens),
        Vec::new(),
        received_at,
    )
    .with_issuer(Some(login.issuer.clone()))
}

/// rmcp's credentials as a stored login; `None` when they hold no tokens.
fn from_rmcp(
    stored: &StoredCredentials,
    token_endpoint: &str,
    resource: &Option<String>,
    now: DateTime<Utc>,
) -> Option<EndpointCredentials> {
    let tokens = stored.token_response.as_ref()?;
    let received_at = stored
        .token_received_at
        .and_then(|at| DateTime::from_timestamp(i64::try_from(at).ok()?, 0))
        .unwrap_or(now);
    Some(EndpointCredentials {
        client_id: stored.client_id.clone(),
        token_endpoint: token_endpoint.to_string(),
        access_token: Token::new(tokens.access_token().secret().clone()),
        refresh_token: tokens
            .refresh_token()
            .map(|token| Token::new(token.secret().clone())),
        expires_at: tokens
            .expires_in()
            .and_then(|lifetime| expiry(received_at, lifetime)),
        issuer: stored.issuer.clone().unwrap_or_default(),
        resource: resource.clone(),
    })
}

fn read_file(path: &Path) -> anyhow::Result<Credentials> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Credentials::default()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    // Tokens sit where strings are expected, so a type error never quotes one.
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a flotilla credentials file; remove it and log in again",
            path.display()
        )
    })
}

/// Writes `text` to a 0600 temp file beside `path`, then renames it over `path`.
fn write_atomically(dir: &Path, path: &Path, text: &[u8]) -> anyhow::Result<()> {
    let temp = dir.join(format!(
        ".{FILE_NAME}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut file = private_options().write(true).create_new(true).open(&temp)?;
        file.write_all(text)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error).with_context(|| format!("cannot write {}", path.display()));
    }
    // Make the rename durable; not all file systems allow syncing a directory.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Open options that create files readable by the owner only.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
}

/// Creates `dir` (0700) if needed, and takes group and world access away
/// from an existing one.
fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "{} is open to other users and cannot be made private (chmod 700 it)",
                    dir.display()
                )
            })?;
        }
    }
    Ok(())
}

/// `now + lifetime`, to the second.
fn expiry(now: DateTime<Utc>, lifetime: std::time::Duration) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(lifetime.as_secs()).ok()?;
    DateTime::from_timestamp(now.timestamp().checked_add(seconds)?, 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn login(token: &str) -> EndpointCredentials {
        EndpointCredentials {
            client_id: "client-1".into(),
            token_endpoint: "http://127.0.0.1:8080/oauth/token".into(),
            access_token: Token::new(format!("access-{token}")),
            refresh_token: Some(Token::new(format!("refresh-{token}"))),
            expires_at: Some("2030-01-02T03:04:05Z".parse().unwrap()),
            issuer: "http://127.0.0.1:8080".into(),
            resource: Some("http://127.0.0.1:8080/mcp".into()),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn credentials_file_is_0600_in_a_0700_dir_and_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("nested").join("flotilla"));
        store
            .update(|creds| {
                creds.last_endpoint = Some("http://gw/mcp".into());
                creds.endpoints.insert("http://gw/mcp".into(), login("a"));
            })
            .unwrap();
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(&store.dir), 0o700);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.last_endpoint.as_deref(), Some("http://gw/mcp"));
        assert_eq!(loaded.endpoints["http://gw/mcp"], login("a"));
        // RFC 3339 on disk, and nothing but the file and its lock left behind.
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(
            text.contains("\"expires_at\": \"2030-01-02T03:04:05Z\""),
            "{text}"
        );
        let mut names: Vec<_> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [FILE_NAME, LOCK_NAME]);
    }

    #[test]
    fn an_existing_open_directory_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("flotilla");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Store::at(dir.clone())
            .update(|creds| creds.endpoints.insert("e".into(), login("a")))
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn missing_file_loads_empty_and_the_file_goes_when_the_last_login_does() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().to_path_buf());
        assert_eq!(store.load().unwrap(), Credentials::default());
        store
            .update(|creds| creds.endpoints.insert("e".into(), login("a")))
            .unwrap();
        assert!(store.path().exists());
        store.update(|creds| creds.endpoints.remove("e")).unwrap();
        assert!(!store.path().exists());
    }

    #[test]
    fn concurrent_saves_of_two_endpoints_both_survive() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("flotilla"));
        let writers: Vec<_> = ["http://a/mcp", "http://b/mcp"]
            .into_iter()
            .map(|endpoint| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for round in 0..25 {
                        store
                            .update(|creds| {
                                creds.last_endpoint = Some(endpoint.into());
                                creds
                                    .endpoints
                                    .insert(endpoint.into(), login(&format!("{endpoint}-{round}")));
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let loaded = store.load().unwrap();
        assert_eq!(loaded.endpoints.len(), 2);
        assert_eq!(loaded.endpoints["http://a/mcp"], login("http://a/mcp-24"));
        assert_eq!(loaded.endpoints["http://b/mcp"], login("http://b/mcp-24"));
        assert_eq!(mode(&store.path()), 0o600);
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let text = format!("{:?}", login("s3cr3t"));
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn a_login_converts_to_rmcps_credentials_and_back() {
        let now: DateTime<Utc> = "2030-01-02T02:04:05Z".parse().unwrap();
        let stored = to_rmcp(&login("a"), now);
        assert_eq!(stored.client_id, "client-1");
        assert_eq!(stored.issuer.as_deref(), Some("http://127.0.0.1:8080"));
        let tokens = stored.token_response.as_ref().unwrap();
        assert_eq!(tokens.access_token().secret(), "access-a");
        assert_eq!(tokens.refresh_token().unwrap().secret(), "refresh-a");
        assert_eq!(
            tokens.expires_in(),
            Some(std::time::Duration::from_secs(3600))
        );
        let back = from_rmcp(
            &stored,
            "http://127.0.0.1:8080/oauth/token",
            &Some("http://127.0.0.1:8080/mcp".into()),
            now,
        );
        assert_eq!(back, Some(login("a")));
        // An expired login has no time left, not a negative lifetime.
        let mut expired = login("b");
        expired.expires_at = Some("2030-01-01T00:00:00Z".parse().unwrap());
        let stored = to_rmcp(&expired, now);
        assert_eq!(
            stored.token_response.as_ref().unwrap().expires_in(),
            Some(std::time::Duration::ZERO)
        );
        assert!(!format!("{stored:?}").contains("access-b"));
    }

    #[tokio::test]
    async fn rmcps_saves_keep_the_file_format_and_other_logins() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("flotilla"));
        store
            .update(|creds| {
                creds
                    .endpoints
                    .insert("http://other/mcp".into(), login("o"))
            })
            .unwrap();
        let endpoint = EndpointStore::for_login(
            &store,
            "http://gw/mcp",
            "http://127.0.0.1:8080/oauth/token",
            Some("http://127.0.0.1:8080/mcp".into()),
        );
        let now = Utc::now();
        endpoint.save(to_rmcp(&login("a"), now)).await.unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.last_endpoint.as_deref(), Some("http://gw/mcp"));
        assert_eq!(loaded.endpoints["http://other/mcp"], login("o"));
        let saved = &loaded.endpoints["http://gw/mcp"];
        assert_eq!(saved.access_token.expose(), "access-a");
        assert_eq!(saved.resource.as_deref(), Some("http://127.0.0.1:8080/mcp"));
        assert_eq!(mode(&store.path()), 0o600);
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains("token_response"), "{text}");
        assert!(endpoint.load().await.unwrap().is_some());
        endpoint.clear().await.unwrap();
        assert!(endpoint.load().await.unwrap().is_none());
        assert!(
            store
                .load()
                .unwrap()
                .endpoints
                .contains_key("http://other/mcp")
        );

        // A renewal saves under the lock its caller holds, and leaves the default alone.
        store
            .update(|creds| {
                creds.last_endpoint = Some("http://other/mcp".into());
                creds.endpoints.insert("http://gw/mcp".into(), login("a"))
            })
            .unwrap();
        let lock = Arc::new(store.lock().unwrap());
        let renewal = EndpointStore::for_renewal(lock.clone(), "http://gw/mcp", &login("a"));
        assert!(renewal.acquire_refresh_guard().await.unwrap().is_none());
        renewal.save(to_rmcp(&login("b"), now)).await.unwrap();
        drop(renewal);
        drop(lock);
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded.endpoints["http://gw/mcp"].access_token.expose(),
            "access-b"
        );
        assert_eq!(loaded.last_endpoint.as_deref(), Some("http://other/mcp"));
    }

    #[test]
    fn a_corrupt_file_says_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().to_path_buf());
        fs::write(store.path(), "{\"endpoints\": 7}").unwrap();
        let error = format!("{:#}", store.load().unwrap_err());
        assert!(error.contains("remove it and log in again"), "{error}");
    }

    #[test]
    fn expiry_is_now_plus_lifetime_to_the_second() {
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let now = at("2030-01-01T12:00:00.700Z");
        assert_eq!(
            expiry(now, std::time::Duration::from_secs(3600)),
            Some(at("2030-01-01T13:00:00Z"))
        );
        assert_eq!(expiry(now, std::time::Duration::from_secs(u64::MAX)), None);
    }
}
