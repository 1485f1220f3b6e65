//! Fleet discovery: MCPServerSets expanded into ordinary desired servers.
//! Each generator turns an inventory into [`Member`]s (one file per
//! generator: `list`, `kubeconfig_dir`, `managed_clusters`, `rancher`), the
//! template renders each member into an MCPServer (`template`), and
//! `expand` adds them to the desired fleet beside the hand-written servers,
//! which win any name collision. Both sources call [`Discovery::expand_sets`]
//! on every re-derivation; a [`Discovery`] owns what must outlive one
//! derivation (directory watchers, Rancher pollers, last good inventories)
//! and drops what no set uses any more.

mod expand;
mod kubeconfig_dir;
mod list;
mod managed_clusters;
mod rancher;
mod template;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crate::api::{GeneratorSpec, MCPServerSetSpec};
use crate::source::kubernetes::SecretLookup;
use crate::source::{DesiredFleet, ManifestProblem};

pub use managed_clusters::{ManagedClusterSource, managed_cluster_api_resource};

/// Annotation (on a ManagedCluster or Rancher cluster) listing other names of
/// the member's family instance, comma-separated.
pub const ALIASES_ANNOTATION: &str = "flotilla.dev/aliases";
/// Label every generated MCPServer carries: the set that made it.
pub const SET_LABEL: &str = "flotilla.dev/set";
/// Generators read per set (each may poll or watch); more are reported and ignored.
pub const MAX_GENERATORS: usize = 16;

/// One member of an inventory: what the template's placeholders read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Member {
    /// `{{name}}`: the cluster's (or file's, or context's) name.
    pub name: String,
    /// `{{labels.<key>}}`; also the generated server's labels.
    pub labels: BTreeMap<String, String>,
    /// Added to the generated server's `family.aliases`.
    pub aliases: Vec<String>,
    /// Every other placeholder, e.g. `kubeconfig`, `context`, `id`, `url`.
    pub values: BTreeMap<String, String>,
}

impl Member {
    fn lookup(&self, key: &str) -> Option<&str> {
        if key == "name" {
            return Some(&self.name);
        }
        if let Some(label) = key.strip_prefix("labels.") {
            return self.labels.get(label).map(String::as_str);
        }
        self.values.get(key).map(String::as_str)
    }

    /// Every key `lookup` answers, for messages.
    fn keys(&self) -> Vec<String> {
        let mut keys = vec!["name".to_string()];
        keys.extend(self.labels.keys().map(|k| format!("labels.{k}")));
        keys.extend(self.values.keys().cloned());
        keys
    }
}

/// Splits an aliases annotation: comma-separated, blanks dropped.
fn aliases_from(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    annotations
        .and_then(|a| a.get(ALIASES_ANNOTATION))
        .map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One MCPServerSet to expand, as a source read it.
#[derive(Clone, Debug)]
pub struct SetInput {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    pub spec: MCPServerSetSpec,
    /// `file#document` or `MCPServerSet namespace/name`.
    pub origin: String,
    /// Relative kubeconfig directories are resolved against this (the
    /// manifest's directory); `None`: the working directory.
    pub base_dir: Option<PathBuf>,
}

impl SetInput {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the generators may read besides the set itself.
pub struct Inventories<'a> {
    pub secrets: &'a dyn SecretLookup,
    /// ManagedClusters on the API server; `None` where there is none (the
    /// manifest directory).
    pub managed_clusters: Option<&'a dyn ManagedClusterSource>,
}

/// Everything discovery keeps between derivations; cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    /// Called when an inventory changed on its own (a file, a poll).
    on_change: Box<dyn Fn() + Send + Sync>,
    /// Watch directories and poll Rancher (false for `flotilla validate`).
    live: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per kubeconfig directory, its watcher and the directory it watches:
    /// the directory itself, or (while it does not exist) its nearest
    /// existing ancestor, so that its creation is seen too.
    watchers: HashMap<PathBuf, (PathBuf, notify::RecommendedWatcher)>,
    pollers: HashMap<String, rancher::Poller>,
    /// Last good members per generator (`namespace/name#index`): an
    /// inventory that cannot be read keeps its members, with the error shown.
    last_good: HashMap<String, Vec<Member>>,
}

impl Discovery {
    /// Discovery that watches kubeconfig directories and polls Rancher,
    /// calling `on_change` whenever an inventory changed on its own. Needs a
    /// Tokio runtime (pollers are spawned on it).
    pub fn new(on_change: impl Fn() + Send + Sync + 'static) -> Self {
        Self::build(Box::new(on_change), true)
    }

    /// Discovery that reads what it can once and starts nothing (`flotilla
    /// validate`): Rancher is not asked.
    pub fn inert() -> Self {
        Self::build(Box::new(|| {}), false)
    }

