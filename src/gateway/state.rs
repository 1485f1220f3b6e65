//! State shared by every client session: the fleet, the current catalog
//! snapshot, and the connected clients to notify when lists change. The
//! catalog task rebuilds the snapshot whenever the fleet reports a change.

#![allow(deprecated)] // log levels (SEP-2577) are still spoken by 2025 clients

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rmcp::model::LoggingLevel;
use rmcp::{Peer, RoleServer};
use tokio_util::sync::CancellationToken;

use super::audit::AuditLog;
use super::call_record::Observer;
use super::metrics::Metrics;
use super::settings::GatewaySettings;
use super::view::{CachedView, View};
use crate::api::{UserIdentity, UserKey};
use crate::catalog::build::{Member, Membership};
use crate::catalog::family::{DEFAULT_INSTANCE_ARG, Instance};
use crate::catalog::{self, Catalog};
use crate::fleet::Fleet;
use crate::policy::Policy;
use crate::source::{DesiredPolicy, DesiredServer};

/// Changes arriving within this window are folded into one rebuild.
const REBUILD_SETTLE: Duration = Duration::from_millis(10);

/// A server's family membership, with the defaults filled in.
fn membership(server: &Arc<str>, desired: &DesiredServer) -> Option<Membership> {
    let family = desired.spec.family.as_ref()?;
    Some(Membership {
        family: family.name.clone(),
        instance_arg: family
            .instance_arg
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_ARG.to_string()),
        instance: Instance {
            server: server.clone(),
            instance: family.instance_name(server),
            aliases: family.aliases.clone(),
            labels: desired.labels.clone(),
        },
    })
}

/// The shared catalog's inputs from a set of upstreams.
pub(super) fn members(upstreams: &[Arc<crate::fleet::Upstream>]) -> Vec<Member> {
    upstreams
        .iter()
        .map(|u| {
            let desired = u.desired();
            Member {
                server: u.name.clone(),
                tool_prefix: desired.spec.tool_prefix.clone(),
                labels: desired.labels.clone(),
                family: membership(&u.name, &desired),
                inventory: u.inventory(),
            }
        })
        .collect()
}

/// A connected client session, the user it authenticated as, and the tool
/// list of that user's view it was last told about.
#[derive(Clone)]
struct Registered {
    peer: Peer<RoleServer>,
    user: Option<Arc<UserIdentity>>,
    seen_tools: Arc<Mutex<Option<Arc<Vec<rmcp::model::Tool>>>>>,
}

/// Connected client sessions that asked for list-change notifications.
#[derive(Default)]
pub struct ClientRegistry {
    peers: Mutex<Vec<Registered>>,
}

impl ClientRegistry {
    /// Registers a session; `tools` is the user's tool list it starts with.
    pub fn register(
        &self,
        peer: Peer<RoleServer>,
        user: Option<Arc<UserIdentity>>,
        tools: Option<Arc<Vec<rmcp::model::Tool>>>,
    ) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|p| !p.peer.is_transport_closed());
            peers.push(Registered {
                peer,
                user,
                seen_tools: Arc::new(Mutex::new(tools)),
            });
        }
    }

    fn live_registrations(&self) -> Vec<Registered> {
        self.peers
            .lock()
            .map(|mut peers| {
                peers.retain(|p| !p.peer.is_transport_closed());
                peers.clone()
            })
            .unwrap_or_default()
    }

    fn live(&self) -> Vec<Peer<RoleServer>> {
        self.live_registrations()
            .into_iter()
            .map(|r| r.peer)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.live().len()
    }
}

/// Which lists changed in one catalog rebuild.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListChange {
    pub tools: bool,
    pub resources: bool,
    pub prompts: bool,
}

pub struct GatewayState {
    pub fleet: Fleet,
    pub settings: GatewaySettings,
    catalog: ArcSwap<Catalog>,
    /// The tool policy in force, and the fleet's policies it was compiled from.
    policy: ArcSwap<(Arc<Vec<DesiredPolicy>>, Arc<Policy>)>,
    /// What anonymous callers (and users without SSO servers) see: the
    /// catalog snapshot as a [`View`], made once per rebuild.
    pub(super) shared_view: ArcSwap<View>,
    /// Session clients (2025 revisions) are notified through their peers.
    pub clients: ClientRegistry,
    /// Stateless 2026-07-28 clients listen here through subscriptions/listen.
    list_changes: tokio::sync::broadcast::Sender<ListChange>,
    /// Set once start-up completed (see `/readyz`).
    ready: std::sync::atomic::AtomicBool,
    /// The fleet change counter the current catalog was built from.
    built_from: std::sync::atomic::AtomicU64,
    /// The source has delivered its first complete listing.
    source_ready: std::sync::atomic::AtomicBool,
    /// Logged-in users' views (see `user_view`), rebuilt when the fleet changes.
    pub(super) user_views: moka::sync::Cache<UserKey, Arc<CachedView>>,
    /// The level each 2025 session set with `logging/setLevel`, by session id.
    log_levels: moka::sync::Cache<String, LoggingLevel>,
    /// What `/metrics` exposes.
    pub metrics: Arc<super::metrics::Metrics>,
    /// Where tool calls are counted and audited.
    pub calls: Observer,
}

