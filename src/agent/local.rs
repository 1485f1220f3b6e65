//! The agent's side of each session the gateway opens: the local server it
//! names, declared in the agent's own manifest directory (an MCPServer of
//! `type: stdio` or `streamable-http`), started or connected for that
//! session and ended with it.
//!
//! A stdio server's lines are carried as they are, in both directions (the
//! agent never decodes them). A Streamable HTTP server is spoken to through
//! rmcp's client transport (its sessions, SSE streams and reconnection),
//! which decodes each message into rmcp's model and encodes it again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use rmcp::RoleClient;
use rmcp::service::TxJsonRpcMessage;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use super::http_session;
use crate::api::ServerType;
use crate::fleet::agents::frame::{Frame, MAX_FRAME};
use crate::fleet::stdio::{program_path, shut_down};
use crate::source::{DesiredServer, LastLoad, load_dir};

/// Sessions one agent holds at once; more are refused.
pub const MAX_SESSIONS: usize = 256;

/// Messages queued toward one local server.
const SESSION_QUEUE: usize = 1024;

/// How long ending every session may take when the connection drops.
const END_GRACE: Duration = Duration::from_secs(8);

/// The sessions on one connection to the gateway.
pub struct Sessions {
    manifests: PathBuf,
    last: LastLoad,
    out: mpsc::Sender<String>,
    open: HashMap<u64, Open>,
    tasks: JoinSet<()>,
    http: reqwest::Client,
}

struct Open {
    to_server: mpsc::Sender<String>,
    cancel: CancellationToken,
}

impl Sessions {
    pub fn new(manifests: PathBuf, out: mpsc::Sender<String>, http: reqwest::Client) -> Self {
        Self {
            manifests,
            last: LastLoad::default(),
            out,
            open: HashMap::new(),
            tasks: JoinSet::new(),
            http,
        }
    }

    /// The servers the manifest directory declares now (problems are logged).
    pub fn servers(&mut self) -> Vec<DesiredServer> {
        let fleet = load_dir(&self.manifests, &mut self.last);
        for problem in &fleet.problems {
            tracing::warn!(%problem, "a local manifest cannot be used");
        }
        fleet.servers.into_values().collect()
    }

    /// Acts on one frame from the gateway.
    pub fn handle(&mut self, text: &str) {
        match Frame::decode(text) {
            Ok(Frame::Open { channel, server }) => self.start(channel, &server),
            Ok(Frame::Message { channel, message }) => {
                let Some(open) = self.open.get(&channel) else {
                    return;
                };
                match open.to_server.try_send(message.get().to_string()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.open.remove(&channel);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            channel,
                            "a local server fell behind the gateway's messages; its session is ended"
                        );
                        self.end(channel);
                        self.close(channel, "the server fell behind the gateway's messages");
                    }
                }
            }
            Ok(Frame::Close { channel, .. }) => self.end(channel),
            Ok(Frame::Hello { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "the gateway sent a frame that is not understood; ignored")
            }
        }
    }

    /// Ends every session (the connection is gone), giving servers a moment to exit.
    pub async fn end_all(mut self) {
        for (_, open) in self.open.drain() {
            open.cancel.cancel();
        }
        let draining = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(END_GRACE, draining).await.is_err() {
            self.tasks.abort_all();
        }
    }

    fn end(&mut self, channel: u64) {
        if let Some(open) = self.open.remove(&channel) {
            open.cancel.cancel();
        }
    }

    fn close(&self, channel: u64, why: &str) {
        let close = Frame::Close {
            channel,
            reason: Some(why.to_string()),
        };
        let _ = self.out.try_send(close.encode());
    }

    fn start(&mut self, channel: u64, server: &str) {
        self.open.retain(|_, open| !open.to_server.is_closed());
        while self.tasks.try_join_next().is_some() {}
        if self.open.len() >= MAX_SESSIONS {
            self.close(
                channel,
                &format!("the agent holds {MAX_SESSIONS} sessions already"),
            );
            return;
        }
        let servers = self.servers();
        let Some(desired) = servers.into_iter().find(|s| s.name == server) else {
            self.close(
                channel,
                &format!("no server {server:?} is declared in the agent's manifests"),
            );
            return;
        };
        let (to_server, from_gateway) = mpsc::channel(SESSION_QUEUE);
        let cancel = CancellationToken::new();
        let session = Session {
            channel,
            out: self.out.clone(),
            from_gateway,
            cancel: cancel.clone(),
        };
        match desired.spec.server_type {
            ServerType::Stdio => {
                self.tasks.spawn(session.stdio(desired));
            }
            ServerType::StreamableHttp => {
                self.tasks
                    .spawn(session.streamable_http(desired, self.http.clone()));
            }
            other => {
                self.close(
                    channel,
                    &format!(
                        "server {server:?} is of type {}; an agent serves stdio and streamable-http servers",
                        other.as_str()
                    ),
                );
                return;
            }
        }
        tracing::info!(channel, server, "session opened");
        self.open.insert(channel, Open { to_server, cancel });
    }
}

