//! Authenticated encryption of the gateway's own tokens (client ids, login
//! state, codes, access and refresh tokens), so the gateway keeps no token
//! store: whatever it must remember travels sealed in the token itself.
//!
//! Format: `fla.<key id>.<base64url(nonce | ciphertext | tag)>`, AES-256-GCM
//! with a random 96-bit nonce. The additional authenticated data is the
//! token's [`Purpose`], so a token sealed for one purpose (say, an
//! authorization code) never unseals as another (an access token). The key id
//! is derived from the key (not its position in the file), so adding or
//! reordering keys keeps old tokens readable. The sealed JSON carries an
//! optional expiry that [`SealingKeys::unseal`] checks.
//!
//! Random nonces under one key are safe for about 2^32 seals; rotate keys
//! long before that (every replica seals with the first key of the file).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Every sealed token starts with this.
pub const PREFIX: &str = "fla.";
const KEY_LEN: usize = 32;
/// Sealed tokens longer than this are refused before any work.
const MAX_SEALED_LEN: usize = 64 * 1024;

/// What a sealed token is for; bound into the ciphertext as AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A dynamically registered client's `client_id`.
    Client,
    /// The `state` the gateway sends to the provider during a login.
    LoginState,
    /// The consent form of one authorization request.
    Consent,
    /// An authorization code handed to an MCP client.
    Code,
    /// An access token for `/mcp`.
    Access,
    /// A refresh token.
    Refresh,
    /// A client session id (`Mcp-Session-Id`, 2025 revisions).
    Session,
    /// A replica's address, in the ids of questions it puts to clients.
    Replica,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Client => "client",
            Purpose::LoginState => "login-state",
            Purpose::Consent => "consent",
            Purpose::Code => "code",
            Purpose::Access => "access",
            Purpose::Refresh => "refresh",
            Purpose::Session => "session",
            Purpose::Replica => "replica",
        }
    }

    fn aad(self) -> String {
        format!("flotilla/v1/{}", self.as_str())
    }
}

/// Why a key file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading sealing key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("sealing key file {path}, line {line}: {message}")]
    BadKey {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "sealing key file {path} holds no key: put one base64-encoded 32-byte key per line (e.g. `openssl rand -base64 32`)"
    )]
    Empty { path: String },
}

/// Why a sealed token was not accepted. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a token issued by this gateway")]
    Malformed,
    #[error("sealed with a key this gateway no longer has (keys rotated?)")]
    UnknownKey,
    #[error("does not verify (tampered with, or not meant for this use)")]
    Invalid,
    #[error("expired")]
    Expired,
    #[error("unreadable content: {0}")]
    Payload(String),
}

struct SealingKey {
    id: String,
    key: LessSafeKey,
}

