//! rmcp's session with a Streamable HTTP upstream, parked while nobody
//! uses it.
//!
//! Most calls never touch rmcp: the relay writes them on the session's wire.
//! What still does (a call the relay does not take, a fan-out member, a
//! listing, a subscription, a question the server sends on its standalone
//! stream) is occasional, yet rmcp's service costs about 30 KB per upstream
//! while it runs (its task and two channels whose first blocks are
//! allocated up front), and a fleet holds one per server and, with SSO, one
//! per user and server. So after [`FleetSettings::park_after`] without a use,
//! the supervisor ends rmcp's service but not the server's session: the
//! session id, revision and credential stay on the line, the standalone
//! stream stays open ([`Parked`]), and the server's handshake answer is
//! kept. The next use wakes it: a new rmcp service on the same session
//! (`serve_directly`, no handshake; a few microseconds), and a message the
//! server sends while parked wakes it too and is its first.
//!
//! [`PeerCell`] is what users see: the live peer, counted while in use (a
//! session in use is never parked), or a wake-up. [`Service`] is the
//! supervisor's side: rmcp's running service, parked and woken.
//!
//! [`FleetSettings::park_after`]: super::FleetSettings::park_after

use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::FusedFuture;
use rmcp::model::ServerPeerInfo;
use rmcp::service::{QuitReason, RunningService, RunningServiceCancellationToken, serve_directly};
use rmcp::{Peer, RoleClient};
use tokio::sync::Notify;

use super::client_handler::UpstreamClient;
use super::delivery::Counted;
use super::http_transport::{Dock, Parked};

/// The live session's peer, as its users get it.
#[derive(Default)]
pub struct PeerCell {
    state: Mutex<CellState>,
    /// A user asks the supervisor to wake the parked session.
    wake: Notify,
    /// The session woke (or ended).
    woken: Notify,
}

#[derive(Default)]
struct CellState {
    peer: Option<Arc<Peer<RoleClient>>>,
    /// The server's handshake answer, while there is a session.
    info: Option<Arc<ServerPeerInfo>>,
    parked: bool,
    users: usize,
    last_used: Option<Instant>,
}

/// One use of the live peer; the session is not parked while it lasts.
pub struct PeerUse<'a> {
    peer: Arc<Peer<RoleClient>>,
    cell: &'a PeerCell,
}

impl Deref for PeerUse<'_> {
    type Target = Peer<RoleClient>;
    fn deref(&self) -> &Self::Target {
        &self.peer
    }
}

impl Drop for PeerUse<'_> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.cell.state.lock() {
            state.users = state.users.saturating_sub(1);
            state.last_used = Some(Instant::now());
        }
    }
}

impl PeerCell {
    /// The live peer for one use, waking a parked session first (waiting at
    /// most `wait`); `None` when there is no session.
    pub async fn acquire(&self, wait: Duration) -> Option<PeerUse<'_>> {
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut state = self.state.lock().ok()?;
                if let Some(peer) = &state.peer {
                    let peer = peer.clone();
                    state.users += 1;
                    return Some(PeerUse { peer, cell: self });
                }
                if !state.parked {
                    return None;
                }
            }
            self.wake.notify_one();
            tokio::time::timeout(wait, woken).await.ok()?;
        }
    }

    /// Whether there is a session (awake or parked).
    pub fn is_live(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|state| state.peer.is_some() || state.parked)
    }

    /// The server's handshake answer, while there is a session.
    pub fn info(&self) -> Option<Arc<ServerPeerInfo>> {
        self.state.lock().ok()?.info.clone()
    }

    /// Whether the session is parked now.
    pub fn is_parked(&self) -> bool {
        self.state.lock().is_ok_and(|state| state.parked)
    }

    /// A session began (`Some`) or ended (`None`).
    pub fn set(&self, peer: Option<Peer<RoleClient>>) {
        if let Ok(mut state) = self.state.lock() {
            state.info = peer.as_ref().and_then(Peer::peer_info);
            state.peer = peer.map(Arc::new);
            state.parked = false;
            state.last_used = Some(Instant::now());
        }
        self.woken.notify_waiters();
    }

    /// Counts a use by the supervisor itself (a refresh, a probe).
    fn touch(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.last_used = Some(Instant::now());
        }
    }

    /// Takes the peer away for parking, if nobody has used it for `idle`.
    fn take_for_parking(&self, idle: Duration) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let unused = state.users == 0
            && state.peer.is_some()
            && state.last_used.is_none_or(|at| at.elapsed() >= idle);
        if unused {
            state.peer = None;
            state.parked = true;
        }
        unused
    }

    fn woke(&self, peer: Peer<RoleClient>) {
        if let Ok(mut state) = self.state.lock() {
            state.peer = Some(Arc::new(peer));
            state.parked = false;
            state.last_used = Some(Instant::now());
        }
        self.woken.notify_waiters();
    }

    /// Resolves when a user asked for the parked session.
    async fn wake_requested(&self) {
        self.wake.notified().await;
    }
}

