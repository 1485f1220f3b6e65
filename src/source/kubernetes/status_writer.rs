//! Writing MCPServer, MCPServerSet and ToolPolicy status through the status subresource (server-side
//! apply, field manager `flotilla`) and Events on connect, disconnect and
//! auth failures. Only the Lease holder writes, and only what differs from
//! the object as stored (the watch cache), so a healthy fleet makes close to
//! zero API writes per minute, a new leader writes nothing that is already
//! right (each replica connects on its own, so `lastConnected` alone is not
//! a difference), and a status someone else overwrote is written back as
//! soon as the watch shows it. Events follow the stored state too: a new
//! leader does not announce again what its predecessor announced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::controller::KubernetesSource;
use super::desired::{origin_of, policy_origin_of};
use super::desired_sets::set_origin_of;
use super::lease::LeaderElection;
use super::policy_status::desired_policy_status;
use super::set_status::desired_set_status;
use crate::api::{Condition, MCPServer, MCPServerSet, MCPServerStatus, ServerState, ToolPolicy};
use crate::source::ManifestProblem;

/// Field manager of every status write.
const FIELD_MANAGER: &str = "flotilla";
/// Changes arriving within this window are written together.
const SETTLE: Duration = Duration::from_millis(500);
/// Re-check everything this often even without a change signal.
const RESYNC: Duration = Duration::from_secs(60);

/// Gives the live status of a running server, by name.
pub trait LiveStatus: Send + Sync + 'static {
    fn live_status(&self, server: &str) -> Option<MCPServerStatus>;
    /// Problems the source reported (invalid objects, missing Secrets).
    fn problems(&self) -> Vec<ManifestProblem>;
    /// Ticks when anything that status depends on changed.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The status an object should have: the live one when its server runs,
/// else `Invalid` with the reason.
pub fn desired_status(
    object: &DeserializeGuard<MCPServer>,
    live: Option<MCPServerStatus>,
    problems: &[ManifestProblem],
) -> MCPServerStatus {
    let generation = object.meta().generation;
    let origin = origin_of(&object.namespace().unwrap_or_default(), &object.name_any());
    let mut status = match live {
        Some(status) => status,
        None => {
            let message = problems
                .iter()
                .find(|p| p.origin == origin)
                .map(|p| p.message.clone())
                .unwrap_or_else(|| "not served by this gateway".into());
            MCPServerStatus {
                state: ServerState::Invalid,
                last_error: Some(message.clone()),
                conditions: vec![Condition::ready("False", "InvalidSpec", message, None)],
                ..Default::default()
            }
        }
    };
    status.observed_generation = generation;
    status.instance = object.0.as_ref().ok().and_then(|server| {
        server
            .spec
            .family
            .as_ref()
            .map(|family| family.instance_name(&object.name_any()))
    });
    for condition in &mut status.conditions {
        condition.observed_generation = generation;
    }
    status
}

/// Carries each condition's lastTransitionTime over from `previous` when its
/// status did not change, and stamps `now` when it did.
fn with_transition_times(
    mut status: MCPServerStatus,
    previous: Option<&MCPServerStatus>,
    now: &str,
) -> MCPServerStatus {
    stamp_transitions(
        &mut status.conditions,
        previous.map(|p| p.conditions.as_slice()),
        now,
    );
    status
}

