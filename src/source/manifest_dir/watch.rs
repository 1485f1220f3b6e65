//! Watching the manifest directory: file events are coalesced (a save is
//! several events, `kubectl`-style tools write many files at once), and each
//! re-read runs on a blocking thread so a slow or hostile file never stalls
//! the requests the runtime is serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LastLoad, load_dir_with};
use crate::source::DesiredFleet;
use crate::source::discovery::Discovery;

/// Editors write files in several steps; wait for this much quiet before re-reading.
const QUIET: Duration = Duration::from_millis(150);
/// Never wait longer than this after the first event, even if events keep coming.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// A watched manifest directory publishing [`DesiredFleet`] snapshots.
pub struct ManifestDir {
    rx: watch::Receiver<Arc<DesiredFleet>>,
    // Dropping the watcher stops the notifications.
    _watcher: notify::RecommendedWatcher,
    /// The task that re-reads the directory; stopped when this is dropped.
    reloads: JoinHandle<()>,
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        self.reloads.abort();
    }
}

impl ManifestDir {
    /// Loads `dir` now and keeps re-loading it on change until `cancel`.
    pub fn watch(dir: PathBuf, cancel: CancellationToken) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        // One slot: an event that finds it full is already covered by the pending one.
        let (event_tx, event_rx) = mpsc::channel(1);
        // Kubeconfig directories and Rancher polls of MCPServerSets re-read
        // the directory the same way a file event does.
        let inventory_tx = event_tx.clone();
        let discovery = Discovery::new(move || {
            let _ = inventory_tx.try_send(());
        });
        let mut last = LastLoad::default();
        let initial = load_dir_with(&dir, &mut last, &discovery);
        report(&initial, None);
        let (tx, rx) = watch::channel(Arc::new(initial));
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = event_tx.try_send(());
                }
            })
            .context("creating file watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching manifest directory {}", dir.display()))?;
        let reloads = tokio::spawn(reload_on_change(dir, last, discovery, event_rx, tx, cancel));
        Ok(Self {
            rx,
            _watcher: watcher,
            reloads,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredFleet>> {
        self.rx.clone()
    }
}

async fn reload_on_change(
    dir: PathBuf,
    mut last: LastLoad,
    discovery: Discovery,
    mut events: mpsc::Receiver<()>,
    tx: watch::Sender<Arc<DesiredFleet>>,
    cancel: CancellationToken,
) {
    let dir = Arc::new(dir);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            settled = settle(&mut events, QUIET, MAX_DELAY) => if !settled { return },
        }
        let reading = Arc::clone(&dir);
        let discovery = discovery.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let next = load_dir_with(&reading, &mut last, &discovery);
            (next, last)
        });
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            loaded = loaded => match loaded {
                Ok((next, kept)) => {
                    last = kept;
                    next
                }
                Err(e) => {
                    // A panic while reading: keep serving the fleet as it was.
                    tracing::error!(dir = %dir.display(), error = %e, "reading the manifest directory failed");
                    last = LastLoad::default();
                    continue;
                }
            },
        };
        let prev = tx.borrow().clone();
        if *prev != next {
            report(&next, Some(&prev));
            tx.send_replace(Arc::new(next));
        }
    }
}

/// Waits for the next burst of events to end: `quiet` without an event, or
/// `max` after its first event, whichever comes first. False once the watcher
/// is gone.
async fn settle(events: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) -> bool {
    if events.recv().await.is_none() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + max;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(quiet) => return true,
            _ = tokio::time::sleep_until(deadline) => return true,
            got = events.recv() => if got.is_none() { return true },
        }
    }
}

/// Logs problems that are new since `prev`.
fn report(fleet: &DesiredFleet, prev: Option<&DesiredFleet>) {
    for problem in &fleet.problems {
        if prev.is_some_and(|p| p.problems.contains(problem)) {
            continue;
        }
        tracing::warn!(
            manifest = %problem.origin,
            server = problem.server.as_deref().unwrap_or(""),
            "invalid manifest: {}",
            problem.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_read_once_after_it_goes_quiet() {
        let (tx, mut rx) = mpsc::channel(1);
        let started = tokio::time::Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx
        });
        assert!(settle(&mut rx, QUIET, MAX_DELAY).await);
        // Ten events 50 ms apart, then 150 ms of quiet.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(450 + 150) && waited < Duration::from_millis(700),
            "{waited:?}"
        );
        let _tx = sender.await.unwrap();
        assert!(rx.try_recv().is_err(), "the burst is consumed");
    }

    #[tokio::test(start_paused = true)]
    async fn events_that_never_stop_still_get_read_within_the_maximum_delay() {
        let (tx, mut rx) = mpsc::channel(1);
        let sender = tokio::spawn(async move {
            loop {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx, QUIET, MAX_DELAY).await);
        let waited = started.elapsed();
        assert!(
            waited >= MAX_DELAY && waited < MAX_DELAY + QUIET,
            "{waited:?}"
        );
        sender.abort();
    }

    #[tokio::test]
    async fn a_closed_watcher_ends_the_wait() {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        drop(tx);
        assert!(!settle(&mut rx, QUIET, MAX_DELAY).await);
    }
}
