//! What one caller sees. Without SSO servers (or without auth) everybody
//! sees the shared catalog. With them, a logged-in user's view replaces each
//! SSO server's shared entry (which never connects) with that user's own
//! session, so its tools appear once the user can reach them, and calls are
//! routed through sessions that carry only that user's token.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::UserIdentity;
use crate::fleet::{Access, Upstream};

use super::state::GatewayState;
use super::view::{CachedView, View};

impl GatewayState {
    /// The view of `user` (the shared one for anonymous callers), as the
    /// user's own request: it opens missing sessions and keeps them open.
    pub async fn view(&self, user: Option<&Arc<UserIdentity>>) -> Arc<View> {
        self.view_with(user, Access::Use).await
    }

    /// The view of `user` with [`Access::Peek`]: from open sessions only.
    pub(crate) async fn peek_view(&self, user: &Arc<UserIdentity>) -> Arc<View> {
        self.view_with(Some(user), Access::Peek).await
    }

    async fn view_with(&self, user: Option<&Arc<UserIdentity>>, access: Access) -> Arc<View> {
        let (Some(user), Some(sessions)) = (user, self.fleet.user_sessions()) else {
            return self.shared_view();
        };
        let sso = self.fleet.sso_servers();
        if sso.is_empty() {
            return self.shared_view();
        }
        let opened = sessions.sessions_for(user, &sso, access);
        let fresh: Vec<Arc<Upstream>> = opened
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok())
            .filter(|u| {
                let health = u.health();
                health.state == crate::api::ServerState::Connecting && health.last_error.is_none()
            })
            .cloned()
            .collect();
        if access == Access::Use && !fresh.is_empty() {
            // First contact: give the user's sessions a moment, so the first
            // tools/list already has their tools.
            sessions.settle(&fresh).await;
        }
        let version = *self.fleet.changes().borrow();
        if let Some(cached) = self.user_views.get(&user.key)
            && cached.version == version
            && cached.view.own.len() == opened.iter().filter(|(_, s)| s.is_ok()).count()
        {
            return cached.view.clone();
        }
        let mut own = HashMap::new();
        let mut unavailable = HashMap::new();
        for (server, session) in opened {
            match session {
                Ok(upstream) => {
                    own.insert(server, upstream);
                }
                Err(error) => {
                    unavailable.insert(server, error);
                }
            }
        }
        let previous = self
            .user_views
            .get(&user.key)
            .map(|c| c.view.catalog.clone())
            .unwrap_or_else(|| self.catalog());
        let upstreams: Vec<Arc<Upstream>> = self
            .fleet
            .upstreams()
            .into_iter()
            .map(|shared| own.get(&shared.name).cloned().unwrap_or(shared))
            .collect();
        let catalog = Arc::new(crate::catalog::build(
            &super::state::members(&upstreams),
            &previous,
        ));
        let view = Arc::new(View::with_sessions(
            catalog,
            own,
            unavailable,
            self.fleet.clone(),
            self.policy(),
        ));
        self.user_views.insert(
            user.key.clone(),
            Arc::new(CachedView {
                version,
                view: view.clone(),
            }),
        );
        view
    }

    fn shared_view(&self) -> Arc<View> {
        self.shared_view.load_full()
    }
}
