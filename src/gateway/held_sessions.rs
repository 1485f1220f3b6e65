//! The client sessions this replica holds in memory: rmcp's local session
//! manager, and one rebuild at a time per session. rmcp rebuilds a session
//! it does not hold (see `session`) when a request for it arrives; two
//! requests arriving together could both start a rebuild (rmcp then fails
//! the second with a 500), or one could find the session inserted but not
//! yet initialized and end its worker ("Session service terminated").
//! [`HeldSessions::first_use`] makes every request for a session that is
//! not held wait until the first one's rebuild is done, and the session
//! being rebuilt is not reported as held until its `initialize` is in.
//!
//! The cap (`limits.maxSessions`): [`HeldSessions::make_room`] runs before
//! each rebuild, one at a time, counting the rebuilds under way as held,
//! and lets go of the sessions used least recently among those with no
//! request in flight ([`HeldSessions::busy`]; an open GET stream does not
//! count: its client reopens it). When every held session is busy, the
//! rebuild waits for one to finish, up to [`ROOM_WAIT`]; after that it goes
//! ahead over the cap rather than fail the request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    EventStore, RestoreOutcome, ServerSseMessage, SessionId,
};

/// How long a rebuild waits for a held session to become idle at the cap.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);

/// rmcp's sessions held here, rebuilt ones held once their `initialize` is in.
pub struct HeldSessions {
    pub local: LocalSessionManager,
    rebuilding: Mutex<HashSet<SessionId>>,
    /// One lock per session not held yet, while requests wait for its rebuild.
    first_uses: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    /// Rebuilds under way: room is made for them before rmcp inserts them.
    reserved: Mutex<HashSet<SessionId>>,
    /// When each held session was last used (the least recent goes first).
    used: Mutex<HashMap<SessionId, Instant>>,
    /// One `make_room` at a time.
    room: tokio::sync::Mutex<()>,
    /// Requests (POSTs) in flight per session: such a session is never let go.
    busy: Mutex<HashMap<SessionId, usize>>,
    /// Signalled when a session's last request in flight ends.
    idle: tokio::sync::Notify,
}

/// A request of a session in flight (see [`HeldSessions::busy`]).
pub struct Busy {
    sessions: Arc<HeldSessions>,
    id: SessionId,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now_idle = match self.sessions.busy.lock() {
            Ok(mut busy) => match busy.get_mut(&self.id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    busy.remove(&self.id);
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        if now_idle {
            self.sessions.idle.notify_waiters();
        }
    }
}

/// Held while a request that may rebuild a session reaches rmcp.
pub struct FirstUse {
    sessions: Arc<HeldSessions>,
    id: SessionId,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for FirstUse {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sessions.first_uses.lock() {
            // This guard, its `lock` field and the map: nobody else waits.
            if Arc::strong_count(&self.lock) <= 3 {
                map.remove(&self.id);
            }
        }
    }
}

impl HeldSessions {
    pub fn new(local: LocalSessionManager) -> Self {
        Self {
            local,
            rebuilding: Mutex::default(),
            first_uses: Mutex::default(),
            reserved: Mutex::default(),
            used: Mutex::default(),
            room: tokio::sync::Mutex::new(()),
            busy: Mutex::default(),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Marks a request of session `id` in flight until the guard drops.
    pub fn busy(self: &Arc<Self>, id: &str) -> Busy {
        let id: SessionId = id.into();
        if let Ok(mut busy) = self.busy.lock() {
            *busy.entry(id.clone()).or_default() += 1;
        }
        Busy {
            sessions: self.clone(),
            id,
        }
    }

    fn is_busy(&self, id: &SessionId) -> bool {
        self.busy.lock().is_ok_and(|busy| busy.contains_key(id))
    }

    /// Notes that a request for `id` reaches rmcp now.
    fn touch(&self, id: &SessionId) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(id.clone(), Instant::now());
        }
    }

