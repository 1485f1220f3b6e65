//! The fleet: one supervised upstream session per desired server. It diffs
//! each desired-state snapshot against what runs, so an edit touches only the
//! servers whose spec changed (a label-only change reconnects nothing). The
//! snapshot's tool policies ride along for the gateway, touching no session.

pub mod agents;
mod client_handler;
mod connect;
pub mod credential;
mod delivery;
pub mod http_client;
mod http_transport;
mod legacy_sse;
pub mod lifecycle;
pub mod limits;
mod list_changes;
pub mod listing;
mod message_wire;
mod parking;
mod plan;
mod raw_tools;
mod sse_events;
pub mod stdio;
mod trim;
mod upstream;
mod user_sessions;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rmcp::model::ErrorData;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use client_handler::{ClientOffers, LineMessage, severity, upstream_capabilities};
pub use connect::{FailureKind, error_chain};
pub use upstream::{Caller, Health, Inventory, RelayedCall, SessionOwner, Upstream};
pub use user_sessions::{Access, CredentialFactory, UserSessionSettings, UserSessions};
pub use wire::ListKind;

use crate::api::ServerState;
use crate::source::{DesiredFleet, DesiredFleetRx, DesiredPolicy, ManifestProblem};

/// Timings of the supervision loop.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    pub ping_interval: Duration,
    /// How long an upstream's rmcp session may go unused before it is
    /// parked (`parking`; `None`: never).
    pub park_after: Option<Duration>,
    /// Where parked sessions say they freed memory (`trim`).
    pub(crate) freed: trim::Freed,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long an idle connection to a Streamable HTTP upstream stays open
    /// for the next request (`http_client::IDLE_CONNECTION_TIMEOUT`).
    pub idle_connection_timeout: Duration,
    /// The agents' connections, which `type: agent` servers are reached through.
    pub agents: agents::Hub,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            park_after: Some(Duration::from_secs(10)),
            freed: trim::Freed::default(),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            idle_connection_timeout: http_client::IDLE_CONNECTION_TIMEOUT,
            agents: agents::Hub::default(),
        }
    }
}

impl FleetSettings {
    /// Exponential backoff with jitter, never giving up.
    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.backoff_min)
            .with_max_delay(self.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Why a request to an upstream did not produce its answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("server {server:?} is {state} {}{}", last_error.as_deref().map(|e| format!("(last error: {e})")).unwrap_or_default(), retry_in.map(|d| format!("; retrying in {:.1}s", d.as_secs_f64())).unwrap_or_default())]
    Unavailable {
        server: String,
        state: ServerStateLabel,
        last_error: Option<String>,
        retry_in: Option<Duration>,
    },
    #[error("server {server:?} did not answer within {}s ({setting})", after.as_secs())]
    Timeout {
        server: String,
        after: Duration,
        /// The field that set the time: `spec.timeout` or `spec.limits.callTimeout`.
        setting: &'static str,
    },
    /// The server is at its concurrency limit (`spec.limits.maxConcurrency`).
    #[error("{0}")]
    Overloaded(limits::Overload),
    #[error("server {server:?} connection failed: {message}")]
    Transport { server: String, message: String },
    /// The upstream answered with a JSON-RPC error; passed through as is.
    #[error("{}", .0.message)]
    Rejected(ErrorData),
    #[error("the request was cancelled")]
    Cancelled,
    /// The gateway did not send the call: a policy asked the user to
    /// confirm it and the user did not (or could not).
    #[error("{0}")]
    NotConfirmed(String),
    /// The upstream asked the client for input the client could not give.
    #[error("server {server:?} needed input from the client: {message}")]
    Unanswered { server: String, message: String },
}

/// [`ServerState`] for messages ("Connecting", "Failed", ...).
pub type ServerStateLabel = ServerState;

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

struct FleetInner {
    servers: RwLock<BTreeMap<String, Arc<Upstream>>>,
    problems: RwLock<Vec<ManifestProblem>>,
    /// The tool policies of the latest snapshot (they change no session).
    policies: RwLock<Arc<Vec<DesiredPolicy>>>,
    changed: Arc<watch::Sender<u64>>,
    http: reqwest::Client,
    settings: FleetSettings,
    cancel: CancellationToken,
    /// Per-user sessions to SSO servers, once the gateway has auth enabled.
    user_sessions: std::sync::OnceLock<Arc<UserSessions>>,
    /// Each server's call limits, shared with its users' own sessions.
    gates: Arc<limits::Gates>,
}

/// Cheap-to-clone handle on the running fleet.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<FleetInner>,
}

