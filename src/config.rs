//! Gateway settings: an optional YAML config file, overridden by flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::auth::settings::AuthConfig;
use crate::fleet::FleetSettings;
use crate::gateway::audit::AuditSettings;
use crate::gateway::{FanOutSettings, HttpLimits, RateLimitSettings};
use crate::telemetry::TracingSettings;

/// The config file (`--config`), every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to bind (default 127.0.0.1).
    pub bind_address: Option<IpAddr>,
    /// Port to listen on (default 8080; 0 picks a free one).
    pub port: Option<u16>,
    /// The URL clients use to reach the gateway (behind an ingress).
    pub public_url: Option<String>,
    /// Directory of MCPServer manifests, relative to the config file.
    pub manifests: Option<PathBuf>,
    /// Host headers `/mcp` accepts; `["*"]` accepts any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins (`scheme://host[:port]`) `/mcp` accepts; `["*"]`
    /// accepts any. Default: loopback origins and the public URL's.
    pub allowed_origins: Option<Vec<String>>,
    /// Seconds between upstream health checks (default 20).
    pub ping_interval_seconds: Option<u64>,
    /// Seconds an upstream's rmcp session may go unused before it is parked
    /// (its server session kept; default 10; 0: never; README "Idle memory").
    pub park_idle_sessions_after_seconds: Option<u64>,
    /// Seconds an idle connection to a Streamable HTTP upstream stays open
    /// for its next request (default 4; 0: one request per connection; at
    /// most 3600).
    /// Keep it under the upstreams' own keep-alive timeout (5 s for Node,
    /// uvicorn and hypercorn): a request sent as the server closes the
    /// connection fails.
    pub upstream_idle_connection_seconds: Option<u64>,
    /// Seconds between pings on each agent's connection; an agent silent
    /// for three is given up (default 15; README "Clusters behind NAT").
    pub agent_heartbeat_seconds: Option<u64>,
    /// Limits for family tools called on several instances.
    pub fan_out: Option<FanOutConfig>,
    /// Keys (one base64 32-byte key per line, the first seals) for client
    /// session ids and, with `auth`, the gateway's tokens: every replica
    /// reads the same file (see README "Several replicas"). Same as
    /// `auth.sealingKeyFile`, which still works.
    pub sealing_key_file: Option<PathBuf>,
    /// How the other replicas reach this one (`http://host:port`), for a
    /// client's answer to a question this replica asked that reaches another
    /// (README "Several replicas"). Default: `http://$POD_IP:<port>`, else the
    /// listening address unless it is a wildcard.
    pub replica_url: Option<String>,
    /// Where the other replicas are, so a client's session changes reach
    /// them all (README "Several replicas"); default: nowhere.
    pub replica_peers: Option<ReplicaPeersConfig>,
    /// Single sign-on; without it `/mcp` is open (see README "SSO").
    pub auth: Option<AuthConfig>,
    /// Caps on sessions, connections and slow clients.
    pub limits: Option<LimitsConfig>,
    /// Per-caller rate limits on calls (default: off).
    pub rate_limit: Option<RateLimitConfig>,
    /// The audit log of tool calls (default: on, to stdout).
    pub audit: Option<AuditConfig>,
    /// Trace export over OTLP (default: off).
    pub tracing: Option<TracingConfig>,
}

/// `replicaPeers` in the config file: exactly one of the two.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaPeersConfig {
    /// A name resolving to every replica's address (a headless Service);
    /// the port is this replica's.
    pub dns_name: Option<String>,
    /// A file of replica base URLs, one per line (relative to the config
    /// file), re-read when it changes.
    pub file: Option<PathBuf>,
}

/// Where the other replicas are, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaPeers {
    DnsName(String),
    File(PathBuf),
}

/// `tracing` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`;
    /// traces go to `<otlpEndpoint>/v1/traces`. Without it nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (default `flotilla`).
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0).
    pub sample_ratio: Option<f64>,
}

