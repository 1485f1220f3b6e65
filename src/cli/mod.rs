//! The `flotilla` command line: `serve`, `crd`, `validate`, `sim-cluster` and `auth`.

pub mod auth;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{ConfigFile, KubernetesSettings, ServeSettings};

#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version,
    about = "A fleet gateway for the Model Context Protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway in front of the MCPServers in a manifest directory.
    Serve {
        /// Directory of MCPServer manifests (*.yaml, *.yml), watched for changes.
        #[arg(long, env = "FLOTILLA_MANIFESTS")]
        manifests: Option<PathBuf>,
        /// Watch MCPServer resources through the Kubernetes API instead
        /// (in-cluster config, or KUBECONFIG / the current context).
        #[arg(long)]
        kubernetes: bool,
        /// Namespace to watch (repeatable; default: all namespaces).
        #[arg(long = "namespace", requires = "kubernetes")]
        namespaces: Vec<String>,
        /// Namespace whose Secrets may be referenced (repeatable; default: the
        /// --namespace ones; Secrets are never read cluster-wide).
        #[arg(long = "secret-namespace", requires = "kubernetes")]
        secret_namespaces: Vec<String>,
        /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `default`).
        #[arg(long, env = "POD_NAMESPACE", requires = "kubernetes")]
        lease_namespace: Option<String>,
        /// Seconds a Lease holder may go without renewing before another
        /// replica takes over (renewed every third of it).
        #[arg(long, default_value_t = 15, requires = "kubernetes")]
        lease_duration: u64,
        /// YAML config file (bindAddress, port, publicUrl, manifests, allowedHosts).
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: Option<PathBuf>,
        /// Address to bind (default 127.0.0.1).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Port to listen on (default 8080; 0 picks a free port).
        #[arg(long)]
        port: Option<u16>,
        /// URL clients use to reach the gateway.
        #[arg(long)]
        public_url: Option<String>,
        /// INSECURE, for demos: without `auth:`, let a request name its
        /// caller in X-Flotilla-Demo-User / -Groups / -Client headers, so
        /// ToolPolicy rules on subjects and groups can be tried.
        #[arg(long)]
        insecure_demo_identity: bool,
    },
    /// Dial out to a gateway and serve this cluster's MCP servers over that
    /// one connection (for clusters the gateway cannot reach; nothing listens here).
    Agent {
        /// The gateway's base URL, e.g. https://flotilla.example/ (HTTPS_PROXY applies).
        #[arg(long, env = "FLOTILLA_GATEWAY")]
        gateway: url::Url,
        /// This agent's name, as the gateway's MCPServers name it in spec.agent.name.
        #[arg(long, env = "FLOTILLA_AGENT_NAME")]
        name: String,
        /// File holding the credential presented to the gateway (a per-cluster
        /// secret, or a projected service-account token); read on every dial.
        #[arg(long, env = "FLOTILLA_AGENT_TOKEN_FILE")]
        token_file: PathBuf,
        /// Directory of MCPServer manifests (stdio or streamable-http) this agent serves.
        #[arg(long, env = "FLOTILLA_MANIFESTS")]
        manifests: PathBuf,
        /// PEM file of extra root certificates for the gateway's TLS.
        #[arg(long, env = "FLOTILLA_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Seconds between heartbeats (the connection is given up after three silent ones).
        #[arg(long, default_value_t = 15)]
        heartbeat_seconds: u64,
    },
    /// Print the CustomResourceDefinitions (MCPServer, ToolPolicy) as YAML.
    Crd,
    /// Check manifests without starting anything; exit 1 if any is invalid.
    Validate {
        /// A directory of MCPServer and ToolPolicy manifests, or one file.
        path: PathBuf,
    },
    /// Serve a simulated Kubernetes cluster's MCP tools on stdio (for demos and tests).
    SimCluster {
        /// The cluster's name; its synthetic pods and events derive from it.
        #[arg(long)]
        cluster: String,
        /// Also serve `sleep` and `cancellations` (used by the test suite).
        #[arg(long, hide = true)]
        test_tools: bool,
        /// Serve an older `list_pods` schema (used by the test suite).
        #[arg(long, hide = true)]
        old_schema: bool,
        /// Also serve `delete_pod`, a destructive tool (for trying tool policies).
        #[arg(long)]
        writable: bool,
    },
    /// Log in to a gateway, see which servers the login reaches, log out.
    #[command(after_long_help = auth::EXIT_CODES_HELP)]
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
}

