//! Wiring for `flotilla serve`: source → fleet → catalog → gateway, under one
//! cancellation token. [`App::build`] binds eagerly so callers (and tests)
//! know the address before serving starts.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::SsoMode;
use crate::api::UserIdentity;
use crate::auth::inbound::seal::SealingKeys;
use crate::auth::inbound::{AuthServer, AuthServerOptions};
use crate::auth::jwks::JwksCache;
use crate::auth::outbound::SsoCredentials;
use crate::auth::outbound::exchange::TokenExchanger;
use crate::auth::settings::{AuthConfig, TokenCacheSettings, UserSessionSettings};
use crate::config::{KubernetesSettings, ReplicaPeers, ServeSettings, SourceSettings};
use crate::fleet::{Fleet, FleetSettings};
use crate::gateway::audit::AuditLog;
use crate::gateway::metrics::Metrics;
use crate::gateway::scrape::{FleetCollector, KubernetesStats};
use crate::gateway::{
    AllowedHosts, AllowedOrigins, GatewaySettings, GatewayState, HttpLimits, PeerSource,
    ReplicaSettings, router, serve,
};
use crate::source::kubernetes::{
    KubernetesSource, LeaderElection, LeaseConfig, SourceConfig, StatusWriter,
};
use crate::source::{DesiredFleetRx, ManifestDir};

/// A started source; dropping it stops the manifest watcher.
enum Source {
    Manifests(ManifestDir),
    Kubernetes {
        source: KubernetesSource,
        client: kube::Client,
        settings: KubernetesSettings,
    },
}

impl Source {
    fn subscribe(&self) -> DesiredFleetRx {
        match self {
            Source::Manifests(dir) => dir.subscribe(),
            Source::Kubernetes { source, .. } => source.subscribe(),
        }
    }
}

