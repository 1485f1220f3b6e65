//! Metrics read at each scrape, from what the fleet, the catalog, the token
//! cache and the Kubernetes source already keep, so they cost nothing per
//! request:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `flotilla_upstream_up` | gauge | `server`, `family`, `family_instance` | 1 while the gateway's session to the server is connected |
//! | `flotilla_upstream_state` | gauge | `server`, `state` | 1 for the server's current state (`Connecting`, `Connected`, `Failed`, `AuthRequired`, `Invalid`, `Stopped`) |
//! | `flotilla_upstream_parked` | gauge | `server` | 1 while the server's session is parked (idle; rmcp's service ended, the server's session kept: README "Idle memory") |
//! | `flotilla_upstream_connects_total` | counter | `server` | sessions established to the server (the first and every reconnect) |
//! | `flotilla_upstream_calls_running`, `flotilla_upstream_calls_waiting`, `flotilla_upstream_max_concurrency` | gauge | `server` | for servers with `spec.limits.maxConcurrency`: calls holding a slot, calls queued for one, and the limit |
//! | `flotilla_catalog_tools` / `_resources` / `_prompts` / `_families` | gauge | | what the shared catalog exposes |
//! | `flotilla_user_upstream_sessions` | gauge | | per-user upstream sessions held (SSO servers) |
//! | `flotilla_user_upstream_sessions_parked` | gauge | | of those, the sessions parked now |
//! | `flotilla_manifest_problems` | gauge | | manifests or objects that could not be used |
//! | `flotilla_agents_connected` | gauge | | agents (`flotilla agent`) connected to this replica now |
//! | `flotilla_token_exchange_cache_total` | counter | `server`, `result` | token requests for exchanged servers: `hit` or `miss` in the cache |
//! | `flotilla_token_exchanges_total` | counter | `server`, `result` | exchanges sent to the server's Dex: `ok` or `failed` |
//! | `flotilla_status_writes_total` | counter | `result` | status patches written (`ok`) or failed (`failed`), Kubernetes source |
//! | `flotilla_leader` | gauge | | 1 while this replica holds the status-writer Lease, Kubernetes source |

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::state::GatewayState;
use crate::api::ServerState;
use crate::auth::outbound::exchange::TokenExchanger;
use crate::source::kubernetes::{LeaderElection, StatusWriteCounts};

const STATES: [ServerState; 6] = [
    ServerState::Connecting,
    ServerState::Connected,
    ServerState::Failed,
    ServerState::AuthRequired,
    ServerState::Invalid,
    ServerState::Stopped,
];

/// The Kubernetes source's part: leadership and status writes.
pub struct KubernetesStats {
    pub leader: LeaderElection,
    pub status_writes: Arc<StatusWriteCounts>,
}

/// Reads the gauges above at each scrape.
pub struct FleetCollector {
    /// Weak: the state owns the registry that owns this.
    state: Weak<GatewayState>,
    exchanger: Option<Arc<TokenExchanger>>,
    kubernetes: Option<KubernetesStats>,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetCollector")
    }
}

