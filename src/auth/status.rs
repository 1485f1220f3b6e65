//! The per-user auth status report: what `GET /auth/status` and the
//! `auth://status` resource return, and how `flotilla auth status` prints it.
//! One type on both sides keeps the CLI and the gateway in step.

use serde::{Deserialize, Serialize};

/// Who the caller is and, per MCP server, whether they can reach it and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthStatusReport {
    /// The gateway's MCP endpoint.
    pub endpoint: String,
    pub user: Option<ReportUser>,
    pub servers: Vec<ServerAuthStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportUser {
    pub subject: String,
    pub issuer: String,
    pub name: Option<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// `login` (through the gateway) or `jwt` (a trusted issuer's token).
    pub via: String,
}

pub use crate::api::SsoMode;

/// One server's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerAuthStatus {
    pub name: String,
    /// `Connected`, `Connecting`, `Failed` or `NotReachable`.
    pub state: ConnectionState,
    /// Set for SSO servers.
    pub sso: Option<SsoMode>,
    /// Why it is not connected (never contains a token).
    pub reason: Option<String>,
    pub tools: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionState {
    Connected,
    Connecting,
    Failed,
    NotReachable,
}

impl ServerAuthStatus {
    /// `Connected [SSO: Exchanged]`, `Failed [SSO: exchange rejected: ...]`, `Not reachable`, ...
    pub fn describe(&self) -> String {
        let sso = self.sso.map(|mode| match mode {
            SsoMode::Forwarded => "Forwarded",
            SsoMode::Exchanged => "Exchanged",
        });
        match (self.state, sso, self.reason.as_deref()) {
            (ConnectionState::Connected, Some(mode), _) => format!("Connected [SSO: {mode}]"),
            (ConnectionState::Connected, None, _) => "Connected".into(),
            (ConnectionState::Connecting, Some(mode), _) => format!("Connecting [SSO: {mode}]"),
            (ConnectionState::Connecting, None, _) => "Connecting".into(),
            (ConnectionState::Failed, Some(_), Some(reason)) => format!("Failed [SSO: {reason}]"),
            (ConnectionState::Failed, _, Some(reason)) => format!("Failed [{reason}]"),
            (ConnectionState::Failed, _, None) => "Failed".into(),
            (ConnectionState::NotReachable, _, _) => "Not reachable".into(),
        }
    }
}

impl AuthStatusReport {
    /// The text `flotilla auth status` prints: the gateway, then a line per server.
    pub fn render(&self) -> String {
        let mut out = format!("Gateway:      {}\n", self.endpoint);
        match &self.user {
            Some(user) => {
                out += &format!(
                    "Logged in as: {}\n",
                    user.name.as_deref().unwrap_or(&user.subject)
                );
                out += &format!("Issuer:       {}\n", user.issuer);
                if let Some(expiry) = &user.expires_at {
                    out += &format!("Expires:      {expiry}\n");
                }
            }
            None => out += "Logged in as: (nobody; the gateway needs no login)\n",
        }
        out += "\n";
        let width = self.servers.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for server in &self.servers {
            out += &format!("{:<width$}   {}\n", server.name, server.describe());
        }
        out
    }

    /// True when every server is connected.
    pub fn all_connected(&self) -> bool {
        self.servers
            .iter()
            .all(|s| s.state == ConnectionState::Connected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(
        name: &str,
        state: ConnectionState,
        sso: Option<SsoMode>,
        reason: Option<&str>,
    ) -> ServerAuthStatus {
        ServerAuthStatus {
            name: name.into(),
            state,
            sso,
            reason: reason.map(str::to_string),
            tools: 0,
        }
    }

    #[test]
    fn lines_say_how_each_server_is_reached() {
        let report = AuthStatusReport {
            endpoint: "http://gw/mcp".into(),
            user: None,
            servers: vec![
                server(
                    "cluster-a-mcp-kubernetes",
                    ConnectionState::Connected,
                    Some(SsoMode::Exchanged),
                    None,
                ),
                server(
                    "b",
                    ConnectionState::Connected,
                    Some(SsoMode::Forwarded),
                    None,
                ),
                server(
                    "c",
                    ConnectionState::Failed,
                    Some(SsoMode::Exchanged),
                    Some("exchange rejected: access_denied"),
                ),
                server(
                    "d",
                    ConnectionState::NotReachable,
                    None,
                    Some("connection refused"),
                ),
            ],
        };
        let text = report.render();
        assert!(
            text.contains("cluster-a-mcp-kubernetes   Connected [SSO: Exchanged]\n"),
            "{text}"
        );
        assert!(
            text.contains("b                          Connected [SSO: Forwarded]\n"),
            "{text}"
        );
        assert!(
            text.contains("Failed [SSO: exchange rejected: access_denied]"),
            "{text}"
        );
        assert!(
            text.contains("d                          Not reachable\n"),
            "{text}"
        );
        assert!(!report.all_connected());
    }
}