pub struct App {
    listener: TcpListener,
    state: Arc<GatewayState>,
    source: Source,
    allowed_hosts: AllowedHosts,
    allowed_origins: AllowedOrigins,
    auth: Option<Arc<AuthServer>>,
    /// The sealing keys and this replica's address for the others.
    replicas: ReplicaSettings,
    /// The token-exchange cache (with `auth`), for `/metrics`.
    exchanger: Option<Arc<TokenExchanger>>,
    limits: HttpLimits,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(settings: ServeSettings, cancel: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let source = match &settings.source {
            SourceSettings::Manifests(dir) => {
                Source::Manifests(ManifestDir::watch(dir.clone(), cancel.child_token())?)
            }
            SourceSettings::Kubernetes(kubernetes) => {
                let mut config = kube::Config::infer().await.context(
                    "connecting to the Kubernetes API (in-cluster config, or KUBECONFIG)",
                )?;
                // kube's default client retries a 429, 503 or 504 up to 15
                // times, its delays doubling towards minutes: after an API
                // outage a watch could sit in those retries long after the
                // API is back. The watches retry with their own backoff
                // (at most 5 s apart) and the status writer on its next pass.
                config.default_retry = false;
                let client =
                    kube::Client::try_from(config).context("building the Kubernetes API client")?;
                let source = KubernetesSource::start(
                    client.clone(),
                    SourceConfig {
                        namespaces: kubernetes.namespaces.clone(),
                        secret_namespaces: kubernetes.secret_namespaces.clone(),
                    },
                    cancel.child_token(),
                );
                Source::Kubernetes {
                    source,
                    client,
                    settings: kubernetes.clone(),
                }
            }
        };
        let fleet = Fleet::new(
            FleetSettings {
                ping_interval: settings.ping_interval,
                park_after: settings.park_after,
                idle_connection_timeout: settings.upstream_idle_connection,
                ..Default::default()
            },
            cancel.child_token(),
        );
        let local = listener.local_addr()?;
        let allowed_hosts = allowed_hosts(&settings, local);
        let allowed_origins = AllowedOrigins::from_config(
            settings.allowed_origins.as_deref(),
            settings.public_url.clone(),
        );
        let base_url = base_url(&settings, local)?;
        if settings.demo_identity {
            anyhow::ensure!(
                settings.auth.is_none(),
                "--insecure-demo-identity lets callers name themselves in headers; it cannot be \
                 combined with the config file's `auth:` section (remove one of them)"
            );
            tracing::warn!(
                "INSECURE demo mode: callers may name themselves in X-Flotilla-Demo-User / \
                 -Groups / -Client headers; never use this where others can reach the gateway"
            );
        }
        let keys = Arc::new(sealing_keys(&settings)?);
        let (auth, exchanger) = match &settings.auth {
            Some(config) => {
                let (auth, exchanger) = start_auth(config, &base_url, &fleet, keys.clone()).await?;
                (Some(auth), Some(exchanger))
            }
            None => (None, None),
        };
        let metrics = Arc::new(Metrics::default());
        let audit = AuditLog::start(&settings.audit, metrics.audit_dropped.clone())?;
        let state = GatewayState::new(
            fleet,
            GatewaySettings {
                fan_out: settings.fan_out.clone(),
                rate_limit: settings.rate_limit,
                endpoint: format!("{}/mcp", base_url.as_str().trim_end_matches('/')),
                demo_identity: settings.demo_identity,
                agent_heartbeat: settings.agent_heartbeat,
            },
            metrics,
            audit,
        );
        Ok(Self {
            listener,
            source,
            state,
            allowed_hosts,
            allowed_origins,
            auth,
            replicas: ReplicaSettings {
                keys,
                own_url: replica_url(&settings, local),
                peers: settings.replica_peers.clone().map(|peers| match peers {
                    ReplicaPeers::DnsName(name) => PeerSource::Dns {
                        name,
                        port: local.port(),
                    },
                    ReplicaPeers::File(path) => PeerSource::File(path),
                }),
            },
            exchanger,
            limits: settings.limits.clone(),
            cancel,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the cancellation token fires.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            source,
            allowed_hosts,
            allowed_origins,
            auth,
            replicas,
            exchanger,
            limits,
            cancel,
        } = self;
        match &source {
            Source::Manifests(_) => state.set_source_ready(),
            Source::Kubernetes { source, .. } => {
                let (source, state) = (source.clone(), state.clone());
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = source.wait_ready() => {}
                    }
                    // The first complete listing is in the fleet before
                    // readiness is reported (the fleet's follower applies it
                    // too; the second apply changes nothing).
                    let listed = source.subscribe().borrow().clone();
                    state.fleet.apply(&listed);
                    state.set_source_ready();
                });
            }
        }
        tokio::spawn(state.fleet.clone().follow(source.subscribe()));
        let mut election = None;
        let mut kubernetes_stats = None;
        if let Source::Kubernetes {
            source,
            client,
            settings,
        } = &source
        {
            let leader = LeaderElection::start(
                client.clone(),
                LeaseConfig {
                    duration: settings.lease_duration,
                    renew: settings.lease_duration / 3,
                    ..LeaseConfig::new(settings.lease_namespace.clone(), settings.identity.clone())
                },
                cancel.child_token(),
            );
            election = Some(leader.clone());
            let writer = StatusWriter::new(
                client.clone(),
                source.clone(),
                leader.clone(),
                state.clone(),
                settings.identity.clone(),
            );
            kubernetes_stats = Some(KubernetesStats {
                leader,
                status_writes: writer.counts(),
            });
            tokio::spawn(writer.run(cancel.child_token()));
        }
        state
            .metrics
            .register_collector(Box::new(FleetCollector::new(
                &state,
                exchanger,
                kubernetes_stats,
            )));
        tokio::spawn(state.clone().run_catalog(cancel.child_token()));
        let metrics = state.metrics.clone();
        let app = router(
            state,
            allowed_hosts,
            allowed_origins,
            auth,
            replicas,
            &limits,
            cancel.child_token(),
        );
        serve(listener, app, limits, metrics, cancel.clone()).await;
        if let Some(election) = election {
            // The Lease goes to the next replica now, not after it expires.
            if tokio::time::timeout(std::time::Duration::from_secs(5), election.ended())
                .await
                .is_err()
            {
                tracing::warn!("the lease was not released within 5 s; it will expire instead");
            }
        }
        drop(source);
        Ok(())
    }
}

/// The gateway's base URL as clients reach it: `publicUrl`, else the
/// listening address (which must then be a concrete one).
fn base_url(settings: &ServeSettings, local: SocketAddr) -> anyhow::Result<url::Url> {
    let text = match &settings.public_url {
        Some(url) => url.clone(),
        None if local.ip().is_unspecified() && settings.auth.is_some() => anyhow::bail!(
            "auth needs publicUrl (the URL clients reach the gateway at) when binding {local}"
        ),
        None => format!("http://{local}"),
    };
    url::Url::parse(&text).with_context(|| format!("publicUrl {text:?} is not a URL"))
}

