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
//!
//! The other edge: rmcp names a request's progress token only as it sends
//! the request, so the call's route is registered a moment after the
//! upstream may already report progress. Progress with no route is held
//! ([`ProgressTable`], at most 2 s and 256 notifications) and relayed when
//! the route for its token arrives.

#![allow(deprecated)] // log messages (SEP-2577) are still sent by 2025 servers

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    GetExtensions, JsonRpcMessage, ProgressNotificationParam, ProgressToken, ServerNotification,
};
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
pub type ProgressRoutes = Arc<ProgressTable>;

/// Progress that came before its route is held this long at most...
const EARLY_KEEP: Duration = Duration::from_secs(2);
/// ...and this many notifications at most.
const EARLY_MAX: usize = 256;

/// The routes, and progress that arrived before its route: rmcp names a
/// request's progress token only as it sends the request, so the route is
/// registered a moment after the upstream may already be reporting.
#[derive(Default)]
pub struct ProgressTable {
    inner: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    routes: HashMap<ProgressToken, ProgressRoute>,
    early: Early,
}

/// Progress with no route yet, oldest first, bounded in age and number.
#[derive(Default)]
struct Early(std::collections::VecDeque<(std::time::Instant, ProgressNotificationParam)>);

impl Early {
    fn hold(&mut self, now: std::time::Instant, params: &ProgressNotificationParam) {
        while self
            .0
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > EARLY_KEEP)
        {
            self.0.pop_front();
        }
        if self.0.len() >= EARLY_MAX {
            self.0.pop_front();
        }
        self.0.push_back((now, params.clone()));
    }

    /// The notifications held for `token`, oldest first; the rest stay.
    fn take(&mut self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        let mut taken = Vec::new();
        self.0.retain(|(_, params)| {
            let ours = params.progress_token == *token;
            if ours {
                taken.push(params.clone());
            }
            !ours
        });
        taken
    }
}

impl ProgressTable {
    /// Where progress under `token` goes, if anywhere.
    pub fn route(&self, token: &ProgressToken) -> Option<ProgressRoute> {
        self.inner.lock().ok()?.routes.get(token).cloned()
    }

    /// The route for `token`, or, with none yet, the notification is held
    /// for a route registered within [`EARLY_KEEP`].
    pub fn route_or_hold(&self, params: &ProgressNotificationParam) -> Option<ProgressRoute> {
        let mut inner = self.inner.lock().ok()?;
        if let Some(route) = inner.routes.get(&params.progress_token) {
            return Some(route.clone());
        }
        inner.early.hold(std::time::Instant::now(), params);
        None
    }

    /// Registers `route` for `token`; returns the progress under `token`
    /// that came before it, oldest first.
    pub fn insert(
        &self,
        token: ProgressToken,
        route: ProgressRoute,
    ) -> Vec<ProgressNotificationParam> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let early = inner.early.take(&token);
        inner.routes.insert(token, route);
        early
    }

    pub fn remove(&self, token: &ProgressToken) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.routes.remove(token);
        }
    }
}

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
            ServerNotification::ProgressNotification(progress) => self
                .routes
                .route(&progress.params.progress_token)
                .map(|r| r.tally),
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
    use rmcp::model::NumberOrString;

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

    fn progress(token: i64, step: f64) -> ProgressNotificationParam {
        ProgressNotificationParam::new(ProgressToken(NumberOrString::Number(token)), step)
    }

    #[test]
    fn progress_before_its_route_is_held_for_it_in_order_and_bounded() {
        let mut early = Early::default();
        let start = std::time::Instant::now();
        early.hold(start, &progress(1, 1.0));
        early.hold(start, &progress(2, 1.0));
        early.hold(start, &progress(1, 2.0));
        let steps: Vec<f64> = early
            .take(&ProgressToken(NumberOrString::Number(1)))
            .iter()
            .map(|p| p.progress)
            .collect();
        assert_eq!(steps, [1.0, 2.0]);
        // The other token's stays for its own route.
        assert_eq!(
            early.take(&ProgressToken(NumberOrString::Number(2))).len(),
            1
        );

        // Too old: gone when the next one is held.
        early.hold(start, &progress(3, 1.0));
        early.hold(
            start + EARLY_KEEP + Duration::from_millis(1),
            &progress(4, 1.0),
        );
        assert!(
            early
                .take(&ProgressToken(NumberOrString::Number(3)))
                .is_empty()
        );

        // At most EARLY_MAX, the oldest dropped first.
        for n in 0..(EARLY_MAX as i64 + 10) {
            early.hold(start + EARLY_KEEP, &progress(100 + n, 1.0));
        }
        assert_eq!(early.0.len(), EARLY_MAX);
        assert!(
            early
                .take(&ProgressToken(NumberOrString::Number(100)))
                .is_empty()
        );
    }
}
