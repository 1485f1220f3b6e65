//! Watching MCPServers, MCPServerSets, ToolPolicies and Secrets: a reflector per kind and
//! watched scope (all namespaces, or each listed namespace) that tolerates
//! malformed objects (`DeserializeGuard`), plus a reflector per Secret
//! scope, each driven by a task of its own with one backoff. Any change re-derives the whole desired
//! fleet (cheap) and publishes it, as does a resync every [`RESYNC`] (a
//! Secret granted later, or any missed event); the fleet diffs it, so a spec
//! change reconnects only that server and a label change reconnects nothing.
//! There is no per-object reconcile: the whole fleet is the unit. Sets are
//! expanded on every derivation (`crate::source::discovery`); their
//! inventories (ManagedClusters, kubeconfig directories, Rancher polls) ask
//! for a re-derivation when they change.
//!
//! ToolPolicies fail closed: a scope whose policies the gateway may not
//! read (403) keeps it unready, since a deny there would go unseen. An API
//! without the ToolPolicy CRD (404) can hold no policy, so that counts as
//! none (logged once, picked up when the CRD appears).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::desired::{SecretLookup, desired_fleet, desired_policies};
use super::desired_sets::desired_sets;
use super::managed_clusters::ManagedClusterWatch;
use crate::api::{MCPServer, MCPServerSet, ToolPolicy};
use crate::source::discovery::{Discovery, Inventories, ManagedClusterSource, SetInput};
use crate::source::{DesiredFleet, DesiredPolicy, DesiredServer};

/// Bursts of watch events are folded into one re-derivation.
const SETTLE: Duration = Duration::from_millis(50);
/// The desired fleet is re-derived this often without any event.
const RESYNC: Duration = Duration::from_secs(300);

/// Watch retries: from 0.5 s, doubling, at most 5 s apart, reset after 2
/// minutes of health. (kube's default waits up to 30 s, so a change made
/// just after an API outage could wait that long.) The jitter adds up to
/// the delay itself, so the delay is capped at half of those 5 s.
pub(super) fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_millis(2500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(
        ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

/// Which namespaces to watch.
#[derive(Clone, Debug, Default)]
pub struct SourceConfig {
    /// MCPServer namespaces; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Secret namespaces; empty means the listed MCPServer namespaces.
    /// Secrets are never watched cluster-wide: with all MCPServer namespaces
    /// watched and none listed here, no Secret is read.
    pub secret_namespaces: Vec<String>,
}

type GuardedServer = DeserializeGuard<MCPServer>;
type GuardedPolicy = DeserializeGuard<ToolPolicy>;
type GuardedSet = DeserializeGuard<MCPServerSet>;

struct SecretStores {
    stores: Vec<Store<Secret>>,
    /// Namespaces whose Secrets the API refuses to list, with the fix.
    unreadable: Mutex<BTreeMap<String, String>>,
}

impl SecretLookup for SecretStores {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores.iter().find_map(|store| store.get(&key))
    }

    fn unreadable(&self, namespace: &str) -> Option<String> {
        self.unreadable.lock().ok()?.get(namespace).cloned()
    }
}

/// What a failed list or watch means for an operator, in words with the
/// fix; `None` for passing faults (connection errors: the watcher retries).
fn watch_refusal(error: &watcher::Error, what: &str, scope: &str) -> Option<(u16, String)> {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status,
        _ => return None,
    };
    let message = match (status.code, what) {
        (403, "secrets") => format!(
            "the gateway may not read Secrets in namespace {scope} (403): grant its service account get, list and watch on secrets there (a Role and RoleBinding), or drop the namespace from --secret-namespace"
        ),
        (403, "toolpolicies") => format!(
            "the gateway may not read ToolPolicies in {scope} (403), so it stays unready (a deny there would go unseen): grant its service account get, list and watch on toolpolicies.flotilla.dev there"
        ),
        (403, "mcpserversets") => format!(
            "the gateway may not read MCPServerSets in {scope} (403), so their members are not served: grant its service account get, list and watch on mcpserversets.flotilla.dev there"
        ),
        (403, _) => format!(
            "the gateway may not read MCPServers in {scope} (403): grant its service account get, list and watch on mcpservers.flotilla.dev there"
        ),
        (404, "mcpservers") => "the MCPServer CustomResourceDefinition is not installed (the API has no mcpservers.flotilla.dev): install it with `flotilla crd | kubectl apply -f -` or the Helm chart".to_string(),
        (404, "mcpserversets") => "the MCPServerSet CustomResourceDefinition is not installed (the API has no mcpserversets.flotilla.dev), so no set generates servers: install it with `flotilla crd | kubectl apply -f -`".to_string(),
        (404, "toolpolicies") => "the ToolPolicy CustomResourceDefinition is not installed (the API has no toolpolicies.flotilla.dev), so no tool policy applies: install it with `flotilla crd | kubectl apply -f -` (Helm installs CRDs only on first install)".to_string(),
        (code, _) => format!("listing {what} in {scope} failed ({code}): {}", status.message),
    };
    Some((status.code, message))
}