    /// Before rmcp rebuilds `id`: counts it as held and, while more than
    /// `max` would be, lets go of the sessions used least recently (never
    /// one being rebuilt). Returns how many were let go.
    pub async fn make_room(&self, id: &str, max: usize) -> usize {
        let _one_at_a_time = self.room.lock().await;
        let id: SessionId = id.into();
        if let Ok(mut set) = self.reserved.lock() {
            set.insert(id.clone());
        }
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let mut released = 0;
        loop {
            // Registered before looking, so an end in between is not missed.
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let (over, victims) = self.victims(max).await;
            for victim in &victims {
                match self.local.close_session(victim).await {
                    Ok(()) => released += 1,
                    Err(error) => tracing::debug!(%error, "letting a held client session go"),
                }
                self.forget(victim);
            }
            if victims.len() >= over {
                return released;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::debug!(
                    limit = max,
                    "every held client session is busy: one more is held over limits.maxSessions"
                );
                return released;
            }
        }
    }

    /// How many sessions must go for one more under `max`, and those that
    /// may: the least recently used with no request in flight.
    async fn victims(&self, max: usize) -> (usize, Vec<SessionId>) {
        let held: HashSet<SessionId> = self.local.sessions.read().await.keys().cloned().collect();
        let reserved: HashSet<SessionId> = match self.reserved.lock() {
            Ok(set) => set.clone(),
            Err(_) => return (0, Vec::new()),
        };
        let total = held.len() + reserved.iter().filter(|r| !held.contains(*r)).count();
        let over = total.saturating_sub(max);
        if over == 0 {
            return (0, Vec::new());
        }
        let Ok(mut used) = self.used.lock() else {
            return (0, Vec::new());
        };
        used.retain(|session, _| held.contains(session));
        let mut candidates: Vec<(Instant, SessionId)> = held
            .iter()
            .filter(|session| {
                !reserved.contains(*session)
                    && !self.is_rebuilding(session)
                    && !self.is_busy(session)
            })
            .map(|session| {
                let at = used.get(session).copied().unwrap_or_else(Instant::now);
                (at, session.clone())
            })
            .collect();
        candidates.sort_by_key(|(at, _)| *at);
        let victims = candidates.into_iter().take(over).map(|(_, s)| s).collect();
        (over, victims)
    }

    fn forget(&self, id: &SessionId) {
        if let Ok(mut used) = self.used.lock() {
            used.remove(id);
        }
    }

    /// For a request about to reach rmcp: when the session `id` is not held
    /// here, waits for any rebuild of it in progress and returns a guard the
    /// caller keeps until rmcp has answered (so it rebuilds it once); `None`
    /// when it is held.
    pub async fn first_use(self: &Arc<Self>, id: &str) -> Option<FirstUse> {
        let id: SessionId = id.into();
        self.touch(&id);
        // Held and not being rebuilt: a session rmcp has inserted but whose
        // `initialize` is not in yet counts as not held, so this request
        // waits for that rebuild instead of starting a second one.
        if self.held(&id).await {
            return None;
        }
        let lock = {
            let mut map = self.first_uses.lock().ok()?;
            map.entry(id.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        let first = FirstUse {
            sessions: self.clone(),
            id: id.clone(),
            lock,
            _guard: guard,
        };
        if self.held(&id).await {
            return None;
        }
        Some(first)
    }

    /// Whether `id` is held here and usable (not in the middle of a rebuild).
    async fn held(&self, id: &SessionId) -> bool {
        !self.is_rebuilding(id) && self.local.has_session(id).await.unwrap_or(false)
    }

    /// Sessions held now.
    pub async fn count(&self) -> usize {
        self.local.sessions.read().await.len()
    }

    fn is_rebuilding(&self, id: &SessionId) -> bool {
        self.rebuilding.lock().is_ok_and(|set| set.contains(id))
    }

    fn rebuilt(&self, id: &SessionId) {
        if let Ok(mut set) = self.rebuilding.lock() {
            set.remove(id);
        }
        if let Ok(mut set) = self.reserved.lock() {
            set.remove(id);
        }
    }
}

impl SessionManager for HeldSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.local.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        let answer = self.local.initialize_session(id, message).await;
        self.rebuilt(id);
        answer
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        if self.is_rebuilding(id) {
            return Ok(false);
        }
        self.local.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.rebuilt(id);
        self.forget(id);
        self.local.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.local.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        if let Ok(mut set) = self.rebuilding.lock() {
            set.insert(id.clone());
        }
        let outcome = self.local.restore_session(id.clone()).await;
        if !matches!(outcome, Ok(RestoreOutcome::Restored(_))) {
            self.rebuilt(&id);
        }
        outcome
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.local.event_store()
    }
}