    fn build(on_change: Box<dyn Fn() + Send + Sync>, live: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                on_change,
                live,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Expands every set into `fleet` (after its hand-written servers):
    /// members into `servers`, each set into `sets`, errors into `problems`.
    /// Watchers and pollers no set uses any more are stopped.
    pub fn expand_sets(
        &self,
        sets: &[SetInput],
        inventories: &Inventories,
        fleet: &mut DesiredFleet,
    ) {
        let mut used_dirs = HashSet::new();
        let mut used_pollers = HashSet::new();
        let mut used_generators = HashSet::new();
        let mut sorted: Vec<&SetInput> = sets.iter().collect();
        sorted.sort_by_key(|s| (s.namespace.clone(), s.name.clone()));
        for set in sorted {
            let mut found = Vec::new();
            let generators = set.spec.generators.iter().take(MAX_GENERATORS);
            for (index, generator) in generators.enumerate() {
                let key = format!("{}#{index}", set.key());
                used_generators.insert(key.clone());
                let members = self.members(
                    set,
                    &key,
                    generator,
                    inventories,
                    &mut used_dirs,
                    &mut used_pollers,
                );
                found.push(self.keep_last_good(&key, members));
            }
            expand::add_set(set, found, inventories.secrets, fleet);
        }
        for problem in fleet
            .sets
            .values()
            .flat_map(|set| {
                set.errors.iter().map(|error| ManifestProblem {
                    origin: set.origin.clone(),
                    server: None,
                    policy: None,
                    set: Some(set.name.clone()),
                    message: error.clone(),
                })
            })
            .collect::<Vec<_>>()
        {
            fleet.problems.push(problem);
        }
        if let Ok(mut state) = self.inner.state.lock() {
            state.watchers.retain(|dir, _| used_dirs.contains(dir));
            state.pollers.retain(|key, _| used_pollers.contains(key));
            state
                .last_good
                .retain(|key, _| used_generators.contains(key));
        }
    }

    /// One generator's members, or why there are none.
    fn members(
        &self,
        set: &SetInput,
        key: &str,
        generator: &GeneratorSpec,
        inventories: &Inventories,
        used_dirs: &mut HashSet<PathBuf>,
        used_pollers: &mut HashSet<String>,
    ) -> Inventory {
        let chosen = [
            generator.list.is_some(),
            generator.kubeconfig_dir.is_some(),
            generator.managed_clusters.is_some(),
            generator.rancher.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if chosen != 1 {
            return Inventory::failed(
                "set exactly one of list, kubeconfigDir, managedClusters, rancher".into(),
            );
        }
        if let Some(list) = &generator.list {
            return list::members(list);
        }
        if let Some(dir) = &generator.kubeconfig_dir {
            let path = match &set.base_dir {
                Some(base) => base.join(&dir.path),
                None => PathBuf::from(&dir.path),
            };
            if self.inner.live {
                self.watch_dir(&path);
            }
            used_dirs.insert(path.clone());
            return kubeconfig_dir::members(&path, dir);
        }
        if let Some(clusters) = &generator.managed_clusters {
            return match inventories.managed_clusters {
                Some(source) => managed_clusters::members(source, clusters),
                None => Inventory::failed(
                    "managedClusters needs the Kubernetes source (OCM ManagedClusters live on \
                     an API server); a manifest directory cannot list them"
                        .into(),
                ),
            };
        }
        let Some(rancher) = &generator.rancher else {
            return Inventory::failed("no generator set".into());
        };
        if !self.inner.live {
            return Inventory::members(Vec::new());
        }
        used_pollers.insert(key.to_string());
        let token = match rancher::token(rancher, &set.namespace, inventories.secrets) {
            Ok(token) => token,
            Err(error) => return Inventory::failed(error),
        };
        let Ok(mut state) = self.inner.state.lock() else {
            return Inventory::failed("internal lock poisoned".into());
        };
        let poller = state.pollers.entry(key.to_string()).or_insert_with(|| {
            rancher::Poller::start(rancher.clone(), token.clone(), self.notifier())
        });
        if !poller.serves(rancher, &token) {
            *poller = rancher::Poller::start(rancher.clone(), token, self.notifier());
        }
        poller.latest()
    }

    /// Calls `on_change` while this discovery lives. Watchers and pollers
    /// hold this, never the discovery itself: they belong to it, and a
    /// strong reference back would keep it (and them) alive for ever.
    fn notifier(&self) -> impl Fn() + Send + Sync + 'static {
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        move || {
            if let Some(inner) = inner.upgrade() {
                (inner.on_change)();
            }
        }
    }

    /// Starts watching `dir` unless already watched. While `dir` does not
    /// exist its nearest existing ancestor is watched instead, and the
    /// directory itself once it appears.
    fn watch_dir(&self, dir: &std::path::Path) {
        use notify::Watcher as _;
        let Ok(mut state) = self.inner.state.lock() else {
            return;
        };
        let target = dir
            .ancestors()
            .find(|a| a.is_dir())
            .unwrap_or(dir)
            .to_path_buf();
        if state
            .watchers
            .get(dir)
            .is_some_and(|(watched, _)| *watched == target)
        {
            return;
        }
        let notify = self.notifier();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                notify();
            }
        });
        let watching = watcher.and_then(|mut watcher| {
            watcher
                .watch(&target, notify::RecursiveMode::NonRecursive)
                .map(|()| watcher)
        });
        match watching {
            Ok(watcher) => {
                state.watchers.insert(dir.to_path_buf(), (target, watcher));
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch kubeconfig directory")
            }
        }
    }

    /// An inventory that failed keeps the generator's last good members.
    fn keep_last_good(&self, key: &str, mut found: Inventory) -> Inventory {
        let Ok(mut state) = self.inner.state.lock() else {
            return found;
        };
        match &found.members {
            Some(members) => {
                state.last_good.insert(key.to_string(), members.clone());
            }
            None => {
                if let Some(last) = state.last_good.get(key).filter(|l| !l.is_empty()) {
                    found.errors = found
                        .errors
                        .into_iter()
                        .map(|e| format!("{e}; its last {} member(s) are kept", last.len()))
                        .collect();
                    found.members = Some(last.clone());
                }
            }
        }
        found
    }
}

/// What one generator found: members (`None` when the inventory could not
/// be read at all) and errors (a whole failure, or members left out).
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    members: Option<Vec<Member>>,
    errors: Vec<String>,
}

impl Inventory {
    fn members(members: Vec<Member>) -> Self {
        Self {
            members: Some(members),
            errors: Vec::new(),
        }
    }

    fn failed(error: String) -> Self {
        Self {
            members: None,
            errors: vec![error],
        }
    }
}