/// Logs a refusal once per distinct message (the watcher retries with
/// backoff; the same words every 30 s help nobody).
fn report_refusal(last: &Mutex<Option<String>>, message: &str) {
    let Ok(mut last) = last.lock() else { return };
    if last.as_deref() != Some(message) {
        tracing::error!("{message}");
        *last = Some(message.to_string());
    }
}

struct Shared {
    servers: Vec<Store<GuardedServer>>,
    policies: Vec<Store<GuardedPolicy>>,
    sets: Vec<Store<GuardedSet>>,
    secrets: SecretStores,
    /// Set expansion: kubeconfig watchers, Rancher pollers.
    discovery: Discovery,
    /// The ManagedCluster watch, started when a set first asks for it.
    managed_clusters: std::sync::OnceLock<ManagedClusterWatch>,
    client: Client,
    cancel: CancellationToken,
    last_good_sets: Mutex<HashMap<String, SetInput>>,
    last_good: Mutex<HashMap<String, DesiredServer>>,
    last_good_policies: Mutex<HashMap<String, DesiredPolicy>>,
    tx: watch::Sender<Arc<DesiredFleet>>,
    changed: Arc<Notify>,
    /// Reflectors that have not completed their first listing. Until all
    /// have, a snapshot would be partial (e.g. Secrets not yet known) and is
    /// not published. (Counted from the watch events, which also say when
    /// a namespace refuses the gateway: that one counts as listed.)
    unlisted: std::sync::atomic::AtomicUsize,
    listed: std::sync::atomic::AtomicBool,
    /// True once the first full snapshot is published.
    ready: watch::Sender<bool>,
    /// Counts MCPServer and ToolPolicy watch events (status changes included).
    touched: watch::Sender<u64>,
}

impl Shared {
    /// Counts one reflector's first complete listing.
    fn listed_once(&self, done: &std::sync::atomic::AtomicBool) {
        use std::sync::atomic::Ordering;
        if !done.swap(true, Ordering::AcqRel) && self.unlisted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_one();
        }
    }

    fn objects(&self) -> Vec<Arc<GuardedServer>> {
        self.servers.iter().flat_map(|s| s.state()).collect()
    }

    fn policy_objects(&self) -> Vec<Arc<GuardedPolicy>> {
        self.policies.iter().flat_map(|s| s.state()).collect()
    }

    fn set_objects(&self) -> Vec<Arc<GuardedSet>> {
        self.sets.iter().flat_map(|s| s.state()).collect()
    }

    /// Expands every MCPServerSet into `fleet`.
    fn expand_sets(&self, fleet: &mut DesiredFleet) {
        let inputs = {
            let Ok(mut last_good) = self.last_good_sets.lock() else {
                return;
            };
            desired_sets(&self.set_objects(), &mut last_good, fleet)
        };
        let wants_clusters = inputs.iter().any(|set| {
            set.spec
                .generators
                .iter()
                .any(|g| g.managed_clusters.is_some())
        });
        let clusters = wants_clusters.then(|| {
            self.managed_clusters.get_or_init(|| {
                ManagedClusterWatch::start(
                    self.client.clone(),
                    self.changed.clone(),
                    self.cancel.child_token(),
                )
            })
        });
        let inventories = Inventories {
            secrets: &self.secrets,
            managed_clusters: clusters.map(|c| c as &dyn ManagedClusterSource),
        };
        // Kubeconfig directories are read from disk: off the runtime's
        // worker where the runtime allows it.
        let mut expand = || self.discovery.expand_sets(&inputs, &inventories, fleet);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(expand),
            _ => expand(),
        }
    }

    /// Re-derives the desired fleet and publishes it if it changed.
    fn publish(&self) {
        if !self.listed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let objects = self.objects();
        let mut fleet = {
            let Ok(mut last_good) = self.last_good.lock() else {
                return;
            };
            desired_fleet(&objects, &self.secrets, &mut last_good)
        };
        {
            let Ok(mut last_good) = self.last_good_policies.lock() else {
                return;
            };
            desired_policies(&self.policy_objects(), &mut last_good, &mut fleet);
        }
        self.expand_sets(&mut fleet);
        self.tx.send_if_modified(|current| {
            if **current == fleet {
                return false;
            }
            for problem in &fleet.problems {
                if !current.problems.contains(problem) {
                    tracing::warn!(object = %problem.origin, "invalid: {}", problem.message);
                }
            }
            *current = Arc::new(fleet);
            true
        });
    }
}