/// One session's task.
struct Session {
    channel: u64,
    out: mpsc::Sender<String>,
    from_gateway: mpsc::Receiver<String>,
    cancel: CancellationToken,
}

impl Session {
    /// Sends one message the server wrote to the gateway.
    async fn up(&self, message: String) -> bool {
        match Frame::message(self.channel, message) {
            Some(frame) => self.out.send(frame.encode()).await.is_ok(),
            None => {
                tracing::warn!(
                    channel = self.channel,
                    "the server wrote a line that is not JSON; dropped"
                );
                true
            }
        }
    }

    async fn closed(&self, why: String) {
        tracing::info!(channel = self.channel, reason = %why, "session ended");
        let close = Frame::Close {
            channel: self.channel,
            reason: Some(why),
        };
        let _ = self.out.send(close.encode()).await;
    }

    async fn stdio(mut self, desired: DesiredServer) {
        let program = desired.spec.command.clone().unwrap_or_default();
        let mut command = tokio::process::Command::new(program_path(&program));
        command
            .args(&desired.spec.args)
            .envs(&desired.spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return self
                    .closed(format!("starting {program:?} failed: {error}"))
                    .await;
            }
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return self
                .closed("the server's pipes were not set up".into())
                .await;
        };
        let mut logging = JoinSet::new();
        if let Some(stderr) = child.stderr.take() {
            let server = desired.name.clone();
            logging.spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(server = %server, "stderr: {}", line.chars().take(2048).collect::<String>());
                }
            });
        }
        let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_FRAME));
        let why = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break None,
                message = self.from_gateway.recv() => match message {
                    None => break None,
                    Some(mut message) => {
                        message.push('\n');
                        if let Err(error) = stdin.write_all(message.as_bytes()).await {
                            break Some(format!("writing to the server failed: {error}"));
                        }
                    }
                },
                line = lines.next() => match line {
                    None => break Some(match child.try_wait() {
                        Ok(Some(status)) => format!("the server exited ({status})"),
                        _ => "the server closed its output".into(),
                    }),
                    Some(Err(error)) => break Some(format!("reading the server failed: {error}")),
                    Some(Ok(line)) if line.trim().is_empty() => {}
                    Some(Ok(line)) => {
                        if !self.up(line).await {
                            break None;
                        }
                    }
                },
            }
        };
        drop(stdin);
        let _ = shut_down(&mut child).await;
        if let Some(why) = why {
            self.closed(why).await;
        }
    }

    async fn streamable_http(mut self, desired: DesiredServer, http: reqwest::Client) {
        let url = desired.spec.url.clone().unwrap_or_default();
        let headers = header_map(&desired);
        let first = tokio::select! {
            _ = self.cancel.cancelled() => return,
            first = self.from_gateway.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        if http_session::is_initialize(&first) {
            // A session (2025 revisions): carried byte for byte.
            let why = http_session::run(
                http,
                url,
                headers,
                (self.channel, self.out.clone()),
                first,
                std::mem::replace(&mut self.from_gateway, mpsc::channel(1).1),
                self.cancel.clone(),
            )
            .await;
            if let Some(why) = why {
                self.closed(why).await;
            }
            return;
        }
        // Stateless (2026-07-28): rmcp's client adds what each request needs.
        let custom = headers
            .into_iter()
            .filter_map(|(name, value)| Some((name?, value)))
            .collect();
        let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
        let mut transport = StreamableHttpClientTransport::with_client(http, config);
        let mut pending = Some(first);
        let why = loop {
            if let Some(text) = pending.take() {
                match serde_json::from_str::<TxJsonRpcMessage<RoleClient>>(&text) {
                    Ok(message) => {
                        if let Err(error) = transport.send(message).await {
                            break Some(format!(
                                "sending to the server failed: {}",
                                crate::fleet::error_chain(&error)
                            ));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(channel = self.channel, %error, "the gateway sent a message that is not JSON-RPC; dropped")
                    }
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break None,
                message = self.from_gateway.recv() => match message {
                    None => break None,
                    Some(text) => pending = Some(text),
                },
                message = transport.receive() => match message {
                    None => break Some("the server's connection ended".to_string()),
                    Some(message) => match serde_json::to_string(&message) {
                        Ok(text) => {
                            if !self.up(text).await {
                                break None;
                            }
                        }
                        Err(error) => tracing::warn!(channel = self.channel, %error, "a message from the server could not be encoded; dropped"),
                    },
                },
            }
        };
        let _ = transport.close().await;
        if let Some(why) = why {
            self.closed(why).await;
        }
    }
}

/// The server's static headers and those from Secrets (marked sensitive).
fn header_map(desired: &DesiredServer) -> http::HeaderMap {
    let secret = desired
        .secret_headers
        .iter()
        .map(|(name, value)| (name, value.expose()));
    let all = desired
        .spec
        .headers
        .iter()
        .map(|(name, value)| (name, value.as_str()))
        .chain(secret);
    let mut headers = http::HeaderMap::new();
    for (name, value) in all {
        if let (Ok(name), Ok(mut value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
    headers
}
