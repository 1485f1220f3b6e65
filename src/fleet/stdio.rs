//! A stdio upstream: the server as a child process, JSON-RPC lines on its
//! stdin and stdout (rmcp's line codec), its stdout shown to the raw tool
//! tap on the way (`raw_tools`). rmcp's own child-process transport owns
//! stdout itself, so the gateway runs the child here.
//!
//! Shutdown follows the MCP stdio transport: stdin is closed, then the
//! server gets [`GRACE`] to exit, then SIGTERM and another [`GRACE`], then
//! SIGKILL. A transport that is dropped kills the child at once.

use std::process::Stdio;
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::raw_tools::{RawTools, Tee};

/// How long a server gets to exit at each step of shutdown.
const GRACE: Duration = Duration::from_secs(3);

/// A stdio server's transport, with the child it runs.
pub struct StdioTransport {
    lines: AsyncRwTransport<RoleClient, Tee<ChildStdout>, ChildStdin>,
    child: Child,
}

impl StdioTransport {
    /// Starts `command` (stdin and stdout piped, killed when dropped); its
    /// stderr is returned for logging.
    pub fn spawn(
        mut command: tokio::process::Command,
        raw: RawTools,
    ) -> std::io::Result<(Self, Option<ChildStderr>)> {
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
        let lines = AsyncRwTransport::new_client(Tee::new(stdout, raw), stdin);
        Ok((Self { lines, child }, stderr))
    }

    async fn exited(&mut self) -> bool {
        matches!(
            tokio::time::timeout(GRACE, self.child.wait()).await,
            Ok(Ok(_))
        )
    }
}

impl Transport<RoleClient> for StdioTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.lines.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.lines.receive()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.lines.close().await?;
        if self.exited().await {
            return Ok(());
        }
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            // SAFETY: kill(2) with a pid this transport spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if self.exited().await {
                return Ok(());
            }
        }
        self.child.kill().await
    }
}