impl TracingConfig {
    /// The settings, when an endpoint is set.
    pub fn resolve(&self) -> anyhow::Result<Option<TracingSettings>> {
        let Some(endpoint) = self.otlp_endpoint.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let url = url::Url::parse(endpoint)
            .with_context(|| format!("tracing.otlpEndpoint {endpoint:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("tracing.otlpEndpoint {endpoint:?} must be an http:// or https:// URL");
        }
        let ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&ratio) {
            anyhow::bail!("tracing.sampleRatio must be between 0.0 and 1.0, not {ratio}");
        }
        Ok(Some(TracingSettings {
            otlp_endpoint: endpoint.to_string(),
            service_name: self
                .service_name
                .clone()
                .unwrap_or_else(|| "flotilla".to_string()),
            sample_ratio: ratio,
        }))
    }
}

/// `audit` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit lines at all (default true).
    pub enabled: Option<bool>,
    /// Append lines to this file (relative to the config file) instead of stdout.
    pub file: Option<PathBuf>,
    /// Put each call's arguments in its line, not only their hash (default false).
    pub include_arguments: Option<bool>,
    /// Rotate `file` when it passes this many MiB (default 100).
    pub max_file_mib: Option<u64>,
    /// Rotated files kept beside `file` (default 5).
    pub max_files: Option<u32>,
}

/// `limits` in the config file (defaults in [`HttpLimits`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client sessions (2025 revisions) a replica holds in memory at once
    /// (default 10000); beyond it one is let go (its id stays valid).
    pub max_sessions: Option<usize>,
    /// Seconds an unused client session stays in memory (default 300; its
    /// id stays valid, and the next request rebuilds it).
    pub session_idle_timeout_seconds: Option<u64>,
    /// Seconds a client session id is accepted after `initialize` (default 86400).
    pub session_max_age_seconds: Option<u64>,
    /// Open connections in all (default 10000).
    pub max_connections: Option<usize>,
    /// Open connections from one IP address (default 1000; 0 = no limit).
    pub max_connections_per_ip: Option<usize>,
    /// Seconds to send request headers, and to stay idle between requests (default 30).
    pub header_read_timeout_seconds: Option<u64>,
    /// Seconds, from the request's start, to send its body (default 30).
    pub body_read_timeout_seconds: Option<u64>,
}

impl LimitsConfig {
    fn resolve(self) -> HttpLimits {
        let defaults = HttpLimits::default();
        let seconds = |given: Option<u64>, default: Duration| {
            given.map_or(default, |s| Duration::from_secs(s.max(1)))
        };
        HttpLimits {
            max_sessions: self.max_sessions.unwrap_or(defaults.max_sessions).max(1),
            session_idle_timeout: seconds(
                self.session_idle_timeout_seconds,
                defaults.session_idle_timeout,
            ),
            session_max_age: seconds(self.session_max_age_seconds, defaults.session_max_age),
            max_connections: self
                .max_connections
                .unwrap_or(defaults.max_connections)
                .max(1),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            header_read_timeout: seconds(
                self.header_read_timeout_seconds,
                defaults.header_read_timeout,
            ),
            body_read_timeout: seconds(self.body_read_timeout_seconds, defaults.body_read_timeout),
        }
    }
}

/// `rateLimit` in the config file: a token bucket per caller (the
/// logged-in user; without `auth`, the client's IP address).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Calls (`tools/call`, `resources/read`, `prompts/get`) one caller may
    /// make per minute, refilled evenly. Required.
    pub calls_per_minute: Option<u32>,
    /// Calls one caller may make at once after a quiet spell (default:
    /// `callsPerMinute`).
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    fn resolve(&self) -> anyhow::Result<RateLimitSettings> {
        let Some(per_minute) = self.calls_per_minute else {
            anyhow::bail!(
                "rateLimit.callsPerMinute is required (the calls one caller may make per minute); remove rateLimit to turn the limit off"
            );
        };
        if !(1..=1_000_000).contains(&per_minute) {
            anyhow::bail!("rateLimit.callsPerMinute must be from 1 to 1000000, not {per_minute}");
        }
        let burst = self.burst.unwrap_or(per_minute);
        if !(1..=1_000_000).contains(&burst) {
            anyhow::bail!("rateLimit.burst must be from 1 to 1000000, not {burst}");
        }
        Ok(RateLimitSettings {
            calls_per_minute: per_minute,
            burst,
        })
    }
}