/// How the other replicas reach this one: `replicaUrl`, else the pod's IP
/// (`POD_IP`, set by the Helm chart) and port, else the listening address
/// unless it is a wildcard.
fn replica_url(settings: &ServeSettings, local: SocketAddr) -> Option<String> {
    if let Some(url) = &settings.replica_url {
        return Some(url.clone());
    }
    let ip = std::env::var("POD_IP")
        .ok()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .or_else(|| (!local.ip().is_unspecified()).then_some(local.ip()))?;
    Some(format!("http://{}", SocketAddr::new(ip, local.port())))
}

/// The keys sealing client session ids and the gateway's tokens: the
/// configured file, else a random key for this process alone.
fn sealing_keys(settings: &ServeSettings) -> anyhow::Result<SealingKeys> {
    match &settings.sealing_key_file {
        Some(path) => SealingKeys::load(path).context("loading sealingKeyFile"),
        None => {
            tracing::info!(
                "sealingKeyFile is not set: client session ids (and SSO tokens) are sealed with a \
                 random key, so they do not survive a restart and other replicas do not accept them"
            );
            Ok(SealingKeys::ephemeral())
        }
    }
}

/// Starts SSO: the authorization server, the exchange cache and per-user
/// sessions, with login warming the user's sessions.
async fn start_auth(
    config: &AuthConfig,
    base_url: &url::Url,
    fleet: &Fleet,
    keys: Arc<SealingKeys>,
) -> anyhow::Result<(Arc<AuthServer>, Arc<TokenExchanger>)> {
    // Requests carrying users' tokens and client secrets never follow a redirect.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .context("building the HTTP client for single sign-on")?;
    let jwks = Arc::new(JwksCache::new(http.clone()));
    let exchanger = Arc::new(TokenExchanger::new(
        TokenCacheSettings::from(&config.token_cache.clone().unwrap_or_default()),
        http.clone(),
        jwks,
    ));
    let sessions = fleet.enable_user_sessions(
        Arc::new(SsoCredentials::new(exchanger.clone())),
        UserSessionSettings::from(&config.user_sessions.clone().unwrap_or_default()),
    );
    let extra_login_scopes = {
        let fleet = fleet.clone();
        Arc::new(move || {
            let mut scopes: Vec<String> = fleet
                .upstreams()
                .iter()
                .map(|u| u.desired())
                .filter(|d| d.spec.sso_mode() == Some(SsoMode::Forwarded))
                .flat_map(|d| {
                    d.spec
                        .auth
                        .as_ref()
                        .map(|a| a.required_audiences.clone())
                        .unwrap_or_default()
                })
                .map(|aud| format!("audience:server:client_id:{aud}"))
                .collect();
            scopes.sort();
            scopes.dedup();
            scopes
        })
    };
    let on_login = {
        let fleet = fleet.clone();
        Arc::new(move |user: Arc<UserIdentity>| {
            let opened =
                sessions.sessions_for(&user, &fleet.sso_servers(), crate::fleet::Access::Use);
            let failed = opened.iter().filter(|(_, s)| s.is_err()).count();
            tracing::info!(user = %user.key.subject, servers = opened.len(), failed, "login: opening the user's sessions");
        })
    };
    let server = AuthServer::start(AuthServerOptions {
        config: config.clone(),
        public_url: base_url.clone(),
        http,
        extra_login_scopes,
        on_login,
        keys: Some(keys),
    })
    .await
    .context("starting single sign-on (auth: in the config file)")?;
    Ok((server, exchanger))
}

/// Loopback-only by default (DNS-rebinding protection); the public URL's
/// host is added; a non-loopback bind without a list accepts any host.
fn allowed_hosts(settings: &ServeSettings, local: SocketAddr) -> AllowedHosts {
    let mut hosts: Vec<String> = match &settings.allowed_hosts {
        Some(list) if list.iter().any(|h| h == "*") => return AllowedHosts::Any,
        Some(list) => list.clone(),
        None if !local.ip().is_loopback() => return AllowedHosts::Any,
        None => vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
    };
    if let Some(host) = settings
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_string))
    {
        hosts.push(host);
    }
    AllowedHosts::Only(hosts)
}