fn stamp_transitions(conditions: &mut [Condition], previous: Option<&[Condition]>, now: &str) {
    for condition in conditions {
        let before = previous.and_then(|p| {
            p.iter()
                .find(|c| c.condition_type == condition.condition_type)
        });
        condition.last_transition_time = match before {
            Some(old) if old.status == condition.status => old.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
    }
}

/// What the status writer did, for `/metrics`.
#[derive(Debug, Default)]
pub struct StatusWriteCounts {
    /// Status patches the API server accepted.
    pub written: std::sync::atomic::AtomicU64,
    /// Status patches that failed (retried on the next pass).
    pub failed: std::sync::atomic::AtomicU64,
}

pub struct StatusWriter {
    client: Client,
    counts: Arc<StatusWriteCounts>,
    source: KubernetesSource,
    leader: LeaderElection,
    live: Arc<dyn LiveStatus>,
    recorder: Recorder,
    /// Per object, the resourceVersion it had when we last patched it: while
    /// the watch cache still shows that version, our write is not in it yet.
    written: HashMap<(String, String), String>,
    /// The same, for ToolPolicies.
    written_policies: HashMap<(String, String), String>,
    /// The same, for MCPServerSets.
    written_sets: HashMap<(String, String), String>,
    states: HashMap<(String, String), ServerState>,
}

impl StatusWriter {
    pub fn new(
        client: Client,
        source: KubernetesSource,
        leader: LeaderElection,
        live: Arc<dyn LiveStatus>,
        identity: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "flotilla".into(),
                instance: Some(identity),
            },
        );
        Self {
            client,
            counts: Arc::default(),
            source,
            leader,
            live,
            recorder,
            written: HashMap::new(),
            written_policies: HashMap::new(),
            written_sets: HashMap::new(),
            states: HashMap::new(),
        }
    }

    /// The writer's counts, readable while it runs.
    pub fn counts(&self) -> Arc<StatusWriteCounts> {
        self.counts.clone()
    }

    /// Writes status whenever something changes, while leading, until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut changes = self.live.changes();
        let mut desired = self.source.subscribe();
        let mut touched = self.source.touched();
        let mut leading = self.leader.subscribe();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.changed() => {}
                _ = desired.changed() => {}
                // An object changed, its status included (someone else's write).
                _ = touched.changed() => {}
                _ = leading.changed() => {
                    // A new leader cannot trust what another replica wrote.
                    self.written.clear();
                    self.written_policies.clear();
                    self.written_sets.clear();
                }
                _ = tokio::time::sleep(RESYNC) => {}
            }
            tokio::time::sleep(SETTLE).await;
            changes.borrow_and_update();
            desired.borrow_and_update();
            touched.borrow_and_update();
            if self.leader.is_leader() {
                self.write_all().await;
                self.write_policies().await;
                self.write_sets().await;
            }
        }
    }

    async fn write_all(&mut self) {
        let problems = self.live.problems();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let objects = self.source.objects();
        let mut seen = std::collections::HashSet::new();
        for object in objects {
            let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
            let key = (namespace.clone(), name.clone());
            seen.insert(key.clone());
            let current = object.0.as_ref().ok().and_then(|o| o.status.clone());
            let live = self
                .live
                .live_status(&name)
                .filter(|_| served_from(&object, &problems));
            let status = with_transition_times(
                desired_status(&object, live, &problems),
                current.as_ref(),
                &now,
            );
            self.record_transition(&object, &key, &status, current.as_ref())
                .await;
            let stored_version = object.meta().resource_version.clone().unwrap_or_default();
            let cache_behind = self.written.get(&key) == Some(&stored_version);
            if current.as_ref().is_some_and(|c| equivalent(c, &status)) || cache_behind {
                continue;
            }
            let api: Api<DeserializeGuard<MCPServer>> =
                Api::namespaced(self.client.clone(), &namespace);
            let stale = stale_fields(current.as_ref(), &status);
            let written = if stale.is_empty() {
                let patch = json!({
                    "apiVersion": "flotilla.dev/v1alpha1",
                    "kind": "MCPServer",
                    "status": status,
                });
                api.patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            } else {
                // Fields someone else set that ours lacks (a hand-written
                // lastError): server-side apply leaves another manager's
                // fields, so a merge patch removes them (null deletes).
                let mut body = serde_json::to_value(&status).unwrap_or_default();
                if let Some(fields) = body.as_object_mut() {
                    for field in stale {
                        fields.insert(field, serde_json::Value::Null);
                    }
                }
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                api.patch_status(&name, &params, &Patch::Merge(json!({"status": body})))
                    .await
            };
            match written {
                Ok(_) => {
                    self.counts.written.fetch_add(1, Ordering::Relaxed);
                    self.written.insert(key, stored_version);
                }
                Err(error) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, object = %origin_of(&namespace, &name), "writing status failed")
                }
            }
        }
        self.written.retain(|k, _| seen.contains(k));
        self.states.retain(|k, _| seen.contains(k));
    }

    /// Writes each ToolPolicy's status where it differs from the stored one.
    async fn write_policies(&mut self) {
        let fleet = self.source.subscribe().borrow().clone();
        let objects = self.source.policy_objects();
        let desired = |object: &DeserializeGuard<ToolPolicy>| desired_policy_status(object, &fleet);
        write_kind(
            &self.client,
            &self.counts,
            &mut self.written_policies,
            objects,
            desired,
        )
        .await;
    }

    /// Writes each MCPServerSet's status where it differs from the stored one.
    async fn write_sets(&mut self) {
        let fleet = self.source.subscribe().borrow().clone();
        let objects = self.source.set_objects();
        let desired = |object: &DeserializeGuard<MCPServerSet>| desired_set_status(object, &fleet);
        write_kind(
            &self.client,
            &self.counts,
            &mut self.written_sets,
            objects,
            desired,
        )
        .await;
    }

    /// Events for state changes: connected, disconnected, auth failures.
    async fn record_transition(
        &mut self,
        object: &DeserializeGuard<MCPServer>,
        key: &(String, String),
        status: &MCPServerStatus,
        stored: Option<&MCPServerStatus>,
    ) {
        // Unknown to this replica (a new leader): the stored state is the
        // one already announced.
        let before = self
            .states
            .insert(key.clone(), status.state)
            .or(stored.map(|s| s.state));
        if before == Some(status.state) {
            return;
        }
        let error = status.last_error.clone().unwrap_or_default();
        let (type_, reason, note) = match (before, status.state) {
            (_, ServerState::Connected) => (
                EventType::Normal,
                "Connected",
                format!("serving {} tools", status.tool_count),
            ),
            (Some(ServerState::Connected), ServerState::Failed) => {
                (EventType::Warning, "Disconnected", error)
            }
            (_, ServerState::Failed) => (EventType::Warning, "ConnectFailed", error),
            (_, ServerState::AuthRequired) => (EventType::Warning, "AuthFailed", error),
            (_, ServerState::Invalid) => (EventType::Warning, "InvalidSpec", error),
            _ => return,
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(%error, "publishing an event failed");
        }
    }
}