/// `fanOut` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FanOutConfig {
    /// Instances called at once (default 100).
    pub max_concurrency: Option<usize>,
    /// Upper bound on a merged result's text, in bytes (default 102400).
    pub output_budget_bytes: Option<usize>,
    /// Let tools that are not read-only run on several instances (default false).
    pub allow_destructive: Option<bool>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: ConfigFile = serde_saphyr::from_str(&text)
            .with_context(|| format!("config file {} is invalid", path.display()))?;
        if let Some(dir) = path.parent() {
            let relative_to_config = |file: &mut PathBuf| {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            };
            if let Some(manifests) = config.manifests.as_mut() {
                relative_to_config(manifests);
            }
            if let Some(file) = config.audit.as_mut().and_then(|a| a.file.as_mut()) {
                relative_to_config(file);
            }
            if let Some(key) = config.sealing_key_file.as_mut() {
                relative_to_config(key);
            }
            if let Some(file) = config.replica_peers.as_mut().and_then(|p| p.file.as_mut()) {
                relative_to_config(file);
            }
            if let Some(auth) = config.auth.as_mut() {
                if let Some(key) = auth.sealing_key_file.as_mut() {
                    relative_to_config(key);
                }
                if let Some(secret) = auth
                    .oidc
                    .as_mut()
                    .and_then(|o| o.client_secret_file.as_mut())
                {
                    relative_to_config(secret);
                }
            }
        }
        Ok(config)
    }
}

/// Where MCPServer objects come from.
#[derive(Clone, Debug)]
pub enum SourceSettings {
    /// A watched directory of manifests.
    Manifests(PathBuf),
    /// The Kubernetes API (in-cluster config, or KUBECONFIG / current context).
    Kubernetes(KubernetesSettings),
}

#[derive(Clone, Debug, Default)]
pub struct KubernetesSettings {
    /// MCPServer namespaces; empty = all.
    pub namespaces: Vec<String>,
    /// Secret namespaces; empty = the MCPServer namespaces.
    pub secret_namespaces: Vec<String>,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else `default`).
    pub lease_namespace: String,
    /// This replica's identity (default: POD_NAME, else host name and pid).
    pub identity: String,
    /// How long a Lease holder may go without renewing.
    pub lease_duration: Duration,
}

/// Resolved settings for `flotilla serve`.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub source: SourceSettings,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub ping_interval: Duration,
    /// `parkIdleSessionsAfterSeconds` (`None`: never).
    pub park_after: Option<Duration>,
    /// `upstreamIdleConnectionSeconds`.
    pub upstream_idle_connection: Duration,
    /// Pings on agents' connections (`agentHeartbeatSeconds`).
    pub agent_heartbeat: Duration,
    pub fan_out: FanOutSettings,
    pub auth: Option<AuthConfig>,
    /// `sealingKeyFile`, or else `auth.sealingKeyFile`.
    pub sealing_key_file: Option<PathBuf>,
    pub replica_url: Option<String>,
    pub replica_peers: Option<ReplicaPeers>,
    pub limits: HttpLimits,
    pub rate_limit: Option<RateLimitSettings>,
    pub audit: AuditSettings,
    /// `--insecure-demo-identity`: callers name themselves in headers.
    pub demo_identity: bool,
}

