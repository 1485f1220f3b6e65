//! The gateway's side of one upstream session: what it announces when it
//! connects, and where the upstream's notifications go (list changes refresh
//! the catalog, progress reaches the client whose request caused it, resource
//! updates reach the clients that subscribed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[allow(deprecated)]
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, Peer, RoleClient, RoleServer};
use tokio::sync::mpsc;

/// Which of an upstream's lists changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    Prompts,
}

/// Where progress for one in-flight upstream request must go.
#[derive(Clone)]
pub struct ProgressRoute {
    pub client: Peer<RoleServer>,
    pub client_token: ProgressToken,
}

/// In-flight requests that asked for progress, keyed by the token the
/// gateway gave the upstream (never the client's: two clients may pick the same).
pub type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, ProgressRoute>>>;

/// Subscribed resource URIs of one upstream and the client sessions
/// (gateway session number, peer) that asked.
pub type ResourceSubscribers = Arc<Mutex<HashMap<String, Vec<(u64, Peer<RoleServer>)>>>>;

/// One upstream session's client handler.
#[derive(Clone)]
pub struct UpstreamClient {
    pub server: Arc<str>,
    pub progress: ProgressRoutes,
    pub subscribers: ResourceSubscribers,
    pub refresh: mpsc::UnboundedSender<ListKind>,
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("flotilla", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let route = self
            .progress
            .lock()
            .ok()
            .and_then(|routes| routes.get(&params.progress_token).cloned());
        if let Some(route) = route {
            let mut forwarded = params;
            forwarded.progress_token = route.client_token;
            if let Err(error) = route.client.notify_progress(forwarded).await {
                tracing::debug!(server = %self.server, %error, "client went away before progress");
            }
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let peers = self
            .subscribers
            .lock()
            .ok()
            .and_then(|subs| subs.get(&params.uri).cloned())
            .unwrap_or_default();
        for (_, peer) in peers {
            let _ = peer.notify_resource_updated(params.clone()).await;
        }
    }

    #[allow(deprecated)] // logging (SEP-2577) is still sent by 2025 servers
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let logger = params.logger.as_deref().unwrap_or("");
        match params.level {
            LoggingLevel::Debug | LoggingLevel::Info | LoggingLevel::Notice => {
                tracing::debug!(server = %self.server, logger, data = %params.data, "upstream log")
            }
            _ => {
                tracing::info!(server = %self.server, logger, level = ?params.level, data = %params.data, "upstream log")
            }
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Tools);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Resources);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(ListKind::Prompts);
    }
}