/// The keys of this gateway: the first seals, all unseal.
pub struct SealingKeys {
    keys: Vec<SealingKey>,
    rng: SystemRandom,
    ephemeral: bool,
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKeys")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

#[derive(Serialize, serde::Deserialize)]
struct Envelope<T> {
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e", skip_serializing_if = "Option::is_none", default)]
    expires: Option<i64>,
    #[serde(rename = "v")]
    value: T,
}

impl SealingKeys {
    /// Reads one base64 32-byte key per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    fn parse(text: &str, shown: &str) -> Result<Self, KeyFileError> {
        let mut raw = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| KeyFileError::BadKey {
                path: shown.to_string(),
                line: index + 1,
                message,
            };
            let bytes = STANDARD
                .decode(line)
                .or_else(|_| URL_SAFE_NO_PAD.decode(line.trim_end_matches('=')))
                .map_err(|_| bad("not base64".into()))?;
            let key: [u8; KEY_LEN] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                bad(format!(
                    "a key must be {KEY_LEN} bytes, this one is {}",
                    bytes.len()
                ))
            })?;
            raw.push(key);
        }
        if raw.is_empty() {
            return Err(KeyFileError::Empty {
                path: shown.to_string(),
            });
        }
        Ok(Self::from_raw(&raw, false))
    }

    /// A random key for this process only: tokens die with it.
    pub fn ephemeral() -> Self {
        let rng = SystemRandom::new();
        let mut key = [0u8; KEY_LEN];
        // The system RNG failing is not something to carry on after.
        rng.fill(&mut key)
            .expect("the system random number generator failed");
        Self::from_raw(&[key], true)
    }

    fn from_raw(raw: &[[u8; KEY_LEN]], ephemeral: bool) -> Self {
        let keys = raw
            .iter()
            .map(|bytes| SealingKey {
                id: key_id(bytes),
                key: LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"),
                ),
            })
            .collect();
        Self {
            keys,
            rng: SystemRandom::new(),
            ephemeral,
        }
    }

    /// True for a key made up at start-up (no `sealingKeyFile`).
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Seals `value` for `purpose`; `expires` (if any) is checked on unsealing.
    pub fn seal<T: Serialize>(
        &self,
        purpose: Purpose,
        value: &T,
        expires: Option<DateTime<Utc>>,
    ) -> String {
        let envelope = Envelope {
            expires: expires.map(|t| t.timestamp()),
            value,
        };
        // Our payload types are plain structs of strings and numbers.
        let mut buffer = serde_json::to_vec(&envelope).expect("sealed payloads serialize to JSON");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        let key = &self.keys[0];
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad().as_bytes()),
                &mut buffer,
            )
            .expect("AES-GCM sealing of an in-memory buffer");
        let mut blob = Vec::with_capacity(NONCE_LEN + buffer.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&buffer);
        format!("{PREFIX}{}.{}", key.id, URL_SAFE_NO_PAD.encode(blob))
    }

    /// Opens a token sealed for `purpose` and checks its expiry.
    pub fn unseal<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        token: &str,
    ) -> Result<T, SealError> {
        self.unseal_at(purpose, token, Utc::now())
    }

    /// [`Self::unseal`] with the current time given (tests).
    pub fn unseal_at<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<T, SealError> {
        if token.len() > MAX_SEALED_LEN {
            return Err(SealError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        let (id, body) = rest.split_once('.').ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(SealError::UnknownKey)?;
        let mut blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let nonce = Nonce::try_assume_unique_for_key(&blob[..NONCE_LEN])
            .map_err(|_| SealError::Malformed)?;
        let plain = key
            .key
            .open_within(
                nonce,
                Aad::from(purpose.aad().as_bytes()),
                &mut blob,
                NONCE_LEN..,
            )
            .map_err(|_| SealError::Invalid)?;
        let envelope: Envelope<T> =
            serde_json::from_slice(plain).map_err(|e| SealError::Payload(e.to_string()))?;
        if let Some(expires) = envelope.expires
            && now.timestamp() >= expires
        {
            return Err(SealError::Expired);
        }
        Ok(envelope.value)
    }
}

/// A short public name for a key: the start of a hash of it.
fn key_id(key: &[u8; KEY_LEN]) -> String {
    let digest = Sha256::new()
        .chain_update(b"flotilla sealing key id\0")
        .chain_update(key)
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Payload {
        user: String,
        n: u32,
    }

    fn payload() -> Payload {
        Payload {
            user: "alice".into(),
            n: 7,
        }
    }

    fn key_line(byte: u8) -> String {
        STANDARD.encode([byte; KEY_LEN])
    }

    #[test]
    fn sealed_values_round_trip_and_look_like_gateway_tokens() {
        let keys = SealingKeys::ephemeral();
        let token = keys.seal(Purpose::Access, &payload(), None);
        assert!(token.starts_with(PREFIX), "{token}");
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains("alice"));
        let back: Payload = keys.unseal(Purpose::Access, &token).unwrap();
        assert_eq!(back, payload());
        // Random nonces: sealing twice gives different tokens.
        assert_ne!(token, keys.seal(Purpose::Access, &payload(), None));
    }

    #[test]
    fn a_code_never_unseals_as_an_access_token() {
        let keys = SealingKeys::ephemeral();
        let code = keys.seal(Purpose::Code, &payload(), None);
        assert_eq!(
            keys.unseal::<Payload>(Purpose::Access, &code),
            Err(SealError::Invalid)
        );
        assert!(keys.unseal::<Payload>(Purpose::Code, &code).is_ok());
    }

    #[test]
    fn tampering_with_any_part_is_detected() {
        let keys = SealingKeys::ephemeral();
        let token = keys.seal(Purpose::Refresh, &payload(), None);
        let (head, body) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        for i in [0, NONCE_LEN + 1, bytes.len() - 1] {
            bytes[i] ^= 0x01;
            let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert_eq!(
                keys.unseal::<Payload>(Purpose::Refresh, &forged),
                Err(SealError::Invalid),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        assert_eq!(
            keys.unseal::<Payload>(Purpose::Refresh, "fla.x"),
            Err(SealError::Malformed)
        );
        assert_eq!(
            keys.unseal::<Payload>(Purpose::Refresh, "eyJhbGciOi.x.y"),
            Err(SealError::Malformed)
        );
        assert_eq!(
            keys.unseal::<Payload>(Purpose::Refresh, "fla.AAAAAAAA.AAAA"),
            Err(SealError::UnknownKey)
        );
    }

    #[test]
    fn a_rotated_in_key_seals_and_the_old_key_still_unseals() {
        let old = SealingKeys::parse(&key_line(1), "keys").unwrap();
        let token = old.seal(Purpose::Access, &payload(), None);
        let rotated = SealingKeys::parse(
            &format!("# new first\n{}\n\n{}\n", key_line(2), key_line(1)),
            "keys",
        )
        .unwrap();
        assert_eq!(
            rotated.unseal::<Payload>(Purpose::Access, &token).unwrap(),
            payload()
        );
        let fresh = rotated.seal(Purpose::Access, &payload(), None);
        assert_eq!(
            old.unseal::<Payload>(Purpose::Access, &fresh),
            Err(SealError::UnknownKey)
        );
        let dropped = SealingKeys::parse(&key_line(2), "keys").unwrap();
        assert_eq!(
            dropped.unseal::<Payload>(Purpose::Access, &token),
            Err(SealError::UnknownKey)
        );
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let keys = SealingKeys::ephemeral();
        let now = Utc::now();
        let token = keys.seal(
            Purpose::Access,
            &payload(),
            Some(now + Duration::seconds(60)),
        );
        assert!(
            keys.unseal_at::<Payload>(Purpose::Access, &token, now)
                .is_ok()
        );
        assert_eq!(
            keys.unseal_at::<Payload>(Purpose::Access, &token, now + Duration::seconds(61)),
            Err(SealError::Expired)
        );
    }

    #[test]
    fn key_files_name_the_bad_line_and_require_a_key() {
        let err = SealingKeys::parse(&format!("{}\nnot-base64!\n", key_line(1)), "k").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = SealingKeys::parse(&STANDARD.encode([0u8; 16]), "k").unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let err = SealingKeys::parse("# nothing\n\n", "k").unwrap_err();
        assert!(matches!(err, KeyFileError::Empty { .. }));
        assert!(
            !SealingKeys::parse(&key_line(3), "k")
                .unwrap()
                .is_ephemeral()
        );
    }

    #[test]
    fn load_reads_a_key_file_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{}\n", key_line(9))).unwrap();
        let keys = SealingKeys::load(&path).unwrap();
        let token = keys.seal(Purpose::Client, &payload(), None);
        assert!(keys.unseal::<Payload>(Purpose::Client, &token).is_ok());
        assert!(SealingKeys::load(&dir.path().join("missing")).is_err());
    }
}