impl ServeSettings {
    pub fn resolve(
        file: ConfigFile,
        manifests: Option<PathBuf>,
        kubernetes: Option<KubernetesSettings>,
        bind: Option<IpAddr>,
        port: Option<u16>,
        public_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let source = match (kubernetes, manifests.or(file.manifests)) {
            (Some(_), Some(_)) => anyhow::bail!("choose one source: --kubernetes or --manifests"),
            (Some(kubernetes), None) => SourceSettings::Kubernetes(kubernetes),
            (None, Some(dir)) => SourceSettings::Manifests(dir),
            (None, None) => anyhow::bail!(
                "no source: pass --manifests DIR (or set `manifests` in the config file), or --kubernetes"
            ),
        };
        let ip = bind
            .or(file.bind_address)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = port.or(file.port).unwrap_or(8080);
        let auth_key = file.auth.as_ref().and_then(|a| a.sealing_key_file.clone());
        let sealing_key_file = match (file.sealing_key_file, auth_key) {
            (Some(top), Some(auth)) if top != auth => anyhow::bail!(
                "sealingKeyFile ({}) and auth.sealingKeyFile ({}) name different files: the gateway seals with one key file, so set only sealingKeyFile",
                top.display(),
                auth.display()
            ),
            (top, auth) => top.or(auth),
        };
        let replica_url = match file.replica_url {
            Some(url) => {
                let parsed = url::Url::parse(url.trim()).with_context(|| {
                    format!("replicaUrl {url:?} is not a URL (e.g. http://10.0.0.7:8080)")
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    anyhow::bail!(
                        "replicaUrl {url:?} must be an http:// or https:// URL with a host"
                    );
                }
                Some(url.trim().trim_end_matches('/').to_string())
            }
            None => None,
        };
        let replica_peers = match file.replica_peers {
            None => None,
            Some(ReplicaPeersConfig {
                dns_name: Some(name),
                file: None,
            }) if !name.trim().is_empty() => Some(ReplicaPeers::DnsName(name.trim().to_string())),
            Some(ReplicaPeersConfig {
                dns_name: None,
                file: Some(path),
            }) => Some(ReplicaPeers::File(path)),
            Some(_) => anyhow::bail!(
                "replicaPeers needs exactly one of dnsName (e.g. the chart's headless Service) or file (one replica URL per line)"
            ),
        };
        Ok(Self {
            sealing_key_file,
            replica_url,
            replica_peers,
            listen: SocketAddr::new(ip, port),
            public_url: public_url.or(file.public_url),
            auth: file.auth,
            limits: file.limits.unwrap_or_default().resolve(),
            rate_limit: file
                .rate_limit
                .as_ref()
                .map(RateLimitConfig::resolve)
                .transpose()?,
            audit: {
                let given = file.audit.unwrap_or_default();
                let defaults = AuditSettings::default();
                AuditSettings {
                    enabled: given.enabled.unwrap_or(defaults.enabled),
                    file: given.file,
                    include_arguments: given
                        .include_arguments
                        .unwrap_or(defaults.include_arguments),
                    max_file_bytes: given
                        .max_file_mib
                        .map_or(defaults.max_file_bytes, |mib| mib.max(1) * 1024 * 1024),
                    max_files: given.max_files.unwrap_or(defaults.max_files),
                }
            },
            source,
            demo_identity: false,
            allowed_hosts: file.allowed_hosts,
            allowed_origins: file.allowed_origins,
            ping_interval: Duration::from_secs(file.ping_interval_seconds.unwrap_or(20).max(1)),
            park_after: match file.park_idle_sessions_after_seconds {
                Some(0) => None,
                Some(seconds) => Some(Duration::from_secs(seconds)),
                None => FleetSettings::default().park_after,
            },
            upstream_idle_connection: file
                .upstream_idle_connection_seconds
                .map_or(FleetSettings::default().idle_connection_timeout, |s| {
                    Duration::from_secs(s.min(3600))
                }),
            agent_heartbeat: Duration::from_secs(
                file.agent_heartbeat_seconds.unwrap_or(15).clamp(1, 300),
            ),
            fan_out: {
                let defaults = FanOutSettings::default();
                let given = file.fan_out.unwrap_or_default();
                FanOutSettings {
                    max_concurrency: given
                        .max_concurrency
                        .unwrap_or(defaults.max_concurrency)
                        .max(1),
                    output_budget: given.output_budget_bytes.unwrap_or(defaults.output_budget),
                    allow_destructive: given
                        .allow_destructive
                        .unwrap_or(defaults.allow_destructive),
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `flotilla serve --config` of `yaml` with manifests and no flags, or
    /// the error it prints.
    fn resolved(yaml: &str) -> Result<ServeSettings, String> {
        let file: ConfigFile = serde_saphyr::from_str(yaml).expect("parses");
        ServeSettings::resolve(file, Some("m".into()), None, None, None, None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_sso_example_config_loads_with_paths_relative_to_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sso/flotilla.yaml");
        let config = ConfigFile::load(&path).expect("examples/sso/flotilla.yaml loads");
        let auth = config.auth.expect("auth section");
        let dir = path.parent().unwrap();
        assert_eq!(
            auth.sealing_key_file,
            Some(dir.join(".secrets/sealing-key"))
        );
        let oidc = auth.oidc.expect("oidc");
        assert_eq!(
            oidc.client_secret_file,
            Some(dir.join(".secrets/oidc-client-secret"))
        );
        assert_eq!(config.manifests, Some(dir.join("fleet")));
        assert_eq!(auth.trusted_issuers.len(), 1);
    }

    #[test]
    fn rate_limit_needs_calls_per_minute_and_bursts_a_minute_by_default() {
        let resolve = |yaml: &str| resolved(yaml).map(|s| s.rate_limit);
        assert_eq!(resolve("port: 0\n"), Ok(None));
        assert_eq!(
            resolve("rateLimit: {callsPerMinute: 120}\n"),
            Ok(Some(RateLimitSettings {
                calls_per_minute: 120,
                burst: 120
            }))
        );
        assert_eq!(
            resolve("rateLimit: {callsPerMinute: 120, burst: 5}\n")
                .ok()
                .flatten()
                .map(|s| s.burst),
            Some(5)
        );
        let missing = resolve("rateLimit: {burst: 5}\n").unwrap_err();
        assert!(
            missing.contains("rateLimit.callsPerMinute is required"),
            "{missing}"
        );
        let zero = resolve("rateLimit: {callsPerMinute: 0}\n").unwrap_err();
        assert!(zero.contains("from 1 to 1000000, not 0"), "{zero}");
        let misspelt = serde_saphyr::from_str::<ConfigFile>("rateLimit: {callsPerMinit: 5}\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(misspelt.contains("callsPerMinit"), "{misspelt}");
    }

    #[test]
    fn idle_sessions_park_after_ten_seconds_unless_told_otherwise_and_zero_turns_it_off() {
        let resolve = |yaml: &str| resolved(yaml).map(|s| s.park_after);
        assert_eq!(resolve("port: 0\n"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(
            resolve("parkIdleSessionsAfterSeconds: 60\n"),
            Ok(Some(Duration::from_secs(60)))
        );
        assert_eq!(resolve("parkIdleSessionsAfterSeconds: 0\n"), Ok(None));
    }

    #[test]
    fn idle_upstream_connections_close_before_a_five_second_keep_alive_unless_told_otherwise() {
        let resolve = |yaml: &str| resolved(yaml).map(|s| s.upstream_idle_connection);
        assert_eq!(resolve("port: 0\n"), Ok(Duration::from_secs(4)));
        assert_eq!(
            resolve("upstreamIdleConnectionSeconds: 1\n"),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            resolve("upstreamIdleConnectionSeconds: 0\n"),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn a_misspelt_auth_field_is_named() {
        let error = serde_saphyr::from_str::<ConfigFile>("auth:\n  sealingKeyFlie: x\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("sealingKeyFlie"), "{error}");
    }
}