/// Whether the stored status already says what `desired` says. Each
/// replica connects to every server itself, so a status that differs only
/// in `lastConnected` (both connected) is not rewritten.
fn equivalent(stored: &MCPServerStatus, desired: &MCPServerStatus) -> bool {
    if stored == desired {
        return true;
    }
    let both_connected =
        stored.state == ServerState::Connected && desired.state == ServerState::Connected;
    both_connected
        && MCPServerStatus {
            last_connected: stored.last_connected.clone(),
            ..desired.clone()
        } == *stored
}

/// Top-level status fields the stored status has and `desired` does not.
fn stale_fields(stored: Option<&MCPServerStatus>, desired: &MCPServerStatus) -> Vec<String> {
    let keys = |status: &MCPServerStatus| -> Vec<String> {
        serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default()
    };
    let wanted = keys(desired);
    stored
        .map(keys)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !wanted.contains(k))
        .collect()
}

/// True when the running server of that name comes from this very object
/// (not a same-named object in another namespace).
fn served_from(object: &DeserializeGuard<MCPServer>, problems: &[ManifestProblem]) -> bool {
    let origin = origin_of(&object.namespace().unwrap_or_default(), &object.name_any());
    !problems
        .iter()
        .any(|p| p.origin == origin && p.server.is_none())
}

/// A namespaced kind whose status the writer keeps besides MCPServer's
/// (ToolPolicy, MCPServerSet): its kind name, its stored status, its conditions.
trait StatusKind:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    type Status: serde::Serialize + PartialEq + Clone;
    const KIND: &'static str;
    fn stored(&self) -> Option<Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    fn origin(namespace: &str, name: &str) -> String;
}

impl StatusKind for ToolPolicy {
    type Status = crate::api::ToolPolicyStatus;
    const KIND: &'static str = "ToolPolicy";
    fn stored(&self) -> Option<Self::Status> {
        self.status.clone()
    }
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn origin(namespace: &str, name: &str) -> String {
        policy_origin_of(namespace, name)
    }
}

