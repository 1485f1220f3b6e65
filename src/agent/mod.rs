//! `flotilla agent`: runs in (or beside) a cluster the gateway cannot
//! reach, next to that cluster's MCP servers, and dials out to the gateway.
//! It keeps one connection open (a WebSocket over HTTP/1.1, through any
//! proxy reqwest is told of, with TLS), reconnects with jittered
//! exponential backoff when it drops, and pings every heartbeat. Over the
//! connection the gateway opens sessions with the servers in the agent's
//! manifest directory. The agent listens on no port.

mod dial;
mod local;

use std::path::PathBuf;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet::agents::frame::Frame;
use crate::fleet::agents::link;

/// How the agent reaches the gateway and what it offers.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The gateway's base URL (`https://gateway.example/`).
    pub gateway: url::Url,
    /// This agent's name: what the gateway's MCPServers call it in `spec.agent.name`.
    pub name: String,
    /// The credential presented to the gateway: a per-cluster secret or a
    /// projected service-account token (read again on every dial).
    pub token_file: PathBuf,
    /// MCPServer manifests of the servers this agent offers.
    pub manifests: PathBuf,
    /// Extra roots for the gateway's TLS certificate.
    pub ca_file: Option<PathBuf>,
    pub heartbeat: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Dials and serves until `cancel` fires.
pub async fn run(settings: AgentSettings, cancel: CancellationToken) -> anyhow::Result<()> {
    let http = dial::client(settings.ca_file.as_deref())?;
    let door = dial::door_url(&settings.gateway)?;
    if !settings.manifests.is_dir() {
        anyhow::bail!(
            "--manifests {} is not a directory of MCPServer manifests",
            settings.manifests.display()
        );
    }
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(settings.backoff_min)
            .with_max_delay(settings.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        let started = Instant::now();
        let dialing = dial::dial(&http, &door, &settings.name, &settings.token_file);
        let dialed = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            dialed = dialing => dialed,
        };
        match dialed {
            Ok(socket) => {
                tracing::info!(gateway = %door, agent = %settings.name, "connected to the gateway");
                let why = serve(socket, &settings, &http, cancel.clone()).await;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                tracing::warn!(reason = %why, "connection to the gateway ended");
            }
            Err(error) => tracing::warn!(gateway = %door, %error, "dialing the gateway failed"),
        }
        if started.elapsed() > settings.backoff_max {
            // The connection held a while: the next failure starts from a short delay.
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(settings.backoff_max);
        tracing::info!(retry_in_ms = delay.as_millis() as u64, "dialing again");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Serves one connection: the hello, then sessions as the gateway opens them.
async fn serve(
    socket: dial::Socket,
    settings: &AgentSettings,
    http: &reqwest::Client,
    cancel: CancellationToken,
) -> String {
    let (out, outgoing) = mpsc::channel(link::QUEUE);
    let (incoming_tx, mut incoming) = mpsc::channel(link::QUEUE);
    let mut sessions = local::Sessions::new(settings.manifests.clone(), out.clone(), http.clone());
    let hello = Frame::Hello {
        agent: settings.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        servers: sessions.servers().into_iter().map(|s| s.name).collect(),
    };
    let _ = out.try_send(hello.encode());
    let pumping = link::pump(socket, outgoing, incoming_tx, settings.heartbeat, cancel);
    tokio::pin!(pumping);
    let why = loop {
        tokio::select! {
            why = &mut pumping => break why,
            Some(text) = incoming.recv() => sessions.handle(&text),
        }
    };
    sessions.end_all().await;
    why
}