/// A running Kubernetes source.
#[derive(Clone)]
pub struct KubernetesSource {
    shared: Arc<Shared>,
}

impl KubernetesSource {
    /// Starts watching; runs until `cancel`.
    pub fn start(client: Client, config: SourceConfig, cancel: CancellationToken) -> Self {
        let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
            vec![None]
        } else {
            config.namespaces.iter().cloned().map(Some).collect()
        };
        let secret_scopes: Vec<String> = if config.secret_namespaces.is_empty() {
            config.namespaces.clone()
        } else {
            config.secret_namespaces.clone()
        };
        let (tx, _) = watch::channel(Arc::new(DesiredFleet::default()));
        let changed = Arc::new(Notify::new());
        let mut server_parts = Vec::new();
        for scope in &scopes {
            let api: Api<GuardedServer> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (reader, writer) = reflector::store();
            server_parts.push((api, reader, writer));
        }
        let mut policy_parts = Vec::new();
        for scope in &scopes {
            let api: Api<GuardedPolicy> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (reader, writer) = reflector::store();
            policy_parts.push((api, reader, writer));
        }
        let mut set_parts = Vec::new();
        for scope in &scopes {
            let api: Api<GuardedSet> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (reader, writer) = reflector::store();
            set_parts.push((api, reader, writer));
        }
        let mut secret_parts = Vec::new();
        for namespace in &secret_scopes {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let (reader, writer) = reflector::store();
            secret_parts.push((api, reader, writer));
        }
        let shared = Arc::new(Shared {
            servers: server_parts.iter().map(|(_, r, _)| r.clone()).collect(),
            policies: policy_parts.iter().map(|(_, r, _)| r.clone()).collect(),
            sets: set_parts.iter().map(|(_, r, _)| r.clone()).collect(),
            secrets: SecretStores {
                stores: secret_parts.iter().map(|(_, r, _)| r.clone()).collect(),
                unreadable: Mutex::new(BTreeMap::new()),
            },
            last_good: Mutex::new(HashMap::new()),
            last_good_policies: Mutex::new(HashMap::new()),
            discovery: {
                let changed = changed.clone();
                Discovery::new(move || changed.notify_one())
            },
            managed_clusters: std::sync::OnceLock::new(),
            client: client.clone(),
            cancel: cancel.clone(),
            last_good_sets: Mutex::new(HashMap::new()),
            tx,
            changed,
            unlisted: std::sync::atomic::AtomicUsize::new(
                server_parts.len() + policy_parts.len() + set_parts.len() + secret_parts.len(),
            ),
            listed: std::sync::atomic::AtomicBool::new(false),
            ready: watch::channel(false).0,
            touched: watch::channel(0).0,
        });
        for ((api, _reader, writer), scope) in server_parts.into_iter().zip(&scopes) {
            spawn_watch(
                api,
                writer,
                Kind::Servers,
                scope.as_deref(),
                &shared,
                &cancel,
            );
        }
        for ((api, _reader, writer), scope) in policy_parts.into_iter().zip(&scopes) {
            spawn_watch(
                api,
                writer,
                Kind::Policies,
                scope.as_deref(),
                &shared,
                &cancel,
            );
        }
        for ((api, _reader, writer), scope) in set_parts.into_iter().zip(&scopes) {
            spawn_watch(api, writer, Kind::Sets, scope.as_deref(), &shared, &cancel);
        }
        for ((api, _reader, writer), namespace) in secret_parts.into_iter().zip(secret_scopes) {
            let notify = shared.clone();
            let cancel = cancel.clone();
            let done = std::sync::atomic::AtomicBool::new(false);
            let last_refusal = Mutex::new(None);
            tokio::spawn(async move {
                let events = reflector::reflector(
                    writer,
                    watcher(api, watcher::Config::default().any_semantic()),
                )
                .backoff(watch_backoff())
                .for_each(|event| {
                    let mark = |why: Option<String>| {
                        if let Ok(mut unreadable) = notify.secrets.unreadable.lock() {
                            match why {
                                Some(why) => unreadable.insert(namespace.clone(), why),
                                None => unreadable.remove(&namespace),
                            };
                        }
                    };
                    match event {
                        Err(error) => match watch_refusal(&error, "secrets", &namespace) {
                            // Only the servers that use Secrets here are
                            // affected; the rest are served.
                            Some((403, message)) => {
                                report_refusal(&last_refusal, &message);
                                mark(Some(format!("the gateway may not read Secrets in namespace {namespace}")));
                                notify.listed_once(&done);
                            }
                            Some((_, message)) => report_refusal(&last_refusal, &message),
                            None => tracing::warn!(%error, %namespace, "watching Secrets failed; retrying"),
                        },
                        Ok(watcher::Event::InitDone) => {
                            mark(None);
                            if let Ok(mut last) = last_refusal.lock() {
                                *last = None;
                            }
                            notify.listed_once(&done);
                        }
                        Ok(_) => {}
                    }
                    notify.changed.notify_one();
                    std::future::ready(())
                });
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = events => {}
                }
            });
        }
        // Deletions and relists never reach reconcile: re-derive on every change.
        let publisher = shared.clone();
        tokio::spawn(async move {
            while publisher
                .unlisted
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = publisher.changed.notified() => {}
                }
            }
            publisher
                .listed
                .store(true, std::sync::atomic::Ordering::Release);
            publisher.publish();
            publisher.ready.send_replace(true);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = publisher.changed.notified() => tokio::time::sleep(SETTLE).await,
                    _ = tokio::time::sleep(RESYNC) => {}
                }
                publisher.publish();
            }
        });
        Self { shared }
    }

    /// Snapshots of the desired fleet, for [`crate::fleet::Fleet::follow`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredFleet>> {
        self.shared.tx.subscribe()
    }

    /// Ticks on every MCPServer watch event, status changes included (for
    /// the status writer, which must see a status someone else wrote).
    pub fn touched(&self) -> watch::Receiver<u64> {
        self.shared.touched.subscribe()
    }

    /// Every watched object, valid or not (for the status writer).
    pub fn objects(&self) -> Vec<Arc<DeserializeGuard<MCPServer>>> {
        self.shared.objects()
    }

    /// Every watched MCPServerSet, valid or not (for the status writer).
    pub fn set_objects(&self) -> Vec<Arc<DeserializeGuard<MCPServerSet>>> {
        self.shared.set_objects()
    }

    /// Every watched ToolPolicy, valid or not (for the status writer).
    pub fn policy_objects(&self) -> Vec<Arc<DeserializeGuard<ToolPolicy>>> {
        self.shared.policy_objects()
    }

    /// Waits until every reflector has listed once and the first full
    /// snapshot is published.
    pub async fn wait_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// The custom resources a watch follows.
