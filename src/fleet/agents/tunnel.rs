//! An upstream session carried on an agent's connection: rmcp's transport
//! over one channel of it. Messages go out as `message` frames and come back
//! the same way; every message the server wrote is shown to the raw tool tap
//! before rmcp decodes it (as on stdio). Dropping the tunnel tells the agent
//! to end the session there too.

use std::sync::{Arc, Mutex, Weak};

use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::mpsc;

use super::frame::Frame;
use super::{Delivery, Link};
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

impl Transport<RoleClient> for Tunnel {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        let frame = serde_json::to_string(&item)
            .ok()
            .and_then(|text| Frame::message(self.channel, text));
        let agent = self.agent.clone();
        async move {
            let frame =
                frame.ok_or_else(|| std::io::Error::other("the message could not be encoded"))?;
            out.send(frame.encode()).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("agent {agent:?} disconnected"),
                )
            })
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            match self.delivered.recv().await {
                None => {
                    self.ended
                        .set(format!("agent {:?} ended the session", self.agent));
                    return None;
                }
                Some(Delivery::Closed(why)) => {
                    self.finished = true;
                    self.ended.set(why);
                    return None;
                }
                Some(Delivery::Message(text)) => {
                    self.raw.observe(text.as_bytes());
                    match serde_json::from_str(&text) {
                        Ok(message) => return Some(message),
                        Err(error) => tracing::warn!(
                            agent = %self.agent,
                            channel = self.channel,
                            %error,
                            "the server behind the agent sent a message that is not JSON-RPC; ignored"
                        ),
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.finish("the gateway ended the session");
        Ok(())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.finish("the gateway ended the session");
    }
}