impl Fleet {
    pub fn new(settings: FleetSettings, cancel: CancellationToken) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(FleetInner {
                servers: RwLock::new(BTreeMap::new()),
                problems: RwLock::new(Vec::new()),
                policies: RwLock::default(),
                changed: Arc::new(changed),
                http: http_client::build_reqwest(settings.idle_connection_timeout),
                settings,
                cancel,
                user_sessions: std::sync::OnceLock::new(),
                gates: Arc::default(),
            }),
        }
    }

    /// Turns on per-user sessions for SSO servers (the gateway's auth is on).
    pub fn enable_user_sessions(
        &self,
        factory: Arc<dyn CredentialFactory>,
        settings: UserSessionSettings,
    ) -> Arc<UserSessions> {
        self.inner
            .user_sessions
            .get_or_init(|| {
                UserSessions::new(
                    factory,
                    settings,
                    self.inner.http.clone(),
                    self.inner.settings.clone(),
                    self.inner.changed.clone(),
                    self.inner.cancel.child_token(),
                    self.inner.gates.clone(),
                )
            })
            .clone()
    }

    /// The agents' connections (the gateway's agent door hands them here).
    pub fn agents(&self) -> &agents::Hub {
        &self.inner.settings.agents
    }

    pub fn user_sessions(&self) -> Option<&Arc<UserSessions>> {
        self.inner.user_sessions.get()
    }

    /// Follows a desired-state stream until cancelled, then stops every
    /// upstream. Once the fleet has been quiet for a moment after a change
    /// (servers connected, lists refreshed), freed heap is released (`trim`).
    pub async fn follow(self, mut desired: DesiredFleetRx) {
        let current = desired.borrow_and_update().clone();
        self.apply(&current);
        let mut fleet_changes = self.inner.changed.subscribe();
        let settled = tokio::time::sleep(trim::QUIET);
        tokio::pin!(settled);
        let mut unsettled = true;
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => break,
                changed = desired.changed() => {
                    if changed.is_err() { break; }
                    let next = desired.borrow_and_update().clone();
                    self.apply(&next);
                }
                Ok(()) = fleet_changes.changed() => {
                    settled.as_mut().reset(tokio::time::Instant::now() + trim::QUIET);
                    unsettled = true;
                }
                () = self.inner.settings.freed.noted() => {
                    settled.as_mut().reset(tokio::time::Instant::now() + trim::QUIET);
                    unsettled = true;
                }
                () = &mut settled, if unsettled => {
                    unsettled = false;
                    let _ = trim::release_freed_memory();
                }
            }
        }
        self.stop_all();
    }

    /// Makes the running set match `desired`, touching only what changed.
    pub fn apply(&self, desired: &DesiredFleet) {
        let mut servers = match self.inner.servers.write() {
            Ok(servers) => servers,
            Err(poisoned) => poisoned.into_inner(),
        };
        let running = servers
            .iter()
            .map(|(name, upstream)| (name.clone(), upstream.desired()))
            .collect();
        for change in plan::plan(&running, desired) {
            match change {
                plan::Change::Remove(name) => {
                    tracing::info!(server = %name, "server removed");
                    if let Some(upstream) = servers.remove(&name) {
                        upstream.stop();
                    }
                    self.inner.gates.remove(&name);
                }
                plan::Change::Relabel(name) => {
                    if let (Some(upstream), Some(want)) =
                        (servers.get(&name), desired.servers.get(&name))
                    {
                        // spec.limits among them: the gate takes them in place.
                        self.inner.gates.configure(&name, &want.spec);
                        upstream.update_metadata(want.clone());
                    }
                }
                plan::Change::Add(name) | plan::Change::Reconnect(name) => {
                    let Some(want) = desired.servers.get(&name) else {
                        continue;
                    };
                    let inventory = match servers.get(&name) {
                        Some(old) => {
                            tracing::info!(server = %name, "server spec changed; reconnecting it");
                            old.stop();
                            old.inventory()
                        }
                        None => {
                            tracing::info!(server = %name, origin = %want.origin, "server added");
                            Default::default()
                        }
                    };
                    let gate = self.inner.gates.configure(&name, &want.spec);
                    let upstream = Upstream::start(
                        want.clone(),
                        inventory,
                        self.inner.http.clone(),
                        self.inner.settings.clone(),
                        self.inner.changed.clone(),
                        &self.inner.cancel,
                        SessionOwner {
                            credential: None,
                            gate,
                        },
                    );
                    servers.insert(name, upstream);
                }
            }
        }
        drop(servers);
        if let Some(sessions) = self.inner.user_sessions.get() {
            sessions.retain(desired);
        }
        if let Ok(mut problems) = self.inner.problems.write() {
            *problems = desired.problems.clone();
        }
        if let Ok(mut policies) = self.inner.policies.write() {
            *policies = Arc::new(desired.policies.values().cloned().collect());
        }
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn stop_all(&self) {
        if let Ok(servers) = self.inner.servers.read() {
            servers.values().for_each(|u| u.stop());
        }
    }

    /// All upstreams, ordered by name.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.inner
            .servers
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The desired state of every server users reach with their own token.
    pub fn sso_servers(&self) -> Vec<Arc<crate::source::DesiredServer>> {
        self.upstreams()
            .iter()
            .map(|u| u.desired())
            .filter(|d| d.spec.sso_mode().is_some())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.inner.servers.read().ok()?.get(name).cloned()
    }

    /// Manifests that could not be used, from the latest snapshot.
    pub fn problems(&self) -> Vec<ManifestProblem> {
        self.inner
            .problems
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// The tool policies of the latest snapshot, ordered by namespace and name.
    pub fn policies(&self) -> Arc<Vec<DesiredPolicy>> {
        self.inner
            .policies
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Ticks whenever any upstream's lists, health or metadata change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let settings = FleetSettings {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Default::default()
        };
        let delays: Vec<Duration> = settings.backoff().take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(delays[6] > delays[0], "grows: {delays:?}");
        let again: Vec<Duration> = settings.backoff().take(12).collect();
        assert_ne!(delays, again, "jittered: two runs differ");
    }
}
