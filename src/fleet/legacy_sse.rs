//! Client side of the legacy HTTP+SSE transport (MCP 2024-11-05), which rmcp
//! no longer ships: GET opens an event stream whose first `endpoint` event
//! names the URL to POST messages to; replies arrive as `message` events.
//! SSE framing is parsed by the `sse-stream` crate; this file only wires the
//! two halves into a message transport that rmcp's session and the relay
//! share (`message_wire`).

use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::HeaderMap;
use sse_stream::Sse;

use super::message_wire::{Inbox, Outbox};
use super::raw_tools::RawTools;
use super::sse_events;

#[derive(Debug, thiserror::Error)]
pub enum LegacySseError {
    #[error("opening the event stream failed: {0}")]
    Open(#[source] reqwest::Error),
    #[error("the server answered the event stream with HTTP {0}")]
    Status(u16),
    #[error("the event stream ended before naming its message endpoint")]
    NoEndpoint,
    #[error("the endpoint event named an invalid URL: {0}")]
    BadEndpoint(String),
    #[error("timed out waiting for the endpoint event")]
    Timeout,
}

/// An open legacy SSE session.
pub struct LegacySseTransport {
    http: reqwest::Client,
    post_url: url::Url,
    headers: HeaderMap,
    events: Option<BoxStream<'static, Result<Sse, sse_stream::Error>>>,
    /// Sees each message before rmcp decodes it (tool lists, raw).
    raw: RawTools,
}

impl LegacySseTransport {
    /// Opens the event stream at `url` and waits for the `endpoint` event.
    pub async fn connect(
        http: reqwest::Client,
        url: &str,
        headers: HeaderMap,
        timeout: Duration,
        raw: RawTools,
    ) -> Result<Self, LegacySseError> {
        let base = url::Url::parse(url).map_err(|e| LegacySseError::BadEndpoint(e.to_string()))?;
        let open = async {
            let response = http
                .get(base.clone())
                .headers(headers.clone())
                .header(http::header::ACCEPT, "text/event-stream")
                .send()
                .await
                .map_err(LegacySseError::Open)?;
            if !response.status().is_success() {
                return Err(LegacySseError::Status(response.status().as_u16()));
            }
            let mut events = sse_events::events(response.bytes_stream());
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                if event.event.as_deref() == Some("endpoint") {
                    let target = event.data.unwrap_or_default();
                    let post_url = base
                        .join(target.trim())
                        .map_err(|e| LegacySseError::BadEndpoint(e.to_string()))?;
                    return Ok((post_url, events));
                }
            }
            Err(LegacySseError::NoEndpoint)
        };
        let (post_url, events) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| LegacySseError::Timeout)??;
        Ok(Self {
            http,
            post_url,
            headers,
            events: Some(events),
            raw,
        })
    }
}

/// Where a legacy SSE session's messages are POSTed (its endpoint).
#[derive(Clone)]
pub struct LegacySsePost {
    http: reqwest::Client,
    post_url: url::Url,
    headers: HeaderMap,
}

impl LegacySseTransport {
    /// Where messages to the server go (rmcp's and the relay's alike).
    pub fn outbox(&self) -> LegacySsePost {
        LegacySsePost {
            http: self.http.clone(),
            post_url: self.post_url.clone(),
            headers: self.headers.clone(),
        }
    }
}

impl Outbox for LegacySsePost {
    fn send(&self, text: String) -> BoxFuture<'static, std::io::Result<()>> {
        let request = self
            .http
            .post(self.post_url.clone())
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(text);
        Box::pin(async move {
            let response = request.send().await.map_err(std::io::Error::other)?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "the server answered a message with HTTP {status}"
                )))
            }
        })
    }
}

impl Inbox for LegacySseTransport {
    async fn next(&mut self) -> Option<String> {
        let events = self.events.as_mut()?;
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            let Some(data) = event.data else { continue };
            self.raw.observe(data.as_bytes());
            return Some(data);
        }
        self.events = None;
        None
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.events = None;
        Ok(())
    }
}