impl GatewayState {
    pub fn new(
        fleet: Fleet,
        settings: GatewaySettings,
        metrics: Arc<Metrics>,
        audit: AuditLog,
    ) -> Arc<Self> {
        let shared_view =
            ArcSwap::from_pointee(View::of(Arc::default(), fleet.clone(), Arc::default()));
        Arc::new(Self {
            fleet,
            settings,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            policy: ArcSwap::from_pointee((Arc::default(), Arc::default())),
            shared_view,
            clients: ClientRegistry::default(),
            list_changes: tokio::sync::broadcast::channel(64).0,
            source_ready: std::sync::atomic::AtomicBool::new(false),
            built_from: std::sync::atomic::AtomicU64::new(u64::MAX),
            ready: std::sync::atomic::AtomicBool::new(false),
            user_views: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(900))
                .build(),
            log_levels: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            calls: Observer {
                metrics: metrics.clone(),
                audit: Arc::new(audit),
            },
            metrics,
        })
    }

    /// The level a 2025 session set with `logging/setLevel`, if it did.
    pub fn session_log_level(&self, session: &str) -> Option<LoggingLevel> {
        self.log_levels.get(session)
    }

    pub(super) fn set_session_log_level(&self, session: &str, level: LoggingLevel) {
        self.log_levels.insert(session.to_string(), level);
    }

    pub fn set_source_ready(&self) {
        self.source_ready
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn ready_latched(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn latch_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True when the catalog reflects every fleet change so far.
    pub fn catalog_current(&self) -> bool {
        let built = self.built_from.load(std::sync::atomic::Ordering::Acquire);
        built == *self.fleet.changes().borrow()
    }

    pub fn source_ready(&self) -> bool {
        self.source_ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn list_changes(&self) -> tokio::sync::broadcast::Receiver<ListChange> {
        self.list_changes.subscribe()
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// The tool policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load().1.clone()
    }

    /// Compiles the fleet's policies when they changed; true if they did.
    fn recompile_policy(&self) -> bool {
        let declared = self.fleet.policies();
        let current = self.policy.load();
        if *current.0 == *declared {
            return false;
        }
        let compiled = Arc::new(Policy::compile(&declared));
        tracing::info!(
            policies = compiled.sources.len(),
            rules = compiled.rule_count(),
            "tool policy changed"
        );
        self.policy.store(Arc::new((declared, compiled)));
        true
    }

    /// Rebuilds the catalog from the fleet now; returns the new snapshot
    /// and whether the tool policy changed.
    pub fn rebuild(&self) -> (Arc<Catalog>, bool) {
        let policy_changed = self.recompile_policy();
        let members = members(&self.fleet.upstreams());
        let previous = self.catalog();
        let next = Arc::new(catalog::build(&members, &previous));
        for divergence in &next.divergences {
            if !previous.divergences.contains(divergence) {
                tracing::warn!(server = %divergence.server, family = %divergence.family, tool = %divergence.tool, "schema divergence: {divergence}");
            }
        }
        for collision in &next.collisions {
            if !previous.collisions.contains(collision) {
                tracing::warn!(server = %collision.loser, name = %collision.exposed, "name collision: {collision}");
            }
        }
        let view = View::of(next.clone(), self.fleet.clone(), self.policy());
        if previous.same_tools(&next) {
            // The serialized list still holds: keep it (10,000 tools cost ms).
            let kept = self.shared_view.load().tools_json.get().cloned();
            if let Some(kept) = kept {
                let _ = view.tools_json.set(kept);
            }
        }
        self.catalog.store(next.clone());
        self.shared_view.store(Arc::new(view));
        (next, policy_changed)
    }

    /// Keeps the catalog current until `cancel`, notifying clients of changes.
    pub async fn run_catalog(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes = self.fleet.changes();
        loop {
            let version = *changes.borrow_and_update();
            let previous = self.catalog();
            let (next, policy_changed) = self.rebuild();
            self.built_from
                .store(version, std::sync::atomic::Ordering::Release);
            self.notify_changes(&previous, &next, policy_changed).await;
            self.notify_user_views().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(REBUILD_SETTLE).await;
        }
    }

    /// Tells each logged-in user's sessions when their own view changed
    /// (their SSO sessions connected, failed or changed tools).
    async fn notify_user_views(&self) {
        if self.fleet.user_sessions().is_none() {
            return;
        }
        for registered in self.clients.live_registrations() {
            let Some(user) = &registered.user else {
                continue;
            };
            let tools = self.peek_view(user).await.tools_for(Some(user));
            let changed = match registered.seen_tools.lock() {
                Ok(mut seen) => {
                    let changed = seen.as_ref().is_some_and(|seen| *seen != tools);
                    *seen = Some(tools);
                    changed
                }
                Err(_) => false,
            };
            if changed {
                let _ = registered.peer.notify_tool_list_changed().await;
            }
        }
    }

    /// Tells clients which lists changed; a policy change may change
    /// anyone's tool list.
    async fn notify_changes(&self, previous: &Catalog, next: &Catalog, policy_changed: bool) {
        let tools = policy_changed || !previous.same_tools(next);
        let resources = previous.resources != next.resources
            || previous.resource_templates != next.resource_templates;
        let prompts = previous.prompts != next.prompts;
        if !(tools || resources || prompts) {
            return;
        }
        let _ = self.list_changes.send(ListChange {
            tools,
            resources,
            prompts,
        });
        for peer in self.clients.live() {
            if tools {
                let _ = peer.notify_tool_list_changed().await;
            }
            if resources {
                let _ = peer.notify_resource_list_changed().await;
            }
            if prompts {
                let _ = peer.notify_prompt_list_changed().await;
            }
        }
    }
}

impl crate::source::kubernetes::LiveStatus for GatewayState {
    fn live_status(&self, server: &str) -> Option<crate::api::MCPServerStatus> {
        let upstream = self.fleet.get(server)?;
        Some(super::status::server_status(
            &upstream,
            &self.catalog(),
            &self.fleet.problems(),
        ))
    }

    fn problems(&self) -> Vec<crate::source::ManifestProblem> {
        self.fleet.problems()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fleet.changes()
    }
}
