//! The `flotilla` binary: logging setup, then the CLI.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = flotilla::cli::Cli::parse();
    // Logs go to stderr: stdout carries MCP for `sim-cluster`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    flotilla::cli::run(cli).await
}
