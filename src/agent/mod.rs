//! `flotilla agent`: runs in (or beside) a cluster the gateway cannot
//! reach, next to that cluster's MCP servers, and dials out to the gateway.
//! It keeps one connection open (a WebSocket over HTTP/1.1, through any
//! proxy reqwest is told of, with TLS), one per replica when the gateway
//! runs several (each replica holds its own upstream sessions), reconnects
//! with jittered exponential backoff when one drops, and pings every heartbeat. Over the
//! connection the gateway opens sessions with the servers in the agent's
//! manifest directory. The agent listens on no port.

mod dial;
mod http_session;
mod local;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
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

/// How often an agent that holds a connection to every replica it knows of
/// asks again how many there are (a scaled-up gateway gets its new replicas
/// connected within this).
const RECOUNT: Duration = Duration::from_secs(30);

/// Dials and serves until `cancel` fires: one connection to each replica of
/// the gateway (one in all for a single gateway), each redialed when it drops.
pub async fn run(settings: AgentSettings, cancel: CancellationToken) -> anyhow::Result<()> {
    let http = dial::client(settings.ca_file.as_deref())?;
    // The servers beside the agent are reached directly, never through the
    // proxy the way out to the gateway may need.
    let beside = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(crate::fleet::http_client::IDLE_CONNECTION_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
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
    // Each connection's task, and the replica it is connected to.
    let mut connections: JoinSet<String> = JoinSet::new();
    let mut held: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut wanted = 1;
    // Dials in a row that reached a replica already held.
    let mut misses = 0;
    let mut recount = Instant::now() + RECOUNT;
    loop {
        while let Some(ended) = connections.try_join_next_with_id() {
            forget(&mut held, ended);
        }
        if held.len() >= wanted {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(ended) = connections.join_next_with_id() => {
                    forget(&mut held, ended);
                    continue;
                }
                _ = tokio::time::sleep_until(recount) => {}
            }
        }
        recount = Instant::now() + RECOUNT;
        let holds: Vec<String> = held.values().cloned().collect();
        let dialing = dial::dial(&http, &door, &settings.name, &settings.token_file, &holds);
        let dialed = tokio::select! {
            _ = cancel.cancelled() => break,
            dialed = dialing => dialed,
        };
        let pause = match dialed {
            Ok(dial::Dialed {
                socket,
                replica,
                replicas,
            }) => {
                wanted = replicas;
                misses = 0;
                tracing::info!(gateway = %door, agent = %settings.name, %replica, replicas, "connected to the gateway");
                delays = backoff();
                let (settings, beside, cancel) = (settings.clone(), beside.clone(), cancel.clone());
                let task = connections.spawn(async move {
                    let why = serve(socket, &settings, &beside, cancel).await;
                    tracing::warn!(reason = %why, "connection to the gateway ended");
                    why
                });
                held.insert(task.id(), replica);
                continue;
            }
            Err(dial::DialError::AlreadyHeld { replicas }) => {
                wanted = replicas;
                misses += 1;
                if held.len() >= wanted {
                    misses = 0;
                    continue;
                }
                if misses > 4 * wanted {
                    // The count includes a replica the balancer never picks
                    // (or one counted twice): try again at the next recount.
                    misses = 0;
                    tracing::info!(
                        held = held.len(),
                        replicas = wanted,
                        "no other replica reached through the balancer; asking again later"
                    );
                    RECOUNT
                } else {
                    // The balancer chose a replica this agent holds: soon again.
                    Duration::from_millis(100 + u64::from(rand::random::<u8>()) * 2)
                }
            }
            Err(error) => {
                tracing::warn!(gateway = %door, %error, "dialing the gateway failed");
                delays.next().unwrap_or(settings.backoff_max)
            }
        };
        tracing::debug!(retry_in_ms = pause.as_millis() as u64, "dialing again");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    // Each connection sees the cancellation and ends its sessions.
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Forgets the replica of a connection that ended.
fn forget(
    held: &mut HashMap<tokio::task::Id, String>,
    ended: Result<(tokio::task::Id, String), tokio::task::JoinError>,
) {
    let id = match &ended {
        Ok((id, _)) => *id,
        Err(error) => error.id(),
    };
    held.remove(&id);
}

/// Serves one connection: the hello, then sessions as the gateway opens them.
async fn serve(
    socket: dial::Socket,
    settings: &AgentSettings,
    beside: &reqwest::Client,
    cancel: CancellationToken,
) -> String {
    let (out, outgoing) = mpsc::channel(link::QUEUE);
    let (incoming_tx, mut incoming) = mpsc::channel(link::QUEUE);
    let mut sessions =
        local::Sessions::new(settings.manifests.clone(), out.clone(), beside.clone());
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
