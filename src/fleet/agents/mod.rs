//! Agents: servers in clusters the gateway cannot reach, behind a
//! `flotilla agent` that dials out to the gateway and keeps one connection
//! open. The [`Hub`] holds the live connection of each agent; an upstream of
//! `type: agent` opens its session as a channel on its agent's connection
//! ([`Tunnel`]) and from there is an upstream like any other (same
//! supervision, same relay, same catalog).
//!
//! Who may connect as which agent is decided before a socket reaches the
//! hub (the gateway's agent door checks the credential each MCPServer
//! declares); the hub only ever opens a server's channel on the connection
//! of the agent that server names, so one agent can never reach another's
//! servers. The gateway never dials an agent.

pub mod frame;
pub mod link;
mod tunnel;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use frame::Frame;
pub use tunnel::{EndReason, Tunnel};

/// Messages queued toward one upstream session. A session that falls this
/// far behind is ended rather than let it hold up the other sessions on the
/// connection (the reader never waits for one session).
const CHANNEL_QUEUE: usize = 1024;

/// What reaches a tunnel from its agent.
enum Delivery {
    Message(String),
    Closed(String),
}

/// The live agent connections, by agent name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Ticks per agent name each time that agent connects (upstreams waiting
    /// for it retry at once instead of at their next backoff).
    arrivals: Mutex<HashMap<String, watch::Sender<u64>>>,
    next_channel: AtomicU64,
    next_link: AtomicU64,
}

/// One agent's connection.
struct Link {
    id: u64,
    /// What admitted it (the door's digest of the declarations it satisfied):
    /// when that changes, the connection must be admitted again.
    admission: String,
    out: mpsc::Sender<String>,
    channels: Mutex<HashMap<u64, mpsc::Sender<Delivery>>>,
    /// The servers the agent said it offers (its `hello`).
    offers: Mutex<Vec<String>>,
    cancel: CancellationToken,
}

/// One connected agent, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPresence {
    pub name: String,
    pub servers: Vec<String>,
    pub sessions: usize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("agents", &self.connected().len())
            .finish()
    }
}

impl Hub {
    /// Serves an authenticated agent's socket until it closes or `shutdown`
    /// fires; returns why it ended. A newer connection under the same name
    /// replaces this one (an agent that restarted before its old connection
    /// timed out).
    pub async fn serve<S>(
        &self,
        agent: &str,
        admission: String,
        socket: WebSocketStream<S>,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (out, outgoing) = mpsc::channel(link::QUEUE);
        let (incoming_tx, mut incoming) = mpsc::channel(link::QUEUE);
        let link = Arc::new(Link {
            id: self.inner.next_link.fetch_add(1, Ordering::Relaxed),
            admission,
            out,
            channels: Default::default(),
            offers: Default::default(),
            cancel: shutdown.child_token(),
        });
        if let Ok(mut links) = self.inner.links.lock()
            && let Some(old) = links.insert(agent.to_string(), link.clone())
        {
            tracing::info!(
                agent,
                "agent connected again: its older connection is closed"
            );
            old.cancel.cancel();
        }
        tracing::info!(agent, "agent connected");
        self.arrived(agent);
        let pumping = link::pump(
            socket,
            outgoing,
            incoming_tx,
            heartbeat,
            link.cancel.clone(),
        );
        tokio::pin!(pumping);
        let why = loop {
            tokio::select! {
                why = &mut pumping => break why,
                Some(text) = incoming.recv() => link.dispatch(agent, &text),
            }
        };
        if let Ok(mut links) = self.inner.links.lock()
            && links.get(agent).is_some_and(|l| l.id == link.id)
        {
            links.remove(agent);
        }
        link.end_all(&format!("agent {agent:?} disconnected ({why})"));
        tracing::info!(agent, reason = %why, "agent disconnected");
        why
    }

    /// Opens a session with `server` on `agent`'s connection.
    pub fn open(&self, agent: &str, server: &str) -> Result<Tunnel, String> {
        let link = self
            .inner
            .links
            .lock()
            .ok()
            .and_then(|links| links.get(agent).cloned())
            .ok_or_else(|| format!("agent {agent:?} is not connected"))?;
        let channel = self.inner.next_channel.fetch_add(1, Ordering::Relaxed) + 1;
        let (deliver, delivered) = mpsc::channel(CHANNEL_QUEUE);
        if let Ok(mut channels) = link.channels.lock() {
            channels.insert(channel, deliver);
        }
        let open = Frame::Open {
            channel,
            server: server.to_string(),
        };
        if link.out.try_send(open.encode()).is_err() {
            link.forget(channel);
            return Err(format!(
                "agent {agent:?} is not taking new sessions (its connection is full or closing)"
            ));
        }
        Ok(Tunnel::new(
            agent,
            channel,
            link.out.clone(),
            Arc::downgrade(&link),
            delivered,
        ))
    }

