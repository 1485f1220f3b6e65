//! The `flotilla` binary: logging setup, then the CLI.

use std::io::IsTerminal;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = flotilla::cli::Cli::parse();
    // kube and reqwest both compile rustls crypto providers in; pick one
    // explicitly so TLS setup never depends on which features won.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A simulated cluster is a child of the gateway: keep its stderr quiet.
    let default_filter = match cli.command {
        flotilla::cli::Command::SimCluster { .. } => "warn",
        _ => "info,rmcp=warn",
    };
    // Logs go to stderr: stdout carries MCP for `sim-cluster`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    flotilla::cli::run(cli).await
}
