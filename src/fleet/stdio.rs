//! A stdio upstream: the server as a child process, one JSON-RPC message
//! per line on its stdin and stdout, its stdout shown to the raw tool tap on
//! the way (`raw_tools`). The gateway runs the child itself (rmcp's
//! child-process transport owns both pipes) so that rmcp's session and the
//! relay share them (`message_wire`).
//!
//! Shutdown follows the MCP stdio transport: stdin is closed, then the
//! server gets [`GRACE`] to exit, then SIGTERM and another [`GRACE`], then
//! SIGKILL. A transport that is dropped kills the child at once.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};

use super::message_wire::{Inbox, Outbox};
use super::raw_tools::{RawTools, Tee};

/// How long a server gets to exit at each step of shutdown.
const GRACE: Duration = Duration::from_secs(3);
/// The longest line read from a server (rmcp's own limit on stdio and on
/// SSE events); a longer one is dropped and the session goes on.
const MAX_LINE: usize = 16 << 20;

/// A stdio server's output, with the child it runs.
pub struct StdioInbox {
    lines: FramedRead<Tee<ChildStdout>, Lines>,
    stdin: StdioOutbox,
    child: Child,
}

/// A stdio server's input: one whole line per message.
#[derive(Clone)]
pub struct StdioOutbox(Arc<tokio::sync::Mutex<Option<ChildStdin>>>);

/// Starts `command` (stdin and stdout piped, killed when dropped); its
/// stderr is returned for logging.
pub fn spawn(
    mut command: tokio::process::Command,
    raw: RawTools,
) -> std::io::Result<(StdioInbox, StdioOutbox, Option<ChildStderr>)> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let missing = || std::io::Error::other("the child's pipes were not set up");
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take();
    let stdin = StdioOutbox(Arc::new(tokio::sync::Mutex::new(Some(stdin))));
    let lines = FramedRead::new(
        Tee::new(stdout, raw),
        Lines(LinesCodec::new_with_max_length(MAX_LINE)),
    );
    let inbox = StdioInbox {
        lines,
        stdin: stdin.clone(),
        child,
    };
    Ok((inbox, stdin, stderr))
}

impl Outbox for StdioOutbox {
    fn send(&self, mut text: String) -> BoxFuture<'static, std::io::Result<()>> {
        let stdin = self.0.clone();
        text.push('\n');
        Box::pin(async move {
            let mut stdin = stdin.lock().await;
            let Some(stdin) = stdin.as_mut() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the server's input is closed",
                ));
            };
            stdin.write_all(text.as_bytes()).await?;
            stdin.flush().await
        })
    }
}

impl Inbox for StdioInbox {
    async fn next(&mut self) -> Option<String> {
        loop {
            match self.lines.next().await? {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => return Some(line),
                Ok(None) => {
                    tracing::warn!(
                        max_bytes = MAX_LINE,
                        "dropped a line from a stdio server longer than the limit"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, "a stdio server's output ended");
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> std::io::Result<()> {
        drop(self.stdin.0.lock().await.take());
        shut_down(&mut self.child).await
    }
}

/// Lines of at most [`MAX_LINE`] bytes: a longer line, or one that is not
/// UTF-8, is read past and reported as `None` instead of ending the stream.
struct Lines(LinesCodec);

impl Lines {
    fn skip_bad(
        read: Result<Option<String>, LinesCodecError>,
    ) -> Result<Option<Option<String>>, LinesCodecError> {
        match read {
            Ok(line) => Ok(line.map(Some)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(None)),
            Err(LinesCodecError::Io(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                Ok(Some(None))
            }
            Err(error) => Err(error),
        }
    }
}

impl Decoder for Lines {
    type Item = Option<String>;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Self::skip_bad(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Self::skip_bad(self.0.decode_eof(buf))
    }
}

/// Where `program` is: `flotilla` is this very binary (its `sim-cluster`
/// subcommand serves the quickstart's simulated clusters), wherever it was
/// installed; anything else is looked up as usual.
pub fn program_path(program: &str) -> std::path::PathBuf {
    match program {
        "flotilla" => std::env::current_exe().unwrap_or_else(|_| program.into()),
        other => other.into(),
    }
}

/// Ends a server whose stdin was closed: [`GRACE`] to exit, then SIGTERM and
/// another [`GRACE`], then SIGKILL.
pub async fn shut_down(child: &mut Child) -> std::io::Result<()> {
    if exited(child).await {
        return Ok(());
    }
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if exited(child).await {
            return Ok(());
        }
    }
    child.kill().await
}

async fn exited(child: &mut Child) -> bool {
    matches!(tokio::time::timeout(GRACE, child.wait()).await, Ok(Ok(_)))
}