type Running = RunningService<RoleClient, UpstreamClient>;
pub type Quit = Result<QuitReason, tokio::task::JoinError>;

/// See [`Service::next_event`].
pub enum Event {
    /// The running service ended.
    Closed(Quit),
    /// A user asked for the parked session.
    WakeRequested,
    /// The server sent this on the parked session (`None`: its streams ended).
    Message(Option<String>),
}

/// rmcp's running service with one upstream, as the supervisor holds it.
pub struct Service {
    /// Ends the running service; `None` once used (or while parked).
    stop: Option<RunningServiceCancellationToken>,
    /// Ends when the service does; `None` while parked.
    closed: Option<Pin<Box<dyn FusedFuture<Output = Quit> + Send>>>,
    /// What parking needs (Streamable HTTP only).
    parking: Option<Parking>,
}

struct Parking {
    dock: Dock,
    handler: UpstreamClient,
    parked: Option<Parked>,
}

impl Service {
    /// Holds `running`; with a `dock`, it can be parked and woken.
    pub fn new(running: Running, dock: Option<Dock>, handler: UpstreamClient) -> Self {
        // A woken service is told who the server is (its handshake answer).
        let parking = dock
            .filter(|_| running.peer().peer_info().is_some())
            .map(|dock| Parking {
                dock,
                handler,
                parked: None,
            });
        let stop = Some(running.cancellation_token());
        Self {
            stop,
            closed: Some(Box::pin(running.waiting().fuse())),
            parking,
        }
    }

    /// Ends the service and the server's session, and gives the service a
    /// moment to end cleanly (stdio: SIGTERM, then kill).
    pub async fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        if let Some(closed) = self.closed.as_mut()
            && !closed.is_terminated()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
        }
        // A parked session has no service to close it.
        if let Some(parking) = self.parking.as_mut()
            && parking.parked.take().is_some()
        {
            parking.dock.end_session().await;
        }
    }

    pub fn is_parked(&self) -> bool {
        self.closed.is_none()
    }

    /// Parks the service if it can be and `cell` says nobody used it for
    /// `idle`: rmcp's service ends, the server's session stays. `Err`: the
    /// service ended instead (why); `Ok(true)`: parked.
    pub async fn park_if_idle(&mut self, cell: &PeerCell, idle: Duration) -> Result<bool, String> {
        let Some(parking) = self.parking.as_mut() else {
            return Ok(false);
        };
        // A call in flight may still be asked something on the session.
        let calls_in_flight = parking
            .handler
            .inflight
            .lock()
            .map_or(true, |calls| !calls.is_empty());
        if self.closed.is_none() || calls_in_flight || !cell.take_for_parking(idle) {
            return Ok(false);
        }
        let Some(parked) = parking.dock.park_on_close() else {
            return Ok(false);
        };
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        let closed = self.closed.take();
        match tokio::time::timeout(Duration::from_secs(5), parked).await {
            Ok(Ok(parked)) => {
                if let Some(closed) = closed {
                    // rmcp's task ends right after it closed the transport.
                    let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
                }
                parking.parked = Some(parked);
                tracing::debug!(server = %parking.handler.server, "idle session parked");
                Ok(true)
            }
            _ => {
                parking.dock.keep_on_close();
                Err("the session's transport did not close for parking".into())
            }
        }
    }

    /// What happens next to the service: it ends, or (parked) a user asks
    /// for it or the server sends a message on it.
    pub async fn next_event(&mut self, cell: &PeerCell) -> Event {
        if let Some(closed) = self.closed.as_mut() {
            return match closed.is_terminated() {
                true => std::future::pending().await,
                false => Event::Closed(closed.await),
            };
        }
        match self.parking.as_mut().and_then(|p| p.parked.as_mut()) {
            Some(parked) => tokio::select! {
                () = cell.wake_requested() => Event::WakeRequested,
                message = parked.next() => Event::Message(message),
            },
            None => std::future::pending().await,
        }
    }

    /// A new rmcp service on the parked session (no handshake), receiving
    /// `first` before anything else; its peer goes to `cell`.
    pub fn wake(&mut self, cell: &PeerCell, first: Option<String>) {
        let Some(parking) = self.parking.as_mut() else {
            return;
        };
        let Some(parked) = parking.parked.take() else {
            return;
        };
        let handler = parking.handler.clone();
        let transport = Counted::new(parking.dock.resume(parked, first), &handler);
        let info = cell.info().map(|info| (*info).clone());
        let running = serve_directly(handler, transport, info);
        self.stop = Some(running.cancellation_token());
        let peer = running.peer().clone();
        self.closed = Some(Box::pin(running.waiting().fuse()));
        tracing::debug!(server = %parking.handler.server, "parked session woken");
        cell.woke(peer);
    }

    /// The live peer for the supervisor's own use, waking the session first.
    pub fn peer(&mut self, cell: &PeerCell) -> Option<Arc<Peer<RoleClient>>> {
        if self.is_parked() {
            self.wake(cell, None);
        }
        cell.touch();
        cell.state.lock().ok()?.peer.clone()
    }
}
