//! An upstream session carried on an agent's connection: one channel of it,
//! shared by rmcp's session and the relay (`message_wire`). Messages go out
//! as `message` frames and come back the same way, as the text the server
//! wrote; each is shown to the raw tool tap on the way in. Dropping the tunnel tells the agent
//! to end the session there too.

use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::frame::Frame;
use super::{Delivery, Link};
use crate::fleet::message_wire::{Inbox, Outbox};
use crate::fleet::raw_tools::RawTools;

/// Why a tunnel's session ended, when it was the agent's side that ended it
/// (the agent disconnected, the server there could not start or exited).
#[derive(Clone, Default)]
pub struct EndReason(Arc<Mutex<Option<String>>>);

impl EndReason {
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok()?.clone()
    }

    fn set(&self, why: String) {
        if let Ok(mut slot) = self.0.lock()
            && slot.is_none()
        {
            *slot = Some(why);
        }
    }
}

/// rmcp's transport for one session on an agent's connection.
pub struct Tunnel {
    agent: Arc<str>,
    channel: u64,
    out: mpsc::Sender<String>,
    link: Weak<Link>,
    delivered: mpsc::Receiver<Delivery>,
    raw: RawTools,
    ended: EndReason,
    finished: bool,
}

impl Tunnel {
    pub(super) fn new(
        agent: &str,
        channel: u64,
        out: mpsc::Sender<String>,
        link: Weak<Link>,
        delivered: mpsc::Receiver<Delivery>,
    ) -> Self {
        Self {
            agent: agent.into(),
            channel,
            out,
            link,
            delivered,
            raw: RawTools::default(),
            ended: EndReason::default(),
            finished: false,
        }
    }

    /// Shows every message the server wrote to `raw` before rmcp decodes it.
    pub fn with_raw_tools(mut self, raw: RawTools) -> Self {
        self.raw = raw;
        self
    }

    /// Leaves the reason the agent's side ended the session in `slot`.
    pub fn with_end_reason(mut self, slot: EndReason) -> Self {
        self.ended = slot;
        self
    }

    /// Ends the session on the agent's side too (once).
    fn finish(&mut self, why: &str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(link) = self.link.upgrade() {
            link.forget(self.channel);
        }
        let close = Frame::Close {
            channel: self.channel,
            reason: Some(why.to_string()),
        };
        let _ = self.out.try_send(close.encode());
    }
}

/// The sending half of a tunnel: `message` frames on the agent's connection.
#[derive(Clone)]
pub struct TunnelOutbox {
    agent: Arc<str>,
    channel: u64,
    out: mpsc::Sender<String>,
}

impl Tunnel {
    /// Where messages to the server go (rmcp's and the relay's alike).
    pub fn outbox(&self) -> TunnelOutbox {
        TunnelOutbox {
            agent: self.agent.clone(),
            channel: self.channel,
            out: self.out.clone(),
        }
    }
}

impl Outbox for TunnelOutbox {
    fn send(&self, text: String) -> BoxFuture<'static, std::io::Result<()>> {
        let out = self.out.clone();
        let frame = Frame::message(self.channel, text);
        let agent = self.agent.clone();
        Box::pin(async move {
            let frame = frame.ok_or_else(|| std::io::Error::other("the message is not JSON"))?;
            out.send(frame.encode()).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("agent {agent:?} disconnected"),
                )
            })
        })
    }
}

impl Inbox for Tunnel {
    async fn next(&mut self) -> Option<String> {
        match self.delivered.recv().await {
            None => {
                self.ended
                    .set(format!("agent {:?} ended the session", self.agent));
                None
            }
            Some(Delivery::Closed(why)) => {
                self.finished = true;
                self.ended.set(why);
                None
            }
            Some(Delivery::Message(text)) => {
                self.raw.observe(text.as_bytes());
                Some(text)
            }
        }
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.finish("the gateway ended the session");
        Ok(())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.finish("the gateway ended the session");
    }
}