    /// Each connected agent's name and what admitted it.
    pub fn admissions(&self) -> Vec<(String, String)> {
        match self.inner.links.lock() {
            Ok(links) => links
                .iter()
                .map(|(name, link)| (name.clone(), link.admission.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Closes `agent`'s connection (its sessions end with `why`); the agent
    /// dials again and is admitted afresh, or not.
    pub fn disconnect(&self, agent: &str, why: &str) {
        let link = self
            .inner
            .links
            .lock()
            .ok()
            .and_then(|l| l.get(agent).cloned());
        if let Some(link) = link {
            tracing::info!(agent, reason = why, "closing the agent's connection");
            link.end_all(&format!("agent {agent:?} was disconnected: {why}"));
            link.cancel.cancel();
        }
    }

    /// Ticks each time `agent` connects.
    pub fn arrivals(&self, agent: &str) -> watch::Receiver<u64> {
        match self.inner.arrivals.lock() {
            Ok(mut arrivals) => arrivals
                .entry(agent.to_string())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
            Err(_) => watch::channel(0).1,
        }
    }

    /// The agents connected now, by name.
    pub fn connected(&self) -> Vec<AgentPresence> {
        let Ok(links) = self.inner.links.lock() else {
            return Vec::new();
        };
        let mut present: Vec<AgentPresence> = links
            .iter()
            .map(|(name, link)| AgentPresence {
                name: name.clone(),
                servers: link.offers.lock().map(|o| o.clone()).unwrap_or_default(),
                sessions: link.channels.lock().map(|c| c.len()).unwrap_or_default(),
            })
            .collect();
        present.sort_by(|a, b| a.name.cmp(&b.name));
        present
    }

    fn arrived(&self, agent: &str) {
        if let Ok(mut arrivals) = self.inner.arrivals.lock() {
            arrivals
                .entry(agent.to_string())
                .or_insert_with(|| watch::channel(0).0)
                .send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Link {
    /// Hands one frame from the agent to the session it belongs to.
    fn dispatch(&self, agent: &str, text: &str) {
        let frame = match Frame::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(agent, %error, "agent sent a frame that is not understood; ignored");
                return;
            }
        };
        match frame {
            Frame::Hello {
                agent: named,
                version,
                servers,
            } => {
                if named != agent {
                    tracing::warn!(
                        agent,
                        named,
                        "agent's hello names another agent; the name it authenticated with counts"
                    );
                }
                tracing::info!(agent, version, servers = ?servers, "agent offers servers");
                if let Ok(mut offers) = self.offers.lock() {
                    *offers = servers;
                }
            }
            Frame::Message { channel, message } => {
                let Some(deliver) = self.channel(channel) else {
                    return;
                };
                let message = Delivery::Message(message.get().to_string());
                if let Err(mpsc::error::TrySendError::Full(_)) = deliver.try_send(message) {
                    tracing::warn!(
                        agent,
                        channel,
                        "a session fell behind its agent's messages; it is ended"
                    );
                    self.forget(channel);
                    self.close_on_agent(channel, "the gateway fell behind this session's messages");
                }
            }
            Frame::Close { channel, reason } => {
                let removed = self
                    .channels
                    .lock()
                    .ok()
                    .and_then(|mut c| c.remove(&channel));
                if let Some(deliver) = removed {
                    let why = reason.unwrap_or_else(|| "the agent closed the session".into());
                    let _ = deliver.try_send(Delivery::Closed(format!("agent {agent:?}: {why}")));
                }
            }
            Frame::Open { .. } => {
                tracing::warn!(
                    agent,
                    "agent tried to open a session; only the gateway opens them"
                );
            }
        }
    }

    fn channel(&self, channel: u64) -> Option<mpsc::Sender<Delivery>> {
        self.channels.lock().ok()?.get(&channel).cloned()
    }

    /// Ends every session on this connection with `why`.
    fn end_all(&self, why: &str) {
        let ended: Vec<_> = match self.channels.lock() {
            Ok(mut channels) => channels.drain().map(|(_, d)| d).collect(),
            Err(_) => Vec::new(),
        };
        for deliver in ended {
            let _ = deliver.try_send(Delivery::Closed(why.to_string()));
        }
    }

    /// Tells the agent a session is over.
    fn close_on_agent(&self, channel: u64, why: &str) {
        let close = Frame::Close {
            channel,
            reason: Some(why.to_string()),
        };
        let _ = self.out.try_send(close.encode());
    }

    /// Forgets a channel whose session ended on the gateway's side.
    fn forget(&self, channel: u64) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.remove(&channel);
        }
    }
}
