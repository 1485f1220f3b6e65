//! The client sessions this replica holds in memory: rmcp's local session
//! manager, and one rebuild at a time per session. rmcp rebuilds a session
//! it does not hold (see `session`) when a request for it arrives; two
//! requests arriving together could both start a rebuild (rmcp then fails
//! the second with a 500), or one could find the session inserted but not
//! yet initialized and end its worker ("Session service terminated").
//! [`HeldSessions::first_use`] makes every request for a session that is
//! not held wait until the first one's rebuild is done, and the session
//! being rebuilt is not reported as held until its `initialize` is in.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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

/// rmcp's sessions held here, rebuilt ones held once their `initialize` is in.
pub struct HeldSessions {
    pub local: LocalSessionManager,
    rebuilding: Mutex<HashSet<SessionId>>,
    /// One lock per session not held yet, while requests wait for its rebuild.
    first_uses: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
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
        }
    }

    /// For a request about to reach rmcp: when the session `id` is not held
    /// here, waits for any rebuild of it in progress and returns a guard the
    /// caller keeps until rmcp has answered (so it rebuilds it once); `None`
    /// when it is held.
    pub async fn first_use(self: &Arc<Self>, id: &str) -> Option<FirstUse> {
        let id: SessionId = id.into();
        if self.local.has_session(&id).await.unwrap_or(false) {
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
        if self.local.has_session(&id).await.unwrap_or(false) {
            return None;
        }
        Some(first)
    }

    /// Sessions held now.
    pub async fn count(&self) -> usize {
        self.local.sessions.read().await.len()
    }

    /// Up to `n` held sessions (to let go of).
    pub async fn some(&self, n: usize) -> Vec<SessionId> {
        self.local
            .sessions
            .read()
            .await
            .keys()
            .take(n)
            .cloned()
            .collect()
    }

    fn is_rebuilding(&self, id: &SessionId) -> bool {
        self.rebuilding.lock().is_ok_and(|set| set.contains(id))
    }

    fn rebuilt(&self, id: &SessionId) {
        if let Ok(mut set) = self.rebuilding.lock() {
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