#[derive(Clone, Copy)]
enum Kind {
    Servers,
    Policies,
    Sets,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Servers => "mcpservers",
            Kind::Policies => "toolpolicies",
            Kind::Sets => "mcpserversets",
        }
    }

    /// Whether a refusal with `code` still lets the gateway become ready:
    /// MCPServers a namespace hides serve nothing (403); a missing
    /// ToolPolicy CRD means no policy can exist (404); MCPServerSets hidden
    /// or without their CRD generate nothing. A hidden policy (403) could be
    /// a deny: the gateway waits.
    fn ready_despite(self, code: u16) -> bool {
        matches!(
            (self, code),
            (Kind::Servers, 403) | (Kind::Policies, 404) | (Kind::Sets, 403 | 404)
        )
    }
}

/// Drives one reflector of `kind` in `scope` (all namespaces when `None`)
/// in a task that ends with `cancel`.
fn spawn_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: Kind,
    scope: Option<&str>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let notify = shared.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    let scope = scope.map_or("all namespaces".to_string(), |ns| format!("namespace {ns}"));
    let last_refusal = Mutex::new(None);
    let what = kind.plural();
    // One backoff (a second one stacked on it, as kube-runtime's
    // Controller adds, made a change after an outage wait ~50 s).
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .backoff(watch_backoff())
    .for_each(move |event| {
        match event {
            Ok(watcher::Event::InitDone) => {
                notify.listed_once(&done);
                if let Ok(mut last) = last_refusal.lock() {
                    *last = None;
                }
            }
            Err(error) => match watch_refusal(&error, what, &scope) {
                Some((code, message)) => {
                    report_refusal(&last_refusal, &message);
                    // (A missing MCPServer CRD, 404, keeps the gateway unready.)
                    if kind.ready_despite(code) {
                        notify.listed_once(&done);
                    }
                }
                None => tracing::warn!(%error, %scope, "watching {what} failed; retrying"),
            },
            Ok(_) => {}
        }
        notify.touched.send_modify(|n| *n = n.wrapping_add(1));
        notify.changed.notify_one();
        std::future::ready(())
    });
    let cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = events => {}
        }
    });
}
