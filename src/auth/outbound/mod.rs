//! Outbound credentials: what a user's session to an SSO server presents.
//! `forwardToken` sends the user's own ID token; `tokenExchange` sends a
//! token exchanged for it at the server's Dex (through the exchange cache,
//! [`exchange`]). A server without either never sees a user's token.

pub mod exchange;

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::UserIdentity;
use super::jwks::unverified_claims;
use super::status::SsoMode;
use crate::api::SecretValue;
use crate::fleet::CredentialFactory;
use crate::fleet::credential::{CredentialError, CredentialRef, UpstreamCredential};
use crate::source::DesiredServer;
use exchange::{ExchangeTarget, TokenExchanger};

/// Builds per-user credentials for SSO servers.
pub struct SsoCredentials {
    exchanger: Arc<TokenExchanger>,
}

impl SsoCredentials {
    pub fn new(exchanger: Arc<TokenExchanger>) -> Self {
        Self { exchanger }
    }
}

impl CredentialFactory for SsoCredentials {
    fn credential(
        &self,
        user: &Arc<UserIdentity>,
        server: &DesiredServer,
    ) -> Result<CredentialRef, CredentialError> {
        let auth = server.spec.auth.as_ref();
        match server.spec.sso_mode() {
            Some(SsoMode::Forwarded) => Ok(Arc::new(Forwarded {
                user: ArcSwap::new(user.clone()),
                required_audiences: auth
                    .map(|a| a.required_audiences.clone())
                    .unwrap_or_default(),
            })),
            Some(SsoMode::Exchanged) => {
                let spec = auth
                    .and_then(|a| a.token_exchange.as_ref())
                    .ok_or_else(|| CredentialError("spec.auth.tokenExchange is missing".into()))?;
                let mut target =
                    ExchangeTarget::from_spec(spec, server.client_credentials.as_ref())
                        .map_err(CredentialError)?;
                target.server = Arc::from(server.name.as_str());
                Ok(Arc::new(Exchanged {
                    user: ArcSwap::new(user.clone()),
                    target,
                    exchanger: self.exchanger.clone(),
                }))
            }
            None => Err(CredentialError(format!(
                "server {:?} takes no user token (spec.auth sets neither forwardToken nor tokenExchange)",
                server.name
            ))),
        }
    }
}

/// Replaces the stored identity when the user presents a newer ID token.
fn refresh_identity(slot: &ArcSwap<UserIdentity>, user: &Arc<UserIdentity>) {
    let current = slot.load();
    if current.key == user.key && current.id_token != user.id_token {
        slot.store(user.clone());
    }
}

fn id_token(user: &UserIdentity) -> Result<SecretValue, CredentialError> {
    if let Some(expiry) = user.expires_at
        && expiry <= chrono::Utc::now()
    {
        return Err(CredentialError(
            "your login has expired; refresh it (or run `flotilla auth login`)".into(),
        ));
    }
    user.id_token
        .clone()
        .ok_or_else(|| CredentialError("your login carries no ID token to pass on".into()))
}

/// `forwardToken: true`: the user's own ID token.
struct Forwarded {
    user: ArcSwap<UserIdentity>,
    required_audiences: Vec<String>,
}

impl Forwarded {
    fn current(&self) -> Result<SecretValue, CredentialError> {
        let token = id_token(&self.user.load())?;
        if !self.required_audiences.is_empty() {
            let claims =
                unverified_claims(token.expose()).map_err(|e| CredentialError(e.to_string()))?;
            let has = |aud: &str| match claims.get("aud") {
                Some(serde_json::Value::String(one)) => one == aud,
                Some(serde_json::Value::Array(many)) => {
                    many.iter().any(|v| v.as_str() == Some(aud))
                }
                _ => false,
            };
            if let Some(missing) = self.required_audiences.iter().find(|aud| !has(aud)) {
                return Err(CredentialError(format!(
                    "your token lacks the audience {missing:?} this server requires; log in again so the gateway asks for it"
                )));
            }
        }
        Ok(token)
    }
}

impl UpstreamCredential for Forwarded {
    fn mode(&self) -> SsoMode {
        SsoMode::Forwarded
    }

    fn bearer(&self) -> BoxFuture<'_, Result<SecretValue, CredentialError>> {
        std::future::ready(self.current()).boxed()
    }

    fn after_rejection<'a>(
        &'a self,
        rejected: &'a SecretValue,
    ) -> BoxFuture<'a, Result<SecretValue, CredentialError>> {
        // A newer ID token may have arrived meanwhile; the same one again is pointless.
        let result = match self.current() {
            Ok(token) if token != *rejected => Ok(token),
            Ok(_) => Err(CredentialError(
                "the server rejected the forwarded token (does it trust the central issuer and audience?)".into(),
            )),
            Err(error) => Err(error),
        };
        std::future::ready(result).boxed()
    }

    fn update_user(&self, user: &Arc<UserIdentity>) {
        refresh_identity(&self.user, user);
    }
}

/// `tokenExchange`: a token from the server's Dex, cached per user.
struct Exchanged {
    user: ArcSwap<UserIdentity>,
    target: ExchangeTarget,
    exchanger: Arc<TokenExchanger>,
}

impl UpstreamCredential for Exchanged {
    fn mode(&self) -> SsoMode {
        SsoMode::Exchanged
    }

    fn bearer(&self) -> BoxFuture<'_, Result<SecretValue, CredentialError>> {
        async move {
            let user = self.user.load_full();
            id_token(&user)?;
            self.exchanger
                .token(&user, &self.target)
                .await
                .map_err(|e| CredentialError(e.to_string()))
        }
        .boxed()
    }

    fn after_rejection<'a>(
        &'a self,
        rejected: &'a SecretValue,
    ) -> BoxFuture<'a, Result<SecretValue, CredentialError>> {
        async move {
            let user = self.user.load_full();
            id_token(&user)?;
            self.exchanger
                .token_after_rejection(&user, &self.target, rejected)
                .await
                .map_err(|e| CredentialError(e.to_string()))
        }
        .boxed()
    }

    fn update_user(&self, user: &Arc<UserIdentity>) {
        refresh_identity(&self.user, user);
    }
}
