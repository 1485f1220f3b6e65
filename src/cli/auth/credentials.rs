//! The credential store: `credentials.json` in the flotilla config directory
//! (FLOTILLA_CONFIG_DIR, else the user config dir's `flotilla/`), holding per
//! endpoint the OAuth client and tokens. The file is 0600 in a 0700
//! directory, replaced atomically (0600 temp file + rename), and every
//! read-modify-write holds an advisory lock on `credentials.lock`, so two
//! logins to different gateways at once both survive.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
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
    fn a_corrupt_file_says_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().to_path_buf());
        fs::write(store.path(), "{\"endpoints\": 7}").unwrap();
        let error = format!("{:#}", store.load().unwrap_err());
        assert!(error.contains("remove it and log in again"), "{error}");
    }
}
