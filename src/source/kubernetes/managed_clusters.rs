//! Watching Open Cluster Management `ManagedCluster` objects
//! (`cluster.open-cluster-management.io/v1`, cluster-scoped) for
//! MCPServerSets' `managedClusters` generator. Started the first time a set
//! asks, so a gateway without such sets never lists them (and needs no
//! ClusterRole for them); a hub without OCM (404) or a gateway without the
//! grant (403) is reported on the sets that ask, in words with the fix.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::controller::watch_backoff;
use crate::source::discovery::{ManagedClusterSource, managed_cluster_api_resource};

/// A running watch of every ManagedCluster; stops when dropped or cancelled.
pub(super) struct ManagedClusterWatch {
    store: Store<DynamicObject>,
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WatchState {
    listed: bool,
    /// Why the API refuses the list, while it does.
    refusal: Option<String>,
}

impl Drop for ManagedClusterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ManagedClusterWatch {
    /// Starts the watch; `changed` is notified on every event.
    pub(super) fn start(client: Client, changed: Arc<Notify>, cancel: CancellationToken) -> Self {
        let resource = managed_cluster_api_resource();
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let writer = reflector::store::Writer::new(resource);
        let store = writer.as_reader();
        let state = Arc::new(Mutex::new(WatchState::default()));
        let seen = state.clone();
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic()),
        )
        .backoff(watch_backoff())
        .for_each(move |event| {
            if let Ok(mut state) = seen.lock() {
                match &event {
                    Ok(watcher::Event::InitDone) => {
                        state.listed = true;
                        state.refusal = None;
                    }
                    Err(error) => {
                        if let Some(why) = refusal(error) {
                            if state.refusal.as_deref() != Some(why.as_str()) {
                                tracing::warn!("{why}");
                            }
                            state.refusal = Some(why);
                        } else {
                            tracing::warn!(%error, "watching ManagedClusters failed; retrying");
                        }
                    }
                    Ok(_) => {}
                }
            }
            changed.notify_one();
            std::future::ready(())
        });
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = events => {}
            }
        });
        Self { store, state, task }
    }
}

impl ManagedClusterSource for ManagedClusterWatch {
    fn managed_clusters(&self) -> Result<Vec<Arc<DynamicObject>>, String> {
        let state = self
            .state
            .lock()
            .map_err(|_| "the ManagedCluster watch failed".to_string())?;
        if let Some(refusal) = &state.refusal {
            return Err(refusal.clone());
        }
        if !state.listed {
            return Err("waiting for the first list of ManagedClusters".into());
        }
        Ok(self.store.state())
    }
}

/// What a refused list means, with the fix; `None` for passing faults.
fn refusal(error: &watcher::Error) -> Option<String> {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status,
        _ => return None,
    };
    Some(match status.code {
        404 => "the API server has no ManagedClusters (cluster.open-cluster-management.io/v1): \
                managedClusters needs an Open Cluster Management hub"
            .to_string(),
        403 => "the gateway may not list ManagedClusters (403): grant its service account get, \
                list and watch on managedclusters.cluster.open-cluster-management.io (Helm: \
                discovery.managedClusters=true)"
            .to_string(),
        code => format!(
            "listing ManagedClusters failed ({code}): {}",
            status.message
        ),
    })
}
