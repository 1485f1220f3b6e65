//! The client sessions this replica holds in memory: rmcp's local session
//! manager, with one change. rmcp rebuilds a session it does not hold (see
//! `session`) by inserting it and then replaying the client's `initialize`;
//! a request that found the session in between would reach its worker
//! before that `initialize` and end it ("Session service terminated"). Here
//! a session being rebuilt is not yet held, so such a request waits for
//! the rebuild like any other.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
}

impl HeldSessions {
    pub fn new(local: LocalSessionManager) -> Self {
        Self {
            local,
            rebuilding: Mutex::default(),
        }
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