impl StatusKind for MCPServerSet {
    type Status = crate::api::MCPServerSetStatus;
    const KIND: &'static str = "MCPServerSet";
    fn stored(&self) -> Option<Self::Status> {
        self.status.clone()
    }
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn origin(namespace: &str, name: &str) -> String {
        set_origin_of(namespace, name)
    }
}

/// Writes each object's status where it differs from the stored one;
/// `written` remembers the resource version each write left, so a watch
/// cache still behind a write does not cause another.
async fn write_kind<K: StatusKind>(
    client: &Client,
    counts: &StatusWriteCounts,
    written: &mut HashMap<(String, String), String>,
    objects: Vec<Arc<DeserializeGuard<K>>>,
    desired: impl Fn(&DeserializeGuard<K>) -> K::Status,
) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut seen = std::collections::HashSet::new();
    for object in objects {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let key = (namespace.clone(), name.clone());
        seen.insert(key.clone());
        let mut current = object.0.as_ref().ok().and_then(|o| o.stored());
        let mut status = desired(&object);
        let before = current.as_mut().map(|c| K::conditions(c).clone());
        stamp_transitions(K::conditions(&mut status), before.as_deref(), &now);
        let stored_version = object.meta().resource_version.clone().unwrap_or_default();
        let cache_behind = written.get(&key) == Some(&stored_version);
        if current.as_ref() == Some(&status) || cache_behind {
            continue;
        }
        let api: Api<DeserializeGuard<K>> = Api::namespaced(client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": K::KIND,
            "status": status,
        });
        let result = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        match result {
            Ok(_) => {
                counts.written.fetch_add(1, Ordering::Relaxed);
                written.insert(key, stored_version);
            }
            Err(error) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, object = %K::origin(&namespace, &name), "writing status failed")
            }
        }
    }
    written.retain(|k, _| seen.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> DeserializeGuard<MCPServer> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn an_unserved_object_is_invalid_with_its_problem_and_generation() {
        let o = object(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: a, namespace: ns, generation: 4}\nspec: {type: nope}\n",
        );
        let problems = vec![ManifestProblem {
            origin: "MCPServer ns/a".into(),
            server: Some("a".into()),
            policy: None,
            set: None,
            message: "invalid object: unknown variant `nope`".into(),
        }];
        let status = desired_status(&o, None, &problems);
        assert_eq!(status.state, ServerState::Invalid);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.conditions[0].reason, "InvalidSpec");
        assert!(status.last_error.unwrap().contains("unknown variant"));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let ready = |s: &str, t: Option<&str>| MCPServerStatus {
            conditions: vec![Condition {
                condition_type: "Ready".into(),
                status: s.into(),
                last_transition_time: t.map(str::to_string),
                ..Default::default()
            }],
            ..Default::default()
        };
        let old = ready("True", Some("2026-01-01T00:00:00Z"));
        let same = with_transition_times(ready("True", None), Some(&old), "2026-02-02T00:00:00Z");
        assert_eq!(
            same.conditions[0].last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        let flipped =
            with_transition_times(ready("False", None), Some(&old), "2026-02-02T00:00:00Z");
        assert_eq!(
            flipped.conditions[0].last_transition_time.as_deref(),
            Some("2026-02-02T00:00:00Z")
        );
    }

    #[test]
    fn a_connect_time_alone_is_not_a_difference_but_anything_else_is() {
        let connected = |at: &str, tools: u32| MCPServerStatus {
            state: ServerState::Connected,
            last_connected: Some(at.into()),
            tool_count: tools,
            ..Default::default()
        };
        let stored = connected("2026-01-01T00:00:00Z", 4);
        assert!(equivalent(&stored, &connected("2026-01-01T00:05:00Z", 4)));
        assert!(!equivalent(&stored, &connected("2026-01-01T00:05:00Z", 5)));
        let failed = MCPServerStatus {
            state: ServerState::Failed,
            ..stored.clone()
        };
        assert!(!equivalent(&failed, &stored));
    }
}