/// Trace export for `serve`, from the config file's `tracing` section (read
/// before logging starts, so the subscriber is built once).
pub fn tracing_settings(cli: &Cli) -> anyhow::Result<Option<crate::telemetry::TracingSettings>> {
    let Command::Serve {
        config: Some(path), ..
    } = &cli.command
    else {
        return Ok(None);
    };
    match ConfigFile::load(path)?.tracing {
        Some(tracing) => tracing.resolve(),
        None => Ok(None),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            manifests,
            kubernetes,
            namespaces,
            secret_namespaces,
            lease_namespace,
            lease_duration,
            config,
            bind,
            port,
            public_url,
            insecure_demo_identity,
        } => {
            let file = match config {
                Some(path) => ConfigFile::load(&path)?,
                None => ConfigFile::default(),
            };
            let kubernetes = kubernetes.then(|| KubernetesSettings {
                namespaces,
                secret_namespaces,
                lease_namespace: lease_namespace.unwrap_or_else(|| "default".into()),
                lease_duration: std::time::Duration::from_secs(lease_duration.max(3)),
                identity: replica_identity(),
            });
            let mut settings =
                ServeSettings::resolve(file, manifests, kubernetes, bind, port, public_url)?;
            settings.demo_identity = insecure_demo_identity;
            let cancel = CancellationToken::new();
            let app = App::build(settings, cancel.clone()).await?;
            let addr = app.local_addr()?;
            // Printed on stdout so scripts and tests can find the port.
            println!("flotilla listening on http://{addr}/mcp");
            tracing::info!(%addr, "gateway listening");
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                on_signal.cancel();
            });
            app.run().await
        }
        Command::Agent {
            gateway,
            name,
            token_file,
            manifests,
            ca_file,
            heartbeat_seconds,
        } => {
            let settings = crate::agent::AgentSettings {
                gateway,
                name,
                token_file,
                manifests,
                ca_file,
                heartbeat: std::time::Duration::from_secs(heartbeat_seconds.max(1)),
                backoff_min: std::time::Duration::from_millis(250),
                backoff_max: std::time::Duration::from_secs(30),
            };
            let cancel = CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                on_signal.cancel();
            });
            crate::agent::run(settings, cancel).await
        }
        Command::Crd => {
            print!("{}", crate::crd_yaml()?);
            Ok(())
        }
        Command::Validate { path } => {
            let fleet = if path.is_dir() {
                crate::source::load_dir(&path, &mut Default::default())
            } else {
                crate::source::load_file(&path)
            };
            for server in fleet.servers.values() {
                println!("ok\t{}\t{}", server.origin, server.name);
            }
            for policy in fleet.policies.values() {
                println!(
                    "ok\t{}\tToolPolicy {} ({} rules)",
                    policy.origin,
                    policy.name,
                    policy.spec.rules.len()
                );
            }
            for problem in &fleet.problems {
                println!("invalid\t{problem}");
            }
            if fleet.problems.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} invalid manifest(s)", fleet.problems.len())
            }
        }
        Command::SimCluster {
            cluster,
            test_tools,
            old_schema,
            writable,
        } => crate::sim::serve_stdio(
            &cluster,
            crate::sim::SimOptions {
                test_tools,
                old_schema,
                writable,
            },
        )
        .await
        .with_context(|| format!("simulated cluster {cluster}")),
        Command::Auth { command } => auth::run(command).await,
    }
}

/// This replica's name in the Lease: $POD_NAME, else host name and pid.
fn replica_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "flotilla".into());
        format!("{host}-{}", std::process::id())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
