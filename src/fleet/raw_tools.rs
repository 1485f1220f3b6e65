//! Tool lists as the upstream wrote them, where rmcp lists them: on a
//! message transport (stdio, legacy SSE, an agent's tunnel) whose session
//! has no wire (a server spoken to in 2026-07-28), or when a raw listing on
//! the wire failed; elsewhere `tools/list` is sent raw (`listing`).
//!
//! The transport shows every message line it receives to [`RawTools`]
//! before rmcp decodes it; a line that is a `tools/list` answer (a cheap
//! substring test first, then a parse) has its tools kept by name. After
//! rmcp's own listing the kept tools give each `Tool` its extras (what
//! rmcp's model drops, `execution` among them), and tools no longer listed
//! are forgotten.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rmcp::model::Tool;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, ReadBuf};

use super::listing::{ToolExtras, extras_of};

/// The longest line the tap looks at (longer ones pass unobserved).
const MAX_LINE: usize = 16 << 20;

/// The raw tools an upstream's last `tools/list` answers held, by name.
#[derive(Clone, Default)]
pub struct RawTools(Arc<Mutex<HashMap<String, Map<String, Value>>>>);

#[derive(Deserialize)]
struct Answer {
    result: Option<Page>,
}

#[derive(Deserialize)]
struct Page {
    tools: Vec<Map<String, Value>>,
}

impl RawTools {
    /// Looks at one message the upstream sent; keeps a `tools/list` page.
    pub fn observe(&self, line: &[u8]) {
        if !contains(line, b"\"tools\"") || !contains(line, b"\"result\"") {
            return;
        }
        let Ok(Answer { result: Some(page) }) = serde_json::from_slice::<Answer>(line) else {
            return;
        };
        let Ok(mut kept) = self.0.lock() else { return };
        for tool in page.tools {
            if let Some(Value::String(name)) = tool.get("name") {
                kept.insert(name.clone(), tool);
            }
        }
    }

    /// What rmcp's `tools` lost of the raw listing; forgets tools not in it.
    pub fn extras(&self, tools: &[Tool]) -> ToolExtras {
        let Ok(mut kept) = self.0.lock() else {
            return ToolExtras::new();
        };
        kept.retain(|name, _| tools.iter().any(|t| t.name == name.as_str()));
        tools
            .iter()
            .filter_map(|tool| {
                let raw = kept.get(tool.name.as_ref())?;
                let extras = extras_of(raw, tool);
                (!extras.is_empty()).then(|| (tool.name.to_string(), Arc::new(extras)))
            })
            .collect()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A line-delimited stream (a stdio server's stdout) that shows each line
/// to [`RawTools`] as it passes, unchanged.
pub struct Tee<R> {
    inner: R,
    raw: RawTools,
    line: Vec<u8>,
    /// The current line grew past [`MAX_LINE`]: skipped to its end.
    skipping: bool,
}

impl<R> Tee<R> {
    pub fn new(inner: R, raw: RawTools) -> Self {
        Self {
            inner,
            raw,
            line: Vec::new(),
            skipping: false,
        }
    }

    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.line.extend_from_slice(&bytes[..end]);
                self.raw.observe(&self.line);
            }
            self.line.clear();
            self.skipping = false;
            bytes = &bytes[end + 1..];
        }
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.line = Vec::new();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            this.take(&buf.filled()[before..]);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_tools_answer_split_across_reads_keeps_what_rmcp_drops() {
        let answer = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"research","inputSchema":{"type":"object"},"execution":{"taskSupport":"required"}},{"name":"plain","inputSchema":{"type":"object"}}]}}"#;
        let stream = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":\"tools\"}}}}\n{answer}\n"
        );
        let raw = RawTools::default();
        // A reader that hands out a few bytes at a time, as a pipe may.
        let (mut writer, reader) = tokio::io::duplex(7);
        let feed = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            writer.write_all(stream.as_bytes()).await.unwrap();
        });
        let mut tee = Tee::new(reader, raw.clone());
        let mut passed = String::new();
        tee.read_to_string(&mut passed).await.unwrap();
        feed.await.unwrap();
        assert!(
            passed.ends_with(&format!("{answer}\n")),
            "bytes pass unchanged"
        );
        let tools: Vec<Tool> = serde_json::from_str::<Value>(answer).unwrap()["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::from_value(t.clone()).unwrap())
            .collect();
        let extras = raw.extras(&tools);
        assert_eq!(extras["research"]["execution"]["taskSupport"], "required");
        assert!(!extras.contains_key("plain"), "nothing lost for plain");
        // A later listing without `research` forgets it.
        assert!(raw.extras(&tools[1..]).is_empty());
        assert!(raw.extras(&tools).is_empty(), "forgotten, not kept stale");
    }
}
