//! The `flotilla` binary: logging setup, then the CLI.

use clap::Parser;

/// jemalloc: less resident memory per idle upstream and less CPU per call
/// than the system allocator (figures in Cargo.toml and the README).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let tracing = flotilla::cli::tracing_settings(&cli)?;
    let telemetry = flotilla::telemetry::Telemetry::init(default_filter, tracing.as_ref())?;
    let result = flotilla::cli::run(cli).await;
    telemetry.flush().await;
    result
}
