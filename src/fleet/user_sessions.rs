//! Per-user downstream sessions for SSO servers. A user's session to a server
//! is keyed (user, server), opened on first need with that user's credential,
//! closed after the user has not used it for a while, and never used for
//! anyone else. Only the user's own requests count as use: the gateway
//! looking at a session (to tell a client its tools changed) does not keep
//! it open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::credential::{CredentialError, CredentialRef};
use super::limits::Gates;
use super::{FleetSettings, SessionOwner, Upstream};
use crate::api::ServerState;
use crate::api::{UserIdentity, UserKey};
use crate::source::{DesiredFleet, DesiredServer};

/// Resolved per-user session settings.
#[derive(Clone, Debug)]
pub struct UserSessionSettings {
    pub idle: Duration,
    pub warmup: Duration,
    pub max_sessions: u64,
}

impl Default for UserSessionSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(900),
            warmup: Duration::from_secs(5),
            max_sessions: 10_000,
        }
    }
}

/// Builds the credential a user's session to a server presents.
pub trait CredentialFactory: Send + Sync {
    fn credential(
        &self,
        user: &Arc<UserIdentity>,
        server: &DesiredServer,
    ) -> Result<CredentialRef, CredentialError>;
}

type SessionKey = (UserKey, Arc<str>);

/// A user's session to one server, or why there can be none.
pub type SessionOutcome = (Arc<str>, Result<Arc<Upstream>, CredentialError>);

/// Whether a lookup is the user's own use (which opens and keeps a session)
/// or the gateway peeking (which does neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Use,
    Peek,
}

/// One open session and when its user last used it.
struct Session {
    upstream: Arc<Upstream>,
    last_used: std::sync::Mutex<Instant>,
}

impl Session {
    fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|last| last.elapsed())
            .unwrap_or_default()
    }
}

/// Every user's sessions to SSO servers.
pub struct UserSessions {
    sessions: moka::sync::Cache<SessionKey, Arc<Session>>,
    factory: Arc<dyn CredentialFactory>,
    http: reqwest::Client,
    fleet_settings: FleetSettings,
    settings: UserSessionSettings,
    changed: Arc<watch::Sender<u64>>,
    cancel: CancellationToken,
    /// The servers' call limits: a user's session takes its server's gate.
    gates: Arc<Gates>,
}

impl UserSessions {
    pub(super) fn new(
        factory: Arc<dyn CredentialFactory>,
        settings: UserSessionSettings,
        http: reqwest::Client,
        fleet_settings: FleetSettings,
        changed: Arc<watch::Sender<u64>>,
        cancel: CancellationToken,
        gates: Arc<Gates>,
    ) -> Arc<Self> {
        let on_removal = {
            let changed = changed.clone();
            move |key: Arc<SessionKey>, session: Arc<Session>, cause: RemovalCause| {
                tracing::info!(user = %key.0.subject, server = %key.1, ?cause, "closing a user's session");
                session.upstream.stop();
                changed.send_modify(|v| *v = v.wrapping_add(1));
            }
        };
        let sessions = moka::sync::Cache::builder()
            .max_capacity(settings.max_sessions)
            .eviction_listener(on_removal)
            .build();
        let this = Arc::new(Self {
            sessions,
            factory,
            http,
            fleet_settings,
            settings,
            changed,
            cancel,
            gates,
        });
        // Close sessions their users stopped using.
        let sweeper = Arc::downgrade(&this);
        let cancel = this.cancel.clone();
        let period =
            (this.settings.idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => match sweeper.upgrade() {
                        Some(sessions) => sessions.close_idle(),
                        None => break,
                    },
                }
            }
        });
        this
    }

    /// The user's session to `server`, opened if there is none (or the
    /// server's spec changed since it was opened).
    /// With [`Access::Peek`], only an open session is returned, untouched.
    pub fn session(
        &self,
        user: &Arc<UserIdentity>,
        server: &DesiredServer,
        access: Access,
    ) -> Option<Result<Arc<Upstream>, CredentialError>> {
        let key: SessionKey = (user.key.clone(), server.name.as_str().into());
        if let Some(existing) = self.sessions.get(&key) {
            if existing.upstream.desired().same_connection(server) {
                if access == Access::Use {
                    existing.touch();
                    if let Some(credential) = existing.upstream.credential() {
                        credential.update_user(user);
                    }
                }
                return Some(Ok(existing.upstream.clone()));
            }
            self.sessions.invalidate(&key);
        }
        if access == Access::Peek {
            return None;
        }
        let credential = match self.factory.credential(user, server) {
            Ok(credential) => credential,
            Err(error) => return Some(Err(error)),
        };
        let entry = self.sessions.entry(key).or_insert_with(|| {
            tracing::info!(user = %user.key.subject, server = %server.name, "opening a user's session");
            Arc::new(Session {
                upstream: Upstream::start(
                    server.clone(),
                    Default::default(),
                    self.http.clone(),
                    self.fleet_settings.clone(),
                    self.changed.clone(),
                    &self.cancel,
                    SessionOwner {
                        credential: Some(credential),
                        gate: self.gates.gate(&server.name, &server.spec),
                    },
                ),
                last_used: std::sync::Mutex::new(Instant::now()),
            })
        });
        Some(Ok(entry.into_value().upstream.clone()))
    }

    fn close_idle(&self) {
        let idle: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.idle_for() >= self.settings.idle)
            .map(|(key, _)| (*key).clone())
            .collect();
        for key in idle {
            self.sessions.invalidate(&key);
        }
        self.sessions.run_pending_tasks();
    }

    /// The user's sessions to every SSO server in `servers` (opening missing
    /// ones), with the error for each server whose session cannot exist.
    pub fn sessions_for(
        &self,
        user: &Arc<UserIdentity>,
        servers: &[Arc<DesiredServer>],
        access: Access,
    ) -> Vec<SessionOutcome> {
        servers
            .iter()
            .filter_map(|server| {
                let outcome = self.session(user, server, access)?;
                Some((server.name.as_str().into(), outcome))
            })
            .collect()
    }

    /// Waits until each session has connected or failed once, at most the
    /// configured warm-up time.
    pub async fn settle(&self, upstreams: &[Arc<Upstream>]) {
        let mut changes = self.changed.subscribe();
        let settled = |u: &Arc<Upstream>| u.health().state != ServerState::Connecting;
        let wait = async {
            while !upstreams.iter().all(settled) {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(self.settings.warmup, wait).await;
    }

    /// Closes sessions whose server is gone or changed.
    pub fn retain(&self, desired: &DesiredFleet) {
        let stale: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(key, session)| match desired.servers.get(&*key.1) {
                Some(want) => !session.upstream.desired().same_connection(want),
                None => true,
            })
            .map(|(key, _)| (*key).clone())
            .collect();
        for key in stale {
            self.sessions.invalidate(&key);
        }
    }

    /// Open sessions, all users together.
    pub fn count(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }

    /// Open sessions whose rmcp session is parked (see `parking`).
    pub fn parked(&self) -> u64 {
        let parked = self.sessions.iter().filter(|(_, s)| s.upstream.is_parked());
        parked.count() as u64
    }
}
