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
        shut_down(&mut self.child).await
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
