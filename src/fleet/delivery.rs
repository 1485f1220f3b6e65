//! Relayed notifications arrive before the response they preceded. rmcp
//! hands each notification to a task of its own but completes a request the
//! moment its response is read, so the last progress or log notification of
//! a call could reach the gateway's handler after the call's response had
//! already gone to the client, and be dropped.
//!
//! [`Counted`] wraps an upstream transport and counts, in arrival order, the
//! notifications that will be relayed to a call's client (its progress, the
//! log messages at the level it asked for); the relay counts what it has
//! passed on; a finished call waits (bounded) until the two agree before its
//! response is returned. A call with nothing to relay waits not at all.

#![allow(deprecated)] // log messages (SEP-2577) are still sent by 2025 servers

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{GetExtensions, JsonRpcMessage, ProgressToken, ServerNotification};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{Peer, RoleClient, RoleServer};
use tokio::sync::Notify;

use super::client_handler::{InflightCalls, UpstreamClient, call_of};

/// The longest a response waits for progress it overtook.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// Where progress for one in-flight upstream request must go, and how much
/// of it arrived and was relayed.
#[derive(Clone)]
pub struct ProgressRoute {
    pub client: Peer<RoleServer>,
    pub client_token: ProgressToken,
    /// The tally of the call the progress belongs to.
    pub tally: Arc<Tally>,
}

/// Relayable notifications of one call: read from the transport, and
/// handled (relayed, or found undeliverable).
#[derive(Default)]
pub struct Tally {
    received: AtomicU64,
    handled: AtomicU64,
    changed: Notify,
}

impl Tally {
    pub fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Waits until every notification read so far has been handled.
    pub async fn settle(&self) {
        let caught_up =
            || self.handled.load(Ordering::Acquire) >= self.received.load(Ordering::Acquire);
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if caught_up() {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(SETTLE_LIMIT, wait).await.is_err() {
            tracing::debug!("progress still unrelayed after the response; returning it anyway");
        }
    }
}

/// In-flight requests that asked for progress, keyed by the token the
/// gateway gave the upstream (never the client's: two clients may pick the same).
pub type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, ProgressRoute>>>;

/// An upstream transport that tallies relayable notifications as they are read.
pub struct Counted<T> {
    inner: T,
    routes: ProgressRoutes,
    calls: InflightCalls,
}

impl<T> Counted<T> {
    pub fn new(inner: T, handler: &UpstreamClient) -> Self {
        Self {
            inner,
            routes: handler.progress.clone(),
            calls: handler.inflight.clone(),
        }
    }

    /// Counts `message` for the call whose client it will be relayed to
    /// (the same decisions the handler makes when it relays it).
    fn tally(&self, message: &RxJsonRpcMessage<RoleClient>) {
        let JsonRpcMessage::Notification(notification) = message else {
            return;
        };
        let tally = match &notification.notification {
            ServerNotification::ProgressNotification(progress) => {
                self.routes.lock().ok().and_then(|routes| {
                    routes
                        .get(&progress.params.progress_token)
                        .map(|r| r.tally.clone())
                })
            }
            ServerNotification::LoggingMessageNotification(log) => {
                call_of(&self.calls, notification.notification.extensions())
                    .filter(|call| call.wants_log(log.params.level))
                    .map(|call| call.tally)
            }
            _ => None,
        };
        if let Some(tally) = tally {
            tally.received.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl<T> Transport<RoleClient> for Counted<T>
where
    T: Transport<RoleClient>,
{
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await?;
        self.tally(&message);
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_response_waits_for_progress_read_before_it() {
        let tally = Arc::new(Tally::default());
        tally.received.fetch_add(2, Ordering::AcqRel);
        let relay = tally.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            relay.handled_one();
            relay.handled_one();
        });
        tally.settle().await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(30) && waited < SETTLE_LIMIT,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_request_without_progress_does_not_wait() {
        let started = tokio::time::Instant::now();
        Tally::default().settle().await;
        assert!(started.elapsed() < Duration::from_millis(5));
    }
}