impl FleetCollector {
    pub fn new(
        state: &Arc<GatewayState>,
        exchanger: Option<Arc<TokenExchanger>>,
        kubernetes: Option<KubernetesStats>,
    ) -> Self {
        Self {
            state: Arc::downgrade(state),
            exchanger,
            kubernetes,
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn count(value: &std::sync::atomic::AtomicU64) -> ConstCounter {
    ConstCounter::new(value.load(Ordering::Relaxed))
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self.state.upgrade() else {
            return Ok(());
        };
        let upstreams = state.fleet.upstreams();
        let healths: Vec<_> = upstreams
            .iter()
            .map(|u| {
                let desired = u.desired();
                let family = desired.spec.family.as_ref();
                let family_name = family.map(|f| f.name.clone()).unwrap_or_default();
                let instance = family.map(|f| f.instance_name(&u.name)).unwrap_or_default();
                (u.name.to_string(), family_name, instance, u.health())
            })
            .collect();

        let mut up = encoder.encode_descriptor(
            "upstream_up",
            "1 while the gateway's session to the server is connected",
            None,
            MetricType::Gauge,
        )?;
        for (server, family, instance, health) in &healths {
            let labels = [
                ("server", server.as_str()),
                ("family", family.as_str()),
                ("family_instance", instance.as_str()),
            ];
            let connected = i64::from(health.state == ServerState::Connected);
            ConstGauge::new(connected).encode(up.encode_family(&labels)?)?;
        }

        let mut parked = encoder.encode_descriptor(
            "upstream_parked",
            "1 while the server's session is parked (idle: rmcp's service ended, the server's session kept)",
            None,
            MetricType::Gauge,
        )?;
        for upstream in &upstreams {
            ConstGauge::new(i64::from(upstream.is_parked()))
                .encode(parked.encode_family(&[("server", &*upstream.name)])?)?;
        }

        // (server, [running, waiting, limit]) for servers with a concurrency limit.
        let loads: Vec<(String, [usize; 3])> = upstreams
            .iter()
            .filter_map(|u| {
                let (running, waiting, max) = u.call_load()?;
                Some((u.name.to_string(), [running, waiting, max]))
            })
            .collect();
        let load_gauges = [
            (
                "upstream_calls_running",
                "Calls holding one of the server's concurrency slots (spec.limits.maxConcurrency)",
            ),
            (
                "upstream_calls_waiting",
                "Calls queued for one of the server's concurrency slots",
            ),
            (
                "upstream_max_concurrency",
                "The server's spec.limits.maxConcurrency",
            ),
        ];
        for (index, (name, help)) in load_gauges.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (server, load) in &loads {
                let value = i64::try_from(load[index]).unwrap_or(i64::MAX);
                ConstGauge::new(value)
                    .encode(family.encode_family(&[("server", server.as_str())])?)?;
            }
        }

        let mut states = encoder.encode_descriptor(
            "upstream_state",
            "1 for the server's current state",
            None,
            MetricType::Gauge,
        )?;
        for (server, _, _, health) in &healths {
            for state in STATES {
                let labels = [("server", server.as_str()), ("state", state.as_str())];
                ConstGauge::new(i64::from(health.state == state))
                    .encode(states.encode_family(&labels)?)?;
            }
        }

        let mut connects = encoder.encode_descriptor(
            "upstream_connects",
            "Sessions established to the server (the first and every reconnect)",
            None,
            MetricType::Counter,
        )?;
        for (server, _, _, health) in &healths {
            ConstCounter::new(health.connects)
                .encode(connects.encode_family(&[("server", server.as_str())])?)?;
        }

        let catalog = state.catalog();
        let size = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "catalog_tools",
            "Tools the shared catalog exposes",
            size(catalog.tools.len()),
        )?;
        gauge(
            &mut encoder,
            "catalog_resources",
            "Resources the shared catalog exposes",
            size(catalog.resources.len()),
        )?;
        gauge(
            &mut encoder,
            "catalog_prompts",
            "Prompts the shared catalog exposes",
            size(catalog.prompts.len()),
        )?;
        gauge(
            &mut encoder,
            "catalog_families",
            "Server families in the catalog",
            size(catalog.families.len()),
        )?;
        let (user_sessions, user_parked) = state
            .fleet
            .user_sessions()
            .map(|sessions| (sessions.count(), sessions.parked()))
            .unwrap_or_default();
        gauge(
            &mut encoder,
            "user_upstream_sessions",
            "Per-user upstream sessions held (SSO servers)",
            i64::try_from(user_sessions).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "user_upstream_sessions_parked",
            "Per-user upstream sessions whose session is parked now",
            i64::try_from(user_parked).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "manifest_problems",
            "Manifests or objects that could not be used",
            size(state.fleet.problems().len()),
        )?;
        gauge(
            &mut encoder,
            "agents_connected",
            "Agents (flotilla agent) connected to this replica now",
            size(state.fleet.agents().connected().len()),
        )?;

        if let Some(exchanger) = &self.exchanger {
            let counts = exchanger.counts();
            let mut cache = encoder.encode_descriptor(
                "token_exchange_cache",
                "Token requests for exchanged servers, by cache result",
                None,
                MetricType::Counter,
            )?;
            for (server, counts) in &counts {
                for (result, value) in [("hit", &counts.hits), ("miss", &counts.misses)] {
                    let labels = [("server", &**server), ("result", result)];
                    count(value).encode(cache.encode_family(&labels)?)?;
                }
            }
            let mut exchanges = encoder.encode_descriptor(
                "token_exchanges",
                "Exchanges sent to a server's Dex, by result",
                None,
                MetricType::Counter,
            )?;
            for (server, counts) in &counts {
                for (result, value) in [("ok", &counts.exchanged), ("failed", &counts.failures)] {
                    let labels = [("server", &**server), ("result", result)];
                    count(value).encode(exchanges.encode_family(&labels)?)?;
                }
            }
        }

        if let Some(kubernetes) = &self.kubernetes {
            let mut writes = encoder.encode_descriptor(
                "status_writes",
                "Status patches written to MCPServer objects, by result",
                None,
                MetricType::Counter,
            )?;
            let counts = &kubernetes.status_writes;
            for (result, value) in [("ok", &counts.written), ("failed", &counts.failed)] {
                count(value).encode(writes.encode_family(&[("result", result)])?)?;
            }
            gauge(
                &mut encoder,
                "leader",
                "1 while this replica holds the status-writer Lease",
                i64::from(kubernetes.leader.is_leader()),
            )?;
        }
        Ok(())
    }
}
